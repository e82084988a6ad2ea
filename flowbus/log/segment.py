"""One segment of a partition log: a records file plus its offset and time indexes.

Files, all named by the segment's base offset padded to 20 digits (Kafka's naming)::

    00000000000000000000.log        record batches exactly as stored (RecordBatch v2 bytes)
    00000000000000000000.index      sparse offset index (see offset_index.py)
    00000000000000000000.timeindex  sparse time index (see time_index.py)
    00000000000000000000.txnindex   aborted transactions whose marker is here (see txn_index.py)

A suffix (``.cleaned``, ``.swap``, ``.deleted``) is appended to every file name while the cleaner
builds a replacement or while a segment waits for deletion; the loader knows what each means.

A segment works per batch, never per record: it appends buffers of whole, already-validated
batches with one ``pwrite``, serves reads with ``pread`` of whole batches located through the
offset index and a walk over batch headers, and re-validates batches (CRC-32C) during recovery.

Damage (bit rot, a flipped length, a torn write) is mapped, not cut: a damaged range is the run
of bytes from a bad batch to the next valid batch (found by :func:`find_next_batch`, CRC-checked)
or to the end of the file. Reads step over known ranges; a read of the offsets a range hid
raises :class:`~flowbus.log.errors.CorruptLogError` (CORRUPT_MESSAGE). Bytes trusted at open
(never CRC-checked in this process) are checked when first read; the first damage a read meets
makes the segment check its whole file once (:meth:`LogSegment.scrub`), so every range is known
with exact bounds and reported once. Only the owner decides to cut (a torn tail of the last
segment); ``flowbus data repair`` cuts ranges out of a stopped broker's files.
The transaction index is the third index, kept next to the other two: it is never rebuilt from
the records file here (that needs the producers' open transactions, which the broker tracks), only
cut back with the data; the broker re-adds the entries of markers it replays after a crash.

Descriptors are opened on demand. The owner keeps the active segment's files open; an inactive
segment's descriptors may be released (:meth:`LogSegment.release_files`) once nothing written to
it waits for an fsync and no read is using it, and the next read or write reopens them. Nothing
is re-read on reopen: offsets, timestamps, damage maps and index entries stay in memory, so a
released segment costs no recovery, only an ``open`` per file when it is used again.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import struct
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from flowbus.clock import SYSTEM_CLOCK, Clock
from flowbus.log.errors import CorruptLogError, LogClosedError, StorageError
from flowbus.log.offset_index import OffsetIndex
from flowbus.log.time_index import TimeIndex
from flowbus.log.txn_index import TXN_INDEX_SUFFIX, AbortedTxn, TransactionIndex
from flowbus.records.errors import CorruptRecordError
from flowbus.records.header import (
    HEADER_SIZE,
    LAST_OFFSET_DELTA_POS,
    LOG_OVERHEAD,
    MAGIC_POS,
    MAGIC_V2,
    NO_TIMESTAMP,
    BatchHeader,
    check_batch,
    peek_batch_size,
    read_header,
)

log = logging.getLogger(__name__)

_PREFIX = struct.Struct(">qi")  # base_offset, batch_length
_INT32 = struct.Struct(">i")

LOG_SUFFIX = ".log"
INDEX_SUFFIX = ".index"
TIME_INDEX_SUFFIX = ".timeindex"
#: Every file suffix a segment owns, in the order the cleaner's swap renames them (records last).
SEGMENT_SUFFIXES = (INDEX_SUFFIX, TIME_INDEX_SUFFIX, TXN_INDEX_SUFFIX, LOG_SUFFIX)

#: Bytes read per pread while walking only batch headers (lookups, tail scans).
HEADER_SCAN_CHUNK_BYTES = 16 * 1024
#: Bytes read per pread while reading whole batches (recovery, cleaning, iteration).
BATCH_SCAN_CHUNK_BYTES = 8 * 1024 * 1024
#: Offsets inside a segment are stored relative to its base in 32 bits.
MAX_RELATIVE_OFFSET = 0x7FFFFFFF
#: Bytes read per pread while looking for the next valid batch after damage.
RESYNC_CHUNK_BYTES = 1024 * 1024

#: Ranks uses of segments across the process: a larger serial was used more recently. A counter,
#: not a clock reading, so segments used within the same millisecond still have an LRU order.
_USE_SERIALS = itertools.count(1)


def segment_stem(base_offset: int) -> str:
    """The file name stem of a segment: its base offset, zero-padded to 20 digits."""
    assert base_offset >= 0
    return f"{base_offset:020d}"


@dataclass(frozen=True, slots=True)
class SegmentLimits:
    """The topic settings a segment needs to maintain its indexes."""

    index_interval_bytes: int
    offset_index_max_entries: int
    time_index_max_entries: int


class SegmentCorruption(Exception):
    """Internal: the records file holds something other than valid batches from ``position`` on."""

    def __init__(self, position: int, reason: str) -> None:
        super().__init__(f"at byte {position}: {reason}")
        self.position = position
        self.reason = reason


@dataclass(frozen=True, slots=True)
class DamagedRange:
    """Bytes of a records file that hold no valid batch, and the offsets they may have held.

    ``[position, end_position)`` runs from the first bad byte to the next valid batch (or the end
    of the file). ``first_offset`` is the offset after the last valid batch before it (the
    segment's base offset when none); ``end_offset`` is the base offset of the valid batch after
    it, or None while unknown (damage up to the end of the file: what follows is the next
    segment, which the owner knows). Offsets removed by compaction may be inside the range too.
    """

    position: int
    end_position: int
    first_offset: int
    end_offset: int | None
    reason: str

    @property
    def size_bytes(self) -> int:
        return self.end_position - self.position

    def describe_offsets(self) -> str:
        """``"155..199"``, ``"from 155"`` (end unknown) or ``"none"`` (an empty offset range)."""
        if self.end_offset is None:
            return f"from {self.first_offset}"
        if self.end_offset <= self.first_offset:
            return "none"
        return f"{self.first_offset}..{self.end_offset - 1}"

    def describe(self, path: Path | str) -> str:
        """One line for logs and reports: file, bytes, offsets, why."""
        return (
            f"{path}: bytes {self.position}..{self.end_position} ({self.size_bytes} bytes) hold no valid "
            f"batch, offsets {self.describe_offsets()} ({self.reason})"
        )


class LogSegment:
    """A records file and its two indexes, holding offsets from ``base_offset`` up.

    Not thread-safe by itself; :class:`~flowbus.log.partition_log.PartitionLog` serialises
    access. Use :meth:`create` or :meth:`open_existing` rather than the constructor.
    """

    def __init__(self, directory: Path, base_offset: int, limits: SegmentLimits, suffix: str = "") -> None:
        self.directory = directory
        self.base_offset = base_offset
        self.limits = limits
        self.suffix = suffix
        stem = segment_stem(base_offset)
        self.path = directory / f"{stem}{LOG_SUFFIX}{suffix}"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        self._closed = False
        #: Guards the descriptor's open/released state, the pin count and the syncs in flight:
        #: reads outside the owner's lock (the cleaner, start-up replays) reopen files too.
        self._files_lock = threading.Lock()
        #: Reads using the records descriptor now; the files are not released while any runs.
        self._pins = 0
        #: Duplicated descriptors handed to an fsync not yet reported by :meth:`sync_finished`.
        self._syncs_in_flight = 0
        #: Monotonic ms and process-wide serial of the last read or write (for idle and LRU closing).
        self.last_used_ms = 0
        self.use_serial = 0
        #: The owner's clock, for :attr:`last_used_ms` (set by the owner, like :attr:`created_ms`).
        self.clock: Clock = SYSTEM_CLOCK
        #: Called (outside this segment's locks) after released files were reopened, so the
        #: owner can count the segment as open again and bound how many are.
        self.on_reopen: Callable[[LogSegment], None] | None = None
        try:
            self.offset_index = OffsetIndex(
                directory / f"{stem}{INDEX_SUFFIX}{suffix}", base_offset, limits.offset_index_max_entries
            )
            try:
                self.time_index = TimeIndex(
                    directory / f"{stem}{TIME_INDEX_SUFFIX}{suffix}", base_offset, limits.time_index_max_entries
                )
            except BaseException:
                self.offset_index.close()
                raise
        except BaseException:
            os.close(self._fd)  # out of descriptors (EMFILE) half-way: leak nothing
            raise
        self.txn_index = TransactionIndex(directory / f"{stem}{TXN_INDEX_SUFFIX}{suffix}")
        stat = os.fstat(self._fd)
        self.size_bytes = stat.st_size
        #: Offset after the last batch; the base offset while empty.
        self.next_offset = base_offset
        #: Largest batch max_timestamp in the segment (NO_TIMESTAMP while empty).
        self.max_timestamp_ms = NO_TIMESTAMP
        self.offset_of_max_timestamp = base_offset
        #: max_timestamp of the first batch: the segment's age for segment.ms is measured from it.
        self.first_batch_timestamp_ms: int | None = None
        self.batch_count_hint = 0
        #: Wall-clock time the owner created or opened this segment (set by the owner, who has the clock).
        self.created_ms = 0
        #: Wall-clock ms of the last write: the file's mtime, then the owner's clock at each
        #: append. Time retention uses it for a segment none of whose records has a timestamp.
        self.last_write_ms = stat.st_mtime_ns // 1_000_000
        self._bytes_since_index_entry = 0
        self._records_dirty = False
        #: Known damaged ranges, by position; ``_damage_ends`` maps each start to its end for scans.
        self.damaged: list[DamagedRange] = []
        self._damage_ends: dict[int, int] = {}
        #: Bytes before this position were CRC-checked in this process (at recovery, on append or
        #: on a read); bytes after it are checked when read.
        self._verified_bytes = 0
        #: The whole file was checked once and every damaged range is known.
        self._scrubbed = False
        #: Offsets must stay below this (the next segment's base offset) when set: a damaged base
        #: offset, which no CRC covers, must not make this segment seem to overlap the next one.
        self.offset_limit: int | None = None

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def create(cls, directory: Path, base_offset: int, limits: SegmentLimits, suffix: str = "") -> LogSegment:
        """A new, empty segment; any leftover files of that name are emptied."""
        segment = cls(directory, base_offset, limits, suffix)
        if segment.size_bytes:
            os.ftruncate(segment._records_fd(), 0)
            segment.size_bytes = 0
        segment.offset_index.clear()
        segment.time_index.clear()
        segment.txn_index.clear()
        return segment

    @classmethod
    def open_existing(
        cls,
        directory: Path,
        base_offset: int,
        limits: SegmentLimits,
        *,
        validate_from_position: int,
        trusted_next_offset: int | None = None,
        truncate_damaged_tail: bool = True,
        offset_limit: int | None = None,
    ) -> tuple[LogSegment, int]:
        """Open a segment, re-validating every batch from ``validate_from_position`` on.

        Bytes before that position were fsynced before a checkpoint said so and are trusted:
        only their headers after the last index entry are read, to restore the segment's state.
        From the position on, each batch's CRC and offsets are checked and the indexes rebuilt;
        damaged ranges are recorded in :attr:`damaged` and the valid batches after them kept.

        Args:
            validate_from_position: 0 for a full recovery; the file size for a trusted segment.
            trusted_next_offset: the offset after the trusted bytes, when known from a checkpoint
                (lets the time index be cut precisely).
            truncate_damaged_tail: cut a damaged range that runs to the end of the file (a torn
                write). The loader passes False and decides itself, since it knows what follows.
            offset_limit: the next segment's base offset: batches claiming offsets from there on
                are damage (see :attr:`offset_limit`).

        Returns:
            The segment and the number of bytes cut from its end (0 when intact).
        """
        segment = cls(directory, base_offset, limits)
        segment.offset_limit = offset_limit
        segment._recover(validate_from_position, trusted_next_offset)
        segment.txn_index.truncate_to_offset(segment.next_offset)
        cut_bytes = 0
        if truncate_damaged_tail and segment.damaged_tail is not None:
            tail = segment.damaged_tail
            cut_bytes = segment.cut_damaged_tail()
            log.warning("truncated %s: cut %d bytes at byte %d (%s)", segment.path, cut_bytes, tail.position, tail.reason)
        if validate_from_position >= segment.size_bytes:
            # Wholly trusted (fsynced before the checkpoint): nothing to sync, so a partition of
            # thousands of segments opens holding no descriptor for them. Rebuilt indexes are
            # dirty and keep theirs.
            segment.release_files()
        return segment, cut_bytes

    # -- recovery ----------------------------------------------------------------------------

    def _recover(self, validate_from_position: int, trusted_next_offset: int | None) -> None:
        validate_from = max(0, min(validate_from_position, self.size_bytes))
        indexes_ok = self.offset_index.load(self.size_bytes) and self.time_index.load()
        partial = 0 < validate_from < self.size_bytes
        if not indexes_ok or validate_from == 0 or (partial and trusted_next_offset is None):
            self._rebuild_from(0)
            return
        self.offset_index.truncate_to_position(validate_from)
        if partial:
            assert trusted_next_offset is not None
            self.time_index.truncate_to_offset(trusted_next_offset)
        last_time = self.time_index.last_entry
        if last_time is not None:
            self.max_timestamp_ms, self.offset_of_max_timestamp = last_time
        last = self.offset_index.last_entry
        if last is not None:
            self.next_offset = last[0]
        try:
            # Trusted bytes: headers only, from the last index entry to the checkpointed position.
            for position, header, _ in self._scan(last[1] if last else 0, validate_from, whole=False):
                if (
                    header.base_offset < self.base_offset
                    or header.last_offset - self.base_offset > MAX_RELATIVE_OFFSET
                    or (self.offset_limit is not None and header.last_offset >= self.offset_limit)
                ):
                    raise SegmentCorruption(position, f"batch offsets {header.base_offset}..{header.last_offset} do not fit the segment")
                self._note_batch(position, header, index=False)
        except SegmentCorruption:
            # The checkpoint does not match this file's batch boundaries, or the headers are
            # damaged: trust nothing, and map the damage with exact bounds.
            self._rebuild_from(0)
            return
        self._validate_tail(validate_from)

    def _rebuild_from(self, position: int) -> None:
        """Forget the indexes and re-validate the whole file."""
        assert position == 0
        self.offset_index.clear()
        self.time_index.clear()
        self.next_offset = self.base_offset
        self.max_timestamp_ms = NO_TIMESTAMP
        self.offset_of_max_timestamp = self.base_offset
        self._bytes_since_index_entry = 0
        self.batch_count_hint = 0
        self._set_damage([])
        self._validate_tail(0)

    def _validate_tail(self, validate_from: int) -> int:
        """CRC-check every batch from ``validate_from``, indexing it; record damaged ranges.

        Returns the number of damaged bytes found (nothing is cut here: see :meth:`cut_damaged_tail`).
        """
        found, _ = validate_records(
            self._records_fd(), validate_from, self.size_bytes, self.next_offset, self.base_offset, self._index_batch, self.offset_limit
        )
        self._set_damage(self.damaged + found)
        if validate_from == 0:
            self._verified_bytes = self.size_bytes
            self._scrubbed = True
        self._load_first_timestamp()
        return sum(r.size_bytes for r in found)

    def _index_batch(self, position: int, header: BatchHeader) -> None:
        self._note_batch(position, header, index=True)

    def truncate_to_position(self, position: int) -> None:
        """Cut the records file at a batch boundary and drop index entries beyond it."""
        assert 0 <= position <= self.size_bytes
        fd = self._records_fd()
        os.ftruncate(fd, position)
        self.size_bytes = position
        self._records_dirty = True
        self.offset_index.truncate_to_position(position)
        self.time_index.truncate_to_offset(self.next_offset)
        self.txn_index.truncate_to_offset(self.next_offset)
        self._verified_bytes = min(self._verified_bytes, position)
        self._set_damage([r for r in self.damaged if r.end_position <= position])
        assert os.fstat(fd).st_size == position

    # -- damage ------------------------------------------------------------------------------

    @property
    def damaged_tail(self) -> DamagedRange | None:
        """The damaged range that runs to the end of the file with no known end offset, if any."""
        if self.damaged and self.damaged[-1].end_position >= self.size_bytes and self.damaged[-1].end_offset is None:
            return self.damaged[-1]
        return None

    def cut_damaged_tail(self) -> int:
        """Truncate the file where its damaged tail starts (a torn write); returns the bytes cut."""
        tail = self.damaged_tail
        if tail is None:
            return 0
        cut_bytes = self.size_bytes - tail.position
        self.truncate_to_position(tail.position)
        self._load_first_timestamp()
        return cut_bytes

    def close_damaged_tail(self, end_offset: int) -> DamagedRange | None:
        """Bound the damaged tail by ``end_offset`` (the base offset of what follows this segment).

        The segment then covers the tail's offsets (``next_offset`` moves up to ``end_offset``),
        so a read of them comes here and fails instead of silently going on to the next segment.
        """
        tail = self.damaged_tail
        if tail is None or end_offset <= tail.first_offset:
            return None
        closed = replace(tail, end_offset=end_offset)
        self._set_damage(self.damaged[:-1] + [closed])
        self.next_offset = max(self.next_offset, end_offset)
        return closed

    def scrub(self) -> list[DamagedRange]:
        """CRC-check the whole file once and record every damaged range; returns the new ones.

        Each new range is logged as one error line. Runs when a read first meets unknown damage,
        so the ranges have exact bounds (the walk starts at the segment's first byte, where the
        expected offset is known) however the read got there.
        """
        # The headers read at open (or the appends since) put every offset below next_offset.
        limit = self.next_offset if self.offset_limit is None else min(self.offset_limit, self.next_offset)
        fd = self._pin()
        try:
            found, _ = validate_records(fd, 0, self.size_bytes, self.base_offset, self.base_offset, None, limit)
        finally:
            self._unpin()
        if found and found[-1].end_offset is None and self.next_offset > found[-1].first_offset:
            # The headers read at open counted the tail's offsets: they end where the segment does.
            found[-1] = replace(found[-1], end_offset=self.next_offset)
        known = set(self._damage_ends)
        new = [r for r in found if r.position not in known]
        self._set_damage(found)
        self._verified_bytes = self.size_bytes
        self._scrubbed = True
        for damaged in new:
            log.error("damaged data in %s; later data is still served, `flowbus data repair` cuts it out", damaged.describe(self.path))
        return new

    def scrubbed_damage(self) -> list[DamagedRange]:
        """Every damaged range, scrubbing the file first unless that was done (for the cleaner)."""
        if not self._scrubbed:
            self.scrub()
        return list(self.damaged)

    def _set_damage(self, ranges: list[DamagedRange]) -> None:
        self.damaged = sorted(ranges, key=lambda r: r.position)
        self._damage_ends = {r.position: r.end_position for r in self.damaged}

    def _skip_damage(self, position: int) -> int:
        """``position``, or the end of the damaged range that holds it."""
        for damaged in self.damaged:  # bounded by the ranges found (none or a few in practice)
            if damaged.position <= position < damaged.end_position:
                return damaged.end_position
        return position

    def _damage_at_or_after(self, position: int) -> int:
        """Where the first damaged range at or after ``position`` starts (the file size when none)."""
        for damaged in self.damaged:  # sorted by position
            if damaged.position >= position:
                return damaged.position
        return self.size_bytes

    def damage_covering(self, offset: int) -> DamagedRange | None:
        """The damaged range whose offsets include ``offset``, if any."""
        for damaged in self.damaged:
            end = damaged.end_offset if damaged.end_offset is not None else self.next_offset
            if damaged.first_offset <= offset < end:
                return damaged
        return None

    def _corrupt_error(self, offset: int, damaged: DamagedRange | None) -> CorruptLogError:
        if damaged is None:
            return CorruptLogError(f"unreadable data at offset {offset} of {self.path}", offset)
        return CorruptLogError(
            f"offset {offset} is in a damaged range of {self.path}: {damaged.describe_offsets()} ({damaged.reason})",
            damaged.first_offset,
            damaged.end_offset,
        )

    def _load_first_timestamp(self) -> None:
        if self.size_bytes >= HEADER_SIZE:
            self.first_batch_timestamp_ms = read_header(os.pread(self._records_fd(), HEADER_SIZE, 0)).max_timestamp
        else:
            self.first_batch_timestamp_ms = None

    # -- state -------------------------------------------------------------------------------

    def _note_batch(self, position: int, header: BatchHeader, *, index: bool) -> None:
        """Account for a batch at ``position``; with ``index``, add index entries as due."""
        if header.max_timestamp > self.max_timestamp_ms:
            self.max_timestamp_ms = header.max_timestamp
            self.offset_of_max_timestamp = header.last_offset
        if index and self._bytes_since_index_entry >= self.limits.index_interval_bytes:
            if not self.offset_index.is_full:
                self.offset_index.append(header.last_offset, position)
                self.time_index.maybe_append(self.max_timestamp_ms, self.offset_of_max_timestamp)
            self._bytes_since_index_entry = 0
        self._bytes_since_index_entry += header.size_bytes
        self.next_offset = header.next_offset
        self.batch_count_hint += 1

    @property
    def is_empty(self) -> bool:
        return self.size_bytes == 0

    @property
    def indexes_full(self) -> bool:
        return self.offset_index.is_full or self.time_index.is_full

    def age_ms(self, now_ms: int, new_timestamp_ms: int | None = None) -> int:
        """The segment's age for segment.ms.

        On append (``new_timestamp_ms`` given) it is measured as Kafka does, in record time:
        the incoming batch's max timestamp minus the first batch's, so producers replaying old
        data do not roll a segment per batch. Otherwise (the periodic check, or batches without
        timestamps) it is wall-clock time since the segment was created or opened.
        """
        first = self.first_batch_timestamp_ms
        if new_timestamp_ms is not None and first is not None and first >= 0 and new_timestamp_ms >= 0:
            return max(0, new_timestamp_ms - first)
        return max(0, now_ms - self.created_ms)

    # -- append ------------------------------------------------------------------------------

    def append(self, data: bytes | bytearray | memoryview, batches: list[tuple[int, BatchHeader]]) -> int:
        """Write validated batches (``(position in data, header)`` pairs) at the end; returns their position.

        One ``pwrite`` for the whole buffer; index work is per batch. On a failed write the
        file is cut back to its previous size so no partial batch stays behind.
        """
        assert batches and batches[0][0] == 0
        assert batches[0][1].base_offset >= self.next_offset
        fd = self._records_fd()
        start = self.size_bytes
        view = memoryview(data)
        try:
            self._write_all(fd, view, start)
        except OSError:
            os.ftruncate(fd, start)
            raise
        self.size_bytes = start + len(view)
        self._records_dirty = True
        if self._verified_bytes == start:
            self._verified_bytes = self.size_bytes  # the log CRC-checked these batches before appending
        for position, header in batches:
            self._note_batch(start + position, header, index=True)
        if self.first_batch_timestamp_ms is None:
            self.first_batch_timestamp_ms = batches[0][1].max_timestamp
        return start

    def _write_all(self, fd: int, view: memoryview, position: int) -> None:
        written = 0
        total = len(view)
        while written < total:  # bounded: each pass writes at least one byte or raises
            count = os.pwrite(fd, view[written:], position + written)
            if count <= 0:
                raise OSError(f"pwrite wrote {count} bytes to {self.path}")
            written += count

    def on_become_inactive(self) -> None:
        """Called when the log rolls past this segment: record its final max timestamp.

        Kafka does the same so a closed segment's largest timestamp is in its time index and
        retention and lookups by time never need to scan it.
        """
        if self.max_timestamp_ms != NO_TIMESTAMP:
            self.time_index.maybe_append(self.max_timestamp_ms, self.offset_of_max_timestamp)

    # -- reads -------------------------------------------------------------------------------

    def locate(self, offset: int) -> tuple[int, BatchHeader] | None:
        """Position and header of the first valid batch whose last offset is >= ``offset``, or None.

        Steps over damaged ranges (see :meth:`damage_covering` for whether ``offset`` is in one).
        """
        self._require_open()
        _, start = self.offset_index.lookup(offset)
        for position, header, _ in self._walk(start, self.size_bytes, whole=False):
            if header.last_offset >= offset:
                return position, header
        return None

    def read(self, offset: int, max_bytes: int, max_offset: int | None, min_one_batch: bool) -> bytes | None:
        """Whole batches from the one holding ``offset``; see :meth:`PartitionLog.read`.

        Returns None when no batch of this segment holds ``offset`` or a later offset (the
        caller moves on to the next segment), and b"" when one does but limits exclude it.
        Data stops before the next damaged range.

        Raises:
            CorruptLogError: ``offset`` is in a damaged range.
            StorageError: the released records file could not be reopened.
        """
        self._pin()  # the whole read, so the descriptor stays open between its preads
        try:
            try:
                return self._read(offset, max_bytes, max_offset, min_one_batch)
            except SegmentCorruption as corruption:
                # A batch read for the first time failed its check: map the whole file once, then
                # answer from the map. Bounded: a scrubbed segment is not scrubbed again.
                if self._scrubbed:
                    raise self._corrupt_error(offset, self.damage_covering(offset)) from None
                self.scrub()
                try:
                    return self._read(offset, max_bytes, max_offset, min_one_batch)
                except SegmentCorruption:
                    raise self._corrupt_error(offset, self.damage_covering(offset)) from corruption
        finally:
            self._unpin()

    def _read(self, offset: int, max_bytes: int, max_offset: int | None, min_one_batch: bool) -> bytes | None:
        found = self.locate(offset)
        if found is None or found[1].base_offset > offset:
            damaged = self.damage_covering(offset)
            if damaged is not None:
                raise self._corrupt_error(offset, damaged)
        if found is None:
            return None
        start, first = found
        if max_offset is not None and first.last_offset >= max_offset:
            return b""
        stop = self._damage_at_or_after(start)
        limit = min(max_bytes, stop - start)
        if first.size_bytes > limit:
            if not min_one_batch:
                return b""
            data = os.pread(self._fd, first.size_bytes, start)
            assert len(data) == first.size_bytes, "batch runs past the end of the segment"
            self._check_read(data, start)
            return data
        data = os.pread(self._fd, limit, start)
        assert len(data) == limit
        self._check_read(data, start)
        if limit == stop - start and (max_offset is None or max_offset >= self.next_offset):
            return data  # the rest of the segment (or up to damage): whole batches, all below max_offset
        # Walk headers only near the cut: from the last batch the index knows to start before
        # both the byte limit and max_offset. Small batches would otherwise cost a header
        # read each across the whole fetch.
        walk_from = self.offset_index.floor_position(start + limit)
        if max_offset is not None:
            walk_from = min(walk_from, self.offset_index.lookup(max_offset)[1])
        walk_from = max(walk_from, start)
        cut = (walk_from - start) + _whole_batches_length(memoryview(data)[walk_from - start :], max_offset)
        assert cut >= first.size_bytes
        return data if cut == len(data) else data[:cut]

    def _check_read(self, data: bytes, start: int) -> None:
        """CRC-check the whole batches of a read that lie past the verified bytes.

        Bytes trusted at open are checked here the first time they are read, once per process
        when reads are sequential (the verified prefix moves up); reads further on are checked
        each time. A partial batch at the end of ``data`` is left for the caller to cut.

        Raises:
            SegmentCorruption: a batch in ``data`` is malformed or fails its CRC.
        """
        end = start + len(data)
        if end <= self._verified_bytes:
            return
        position = max(0, self._verified_bytes - start)
        view = memoryview(data)
        total = len(view)
        expected_offset = self.base_offset
        while total - position >= HEADER_SIZE:  # bounded: advances by a whole batch per step
            size = peek_batch_size(view, position)
            assert size is not None
            if size < HEADER_SIZE or start + position + size > self.size_bytes:
                raise SegmentCorruption(
                    start + position, f"batch of {size} bytes does not fit in {self.size_bytes - start - position} bytes left"
                )
            if position + size > total:
                break
            try:
                header = check_batch(view[: position + size], position)
            except CorruptRecordError as exc:
                raise SegmentCorruption(start + position, str(exc)) from None
            if header.base_offset < expected_offset or header.last_offset >= self.next_offset:
                raise SegmentCorruption(start + position, f"batch offsets {header.base_offset}..{header.last_offset} out of order")
            expected_offset = header.next_offset
            position += size
        if start <= self._verified_bytes < start + position:
            self._verified_bytes = start + position
            self._verified_bytes = self._damage_ends.get(self._verified_bytes, self._verified_bytes)

    def first_batch_at_or_after_timestamp(self, timestamp_ms: int) -> tuple[int, BatchHeader] | None:
        """Position and header of the first batch whose max timestamp is >= ``timestamp_ms``."""
        if self.max_timestamp_ms < timestamp_ms:
            return None
        start_offset = self.time_index.lookup(timestamp_ms)
        found = self.locate(start_offset)
        if found is None:
            return None
        for position, header, _ in self._walk(found[0], self.size_bytes, whole=False):
            if header.max_timestamp >= timestamp_ms:
                return position, header
        return None

    def read_batch(self, position: int, size_bytes: int) -> bytes:
        """The raw bytes of one batch."""
        fd = self._pin()
        try:
            data = os.pread(fd, size_bytes, position)
        finally:
            self._unpin()
        assert len(data) == size_bytes
        return data

    def iter_batches(
        self, start_offset: int | None = None, *, start_position: int = 0
    ) -> Iterator[tuple[BatchHeader, bytes]]:
        """Every valid batch from the one holding ``start_offset`` (or from ``start_position``), with its bytes.

        Each batch's CRC is checked; damaged ranges are stepped over (and logged once).
        """
        start = start_position
        if start_offset is not None:
            found = self.locate(start_offset)
            if found is None:
                return
            start = found[0]
        end = self.size_bytes
        for _, header, view in self._walk(start, end, whole=True, verify=True):
            assert view is not None
            yield header, bytes(view)

    def iter_headers(self) -> Iterator[tuple[int, BatchHeader]]:
        """``(position, header)`` of every batch, reading only headers and stepping over damage."""
        for position, header, _ in self._walk(0, self.size_bytes, whole=False):
            yield position, header

    # -- scanning ----------------------------------------------------------------------------

    def _scan(
        self, start: int, end: int, *, whole: bool, verify: bool = False
    ) -> Iterator[tuple[int, BatchHeader, memoryview | None]]:
        """:func:`scan_records` over this segment's file (raises at any damage, known or not)."""
        fd = self._pin()
        try:
            yield from scan_records(fd, start, end, whole=whole, verify=verify)
        finally:
            self._unpin()  # also when the caller stops early: closing the generator runs this

    def _walk(
        self, start: int, end: int, *, whole: bool, verify: bool = False
    ) -> Iterator[tuple[int, BatchHeader, memoryview | None]]:
        """Like :meth:`_scan`, but over known damage: steps over damaged ranges, and on unknown
        damage scrubs the segment (mapping all of it, logged once) and steps over that too.

        Raises:
            CorruptLogError: the file still fails after a scrub (it changed under the reader).
        """
        fd = self._pin()
        try:
            position = self._skip_damage(start)
            for _ in range(2):  # bounded: one scrub maps every range, so a second failure is final
                try:
                    for item in scan_records(fd, position, end, whole=whole, verify=verify, skips=self._damage_ends):
                        position = item[0] + item[1].size_bytes
                        yield item
                    return
                except SegmentCorruption as corruption:
                    if self._scrubbed:
                        break
                    self.scrub()
                    position = self._skip_damage(corruption.position)
            raise CorruptLogError(f"unreadable data at byte {position} of {self.path} (changed while being read?)")
        finally:
            self._unpin()  # also when the caller stops early: closing the generator runs this

    # -- durability and files ----------------------------------------------------------------

    def take_sync_fds(self) -> list[int]:
        """Duplicate descriptors of the files written since the last call, to fsync outside the lock.

        When any are returned the caller must report the outcome with :meth:`sync_finished`:
        until then the files are not released, since a descriptor opened after a failed fsync
        would not see that failure.
        """
        if self._closed:
            return []
        fds: list[int] = []
        try:
            if self._records_dirty:
                fds.append(os.dup(self._records_fd()))
                self._records_dirty = False
            for index in (self.offset_index, self.time_index, self.txn_index):
                fd = index.take_sync_fd()
                if fd is not None:
                    fds.append(fd)
        except OSError:
            # Out of descriptors (EMFILE) half-way: give back what was taken, all still to sync.
            for fd in fds:
                os.close(fd)
            self.mark_dirty()
            raise
        if fds:
            with self._files_lock:
                self._syncs_in_flight += 1
        return fds

    def sync_finished(self, *, ok: bool) -> None:
        """Report the fsync of descriptors from :meth:`take_sync_fds`; a failure makes every file dirty again."""
        with self._files_lock:
            assert self._syncs_in_flight > 0, "sync_finished without take_sync_fds"
            self._syncs_in_flight -= 1
        if not ok:
            self.mark_dirty()

    def mark_dirty(self) -> None:
        """Make the next :meth:`take_sync_fds` return every file again (after a failed fsync)."""
        self._records_dirty = True
        self.offset_index.mark_dirty()
        self.time_index.mark_dirty()
        self.txn_index.mark_dirty()

    def add_aborted_txn(self, entry: AbortedTxn) -> bool:
        """Index an abort marker held by this segment (False when it was indexed already)."""
        assert self.base_offset <= entry.last_offset < self.next_offset
        return self.txn_index.append(entry)

    def seal_indexes(self) -> int:
        """Release the index descriptors once the segment is inactive and its indexes synced.

        Reads never need them (entries are in memory); a write reopens them. Returns how many
        were closed (none while an fsync of their duplicates is in flight).
        """
        with self._files_lock:
            if self._syncs_in_flight:
                return 0
            return self.offset_index.seal() + self.time_index.seal() + self.txn_index.seal()

    @property
    def has_unsynced_writes(self) -> bool:
        """Something written to these files waits for an fsync (records or any index)."""
        return self._records_dirty or any(index.dirty for index in (self.offset_index, self.time_index, self.txn_index))

    @property
    def open_fd_count(self) -> int:
        """Descriptors this segment holds now: records and indexes (0 when released or closed)."""
        indexes = (self.offset_index, self.time_index, self.txn_index)
        return int(self._fd >= 0) + sum(1 for index in indexes if index.is_open)

    @property
    def files_open(self) -> bool:
        """The records file is open (the segment was used since its files were last released)."""
        return self._fd >= 0

    def release_files(self) -> int:
        """Close every descriptor of this segment if nothing needs it now; returns how many closed.

        Refused (0) while a read is using the records file, while anything written waits for an
        fsync, or while an fsync of duplicated descriptors is in flight: a descriptor opened after
        a failed fsync would not report that failure, so dirty files keep theirs. The next read
        or write reopens the files; nothing is re-read (entries and state stay in memory).
        """
        with self._files_lock:
            if self._closed or self._pins or self._syncs_in_flight or self.has_unsynced_writes:
                return 0
            closed = 0
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
                closed = 1
            return closed + self.offset_index.seal() + self.time_index.seal() + self.txn_index.seal()

    def open_files(self) -> None:
        """Open the records file and both indexes now (the owner keeps its active segment's open)."""
        self._records_fd()
        self.offset_index.open()
        self.time_index.open()

    def _reopen_records_locked(self) -> bool:
        """Reopen a released records file (``_files_lock`` held); True when it was reopened.

        Raises:
            LogClosedError: the segment was closed for good.
            StorageError: the file cannot be opened (EMFILE, or it is gone).
        """
        self._require_open()
        if self._fd >= 0:
            return False
        try:
            # No O_CREAT: a missing records file must fail, not come back empty.
            self._fd = os.open(self.path, os.O_RDWR)
        except OSError as exc:
            raise StorageError(f"cannot reopen {self.path}: {exc}") from exc
        return True

    def _note_use_locked(self) -> None:
        self.last_used_ms = self.clock.monotonic_ms()
        self.use_serial = next(_USE_SERIALS)

    def _records_fd(self) -> int:
        """The records descriptor for a write or a recovery scan, reopened if it was released.

        Writers hold the owner's lock, under which alone the owner releases files, and a written
        segment is dirty (never released) until its fsync: the descriptor stays valid.
        """
        return self._use_records(pin=False)

    def _pin(self) -> int:
        """The records descriptor for a read, held open until the matching :meth:`_unpin`."""
        return self._use_records(pin=True)

    def _use_records(self, *, pin: bool) -> int:
        with self._files_lock:
            reopened = self._reopen_records_locked()
            if pin:
                self._pins += 1
            self._note_use_locked()
            fd = self._fd
        if reopened and self.on_reopen is not None:
            self.on_reopen(self)
        return fd

    def _unpin(self) -> None:
        with self._files_lock:
            assert self._pins > 0
            self._pins -= 1

    def sync(self) -> None:
        """fsync the records file and both indexes now (on roll-free paths such as the cleaner)."""
        self._records_dirty = True
        fds = self.take_sync_fds()
        ok = False
        try:
            for fd in fds:
                os.fsync(fd)
            ok = True
        finally:
            for fd in fds:
                os.close(fd)
            if fds:
                self.sync_finished(ok=ok)

    def change_suffix(self, suffix: str) -> None:
        """Rename all four files to carry ``suffix`` (indexes first, records last)."""
        stem = segment_stem(self.base_offset)
        self.offset_index.rename(self.directory / f"{stem}{INDEX_SUFFIX}{suffix}")
        self.time_index.rename(self.directory / f"{stem}{TIME_INDEX_SUFFIX}{suffix}")
        self.txn_index.rename(self.directory / f"{stem}{TXN_INDEX_SUFFIX}{suffix}")
        new_path = self.directory / f"{stem}{LOG_SUFFIX}{suffix}"
        os.replace(self.path, new_path)
        self.path = new_path
        self.suffix = suffix

    def file_paths(self) -> list[Path]:
        return [self.offset_index.path, self.time_index.path, self.txn_index.path, self.path]

    def _require_open(self) -> None:
        if self._closed:
            raise LogClosedError(f"segment {self.path} is closed")

    @property
    def closed(self) -> bool:
        """Closed for good (:meth:`close`); a segment whose files were released is not closed."""
        return self._closed

    def close(self) -> None:
        with self._files_lock:
            self._closed = True
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
        self.offset_index.close()
        self.time_index.close()
        self.txn_index.close()

    def __repr__(self) -> str:
        return f"LogSegment(base={self.base_offset}, next={self.next_offset}, size={self.size_bytes}, path={self.path.name})"


def _whole_batches_length(data: bytes | memoryview, max_offset: int | None) -> int:
    """Length of the prefix of ``data`` made of whole batches whose last offset is below ``max_offset``.

    Reads two fields per batch with precompiled structs rather than decoding whole headers:
    this runs for every batch of every fetch. The batches were validated when appended.
    """
    position = 0
    total = len(data)
    unpack_prefix = _PREFIX.unpack_from
    unpack_delta = _INT32.unpack_from
    while total - position >= HEADER_SIZE:  # bounded: advances by >= HEADER_SIZE per step
        base_offset, batch_length = unpack_prefix(data, position)
        size = LOG_OVERHEAD + batch_length
        assert size >= HEADER_SIZE, f"impossible batch length {batch_length} at byte {position} of a read"
        if position + size > total:
            break
        if max_offset is not None and base_offset + unpack_delta(data, position + LAST_OFFSET_DELTA_POS)[0] >= max_offset:
            break
        position += size
    return position


# -- scanning records files (shared by segments and `flowbus data`) ----------------------------


def scan_records(
    fd: int, start: int, end: int, *, whole: bool, verify: bool = False, skips: Mapping[int, int] | None = None
) -> Iterator[tuple[int, BatchHeader, memoryview | None]]:
    """Walk the batches of a records file in ``[start, end)``; yields ``(position, header, bytes or None)``.

    With ``whole`` every batch is read entirely (the view is valid until the next step) and,
    with ``verify``, its CRC checked; without, only headers are read and large batches are
    skipped unread. ``skips`` maps the start of each known damaged range to its end; the walk
    jumps over them.

    Raises:
        SegmentCorruption: at the first malformed batch (not in ``skips``).
    """
    chunk_bytes = BATCH_SCAN_CHUNK_BYTES if whole else HEADER_SCAN_CHUNK_BYTES
    buffer = bytearray(min(chunk_bytes, max(end - start, HEADER_SIZE)))
    view = memoryview(buffer)
    chunk_start = start
    chunk_len = 0
    position = start
    while position < end:  # bounded: every step advances by a batch size >= HEADER_SIZE or past a range
        if skips and position in skips:
            position = skips[position]
            continue
        offset_in = position - chunk_start
        if chunk_len - offset_in < HEADER_SIZE:
            chunk_start, offset_in = position, 0
            chunk_len = os.preadv(fd, [view[: min(len(buffer), end - position)]], position)
        available = view[:chunk_len]
        size = peek_batch_size(available, offset_in)
        if size is None or chunk_len - offset_in < HEADER_SIZE:
            raise SegmentCorruption(position, f"{end - position} trailing bytes are not a whole batch header")
        if size < HEADER_SIZE or position + size > end:
            raise SegmentCorruption(position, f"batch of {size} bytes does not fit in {end - position} bytes left")
        if whole and chunk_len - offset_in < size:
            if size > len(buffer):
                buffer = bytearray(size)
                view = memoryview(buffer)
            chunk_start, offset_in = position, 0
            chunk_len = os.preadv(fd, [view[: min(len(buffer), end - position)]], position)
            available = view[:chunk_len]
            if chunk_len < size:
                raise SegmentCorruption(position, "batch truncated")
        try:
            if whole and verify:
                header = check_batch(available[: offset_in + size], offset_in)
            else:
                header = read_header(available, offset_in)
        except CorruptRecordError as exc:
            raise SegmentCorruption(position, str(exc)) from None
        if header.size_bytes != size:
            raise SegmentCorruption(position, "batch length changed under the reader")
        yield position, header, (available[offset_in : offset_in + size] if whole else None)
        position += size


def _check_offsets(
    position: int, header: BatchHeader, expected_offset: int, base_offset: int, offset_limit: int | None
) -> None:
    """Offsets must increase across batches, fit the segment's 32-bit relative range and stay
    below ``offset_limit`` (the next segment's base offset, when known).

    The base offset is outside the CRC: these checks are what catches a damaged one.
    """
    if header.base_offset < expected_offset or header.base_offset < base_offset:
        raise SegmentCorruption(position, f"batch base offset {header.base_offset} below expected {expected_offset}")
    if header.last_offset - base_offset > MAX_RELATIVE_OFFSET:
        raise SegmentCorruption(position, f"offset {header.last_offset} overflows the segment")
    if offset_limit is not None and header.last_offset >= offset_limit:
        raise SegmentCorruption(position, f"offset {header.last_offset} is not below the next segment's {offset_limit}")


def find_next_batch(
    fd: int, after: int, end: int, min_offset: int, base_offset: int, offset_limit: int | None = None
) -> tuple[int, BatchHeader] | None:
    """The first valid batch that starts after byte ``after`` and before ``end``, or None.

    Valid means: magic 2, a length that fits before ``end``, offsets from ``min_offset`` on that
    fit the segment (and stay below ``offset_limit``), and a matching CRC-32C over the whole
    batch. Candidates are found by a regular expression over the header's fixed bytes (run in C,
    see :func:`_candidate_pattern`) and rejected by cheap header checks before any CRC is
    computed, so a damaged megabyte costs milliseconds whatever it holds. A batch stored inside a
    record's value with just the right offsets would be taken for a real one; its CRC and offsets
    make that unlikely.
    """
    position = after + 1
    pattern = _candidate_pattern(base_offset)
    while end - position >= HEADER_SIZE:  # bounded: each pass moves on by len(chunk) - HEADER_SIZE + 1 >= 1
        chunk = os.pread(fd, min(RESYNC_CHUNK_BYTES, end - position), position)
        if len(chunk) < HEADER_SIZE:
            return None
        last_candidate = len(chunk) - HEADER_SIZE
        for match in pattern.finditer(chunk, 0, last_candidate + MAGIC_POS + 1):  # bounded by the chunk
            candidate = match.start()
            header = _plausible_header(chunk, candidate, position + candidate, end, min_offset, base_offset, offset_limit)
            if header is not None and _crc_matches(fd, chunk, candidate, position + candidate, header):
                return position + candidate, header
        # The next chunk starts at the first candidate this one could not hold a header for.
        position += last_candidate + 1
    return None


def _candidate_pattern(base_offset: int) -> re.Pattern[bytes]:
    """Where a batch of the segment at ``base_offset`` may start, as a zero-width lookahead.

    The first 17 bytes of a batch header are: the base offset, whose high 32 bits take one of
    at most two values (offsets stay within 2**31 of the segment's base), a positive batch length
    (first byte below 0x80), four bytes of leader epoch, and the magic byte 2.
    """
    highs = sorted({base_offset >> 32, (base_offset + MAX_RELATIVE_OFFSET) >> 32})
    high = b"|".join(re.escape(_INT32.pack(h)) for h in highs)
    return re.compile(b"(?=(?:" + high + b").{4}[\x00-\x7f].{7}" + re.escape(bytes([MAGIC_V2])) + b")", re.DOTALL)


def _plausible_header(
    chunk: bytes, at: int, position: int, end: int, min_offset: int, base_offset: int, offset_limit: int | None
) -> BatchHeader | None:
    try:
        header = read_header(chunk, at)
    except CorruptRecordError:
        return None
    if position + header.size_bytes > end or header.base_offset < min_offset:
        return None
    if header.last_offset - base_offset > MAX_RELATIVE_OFFSET:
        return None
    if offset_limit is not None and header.last_offset >= offset_limit:
        return None
    return header


def _crc_matches(fd: int, chunk: bytes, at: int, position: int, header: BatchHeader) -> bool:
    data: bytes | memoryview = memoryview(chunk)[at : at + header.size_bytes]
    if len(data) < header.size_bytes:
        data = os.pread(fd, header.size_bytes, position)
    try:
        check_batch(data)
    except CorruptRecordError:
        return False
    return True


def validate_records(
    fd: int,
    start: int,
    end: int,
    expected_offset: int,
    base_offset: int,
    on_batch: Callable[[int, BatchHeader], None] | None,
    offset_limit: int | None = None,
) -> tuple[list[DamagedRange], int]:
    """CRC-check every batch in ``[start, end)``, stepping over damage to the next valid batch.

    Args:
        expected_offset: the offset the first batch may start at (at least).
        base_offset: the segment's base offset (relative offsets must fit in 32 bits).
        on_batch: called with ``(position, header)`` of each valid batch, in order.
        offset_limit: every offset must be below it (the next segment's base offset), if given.

    Returns:
        The damaged ranges found, in order, and the offset after the last valid batch.
    """
    damaged: list[DamagedRange] = []
    position = start
    while position < end:  # bounded: each pass ends at ``end`` or resumes past a range (>= 1 byte)
        try:
            for batch_position, header, _ in scan_records(fd, position, end, whole=True, verify=True):
                _check_offsets(batch_position, header, expected_offset, base_offset, offset_limit)
                if on_batch is not None:
                    on_batch(batch_position, header)
                expected_offset = header.next_offset
            break
        except SegmentCorruption as corruption:
            found = find_next_batch(fd, corruption.position, end, expected_offset, base_offset, offset_limit)
            resume, end_offset = (found[0], found[1].base_offset) if found is not None else (end, None)
            damaged.append(DamagedRange(corruption.position, resume, expected_offset, end_offset, corruption.reason))
            position = resume
    return damaged, expected_offset


@dataclass(frozen=True, slots=True)
class RecordsFileCheck:
    """What :func:`check_records_file` found in one ``.log`` file."""

    path: Path
    base_offset: int
    size_bytes: int
    batch_count: int
    #: The offset after the last valid batch (the base offset when there is none).
    next_offset: int
    damaged: list[DamagedRange]


def check_records_file(path: Path, base_offset: int, offset_limit: int | None = None) -> RecordsFileCheck:
    """CRC-check a segment's records file without changing anything (``flowbus data check``).

    ``offset_limit`` is the next segment's base offset (None for the last segment).
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        size_bytes = os.fstat(fd).st_size
        count = 0

        def counted(position: int, header: BatchHeader) -> None:
            nonlocal count
            count += 1

        damaged, next_offset = validate_records(fd, 0, size_bytes, base_offset, base_offset, counted, offset_limit)
    finally:
        os.close(fd)
    return RecordsFileCheck(path, base_offset, size_bytes, count, next_offset, damaged)
