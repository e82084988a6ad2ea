"""``flowbus worker -A module:app``: run an app's agents, dataflows and timers in the foreground.

SIGTERM and SIGINT stop it cleanly: agents finish the event in hand, offsets are committed, the
worker leaves its group. While it waits for an agent it says which one, and a second signal
forces the stop (agents cancelled, nothing more committed, exit status 128 + signal); a third
exits at once. On a terminal it shows a live status line (events/s in and out, lag), which is
cleared before every log line so the two never share a line.

Every way the start can fail that is not a bug — an unreachable broker, a busy ``--listen``
port, an unusable or locked data dir, an app module that does not import — ends with one line
on stderr and a non-zero exit status, never a traceback (``-l debug`` adds the traceback).
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import logging
import os
import signal
import sys
import sysconfig
import threading
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

import click

from flowbus.cli.common import BROKER_ENVVAR, TIMEOUT_S_DEFAULT, BrokerUrlOption

if TYPE_CHECKING:
    from flowbus.app import App
    from flowbus.worker import Worker

log = logging.getLogger("flowbus.cli.worker")

STATUS_INTERVAL_S = 1.0
"""How often the status line is redrawn."""
WAIT_REPORT_DELAY_S = 1.0
"""After a stop signal, how long the worker may take before it says what it is waiting for."""
WAIT_REPORT_INTERVAL_S = 5.0
"""How often it says it again while it keeps waiting."""
FORCE_EXIT_GRACE_S = 5.0
"""After the second signal, how long the forced shutdown may take (closing clients, the data
dir) before the process exits without it; an agent blocking the event loop never lets it run."""
YOUNG_COLLECTION_OBJECTS = 50_000
"""The young generation's collection threshold while a worker runs (CPython's default: 700).
The threshold counts tracked objects allocated and not yet freed: a polled batch (up to
``max_poll_records`` records and their decoded values) lives until it is processed, so at 700
the collector walked each batch several times over, for nothing, since reference counting frees
it. A word count spent 8% of its time there. Cycles now wait for 50,000 new objects instead."""
CLEAR_LINE = "\r\x1b[K"
"""Carriage return and "erase to end of line" (ECMA-48 EL): what every status redraw starts with."""


# -- loading the app ------------------------------------------------------------------------

def _library_dirs() -> tuple[str, ...]:
    """Where flowbus, the standard library and installed packages live: not the user's code."""
    paths = sysconfig.get_paths()
    found = {str(Path(__file__).resolve().parents[1])}
    found.update(str(Path(paths[name]).resolve()) for name in ("stdlib", "platstdlib", "purelib", "platlib") if name in paths)
    return tuple(d + os.sep for d in found)


