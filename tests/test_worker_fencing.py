"""The worker fenced by its group (KIP-447), in-process on the embedded broker core: two exactly-once
workers of one app with default settings; one becomes a zombie (the group removes it, as after a
session timeout, while it still holds processed but uncommitted events) and its partitions move.
Its next commit is refused by the group: the transaction aborts, what it processed is dropped, it
rejoins and works on. Every input has exactly one committed output.

The process-level versions (SIGSTOP/SIGCONT, ``flowbus worker`` processes on ``kafka://`` and on a
listening embedded broker) are in ``tests/test_exactly_once_scale_out.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import pytest

import flowbus
from flowbus import App
from flowbus.transports.base import Consumer, Producer, TopicPartition, Transport
from flowbus.transports.embedded import EmbeddedTransport
from flowbus.worker import Worker

pytestmark = pytest.mark.timeout(120)

PARTITIONS = 4
EVENTS = 200
WAIT_S = 30.0
APP_ID = "fence"


def build(url: str) -> App:
    """Default settings but a commit interval long enough that the test decides when commits
    happen (the transactional id is the default: each worker claims its own)."""
    app = App(APP_ID, broker=url, processing_guarantee="exactly_once", topic_partitions=PARTITIONS,
              commit_interval_ms=3_600_000)
    out = app.topic("out")

    @app.agent(app.topic("in", key_type=str), sink=[out])
    async def relay(stream: flowbus.Stream) -> Any:
        async for n in stream:
            yield n

    return app


class Driver:
    """Runs one worker's loop (``step``) in a task, as ``Worker.run`` does, with a pause switch
    between steps; commits happen inside the loop, when the test asks for one."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.go = asyncio.Event()
        self.go.set()
        self.between_steps = asyncio.Event()
        self.steps = 0
        self.stopped = False
        self.task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while not self.stopped:
            self.between_steps.set()
            await self.go.wait()
            self.between_steps.clear()
            if self.stopped:
                return
            await self.worker.step(20)
            self.steps += 1
            await asyncio.sleep(0)

    async def pause(self) -> None:
        self.go.clear()
        await self.between_steps.wait()

    def resume(self) -> None:
        self.go.set()

    async def commit(self) -> None:
        """Make the loop commit at its next step, and wait until it did."""
        seen = self.steps
        self.worker.next_commit_ms = 0
        await until(lambda: self.steps >= seen + 2 or self.task.done(), "a commit")
        if self.task.done():
            self.task.result()

    async def stop(self) -> None:
        self.stopped = True
        self.go.set()
        await self.task


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)  # the workers' loops run meanwhile


async def read_values(transport: Transport, *, committed_only: bool) -> list[int]:
    reader: Consumer = transport.consumer(
        f"reader-{time.monotonic_ns()}", isolation_level="read_committed" if committed_only else "read_uncommitted"
    )
    reader.subscribe(["out"])
    values: list[int] = []
    idle = 0
    while idle < 3:
        batch = await reader.poll_batch(1000, 100)
        idle = 0 if batch else idle + 1
        values += [int(r.value) for r in batch if r.value is not None]
    await reader.close()
    return values


