"""The file side shared by a segment's indexes: a lazily reopened descriptor and dirty tracking.

Every index (offset, time, aborted transactions) keeps its entries in memory and appends to a
file; what differs is the entry format. What they share lives here: the flush thread fsyncs a
*duplicate* descriptor so it never holds the log's lock nor races a close, and a synced index of
an inactive segment releases its descriptor, so an inactive segment costs at most one open file
(its records, itself released when the segment is idle) instead of four. Lookups never need the
descriptor: entries are in memory.
"""

from __future__ import annotations

import os
from pathlib import Path


class IndexFile:
    """Descriptor management for one index file; subclasses own the entry format.

    Args:
        path: the index file.
        open_now: open (and create) the file at once; otherwise on the first write.
    """

    def __init__(self, path: Path, *, open_now: bool = True) -> None:
        self.path = path
        self._dirty = False
        self._closed = False
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644) if open_now else -1

    def _file(self) -> int:
        """The descriptor, reopened if :meth:`seal` released it."""
        assert not self._closed, f"{self.path} is closed"
        if self._fd < 0:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        return self._fd

    def take_sync_fd(self) -> int | None:
        """A duplicate descriptor to fsync when entries changed since the last call, else None.

        The duplicate lets a flush thread fsync without holding the log's lock and without
        racing a close of the original descriptor.
        """
        if not self._dirty:
            return None
        fd = os.dup(self._file())
        self._dirty = False  # only once the duplicate exists: a failed dup leaves it to sync
        return fd

    def mark_dirty(self) -> None:
        self._dirty = True

    @property
    def dirty(self) -> bool:
        """Entries were written since the last :meth:`take_sync_fd` (they wait for an fsync)."""
        return self._dirty

    @property
    def is_open(self) -> bool:
        """The descriptor is held now (it is released by :meth:`seal` and reopened on use)."""
        return self._fd >= 0

    def open(self) -> None:
        """Hold the descriptor from now on (the active segment's indexes are written often)."""
        self._file()

    def seal(self) -> int:
        """Release the descriptor of a synced index; entries stay in memory, a write reopens it.

        Returns the number of descriptors closed (0 or 1), for the owner's accounting.
        """
        if not self._dirty and self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            return 1
        return 0

    def rename(self, path: Path) -> None:
        os.replace(self.path, path)
        self.path = path

    def close(self) -> None:
        self._closed = True
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
