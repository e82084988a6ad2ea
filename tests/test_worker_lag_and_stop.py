"""The worker's lag (what the status line shows), what a stop waits for, and a forced stop.

The lag must count records that are buffered for an agent or in its hands as not processed (it
once counted dispatched records, so a worker with 4,000 records queued showed ``lag 0``), and
must not reset to the whole partition after a rebalance (it once showed ``lag 9`` with every
partition committed to its end).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from flowbus import App
from flowbus.transports.base import TopicPartition
from flowbus.worker import Worker

pytestmark = pytest.mark.timeout(60)


async def until(condition: object, what: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def gated_app(tmp_path: Path) -> tuple[App, asyncio.Event, list[int]]:
    """An app whose agent holds each event until ``gate`` is set."""
    app = App("lagging", broker=f"memory://{tmp_path.name}", commit_interval_ms=3_600_000)
    numbers = app.topic("numbers")
    gate = asyncio.Event()
    seen: list[int] = []

    @app.agent(numbers)
    async def slow(stream):  # type: ignore[no-untyped-def]
        async for n in stream:
            seen.append(n)
            await gate.wait()

    return app, gate, seen


async def run_steps(worker: Worker, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await worker.step(20)


def test_lag_counts_buffered_and_in_flight_records_and_survives_a_rebalance(tmp_path: Path) -> None:
    async def main() -> None:
        app, gate, seen = gated_app(tmp_path)
        await app.create_topics()
        producer = await app.ensure_producer()
        for n in range(10):
            await producer.send("numbers", str(n).encode())
        worker = app.make_worker()
        await worker.start()
        stop = asyncio.Event()
        loop = asyncio.create_task(run_steps(worker, stop))
        try:
            tp = TopicPartition("numbers", 0)
            await until(lambda: worker.dispatched_next.get(tp) == 10 and seen == [0], "all dispatched, one in hand")
            assert await worker.lag() == 10, "dispatched is not processed: the one in hand and 9 buffered"
            assert worker.busy_agents() == [f"{app.agents[0].name}#0 (numbers[0]@0)"]
            gate.set()
            await until(lambda: len(seen) == 10 and worker.channels[0].idle.is_set(), "all processed")
            assert await worker.lag() == 0
            assert worker.busy_agents() == []
            await worker.commit()

            # A rebalance that gives the partition back: nothing dispatched since, so the lag
            # comes from the committed offset, not from offset 0.
            await worker._on_revoked([tp])
            await worker._on_assigned([tp])
            assert tp not in worker.dispatched_next
            assert await worker.lag() == 0
            gate.clear()
            for n in range(10, 13):
                await producer.send("numbers", str(n).encode())
            assert await worker.lag() in (3, 2), "3 new records (one may be in hand already)"
            gate.set()
        finally:
            stop.set()
            await loop
            await worker.shutdown()
            await app.close()

    asyncio.run(main())


def test_force_stop_cancels_a_stuck_agent_and_commits_nothing_more(tmp_path: Path) -> None:
    async def main() -> None:
        app, _gate, seen = gated_app(tmp_path)
        await app.create_topics()
        producer = await app.ensure_producer()
        for n in range(3):
            await producer.send("numbers", str(n).encode())
        worker = app.make_worker()
        run = asyncio.create_task(worker.run())
        await until(lambda: seen == [0], "the first event in hand")
        worker.stop()
        await asyncio.sleep(0.3)
        assert not run.done(), "a clean stop waits for the agent to finish its event"
        worker.force_stop()
        await asyncio.wait_for(run, 10)
        assert worker.forced
        committed = app.transport.group_offsets_now(app.id)  # type: ignore[attr-defined]
        assert committed.get(("numbers", 0)) in (None, 0), "the event in hand was not committed"
        await app.close()

    asyncio.run(main())
