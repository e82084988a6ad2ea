"""The test harness: run an app's agents, dataflows and timers on the real broker core in this
process, with a manual clock — no broker to start, no threads, no sleeping.

It runs the real :class:`~flowbus.worker.Worker` (the same code as production) over
:class:`~flowbus.transports.memory.MemoryTransport`: the broker core of ``flowbus broker`` on a
temporary directory, removed when the context ends. It waits for *quiescence* instead of time:
after :meth:`TestContext.send` or :meth:`TestContext.advance` returns, every record has been
appended, through every agent and dataflow, and every timer due has fired. The app's clock is
manual; the broker's group sessions and transaction timeouts keep real time.

Example:
    >>> async def test_enrich():                         # doctest: +SKIP
    ...     async with app.test_context() as t:
    ...         await t.send(clicks, {"user": "u1", "url": "/a"})
    ...         assert t.values(enriched) == [{"user": "u1", "url": "/a", "section": "a"}]
    ...         await t.advance(60)                      # timers due in the next minute fire
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from flowbus.app_errors import AgentError, FrameworkError
from flowbus.clock import ManualClock
from flowbus.stream import Event
from flowbus.timers import Scheduler
from flowbus.topic import Topic, _headers
from flowbus.transports.base import Record, TopicPartition
from flowbus.transports.embedded import EmbeddedProducer
from flowbus.transports.errors import TopicNotFoundError
from flowbus.transports.memory import MemoryTransport

if TYPE_CHECKING:
    from flowbus.app import App

SETTLE_TIMEOUT_S = 30.0
"""Real time :meth:`TestContext.settle` waits for quiescence before declaring the app stuck."""
SETTLE_BUSY_TURNS = 1_000
"""Event-loop turns :meth:`TestContext.settle` spins before it also sleeps a millisecond per look
(the broker's long polls and the group's join wait on real time)."""


DRIVER_LOOK_S = 0.005
"""How long the harness's driver waits, once the app is quiet, before it steps the worker again."""


class NotSettledError(FrameworkError):
    """The app kept working (or kept waiting on something outside the harness, such as a real
    ``asyncio.sleep``) for longer than the harness allows."""


class TestContext:
    """An app running on the in-process broker core with a :class:`~flowbus.clock.ManualClock`."""

    __test__ = False  # not a pytest test class

    def __init__(self, app: App, clock: ManualClock | None = None, *, settle_timeout_s: float = SETTLE_TIMEOUT_S) -> None:
        self.app = app
        self.settle_timeout_s = settle_timeout_s
        if clock is None:
            clock = app.clock if isinstance(app.clock, ManualClock) else ManualClock()
        self.clock = clock
        self.transport = MemoryTransport(clock=clock)
        self._producer: EmbeddedProducer | None = None
        self._kept: dict[tuple[str, bool], list[Record]] | None = None
        """Once the context ended (its broker core closed): every topic's records as they were,
        so a test can still check outputs after the ``async with`` block (for example after the
        app stopped on an error)."""
        self._kept_offsets: dict[TopicPartition, int] = {}
        self._saved: tuple[Any, ...] = ()
        self._driver: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.failure: BaseException | None = None

    async def __aenter__(self) -> Self:
        app = self.app
        self._saved = (app.clock, app._scheduler, app._transport)
        app.clock, app._scheduler, app._transport = self.clock, Scheduler(self.clock), self.transport
        await self.transport.start()  # the context's own use: outputs stay readable until it ends
        self._producer = self.transport.producer()
        self.worker = app.make_worker(self.transport.alias())  # the worker closes its own at shutdown
        await self.worker.start()
        self._driver = asyncio.create_task(self._drive(), name="flowbus-test-driver")
        await self.settle()
        return self

    async def _drive(self) -> None:
        """Step the worker without long polls (a poll never waits on the broker): when the app is
        quiet, wait for :meth:`send`, :meth:`advance` or :meth:`commit` to wake it, or for a
        short real-time look (the app's own tasks may produce meanwhile)."""
        worker = self.worker
        scheduler = self.app.scheduler
        wake = self._wake
        loop = asyncio.get_running_loop()
        try:
            while not worker.stopping.is_set():
                await worker.step(0)
                if self._quiescent(worker, scheduler):
                    # A timer instead of wait_for: 3.11's wait_for can turn a timeout that races
                    # the event into a CancelledError.
                    wake.clear()
                    look = loop.call_later(DRIVER_LOOK_S, wake.set)
                    try:
                        await wake.wait()
                    finally:
                        look.cancel()
                else:
                    await asyncio.sleep(0)
        except AgentError:
            pass

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.worker.stop()
        if self._driver is not None:
            await self._driver
        await self.worker.shutdown()
        if self._producer is not None:
            await self._producer.close()
        self._keep_outputs()
        await self.transport.close()
        self.app.clock, self.app._scheduler, self.app._transport = self._saved
        if exc_type is None and self.worker.failure is not None:
            raise AgentError(f"the app stopped: {self.worker.failure!r}") from self.worker.failure

    # -- input ------------------------------------------------------------------------------
    def _keep_outputs(self) -> None:
        transport = self.transport
        kept: dict[tuple[str, bool], list[Record]] = {}
        for name in transport.topics_now():
            if not name.startswith("__"):  # the broker's own topics are not the app's outputs
                for committed_only in (False, True):
                    kept[name, committed_only] = transport.read_records(name, committed_only=committed_only)
        self._kept_offsets = transport.group_offsets_now(self.app.id)
        self._kept = kept

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
        assert self._producer is not None, "send inside `async with app.test_context()`"
        encoded = _headers(headers)
        stamp = self.clock.now_ms() if timestamp_ms is None else timestamp_ms
        future = self._producer.send(name, value, key, partition=partition, headers=encoded, timestamp_ms=stamp)
        await self._producer.flush()
        meta = await future
        if settle:
            await self.settle()
        return Record(name, meta.partition, meta.offset, stamp, key, value, encoded)

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
        deadline = time.monotonic() + self.settle_timeout_s
        self._wake.set()
        turns = 0
        while time.monotonic() < deadline:  # bounded by the settle timeout
            turns += 1
            await asyncio.sleep(0 if turns < SETTLE_BUSY_TURNS else 0.001)
            if worker.stopping.is_set():
                return
            if self._quiescent(worker, scheduler):
                # one more turn to let tasks woken by the last step run, then re-check
                await asyncio.sleep(0)
                if self._quiescent(worker, scheduler):
                    return
        raise NotSettledError(
            f"the app did not settle within {self.settle_timeout_s:g} s; is an agent waiting on real time or I/O?"
        )

    def _quiescent(self, worker: Any, scheduler: Scheduler) -> bool:
        if worker._deadline_tasks or worker.commit_guard.locked():
            return False
        if worker.next_commit_ms <= self.clock.monotonic_ms():
            return False  # the next step commits
        for producer in (self._producer, worker.producer):
            if isinstance(producer, EmbeddedProducer) and producer.pending:
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
        """Raw records of every partition of ``topic``, partition by partition in offset order:
        those a read_committed reader sees (``committed_only``), or also those of open
        transactions; aborted ones never. An unknown topic has none."""
        name = topic.name if isinstance(topic, Topic) else topic
        if self._kept is not None:
            return list(self._kept.get((name, committed_only), []))
        try:
            return self.transport.read_records(name, committed_only=committed_only)
        except TopicNotFoundError:
            return []

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
        if self._kept is not None:
            return dict(self._kept_offsets)
        return self.transport.group_offsets_now(self.app.id)
