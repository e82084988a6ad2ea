"""What an agent iterates: a :class:`Stream` over one :class:`Channel` of raw records.

The worker puts polled records into a channel (one per agent instance); the stream decodes them
and hands them to the agent one at a time. An event counts as processed — and its offset as
committable — when the agent asks for the next one, so a crash or an exception in the middle of
an event never commits it. The worker can close a channel's *gate* to bring every agent to an
event boundary (for a commit under exactly-once, or before a partition is revoked); agents then
finish the event in hand and wait.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Callable, Iterable
from time import perf_counter
from typing import TYPE_CHECKING, Any

from flowbus.app_errors import DecodeError
from flowbus.context import current_source
from flowbus.transports.base import Headers, Record, TopicPartition

if TYPE_CHECKING:
    from flowbus.metrics.worker_stats import TopicEvents
    from flowbus.timers import Scheduler
    from flowbus.topic import Topic

DEFAULT_MAX_BUFFERED_EVENTS = 10_000
"""Default limit of a channel's buffer; above it the worker pauses the partitions feeding it."""
STATS_GROUP_EVENTS = 1_000
"""An agent's finished events are counted into the worker's stats in groups of at most this
many, or of at most STATS_GROUP_S seconds, and before its stream waits for records."""
STATS_GROUP_S = 0.005
"""See STATS_GROUP_EVENTS: an end-to-end latency is measured at most this late."""


class Event:
    """One decoded record with where it came from; what ``stream.events()`` yields."""

    __slots__ = ("headers", "key", "offset", "partition", "record", "timestamp_ms", "topic", "value")

    def __init__(self, record: Record, key: Any, value: Any) -> None:
        self.topic = record.topic
        self.partition = record.partition
        self.offset = record.offset
        self.timestamp_ms = record.timestamp_ms
        self.headers: Headers = record.headers
        self.key = key
        self.value = value
        self.record = record

    def __repr__(self) -> str:
        return f"<Event {self.topic}[{self.partition}]@{self.offset} key={self.key!r} value={self.value!r}>"


class Channel:
    """The bounded buffer between the worker's poll loop and one agent instance.

    Offsets: ``outstanding[tp]`` counts records put but not yet acknowledged; ``acked_next[tp]``
    is the offset to commit for ``tp`` while any are outstanding (the offset after the last
    processed record, or the first record's offset if none was processed yet).
    """

    def __init__(self, name: str, max_buffered_events: int = DEFAULT_MAX_BUFFERED_EVENTS) -> None:
        self.name = name
        self.max_buffered_events = max_buffered_events
        self.low_watermark_events = max_buffered_events // 2
        self.pending: collections.deque[Record] = collections.deque()
        self.outstanding: dict[TopicPartition, int] = {}
        self.acked_next: dict[TopicPartition, int] = {}
        self.in_flight: list[Record] = []
        self.gate_open = True
        self.wake = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()
        self.waiting = False
        """True while the agent is blocked on this channel (the test harness's notion of "done")."""
        self.on_drained: Callable[[], None] | None = None
        self.processed_events = 0
        self.stats: TopicEvents | None = None
        """The worker's counters of the agent's topic: processing and end-to-end latency."""

    def __len__(self) -> int:
        return len(self.pending)

    @property
    def full(self) -> bool:
        return len(self.pending) >= self.max_buffered_events

    def put(self, tp: TopicPartition, records: list[Record]) -> None:
        """Append records of one partition, in offset order (the worker never drops any)."""
        if not records:
            return
        count = self.outstanding.get(tp, 0)
        if count == 0:
            self.acked_next[tp] = records[0].offset
        self.outstanding[tp] = count + len(records)
        self.pending.extend(records)
        self.wake.set()

    def ack(self, record: Record) -> None:
        """Mark ``record`` processed; its offset + 1 becomes committable for its partition."""
        tp = TopicPartition(record.topic, record.partition)
        self.acked_next[tp] = record.offset + 1
        self.outstanding[tp] -= 1
        self.processed_events += 1

    def purge(self, partitions: Iterable[TopicPartition]) -> None:
        """Forget buffered records of revoked partitions; their new owner will read them again."""
        gone = set(partitions)
        if not gone:
            return
        self.pending = collections.deque(r for r in self.pending if (r.topic, r.partition) not in gone)
        for tp in gone:
            self.outstanding.pop(tp, None)
            self.acked_next.pop(tp, None)

    def open_gate(self) -> None:
        self.gate_open = True
        self.wake.set()

    def close_gate(self) -> None:
        self.gate_open = False
        self.wake.set()

    async def next_record(self) -> Record:
        """The next record once one is buffered and the gate is open; idle while waiting."""
        while not (self.pending and self.gate_open):
            self.idle.set()
            await self.wait()
        self.idle.clear()
        return self.pop()

    async def wait(self) -> None:
        """Block until something changes (records put, gate opened or closed, a deadline passed)."""
        self.wake.clear()
        self.waiting = True
        try:
            await self.wake.wait()
        finally:
            self.waiting = False

    def pop(self) -> Record:
        """Take the oldest buffered record; tells the worker when the buffer drains to half."""
        record = self.pending.popleft()
        if len(self.pending) == self.low_watermark_events and self.on_drained is not None:
            self.on_drained()
        return record


ErrorHook = Callable[[BaseException, list[Record]], None]


