"""An in-process transport for the test harness: topics are Python lists, the group is a dict.

It exists so users can test agents and streams with in-memory input and a controlled clock, with
no broker and no sleeping. It keeps the semantics the framework relies on — offsets, consumer
groups with partition hand-over after revocation, pause/resume, commits, and transactions whose
records read_committed readers see only after commit — but none of a broker's durability. The
framework's own worker tests also run against the real broker; this is not a substitute for it.

Everything runs on one event loop; there are no threads and no locks.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from flowbus.clock import SYSTEM_CLOCK, Clock
from flowbus.transports.base import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    GroupDescription,
    GroupMember,
    GroupSummary,
    Headers,
    IsolationLevel,
    OnAssigned,
    OnRevoked,
    Producer,
    Record,
    RecordMetadata,
    TopicDescription,
    TopicPartition,
    TopicSpec,
    Transport,
    Watermarks,
)
from flowbus.transports.errors import (
    ProducerFencedError,
    TopicNotFoundError,
    TransactionError,
)
from flowbus.transports.partitioner import partition_for_key


@dataclass(slots=True)
class _Partition:
    records: list[Record] = field(default_factory=list)
    aborted: set[int] = field(default_factory=set)
    # transactional id -> first offset of its open transaction here; the minimum is the LSO.
    open_first_offset: dict[str, int] = field(default_factory=dict)

    def stable_end(self) -> int:
        """The last stable offset: read_committed readers stop before any open transaction."""
        if self.open_first_offset:
            return min(self.open_first_offset.values())
        return len(self.records)


@dataclass(slots=True)
class _Group:
    members: list[MemoryConsumer] = field(default_factory=list)
    owner: dict[TopicPartition, MemoryConsumer] = field(default_factory=dict)
    committed: dict[TopicPartition, int] = field(default_factory=dict)
    generation: int = 0


class MemoryBroker:
    """The shared state of every ``memory://NAME`` transport with the same name in this process."""

    def __init__(self, clock: Clock = SYSTEM_CLOCK, default_partitions: int = 1) -> None:
        self.clock = clock
        self.default_partitions = default_partitions
        self.auto_create_topics = True
        self.topics: dict[str, list[_Partition]] = {}
        self.configs: dict[str, dict[str, str]] = {}
        self.groups: dict[str, _Group] = {}
        self.transactional_owner: dict[str, MemoryProducer] = {}
        self._waiters: list[asyncio.Future[None]] = []

    # -- topics ----------------------------------------------------------------------------
    def create_topic(self, name: str, partitions: int | None = None, config: Mapping[str, str] | None = None) -> None:
        if name not in self.topics:
            self.topics[name] = [_Partition() for _ in range(partitions or self.default_partitions)]
            self.configs[name] = dict(config or {})
            for group in self.groups.values():
                group.generation += 1

    def partitions(self, topic: str, create: bool = True) -> list[_Partition]:
        found = self.topics.get(topic)
        if found is None:
            if not (create and self.auto_create_topics):
                raise TopicNotFoundError(f"topic {topic!r} does not exist")
            self.create_topic(topic)
            found = self.topics[topic]
        return found

    def append(
        self,
        topic: str,
        partition: int | None,
        key: bytes | None,
        value: bytes | None,
        headers: Headers,
        timestamp_ms: int | None,
        transactional_id: str | None = None,
    ) -> RecordMetadata:
        parts = self.partitions(topic)
        if partition is None:
            partition = partition_for_key(key, len(parts)) if key is not None else self._round_robin(topic, len(parts))
        log = parts[partition]
        offset = len(log.records)
        ts = self.clock.now_ms() if timestamp_ms is None else timestamp_ms
        log.records.append(Record(topic, partition, offset, ts, key, value, headers))
        if transactional_id is not None:
            log.open_first_offset.setdefault(transactional_id, offset)
        self.notify()
        return RecordMetadata(topic, partition, offset, ts)

    _rr = itertools.count()

    def _round_robin(self, topic: str, partitions: int) -> int:
        return next(self._rr) % partitions

    def records(self, topic: str, partition: int = 0) -> list[Record]:
        """Every record of a partition, including aborted ones (for assertions in tests)."""
        return list(self.partitions(topic, create=False)[partition].records)

    def committed_records(self, topic: str) -> list[Record]:
        """Every committed, non-aborted record of a topic, partition by partition."""
        out: list[Record] = []
        for part in self.topics.get(topic, []):
            end = part.stable_end()
            out.extend(r for r in part.records[:end] if r.offset not in part.aborted)
        return out

    # -- wake-ups --------------------------------------------------------------------------
    def notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def wait_for_data(self, timeout_ms: int) -> None:
        if timeout_ms <= 0:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        # asyncio.wait, not wait_for: on Python 3.11 wait_for swallows a cancellation that comes
        # while the future completes (gh-86296). A consumer closing notifies every waiter, so a
        # poll loop cancelled right then (a global table's follower at shutdown) went on forever.
        try:
            await asyncio.wait((fut,), timeout=timeout_ms / 1000)
        finally:
            if not fut.done():
                fut.cancel()

    def group(self, group_id: str) -> _Group:
        return self.groups.setdefault(group_id, _Group())


