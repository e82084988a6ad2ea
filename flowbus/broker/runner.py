"""Run a broker until told to stop: the body of ``flowbus broker``.

Shutdown order on SIGTERM/SIGINT: stop accepting and close connections, then let the core flush
and close the logs (which writes the clean-shutdown marker), then return so the process exits 0.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from typing import TYPE_CHECKING

from flowbus.broker.config import BrokerConfig
from flowbus.broker.core import BrokerCore
from flowbus.broker.errors import BrokerConfigError, BrokerError
from flowbus.broker.handlers import Handlers
from flowbus.broker.security.credentials import CREDENTIALS_FILE, CredentialStore
from flowbus.broker.security.sasl import SaslSettings
from flowbus.broker.security.settings import SecuritySettings
from flowbus.broker.server import BrokerServer, ServerLimits
from flowbus.clock import SYSTEM_CLOCK, Clock
from flowbus.log.errors import LogError

if TYPE_CHECKING:
    from flowbus.web.server import WebServer

log = logging.getLogger("flowbus.broker")
#: The ready line has its own logger, kept at INFO whatever ``--log-level`` says, because
#: supervisors and tests wait for that line.
ready_log = logging.getLogger("flowbus.broker.ready")

READY_MESSAGE = "flowbus broker ready on %s:%d"
METRICS_MESSAGE = "flowbus broker metrics on http://%s:%d/metrics"
#: One line per listener before the ready line (name, protocol, bound and advertised address).
LISTENER_MESSAGE = "flowbus broker listener %s (%s) on %s:%d, advertised as %s:%s"

#: The interpreter's thread switch interval in a broker process (Python's default is 5 ms): how
#: long the event loop may wait for the interpreter while the codec thread decodes or encodes a
#: large request (``ServerLimits.codec_offload_frame_bytes``). Only the broker process sets it; a
#: worker embedding the broker keeps the default.
SWITCH_INTERVAL_S = 0.001
#: Generation-1 collections between two full (generation-2) collections in a broker process
#: (Python's default is 10). A full collection walks every object not frozen, chiefly the
#: in-flight requests' (~30,000-60,000 for a few at the element budget): 5-14 ms on the event
#: loop, one every few big requests, and it found nothing to free (the broker's objects go by
#: reference counting). A thousand gen-1 collections apart, it runs every few minutes of load.
FULL_COLLECTION_EVERY_GEN1 = 1_000
#: How often the broker checks whether partitions were created since its last freeze.
FREEZE_CHECK_INTERVAL_S = 5.0


async def freeze_new_partitions(core: BrokerCore, interval_s: float = FREEZE_CHECK_INTERVAL_S) -> None:
    """Move objects built since the last check out of the cyclic collector's reach when
    partitions were created meanwhile (CreateTopics, CreatePartitions, auto-creation).

    A partition's log, segments and indexes are ~40 tracked objects that live as long as the
    partition; with 2,000 partitions created after start-up a full collection walked 84,000 of
    them, 12-37 ms on the event loop, every few large requests. Frozen, it walks none. Young
    garbage is collected first (a cheap generation-1 collection), and closed logs hold no
    reference cycle (``PartitionLog.close``), so a deleted partition's objects are freed by
    reference counting even when frozen.
    """
    known = core.logs.partition_count()
    while True:
        await asyncio.sleep(interval_s)
        count = core.logs.partition_count()
        if count > known:
            gc.collect(1)
            gc.freeze()
        known = count


async def _serve_metrics(core: BrokerCore, server: BrokerServer, listen: tuple[str, int]) -> WebServer:
    """Start ``/metrics`` on ``listen``; a busy port is a BrokerError (one line, exit 1)."""
    from flowbus.web.broker import serve_broker_metrics
    from flowbus.web.errors import WebServerError

    try:
        metrics_server = await serve_broker_metrics(core, server, *listen)
    except WebServerError as exc:
        raise BrokerError(str(exc)) from exc
    ready_log.info(METRICS_MESSAGE, listen[0], metrics_server.port)
    return metrics_server


def make_server(
    core: BrokerCore,
    host: str,
    port: int,
    limits: ServerLimits | None,
    clock: Clock,
    security: SecuritySettings | None,
) -> BrokerServer:
    """The server, with its listeners, TLS and SASL when ``security`` is given (also used by
    the embedded broker of ``flowbus worker --listen``).

    Raises:
        BrokerError: the credentials file cannot be read, or a TLS file cannot be loaded.
    """
    if security is None:
        return BrokerServer(core, host=host, port=port, limits=limits, clock=clock)
    try:
        credentials = CredentialStore(core.config.data_dir / CREDENTIALS_FILE)
        if security.tls is not None:
            security.tls.server_context()  # fail at start-up, with the file's name, not per connection
    except BrokerConfigError as exc:
        raise BrokerError(str(exc)) from exc
    sasl = (
        SaslSettings(credentials, security.sasl_mechanisms, security.reauth_ms)
        if security.uses_sasl
        else None
    )
    if sasl is not None and not credentials.users():
        log.warning(
            "a SASL listener is configured but %s holds no user: add one with `flowbus users add`",
            credentials.path,
        )
    first = security.listeners[0]
    return BrokerServer(
        core,
        host=first.host,
        port=first.port,
        limits=limits,
        clock=clock,
        handlers=Handlers(core, credentials),
        listeners=list(security.listeners),
        tls=security.tls,
        sasl=sasl,
    )


async def run_broker(
    config: BrokerConfig,
    *,
    listen_host: str,
    listen_port: int,
    limits: ServerLimits | None = None,
    clock: Clock = SYSTEM_CLOCK,
    stop: asyncio.Event | None = None,
    metrics_listen: tuple[str, int] | None = None,
    security: SecuritySettings | None = None,
) -> None:
    """Serve until ``stop`` is set or SIGTERM/SIGINT arrives.

    When the listen port is 0 and no port is advertised, the bound port is advertised.
    ``metrics_listen`` also serves Prometheus metrics at ``http://HOST:PORT/metrics``, from this
    event loop (``docs/operations.md``); aiohttp and prometheus_client are loaded only then.
    ``security`` replaces the one plaintext listener by its listeners, TLS and SASL settings
    (``docs/security.md``); ``listen_host``/``listen_port`` are then ignored.
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (
            NotImplementedError,
            RuntimeError,
        ):  # not the main thread, or no signals here
            pass
    try:
        core = BrokerCore(config, clock=clock)
    except LogError as exc:
        raise BrokerError(f"cannot open {config.data_dir}: {exc}") from exc
    await core.start()
    try:
        server = make_server(core, listen_host, listen_port, limits, clock, security)
        await server.start()
    except OSError as exc:
        await core.close()
        where = (
            ", ".join(str(listener) for listener in security.listeners)
            if security is not None
            else f"{listen_host}:{listen_port}"
        )
        raise BrokerError(f"cannot listen on {where}: {exc.strerror or exc}") from exc
    except BrokerError:
        await core.close()
        raise
    tasks: list[asyncio.Task[None]] = []  # background work cancelled at shutdown
    metrics_server = None
    try:
        if config.advertised_port == 0:
            core.node = type(core.node)(core.node.node_id, core.node.host, server.port)
        for listener in server.listeners or []:
            ready_log.info(
                LISTENER_MESSAGE, listener.name, listener.protocol.value, listener.host,
                server.bound_ports[listener.name], listener.advertised_host, listener.advertised_port,
            )
        if metrics_listen is not None:
            metrics_server = await _serve_metrics(core, server, metrics_listen)
        # What start-up built (open logs, their indexes, loaded groups and producer state) lives
        # as long as the broker: moved out of the collector's reach, a full collection no longer
        # walks it on the event loop (40-64 ms with 2,100 partitions open, ~8 ms frozen; see
        # docs/benchmarks.md, Event-loop hold).
        gc.collect()
        gc.freeze()
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        gen0, gen1, _ = gc.get_threshold()
        gc.set_threshold(gen0, gen1, FULL_COLLECTION_EVERY_GEN1)
        tasks.append(asyncio.create_task(freeze_new_partitions(core), name="flowbus-gc-freeze"))
        ready_log.info(READY_MESSAGE, server.host, server.port)
        await stop.wait()
        log.info("flowbus broker shutting down")
    finally:
        for task in tasks:
            task.cancel()
        if metrics_server is not None:
            await metrics_server.close()
        await server.close()
        await core.close()
        log.info("flowbus broker stopped cleanly")
