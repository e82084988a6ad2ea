"""Issue 10, item 7: idle segment files are closed and opened on demand.

Only a partition's active segment keeps its files open. An inactive segment opens its records
file when read, stays open while it is among the few most recently used of its partition, and is
released when idle; nothing written is released before its fsync, nothing being read is released,
and a roll that would pass the manager's descriptor budget first closes idle files, then fails
with the log's storage error. Descriptors are counted both ways: the process's ``/proc/self/fd``
and each segment's own count.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from flowbus.clock import ManualClock
from flowbus.log import LogManager
from flowbus.log.errors import StorageError
from flowbus.log.manager import IDLE_LOG_CLOSE_MS
from flowbus.log.partition_log import (
    FDS_PER_SEGMENT,
    IDLE_SEGMENT_CLOSE_MS,
    INACTIVE_SEGMENTS_OPEN_MAX,
    PartitionLog,
)
from flowbus.log.txn_index import AbortedTxn
from flowbus.records import iter_batches
from flowbus.records.record import decode_batch
from tests.log.conftest import START_MS, config, make_batch

pytestmark = pytest.mark.timeout(60)

#: One single-record batch of these settings fills a segment: every append rolls.
TINY_SEGMENT = {"segment_bytes": "100", "flush_ms": "0"}
SEGMENT_COUNT = 200


def process_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def value_of(offset: int) -> bytes:
    return f"value-{offset:05d}".encode()


def fill(plog: PartitionLog, count: int, first: int = 0) -> None:
    """Append ``count`` single-record batches, offset ``first + i`` carrying :func:`value_of`."""
    for i in range(count):  # bounded by count
        offset = first + i
        plog.append(make_batch(1, values=[value_of(offset)], timestamp_ms=START_MS + offset))


def values_read(plog: PartitionLog, offset: int) -> list[bytes | None]:
    """The record values of what a fetch at ``offset`` returns."""
    data = plog.read(offset, 1 << 20)
    values: list[bytes | None] = []
    for position, header in iter_batches(data):
        values.extend(record.value for record in decode_batch(data[position : position + header.size_bytes])[1])
    return values


def held_by_segments(plog: PartitionLog) -> int:
    return sum(segment.open_fd_count for segment in plog.segments())


@pytest.fixture
def many_segments(open_log) -> PartitionLog:
    plog = open_log(**TINY_SEGMENT)
    fill(plog, SEGMENT_COUNT)
    plog.flush()
    assert plog.segment_count == SEGMENT_COUNT
    return plog


def test_a_partition_of_many_segments_holds_its_active_segment_and_at_most_the_lru_limit(
    tmp_path: Path, clock: ManualClock
) -> None:
    before = process_fds()
    plog = PartitionLog.open(tmp_path / "t-0", "t", 0, config(**TINY_SEGMENT), clock=clock)
    try:
        fill(plog, SEGMENT_COUNT)
        plog.flush()
        assert plog.segment_count == SEGMENT_COUNT
        # Measured, not assumed: 200 segments used to hold 202 descriptors.
        assert process_fds() - before <= FDS_PER_SEGMENT + INACTIVE_SEGMENTS_OPEN_MAX
        assert held_by_segments(plog) == plog.open_fd_count <= FDS_PER_SEGMENT + INACTIVE_SEGMENTS_OPEN_MAX
        assert len(plog.open_inactive_segments()) <= INACTIVE_SEGMENTS_OPEN_MAX
        assert plog.segments()[-1].open_fd_count == FDS_PER_SEGMENT  # the active segment stays open
    finally:
        plog.close()
    assert process_fds() == before


def test_old_offsets_are_read_correctly_reopening_segments_on_demand(many_segments: PartitionLog, clock) -> None:
    plog = many_segments
    clock.advance(IDLE_SEGMENT_CLOSE_MS)
    plog.close_idle_segments()
    assert plog.open_inactive_segments() == []
    assert held_by_segments(plog) == FDS_PER_SEGMENT
    oldest = plog.segments()[0]
    assert not oldest.files_open
    assert values_read(plog, 0) == [value_of(0)]
    assert oldest.files_open  # reopened by the read, without recovery
    for offset in range(0, SEGMENT_COUNT, 3):  # bounded: every third segment
        assert values_read(plog, offset) == [value_of(offset)]
        assert len(plog.open_inactive_segments()) <= INACTIVE_SEGMENTS_OPEN_MAX
    assert held_by_segments(plog) <= FDS_PER_SEGMENT + INACTIVE_SEGMENTS_OPEN_MAX
    # The most recently read segments are the ones kept.
    kept = {segment.base_offset for segment in plog.open_inactive_segments()}
    assert (SEGMENT_COUNT - 2) // 3 * 3 in kept


def test_lookups_by_time_and_iteration_reopen_and_stay_bounded(many_segments: PartitionLog, clock) -> None:
    plog = many_segments
    clock.advance(IDLE_SEGMENT_CLOSE_MS)
    plog.close_idle_segments()
    assert plog.offset_for_timestamp(START_MS + 17) == (17, START_MS + 17)
    assert len(plog.open_inactive_segments()) == 1
    seen = [header.base_offset for header, _ in plog.iter_batches(0)]
    assert seen == list(range(SEGMENT_COUNT))
    # The iteration ran outside the log's lock; each reopen kept the bound.
    assert len(plog.open_inactive_segments()) <= INACTIVE_SEGMENTS_OPEN_MAX


def test_idle_segments_are_released_at_the_tick_and_recent_ones_kept(many_segments: PartitionLog, clock) -> None:
    plog = many_segments
    values_read(plog, 5)
    values_read(plog, 6)
    clock.advance(IDLE_SEGMENT_CLOSE_MS - 1)
    values_read(plog, 7)
    clock.advance(1)
    plog.close_idle_segments()
    assert [s.base_offset for s in plog.open_inactive_segments()] == [7]
    clock.advance(IDLE_SEGMENT_CLOSE_MS)
    assert plog.close_idle_segments() == 1
    assert plog.open_inactive_segments() == []
    assert held_by_segments(plog) == FDS_PER_SEGMENT


def test_a_segment_is_never_released_while_read_unsynced_or_being_synced(open_log, clock) -> None:
    plog = open_log(segment_bytes="100", flush_ms="100000")
    fill(plog, 3)
    first = plog.segments()[0]
    # Rolled past but not fsynced: it keeps its files (records and indexes).
    assert first.has_unsynced_writes
    assert first.release_files() == 0
    clock.advance(IDLE_SEGMENT_CLOSE_MS)
    plog.close_idle_segments(keep=0)
    assert first.files_open
    plog.flush()
    # A read in progress pins the records file.
    reading = first.iter_batches()
    header, _ = next(reading)
    assert header.base_offset == 0
    assert first.release_files() == 0
    reading.close()
    assert first.release_files() >= 1
    assert first.open_fd_count == 0
    # An fsync of duplicated descriptors in flight holds it too; a failed one makes it dirty again.
    first.mark_dirty()
    fds = first.take_sync_fds()
    assert fds and first.release_files() == 0
    for fd in fds:
        os.close(fd)
    first.sync_finished(ok=False)
    assert first.has_unsynced_writes and first.release_files() == 0
    first.sync()
    assert first.release_files() >= 1
    assert values_read(plog, 0) == [value_of(0)]


def test_an_old_segment_written_again_is_synced_and_then_released(many_segments: PartitionLog, clock) -> None:
    # A replayed abort marker adds a .txnindex entry to a segment long below the recovery point.
    plog = many_segments
    clock.advance(IDLE_SEGMENT_CLOSE_MS)
    plog.close_idle_segments()
    old = plog.segments()[3]
    assert plog.add_aborted_txn(AbortedTxn(producer_id=7, first_offset=1, last_offset=3, last_stable_offset=1))
    assert old.has_unsynced_writes and old in plog.open_inactive_segments()
    plog.close_idle_segments(keep=0)
    assert old.open_fd_count == 1  # its unsynced .txnindex keeps its descriptor
    plog.flush()
    assert not old.has_unsynced_writes
    plog.close_idle_segments(keep=0)
    assert old.open_fd_count == 0 and plog.open_inactive_segments() == []
    assert plog.aborted_transactions(0, 10) == [AbortedTxn(7, 1, 3, 1)]


def test_flushes_on_another_thread_while_reads_release_and_reopen(open_log, clock) -> None:
    plog = open_log(segment_bytes="100", flush_ms="100000")
    fill(plog, 40)
    stop = threading.Event()
    failures: list[BaseException] = []

    def flusher() -> None:
        try:
            for _ in range(2_000):  # bounded
                if stop.is_set():
                    return
                plog.flush()
        except Exception as exc:  # noqa: BLE001 - any failure in the thread is reported below
            failures.append(exc)

    thread = threading.Thread(target=flusher)
    thread.start()
    try:
        for round_number in range(30):  # bounded: appends roll, reads reopen, ticks release
            fill(plog, 2, first=40 + 2 * round_number)
            for offset in range(0, 40 + 2 * round_number, 7):
                assert values_read(plog, offset) == [value_of(offset)]
            clock.advance(IDLE_SEGMENT_CLOSE_MS)
            plog.close_idle_segments()
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not failures
    plog.flush()
    plog.close_idle_segments(keep=0)
    assert held_by_segments(plog) == FDS_PER_SEGMENT


def test_restart_after_releases_needs_no_recovery_and_loses_nothing(open_log, tmp_path: Path, clock) -> None:
    plog = open_log(**TINY_SEGMENT)
    fill(plog, SEGMENT_COUNT)
    for offset in range(0, SEGMENT_COUNT, 11):
        values_read(plog, offset)
    clock.advance(IDLE_SEGMENT_CLOSE_MS)
    plog.close_idle_segments()
    plog.close()
    before = process_fds()
    reopened = open_log(tmp_path / "t-0", clean_shutdown=False, **TINY_SEGMENT)
    assert reopened.bytes_validated_on_open == 0 and reopened.bytes_cut_on_open == 0
    # Trusted segments are read at open and released: only the active segment stays open.
    assert process_fds() - before == FDS_PER_SEGMENT
    assert reopened.log_end_offset == SEGMENT_COUNT
    assert [values_read(reopened, offset) for offset in range(SEGMENT_COUNT)] == [
        [value_of(offset)] for offset in range(SEGMENT_COUNT)
    ]


# -- the manager's budget ---------------------------------------------------------------------


def _tiny_manager(tmp_path: Path, clock: ManualClock, spare: int) -> LogManager:
    """A manager whose budget leaves ``spare`` descriptors beyond what is open now."""
    return LogManager(tmp_path, clock=clock, fd_budget=process_fds() + spare)


def test_rolls_stay_within_the_budget_by_closing_idle_segment_files(tmp_path: Path, clock) -> None:
    # The lock file, one active segment and one roll: no room for the LRU's inactive segments.
    with _tiny_manager(tmp_path, clock, spare=1 + 2 * FDS_PER_SEGMENT + 1) as manager:
        manager.create_topic("t", 1, {"segment.bytes": "100", "flush.ms": "0"})
        plog = manager.get_log("t", 0)
        for offset in range(60):  # bounded: 60 rolls
            plog.append(make_batch(1, values=[value_of(offset)]))
            if offset % 5 == 0:
                assert values_read(plog, offset // 2) == [value_of(offset // 2)]
            assert manager.descriptors_in_use() <= manager.fd_budget
        assert plog.segment_count == 60
        assert manager.log_descriptor_count() == plog.open_fd_count <= manager.fd_budget


def test_a_roll_closes_idle_partitions_and_fails_cleanly_when_nothing_can_be_closed(tmp_path: Path, clock) -> None:
    with _tiny_manager(tmp_path, clock, spare=1 + 3 * FDS_PER_SEGMENT) as manager:
        manager.create_topic("idle", 1)
        manager.create_topic("t", 1, {"segment.bytes": "100", "flush.ms": "0"})
        manager.get_log("idle", 0).append(make_batch(1))
        plog = manager.get_log("t", 0)
        plog.append(make_batch(1, values=[value_of(0)]))
        # Use up the rest of the budget with other files, as sockets would.
        spare = manager.fd_budget - manager.descriptors_in_use()
        others = [os.open(os.devnull, os.O_RDONLY) for _ in range(spare)]
        try:
            # "idle" was used just now: a roll finds nothing it may close and fails cleanly.
            with pytest.raises(StorageError, match="file descriptor budget") as caught:
                plog.append(make_batch(1, values=[value_of(1)]))
            assert caught.value.errno == 56  # KAFKA_STORAGE_ERROR: the producer retries
            assert plog.log_end_offset == 1 and plog.segment_count == 1
            assert manager.descriptors_in_use() <= manager.fd_budget
            # Two minutes later "idle" may be closed (flushed and checkpointed) to make room.
            clock.advance(IDLE_LOG_CLOSE_MS)
            manager.get_log("t", 0)
            assert plog.append(make_batch(1, values=[value_of(1)])).base_offset == 1
            assert manager.deferred_partitions == 1
            assert manager.descriptors_in_use() <= manager.fd_budget
        finally:
            for fd in others:
                os.close(fd)
        assert manager.get_log("idle", 0).log_end_offset == 1  # reopened on use
    with LogManager(tmp_path, clock=clock) as manager:
        plog = manager.get_log("t", 0)
        assert plog.bytes_validated_on_open == 0
        assert [values_read(plog, offset) for offset in range(2)] == [[value_of(0)], [value_of(1)]]


def test_the_manager_tick_releases_idle_segments_of_every_log(tmp_path: Path, clock) -> None:
    with LogManager(tmp_path, clock=clock) as manager:
        manager.create_topic("t", 2, {"segment.bytes": "100", "flush.ms": "0"})
        for partition in range(2):
            plog = manager.get_log("t", partition)
            fill(plog, 30)
            for offset in range(0, 30, 4):
                values_read(plog, offset)
        assert manager.log_descriptor_count() <= 2 * (FDS_PER_SEGMENT + INACTIVE_SEGMENTS_OPEN_MAX)
        clock.advance(IDLE_SEGMENT_CLOSE_MS)
        manager.tick()
        assert manager.log_descriptor_count() == 2 * FDS_PER_SEGMENT
