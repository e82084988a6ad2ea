"""Run ``flowbus broker`` as a real child process for tests against real Kafka clients.

Generic on purpose (the broker tests and the framework tests both use it)::

    with BrokerProcess(tmp_path / "data") as broker:
        producer = confluent_kafka.Producer({"bootstrap.servers": broker.bootstrap})
        ...
        broker.kill()       # SIGKILL: a crash
        broker.restart()    # same data dir, same port

The broker's output goes to a log file (``broker.log_path``); :meth:`BrokerProcess.log_tail`
returns its end for assertion messages, and a broker that fails to start raises with it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from types import TracebackType
from typing import Self

READY_TEXT = "flowbus broker ready on"
#: Test defaults: no initial rebalance delay, so groups form without waiting 3 s.
DEFAULT_EXTRA_ARGS = ("--group-initial-rebalance-delay-ms", "0")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the broker binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class BrokerStartError(RuntimeError):
    """The broker process exited or did not log its ready line in time."""


class BrokerProcess:
    """A ``python -m flowbus broker`` child process on a free 127.0.0.1 port.

    Args:
        data_dir: the broker's data directory (kept across :meth:`restart`).
        port: the port to listen on; a free one when None.
        extra_args: more ``flowbus broker`` options.
        start_timeout_s: how long to wait for the ready line.
        log_path: where the broker's stdout/stderr go (default: ``<data_dir>-broker.log`` beside it).
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        extra_args: tuple[str, ...] | list[str] = DEFAULT_EXTRA_ARGS,
        start_timeout_s: float = 30.0,
        log_path: Path | None = None,
        log_level: str = "info",
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = "127.0.0.1"
        self.port = port if port is not None else free_port()
        self.extra_args = list(extra_args)
        self.start_timeout_s = start_timeout_s
        self.log_path = (
            log_path or self.data_dir.parent / f"{self.data_dir.name}-broker.log"
        )
        self.log_level = log_level
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._pump: threading.Thread | None = None
        self._ready_seen = False

    @property
    def bootstrap(self) -> str:
        """``host:port`` for ``bootstrap.servers`` / ``-b``."""
        return f"{self.host}:{self.port}"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "flowbus",
            "broker",
            "--listen",
            self.bootstrap,
            "--data-dir",
            str(self.data_dir),
            "--log-level",
            self.log_level,
            *self.extra_args,
        ]

    def start(self) -> BrokerProcess:
        """Start the process and wait for its ready line.

        Raises:
            BrokerStartError: the process exited, or was not ready within ``start_timeout_s``.
        """
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("the broker is already running")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        with open(self.log_path, "ab") as log_file:
            log_file.write(
                f"--- start #{self.starts}: {' '.join(self.command())}\n".encode()
            )
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            self.command(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        ready = threading.Event()
        self._pump = threading.Thread(
            target=self._pump_output,
            args=(self.process, ready),
            name=f"broker-{self.port}-log",
            daemon=True,
        )
        self._pump.start()
        if not ready.wait(self.start_timeout_s):
            self.kill()
            raise BrokerStartError(
                f"broker not ready after {self.start_timeout_s} s:\n{self.log_tail()}"
            )
        if not self._ready_seen:
            # The output ended without the ready line: the process is exiting (it may not be
            # reaped yet, so poll() could still say it runs).
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
            self._join_pump()
            raise BrokerStartError(
                f"broker exited with {self.process.returncode} before it was ready:\n{self.log_tail()}"
            )
        return self

    def _pump_output(
        self, process: subprocess.Popen[bytes], ready: threading.Event
    ) -> None:
        """Copy the broker's output to the log file line by line; set ``ready`` at the ready
        line (or at EOF, when the process died first). Runs until the process exits, so the
        pipe never fills up and blocks the broker."""
        assert process.stdout is not None
        self._ready_seen = False
        with open(self.log_path, "ab") as log_file:
            for line in process.stdout:
                log_file.write(line)
                log_file.flush()
                if not self._ready_seen and READY_TEXT.encode() in line:
                    self._ready_seen = True
                    ready.set()
        ready.set()

    def kill(self) -> None:
        """SIGKILL the broker (a crash: nothing is flushed or closed)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        self._join_pump()

    def _join_pump(self) -> None:
        """Wait until the output of the exited process is all in the log file."""
        if self._pump is not None:
            self._pump.join(10)
            self._pump = None
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()

    def terminate(self, timeout_s: float = 30.0) -> int:
        """SIGTERM the broker and wait for it to exit; returns its exit code."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
                raise
        self._join_pump()
        return int(self.process.returncode)

    def restart(self, *, kill: bool = False) -> BrokerProcess:
        """Stop (SIGTERM, or SIGKILL with ``kill``) and start again on the same dir and port."""
        if kill:
            self.kill()
        else:
            self.terminate()
        return self.start()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self) -> str:
        return (
            self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        )

    def log_tail(self, lines: int = 60) -> str:
        """The end of the broker's log, for assertion messages."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self.running:
                self.terminate()
        except Exception:  # noqa: BLE001 - never hide the test's own failure
            self.kill()


def run_in_thread(target: object, *args: object) -> threading.Thread:
    """Start a daemon thread (helpers for tests that run a client while the broker is killed)."""
    thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
    thread.start()
    return thread
