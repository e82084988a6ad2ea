"""Per-topic configuration with Kafka's names, defaults and validation.

A :class:`TopicConfig` is immutable. It is built from string overrides (what CreateTopics and
AlterConfigs carry on the wire) on top of defaults, and remembers which keys were overridden
so DescribeConfigs can report ``is_default``. The catalog stores only the overrides, so a topic
follows a later change of the broker's defaults for every key it did not set itself.

Kafka's defaults are kept except one: ``flush.ms`` defaults to 1000 ms here instead of
"never" (Kafka relies on replication for durability; a single broker has no replica, so we
fsync at least once a second).

Some keys are accepted and stored for compatibility but have no effect on a single broker
(see ``_INERT_KEYS``): clients and tools set them, and rejecting them would break those tools.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

from flowbus.log.errors import InvalidConfigError

LONG_MAX = (1 << 63) - 1
INT_MAX = (1 << 31) - 1

CLEANUP_DELETE = "delete"
CLEANUP_COMPACT = "compact"
TIMESTAMP_CREATE_TIME = "CreateTime"
TIMESTAMP_LOG_APPEND_TIME = "LogAppendTime"

_COMPRESSION_TYPES = ("uncompressed", "zstd", "lz4", "snappy", "gzip", "producer")


class ConfigEntry(NamedTuple):
    """One row of DescribeConfigs: the Kafka name, the value as a string, and whether it is a default."""

    name: str
    value: str
    is_default: bool


@dataclass(frozen=True, slots=True)
class _Def:
    """How one Kafka config key maps onto a :class:`TopicConfig` attribute."""

    name: str
    attr: str
    parse: Callable[[str, str], Any]
    render: Callable[[Any], str]


def _parse_long(lo: int, hi: int = LONG_MAX) -> Callable[[str, str], int]:
    def parse(key: str, text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise InvalidConfigError(key, f"expected an integer, got {text!r}") from None
        if not lo <= value <= hi:
            raise InvalidConfigError(key, f"value {value} is outside [{lo}, {hi}]")
        return value

    return parse


def _parse_ratio(key: str, text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise InvalidConfigError(key, f"expected a number, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise InvalidConfigError(key, f"value {value} is outside [0, 1]")
    return value


def _parse_bool(key: str, text: str) -> bool:
    lowered = text.strip().lower()
    if lowered not in ("true", "false"):
        raise InvalidConfigError(key, f"expected true or false, got {text!r}")
    return lowered == "true"


def _parse_choice(*choices: str) -> Callable[[str, str], str]:
    def parse(key: str, text: str) -> str:
        value = text.strip()
        if value not in choices:
            raise InvalidConfigError(key, f"{text!r} is not one of {', '.join(choices)}")
        return value

    return parse


def _parse_cleanup_policy(key: str, text: str) -> frozenset[str]:
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise InvalidConfigError(key, "expected delete, compact or compact,delete")
    for part in parts:
        if part not in (CLEANUP_DELETE, CLEANUP_COMPACT):
            raise InvalidConfigError(key, f"{part!r} is not delete or compact")
    return frozenset(parts)


def _parse_text(key: str, text: str) -> str:
    return text


def _render_policy(value: frozenset[str]) -> str:
    return ",".join(sorted(value))


def _render_bool(value: bool) -> str:
    return "true" if value else "false"


_DEFS: tuple[_Def, ...] = (
    _Def("cleanup.policy", "cleanup_policy", _parse_cleanup_policy, _render_policy),
    _Def("compression.type", "compression_type", _parse_choice(*_COMPRESSION_TYPES), str),
    _Def("delete.retention.ms", "delete_retention_ms", _parse_long(0), str),
    _Def("file.delete.delay.ms", "file_delete_delay_ms", _parse_long(0), str),
    _Def("flush.messages", "flush_messages", _parse_long(1), str),
    _Def("flush.ms", "flush_ms", _parse_long(0), str),
    _Def("follower.replication.throttled.replicas", "follower_replication_throttled_replicas", _parse_text, str),
    _Def("index.interval.bytes", "index_interval_bytes", _parse_long(0, INT_MAX), str),
    _Def("leader.replication.throttled.replicas", "leader_replication_throttled_replicas", _parse_text, str),
    _Def("max.compaction.lag.ms", "max_compaction_lag_ms", _parse_long(1), str),
    _Def("max.message.bytes", "max_message_bytes", _parse_long(0, INT_MAX), str),
    _Def("message.timestamp.after.max.ms", "message_timestamp_after_max_ms", _parse_long(0), str),
    _Def("message.timestamp.before.max.ms", "message_timestamp_before_max_ms", _parse_long(0), str),
    _Def(
        "message.timestamp.type",
        "message_timestamp_type",
        _parse_choice(TIMESTAMP_CREATE_TIME, TIMESTAMP_LOG_APPEND_TIME),
        str,
    ),
    _Def("min.cleanable.dirty.ratio", "min_cleanable_dirty_ratio", _parse_ratio, str),
    _Def("min.compaction.lag.ms", "min_compaction_lag_ms", _parse_long(0), str),
    _Def("min.insync.replicas", "min_insync_replicas", _parse_long(1, INT_MAX), str),
    _Def("preallocate", "preallocate", _parse_bool, _render_bool),
    _Def("retention.bytes", "retention_bytes", _parse_long(-(1 << 63)), str),  # Kafka: any negative = no limit
    _Def("retention.ms", "retention_ms", _parse_long(-1), str),
    # Kafka 3.x accepts anything from the smallest legacy record overhead (14 bytes) up;
    # tests rely on tiny segments, so we keep that floor.
    _Def("segment.bytes", "segment_bytes", _parse_long(14, INT_MAX), str),
    _Def("segment.index.bytes", "segment_index_bytes", _parse_long(4, INT_MAX), str),
    _Def("segment.jitter.ms", "segment_jitter_ms", _parse_long(0), str),
    _Def("segment.ms", "segment_ms", _parse_long(1), str),
    _Def("unclean.leader.election.enable", "unclean_leader_election_enable", _parse_bool, _render_bool),
)

_BY_NAME: Mapping[str, _Def] = MappingProxyType({d.name: d for d in _DEFS})

#: Keys accepted and reported but with no effect on a single broker.
_INERT_KEYS = frozenset(
    {
        "follower.replication.throttled.replicas",
        "leader.replication.throttled.replicas",
        "min.insync.replicas",
        "unclean.leader.election.enable",
        "preallocate",
        "segment.jitter.ms",
        "max.compaction.lag.ms",
        "message.timestamp.after.max.ms",
        "message.timestamp.before.max.ms",
        "compression.type",
    }
)


def config_names() -> tuple[str, ...]:
    """Every topic config key flowbus accepts, in Kafka's name order."""
    return tuple(_BY_NAME)


