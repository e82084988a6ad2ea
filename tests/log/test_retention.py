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


def _claiming_max_timestamp(batch: bytes, max_timestamp: int) -> bytes:
    """``batch`` with its header's max_timestamp replaced (CRC fixed), as a buggy producer sends it."""
    import struct

    from flowbus.records.header import CRC_POS, MAX_TIMESTAMP_POS, compute_crc

    edited = bytearray(batch)
    struct.pack_into(">q", edited, MAX_TIMESTAMP_POS, max_timestamp)
    struct.pack_into(">I", edited, CRC_POS, compute_crc(edited, 0, len(edited)))
    return bytes(edited)


def test_a_producers_max_timestamp_of_minus_one_is_not_trusted(open_log, clock) -> None:
    """Issue 10: sarama 1.22 sends max_timestamp -1; time retention deleted the segment at once."""
    plog = open_log(segment_bytes="500", retention_ms=str(HOUR_MS))
    for i in range(12):
        plog.append(_claiming_max_timestamp(make_batch(1, value_size=100, timestamp_ms=START_MS + i), -1))
    plog.flush()
    assert plog.segment_count > 2
    assert [s.max_timestamp_ms >= START_MS for s in plog.segments()] == [True] * plog.segment_count
    assert apply_retention(plog) == 0 and plog.log_start_offset == 0
    assert plog.offset_for_timestamp(START_MS + 7) == (7, START_MS + 7)
    clock.advance(HOUR_MS + 60_000)  # now they are old: retention applies as usual
    assert apply_retention(plog) > 0


def test_segments_without_any_timestamp_expire_by_their_last_write(open_log, clock) -> None:
    """Records with no timestamp (-1) leave a segment's max at -1: its age is its last write's."""
    plog = open_log(segment_bytes="500", retention_ms=str(HOUR_MS))
    for _ in range(12):
        plog.append(make_batch(1, value_size=100, timestamp_ms=-1))
        clock.advance(60_000)
    plog.flush()
    assert {s.max_timestamp_ms for s in plog.segments()} == {-1}
    assert apply_retention(plog) == 0
    clock.advance(HOUR_MS - 8 * 60_000 + 30_000)  # an hour after the 5th write, not the 6th
    assert apply_retention(plog) > 0
    assert 0 < plog.log_start_offset < 12
    assert all(clock.now_ms() - s.last_write_ms <= HOUR_MS for s in plog.segments())
