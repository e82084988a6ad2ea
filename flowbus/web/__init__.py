"""The HTTP side of flowbus: a small aiohttp server in the broker's or worker's own event loop.

Today it serves ``/metrics`` (Prometheus); the worker's dashboard and table queries (issue 13)
add their routes to the same :class:`~flowbus.web.server.WebServer` by name. Importing this
package loads aiohttp, so the broker and the worker import it only when ``--metrics`` or
``--web`` asks for it.
"""

from __future__ import annotations

from flowbus.web.errors import WebServerError
from flowbus.web.server import Route, WebServer

__all__ = ["Route", "WebServer", "WebServerError"]
