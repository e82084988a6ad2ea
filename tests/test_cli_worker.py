"""``flowbus worker``: loading the app, exit status on a stop-policy failure, the status line.

The one-line start errors, stopping with signals and the status line on a terminal are in
``tests/cli/test_worker.py`` (real worker processes)."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import click
import pytest

from flowbus.cli import worker as cli_worker

FAILING_APP = textwrap.dedent(
    """
    from flowbus import App

    app = App("failing", error_policy="stop")
    numbers = app.topic("numbers")

    @app.agent(numbers)
    async def explode(stream):
        async for n in stream:
            raise RuntimeError(f"cannot handle {n}")

    @app.task
    async def feed():
        await numbers.send(7)
    """
)


def test_load_app_names_what_is_wrong(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "some_module.py").write_text("from flowbus import App\napp = App('x')\nother = 3\n")
    monkeypatch.chdir(tmp_path)
    assert cli_worker.load_app("some_module:app").id == "x"
    assert cli_worker.load_app("some_module").id == "x"
    with pytest.raises(click.ClickException, match="found no 'other' in 'some_module'"):
        cli_worker.load_app("some_module:other")
    with pytest.raises(click.ClickException, match="cannot import 'no_such_module': no module named"):
        cli_worker.load_app("no_such_module:app")
    with pytest.raises(click.BadParameter, match="expected module:app"):
        cli_worker.load_app(":app")


def test_stop_policy_failure_exits_nonzero(tmp_path: Path) -> None:
    (tmp_path / "failing_app.py").write_text(FAILING_APP)
    result = subprocess.run(
        [sys.executable, "-m", "flowbus", "worker", "-A", "failing_app:app", "--data-dir", str(tmp_path / "data")],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "failing_app" not in result.stdout
    assert "numbers[0]@0" in result.stderr  # logged with topic, partition and offset
    assert "flowbus worker stopped" in result.stderr


def test_status_line_shows_rates_and_lag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_worker, "STATUS_INTERVAL_S", 0.01)

    calls: list[int] = []
    second_call = asyncio.Event()  # the status line is written right after each call returns

    async def lag() -> int:
        calls.append(1)
        if len(calls) == 2:
            second_call.set()
        return 6

    worker = SimpleNamespace(
        app=SimpleNamespace(id="demo"), events_in=0, producer=SimpleNamespace(records_sent=0),
        assigned={("t", 0)}, state=None, lag=lag,
    )
    out = io.StringIO()
    line = cli_worker.StatusLine(out)

    async def main() -> None:
        task = asyncio.create_task(cli_worker._status_line(worker, line))  # type: ignore[arg-type]
        worker.events_in, worker.producer.records_sent = 5, 3
        await asyncio.wait_for(second_call.wait(), 10)  # so at least one line was written
        task.cancel()

    asyncio.run(main())
    written = out.getvalue()
    assert written.startswith(cli_worker.CLEAR_LINE + "demo: in ")
    assert "out" in written and "1 partitions | lag 6" in written


def test_exactly_once_runs_on_the_embedded_broker(tmp_path: Path) -> None:
    """The embedded broker has transactions: the task's send is committed in the worker's
    transaction, so the read_committed agent receives it (and stops the worker on purpose)."""
    (tmp_path / "eos_app.py").write_text(FAILING_APP.replace('App("failing", ', 'App("eos", processing_guarantee="exactly_once", '))
    result = subprocess.run(
        [sys.executable, "-m", "flowbus", "worker", "-A", "eos_app:app", "--data-dir", str(tmp_path / "data")],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "numbers[0]@0" in result.stderr, result.stderr
