from __future__ import annotations

import logging
import os
import struct
from pathlib import Path

import pytest

from flowbus.log.errors import CorruptLogError
from flowbus.log.segment import (
    LogSegment,
    SegmentLimits,
    check_records_file,
    find_next_batch,
    segment_stem,
)
from flowbus.records import check_batch, iter_batches, read_header, set_base_offset
from tests.log.conftest import START_MS, batch_offsets, make_batch

LIMITS = SegmentLimits(index_interval_bytes=200, offset_index_max_entries=100, time_index_max_entries=100)


def _append(segment: LogSegment, offset: int, count: int, timestamp_ms: int = START_MS, value_size: int = 50) -> None:
    data = bytearray(make_batch(count, timestamp_ms=timestamp_ms, value_size=value_size))
    set_base_offset(data, 0, offset)
    segment.append(data, [(0, read_header(data))])


def test_files_are_named_by_base_offset(tmp_path: Path) -> None:
    LogSegment.create(tmp_path, 1234, LIMITS).close()
    assert segment_stem(1234) == "00000000000000001234"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "00000000000000001234.index",
        "00000000000000001234.log",
        "00000000000000001234.timeindex",
    ]


def test_append_indexes_every_interval_and_tracks_state(tmp_path: Path) -> None:
    segment = LogSegment.create(tmp_path, 0, LIMITS)
    for i in range(10):
        _append(segment, i * 2, 2, timestamp_ms=START_MS + i)
    batch_bytes = len(make_batch(2, value_size=50))
    assert segment.size_bytes == os.path.getsize(segment.path) == 10 * batch_bytes
    assert segment.next_offset == 20
    assert segment.max_timestamp_ms == START_MS + 9 and segment.offset_of_max_timestamp == 19
    entries = segment.offset_index.entries()
    assert entries and all(p % batch_bytes == 0 for _, p in entries)
    for offset, position in entries:
        assert check_batch(segment.read_batch(position, batch_bytes)).last_offset == offset
    assert segment.first_batch_timestamp_ms == START_MS


def test_read_locates_through_index_and_respects_limits(tmp_path: Path) -> None:
    segment = LogSegment.create(tmp_path, 0, LIMITS)
    for i in range(10):
        _append(segment, i * 2, 2)
    batch_bytes = len(make_batch(2, value_size=50))
    assert batch_offsets(segment.read(7, 10_000, None, True) or b"")[0] == (6, 7)
    assert len(segment.read(0, batch_bytes * 2 + 1, None, True) or b"") == batch_bytes * 2
    assert batch_offsets(segment.read(0, 10_000, 4, True) or b"") == [(0, 1), (2, 3)]
    assert segment.read(20, 10_000, None, True) is None
    assert segment.locate(13) == (6 * batch_bytes, segment.locate(12)[1])  # type: ignore[index]


def test_recovery_rebuilds_the_same_indexes(tmp_path: Path) -> None:
    segment = LogSegment.create(tmp_path, 0, LIMITS)
    for i in range(10):
        _append(segment, i * 2, 2, timestamp_ms=START_MS + i)
    offsets, times = segment.offset_index.entries(), segment.time_index.entries()
    segment.close()
    reopened, cut = LogSegment.open_existing(tmp_path, 0, LIMITS, validate_from_position=0)
    assert cut == 0
    assert reopened.offset_index.entries() == offsets
    assert reopened.time_index.entries() == times
    assert reopened.next_offset == 20 and reopened.max_timestamp_ms == START_MS + 9


def test_trusted_open_reads_only_the_tail(tmp_path: Path) -> None:
    segment = LogSegment.create(tmp_path, 0, LIMITS)
    for i in range(10):
        _append(segment, i * 2, 2, timestamp_ms=START_MS + i)
    size = segment.size_bytes
    segment.close()
    reopened, cut = LogSegment.open_existing(tmp_path, 0, LIMITS, validate_from_position=size)
    assert cut == 0 and reopened.next_offset == 20 and reopened.max_timestamp_ms == START_MS + 9


def test_iter_batches_and_headers(tmp_path: Path) -> None:
    segment = LogSegment.create(tmp_path, 0, LIMITS)
    for i in range(5):
        _append(segment, i * 2, 2)
    assert [h.base_offset for h, _ in segment.iter_batches(5)] == [4, 6, 8]
    assert [h.base_offset for _, h in segment.iter_headers()] == [0, 2, 4, 6, 8]
    for header, data in segment.iter_batches():
        assert [h for _, h in iter_batches(data)] == [header]


def test_batches_larger_than_the_scan_chunk(tmp_path: Path, monkeypatch) -> None:
    import flowbus.log.segment as module

    monkeypatch.setattr(module, "HEADER_SCAN_CHUNK_BYTES", 128)
    monkeypatch.setattr(module, "BATCH_SCAN_CHUNK_BYTES", 256)
    segment = LogSegment.create(tmp_path, 0, LIMITS)
    for i in range(6):
        _append(segment, i * 3, 3, value_size=200)
    segment.close()
    reopened, cut = LogSegment.open_existing(tmp_path, 0, LIMITS, validate_from_position=0)
    assert cut == 0 and reopened.next_offset == 18
    assert [h.base_offset for h, _ in reopened.iter_batches()] == [0, 3, 6, 9, 12, 15]
    assert batch_offsets(reopened.read(10, 100, None, True) or b"") == [(9, 11)]


