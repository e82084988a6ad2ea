"""The code in docs/framework.md runs as written: the app at the top of the page and the test
harness example, in the test harness (so they cannot drift from the API again)."""

from __future__ import annotations

import asyncio
import re
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "framework.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


def test_the_shop_app_and_the_harness_example_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = python_blocks()
    assert len(blocks) == 2, "update this test when docs/framework.md gains or loses a python example"
    app_block, harness_block = blocks
    assert "test_context" in harness_block
    # A real module, as `flowbus worker -A shop:app` would import: dataclasses look it up.
    module = types.ModuleType("shop_from_docs")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    namespace: dict[str, Any] = module.__dict__
    exec(app_block, namespace)  # noqa: S102 - our own documentation
    namespace["app"].state_dir = tmp_path
    # The harness example is the body of an async function (it uses `async with` and `await`).
    exec("async def example():\n" + textwrap.indent(harness_block, "    "), namespace)  # noqa: S102
    asyncio.run(namespace["example"]())
