"""Stateful processing: word count through a table, restore from a changelog, memory per key.

Three measurements, each printed as a line a user can compare with ``docs/benchmarks.md``:

1. **Word count.** N JSON events ``{"word": "w123"}`` over 10,000 distinct words (keyed by the
   word) are written to a 4-partition topic; then a worker counts them in a table, timed from its
   start until every event is processed and the last commit (changelog included) is done. Two
   forms: an agent updating ``app.Table`` (faust style) and a dataflow ``count()`` (Kafka
   Streams / Quix style); each on embedded:// and, with ``--kafka``, on kafka:// to a local
   ``flowbus broker``; at_least_once and exactly_once.
2. **Restore.** A changelog partition of R records (R distinct keys) is restored into an empty
   RocksDB database by the state manager, timed from the assignment to "ready".
3. **Memory.** A worker process counts K distinct keys (each seen once) through a table on
   embedded://; its peak RSS (``VmHWM``) is read when it is done. Run in a child process so the
   figure is that of a worker, not of this script.

    python benchmarks/state_bench.py                      # all three, default sizes
    python benchmarks/state_bench.py --kafka --runs 3     # also kafka://, median of 3 runs
    python benchmarks/state_bench.py --only wordcount --events 500000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flowbus import App
from flowbus.transports.base import TopicPartition, TopicSpec, Transport
from flowbus.transports.embedded import EmbeddedTransport

WORDS = 10_000
PARTITIONS = 4
PRODUCE_CHUNK = 20_000


async def fill(transport: Transport, topic: str, count: int, *, distinct: int = WORDS, json_values: bool = True) -> None:
    """Write ``count`` records keyed by ``w<i % distinct>`` to ``topic`` (created with 4 partitions)."""
    await transport.start()
    await transport.create_topics([TopicSpec(topic, PARTITIONS)])
    producer = transport.producer(linger_ms=20)
    keys = [f"w{i}".encode() for i in range(min(distinct, count))]
    for i in range(count):
        key = keys[i % len(keys)] if distinct <= len(keys) else f"w{i}".encode()
        producer.send_soon(topic, b'{"word":"' + key + b'"}' if json_values else b"1", key)
        if i % PRODUCE_CHUNK == PRODUCE_CHUNK - 1:
            await producer.flush()
    await producer.close()


def wordcount_app(url: str, guarantee: str, form: str, state_dir: Path) -> tuple[App, Callable[[], int]]:
    app = App(f"wc-{time.monotonic_ns()}", broker=url, processing_guarantee=guarantee,  # type: ignore[arg-type]
              commit_interval_ms=1_000 if guarantee != "exactly_once" else 100, max_poll_records=5_000,
              state_dir=state_dir)
    words = app.topic("words", key_type=str)
    processed = [0]
    if form == "agent":
        counts = app.Table("counts", default=int, key_type=str, value_type=int)

        @app.agent(words)
        async def count(stream):  # type: ignore[no-untyped-def]
            async for event in stream:
                counts[event["word"]] += 1
                processed[0] += 1
    else:
        def tick(total: int) -> int:
            processed[0] += 1
            return total

        app.stream(words).count(name="counts").map(tick)
    return app, lambda: processed[0]


async def bench_wordcount(url: str, transport: Transport, guarantee: str, form: str, events: int, tmp: Path) -> float:
    await fill(transport, "words", events)
    app, processed = wordcount_app(url, guarantee, form, tmp / f"state-{time.monotonic_ns()}")
    app.use_transport(transport)
    worker = app.make_worker(transport)
    started = time.perf_counter()
    await worker.start()
    while processed() < events:
        await worker.step(100)
        if worker.failure is not None:
            raise RuntimeError(f"worker failed: {worker.failure!r}")
    await worker.commit(barrier=True)
    elapsed = time.perf_counter() - started
    total = sum(v for _, v in app.tables["counts"].items())
    await worker.shutdown()
    assert total == events, f"table sums to {total}, not {events}"
    return events / elapsed


async def bench_restore(records: int, tmp: Path) -> float:
    from flowbus.state import MemoryBudget, make_backend
    from flowbus.state.manager import StateManager

    url = f"embedded://{tmp}/restore-data"
    transport = EmbeddedTransport(url)
    app = App("restore", broker=url)
    table = app.Table("big", key_type=str, value_type=int, partitions=1)
    await transport.start()
    await transport.create_topics([TopicSpec(table.changelog_topic, 1), TopicSpec("src", 1)])
    producer = transport.producer(linger_ms=20)
    for i in range(records):
        producer.send_soon(table.changelog_topic, b"1", f"key-{i:08d}".encode(), partition=0)
        if i % PRODUCE_CHUNK == PRODUCE_CHUNK - 1:
            await producer.flush()
    await producer.close()
    table.partitions = 1
    manager = StateManager("restore", [table], transport, make_backend("rocksdb", MemoryBudget()),
                           state_dir=tmp / "restore-state", clock=app.clock)
    await manager.start(["src"], ["src"])
    started = time.perf_counter()
    await manager.assigned([TopicPartition("src", 0)])
    while manager.restoring:
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - started
    if manager.failure is not None:
        raise RuntimeError(f"restore failed: {manager.failure!r}")
    await manager.close()
    await transport.close()
    return records / elapsed


RSS_CHILD = """
import asyncio, sys, time
sys.path.insert(0, {root!r})
from pathlib import Path
from benchmarks.state_bench import fill, wordcount_app
from flowbus.transports.embedded import EmbeddedTransport

