from __future__ import annotations

import threading

import pytest

from flowbus.log.errors import OffsetOutOfRangeError, RecordTooLargeError
from flowbus.records import CorruptRecordError, decode_batch, read_header
from tests.log.conftest import START_MS, batch_offsets, make_batch


def test_append_assigns_dense_offsets_and_keeps_client_bytes(open_log) -> None:
    plog = open_log()
    batch = make_batch(3)
    first = plog.append(batch)
    second = plog.append(make_batch(2) + make_batch(4))
    assert (first.base_offset, first.last_offset, first.record_count) == (0, 2, 3)
    assert (second.base_offset, second.last_offset, second.record_count) == (3, 8, 6)
    assert plog.log_end_offset == plog.high_watermark == 9
    data = plog.read(0, 1 << 20)
    assert batch_offsets(data) == [(0, 2), (3, 4), (5, 8)]
    # Only the broker-owned fields changed: everything after the leader epoch is the client's.
    assert data[16 : len(batch)] == batch[16:]


def test_append_sets_leader_epoch_and_log_append_time(open_log, clock) -> None:
    plog = open_log(message_timestamp_type="LogAppendTime")
    result = plog.append(make_batch(2, timestamp_ms=5), leader_epoch=7)
    assert result.log_append_time_ms == START_MS
    header, records = decode_batch(plog.read(0, 1 << 20))
    assert header.partition_leader_epoch == 7 and header.is_log_append_time
    assert [r.timestamp_ms for r in records] == [START_MS, START_MS]


def test_append_rejects_corrupt_and_oversized_batches(open_log) -> None:
    plog = open_log(max_message_bytes="200")
    bad = bytearray(make_batch(1))
    bad[-1] ^= 0xFF
    with pytest.raises(CorruptRecordError):
        plog.append(bytes(bad))
    with pytest.raises(CorruptRecordError):
        plog.append(make_batch(1) + b"\x00\x01")
    with pytest.raises(RecordTooLargeError):
        plog.append(make_batch(5, value_size=100))
    assert plog.log_end_offset == 0 and plog.size_bytes == 0


def test_read_limits(open_log) -> None:
    plog = open_log(index_interval_bytes="1")
    for _ in range(10):
        plog.append(make_batch(2, value_size=50))
    size = read_header(plog.read(0, 1 << 20)).size_bytes
    assert batch_offsets(plog.read(5, 1 << 20))[0] == (4, 5)
    assert len(plog.read(0, size * 3 + 10)) == size * 3
    assert len(plog.read(0, 1)) == size  # KIP-74: at least one whole batch
    assert plog.read(0, 1, min_one_batch=False) == b""
    assert batch_offsets(plog.read(0, 1 << 20, max_offset=6)) == [(0, 1), (2, 3), (4, 5)]
    assert plog.read(6, 1 << 20, max_offset=6) == b""
    assert plog.read(20, 1 << 20) == b""
    with pytest.raises(OffsetOutOfRangeError):
        plog.read(21, 100)
    with pytest.raises(OffsetOutOfRangeError):
        plog.read(-1, 100)


def test_reads_cross_segments(open_log) -> None:
    plog = open_log(segment_bytes="300")
    for _ in range(20):
        plog.append(make_batch(1, value_size=60))
    assert plog.segment_count > 5
    offset = 0
    seen = []
    while offset < plog.log_end_offset:
        data = plog.read(offset, 1 << 20)
        assert data
        for base, last in batch_offsets(data):
            seen.append(base)
            offset = last + 1
    assert seen == list(range(20))
    assert [h.base_offset for h, _ in plog.iter_batches(7)] == list(range(7, 20))


def test_offset_for_timestamp(open_log) -> None:
    plog = open_log(segment_bytes="400", index_interval_bytes="50")
    for i in range(30):
        plog.append(make_batch(2, timestamp_ms=START_MS + i * 10))
    assert plog.offset_for_timestamp(0) == (0, START_MS)
    assert plog.offset_for_timestamp(START_MS + 55) == (12, START_MS + 60)
    assert plog.offset_for_timestamp(START_MS + 290) == (58, START_MS + 290)
    assert plog.offset_for_timestamp(START_MS + 291) is None


