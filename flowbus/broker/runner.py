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

from flowbus.broker.config import BrokerConfig
from flowbus.broker.core import BrokerCore
from flowbus.broker.errors import BrokerError
from flowbus.broker.server import BrokerServer, ServerLimits
from flowbus.clock import SYSTEM_CLOCK, Clock
from flowbus.log.errors import LogError

log = logging.getLogger("flowbus.broker")
#: The ready line has its own logger, kept at INFO whatever ``--log-level`` says, because
#: supervisors and tests wait for that line.
ready_log = logging.getLogger("flowbus.broker.ready")

READY_MESSAGE = "flowbus broker ready on %s:%d"

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


async def run_broker(
    config: BrokerConfig,
    *,
    listen_host: str,
    listen_port: int,
    limits: ServerLimits | None = None,
    clock: Clock = SYSTEM_CLOCK,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until ``stop`` is set or SIGTERM/SIGINT arrives.

    When the listen port is 0 and no port is advertised, the bound port is advertised.
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
    server = BrokerServer(
        core, host=listen_host, port=listen_port, limits=limits, clock=clock
    )
    try:
        await server.start()
    except OSError as exc:
        await core.close()
        raise BrokerError(
            f"cannot listen on {listen_host}:{listen_port}: {exc.strerror or exc}"
        ) from exc
    tasks: list[asyncio.Task[None]] = []  # background work cancelled at shutdown
    try:
        if config.advertised_port == 0:
            core.node = type(core.node)(core.node.node_id, core.node.host, server.port)
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
        ready_log.info(READY_MESSAGE, listen_host, server.port)
        await stop.wait()
        log.info("flowbus broker shutting down")
    finally:
        for task in tasks:
            task.cancel()
        await server.close()
        await core.close()
        log.info("flowbus broker stopped cleanly")
