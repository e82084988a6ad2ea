from __future__ import annotations

import pytest

from flowbus.log.config import LONG_MAX, TopicConfig, config_names
from flowbus.log.errors import InvalidConfigError


def test_kafka_defaults_except_flush_ms() -> None:
    config = TopicConfig()
    assert config.cleanup_policy == frozenset({"delete"})
    assert config.retention_ms == 604_800_000 and config.retention_bytes == -1
    assert config.segment_bytes == 1 << 30 and config.segment_ms == 604_800_000
    assert config.segment_index_bytes == 10 * 1024 * 1024 and config.index_interval_bytes == 4096
    assert config.delete_retention_ms == 86_400_000 and config.min_cleanable_dirty_ratio == 0.5
    assert config.flush_messages == LONG_MAX and config.flush_ms == 1000
    assert config.max_message_bytes == 1_048_588 and config.message_timestamp_type == "CreateTime"
    assert config.file_delete_delay_ms == 60_000


def test_overrides_parse_and_describe() -> None:
    config = TopicConfig.from_overrides(
        {"cleanup.policy": "compact, delete", "retention.ms": "-1", "message.timestamp.type": "LogAppendTime"}
    )
    assert config.is_compacted and config.is_deleting and config.uses_log_append_time
    rows = {row.name: row for row in config.describe()}
    assert set(rows) == set(config_names())
    assert rows["cleanup.policy"] == ("cleanup.policy", "compact,delete", False)
    assert rows["retention.ms"].value == "-1" and not rows["retention.ms"].is_default
    assert rows["segment.bytes"] == ("segment.bytes", str(1 << 30), True)


def test_overrides_stack_on_defaults() -> None:
    broker = TopicConfig.from_overrides({"segment.bytes": "1048576"}).as_defaults()
    topic = TopicConfig.from_overrides({"retention.ms": "5"}, broker)
    assert topic.segment_bytes == 1048576 and topic.retention_ms == 5
    assert [r.name for r in topic.describe() if not r.is_default] == ["retention.ms"]


@pytest.mark.parametrize(
    "key, value",
    [
        ("no.such.config", "1"),
        ("retention.ms", "soon"),
        ("retention.ms", "-2"),
        ("segment.bytes", "10"),
        ("cleanup.policy", "compress"),
        ("cleanup.policy", ""),
        ("min.cleanable.dirty.ratio", "1.5"),
        ("message.timestamp.type", "WallClock"),
        ("flush.messages", "0"),
        ("preallocate", "yes"),
        ("max.message.bytes", str(1 << 40)),
    ],
)
def test_invalid_configs_name_the_key(key: str, value: str) -> None:
    with pytest.raises(InvalidConfigError) as info:
        TopicConfig.from_overrides({key: value})
    assert info.value.key == key and key in str(info.value)
    assert info.value.errno == 40


def test_null_values_set_nothing() -> None:
    config = TopicConfig.from_overrides({"retention.ms": None, "segment.ms": "10"})
    assert config.retention_ms == 604_800_000 and dict(config.overrides) == {"segment.ms": "10"}
