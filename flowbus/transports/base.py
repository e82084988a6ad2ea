"""The transport interface: everything the worker needs from a Kafka-like system, and nothing more.

The framework (app, agents, streams, operators, state) talks to a broker only through these
classes, so the same application runs on the embedded broker core (``embedded://DIR``, or
``memory://`` on a temporary directory for tests) and on any Kafka-protocol cluster
(``kafka://host:port``).

The contract is deliberately batch-shaped: :meth:`Consumer.poll_batch` returns a list of records
and :meth:`Producer.send` only enqueues, so the worker's hot path pays per batch, not per record.
Delivery is reported through futures; :meth:`Producer.flush` waits for all of them.

Room left for later issues:

* changelog topics for RocksDB tables are ordinary compacted topics: :class:`TopicSpec` carries
  a config mapping (``cleanup.policy=compact``) and :meth:`Consumer.assign` reads a partition
  outside the group, which is how table recovery will replay a changelog;
* windows that close on wall-clock time need nothing from the transport: the app's scheduler
  drives them from its :class:`~flowbus.clock.Clock`.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from operator import itemgetter
from types import MappingProxyType
from typing import Literal, NamedTuple, Protocol

Headers = tuple[tuple[str, bytes], ...]
"""Record headers as an ordered tuple of (name, value); names may repeat, as in Kafka."""

IsolationLevel = Literal["read_uncommitted", "read_committed"]

OFFSET_BEGINNING = -2
"""Sentinel for :meth:`Consumer.seek` and ``auto_offset_reset``: the earliest offset."""
OFFSET_END = -1
"""Sentinel for :meth:`Consumer.seek`: the offset after the last record."""


class TopicPartition(NamedTuple):
    """One partition of one topic; hashable, so it keys offset maps."""

    topic: str
    partition: int


class Record(NamedTuple):
    """One record as read from a partition: raw bytes plus where and when it was written.

    A NamedTuple rather than a dataclass: transports build one per record on the hot path,
    and a tuple is the cheapest immutable object Python can make.
    """

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: Headers = ()


# A Record is a tuple: its fields by index, read in C.
_KEY = itemgetter(4)
_VALUE = itemgetter(5)
_TOPIC_PARTITION = itemgetter(0, 1)


class RecordRun:
    """Records of one partition that one poll returned one after the other, in offset order.

    The worker hands a polled batch on run by run. A dataflow whose steps read only keys and
    values takes the two columns (:meth:`keys_values`); agents and steps that read the record
    (timestamp, headers, offset) take :meth:`records`. A transport whose client hands out its
    own message objects (confluent-kafka) builds the columns straight from them and a
    :class:`Record` per message only when asked: building the records cost more than the
    word-count dataflow's whole aggregation (~0.2 µs a record; benchmarks.md, ninth session).

    Args:
        tp: the topic partition.
        count: how many records (at least 1).
        first_offset: the first record's offset.
        next_offset: the last record's offset + 1.
        first_timestamp_ms: the first record's timestamp (``-1``: none).
        last_timestamp_ms: the last record's.
        records: the records, if the transport made them.
        columns: the keys and the values, if the transport made them.
        build: makes the records (and :meth:`record` one of them) from ``source``, for a
            transport that did not give ``records``.
        build_columns: makes the keys and the values from ``source``, for a transport that gave
            neither ``records`` nor ``columns`` (each is made only if asked: agents take the
            records, most dataflows the columns).
        source: what ``build`` and ``build_columns`` read: the client's messages of this run.
    """

    __slots__ = ("_build", "_build_columns", "_columns", "_records", "_source", "count", "first_offset",
                 "first_timestamp_ms", "last_timestamp_ms", "next_offset", "tp")

    def __init__(
        self,
        tp: TopicPartition,
        count: int,
        first_offset: int,
        next_offset: int,
        first_timestamp_ms: int,
        last_timestamp_ms: int,
        *,
        records: list[Record] | None = None,
        columns: tuple[list[bytes | None], list[bytes | None]] | None = None,
        build: Callable[[Sequence[object]], list[Record]] | None = None,
        build_columns: Callable[[Sequence[object]], tuple[list[bytes | None], list[bytes | None]]] | None = None,
        source: Sequence[object] = (),
    ) -> None:
        if records is None and build is None:
            raise ValueError("a RecordRun needs its records, or a way to build them")
        self.tp = tp
        self.count = count
        self.first_offset = first_offset
        self.next_offset = next_offset
        self.first_timestamp_ms = first_timestamp_ms
        self.last_timestamp_ms = last_timestamp_ms
        self._records = records
        self._columns = columns
        self._build = build
        self._build_columns = build_columns
        self._source = source

    @classmethod
    def of_records(cls, records: list[Record]) -> RecordRun:
        """A run of ``records`` (non-empty, one partition, in offset order)."""
        first, last = records[0], records[-1]
        return cls(TopicPartition(first.topic, first.partition), len(records), first.offset, last.offset + 1,
                   first.timestamp_ms, last.timestamp_ms, records=records)

    def records(self) -> list[Record]:
        """The records, made once on first use when the transport gave only the columns."""
        records = self._records
        if records is None:
            assert self._build is not None
            records = self._records = self._build(self._source)
        return records

    def record(self, index: int) -> Record:
        """Record ``index`` of the run (its first is 0), without making the others."""
        if self._records is not None:
            return self._records[index]
        assert self._build is not None
        return self._build(self._source[index:index + 1])[0]

    def keys_values(self) -> tuple[list[bytes | None], list[bytes | None]]:
        """The raw keys and the raw values, index for index with :meth:`records`."""
        columns = self._columns
        if columns is None:
            if self._records is None and self._build_columns is not None:
                columns = self._columns = self._build_columns(self._source)
            else:
                records = self.records()
                columns = self._columns = (list(map(_KEY, records)), list(map(_VALUE, records)))
        return columns

    def __repr__(self) -> str:
        return f"RecordRun({self.tp.topic}[{self.tp.partition}] {self.first_offset}..{self.next_offset - 1})"


def runs_of(records: list[Record]) -> list[RecordRun]:
    """``records`` (a polled batch) cut into runs of one partition each."""
    runs: list[RecordRun] = []
    start = 0
    count = len(records)
    for _, same in groupby(records, _TOPIC_PARTITION):
        end = start + len(list(same))
        runs.append(RecordRun.of_records(records if start == 0 and end == count else records[start:end]))
        start = end
    return runs


@dataclass(frozen=True, slots=True)
class RecordMetadata:
    """Where a produced record landed; the result of its delivery future."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic to create: name, partition count, replication and topic configs (e.g. compaction)."""

    name: str
    partitions: int = 1
    replication_factor: int = 1
    config: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TopicDescription:
    """What the transport knows about an existing topic."""

    name: str
    partitions: int
    config: Mapping[str, str] = field(default_factory=dict)


