"""The sparse offset index of one segment: offset -> byte position in the records file.

File layout (big-endian, as Kafka's ``.index``): a flat array of 8-byte entries::

    0  4  relative offset   (offset - segment base offset)
    4  4  position          (byte position of a batch in the .log file)

An entry ``(r, p)`` says: the batch starting at byte ``p`` has last offset ``base + r``. The log
adds one roughly every ``index.interval.bytes`` of appended data, so a lookup is a binary search
followed by a header walk of at most about that many bytes. Both columns strictly increase.

Entries live in memory too (two ``array('i')`` columns: 8 bytes per entry, no Python object per
entry); the file is only appended to, truncated, and read back on open. The index is never the
source of truth: recovery rebuilds it from the records file whenever it is missing or fails the
sanity check.
"""

from __future__ import annotations

import os
import struct
import sys
from array import array
from bisect import bisect_right
from pathlib import Path

from flowbus.log.index_file import IndexFile

ENTRY_BYTES = 8
_ENTRY = struct.Struct(">ii")


def _load_column_pairs(raw: bytes) -> tuple[array[int], array[int]]:
    """Split big-endian ``(int32, int32)`` pairs into two native arrays."""
    both = array("i")
    both.frombytes(raw)
    if sys.byteorder == "little":
        both.byteswap()
    return both[0::2], both[1::2]


class OffsetIndex(IndexFile):
    """Sparse map from the offsets of one segment to byte positions in its records file.

    Args:
        path: the ``.index`` file; created empty when missing.
        base_offset: the segment's base offset; entries store offsets relative to it.
        max_entries: capacity (``segment.index.bytes // 8``); the log rolls when it is reached.
    """

    def __init__(self, path: Path, base_offset: int, max_entries: int) -> None:
        assert max_entries >= 1
        super().__init__(path)
        self.base_offset = base_offset
        self.max_entries = max_entries
        self._relative_offsets = array("i")
        self._positions = array("i")

    # -- loading ----------------------------------------------------------------------------

    def load(self, records_size_bytes: int) -> bool:
        """Read the file into memory; False (and empty) when it fails the sanity check.

        The check: whole entries only, both columns strictly increasing, every position inside
        a records file of ``records_size_bytes``. A file that fails it was torn by a crash; the
        caller rebuilds it from the records.
        """
        size_bytes = os.fstat(self._file()).st_size
        if size_bytes % ENTRY_BYTES:
            self.clear()
            return False
        raw = os.pread(self._file(), size_bytes, 0)
        assert len(raw) == size_bytes
        relative, positions = _load_column_pairs(raw)
        ok = all(relative[i] < relative[i + 1] and positions[i] < positions[i + 1] for i in range(len(relative) - 1))
        ok = ok and (not relative or (relative[0] >= 0 and positions[0] >= 0 and positions[-1] < records_size_bytes))
        if not ok:
            self.clear()
            return False
        self._relative_offsets, self._positions = relative, positions
        return True

    # -- queries ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._relative_offsets)

    @property
    def is_full(self) -> bool:
        return len(self._relative_offsets) >= self.max_entries

    @property
    def last_entry(self) -> tuple[int, int] | None:
        """The last ``(offset, position)``, or None when empty."""
        if not self._relative_offsets:
            return None
        return self.base_offset + self._relative_offsets[-1], self._positions[-1]

    def lookup(self, offset: int) -> tuple[int, int]:
        """The greatest entry with offset <= ``offset``, or ``(base_offset, 0)``.

        The batch holding ``offset`` starts at or after the returned position.
        """
        i = bisect_right(self._relative_offsets, offset - self.base_offset)
        if i == 0:
            return self.base_offset, 0
        return self.base_offset + self._relative_offsets[i - 1], self._positions[i - 1]

    def floor_position(self, position: int) -> int:
        """The greatest indexed batch position <= ``position`` (0 when none): a batch boundary."""
        i = bisect_right(self._positions, position)
        return self._positions[i - 1] if i else 0

    def entries(self) -> list[tuple[int, int]]:
        """All entries as absolute ``(offset, position)``; for tests and tools."""
        return [(self.base_offset + r, p) for r, p in zip(self._relative_offsets, self._positions)]

    # -- mutation ---------------------------------------------------------------------------

    def append(self, offset: int, position: int) -> None:
        """Add an entry; offsets and positions must both exceed the last entry's."""
        relative = offset - self.base_offset
        assert 0 <= relative <= 0x7FFFFFFF, (offset, self.base_offset)
        assert not self.is_full, "caller must roll the segment before the index is full"
        if self._relative_offsets:
            assert relative > self._relative_offsets[-1] and position > self._positions[-1]
        written = os.pwrite(self._file(), _ENTRY.pack(relative, position), len(self._relative_offsets) * ENTRY_BYTES)
        assert written == ENTRY_BYTES
        self._relative_offsets.append(relative)
        self._positions.append(position)
        self._dirty = True

    def truncate_to_position(self, position: int) -> None:
        """Drop every entry pointing at ``position`` or beyond (the records there are gone)."""
        keep = bisect_right(self._positions, position - 1)
        if keep == len(self._positions):
            return
        del self._relative_offsets[keep:]
        del self._positions[keep:]
        os.ftruncate(self._file(), keep * ENTRY_BYTES)
        self._dirty = True

    def clear(self) -> None:
        """Drop every entry (before a rebuild)."""
        self._relative_offsets = array("i")
        self._positions = array("i")
        os.ftruncate(self._file(), 0)
        self._dirty = True
