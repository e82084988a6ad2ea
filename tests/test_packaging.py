"""The installed package must contain every subpackage in the tree: a subpackage missing from
pyproject's list works in an editable checkout and breaks every real install."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _declared() -> tuple[set[str], dict[str, str]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return set(config["packages"]), dict(config["package-dir"])


def test_every_subpackage_is_declared() -> None:
    packages, package_dir = _declared()
    found: set[str] = set()
    for dotted, directory in package_dir.items():
        base = ROOT / directory
        for init in base.rglob("__init__.py"):
            relative = init.parent.relative_to(base).parts
            found.add(".".join((dotted, *relative)) if relative else dotted)
    # Nested mappings (flowbus.operators inside flowbus) are found from both roots only once.
    assert found - packages == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert packages - found == set(), "pyproject.toml names packages that do not exist"


def test_mapped_packages_import_as_flowbus_subpackages() -> None:
    import flowbus.operators
    import flowbus.state

    assert Path(flowbus.operators.__file__).parent == ROOT / "operators"
    assert Path(flowbus.state.__file__).parent == ROOT / "state"


def test_the_dashboard_files_are_package_data() -> None:
    """The dashboard works offline only if its page, script and style sheet are installed."""
    import fnmatch

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = config["package-data"]["flowbus.web"]
    static = ROOT / "flowbus" / "web" / "static"
    files = sorted(p.relative_to(static.parent).as_posix() for p in static.iterdir() if p.is_file())
    assert {"static/dashboard.html", "static/dashboard.js", "static/dashboard.css"} <= set(files)
    missing = [f for f in files if not any(fnmatch.fnmatch(f, pattern) for pattern in patterns)]
    assert missing == [], "add these to [tool.setuptools.package-data] in pyproject.toml"
