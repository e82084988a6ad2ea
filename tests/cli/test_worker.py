"""``flowbus worker`` as a real process: each start error is exactly one line on stderr with a
non-zero exit status; SIGINT stops cleanly, says what it waits for, and a second one forces the
stop; the status line is drawn only on a terminal and never shares a line with a log line.

Every process is bounded by a timeout; ports are free ports of 127.0.0.1.
"""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowbus.cli.worker import CLEAR_LINE, FORCE_EXIT_GRACE_S
from tests.support.broker_process import free_port

pytestmark = pytest.mark.timeout(120)

FLOWBUS = [sys.executable, "-m", "flowbus"]

SIMPLE_APP = textwrap.dedent(
    """
    from flowbus import App

    app = App("simple")
    src = app.topic("src")
    dst = app.topic("dst")

    @app.agent(src, sink=[dst])
    async def double(stream):
        async for value in stream:
            yield value * 2
    """
)

STUCK_APP = textwrap.dedent(
    """
    import asyncio, time
    from flowbus import App

    app = App("stuck")
    src = app.topic("src")

    @app.agent(src)
    async def slow(stream):
        async for value in stream:
            print("in the event", flush=True)
            BLOCK

    @app.task
    async def feed():
        await src.send(1)
    """
)

TICKING_APP = textwrap.dedent(
    """
    import logging
    from flowbus import App

    app = App("ticking")

    @app.timer(0.3)
    async def tick():
        logging.getLogger("ticking").warning("tick")
    """
)


def worker(args: list[str], cwd: Path, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "FLOWBUS_BROKER"}
    return subprocess.run([*FLOWBUS, "worker", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout_s, check=False, env=env)


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "simple_app.py").write_text(SIMPLE_APP)
    return tmp_path


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


def assert_one_line(result: subprocess.CompletedProcess[str], expected: str | re.Pattern[str], status: int = 1) -> None:
    lines = result.stderr.splitlines()
    assert result.returncode == status, result.stderr
    assert len(lines) == 1, result.stderr
    if isinstance(expected, str):
        assert lines[0] == expected
    else:
        assert expected.fullmatch(lines[0]), lines[0]


# -- one-line start errors ------------------------------------------------------------------

def test_a_broker_refusing_connections_is_one_line_at_once(app_dir: Path) -> None:
    port = free_port()  # nothing listens there
    started = time.monotonic()
    result = worker(["-A", "simple_app:app", "--broker", f"kafka://127.0.0.1:{port}"], app_dir)
    assert time.monotonic() - started < 10
    assert_one_line(result, f"Error: kafka://127.0.0.1:{port}: cannot connect to the broker "
                            f"(127.0.0.1:{port}: connection refused); is the broker running?")


def test_a_broker_that_does_not_answer_is_one_line_after_the_timeout(app_dir: Path, silent_listener: int) -> None:
    port = silent_listener
    started = time.monotonic()
    result = worker(["-A", "simple_app:app", "--broker", f"kafka://127.0.0.1:{port}", "--timeout-s", "1"], app_dir)
    assert time.monotonic() - started < 10
    assert_one_line(result, re.compile(
        rf"Error: kafka://127\.0\.0\.1:{port}: listing topics of 127\.0\.0\.1:{port}: no answer from the broker "
        rf"\(.*\) within 1 s \(--timeout-s waits longer\); is the broker running\?"
    ))


def test_a_busy_listen_port_is_one_line(app_dir: Path, silent_listener: int) -> None:
    port = silent_listener
    result = worker(["-A", "simple_app:app", "--data-dir", str(app_dir / "data"), "--listen", f"127.0.0.1:{port}"], app_dir)
    assert_one_line(result, f"Error: flowbus worker could not run 'simple': cannot listen on 127.0.0.1:{port}: "
                            f"address already in use")


