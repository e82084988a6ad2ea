"""The sparse time index of one segment: timestamp -> offset, for ListOffsets by time.

File layout (big-endian, as Kafka's ``.timeindex``): a flat array of 12-byte entries::

    0  8  timestamp         (ms; the largest batch max_timestamp seen so far in the segment)
    8  4  relative offset   (last offset of the batch that carried that timestamp, minus base)

Entries are added together with offset-index entries, and only when the timestamp grows, so
both columns strictly increase even when producers send timestamps out of order. A lookup for
``t`` returns the last entry with timestamp < ``t``: every record up to that entry's offset has a
timestamp below ``t``, so the first record at or after ``t`` lies later and the scan may start
from there.
"""

from __future__ import annotations

import os
import struct
from array import array
from bisect import bisect_left
from pathlib import Path

from flowbus.log.index_file import IndexFile

ENTRY_BYTES = 12
_ENTRY = struct.Struct(">qi")


class TimeIndex(IndexFile):
    """Sparse, strictly increasing map from timestamps to offsets of one segment.

    Args:
        path: the ``.timeindex`` file; created empty when missing.
        base_offset: the segment's base offset.
        max_entries: capacity (``segment.index.bytes // 12``); the log rolls when it is reached.
    """

    def __init__(self, path: Path, base_offset: int, max_entries: int) -> None:
        assert max_entries >= 1
        super().__init__(path)
        self.base_offset = base_offset
        self.max_entries = max_entries
        self._timestamps = array("q")
        self._relative_offsets = array("i")

    def load(self, max_relative_offset: int | None = None) -> bool:
        """Read the file into memory; False (and empty) when it fails the sanity check.

        ``max_relative_offset``, when given, bounds the offsets an entry may name.
        """
        size_bytes = os.fstat(self._file()).st_size
        if size_bytes % ENTRY_BYTES:
            self.clear()
            return False
        raw = os.pread(self._file(), size_bytes, 0)
        assert len(raw) == size_bytes
        count = size_bytes // ENTRY_BYTES
        pairs = list(_ENTRY.iter_unpack(raw))  # once per open, bounded by the file size
        timestamps = array("q", [ts for ts, _ in pairs])
        relative = array("i", [rel for _, rel in pairs])
        ok = all(timestamps[i] < timestamps[i + 1] and relative[i] <= relative[i + 1] for i in range(count - 1))
        ok = ok and all(r >= 0 for r in relative[:1])
        if ok and max_relative_offset is not None and count:
            ok = relative[-1] <= max_relative_offset
        if not ok:
            self.clear()
            return False
        self._timestamps, self._relative_offsets = timestamps, relative
        return True

    def __len__(self) -> int:
        return len(self._timestamps)

    @property
    def is_full(self) -> bool:
        return len(self._timestamps) >= self.max_entries

    @property
    def last_entry(self) -> tuple[int, int] | None:
        """The last ``(timestamp, offset)``, or None when empty."""
        if not self._timestamps:
            return None
        return self._timestamps[-1], self.base_offset + self._relative_offsets[-1]

    def lookup(self, timestamp_ms: int) -> int:
        """The offset from which to scan for the first record with timestamp >= ``timestamp_ms``."""
        i = bisect_left(self._timestamps, timestamp_ms)
        if i == 0:
            return self.base_offset
        return self.base_offset + self._relative_offsets[i - 1]

    def entries(self) -> list[tuple[int, int]]:
        return [(t, self.base_offset + r) for t, r in zip(self._timestamps, self._relative_offsets)]

    def maybe_append(self, timestamp_ms: int, offset: int) -> bool:
        """Add ``(timestamp_ms, offset)`` if the timestamp grows; True when an entry was written."""
        relative = offset - self.base_offset
        assert 0 <= relative <= 0x7FFFFFFF, (offset, self.base_offset)
        if self._timestamps and timestamp_ms <= self._timestamps[-1]:
            return False
        if self.is_full:
            return False
        if self._relative_offsets:
            assert relative >= self._relative_offsets[-1]
        written = os.pwrite(self._file(), _ENTRY.pack(timestamp_ms, relative), len(self._timestamps) * ENTRY_BYTES)
        assert written == ENTRY_BYTES
        self._timestamps.append(timestamp_ms)
        self._relative_offsets.append(relative)
        self._dirty = True
        return True

    def truncate_to_offset(self, offset: int) -> None:
        """Drop every entry naming ``offset`` or beyond."""
        relative = offset - self.base_offset
        keep = len(self._relative_offsets)
        while keep and self._relative_offsets[keep - 1] >= relative:  # bounded by the entry count
            keep -= 1
        if keep == len(self._relative_offsets):
            return
        del self._timestamps[keep:]
        del self._relative_offsets[keep:]
        os.ftruncate(self._file(), keep * ENTRY_BYTES)
        self._dirty = True

    def clear(self) -> None:
        self._timestamps = array("q")
        self._relative_offsets = array("i")
        os.ftruncate(self._file(), 0)
        self._dirty = True
