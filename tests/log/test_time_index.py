from __future__ import annotations

from pathlib import Path

from flowbus.log.time_index import ENTRY_BYTES, TimeIndex


def test_only_growing_timestamps_are_kept(tmp_path: Path) -> None:
    index = TimeIndex(tmp_path / "0.timeindex", base_offset=10, max_entries=10)
    assert index.maybe_append(1000, 12)
    assert not index.maybe_append(1000, 15)
    assert not index.maybe_append(900, 16)
    assert index.maybe_append(2000, 20)
    assert index.entries() == [(1000, 12), (2000, 20)]
    assert (tmp_path / "0.timeindex").stat().st_size == 2 * ENTRY_BYTES


def test_lookup_returns_scan_start(tmp_path: Path) -> None:
    index = TimeIndex(tmp_path / "0.timeindex", base_offset=10, max_entries=10)
    assert index.lookup(5) == 10
    index.maybe_append(1000, 12)
    index.maybe_append(2000, 20)
    assert index.lookup(1000) == 10  # strictly below: records at 1000 may start before 12
    assert index.lookup(1001) == 12
    assert index.lookup(5000) == 20


def test_reload_truncate_and_sanity(tmp_path: Path) -> None:
    path = tmp_path / "0.timeindex"
    index = TimeIndex(path, base_offset=0, max_entries=10)
    for i in range(4):
        index.maybe_append(100 * (i + 1), i * 5)
    index.truncate_to_offset(10)
    index.close()
    again = TimeIndex(path, base_offset=0, max_entries=10)
    assert again.load()
    assert again.entries() == [(100, 0), (200, 5)]
    path.write_bytes(path.read_bytes()[:-1])
    broken = TimeIndex(path, base_offset=0, max_entries=10)
    assert not broken.load() and len(broken) == 0
