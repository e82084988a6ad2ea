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
