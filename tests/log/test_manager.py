from __future__ import annotations

import os
from pathlib import Path

import pytest

from flowbus.log import LogManager, TopicConfig
from flowbus.log.errors import (
    InvalidConfigError,
    InvalidPartitionsError,
    InvalidTopicError,
    LogError,
    TopicExistsError,
    UnknownTopicError,
)
from flowbus.log.manager import CLEAN_SHUTDOWN_FILE
from tests.log.conftest import START_MS, make_batch


def test_topics_survive_restart(tmp_path: Path, clock) -> None:
    with LogManager(tmp_path, clock=clock) as manager:
        manager.create_topic("orders", 3, {"cleanup.policy": "compact"})
        manager.create_topic("clicks", 1)
        manager.get_log("orders", 2).append(make_batch(4))
    assert (tmp_path / CLEAN_SHUTDOWN_FILE).exists()
    with LogManager(tmp_path, clock=clock) as manager:
        assert not (tmp_path / CLEAN_SHUTDOWN_FILE).exists()
        topics = manager.topics()
        assert sorted(topics) == ["clicks", "orders"]
        assert topics["orders"].partitions == 3 and topics["orders"].config.is_compacted
        assert manager.get_log("orders", 2).log_end_offset == 4


def test_errors(tmp_path: Path, clock) -> None:
    with LogManager(tmp_path, clock=clock) as manager:
        manager.create_topic("a.b", 1)
        with pytest.raises(TopicExistsError):
            manager.create_topic("a.b", 1)
        with pytest.raises(InvalidTopicError):
            manager.create_topic("a_b", 1)  # collides with a.b
        with pytest.raises(InvalidTopicError):
            manager.create_topic("bad name", 1)
        with pytest.raises(InvalidPartitionsError):
            manager.create_topic("zero", 0)
        with pytest.raises(InvalidConfigError) as info:
            manager.create_topic("cfg", 1, {"retention.ms": "never"})
        assert info.value.key == "retention.ms"
        assert "cfg" not in manager.topics()
        with pytest.raises(UnknownTopicError):
            manager.get_log("nope", 0)
        with pytest.raises(UnknownTopicError):
            manager.get_log("a.b", 1)
        with pytest.raises(UnknownTopicError):
            manager.delete_topic("nope")


def test_one_manager_per_directory(tmp_path: Path) -> None:
    with LogManager(tmp_path), pytest.raises(LogError):
        LogManager(tmp_path)


def test_delete_topic_removes_directories(tmp_path: Path, clock) -> None:
    with LogManager(tmp_path, clock=clock) as manager:
        manager.create_topic("gone", 2)
        manager.get_log("gone", 0).append(make_batch(1))
        manager.delete_topic("gone")
        assert "gone" not in manager.topics()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith("gone")]
        manager.create_topic("gone", 1)
        assert manager.get_log("gone", 0).log_end_offset == 0


def test_orphan_partition_directories_are_removed(tmp_path: Path) -> None:
    with LogManager(tmp_path) as manager:
        manager.create_topic("kept", 1)
    orphan = tmp_path / "stale-0"
    orphan.mkdir()
    (orphan / "00000000000000000000.log").write_bytes(b"")
    other = tmp_path / "not-a-partition"
    other.mkdir()
    with LogManager(tmp_path):
        pass
    assert not orphan.exists() and other.exists()


def test_alter_config_applies_to_logs(tmp_path: Path, clock) -> None:
    with LogManager(tmp_path, clock=clock) as manager:
        manager.create_topic("t", 1, {"retention.ms": "100"})
        meta = manager.alter_topic_config("t", {"retention.ms": None, "flush.messages": "1"})
        assert meta.config.retention_ms == 604_800_000 and meta.config.flush_messages == 1
        assert manager.get_log("t", 0).config.flush_messages == 1
    with LogManager(tmp_path, clock=clock) as manager:
        assert manager.topic("t").config.flush_messages == 1


