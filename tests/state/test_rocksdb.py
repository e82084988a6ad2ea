"""The RocksDB backend on real files: corruption, format versions, WAL-less writes, shared memory."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import rocksdict

from flowbus.state.base import FORMAT_KEY, FORMAT_VERSION
from flowbus.state.budget import MIB, MemoryBudget
from flowbus.state.errors import StateError, StoreLockedError, StoreOpenError
from flowbus.state.locking import LOCK_FILENAME, PartitionLock
from flowbus.state.opening import DATABASE_DIRNAME, open_partition
from flowbus.state.rocksdb import RocksDBBackend

NOW_MS = 1_700_000_000_000


@pytest.fixture
def backend() -> Iterator[RocksDBBackend]:
    backend = RocksDBBackend(MemoryBudget(cache_bytes=4 * MIB, write_buffer_bytes=4 * MIB))
    yield backend
    backend.close()


def _make_flushed_database(backend: RocksDBBackend, path: Path) -> None:
    """A database whose data sits in table files: bulk writes skip the WAL, so close flushes them."""
    db = backend.open(path, ["a"])
    db.write({"a": {b"k%05d" % i: b"v" * 50 for i in range(2000)}}, {b"offset": b"2000"}, bulk=True)
    db.close()
    assert list(path.glob("*.sst")), "the data must be in table files for the corruption cases"


def _garbage_current(path: Path) -> None:
    (path / "CURRENT").write_bytes(b"\x00garbage\xff")


def _garbage_manifest(path: Path) -> None:
    for manifest in path.glob("MANIFEST-*"):
        manifest.write_bytes(os.urandom(300))


def _truncated_table(path: Path) -> None:
    table = max(path.glob("*.sst"), key=lambda p: p.stat().st_size)
    with table.open("r+b") as file:
        file.truncate(table.stat().st_size // 2)


def _missing_current(path: Path) -> None:
    (path / "CURRENT").unlink()


CORRUPTIONS: dict[str, Callable[[Path], None]] = {
    "garbage CURRENT": _garbage_current,
    "garbage MANIFEST": _garbage_manifest,
    "truncated table file": _truncated_table,
    "missing CURRENT": _missing_current,
}


@pytest.mark.parametrize("corrupt", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_corrupt_database_fails_to_open(
    backend: RocksDBBackend, tmp_path: Path, corrupt: Callable[[Path], None]
) -> None:
    path = tmp_path / "db"
    _make_flushed_database(backend, path)
    corrupt(path)
    with pytest.raises(StoreOpenError, match=str(path)):
        backend.open(path, ["a"])


@pytest.mark.parametrize("corrupt", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_open_partition_moves_a_corrupt_database_aside_and_keeps_the_lock(
    backend: RocksDBBackend, tmp_path: Path, corrupt: Callable[[Path], None], caplog: pytest.LogCaptureFixture
) -> None:
    partition_dir = tmp_path / "app" / "0"
    lock = PartitionLock(partition_dir)
    lock.acquire(0)
    _make_flushed_database(backend, partition_dir / DATABASE_DIRNAME)
    corrupt(partition_dir / DATABASE_DIRNAME)

    with caplog.at_level(logging.WARNING, logger="flowbus.state"):
        db, moved_to = open_partition(backend, partition_dir, ["a"], now_ms=NOW_MS)

    assert moved_to == partition_dir / f"{DATABASE_DIRNAME}.corrupt-{NOW_MS}"
    assert moved_to.is_dir()
    assert list(db.items("a")) == [] and db.get_meta(b"offset") is None
    db.write({"a": {b"k": b"fresh"}})
    assert [r.getMessage() for r in caplog.records if r.name == "flowbus.state"] == [caplog.records[-1].getMessage()]
    message = caplog.records[-1].getMessage()
    assert str(moved_to) in message and "\n" not in message
    # The lock never moved: it is still held, by the same file.
    assert lock.held and (partition_dir / LOCK_FILENAME).exists()
    with pytest.raises(StoreLockedError):
        PartitionLock(partition_dir).acquire(0)
    db.close()
    lock.release()


def test_a_damaged_block_fails_reads_and_scans(backend: RocksDBBackend, tmp_path: Path) -> None:
    """rocksdict's own items() would end quietly at the damaged block: a scan must raise."""
    path = tmp_path / "db"
    _make_flushed_database(backend, path)
    table = max(path.glob("*.sst"), key=lambda p: p.stat().st_size)
    with table.open("r+b") as file:  # inside the first data block; the index and footer are intact
        file.seek(100)
        file.write(b"\x00" * 16)
    db = backend.open(path, ["a"])
    with pytest.raises(StateError, match="scan failed.*[Cc]orruption"):
        list(db.items("a"))
    with pytest.raises(StateError, match="[Cc]orruption"):
        db.get("a", b"k00001")
    db.close()


def test_open_partition_uses_a_new_name_when_the_first_is_taken(backend: RocksDBBackend, tmp_path: Path) -> None:
    partition_dir = tmp_path / "0"
    (partition_dir / f"{DATABASE_DIRNAME}.corrupt-{NOW_MS}").mkdir(parents=True)
    _make_flushed_database(backend, partition_dir / DATABASE_DIRNAME)
    _garbage_current(partition_dir / DATABASE_DIRNAME)
    db, moved_to = open_partition(backend, partition_dir, ["a"], now_ms=NOW_MS)
    assert moved_to == partition_dir / f"{DATABASE_DIRNAME}.corrupt-{NOW_MS}-1"
    db.close()


