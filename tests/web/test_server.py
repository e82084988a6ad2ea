"""WebServer: routes by name, an index of them, a clear error for a busy port."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.request

import pytest
from aiohttp import web

from flowbus.web.errors import WebServerError
from flowbus.web.server import WebServer


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read()


def test_routes_by_name_and_the_index() -> None:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    async def main() -> None:
        server = WebServer("127.0.0.1", 0)
        server.add_route("hello", "/hello", hello)
        with pytest.raises(WebServerError, match="exists already"):
            server.add_route("hello", "/other", hello)
        await server.start()
        try:
            assert server.port != 0
            assert await asyncio.to_thread(_get, server.url("hello")) == (200, b"hello")
            status, body = await asyncio.to_thread(_get, f"http://127.0.0.1:{server.port}/")
            assert status == 200 and json.loads(body) == {"hello": "/hello"}
            with pytest.raises(WebServerError, match="after the web server started"):
                server.add_route("late", "/late", hello)
        finally:
            await server.close()

    asyncio.run(main())


def test_a_busy_port_is_a_web_server_error() -> None:
    async def main() -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            server = WebServer("127.0.0.1", taken.getsockname()[1])
            with pytest.raises(WebServerError, match="cannot serve HTTP on 127.0.0.1"):
                await server.start()

    asyncio.run(main())


def test_a_browser_is_sent_home_and_background_tasks_end_with_the_server() -> None:
    async def page(request: web.Request) -> web.Response:
        return web.Response(text="<html>home</html>", content_type="text/html")

    ticks: list[int] = []
    stopped = asyncio.Event()

    async def ticking() -> None:
        try:
            while True:
                ticks.append(1)
                await asyncio.sleep(0.01)
        finally:
            stopped.set()

    def get_html(url: str) -> tuple[str, bytes]:
        request = urllib.request.Request(url, headers={"Accept": "text/html,application/xhtml+xml"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.url, response.read()

    async def main() -> None:
        server = WebServer("127.0.0.1", 0)
        server.add_route("home", "/home", page)
        server.add_background(ticking)
        server.browser_home = "home"
        await server.start()
        try:
            root = f"http://127.0.0.1:{server.port}/"
            assert await asyncio.to_thread(get_html, root) == (server.url("home"), b"<html>home</html>")
            status, body = await asyncio.to_thread(_get, root)  # not a browser: the index
            assert status == 200 and json.loads(body) == {"home": "/home"}
            with pytest.raises(WebServerError, match="after the web server started"):
                server.add_background(ticking)
        finally:
            await server.close()
        assert ticks and stopped.is_set()

    asyncio.run(main())
