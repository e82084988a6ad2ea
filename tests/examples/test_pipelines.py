"""The example pipelines: logic through the test harness, and each end to end with
``flowbus worker`` on the embedded broker (listening, so the test talks Kafka to it)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Self

import orjson
import pytest

from examples.pipelines import clickstream, fanout, log_parsing, pageviews, revenue
from flowbus.transports.base import IsolationLevel, TopicPartition
from flowbus.transports.kafka import KafkaTransport
from tests.support.broker_process import free_port

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 30.0


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


# -- logic, through the harness ---------------------------------------------------------------

def test_clickstream_drops_bots_and_enriches() -> None:
    async def main() -> None:
        async with clickstream.app.test_context() as t:
            await t.send(clickstream.clicks, {"user": "u1", "url": "/shop/shoes", "referrer": "https://news.example.com/x"})
            await t.send(clickstream.clicks, {"user": "b", "url": "/", "agent": "Googlebot/2.1"})
            await t.send(clickstream.clicks, {"user": "u2", "url": "/"})
            assert t.values(clickstream.enriched) == [
                clickstream.EnrichedClick("u1", "/shop/shoes", "shop", "news.example.com"),
                clickstream.EnrichedClick("u2", "/", "home", None),
            ]

    run(main())


def test_pageviews_counts_per_user_and_per_page(tmp_path: Path) -> None:
    app = pageviews.app
    app.state_dir = tmp_path

    async def main() -> None:
        async with app.test_context() as t:
            for i in range(14):
                url = f"/shop/item{i}" if i % 2 else "/blog/post"
                await t.send(pageviews.clicks, {"user": "u2" if i % 7 == 0 else "u1", "url": url}, settle=False)
            await t.settle()
            # exactly_once: the repartitioned clicks reach the counts once their transaction commits
            await t.commit()
            await t.settle()
            await t.commit()
            assert dict(pageviews.views_per_user.items()) == {"u1": 12, "u2": 2}
            assert t.items(pageviews.user_views) == [("u1", {"user": "u1", "views": 10})]
            assert dict(app.tables["views-per-page"].items()) == {"/blog": 7, "/shop": 7}
            assert [v for k, v in t.items(pageviews.page_views) if k == "/shop"] == list(range(1, 8))

    run(main())


def test_revenue_sums_each_customer_minute_and_joins_the_profile(tmp_path: Path) -> None:
    app = revenue.app
    app.state_dir = tmp_path
    minute = 60_000

    async def main() -> None:
        async with app.test_context() as t:
            base = t.clock.now_ms() - t.clock.now_ms() % minute - 10 * minute
            await t.send(revenue.customers, {"name": "Ada", "tier": "gold"}, key="c1")
            for at_s, customer, amount in [(1, "c1", 10.0), (2, "c2", 4.5), (30, "c1", 2.25), (61, "c1", 1.0)]:
                await t.send(revenue.orders, {"customer": customer, "amount": amount}, timestamp_ms=base + at_s * 1000)
            # exactly_once: the repartitioned orders reach the windows once their transaction commits
            await t.commit()
            await t.settle()
            await t.commit()
            assert t.items(revenue.revenue) == []  # 61 s is within the grace of the first minute
            await t.send(revenue.orders, {"customer": "c2", "amount": 1.0}, timestamp_ms=base + 63_000)
            await t.commit()
            await t.settle()
            await t.commit()
            assert sorted(t.items(revenue.revenue), key=str) == [
                ("c1", {"start": base, "end": base + minute, "revenue": 12.25, "name": "Ada", "tier": "gold"}),
                ("c2", {"start": base, "end": base + minute, "revenue": 4.5, "name": None, "tier": None}),
            ]

    run(main())


def test_log_parsing_dead_letters_bad_lines() -> None:
    async def main() -> None:
        app = log_parsing.app
        async with app.test_context() as t:
            await t.send(log_parsing.raw_lines, "2024-05-01T12:00:00Z INFO api GET /users 200 12ms")
            await t.send(log_parsing.raw_lines, "garbage")
            await t.send(log_parsing.raw_lines, "2024-05-01T12:00:01Z ERROR api POST /orders 503 80ms")
            assert [r.status for r in t.values(log_parsing.records)] == [200, 503]
            assert [r.path for r in t.values(log_parsing.errors)] == ["/orders"]
            dead = t.records(app.dead_letter_topic)
            assert [r.value for r in dead] == [b"garbage"]
            assert dict(dead[0].headers)["flowbus.error.type"] == b"UnparsableLine"

    run(main())


def test_fanout_routes_each_order_once() -> None:
    async def main() -> None:
        async with fanout.app.test_context() as t:
            for oid, country, total in [("1", "DE", 10.0), ("2", "US", 5000.0), ("3", "US", 3.0), ("4", "FR", 2000.0)]:
                await t.send(fanout.orders, {"id": oid, "country": country, "total": total}, key=oid)
            assert [o.id for o in t.values(fanout.large)] == ["2", "4"]
            assert [o.id for o in t.values(fanout.eu)] == ["1"]
            assert [o.id for o in t.values(fanout.other)] == ["3"]
            assert [k for k, _ in t.items(fanout.large)] == ["2", "4"]

    run(main())


# -- end to end with `flowbus worker` on the embedded broker ------------------------------------

class WorkerProcess:
    """``python -m flowbus worker -A ... --data-dir DIR --listen 127.0.0.1:PORT`` as a child process."""

    def __init__(self, app_spec: str, data_dir: Path, log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.command = [
            sys.executable, "-m", "flowbus", "worker", "-A", app_spec,
            "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{self.port}", "-l", "info",
        ]
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
        deadline = time.monotonic() + WAIT_S
        while b"listening on" not in self.log_path.read_bytes():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"worker did not start:\n{self.log_path.read_text()}")
            time.sleep(0.05)  # waiting on a child process's log file: nothing to await
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(WAIT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                raise

    @property
    def url(self) -> str:
        return f"kafka://127.0.0.1:{self.port}"


async def produce(
    url: str, topic: str, values: list[bytes], keys: list[bytes] | None = None, timestamps_ms: list[int] | None = None
) -> None:
    transport = KafkaTransport(url)
    producer = transport.producer()
    for i, value in enumerate(values):
        producer.send_soon(topic, value, keys[i] if keys else None, timestamp_ms=timestamps_ms[i] if timestamps_ms else None)
    await producer.close()


async def consume(
    url: str, topic: str, count: int, isolation_level: IsolationLevel = "read_uncommitted"
) -> list[bytes | None]:
    transport = KafkaTransport(url)
    consumer = transport.consumer(f"check-{topic}-{time.monotonic_ns()}", isolation_level=isolation_level)
    consumer.subscribe([topic])
    out: list[bytes | None] = []
    deadline = time.monotonic() + WAIT_S
    while len(out) < count and time.monotonic() < deadline:
        out.extend(r.value for r in await consumer.poll_batch(1000, 200))
    await consumer.close()
    return out


async def wait_committed(url: str, group: str, topic: str) -> None:
    """Until ``group`` has committed every record of ``topic``: the worker processed them (and, under
    exactly-once, their effects on tables are committed with those offsets)."""
    transport = KafkaTransport(url)
    consumer = transport.consumer(group)
    try:
        partitions = (await transport.describe_topics([topic]))[topic].partitions
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        deadline = time.monotonic() + WAIT_S
        while True:
            ends, committed = await consumer.end_offsets(tps), await consumer.committed(tps)
            if all((committed[tp] or 0) >= ends[tp] for tp in tps):
                return
            assert time.monotonic() < deadline, f"{group} never committed {topic}: {committed} of {ends}"
            await asyncio.sleep(0.05)  # the worker commits every 100 ms under exactly-once
    finally:
        await consumer.close()


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path


def test_clickstream_end_to_end(workdir: Path) -> None:
    with WorkerProcess("examples.pipelines.clickstream:app", workdir / "data", workdir / "worker.log") as worker:
        clicks = [b'{"user": "u%d", "url": "/s%d/x", "agent": "%s"}' % (i, i % 3, b"bot" if i % 4 == 0 else b"ff")
                  for i in range(40)]
        run(produce(worker.url, "clicks", clicks))
        out = run(consume(worker.url, "clicks-enriched", 30))
    assert len(out) == 30
    assert b'"section":"s1"' in b"".join(v or b"" for v in out)


def test_log_parsing_end_to_end(workdir: Path) -> None:
    lines = [b"2024-05-01T12:00:00Z INFO api GET /u 200 5ms", b"nope", b"2024-05-01T12:00:00Z WARN api GET /v 404 7ms"]
    with WorkerProcess("examples.pipelines.log_parsing:app", workdir / "data", workdir / "worker.log") as worker:
        run(produce(worker.url, "raw-logs", lines))
        parsed = run(consume(worker.url, "log-records", 2))
        dead = run(consume(worker.url, "log-parser-dead-letters", 1))
    assert len(parsed) == 2 and dead == [b"nope"]


def test_fanout_end_to_end(workdir: Path) -> None:
    orders = [b'{"id": "%d", "country": "%s", "total": %d}' % (i, b"DE" if i % 2 else b"US", 5000 if i % 5 == 0 else 10)
              for i in range(20)]
    with WorkerProcess("examples.pipelines.fanout:app", workdir / "data", workdir / "worker.log") as worker:
        run(produce(worker.url, "orders", orders, keys=[str(i).encode() for i in range(20)]))
        large = run(consume(worker.url, "orders-large", 4))
        eu = run(consume(worker.url, "orders-eu", 8))
        other = run(consume(worker.url, "orders-other", 8))
    assert (len(large), len(eu), len(other)) == (4, 8, 8)


def test_revenue_end_to_end(workdir: Path) -> None:
    """Orders of two customers in one minute of event time, a profile, then a later order: the
    minute's totals come out once, joined with the profile, under exactly-once."""
    minute = 60_000
    now = time.time_ns() // 1_000_000
    base = now - now % minute - 5 * minute
    with WorkerProcess("examples.pipelines.revenue:app", workdir / "data", workdir / "worker.log") as worker:
        run(produce(worker.url, "customers", [b'{"name": "Ada", "tier": "gold"}'], keys=[b"c1"]))
        # The profile is in the table before the totals are joined (poll order).
        run(wait_committed(worker.url, revenue.app.id, "customers"))
        orders = [b'{"customer": "c1", "amount": 10}', b'{"customer": "c2", "amount": 3}', b'{"customer": "c1", "amount": 5}',
                  b'{"customer": "c2", "amount": 1}']
        run(produce(worker.url, "orders", orders, timestamps_ms=[base + 1000, base + 2000, base + 3000, base + 2 * minute]))
        out = run(consume(worker.url, "revenue-per-minute", 2, isolation_level="read_committed"))
    totals = [orjson.loads(v or b"null") for v in out]
    assert sorted((t["revenue"], str(t["name"]), t["start"] - base) for t in totals) == [(3, "None", 0), (15, "Ada", 0)]
