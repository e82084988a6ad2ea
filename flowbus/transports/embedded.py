"""``embedded://DIR``: the flowbus broker core inside the worker process, no sockets.

Producers build RecordBatch v2 bytes and hand them to :meth:`BrokerCore.produce`; consumers call
:meth:`BrokerCore.fetch` and decode batches; group membership goes through the broker's group
coordinator with the standard ``consumer`` protocol encoding, so a worker that also listens
(``listen="host:port"``) shares its group with workers and Kafka clients connecting over TCP.

Batching: :meth:`EmbeddedProducer.send_soon` appends to a per-partition batch builder; builders
are shipped once per event-loop turn (or when a batch reaches :data:`BATCH_BYTES_MAX`), so a
dataflow's whole output for one polled batch becomes one append per partition.

Transactions (``exactly_once``): a producer with a transactional id talks to the core's
transaction coordinator directly — InitProducerId, AddPartitionsToTxn before a partition's first
batch, AddOffsetsToTxn + TxnOffsetCommit, EndTxn — and writes transactional batches with its
producer id, epoch and per-partition sequences, exactly what a Kafka client sends over TCP. A
read_committed consumer drops the batches of the aborted transactions each fetch reports.
"""

from __future__ import annotations

import asyncio
import fcntl
import itertools
import logging
import os
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from flowbus.broker.config import BrokerConfig
from flowbus.broker.core import (
    CONFIG_SOURCE_DYNAMIC_TOPIC,
    EARLIEST_TIMESTAMP,
    ISOLATION_READ_COMMITTED,
    ISOLATION_READ_UNCOMMITTED,
    LATEST_TIMESTAMP,
    RESOURCE_TOPIC,
    BrokerCore,
    FetchRequestPartition,
)
from flowbus.broker.core import NewTopic as CoreNewTopic
from flowbus.broker.group_coordinator import (
    EMBEDDED_CLIENT_HOST,
    GroupConfig,
    OffsetToCommit,
)
from flowbus.clock import SYSTEM_CLOCK, Clock
from flowbus.log.errors import LogError
from flowbus.log.manager import LOCK_FILE
from flowbus.protocol.error_codes import ErrorCode
from flowbus.records.builder import BatchBuilder
from flowbus.records.header import read_header
from flowbus.records.record import decode_batch
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
    RawSender,
    Record,
    RecordMetadata,
    TopicDescription,
    TopicPartition,
    TopicSpec,
    Transport,
    Watermarks,
)
from flowbus.transports.errors import (
    CommitError,
    GroupFencedError,
    ProduceError,
    ProducerFencedError,
    TopicNotFoundError,
    TransactionError,
    TransportError,
)
from flowbus.transports.partitioner import partition_for_key

if TYPE_CHECKING:
    from flowbus.broker.server import BrokerServer

log = logging.getLogger("flowbus.transports.embedded")

BATCH_BYTES_MAX = 512 * 1024
"""A partition's pending batch is shipped before it would pass this size, without waiting for the
turn; well under the log's default max.message.bytes (1 MiB)."""
RECORD_OVERHEAD_BYTES_MAX = 32
"""Upper bound of a record's framing (length, attributes, deltas, counts) in a batch."""


def _headers_bytes(headers: Headers) -> int:
    """Upper bound of the bytes ``headers`` add to a record: UTF-8 name, value (None when null)
    and two varint lengths of at most 5 bytes each (KIP-82)."""
    size = 0
    for name, data in headers:
        size += len(name.encode()) + (len(data) if data else 0) + 10
    return size


def _record_bytes(key: bytes | None, value: bytes | None, headers: Headers) -> int:
    return RECORD_OVERHEAD_BYTES_MAX + (len(key) if key else 0) + (len(value) if value else 0) + _headers_bytes(headers)


TRANSACTION_TIMEOUT_MS = 60_000
"""``transaction.timeout.ms`` of embedded transactional producers (Kafka's client default)."""
TXN_RETRY_ATTEMPTS_MAX = 500
TXN_RETRY_DELAY_S = 0.01
"""A coordinator answering CONCURRENT_TRANSACTIONS or COORDINATOR_LOAD_IN_PROGRESS is asked
again this often, at most this many times (5 s), before the call fails."""
_FENCED = (ErrorCode.PRODUCER_FENCED, ErrorCode.INVALID_PRODUCER_EPOCH)
#: TxnOffsetCommit's answers for a member the group moved on without (KIP-447).
_GROUP_FENCED = (ErrorCode.UNKNOWN_MEMBER_ID, ErrorCode.ILLEGAL_GENERATION, ErrorCode.FENCED_INSTANCE_ID)
_RETRIABLE_TXN = (ErrorCode.CONCURRENT_TRANSACTIONS, ErrorCode.COORDINATOR_LOAD_IN_PROGRESS)
#: Sequences wrap at INT32 max (Kafka's DefaultRecordBatch.incrementSequence).
SEQUENCE_MODULUS = 1 << 31
FETCH_PARTITION_BYTES_MAX = 1024 * 1024
FETCH_RESPONSE_BYTES_MAX = 8 * 1024 * 1024
SESSION_TIMEOUT_MS = 10_000
REBALANCE_TIMEOUT_MS = 30_000
HEARTBEAT_INTERVAL_MS = 1_000
JOIN_ATTEMPTS_MAX = 50
READ_RECORDS_MAX = 10_000_000
"""Most records :meth:`EmbeddedTransport.read_records` returns (it is for tests and tools)."""


# -- the consumer protocol's subscription and assignment bytes (KIP-429 layout, version 0) ------

def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">h", len(raw)) + raw


def encode_subscription(topics: Sequence[str]) -> bytes:
    return struct.pack(">hi", 0, len(topics)) + b"".join(_string(t) for t in topics) + struct.pack(">i", -1)


def decode_subscription(data: bytes) -> list[str]:
    """The topics of a subscription of any version (later versions only append fields)."""
    _, count = struct.unpack_from(">hi", data, 0)
    pos, topics = 6, []
    for _ in range(count):
        (size,) = struct.unpack_from(">h", data, pos)
        topics.append(data[pos + 2 : pos + 2 + size].decode())
        pos += 2 + size
    return topics


def encode_assignment(partitions: Sequence[TopicPartition]) -> bytes:
    by_topic: dict[str, list[int]] = {}
    for tp in partitions:
        by_topic.setdefault(tp.topic, []).append(tp.partition)
    out = [struct.pack(">hi", 0, len(by_topic))]
    for topic, parts in sorted(by_topic.items()):
        out.append(_string(topic) + struct.pack(">i", len(parts)) + b"".join(struct.pack(">i", p) for p in sorted(parts)))
    out.append(struct.pack(">i", -1))
    return b"".join(out)


