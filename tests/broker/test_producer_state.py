"""Idempotence checks of the produce path: epochs, sequences, the retry cache, rebuilding."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from flowbus.broker.producer_state import (
    RETRY_CACHE_BATCHES_MAX,
    PartitionProducerState,
    ProducerIdManager,
    Verdict,
)
from flowbus.protocol.error_codes import ErrorCode
from flowbus.records.builder import BatchBuilder
from flowbus.records.header import BatchHeader, read_header


def batch(
    pid: int, epoch: int, seq: int, count: int = 3, *, base_offset: int = 0
) -> BatchHeader:
    builder = BatchBuilder(producer_id=pid, producer_epoch=epoch, base_sequence=seq)
    for _ in range(count):
        builder.append(None, b"v", timestamp_ms=1)
    raw = builder.build()
    return dataclasses.replace(read_header(raw), base_offset=base_offset)


def appended(state: PartitionProducerState, header: BatchHeader, offset: int) -> None:
    assert state.check(header).verdict is Verdict.APPEND
    state.record(header, offset, -1)


def test_first_batch_must_start_at_zero() -> None:
    state = PartitionProducerState()
    assert state.check(batch(1, 0, 0)).verdict is Verdict.APPEND
    rejected = state.check(batch(1, 0, 5))
    assert (
        rejected.verdict is Verdict.REJECT
        and rejected.error_code == ErrorCode.UNKNOWN_PRODUCER_ID
    )


def test_sequence_must_continue() -> None:
    state = PartitionProducerState()
    appended(state, batch(1, 0, 0, 3), 0)
    assert state.check(batch(1, 0, 3)).verdict is Verdict.APPEND
    gap = state.check(batch(1, 0, 4))
    assert gap.error_code == ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER


def test_retry_is_answered_with_original_offset() -> None:
    state = PartitionProducerState()
    appended(state, batch(1, 0, 0, 3), 100)
    appended(state, batch(1, 0, 3, 3), 200)
    retry = state.check(batch(1, 0, 0, 3))
    assert retry.verdict is Verdict.DUPLICATE
    assert (
        retry.original is not None
        and retry.original.base_offset == 100
        and retry.original.last_offset == 102
    )


def test_only_last_five_batches_are_cached() -> None:
    state = PartitionProducerState()
    for i in range(RETRY_CACHE_BATCHES_MAX + 1):
        appended(state, batch(1, 0, i, 1), i)
    assert (
        state.check(batch(1, 0, 0, 1)).error_code
        == ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER
    )
    assert state.check(batch(1, 0, 1, 1)).verdict is Verdict.DUPLICATE


def test_epochs() -> None:
    state = PartitionProducerState()
    appended(state, batch(1, 3, 0, 2), 0)
    assert state.check(batch(1, 2, 2)).error_code == ErrorCode.INVALID_PRODUCER_EPOCH
    assert (
        state.check(batch(1, 4, 7)).error_code == ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER
    )
    appended(state, batch(1, 4, 0, 1), 2)
    # The old epoch is fenced from now on.
    assert state.check(batch(1, 3, 2)).error_code == ErrorCode.INVALID_PRODUCER_EPOCH


def test_sequence_wraps_at_int32_max() -> None:
    state = PartitionProducerState()
    big = (1 << 31) - 2
    # A rebuilt entry near the wrap point: sequences 2^31-2 .. 2^31-1.
    state.rebuild([batch(1, 0, big, 2, base_offset=10)])
    assert state.check(batch(1, 0, 0, 1)).verdict is Verdict.APPEND
    assert (
        state.check(batch(1, 0, 1, 1)).error_code
        == ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER
    )


def test_rebuild_from_log_recognises_retries() -> None:
    state = PartitionProducerState()
    headers = [batch(9, 0, 0, 2, base_offset=0), batch(9, 0, 2, 2, base_offset=2)]
    assert state.rebuild(headers) == 2
    dup = state.check(batch(9, 0, 2, 2))
    assert (
        dup.verdict is Verdict.DUPLICATE
        and dup.original is not None
        and dup.original.base_offset == 2
    )
    assert state.check(batch(9, 0, 4, 1)).verdict is Verdict.APPEND


def test_non_idempotent_batches_pass() -> None:
    state = PartitionProducerState()
    assert state.check(batch(-1, -1, -1)).verdict is Verdict.APPEND
    state.record(batch(-1, -1, -1), 0, -1)
    assert len(state) == 0


def test_producer_ids_never_repeat_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "producer_ids"
    first = ProducerIdManager(path, block_size=10)
    ids = [first.allocate() for _ in range(3)]
    second = ProducerIdManager(
        path, block_size=10
    )  # a crash: the rest of the block is skipped
    more = [second.allocate() for _ in range(25)]
    assert len(set(ids + more)) == 28
    assert min(more) > max(ids)


def test_idle_producers_expire_but_open_transactions_stay() -> None:
    state = PartitionProducerState()
    state.record(batch(1, 0, 0), 0, -1, now_ms=1_000)
    state.record(batch(2, 0, 0), 3, -1, now_ms=50_000)
    assert state.expire(now_ms=61_000, expiration_ms=30_000) == 1
    assert state.entry(1) is None and state.entry(2) is not None


def test_snapshot_round_trip(tmp_path: Path) -> None:
    from flowbus.broker.producer_state import ProducerSnapshotFile, SnapshotEntry

    state = PartitionProducerState()
    appended(state, batch(5, 2, 0, 3), 10)
    restored = PartitionProducerState.from_snapshot(state.to_snapshot())
    dup = restored.check(batch(5, 2, 0, 3))
    assert (
        dup.verdict is Verdict.DUPLICATE
        and dup.original is not None
        and dup.original.base_offset == 10
    )
    snapshots = ProducerSnapshotFile(tmp_path / "snap.json")
    snapshots.save({("t", 0): SnapshotEntry("id", 13, state.to_snapshot())})
    loaded = snapshots.load()[("t", 0)]
    assert (loaded.topic_id, loaded.end_offset) == ("id", 13)
    assert (
        PartitionProducerState.from_snapshot(loaded.rows)
        .check(batch(5, 2, 3, 1))
        .verdict
        is Verdict.APPEND
    )
