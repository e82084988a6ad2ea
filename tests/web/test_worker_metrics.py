"""The worker's ``/metrics`` (``flowbus worker --web``): a known workload through a dataflow, an
agent and a window on ``embedded://``, then a scrape checked by name and value (issue 13, item 1)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import flowbus
from flowbus import App
from flowbus.web.server import WebServer
from flowbus.web.worker import serve_worker
from tests.support.metrics import Samples, documented_metrics, scrape

pytestmark = pytest.mark.timeout(120)

ORDERS = 100
CLICKS = 30
#: Views of one key inside one one-second window, then one more a few seconds later that closes it.
VIEWS_IN_WINDOW = 10
WAIT_S = 30.0


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def scrape_async(web: WebServer) -> Samples:
    """The server runs on this event loop: the blocking HTTP client runs on a thread."""
    return await asyncio.to_thread(scrape, web.url("metrics"))


def make_app(data_dir: Path) -> tuple[App, list[Any]]:
    app = App("metrics-app", broker=f"embedded://{data_dir}", commit_interval_ms=100, topic_partitions=2)
    orders = app.topic("orders", key_type=str)
    doubled = app.topic("doubled")
    clicks = app.topic("clicks", key_type=str)
    views = app.topic("views", key_type=str)
    counts = app.topic("view-counts")
    app.stream(orders).filter(lambda v: v % 2 == 0).map(lambda v: v * 2).to(doubled)
    app.stream(views).tumbling_window(1_000, name="views-per-second").count().final().to(counts)
    seen: list[Any] = []

    @app.agent(clicks)
    async def count_clicks(stream: flowbus.Stream) -> None:
        async for value in stream:
            seen.append(value)

    return app, seen


async def produce_workload(app: App) -> int:
    """Every input, sent before the worker starts (a send inside a running worker goes through
    the worker's producer and would count as its output). Returns the window's close time."""
    await app.create_topics()
    now_ms = int(time.time() * 1000)
    window_start_ms = now_ms - now_ms % 1_000 - 10_000
    for i in range(ORDERS):
        await app.topics["orders"].send(i, key=f"k{i % 7}")
    for i in range(CLICKS):
        await app.topics["clicks"].send(i, key=f"u{i % 3}")
    for i in range(VIEWS_IN_WINDOW):
        await app.topics["views"].send(i, key="page", timestamp_ms=window_start_ms + i)
    await app.topics["views"].send(0, key="page", timestamp_ms=window_start_ms + 3_000)
    await app.close()
    return window_start_ms + 1_000


def test_events_latencies_lag_commits_and_windows(tmp_path: Path) -> None:
    app, seen = make_app(tmp_path / "data")

    async def main() -> None:
        window_close_ms = await produce_workload(app)
        worker = app.make_worker()
        web = await serve_worker(worker, "127.0.0.1", 0)
        try:
            early = await scrape_async(web)  # before the worker started: nothing fails
            assert early.value("flowbus_worker_assigned_partitions") == 0
            running = asyncio.create_task(worker.run())
            events = worker.stats.topics
            await wait_for(lambda: len(seen) == CLICKS, "every click through the agent")
            await wait_for(lambda: "orders" in events and events["orders"].events_in == ORDERS, "every order")
            await wait_for(lambda: "views" in events and events["views"].events_in == VIEWS_IN_WINDOW + 1,
                           "every view")
            await worker.commit()
            samples = await scrape_async(web)
            check_events(samples)
            check_consumer_and_commits(samples)
            check_window_and_state(samples, window_close_ms)
            check_embedded_broker(samples)
            # docs/operations.md lists exactly what the worker exposes.
            assert samples.exposed_families("flowbus_worker_") == documented_metrics("flowbus_worker_")
        finally:
            worker.stop()
            await running
            await web.close()

    asyncio.run(main())


def check_events(samples: Samples) -> None:
    for topic, count in (("orders", ORDERS), ("clicks", CLICKS), ("views", VIEWS_IN_WINDOW + 1)):
        assert samples.value("flowbus_worker_events_in_total", topic=topic) == count
        # One processing and one end-to-end observation per event (every record has a timestamp).
        assert samples.value("flowbus_worker_processing_seconds_count", topic=topic) == count
        assert samples.value("flowbus_worker_processing_seconds_bucket", topic=topic, le="+Inf") == count
        assert samples.value("flowbus_worker_end_to_end_latency_seconds_count", topic=topic) == count
        assert samples.value("flowbus_worker_processing_seconds_sum", topic=topic) > 0
    assert samples.families["flowbus_worker_processing_seconds"] == "histogram"
    # The views were stamped ~10 s ago: their end-to-end latency says so.
    assert samples.value("flowbus_worker_end_to_end_latency_seconds_bucket", topic="views", le="5.0") == 0
    assert samples.value("flowbus_worker_events_out_total", topic="doubled") == ORDERS // 2
    assert samples.value("flowbus_worker_events_out_total", topic="view-counts") == 1
    buffered = samples.matching("flowbus_worker_agent_buffered_events")
    assert [dict(labels)["agent"].rsplit(".", 1)[-1] for labels in buffered] == ["count_clicks#0"]
    assert list(buffered.values()) == [0]


def check_consumer_and_commits(samples: Samples) -> None:
    assert samples.value("flowbus_worker_assigned_partitions") == 6  # 3 input topics x 2 partitions
    lags = samples.matching("flowbus_worker_consumer_lag")
    assert len(lags) == 6 and all(lag == 0 for lag in lags.values()), lags
    processed = samples.matching("flowbus_worker_processed_offset", topic="orders")
    assert sum(processed.values()) == ORDERS
    assert samples.value("flowbus_worker_commit_seconds_count") >= 1
    assert samples.value("flowbus_worker_commit_seconds_sum") > 0
    assert samples.value("flowbus_worker_fencings_total") == 0


def check_window_and_state(samples: Samples, window_close_ms: int) -> None:
    table = "views-per-second"
    assert samples.value("flowbus_worker_windows_closed_total", table=table) == 1
    assert samples.value("flowbus_worker_window_late_records_total", table=table) == 0
    assert samples.value("flowbus_worker_window_close_latency_seconds_count", table=table) == 1
    # Closed when the worker read the last view: now - (window end + grace), about 9 s here.
    latency_s = samples.value("flowbus_worker_window_close_latency_seconds_sum", table=table)
    assert 0 < latency_s <= (time.time() * 1000 - window_close_ms) / 1000
    assert samples.value("flowbus_worker_restore_restored_records") == 0
    assert samples.value("flowbus_worker_restoring_partitions") == 0
    sizes = samples.matching("flowbus_worker_state_size_bytes", tables=table)
    assert sizes and all(size > 0 for size in sizes.values()), sizes


def check_embedded_broker(samples: Samples) -> None:
    """With embedded:// the worker's process is the broker: its metrics are served too."""
    assert samples.value("flowbus_broker_topic_records_in_total", topic="orders") == ORDERS
    assert samples.value("flowbus_broker_partition_end_offset", topic="doubled", partition="0") + samples.value(
        "flowbus_broker_partition_end_offset", topic="doubled", partition="1") == ORDERS // 2
    assert samples.value("flowbus_broker_group_lag", group="metrics-app", topic="orders", partition="0") == 0


def test_a_kafka_worker_counts_its_outputs_and_lag(tmp_path: Path) -> None:
    """kafka:// (confluent-kafka to a flowbus broker process): outputs counted per record by the
    producer, lag from the consumer's end offsets."""
    from tests.support.broker_process import BrokerProcess

    with BrokerProcess(tmp_path / "broker") as broker:
        app = App("metrics-kafka", broker=f"kafka://{broker.bootstrap}", commit_interval_ms=100,
                  topic_partitions=2, state_dir=tmp_path / "state")
        orders = app.topic("orders", key_type=str)
        doubled = app.topic("doubled")
        app.stream(orders).map(lambda v: v * 2).to(doubled)

        async def main() -> None:
            await app.create_topics()
            for i in range(ORDERS):
                await orders.send(i, key=f"k{i}")
            await app.close()
            worker = app.make_worker()
            web = await serve_worker(worker, "127.0.0.1", 0)
            running = asyncio.create_task(worker.run())
            try:
                events = worker.stats.topics
                await wait_for(lambda: "orders" in events and events["orders"].events_in == ORDERS, "every order")
                await worker.commit()
                samples = await scrape_async(web)
                assert samples.value("flowbus_worker_processing_seconds_count", topic="orders") == ORDERS
                assert samples.value("flowbus_worker_events_out_total", topic="doubled") == ORDERS
                lags = samples.matching("flowbus_worker_consumer_lag", topic="orders")
                assert len(lags) == 2 and not any(lags.values()), lags
                assert not samples.matching("flowbus_broker_requests_total")  # the broker is another process
            finally:
                worker.stop()
                await running
                await web.close()

        asyncio.run(main())