def decode_assignment(data: bytes) -> list[TopicPartition]:
    if not data:
        return []
    _, count = struct.unpack_from(">hi", data, 0)
    pos, out = 6, []
    for _ in range(count):
        (size,) = struct.unpack_from(">h", data, pos)
        topic = data[pos + 2 : pos + 2 + size].decode()
        pos += 2 + size
        (n,) = struct.unpack_from(">i", data, pos)
        pos += 4
        for _ in range(n):
            (p,) = struct.unpack_from(">i", data, pos)
            pos += 4
            out.append(TopicPartition(topic, p))
    return out


# -- shared broker cores ----------------------------------------------------------------------

class _CoreHandle:
    def __init__(self, core: BrokerCore) -> None:
        self.core = core
        self.users = 0
        self.server: Any = None


_CORES: dict[Path, _CoreHandle] = {}


class DataDirInUseError(TransportError):
    """Another process (a worker or ``flowbus broker``) holds the embedded data dir open."""


def _in_use_message(data_dir: Path) -> str:
    return (
        f"data dir {data_dir} is in use by another worker or flowbus broker, and only one process may "
        f"open it: start that one with --listen HOST:PORT and use --broker kafka://HOST:PORT"
    )


def _os_reason(exc: OSError) -> str:
    """``Permission denied: /x/y`` from an OSError, without errno numbers or Python reprs."""
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    reason = reason[:1].lower() + reason[1:]
    return f"{reason} ({exc.filename})" if exc.filename else reason


def _check_bindable(host: str, port: int) -> None:
    """Raise :class:`TransportError` when ``host:port`` cannot be listened on (in use, no such
    address, not allowed). Binds and closes a socket as asyncio's server will (SO_REUSEADDR),
    so a port in TIME_WAIT passes; a port taken between this check and the real bind is still
    reported by the caller."""
    import socket

    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise TransportError(f"cannot listen on {host}:{port}: unknown host ({exc.strerror})") from exc
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            raise TransportError(f"cannot listen on {host}:{port}: {_os_reason(exc)}") from exc


