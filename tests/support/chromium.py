"""Headless Chromium driven over the DevTools protocol, for the dashboard's browser test.

No Selenium and no driver binary: Chromium is started with ``--remote-debugging-port=0``, writes
the port it bound to ``DevToolsActivePort`` in its profile directory, and the test speaks the
protocol (JSON over a websocket, https://chromedevtools.github.io/devtools-protocol/) with
aiohttp. Console errors, uncaught exceptions and failed loads arrive as events and are kept.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

#: Debian's package installs ``chromium``; other systems name it differently.
BINARIES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: How long Chromium may take to start and to answer one command.
START_TIMEOUT_S = 30.0
COMMAND_TIMEOUT_S = 30.0
#: Events kept (console messages, log entries); a page logging in a loop cannot fill memory.
EVENTS_MAX = 10_000
#: Largest websocket message read (a screenshot, base64).
MESSAGE_BYTES_MAX = 64 * 1024 * 1024


def find_chromium() -> str | None:
    for name in BINARIES:
        found = shutil.which(name)
        if found:
            return found
    return None


class Page:
    """One tab: send a command and await its result; events are kept in :attr:`events`."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            data = message.json()
            if "id" in data:
                future = self._waiting.pop(data["id"], None)
                if future is not None and not future.done():
                    future.set_result(data)
            elif len(self.events) < EVENTS_MAX:
                self.events.append(data)
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(ConnectionError("the DevTools connection closed"))

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Run ``method`` and return its result.

        Raises:
            RuntimeError: the command failed (the protocol's error message).
        """
        command_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[command_id] = future
        await self.ws.send_json({"id": command_id, "method": method, "params": params})
        answer = await asyncio.wait_for(future, COMMAND_TIMEOUT_S)
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-able values only)."""
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def screenshot(self, path: Path) -> int:
        """Save the viewport as a PNG at ``path``; returns its size in bytes."""
        result = await self.send("Page.captureScreenshot", format="png")
        data = base64.b64decode(result["data"])
        path.write_bytes(data)
        return len(data)

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries (failed loads) so far."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                found.append(f"exception: {details.get('exception', {}).get('description') or details.get('text')}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append(f"console.{params['type']}: {[a.get('value', a.get('description')) for a in params.get('args', [])]}")
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                entry = params["entry"]
                found.append(f"log: {entry.get('text')} {entry.get('url', '')}")
        return found

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader


@contextlib.asynccontextmanager
async def chromium_page(binary: str, profile_dir: Path, *, width: int = 1280, height: int = 900) -> AsyncIterator[Page]:
    """A headless Chromium with one page, its Runtime, Log and Page domains enabled; the browser
    is closed (killed if it does not exit in time) when the block ends."""
    profile_dir.mkdir(parents=True, exist_ok=True)
    process = await asyncio.create_subprocess_exec(
        binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-sync",
        "--disable-background-networking", "--disable-component-update", "--mute-audio",
        f"--window-size={width},{height}", "--remote-debugging-port=0", "--remote-allow-origins=*",
        f"--user-data-dir={profile_dir}", "about:blank",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=COMMAND_TIMEOUT_S))
    page: Page | None = None
    try:
        port = await _devtools_port(profile_dir, process)
        targets: list[dict[str, Any]] = []
        deadline = time.monotonic() + START_TIMEOUT_S
        while not targets:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
                targets = [t for t in await response.json() if t.get("type") == "page"]
            if not targets:
                if time.monotonic() > deadline:
                    raise TimeoutError("Chromium opened no page")
                await asyncio.sleep(0.1)
        ws = await session.ws_connect(targets[0]["webSocketDebuggerUrl"], max_msg_size=MESSAGE_BYTES_MAX)
        page = Page(ws)
        for domain in ("Runtime", "Log", "Page"):
            await page.send(f"{domain}.enable")
        await page.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                        mobile=False)
        yield page
    finally:
        if page is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(page.send("Browser.close"), 5)
            await page.close()
        await session.close()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()


async def _devtools_port(profile_dir: Path, process: asyncio.subprocess.Process) -> int:
    """The port Chromium wrote to ``DevToolsActivePort`` (first line) once it listens."""
    marker = profile_dir / "DevToolsActivePort"
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if process.returncode is not None:
            raise RuntimeError(f"Chromium exited with status {process.returncode} before listening")
        try:
            lines = marker.read_text().splitlines()
            if lines and lines[0].strip().isdigit():
                return int(lines[0])
        except FileNotFoundError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("Chromium did not open its DevTools port")
        await asyncio.sleep(0.1)
