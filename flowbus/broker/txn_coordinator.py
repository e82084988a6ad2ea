"""The transaction coordinator: Kafka's transactions (KIP-98) on a single broker.

A transactional producer (``transactional.id``) talks to the coordinator of its id — always
this broker — in this order:

1. **InitProducerId** with the transactional id: a producer id for a new id, or the same id
   with the epoch bumped. The bump fences every older instance: their requests now carry an
   older epoch and are refused (PRODUCER_FENCED on the versions that know it, else
   INVALID_PRODUCER_EPOCH). A transaction the old instance left open is aborted first.
2. **AddPartitionsToTxn** before the first write to a partition, **AddOffsetsToTxn** before
   **TxnOffsetCommit** (offsets go to the group's ``__consumer_offsets`` partition, pending).
3. **EndTxn** commit or abort: the decision is logged (PrepareCommit/PrepareAbort), a control
   batch (marker) is appended to every partition of the transaction and to the offsets
   partitions, pending offsets are applied or dropped, and the end is logged
   (CompleteCommit/CompleteAbort).

Every state change is appended to ``__transaction_state`` (see ``txn_state.py``) before it is
acted on or answered, so a restarted broker finds each transaction where it was. Recovery
never leaves one open: PrepareCommit/PrepareAbort are finished (the missing markers are
written — a second marker for a transaction already ended in a partition is harmless), and an
Ongoing one is aborted with a bumped epoch (its producer may still be alive and must not add
to it). An open transaction would hold every read_committed consumer at its first offset.

Markers are written synchronously, on the event loop, before EndTxn is answered; writes are
page-cache appends, so this takes well under a millisecond per partition.

Durable acks (issue 10, item 2): when ``__transaction_state`` has ``flush.messages=1`` (the
broker-wide ``--flush-messages 1``), an answer that reports a state change (InitProducerId,
AddPartitionsToTxn, AddOffsetsToTxn, EndTxn) is sent only once the record it wrote is fsynced:
the API methods stay synchronous (they write and return), and the caller — the network
handler or the embedded transport — awaits :meth:`TransactionCoordinator.wait_durable` before
answering, sharing the group commit's fsyncs with every other waiter of the log. An end is
then completed in two steps: the decision (PrepareCommit/PrepareAbort) and the markers are
written at once, and the completion (CompleteCommit/CompleteAbort) is logged only after the
decision *and every marker* are fsynced, so a durable completion never names markers a
machine crash could take away (recovery only finishes transactions still in Prepare). EndTxn
is answered at that point, which is later than Kafka (it answers once the decision is
replicated) but means a retried request never meets the Prepare state. Without that setting
nothing waits and an end completes synchronously, as before.

When a marker write (or, with durable acks, its fsync) fails the transaction stays in its
Prepare state, requests for it answer CONCURRENT_TRANSACTIONS (clients retry), and the periodic
:meth:`TransactionCoordinator.tick` retries the markers. The tick also aborts transactions
open for longer than their ``transaction.timeout.ms``, bumping the epoch as Kafka does, so a
producer that went silent cannot commit a transaction whose data consumers were told to wait for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flowbus.broker.errors import InternalTopicError
from flowbus.broker.group_coordinator import OffsetToCommit
from flowbus.broker.txn_state import (
    MAX_PRODUCER_EPOCH,
    TXN_STATE_TOPIC,
    TxnMetadata,
    TxnState,
    decode_txn_record,
    encode_txn_key,
    encode_txn_value,
)
from flowbus.clock import Clock
from flowbus.errors import FlowbusError
from flowbus.log.errors import LogError
from flowbus.protocol.error_codes import ErrorCode
from flowbus.records.builder import BatchBuilder
from flowbus.records.errors import CorruptRecordError
from flowbus.records.record import decode_batch

if TYPE_CHECKING:
    from flowbus.broker.core import BrokerCore
    from flowbus.broker.group_commit import InternalAppend

log = logging.getLogger(__name__)

#: Kafka's ``transaction.max.timeout.ms`` default: longer client timeouts are refused.
TRANSACTION_MAX_TIMEOUT_MS = 900_000
#: Transactions aborted for timeout per tick; the rest wait for the next tick (bounded work).
TIMEOUT_ABORTS_PER_TICK_MAX = 100


@dataclass(frozen=True, slots=True)
class TxnConfig:
    """Limits of the transaction coordinator (Kafka's broker setting names)."""

    transaction_max_timeout_ms: int = TRANSACTION_MAX_TIMEOUT_MS
    #: Partitions of ``__transaction_state``; one is plenty for a single broker.
    transaction_state_topic_partitions: int = 1


@dataclass(frozen=True, slots=True)
class InitPidResult:
    error_code: int
    producer_id: int = -1
    producer_epoch: int = -1


class TransactionCoordinator:
    """Every transactional id of this broker.

    Args:
        core: the broker (logs, producer ids, markers, the group coordinator's hook).
        clock: ``monotonic_ms`` is not used: transaction timeouts are measured on the wall
            clock, as Kafka's are, because start times are persisted across restarts.
        config: limits.

    Error codes returned use PRODUCER_FENCED for a fenced producer; the handlers turn it into
    INVALID_PRODUCER_EPOCH for API versions older than KIP-588.
    """

    def __init__(
        self, core: BrokerCore, *, clock: Clock, config: TxnConfig | None = None
    ) -> None:
        self._core = core
        self._clock = clock
        self.config = config or TxnConfig()
        self._txns: dict[str, TxnMetadata] = {}
        self._by_producer: dict[int, TxnMetadata] = {}
        #: True until :meth:`load` finished recovery: requests answer COORDINATOR_LOAD_IN_PROGRESS.
        self.loading = True
        #: Transactions this coordinator completed since start (the metrics' counters; a
        #: completion replayed from the log at start-up is not counted again).
        self.committed_count = 0
        self.aborted_count = 0
        #: Durable acks: each transactional id's last state record whose log asked for an fsync
        #: (its answer waits for it, see :meth:`wait_durable`).
        self._unsynced: dict[str, InternalAppend] = {}
        #: Durable acks: ends whose completion waits for the fsync of their decision and markers.
        self._completing: dict[str, asyncio.Task[int]] = {}

    # -- loading and recovery --------------------------------------------------------------

    def ensure_topic(self) -> None:
        logs = self._core.logs
        if TXN_STATE_TOPIC not in logs.topics():
            logs.create_topic(
                TXN_STATE_TOPIC,
                self.config.transaction_state_topic_partitions,
                {"cleanup.policy": "compact", "segment.bytes": str(100 * 1024 * 1024)},
            )

    def load(self) -> int:
        """Replay ``__transaction_state`` and finish or abort every transaction left in flight.

        Runs after committed offsets are loaded (pending transactional offsets must be known
        before markers resolve them). Returns how many transactions recovery ended.
        """
        logs = self._core.logs
        for partition in range(logs.topic(TXN_STATE_TOPIC).partitions):
            plog = logs.get_log(TXN_STATE_TOPIC, partition)
            for header, raw in plog.iter_batches(plog.log_start_offset):
                if header.is_control:
                    continue
                try:
                    _, records = decode_batch(raw)
                except CorruptRecordError as exc:
                    log.warning("skipping a corrupt batch of %s: %s", TXN_STATE_TOPIC, exc)
                    continue
                for record in records:
                    self._load_record(record.key, record.value)
        ended = 0
        for meta in list(self._txns.values()):
            if meta.state is TxnState.ONGOING:
                log.info(
                    "recovery: aborting transaction of %r left open", meta.transactional_id
                )
                self._end(meta, commit=False, fence=True)
                ended += 1
            elif meta.state.is_preparing:
                commit = meta.state is TxnState.PREPARE_COMMIT
                log.info(
                    "recovery: completing the %s of %r",
                    "commit" if commit else "abort",
                    meta.transactional_id,
                )
                self._complete(meta, commit)
                ended += 1
        # Transactional offsets whose transaction no longer exists were never committed.
        known = {m.producer_id for m in self._txns.values()}
        for producer_id in self._core.groups.pending_txn_producers() - known:
            self._core.groups.complete_txn_offsets(producer_id, commit=False)
        self.loading = False
        return ended

    def _load_record(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        try:
            decoded = decode_txn_record(key, value)
        except InternalTopicError as exc:
            log.warning("skipping a malformed record in %s: %s", TXN_STATE_TOPIC, exc)
            return
        if decoded is None:
            return
        transactional_id, meta = decoded
        old = self._txns.pop(transactional_id, None)
        if old is not None and self._by_producer.get(old.producer_id) is old:
            del self._by_producer[old.producer_id]
        if meta is not None:
            self._txns[transactional_id] = meta
            self._by_producer[meta.producer_id] = meta

    # -- persistence -----------------------------------------------------------------------

    def _partition_for(self, transactional_id: str) -> int:
        return zlib.crc32(transactional_id.encode()) % self.config.transaction_state_topic_partitions

    def _persist(self, meta: TxnMetadata) -> None:
        """Append the metadata's current state (durable against a process crash on return).

        When the log's flush policy asks for this record's fsync, it is remembered for
        :meth:`wait_durable` (the group commit is already fsyncing it).
        """
        meta.update_ms = self._clock.now_ms()
        builder = BatchBuilder()
        builder.append(
            encode_txn_key(meta.transactional_id),
            encode_txn_value(meta),
            timestamp_ms=meta.update_ms,
        )
        appended = self._core.append_internal(
            TXN_STATE_TOPIC, self._partition_for(meta.transactional_id), builder.build()
        )
        if appended.flush_required:
            self._unsynced[meta.transactional_id] = appended
        else:
            self._unsynced.pop(meta.transactional_id, None)

    def _durable_acks(self, transactional_id: str) -> bool:
        """Does the id's ``__transaction_state`` partition fsync every record (``flush.messages=1``)?"""
        plog = self._core.logs.get_log(TXN_STATE_TOPIC, self._partition_for(transactional_id))
        return plog.config.flush_messages <= 1

    async def wait_durable(self, transactional_id: str) -> int:
        """Wait until the last state change of the id may be reported; an error code.

        Call after an API method succeeded and before answering it. Returns at once (NONE)
        without durable acks. With them: an end waits for its completion (decision and
        markers fsynced, completion logged); any other change for the fsync of its record.
        A failed fsync is NOT_COORDINATOR, as Kafka's coordinator maps a storage error, so
        clients retry; the record stays in the log and the retry's wait fsyncs it again.
        """
        completing = self._completing.get(transactional_id)
        if completing is not None:
            return await asyncio.shield(completing)
        appended = self._unsynced.get(transactional_id)
        if appended is None:
            return ErrorCode.NONE
        error = await self._core.wait_durable(
            appended.topic, appended.partition, appended.end_offset
        )
        if error != ErrorCode.NONE:
            return ErrorCode.NOT_COORDINATOR
        if self._unsynced.get(transactional_id) is appended:
            del self._unsynced[transactional_id]
        return ErrorCode.NONE

    async def close(self) -> None:
        """Let completions waiting for an fsync finish (call before the logs close)."""
        for task in list(self._completing.values()):  # bounded by the transactional ids
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(task)

    # -- producer checks -------------------------------------------------------------------

    def _check(
        self, transactional_id: str, producer_id: int, producer_epoch: int
    ) -> tuple[int, TxnMetadata | None]:
        if self.loading:
            return ErrorCode.COORDINATOR_LOAD_IN_PROGRESS, None
        if not transactional_id:
            return ErrorCode.INVALID_REQUEST, None
        meta = self._txns.get(transactional_id)
        if meta is None or meta.producer_id != producer_id:
            return ErrorCode.INVALID_PRODUCER_ID_MAPPING, None
        if producer_epoch != meta.producer_epoch:
            return ErrorCode.PRODUCER_FENCED, None
        if meta.state.is_preparing:
            return ErrorCode.CONCURRENT_TRANSACTIONS, None
        return ErrorCode.NONE, meta

    def check_produce(
        self, producer_id: int, producer_epoch: int, topic: str, partition: int
    ) -> int:
        """May this transactional batch be appended? (Called by the produce path.)

        A batch of an older epoch is a zombie (INVALID_PRODUCER_EPOCH, what Kafka's produce
        answers); a partition not added to the producer's open transaction is INVALID_TXN_STATE
        (KIP-890's verification): without the AddPartitionsToTxn, no marker would ever end it.
        """
        if self.loading:
            return ErrorCode.NOT_ENOUGH_REPLICAS  # retriable: recovery is still running
        meta = self._by_producer.get(producer_id)
        if meta is None:
            return ErrorCode.INVALID_TXN_STATE  # not a transactional producer: no transaction
        if producer_epoch != meta.producer_epoch:
            return ErrorCode.INVALID_PRODUCER_EPOCH
        if meta.state is not TxnState.ONGOING or (topic, partition) not in meta.partitions:
            return ErrorCode.INVALID_TXN_STATE
        return ErrorCode.NONE

    # -- APIs ------------------------------------------------------------------------------

    def init_producer_id(
        self,
        transactional_id: str,
        transaction_timeout_ms: int,
        producer_id: int = -1,
        producer_epoch: int = -1,
    ) -> InitPidResult:
        """InitProducerId with a transactional id: a new producer id, or an epoch bump that fences.

        ``producer_id``/``producer_epoch`` (v3+, KIP-360) are set when a running producer asks
        for a bump after an abortable error; they must match the current ones.
        """
        if self.loading:
            return InitPidResult(ErrorCode.COORDINATOR_LOAD_IN_PROGRESS)
        if not 0 < transaction_timeout_ms <= self.config.transaction_max_timeout_ms:
            return InitPidResult(ErrorCode.INVALID_TRANSACTION_TIMEOUT)
        meta = self._txns.get(transactional_id)
        if meta is None:
            meta = TxnMetadata(
                transactional_id,
                self._core.allocate_producer_id(),
                0,
                transaction_timeout_ms,
            )
            self._txns[transactional_id] = meta
            self._by_producer[meta.producer_id] = meta
            self._persist(meta)
            return InitPidResult(ErrorCode.NONE, meta.producer_id, meta.producer_epoch)
        if meta.state.is_preparing:
            return InitPidResult(ErrorCode.CONCURRENT_TRANSACTIONS)
        if producer_id >= 0 and (
            producer_id != meta.producer_id or producer_epoch != meta.producer_epoch
        ):
            return InitPidResult(ErrorCode.PRODUCER_FENCED)
        bumped = meta.state is TxnState.ONGOING
        if bumped:
            # The previous instance's transaction: abort it with a bumped epoch, which is also
            # the epoch handed to the new instance (the markers already fence the old one). If
            # its markers cannot be written yet, the abort stays in PrepareAbort for the tick
            # and the client retries on CONCURRENT_TRANSACTIONS.
            error = self._end(meta, commit=False, fence=True)
            if error != ErrorCode.NONE:
                return InitPidResult(error)
            if transactional_id in self._completing:
                # Durable acks: the abort completes once its markers are fsynced; the client
                # retries on CONCURRENT_TRANSACTIONS, as with Kafka's fencing InitProducerId.
                return InitPidResult(ErrorCode.CONCURRENT_TRANSACTIONS)
        if not bumped or meta.producer_epoch >= MAX_PRODUCER_EPOCH - 1:
            self._bump(meta)
        meta.transaction_timeout_ms = transaction_timeout_ms
        meta.state = TxnState.EMPTY
        meta.partitions = set()
        meta.groups = set()
        meta.txn_start_ms = -1
        self._persist(meta)
        return InitPidResult(ErrorCode.NONE, meta.producer_id, meta.producer_epoch)

    def _bump(self, meta: TxnMetadata) -> None:
        """Next epoch, or a fresh producer id when the epoch space is used up."""
        if meta.producer_epoch + 1 >= MAX_PRODUCER_EPOCH:
            if self._by_producer.get(meta.producer_id) is meta:
                del self._by_producer[meta.producer_id]
            meta.producer_id = self._core.allocate_producer_id()
            meta.producer_epoch = 0
            self._by_producer[meta.producer_id] = meta
        else:
            meta.producer_epoch += 1

    def add_partitions(
        self,
        transactional_id: str,
        producer_id: int,
        producer_epoch: int,
        partitions: Iterable[tuple[str, int]],
    ) -> dict[tuple[str, int], int]:
        """AddPartitionsToTxn: one error per partition (all fail together, as in Kafka)."""
        wanted = list(dict.fromkeys(partitions))
        error, meta = self._check(transactional_id, producer_id, producer_epoch)
        if meta is None:
            return {tp: error for tp in wanted}
        unknown = {tp for tp in wanted if not self._core.partition_exists(*tp)}
        if unknown:
            return {
                tp: ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
                if tp in unknown
                else ErrorCode.OPERATION_NOT_ATTEMPTED
                for tp in wanted
            }
        self._add(meta, wanted)
        return {tp: ErrorCode.NONE for tp in wanted}

    def _add(self, meta: TxnMetadata, partitions: list[tuple[str, int]]) -> None:
        new = [tp for tp in partitions if tp not in meta.partitions]
        if not new and meta.state is TxnState.ONGOING:
            return
        if meta.state is not TxnState.ONGOING:
            meta.state = TxnState.ONGOING
            meta.partitions = set()
            meta.groups = set()
            meta.txn_start_ms = self._clock.now_ms()
        meta.partitions.update(new)
        self._persist(meta)

    def add_offsets(
        self, transactional_id: str, producer_id: int, producer_epoch: int, group_id: str
    ) -> int:
        """AddOffsetsToTxn: the group's offsets partition joins the transaction."""
        error, meta = self._check(transactional_id, producer_id, producer_epoch)
        if meta is None:
            return error
        if not group_id:
            return ErrorCode.INVALID_GROUP_ID
        self._add(meta, [self._core.offsets_partition_key(group_id)])
        meta.groups.add(group_id)
        return ErrorCode.NONE

    async def txn_offset_commit(
        self,
        transactional_id: str,
        group_id: str,
        producer_id: int,
        producer_epoch: int,
        generation_id: int,
        member_id: str,
        offsets: list[OffsetToCommit],
        group_instance_id: str | None = None,
    ) -> list[int]:
        """TxnOffsetCommit: offsets pending in the transaction, visible to OffsetFetch on commit.

        ``generation_id``, ``member_id`` and ``group_instance_id`` (v3+, KIP-447) are the
        consumer's group metadata: a member the group no longer has, or one of an older
        generation, is refused (UNKNOWN_MEMBER_ID, ILLEGAL_GENERATION, FENCED_INSTANCE_ID) and
        nothing is written; the client must then abort the transaction.
        """
        error, meta = self._check(transactional_id, producer_id, producer_epoch)
        if meta is None:
            return [error] * len(offsets)
        if (
            meta.state is not TxnState.ONGOING
            or self._core.offsets_partition_key(group_id) not in meta.partitions
        ):
            return [ErrorCode.INVALID_TXN_STATE] * len(offsets)
        return await self._core.groups.commit_txn_offsets(
            group_id,
            producer_id,
            producer_epoch,
            generation_id,
            member_id,
            offsets,
            partition_exists=self._core.partition_exists,
            group_instance_id=group_instance_id,
        )

    def end_txn(
        self, transactional_id: str, producer_id: int, producer_epoch: int, commit: bool
    ) -> int:
        """EndTxn: markers everywhere, then the end is logged; a retried end succeeds again."""
        error, meta = self._check(transactional_id, producer_id, producer_epoch)
        if meta is None:
            return error
        if meta.state is TxnState.ONGOING:
            return self._end(meta, commit=commit, fence=False)
        if meta.state is TxnState.COMPLETE_COMMIT and commit:
            return ErrorCode.NONE  # a retry of an end that already happened
        if meta.state is TxnState.COMPLETE_ABORT and not commit:
            return ErrorCode.NONE
        return ErrorCode.INVALID_TXN_STATE

    def _end(self, meta: TxnMetadata, *, commit: bool, fence: bool) -> int:
        """Log the decision, then complete it; ``fence`` bumps the epoch first (zombie abort)."""
        if fence:
            self._bump(meta)
        meta.state = TxnState.PREPARE_COMMIT if commit else TxnState.PREPARE_ABORT
        self._persist(meta)
        return self._complete(meta, commit)

    def _complete(self, meta: TxnMetadata, commit: bool) -> int:
        """Write every marker and log the completion; on failure stay in Prepare for the tick.

        With durable acks the completion is logged later, by :meth:`_complete_when_durable`.
        """
        markers: list[InternalAppend] = []
        try:
            for topic, partition in sorted(meta.partitions):
                marker = self._core.write_txn_marker(
                    topic, partition, meta.producer_id, meta.producer_epoch, commit
                )
                if marker is not None:
                    markers.append(marker)
        except (LogError, FlowbusError, OSError) as exc:
            log.error(
                "writing markers for %r failed (will retry): %s", meta.transactional_id, exc
            )
            return ErrorCode.CONCURRENT_TRANSACTIONS
        if not self._durable_acks(meta.transactional_id):
            self._log_completion(meta, commit)
            return ErrorCode.NONE
        # The decision is waited for up to the state log's end: it may have been written by
        # this run (not fsynced yet) or replayed after a process crash (maybe never fsynced).
        state_partition = self._partition_for(meta.transactional_id)
        state_end = self._core.logs.get_log(TXN_STATE_TOPIC, state_partition).log_end_offset
        waits = [(TXN_STATE_TOPIC, state_partition, state_end)]
        waits.extend((m.topic, m.partition, m.end_offset) for m in markers)
        self._completing[meta.transactional_id] = asyncio.get_running_loop().create_task(
            self._complete_when_durable(meta, commit, waits),
            name=f"flowbus-txn-complete-{meta.transactional_id}",
        )
        return ErrorCode.NONE

    async def _complete_when_durable(
        self, meta: TxnMetadata, commit: bool, waits: list[tuple[str, int, int]]
    ) -> int:
        """Log the completion once the decision and every marker are fsynced; an error code.

        The fsyncs run concurrently, one per log, shared with every other waiter. On failure
        the transaction stays in Prepare and the tick writes the markers and waits again.
        """
        try:
            errors = await asyncio.gather(
                *(self._core.wait_durable(topic, partition, end) for topic, partition, end in waits)
            )
        except (LogError, FlowbusError, OSError) as exc:  # e.g. a partition deleted meanwhile
            log.error("fsync for the end of %r failed (will retry): %s", meta.transactional_id, exc)
            errors = [ErrorCode.KAFKA_STORAGE_ERROR]
        finally:
            self._completing.pop(meta.transactional_id, None)
        if any(error != ErrorCode.NONE for error in errors):
            log.error("fsync for the end of %r failed (will retry): %s", meta.transactional_id, errors)
            return ErrorCode.NOT_COORDINATOR
        if not meta.state.is_preparing:  # nothing else may change a preparing transaction
            return ErrorCode.NONE
        try:
            self._log_completion(meta, commit)
        except (LogError, FlowbusError, OSError) as exc:
            log.error("logging the end of %r failed: %s", meta.transactional_id, exc)
            return ErrorCode.NOT_COORDINATOR
        return ErrorCode.NONE

    def _log_completion(self, meta: TxnMetadata, commit: bool) -> None:
        """Apply or drop the pending offsets and log CompleteCommit/CompleteAbort."""
        self._core.groups.complete_txn_offsets(meta.producer_id, commit)
        meta.state = TxnState.COMPLETE_COMMIT if commit else TxnState.COMPLETE_ABORT
        if commit:
            self.committed_count += 1
        else:
            self.aborted_count += 1
        meta.partitions = set()
        meta.groups = set()
        meta.txn_start_ms = -1
        self._persist(meta)

    # -- time ------------------------------------------------------------------------------

    def tick(self) -> int:
        """Abort transactions past their timeout; retry unfinished ends. Returns how many ended."""
        if self.loading:
            return 0
        now_ms = self._clock.now_ms()
        ended = 0
        for meta in list(self._txns.values()):
            if ended >= TIMEOUT_ABORTS_PER_TICK_MAX:
                break
            if meta.transactional_id in self._completing:
                continue  # its completion waits for an fsync
            if meta.state.is_preparing:
                commit = meta.state is TxnState.PREPARE_COMMIT
                if self._complete(meta, commit) == ErrorCode.NONE:
                    ended += 1
            elif (
                meta.state is TxnState.ONGOING
                and now_ms - meta.txn_start_ms > meta.transaction_timeout_ms
            ):
                log.info(
                    "aborting transaction of %r after its timeout of %d ms",
                    meta.transactional_id,
                    meta.transaction_timeout_ms,
                )
                self._end(meta, commit=False, fence=True)
                ended += 1
        return ended

    # -- inspection ------------------------------------------------------------------------

    def describe(self, transactional_id: str) -> TxnMetadata | None:
        """The metadata of a transactional id (tests and tools)."""
        return self._txns.get(transactional_id)

    def describe_transactions(
        self, transactional_ids: list[str]
    ) -> list[tuple[str, int, TxnMetadata | None]]:
        """DescribeTransactions: ``(transactional id, error, metadata)`` per id asked for.

        An id the coordinator does not know (or one in the transient Dead state, as Kafka
        treats it) is TRANSACTIONAL_ID_NOT_FOUND; while recovery runs every id answers
        COORDINATOR_LOAD_IN_PROGRESS, which clients retry.
        """
        results: list[tuple[str, int, TxnMetadata | None]] = []
        for transactional_id in transactional_ids:  # bounded by the request's element limit
            if self.loading:
                results.append((transactional_id, ErrorCode.COORDINATOR_LOAD_IN_PROGRESS, None))
                continue
            meta = self._txns.get(transactional_id)
            if meta is None or meta.state is TxnState.DEAD:
                results.append((transactional_id, ErrorCode.TRANSACTIONAL_ID_NOT_FOUND, None))
            else:
                results.append((transactional_id, ErrorCode.NONE, meta))
        return results

    def list_transactions(
        self,
        state_names: list[str],
        producer_ids: list[int],
        duration_min_ms: int = -1,
    ) -> tuple[int, list[str], list[TxnMetadata]]:
        """ListTransactions: ``(error, unknown state names, matching transactions)``.

        Filters as Kafka's coordinator applies them: an empty list does not filter; state
        names are matched exactly (``Ongoing``), and names that are no state come back as
        unknown (they match nothing); Dead ids are never listed. ``duration_min_ms`` >= 0
        (v1, KIP-994) keeps transactions running longer than that; unlike Kafka, which
        compares with a start time of -1 as if it were a time, a transaction that has not
        started (no start time) is not "running" and is left out.
        """
        if self.loading:
            return ErrorCode.COORDINATOR_LOAD_IN_PROGRESS, [], []
        unknown = [name for name in state_names if TxnState.from_kafka_name(name) is None]
        states = {TxnState.from_kafka_name(name) for name in state_names} - {None}
        wanted_pids = set(producer_ids)
        now_ms = self._clock.now_ms()
        listed = [
            meta
            for meta in self._txns.values()  # bounded by the transactional ids
            if meta.state is not TxnState.DEAD
            and (not wanted_pids or meta.producer_id in wanted_pids)
            and (not state_names or meta.state in states)
            and (
                duration_min_ms < 0
                or (meta.txn_start_ms >= 0 and now_ms - meta.txn_start_ms > duration_min_ms)
            )
        ]
        return ErrorCode.NONE, unknown, listed

    def coordinator_epoch_of(self, producer_id: int) -> int:
        """The coordinator epoch in the markers of this producer (DescribeProducers).

        flowbus's coordinator writes every marker with epoch 0 (one broker: its epoch never
        changes), so a producer of a transactional id has 0; any other producer never gets a
        marker and reports -1, Kafka's "none".
        """
        return 0 if producer_id in self._by_producer else -1
