"""An exclusive lock on a partition directory, held by the worker that owns the partition.

During a rebalance a partition can move between two workers on the same machine while the old
owner is still closing its database. RocksDB's own ``LOCK`` would make the new owner's open fail
at once with an error that looks like any other open failure (and a corrupt-looking database
gets moved aside); this lock is taken first, waits a bounded time for the old owner, and says
who holds it when it gives up.

The lock is ``flock(LOCK_EX)`` on ``<partition dir>/LOCK.flowbus``, which holds the holder's pid
as text for error messages. The kernel drops a ``flock`` when its process dies, even by
``SIGKILL``, so a crash never leaves a stale lock behind. A ``flock`` belongs to an open file, not
to a process, so two :class:`PartitionLock` objects in one process exclude each other too.

Never delete ``LOCK.flowbus`` while a worker may hold it: a new file would be a second lock.
"""

from __future__ import annotations

import asyncio
import fcntl
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

from flowbus.state.errors import StoreLockedError

LOCK_FILENAME = "LOCK.flowbus"
"""The lock file inside a partition directory (distinct from RocksDB's ``LOCK`` in ``db/``)."""
LOCK_RETRY_INTERVAL_MS_DEFAULT = 100
"""Wait between two attempts: long enough not to spin, short next to a rebalance."""
LOCK_ATTEMPTS_MAX = 1000
"""Attempts per acquire, whatever the timeout (a long timeout stretches the interval instead)."""
LOCK_HOLDER_BYTES_MAX = 32
"""How much of the lock file is read back for the holder's pid."""


def _attempt_plan(timeout_ms: int, retry_interval_ms: int) -> tuple[int, float]:
    """(attempts, seconds between attempts): spread over ``timeout_ms``, at most
    :data:`LOCK_ATTEMPTS_MAX` attempts."""
    if timeout_ms < 0 or retry_interval_ms <= 0:
        raise ValueError(f"timeout_ms ({timeout_ms}) must be >= 0 and retry_interval_ms ({retry_interval_ms}) > 0")
    interval_ms = max(retry_interval_ms, math.ceil(timeout_ms / (LOCK_ATTEMPTS_MAX - 1)))
    attempts = 1 + math.ceil(timeout_ms / interval_ms)
    assert attempts <= LOCK_ATTEMPTS_MAX
    return attempts, interval_ms / 1000


class PartitionLock:
    """The exclusive lock of one partition directory.

    Args:
        directory: the partition directory; created on the first attempt if missing.

    Example::

        lock = PartitionLock(partition_dir)
        await lock.acquire_async(timeout_ms=5_000)
        try:
            ...  # open, use and close the database in partition_dir
        finally:
            lock.release()
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / LOCK_FILENAME
        self._fd: int | None = None

    def __repr__(self) -> str:
        return f"PartitionLock({str(self.directory)!r}, held={self.held})"

    @property
    def held(self) -> bool:
        """True between a successful acquire and :meth:`release`."""
        return self._fd is not None

    def acquire(
        self,
        timeout_ms: int,
        *,
        retry_interval_ms: int = LOCK_RETRY_INTERVAL_MS_DEFAULT,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        """Take the lock, trying every ``retry_interval_ms`` for up to ``timeout_ms``.

        Args:
            sleep: called with seconds between attempts (tests pass one that does not sleep).

        Raises:
            StoreLockedError: still held by someone else after the last attempt.
            RuntimeError: this object already holds the lock.
        """
        attempts, interval_s = self._plan(timeout_ms, retry_interval_ms)
        for attempt in range(attempts):
            if attempt:
                sleep(interval_s)
            if self._try_lock():
                return
        raise self._locked_error(timeout_ms, attempts)

    async def acquire_async(self, timeout_ms: int, *, retry_interval_ms: int = LOCK_RETRY_INTERVAL_MS_DEFAULT) -> None:
        """:meth:`acquire` for the event loop: waits with ``asyncio.sleep`` between attempts (each
        attempt is a non-blocking ``flock``)."""
        attempts, interval_s = self._plan(timeout_ms, retry_interval_ms)
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(interval_s)
            if self._try_lock():
                return
        raise self._locked_error(timeout_ms, attempts)

    def release(self) -> None:
        """Give the lock up; releasing a lock not held does nothing."""
        fd = self._fd
        if fd is None:
            return
        self._fd = None
        try:
            os.ftruncate(fd, 0)  # no stale pid for the next reader
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def holder_pid(self) -> int | None:
        """The pid written by the current holder, ``None`` when unknown (no holder, or one that
        has not written it yet)."""
        try:
            text = self.path.read_bytes()[:LOCK_HOLDER_BYTES_MAX]
        except FileNotFoundError:
            return None
        try:
            return int(text.strip())
        except ValueError:
            return None

    def _plan(self, timeout_ms: int, retry_interval_ms: int) -> tuple[int, float]:
        if self._fd is not None:
            raise RuntimeError(f"{self.path}: already held by this PartitionLock")
        return _attempt_plan(timeout_ms, retry_interval_ms)

    def _try_lock(self) -> bool:
        """One non-blocking attempt; on success the file holds our pid."""
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)  # closing the only descriptor drops the flock
            raise
        self._fd = fd
        return True

    def _locked_error(self, timeout_ms: int, attempts: int) -> StoreLockedError:
        pid = self.holder_pid()
        holder = f"process {pid}" if pid is not None else "another process (pid unknown)"
        return StoreLockedError(
            f"{self.directory}: locked by {holder}; gave up after {timeout_ms} ms ({attempts} attempts)"
        )
