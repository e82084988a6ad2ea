"""Opening a partition's database, moving corrupt files aside so the changelog can rebuild it.

Layout of one partition directory::

    <partition dir>/LOCK.flowbus          the worker's lock (flowbus.state.locking), pid inside
    <partition dir>/db/                   the database (RocksDB's files, its own LOCK among them)
    <partition dir>/db.corrupt-<now_ms>/  a database that failed to open, kept for inspection

The lock file sits next to the database, not in it, so moving a corrupt ``db/`` aside never
moves or breaks the lock the caller holds while doing it. Directories moved aside are never
deleted here: they are evidence for whoever investigates, and an operator removes them.

The caller takes the partition lock first, then calls :func:`open_partition`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from flowbus.state.base import Backend, PartitionDatabase
from flowbus.state.errors import StoreOpenError

DATABASE_DIRNAME = "db"
"""The database's directory inside a partition directory."""
CORRUPT_MARKER = ".corrupt-"
"""Between the database directory's name and the time it was moved aside."""
MOVE_ASIDE_ATTEMPTS_MAX = 100
"""Names tried for a moved-aside directory when ``db.corrupt-<now_ms>`` already exists."""

logger = logging.getLogger("flowbus.state")


def database_path(partition_dir: Path) -> Path:
    """Where the database of the partition at ``partition_dir`` lives."""
    return partition_dir / DATABASE_DIRNAME


def open_partition(
    backend: Backend, path: Path, stores: Sequence[str], *, now_ms: int
) -> tuple[PartitionDatabase, Path | None]:
    """Open the database of the partition directory ``path``; when it cannot be opened, move it
    aside and open a fresh, empty one.

    Args:
        path: the partition directory (locked by the caller).
        stores: the stores to open (see :meth:`Backend.open`).
        now_ms: the wall clock, naming the moved-aside directory.

    Returns:
        The database, and where the unusable one was moved (``None`` if it opened). After a
        move the database is empty: the caller restores every store from its changelog.

    Raises:
        StoreOpenError: the fresh database could not be opened either (the disk, not the
            files, is the problem), or the unusable one could not be moved.
        StoreLockedError: another process has the database open.
    """
    db_path = database_path(path)
    try:
        return backend.open(db_path, stores), None
    except StoreOpenError as exc:
        if not db_path.exists():
            raise
        moved_to = _move_aside(db_path, now_ms)
        reason = " ".join(str(exc).split())
        logger.warning(
            "state: moved unusable database aside to %s, starting empty (restore from changelog): %s", moved_to, reason
        )
    return backend.open(db_path, stores), moved_to


def _move_aside(db_path: Path, now_ms: int) -> Path:
    """Rename ``db_path`` to ``<db_path>.corrupt-<now_ms>`` (``-1``, ``-2``… if that exists)."""
    base = db_path.with_name(f"{db_path.name}{CORRUPT_MARKER}{now_ms}")
    for attempt in range(MOVE_ASIDE_ATTEMPTS_MAX):
        target = base if attempt == 0 else base.with_name(f"{base.name}-{attempt}")
        if target.exists():
            continue
        try:
            db_path.rename(target)
        except OSError as exc:
            raise StoreOpenError(f"{db_path}: cannot move the unusable database aside to {target}: {exc}") from exc
        return target
    raise StoreOpenError(f"{db_path}: {MOVE_ASIDE_ATTEMPTS_MAX} names taken next to {base}; cannot move it aside")
