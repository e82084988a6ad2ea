"""The HTTP side of flowbus: a small aiohttp server in the broker's or worker's own event loop.

It serves ``/metrics`` (Prometheus, :mod:`flowbus.web.metrics`), the live dashboard
(:mod:`flowbus.web.dashboard`) and, on a worker, table queries routed to the owning worker
(:mod:`flowbus.web.tables`, :mod:`flowbus.web.routing`) and ``@app.page`` handlers
(:mod:`flowbus.web.pages`), each a route of one :class:`~flowbus.web.server.WebServer`
registered by name. Importing this package loads aiohttp, so the broker and the worker import
it only when ``--metrics`` or ``--web`` asks for it.
"""

from __future__ import annotations

from flowbus.web.errors import WebServerError
from flowbus.web.server import Route, WebServer

__all__ = ["Route", "WebServer", "WebServerError"]
