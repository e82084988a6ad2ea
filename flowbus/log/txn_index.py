"""The aborted-transaction index of one segment (``.txnindex``, KIP-98).

A read_committed consumer must know which producers' records in a fetched range belong to
aborted transactions, so it can drop them up to that producer's abort marker. Scanning the log
for abort markers on every fetch would cost per-record work; instead every abort marker adds one
entry here, to the index of the segment that holds the marker::

    entry (34 bytes, big-endian)
        version             int16 (= 0)
        producer_id         int64
        first_offset        int64   first offset of the aborted transaction in this partition
        last_offset         int64   offset of the abort marker
        last_stable_offset  int64   the partition's LSO once the abort completed

Entries are appended in marker order, so ``last_offset`` increases through a file. The whole
index is held in memory as well (a few entries per segment in practice); the file is what
survives a restart. A partial trailing entry (crash mid-write) is ignored and cut on load;
entries at or past the segment's recovered end are dropped with the data they described, and
the broker re-adds entries for markers it replays (appending is idempotent by ``last_offset``).
"""

from __future__ import annotations

import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from flowbus.log.index_file import IndexFile

log = logging.getLogger(__name__)

TXN_INDEX_SUFFIX = ".txnindex"
TXN_INDEX_VERSION = 0
_ENTRY = struct.Struct(">hqqqq")
ENTRY_SIZE_BYTES = _ENTRY.size
#: An index larger than this is not loaded (it cannot be ours: one entry per abort marker).
TXN_INDEX_MAX_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class AbortedTxn:
    """One aborted transaction of one producer in one partition."""

    producer_id: int
    first_offset: int
    last_offset: int
    last_stable_offset: int


class TransactionIndex(IndexFile):
    """Append-only file of :class:`AbortedTxn` entries, mirrored in memory.

    Not thread-safe by itself; the owning segment's log serialises access. Most segments never
    see an abort, so the file is created by the first entry and a descriptor is held only while
    there are unsynced writes (inactive segments hold one descriptor each, for their records).
    """

    def __init__(self, path: Path) -> None:
        super().__init__(path, open_now=False)
        self.entries: list[AbortedTxn] = []
        self._load()

    def _load(self) -> None:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size > TXN_INDEX_MAX_BYTES:
            log.warning("ignoring oversized transaction index %s (%d bytes)", self.path, size)
            self.clear()
            return
        data = self.path.read_bytes()[:size]
        whole = size - size % ENTRY_SIZE_BYTES
        last = -1
        for pos in range(0, whole, ENTRY_SIZE_BYTES):
            version, pid, first, last_offset, lso = _ENTRY.unpack_from(data, pos)
            if version != TXN_INDEX_VERSION or last_offset <= last or first > last_offset:
                whole = pos  # garbage from here on (never written by us): cut it
                break
            self.entries.append(AbortedTxn(pid, first, last_offset, lso))
            last = last_offset
        if whole != size:
            os.ftruncate(self._file(), whole)
            self._dirty = True

    @property
    def last_offset(self) -> int:
        """The last indexed marker offset, -1 when empty."""
        return self.entries[-1].last_offset if self.entries else -1

    def append(self, entry: AbortedTxn) -> bool:
        """Add an entry; a marker already indexed (replayed after a restart) is skipped."""
        if entry.last_offset <= self.last_offset:
            return False
        raw = _ENTRY.pack(
            TXN_INDEX_VERSION,
            entry.producer_id,
            entry.first_offset,
            entry.last_offset,
            entry.last_stable_offset,
        )
        position = len(self.entries) * ENTRY_SIZE_BYTES
        written = os.pwrite(self._file(), raw, position)
        assert written == ENTRY_SIZE_BYTES
        self.entries.append(entry)
        self._dirty = True
        return True

    def truncate_to_offset(self, end_offset: int) -> None:
        """Drop entries whose marker is at or after ``end_offset`` (the data was cut)."""
        keep = len(self.entries)
        while keep and self.entries[keep - 1].last_offset >= end_offset:
            keep -= 1
        if keep != len(self.entries):
            del self.entries[keep:]
            os.ftruncate(self._file(), keep * ENTRY_SIZE_BYTES)
            self._dirty = True

    def clear(self) -> None:
        self.entries.clear()
        if self._fd >= 0 or self.path.exists():
            os.ftruncate(self._file(), 0)
            self._dirty = True

    def overlapping(self, start_offset: int, end_offset: int) -> list[AbortedTxn]:
        """Entries whose transaction overlaps ``[start_offset, end_offset)``."""
        return [
            e
            for e in self.entries
            if e.last_offset >= start_offset and e.first_offset < end_offset
        ]

    def mark_dirty(self) -> None:
        self._dirty = self._fd >= 0 or self.path.exists()

    def rename(self, path: Path) -> None:
        try:
            os.replace(self.path, path)
        except FileNotFoundError:
            pass  # never written: nothing to rename
        self.path = path

