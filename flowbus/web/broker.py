"""``flowbus broker --metrics HOST:PORT`` (alias ``--web``): the broker's ``/metrics`` endpoint and
its live dashboard (``/dashboard``, ``/api/stats``: :mod:`flowbus.web.dashboard`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flowbus.metrics.broker_collector import BrokerCollector
from flowbus.web.dashboard import BrokerStatsSource, add_dashboard_routes
from flowbus.web.metrics import add_metrics_route, new_registry
from flowbus.web.server import WebServer

if TYPE_CHECKING:
    from flowbus.broker.core import BrokerCore
    from flowbus.broker.server import BrokerServer


async def serve_broker_metrics(core: BrokerCore, server: BrokerServer | None, host: str, port: int) -> WebServer:
    """Start serving ``/metrics`` and the dashboard for ``core`` (and ``server``'s connections)
    on ``host:port``.

    Raises:
        WebServerError: the address cannot be bound.
    """
    registry = new_registry()
    registry.register(BrokerCollector(core, server))
    web_server = WebServer(host, port)
    add_metrics_route(web_server, registry)
    add_dashboard_routes(web_server, BrokerStatsSource(core, server))
    await web_server.start()
    return web_server
