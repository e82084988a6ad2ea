from __future__ import annotations

from flowbus.log.retention import apply_retention
from tests.log.conftest import START_MS, make_batch

HOUR_MS = 3_600_000


def test_time_retention_deletes_whole_old_segments(open_log, clock) -> None:
    plog = open_log(segment_bytes="500", retention_ms=str(HOUR_MS), file_delete_delay_ms="1000")
    for i in range(12):
        plog.append(make_batch(1, value_size=100, timestamp_ms=START_MS + i * 60_000))
    plog.flush()
    segments_before = plog.segment_count
    assert apply_retention(plog) == 0
    clock.advance(HOUR_MS + 5 * 60_000)
    removed = apply_retention(plog)
    assert removed > 0 and plog.segment_count < segments_before
    first = plog.segments()[0]
    assert plog.log_start_offset == first.base_offset > 0
    assert clock.now_ms() - first.max_timestamp_ms <= HOUR_MS
    # Files are renamed and deleted after file.delete.delay.ms.
    assert any(p.name.endswith(".deleted") for p in plog.directory.iterdir())
    clock.advance(1000)
    assert plog.tick_deletes() > 0
    assert not any(p.name.endswith(".deleted") for p in plog.directory.iterdir())


def test_expired_active_segment_is_rolled_then_deleted(open_log, clock) -> None:
    plog = open_log(retention_ms=str(HOUR_MS))
    plog.append(make_batch(3))
    clock.advance(2 * HOUR_MS)
    apply_retention(plog)  # rolls: the active segment itself is never deleted
    assert plog.segment_count == 2 and plog.log_start_offset == 0
    plog.flush()
    apply_retention(plog)
    assert plog.segment_count == 1 and plog.log_start_offset == 3 == plog.log_end_offset
    assert plog.read(3, 100) == b""


def test_size_retention_keeps_at_least_retention_bytes(open_log) -> None:
    plog = open_log(segment_bytes="500", retention_bytes="1000")
    for _ in range(20):
        plog.append(make_batch(1, value_size=100))
    plog.flush()
    apply_retention(plog)
    assert plog.size_bytes >= 1000
    assert plog.size_bytes - plog.segments()[0].size_bytes < 1000


def test_log_start_offset_survives_restart(open_log, clock) -> None:
    plog = open_log(segment_bytes="500", retention_bytes="600")
    for _ in range(20):
        plog.append(make_batch(1, value_size=100))
    plog.flush()
    apply_retention(plog)
    start = plog.log_start_offset
    assert start > 0
    plog.close()
    assert open_log().log_start_offset == start


def test_compact_only_topics_are_not_deleted(open_log, clock) -> None:
    plog = open_log(cleanup_policy="compact", segment_bytes="500", retention_ms="1")
    for _ in range(10):
        plog.append(make_batch(1, value_size=100))
    plog.flush()
    clock.advance(HOUR_MS)
    assert apply_retention(plog) == 0