def test_default_config_applies_to_topics(tmp_path: Path) -> None:
    defaults = TopicConfig.from_overrides({"flush.ms": "5000"})
    with LogManager(tmp_path, default_config=defaults) as manager:
        config = manager.create_topic("t", 1).config
        assert config.flush_ms == 5000
        assert all(row.is_default for row in config.describe())


def test_tick_flushes_rolls_retains_and_compacts(tmp_path: Path, clock) -> None:
    with LogManager(tmp_path, clock=clock) as manager:
        manager.create_topic("del", 1, {"segment.ms": "1000", "retention.ms": "5000", "file.delete.delay.ms": "0"})
        manager.create_topic("cmp", 1, {"cleanup.policy": "compact", "segment.ms": "1000", "min.cleanable.dirty.ratio": "0.01"})
        deleting, compacted = manager.get_log("del", 0), manager.get_log("cmp", 0)
        for _ in range(3):
            deleting.append(make_batch(1, timestamp_ms=clock.now_ms()))
            compacted.append(make_batch(1, keys=[b"k"], values=[b"v"], timestamp_ms=clock.now_ms()))
        assert deleting.recovery_point == 0
        clock.advance(1000)
        manager.tick()  # flush.ms (1000) is due
        assert deleting.recovery_point == 3 and compacted.recovery_point == 3
        clock.advance(1)
        manager.tick()  # both active segments are now older than segment.ms: rolled
        assert deleting.segment_count == 2 and compacted.segment_count == 2
        clock.advance(1000)
        for _ in range(5):
            manager.tick()  # flush the rolls, then compact
        assert [(h.base_offset, h.record_count) for h, _ in compacted.iter_batches()] == [(2, 1)]
        clock.advance(5000)
        for _ in range(3):
            manager.tick()
        assert deleting.log_start_offset == 3 and deleting.segment_count == 1
        assert not [p for p in deleting.directory.iterdir() if p.name.endswith(".deleted")]


def test_unclean_stop_is_detected(tmp_path: Path, clock) -> None:
    manager = LogManager(tmp_path, clock=clock)
    manager.create_topic("t", 1)
    manager.get_log("t", 0).append(make_batch(2, timestamp_ms=START_MS))
    # No close(): the lock is released when the process dies; emulate that.
    import fcntl

    fcntl.flock(manager._lock_fd, fcntl.LOCK_UN)
    os.close(manager._lock_fd)
    again = LogManager(tmp_path, clock=clock)
    assert again.get_log("t", 0).log_end_offset == 2
    again.close()


def test_delete_topic_while_another_thread_flushes(tmp_path: Path, clock) -> None:
    import threading

    with LogManager(tmp_path, clock=clock) as manager:
        errors: list[BaseException] = []
        for round_number in range(20):
            name = f"t{round_number}"
            manager.create_topic(name, 1, {"segment.bytes": "200"})
            plog = manager.get_log(name, 0)
            for _ in range(5):
                plog.append(make_batch(1, value_size=50))

            def flush(target=plog) -> None:  # type: ignore[no-untyped-def]
                try:
                    target.flush()
                except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                    errors.append(exc)

            thread = threading.Thread(target=flush)
            thread.start()
            manager.delete_topic(name)
            thread.join()
        assert not errors


# -- descriptor budget and atomic creation (issue 10, item 7) -------------------------------------


def test_create_topic_over_the_descriptor_budget_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    from flowbus.log.errors import DescriptorBudgetError
    from flowbus.log.manager import open_descriptor_count

    in_use = open_descriptor_count() or 0
    with LogManager(tmp_path, fd_budget=in_use + 100) as manager:
        with pytest.raises(DescriptorBudgetError, match="file descriptors") as caught:
            manager.create_topic("huge", 10_000)
        assert caught.value.errno == 44  # POLICY_VIOLATION
        assert "huge" not in manager.topics()
        assert not any(tmp_path.glob("huge-*"))
        manager.create_topic("small", 3)  # 9 descriptors still fit
    assert b"huge" not in (tmp_path / "catalog.json").read_bytes()