async def main() -> None:
    url = "embedded://{tmp}/rss-data"
    transport = EmbeddedTransport(url)
    await fill(transport, "words", {keys}, distinct={keys})
    app, processed = wordcount_app(url, "at_least_once", "agent", Path({tmp!r}) / "rss-state")
    worker = app.make_worker(transport)
    await worker.start()
    while processed() < {keys}:
        await worker.step(100)
    await worker.commit(barrier=True)
    status = Path("/proc/self/status").read_text()
    peak = next(line for line in status.splitlines() if line.startswith("VmHWM"))
    now = next(line for line in status.splitlines() if line.startswith("VmRSS"))
    print(int(peak.split()[1]) // 1024, int(now.split()[1]) // 1024)
    await worker.shutdown()

asyncio.run(main())
"""


def bench_rss(keys: int, tmp: Path) -> tuple[int, int]:
    root = str(Path(__file__).resolve().parent.parent)
    out = subprocess.run(
        [sys.executable, "-c", RSS_CHILD.format(root=root, tmp=str(tmp), keys=keys)],
        capture_output=True, text=True, timeout=1800, check=True,
    )
    peak, now = out.stdout.split()
    return int(peak), int(now)


def summary(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:>10,.0f}"
    return f"{statistics.median(values):>10,.0f} (range {min(values):,.0f}-{max(values):,.0f}, {len(values)} runs)"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=300_000, help="word-count events per run")
    parser.add_argument("--restore-records", type=int, default=1_000_000)
    parser.add_argument("--rss-keys", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=1, help="runs of each word-count and restore case (median shown)")
    parser.add_argument("--kafka", action="store_true", help="also word count on kafka:// to a local flowbus broker")
    parser.add_argument("--only", choices=["wordcount", "restore", "rss"], default=None)
    parser.add_argument("--forms", default="agent,dataflow")
    parser.add_argument("--guarantees", default="at_least_once,exactly_once")
    args = parser.parse_args()
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.only in (None, "wordcount"):
            print(f"word count: {args.events:,} JSON events, {WORDS:,} distinct words, {PARTITIONS} partitions")
            broker = None
            where = ["embedded"] + (["kafka"] if args.kafka else [])
            try:
                for place in where:
                    for form in args.forms.split(","):
                        for guarantee in args.guarantees.split(","):
                            rates = []
                            for run in range(args.runs):
                                if place == "kafka":
                                    from flowbus.transports.kafka import KafkaTransport
                                    from tests.support.broker_process import BrokerProcess

                                    if broker is None:
                                        broker = BrokerProcess(tmp / "broker-data").start()
                                    url = f"kafka://{broker.bootstrap}"
                                    transport: Transport = KafkaTransport(url)
                                    topic_dir = None
                                else:
                                    topic_dir = tmp / f"embedded-{form}-{guarantee}-{run}"
                                    url = f"embedded://{topic_dir}"
                                    transport = EmbeddedTransport(url)
                                if place == "kafka":
                                    await transport.start()
                                    await transport.delete_topics([n for n in await transport.list_topics()
                                                                   if n == "words" or n.startswith("wc-")])
                                rates.append(await bench_wordcount(url, transport, guarantee, form, args.events, tmp))
                                await transport.close()
                            print(f"  {place:9} {form:9} {guarantee:14} {summary(rates)} events/s")
            finally:
                if broker is not None:
                    broker.terminate()
        if args.only in (None, "restore"):
            rates = [await bench_restore(args.restore_records, tmp / f"restore-{run}") for run in range(args.runs)]
            print(f"restore: {args.restore_records:,} changelog records into RocksDB: {summary(rates)} records/s")
        if args.only in (None, "rss"):
            peak, now = bench_rss(args.rss_keys, tmp)
            print(f"memory: worker with {args.rss_keys:,} keys in a table: peak RSS {peak} MB, RSS at the end {now} MB")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    asyncio.run(main())