def test_a_data_dir_that_is_a_file_is_one_line(app_dir: Path) -> None:
    (app_dir / "afile").write_text("")
    result = worker(["-A", "simple_app:app", "--data-dir", "afile"], app_dir)
    assert_one_line(result, f"Error: flowbus worker could not run 'simple': cannot open data dir "
                            f"{app_dir / 'afile'}: it is a file, not a directory")
    result = worker(["-A", "simple_app:app", "--data-dir", "afile/data"], app_dir)
    assert_one_line(result, f"Error: flowbus worker could not run 'simple': cannot create data dir "
                            f"{app_dir / 'afile' / 'data'}: {app_dir / 'afile'} is a file, not a directory")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_data_dir_that_is_not_writable_is_one_line(app_dir: Path) -> None:
    readonly = app_dir / "readonly"
    readonly.mkdir(mode=0o555)
    result = worker(["-A", "simple_app:app", "--data-dir", "readonly/data"], app_dir)
    assert_one_line(result, f"Error: flowbus worker could not run 'simple': cannot open data dir "
                            f"{readonly / 'data'}: permission denied ({readonly / 'data'})")


def test_a_data_dir_under_proc_is_one_line(app_dir: Path) -> None:
    """Not writable even for root (the CI runs as root)."""
    result = worker(["-A", "simple_app:app", "--data-dir", "/proc/flowbus-data"], app_dir)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        ("Error: flowbus worker could not run 'simple': cannot open data dir /proc/flowbus-data: "
         "no such file or directory (/proc/flowbus-data)")
    ]


def test_a_data_dir_held_by_another_worker_is_one_line(app_dir: Path) -> None:
    data = app_dir / "data"
    first = subprocess.Popen([*FLOWBUS, "worker", "-A", "simple_app:app", "--data-dir", str(data)], cwd=app_dir,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert first.stderr is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "assigned" not in first.stderr.readline():
            pass
        result = worker(["-A", "simple_app:app", "--data-dir", str(data)], app_dir)
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=30)
    assert_one_line(result, f"Error: flowbus worker could not run 'simple': data dir {data} is in use by another "
                            f"worker or flowbus broker, and only one process may open it: start that one with "
                            f"--listen HOST:PORT and use --broker kafka://HOST:PORT")
    assert first.returncode == 0


@pytest.mark.parametrize(("source", "expected"), [
    ("x = (\n", "{file}, line 1: SyntaxError: '(' was never closed"),
    ("import os\nimport no_such_module_zz\n", "{file}, line 2: ModuleNotFoundError: No module named 'no_such_module_zz'"),
    ("from flowbus import App\napp = App('a')\n1 / 0\n", "{file}, line 3: ZeroDivisionError: division by zero"),
    ("from flowbus import App\napp = App('a')\napp.topic('bad topic!')\n",
     ("{file}, line 3: ConfigurationError: topic name 'bad topic!' may contain only ASCII letters, digits, "
      "'.', '_' and '-' (Kafka's rule for topic names)")),
])
def test_an_app_module_that_does_not_import_is_one_line_with_file_and_line(
    tmp_path: Path, source: str, expected: str
) -> None:
    module = tmp_path / "broken_app.py"
    module.write_text(source)
    result = worker(["-A", "broken_app:app", "--data-dir", "data"], tmp_path)
    assert_one_line(result, "Error: cannot import 'broken_app': " + expected.format(file=module))
    assert "click" not in result.stderr


def test_an_app_that_is_not_there_is_one_line(app_dir: Path) -> None:
    result = worker(["-A", "no_such_app:app"], app_dir)
    assert_one_line(result, f"Error: cannot import 'no_such_app': no module named 'no_such_app' "
                            f"(looked in {app_dir} and the Python path)")
    result = worker(["-A", "simple_app:other"], app_dir)
    assert_one_line(result, "Error: -A simple_app:other: found no 'other' in 'simple_app'; "
                            "expected module:attribute naming a flowbus.App")


def test_an_app_with_nothing_to_run_says_so(tmp_path: Path) -> None:
    (tmp_path / "empty_app.py").write_text("from flowbus import App\napp = App('empty')\n")
    process = subprocess.Popen([*FLOWBUS, "worker", "-A", "empty_app:app", "--data-dir", "data", "-l", "warning"],
                               cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    assert line.endswith(
        "WARNING flowbus.worker: app 'empty' has no agents, dataflows, tables, timers, crontabs or tasks: "
        "this worker has nothing to run (were they declared on another App, or does -A name the wrong module?)\n"
    )


# -- stopping -------------------------------------------------------------------------------

def _start_stuck(tmp_path: Path, block: str) -> subprocess.Popen[str]:
    (tmp_path / "stuck_app.py").write_text(STUCK_APP.replace("BLOCK", block))
    process = subprocess.Popen([*FLOWBUS, "worker", "-A", "stuck_app:app", "--data-dir", "data", "-l", "warning"],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], 30)
    assert ready and process.stdout.readline() == "in the event\n"
    return process


