"""One partition's log: append, read, lookup by time, roll, flush, retention hooks.

The broker's asyncio thread calls everything here except :meth:`PartitionLog.flush`, which it
may call from a worker thread so the event loop never waits for the disk. One lock guards the
in-memory state; it is held for the short, page-cache-speed work of an append or read, never
across an fsync: a flush takes duplicates of the dirty descriptors under the lock, fsyncs them
outside it, then records the new recovery point under the lock again.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Iterator
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
        for segment in self._segments:
            segment.created_ms = clock.now_ms()
            if segment.base_offset < loaded.recovery_segment:
                segment.seal_indexes()
        self._log_start_offset = loaded.log_start_offset
        self._recovery = (loaded.recovery_offset, loaded.recovery_segment, loaded.recovery_position)
        self._cleaner_offset = loaded.cleaner_offset
        self._last_checkpoint_ms: int | None = None
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

    def segments(self) -> list[LogSegment]:
        """A snapshot of the segments, oldest first (for the cleaner, retention and tests)."""
        return list(self._segments)

    def update_config(self, config: TopicConfig) -> None:
        """Switch to new settings (AlterConfigs); they apply to segments rolled from now on."""
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
        result = AppendResult(first.base_offset, last.last_offset, append_time_ms, record_count, len(buffer))
        if due and defer_flush:
            return dataclasses.replace(result, flush_required=True)
        if due:
            self.flush()
        return result

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
        old = self._segments.active
        old.on_become_inactive()
        new = LogSegment.create(self.directory, old.next_offset, segment_limits(self._config))
        new.created_ms = self.clock.now_ms()
        self._segments.add(new)
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
        """Roll a non-empty active segment older than segment.ms (so retention can reach it)."""
        with self._lock:
            self._require_open()
            segment = self._segments.active
            if not segment.is_empty and segment.age_ms(self.clock.now_ms()) > self._config.segment_ms:
                self._roll_locked()
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
            for segment in self._segments.from_offset(offset):  # bounded by the segment count
                if segment.next_offset <= offset:
                    continue
                data = segment.read(offset, max_bytes, limit, min_one_batch)
                if data is not None:
                    return data
            return b""

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
            return segment.add_aborted_txn(entry)

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
        return None

    # -- flush -------------------------------------------------------------------------------

    def flush_due(self) -> bool:
        """Whether the flush policy (flush.messages, flush.ms) asks for an fsync now."""
        with self._lock:
            return self._flush_due_locked(self.clock.monotonic_ms())

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
                fds: list[int] = []
                synced: list[LogSegment] = []
                active_segment = self._segments.active
                for segment in self._segments.from_offset(self._recovery[1]):
                    taken = segment.take_sync_fds()
                    if taken:
                        fds.extend(taken)
                        synced.append(segment)
                    if segment is not active_segment:
                        segment.seal_indexes()  # the duplicates taken above stay valid
                sync_directory = self._directory_dirty
                self._directory_dirty = False
            try:
                for fd in fds:
                    os.fsync(fd)
            except OSError as exc:
                with self._lock:
                    for segment in synced:  # so a later flush tries again
                        segment.mark_dirty()
                    self._directory_dirty = self._directory_dirty or sync_directory
                raise StorageError(f"fsync in {self.directory} failed: {exc}") from exc
            finally:
                for fd in fds:
                    os.close(fd)
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
                self._pending_deletes.append((due_ms, segment))
            new.change_suffix("")
            new.seal_indexes()
            new.created_ms = self.clock.now_ms()
            self._segments.add(new)
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
            for _, segment in self._pending_deletes:
                segment.close()

    def delete(self) -> None:
        """Close without flushing and delete every file (topic deletion)."""
        with self._lock:
            self._closed = True
            for segment in self._segments:
                segment.close()
            for _, segment in self._pending_deletes:
                _delete_segment_files(segment)
            self._pending_deletes.clear()

    @property
    def closed(self) -> bool:
        return self._closed

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