@dataclass(frozen=True, slots=True)
class TopicConfig:
    """Settings of one topic; attribute names are Kafka's names with ``_`` for ``.``.

    Build one with :meth:`from_overrides`; the constructor takes typed values and does not
    validate them.

    Example:
        >>> cfg = TopicConfig.from_overrides({"cleanup.policy": "compact", "segment.bytes": "1048576"})
        >>> cfg.is_compacted, cfg.segment_bytes
        (True, 1048576)
    """

    cleanup_policy: frozenset[str] = frozenset({CLEANUP_DELETE})
    compression_type: str = "producer"
    delete_retention_ms: int = 86_400_000
    file_delete_delay_ms: int = 60_000
    flush_messages: int = LONG_MAX
    flush_ms: int = 1_000
    follower_replication_throttled_replicas: str = ""
    index_interval_bytes: int = 4096
    leader_replication_throttled_replicas: str = ""
    max_compaction_lag_ms: int = LONG_MAX
    max_message_bytes: int = 1_048_588
    message_timestamp_after_max_ms: int = LONG_MAX
    message_timestamp_before_max_ms: int = LONG_MAX
    message_timestamp_type: str = TIMESTAMP_CREATE_TIME
    min_cleanable_dirty_ratio: float = 0.5
    min_compaction_lag_ms: int = 0
    min_insync_replicas: int = 1
    preallocate: bool = False
    retention_bytes: int = -1
    retention_ms: int = 604_800_000
    segment_bytes: int = 1 << 30
    segment_index_bytes: int = 10 * 1024 * 1024
    segment_jitter_ms: int = 0
    segment_ms: int = 604_800_000
    unclean_leader_election_enable: bool = False
    #: The keys set explicitly on this topic, normalised to their rendered string values.
    overrides: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def from_overrides(cls, overrides: Mapping[str, str | None], defaults: TopicConfig | None = None) -> TopicConfig:
        """Apply Kafka-named string ``overrides`` on top of ``defaults`` (Kafka's when None).

        A None value (null on the wire) sets nothing: the key keeps the value from ``defaults``.

        Raises:
            InvalidConfigError: an unknown key, or a value the key does not accept; ``.key`` names it.
        """
        base = defaults if defaults is not None else cls()
        changes: dict[str, Any] = {}
        rendered: dict[str, str] = dict(base.overrides)
        for key, text in overrides.items():
            definition = _BY_NAME.get(key)
            if definition is None:
                raise InvalidConfigError(key, "unknown topic config")
            if text is None:  # a null value on the wire: back to the default
                changes[definition.attr] = getattr(base, definition.attr)
                rendered.pop(key, None)
                continue
            if not isinstance(text, str):
                raise InvalidConfigError(key, f"value must be a string, got {type(text).__name__}")
            value = definition.parse(key, text)
            changes[definition.attr] = value
            rendered[key] = definition.render(value)
        return dataclasses.replace(base, overrides=MappingProxyType(rendered), **changes)

    def as_defaults(self) -> TopicConfig:
        """The same values with no key marked as overridden, to serve as a broker's defaults."""
        return dataclasses.replace(self, overrides=MappingProxyType({}))

    def describe(self) -> list[ConfigEntry]:
        """Every key with its current value, for DescribeConfigs, in name order."""
        return [
            ConfigEntry(d.name, d.render(getattr(self, d.attr)), d.name not in self.overrides) for d in _DEFS
        ]

    @property
    def is_compacted(self) -> bool:
        return CLEANUP_COMPACT in self.cleanup_policy

    @property
    def is_deleting(self) -> bool:
        """Whether time and size retention apply (``delete`` alone or ``compact,delete``)."""
        return CLEANUP_DELETE in self.cleanup_policy

    @property
    def uses_log_append_time(self) -> bool:
        return self.message_timestamp_type == TIMESTAMP_LOG_APPEND_TIME

    @property
    def offset_index_max_entries(self) -> int:
        return max(1, self.segment_index_bytes // 8)

    @property
    def time_index_max_entries(self) -> int:
        return max(1, self.segment_index_bytes // 12)
