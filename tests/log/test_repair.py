"""Offline check and repair of a data directory (``flowbus.log.repair``)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from flowbus.log.errors import CorruptLogError, LogError
from flowbus.log.manager import CLEAN_SHUTDOWN_FILE, LogManager
from flowbus.log.repair import (
    DataDirInUseError,
    check_data_dir,
    is_locked,
    repair_data_dir,
)
from flowbus.records import read_header
from tests.log.conftest import START_MS, batch_offsets, make_batch

BATCH_BYTES = len(make_batch(1, value_size=60))


def _data_dir(tmp_path: Path, clock, topics: dict[str, int]) -> Path:
    """A closed data directory: each topic has one partition of ``count`` 1-record batches, 3 per segment."""
    data_dir = tmp_path / "data"
    with_manager = LogManager(data_dir, clock=clock)
    try:
        for topic, count in topics.items():
            with_manager.create_topic(topic, 1, {"segment.bytes": "400", "index.interval.bytes": "1"})
            for _ in range(count):
                with_manager.get_log(topic, 0).append(make_batch(1, value_size=60))
    finally:
        with_manager.close()
    return data_dir


def _segment_file(data_dir: Path, topic: str, index: int) -> Path:
    return sorted((data_dir / f"{topic}-0").glob("*.log"))[index]


def _damage(path: Path, batch: int, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "length":
        struct.pack_into(">i", data, batch * BATCH_BYTES + 8, 0x7FFFFF00)
    else:
        data[batch * BATCH_BYTES + 80] ^= 0xFF
    path.write_bytes(bytes(data))


def _offsets(manager: LogManager, topic: str) -> list[int]:
    return [h.base_offset for h, _ in manager.get_log(topic, 0).iter_batches()]


def test_check_finds_every_range_and_changes_nothing(tmp_path: Path, clock) -> None:
    data_dir = _data_dir(tmp_path, clock, {"a": 12, "b": 12, "clean": 5})
    assert all(not p.damaged for p in check_data_dir(data_dir))
    _damage(_segment_file(data_dir, "a", 1), 2, "length")  # offset 5: the end of segment 3..5
    _damage(_segment_file(data_dir, "b", 2), 0, "payload")  # offset 6
    _damage(_segment_file(data_dir, "b", 2), 2, "payload")  # offset 8
    files = {p: p.read_bytes() for p in data_dir.rglob("*") if p.is_file()}
    found = {p.name: [(f.path.name, r.first_offset, r.end_offset) for f, r in p.damaged] for p in check_data_dir(data_dir)}
    assert found["a-0"] == [(f"{3:020d}.log", 5, 6)]
    assert found["b-0"] == [(f"{6:020d}.log", 6, 7), (f"{6:020d}.log", 8, 9)]
    assert found["clean-0"] == []
    assert {p: p.read_bytes() for p in data_dir.rglob("*") if p.is_file()} == files


@pytest.mark.parametrize("clean_shutdown", [True, False])
def test_repair_cuts_only_the_damage(tmp_path: Path, clock, clean_shutdown: bool) -> None:
    data_dir = _data_dir(tmp_path, clock, {"a": 12})
    _damage(_segment_file(data_dir, "a", 1), 1, "length")  # offset 4
    _damage(_segment_file(data_dir, "a", 2), 0, "payload")  # offset 6
    if not clean_shutdown:
        (data_dir / CLEAN_SHUTDOWN_FILE).unlink()
    cuts = repair_data_dir(data_dir)
    assert [(c.partition, c.damaged.first_offset, c.damaged.end_offset, c.damaged.size_bytes) for c in cuts] == [
        ("a-0", 4, 5, BATCH_BYTES),
        ("a-0", 6, 7, BATCH_BYTES),
    ]
    assert all(not p.damaged for p in check_data_dir(data_dir))
    assert repair_data_dir(data_dir) == []
    manager = LogManager(data_dir, clock=clock)
    try:
        plog = manager.get_log("a", 0)
        assert _offsets(manager, "a") == [0, 1, 2, 3, 5, 7, 8, 9, 10, 11]
        assert batch_offsets(plog.read(4, 1 << 20))[0] == (5, 5)  # a gap now, like compaction's
        assert plog.append(make_batch(1)).base_offset == 12
        assert plog.offset_for_timestamp(START_MS) == (0, START_MS)
        for segment in plog.segments():  # the rewritten segments' indexes were rebuilt
            for offset, position in segment.offset_index.entries():
                assert read_header(segment.read_batch(position, BATCH_BYTES)).last_offset == offset
    finally:
        manager.close()


def test_repair_of_a_damaged_last_segment_keeps_its_offsets(tmp_path: Path, clock) -> None:
    data_dir = _data_dir(tmp_path, clock, {"a": 8})  # segments 0..2, 3..5, 6..7
    _damage(_segment_file(data_dir, "a", 2), 1, "length")  # offset 7, the last one
    [cut] = repair_data_dir(data_dir)
    assert (cut.damaged.first_offset, cut.damaged.end_offset) == (7, 8)
    manager = LogManager(data_dir, clock=clock)
    try:
        plog = manager.get_log("a", 0)
        assert plog.log_end_offset == 8 and _offsets(manager, "a") == [0, 1, 2, 3, 4, 5, 6]
        assert plog.append(make_batch(1)).base_offset == 8  # offset 7 is not handed out again
    finally:
        manager.close()


def test_the_broker_reads_around_what_repair_would_cut(tmp_path: Path, clock) -> None:
    """Before repair, the log serves everything but the damage and fails reads of it."""
    data_dir = _data_dir(tmp_path, clock, {"a": 12})
    _damage(_segment_file(data_dir, "a", 1), 1, "payload")  # offset 4
    manager = LogManager(data_dir, clock=clock)
    try:
        plog = manager.get_log("a", 0)
        assert batch_offsets(plog.read(3, 1 << 20)) == [(3, 3)]
        with pytest.raises(CorruptLogError):
            plog.read(4, 1 << 20)
        assert batch_offsets(plog.read(5, 1 << 20)) == [(5, 5)]
        assert is_locked(data_dir)
        with pytest.raises(DataDirInUseError, match="in use"):
            repair_data_dir(data_dir)
    finally:
        manager.close()
    assert not is_locked(data_dir)
    assert len(repair_data_dir(data_dir)) == 1


def test_not_a_data_directory(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    with pytest.raises(LogError, match="not a flowbus data directory"):
        check_data_dir(tmp_path / "x")