class Watermarks(NamedTuple):
    """The offsets bounding a partition's log: ``low`` is the first offset still stored (the log
    start offset, after retention), ``high`` the offset the next record will get (the high
    watermark). ``high - low`` is how many offsets the partition holds now."""

    low: int
    high: int


@dataclass(frozen=True, slots=True)
class GroupSummary:
    """One consumer group as a listing shows it."""

    group_id: str
    #: Kafka's state name: ``Empty``, ``PreparingRebalance``, ``CompletingRebalance``, ``Stable``,
    #: ``Dead``; ``Unknown`` when the broker did not say.
    state: str


@dataclass(frozen=True, slots=True)
class GroupMember:
    """A live member of a group and the partitions the group's leader gave it."""

    member_id: str
    client_id: str
    host: str
    assignment: tuple[TopicPartition, ...] = ()


@dataclass(frozen=True, slots=True)
class GroupDescription:
    """A group's state and live members. A group nobody joined and nobody committed for is
    reported ``Dead`` with no members, as Kafka's DescribeGroups does."""

    group_id: str
    state: str
    members: tuple[GroupMember, ...] = ()


class RawSender(Protocol):
    """What :meth:`Producer.sender_for` returns: send one record's bytes to a fixed topic.

    ``timestamp_ms`` None lets the transport stamp the send time; a dataflow passes the input
    record's timestamp and headers so event time survives a repartition, as in Kafka Streams.
    """

    def __call__(
        self, key: bytes | None, value: bytes | None, timestamp_ms: int | None = None, headers: Headers = ()
    ) -> None: ...


