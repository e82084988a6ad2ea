"""The file side shared by a segment's indexes: a lazily reopened descriptor and dirty tracking.

Every index (offset, time, aborted transactions) keeps its entries in memory and appends to a
file; what differs is the entry format. What they share lives here: the flush thread fsyncs a
*duplicate* descriptor so it never holds the log's lock nor races a close, and a synced index of
an inactive segment releases its descriptor, so an inactive segment costs one open file (its
records) instead of four.
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
        self._dirty = False
        return os.dup(self._file())

    def mark_dirty(self) -> None:
        self._dirty = True

    def seal(self) -> None:
        """Release the descriptor of a synced index; entries stay in memory, a write reopens it."""
        if not self._dirty and self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def rename(self, path: Path) -> None:
        os.replace(self.path, path)
        self.path = path

    def close(self) -> None:
        self._closed = True
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
