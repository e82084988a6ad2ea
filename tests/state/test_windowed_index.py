"""The close index of a window store across commits: entries still in memory, being written,
stored, after a failed commit and after a reopen each close once, at their time.

Driven through the calls the state manager makes at a commit (take_changes, local_changes,
the database write, changes_stored or changes_failed), on a real RocksDB partition.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from flowbus import App
from flowbus.state import make_backend
from flowbus.state.base import Backend
from flowbus.state.budget import MIB, MemoryBudget
from flowbus.state.windowed import WindowedTable, WindowPartition
from flowbus.state.windows import KIND_WINDOW, Tumbling, index_key, key_prefix, window_key

SIZE_MS = 10_000


@pytest.fixture
def backend() -> Iterator[Backend]:
    backend = make_backend("rocksdb", MemoryBudget(cache_bytes=4 * MIB, write_buffer_bytes=4 * MIB))
    yield backend
    backend.close()


def open_table(tmp_path: Path, backend: Backend) -> tuple[WindowedTable, WindowPartition]:
    app = App("idx", broker="memory://", state_dir=tmp_path / "state")
    table = WindowedTable(app, "w", Tumbling(grace_ms=0, size_ms=SIZE_MS), key_type=str)
    db = backend.open(tmp_path / "db", table.store_names())
    part = table.make_partition(0, db)
    assert isinstance(part, WindowPartition)
    table.parts[0] = part
    part.ready = True
    table.load_time(part)
    return table, part


def key(user: str, start_ms: int) -> bytes:
    return window_key(key_prefix(KIND_WINDOW, user.encode()), start_ms, start_ms + SIZE_MS)


def open_window(table: WindowedTable, part: WindowPartition, user: str, start_ms: int) -> bytes:
    data_key = key(user, start_ms)
    part.pending[data_key] = 1
    table.add_close(part, start_ms + SIZE_MS, data_key)
    part.stream_time_ms = max(part.stream_time_ms, start_ms)
    part.time_dirty = True
    return data_key


def commit(table: WindowedTable, part: WindowPartition, *, fail: bool = False) -> dict[bytes, bytes | None]:
    """One commit as the state manager makes it; returns the index changes it wrote."""
    changes = table.take_changes(0)
    index = dict(table.local_changes(0).get(table.index_store, {}))
    if fail:
        table.changes_failed(0)
        return {}
    part.db.write({table.name: changes, table.index_store: index})
    table.changes_stored(0)
    return index


def close(table: WindowedTable, part: WindowPartition, upto_ms: int) -> list[tuple[int, bytes]]:
    part.watermark_ms = upto_ms
    return table.due(part, upto_ms)


def test_entries_close_once_wherever_they_are(tmp_path: Path, backend: Backend) -> None:
    table, part = open_table(tmp_path, backend)
    a = open_window(table, part, "a", 0)  # committed: in the database
    commit(table, part)
    b = open_window(table, part, "b", 10_000)  # taken by a commit that fails: back to pending
    commit(table, part, fail=True)
    c = open_window(table, part, "c", 10_000)  # in memory only
    assert part.next_close_ms == 10_000

    assert close(table, part, 10_000) == [(10_000, a)]
    assert part.born_here == set()  # stored: closing it must tombstone it
    assert part.next_close_ms == 20_000
    assert close(table, part, 19_999) == []

    assert close(table, part, 20_000) == [(20_000, b), (20_000, c)]
    assert part.born_here == {b, c}  # never written: closing them writes nothing
    assert close(table, part, 1_000_000) == []
    written = commit(table, part)
    assert written == {index_key(10_000, a): None}  # a's entry deleted, b's and c's never written
    assert list(part.db.items(table.index_store)) == []


def test_an_entry_closed_while_its_commit_is_under_way_is_deleted_by_the_next(tmp_path: Path, backend: Backend) -> None:
    table, part = open_table(tmp_path, backend)
    a = open_window(table, part, "a", 0)
    changes = table.take_changes(0)  # the commit takes it ...
    index = dict(table.local_changes(0)[table.index_store])
    assert index == {index_key(10_000, a): b""}
    assert close(table, part, 10_000) == [(10_000, a)]  # ... the watermark passes it meanwhile ...
    assert part.born_here == set()
    part.db.write({table.name: changes, table.index_store: index})  # ... and the commit ends
    table.changes_stored(0)
    assert close(table, part, 20_000) == []  # not closed a second time from the database
    assert commit(table, part) == {index_key(10_000, a): None}
    assert list(part.db.items(table.index_store)) == []


def test_a_reopened_partition_closes_what_its_database_holds(tmp_path: Path, backend: Backend) -> None:
    table, part = open_table(tmp_path, backend)
    a = open_window(table, part, "a", 0)
    b = open_window(table, part, "b", 20_000)
    commit(table, part)
    part.db.close()

    table, part = open_table(tmp_path, backend)
    assert part.next_close_ms == 10_000
    later = open_window(table, part, "c", 20_000)
    assert close(table, part, 30_000) == [(10_000, a), (30_000, b), (30_000, later)]
    assert part.born_here == {later}
    assert part.next_close_ms > 30_000