_BROKERS: dict[str, MemoryBroker] = {}


def broker_named(name: str, clock: Clock = SYSTEM_CLOCK) -> MemoryBroker:
    """The process-wide broker of this name, created on first use."""
    broker = _BROKERS.get(name)
    if broker is None:
        broker = _BROKERS[name] = MemoryBroker(clock)
    return broker


class MemoryProducer(Producer):
    """Appends at once; delivery futures are resolved before :meth:`send` returns."""

    def __init__(self, broker: MemoryBroker, transactional_id: str | None) -> None:
        self._broker = broker
        self._transactional_id = transactional_id
        self._in_transaction = False
        self._fenced = False
        self._touched: dict[TopicPartition, list[int]] = {}
        self._pending_offsets: dict[str, dict[TopicPartition, int]] = {}

    def _check(self) -> None:
        if self._fenced:
            raise ProducerFencedError(f"producer {self._transactional_id!r} was fenced by a newer instance")

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        *,
        partition: int | None = None,
        headers: Headers = (),
        timestamp_ms: int | None = None,
    ) -> asyncio.Future[RecordMetadata]:
        fut: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        fut.set_result(self._append(topic, value, key, partition, headers, timestamp_ms))
        return fut

    def send_soon(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        *,
        partition: int | None = None,
        headers: Headers = (),
        timestamp_ms: int | None = None,
    ) -> None:
        self._append(topic, value, key, partition, headers, timestamp_ms)

    def _append(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        partition: int | None,
        headers: Headers,
        timestamp_ms: int | None,
    ) -> RecordMetadata:
        self._check()
        if self._transactional_id is not None and not self._in_transaction:
            raise TransactionError("a transactional producer sends only inside a transaction")
        self.records_sent += 1
        txn = self._transactional_id if self._in_transaction else None
        meta = self._broker.append(topic, partition, key, value, headers, timestamp_ms, txn)
        if txn is not None:
            self._touched.setdefault(TopicPartition(meta.topic, meta.partition), []).append(meta.offset)
        return meta

    async def flush(self, timeout_ms: int | None = None) -> None:
        self._check()

    async def partitions_for(self, topic: str) -> int:
        return len(self._broker.partitions(topic))

    async def init_transactions(self) -> None:
        if self._transactional_id is None:
            raise TransactionError("init_transactions needs a transactional_id")
        old = self._broker.transactional_owner.get(self._transactional_id)
        if old is not None and old is not self:
            if old._in_transaction:
                old._end(commit=False)
            old._fenced = True
        self._broker.transactional_owner[self._transactional_id] = self

    def begin_transaction(self) -> None:
        self._check()
        if self._transactional_id is None:
            raise TransactionError("begin_transaction needs a transactional producer")
        if self._in_transaction:
            raise TransactionError("a transaction is already open")
        self._in_transaction = True

    async def send_offsets_to_transaction(self, offsets: Mapping[TopicPartition, int], group_metadata: object) -> None:
        self._check()
        if not self._in_transaction:
            raise TransactionError("no open transaction")
        group_id = str(group_metadata[0]) if isinstance(group_metadata, tuple) else str(group_metadata)
        self._pending_offsets.setdefault(group_id, {}).update(offsets)

    async def commit_transaction(self) -> None:
        self._check()
        if not self._in_transaction:
            raise TransactionError("no open transaction")
        self._end(commit=True)

    async def abort_transaction(self) -> None:
        self._check()
        if self._in_transaction:
            self._end(commit=False)

    def _end(self, commit: bool) -> None:
        assert self._transactional_id is not None
        for tp, appended in self._touched.items():
            part = self._broker.topics[tp.topic][tp.partition]
            part.open_first_offset.pop(self._transactional_id, None)
            if not commit:
                part.aborted.update(appended)
        if commit:
            for group_id, offsets in self._pending_offsets.items():
                self._broker.group(group_id).committed.update(offsets)
        self._touched.clear()
        self._pending_offsets.clear()
        self._in_transaction = False
        self._broker.notify()

    async def close(self) -> None:
        if self._in_transaction and not self._fenced:
            self._end(commit=False)