def data_dir_in_use(data_dir: str | Path) -> bool:
    """True when another process holds ``data_dir`` open (a worker or ``flowbus broker``).

    The log takes an exclusive ``flock`` on the directory's lock file for as long as it is open,
    so a second broker core on the same files cannot start; tools ask first, to tell the user to
    reach the running one over TCP instead of failing with a log error. The answer can be stale
    by the time it is used: it is advice, the lock itself is the guard.
    """
    lock_path = Path(data_dir) / LOCK_FILE
    if _CORES.get(Path(data_dir).resolve()) is not None:
        return False  # held by this very process: transports here share that core
    try:
        fd = os.open(lock_path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


class EmbeddedProducer(Producer):
    """Batches per partition and appends through the broker core."""

    def __init__(self, transport: EmbeddedTransport, transactional_id: str | None) -> None:
        self._t = transport
        self._core = transport.core
        self._clock = transport.clock
        self._transactional_id = transactional_id
        self._builders: dict[tuple[str, int], BatchBuilder] = {}
        self._futures: dict[tuple[str, int], list[tuple[int, asyncio.Future[RecordMetadata]]]] = {}
        self._inflight: set[asyncio.Task[None]] = set()
        self._errors: list[str] = []
        self._scheduled = False
        self._loop = asyncio.get_running_loop()
        self._round_robin = itertools.count()
        self._sticky: dict[str, int] = {}
        self._now_ms = transport.clock.now_ms
        #: Transactional state: producer id and epoch from init_transactions (-1 before).
        self._pid = -1
        self._epoch = -1
        self._sequences: dict[tuple[str, int], int] = {}
        self._in_txn = False
        #: Partitions added to the open transaction, and whether offsets were sent in it.
        self._txn_partitions: set[tuple[str, int]] = set()
        self._txn_offsets = False
        self._txn_failed = False
        #: Transactional batches are appended in shipping order (see ``_produce``).
        self._txn_append_order = asyncio.Lock()
        #: Set when the coordinator or a partition said this producer was fenced: fatal.
        self._fenced = False
        #: Counted per batch shipped (metrics); bounded by the topics this producer writes.
        self.records_sent_by_topic: dict[str, int] = {}

    def _new_builder(self, tp: tuple[str, int]) -> BatchBuilder:
        """A batch for ``tp``: plain, or transactional with the partition's next sequence.

        A partition has at most one open builder and its sequence advances when a builder ships,
        so the sequence read here follows every batch shipped before.
        """
        if self._pid < 0:
            return BatchBuilder()
        return BatchBuilder(
            producer_id=self._pid,
            producer_epoch=self._epoch,
            base_sequence=self._sequences.get(tp, 0),
            is_transactional=True,
        )

    def _partition(self, topic: str, key: bytes | None) -> int:
        count = self._t.partition_count(topic)
        if key is not None:
            return partition_for_key(key, count)
        # Sticky for keyless records (KIP-480): one partition until its batch ships, so batches
        # are large; the next batch moves on.
        sticky = self._sticky.get(topic)
        if sticky is None:
            sticky = self._sticky[topic] = next(self._round_robin) % count
        return sticky

    def _append(self, topic: str, value: bytes | None, key: bytes | None, partition: int | None,
                headers: Headers, timestamp_ms: int | None, fut: asyncio.Future[RecordMetadata] | None) -> None:
        if partition is None:
            partition = self._partition(topic, key)
        tp = (topic, partition)
        builder = self._builders.get(tp)
        if builder is not None:
            size = RECORD_OVERHEAD_BYTES_MAX + (len(value) if value else 0) + (len(key) if key else 0)
            if headers:
                size = _record_bytes(key, value, headers)
            if builder.size_estimate_bytes + size > BATCH_BYTES_MAX:
                self._ship(tp)  # ship before the batch outgrows what the log accepts
                builder = None
        if builder is None:
            builder = self._builders[tp] = self._new_builder(tp)
        if fut is not None:
            self._futures.setdefault(tp, []).append((len(builder), fut))
        builder.append(key, value, timestamp_ms=self._now_ms() if timestamp_ms is None else timestamp_ms, headers=headers)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._ship_all)

    def sender_for(self, topic: str) -> RawSender:
        """The hot path of a dataflow's ``to(topic)``: default partitioning, straight into the
        partition's batch builder. Headers cost only when there are some (their size is added to
        the batch-full check); a ``None`` timestamp is the send time."""
        count = self._t.partition_count(topic)
        builders, sticky, now_ms = self._builders, self._sticky, self._now_ms
        limit = BATCH_BYTES_MAX - RECORD_OVERHEAD_BYTES_MAX
        loop = self._loop

        def send(key: bytes | None, value: bytes | None, timestamp_ms: int | None = None, headers: Headers = ()) -> None:
            if key is None:
                partition = sticky.get(topic)
                if partition is None:
                    partition = sticky[topic] = next(self._round_robin) % count
            else:
                partition = partition_for_key(key, count)
            tp = (topic, partition)
            builder = builders.get(tp)
            if builder is None:
                builder = builders[tp] = self._new_builder(tp)
            elif (builder.size_estimate_bytes + (len(value) if value else 0) + (len(key) if key else 0)
                  + (_headers_bytes(headers) if headers else 0)) > limit:
                self._ship(tp)
                builder = builders[tp] = self._new_builder(tp)
            builder.append(key, value, timestamp_ms=now_ms() if timestamp_ms is None else timestamp_ms, headers=headers)
            if not self._scheduled:
                self._scheduled = True
                loop.call_soon(self._ship_all)

        return send

    def send_many(self, topic: str, partition: int,
                  records: Sequence[tuple[bytes | None, bytes | None]]) -> asyncio.Future[RecordMetadata]:
        """A changelog commit's records straight into the partition's batch builder."""
        if not records:
            raise ValueError("send_many needs at least one record")
        tp = (topic, partition)
        builders = self._builders
        limit = BATCH_BYTES_MAX - RECORD_OVERHEAD_BYTES_MAX
        now_ms = self._now_ms()
        builder = builders.get(tp)
        if builder is None:
            builder = builders[tp] = self._new_builder(tp)
        append = builder.append
        for key, value in records:
            if builder.size_estimate_bytes + (len(value) if value else 0) + (len(key) if key else 0) > limit:
                self._ship(tp)
                builder = builders[tp] = self._new_builder(tp)
                append = builder.append
            append(key, value, timestamp_ms=now_ms)
        fut: asyncio.Future[RecordMetadata] = self._loop.create_future()
        self._futures.setdefault(tp, []).append((len(builder) - 1, fut))
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._ship_all)
        return fut

    def send_soon(self, topic: str, value: bytes | None, key: bytes | None = None, *, partition: int | None = None,
                  headers: Headers = (), timestamp_ms: int | None = None) -> None:
        self._append(topic, value, key, partition, headers, timestamp_ms, None)

    def send(self, topic: str, value: bytes | None, key: bytes | None = None, *, partition: int | None = None,
             headers: Headers = (), timestamp_ms: int | None = None) -> asyncio.Future[RecordMetadata]:
        fut: asyncio.Future[RecordMetadata] = self._loop.create_future()
        self._append(topic, value, key, partition, headers, timestamp_ms, fut)
        return fut

    def _ship_all(self) -> None:
        self._scheduled = False
        for tp in list(self._builders):
            self._ship(tp)

    def _ship(self, tp: tuple[str, int]) -> None:
        if self._sticky.get(tp[0]) == tp[1]:
            del self._sticky[tp[0]]
        builder = self._builders.pop(tp)
        self.records_sent += len(builder)
        self.records_sent_by_topic[tp[0]] = self.records_sent_by_topic.get(tp[0], 0) + len(builder)
        futures = self._futures.pop(tp, [])
        if self._pid >= 0:
            error = self._add_to_txn(tp)
            if error is not None:
                self._fail(futures, error)
                return
            self._sequences[tp] = (self._sequences.get(tp, 0) + len(builder)) % SEQUENCE_MODULUS
        task = self._loop.create_task(self._produce(tp, builder.build(), futures))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    def _add_to_txn(self, tp: tuple[str, int]) -> str | None:
        """AddPartitionsToTxn before a partition's first batch in the transaction; an error text."""
        if not self._in_txn:
            return f"a transactional producer sent to {tp[0]}[{tp[1]}] outside a transaction"
        if tp in self._txn_partitions:
            return None
        assert self._transactional_id is not None
        code = self._core.txn.add_partitions(self._transactional_id, self._pid, self._epoch, [tp])[tp]
        self._fenced = self._fenced or code in _FENCED
        if code != ErrorCode.NONE:
            return f"adding {tp[0]}[{tp[1]}] to the transaction failed with error {code}"
        self._txn_partitions.add(tp)
        return None

    def _fail(self, futures: list[tuple[int, asyncio.Future[RecordMetadata]]], message: str) -> None:
        self._errors.append(message)
        self._txn_failed = self._txn_failed or self._pid >= 0
        for _, fut in futures:
            if not fut.done():
                fut.set_exception(ProduceError(message))

    async def _produce(self, tp: tuple[str, int], batch: bytes, futures: list[tuple[int, asyncio.Future[RecordMetadata]]]) -> None:
        if self._transactional_id is not None and self._pid >= 0:
            # Durable acks: no transactional data before the record adding its partition is
            # fsynced (else a machine crash could leave data no recovery knows to end). The lock
            # keeps appends in shipping order (a batch shipped while an earlier one waits must
            # not pass it: sequences); uncontended, as without durable acks, it never suspends.
            async with self._txn_append_order:
                code = await self._core.txn.wait_durable(self._transactional_id)
                if code != ErrorCode.NONE:
                    self._fail(futures, f"adding {tp[0]}[{tp[1]}] to the transaction failed with error {code}")
                    return
                appended = self._core.produce_nowait(tp[0], tp[1], batch)
            result = await appended
        else:
            result = await self._core.produce(tp[0], tp[1], batch)
        if result.error_code != ErrorCode.NONE:
            message = f"produce to {tp[0]}[{tp[1]}] failed with error {result.error_code}: {result.error_message}"
            self._fenced = self._fenced or (self._pid >= 0 and result.error_code in _FENCED)
            self._fail(futures, message)
            return
        for index, fut in futures:
            if not fut.done():
                fut.set_result(RecordMetadata(tp[0], tp[1], result.base_offset + index, result.log_append_time_ms))

    async def flush(self, timeout_ms: int | None = None) -> None:
        self._ship_all()
        while self._inflight:
            await asyncio.gather(*list(self._inflight), return_exceptions=True)
        if self._errors:
            errors, self._errors = self._errors, []
            raise ProduceError(f"{len(errors)} batches failed, first: {errors[0]}")

    async def partitions_for(self, topic: str) -> int:
        return self._t.partition_count(topic)

    @property
    def pending(self) -> bool:
        """Records sent but not yet appended (batched for this turn, or being appended): the
        test harness waits for none before it calls the app quiet."""
        return self._scheduled or bool(self._builders) or bool(self._inflight)

    async def _coordinator(self, call: Callable[[], int], what: str) -> None:
        """Run a coordinator call, retrying while it is busy; raise on fencing or failure."""
        for _ in range(TXN_RETRY_ATTEMPTS_MAX):
            code = call()
            if code == ErrorCode.NONE and self._transactional_id is not None:
                # Durable acks: the change is reported once its state record (an end: its
                # decision and markers) is fsynced; a failed fsync is retried like a busy call.
                code = await self._core.txn.wait_durable(self._transactional_id)
                if code == ErrorCode.NOT_COORDINATOR:
                    code = ErrorCode.CONCURRENT_TRANSACTIONS
            if code not in _RETRIABLE_TXN:
                break
            await asyncio.sleep(TXN_RETRY_DELAY_S)
        if code in _FENCED:
            raise ProducerFencedError(f"{what}: a newer producer with transactional id {self._transactional_id!r} fenced this one")
        if code != ErrorCode.NONE:
            raise TransactionError(f"{what} failed with error {ErrorCode(code).name}")

    async def init_transactions(self) -> None:
        """Get the producer id and epoch of the transactional id (fencing older instances and
        ending the transaction they left open)."""
        if self._transactional_id is None:
            raise TransactionError("init_transactions needs a transactional_id")
        await self._core.wait_loaded()
        tid = self._transactional_id
        result = None

        def call() -> int:
            nonlocal result
            result = self._core.txn.init_producer_id(tid, TRANSACTION_TIMEOUT_MS, self._pid, self._epoch)
            return result.error_code

        await self._coordinator(call, "init_transactions")
        assert result is not None
        self._pid, self._epoch = result.producer_id, result.producer_epoch
        self._sequences.clear()
        self._txn_failed = False

    def begin_transaction(self) -> None:
        if self._pid < 0:
            raise TransactionError("begin_transaction before init_transactions")
        if self._in_txn:
            raise TransactionError("a transaction is already open")
        self._in_txn = True
        self._txn_partitions = set()
        self._txn_offsets = False

    async def send_offsets_to_transaction(self, offsets: Mapping[TopicPartition, int], group_metadata: object) -> None:
        """Commit the consumer's offsets in the transaction (visible to the group on commit)."""
        if not self._in_txn:
            raise TransactionError("send_offsets_to_transaction outside a transaction")
        if not offsets:
            return
        assert self._transactional_id is not None
        group_id, generation, member_id = cast("tuple[str, int, str]", group_metadata)
        tid, pid, epoch = self._transactional_id, self._pid, self._epoch
        await self._coordinator(lambda: self._core.txn.add_offsets(tid, pid, epoch, group_id), "AddOffsetsToTxn")
        self._txn_offsets = True
        codes = await self._core.txn.txn_offset_commit(
            tid, group_id, pid, epoch, generation, member_id,
            [OffsetToCommit(tp.topic, tp.partition, offset) for tp, offset in offsets.items()],
        )
        failed = sorted({c for c in codes if c != ErrorCode.NONE})
        if any(c in _FENCED for c in failed):
            raise ProducerFencedError(f"TxnOffsetCommit: transactional id {tid!r} was fenced")
        if any(c in _GROUP_FENCED for c in failed):
            names = ", ".join(ErrorCode(c).name for c in failed)
            raise GroupFencedError(
                f"TxnOffsetCommit: group {group_id!r} moved on without member {member_id!r} of generation "
                f"{generation} ({names}); the transaction must be aborted"
            )
        if failed:
            raise TransactionError(f"TxnOffsetCommit failed with errors {failed}")

    async def _end(self, commit: bool) -> None:
        assert self._transactional_id is not None
        tid, pid, epoch = self._transactional_id, self._pid, self._epoch
        try:
            if self._txn_partitions or self._txn_offsets:
                await self._coordinator(lambda: self._core.txn.end_txn(tid, pid, epoch, commit),
                                        "commit_transaction" if commit else "abort_transaction")
        finally:
            self._in_txn = False
            self._txn_partitions = set()
            self._txn_offsets = False

    async def commit_transaction(self) -> None:
        """Flush the transaction's records, then commit them with its offsets (EndTxn)."""
        if not self._in_txn:
            raise TransactionError("commit_transaction outside a transaction")
        try:
            await self.flush()
        except ProduceError as exc:
            if self._fenced:
                raise ProducerFencedError(f"transactional id {self._transactional_id!r}: {exc}") from exc
            raise TransactionError(f"the transaction must be aborted: {exc}") from exc
        if self._txn_failed:
            raise TransactionError("a batch of the transaction failed; it must be aborted")
        await self._end(commit=True)

    async def abort_transaction(self) -> None:
        """Drop unsent records and abort; after a failed batch the epoch is bumped (KIP-360) so
        the partitions' sequences start again."""
        if not self._in_txn:
            return
        for tp in list(self._builders):
            self._builders.pop(tp)
            for _, fut in self._futures.pop(tp, []):
                if not fut.done():
                    fut.set_exception(ProduceError("the transaction was aborted"))
        while self._inflight:
            await asyncio.gather(*list(self._inflight), return_exceptions=True)
        self._errors.clear()
        await self._end(commit=False)
        if self._txn_failed:
            await self.init_transactions()

    async def close(self) -> None:
        await self.flush()


