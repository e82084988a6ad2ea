"""Events/s of a JSON filter -> map -> to(topic) dataflow through a real worker.

For each transport and guarantee: write N JSON events to an input topic, then start a worker and
time it from start until every event is consumed and the outputs are flushed and committed.

    python benchmarks/pipeline_bench.py                      # embedded, 200k events
    python benchmarks/pipeline_bench.py --kafka              # also kafka:// to a local flowbus broker
    python benchmarks/pipeline_bench.py --events 500000 --transports embedded

exactly_once commits outputs and input offsets in one transaction every 100 ms (the broker's
transactions on embedded:// and kafka://); a transport without transactions says so instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flowbus import App
from flowbus.transports.errors import TransactionError

PRODUCE_CHUNK = 10_000


def event(i: int) -> bytes:
    return json.dumps({"id": i, "user": f"u{i % 1000}", "url": f"/p/{i % 50}", "ms": 1_700_000_000_000 + i,
                       "bot": i % 10 == 0}).encode()


async def fill(app: App, topic: str, count: int) -> None:
    producer = await app.ensure_producer()
    payloads = [event(i) for i in range(1000)]
    for i in range(count):
        producer.send_soon(topic, payloads[i % 1000])
        if i % PRODUCE_CHUNK == PRODUCE_CHUNK - 1:
            await producer.flush()
    await producer.flush()
    await app.close()


async def bench_one(url: str, guarantee: str, count: int) -> tuple[float, int] | str:
    app = App(f"bench-{int(time.time() * 1000)}", broker=url, processing_guarantee=guarantee,  # type: ignore[arg-type]
              commit_interval_ms=1_000 if guarantee != "exactly_once" else 100, max_poll_records=5_000)
    src = app.topic("bench-in" + app.id[-6:])
    dst = app.topic("bench-out" + app.id[-6:])

    def enrich(e: dict[str, Any]) -> dict[str, Any]:
        return {"user": e["user"], "section": e["url"].split("/")[1], "ms": e["ms"]}

    app.stream(src).filter(lambda e: not e["bot"]).map(enrich).to(dst)
    await app.create_topics()
    await fill(app, src.name, count)
    worker = app.make_worker()
    try:
        await worker.start()
    except TransactionError as exc:
        await worker.shutdown()
        return f"not available: {exc}"
    started = time.perf_counter()
    while worker.events_in < count:
        await worker.step(100)
    await worker.commit()
    elapsed = time.perf_counter() - started
    await worker.shutdown()
    await app.transport.close()
    return elapsed, worker.events_in


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--transports", default="embedded")
    parser.add_argument("--kafka", action="store_true", help="also run kafka:// against a local flowbus broker process")
    parser.add_argument("--guarantees", default="at_least_once,exactly_once")
    args = parser.parse_args()
    transports = args.transports.split(",") + (["kafka"] if args.kafka else [])
    print(f"{args.events} JSON events through filter -> map -> to(topic)")
    with tempfile.TemporaryDirectory() as tmp:
        broker = None
        for transport in transports:
            if transport == "kafka" and broker is None:
                from tests.support.broker_process import BrokerProcess

                broker = BrokerProcess(Path(tmp) / "broker-data").start()
            url = {"embedded": f"embedded://{tmp}/embedded", "memory": "memory://",
                   "kafka": f"kafka://{broker.bootstrap}" if broker else ""}[transport]
            for guarantee in args.guarantees.split(","):
                result = await bench_one(url, guarantee, args.events)
                if isinstance(result, str):
                    print(f"  {transport:9} {guarantee:14} {result}")
                else:
                    elapsed, seen = result
                    print(f"  {transport:9} {guarantee:14} {seen / elapsed:>10,.0f} events/s  ({elapsed:.2f} s)")
        if broker is not None:
            broker.terminate()


if __name__ == "__main__":
    asyncio.run(main())