class MemoryConsumer(Consumer):
    """A group member; rebalances happen at the start of :meth:`poll_batch`, eagerly and in order."""

    def __init__(
        self,
        broker: MemoryBroker,
        group_id: str | None,
        isolation_level: IsolationLevel,
        auto_offset_reset: Literal["earliest", "latest"],
    ) -> None:
        self._broker = broker
        self._group_id = group_id
        self._read_committed = isolation_level == "read_committed"
        self._reset_latest = auto_offset_reset == "latest"
        self._topics: list[str] = []
        self._on_assigned: OnAssigned | None = None
        self._on_revoked: OnRevoked | None = None
        self._owned: list[TopicPartition] = []
        self._positions: dict[TopicPartition, int] = {}
        self._paused: set[TopicPartition] = set()
        self._manual = False
        self._closed = False

    def subscribe(
        self,
        topics: Sequence[str],
        *,
        on_assigned: OnAssigned | None = None,
        on_revoked: OnRevoked | None = None,
    ) -> None:
        self._topics = list(topics)
        self._on_assigned, self._on_revoked = on_assigned, on_revoked
        for topic in self._topics:
            self._broker.partitions(topic)
        if self._group_id is not None:
            group = self._broker.group(self._group_id)
            if self not in group.members:
                group.members.append(self)
            group.generation += 1

    def assign(self, partitions: Sequence[TopicPartition], offsets: Mapping[TopicPartition, int] | None = None) -> None:
        self._manual = True
        self._owned = list(partitions)
        self._positions = {
            tp: (offsets or {}).get(tp, self._positions.get(tp, self._initial_position(tp))) for tp in self._owned
        }

    def _initial_position(self, tp: TopicPartition) -> int:
        if self._group_id is not None:
            committed = self._broker.group(self._group_id).committed.get(tp)
            if committed is not None:
                return committed
        return len(self._broker.partitions(tp.topic)[tp.partition].records) if self._reset_latest else 0

    def _target(self) -> list[TopicPartition]:
        """This member's share, as Kafka's range assignor deals it (members in join order): topics
        with equal partition counts are co-partitioned, as tables need."""
        if self._group_id is None:
            return [TopicPartition(t, p) for t in self._topics for p in range(len(self._broker.partitions(t)))]
        members = self._broker.group(self._group_id).members
        mine: list[TopicPartition] = []
        for topic in self._topics:
            takers = [m for m in members if topic in m._topics]
            each, extra = divmod(len(self._broker.partitions(topic)), len(takers))
            index = takers.index(self)
            start = index * each + min(index, extra)
            mine.extend(TopicPartition(topic, p) for p in range(start, start + each + (1 if index < extra else 0)))
        return mine

    async def _rebalance(self) -> None:
        if self._manual or not self._topics:
            return
        target = self._target()
        revoked = [tp for tp in self._owned if tp not in target]
        if revoked:
            if self._on_revoked is not None:
                await self._on_revoked(revoked)
            self._release(revoked)
        owner = self._broker.group(self._group_id).owner if self._group_id is not None else {}
        gained = [tp for tp in target if tp not in self._owned and owner.get(tp) is None]
        if gained:
            for tp in gained:
                owner[tp] = self
                self._positions[tp] = self._initial_position(tp)
            self._owned.extend(gained)
            if self._on_assigned is not None:
                await self._on_assigned(gained)

    def _release(self, partitions: Iterable[TopicPartition]) -> None:
        owner = self._broker.group(self._group_id).owner if self._group_id is not None else {}
        for tp in list(partitions):
            if tp in self._owned:
                self._owned.remove(tp)
            self._positions.pop(tp, None)
            self._paused.discard(tp)
            if owner.get(tp) is self:
                del owner[tp]
        self._broker.notify()

    async def poll_batch(self, max_records: int, timeout_ms: int) -> list[Record]:
        await self._rebalance()
        batch = self._take(max_records)
        if not batch and timeout_ms > 0:
            await self._broker.wait_for_data(timeout_ms)
            await self._rebalance()
            batch = self._take(max_records)
        return batch

    def _take(self, max_records: int) -> list[Record]:
        out: list[Record] = []
        for tp in self._owned:
            if tp in self._paused or len(out) >= max_records:
                continue
            part = self._broker.topics[tp.topic][tp.partition]
            position = self._positions[tp]
            end = part.stable_end() if self._read_committed else len(part.records)
            stop = min(end, position + max_records - len(out))
            if stop <= position:
                continue
            chunk = part.records[position:stop]
            if self._read_committed and part.aborted:
                chunk = [r for r in chunk if r.offset not in part.aborted]
            out.extend(chunk)
            self._positions[tp] = stop
        return out

    def caught_up(self) -> bool:
        """True when the group has settled this member's share and it has read everything readable
        (the test harness uses this to know the worker has nothing left to do)."""
        if not self._manual and self._topics and sorted(self._owned) != sorted(self._target()):
            return False
        for tp in self._owned:
            part = self._broker.topics[tp.topic][tp.partition]
            end = part.stable_end() if self._read_committed else len(part.records)
            if self._positions.get(tp, end) < end:
                return False
        return True

    def assignment(self) -> list[TopicPartition]:
        return list(self._owned)

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        self._paused.update(partitions)

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        self._paused.difference_update(partitions)
        self._broker.notify()

    async def commit(self, offsets: Mapping[TopicPartition, int], *, asynchronous: bool = False) -> None:
        if self._group_id is None:
            raise TransactionError("a consumer outside a group cannot commit")
        self._broker.group(self._group_id).committed.update(offsets)

    def seek(self, partition: TopicPartition, offset: int) -> None:
        records = self._broker.partitions(partition.topic)[partition.partition].records
        if offset == OFFSET_BEGINNING:
            offset = 0
        elif offset == OFFSET_END:
            offset = len(records)
        self._positions[partition] = offset

    def position(self, partition: TopicPartition) -> int | None:
        """The next offset this consumer will read from ``partition``."""
        return self._positions.get(partition)

    async def committed(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int | None]:
        group = self._broker.group(self._group_id) if self._group_id is not None else _Group()
        return {tp: group.committed.get(tp) for tp in partitions}

    async def end_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: len(self._broker.partitions(tp.topic)[tp.partition].records) for tp in partitions}

    def group_metadata(self) -> object:
        group = self._broker.group(self._group_id) if self._group_id is not None else None
        return (self._group_id, group.generation if group else 0, id(self))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._owned and not self._manual and self._on_revoked is not None:
            await self._on_revoked(list(self._owned))
        self._release(list(self._owned))
        if self._group_id is not None:
            group = self._broker.group(self._group_id)
            if self in group.members:
                group.members.remove(self)
                group.generation += 1
        self._broker.notify()