class EmbeddedConsumer(Consumer):
    """A consumer-group member talking to the in-process group coordinator (eager rebalancing)."""

    def __init__(self, transport: EmbeddedTransport, group_id: str | None, isolation_level: IsolationLevel,
                 auto_offset_reset: Literal["earliest", "latest"], client_id: str) -> None:
        self._t = transport
        self._core = transport.core
        self._group_id = group_id
        self._isolation = ISOLATION_READ_COMMITTED if isolation_level == "read_committed" else ISOLATION_READ_UNCOMMITTED
        self._reset = EARLIEST_TIMESTAMP if auto_offset_reset == "earliest" else LATEST_TIMESTAMP
        self._client_id = client_id
        self._topics: list[str] = []
        self._on_assigned: OnAssigned | None = None
        self._on_revoked: OnRevoked | None = None
        self._member_id = ""
        self._generation = -1
        self._owned: list[TopicPartition] = []
        self._positions: dict[TopicPartition, int] = {}
        self._paused: set[TopicPartition] = set()
        self._rejoin = False
        self._heartbeat: asyncio.Task[None] | None = None
        self._closed = False

    # -- membership -----------------------------------------------------------------------
    def subscribe(self, topics: Sequence[str], *, on_assigned: OnAssigned | None = None,
                  on_revoked: OnRevoked | None = None) -> None:
        if self._group_id is None:
            raise TransportError("subscribe needs a group id; use assign() outside a group")
        self._topics = list(topics)
        self._on_assigned, self._on_revoked = on_assigned, on_revoked
        self._rejoin = True

    def assign(self, partitions: Sequence[TopicPartition], offsets: Mapping[TopicPartition, int] | None = None) -> None:
        self._owned = list(partitions)
        default = OFFSET_BEGINNING if self._reset == EARLIEST_TIMESTAMP else OFFSET_END
        self._positions = {tp: (offsets or {}).get(tp, self._positions.get(tp, default)) for tp in self._owned}

    def position(self, partition: TopicPartition) -> int | None:
        position = self._positions.get(partition)
        return position if position is not None and position >= 0 else None

    async def _join(self) -> None:
        groups = self._core.groups
        assert self._group_id is not None, "subscribe() needs a group"
        if self._owned and self._on_revoked is not None:
            await self._on_revoked(list(self._owned))
        self._owned, self._positions = [], {}
        meta = encode_subscription(self._topics)
        for _ in range(JOIN_ATTEMPTS_MAX):
            joined = await groups.join_group(
                self._group_id, self._member_id, "consumer", [("range", meta), ("roundrobin", meta)],
                session_timeout_ms=SESSION_TIMEOUT_MS, rebalance_timeout_ms=REBALANCE_TIMEOUT_MS,
                client_id=self._client_id, client_host=EMBEDDED_CLIENT_HOST,
            )
            code = joined.error_code
            if code == ErrorCode.MEMBER_ID_REQUIRED:
                self._member_id = joined.member_id
                continue
            if code == ErrorCode.COORDINATOR_LOAD_IN_PROGRESS:
                await self._core.wait_loaded()
                continue
            if code == ErrorCode.UNKNOWN_MEMBER_ID:
                self._member_id = ""
                continue
            if code == ErrorCode.REBALANCE_IN_PROGRESS:
                continue
            if code != ErrorCode.NONE:
                raise TransportError(f"joining group {self._group_id!r} failed with error {code}")
            self._member_id, self._generation = joined.member_id, joined.generation_id
            plan: dict[str, bytes] = {}
            if joined.leader == self._member_id:
                plan = self._plan({m.member_id: decode_subscription(m.metadata) for m in joined.members})
            synced = await groups.sync_group(
                self._group_id, self._generation, self._member_id, plan,
                protocol_type="consumer", protocol_name=joined.protocol_name,
            )
            if synced.error_code in (ErrorCode.REBALANCE_IN_PROGRESS, ErrorCode.ILLEGAL_GENERATION):
                continue
            if synced.error_code == ErrorCode.UNKNOWN_MEMBER_ID:
                self._member_id = ""
                continue
            if synced.error_code != ErrorCode.NONE:
                raise TransportError(f"syncing group {self._group_id!r} failed with error {synced.error_code}")
            self._rejoin = False
            owned = [tp for tp in decode_assignment(synced.assignment) if tp.topic in self._topics]
            await self._start_positions(owned)
            self._owned = owned
            if self._heartbeat is None:
                self._heartbeat = asyncio.create_task(self._heartbeats(), name="flowbus-embedded-heartbeat")
            if self._on_assigned is not None:
                await self._on_assigned(list(owned))
            return
        raise TransportError(f"could not join group {self._group_id!r} after {JOIN_ATTEMPTS_MAX} attempts")

    def _plan(self, subscriptions: dict[str, list[str]]) -> dict[str, bytes]:
        """Kafka's range assignment: for each topic, its members (sorted by id) take consecutive
        runs of partitions, the first ones one more when it does not divide evenly.

        Topics with the same partition count are therefore co-partitioned: partition ``p`` of
        each goes to the same member, which is what tables need (the partition of a table and of
        the stream updating it must be on one worker), and what Java and librdkafka members of
        the same group compute too.
        """
        shares: dict[str, list[TopicPartition]] = {m: [] for m in subscriptions}
        for topic in sorted({t for ts in subscriptions.values() for t in ts}):
            takers = sorted(m for m, ts in subscriptions.items() if topic in ts)
            count = self._t.partition_count(topic)
            each, extra = divmod(count, len(takers))
            start = 0
            for index, member in enumerate(takers):
                length = each + (1 if index < extra else 0)
                shares[member].extend(TopicPartition(topic, p) for p in range(start, start + length))
                start += length
        return {m: encode_assignment(parts) for m, parts in shares.items()}

    async def _start_positions(self, partitions: list[TopicPartition]) -> None:
        assert self._group_id is not None
        _, fetched = self._core.groups.fetch_offsets(self._group_id, [(tp.topic, tp.partition) for tp in partitions])
        committed = {TopicPartition(f.topic, f.partition): f.offset for f in fetched}
        for tp in partitions:
            offset = committed.get(tp, -1)
            self._positions[tp] = offset if offset >= 0 else await self._list_offset(tp, self._reset)

    async def _list_offset(self, tp: TopicPartition, which: int) -> int:
        result = await self._core.list_offsets(tp.topic, tp.partition, which, isolation_level=self._isolation)
        return max(result.offset, 0)

    async def _heartbeats(self) -> None:
        while not self._closed:
            await asyncio.sleep(HEARTBEAT_INTERVAL_MS / 1000)
            if self._rejoin or self._group_id is None:
                continue
            code = self._core.groups.heartbeat(self._group_id, self._generation, self._member_id)
            if code in (ErrorCode.REBALANCE_IN_PROGRESS, ErrorCode.ILLEGAL_GENERATION, ErrorCode.UNKNOWN_MEMBER_ID):
                self._rejoin = True

    # -- reading --------------------------------------------------------------------------
    async def poll_batch(self, max_records: int, timeout_ms: int) -> list[Record]:
        if self._rejoin and self._topics:
            await self._join()
        wanted = []
        for tp in self._owned:
            if tp in self._paused:
                continue
            position = self._positions[tp]
            if position < 0:
                position = self._positions[tp] = await self._list_offset(
                    tp, EARLIEST_TIMESTAMP if position == OFFSET_BEGINNING else LATEST_TIMESTAMP)
            wanted.append(FetchRequestPartition(tp.topic, tp.partition, position, FETCH_PARTITION_BYTES_MAX))
        if not wanted:
            if timeout_ms > 0:
                await asyncio.sleep(min(timeout_ms, 50) / 1000)
            return []
        results = await self._core.fetch(
            wanted, max_wait_ms=timeout_ms, min_bytes=1, max_bytes=FETCH_RESPONSE_BYTES_MAX,
            isolation_level=self._isolation,
        )
        out: list[Record] = []
        for res in results:
            tp = TopicPartition(res.topic, res.partition)
            if tp not in self._positions:
                continue  # revoked while fetching
            if res.error_code == ErrorCode.OFFSET_OUT_OF_RANGE:
                self._positions[tp] = await self._list_offset(tp, self._reset)
                continue
            if res.error_code != ErrorCode.NONE or not res.records:
                continue
            self._decode_into(tp, res.records, out, max_records, res.aborted_transactions)
        return out

    def _decode_into(self, tp: TopicPartition, buf: bytes | memoryview, out: list[Record], max_records: int,
                     aborted_transactions: list[tuple[int, int]] | None = None) -> None:
        position = self._positions[tp]
        pos, end = 0, len(buf)
        # read_committed: a producer's batches are dropped from the first offset of one of its
        # aborted transactions up to its next marker (as Kafka clients do).
        aborted = sorted((first, pid) for pid, first in aborted_transactions) if aborted_transactions else []
        aborting: set[int] = set()
        while pos < end and len(out) < max_records:
            if end - pos < 61:
                break  # a partial header at the end of the fetch
            header = read_header(buf, pos)
            if pos + header.size_bytes > end:
                break  # a partial batch cut by the byte limit; fetched again next time
            while aborted and aborted[0][0] <= header.base_offset:
                aborting.add(aborted.pop(0)[1])
            if header.is_control:
                aborting.discard(header.producer_id)
                position = max(position, header.base_offset + header.last_offset_delta + 1)
                pos += header.size_bytes
                continue
            if aborting and header.is_transactional and header.producer_id in aborting:
                position = max(position, header.base_offset + header.last_offset_delta + 1)
                pos += header.size_bytes
                continue
            # Decoded straight into this transport's records (one tuple per record, not two).
            _, records = decode_batch(buf, pos, record_type=Record, leading_fields=tp, null_header_value=b"")
            pos += header.size_bytes
            if records and records[0].offset < position:
                records = [r for r in records if r.offset >= position]  # fetched from inside this batch
            room = max_records - len(out)
            if len(records) > room:
                records = records[:room]
            if records:
                out.extend(records)
                position = records[-1].offset + 1
        self._positions[tp] = position

    def assignment(self) -> list[TopicPartition]:
        return list(self._owned)

    def caught_up(self) -> bool:
        """Whether this member holds its share (no rejoin pending) and has read every owned
        partition to its end (the last stable offset under read_committed), asked of the core at
        once: the test harness calls the app quiet only then."""
        if self._rejoin and self._topics:
            return False
        core = self._core
        for tp in self._owned:
            position = self._positions.get(tp, -1)
            if position < 0 or position < core.end_offset(tp.topic, tp.partition, isolation_level=self._isolation):
                return False
        return True

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        self._paused.update(partitions)

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        self._paused.difference_update(partitions)

    async def commit(self, offsets: Mapping[TopicPartition, int], *, asynchronous: bool = False) -> None:
        if not offsets:
            return
        if self._group_id is None:
            raise CommitError("a consumer outside a group cannot commit")
        codes = await self._core.commit_offsets(
            self._group_id, self._generation, self._member_id,
            [OffsetToCommit(tp.topic, tp.partition, offset) for tp, offset in offsets.items()],
        )
        failed = [c for c in codes if c != ErrorCode.NONE]
        if failed:
            raise CommitError(f"commit to group {self._group_id!r} failed with errors {sorted(set(failed))}")

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self._positions[partition] = offset

    async def committed(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int | None]:
        if self._group_id is None:
            return {tp: None for tp in partitions}
        _, fetched = self._core.groups.fetch_offsets(self._group_id, [(tp.topic, tp.partition) for tp in partitions])
        return {TopicPartition(f.topic, f.partition): (f.offset if f.offset >= 0 else None) for f in fetched}

    async def end_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        out = {}
        for tp in partitions:
            # As a Kafka client's end offsets: the last stable offset when reading committed data.
            result = await self._core.list_offsets(tp.topic, tp.partition, LATEST_TIMESTAMP, isolation_level=self._isolation)
            out[tp] = result.offset
        return out

    def group_metadata(self) -> object:
        return (self._group_id, self._generation, self._member_id)

    def rejoin(self) -> None:
        """Join the group again before the next poll returns anything (see :meth:`Consumer.rejoin`):
        the owned partitions are revoked first and every new one starts at its committed offset."""
        if self._group_id is not None and self._topics:
            self._rejoin = True

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        if self._owned and self._on_revoked is not None and self._topics:
            await self._on_revoked(list(self._owned))
        self._owned = []
        if self._group_id is not None and self._member_id:
            self._core.groups.leave_group(self._group_id, [(self._member_id, None)])