def _where(exc: BaseException) -> str:
    """``file, line N`` of the user's line that ``exc`` comes from: a SyntaxError's own position,
    else the innermost traceback frame in the user's code (not flowbus, a library or importlib),
    else the innermost real one."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{exc.filename}, line {exc.lineno}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<")]
    libraries = _library_dirs()
    own = [f for f in frames if not str(Path(f.filename).resolve()).startswith(libraries)]
    frame = own[-1] if own else frames[-1] if frames else None
    return f"{frame.filename}, line {frame.lineno}" if frame is not None else ""


def load_app(spec: str) -> App:
    """The :class:`~flowbus.App` named by ``module:attribute`` (the module found from the cwd too).

    Raises:
        click.BadParameter: ``spec`` is not ``module[:attribute]`` (exit status 2).
        click.ClickException: the module is not found or fails to import (its file and line and
            the exception, in one line), or the attribute is not an App (exit status 1).
    """
    from flowbus.app import App

    module_name, _, attribute = spec.partition(":")
    if not module_name:
        raise click.BadParameter(f"expected module:app, got {spec!r}", param_hint="-A")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise click.ClickException(
                f"cannot import {module_name!r}: no module named {exc.name!r} "
                f"(looked in {os.getcwd()} and the Python path)"
            ) from exc
        raise _import_failure(module_name, exc) from exc
    except Exception as exc:  # whatever the module raises (it is the user's code): one line
        raise _import_failure(module_name, exc) from exc
    if attribute:
        app = getattr(module, attribute, None)
    else:
        found = [v for v in vars(module).values() if isinstance(v, App)]
        app = found[0] if len(found) == 1 else None
    if not isinstance(app, App):
        what = f"{attribute!r} in {module_name!r}" if attribute else f"one App in {module_name!r}"
        raise click.ClickException(f"-A {spec}: found no {what}; expected module:attribute naming a flowbus.App")
    return app


def _import_failure(module_name: str, exc: BaseException) -> click.ClickException:
    log.debug("importing %s failed", module_name, exc_info=exc)
    message = exc.msg if isinstance(exc, SyntaxError) else str(exc)
    where = _where(exc)
    return click.ClickException(
        f"cannot import {module_name!r}: {where + ': ' if where else ''}{type(exc).__name__}: {message}"
    )


# -- the status line ------------------------------------------------------------------------

class StatusLine:
    """One line at the bottom of a terminal, redrawn in place; log lines go above it.

    Every redraw starts with :data:`CLEAR_LINE`, so a shorter line leaves nothing of a longer one
    behind. :class:`StatusAwareHandler` clears it before writing a log record and draws it again
    after, so a log line never starts in the middle of the status line.
    """

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.text = ""
        self.shown = False
        self.lock = threading.RLock()
        """Log records may come from other threads (librdkafka's callbacks)."""

    def show(self, text: str) -> None:
        with self.lock:
            self.text = text
            self.stream.write(CLEAR_LINE + text)
            self.stream.flush()
            self.shown = True

    def clear(self) -> None:
        """Erase the line (the cursor stays at its start) until the next :meth:`show`."""
        with self.lock:
            if self.shown:
                self.stream.write(CLEAR_LINE)
                self.stream.flush()
                self.shown = False

    def redraw(self) -> None:
        with self.lock:
            if self.text and not self.shown:
                self.show(self.text)

    def close(self) -> None:
        with self.lock:
            self.clear()
            self.text = ""


class StatusAwareHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that moves the status line out of the way of each log line."""

    def __init__(self, stream: IO[str], status: StatusLine | None) -> None:
        super().__init__(stream)
        self.status = status

    def emit(self, record: logging.LogRecord) -> None:
        if self.status is None:
            super().emit(record)
            return
        with self.status.lock:
            self.status.clear()
            super().emit(record)
            self.status.redraw()


def status_text(worker: Worker, rate_in: float, rate_out: float, lag: int | None) -> str:
    """``APP: in N ev/s | out M ev/s | P partitions | lag L`` (and the restore progress)."""
    restoring = ""
    if worker.state is not None and worker.state.restoring:
        done, total, rate = worker.state.restore_progress()
        restoring = f" | restoring {done:,}/{total:,} ({rate:,.0f}/s)"
    return (
        f"{worker.app.id}: in {rate_in:,.0f} ev/s | out {rate_out:,.0f} ev/s | "
        f"{len(worker.assigned)} partitions | lag {'?' if lag is None else f'{lag:,}'}{restoring}"
    )


async def _status_line(worker: Worker, line: StatusLine) -> None:
    """Redraw the status line every :data:`STATUS_INTERVAL_S` while the worker runs."""
    last_in = worker.events_in
    last_out = 0
    while True:
        await asyncio.sleep(STATUS_INTERVAL_S)
        rate_in = (worker.events_in - last_in) / STATUS_INTERVAL_S
        last_in = worker.events_in
        sent = worker.producer.records_sent if worker.producer is not None else 0
        rate_out = (sent - last_out) / STATUS_INTERVAL_S
        last_out = sent
        try:
            lag = await worker.lag()
        except Exception:  # noqa: BLE001 - a status line never stops the worker
            lag = None
        line.show(status_text(worker, rate_in, rate_out, lag))


# -- stopping -------------------------------------------------------------------------------

def _write_now(text: str) -> None:
    """Straight to fd 2: usable from a signal handler or a thread while the loop is stuck."""
    try:
        os.write(2, (CLEAR_LINE if sys.stderr.isatty() else "").encode() + text.encode() + b"\n")
    except OSError:
        pass


class Stopper:
    """SIGINT/SIGTERM: the first stops cleanly and then says what the stop waits for; the second
    forces the stop; the third exits at once.

    Python-level handlers (``signal.signal``), not the event loop's: they run even while an
    agent blocks the loop, so the second and third signals always work. The handlers only hand
    work to the loop (thread-safe) or to a timer thread.
    """

    def __init__(self, worker: Worker, loop: asyncio.AbstractEventLoop) -> None:
        self.worker = worker
        self.loop = loop
        self.signals = 0
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._report: asyncio.Task[None] | None = None
        self._stopping_seen = False
        """Set on the loop when it handles the first signal (the loop is not blocked)."""
        self._timers: list[threading.Timer] = []

    @property
    def forced(self) -> bool:
        return self.signals >= 2

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # Python runs signal handlers in the main thread only: the defaults stay
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def uninstall(self) -> None:
        """Restore the previous handlers and disarm the timers: the worker has stopped, so a
        process that goes on (``app.main()`` in a test catching SystemExit) is not exited later."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        for timer in self._timers:
            timer.cancel()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signals += 1
        self.signum = signum
        if self.loop.is_closed():
            return  # the worker has stopped; the process is on its way out
        if self.signals == 1:
            self.loop.call_soon_threadsafe(self._stop, signum)
            # If the loop does not get to _stop (an agent running blocking code holds it), say so.
            self._start_timer(WAIT_REPORT_DELAY_S, self._check_loop, signum)
        elif self.signals == 2:
            self.loop.call_soon_threadsafe(self._force, signum)
            self._start_timer(FORCE_EXIT_GRACE_S, self._exit_now, signum, "the forced stop took too long")
        else:
            self._exit_now(signum, f"{signal.Signals(signum).name} a third time")

    def _start_timer(self, delay_s: float, fn: Any, *args: Any) -> None:
        timer = threading.Timer(delay_s, fn, args=args)
        timer.daemon = True
        self._timers.append(timer)
        timer.start()

    def _check_loop(self, signum: int) -> None:
        if not self._stopping_seen and self.signals == 1:
            again = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            _write_now(f"flowbus worker: stopping, but the event loop is blocked (an agent running blocking "
                       f"code?); {again} again forces the stop")

    def _stop(self, signum: int) -> None:
        self._stopping_seen = True
        name = signal.Signals(signum).name
        log.warning("%s: stopping (agents finish their event, offsets are committed); %s again forces the stop",
                    name, "Ctrl-C" if signum == signal.SIGINT else name)
        self.worker.stop()
        self._report = self.loop.create_task(self._report_waiting(signum))

    async def _report_waiting(self, signum: int) -> None:
        again = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        await asyncio.sleep(WAIT_REPORT_DELAY_S)
        while not self.forced:
            busy = self.worker.busy_agents()
            if busy:
                log.warning("still stopping: waiting for agent %s to finish its event; %s again forces the stop",
                            ", ".join(busy), again)
            else:
                log.warning("still stopping: committing and leaving the group; %s again forces the stop", again)
            await asyncio.sleep(WAIT_REPORT_INTERVAL_S)

    def _force(self, signum: int) -> None:
        busy = self.worker.busy_agents()
        log.warning(
            "%s again: forcing the stop%s; nothing more is committed (what was processed since the last "
            "commit is processed again)", signal.Signals(signum).name,
            f", cancelling agent {', '.join(busy)}" if busy else "",
        )
        self.worker.force_stop()

    @staticmethod
    def _exit_now(signum: int, why: str) -> None:
        _write_now(f"flowbus worker: {why}: exiting without closing anything")
        os._exit(128 + signum)


# -- running --------------------------------------------------------------------------------

async def _check_kafka(url: str, timeout_s: float) -> None:
    """Fail fast, in one line, when a kafka:// broker does not answer: a TCP connect to each
    bootstrap server (a refused connection is known at once), then the broker's topics, all
    within ``timeout_s``. Without this the worker's clients retry for their own timeouts while
    librdkafka logs every attempt. A refused login ends the check at once (:func:`first_answer`):
    waiting does not fix a wrong password."""
    from flowbus.cli.common import first_answer, make_transport
    from flowbus.transports.errors import BrokerUnavailableError
    from flowbus.transports.kafka import _parse_url

    servers, _ = _parse_url(url)
    reasons = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    for server in servers.split(","):
        host, _, port = server.rpartition(":")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host.strip("[]"), int(port)), timeout_s)
        except (OSError, ValueError, TimeoutError) as exc:
            reason = "no answer" if isinstance(exc, TimeoutError) else (
                os.strerror(exc.errno).lower() if isinstance(exc, OSError) and exc.errno else str(exc))
            reasons.append(f"{server}: {reason}")
            continue
        writer.close()
        break
    else:
        raise BrokerUnavailableError(f"cannot connect to the broker ({'; '.join(reasons)})")
    transport = make_transport(url)
    try:
        await first_answer(transport, max(0.1, deadline - loop.time()))
    except BrokerUnavailableError as exc:
        raise BrokerUnavailableError(f"{exc} within {timeout_s:g} s (--timeout-s waits longer)") from exc
    finally:
        await transport.close()