def test_create_topic_is_all_or_nothing_when_a_partition_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from flowbus.log import manager as manager_module
    from flowbus.log.errors import StorageError

    real = manager_module.PartitionLog

    def failing(directory: Path, topic: str, partition: int, *args: object, **kwargs: object) -> object:
        if partition == 5:
            raise OSError(errno.EMFILE, "Too many open files")
        return real(directory, topic, partition, *args, **kwargs)

    with LogManager(tmp_path) as manager:
        monkeypatch.setattr(manager_module, "PartitionLog", failing)
        with pytest.raises(StorageError, match="nothing was kept"):
            manager.create_topic("t", 8)
        monkeypatch.setattr(manager_module, "PartitionLog", real)
        assert "t" not in manager.topics()
        assert not any(tmp_path.glob("t-*"))
        manager.create_topic("t", 8)  # the name is free again
    with LogManager(tmp_path) as manager:
        assert manager.topics()["t"].partitions == 8


def test_start_up_over_the_descriptor_budget_defers_partitions_and_opens_them_on_use(tmp_path: Path) -> None:
    from flowbus.log.manager import open_descriptor_count

    with LogManager(tmp_path) as manager:
        manager.create_topic("many", 60)
        manager.get_log("many", 59).append(make_batch(2))
    in_use = open_descriptor_count() or 0
    with LogManager(tmp_path, fd_budget=in_use + 60) as manager:
        assert 0 < manager.deferred_partitions < 60
        assert len(manager.logs()) == 60 - manager.deferred_partitions
        assert manager.get_log("many", 59).log_end_offset == 2  # opened on demand
        manager.tick()
        manager.alter_topic_config("many", {"retention.ms": "1000"})
        manager.delete_topic("many")
        assert not any(tmp_path.glob("many-*"))


def test_idle_partitions_are_closed_to_open_others_within_the_budget(tmp_path: Path, clock) -> None:
    from flowbus.log.manager import IDLE_LOG_CLOSE_MS, open_descriptor_count

    with LogManager(tmp_path, clock=clock) as manager:
        manager.create_topic("many", 40)
        for partition in range(40):
            manager.get_log("many", partition).append(make_batch(partition + 1))
    in_use = open_descriptor_count() or 0
    with LogManager(tmp_path, clock=clock, fd_budget=in_use + 30) as manager:
        assert manager.deferred_partitions > 20  # 30 descriptors: 5 partitions at start-up
        clock.advance(IDLE_LOG_CLOSE_MS)
        # Every partition in turn: each open closes the least recently used idle one.
        for partition in range(40):  # bounded: one pass
            assert manager.get_log("many", partition).log_end_offset == partition + 1
            clock.advance(IDLE_LOG_CLOSE_MS)
        assert len(manager.logs()) <= 10
        manager.get_log("many", 0).append(make_batch(1))
    with LogManager(tmp_path, clock=clock) as manager:  # closed idle logs were closed cleanly
        assert manager.get_log("many", 0).log_end_offset == 2
        assert manager.get_log("many", 39).log_end_offset == 40


def test_recently_used_partitions_are_not_closed(tmp_path: Path, clock) -> None:
    from flowbus.log.errors import StorageError
    from flowbus.log.manager import open_descriptor_count

    with LogManager(tmp_path, clock=clock) as manager:
        manager.create_topic("many", 40)
    in_use = open_descriptor_count() or 0
    with (
        LogManager(tmp_path, clock=clock, fd_budget=in_use + 30) as manager,
        pytest.raises(StorageError, match="file descriptors"),
    ):
        for partition in range(40):  # bounded: one pass; the budget runs out before the end
            manager.get_log("many", partition)