class MemoryTransport(Transport):
    """``memory://NAME``: every transport with the same name shares one :class:`MemoryBroker`."""

    def __init__(self, url: str = "memory://", *, clock: Clock = SYSTEM_CLOCK, broker: MemoryBroker | None = None) -> None:
        self.url = url
        name = url.removeprefix("memory://")
        self.broker = broker if broker is not None else (MemoryBroker(clock) if not name else broker_named(name, clock))

    async def create_topics(self, specs: Sequence[TopicSpec]) -> None:
        for spec in specs:
            self.broker.create_topic(spec.name, spec.partitions, spec.config)

    async def describe_topics(self, names: Sequence[str]) -> dict[str, TopicDescription]:
        return {
            n: TopicDescription(n, len(self.broker.topics[n]), dict(self.broker.configs.get(n, {})))
            for n in names
            if n in self.broker.topics
        }

    def producer(self, *, transactional_id: str | None = None, linger_ms: int = 5) -> MemoryProducer:
        return MemoryProducer(self.broker, transactional_id)

    def consumer(
        self,
        group_id: str | None,
        *,
        isolation_level: IsolationLevel = "read_uncommitted",
        auto_offset_reset: Literal["earliest", "latest"] = "earliest",
        client_id: str | None = None,
    ) -> MemoryConsumer:
        return MemoryConsumer(self.broker, group_id, isolation_level, auto_offset_reset)

    # -- administration ---------------------------------------------------------------------

    async def list_topics(self, *, timeout_s: float | None = None) -> list[str]:
        return sorted(self.broker.topics)

    async def delete_topics(self, names: Sequence[str], *, timeout_s: float | None = None) -> None:
        missing = [n for n in names if n not in self.broker.topics]
        for name in names:
            self.broker.topics.pop(name, None)
            self.broker.configs.pop(name, None)
        if missing:
            raise TopicNotFoundError(f"no topic {', '.join(map(repr, missing))}")

    async def topic_configs(self, name: str, *, timeout_s: float | None = None) -> dict[str, str]:
        if name not in self.broker.topics:
            raise TopicNotFoundError(f"no topic {name!r}")
        return dict(self.broker.configs.get(name, {}))

    async def watermarks(
        self, partitions: Sequence[TopicPartition], *, timeout_s: float | None = None
    ) -> dict[TopicPartition, Watermarks]:
        out: dict[TopicPartition, Watermarks] = {}
        for tp in partitions:
            parts = self.broker.topics.get(tp.topic)
            if parts is None or not 0 <= tp.partition < len(parts):
                raise TopicNotFoundError(f"no partition {tp.partition} of topic {tp.topic!r}")
            out[tp] = Watermarks(0, len(parts[tp.partition].records))  # nothing is ever deleted here
        return out

    async def list_groups(self, *, timeout_s: float | None = None) -> list[GroupSummary]:
        return [GroupSummary(g, "Stable" if group.members else "Empty") for g, group in sorted(self.broker.groups.items())]

    async def describe_group(self, group_id: str, *, timeout_s: float | None = None) -> GroupDescription:
        group = self.broker.groups.get(group_id)
        if group is None:
            return GroupDescription(group_id, "Dead")
        members = tuple(
            GroupMember(f"memory-{id(m):x}", "memory", "memory", tuple(m.assignment())) for m in group.members
        )
        return GroupDescription(group_id, "Stable" if members else "Empty", members)

    async def group_offsets(
        self, group_id: str, *, timeout_s: float | None = None
    ) -> dict[TopicPartition, int]:
        group = self.broker.groups.get(group_id)
        return dict(group.committed) if group is not None else {}
