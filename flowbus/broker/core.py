"""The broker without sockets: typed async methods over the log, the groups and producer state.

``BrokerCore`` is what every Kafka API does, with Python arguments and results instead of wire
bytes. The socket server (``server.py``) decodes requests and calls it through ``handlers.py``;
the embedded transport (issue 5) calls it directly in-process. Nothing here knows about API
versions or encodings.

Ordering guarantee: :meth:`BrokerCore.produce` appends before its first ``await``, so requests
started in order (one connection's pipeline, or one embedded producer) are appended in order.
A produce request of more than :data:`PARTITIONS_PER_SLICE` partitions yields between partitions
(``handlers.py``); it claims its partitions first, so later requests to them wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from flowbus.broker.config import BrokerConfig
from flowbus.broker.group_commit import GroupCommit, InternalAppend
from flowbus.broker.group_coordinator import GroupCoordinator, OffsetToCommit
from flowbus.broker.producer_state import (
    PartitionProducerState,
    ProducerEntry,
    ProducerIdManager,
    ProducerSnapshotFile,
    SnapshotEntry,
    Verdict,
)
from flowbus.broker.topic_admin import TopicAdmin
from flowbus.broker.txn_coordinator import TransactionCoordinator
from flowbus.broker.txn_state import TXN_STATE_TOPIC
from flowbus.clock import SYSTEM_CLOCK, Clock
from flowbus.log import LogManager, PartitionLog, TopicConfig, TopicMetadata
from flowbus.log.config import LONG_MAX
from flowbus.log.errors import (
    InvalidConfigError,
    LogError,
    OffsetOutOfRangeError,
    RecordTooLargeError,
    StorageError,
    UnknownTopicError,
)
from flowbus.log.txn_index import AbortedTxn
from flowbus.metrics.broker_stats import BrokerStats
from flowbus.protocol.error_codes import ErrorCode
from flowbus.records.builder import BatchBuilder
from flowbus.records.control import (
    ControlType,
    build_control_batch,
    parse_control_record,
)
from flowbus.records.errors import CorruptRecordError, UnsupportedCompressionError
from flowbus.records.header import NO_PRODUCER_ID, BatchHeader, check_batch, read_header
from flowbus.records.record import decode_batch
from flowbus.records.validate import KEYLESS_ON_COMPACTED, keyless_record_indexes

log = logging.getLogger(__name__)

OFFSETS_TOPIC = "__consumer_offsets"
INTERNAL_TOPICS = frozenset({OFFSETS_TOPIC, TXN_STATE_TOPIC})

ISOLATION_READ_UNCOMMITTED = 0
ISOLATION_READ_COMMITTED = 1

#: ListOffsets special timestamps (Kafka's ListOffsetsRequest).
LATEST_TIMESTAMP = -1
EARLIEST_TIMESTAMP = -2
MAX_TIMESTAMP = -3

COORDINATOR_KEY_GROUP = 0
COORDINATOR_KEY_TRANSACTION = 1

#: Kafka's legal topic names: at most 249 characters of ASCII letters, digits, '.', '_', '-'.
_TOPIC_NAME = re.compile(r"^[a-zA-Z0-9._-]{1,249}$")
#: Batches replayed per event-loop turn while loading offsets, so loading never blocks serving.
LOAD_BATCHES_PER_TURN = 200
#: A request naming more partitions than this (or, for Metadata, topics) works through them in
#: slices, yielding to the event loop (``await asyncio.sleep(0)``) between slices; smaller ones
#: run in one turn as before (at most ~25 us a partition, Produce, so a few ms). A request may
#: name 10,000 partitions (``codec.MAX_REQUEST_ELEMENTS``): 50-250 ms in one turn, during which
#: every other client waited (issue 10, item 4; measured in benchmarks/loop_hold_bench.py).
PARTITIONS_PER_SLICE = 256
#: How long one slice of such a request may run before it yields. Another client's round trip
#: needs about two event-loop turns (read, then answer), so it waits about twice this.
LOOP_SLICE_S = 0.001


def slice_deadline() -> float:
    """When the slice starting now should yield (``time.perf_counter()`` seconds): a request
    working through many partitions checks ``time.perf_counter() >= deadline`` per partition,
    which costs ~50 ns, and yields only then, so cheap partitions are not sliced needlessly."""
    return time.perf_counter() + LOOP_SLICE_S


@dataclass(frozen=True, slots=True)
class BrokerNode:
    node_id: int
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class TopicInfo:
    name: str
    error_code: int
    partitions: int = 0
    is_internal: bool = False
    #: The catalog's id of the topic (a UUID, new for a topic deleted and created again); "" if none.
    topic_id: str = ""


@dataclass(frozen=True, slots=True)
class MetadataResult:
    brokers: list[BrokerNode]
    controller_id: int
    cluster_id: str
    topics: list[TopicInfo]


@dataclass(frozen=True, slots=True)
class ProduceResult:
    error_code: int
    base_offset: int = -1
    log_append_time_ms: int = -1
    log_start_offset: int = -1
    error_message: str | None = None
    #: Produce v8+ ``record_errors``: (index of the record in its batch, message) for each
    #: record that made the batch fail (keyless records on a compacted topic).
    record_errors: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True, slots=True)
class FetchRequestPartition:
    topic: str
    partition: int
    fetch_offset: int
    partition_max_bytes: int
    current_leader_epoch: int = -1


@dataclass(slots=True)
class FetchResultPartition:
    topic: str
    partition: int
    error_code: int
    high_watermark: int = -1
    last_stable_offset: int = -1
    log_start_offset: int = -1
    records: bytes | memoryview = b""
    #: None for read_uncommitted (clients misbehave on an empty list there); a list for read_committed.
    aborted_transactions: list[tuple[int, int]] | None = None


@dataclass(frozen=True, slots=True)
class ListOffsetsResult:
    error_code: int
    timestamp: int = -1
    offset: int = -1
    leader_epoch: int = -1


@dataclass(frozen=True, slots=True)
class NewTopic:
    name: str
    num_partitions: int = -1
    replication_factor: int = -1
    configs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ConfigValue:
    name: str
    value: str | None
    read_only: bool
    is_default: bool
    #: Kafka's ConfigSource: 1 dynamic topic config, 4 static broker config, 5 default.
    source: int
    is_sensitive: bool = False


@dataclass(frozen=True, slots=True)
class CreateTopicResult:
    name: str
    error_code: int
    error_message: str | None = None
    num_partitions: int = -1
    replication_factor: int = -1
    configs: list[ConfigValue] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class DescribeConfigsResult:
    resource_type: int
    resource_name: str
    error_code: int
    error_message: str | None = None
    configs: list[ConfigValue] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class CoordinatorResult:
    error_code: int
    node: BrokerNode | None = None
    error_message: str | None = None


@dataclass(frozen=True, slots=True)
class InitProducerIdResult:
    error_code: int
    producer_id: int = -1
    producer_epoch: int = -1


RESOURCE_TOPIC = 2
RESOURCE_BROKER = 4
CONFIG_SOURCE_DYNAMIC_TOPIC = 1
CONFIG_SOURCE_STATIC_BROKER = 4
CONFIG_SOURCE_DEFAULT = 5


def _log_failure(future: asyncio.Future[Any], what: str) -> None:
    """Done-callback of worker-thread futures: report a failure instead of losing it."""
    if not future.cancelled() and future.exception() is not None:
        log.error("%s failed: %s", what, future.exception())


def _next_offset_after(records: bytes | memoryview) -> int:
    """The offset after the last of whole batches (a header walk: per batch, never per record)."""
    view = memoryview(records)
    pos = 0
    next_offset = -1
    while pos < len(view):  # bounded by the batches in one fetch
        header = read_header(view, pos)
        next_offset = header.next_offset
        pos += header.size_bytes
    return next_offset


#: Kafka's record-error list in its error message stops at three entries.
RECORD_ERRORS_IN_MESSAGE = 3


def _refuse_keyless(
    topic: str, partition: int, plog: PartitionLog, view: memoryview, headers: list[BatchHeader]
) -> ProduceResult | None:
    """INVALID_RECORD for the first batch holding a record without a key, as Kafka's
    ``LogValidator`` answers for a compacted topic (the cleaner could never remove such a
    record); None when every record has a key.

    ``record_errors`` lists that batch's keyless records by their index in it (the others are
    fine but refused with them: nothing of the produce is appended). A batch refused for its
    keys has its CRC checked first, so damage is still CORRUPT_MESSAGE, as the append would say.
    """
    pos = 0
    for header in headers:
        try:
            indexes = keyless_record_indexes(view, pos, header)
            if indexes:
                check_batch(view, pos)
        except (CorruptRecordError, UnsupportedCompressionError) as exc:
            return ProduceResult(ErrorCode.CORRUPT_MESSAGE, error_message=str(exc))
        if indexes:
            message = f"{KEYLESS_ON_COMPACTED} {topic}-{partition}"
            shown = ", ".join(
                f"RecordError(batchIndex={index}, message='{message}')"
                for index in indexes[:RECORD_ERRORS_IN_MESSAGE]
            )
            return ProduceResult(
                ErrorCode.INVALID_RECORD,
                log_start_offset=plog.log_start_offset,
                # Kafka's InvalidRecordException text, so client logs read the same.
                error_message=(
                    f"One or more records have been rejected due to {len(indexes)} record errors "
                    f"in total, and only showing the first three errors at most: [{shown}]"
                ),
                record_errors=tuple((index, message) for index in indexes),
            )
        pos += header.size_bytes
    return None


def valid_topic_name(name: str) -> bool:
    return bool(_TOPIC_NAME.match(name)) and name not in (".", "..")


class _FetchWaiters:
    """Fetch long polls waiting for data, woken by appends (no polling loop)."""

    def __init__(self) -> None:
        self._by_partition: dict[tuple[str, int], set[asyncio.Future[None]]] = {}

    def register(self, keys: Iterable[tuple[str, int]]) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for key in keys:
            self._by_partition.setdefault(key, set()).add(future)
        return future

    def unregister(
        self, keys: Iterable[tuple[str, int]], future: asyncio.Future[None]
    ) -> None:
        for key in keys:
            waiting = self._by_partition.get(key)
            if waiting is not None:
                waiting.discard(future)
                if not waiting:
                    del self._by_partition[key]

    def wake(self, key: tuple[str, int]) -> None:
        waiting = self._by_partition.pop(key, None)
        if waiting:
            for future in waiting:
                if not future.done():
                    future.set_result(None)

    def wake_all(self) -> None:
        for key in list(self._by_partition):
            self.wake(key)


class BrokerCore:
    """One broker's behaviour, independent of the wire format.

    Args:
        config: broker settings (``config.data_dir`` holds the logs and the producer-id file).
        clock: time source for timestamps and timeouts (a ``ManualClock`` in tests).
        log_manager: an already-open LogManager; created from ``config.data_dir`` when None.

    Call :meth:`start` before use (it loads committed offsets in the background: group requests
    answer COORDINATOR_LOAD_IN_PROGRESS until then) and :meth:`close` at the end.
    """

    def __init__(
        self,
        config: BrokerConfig,
        *,
        clock: Clock = SYSTEM_CLOCK,
        log_manager: LogManager | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.logs = (
            log_manager
            if log_manager is not None
            else LogManager(
                config.data_dir,
                clock=clock,
                default_config=config.topic_defaults(),
                fd_budget=config.log_fd_budget,
            )
        )
        self.groups = GroupCoordinator(clock=clock, store=self, config=config.groups)
        self._producer_ids = ProducerIdManager(config.data_dir / "producer_ids")
        self._producer_states: dict[tuple[str, int], PartitionProducerState] = {}
        self._snapshot_file = ProducerSnapshotFile(
            config.data_dir / "producer_snapshots.json"
        )
        #: Snapshot entries of partitions not touched yet in this run (consumed lazily).
        self._snapshot_entries = self._snapshot_file.load()
        self._last_snapshot_ms = clock.monotonic_ms()
        self._loaded = asyncio.Event()
        self._waiters = _FetchWaiters()
        #: Records and bytes per topic, in and out, for the metrics (flowbus/metrics/).
        self.stats = BrokerStats()
        self._flushing: set[PartitionLog] = set()
        self._flush_due_future: asyncio.Future[int] | None = None
        #: Durable acks: produces waiting for an fsync share one per log.
        self._group_commit = GroupCommit()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        #: Transactions (issue 4): the coordinator can end every transaction it lets begin, so
        #: transactional batches are accepted (checked against it) and the LSO is enforced.
        self.transactions_enabled = True
        self.txn = TransactionCoordinator(self, clock=clock, config=config.transactions)
        self.node = BrokerNode(
            config.node_id, config.advertised_host, config.advertised_port
        )
        #: CreatePartitions, AlterConfigs, IncrementalAlterConfigs, DeleteRecords, DescribeLogDirs.
        self.topic_admin = TopicAdmin(self, INTERNAL_TOPICS)
        #: Topics being created in slices, done when their creation ends (either way): a second
        #: CreateTopics of the name waits for it, so "already exists" means it does.
        self._topic_creations: dict[str, asyncio.Future[None]] = {}

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Create internal topics, start loading offsets, start the periodic tick."""
        if OFFSETS_TOPIC not in self.logs.topics():
            self.logs.create_topic(
                OFFSETS_TOPIC,
                self.config.offsets_topic_num_partitions,
                {"cleanup.policy": "compact", "segment.bytes": str(100 * 1024 * 1024)},
            )
        self.txn.ensure_topic()
        self._tasks.append(
            asyncio.create_task(self._load_offsets(), name="flowbus-load-offsets")
        )
        self._tasks.append(
            asyncio.create_task(self._tick_forever(), name="flowbus-broker-tick")
        )

    async def wait_loaded(self) -> None:
        """Return once committed offsets and transactions are loaded (tests, the embedded transport)."""
        await self._loaded.wait()

    async def close(self) -> None:
        """Stop ticking, answer every waiter, flush and close the logs (clean shutdown)."""
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.groups.close()
        self._waiters.wake_all()
        self._loaded.set()
        try:
            self._save_producer_snapshots()
        except OSError as exc:
            log.warning("could not save producer snapshots: %s", exc)
        if self._flush_due_future is not None:
            with contextlib.suppress(Exception):
                await self._flush_due_future
        await self.txn.close()  # ends waiting for their markers' fsync log their completion
        await self._group_commit.close()
        self.logs.flush()
        self.logs.close()

    async def _tick_forever(self) -> None:
        interval_s = self.config.tick_interval_ms / 1000
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self._tick_sliced()
            except Exception:  # a failed tick must not stop all future ticks
                log.exception("broker tick failed")

    async def _tick_sliced(self) -> None:
        """:meth:`tick`, with the log's maintenance pass yielding to the event loop every
        :data:`LOOP_SLICE_S`: with thousands of partitions one pass takes tens of milliseconds,
        which every client would otherwise wait for ten times a second (issue 10, item 4)."""
        deadline = slice_deadline()
        try:
            for _ in self.logs.maintenance_steps():
                if time.perf_counter() >= deadline:
                    await asyncio.sleep(0)
                    deadline = slice_deadline()
        except LogError:
            log.exception("log maintenance failed; will retry on the next tick")
        self._tick_after_maintenance()

    def tick(self) -> None:
        """Periodic work: the log's roll/retention/compaction, due fsyncs, group timeouts.

        fsyncs run on a worker thread (one at a time) so they never stall the event loop. The
        broker's own timer runs the same work sliced (:meth:`_tick_sliced`); this form runs it in
        one go, for tests and tools.
        """
        try:
            self.logs.tick(flush=False)
        except LogError:
            log.exception("log maintenance failed; will retry on the next tick")
        self._tick_after_maintenance()

    def _tick_after_maintenance(self) -> None:
        """The tick's work after the log's maintenance pass: due fsyncs, groups, transactions,
        producer expiry and snapshots."""
        if self._flush_due_future is None or self._flush_due_future.done():
            self._flush_due_future = asyncio.get_running_loop().run_in_executor(
                None, self.logs.flush_due
            )
            self._flush_due_future.add_done_callback(
                lambda f: _log_failure(f, "periodic flush")
            )
        self.groups.tick()
        self.txn.tick()
        now_ms = self.clock.monotonic_ms()
        if now_ms - self._last_snapshot_ms >= self.config.producer_snapshot_interval_ms:
            self._last_snapshot_ms = now_ms
            self._expire_producers()
            try:
                self._save_producer_snapshots()
            except OSError as exc:
                log.warning("could not save producer snapshots: %s", exc)

    def _expire_producers(self) -> None:
        wall_ms = self.clock.now_ms()
        for state in self._producer_states.values():
            state.expire(wall_ms, self.config.producer_id_expiration_ms)

    def _save_producer_snapshots(self) -> None:
        """Write the producer state of every partition as of its current log end."""
        entries = dict(self._snapshot_entries)
        topics = self.logs.topics()
        for (topic, partition), state in self._producer_states.items():
            meta = topics.get(topic)
            if meta is None:
                continue
            plog = self.logs.get_log(topic, partition)
            entries[(topic, partition)] = SnapshotEntry(
                meta.topic_id, plog.log_end_offset, state.to_snapshot()
            )
        self._snapshot_file.save(entries)

    async def _load_offsets(self) -> None:
        """Replay ``__consumer_offsets`` into the group coordinator, yielding between chunks.

        A failure is logged and loading still ends: serving groups with the offsets read so far
        beats answering COORDINATOR_LOAD_IN_PROGRESS forever.
        """
        try:
            replayed = await self._replay_offsets()
            log.info("loaded %d committed-offset records", replayed)
        except LogError:
            log.exception(
                "loading committed offsets failed; serving the offsets read so far"
            )
        finally:
            self.groups.finish_loading()
            try:
                ended = self.txn.load()
                log.info("loaded transactions; recovery ended %d left in flight", ended)
            except LogError:
                log.exception("loading transactions failed")
                self.txn.loading = False
            self._loaded.set()

    async def _replay_offsets(self) -> int:
        replayed = 0
        for partition in range(self.logs.topic(OFFSETS_TOPIC).partitions):
            plog = self.logs.get_log(OFFSETS_TOPIC, partition)
            for i, (header, raw) in enumerate(plog.iter_batches(plog.log_start_offset)):
                try:
                    if header.is_control:
                        # A transaction's end: its offsets become committed, or are dropped.
                        _, control = decode_batch(raw)
                        control_type, _ = parse_control_record(control[0])
                        self.groups.complete_txn_offsets(
                            header.producer_id, control_type is ControlType.COMMIT
                        )
                        continue
                    _, records = decode_batch(raw)
                except CorruptRecordError as exc:
                    log.warning(
                        "skipping a corrupt batch at offset %d of %s: %s",
                        header.base_offset,
                        OFFSETS_TOPIC,
                        exc,
                    )
                    continue
                for record in records:
                    if header.is_transactional:
                        self.groups.load_txn_record(
                            header.producer_id, record.key, record.value
                        )
                    else:
                        self.groups.load_record(record.key, record.value)
                    replayed += 1
                if i % LOAD_BATCHES_PER_TURN == LOAD_BATCHES_PER_TURN - 1:
                    await asyncio.sleep(0)
        return replayed

    # -- offsets store (used by the group coordinator) -------------------------------------

    def offsets_partition_for(self, group_id: str) -> int:
        return zlib.crc32(group_id.encode()) % self.config.offsets_topic_num_partitions

    async def append_offsets(
        self, group_id: str, records: list[tuple[bytes, bytes | None]]
    ) -> None:
        builder = BatchBuilder()
        now_ms = self.clock.now_ms()
        for key, value in records:
            builder.append(key, value, timestamp_ms=now_ms)
        partition = self.offsets_partition_for(group_id)
        plog = self.logs.get_log(OFFSETS_TOPIC, partition)
        result = plog.append(builder.build(), defer_flush=True)
        self._waiters.wake((OFFSETS_TOPIC, partition))
        if result.flush_required:
            # As for produce: flush.messages reached, so the commit is answered after the fsync.
            error = await self._group_commit.wait(plog, result.last_offset + 1)
            if error != ErrorCode.NONE:
                raise StorageError(f"fsync of {OFFSETS_TOPIC}-{partition} failed (error {error})")

    async def append_txn_offsets(
        self,
        group_id: str,
        producer_id: int,
        producer_epoch: int,
        records: list[tuple[bytes, bytes | None]],
    ) -> None:
        """Transactional offset records: one transactional batch of the producer (pending)."""
        builder = BatchBuilder(
            producer_id=producer_id, producer_epoch=producer_epoch, is_transactional=True
        )
        now_ms = self.clock.now_ms()
        for key, value in records:
            builder.append(key, value, timestamp_ms=now_ms)
        appended = self.append_internal(
            OFFSETS_TOPIC, self.offsets_partition_for(group_id), builder.build()
        )
        if appended.flush_required:
            # As for OffsetCommit: TxnOffsetCommit is answered once its records are fsynced.
            error = await self.wait_durable(OFFSETS_TOPIC, appended.partition, appended.end_offset)
            if error != ErrorCode.NONE:
                raise StorageError(
                    f"fsync of {OFFSETS_TOPIC}-{appended.partition} failed (error {error})"
                )

    def append_offsets_now(
        self, group_id: str, records: list[tuple[bytes, bytes | None]]
    ) -> None:
        """Group metadata records, appended before returning (no wait for an fsync).

        The group coordinator writes them from state changes that cannot wait, such as a
        session timeout in the tick; the group commit fsyncs them when the flush policy asks.
        """
        builder = BatchBuilder()
        now_ms = self.clock.now_ms()
        for key, value in records:
            builder.append(key, value, timestamp_ms=now_ms)
        self.append_internal(OFFSETS_TOPIC, self.offsets_partition_for(group_id), builder.build())

    # -- transactions (used by the transaction coordinator) ---------------------------------

    def allocate_producer_id(self) -> int:
        return self._producer_ids.allocate()

    def offsets_partition_key(self, group_id: str) -> tuple[str, int]:
        """The ``__consumer_offsets`` partition a group's (transactional) commits go to."""
        return OFFSETS_TOPIC, self.offsets_partition_for(group_id)

    def append_internal(self, topic: str, partition: int, batch: bytes) -> InternalAppend:
        """Append a broker-built batch to an internal topic; returns where it landed.

        Written before the caller answers (one ``pwrite``), like every acknowledged produce.
        When the log's flush policy asks for it (``flush.messages``, e.g. the broker-wide
        ``--flush-messages 1``), the group commit is asked for the fsync at once, so a caller
        that must answer only once the batch is durable awaits :meth:`wait_durable` of
        ``end_offset`` and shares that fsync with every other waiter of the log.
        """
        plog = self.logs.get_log(topic, partition)
        result = plog.append(batch, defer_flush=True)
        self._waiters.wake((topic, partition))
        appended = InternalAppend(
            topic, partition, result.base_offset, result.last_offset + 1, result.flush_required
        )
        if result.flush_required:
            self._group_commit.wait(plog, appended.end_offset)
        return appended

    def write_txn_marker(
        self, topic: str, partition: int, producer_id: int, producer_epoch: int, commit: bool
    ) -> InternalAppend | None:
        """Append a commit or abort marker for one producer, ending its transaction here.

        The partition's producer state forgets the open transaction (the LSO moves on), and an
        abort is indexed in the segment's ``.txnindex`` for read_committed fetches. A deleted
        topic is skipped (None): there is nothing left to end. Returns where the marker landed,
        so the transaction coordinator can wait for its fsync before logging the completion.
        """
        try:
            plog = self.logs.get_log(topic, partition)
        except UnknownTopicError:
            log.info("skipping the marker of %s-%d: no such partition", topic, partition)
            return None
        now_ms = self.clock.now_ms()
        batch = build_control_batch(
            producer_id=producer_id,
            producer_epoch=producer_epoch,
            control_type=ControlType.COMMIT if commit else ControlType.ABORT,
            coordinator_epoch=0,
            timestamp_ms=now_ms,
        )
        if topic in INTERNAL_TOPICS:
            return self.append_internal(topic, partition, batch)
        state = self._producer_state(topic, partition, plog)
        entry = state.entry(producer_id)
        first_offset = entry.current_txn_first_offset if entry is not None else None
        result = plog.append(batch, defer_flush=True)
        state.record(read_header(batch), result.base_offset, -1, now_ms)
        if not commit and first_offset is not None:
            self._index_abort(plog, state, producer_id, first_offset, result.base_offset)
        self._waiters.wake((topic, partition))
        marker = InternalAppend(
            topic, partition, result.base_offset, result.last_offset + 1, result.flush_required
        )
        if result.flush_required:
            self._group_commit.wait(plog, marker.end_offset)
        return marker

    @staticmethod
    def _index_abort(
        plog: PartitionLog,
        state: PartitionProducerState,
        producer_id: int,
        first_offset: int,
        marker_offset: int,
    ) -> None:
        stable = state.first_unstable_offset()
        plog.add_aborted_txn(
            AbortedTxn(
                producer_id,
                first_offset,
                marker_offset,
                marker_offset + 1 if stable is None else stable,
            )
        )

    # -- metadata and topics ---------------------------------------------------------------

    async def metadata(
        self, topics: list[str] | None, *, allow_auto_create: bool = True
    ) -> MetadataResult:
        """Brokers and topics; ``topics`` None means every topic.

        Missing topics are created when both the client and the broker allow it.
        """
        infos: list[TopicInfo] = []
        if topics is None:
            names = sorted(self.logs.topics())
        else:
            names = list(dict.fromkeys(topics))
        sliced = len(names) > PARTITIONS_PER_SLICE
        deadline = slice_deadline()
        for name in names:
            if sliced and time.perf_counter() >= deadline:
                # Up to 2,000 named topics (more for "all topics"): let other clients in. Each
                # topic is looked up when reached, so one created or deleted meanwhile is seen.
                await asyncio.sleep(0)
                deadline = slice_deadline()
            try:
                meta: TopicMetadata | None = self.logs.topic(name)
            except UnknownTopicError:
                meta = None
            if meta is None:
                if not valid_topic_name(name):
                    infos.append(TopicInfo(name, ErrorCode.INVALID_TOPIC_EXCEPTION))
                    continue
                if not (allow_auto_create and self.config.auto_create_topics_enable):
                    infos.append(TopicInfo(name, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION))
                    continue
                try:
                    self.logs.create_topic(
                        name, self.config.auto_create_topics_partitions, {}
                    )
                    log.info(
                        "auto-created topic %s with %d partitions",
                        name,
                        self.config.auto_create_topics_partitions,
                    )
                except LogError as exc:
                    if exc.errno != ErrorCode.TOPIC_ALREADY_EXISTS:
                        infos.append(TopicInfo(name, exc.errno))
                        continue
                    if not self.logs.has_topic(name):
                        # Being created (or its files deleted) right now: Kafka's answer for a
                        # topic without leaders yet; clients ask again.
                        infos.append(TopicInfo(name, ErrorCode.LEADER_NOT_AVAILABLE))
                        continue
                meta = self.logs.topic(name)
            infos.append(
                TopicInfo(
                    name, ErrorCode.NONE, meta.partitions, name in INTERNAL_TOPICS, meta.topic_id
                )
            )
        return MetadataResult(
            [self.node], self.node.node_id, self.config.cluster_id, infos
        )

    def partition_exists(self, topic: str, partition: int) -> bool:
        # One topic's lookup, not the catalog's: called once per partition of an OffsetCommit
        # (10,000 of them), so building every topic's metadata here cost seconds with 2,000 topics.
        try:
            meta = self.logs.topic(topic)
        except UnknownTopicError:
            return False
        return 0 <= partition < meta.partitions

    async def create_topics(
        self, topics: list[NewTopic], *, validate_only: bool = False, sliced: bool = True
    ) -> list[CreateTopicResult]:
        """Create topics, each all or nothing, answering per topic.

        Args:
            sliced: create in 1 ms slices between which other clients are served (a client's
                CreateTopics); False creates each topic in one go, so an in-process caller
                that then uses the topic synchronously never meets one half created.
        """
        results = []
        for index, topic in enumerate(topics):
            if index and sliced:
                # Each topic's files and catalog write take ~1 ms: a request for 1,000 topics
                # (the codec's budget) serves other clients in between.
                await asyncio.sleep(0)
            results.append(await self._create_topic(topic, validate_only, sliced))
        return results

    async def _create_topic(self, topic: NewTopic, validate_only: bool, sliced: bool = True) -> CreateTopicResult:
        name = topic.name
        if not valid_topic_name(name):
            return CreateTopicResult(
                name, ErrorCode.INVALID_TOPIC_EXCEPTION, f"illegal topic name {name!r}"
            )
        if self.logs.has_topic(name):
            return CreateTopicResult(
                name, ErrorCode.TOPIC_ALREADY_EXISTS, f"topic {name!r} already exists"
            )
        partitions = (
            topic.num_partitions
            if topic.num_partitions != -1
            else self.config.auto_create_topics_partitions
        )
        if partitions < 1:
            return CreateTopicResult(
                name,
                ErrorCode.INVALID_PARTITIONS,
                "the number of partitions must be at least 1",
            )
        if topic.replication_factor not in (-1, 1):
            return CreateTopicResult(
                name,
                ErrorCode.INVALID_REPLICATION_FACTOR,
                "this broker is alone: the replication factor must be 1",
            )
        try:
            config = TopicConfig.from_overrides(topic.configs)
        except InvalidConfigError as exc:
            return CreateTopicResult(
                name, ErrorCode.INVALID_CONFIG, f"invalid config {exc.key}: {exc}"
            )
        try:
            if validate_only:
                self.logs.check_descriptor_budget(name, partitions)
            else:
                pending = self._topic_creations.get(name)
                if pending is not None:
                    await asyncio.shield(pending)  # answered once the other creation ended
                    return CreateTopicResult(
                        name, ErrorCode.TOPIC_ALREADY_EXISTS, f"topic {name!r} already exists"
                    )
                # A partition's files take ~1-3 ms: a topic of thousands is created in 1 ms
                # slices between which other clients are served.
                creation = asyncio.get_running_loop().create_future()
                self._topic_creations[name] = creation
                try:
                    deadline = slice_deadline()
                    for _ in self.logs.create_topic_steps(name, partitions, dict(topic.configs)):
                        if sliced and time.perf_counter() >= deadline:
                            await asyncio.sleep(0)
                            deadline = slice_deadline()
                finally:
                    del self._topic_creations[name]
                    creation.set_result(None)
        except LogError as exc:
            return CreateTopicResult(
                name,
                exc.errno if exc.errno > 0 else ErrorCode.UNKNOWN_SERVER_ERROR,
                str(exc),
            )
        if not validate_only:
            log.info("created topic %s with %d partitions", name, partitions)
        return CreateTopicResult(
            name, ErrorCode.NONE, None, partitions, 1, self._topic_config_values(config)
        )

    async def delete_topics(self, names: list[str]) -> list[tuple[str, int]]:
        results: list[tuple[str, int]] = []
        for index, name in enumerate(names):
            if index:
                await asyncio.sleep(0)  # as create_topics: other clients are served in between
            if name in INTERNAL_TOPICS:
                results.append((name, ErrorCode.INVALID_TOPIC_EXCEPTION))
                continue
            try:
                meta = self.logs.topic(name)
                steps = self.logs.delete_topic_steps(name)
                next(steps, None)  # checks, forgets the topic durably, removes partition 0
            except UnknownTopicError:
                results.append((name, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION))
                continue
            deadline = slice_deadline()
            for _ in steps:  # ~0.1 ms a partition: thousands are removed in 1 ms slices
                if time.perf_counter() >= deadline:
                    await asyncio.sleep(0)
                    deadline = slice_deadline()
            for partition in range(meta.partitions):
                self._producer_states.pop((name, partition), None)
                self._snapshot_entries.pop((name, partition), None)
                self._waiters.wake((name, partition))
            log.info("deleted topic %s", name)
            results.append((name, ErrorCode.NONE))
        return results

    @staticmethod
    def _topic_config_values(config: TopicConfig) -> list[ConfigValue]:
        return [
            ConfigValue(
                e.name,
                e.value,
                False,
                e.is_default,
                CONFIG_SOURCE_DEFAULT if e.is_default else CONFIG_SOURCE_DYNAMIC_TOPIC,
            )
            for e in config.describe()
        ]

    def _broker_config_values(self) -> list[ConfigValue]:
        cfg = self.config
        entries: dict[str, str | None] = {
            "broker.id": str(cfg.node_id),
            "auto.create.topics.enable": str(cfg.auto_create_topics_enable).lower(),
            "num.partitions": str(cfg.auto_create_topics_partitions),
            "offsets.topic.num.partitions": str(cfg.offsets_topic_num_partitions),
            "group.initial.rebalance.delay.ms": str(
                cfg.groups.group_initial_rebalance_delay_ms
            ),
            "group.min.session.timeout.ms": str(
                cfg.groups.group_min_session_timeout_ms
            ),
            "group.max.session.timeout.ms": str(
                cfg.groups.group_max_session_timeout_ms
            ),
            "log.dirs": None,
            "log.flush.interval.messages": str(cfg.log_flush_interval_messages),
        }
        # Host paths are never told (issue 14): ``log.dirs`` is listed as Kafka lists a
        # sensitive config, with a null value and is_sensitive set, for every principal.
        return [
            ConfigValue(k, v, True, False, CONFIG_SOURCE_STATIC_BROKER, is_sensitive=v is None)
            for k, v in entries.items()
        ]

    async def describe_configs(
        self, resources: list[tuple[int, str, list[str] | None]]
    ) -> list[DescribeConfigsResult]:
        """Configs of topics (type 2) and of this broker (type 4); ``None`` keys means all."""
        results = []
        for resource_type, name, keys in resources:
            if resource_type == RESOURCE_TOPIC:
                meta = self.logs.topics().get(name)
                if meta is None:
                    results.append(
                        DescribeConfigsResult(
                            resource_type,
                            name,
                            ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                            f"no topic {name!r}",
                        )
                    )
                    continue
                values = self._topic_config_values(meta.config)
            elif resource_type == RESOURCE_BROKER:
                if name not in ("", str(self.config.node_id)):
                    results.append(
                        DescribeConfigsResult(
                            resource_type,
                            name,
                            ErrorCode.INVALID_REQUEST,
                            "unknown broker",
                        )
                    )
                    continue
                values = self._broker_config_values()
            else:
                results.append(
                    DescribeConfigsResult(
                        resource_type,
                        name,
                        ErrorCode.INVALID_REQUEST,
                        "unsupported resource type",
                    )
                )
                continue
            if keys is not None:
                wanted = set(keys)
                values = [v for v in values if v.name in wanted]
            results.append(
                DescribeConfigsResult(resource_type, name, ErrorCode.NONE, None, values)
            )
        return results

    # -- produce ---------------------------------------------------------------------------

    def _producer_state(
        self, topic: str, partition: int, plog: PartitionLog
    ) -> PartitionProducerState:
        """The partition's producer state, rebuilt from the log the first time it is needed."""
        key = (topic, partition)
        state = self._producer_states.get(key)
        if state is not None:
            return state
        start = plog.log_start_offset
        snapshot = self._snapshot_entries.pop(key, None)
        try:  # one topic's metadata: the whole catalog's cost ~1 ms per call with 2,000 topics
            meta: TopicMetadata | None = self.logs.topic(topic)
        except UnknownTopicError:
            meta = None
        if (
            snapshot is not None
            and meta is not None
            and snapshot.topic_id == meta.topic_id
            and snapshot.end_offset <= plog.log_end_offset
        ):
            state = PartitionProducerState.from_snapshot(snapshot.rows)
            start = max(start, snapshot.end_offset)
        else:
            state = PartitionProducerState()
        replayed = 0
        if start < plog.log_end_offset:
            replayed = self._replay_producer_state(state, plog, start)
        if replayed:
            log.info(
                "rebuilt producer state of %s-%d from %d batches",
                topic,
                partition,
                replayed,
            )
        self._producer_states[key] = state
        return state

    def _replay_producer_state(
        self, state: PartitionProducerState, plog: PartitionLog, start: int
    ) -> int:
        """Replay batches from ``start`` into ``state``, re-indexing abort markers on the way.

        The ``.txnindex`` entries of markers replayed here may have been lost with a crash; adding
        them again is idempotent. Returns how many batches had a producer id.
        """
        replayed = 0
        for header, raw in plog.iter_batches(start):
            if header.base_offset < start or header.producer_id == NO_PRODUCER_ID:
                continue
            replayed += 1
            log_append_time_ms = header.max_timestamp if header.is_log_append_time else -1
            if not header.is_control:
                state.record(header, header.base_offset, log_append_time_ms)
                continue
            entry = state.entry(header.producer_id)
            first_offset = entry.current_txn_first_offset if entry is not None else None
            state.record(header, header.base_offset, log_append_time_ms)
            if first_offset is None:
                continue
            try:
                _, control = decode_batch(raw)
                control_type, _ = parse_control_record(control[0])
            except (CorruptRecordError, IndexError) as exc:
                log.warning("unreadable marker at %d of %s-%d: %s", header.base_offset, plog.topic, plog.partition, exc)
                continue
            if control_type is ControlType.ABORT:
                self._index_abort(plog, state, header.producer_id, first_offset, header.base_offset)
        return replayed

    async def produce(
        self, topic: str, partition: int, records: bytes | bytearray | memoryview
    ) -> ProduceResult:
        """Append the batches of one partition, with CRC and idempotence checks.

        Every check and the append happen before the first ``await``, so concurrent calls
        started in order are appended in order. A retried idempotent batch is answered with
        its original offsets and not appended again. Returns once the answer may be sent:
        after the fsync when the flush policy asks for one (see :meth:`produce_nowait`).
        """
        return await self.produce_nowait(topic, partition, records)

    def produce_nowait(
        self, topic: str, partition: int, records: bytes | bytearray | memoryview
    ) -> asyncio.Future[ProduceResult]:
        """Append now, synchronously; the future holds the answer once it may be sent.

        Durable acks: when the append makes the log's flush policy due (``flush.messages``,
        the topic's or the broker's ``log.flush.interval.messages``), the result is held until
        an fsync covers the appended records, shared with every other produce waiting on the
        same log at that moment (:class:`~flowbus.broker.group_commit.GroupCommit`). A produce
        request naming several partitions appends them all first, then waits for all.
        """
        future: asyncio.Future[ProduceResult] = asyncio.get_running_loop().create_future()
        durable: list[tuple[PartitionLog, int]] = []
        result = self._produce_append(topic, partition, records, durable)
        if not durable or result.error_code != ErrorCode.NONE:
            future.set_result(result)
            return future
        plog, durable_offset = durable[0]

        def answer(done: asyncio.Future[int]) -> None:
            if future.done():
                return
            error = done.result() if not done.cancelled() else ErrorCode.KAFKA_STORAGE_ERROR
            if error == ErrorCode.NONE:
                future.set_result(result)
            else:
                future.set_result(
                    ProduceResult(error, log_start_offset=result.log_start_offset, error_message="fsync failed")
                )

        self._group_commit.wait(plog, durable_offset).add_done_callback(answer)
        return future

    async def wait_durable(self, topic: str, partition: int, offset: int) -> int:
        """Wait until every record of the partition below ``offset`` is fsynced; an error code.

        For internal writers that must not answer before their data is durable (group commit,
        as for produce).
        """
        plog = self.logs.get_log(topic, partition)
        return await self._group_commit.wait(plog, offset)

    def _produce_append(
        self,
        topic: str,
        partition: int,
        records: bytes | bytearray | memoryview,
        durable: list[tuple[PartitionLog, int]],
    ) -> ProduceResult:
        """The checks and the append of :meth:`produce_nowait`.

        Appends ``(log, offset)`` to ``durable`` when the answer must wait until every record
        below ``offset`` is fsynced.
        """
        if topic in INTERNAL_TOPICS:
            return ProduceResult(
                ErrorCode.INVALID_TOPIC_EXCEPTION, error_message="internal topic"
            )
        try:
            plog = self.logs.get_log(topic, partition)
        except UnknownTopicError:
            return ProduceResult(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION)
        view = memoryview(records)
        headers: list[BatchHeader] = []
        try:
            # Headers only: the log verifies every CRC when it appends (CORRUPT_MESSAGE below),
            # so the hot path computes each CRC once.
            pos = 0
            while pos < len(view):
                header = read_header(view, pos)
                if pos + header.size_bytes > len(view):
                    raise CorruptRecordError("record batch truncated")
                headers.append(header)
                pos += header.size_bytes
        except CorruptRecordError as exc:
            return ProduceResult(ErrorCode.CORRUPT_MESSAGE, error_message=str(exc))
        if not headers:
            return ProduceResult(
                ErrorCode.INVALID_RECORD, error_message="no record batch"
            )
        for header in headers:
            if header.is_control:
                return ProduceResult(
                    ErrorCode.INVALID_RECORD,
                    error_message="clients cannot write control batches",
                )
            if header.is_transactional:
                # Only into a partition added to the producer's open transaction: otherwise no
                # marker would ever end it and read_committed consumers would wait forever.
                error = self.txn.check_produce(
                    header.producer_id, header.producer_epoch, topic, partition
                )
                if error != ErrorCode.NONE:
                    return ProduceResult(
                        error, log_start_offset=plog.log_start_offset
                    )
        if plog.config.is_compacted:
            # Per record, so only for compacted topics: every other produce skips it.
            refused = _refuse_keyless(topic, partition, plog, view, headers)
            if refused is not None:
                return refused
        idempotent = headers[0].producer_id >= 0
        state = self._producer_state(topic, partition, plog) if idempotent else None
        if state is not None:
            if len(headers) != 1:
                # Kafka's rule for idempotent produce requests: one batch per partition.
                return ProduceResult(
                    ErrorCode.INVALID_RECORD,
                    error_message="idempotent produce needs one batch",
                )
            verdict = state.check(headers[0])
            if verdict.verdict is Verdict.DUPLICATE and verdict.original is not None:
                # A retry of a batch whose first answer may still wait for its fsync (or was
                # lost with it): answer no sooner than that fsync.
                original_end = verdict.original.base_offset + headers[0].last_offset_delta + 1
                if plog.config.flush_messages < LONG_MAX and plog.recovery_point < original_end:
                    durable.append((plog, original_end))
                return ProduceResult(
                    ErrorCode.NONE,
                    verdict.original.base_offset,
                    verdict.original.log_append_time_ms,
                    plog.log_start_offset,
                )
            if verdict.verdict is Verdict.REJECT:
                return ProduceResult(
                    verdict.error_code, log_start_offset=plog.log_start_offset
                )
        try:
            result = plog.append(
                records, log_append_time_ms=self.clock.now_ms(), defer_flush=True
            )
        except RecordTooLargeError as exc:
            return ProduceResult(ErrorCode.MESSAGE_TOO_LARGE, error_message=str(exc))
        except (CorruptRecordError, UnsupportedCompressionError) as exc:
            return ProduceResult(ErrorCode.CORRUPT_MESSAGE, error_message=str(exc))
        except LogError as exc:
            log.error("append to %s-%d failed: %s", topic, partition, exc)
            return ProduceResult(exc.errno, error_message=str(exc))
        if state is not None:
            state.record(
                headers[0],
                result.base_offset,
                result.log_append_time_ms,
                self.clock.now_ms(),
            )
        self._waiters.wake((topic, partition))
        self.stats.produced(topic, headers, len(view))
        if result.flush_required:
            # flush.messages reached: as in Kafka, the answer follows the fsync.
            durable.append((plog, result.last_offset + 1))
        return ProduceResult(
            ErrorCode.NONE,
            result.base_offset,
            result.log_append_time_ms,
            plog.log_start_offset,
        )

    def _flush_in_background(self, plog: PartitionLog) -> None:
        """fsync on a worker thread, so a flush never stalls the event loop (one at a time per log)."""
        if plog in self._flushing:
            return
        self._flushing.add(plog)

        def done(future: asyncio.Future[None]) -> None:
            self._flushing.discard(plog)
            _log_failure(future, "flush")

        future = asyncio.get_running_loop().run_in_executor(None, plog.flush)
        future.add_done_callback(done)

    # -- fetch -----------------------------------------------------------------------------

    def _read_partition(
        self,
        request: FetchRequestPartition,
        max_bytes: int,
        first: bool,
        isolation_level: int,
    ) -> FetchResultPartition:
        topic, partition = request.topic, request.partition
        try:
            plog = self.logs.get_log(topic, partition)
        except UnknownTopicError:
            return FetchResultPartition(
                topic, partition, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
            )
        high_watermark = plog.high_watermark
        stable = self._last_stable_offset(topic, partition, high_watermark)
        upper = (
            stable if isolation_level == ISOLATION_READ_COMMITTED else high_watermark
        )
        result = FetchResultPartition(
            topic,
            partition,
            ErrorCode.NONE,
            high_watermark,
            stable,
            plog.log_start_offset,
            b"",
            [] if isolation_level == ISOLATION_READ_COMMITTED else None,
        )
        if request.current_leader_epoch > 0:
            result.error_code = ErrorCode.UNKNOWN_LEADER_EPOCH
            return result
        offset = request.fetch_offset
        if offset < plog.log_start_offset or offset > plog.log_end_offset:
            result.error_code = ErrorCode.OFFSET_OUT_OF_RANGE
            return result
        if offset >= upper or max_bytes <= 0 and not first:
            return result
        try:
            result.records = plog.read(
                offset, max_bytes, max_offset=upper, min_one_batch=first
            )
            if isolation_level == ISOLATION_READ_COMMITTED and result.records:
                # Every aborted transaction overlapping the data returned: the client drops those
                # producers' batches up to their abort marker.
                result.aborted_transactions = [
                    (a.producer_id, a.first_offset)
                    for a in plog.aborted_transactions(
                        offset, _next_offset_after(result.records)
                    )
                ]
        except OffsetOutOfRangeError:
            result.error_code = ErrorCode.OFFSET_OUT_OF_RANGE
        except LogError as exc:  # e.g. the topic was deleted while this fetch waited
            result.error_code = (
                exc.errno if exc.errno > 0 else ErrorCode.UNKNOWN_SERVER_ERROR
            )
        return result

    def _last_stable_offset(
        self, topic: str, partition: int, high_watermark: int
    ) -> int:
        """LSO: the first offset of the earliest open transaction, or the high watermark.

        With transactions enabled the partition's producer state is loaded first (it is built
        lazily), so that a transaction left open before a restart is never skipped.
        """
        state = self._producer_states.get((topic, partition))
        if state is None and self.transactions_enabled:
            state = self._producer_state(
                topic, partition, self.logs.get_log(topic, partition)
            )
        first_open = state.first_unstable_offset() if state is not None else None
        return high_watermark if first_open is None else min(first_open, high_watermark)

    def _read_each(
        self,
        partitions: list[FetchRequestPartition],
        max_bytes: int,
        isolation_level: int,
        totals: list[int],
    ) -> Iterator[FetchResultPartition]:
        """Read the partitions one by one within the response budget (KIP-74: the first
        non-empty partition may exceed it by one batch so that a consumer always makes
        progress). ``totals`` is ``[bytes read, errors]``, kept up to date as results come."""
        remaining = max_bytes
        for request in partitions:
            limit = min(request.partition_max_bytes, remaining)
            result = self._read_partition(request, limit, totals[0] == 0, isolation_level)
            size = len(result.records)
            if size:
                self.stats.fetched(request.topic, result.records)
            totals[0] += size
            remaining = max(0, remaining - size)
            # Damaged data (CORRUPT_MESSAGE) does not end the long poll early: it stays damaged,
            # and a client that retries failed fetches at once (aiokafka does) would spin.
            if result.error_code not in (ErrorCode.NONE, ErrorCode.CORRUPT_MESSAGE):
                totals[1] += 1
            yield result

    def _read_all(
        self,
        partitions: list[FetchRequestPartition],
        max_bytes: int,
        isolation_level: int,
    ) -> tuple[list[FetchResultPartition], int, bool]:
        """Read every partition within the response budget, in one turn."""
        totals = [0, 0]
        results = list(self._read_each(partitions, max_bytes, isolation_level, totals))
        return results, totals[0], totals[1] > 0

    async def _read_all_sliced(
        self,
        partitions: list[FetchRequestPartition],
        max_bytes: int,
        isolation_level: int,
    ) -> tuple[list[FetchResultPartition], int, bool]:
        """:meth:`_read_all` for a request of more than :data:`PARTITIONS_PER_SLICE` partitions
        (a Fetch may name 10,000), yielding to the event loop every :data:`LOOP_SLICE_S`.

        Each partition is read whole in one turn; the partitions of one Fetch were never read at
        one instant anyway (appends land between two requests' reads just the same).
        """
        if len(partitions) <= PARTITIONS_PER_SLICE:
            return self._read_all(partitions, max_bytes, isolation_level)
        totals = [0, 0]
        results: list[FetchResultPartition] = []
        deadline = slice_deadline()
        for result in self._read_each(partitions, max_bytes, isolation_level, totals):
            results.append(result)
            if time.perf_counter() >= deadline:
                await asyncio.sleep(0)
                deadline = slice_deadline()
        return results, totals[0], totals[1] > 0

    async def fetch(
        self,
        partitions: list[FetchRequestPartition],
        *,
        max_wait_ms: int,
        min_bytes: int,
        max_bytes: int,
        isolation_level: int = ISOLATION_READ_UNCOMMITTED,
    ) -> list[FetchResultPartition]:
        """Read raw batches; wait up to ``max_wait_ms`` for ``min_bytes`` to arrive (long poll).

        The wait is woken by appends to the partitions asked for, never by polling.
        """
        max_bytes = min(
            max_bytes if max_bytes > 0 else self.config.fetch_response_max_bytes,
            self.config.fetch_response_max_bytes,
        )
        results, total, any_error = await self._read_all_sliced(
            partitions, max_bytes, isolation_level
        )
        if total >= min_bytes or any_error or max_wait_ms <= 0 or self._closed:
            return results
        loop = asyncio.get_running_loop()
        deadline = (
            loop.time() + min(max_wait_ms, self.config.fetch_max_wait_ms_max) / 1000
        )
        keys = [(p.topic, p.partition) for p in partitions]
        while True:
            remaining_s = deadline - loop.time()
            if remaining_s <= 0 or self._closed:
                return results
            future = self._waiters.register(keys)
            try:
                await asyncio.wait_for(future, remaining_s)
            except TimeoutError:
                pass
            finally:
                self._waiters.unregister(keys, future)
            results, total, any_error = await self._read_all_sliced(
                partitions, max_bytes, isolation_level
            )
            if total >= min_bytes or any_error:
                return results

    # -- offsets ---------------------------------------------------------------------------

    async def list_offsets(
        self,
        topic: str,
        partition: int,
        timestamp: int,
        *,
        isolation_level: int = ISOLATION_READ_UNCOMMITTED,
    ) -> ListOffsetsResult:
        """Earliest (-2), latest (-1), max-timestamp (-3) or first offset at/after a timestamp."""
        try:
            plog = self.logs.get_log(topic, partition)
            return self._list_offsets(
                plog, topic, partition, timestamp, isolation_level
            )
        except UnknownTopicError:
            return ListOffsetsResult(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION)
        except LogError as exc:
            return ListOffsetsResult(
                exc.errno if exc.errno > 0 else ErrorCode.UNKNOWN_SERVER_ERROR
            )

    def _list_offsets(
        self,
        plog: PartitionLog,
        topic: str,
        partition: int,
        timestamp: int,
        isolation_level: int,
    ) -> ListOffsetsResult:
        if timestamp == EARLIEST_TIMESTAMP:
            return ListOffsetsResult(ErrorCode.NONE, -1, plog.log_start_offset, 0)
        if timestamp == LATEST_TIMESTAMP:
            end = plog.high_watermark
            if isolation_level == ISOLATION_READ_COMMITTED:
                end = self._last_stable_offset(topic, partition, end)
            return ListOffsetsResult(ErrorCode.NONE, -1, end, 0)
        if timestamp == MAX_TIMESTAMP:
            return self._max_timestamp_offset(plog)
        if timestamp < 0:
            return ListOffsetsResult(ErrorCode.INVALID_REQUEST)
        found = plog.offset_for_timestamp(timestamp)
        if found is None:
            return ListOffsetsResult(ErrorCode.NONE, -1, -1, -1)
        offset, found_timestamp = found
        return ListOffsetsResult(ErrorCode.NONE, found_timestamp, offset, 0)

    def end_offset(self, topic: str, partition: int, *, isolation_level: int = ISOLATION_READ_UNCOMMITTED) -> int:
        """The high watermark, or under read_committed the last stable offset, at once (what a
        ListOffsets for the latest offset answers; for in-process readers that cannot await).

        Raises:
            UnknownTopicError: no such topic or partition.
        """
        end = self.logs.get_log(topic, partition).high_watermark
        if isolation_level == ISOLATION_READ_COMMITTED:
            end = self._last_stable_offset(topic, partition, end)
        return end

    def read_now(
        self, partitions: list[FetchRequestPartition], *, max_bytes: int, isolation_level: int = ISOLATION_READ_UNCOMMITTED
    ) -> list[FetchResultPartition]:
        """What a fetch that does not wait answers, at once (for in-process readers that cannot await)."""
        results, _, _ = self._read_all(partitions, min(max_bytes, self.config.fetch_response_max_bytes), isolation_level)
        return results

    def log_start_offset(self, topic: str, partition: int) -> int:
        """The first offset still in the log.

        Raises:
            UnknownTopicError: no such topic or partition.
        """
        return self.logs.get_log(topic, partition).log_start_offset

    def aborted_transactions(self, topic: str, partition: int, start_offset: int, end_offset: int) -> list[tuple[int, int]]:
        """``(producer id, first offset)`` of the aborted transactions overlapping
        ``[start_offset, end_offset)``: what a fetch reports, for in-process readers of
        uncommitted data that still leave aborted records out.

        Raises:
            UnknownTopicError: no such topic or partition.
        """
        found = self.logs.get_log(topic, partition).aborted_transactions(start_offset, end_offset)
        return [(a.producer_id, a.first_offset) for a in found]

    @staticmethod
    def _max_timestamp_offset(plog: PartitionLog) -> ListOffsetsResult:
        """ListOffsets MAX_TIMESTAMP (-3, KIP-734): the offset of the first record carrying the
        largest timestamp, as Kafka answers since KAFKA-16310 (the batch's last offset before).

        The first data batch with the largest max timestamp is found from the headers; only that
        batch is decoded, to find its record. With LogAppendTime every record of a batch carries
        the batch's time, so its first record is the answer.
        """
        best: tuple[int, bytes] | None = None
        best_ts = -1
        for header, data in plog.iter_batches(plog.log_start_offset):  # bounded by the log
            if not header.is_control and (best is None or header.max_timestamp > best_ts):
                best, best_ts = (header.base_offset, data), header.max_timestamp
        if best is None:
            return ListOffsetsResult(ErrorCode.NONE, -1, -1, -1)
        base_offset, data = best
        try:
            _, records = decode_batch(data, 0)
        except (CorruptRecordError, UnsupportedCompressionError):
            records = []  # damaged since it was appended: its first offset is the best answer
        for record in records:
            if record.timestamp_ms == best_ts:
                return ListOffsetsResult(ErrorCode.NONE, best_ts, record.offset, 0)
        # LogAppendTime: the records keep their producer's times, the batch has the append time.
        first = records[0].offset if records else base_offset
        return ListOffsetsResult(ErrorCode.NONE, best_ts, first, 0)

    async def offset_for_leader_epoch(
        self, topic: str, partition: int, leader_epoch: int
    ) -> tuple[int, int, int]:
        """(error, leader epoch, end offset): this broker has only ever had epoch 0."""
        try:
            plog = self.logs.get_log(topic, partition)
        except UnknownTopicError:
            return ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, -1, -1
        if leader_epoch > 0:
            return ErrorCode.NONE, -1, -1
        return ErrorCode.NONE, 0, plog.log_end_offset

    # -- coordinators, producers -----------------------------------------------------------

    def describe_producers(
        self, topic: str, partition: int
    ) -> tuple[int, list[tuple[int, ProducerEntry]]]:
        """The producers a partition remembers, as ``(producer id, entry)`` (DescribeProducers).

        The state is what idempotence and the LSO use, rebuilt from the log on first use as
        for a produce. Internal topics are written by the broker (``append_internal``), which
        does not keep their producer state: a state rebuilt here would miss later markers and
        could hold their LSO back, so none is built for them (they report no producers).
        Returns UNKNOWN_TOPIC_OR_PARTITION and no producers for a partition that does not exist.
        """
        if not self.partition_exists(topic, partition):
            return ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, []
        if topic in INTERNAL_TOPICS:
            return ErrorCode.NONE, []
        try:
            plog = self.logs.get_log(topic, partition)
            state = self._producer_state(topic, partition, plog)
        except UnknownTopicError:  # deleted between the check and the lookup
            return ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, []
        except LogError as exc:  # the log could not be read to rebuild the state
            log.error("describing producers of %s-%d failed: %s", topic, partition, exc)
            return ErrorCode.KAFKA_STORAGE_ERROR, []
        return ErrorCode.NONE, state.entries()

    async def find_coordinator(self, key: str, key_type: int) -> CoordinatorResult:
        """This broker coordinates every group and (issue 4) every transactional id."""
        if key_type not in (COORDINATOR_KEY_GROUP, COORDINATOR_KEY_TRANSACTION):
            return CoordinatorResult(
                ErrorCode.INVALID_REQUEST, error_message=f"unknown key type {key_type}"
            )
        return CoordinatorResult(ErrorCode.NONE, self.node)

    async def init_producer_id(
        self,
        transactional_id: str | None,
        transaction_timeout_ms: int,
        producer_id: int = -1,
        producer_epoch: int = -1,
    ) -> InitProducerIdResult:
        """A new producer id with epoch 0 (idempotent producers), or the transaction
        coordinator's answer for a transactional id (new id, or an epoch bump that fences)."""
        if transactional_id:
            r = self.txn.init_producer_id(
                transactional_id, transaction_timeout_ms, producer_id, producer_epoch
            )
            return InitProducerIdResult(r.error_code, r.producer_id, r.producer_epoch)
        return InitProducerIdResult(ErrorCode.NONE, self._producer_ids.allocate(), 0)

    async def commit_offsets(
        self,
        group_id: str,
        generation_id: int,
        member_id: str,
        offsets: list[OffsetToCommit],
        *,
        group_instance_id: str | None = None,
    ) -> list[int]:
        return await self.groups.commit_offsets(
            group_id,
            generation_id,
            member_id,
            offsets,
            partition_exists=self.partition_exists,
            group_instance_id=group_instance_id,
        )
