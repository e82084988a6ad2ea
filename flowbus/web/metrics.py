"""The ``/metrics`` route: Prometheus's text format from a registry of the process's own.

A scrape first awaits the registry's refresh functions (the worker's consumer lag needs end
offsets a transport may have to ask the broker for), then renders on the event loop: the
collectors read state that only the loop may touch. Rendering is proportional to the number
of series (a few milliseconds for thousands of partitions).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from flowbus.web.server import WebServer

log = logging.getLogger(__name__)

#: The route's name and path (``docs/operations.md``, "HTTP API").
METRICS_ROUTE = "metrics"
METRICS_PATH = "/metrics"

Refresh = Callable[[], Awaitable[None]]


def new_registry() -> CollectorRegistry:
    """A registry of this broker's or worker's own (never prometheus_client's global one, so
    several in one process do not collide), with the process's CPU, memory and descriptors."""
    from prometheus_client import ProcessCollector

    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    return registry


def add_metrics_route(web_server: WebServer, registry: CollectorRegistry, refresh: Sequence[Refresh] = ()) -> None:
    """Serve ``registry`` at ``/metrics`` on ``web_server``, awaiting each of ``refresh`` first."""

    async def metrics(request: web.Request) -> web.Response:
        for step in refresh:
            await step()
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    web_server.add_route(METRICS_ROUTE, METRICS_PATH, metrics)
