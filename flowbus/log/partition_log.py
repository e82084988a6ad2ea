"""One partition's log: append, read, lookup by time, roll, flush, retention hooks.

The broker's asyncio thread calls everything here except :meth:`PartitionLog.flush`, which it
may call from a worker thread so the event loop never waits for the disk. One lock guards the
in-memory state; it is held for the short, page-cache-speed work of an append or read, never
across an fsync: a flush takes duplicates of the dirty descriptors under the lock, fsyncs them
outside it, then records the new recovery point under the lock again.

Descriptors: the active segment keeps its files open. An inactive segment opens its records file
when read and keeps it while it is among the :data:`INACTIVE_SEGMENTS_OPEN_MAX` most recently
used of its partition and was used within :data:`IDLE_SEGMENT_CLOSE_MS`; the rest are released
(synced first: a segment with unsynced writes keeps its files until the flush). A roll asks the
owner (:attr:`PartitionLog.descriptors_free`) whether three more descriptors fit its budget.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from flowbus.clock import SYSTEM_CLOCK, Clock
from flowbus.log.checkpoint import (
    PartitionCheckpoint,
    fsync_directory,
    write_checkpoint,
)
from flowbus.log.config import TopicConfig
from flowbus.log.errors import (
    LogClosedError,
    OffsetOutOfRangeError,
    RecordTooLargeError,
    StorageError,
)
from flowbus.log.loader import DELETED_SUFFIX, load_partition
from flowbus.log.segment import MAX_RELATIVE_OFFSET, LogSegment, SegmentLimits
from flowbus.log.segments import LogSegments
from flowbus.log.txn_index import AbortedTxn
from flowbus.records.errors import CorruptRecordError
from flowbus.records.header import (
    BatchHeader,
    iter_batches,
    read_header,
    set_base_offset,
    set_leader_epoch,
    set_log_append_time,
)
from flowbus.records.record import decode_batch
from flowbus.records.validate import fix_max_timestamp

log = logging.getLogger(__name__)

#: Minimum gap between two checkpoint writes caused by flushes (flush.messages=1 would
#: otherwise rewrite the file on every append). A stale checkpoint only costs re-validation.
CHECKPOINT_INTERVAL_MS = 100
#: Largest buffer one append() accepts: Kafka's socket.request.max.bytes bounds a produce request.
MAX_APPEND_BYTES = 100 * 1024 * 1024
#: Segments waiting for their files to be deleted; more than this and the oldest go at once.
MAX_PENDING_DELETES = 10_000
#: Segments whose files one flush round fsyncs together: up to four duplicated descriptors each
#: (records and three indexes), so a flush after a burst of rolls stays well inside the headroom
#: the descriptor budget leaves (at least 64).
FLUSH_SEGMENTS_PER_ROUND = 8
#: Descriptors a new active segment opens: its .log, .index and .timeindex (.txnindex on first use).
FDS_PER_SEGMENT = 3
#: Inactive segments of one partition whose files stay open after a read, most recently used
#: first: enough for a few consumers reading old data sequentially (each reads one segment at a
#: time) without reopening files on every fetch; the rest are released at once.
INACTIVE_SEGMENTS_OPEN_MAX = 4
#: An inactive segment not read for this long has its files released at the next tick: far
#: longer than a consumer's fetch interval, so a steady reader keeps its segment open.
IDLE_SEGMENT_CLOSE_MS = 10_000


class NoDescriptorsError(StorageError):
    """A roll would take the partition logs past the descriptor budget (KAFKA_STORAGE_ERROR, retriable)."""


@dataclass(frozen=True, slots=True)
class AppendResult:
    """Where an append landed.

    ``log_append_time_ms`` is the time stamped on the batches with LogAppendTime, else -1
    (what Kafka's ProduceResponse reports). ``flush_required`` is set only with
    ``defer_flush=True``: the flush policy says fsync now and the caller must call ``flush()``.
    """

    base_offset: int
    last_offset: int
    log_append_time_ms: int
    record_count: int
    size_bytes: int
    flush_required: bool = False


def segment_limits(config: TopicConfig) -> SegmentLimits:
    return SegmentLimits(
        index_interval_bytes=config.index_interval_bytes,
        offset_index_max_entries=config.offset_index_max_entries,
        time_index_max_entries=config.time_index_max_entries,
    )


class PartitionLog:
    """The durable, append-only log of one topic partition.

    Open one with :meth:`open` (the :class:`~flowbus.log.manager.LogManager` does).
    """

    def __init__(
        self,
        directory: Path,
        topic: str,
        partition: int,
        config: TopicConfig,
        clock: Clock,
        *,
        clean_shutdown: bool,
    ) -> None:
        self.directory = directory
        self.topic = topic
        self.partition = partition
        self.clock = clock
        self._config = config
        self._lock = threading.Lock()
        self._flush_serial = threading.Lock()
        self._checkpoint_lock = threading.Lock()
        loaded = load_partition(directory, segment_limits(config), clean_shutdown=clean_shutdown)
        self.bytes_cut_on_open = loaded.bytes_cut
        self.bytes_validated_on_open = loaded.bytes_validated
        self._segments: LogSegments = loaded.segments
        #: Inactive segments that may hold descriptors (reopened by a read or not released yet).
        #: Guarded by ``_open_lock``, not ``_lock``: reads outside ``_lock`` reopen segments too.
        self._open_inactive: set[LogSegment] = set()
        self._open_lock = threading.Lock()
        #: Set by the owner (the LogManager): whether ``count`` more descriptors fit its budget
        #: (asked before a roll, under ``_lock``, so it must not take this log's lock) ...
        self.descriptors_free: Callable[[int], bool] | None = None
        #: ... and, asked outside ``_lock`` when a roll found no room, to make room (closing idle
        #: files of other partitions). Both None: no budget (a log opened on its own).
        self.make_room: Callable[[PartitionLog, int], None] | None = None
        active = self._segments.active
        for segment in self._segments:
            self._adopt(segment)
            segment.created_ms = clock.now_ms()
            if segment is active:
                segment.open_files()
            elif segment.base_offset < loaded.recovery_segment:
                segment.release_files()  # fsynced before the checkpoint said so
            if segment is not active and segment.open_fd_count:
                self._open_inactive.add(segment)  # validated after a crash: released once flushed
        self._log_start_offset = loaded.log_start_offset
        self._recovery = (loaded.recovery_offset, loaded.recovery_segment, loaded.recovery_position)
        self._cleaner_offset = loaded.cleaner_offset
        self._last_checkpoint_ms: int | None = None
        #: A roll happened since the last flush began: flush_due() says so at once.
        self._rolled_unsynced = False
        self._directory_dirty = False
        self._closed = False
        #: Segments removed from the log whose files are deleted at ``due_ms`` (file.delete.delay.ms).
        self._pending_deletes: list[tuple[int, LogSegment]] = []
        end = self._segments.active.next_offset
        self._unflushed_messages = 0
        self._unflushed_since_ms: int | None = clock.monotonic_ms() if self._recovery[0] < end else None
        assert self._log_start_offset <= end

    @classmethod
    def open(
        cls,
        directory: str | Path,
        topic: str,
        partition: int,
        config: TopicConfig | None = None,
        *,
        clock: Clock = SYSTEM_CLOCK,
        clean_shutdown: bool = False,
    ) -> PartitionLog:
        """Open (creating if needed) the log in ``directory``, recovering it after a crash."""
        return cls(Path(directory), topic, partition, config or TopicConfig(), clock, clean_shutdown=clean_shutdown)

    # -- properties --------------------------------------------------------------------------

    @property
    def config(self) -> TopicConfig:
        return self._config

    @property
    def log_start_offset(self) -> int:
        return self._log_start_offset

    @property
    def log_end_offset(self) -> int:
        return self._segments.active.next_offset

    @property
    def high_watermark(self) -> int:
        """The last offset consumers may read, plus one: the log end on a single broker."""
        return self._segments.active.next_offset

    @property
    def recovery_point(self) -> int:
        """Offset below which every batch is known to be fsynced."""
        return self._recovery[0]

    @property
    def size_bytes(self) -> int:
        return self._segments.size_bytes

    @property
    def segment_count(self) -> int:
        return len(self._segments)

    @property
    def open_fd_count(self) -> int:
        """Descriptors this log holds now: the active segment's, open inactive ones', and those
        of removed segments waiting for deletion (counted exactly, for the owner's budget)."""
        with self._open_lock:
            inactive = list(self._open_inactive)
        active = self._segments.active
        pending = [segment for _, segment in self._pending_deletes]
        return sum(s.open_fd_count for s in {active, *inactive, *pending})

    def open_inactive_segments(self) -> list[LogSegment]:
        """Inactive segments holding descriptors now, oldest first (for tests and tools)."""
        with self._open_lock:
            inactive = list(self._open_inactive)
        active = self._segments.active
        return sorted((s for s in inactive if s is not active and s.open_fd_count), key=lambda s: s.base_offset)

    def segments(self) -> list[LogSegment]:
        """A snapshot of the segments, oldest first (for the cleaner, retention and tests)."""
        return list(self._segments)

    def update_config(self, config: TopicConfig) -> None:
        """Switch to new settings (AlterConfigs) at once: the flush policy, max.message.bytes and
        the timestamp type apply from the next append, retention and cleanup policy from the next
        tick, segment.bytes and segment.ms at the next roll, index capacities with the next segment."""
        with self._lock:
            self._config = config
            # The index interval applies at once; index capacities with the next segment.
            self._segments.active.limits = segment_limits(config)

    # -- append ------------------------------------------------------------------------------

    def append(
        self,
        batches: bytes | bytearray | memoryview,
        *,
        log_append_time_ms: int | None = None,
        leader_epoch: int = 0,
        defer_flush: bool = False,
    ) -> AppendResult:
        """Append whole record batches, assigning their offsets.

        Every batch is CRC-checked first; then the broker-owned fields are rewritten in a copy
        of the caller's bytes (base offset, leader epoch and the max timestamp: the append time
        for LogAppendTime topics, else the largest record timestamp, whatever the producer
        wrote), and the copy is written with one ``pwrite``.

        Args:
            batches: one or more concatenated RecordBatch v2.
            log_append_time_ms: the time to stamp with LogAppendTime (default: the clock's now).
            leader_epoch: written into each batch's partition_leader_epoch.
            defer_flush: do not fsync here even if the flush policy says so; report it in
                ``flush_required`` so the caller can flush on a worker thread.

        Raises:
            CorruptRecordError: malformed bytes, a CRC mismatch or records that do not fill
                their batch (nothing is written).
            UnsupportedCompressionError: a batch names an unknown codec (nothing is written).
            RecordTooLargeError: a batch is over ``max.message.bytes`` or ``segment.bytes``.
            StorageError: the write failed, or a roll was due and its files would exceed the
                descriptor budget even after closing idle files (:class:`NoDescriptorsError`;
                nothing is written, the broker answers KAFKA_STORAGE_ERROR, which is retriable).
        """
        if len(batches) > MAX_APPEND_BYTES:
            raise RecordTooLargeError(f"an append of {len(batches)} bytes is over the {MAX_APPEND_BYTES}-byte limit")
        buffer = bytearray(batches)
        parsed = list(iter_batches(buffer))
        if not parsed:
            raise CorruptRecordError("an append needs at least one record batch")
        config = self._config
        for position, header in parsed:
            if header.size_bytes > config.max_message_bytes or header.size_bytes > config.segment_bytes:
                raise RecordTooLargeError(
                    f"batch at byte {position} is {header.size_bytes} bytes; max.message.bytes is "
                    f"{config.max_message_bytes} and segment.bytes {config.segment_bytes}"
                )
        if not config.uses_log_append_time:
            # Retention, the time index and ListOffsets trust max_timestamp, so it is computed
            # from the records, never taken from the producer (sarama <= 1.22 sends -1). Outside
            # the lock: it is CPU work on the caller's private copy.
            for position, header in parsed:
                fix_max_timestamp(buffer, position, header)
        for attempt in range(2):  # bounded: a roll that still finds no room the second time fails
            try:
                first, last, append_time_ms, record_count, due = self._append_locked(
                    buffer, parsed, config, log_append_time_ms, leader_epoch
                )
                break
            except NoDescriptorsError:
                if attempt or self.make_room is None:
                    raise
                # Outside the lock: making room may close other partitions (taking their locks).
                # Nothing was written; the retry assigns the offsets again.
                self.make_room(self, FDS_PER_SEGMENT)
        result = AppendResult(first.base_offset, last.last_offset, append_time_ms, record_count, len(buffer))
        if due and defer_flush:
            return dataclasses.replace(result, flush_required=True)
        if due:
            self.flush()
        return result

    def _append_locked(
        self,
        buffer: bytearray,
        parsed: list[tuple[int, BatchHeader]],
        config: TopicConfig,
        log_append_time_ms: int | None,
        leader_epoch: int,
    ) -> tuple[BatchHeader, BatchHeader, int, int, bool]:
        """The part of :meth:`append` under the lock: assign offsets, roll if due, write.

        Returns the first and last headers, the append time (-1 unless stamped), the record
        count and whether a flush is due.

        Raises:
            NoDescriptorsError: a roll was due and its files do not fit the descriptor budget
                (nothing was written).
        """
        with self._lock:
            self._require_open()
            now_ms = self.clock.now_ms()
            stamp = config.uses_log_append_time
            append_time_ms = -1
            if stamp:
                append_time_ms = now_ms if log_append_time_ms is None else log_append_time_ms
            offset = self.log_end_offset
            headers: list[tuple[int, BatchHeader]] = []
            record_count = 0
            for position, _ in parsed:  # per batch, never per record
                set_base_offset(buffer, position, offset)
                set_leader_epoch(buffer, position, leader_epoch)
                if stamp:
                    set_log_append_time(buffer, position, append_time_ms)
                header = read_header(buffer, position)
                headers.append((position, header))
                record_count += header.record_count
                offset = header.next_offset
            first, last = headers[0][1], headers[-1][1]
            self._maybe_roll(len(buffer), last.last_offset, max(h.max_timestamp for _, h in headers), now_ms)
            segment = self._segments.active
            try:
                segment.append(buffer, headers)
            except OSError as exc:
                raise StorageError(f"append to {segment.path} failed: {exc}") from exc
            assert segment.next_offset == offset == last.next_offset
            segment.last_write_ms = now_ms
            self._unflushed_messages += record_count
            if self._unflushed_since_ms is None:
                self._unflushed_since_ms = self.clock.monotonic_ms()
            due = self._flush_due_locked(self.clock.monotonic_ms())
        return first, last, append_time_ms, record_count, due

    def _maybe_roll(self, size_bytes: int, last_offset: int, max_timestamp_ms: int, now_ms: int) -> None:
        """Start a new segment when the active one is too big, too old, or its index is full."""
        segment = self._segments.active
        if segment.is_empty:
            return
        config = self._config
        if (
            segment.size_bytes + size_bytes > config.segment_bytes
            or segment.age_ms(now_ms, max_timestamp_ms) > config.segment_ms
            or segment.indexes_full
            or last_offset - segment.base_offset > MAX_RELATIVE_OFFSET
        ):
            self._roll_locked()

    def _roll_locked(self) -> LogSegment:
        """Start a new active segment.

        Raises:
            NoDescriptorsError: its files would exceed the owner's descriptor budget even after
                this log released its own idle inactive segments (nothing changed).
        """
        if self.descriptors_free is not None and not self.descriptors_free(FDS_PER_SEGMENT):
            self._release_inactive_locked(keep=0)
            if not self.descriptors_free(FDS_PER_SEGMENT):
                raise NoDescriptorsError(
                    f"{self.topic}-{self.partition} cannot roll to a new segment: its {FDS_PER_SEGMENT} files"
                    " would exceed the broker's file descriptor budget (raise ulimit -n)"
                )
        old = self._segments.active
        try:
            new = LogSegment.create(self.directory, old.next_offset, segment_limits(self._config))
        except OSError as exc:  # EMFILE beyond the budget's count, ENOSPC...: retriable, nothing changed
            raise StorageError(f"{self.topic}-{self.partition} cannot roll to a new segment: {exc}") from exc
        old.on_become_inactive()
        self._adopt(new)
        new.created_ms = self.clock.now_ms()
        self._segments.add(new)
        with self._open_lock:
            self._open_inactive.add(old)  # released once flushed and idle (or over the LRU limit)
        self._rolled_unsynced = True
        self._directory_dirty = True
        if self._unflushed_since_ms is None:
            # The new file and the old segment's final index entry need an fsync too; until
            # then the old segment stays at or after the recovery point, out of the cleaner's
            # and retention's reach.
            self._unflushed_since_ms = self.clock.monotonic_ms()
        log.debug("rolled %s-%d to a new segment at offset %d", self.topic, self.partition, new.base_offset)
        return new

    def roll(self) -> None:
        """Start a new active segment now if the active one holds data."""
        with self._lock:
            self._require_open()
            if not self._segments.active.is_empty:
                self._roll_locked()

    def maybe_roll_by_age(self) -> bool:
        """Roll a non-empty active segment older than segment.ms (so retention can reach it).

        Raises:
            NoDescriptorsError: the roll would pass the owner's descriptor budget (nothing changed).
        """
        with self._lock:
            self._require_open()
            segment = self._segments.active
            if not segment.is_empty and segment.age_ms(self.clock.now_ms()) > self._config.segment_ms:
                self._roll_locked()  # NoDescriptorsError: the owner's next tick tries again
                return True
        return False

    # -- read --------------------------------------------------------------------------------

    def read(self, offset: int, max_bytes: int, *, max_offset: int | None = None, min_one_batch: bool = True) -> bytes:
        """Raw whole batches starting with the batch that holds ``offset``.

        Stops before the first batch whose last offset is at or past ``max_offset`` (the high
        watermark by default, or a last stable offset) and at ``max_bytes``, but returns at
        least one whole batch when ``min_one_batch`` (KIP-74), however large. Reads stay in one
        segment, as Kafka's do; the next read continues in the next one.

        Raises:
            OffsetOutOfRangeError: ``offset`` is below the log start or above the log end.
        """
        with self._lock:
            self._require_open()
            end = self.log_end_offset
            if offset < self._log_start_offset or offset > end:
                raise OffsetOutOfRangeError(offset, self._log_start_offset, end)
            limit = end if max_offset is None else min(max_offset, end)
            if offset >= limit or max_bytes < 0:
                return b""
            try:
                for segment in self._segments.from_offset(offset):  # bounded by the segment count
                    if segment.next_offset <= offset:
                        continue
                    data = segment.read(offset, max_bytes, limit, min_one_batch)
                    if data is not None:
                        return data
                return b""
            finally:
                self._bound_open_locked()

    def iter_batches(self, start_offset: int | None = None) -> Iterator[tuple[BatchHeader, bytes]]:
        """Every batch from the one holding ``start_offset`` (default: the log start), with its bytes.

        Meant for rebuilding producer state at startup. The lock is not held between batches;
        batches appended while iterating may or may not be seen.
        """
        start = self._log_start_offset if start_offset is None else start_offset
        with self._lock:
            segments = self._segments.from_offset(start)
        for segment in segments:  # bounded by the segment count
            for header, data in segment.iter_batches(start if segment.base_offset <= start else None):
                if header.last_offset >= start:
                    yield header, data

    def add_aborted_txn(self, entry: AbortedTxn) -> bool:
        """Index an abort marker in the segment that holds it (idempotent by marker offset).

        The broker calls this right after appending an abort marker, and again for every abort
        marker it replays while rebuilding producer state after a restart.
        """
        with self._lock:
            self._require_open()
            segment = self._segments.floor(entry.last_offset)
            if segment is None or entry.last_offset >= segment.next_offset:
                return False  # below the log start (deleted) or past the end (cut)
            added = segment.add_aborted_txn(entry)
            if added and segment is not self._segments.active:
                with self._open_lock:
                    self._open_inactive.add(segment)  # its index file was (re)opened to write
            return added

    def aborted_transactions(self, start_offset: int, end_offset: int) -> list[AbortedTxn]:
        """Aborted transactions overlapping ``[start_offset, end_offset)``, for read_committed fetches.

        An entry lives with its marker, which is at or after ``start_offset`` for every overlapping
        transaction, so only segments from the one holding ``start_offset`` on are searched; the
        search stops at the first entry whose LSO-at-abort is past ``end_offset`` (every
        transaction aborted after it began after that LSO, so after the range: Kafka's rule).
        """
        with self._lock:
            self._require_open()
            found: list[AbortedTxn] = []
            for segment in self._segments.from_offset(start_offset):  # bounded by the segment count
                for entry in segment.txn_index.entries:
                    if entry.last_offset >= start_offset and entry.first_offset < end_offset:
                        found.append(entry)
                    if entry.last_stable_offset > end_offset:
                        return found
            return found

    def offset_for_timestamp(self, timestamp_ms: int) -> tuple[int, int] | None:
        """``(offset, timestamp)`` of the first record with timestamp >= ``timestamp_ms``, or None.

        Segments are skipped by their largest timestamp, the time index narrows the scan to a
        few batches, and only the one batch found is decoded.
        """
        with self._lock:
            self._require_open()
            try:
                for segment in self._segments:  # bounded by the segment count
                    found = segment.first_batch_at_or_after_timestamp(timestamp_ms)
                    if found is None:
                        continue
                    # Usually the first batch found holds the answer; later ones matter only when
                    # its matching records were compacted away or lie below the log start.
                    for header, data in segment.iter_batches(start_position=found[0]):
                        if header.max_timestamp < timestamp_ms or header.last_offset < self._log_start_offset:
                            continue
                        for record in decode_batch(data)[1]:
                            if record.timestamp_ms >= timestamp_ms and record.offset >= self._log_start_offset:
                                return record.offset, record.timestamp_ms
            finally:
                self._bound_open_locked()
        return None

    # -- flush -------------------------------------------------------------------------------

    def flush_due(self) -> bool:
        """Whether the flush policy (flush.messages, flush.ms) asks for an fsync now."""
        with self._lock:
            # A rolled-past segment holds its files until fsynced; flushing it at the next tick
            # (as Kafka flushes on roll) keeps the descriptors of a burst of rolls short-lived.
            return self._rolled_unsynced or self._flush_due_locked(self.clock.monotonic_ms())

    def _flush_due_locked(self, now_monotonic_ms: int) -> bool:
        if self._unflushed_since_ms is None:
            return False
        config = self._config
        return (
            self._unflushed_messages >= config.flush_messages
            or now_monotonic_ms - self._unflushed_since_ms >= config.flush_ms
        )

    def flush(self) -> None:
        """fsync everything appended so far and advance the recovery point.

        Safe to call from another thread while appends and reads go on: the lock is held only
        to collect duplicated descriptors and to publish the result.
        """
        with self._flush_serial:
            with self._lock:
                if self._closed:
                    return
                active = self._segments.active
                target = (active.next_offset, active.base_offset, active.size_bytes)
                messages = self._unflushed_messages
                pending = self._segments.from_offset(self._recovery[1])  # a snapshot list
                with self._open_lock:
                    # An older segment written since (a replayed abort marker's .txnindex entry)
                    # is synced too, or it would hold its files for good.
                    older = sorted(
                        (s for s in self._open_inactive if s.base_offset < self._recovery[1] and s.has_unsynced_writes),
                        key=lambda s: s.base_offset,
                    )
                pending = older + pending
                self._rolled_unsynced = False
                sync_directory = self._directory_dirty
                self._directory_dirty = False
            # A few segments per round: each dirty segment needs up to four duplicated
            # descriptors, and after a burst of rolls a single round could pass RLIMIT_NOFILE.
            for start in range(0, len(pending), FLUSH_SEGMENTS_PER_ROUND):  # bounded by the segments
                if not self._sync_round(pending[start : start + FLUSH_SEGMENTS_PER_ROUND], sync_directory):
                    return  # closed meanwhile: close() flushes, delete() needs nothing
            if sync_directory:
                try:
                    fsync_directory(self.directory)
                except FileNotFoundError:
                    if not self._closed:
                        raise
                    return  # the topic was deleted while this flush ran
            with self._lock:
                if target[0] >= self._recovery[0] and self._segments.get(target[1]) is not None:
                    self._recovery = target
                self._unflushed_messages = max(0, self._unflushed_messages - messages)
                if self.log_end_offset == target[0]:
                    self._unflushed_since_ms = None
                    self._unflushed_messages = 0
            self._write_checkpoint(durable=False, rate_limited=True)

    def _sync_round(self, segments: list[LogSegment], sync_directory: bool) -> bool:
        """fsync what was written to ``segments``: duplicates taken under the lock, fsynced outside.

        Returns False when the log was closed meanwhile (nothing done).

        Raises:
            StorageError: a duplicate or an fsync failed; the files stay dirty (and the
                directory, if ``sync_directory``) so a later flush tries again.
        """
        fds: list[int] = []
        synced: list[LogSegment] = []
        failure: OSError | None = None
        with self._lock:
            if self._closed:
                return False
            try:
                for segment in segments:
                    taken = segment.take_sync_fds()
                    if taken:
                        fds.extend(taken)
                        synced.append(segment)
            except OSError as exc:  # e.g. EMFILE on dup: that segment kept its dirty state
                failure = exc
        try:
            if failure is None:
                for fd in fds:
                    os.fsync(fd)
        except OSError as exc:
            failure = exc
        finally:
            for fd in fds:
                os.close(fd)
        with self._lock:
            active = self._segments.active
            for segment in synced:  # on failure dirty again, so a later flush tries again
                segment.sync_finished(ok=failure is None)
            for segment in segments:
                if segment is not active:
                    segment.seal_indexes()  # reads never need them; a write reopens them
            if failure is not None:
                self._directory_dirty = self._directory_dirty or sync_directory
            elif not self._closed:
                self._bound_open_locked()  # the segments rolled past are releasable now
        if failure is not None:
            raise StorageError(f"fsync in {self.directory} failed: {failure}") from failure
        return True

    def _checkpoint_locked(self) -> PartitionCheckpoint:
        recovery_offset, recovery_segment, recovery_position = self._recovery
        return PartitionCheckpoint(
            recovery_offset=recovery_offset,
            recovery_segment=recovery_segment,
            recovery_position=recovery_position,
            log_start_offset=self._log_start_offset,
            cleaner_offset=self._cleaner_offset,
        )

    def _write_checkpoint(self, *, durable: bool, rate_limited: bool = False) -> None:
        with self._checkpoint_lock:
            now_ms = self.clock.monotonic_ms()
            last_ms = self._last_checkpoint_ms
            if rate_limited and last_ms is not None and now_ms - last_ms < CHECKPOINT_INTERVAL_MS:
                return
            with self._lock:
                if self._closed:
                    return  # closed or deleted (its directory may be gone) while a flush ran
                checkpoint = self._checkpoint_locked()
            write_checkpoint(self.directory, checkpoint, durable=durable)
            self._last_checkpoint_ms = now_ms

    # -- retention and deletion --------------------------------------------------------------

    def deletable_segments(self) -> list[LogSegment]:
        """Inactive segments wholly below the recovery point: the only ones retention and the
        cleaner touch, so a crash never needs data they removed or rewrote."""
        with self._lock:
            recovery_segment = self._recovery[1]
            return [s for s in self._segments.inactive() if s.base_offset < recovery_segment]

    def advance_log_start_offset(self, offset: int) -> int:
        """Move the log start offset up to ``offset`` (DeleteRecords); returns the log start.

        From here on reads, fetches and ListOffsets see the log as starting at ``offset``; an
        offset at or below the current start changes nothing. The checkpoint is written with
        fsync before this returns, so a restart keeps the new start (the loader never moves it
        back). Whole segments below it are removed by :func:`~flowbus.log.retention.apply_retention`
        once they are below the recovery point (the caller may flush and call it at once).

        Raises:
            OffsetOutOfRangeError: ``offset`` is negative or above the high watermark.
        """
        with self._lock:
            self._require_open()
            end = self.log_end_offset
            if not 0 <= offset <= end:
                raise OffsetOutOfRangeError(offset, self._log_start_offset, end)
            if offset <= self._log_start_offset:
                return self._log_start_offset
            self._log_start_offset = offset
            self._cleaner_offset = max(self._cleaner_offset, offset)
        self._write_checkpoint(durable=True)
        log.info("log start offset of %s-%d advanced to %d", self.topic, self.partition, offset)
        return offset

    def delete_oldest_segments(self, count: int, reason: str) -> int:
        """Remove the ``count`` oldest segments (never the active one); returns bytes removed.

        The log start offset moves to the next segment's base offset and is checkpointed; the
        files are renamed ``*.deleted`` and removed after file.delete.delay.ms by :meth:`tick_deletes`.
        """
        removed_bytes = 0
        with self._lock:
            self._require_open()
            now_ms = self.clock.monotonic_ms()
            for segment in self._segments.inactive()[:count]:
                self._segments.remove(segment)
                removed_bytes += segment.size_bytes
                segment.change_suffix(DELETED_SUFFIX)
                self._forget_open(segment)
                self._pending_deletes.append((now_ms + self._config.file_delete_delay_ms, segment))
                log.info("deleting segment %s of %s-%d (%s)", segment.path.name, self.topic, self.partition, reason)
            self._log_start_offset = max(self._log_start_offset, self._segments.first.base_offset)
            self._directory_dirty = True
        if removed_bytes or count:
            self._write_checkpoint(durable=False)
        self._enforce_pending_limit()
        return removed_bytes

    def _enforce_pending_limit(self) -> None:
        while len(self._pending_deletes) > MAX_PENDING_DELETES:
            _, segment = self._pending_deletes.pop(0)
            _delete_segment_files(segment)

    def tick_deletes(self) -> int:
        """Delete the files of removed segments whose delay has passed; returns how many."""
        now_ms = self.clock.monotonic_ms()
        due = [item for item in self._pending_deletes if item[0] <= now_ms]
        if not due:
            return 0
        self._pending_deletes = [item for item in self._pending_deletes if item[0] > now_ms]
        for _, segment in due:
            _delete_segment_files(segment)
        return len(due)

    def replace_segments(self, old: list[LogSegment], new: LogSegment) -> None:
        """Swap a cleaned segment in for the consecutive segments ``old``; ``new`` has the ``.swap`` suffix.

        Rename order makes a crash at any point recoverable: the old files become ``.deleted``
        (the loader deletes them), then the complete ``.swap`` files take the final names. If the
        process stops in between, the loader finishes the swap and drops whatever old segment
        overlaps the swapped one.
        """
        assert old and old[0].base_offset == new.base_offset and new.suffix.endswith(".swap")
        with self._lock:
            self._require_open()
            for segment in old:
                assert self._segments.get(segment.base_offset) is segment, "segment changed under the cleaner"
                assert segment is not self._segments.active
            assert new.next_offset <= self._segments.higher(old[-1]).base_offset  # type: ignore[union-attr]
            due_ms = self.clock.monotonic_ms() + self._config.file_delete_delay_ms
            for segment in reversed(old):
                self._segments.remove(segment)
                segment.change_suffix(DELETED_SUFFIX)
                self._forget_open(segment)
                self._pending_deletes.append((due_ms, segment))
            new.change_suffix("")
            self._adopt(new)
            new.release_files()  # synced by the cleaner; reopened when read
            new.created_ms = self.clock.now_ms()
            self._segments.add(new)
            if new.open_fd_count:
                with self._open_lock:
                    self._open_inactive.add(new)
            self._directory_dirty = True
        self._enforce_pending_limit()

    def set_cleaner_offset(self, offset: int) -> None:
        with self._lock:
            self._cleaner_offset = max(self._log_start_offset, offset)
        self._write_checkpoint(durable=False)

    @property
    def cleaner_offset(self) -> int:
        return self._cleaner_offset

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Flush, write the checkpoint durably, and release the files."""
        if self._closed:
            return
        self.flush()
        self._write_checkpoint(durable=True)
        with self._lock:
            self._closed = True
            for segment in self._segments:
                segment.close()
                # Break the segment -> bound method -> log cycle: a closed log (an idle one
                # closed for descriptors, or a deleted topic's) is then freed by reference
                # counting, so the broker can keep its long-lived objects out of the cyclic
                # collector's reach (gc.freeze) without leaking closed logs.
                segment.on_reopen = None
            for _, segment in self._pending_deletes:
                segment.close()
            with self._open_lock:
                self._open_inactive.clear()
            self.descriptors_free = self.make_room = None  # the owner's bound methods

    def delete(self) -> None:
        """Close without flushing and delete every file (topic deletion)."""
        with self._lock:
            self._closed = True
            for segment in self._segments:
                segment.close()
                segment.on_reopen = None  # no cycle left for the garbage collector (see close)
            for _, segment in self._pending_deletes:
                _delete_segment_files(segment)
            self._pending_deletes.clear()
            self.descriptors_free = self.make_room = None

    @property
    def closed(self) -> bool:
        return self._closed

    # -- descriptors -------------------------------------------------------------------------

    def close_idle_segments(self, *, keep: int = INACTIVE_SEGMENTS_OPEN_MAX) -> int:
        """Release inactive segments unused for IDLE_SEGMENT_CLOSE_MS, and all but the ``keep``
        most recently used of the rest; returns the descriptors closed (the owner's tick calls it).

        Segments with unsynced writes or a read in progress keep their files.
        """
        with self._lock:
            if self._closed:
                return 0
            return self._release_inactive_locked(keep=keep, idle_ms=IDLE_SEGMENT_CLOSE_MS)

    def _adopt(self, segment: LogSegment) -> None:
        """Make ``segment`` report its uses to this log (its clock, and reopens for the LRU)."""
        segment.clock = self.clock
        segment.on_reopen = self._on_segment_reopen

    def _forget_open(self, segment: LogSegment) -> None:
        """A segment left the log (``*.deleted``): release what it can now; deletion closes the rest."""
        segment.release_files()
        with self._open_lock:
            self._open_inactive.discard(segment)

    def _on_segment_reopen(self, segment: LogSegment) -> None:
        """A read or write reopened ``segment``'s files: count it, and keep the LRU bound.

        Called by whoever reopened it, with or without ``_lock``: the bound is applied here only
        when the lock is free (a reader outside it, such as the cleaner); a caller holding it
        applies the bound itself when it is done (:meth:`_bound_open_locked`).
        """
        with self._open_lock:
            if segment is self._segments.active:
                return
            self._open_inactive.add(segment)
            over = len(self._open_inactive) > INACTIVE_SEGMENTS_OPEN_MAX
        if over and self._lock.acquire(blocking=False):
            try:
                if not self._closed:
                    self._release_inactive_locked(keep=INACTIVE_SEGMENTS_OPEN_MAX)
            finally:
                self._lock.release()

    def _bound_open_locked(self) -> None:
        if len(self._open_inactive) > INACTIVE_SEGMENTS_OPEN_MAX:
            self._release_inactive_locked(keep=INACTIVE_SEGMENTS_OPEN_MAX)

    def _release_inactive_locked(self, *, keep: int, idle_ms: int | None = None) -> int:
        """Release open inactive segments beyond the ``keep`` most recently used, and those unused
        for ``idle_ms`` (when given); returns the descriptors closed. Holds ``_lock``.

        A segment that refuses (a read in progress, unsynced writes) stays counted as open and
        is tried again next time.
        """
        active = self._segments.active
        with self._open_lock:
            candidates = sorted(
                (s for s in self._open_inactive if s is not active), key=lambda s: s.use_serial, reverse=True
            )
        now_ms = self.clock.monotonic_ms()
        closed = 0
        for rank, segment in enumerate(candidates):  # most recently used first; bounded by the open ones
            idle = idle_ms is not None and now_ms - segment.last_used_ms >= idle_ms
            if rank < keep and not idle and not segment.closed:
                continue
            closed += segment.release_files()
            if segment.closed or not segment.open_fd_count:
                with self._open_lock:
                    self._open_inactive.discard(segment)
        return closed

    def _require_open(self) -> None:
        if self._closed:
            raise LogClosedError(f"log {self.topic}-{self.partition} is closed")

    def __repr__(self) -> str:
        return (
            f"PartitionLog({self.topic}-{self.partition}, start={self._log_start_offset}, "
            f"end={self.log_end_offset}, segments={len(self._segments)})"
        )


def _delete_segment_files(segment: LogSegment) -> None:
    segment.close()
    for path in segment.file_paths():
        try:
            path.unlink()
        except FileNotFoundError:
            pass