OnAssigned = Callable[[list[TopicPartition]], Awaitable[None]]
"""Called with the partitions just given to this consumer, before any of their records is polled."""
OnRevoked = Callable[[list[TopicPartition]], Awaitable[None]]
"""Called with the partitions about to be taken away; offsets committed inside it still count."""


class Producer(abc.ABC):
    """Sends records; a transactional producer also commits consumer offsets atomically with them."""

    records_sent: int = 0
    """Records handed to this producer so far (for status lines; counted per batch where possible)."""
    records_sent_by_topic: Mapping[str, int] = MappingProxyType({})
    """The same per topic (the worker's ``flowbus_worker_events_out_total``); a transport that
    counts them gives each producer a dict of its own, the default stays empty."""

    @abc.abstractmethod
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
        """Enqueue one record and return its delivery future; never blocks on the network.

        ``partition=None`` lets the transport choose: by key hash when there is a key (the same
        murmur2 partitioner as Kafka's Java client, so keyed data lands where other clients expect),
        round robin otherwise. A failed delivery sets :class:`~flowbus.transports.errors.ProduceError`.
        """

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
        """Like :meth:`send` without a future: the hot path of a pipeline sends thousands of records
        per batch and only needs to know, at :meth:`flush`, that all of them arrived. A failed
        delivery makes the next :meth:`flush` raise :class:`~flowbus.transports.errors.ProduceError`;
        in a transaction a transport may instead let the transaction's commit fail
        (:class:`~flowbus.transports.errors.TransactionError`), which is what exactly-once needs."""
        self.send(topic, value, key, partition=partition, headers=headers, timestamp_ms=timestamp_ms)

    def send_many(
        self, topic: str, partition: int, records: Sequence[tuple[bytes | None, bytes | None]]
    ) -> asyncio.Future[RecordMetadata]:
        """Send ``(key, value)`` records to one partition, in order; returns the delivery future of
        the last one (the offset a changelog reaches). A commit sends thousands of changelog
        records at once, so a transport may do it faster than one :meth:`send_soon` each."""
        if not records:
            raise ValueError("send_many needs at least one record")
        send_soon = self.send_soon
        for key, value in records[:-1]:
            send_soon(topic, value, key, partition=partition)
        key, value = records[-1]
        return self.send(topic, value, key, partition=partition)

    def sender_for(self, topic: str) -> RawSender:
        """A function ``(key, value, timestamp_ms=None, headers=())`` sending to ``topic`` like
        :meth:`send_soon` with default partitioning. Made once per output of a compiled dataflow,
        so a transport can resolve per-topic work up front; the default just calls :meth:`send_soon`."""
        send_soon = self.send_soon

        def send(
            key: bytes | None, value: bytes | None, timestamp_ms: int | None = None, headers: Headers = ()
        ) -> None:
            send_soon(topic, value, key, headers=headers, timestamp_ms=timestamp_ms)

        return send

    @abc.abstractmethod
    async def flush(self, timeout_ms: int | None = None) -> None:
        """Wait until every record sent so far is delivered (or failed)."""

    async def partitions_for(self, topic: str) -> int:
        """The partition count of ``topic``; used by the framework to partition by key itself."""
        raise NotImplementedError

    # Transactions (exactly-once). A non-transactional producer raises TransactionError.
    @abc.abstractmethod
    async def init_transactions(self) -> None:
        """Register the transactional id, fencing any older producer with the same id."""

    @abc.abstractmethod
    def begin_transaction(self) -> None:
        """Start a transaction; every following send belongs to it."""

    @abc.abstractmethod
    async def send_offsets_to_transaction(
        self, offsets: Mapping[TopicPartition, int], group_metadata: object
    ) -> None:
        """Make committing these consumer offsets part of the current transaction.

        ``offsets`` are the *next* offsets to read, as in every Kafka commit. ``group_metadata``
        comes from :meth:`Consumer.group_metadata` so the broker can fence zombie workers (KIP-447).
        """

    @abc.abstractmethod
    async def commit_transaction(self) -> None:
        """Make the transaction's records visible to read_committed readers and commit its offsets."""

    @abc.abstractmethod
    async def abort_transaction(self) -> None:
        """Discard the transaction: its records are skipped by read_committed readers."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Flush and release resources."""