class Stream:
    """An agent's input: ``async for value in stream``, ``stream.items()``, ``stream.events()``,
    ``stream.take(n, within_s=...)``.

    Every iterator reads the same channel, so an agent restarted after an error continues
    with the event after the one that failed.
    """

    def __init__(
        self,
        topic: Topic,
        channel: Channel,
        scheduler: Scheduler,
        on_decode_error: ErrorHook,
    ) -> None:
        self.topic = topic
        self.channel = channel
        self._scheduler = scheduler
        self._on_decode_error = on_decode_error
        self.current_event: Event | None = None

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate(lambda record, key, value: value, decode_key=False)

    def items(self) -> AsyncIterator[tuple[Any, Any]]:
        """(key, value) pairs."""
        return self._iterate(lambda record, key, value: (key, value), decode_key=True)

    def events(self) -> AsyncIterator[Event]:
        """:class:`Event` objects with topic, partition, offset, timestamp and headers."""
        return self._iterate(Event, decode_key=True)

    def _decode(self, record: Record, decode_key: bool) -> tuple[Any, Any]:
        key = self.topic.key_codec.decode(record.key) if decode_key else None
        return key, self.topic.value_codec.decode(record.value)

    async def _iterate(self, make: Callable[[Record, Any, Any], Any], decode_key: bool) -> AsyncIterator[Any]:
        channel = self.channel
        decode_value = self.topic.value_codec.decode
        decode_key_fn = self.topic.key_codec.decode
        value_bytes_decode = self.topic.value_codec.decode_bytes
        key_bytes_decode = self.topic.key_codec.decode_bytes
        set_source = current_source.set
        stats = channel.stats
        # Processing times and timestamps of finished events, counted into the stats in groups:
        # before the stream waits for records, every STATS_GROUP_EVENTS events, and at least
        # every STATS_GROUP_S (so an end-to-end latency, measured when its group is counted, is
        # late by at most that).
        durations_s: list[float] = []
        stamps_ms: list[int] = []
        group_started_s = ended_s = 0.0
        try:
            while True:
                if durations_s and (len(durations_s) >= STATS_GROUP_EVENTS or not (channel.pending and channel.gate_open)
                                    or ended_s - group_started_s >= STATS_GROUP_S):
                    stats.processed_each(durations_s, stamps_ms)  # type: ignore[union-attr]
                    durations_s = []
                    stamps_ms = []
                record = await channel.next_record()
                channel.in_flight.append(record)
                set_source(record)
                try:
                    # The C decoders first, as a dataflow does; on a failure the codec's own decode
                    # says what is wrong (DecodeError).
                    raw_key, raw_value = record.key, record.value
                    try:
                        key = None if not decode_key or raw_key is None else key_bytes_decode(raw_key)
                        value = None if raw_value is None else value_bytes_decode(raw_value)
                    except Exception:  # noqa: BLE001 - decoded again below, to raise the codec's error
                        key = decode_key_fn(raw_key) if decode_key else None
                        value = decode_value(raw_value)
                except DecodeError as exc:
                    # The hook raises to stop the app; otherwise the record is dead-lettered or logged.
                    self._on_decode_error(exc, [record])
                    channel.in_flight.clear()
                    channel.ack(record)
                    continue
                item = make(record, key, value)
                started_s = perf_counter()
                yield item
                ended_s = perf_counter()
                channel.in_flight.clear()
                channel.ack(record)
                if stats is not None:
                    if not durations_s:
                        group_started_s = ended_s
                    durations_s.append(ended_s - started_s)
                    stamps_ms.append(record.timestamp_ms)
        finally:
            if durations_s and stats is not None:
                stats.processed_each(durations_s, stamps_ms)

    async def take(self, max_events: int, within_s: float) -> AsyncIterator[list[Any]]:
        """Lists of up to ``max_events`` values, each list emitted at most ``within_s`` (app clock)
        after its first value arrived. The events of a list are processed together: their offsets
        become committable when the agent asks for the next list.

        A list is also emitted early when the worker needs an event boundary (a commit under
        exactly-once, a revocation), because holding events back would block it.
        """
        channel = self.channel
        scheduler = self._scheduler
        clock = scheduler.clock
        within_ms = int(within_s * 1000)
        decode_value = self.topic.value_codec.decode
        while True:
            records: list[Record] = []
            values: list[Any] = []
            deadline_ms: int | None = None
            while len(records) < max_events:
                if channel.pending and channel.gate_open:
                    channel.idle.clear()
                    record = channel.pop()
                    records.append(record)
                    channel.in_flight.append(record)
                    try:
                        values.append(decode_value(record.value))
                    except DecodeError as exc:
                        self._on_decode_error(exc, [record])
                        channel.in_flight.remove(record)
                    if deadline_ms is None:
                        deadline_ms = clock.monotonic_ms() + within_ms
                        scheduler.call_at(deadline_ms, channel.wake.set)
                    continue
                if records and (not channel.gate_open or clock.monotonic_ms() >= (deadline_ms or 0)):
                    break
                if not records:
                    channel.idle.set()
                await channel.wait()
            started_s = perf_counter()
            if values:
                current_source.set(None)  # a list may mix partitions: table writes check ownership
                yield values
            channel.in_flight.clear()
            for record in records:
                channel.ack(record)
            if channel.stats is not None:
                channel.stats.processed_many(perf_counter() - started_s, records)
