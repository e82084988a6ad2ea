"""``flowbus worker -A module:app``: run an app's agents, dataflows and timers in the foreground.

SIGTERM and SIGINT stop it cleanly: agents finish the event in hand, offsets are committed, the
worker leaves its group. On a terminal it shows a live status line (events/s in and out, lag).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from flowbus.app import App
    from flowbus.worker import Worker

STATUS_INTERVAL_S = 1.0
"""How often the status line is redrawn."""


def load_app(spec: str) -> App:
    """The :class:`~flowbus.App` named by ``module:attribute`` (the module found from the cwd too)."""
    from flowbus.app import App

    module_name, _, attribute = spec.partition(":")
    if not module_name:
        raise click.BadParameter(f"expected module:app, got {spec!r}", param_hint="-A")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.BadParameter(f"cannot import {module_name!r}: {exc}", param_hint="-A") from exc
    if attribute:
        app = getattr(module, attribute, None)
    else:
        found = [v for v in vars(module).values() if isinstance(v, App)]
        app = found[0] if len(found) == 1 else None
    if not isinstance(app, App):
        raise click.BadParameter(f"{spec!r} does not name a flowbus.App", param_hint="-A")
    return app


async def _status_line(worker: Worker) -> None:
    """Redraw ``in N ev/s | out M ev/s | P partitions | lag L`` in place while the worker runs."""
    last_in = worker.events_in
    last_out = 0
    while True:
        await asyncio.sleep(STATUS_INTERVAL_S)
        rate_in = (worker.events_in - last_in) / STATUS_INTERVAL_S
        last_in = worker.events_in
        sent = worker.producer.records_sent if worker.producer is not None else 0
        rate_out = (sent - last_out) / STATUS_INTERVAL_S
        last_out = sent
        lag = "?"
        consumer = worker.consumer
        if consumer is not None and worker.assigned:
            try:
                ends = await consumer.end_offsets(sorted(worker.assigned))
                lag = str(sum(max(0, end - worker.dispatched_next.get(tp, 0)) for tp, end in ends.items()))
            except Exception:  # noqa: BLE001 - a status line never stops the worker
                lag = "?"
        restoring = ""
        if worker.state is not None and worker.state.restoring:
            done, total, rate = worker.state.restore_progress()
            restoring = f" | restoring {done:,}/{total:,} ({rate:,.0f}/s)"
        sys.stderr.write(
            f"\r{worker.app.id}: in {rate_in:,.0f} ev/s | out {rate_out:,.0f} ev/s | "
            f"{len(worker.assigned)} partitions | lag {lag}{restoring}   "
        )
        sys.stderr.flush()


async def _run(app: App, listen: str | None, status: bool) -> None:
    from flowbus.transports.embedded import EmbeddedTransport

    loop = asyncio.get_running_loop()
    transport = None
    if listen:
        if not app.broker.startswith("embedded://"):
            raise click.UsageError("--listen serves the embedded broker; it needs an embedded:// broker")
        transport = EmbeddedTransport(app.broker, clock=app.clock, listen=listen)
        app.use_transport(transport)
    worker = app.make_worker(transport)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    status_task = asyncio.create_task(_status_line(worker)) if status else None
    try:
        await worker.run()
    finally:
        if status_task is not None:
            status_task.cancel()
            sys.stderr.write("\n")


@click.command("worker")
@click.option("-A", "--app", "app_spec", required=True, help="The app to run, as module:attribute.")
@click.option(
    "--broker", default=None, envvar="FLOWBUS_BROKER", show_envvar=True,
    help="Broker URL, overriding the app's (embedded://DIR, kafka://HOST:PORT).",
)
@click.option("--data-dir", default=None, help="Data directory of the embedded broker (embedded://DATA_DIR).")
@click.option("--listen", default=None, help="Also serve the embedded broker on HOST:PORT for other workers and tools.")
@click.option(
    "--state-dir", default=None, envvar="FLOWBUS_STATE_DIR", show_envvar=True,
    help="Where tables keep their local databases (default: DATA_DIR/state on embedded://, ./flowbus-state otherwise).",
)
@click.option(
    "-l", "--log-level", default="info", show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
)
def worker(app_spec: str, broker: str | None, data_dir: str | None, listen: str | None, state_dir: str | None,
           log_level: str) -> None:
    """Run an app's worker until SIGTERM/SIGINT."""
    from flowbus.app_errors import AgentError
    from flowbus.errors import FlowbusError

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = load_app(app_spec)
    # $FLOWBUS_BROKER is a default for every flowbus command; an explicit --data-dir beats it.
    from_env = click.get_current_context().get_parameter_source("broker") is click.core.ParameterSource.ENVIRONMENT
    if broker and data_dir and not from_env:
        raise click.UsageError("give --broker or --data-dir, not both")
    if data_dir:
        broker = f"embedded://{data_dir}"
    if broker:
        app.broker = broker
    if state_dir:
        from pathlib import Path

        app.state_dir = Path(state_dir)
    status = sys.stderr.isatty()
    try:
        asyncio.run(_run(app, listen, status))
    except AgentError as exc:
        click.echo(f"flowbus worker stopped: {exc}", err=True)
        sys.exit(1)
    except FlowbusError as exc:  # e.g. exactly_once on a broker without transactions
        click.echo(f"flowbus worker could not run {app.id!r}: {exc}", err=True)
        sys.exit(1)