def _stderr_lines(process: subprocess.Popen[str], until: str, timeout_s: float) -> list[str]:
    """stderr lines, read until one contains ``until``."""
    assert process.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stderr], [], [], 0.1)
        if ready:
            line = process.stderr.readline()
            if not line:
                break
            lines.append(line)
            if until in line:
                return lines
    raise AssertionError(f"no line with {until!r} within {timeout_s} s: {lines}")


def test_sigint_says_what_it_waits_for_and_a_second_one_forces_the_stop(tmp_path: Path) -> None:
    process = _start_stuck(tmp_path, "await asyncio.sleep(3600)")
    try:
        process.send_signal(signal.SIGINT)
        lines = _stderr_lines(process, "still stopping", timeout_s=10)
        assert lines[0].endswith("WARNING flowbus.cli.worker: SIGINT: stopping (agents finish their event, offsets "
                                 "are committed); Ctrl-C again forces the stop\n")
        assert lines[-1].endswith("WARNING flowbus.cli.worker: still stopping: waiting for agent stuck_app.slow#0 "
                                  "(src[0]@0) to finish its event; Ctrl-C again forces the stop\n")
        process.send_signal(signal.SIGINT)
        _, rest = process.communicate(timeout=FORCE_EXIT_GRACE_S)  # forced: well within the grace
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + signal.SIGINT
    assert "SIGINT again: forcing the stop, cancelling agent stuck_app.slow#0 (src[0]@0)" in rest
    assert "Traceback" not in rest


def test_a_second_sigint_stops_a_worker_whose_agent_blocks_the_loop(tmp_path: Path) -> None:
    process = _start_stuck(tmp_path, "time.sleep(3600)")
    try:
        process.send_signal(signal.SIGINT)
        lines = _stderr_lines(process, "event loop is blocked", timeout_s=10)
        assert lines[-1] == ("flowbus worker: stopping, but the event loop is blocked (an agent running blocking "
                             "code?); Ctrl-C again forces the stop\n")
        process.send_signal(signal.SIGINT)
        _, rest = process.communicate(timeout=FORCE_EXIT_GRACE_S + 10)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + signal.SIGINT
    assert rest == "flowbus worker: the forced stop took too long: exiting without closing anything\n"


# -- the status line ------------------------------------------------------------------------

def test_no_status_line_when_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    (tmp_path / "ticking_app.py").write_text(TICKING_APP)
    process = subprocess.Popen([*FLOWBUS, "worker", "-A", "ticking_app:app", "--data-dir", "data"], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _stderr_lines(process, "tick", timeout_s=30)
        time.sleep(2.5)  # two status intervals
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert "\r" not in out + err and "\x1b" not in out + err
    assert "ticking: in" not in out + err


def test_on_a_terminal_the_status_line_is_cleared_before_each_log_line(tmp_path: Path) -> None:
    (tmp_path / "ticking_app.py").write_text(TICKING_APP)
    leader, follower = pty.openpty()
    process = subprocess.Popen([*FLOWBUS, "worker", "-A", "ticking_app:app", "--data-dir", "data"], cwd=tmp_path,
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=follower)
    os.close(follower)
    output = b""
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and output.count(b"ticking: in") < 2:
            ready, _, _ = select.select([leader], [], [], 0.1)
            if ready:
                output += os.read(leader, 65536)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        while select.select([leader], [], [], 0.2)[0]:
            try:
                output += os.read(leader, 65536)
            except OSError:
                break
    finally:
        if process.poll() is None:
            process.kill()
        os.close(leader)
    text = output.decode()
    clear = CLEAR_LINE
    assert text.count("ticking: in") >= 2, text
    # Every status line is drawn from the start of a cleared line ...
    assert all(piece.endswith(clear) for piece in text.split("ticking: in")[:-1]), text
    # ... and every log line after the first status line starts on a cleared line, so the two
    # never share one: no log line is glued onto the end of a status line.
    after = text[text.index("ticking: in"):]
    log_starts = [m.start() for m in re.finditer(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", after)]
    assert log_starts, text
    assert all(after[:start].endswith(clear) for start in log_starts), text
    assert not re.search(r"lag [0-9?,]+ *\d{4}-\d\d-\d\d", text), text
