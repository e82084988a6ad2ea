"""``flowbus worker --web HOST:PORT``: the worker's web server.

``/metrics`` (Prometheus), the dashboard (``/dashboard``, ``/api/stats``), table queries
(``/tables/...``, forwarded to the worker owning the key) and the app's ``@app.page`` handlers;
``docs/operations.md`` lists every route. Started before the worker itself, so a restore can
be watched (``flowbus_worker_restore_*``) before the first event is processed, and so the
worker joins its group with its web URL in its client id (:mod:`flowbus.web.routing`). With an
``embedded://`` broker the broker's metrics and dashboard panels are served here too: the
worker process is the broker then.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.registry import Collector

from flowbus.metrics.broker_collector import BrokerCollector
from flowbus.metrics.worker_collector import WorkerCollector
from flowbus.transports.embedded import EmbeddedTransport
from flowbus.web.dashboard import (
    BrokerStatsSource,
    WorkerStatsSource,
    add_dashboard_routes,
)
from flowbus.web.metrics import add_metrics_route, new_registry
from flowbus.web.pages import add_page_routes
from flowbus.web.routing import Router
from flowbus.web.server import WebServer
from flowbus.web.tables import add_table_routes

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from flowbus.worker import Worker


class EmbeddedBrokerCollector(Collector):
    """The broker collector of an embedded transport's core, once the transport has started."""

    def __init__(self, transport: EmbeddedTransport) -> None:
        self.transport = transport

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        transport = self.transport
        if transport.started:
            yield from BrokerCollector(transport.core, transport.server).collect()


def worker_web_server(worker: Worker, host: str, port: int) -> WebServer:
    """The worker's web server with its routes, not started yet (more routes may be added)."""
    registry = new_registry()
    collector = WorkerCollector(worker)
    registry.register(collector)
    transport = worker.transport
    broker: BrokerStatsSource | None = None

    def embedded_broker() -> BrokerStatsSource | None:
        nonlocal broker
        if broker is None and isinstance(transport, EmbeddedTransport) and transport.started:
            broker = BrokerStatsSource(transport.core, transport.server)
        return broker

    if isinstance(transport, EmbeddedTransport):
        registry.register(EmbeddedBrokerCollector(transport))
    web_server = WebServer(host, port)
    add_metrics_route(web_server, registry, refresh=[collector.refresh])
    router = Router(worker)
    add_dashboard_routes(web_server, WorkerStatsSource(worker, collector, router, embedded_broker))
    add_table_routes(web_server, worker, router)
    add_page_routes(web_server, worker, router)

    async def close_router_on_stop() -> None:
        try:
            await asyncio.Event().wait()  # until the server closes (cancels this)
        finally:
            await router.close()

    web_server.add_background(close_router_on_stop)
    return web_server


def advertised_url(host: str, port: int) -> str:
    """The URL the other workers reach this one at: the host as given, or this machine's name
    when the server listens on every address (``0.0.0.0``, ``::``, empty)."""
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


async def serve_worker(worker: Worker, host: str, port: int) -> WebServer:
    """Start the worker's web server on ``host:port`` (port 0 picks a free one).

    Raises:
        WebServerError: the address cannot be bound.
    """
    web_server = worker_web_server(worker, host, port)
    await web_server.start()
    if worker.web_url is None:
        worker.web_url = advertised_url(host, web_server.port)
    return web_server
