"""The log side of topic administration: growing a topic, live config changes reaching every
partition log, and a log start offset moved by DeleteRecords (issue 12, item 1)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from flowbus.clock import ManualClock
from flowbus.log import LogManager
from flowbus.log import manager as manager_module
from flowbus.log.errors import (
    DescriptorBudgetError,
    InvalidConfigError,
    InvalidPartitionsError,
    OffsetOutOfRangeError,
    StorageError,
    UnknownTopicError,
)
from flowbus.log.manager import open_descriptor_count
from flowbus.log.retention import apply_retention
from tests.log.conftest import make_batch


def test_add_partitions_is_all_or_nothing_and_survives_a_restart(
    tmp_path: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = manager_module.PartitionLog

    def failing(directory: Path, topic: str, partition: int, *args: object, **kwargs: object) -> object:
        if partition == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(directory, topic, partition, *args, **kwargs)

    with LogManager(tmp_path, clock=clock) as manager:
        manager.create_topic("t", 2, {"segment.bytes": "4096"})
        manager.get_log("t", 0).append(make_batch(3))
        monkeypatch.setattr(manager_module, "PartitionLog", failing)
        with pytest.raises(StorageError, match="nothing was kept"):
            manager.add_partitions("t", 6)
        monkeypatch.setattr(manager_module, "PartitionLog", real)
        assert manager.topic("t").partitions == 2
        assert sorted(p.name for p in tmp_path.glob("t-*")) == ["t-0", "t-1"]

        manager.add_partitions("t", 4, validate_only=True)
        assert manager.topic("t").partitions == 2 and not (tmp_path / "t-2").exists()
        meta = manager.add_partitions("t", 4)
        assert meta.partitions == 4
        new = manager.get_log("t", 3)
        assert new.config.segment_bytes == 4096  # the topic's config, not the defaults
        assert new.append(make_batch(2)).base_offset == 0
        for bad in (4, 1):
            with pytest.raises(InvalidPartitionsError, match="must be larger"):
                manager.add_partitions("t", bad)
        with pytest.raises(UnknownTopicError):
            manager.add_partitions("nope", 3)
    with LogManager(tmp_path, clock=clock) as manager:
        assert manager.topic("t").partitions == 4
        assert manager.get_log("t", 3).log_end_offset == 2
        assert manager.get_log("t", 0).log_end_offset == 3


def test_add_partitions_over_the_descriptor_budget_is_refused(tmp_path: Path) -> None:
    in_use = open_descriptor_count() or 0
    with LogManager(tmp_path, fd_budget=in_use + 12) as manager:
        manager.create_topic("t", 1)
        with pytest.raises(DescriptorBudgetError, match="adding 50 partitions to topic 't' needs 150"):
            manager.add_partitions("t", 51)
        with pytest.raises(DescriptorBudgetError):
            manager.add_partitions("t", 51, validate_only=True)
        assert manager.topic("t").partitions == 1 and not (tmp_path / "t-1").exists()


def test_config_changes_reach_every_open_log_at_once(tmp_path: Path, clock: ManualClock) -> None:
    with LogManager(tmp_path, clock=clock) as manager:
        manager.create_topic("t", 2)
        logs = [manager.get_log("t", p) for p in range(2)]
        manager.alter_topic_config("t", {"flush.messages": "1", "flush.ms": "50", "max.message.bytes": "250",
                                         "segment.bytes": "300", "cleanup.policy": "compact"})
        for plog in logs:
            assert (plog.config.flush_messages, plog.config.flush_ms) == (1, 50)
            assert plog.config.is_compacted and not plog.config.is_deleting
        # flush.messages=1: the very next append asks for an fsync.
        assert logs[0].append(make_batch(1), defer_flush=True).flush_required
        # max.message.bytes: a larger batch is refused now.
        with pytest.raises(Exception, match="max.message.bytes is 250"):
            logs[1].append(make_batch(1, value_size=400))
        # segment.bytes: the next appends roll small segments.
        for _ in range(4):
            logs[1].append(make_batch(1, value_size=150))
        assert logs[1].segment_count >= 3
        # validate_only changes nothing; a bad value changes nothing either.
        manager.alter_topic_config("t", {"flush.messages": None}, validate_only=True)
        assert logs[0].config.flush_messages == 1
        with pytest.raises(InvalidConfigError):
            manager.alter_topic_config("t", {"flush.messages": "0"})
        assert logs[0].config.flush_messages == 1
    with LogManager(tmp_path, clock=clock) as manager:
        assert manager.get_log("t", 0).config.flush_messages == 1
        assert manager.topic("t").config.overrides["cleanup.policy"] == "compact"


def test_log_start_offset_moves_persists_and_frees_segments(tmp_path: Path, clock: ManualClock) -> None:
    with LogManager(tmp_path, clock=clock) as manager:
        manager.create_topic("t", 1, {"segment.bytes": "200", "retention.ms": "-1"})
        plog = manager.get_log("t", 0)
        for _ in range(10):
            plog.append(make_batch(2, value_size=60))
        segments_before = plog.segment_count
        assert segments_before >= 5
        with pytest.raises(OffsetOutOfRangeError):
            plog.advance_log_start_offset(21)
        with pytest.raises(OffsetOutOfRangeError):
            plog.advance_log_start_offset(-2)
        assert plog.advance_log_start_offset(9) == 9
        assert plog.advance_log_start_offset(3) == 9  # never moves back
        with pytest.raises(OffsetOutOfRangeError):
            plog.read(8, 1 << 20)
        assert plog.read(9, 1 << 20)  # the batch holding 9 (it starts at 8) is still served
        plog.flush()
        apply_retention(plog)  # retention.ms=-1: only the log start offset removes segments
        assert plog.segment_count < segments_before
        assert plog.segments()[0].base_offset <= 9 < plog.segments()[0].next_offset
        assert plog.log_start_offset == 9
    # The checkpoint holds it across a restart, even one that skips close() (see the broker tests).
    with LogManager(tmp_path, clock=clock) as manager:
        plog = manager.get_log("t", 0)
        assert (plog.log_start_offset, plog.log_end_offset) == (9, 20)


def test_partition_size_of_open_and_unopened_partitions(tmp_path: Path) -> None:
    with LogManager(tmp_path) as manager:
        manager.create_topic("t", 2)
        manager.get_log("t", 1).append(make_batch(3, value_size=100))
        size = manager.partition_size_bytes("t", 1)
        assert size == manager.get_log("t", 1).size_bytes > 300
    in_use = open_descriptor_count() or 0
    with LogManager(tmp_path, fd_budget=in_use + 4) as manager:  # room for one partition only
        assert manager.deferred_partitions >= 1
        assert manager.partition_size_bytes("t", 1) == size
        assert manager.deferred_partitions >= 1  # measured on disk, not opened
        with pytest.raises(UnknownTopicError):
            manager.partition_size_bytes("t", 2)