async def _run(app: App, *, listen: str | None, status: StatusLine | None, timeout_s: float,
               stopper_box: list[Stopper], web: str | None = None) -> None:
    from flowbus.transports.embedded import EmbeddedTransport

    loop = asyncio.get_running_loop()
    transport = None
    if listen:
        transport = EmbeddedTransport(app.broker, clock=app.clock, listen=listen)
        app.use_transport(transport)
    worker = app.make_worker(transport)
    stopper = Stopper(worker, loop)
    stopper_box.append(stopper)
    stopper.install()
    if app.broker.startswith(("kafka://", "kafkas://")):
        await _check_kafka(app.broker, timeout_s)
    web_server = await _start_web(worker, web) if web else None
    status_task = asyncio.create_task(_status_line(worker, status)) if status is not None else None
    thresholds = gc.get_threshold()
    try:
        await worker.run(on_started=freeze_startup_objects)
    finally:
        # main(argv) may run in a process that goes on (a test, an embedding program)
        gc.unfreeze()
        gc.set_threshold(*thresholds)
        if status_task is not None:
            status_task.cancel()
            status.close()  # type: ignore[union-attr]
        if web_server is not None:
            await web_server.close()


def freeze_startup_objects() -> None:
    """Move what start-up built out of the cyclic collector's reach, as ``flowbus broker`` does,
    and collect the young generation less often (:data:`YOUNG_COLLECTION_OBJECTS`).

    Modules, the app, its compiled dataflows, stores and clients live as long as the worker, and
    every collection of the oldest generation walked them again while events flowed (the effect
    on a windowed count is in docs/benchmarks.md). A young-generation collection first frees what
    start-up left; frozen objects are still freed by reference counting, and :func:`_run`
    unfreezes them, and puts the thresholds back, when the worker stops.
    """
    gc.collect(1)
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_OBJECTS, gen1, gen2)


