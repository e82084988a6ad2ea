"""Shared helpers for the log tests: batch factories and a manual clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowbus.clock import ManualClock
from flowbus.log.config import TopicConfig
from flowbus.log.partition_log import PartitionLog
from flowbus.records import BatchBuilder, Codec, iter_batches

START_MS = 1_700_000_000_000


def make_batch(
    count: int = 1,
    *,
    timestamp_ms: int = START_MS,
    value_size: int = 10,
    keys: list[bytes | None] | None = None,
    values: list[bytes | None] | None = None,
    codec: Codec = Codec.NONE,
    producer_id: int = -1,
    producer_epoch: int = -1,
    base_sequence: int = -1,
    is_transactional: bool = False,
) -> bytes:
    """A client-style batch (base offset 0) of ``count`` records."""
    builder = BatchBuilder(
        codec,
        producer_id=producer_id,
        producer_epoch=producer_epoch,
        base_sequence=base_sequence,
        is_transactional=is_transactional,
    )
    for i in range(count):
        key = keys[i] if keys is not None else None
        value = values[i] if values is not None else bytes([65 + i % 26]) * value_size
        builder.append(key, value, timestamp_ms=timestamp_ms)
    return builder.build()


def batch_offsets(data: bytes) -> list[tuple[int, int]]:
    """``(base_offset, last_offset)`` of every batch in ``data``."""
    return [(h.base_offset, h.last_offset) for _, h in iter_batches(data)]


def config(**overrides: str) -> TopicConfig:
    return TopicConfig.from_overrides({k.replace("_", "."): v for k, v in overrides.items()})


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(now_ms=START_MS)


@pytest.fixture
def open_log(tmp_path: Path, clock: ManualClock):
    """Factory: ``open_log(**kafka_overrides_with_underscores)`` opens a log in tmp_path."""
    opened: list[PartitionLog] = []

    def factory(directory: Path | None = None, *, clean_shutdown: bool = False, **overrides: str) -> PartitionLog:
        plog = PartitionLog.open(
            directory or tmp_path / "t-0", "t", 0, config(**overrides), clock=clock, clean_shutdown=clean_shutdown
        )
        opened.append(plog)
        return plog

    yield factory
    for plog in opened:
        if not plog.closed:
            plog.close()