def test_open_partition_leaves_a_healthy_database_alone(backend: RocksDBBackend, tmp_path: Path) -> None:
    _make_flushed_database(backend, tmp_path / DATABASE_DIRNAME)
    db, moved_to = open_partition(backend, tmp_path, ["a"], now_ms=NOW_MS)
    assert moved_to is None
    assert db.get_meta(b"offset") == b"2000"
    db.close()


def test_foreign_format_version_fails_to_open(backend: RocksDBBackend, tmp_path: Path) -> None:
    path = tmp_path / DATABASE_DIRNAME
    db = backend.open(path, ["a"])
    db.write({"a": {b"k": b"v"}}, {FORMAT_KEY: (FORMAT_VERSION + 1).to_bytes(4, "big")})
    db.close()
    with pytest.raises(StoreOpenError, match=f"format version {FORMAT_VERSION + 1}"):
        backend.open(path, ["a"])
    # Refusing it closed the database again, so it can be moved aside and replaced.
    fresh, moved_to = open_partition(backend, tmp_path, ["a"], now_ms=NOW_MS)
    assert moved_to is not None and fresh.get("a", b"k") is None
    fresh.close()


def test_data_without_a_format_marker_is_not_ours(backend: RocksDBBackend, tmp_path: Path) -> None:
    path = tmp_path / "db"
    options = rocksdict.Options(raw_mode=True)
    options.create_missing_column_families(True)
    foreign = rocksdict.Rdict(str(path), options, column_families={"a": rocksdict.Options(raw_mode=True)})
    foreign.get_column_family("a").put(b"k", b"v")
    del foreign  # drops the column family's Rdict first: rocksdict only closes once every handle is gone
    with pytest.raises(StoreOpenError, match="no format marker"):
        backend.open(path, ["a"])


def test_a_database_open_twice_is_locked_not_corrupt(backend: RocksDBBackend, tmp_path: Path) -> None:
    """RocksDB's own LOCK refusing a second handle must not look like corruption: open_partition
    would move a healthy database aside."""
    db = backend.open(tmp_path / DATABASE_DIRNAME, ["a"])
    with pytest.raises(StoreLockedError):
        open_partition(backend, tmp_path, ["a"], now_ms=NOW_MS)
    assert not list(tmp_path.glob("*.corrupt-*"))
    db.close()


def test_bulk_writes_survive_a_clean_close(backend: RocksDBBackend, tmp_path: Path) -> None:
    db = backend.open(tmp_path / "db", ["a", "b"])
    db.write({"a": {b"k%04d" % i: b"%d" % i for i in range(1000)}, "b": {b"x": b"y"}}, {b"offset": b"1000"}, bulk=True)
    db.close()
    db = backend.open(tmp_path / "db", ["a", "b"])
    assert sum(1 for _ in db.items("a")) == 1000
    assert db.get("a", b"k0999") == b"999"
    assert db.get("b", b"x") == b"y"
    assert db.get_meta(b"offset") == b"1000"
    db.close()


_CRASHING_WRITER = """
import sys
from pathlib import Path
from flowbus.state.budget import MIB, MemoryBudget
from flowbus.state.rocksdb import RocksDBBackend
db = RocksDBBackend(MemoryBudget(4 * MIB, 4 * MIB)).open(Path(sys.argv[1]), ["a"])
db.write({"a": {b"k%04d" % i: b"restored" for i in range(1000)}}, {b"offset": b"1000"}, bulk=True)
db.write({"a": {b"live": b"1"}}, {b"offset": b"1001"})
print("written", flush=True)
sys.stdin.read()
"""


def test_a_write_after_bulk_writes_never_outlives_them_in_a_crash(tmp_path: Path, backend: RocksDBBackend) -> None:
    """Bulk writes skip the WAL; a later WAL write recording a newer offset would survive a
    SIGKILL that loses them, unless they were flushed first."""
    child = subprocess.Popen(
        [sys.executable, "-c", _CRASHING_WRITER, str(tmp_path / "db")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"written\n", child.stderr.read() if child.stderr else b""
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    db = backend.open(tmp_path / "db", ["a"])
    assert db.get_meta(b"offset") == b"1001"
    assert db.get("a", b"live") == b"1"
    assert sum(1 for _ in db.items("a")) == 1001
    db.close()


def test_databases_share_one_bounded_cache(tmp_path: Path) -> None:
    """20 databases with 40 MB of data between them, read in full through a 1 MiB block cache
    (plus 1 MiB of memtables): the one shared cache stays at its capacity."""
    budget = MemoryBudget(cache_bytes=1 * MIB, write_buffer_bytes=1 * MIB)
    backend = RocksDBBackend(budget)
    keys = [b"key%08d" % i for i in range(20_000)]
    value = bytes(range(100))
    dbs = [backend.open(tmp_path / str(n), ["a", "b"]) for n in range(20)]
    for db in dbs:
        for chunk in range(0, len(keys), 5_000):
            db.write({"a": dict.fromkeys(keys[chunk : chunk + 5_000], value)}, bulk=True)
        db.write({}, {b"offset": b"1"})  # flushes the bulk writes: the reads below come from table files

    peak_bytes = 0
    usage_before_bytes = budget.usage_bytes()
    for db in dbs:
        for key in keys[::4]:
            assert db.get("a", key) == value
        assert sum(1 for _ in db.items("a")) == len(keys)
        peak_bytes = max(peak_bytes, budget.usage_bytes())
    slack_bytes = 256 * 1024  # the LRU cache is not strict: blocks of the read in progress are pinned
    assert budget.usage_bytes() > usage_before_bytes  # the reads went through the shared cache
    assert peak_bytes <= budget.capacity_bytes + slack_bytes, (peak_bytes, budget.capacity_bytes)
    backend.close()