async def _start_web(worker: Worker, web: str) -> Any:
    """Serve ``--web`` (the dashboard, ``/metrics``, tables, pages: docs/operations.md) from this event loop; aiohttp and
    prometheus_client are imported only here. A busy port is a WebServerError (one line)."""
    from flowbus.broker.config import parse_host_port
    from flowbus.web.worker import serve_worker

    host, port = parse_host_port(web)
    web_server = await serve_worker(worker, host, port)
    log.info("web server on http://%s:%d (dashboard: %s, metrics: %s)", host, web_server.port,
             web_server.url("dashboard"), web_server.url("metrics"))
    return web_server


def configure_logging(level: str, status: StatusLine | None) -> None:
    """Log lines to stderr through :class:`StatusAwareHandler`; replaces earlier handlers (so
    ``app.main()`` called twice in a test does not print each line twice)."""
    handler = StatusAwareHandler(sys.stderr, status)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def run_worker(app: App, *, listen: str | None, timeout_s: float, log_level: str, web: str | None = None) -> None:
    """Run ``app``'s worker in this process until stopped; start failures become one-line
    ClickExceptions, a ``stop``-policy failure exit status 1, a forced stop 128 + signal."""
    from flowbus.app_errors import AgentError
    from flowbus.errors import FlowbusError
    from flowbus.transports.errors import BrokerUnavailableError

    if listen and not app.broker.startswith("embedded://"):
        raise click.UsageError("--listen serves the embedded broker; it needs an embedded:// broker")
    status = StatusLine(sys.stderr) if sys.stderr.isatty() else None
    configure_logging(log_level, status)
    stoppers: list[Stopper] = []
    try:
        asyncio.run(_run(app, listen=listen, status=status, timeout_s=timeout_s, stopper_box=stoppers, web=web))
    except AgentError as exc:
        click.echo(f"flowbus worker stopped: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:  # before the handlers were installed: nothing ran yet
        sys.exit(128 + signal.SIGINT)
    except BrokerUnavailableError as exc:
        from flowbus.transports.kafka import redact_url

        raise click.ClickException(f"{redact_url(app.broker)}: {exc}; is the broker running?") from exc
    except FlowbusError as exc:  # a bad data dir, a busy port, exactly_once without transactions...
        log.debug("the worker failed", exc_info=exc)
        raise click.ClickException(f"flowbus worker could not run {app.id!r}: {exc}") from exc
    finally:
        for stopper in stoppers:
            stopper.uninstall()
    if stoppers and stoppers[0].forced and stoppers[0].signum is not None:
        sys.exit(128 + stoppers[0].signum)


WORKER_HELP = "Run an app's worker until SIGTERM/SIGINT (a second one forces the stop)."


def worker_options(func: Any) -> Any:
    """The options ``flowbus worker`` and ``app.main()`` share."""
    options = [
        click.option(
            "--broker", default=None, envvar=BROKER_ENVVAR, show_envvar=True, cls=BrokerUrlOption,
            help="Broker URL, overriding the app's (embedded://DIR, kafka://HOST:PORT).",
        ),
        click.option("--data-dir", default=None, help="Data directory of the embedded broker (embedded://DATA_DIR)."),
        click.option("--listen", default=None, cls=BrokerUrlOption, help="Also serve the embedded broker on HOST:PORT for other workers and tools, "
                     "or on a secured listener: PROTOCOL://HOST:PORT?ssl.certfile=...&sasl.mechanisms=... "
                     "(docs/security.md)."),
        click.option(
            "--web", default=None, metavar="HOST:PORT", envvar="FLOWBUS_WEB", show_envvar=True, callback=_web_address,
            help="Serve HTTP on HOST:PORT: the live dashboard at /, Prometheus metrics at /metrics, table "
                 "queries at /tables/NAME/KEY (forwarded to the worker owning the key) and @app.page "
                 "handlers (port 0 picks a free port; default: off). See docs/operations.md.",
        ),
        click.option(
            "--state-dir", default=None, envvar="FLOWBUS_STATE_DIR", show_envvar=True,
            help="Where tables keep their local databases (default: DATA_DIR/state on embedded://, ./flowbus-state otherwise).",
        ),
        click.option(
            "--timeout-s", type=click.FloatRange(min=0, min_open=True), default=TIMEOUT_S_DEFAULT, show_default=True,
            help="Give up starting when a kafka:// broker does not answer within this many seconds.",
        ),
        click.option(
            "-l", "--log-level", default="info", show_default=True,
            type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _web_address(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``--web`` must be HOST:PORT (checked before anything starts)."""
    if value is None:
        return None
    from flowbus.broker.config import parse_host_port
    from flowbus.broker.errors import BrokerConfigError

    try:
        parse_host_port(value)
    except BrokerConfigError as exc:
        raise click.BadParameter(str(exc)) from exc
    return value


def configure_app(app: App, *, broker: str | None, data_dir: str | None, state_dir: str | None) -> None:
    """Apply ``--broker``, ``--data-dir`` and ``--state-dir`` to ``app``."""
    # $FLOWBUS_BROKER is a default for every flowbus command; an explicit --data-dir beats it.
    from_env = click.get_current_context().get_parameter_source("broker") is click.core.ParameterSource.ENVIRONMENT
    if broker and data_dir and not from_env:
        raise click.UsageError("give --broker or --data-dir, not both")
    if data_dir:
        broker = f"embedded://{data_dir}"
    if broker:
        app.broker = broker
    if state_dir:
        app.state_dir = Path(state_dir)


@click.command("worker", help=WORKER_HELP)
@click.option("-A", "--app", "app_spec", required=True, help="The app to run, as module:attribute.")
@worker_options
def worker(app_spec: str, broker: str | None, data_dir: str | None, listen: str | None, state_dir: str | None,
           timeout_s: float, log_level: str, web: str | None = None) -> None:
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = load_app(app_spec)
    configure_app(app, broker=broker, data_dir=data_dir, state_dir=state_dir)
    run_worker(app, listen=listen, timeout_s=timeout_s, log_level=log_level, web=web)


def app_main(app: App, argv: Sequence[str] | None = None) -> None:
    """``app.main()``: ``flowbus worker`` for an app already loaded, taking the same options
    (without ``-A``) from ``argv`` (default: the command line)."""

    @click.command(help=WORKER_HELP)
    @worker_options
    def main(broker: str | None, data_dir: str | None, listen: str | None, state_dir: str | None,
             timeout_s: float, log_level: str, web: str | None = None) -> None:
        configure_app(app, broker=broker, data_dir=data_dir, state_dir=state_dir)
        run_worker(app, listen=listen, timeout_s=timeout_s, log_level=log_level, web=web)

    main.main(args=list(argv) if argv is not None else sys.argv[1:], prog_name=Path(sys.argv[0]).name or app.id,
              help_option_names=["-h", "--help"])
