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
The transaction index is the third index, kept next to the other two: it is never rebuilt from
the records file here (that needs the producers' open transactions, which the broker tracks), only
cut back with the data; the broker re-adds the entries of markers it replays after a crash.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from flowbus.log.errors import LogClosedError
from flowbus.log.offset_index import OffsetIndex
from flowbus.log.time_index import TimeIndex
from flowbus.log.txn_index import TXN_INDEX_SUFFIX, AbortedTxn, TransactionIndex
from flowbus.records.errors import CorruptRecordError
from flowbus.records.header import (
    HEADER_SIZE,
    LAST_OFFSET_DELTA_POS,
    LOG_OVERHEAD,
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
        self.offset_index = OffsetIndex(
            directory / f"{stem}{INDEX_SUFFIX}{suffix}", base_offset, limits.offset_index_max_entries
        )
        self.time_index = TimeIndex(
            directory / f"{stem}{TIME_INDEX_SUFFIX}{suffix}", base_offset, limits.time_index_max_entries
        )
        self.txn_index = TransactionIndex(directory / f"{stem}{TXN_INDEX_SUFFIX}{suffix}")
        self.size_bytes = os.fstat(self._fd).st_size
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
        self._bytes_since_index_entry = 0
        self._records_dirty = False

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def create(cls, directory: Path, base_offset: int, limits: SegmentLimits, suffix: str = "") -> LogSegment:
        """A new, empty segment; any leftover files of that name are emptied."""
        segment = cls(directory, base_offset, limits, suffix)
        if segment.size_bytes:
            os.ftruncate(segment._fd, 0)
            segment.size_bytes = 0
        segment.offset_index.clear()
        segment.time_index.clear()
        segment.txn_index.clear()
        return segment

    @classmethod
    def open_existing(
        cls, directory: Path, base_offset: int, limits: SegmentLimits, *, validate_from_position: int, trusted_next_offset: int | None = None
    ) -> tuple[LogSegment, int]:
        """Open a segment, re-validating every batch from ``validate_from_position`` on.

        Bytes before that position were fsynced before a checkpoint said so and are trusted:
        only their headers after the last index entry are read, to restore the segment's state.
        From the position on, each batch's CRC and offsets are checked and the indexes rebuilt;
        the file is truncated at the first bad batch.

        Args:
            validate_from_position: 0 for a full recovery; the file size for a trusted segment.
            trusted_next_offset: the offset after the trusted bytes, when known from a checkpoint
                (lets the time index be cut precisely).

        Returns:
            The segment and the number of bytes cut from its end (0 when intact).
        """
        segment = cls(directory, base_offset, limits)
        cut_bytes = segment._recover(validate_from_position, trusted_next_offset)
        segment.txn_index.truncate_to_offset(segment.next_offset)
        return segment, cut_bytes

    # -- recovery ----------------------------------------------------------------------------

    def _recover(self, validate_from_position: int, trusted_next_offset: int | None) -> int:
        validate_from = max(0, min(validate_from_position, self.size_bytes))
        indexes_ok = self.offset_index.load(self.size_bytes) and self.time_index.load()
        partial = 0 < validate_from < self.size_bytes
        if not indexes_ok or validate_from == 0 or (partial and trusted_next_offset is None):
            return self._rebuild_from(0)
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
                self._note_batch(position, header, index=False)
        except SegmentCorruption:
            # The checkpoint does not match this file's batch boundaries: trust nothing.
            return self._rebuild_from(0)
        return self._validate_tail(validate_from)

    def _rebuild_from(self, position: int) -> int:
        """Forget the indexes and re-validate the whole file."""
        assert position == 0
        self.offset_index.clear()
        self.time_index.clear()
        self.next_offset = self.base_offset
        self.max_timestamp_ms = NO_TIMESTAMP
        self.offset_of_max_timestamp = self.base_offset
        self._bytes_since_index_entry = 0
        self.batch_count_hint = 0
        return self._validate_tail(0)

    def _validate_tail(self, validate_from: int) -> int:
        """CRC-check every batch from ``validate_from``, indexing it; truncate at the first bad one."""
        try:
            for position, header, _ in self._scan(validate_from, self.size_bytes, whole=True, verify=True):
                self._check_offsets(position, header)
                self._note_batch(position, header, index=True)
        except SegmentCorruption as corruption:
            return self._truncate_corrupt(corruption)
        self._load_first_timestamp()
        return 0

    def _check_offsets(self, position: int, header: BatchHeader) -> None:
        """Offsets must increase across batches and fit the segment's 32-bit relative range."""
        if header.base_offset < self.next_offset or header.base_offset < self.base_offset:
            raise SegmentCorruption(
                position, f"batch base offset {header.base_offset} below expected {self.next_offset}"
            )
        if header.last_offset - self.base_offset > MAX_RELATIVE_OFFSET:
            raise SegmentCorruption(position, f"offset {header.last_offset} overflows the segment")

    def _truncate_corrupt(self, corruption: SegmentCorruption) -> int:
        cut_bytes = self.size_bytes - corruption.position
        log.warning("truncated %s: cut %d bytes at byte %d (%s)", self.path, cut_bytes, corruption.position, corruption.reason)
        self.truncate_to_position(corruption.position)
        self._load_first_timestamp()
        return cut_bytes

    def truncate_to_position(self, position: int) -> None:
        """Cut the records file at a batch boundary and drop index entries beyond it."""
        assert 0 <= position <= self.size_bytes
        os.ftruncate(self._fd, position)
        self.size_bytes = position
        self._records_dirty = True
        self.offset_index.truncate_to_position(position)
        self.time_index.truncate_to_offset(self.next_offset)
        self.txn_index.truncate_to_offset(self.next_offset)
        assert os.fstat(self._fd).st_size == position

    def _load_first_timestamp(self) -> None:
        if self.size_bytes >= HEADER_SIZE:
            self.first_batch_timestamp_ms = read_header(os.pread(self._fd, HEADER_SIZE, 0)).max_timestamp
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
        self._require_open()
        start = self.size_bytes
        view = memoryview(data)
        try:
            self._write_all(view, start)
        except OSError:
            os.ftruncate(self._fd, start)
            raise
        self.size_bytes = start + len(view)
        self._records_dirty = True
        for position, header in batches:
            self._note_batch(start + position, header, index=True)
        if self.first_batch_timestamp_ms is None:
            self.first_batch_timestamp_ms = batches[0][1].max_timestamp
        return start

    def _write_all(self, view: memoryview, position: int) -> None:
        written = 0
        total = len(view)
        while written < total:  # bounded: each pass writes at least one byte or raises
            count = os.pwrite(self._fd, view[written:], position + written)
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
        """Position and header of the first batch whose last offset is >= ``offset``, or None."""
        self._require_open()
        _, start = self.offset_index.lookup(offset)
        for position, header, _ in self._scan(start, self.size_bytes, whole=False):
            if header.last_offset >= offset:
                return position, header
        return None

    def read(self, offset: int, max_bytes: int, max_offset: int | None, min_one_batch: bool) -> bytes | None:
        """Whole batches from the one holding ``offset``; see :meth:`PartitionLog.read`.

        Returns None when no batch of this segment holds ``offset`` or a later offset (the
        caller moves on to the next segment), and b"" when one does but limits exclude it.
        """
        found = self.locate(offset)
        if found is None:
            return None
        start, first = found
        if max_offset is not None and first.last_offset >= max_offset:
            return b""
        limit = min(max_bytes, self.size_bytes - start)
        if first.size_bytes > limit:
            if not min_one_batch:
                return b""
            data = os.pread(self._fd, first.size_bytes, start)
            assert len(data) == first.size_bytes, "batch runs past the end of the segment"
            return data
        data = os.pread(self._fd, limit, start)
        assert len(data) == limit
        if limit == self.size_bytes - start and (max_offset is None or max_offset >= self.next_offset):
            return data  # the rest of the segment: whole batches, all below max_offset
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

    def first_batch_at_or_after_timestamp(self, timestamp_ms: int) -> tuple[int, BatchHeader] | None:
        """Position and header of the first batch whose max timestamp is >= ``timestamp_ms``."""
        if self.max_timestamp_ms < timestamp_ms:
            return None
        start_offset = self.time_index.lookup(timestamp_ms)
        found = self.locate(start_offset)
        if found is None:
            return None
        for position, header, _ in self._scan(found[0], self.size_bytes, whole=False):
            if header.max_timestamp >= timestamp_ms:
                return position, header
        return None

    def read_batch(self, position: int, size_bytes: int) -> bytes:
        """The raw bytes of one batch."""
        self._require_open()
        data = os.pread(self._fd, size_bytes, position)
        assert len(data) == size_bytes
        return data

    def iter_batches(
        self, start_offset: int | None = None, *, start_position: int = 0
    ) -> Iterator[tuple[BatchHeader, bytes]]:
        """Every batch from the one holding ``start_offset`` (or from ``start_position``), with its bytes."""
        start = start_position
        if start_offset is not None:
            found = self.locate(start_offset)
            if found is None:
                return
            start = found[0]
        end = self.size_bytes
        for _, header, view in self._scan(start, end, whole=True):
            assert view is not None
            yield header, bytes(view)

    def iter_headers(self) -> Iterator[tuple[int, BatchHeader]]:
        """``(position, header)`` of every batch, reading only headers."""
        for position, header, _ in self._scan(0, self.size_bytes, whole=False):
            yield position, header

    # -- scanning ----------------------------------------------------------------------------

    def _scan(
        self, start: int, end: int, *, whole: bool, verify: bool = False
    ) -> Iterator[tuple[int, BatchHeader, memoryview | None]]:
        """Walk the batches in ``[start, end)``; yields ``(position, header, bytes or None)``.

        With ``whole`` every batch is read entirely (the view is valid until the next step) and,
        with ``verify``, its CRC checked; without, only headers are read and large batches are
        skipped unread. Raises :class:`SegmentCorruption` at the first malformed batch.
        """
        self._require_open()
        chunk_bytes = BATCH_SCAN_CHUNK_BYTES if whole else HEADER_SCAN_CHUNK_BYTES
        buffer = bytearray(min(chunk_bytes, max(end - start, HEADER_SIZE)))
        view = memoryview(buffer)
        chunk_start = start
        chunk_len = 0
        position = start
        while position < end:  # bounded: every step advances by a batch size >= HEADER_SIZE
            offset_in = position - chunk_start
            if chunk_len - offset_in < HEADER_SIZE:
                chunk_start, offset_in = position, 0
                chunk_len = os.preadv(self._fd, [view[: min(len(buffer), end - position)]], position)
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
                chunk_len = os.preadv(self._fd, [view[: min(len(buffer), end - position)]], position)
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

    # -- durability and files ----------------------------------------------------------------

    def take_sync_fds(self) -> list[int]:
        """Duplicate descriptors of the files written since the last call, to fsync outside the lock."""
        fds: list[int] = []
        if self._records_dirty and self._fd >= 0:
            self._records_dirty = False
            fds.append(os.dup(self._fd))
        for index in (self.offset_index, self.time_index, self.txn_index):
            fd = index.take_sync_fd()
            if fd is not None:
                fds.append(fd)
        return fds

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

    def seal_indexes(self) -> None:
        """Release the index descriptors once the segment is inactive and its indexes synced."""
        self.offset_index.seal()
        self.time_index.seal()
        self.txn_index.seal()

    def sync(self) -> None:
        """fsync the records file and both indexes now (on roll-free paths such as the cleaner)."""
        self._records_dirty = True
        fds = self.take_sync_fds()
        try:
            for fd in fds:
                os.fsync(fd)
        finally:
            for fd in fds:
                os.close(fd)

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
        if self._fd < 0:
            raise LogClosedError(f"segment {self.path} is closed")

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
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