def _damaged_segment(tmp_path: Path, *, flip_at: int | None = None, length_at: int | None = None) -> LogSegment:
    """Ten 2-record batches (offsets 0..19); damage batch 3 (offsets 6, 7); reopen trusting every byte."""
    segment = LogSegment.create(tmp_path, 0, LIMITS)
    for i in range(10):
        _append(segment, i * 2, 2)
    size = segment.size_bytes
    segment.close()
    batch_bytes = size // 10
    data = bytearray((tmp_path / f"{segment_stem(0)}.log").read_bytes())
    if flip_at is not None:
        data[batch_bytes * 3 + flip_at] ^= 0xFF
    if length_at is not None:
        struct.pack_into(">i", data, batch_bytes * 3 + 8, length_at)
    (tmp_path / f"{segment_stem(0)}.log").write_bytes(bytes(data))
    reopened, cut = LogSegment.open_existing(tmp_path, 0, LIMITS, validate_from_position=size)
    assert cut == 0
    return reopened


@pytest.mark.parametrize("damage", [{"flip_at": 100}, {"length_at": 0x7FFFFF00}, {"length_at": 20}, {"flip_at": 2}])
def test_damage_met_by_a_read_is_mapped_once_and_stepped_over(tmp_path: Path, caplog, damage: dict[str, int]) -> None:
    segment = _damaged_segment(tmp_path, **damage)
    batch_bytes = segment.size_bytes // 10
    with caplog.at_level(logging.WARNING):
        assert batch_offsets(segment.read(0, 1 << 20, None, True) or b"") == [(0, 1), (2, 3), (4, 5)]
        for offset in (6, 7):
            with pytest.raises(CorruptLogError) as raised:
                segment.read(offset, 1 << 20, None, True)
            assert raised.value.errno == 2 and (raised.value.first_offset, raised.value.end_offset) == (6, 8)
        assert batch_offsets(segment.read(8, 1 << 20, None, True) or b"")[0] == (8, 9)
        assert [h.base_offset for h, _ in segment.iter_batches()] == [0, 2, 4, 8, 10, 12, 14, 16, 18]
        assert [h.base_offset for _, h in segment.iter_headers()] == [0, 2, 4, 8, 10, 12, 14, 16, 18]
    assert [(r.position, r.end_position, r.first_offset, r.end_offset) for r in segment.damaged] == [
        (batch_bytes * 3, batch_bytes * 4, 6, 8)
    ]
    assert len([r for r in caplog.records if "damaged data" in r.getMessage()]) == 1


def test_reads_after_the_damage_need_no_scan_across_it(tmp_path: Path, caplog) -> None:
    """A consumer that seeks past the damage first still gets data, and the damage is reported once."""
    segment = _damaged_segment(tmp_path, flip_at=100)
    with caplog.at_level(logging.WARNING):
        assert batch_offsets(segment.read(12, 1 << 20, None, True) or b"")[0] == (12, 13)
        assert batch_offsets(segment.read(0, 1 << 20, None, True) or b"")[-1] == (4, 5)
        with pytest.raises(CorruptLogError):
            segment.read(6, 1 << 20, None, True)
    assert len([r for r in caplog.records if "damaged data" in r.getMessage()]) == 1


def test_first_read_checks_trusted_bytes_once(tmp_path: Path, monkeypatch) -> None:
    segment = _damaged_segment(tmp_path)  # nothing damaged
    import flowbus.log.segment as module

    checked: list[int] = []
    original = module.check_batch
    monkeypatch.setattr(module, "check_batch", lambda buf, pos=0: checked.append(pos) or original(buf, pos))
    assert len(batch_offsets(segment.read(0, 1 << 20, None, True) or b"")) == 10
    assert len(checked) == 10
    segment.read(0, 1 << 20, None, True)
    assert len(checked) == 10  # verified bytes are not checked again


def test_find_next_batch_skips_garbage_across_chunks(tmp_path: Path, monkeypatch) -> None:
    import flowbus.log.segment as module

    monkeypatch.setattr(module, "RESYNC_CHUNK_BYTES", 100)
    batch = bytearray(make_batch(2, value_size=50))
    set_base_offset(batch, 0, 40)
    garbage = bytes([2, 0, 0, 0, 2]) * 60  # magic bytes everywhere, no valid batch
    path = tmp_path / "x.log"
    path.write_bytes(garbage + bytes(batch) + garbage)
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        found = find_next_batch(fd, 0, size, 0, 0)
        assert found is not None and found[0] == len(garbage) and found[1].base_offset == 40
        assert find_next_batch(fd, 0, size, 41, 0) is None  # offsets must not go backwards
        assert find_next_batch(fd, len(garbage), size, 0, 0) is None
    finally:
        os.close(fd)


def test_check_records_file_reads_only(tmp_path: Path) -> None:
    segment = _damaged_segment(tmp_path, length_at=0x7FFFFF00)
    segment.close()
    path = tmp_path / f"{segment_stem(0)}.log"
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    checked = check_records_file(path, 0)
    assert checked.batch_count == 9 and checked.next_offset == 20
    assert [(r.first_offset, r.end_offset) for r in checked.damaged] == [(6, 8)]
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before


@pytest.mark.parametrize(("segment_base", "batch_base"), [(5 << 32, (5 << 32) + 100), ((1 << 32) - 10, (1 << 32) + 5)])
def test_find_next_batch_with_large_offsets(tmp_path: Path, segment_base: int, batch_base: int) -> None:
    batch = bytearray(make_batch(1))
    set_base_offset(batch, 0, batch_base)
    path = tmp_path / "x.log"
    path.write_bytes(bytes(range(256)) * 40 + bytes(batch))
    fd = os.open(path, os.O_RDONLY)
    try:
        found = find_next_batch(fd, 0, os.fstat(fd).st_size, segment_base, segment_base)
        assert found is not None and found[0] == 256 * 40 and found[1].base_offset == batch_base
    finally:
        os.close(fd)