class Consumer(abc.ABC):
    """A member of one consumer group (or, after :meth:`assign`, a reader outside any group)."""

    @abc.abstractmethod
    def subscribe(
        self,
        topics: Sequence[str],
        *,
        on_assigned: OnAssigned | None = None,
        on_revoked: OnRevoked | None = None,
    ) -> None:
        """Join the group for these topics; callbacks run inside :meth:`poll_batch`."""

    def assign(self, partitions: Sequence[TopicPartition], offsets: Mapping[TopicPartition, int] | None = None) -> None:
        """Read exactly these partitions, outside group management (changelog restore), each from
        ``offsets[tp]`` when given (else as ``auto_offset_reset`` says). Replaces the previous
        assignment."""
        raise NotImplementedError

    def position(self, partition: TopicPartition) -> int | None:
        """The next offset this consumer will read from ``partition`` (``None`` if not known yet).

        It steps over transaction markers and aborted records, so a reader that has read
        everything up to the end of a partition has ``position == end offset`` even when the last
        offsets hold control records: that is how a restore knows it is done (no ``-1``
        arithmetic on offsets)."""
        raise NotImplementedError

    def caught_up_cached(self, partition: TopicPartition) -> bool | None:
        """Whether this consumer has read ``partition`` to its end, from what the last poll
        learned, without asking the broker or waiting (``None``: this transport does not know
        cheaply; ask :meth:`position` and :meth:`end_offsets`). The window idle close asks it."""
        return None

    @abc.abstractmethod
    async def poll_batch(self, max_records: int, timeout_ms: int) -> list[Record]:
        """Up to ``max_records`` records, waiting at most ``timeout_ms`` for the first one.

        Rebalance callbacks run inside this call, before it returns records of new partitions.
        Records of one partition come in offset order.
        """

    async def poll_runs(self, max_records: int, timeout_ms: int) -> list[RecordRun]:
        """:meth:`poll_batch`, cut into runs of one partition (the worker's loop polls this way).

        A transport overrides it when it can give a run's keys and values without making a
        :class:`Record` per message."""
        records = await self.poll_batch(max_records, timeout_ms)
        return runs_of(records) if records else []

    @abc.abstractmethod
    def assignment(self) -> list[TopicPartition]:
        """The partitions this member owns now."""

    @abc.abstractmethod
    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        """Stop fetching these partitions (backpressure) without giving them up."""

    @abc.abstractmethod
    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        """Fetch these partitions again."""

    @abc.abstractmethod
    async def commit(self, offsets: Mapping[TopicPartition, int], *, asynchronous: bool = False) -> None:
        """Commit the next offsets to read; with ``asynchronous`` do not wait for the answer."""

    @abc.abstractmethod
    def seek(self, partition: TopicPartition, offset: int) -> None:
        """Read ``partition`` from ``offset`` next (or :data:`OFFSET_BEGINNING` / :data:`OFFSET_END`)."""

    @abc.abstractmethod
    async def committed(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int | None]:
        """The group's committed offsets (``None`` where nothing was committed)."""

    @abc.abstractmethod
    async def end_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        """The offset after the last record of each partition (the high watermark), for lag."""

    @abc.abstractmethod
    def group_metadata(self) -> object:
        """Opaque group metadata for :meth:`Producer.send_offsets_to_transaction`."""

    def rejoin(self) -> None:
        """Leave the current generation and join the group again, as Kafka Streams does when a
        commit finds it fenced (KIP-447): the worker already dropped everything it had not
        committed, so the owned partitions are revoked and the new assignment starts from the
        group's committed offsets, not from this consumer's positions. Returns at once; the
        rebalance happens inside the next :meth:`poll_batch` calls (records polled meanwhile
        may still belong to the old assignment). Not to be called from a rebalance callback:
        the group is rejoining then anyway.

        Raises:
            NotImplementedError: a transport whose group never fences its members.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot rejoin its group")

    @abc.abstractmethod
    async def close(self) -> None:
        """Leave the group (revoking partitions through the callback) and release resources."""


class Transport(abc.ABC):
    """A connection to a Kafka-like system; makes producers and consumers and manages topics."""

    url: str

    async def start(self) -> None:
        """Connect; the default does nothing."""

    async def close(self) -> None:
        """Disconnect; the default does nothing."""

    @abc.abstractmethod
    async def create_topics(self, specs: Sequence[TopicSpec]) -> None:
        """Create the topics that do not exist yet; existing ones are left as they are."""

    @abc.abstractmethod
    async def describe_topics(self, names: Sequence[str]) -> dict[str, TopicDescription]:
        """Describe the named topics that exist; missing names are absent from the result."""

    @abc.abstractmethod
    def producer(self, *, transactional_id: str | None = None, linger_ms: int = 5) -> Producer:
        """A producer; with ``transactional_id`` it is idempotent and transactional."""

    @abc.abstractmethod
    def consumer(
        self,
        group_id: str | None,
        *,
        isolation_level: IsolationLevel = "read_uncommitted",
        auto_offset_reset: Literal["earliest", "latest"] = "earliest",
        client_id: str | None = None,
    ) -> Consumer:
        """A consumer in ``group_id`` with auto-commit off: the framework decides when to commit."""

    # -- administration (the ``flowbus topics``/``groups`` commands) ------------------------
    # Not abstract: the worker never needs them, so a transport written only to run apps does not
    # have to implement them. ``timeout_s`` bounds the wait for a remote broker (None: the
    # transport's own request timeout); an in-process transport answers at once.

    async def list_topics(self, *, timeout_s: float | None = None) -> list[str]:
        """Names of every topic, internal ones (``__consumer_offsets``) included, sorted.

        Raises:
            BrokerUnavailableError: the broker did not answer within ``timeout_s``.
        """
        raise NotImplementedError

    async def delete_topics(self, names: Sequence[str], *, timeout_s: float | None = None) -> None:
        """Delete these topics and their records.

        Raises:
            TopicNotFoundError: one of the names is not a topic (the others are still deleted).
        """
        raise NotImplementedError

    async def topic_configs(self, name: str, *, timeout_s: float | None = None) -> dict[str, str]:
        """The configs set on the topic itself (``retention.ms=...``); defaults are left out.

        Raises:
            TopicNotFoundError: no such topic.
        """
        raise NotImplementedError

    async def watermarks(
        self, partitions: Sequence[TopicPartition], *, timeout_s: float | None = None
    ) -> dict[TopicPartition, Watermarks]:
        """Log start and end offsets of each partition (read_uncommitted: the high watermark).

        Raises:
            TopicNotFoundError: a partition does not exist.
        """
        raise NotImplementedError

    async def list_groups(self, *, timeout_s: float | None = None) -> list[GroupSummary]:
        """Every consumer group the broker knows, including empty groups that only have commits."""
        raise NotImplementedError

    async def describe_group(self, group_id: str, *, timeout_s: float | None = None) -> GroupDescription:
        """State and live members of a group (``Dead`` and no members when it is unknown)."""
        raise NotImplementedError

    async def group_offsets(
        self, group_id: str, *, timeout_s: float | None = None
    ) -> dict[TopicPartition, int]:
        """Every committed offset of the group (the next offset to read), by partition."""
        raise NotImplementedError
