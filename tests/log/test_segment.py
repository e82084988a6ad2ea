from __future__ import annotations

import os
from pathlib import Path

from flowbus.log.segment import LogSegment, SegmentLimits, segment_stem
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
