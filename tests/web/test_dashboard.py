"""The live dashboards in headless Chromium (issue 13, item 2).

A worker with an embedded broker processes a steady stream of events (a dataflow, and an agent
counting into a table) while Chromium, driven over the DevTools protocol
(:mod:`tests.support.chromium`), opens ``/``: it is sent to ``/dashboard``, which must load with
no console error, keep polling, and plot more points as events flow. Then the same for the
broker's page. Screenshots are saved under the test's tmp dir; with
``FLOWBUS_UPDATE_DOCS_IMAGES=1`` the worker's is also copied to ``docs/img/dashboard.png``
(the one ``docs/operations.md`` shows).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import flowbus
from flowbus import App
from flowbus.transports.embedded import EmbeddedTransport
from flowbus.web.broker import serve_broker_metrics
from flowbus.web.worker import serve_worker
from tests.support.chromium import Page, chromium_page, find_chromium

pytestmark = pytest.mark.timeout(180)

CHROMIUM = find_chromium()
DOCS_IMAGE = Path(__file__).resolve().parents[2] / "docs" / "img" / "dashboard.png"
WAIT_S = 60.0
#: Events sent per tick of the feeder (a slow wave between 10 and 40, so the plots move), and its tick.
EVENTS_PER_TICK_MIN = 10
EVENTS_PER_TICK_SPREAD = 30
TICK_S = 0.1
#: Plot points shown in the screenshot of the docs (with FLOWBUS_UPDATE_DOCS_IMAGES=1).
DOCS_PLOT_POINTS = 40
#: Keys of the orders (and of the table counting them).
CUSTOMERS = 17
#: A screenshot of the dashboard is a few dozen KiB; less means a blank page.
SCREENSHOT_BYTES_MIN = 10_000


async def wait_until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


def make_app(data_dir: Path) -> App:
    app = App("dashboard-app", broker=f"embedded://{data_dir}", commit_interval_ms=200, topic_partitions=3)
    orders = app.topic("orders", key_type=str)
    doubled = app.topic("doubled")
    per_customer = app.Table("orders-per-customer", key_type=str, default=int)
    app.stream(orders).map(lambda v: v * 2).to(doubled)

    @app.agent(orders)
    async def count(stream: flowbus.Stream) -> None:
        async for event in stream.events():
            per_customer[event.key] += 1

    return app


async def feed(app: App, stop: asyncio.Event) -> None:
    """Send orders every :data:`TICK_S` until ``stop``, more then fewer over a 20 s cycle."""
    topic = app.topics["orders"]
    i = 0
    tick = 0
    while not stop.is_set():
        tick += 1
        wave = abs((tick % 200) - 100) / 100  # 1 -> 0 -> 1 over 200 ticks
        for _ in range(EVENTS_PER_TICK_MIN + round(EVENTS_PER_TICK_SPREAD * wave)):
            await topic.send(i, key=f"c{i % CUSTOMERS}")
            i += 1
        await asyncio.sleep(TICK_S)


async def body_int(page: Page, attribute: str) -> int:
    # The page may still be loading (no body yet) right after Page.navigate.
    value = await page.evaluate(f"(document.body && document.body.dataset.{attribute}) || '0'")
    return int(value)


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (Debian package chromium; .ci/run installs it)")
def test_worker_and_broker_dashboards_update_in_chromium(tmp_path: Path) -> None:
    assert CHROMIUM is not None
    app = make_app(tmp_path / "data")

    async def main() -> None:
        worker = app.make_worker()
        web = await serve_worker(worker, "127.0.0.1", 0)
        running = asyncio.create_task(worker.run())
        stop_feeding = asyncio.Event()
        feeder: asyncio.Task[None] | None = None
        broker_web = None
        try:
            deadline = time.monotonic() + WAIT_S
            while len(worker.assigned) < 3:
                assert time.monotonic() < deadline, "the worker got no partitions"
                await asyncio.sleep(0.05)
            feeder = asyncio.create_task(feed(app, stop_feeding))
            async with chromium_page(CHROMIUM, tmp_path / "profile") as page:
                await check_worker_page(page, web.port, tmp_path)
                assert isinstance(worker.transport, EmbeddedTransport)
                broker_web = await serve_broker_metrics(worker.transport.core, worker.transport.server, "127.0.0.1", 0)
                await check_broker_page(page, broker_web.port, tmp_path)
                assert page.errors() == []
        finally:
            stop_feeding.set()
            if feeder is not None:
                await asyncio.gather(feeder, return_exceptions=True)
            worker.stop()
            await asyncio.gather(running, return_exceptions=True)
            await web.close()
            if broker_web is not None:
                await broker_web.close()

    asyncio.run(main())


async def check_worker_page(page: Page, port: int, tmp_path: Path) -> None:
    await page.send("Page.navigate", url=f"http://127.0.0.1:{port}/")
    await wait_until(lambda: _at_least(page, "updates", 2), "the dashboard's first polls")
    assert await page.evaluate("location.pathname") == "/dashboard"  # a browser's / is the dashboard
    events_before = await body_int(page, "eventsIn")
    points_before = await _canvas_points(page, "events")
    # As events flow, the page sees more of them and the plot gets more points.
    await wait_until(lambda: _grew(page, "eventsIn", events_before + 200), "events counted on the page")
    await wait_until(lambda: _canvas_grew(page, "events", points_before + 3), "points added to the plot")
    rows = await page.evaluate("document.querySelectorAll('#panel-partitions tbody tr').length")
    assert rows == 3  # orders[0..2], each with its owner
    tables = await page.evaluate("document.querySelector('#panel-tables').textContent")
    assert "orders-per-customer" in tables
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/api/stats") as response:
        stats: dict[str, Any] = await response.json()
    assert max(stats["series"]["events_in_per_s"]) > 0
    (table,) = stats["tables"]
    assert table["owned"] == [0, 1, 2] and table["keys"] == CUSTOMERS
    assert table["size_bytes"] > 0  # RocksDB's files
    docs = os.environ.get("FLOWBUS_UPDATE_DOCS_IMAGES") == "1"
    if docs:  # a plot with some history to show
        await wait_until(lambda: _canvas_grew(page, "events", DOCS_PLOT_POINTS), "points for the docs' screenshot")
    shot = tmp_path / "dashboard.png"
    assert await page.screenshot(shot) > SCREENSHOT_BYTES_MIN
    if docs:
        DOCS_IMAGE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, DOCS_IMAGE)
    assert page.errors() == []


async def check_broker_page(page: Page, port: int, tmp_path: Path) -> None:
    await page.send("Page.navigate", url=f"http://127.0.0.1:{port}/dashboard")
    await wait_until(lambda: _at_least(page, "updates", 2), "the broker dashboard's first polls")
    points_before = await _canvas_points(page, "broker-records")
    await wait_until(lambda: _canvas_grew(page, "broker-records", points_before + 2), "broker plot points")
    groups = await page.evaluate("document.querySelector('#panel-broker-groups').textContent")
    assert "dashboard-app" in groups
    assert await page.screenshot(tmp_path / "broker-dashboard.png") > SCREENSHOT_BYTES_MIN


async def _at_least(page: Page, attribute: str, value: int) -> bool:
    return await body_int(page, attribute) >= value


async def _grew(page: Page, attribute: str, value: int) -> bool:
    return await body_int(page, attribute) >= value


async def _canvas_points(page: Page, panel: str) -> int:
    value = await page.evaluate(f"(document.querySelector('#panel-{panel} canvas') || {{dataset: {{}}}}).dataset.points || '0'")
    return int(value)


async def _canvas_grew(page: Page, panel: str, value: int) -> bool:
    return await _canvas_points(page, panel) >= value