def test_flush_messages_one_fsyncs_every_append(open_log) -> None:
    plog = open_log(flush_messages="1")
    plog.append(make_batch(1))
    assert plog.recovery_point == 1
    deferred = plog.append(make_batch(1), defer_flush=True)
    assert deferred.flush_required and plog.recovery_point == 1
    plog.flush()
    assert plog.recovery_point == 2


def test_flush_ms_driven_by_time(open_log, clock) -> None:
    plog = open_log(flush_ms="1000")
    plog.append(make_batch(1))
    assert plog.recovery_point == 0 and not plog.flush_due()
    clock.advance(999)
    assert not plog.flush_due()
    clock.advance(1)
    assert plog.flush_due()
    plog.append(make_batch(1))  # an append past the deadline flushes by itself
    assert plog.recovery_point == 2 and not plog.flush_due()


def test_flush_from_another_thread_while_appending(open_log) -> None:
    plog = open_log()
    stop = threading.Event()
    errors: list[BaseException] = []

    def flusher() -> None:
        try:
            while not stop.is_set():
                plog.flush()
        except Exception as exc:  # noqa: BLE001 - any failure in the thread is reported below
            errors.append(exc)

    thread = threading.Thread(target=flusher)
    thread.start()
    try:
        for _ in range(300):
            plog.append(make_batch(2))
            plog.read(0, 1 << 16)
    finally:
        stop.set()
        thread.join()
    assert not errors
    plog.flush()
    assert plog.recovery_point == plog.log_end_offset == 600


def test_roll_by_size_age_and_full_index(open_log, clock) -> None:
    plog = open_log(segment_bytes="1000")
    for _ in range(12):
        plog.append(make_batch(1, value_size=100))
    batch_bytes = len(make_batch(1, value_size=100))
    per_segment = 1000 // batch_bytes
    assert all(s.size_bytes <= 1000 for s in plog.segments())
    assert plog.segment_count == -(-12 // per_segment)

    aged = open_log(directory=plog.directory.parent / "aged", segment_ms="1000")
    aged.append(make_batch(1))
    clock.advance(1001)
    aged.append(make_batch(1, timestamp_ms=clock.now_ms()))
    assert aged.segment_count == 2
    clock.advance(1001)
    assert aged.maybe_roll_by_age() and aged.segment_count == 3
    assert not aged.maybe_roll_by_age()  # an empty active segment never rolls

    full = open_log(directory=plog.directory.parent / "full", segment_index_bytes="16", index_interval_bytes="1")
    for _ in range(6):
        full.append(make_batch(1))
    assert full.segment_count >= 2
    assert all(len(s.offset_index) <= 2 for s in full.segments())


def test_inactive_segments_hold_one_descriptor(open_log) -> None:
    import os

    plog = open_log(segment_bytes="300")
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(30):
        plog.append(make_batch(1, value_size=100))
    plog.flush()
    segments = plog.segments()
    assert len(segments) > 10
    opened = len(os.listdir("/proc/self/fd")) - before
    assert opened <= len(segments) + 2 + 2  # one per segment, plus the active segment's two indexes
    assert batch_offsets(plog.read(3, 1 << 20))[0] == (3, 3)  # lookups need no index file


def test_failed_fsync_raises_storage_error_and_is_retried(open_log, monkeypatch) -> None:
    import os as os_module

    from flowbus.log.errors import StorageError

    plog = open_log()
    plog.append(make_batch(1))
    real_fsync = os_module.fsync

    def failing(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os_module, "fsync", failing)
    with pytest.raises(StorageError):
        plog.flush()
    assert plog.recovery_point == 0
    monkeypatch.setattr(os_module, "fsync", real_fsync)
    synced: list[int] = []
    monkeypatch.setattr(os_module, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    plog.flush()
    assert plog.recovery_point == 1 and synced
