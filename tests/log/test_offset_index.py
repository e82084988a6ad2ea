from __future__ import annotations

from pathlib import Path

import pytest

from flowbus.log.offset_index import ENTRY_BYTES, OffsetIndex


def test_lookup_is_a_floor_search(tmp_path: Path) -> None:
    index = OffsetIndex(tmp_path / "0.index", base_offset=100, max_entries=10)
    assert index.lookup(150) == (100, 0)
    index.append(110, 1000)
    index.append(120, 2000)
    assert index.lookup(105) == (100, 0)
    assert index.lookup(110) == (110, 1000)
    assert index.lookup(119) == (110, 1000)
    assert index.lookup(500) == (120, 2000)
    assert index.last_entry == (120, 2000)
    assert (tmp_path / "0.index").stat().st_size == 2 * ENTRY_BYTES


def test_round_trip_through_the_file_is_big_endian_relative(tmp_path: Path) -> None:
    path = tmp_path / "0.index"
    index = OffsetIndex(path, base_offset=1 << 40, max_entries=10)
    index.append((1 << 40) + 5, 77)
    index.close()
    assert path.read_bytes() == b"\x00\x00\x00\x05\x00\x00\x00\x4d"
    again = OffsetIndex(path, base_offset=1 << 40, max_entries=10)
    assert again.load(records_size_bytes=100)
    assert again.entries() == [((1 << 40) + 5, 77)]


@pytest.mark.parametrize(
    "raw, size",
    [
        (b"\x00\x00\x00\x05\x00\x00\x00", 100),  # partial entry
        (b"\x00\x00\x00\x05\x00\x00\x00\x4d", 50),  # position past the records file
        (b"\x00\x00\x00\x05\x00\x00\x00\x4d\x00\x00\x00\x04\x00\x00\x00\x50", 100),  # offsets go backwards
    ],
)
def test_insane_files_are_rejected_and_emptied(tmp_path: Path, raw: bytes, size: int) -> None:
    path = tmp_path / "0.index"
    path.write_bytes(raw)
    index = OffsetIndex(path, base_offset=0, max_entries=10)
    assert not index.load(records_size_bytes=size)
    assert len(index) == 0 and path.stat().st_size == 0


def test_truncate_and_capacity(tmp_path: Path) -> None:
    index = OffsetIndex(tmp_path / "0.index", base_offset=0, max_entries=3)
    for i in range(3):
        index.append(i * 10, i * 100 + 50)
    assert index.is_full
    index.truncate_to_position(150)
    assert index.entries() == [(0, 50)]
    assert not index.is_full
    with pytest.raises(AssertionError):
        index.append(0, 60)  # offsets must grow


def test_sync_fd_only_when_dirty(tmp_path: Path) -> None:
    index = OffsetIndex(tmp_path / "0.index", base_offset=0, max_entries=3)
    assert index.take_sync_fd() is None
    index.append(1, 10)
    fd = index.take_sync_fd()
    assert fd is not None
    import os

    os.close(fd)
    assert index.take_sync_fd() is None
