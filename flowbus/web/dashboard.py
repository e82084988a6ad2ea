"""The live dashboard of a worker (``--web``) and of a broker (``--metrics``/``--web``).

One HTML page and one hand-written JavaScript file (``flowbus/web/static/``, shipped in the
package: no CDN, it works offline) poll ``GET /api/stats`` every second and draw line plots on a
canvas. The numbers are the counters the Prometheus collectors read
(:mod:`flowbus.metrics`); a sampler task on the process's event loop turns them into per-second
rates once a second and keeps the last :data:`HISTORY_POINTS_MAX` points, so a page opened late
still shows the last few minutes.

Why sample on the server rather than in the page: rates need two readings a known time apart,
and several open pages (or none) must not change what is measured.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web

from flowbus.metrics.broker_collector import OPEN_TXN_STATES
from flowbus.metrics.worker_collector import disk_bytes
from flowbus.protocol.error_codes import ErrorCode
from flowbus.web.tables import json_response

if TYPE_CHECKING:
    from flowbus.broker.core import BrokerCore
    from flowbus.broker.server import BrokerServer
    from flowbus.metrics.worker_collector import WorkerCollector
    from flowbus.web.routing import Router
    from flowbus.web.server import WebServer
    from flowbus.worker import Worker

log = logging.getLogger(__name__)

#: Route names and paths (``docs/operations.md``, "HTTP API").
DASHBOARD_ROUTE, DASHBOARD_PATH = "dashboard", "/dashboard"
STATIC_ROUTE, STATIC_PATH = "dashboard-static", "/dashboard/static/{name}"
STATS_ROUTE, STATS_PATH = "stats", "/api/stats"

#: Seconds between two samples (the plots' resolution; the page polls at the same pace).
SAMPLE_INTERVAL_S = 1.0
#: Points kept per plot: five minutes at one a second.
HISTORY_POINTS_MAX = 300
#: Rows of the page's tables; a broker with more topics, partitions or groups shows the first ones
#: (sorted by name) and says how many there are.
TOPICS_SHOWN_MAX = 200
PARTITIONS_SHOWN_MAX = 1_000
GROUPS_SHOWN_MAX = 100
#: Keys counted per table (a walk of its partitions' databases); past it the count says "at least".
KEYS_COUNTED_MAX = 10_000
#: Table keys are counted every this many samples: the walk costs more than reading counters.
TABLES_EVERY_SAMPLES = 5

#: The files of ``flowbus/web/static/`` the page may ask for, with their content types.
STATIC_FILES = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}


def static_text(name: str) -> str:
    """A file of ``flowbus/web/static/`` (package data: installed with the package)."""
    return resources.files("flowbus.web").joinpath("static", name).read_text(encoding="utf-8")


class History:
    """The last :data:`HISTORY_POINTS_MAX` samples of named series, and the totals they are rates of."""

    def __init__(self, names: list[str]) -> None:
        self.times_ms: deque[int] = deque(maxlen=HISTORY_POINTS_MAX)
        self.series: dict[str, deque[float]] = {name: deque(maxlen=HISTORY_POINTS_MAX) for name in names}
        self._last: dict[str, float] = {}
        self._last_s: float | None = None
        self.samples = 0

    def add(self, now_s: float, totals: dict[str, float], levels: dict[str, float]) -> None:
        """One sample: ``totals`` are counters (stored as their rate per second since the last
        sample; the first sample stores none), ``levels`` are gauges stored as they are."""
        self.samples += 1
        if self._last_s is None:
            self._last, self._last_s = dict(totals), now_s
            return
        elapsed_s = max(now_s - self._last_s, 1e-3)
        self.times_ms.append(int(time.time() * 1000))
        for name, total in totals.items():
            # A counter going down (a deleted and recreated topic) is a reset: count from zero.
            delta = total - self._last.get(name, 0.0)
            self.series[name].append(round((delta if delta >= 0 else total) / elapsed_s, 3))
        for name, level in levels.items():
            self.series[name].append(level)
        self._last, self._last_s = dict(totals), now_s

    def as_json(self) -> dict[str, Any]:
        return {"t": list(self.times_ms), **{name: list(values) for name, values in self.series.items()}}


async def sample_forever(sample: Callable[[], Any]) -> None:
    """Call ``sample()`` (awaiting it when it is a coroutine) every :data:`SAMPLE_INTERVAL_S`;
    a failing sample is logged and the next one tried (the dashboard never stops the process).
    The same failure again is logged at debug level only: once a second would flood the log."""
    last_failure = ""
    while True:
        try:
            result = sample()
            if asyncio.iscoroutine(result):
                await result
            last_failure = ""
        except Exception as exc:  # a dashboard error must not end the sampler
            failure = repr(exc)
            if failure != last_failure:
                log.exception("dashboard sample failed (logged again when it changes)")
            else:
                log.debug("dashboard sample failed again: %s", failure)
            last_failure = failure
        await asyncio.sleep(SAMPLE_INTERVAL_S)


# -- the broker ---------------------------------------------------------------------------

class BrokerStatsSource:
    """The broker's numbers for the dashboard: traffic rates over time, topics, groups with lag,
    transactions (``core.stats`` and the core's state, read on its event loop)."""

    def __init__(self, core: BrokerCore, server: BrokerServer | None) -> None:
        self.core = core
        self.server = server
        self.history = History(["requests_per_s", "records_in_per_s", "records_out_per_s",
                                "bytes_in_per_s", "bytes_out_per_s", "group_lag"])
        self._groups: list[dict[str, Any]] = []

    def _totals(self) -> dict[str, float]:
        stats = self.core.stats
        traffic = list(stats.topics.values())
        return {
            "requests_per_s": float(sum(h.count for h in stats.requests.values())),
            "records_in_per_s": float(sum(t.records_in for t in traffic)),
            "records_out_per_s": float(sum(t.records_out for t in traffic)),
            "bytes_in_per_s": float(sum(t.bytes_in for t in traffic)),
            "bytes_out_per_s": float(sum(t.bytes_out for t in traffic)),
        }

    def sample(self) -> None:
        self._groups = self._read_groups()
        self.history.add(time.monotonic(), self._totals(), {"group_lag": float(sum(g["lag"] for g in self._groups))})

    def _read_groups(self) -> list[dict[str, Any]]:
        groups = self.core.groups
        code, listings = groups.list_groups()
        if code != ErrorCode.NONE:
            return []  # __consumer_offsets still loading
        ends = {(p.topic, p.partition): p.high_watermark for p in self.core.logs.logs() if not p.closed}
        out = []
        for listing in sorted(listings, key=lambda g: g.group_id)[:GROUPS_SHOWN_MAX]:
            lag = 0
            _, fetched = groups.fetch_offsets(listing.group_id, None)
            for offset in fetched:
                end = ends.get((offset.topic, offset.partition))
                if offset.offset >= 0 and end is not None:
                    lag += max(0, end - offset.offset)
            members = len(groups.describe_group(listing.group_id).members)
            out.append({"id": listing.group_id, "state": listing.state, "members": members, "lag": lag})
        return out

    def snapshot(self) -> dict[str, Any]:
        core = self.core
        stats = core.stats
        logs = [p for p in core.logs.logs() if not p.closed]
        topics: dict[str, dict[str, Any]] = {}
        for plog in logs:
            row = topics.setdefault(plog.topic, {"name": plog.topic, "partitions": 0, "end_offsets": 0,
                                                 "size_bytes": 0, "records_in": 0, "records_out": 0})
            row["partitions"] += 1
            row["end_offsets"] += plog.high_watermark
            row["size_bytes"] += plog.size_bytes
        for name, traffic in stats.topics.items():
            if name in topics:
                topics[name]["records_in"] = traffic.records_in
                topics[name]["records_out"] = traffic.records_out
        txn = core.txn
        code, _, listed = txn.list_transactions([], [])
        open_count = sum(1 for meta in listed if meta.state in OPEN_TXN_STATES) if code == ErrorCode.NONE else 0
        return {
            "kind": "broker",
            "sample_interval_ms": int(SAMPLE_INTERVAL_S * 1000),
            "history_points_max": HISTORY_POINTS_MAX,
            "samples": self.history.samples,
            "totals": {
                "requests": sum(h.count for h in stats.requests.values()),
                "connections": len(self.server.connections) if self.server is not None else None,
                "network_received_bytes": stats.network_received_bytes,
                "network_sent_bytes": stats.network_sent_bytes,
                "topics": len(topics),
                "partitions": len(logs),
            },
            "series": self.history.as_json(),
            "topics": sorted(topics.values(), key=lambda t: t["name"])[:TOPICS_SHOWN_MAX],
            "groups": self._groups,
            "transactions": {"committed": txn.committed_count, "aborted": txn.aborted_count, "open": open_count,
                             "ids": len(listed) if code == ErrorCode.NONE else 0},
        }


# -- the worker ---------------------------------------------------------------------------

class WorkerStatsSource:
    """The worker's numbers for the dashboard: events in/out per second and lag over time, its
    group's partitions with their owners, topics and tables.

    Args:
        worker: the worker.
        collector: its Prometheus collector, whose ``refresh`` finds each partition's lag.
        router: knows the group's assignment (who owns each partition, and their web URLs).
        broker: the embedded broker's numbers, when the worker runs one.
    """

    def __init__(self, worker: Worker, collector: WorkerCollector, router: Router,
                 broker: Callable[[], BrokerStatsSource | None] | None = None) -> None:
        self.worker = worker
        self.collector = collector
        self.router = router
        self.broker = broker
        self.history = History(["events_in_per_s", "events_out_per_s", "lag"])
        #: Per table: (the owned partitions counted, key count, capped), from the last count.
        self._keys: dict[str, tuple[list[int], int, bool]] = {}
        #: Per table: bytes on disk of the partition databases holding it, from the last count.
        self._sizes: dict[str, int] = {}

    async def sample(self) -> None:
        worker = self.worker
        await self.collector.refresh()
        if worker.consumer is not None:
            await self.router.describe()
        producer = worker.producer
        totals = {
            "events_in_per_s": float(sum(t.events_in for t in worker.stats.topics.values())),
            "events_out_per_s": float(producer.records_sent if producer is not None else 0),
        }
        lag = sum(max(0, end - processed) for processed, end in self.collector.positions.values())
        self.history.add(time.monotonic(), totals, {"lag": float(lag)})
        self._count_keys(every=self.history.samples % TABLES_EVERY_SAMPLES == 1)
        broker = self.broker() if self.broker is not None else None
        if broker is not None:
            broker.sample()

    async def prepare(self) -> None:
        """Before a snapshot: the group's description, if the last one is older than the router's
        TTL (the page shows owners as soon as the worker has joined, not a sample later)."""
        if self.worker.consumer is not None:
            await self.router.describe()

    def _count_keys(self, *, every: bool) -> None:
        """Count each table's keys (at most :data:`KEYS_COUNTED_MAX`): on every
        :data:`TABLES_EVERY_SAMPLES`-th sample, and as soon as its owned partitions change; the
        sizes on disk with them."""
        counted = False
        for name, table in sorted(self.worker.app.tables.items()):
            owned = table.owned_partitions()
            known = self._keys.get(name)
            if not every and known is not None and known[0] == owned:
                continue
            counted = True
            keys = 0
            for partition in owned:
                part = table.parts[partition]
                for _ in table._partition_items(part):  # the table's own walk, write layers included
                    keys += 1
                    if keys >= KEYS_COUNTED_MAX:
                        break
                if keys >= KEYS_COUNTED_MAX:
                    break
            self._keys[name] = (owned, keys, keys >= KEYS_COUNTED_MAX)
        if counted:
            self._sizes = self._disk_sizes()

    def _disk_sizes(self) -> dict[str, int]:
        """Bytes on disk per table: each open partition database counts for every table it holds
        (tables of one partition count share a database, as RocksDB column families)."""
        state = self.worker.state
        sizes: dict[str, int] = {}
        if state is None:
            return sizes
        for slot in list(state.slots.values()):
            if slot.closed:
                continue
            size = disk_bytes(slot.path)
            for table in slot.tables:
                sizes[table.name] = sizes.get(table.name, 0) + size
        return sizes

    def _tables(self) -> list[dict[str, Any]]:
        out = []
        for name, table in sorted(self.worker.app.tables.items()):
            _, keys, capped = self._keys.get(name, ([], None, False))
            out.append({"name": name, "kind": type(table).__name__, "partitions": table.partitions,
                        "owned": table.owned_partitions(), "keys": keys, "keys_capped": capped,
                        "size_bytes": self._sizes.get(name)})
        return out

    def snapshot(self) -> dict[str, Any]:
        worker = self.worker
        positions = self.collector.positions
        owners = self.router.owners_now()
        partitions = []
        for tp in sorted(set(owners) | set(worker.assigned))[:PARTITIONS_SHOWN_MAX]:
            owner = owners.get(tp)
            local = tp in worker.assigned
            processed, end = positions.get(tp, (None, None))
            partitions.append({
                "topic": tp.topic, "partition": tp.partition, "local": local,
                "owner": worker.web_url if local else (owner.web_url or owner.client_id if owner else None),
                "offset": processed, "lag": max(0, end - processed) if processed is not None and end is not None else None,
            })
        described = self.router.described  # the last description: a snapshot never asks the broker
        group = None
        if described is not None:
            group = {"id": described.group_id, "state": described.state, "members": [
                {"client_id": m.client_id, "host": m.host, "partitions": len(m.assignment)}
                for m in described.members]}
        producer = worker.producer
        sent = producer.records_sent_by_topic if producer is not None else {}
        topic_names = sorted(set(worker.stats.topics) | set(sent))[:TOPICS_SHOWN_MAX]
        broker = self.broker() if self.broker is not None else None
        return {
            "kind": "worker",
            "app": worker.app.id,
            "web_url": worker.web_url,
            "guarantee": worker.guarantee,
            "started": worker.started,
            "sample_interval_ms": int(SAMPLE_INTERVAL_S * 1000),
            "history_points_max": HISTORY_POINTS_MAX,
            "samples": self.history.samples,
            "totals": {
                "events_in": sum(t.events_in for t in worker.stats.topics.values()),
                "events_out": producer.records_sent if producer is not None else 0,
                "assigned": len(worker.assigned),
                "commits": worker.stats.commits.count,
                "fencings": worker.fencings,
            },
            "series": self.history.as_json(),
            "partitions": partitions,
            "group": group,
            "topics": [{"name": name, "events_in": worker.stats.topics[name].events_in if name in worker.stats.topics
                        else 0, "events_out": sent.get(name, 0)} for name in topic_names],
            "tables": self._tables(),
            "broker": broker.snapshot() if broker is not None else None,
        }


# -- routes -------------------------------------------------------------------------------

def add_dashboard_routes(web_server: WebServer, source: WorkerStatsSource | BrokerStatsSource) -> None:
    """``/dashboard``, its static files and ``/api/stats`` on ``web_server``, with the sampler
    running while it serves; a browser asking for ``/`` is sent to the dashboard."""

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=static_text("dashboard.html"), content_type="text/html")

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        content_type = STATIC_FILES.get(name)
        if content_type is None:
            raise web.HTTPNotFound(text=f"no file {name!r}")
        return web.Response(text=static_text(name), content_type=content_type,
                            headers={"Cache-Control": "no-cache"})

    async def stats(request: web.Request) -> web.Response:
        if isinstance(source, WorkerStatsSource):
            await source.prepare()
        return json_response(source.snapshot())

    web_server.add_route(DASHBOARD_ROUTE, DASHBOARD_PATH, page)
    web_server.add_route(STATIC_ROUTE, STATIC_PATH, static)
    web_server.add_route(STATS_ROUTE, STATS_PATH, stats)
    web_server.add_background(lambda: sample_forever(source.sample))
    web_server.browser_home = DASHBOARD_ROUTE
