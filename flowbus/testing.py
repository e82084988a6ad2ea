"""The test harness: run an app's agents, dataflows and timers on in-memory topics with a manual
clock — no broker, no threads, no sleeping.

It runs the real :class:`~flowbus.worker.Worker` (the same code as production) over
:class:`~flowbus.transports.memory.MemoryTransport`, and waits for *quiescence* instead of time:
after :meth:`TestContext.send` or :meth:`TestContext.advance` returns, every record has been
through every agent and dataflow, and every timer due has fired.

Example:
    >>> async def test_enrich():                         # doctest: +SKIP
    ...     async with app.test_context() as t:
    ...         await t.send(clicks, {"user": "u1", "url": "/a"})
    ...         assert t.values(enriched) == [{"user": "u1", "url": "/a", "section": "a"}]
    ...         await t.advance(60)                      # timers due in the next minute fire
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from flowbus.app_errors import AgentError, FrameworkError
from flowbus.clock import ManualClock
from flowbus.stream import Event
from flowbus.timers import Scheduler
from flowbus.topic import Topic, _headers
from flowbus.transports.base import Record, TopicPartition
from flowbus.transports.memory import MemoryTransport
from flowbus.worker import POLL_TIMEOUT_MS

if TYPE_CHECKING:
    from flowbus.app import App

SETTLE_TURNS_MAX = 200_000
"""Event-loop turns :meth:`TestContext.settle` waits for quiescence before declaring the app stuck."""


class NotSettledError(FrameworkError):
    """The app kept working (or kept waiting on something outside the harness, such as a real
    ``asyncio.sleep``) for longer than the harness allows."""


class TestContext:
    """An app running on in-memory topics with a :class:`~flowbus.clock.ManualClock`."""

    __test__ = False  # not a pytest test class

    def __init__(self, app: App, clock: ManualClock | None = None) -> None:
        self.app = app
        if clock is None:
            clock = app.clock if isinstance(app.clock, ManualClock) else ManualClock()
        self.clock = clock
        self.transport = MemoryTransport(clock=clock)
        self.broker = self.transport.broker
        self._saved: tuple[Any, ...] = ()
        self._driver: asyncio.Task[None] | None = None
        self.failure: BaseException | None = None

    async def __aenter__(self) -> Self:
        app = self.app
        self._saved = (app.clock, app._scheduler, app._transport)
        app.clock, app._scheduler, app._transport = self.clock, Scheduler(self.clock), self.transport
        self.worker = app.make_worker(self.transport)
        await self.worker.start()
        self._driver = asyncio.create_task(self._drive(), name="flowbus-test-driver")
        await self.settle()
        return self

    async def _drive(self) -> None:
        worker = self.worker
        try:
            while not worker.stopping.is_set():
                await worker.step(POLL_TIMEOUT_MS)
        except AgentError:
            pass

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.worker.stop()
        if self._driver is not None:
            await self._driver
        await self.worker.shutdown()
        self.app.clock, self.app._scheduler, self.app._transport = self._saved
        if exc_type is None and self.worker.failure is not None:
            raise AgentError(f"the app stopped: {self.worker.failure!r}") from self.worker.failure

    # -- input ------------------------------------------------------------------------------
    async def send(
        self,
        topic: Topic | str,
        value: Any = None,
        *,
        key: Any = None,
        partition: int | None = None,
        headers: Mapping[str, bytes | str] | None = None,
        timestamp_ms: int | None = None,
        settle: bool = True,
    ) -> Record:
        """Write one value to ``topic`` (encoded with its codecs) and, by default, wait until the
        app has processed everything."""
        t = self.app._as_topic(topic)
        return await self.send_raw(
            t, t.value_codec.encode(value), key=t.key_codec.encode(key), partition=partition,
            headers=headers, timestamp_ms=timestamp_ms, settle=settle,
        )

    async def send_raw(
        self,
        topic: Topic | str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        partition: int | None = None,
        headers: Mapping[str, bytes | str] | None = None,
        timestamp_ms: int | None = None,
        settle: bool = True,
    ) -> Record:
        """Write raw bytes (for example a malformed record) to ``topic``."""
        name = topic.name if isinstance(topic, Topic) else topic
        meta = self.broker.append(name, partition, key, value, _headers(headers), timestamp_ms)
        if settle:
            await self.settle()
        return self.broker.topics[name][meta.partition].records[meta.offset]

    async def send_many(self, topic: Topic | str, values: list[Any]) -> None:
        """Write several values, then settle once."""
        for value in values:
            await self.send(topic, value, settle=False)
        await self.settle()

    # -- time -------------------------------------------------------------------------------
    async def advance(self, seconds: float) -> None:
        """Move the manual clock forward, firing everything due on the way, then settle.

        Time moves in steps to each due deadline, so a timer due every second fires ten times
        when the clock advances ten seconds, each run seeing the clock at its own deadline.
        """
        target_ms = self.clock.monotonic_ms() + int(seconds * 1000)
        scheduler = self.app.scheduler
        while True:
            deadline = scheduler.next_deadline_ms()
            step_to = target_ms if deadline is None or deadline > target_ms else deadline
            delta = step_to - self.clock.monotonic_ms()
            if delta > 0:
                self.clock.advance(delta)
            scheduler.fire_due()
            await self.settle()
            if self.clock.monotonic_ms() >= target_ms and (
                scheduler.next_deadline_ms() is None or scheduler.next_deadline_ms() > target_ms  # type: ignore[operator]
            ):
                break

    async def settle(self) -> None:
        """Wait until every record is processed and nothing is due; raises :class:`NotSettledError`."""
        worker = self.worker
        scheduler = self.app.scheduler
        for _ in range(SETTLE_TURNS_MAX):
            await asyncio.sleep(0)
            if worker.stopping.is_set():
                return
            if self._quiescent(worker, scheduler):
                # one more turn to let tasks woken by the last step run, then re-check
                await asyncio.sleep(0)
                if self._quiescent(worker, scheduler):
                    return
        raise NotSettledError("the app did not settle; is an agent waiting on real time or I/O?")

    def _quiescent(self, worker: Any, scheduler: Scheduler) -> bool:
        if worker._deadline_tasks:
            return False
        state = worker.state
        if state is not None and (state.restoring or state.ready_sources):
            return False
        consumer = worker.consumer
        if consumer is not None and not consumer.caught_up():
            return False
        for channel in worker.channels:
            if channel.pending and channel.gate_open:
                return False
            if not (channel.waiting or channel.idle.is_set()):
                return False
        for channels in worker.paused.values():
            if all(len(c) <= c.low_watermark_events for c in channels):
                return False  # the worker is about to resume this partition
        deadline = scheduler.next_deadline_ms()
        return deadline is None or deadline > self.clock.monotonic_ms()

    async def commit(self) -> None:
        """Commit now (the commit interval never elapses on a manual clock unless advanced)."""
        await self.worker.commit()

    # -- output -----------------------------------------------------------------------------
    def records(self, topic: Topic | str, *, committed_only: bool = False) -> list[Record]:
        """Raw records of every partition of ``topic`` (aborted transactions excluded)."""
        name = topic.name if isinstance(topic, Topic) else topic
        if committed_only:
            return self.broker.committed_records(name)
        out: list[Record] = []
        for part in self.broker.topics.get(name, []):
            out.extend(r for r in part.records if r.offset not in part.aborted)
        return out

    def events(self, topic: Topic | str) -> list[Event]:
        """Decoded events of ``topic`` with their metadata."""
        t = self.app._as_topic(topic)
        return [Event(r, t.key_codec.decode(r.key), t.value_codec.decode(r.value)) for r in self.records(t)]

    def values(self, topic: Topic | str) -> list[Any]:
        """Decoded values of ``topic``, partition by partition in offset order."""
        t = self.app._as_topic(topic)
        return [t.value_codec.decode(r.value) for r in self.records(t)]

    def items(self, topic: Topic | str) -> list[tuple[Any, Any]]:
        """Decoded (key, value) pairs of ``topic``."""
        return [(e.key, e.value) for e in self.events(topic)]

    def committed_offsets(self) -> dict[TopicPartition, int]:
        """The app group's committed offsets."""
        return dict(self.broker.group(self.app.id).committed)
