"""No secret on the command line (issue 14, item 4).

Every option that takes a broker URL (``--broker`` of the worker and the tools, ``--bootstrap``
of ``users`` and ``acls``) refuses a URL that carries a password itself, with one ``Error:``
line naming the ``.file`` and ``.env`` forms and exit status 2, before anything else runs
(no app is imported, no broker is contacted). The same URL in ``$FLOWBUS_BROKER`` is accepted:
the environment is a place for secrets, argv is not (``ps`` shows it to every user).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from flowbus import App
from tests.cli.conftest import Invoke

PASSWORD = "hunter2-cli"
URL = f"kafka://app:{PASSWORD}@127.0.0.1:9?sasl.mechanism=SCRAM-SHA-512"
BROKER_ERROR = (
    "Error: --broker: sasl.password is not taken from the command line, where other users see it; "
    "use sasl.password.file=PATH or sasl.password.env=VARNAME in the URL instead "
    "(or put the whole URL in $FLOWBUS_BROKER)\n"
)
BOOTSTRAP_ERROR = (
    "Error: --bootstrap: sasl.password is not taken from the command line, where other users see it; "
    "use sasl.password.file=PATH or sasl.password.env=VARNAME in the URL instead\n"
)

BROKER_COMMANDS = [
    ["worker", "-A", "no_such_module:app"],
    ["topics", "list"],
    ["topics", "create", "t"],
    ["topics", "describe", "t"],
    ["topics", "delete", "t"],
    ["produce", "t"],
    ["consume", "t"],
    ["groups", "list"],
    ["groups", "describe", "g"],
    ["tables", "list", "-A", "no_such_module:app"],
    ["tables", "get", "-A", "no_such_module:app", "table", "key"],
]
BOOTSTRAP_COMMANDS = [
    ["users", "add", "bob"],
    ["users", "list"],
    ["users", "delete", "bob"],
    ["acls", "add", "--allow-principal", "User:bob", "--operation", "Read", "--topic", "t"],
    ["acls", "list"],
    ["acls", "remove", "--topic", "t"],
]


@pytest.mark.parametrize("command", BROKER_COMMANDS, ids=" ".join)
def test_broker_option_refuses_an_inline_password(invoke: Invoke, command: list[str]) -> None:
    result = invoke(*command, "--broker", URL)
    assert (result.exit_code, result.stdout, result.stderr) == (2, "", BROKER_ERROR)


@pytest.mark.parametrize("command", BOOTSTRAP_COMMANDS, ids=" ".join)
def test_bootstrap_option_refuses_an_inline_password(invoke: Invoke, command: list[str]) -> None:
    result = invoke(*command, "--bootstrap", URL)
    assert (result.exit_code, result.stdout, result.stderr) == (2, "", BOOTSTRAP_ERROR)


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("sasl.username=app&sasl.password=pw", "sasl.password"),
        ("ssl.key.password=pw", "ssl.key.password"),
        ("ssl.keystore.password=pw", "ssl.keystore.password"),
        ("sasl.oauthbearer.client.secret=pw", "sasl.oauthbearer.client.secret"),
    ],
)
def test_every_secret_parameter_is_refused_with_its_own_alternatives(invoke: Invoke, query: str, name: str) -> None:
    result = invoke("topics", "list", "--broker", f"kafkas://127.0.0.1:9?{query}")
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert f"use {name}.file=PATH or {name}.env=VARNAME in the URL instead" in result.stderr


def test_app_main_refuses_an_inline_password_too(capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLOWBUS_BROKER", raising=False)
    app = App("secret-main")
    with pytest.raises(SystemExit) as exited:
        app.main(["--broker", URL])
    assert exited.value.code == 2
    assert capsys.readouterr().err == BROKER_ERROR


def _closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_whole_url_in_the_environment_may_carry_the_password(invoke: Invoke) -> None:
    """Accepted (the command goes on to contact the broker), and never echoed."""
    url = f"kafka://app:{PASSWORD}@127.0.0.1:{_closed_port()}?sasl.mechanism=SCRAM-SHA-512"
    result = invoke("topics", "list", "--timeout-s", "0.5", env={"FLOWBUS_BROKER": url})
    assert result.exit_code == 1, result.output
    assert "is the broker running?" in result.stderr
    assert PASSWORD not in result.output


@pytest.mark.parametrize("form", ["sasl.password.env=FLOWBUS_TEST_CLI_PASSWORD", "sasl.password.file={file}"])
def test_the_file_and_env_forms_pass(invoke: Invoke, form: str, tmp_path: pytest.TempPathFactory,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    password_file = tmp_path / "password"  # type: ignore[operator]
    password_file.write_text(PASSWORD + "\n")
    monkeypatch.setenv("FLOWBUS_TEST_CLI_PASSWORD", PASSWORD)
    url = f"kafka://app@127.0.0.1:{_closed_port()}?{form.format(file=password_file)}"
    result = invoke("topics", "list", "--timeout-s", "0.5", "--broker", url)
    assert result.exit_code == 1 and "is the broker running?" in result.stderr, result.output
    assert PASSWORD not in result.output


def test_an_unset_password_variable_is_one_line(invoke: Invoke, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLOWBUS_TEST_UNSET", raising=False)
    result = invoke("topics", "list", "--broker", "kafka://app@127.0.0.1:9?sasl.password.env=FLOWBUS_TEST_UNSET")
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1] == (
        "Error: Invalid value for --broker: "
        "sasl.password.env=FLOWBUS_TEST_UNSET: the environment variable FLOWBUS_TEST_UNSET is not set"
    )
    bootstrap = invoke("users", "list", "--bootstrap", "kafka://app@127.0.0.1:9?sasl.password.env=FLOWBUS_TEST_UNSET")
    assert bootstrap.exit_code == 2
    assert "the environment variable FLOWBUS_TEST_UNSET is not set" in bootstrap.stderr.splitlines()[-1]


def test_tables_list_masks_a_password_from_the_environment(invoke: Invoke, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """``tables list`` prints the broker URL in its header: with the secret masked."""
    (tmp_path / "secret_tables_app.py").write_text(
        "from flowbus import App\napp = App('secret-tables')\ncounts = app.Table('counts')\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    url = f"kafka://app:{PASSWORD}@127.0.0.1:{_closed_port()}"
    # A closed port: --timeout-s bounds the wait for a broker that may be starting (10 s by default).
    result = invoke("tables", "list", "-A", "secret_tables_app:app", "--state-dir", str(tmp_path / "state"),
                    "--timeout-s", "0.5", env={"FLOWBUS_BROKER": url})
    assert "Broker: kafka://app:***@127.0.0.1:" in result.stdout, result.output
    assert PASSWORD not in result.output


def test_the_worker_masks_a_password_from_the_environment(tmp_path: Path) -> None:
    """An unreachable broker: the one error line quotes the URL with the password masked."""
    (tmp_path / "secret_worker_app.py").write_text("from flowbus import App\napp = App('secret-worker')\n")
    url = f"kafka://app:{PASSWORD}@127.0.0.1:{_closed_port()}?sasl.mechanism=SCRAM-SHA-512"
    env = {**os.environ, "FLOWBUS_BROKER": url}
    result = subprocess.run([sys.executable, "-m", "flowbus", "worker", "-A", "secret_worker_app:app", "--timeout-s", "1"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("Error: kafka://app:***@127.0.0.1:"), result.stderr
    assert PASSWORD not in result.stderr + result.stdout