def _broker_settings(query: str) -> dict[str, int]:
    """BrokerConfig keyword arguments from an embedded URL's query (``flush.messages=N``)."""
    settings: dict[str, int] = {}
    for item in filter(None, query.split("&")):  # bounded by the query's length
        key, _, text = item.partition("=")
        if key not in ("flush.messages", "log.flush.interval.messages"):
            raise TransportError(f"unknown embedded:// setting {key!r} (known: flush.messages)")
        if not text.isdigit() or int(text) < 1:
            raise TransportError(f"{key} must be a positive integer, got {text!r}")
        settings["log_flush_interval_messages"] = int(text)
    return settings


class EmbeddedTransport(Transport):
    """The broker core of ``DIR``, shared by every embedded transport of this process.

    Args:
        url: ``embedded://DIR`` (relative paths are relative to the working directory), with
            optional broker settings as a query: ``embedded://DIR?flush.messages=1`` makes every
            topic's default ``flush.messages`` 1 (Kafka's ``log.flush.interval.messages``): a
            produce completes only after an fsync covers it. The first transport to start a
            directory's core decides its settings.
        listen: also serve the Kafka protocol on ``host:port`` so other workers and any Kafka
            tool can connect to this broker.

    Raises:
        TransportError: an unknown setting or a bad value in the URL's query.
    """

    def __init__(
        self, url: str, *, clock: Clock = SYSTEM_CLOCK, listen: str | None = None, broker_clock: Clock | None = None
    ) -> None:
        self.url = url
        self.clock = clock
        self.broker_clock = clock if broker_clock is None else broker_clock
        """The core's clock (group sessions, transaction timeouts, append times); ``clock`` gives
        the timestamps of records sent. The test harness keeps the core on the system clock
        while the app runs on a manual one, so moving the app's time never expires a session."""
        location, _, query = url.removeprefix("embedded://").partition("?")
        self.data_dir = Path(location or "./flowbus-data").resolve()
        self._broker_settings = _broker_settings(query)
        self.listen = listen
        self._handle: _CoreHandle | None = None
        self._started = False
        self._partition_counts: dict[str, int] = {}

    @property
    def core(self) -> BrokerCore:
        if self._handle is None:
            raise TransportError("the embedded transport is not started")
        return self._handle.core

    @property
    def started(self) -> bool:
        """Whether :meth:`start` ran and :meth:`close` did not (``core`` is usable)."""
        return self._started and self._handle is not None

    @property
    def server(self) -> BrokerServer | None:
        """The Kafka-protocol server of ``listen`` (None without it, or before :meth:`start`)."""
        return self._handle.server if self._handle is not None else None

    async def start(self) -> None:
        if self._started:
            return
        handle = _CORES.get(self.data_dir)
        if handle is None:
            host, port = "127.0.0.1", 9092
            security = None
            if self.listen:
                from flowbus.broker.config import parse_host_port
                from flowbus.broker.errors import BrokerConfigError
                from flowbus.broker.security.settings import parse_listen_url

                try:
                    # PROTOCOL://HOST:PORT?... secures it like `flowbus broker` (docs/security.md).
                    if "://" in self.listen:
                        security = parse_listen_url(self.listen)
                        listener = security.listeners[0]
                        host, port = listener.host, listener.port
                    else:
                        host, port = parse_host_port(self.listen)
                except BrokerConfigError as exc:
                    raise TransportError(f"cannot listen on {self.listen!r}: {exc}") from exc
                # Before the data dir is opened: a busy port is then one line, not a broker
                # that loads its logs and closes them again.
                _check_bindable(host, port)
            self._check_data_dir()
            # No initial rebalance delay: an embedded worker is usually its group's first member
            # and should not wait Kafka's 3 s to start; later members trigger a rebalance anyway.
            config = BrokerConfig(
                data_dir=self.data_dir, advertised_host=host, advertised_port=port,
                groups=GroupConfig(group_initial_rebalance_delay_ms=0),
                **self._broker_settings,
            )
            core: BrokerCore | None = None
            try:
                core = BrokerCore(config, clock=self.broker_clock)  # opens (and locks) the data dir
                await core.start()
            except (OSError, LogError) as exc:
                if core is not None:
                    await core.close()
                if isinstance(exc, LogError) and data_dir_in_use(self.data_dir):
                    raise DataDirInUseError(_in_use_message(self.data_dir)) from exc  # taken since the check
                reason = _os_reason(exc) if isinstance(exc, OSError) else str(exc)
                raise TransportError(f"cannot open data dir {self.data_dir}: {reason}") from exc
            handle = _CORES[self.data_dir] = _CoreHandle(core)
            await handle.core.wait_loaded()
            if self.listen:
                from flowbus.broker.errors import BrokerError
                from flowbus.broker.runner import make_server

                try:
                    handle.server = make_server(handle.core, host, port, None, self.broker_clock, security)
                    await handle.server.start()
                except BrokerError as exc:  # credentials file or TLS files unreadable
                    _CORES.pop(self.data_dir, None)
                    await handle.core.close()
                    raise TransportError(f"cannot listen on {self.listen!r}: {exc}") from exc
                except OSError as exc:
                    # Taken since the check: give the data dir back before saying so.
                    _CORES.pop(self.data_dir, None)
                    await handle.core.close()
                    raise TransportError(f"cannot listen on {host}:{port}: {_os_reason(exc)}") from exc
                log.info("embedded broker listening on %s:%d", host, handle.server.port)
        handle.users += 1
        self._handle = handle
        self._started = True

    def _check_data_dir(self) -> None:
        """Refuse, in one sentence each, a data dir that is a file, one whose parent is not a
        directory, or one another process holds (a worker or ``flowbus broker``)."""
        path = self.data_dir
        if path.exists() and not path.is_dir():
            raise TransportError(f"cannot open data dir {path}: it is a file, not a directory")
        for parent in path.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise TransportError(f"cannot create data dir {path}: {parent} is a file, not a directory")
                break
        if data_dir_in_use(path):
            raise DataDirInUseError(_in_use_message(path))

    async def close(self) -> None:
        if not self._started or self._handle is None:
            return
        self._started = False
        handle = self._handle
        handle.users -= 1
        if handle.users == 0:
            _CORES.pop(self.data_dir, None)
            if handle.server is not None:
                await handle.server.close()
            await handle.core.close()

    def partition_count(self, topic: str) -> int:
        """Partitions of ``topic``, cached (partition counts never change here); auto-creates it."""
        count = self._partition_counts.get(topic)
        if count is None:
            meta = self.core.logs.topics().get(topic)
            if meta is None:
                # Auto-create on first use, as the broker does for Metadata requests.
                meta = self.core.logs.create_topic(topic, self.core.config.auto_create_topics_partitions, {})
            count = self._partition_counts[topic] = meta.partitions
        return count

    async def create_topics(self, specs: Sequence[TopicSpec]) -> None:
        await self.start()
        results = await self.core.create_topics(
            [CoreNewTopic(s.name, s.partitions, s.replication_factor, dict(s.config)) for s in specs],
            sliced=False,  # each topic whole: partition_count() may auto-create it synchronously
        )
        for result in results:
            if result.error_code not in (ErrorCode.NONE, ErrorCode.TOPIC_ALREADY_EXISTS):
                raise TransportError(f"creating topic {result.name!r} failed: {result.error_message}")

    async def describe_topics(self, names: Sequence[str]) -> dict[str, TopicDescription]:
        await self.start()
        topics = self.core.logs.topics()
        return {n: TopicDescription(n, topics[n].partitions) for n in names if n in topics}

    def producer(self, *, transactional_id: str | None = None, linger_ms: int = 5) -> EmbeddedProducer:
        return EmbeddedProducer(self, transactional_id)

    def consumer(self, group_id: str | None, *, isolation_level: IsolationLevel = "read_uncommitted",
                 auto_offset_reset: Literal["earliest", "latest"] = "earliest", client_id: str | None = None) -> EmbeddedConsumer:
        return EmbeddedConsumer(self, group_id, isolation_level, auto_offset_reset, client_id or "flowbus-embedded")

    # -- administration ---------------------------------------------------------------------
    # In-process: the core answers at once, so ``timeout_s`` has nothing to bound.

    async def list_topics(self, *, timeout_s: float | None = None) -> list[str]:
        await self.start()
        return self.topics_now()

    async def delete_topics(self, names: Sequence[str], *, timeout_s: float | None = None) -> None:
        await self.start()
        missing = []
        for name, code in await self.core.delete_topics(list(names)):
            self._partition_counts.pop(name, None)
            if code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION:
                missing.append(name)
            elif code != ErrorCode.NONE:
                raise TransportError(f"deleting topic {name!r} failed with error {code}")
        if missing:
            raise TopicNotFoundError(f"no topic {', '.join(map(repr, missing))}")

    async def topic_configs(self, name: str, *, timeout_s: float | None = None) -> dict[str, str]:
        await self.start()
        [result] = await self.core.describe_configs([(RESOURCE_TOPIC, name, None)])
        if result.error_code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION:
            raise TopicNotFoundError(f"no topic {name!r}")
        if result.error_code != ErrorCode.NONE:
            raise TransportError(f"describing topic {name!r} failed: {result.error_message}")
        return {
            c.name: c.value or ""
            for c in result.configs
            if c.source == CONFIG_SOURCE_DYNAMIC_TOPIC
        }

    async def watermarks(
        self, partitions: Sequence[TopicPartition], *, timeout_s: float | None = None
    ) -> dict[TopicPartition, Watermarks]:
        await self.start()
        out: dict[TopicPartition, Watermarks] = {}
        for tp in partitions:
            low = await self.core.list_offsets(tp.topic, tp.partition, EARLIEST_TIMESTAMP)
            high = await self.core.list_offsets(tp.topic, tp.partition, LATEST_TIMESTAMP)
            if ErrorCode.UNKNOWN_TOPIC_OR_PARTITION in (low.error_code, high.error_code):
                raise TopicNotFoundError(f"no partition {tp.partition} of topic {tp.topic!r}")
            if low.error_code != ErrorCode.NONE or high.error_code != ErrorCode.NONE:
                raise TransportError(f"listing offsets of {tp.topic}[{tp.partition}] failed")
            out[tp] = Watermarks(low.offset, high.offset)
        return out

    async def list_groups(self, *, timeout_s: float | None = None) -> list[GroupSummary]:
        await self.start()
        await self.core.wait_loaded()
        code, listings = self.core.groups.list_groups()
        if code != ErrorCode.NONE:
            raise TransportError(f"listing groups failed with error {code}")
        return sorted((GroupSummary(g.group_id, g.state) for g in listings), key=lambda g: g.group_id)

    async def describe_group(self, group_id: str, *, timeout_s: float | None = None) -> GroupDescription:
        await self.start()
        await self.core.wait_loaded()
        described = self.core.groups.describe_group(group_id)
        if described.error_code != ErrorCode.NONE:
            raise TransportError(f"describing group {group_id!r} failed with error {described.error_code}")
        consumer_protocol = described.protocol_type == "consumer"
        members = tuple(
            GroupMember(
                m.member_id, m.client_id, m.client_host,
                tuple(decode_assignment(m.assignment)) if consumer_protocol else (),
            )
            for m in described.members
        )
        return GroupDescription(group_id, described.state, members)

    def read_records(self, topic: str, *, committed_only: bool = False) -> list[Record]:
        """Every record of ``topic`` now in the log, partition by partition in offset order, read
        at once without a consumer group: what a read_committed reader sees (``committed_only``),
        or also the records of open transactions; records of aborted transactions are always
        left out. For tests and tools; the transport must be started.

        Raises:
            TopicNotFoundError: no such topic.
        """
        core = self.core
        if topic not in core.logs.topics():
            raise TopicNotFoundError(f"no topic {topic!r}")
        isolation = ISOLATION_READ_COMMITTED if committed_only else ISOLATION_READ_UNCOMMITTED
        reader = EmbeddedConsumer(self, None, "read_committed" if committed_only else "read_uncommitted",
                                  "earliest", "flowbus-reader")
        out: list[Record] = []
        for partition in range(core.logs.topic(topic).partitions):
            tp = TopicPartition(topic, partition)
            position = core.log_start_offset(topic, partition)
            end = core.end_offset(topic, partition, isolation_level=isolation)
            while position < end:  # each round moves the position on, or stops
                [result] = core.read_now(
                    [FetchRequestPartition(topic, partition, position, FETCH_PARTITION_BYTES_MAX)],
                    max_bytes=FETCH_RESPONSE_BYTES_MAX, isolation_level=isolation,
                )
                if result.error_code != ErrorCode.NONE:
                    raise TransportError(f"reading {topic}[{partition}] at {position} failed with error {result.error_code}")
                if not result.records:
                    break
                aborted = (result.aborted_transactions if committed_only
                           else core.aborted_transactions(topic, partition, position, end))
                reader._positions[tp] = position
                reader._decode_into(tp, result.records, out, READ_RECORDS_MAX, aborted)
                if reader._positions[tp] <= position:
                    break
                position = reader._positions[tp]
        return out

    def topics_now(self) -> list[str]:
        """The names of every topic, at once (the core is in this process)."""
        return sorted(self.core.logs.topics())

    def group_offsets_now(self, group_id: str) -> dict[TopicPartition, int]:
        """The committed offsets of ``group_id``, at once (the core is in this process)."""
        code, fetched = self.core.groups.fetch_offsets(group_id, None)
        if code != ErrorCode.NONE:
            raise TransportError(f"fetching offsets of group {group_id!r} failed with error {code}")
        return {TopicPartition(f.topic, f.partition): f.offset for f in fetched if f.offset >= 0}

    async def group_offsets(
        self, group_id: str, *, timeout_s: float | None = None
    ) -> dict[TopicPartition, int]:
        await self.start()
        await self.core.wait_loaded()
        return self.group_offsets_now(group_id)
