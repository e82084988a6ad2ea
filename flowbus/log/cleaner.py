"""Log compaction for ``cleanup.policy=compact``: keep the latest value of every key.

How a partition is cleaned (Kafka's cleaner works the same way in outline):

1. **Choose.** The cleanable part of a log is its inactive segments below the recovery
   segment, stopping at the first segment with records younger than ``min.compaction.lag.ms``
   or with damaged data (a group is CRC-checked whole before it is rewritten; cleaning would
   drop a damaged range without a trace, so it waits for ``flowbus data repair``).
   Its *dirty* part starts at the cleaner offset (persisted in the partition checkpoint). A log
   is cleaned when dirty bytes / cleanable bytes >= ``min.cleanable.dirty.ratio``.
2. **Map.** Decode the dirty segments, one per :meth:`LogCleaner.clean_some` call, and
   remember per key the offset of its latest record. The map has a named limit
   (``max_map_entries``); when it fills, the pass ends at that segment boundary and the rest
   waits for the next pass. Producer ids are mapped to the last offset of their last batch
   anywhere in the log (headers only).
3. **Rewrite.** Segments from the log start to the end of the mapped range are rewritten in
   groups whose total size fits ``segment.bytes``, one group per :meth:`LogCleaner.clean_some`
   call so the broker's tick does bounded work. Per batch:

   * transactions: when a pass starts, a headers-only scan of the log finds each transactional
     batch's outcome (the commit or abort marker of its producer that follows it). A batch of a
     committed transaction is compacted like any other (its records are mapped, and it keeps its
     transactional bit when rebuilt); a batch of an aborted transaction is dropped (unless it is
     its producer's last batch, kept for producer state); a batch whose marker is not in the log
     yet, or beyond the scan's limit, is copied unchanged. Markers are always kept, and the
     group's aborted-transaction index entries are carried over (an entry whose data was dropped
     is harmless). Kafka also removes markers after ``delete.retention.ms``; flowbus keeps them.
     Without this, every exactly-once commit would stay in ``__consumer_offsets`` forever;
   * a record is dropped when the map holds a later offset for its key;
   * a tombstone (null value) that is the latest for its key survives its first cleaning and
     the batch gets a delete horizon of now + ``delete.retention.ms`` (KIP-534: stored in
     base_timestamp with the delete-horizon attribute); once a cleaning runs after that
     horizon it is dropped, so consumers had ``delete.retention.ms`` to see it;
   * a batch that keeps every record (and needs no new horizon) is copied byte for byte;
     otherwise it is rebuilt with the kept records at their original offsets, the original
     last offset, producer id, epoch, base sequence, codec and leader epoch;
   * a batch left with no records is dropped, unless it is the last batch of its producer
     id in the log: then an empty batch keeps its offsets and sequence so idempotent producer
     state survives, as Kafka does.

   The group's output is written as ``.cleaned`` files, fsynced, renamed ``.swap`` and swapped in
   for the group (see :meth:`PartitionLog.replace_segments`); offsets are never changed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from flowbus.clock import Clock
from flowbus.log.loader import CLEANED_SUFFIX, SWAP_SUFFIX
from flowbus.log.partition_log import PartitionLog, segment_limits
from flowbus.log.segment import MAX_RELATIVE_OFFSET, LogSegment
from flowbus.records import BatchBuilder, decode_batch
from flowbus.records.control import ControlType, parse_control_record
from flowbus.records.errors import CorruptRecordError
from flowbus.records.header import (
    ATTR_DELETE_HORIZON_MASK,
    NO_PRODUCER_ID,
    BatchHeader,
    read_header,
    set_log_append_time,
)

log = logging.getLogger(__name__)

#: Keys remembered per pass (Kafka bounds its map by log.cleaner.dedupe.buffer.size).
DEFAULT_MAX_MAP_ENTRIES = 1_000_000
#: Cleaned output is written in chunks of about this size.
WRITE_CHUNK_BYTES = 1 << 20


@dataclass(slots=True)
class CleanerStats:
    """What the cleaner has done, for logs and tests."""

    passes: int = 0
    groups_cleaned: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    records_removed: int = 0
    batches_removed: int = 0


@dataclass(slots=True)
class _Pass:
    """One cleaning of one partition, spread over several calls."""

    log: PartitionLog
    offset_map: dict[bytes, int]
    #: Dirty segments (base offsets) still to add to the map, one per step.
    to_map: list[int]
    #: Offsets below this are covered by the map; the cleaner offset once the pass ends.
    end_offset: int
    #: Segments (base offsets) still to rewrite, once mapping is done.
    pending: list[int]
    last_batch_of_producer: dict[int, int]
    started_ms: int
    #: Base offsets of transactional batches whose transaction committed / aborted.
    txn_committed: set[int] = field(default_factory=set)
    txn_aborted: set[int] = field(default_factory=set)
    groups: int = 0
    stats: CleanerStats = field(default_factory=CleanerStats)


class LogCleaner:
    """Compacts logs a bounded amount at a time; driven by :meth:`LogManager.tick`.

    Args:
        clock: wall clock for compaction lag and tombstone delete horizons.
        max_map_entries: keys held in the offset map of one pass.
    """

    def __init__(self, clock: Clock, *, max_map_entries: int = DEFAULT_MAX_MAP_ENTRIES) -> None:
        assert max_map_entries >= 1
        self.clock = clock
        self.max_map_entries = max_map_entries
        self.stats = CleanerStats()
        self._pass: _Pass | None = None
        self._planning: PartitionLog | None = None
        self._uncleanable: set[tuple[str, int, int]] = set()
        self._next_index = 0

    def clean_some(self, logs: Sequence[PartitionLog]) -> bool:
        """Do one step of compaction: start a pass or rewrite one group. True when work was done.

        A failure (a corrupt batch, a disk error) marks that partition uncleanable until restart
        and is logged, as Kafka does: the broker's tick must go on for every other partition.
        """
        try:
            return self._step([p for p in logs if (p.topic, p.partition, id(p)) not in self._uncleanable])
        except Exception:  # see the docstring: isolate the partition, keep the broker running
            failed = self._pass.log if self._pass is not None else self._planning
            self._pass = None
            self._planning = None
            if failed is None:
                raise
            self._uncleanable.add((failed.topic, failed.partition, id(failed)))
            log.exception("compaction of %s-%d failed; the partition is not cleaned until restart", failed.topic, failed.partition)
            return True

    def _step(self, logs: Sequence[PartitionLog]) -> bool:
        current = self._pass
        if current is not None and (current.log.closed or current.log not in logs):
            self._pass = current = None
        if current is None:
            current = self._start_pass(logs)
            if current is None:
                return False
            self._pass = current
            return True
        if current.to_map:
            self._map_next_segment(current)
            return True
        self._clean_next_group(current)
        if not current.pending:
            current.log.set_cleaner_offset(current.end_offset)
            self.stats.passes += 1
            log.info(
                "cleaned %s-%d up to offset %d in %d groups",
                current.log.topic,
                current.log.partition,
                current.end_offset,
                current.groups,
            )
            self._pass = None
        return True

    def clean_all(self, logs: Sequence[PartitionLog], *, max_steps: int = 100_000) -> int:
        """Run :meth:`clean_some` until there is nothing left to do; returns the steps taken."""
        steps = 0
        while steps < max_steps and self.clean_some(logs):
            steps += 1
        return steps

    # -- choosing and mapping ----------------------------------------------------------------

    def _start_pass(self, logs: Sequence[PartitionLog]) -> _Pass | None:
        count = len(logs)
        for step in range(count):  # round-robin, so one busy log does not starve the others
            plog = logs[(self._next_index + step) % count]
            if plog.closed or not plog.config.is_compacted:
                continue
            self._planning = plog
            started = self._plan(plog)
            self._planning = None
            if started is not None:
                self._next_index = (self._next_index + step + 1) % count
                return started
        return None

    def _cleanable_segments(self, plog: PartitionLog) -> list[LogSegment]:
        now_ms = self.clock.now_ms()
        lag_ms = plog.config.min_compaction_lag_ms
        cleanable = []
        for segment in plog.deletable_segments():  # bounded by the segment count
            if lag_ms > 0 and now_ms - segment.max_timestamp_ms < lag_ms:
                break
            if segment.damaged:
                break  # cleaning would drop the damage silently: it stays until `flowbus data repair`
            cleanable.append(segment)
        return cleanable

    def _plan(self, plog: PartitionLog) -> _Pass | None:
        cleanable = self._cleanable_segments(plog)
        if not cleanable:
            return None
        cleaner_offset = plog.cleaner_offset
        dirty = [s for s in cleanable if s.next_offset > cleaner_offset]
        if not dirty:
            return None
        total_bytes = sum(s.size_bytes for s in cleanable)
        dirty_bytes = sum(s.size_bytes for s in dirty)
        if total_bytes == 0 or dirty_bytes / total_bytes < plog.config.min_cleanable_dirty_ratio:
            return None
        current = _Pass(plog, {}, [d.base_offset for d in dirty], dirty[0].base_offset, [], {}, self.clock.now_ms())
        self._scan_txn_outcomes(current)
        return current

    def _scan_txn_outcomes(self, current: _Pass) -> None:
        """Find which transaction each transactional batch belonged to, and how it ended.

        Headers only, over the whole log; only markers are read (one small record each). At most
        ``max_map_entries`` outcomes are remembered: batches past that stay unknown (kept as is).
        """
        open_batches: dict[int, list[int]] = {}
        remembered = 0
        for segment in current.log.segments():  # bounded by the segment count
            for position, header in segment.iter_headers():
                if not header.is_transactional or header.producer_id == NO_PRODUCER_ID:
                    continue
                if not header.is_control:
                    open_batches.setdefault(header.producer_id, []).append(header.base_offset)
                    continue
                batches = open_batches.pop(header.producer_id, [])
                try:
                    _, records = decode_batch(segment.read_batch(position, header.size_bytes))
                    control_type, _ = parse_control_record(records[0])
                except (CorruptRecordError, IndexError):
                    continue  # unknown outcome: those batches are kept unchanged
                if remembered + len(batches) > self.max_map_entries:
                    return
                remembered += len(batches)
                target = current.txn_committed if control_type is ControlType.COMMIT else current.txn_aborted
                target.update(batches)

    def _map_next_segment(self, current: _Pass) -> None:
        """Add one dirty segment's keys to the map; after the last, plan the rewrite."""
        plog = current.log
        base = current.to_map.pop(0)
        segment = next((s for s in plog.segments() if s.base_offset == base), None)
        # At least one segment is always mapped (the map is empty until then), so passes progress.
        map_full = len(current.offset_map) >= self.max_map_entries
        if segment is not None and not map_full:
            self.stats.bytes_read += segment.size_bytes
            for header, data in segment.iter_batches():
                if header.is_control or header.record_count == 0:
                    continue
                if header.is_transactional and header.base_offset not in current.txn_committed:
                    continue  # aborted or undecided: its keys must not supersede anything
                for record in decode_batch(data)[1]:  # per record: every key must be mapped
                    if record.key is not None:
                        current.offset_map[record.key] = record.offset
            current.end_offset = segment.next_offset
        if map_full:
            current.to_map.clear()  # the rest waits for the next pass
        if current.to_map:
            return
        for segment in plog.segments():  # headers only, over the whole log
            for _, header in segment.iter_headers():
                if header.producer_id != NO_PRODUCER_ID:
                    current.last_batch_of_producer[header.producer_id] = header.last_offset
        current.pending = [s.base_offset for s in self._cleanable_segments(plog) if s.base_offset < current.end_offset]

    # -- rewriting ---------------------------------------------------------------------------

    def _next_group(self, current: _Pass) -> list[LogSegment]:
        """Consecutive pending segments whose total size fits one segment (at least one)."""
        plog = current.log
        limit_bytes = plog.config.segment_bytes
        group: list[LogSegment] = []
        total = 0
        while current.pending:  # bounded by the pending list
            segment = next((s for s in plog.segments() if s.base_offset == current.pending[0]), None)
            if segment is None:  # removed by retention since the pass started
                current.pending.pop(0)
                continue
            if group and (
                total + segment.size_bytes > limit_bytes
                or segment.next_offset - group[0].base_offset > MAX_RELATIVE_OFFSET
            ):
                break
            group.append(segment)
            total += segment.size_bytes
            current.pending.pop(0)
        return group

    def _clean_next_group(self, current: _Pass) -> None:
        group = self._next_group(current)
        if not group:
            return
        if any(segment.scrubbed_damage() for segment in group):
            current.pending.clear()  # damaged data is never cleaned (see _cleanable_segments)
            return
        plog = current.log
        now_ms = self.clock.now_ms()
        config = plog.config
        cleaned = LogSegment.create(plog.directory, group[0].base_offset, segment_limits(config), CLEANED_SUFFIX)
        chunk = bytearray()
        chunk_batches: list[tuple[int, BatchHeader]] = []
        try:
            for segment in group:
                self.stats.bytes_read += segment.size_bytes
                for header, data in segment.iter_batches():
                    kept = self._clean_batch(current, header, data, now_ms, config.delete_retention_ms)
                    if kept is None:
                        self.stats.batches_removed += 1
                        continue
                    chunk_batches.append((len(chunk), read_header(kept)))
                    chunk += kept
                    if len(chunk) >= WRITE_CHUNK_BYTES:
                        cleaned.append(chunk, chunk_batches)
                        chunk, chunk_batches = bytearray(), []
            if chunk_batches:
                cleaned.append(chunk, chunk_batches)
            for segment in group:
                # Transactional batches and markers are copied unchanged, so the aborted
                # transactions indexed for the group stay true for the cleaned segment.
                for entry in segment.txn_index.entries:
                    cleaned.add_aborted_txn(entry)
            cleaned.on_become_inactive()
            cleaned.sync()
            cleaned.change_suffix(SWAP_SUFFIX)
        except BaseException:
            cleaned.close()
            for path in cleaned.file_paths():
                path.unlink(missing_ok=True)
            raise
        self.stats.bytes_written += cleaned.size_bytes
        self.stats.groups_cleaned += 1
        current.groups += 1
        plog.replace_segments(group, cleaned)

    def _clean_batch(
        self, current: _Pass, header: BatchHeader, data: bytes, now_ms: int, delete_retention_ms: int
    ) -> bytes | None:
        """The batch to write in place of ``data``: itself, a rebuilt one, or None to drop it."""
        if header.is_control:
            return data
        is_last_of_producer = (
            header.producer_id != NO_PRODUCER_ID
            and current.last_batch_of_producer.get(header.producer_id) == header.last_offset
        )
        if header.is_transactional and header.base_offset not in current.txn_committed:
            if header.base_offset in current.txn_aborted and not is_last_of_producer:
                self.stats.records_removed += header.record_count
                return None
            return data
        if header.record_count == 0:
            return data if is_last_of_producer else None
        _, records = decode_batch(data)
        has_horizon = bool(header.attributes & ATTR_DELETE_HORIZON_MASK)
        horizon_passed = has_horizon and now_ms >= header.base_timestamp
        kept = []
        for record in records:  # per record: compaction must look at every key
            if record.key is not None:
                latest = current.offset_map.get(record.key)
                if latest is not None and latest > record.offset:
                    continue
            if record.value is None and horizon_passed:
                continue
            kept.append(record)
        removed = len(records) - len(kept)
        self.stats.records_removed += removed
        needs_horizon = not has_horizon and any(record.value is None for record in kept)
        if removed == 0 and not needs_horizon:
            return data
        if not kept and not is_last_of_producer:
            return None
        horizon_ms: int | None = None
        if needs_horizon:
            horizon_ms = now_ms + delete_retention_ms
        elif has_horizon and any(record.value is None for record in kept):
            horizon_ms = header.base_timestamp
        builder = BatchBuilder(
            header.compression,
            producer_id=header.producer_id,
            producer_epoch=header.producer_epoch,
            base_sequence=header.base_sequence,
            base_offset=header.base_offset,
            partition_leader_epoch=header.partition_leader_epoch,
            delete_horizon_ms=horizon_ms,
            is_transactional=header.is_transactional,
        )
        for record in kept:
            builder.append(record.key, record.value, timestamp_ms=record.timestamp_ms, headers=record.headers, offset=record.offset)
        rebuilt = bytearray(builder.build(last_offset_delta=header.last_offset_delta))
        if header.is_log_append_time:
            set_log_append_time(rebuilt, 0, header.max_timestamp)
        result = read_header(rebuilt)
        assert result.base_offset == header.base_offset and result.last_offset == header.last_offset
        return bytes(rebuilt)
