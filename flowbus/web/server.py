"""A small HTTP server on the caller's event loop, whose routes are registered by name.

Why aiohttp in the same loop, not a thread (as ``prometheus_client.start_http_server`` does): the
handlers read the broker's or worker's state, which only its event loop may touch; a thread
would read dicts while the loop changes them. A handler must therefore be quick, or await.

Example::

    web = WebServer("127.0.0.1", 0)
    web.add_route("metrics", "/metrics", metrics_handler)
    await web.start()            # web.port is the bound port
    ...
    await web.close()
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from flowbus.web.errors import WebServerError

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Background = Callable[[], Coroutine[Any, Any, None]]

#: Largest request body read (aiohttp's ``client_max_size``): every route so far is a GET, and
#: table queries will send small JSON bodies at most.
REQUEST_BODY_BYTES_MAX = 1024 * 1024
#: How long a stopping server lets requests in progress finish.
SHUTDOWN_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class Route:
    """One route: a name (how code and docs refer to it), a method and a path."""

    name: str
    method: str
    path: str
    handler: Handler


class WebServer:
    """Serves HTTP on ``host:port`` from the running event loop; port 0 picks a free port.

    Routes are added before :meth:`start`; ``GET /`` lists them as JSON (name -> path), so a
    client can find what this process serves; a browser (``Accept: text/html``) is sent to
    :attr:`browser_home` instead when one is set.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.routes: dict[str, Route] = {}
        self._runner: web.AppRunner | None = None
        self._background: list[Background] = []
        self._tasks: list[asyncio.Task[None]] = []
        #: The route a browser asking for ``/`` is sent to (the dashboard); JSON clients still
        #: get the index of routes there.
        self.browser_home: str | None = None

    def add_route(self, name: str, path: str, handler: Handler, *, method: str = "GET") -> None:
        """Serve ``handler`` at ``path`` under ``name`` (unique).

        Raises:
            WebServerError: the server is started already, or ``name`` is taken.
        """
        if self._runner is not None:
            raise WebServerError(f"route {name!r} added after the web server started")
        if name in self.routes:
            raise WebServerError(f"a route named {name!r} exists already")
        self.routes[name] = Route(name, method, path, handler)

    def add_background(self, run: Background) -> None:
        """Run ``run()`` as a task while the server serves (a dashboard's sampler); it is
        cancelled by :meth:`close`. Added before :meth:`start`, like routes."""
        if self._runner is not None:
            raise WebServerError("background task added after the web server started")
        self._background.append(run)

    def url(self, name: str) -> str:
        """The full URL of route ``name`` (after :meth:`start`, with the bound port)."""
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}{self.routes[name].path}"

    async def start(self) -> None:
        """Bind and serve.

        Raises:
            WebServerError: the address cannot be bound.
        """
        app = web.Application(client_max_size=REQUEST_BODY_BYTES_MAX)
        app.router.add_get("/", self._index, name="index")
        for route in self.routes.values():
            app.router.add_route(route.method, route.path, route.handler, name=route.name)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise WebServerError(f"cannot serve HTTP on {self.host}:{self.port}: {exc.strerror or exc}") from exc
        self._runner = runner
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = sockets[0].getsockname()[1]
        self._tasks = [asyncio.create_task(run(), name="flowbus-web-background") for run in self._background]

    async def _index(self, request: web.Request) -> web.Response:
        if self.browser_home is not None and "text/html" in request.headers.get("Accept", ""):
            raise web.HTTPFound(self.routes[self.browser_home].path)
        return web.json_response({name: route.path for name, route in sorted(self.routes.items())})

    async def close(self) -> None:
        """Stop serving (requests in progress get :data:`SHUTDOWN_TIMEOUT_S` to finish)."""
        runner, self._runner = self._runner, None
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if runner is not None:
            await runner.cleanup()