async def two_workers(
    tmp_path: Path, scenario: Callable[[EmbeddedTransport, Driver, Driver, Producer], Awaitable[None]]
) -> tuple[list[int], list[int]]:
    """Run both workers over the first half of the input, then ``scenario`` (which sends the
    second half), then until the group is stable and every input offset is committed.
    Returns the outputs read_committed and read_uncommitted."""
    url = f"embedded://{tmp_path / 'data'}"
    transport = EmbeddedTransport(url)
    await transport.start()
    wa, wb = build(url).make_worker(EmbeddedTransport(url)), build(url).make_worker(EmbeddedTransport(url))
    drivers: list[Driver] = []
    try:
        await wa.start()
        await wb.start()
        assert wa.transactional_id != wb.transactional_id, "each worker has its own id by default"
        a, b = Driver(wa), Driver(wb)
        drivers += [a, b]
        producer = transport.producer()
        for i in range(EVENTS // 2):
            producer.send_soon("in", b"%d" % i, b"k%d" % i)
        await producer.flush()
        await until(lambda: len(wa.assigned) == len(wb.assigned) == PARTITIONS // 2, "both assigned")
        await a.commit()
        await b.commit()
        await scenario(transport, a, b, producer)
        ends = await transport.watermarks([TopicPartition("in", p) for p in range(PARTITIONS)])
        deadline = time.monotonic() + WAIT_S
        while True:
            await a.commit()
            await b.commit()
            done = await transport.group_offsets(APP_ID)
            if len(wa.assigned) + len(wb.assigned) == PARTITIONS and all(
                done.get(tp) == marks.high for tp, marks in ends.items()
            ):
                break
            assert time.monotonic() < deadline, f"the input was never fully committed: {done} of {ends}"
        return await read_values(transport, committed_only=True), await read_values(transport, committed_only=False)
    finally:
        for driver in drivers:
            await driver.stop()
        await wa.shutdown()
        await wb.shutdown()
        await transport.close()


def remove_from_group(transport: EmbeddedTransport, worker: Worker) -> None:
    """What the coordinator does to a member whose session expired (the worker was paused)."""
    assert worker.consumer is not None
    _, _, member_id = cast("tuple[str, int, str]", worker.consumer.group_metadata())  # the embedded layout
    result = transport.core.groups.leave_group(APP_ID, [(member_id, None)])
    assert [code for _, _, code in result.members] == [0]


async def send_second_half(producer: Producer) -> None:
    for i in range(EVENTS // 2, EVENTS):
        producer.send_soon("in", b"%d" % i, b"k%d" % i)
    await producer.flush()


def test_a_zombie_with_processed_events_is_fenced_aborts_and_rejoins(tmp_path: Path) -> None:
    async def scenario(transport: EmbeddedTransport, a: Driver, b: Driver, producer: Producer) -> None:
        wa, wb = a.worker, b.worker
        await send_second_half(producer)
        await until(lambda: bool(wa.committable()) and not any(len(c) for c in wa.channels),
                    "the zombie-to-be processed events it has not committed")
        await a.pause()
        assert wa.committable(), "uncommitted progress, and its outputs in the open transaction"
        mine = sorted(wa.assigned)
        wa._pause(mine[0], wa.channels[0])  # as backpressure does: paused in the consumer too
        remove_from_group(transport, wa)
        await until(lambda: len(wb.assigned) == PARTITIONS, "its partitions moved")
        wa.next_commit_ms = 0
        a.resume()
        await until(lambda: wa.fencings == 1, "the zombie's commit refused by the group")
        assert wa.consumer is not None
        # Forgotten by the worker, the pause must not outlive the partition in the consumer: given
        # back after the rejoin, it would never be fetched again.
        assert mine[0] not in wa.consumer._paused  # type: ignore[attr-defined]
        await until(lambda: len(wa.assigned) + len(wb.assigned) == PARTITIONS and bool(wa.assigned),
                    "the zombie rejoined and got partitions again")

    committed, raw = asyncio.run(two_workers(tmp_path, scenario))
    assert sorted(committed) == list(range(EVENTS)), "each input has exactly one committed output"
    assert len(raw) > EVENTS, "the zombie's outputs were written to the log, then aborted"


def test_a_zombie_sending_without_new_input_is_fenced_too(tmp_path: Path) -> None:
    """A timer's sends, or windows closed by the clock, read no new offsets: the commit still
    names the member's generation (its partitions' unchanged offsets), so the group refuses it."""

    async def scenario(transport: EmbeddedTransport, a: Driver, b: Driver, producer: Producer) -> None:
        wa, wb = a.worker, b.worker
        await a.pause()
        remove_from_group(transport, wa)
        await until(lambda: len(wb.assigned) == PARTITIONS, "its partitions moved")
        assert wa.producer is not None
        wa.producer.send_soon("out", b"-1")  # what a timer of the zombie would send
        wa.next_commit_ms = 0
        a.resume()
        await until(lambda: wa.fencings == 1, "the zombie's commit refused by the group")
        await send_second_half(producer)

    committed, raw = asyncio.run(two_workers(tmp_path, scenario))
    assert sorted(committed) == list(range(EVENTS))
    assert -1 in raw and -1 not in committed
