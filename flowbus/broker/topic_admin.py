"""Topic administration beyond create and delete: partitions, configs, records, log dirs.

:class:`TopicAdmin` does what CreatePartitions (37), AlterConfigs (33), IncrementalAlterConfigs
(44), DeleteRecords (21) and DescribeLogDirs (35) ask, with Python arguments and results, over the
broker's :class:`~flowbus.log.LogManager`. ``BrokerCore.topic_admin`` holds one; ``handlers.py``
adapts the wire bodies to it. Nothing here knows about API versions.

Every change is durable before it is answered and takes effect without a restart:

* partition counts and config overrides live in the catalog (``catalog.json``, replaced
  atomically), and every open partition log switches to a new config at once;
* a log start offset moved by DeleteRecords is written to the partition's checkpoint with fsync.

Errors are Kafka's codes with a message, one per topic, resource or partition, never an
exception out of a request: bad input from one client must not fail anyone else's.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from flowbus.log import PartitionLog
from flowbus.log.config import config_names
from flowbus.log.errors import (
    InvalidConfigError,
    LogError,
    OffsetOutOfRangeError,
    UnknownTopicError,
)
from flowbus.log.retention import apply_retention
from flowbus.protocol.error_codes import ErrorCode

if TYPE_CHECKING:
    from flowbus.broker.core import BrokerCore

log = logging.getLogger(__name__)

#: ConfigResource types (Kafka's ``ConfigResource.Type``).
RESOURCE_TOPIC = 2
RESOURCE_BROKER = 4
RESOURCE_BROKER_LOGGER = 8

#: IncrementalAlterConfigs operations (KIP-339).
OP_SET = 0
OP_DELETE = 1
OP_APPEND = 2
OP_SUBTRACT = 3

#: DeleteRecords' offset meaning "up to the high watermark".
DELETE_TO_HIGH_WATERMARK = -1

#: Topic configs whose value is a comma-separated list: the only ones APPEND and SUBTRACT accept.
LIST_CONFIGS = frozenset(
    {"cleanup.policy", "leader.replication.throttled.replicas", "follower.replication.throttled.replicas"}
)

#: DescribeLogDirs answers this many partitions per event-loop slice before it yields.
_SIZE_CHECK_EVERY = 64

_BROKER_CONFIGS_STATIC = (
    "dynamic broker configs are not supported: flowbus reads its broker settings from the command line"
    " at start-up (flowbus broker --help); topic configs can be altered"
)


@dataclass(frozen=True, slots=True)
class NewPartitions:
    """One topic of a CreatePartitions request: the new total count and, optionally, the
    brokers of each new partition (one list per new partition)."""

    name: str
    count: int
    assignments: list[list[int]] | None = None


@dataclass(frozen=True, slots=True)
class TopicResult:
    """A per-topic answer (CreatePartitions)."""

    name: str
    error_code: int
    error_message: str | None = None


@dataclass(frozen=True, slots=True)
class ConfigChange:
    """One entry of an IncrementalAlterConfigs resource: ``operation`` is OP_SET...OP_SUBTRACT."""

    name: str
    operation: int
    value: str | None


@dataclass(frozen=True, slots=True)
class AlterConfigsResult:
    resource_type: int
    resource_name: str
    error_code: int
    error_message: str | None = None


@dataclass(frozen=True, slots=True)
class DeleteRecordsResult:
    topic: str
    partition: int
    error_code: int
    #: The partition's log start offset after the deletion (-1 on error).
    low_watermark: int = -1


@dataclass(frozen=True, slots=True)
class LogDirPartition:
    topic: str
    partition: int
    size_bytes: int


@dataclass(frozen=True, slots=True)
class LogDirDescription:
    """The broker's one log directory (the data dir) and the partitions asked for."""

    path: str
    total_bytes: int
    usable_bytes: int
    partitions: list[LogDirPartition] = field(default_factory=list)


class _Refused(Exception):
    """A resource's change cannot be made: carries the Kafka error code and message."""

    def __init__(self, error_code: int, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.message = message


class TopicAdmin:
    """CreatePartitions, AlterConfigs, IncrementalAlterConfigs, DeleteRecords, DescribeLogDirs.

    Args:
        core: the broker; its ``logs`` and ``node`` are used.
        internal_topics: topics whose partition count and records the broker owns
            (``__consumer_offsets``, ``__transaction_state``): CreatePartitions and DeleteRecords
            refuse them, as Kafka does for DeleteRecords.
    """

    def __init__(self, core: BrokerCore, internal_topics: AbstractSet[str]) -> None:
        self._core = core
        self._internal_topics = internal_topics

    # -- CreatePartitions --------------------------------------------------------------------

    async def create_partitions(
        self, topics: list[NewPartitions], *, validate_only: bool = False
    ) -> list[TopicResult]:
        """Grow each topic to its new count, each topic all or nothing; one result per entry.

        A topic named twice gets INVALID_REQUEST for every entry (as Kafka answers).
        """
        counts: dict[str, int] = {}
        for topic in topics:
            counts[topic.name] = counts.get(topic.name, 0) + 1
        results = []
        for topic in topics:
            if counts[topic.name] > 1:
                results.append(
                    TopicResult(topic.name, ErrorCode.INVALID_REQUEST, f"topic {topic.name!r} is named more than once")
                )
                continue
            results.append(self._create_partitions(topic, validate_only))
        return results

    def _create_partitions(self, topic: NewPartitions, validate_only: bool) -> TopicResult:
        name = topic.name
        if name in self._internal_topics:
            return TopicResult(
                name, ErrorCode.INVALID_TOPIC_EXCEPTION, f"{name} is internal: the broker fixes its partition count"
            )
        logs = self._core.logs
        try:
            current = logs.topic(name).partitions
        except UnknownTopicError:
            return TopicResult(name, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"no topic {name!r}")
        if topic.count <= current:
            message = (
                f"topic {name!r} already has {current} partitions"
                if topic.count == current
                else f"topic {name!r} has {current} partitions, more than the {topic.count} asked for"
                " (partitions are never removed)"
            )
            return TopicResult(name, ErrorCode.INVALID_PARTITIONS, message)
        if topic.assignments is not None:
            refused = self._check_assignments(topic.assignments, topic.count - current)
            if refused is not None:
                return TopicResult(name, ErrorCode.INVALID_REPLICA_ASSIGNMENT, refused)
        try:
            logs.add_partitions(name, topic.count, validate_only=validate_only)
        except LogError as exc:
            return TopicResult(name, exc.errno if exc.errno > 0 else ErrorCode.UNKNOWN_SERVER_ERROR, str(exc))
        if not validate_only:
            log.info("topic %s grew from %d to %d partitions", name, current, topic.count)
        return TopicResult(name, ErrorCode.NONE)

    def _check_assignments(self, assignments: list[list[int]], added: int) -> str | None:
        """Why a manual assignment cannot be honoured, or None: one entry per new partition,
        each naming this broker alone (one broker, one replica per partition)."""
        if len(assignments) != added:
            return f"{added} partitions are added but {len(assignments)} assignments were given"
        node_id = self._core.node.node_id
        for index, brokers in enumerate(assignments):
            if list(brokers) != [node_id]:
                return (
                    f"new partition {index} names brokers {list(brokers)}; this cluster has one broker,"
                    f" {node_id}, and one replica per partition"
                )
        return None

    # -- AlterConfigs and IncrementalAlterConfigs ---------------------------------------------

    async def alter_configs(
        self, resources: list[tuple[int, str, list[tuple[str, str | None]]]], *, validate_only: bool = False
    ) -> list[AlterConfigsResult]:
        """AlterConfigs: each topic's overrides become exactly the entries given (a key left out
        goes back to its default; a null value counts as left out), each resource all or nothing."""
        named = _count_resources(resources)
        return [
            self._alter_resource(
                resource_type, name, functools.partial(self._replacing_changes, name, entries), validate_only, named
            )
            for resource_type, name, entries in resources
        ]

    def _replacing_changes(self, name: str, entries: list[tuple[str, str | None]]) -> dict[str, str | None]:
        """The override changes (None = remove) that make the entries the topic's only overrides."""
        self._refuse_duplicates([key for key, _ in entries])
        wanted = dict(entries)
        self._refuse_unknown(wanted)
        current = self._core.logs.topic(name).config.overrides
        delta: dict[str, str | None] = {key: None for key in current if wanted.get(key) is None}
        delta.update({key: value for key, value in wanted.items() if value is not None})
        return delta

    async def incremental_alter_configs(
        self, resources: list[tuple[int, str, list[ConfigChange]]], *, validate_only: bool = False
    ) -> list[AlterConfigsResult]:
        """IncrementalAlterConfigs: SET, DELETE (back to the default), APPEND and SUBTRACT (list
        configs such as cleanup.policy) applied in order, each resource all or nothing."""
        named = _count_resources(resources)
        return [
            self._alter_resource(
                resource_type, name, functools.partial(self._incremental_changes, name, entries), validate_only, named
            )
            for resource_type, name, entries in resources
        ]

    def _incremental_changes(self, name: str, entries: list[ConfigChange]) -> dict[str, str | None]:
        """The override changes (None = remove) the operations amount to."""
        self._refuse_duplicates([change.name for change in entries])
        self._refuse_unknown({change.name: change.value for change in entries})
        config = self._core.logs.topic(name).config
        values = {entry.name: entry.value for entry in config.describe()}
        delta: dict[str, str | None] = {}
        for change in entries:  # bounded by the request's size
            key, value, op = change.name, change.value, change.operation
            if op == OP_DELETE:
                delta[key] = None
                continue
            if op not in (OP_SET, OP_APPEND, OP_SUBTRACT):
                raise _Refused(ErrorCode.INVALID_REQUEST, f"{key}: unknown config operation {op}")
            if value is None:
                raise _Refused(ErrorCode.INVALID_REQUEST, f"{key}: a null value is only allowed with DELETE")
            if op == OP_SET:
                delta[key] = value
                continue
            if key not in LIST_CONFIGS:
                verb = "append to" if op == OP_APPEND else "subtract from"
                raise _Refused(
                    ErrorCode.INVALID_CONFIG,
                    f"{key}: cannot {verb} a config that is not a list (lists: {', '.join(sorted(LIST_CONFIGS))})",
                )
            items = [item.strip() for item in values[key].split(",") if item.strip()]
            given = [item.strip() for item in value.split(",") if item.strip()]
            if op == OP_APPEND:
                items += [item for item in given if item not in items]
            else:
                items = [item for item in items if item not in given]
            delta[key] = ",".join(items)
        return delta

    def _alter_resource(
        self,
        resource_type: int,
        name: str,
        changes: Callable[[], dict[str, str | None]],
        validate_only: bool,
        named: dict[tuple[int, str], int],
    ) -> AlterConfigsResult:
        """Check the resource, compute its changes, apply them (or only validate).

        ``named`` counts how often each resource appears in the request: one named twice is
        refused every time (INVALID_REQUEST, as Kafka answers), since which would win is unclear.
        """
        if named[(resource_type, name)] > 1:
            return AlterConfigsResult(
                resource_type, name, ErrorCode.INVALID_REQUEST, f"resource {name!r} is named more than once"
            )
        if resource_type in (RESOURCE_BROKER, RESOURCE_BROKER_LOGGER):
            return AlterConfigsResult(resource_type, name, ErrorCode.INVALID_REQUEST, _BROKER_CONFIGS_STATIC)
        if resource_type != RESOURCE_TOPIC:
            return AlterConfigsResult(
                resource_type, name, ErrorCode.INVALID_REQUEST, f"unsupported config resource type {resource_type}"
            )
        if name in self._internal_topics:
            # Written and tuned by the broker only (issue 14): a client changing their retention
            # or cleanup policy could drop every group's offsets or every transaction's state.
            return AlterConfigsResult(
                resource_type, name, ErrorCode.INVALID_TOPIC_EXCEPTION, f"{name} is internal: its configs are the broker's"
            )
        logs = self._core.logs
        try:
            delta = changes()
            logs.alter_topic_config(name, delta, validate_only=validate_only)
        except _Refused as exc:
            return AlterConfigsResult(resource_type, name, exc.error_code, exc.message)
        except UnknownTopicError:
            return AlterConfigsResult(resource_type, name, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"no topic {name!r}")
        except InvalidConfigError as exc:
            return AlterConfigsResult(resource_type, name, ErrorCode.INVALID_CONFIG, f"invalid config {exc}")
        except LogError as exc:
            log.error("altering the configs of topic %s failed: %s", name, exc)
            return AlterConfigsResult(
                resource_type, name, exc.errno if exc.errno > 0 else ErrorCode.UNKNOWN_SERVER_ERROR, str(exc)
            )
        except OSError as exc:  # the catalog could not be saved: nothing changed
            log.error("altering the configs of topic %s failed: %s", name, exc)
            return AlterConfigsResult(resource_type, name, ErrorCode.KAFKA_STORAGE_ERROR, f"catalog not saved: {exc}")
        if not validate_only and delta:
            shown = ", ".join(f"{k}={'(default)' if v is None else v}" for k, v in sorted(delta.items()))
            log.info("altered configs of topic %s: %s", name, shown)
        return AlterConfigsResult(resource_type, name, ErrorCode.NONE)

    @staticmethod
    def _refuse_duplicates(keys: list[str]) -> None:
        if len(set(keys)) != len(keys):
            twice = sorted({key for key in keys if keys.count(key) > 1})
            raise _Refused(ErrorCode.INVALID_REQUEST, f"config keys named more than once: {', '.join(twice)}")

    @staticmethod
    def _refuse_unknown(wanted: dict[str, str | None]) -> None:
        known = set(config_names())
        unknown = sorted(key for key in wanted if key not in known)
        if unknown:
            raise _Refused(ErrorCode.INVALID_CONFIG, f"unknown topic config {', '.join(unknown)}")

    # -- DeleteRecords -----------------------------------------------------------------------

    async def delete_records(self, partitions: list[tuple[str, int, int]]) -> list[DeleteRecordsResult]:
        """Move each partition's log start offset up to the offset given (-1: the high
        watermark); one result per entry, in order.

        The new start is durable (checkpoint fsynced) before it is answered. Whole segments below
        it are then deleted at once: the log is flushed (on a worker thread) so they are below the
        recovery point, and when everything is deleted the active segment is rolled first, so
        its space is freed too. A failure of that clean-up is logged and retried by the broker's
        periodic retention pass; the deletion itself stands.
        """
        results = []
        for topic, partition, offset in partitions:  # bounded by the request's size
            results.append(await self._delete_records(topic, partition, offset))
        return results

    async def _delete_records(self, topic: str, partition: int, offset: int) -> DeleteRecordsResult:
        if topic in self._internal_topics:
            return DeleteRecordsResult(topic, partition, ErrorCode.INVALID_TOPIC_EXCEPTION)
        try:
            plog = self._core.logs.get_log(topic, partition)
        except UnknownTopicError:
            return DeleteRecordsResult(topic, partition, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION)
        except LogError as exc:
            return DeleteRecordsResult(topic, partition, exc.errno if exc.errno > 0 else ErrorCode.UNKNOWN_SERVER_ERROR)
        if not plog.config.is_deleting:
            # As Kafka: records of a compact-only topic are removed by compaction alone.
            return DeleteRecordsResult(topic, partition, ErrorCode.POLICY_VIOLATION)
        target = plog.high_watermark if offset == DELETE_TO_HIGH_WATERMARK else offset
        loop = asyncio.get_running_loop()
        try:
            start = await loop.run_in_executor(None, plog.advance_log_start_offset, target)
        except OffsetOutOfRangeError:
            return DeleteRecordsResult(topic, partition, ErrorCode.OFFSET_OUT_OF_RANGE)
        except (LogError, OSError) as exc:
            log.error("DeleteRecords on %s-%d failed: %s", topic, partition, exc)
            return DeleteRecordsResult(topic, partition, ErrorCode.KAFKA_STORAGE_ERROR)
        await self._drop_segments_below_start(plog)
        return DeleteRecordsResult(topic, partition, ErrorCode.NONE, start)

    @staticmethod
    async def _drop_segments_below_start(plog: PartitionLog) -> None:
        """Delete the segments wholly below the log start now (best effort: the broker's
        periodic retention pass deletes whatever is left, see :func:`apply_retention`)."""
        try:
            if plog.log_start_offset == plog.log_end_offset:
                plog.roll()  # everything is deleted: let the active segment's space go too
            await asyncio.get_running_loop().run_in_executor(None, plog.flush)
            apply_retention(plog)
        except (LogError, OSError) as exc:  # e.g. no descriptor for the roll: the tick retries
            log.warning(
                "segments of %s-%d below its log start stay until a later pass: %s", plog.topic, plog.partition, exc
            )

    # -- DescribeLogDirs ---------------------------------------------------------------------

    async def describe_log_dirs(self, wanted: list[tuple[str, list[int]]] | None) -> LogDirDescription:
        """The data dir with the size of each partition asked for (``None``: every partition of
        every topic); unknown topics and partitions are left out, as Kafka leaves out those a
        broker does not host."""
        logs = self._core.logs
        data_dir = logs.data_dir.resolve()
        try:
            usage = shutil.disk_usage(data_dir)
            total_bytes, usable_bytes = usage.total, usage.free
        except OSError:
            total_bytes = usable_bytes = -1
        topics = logs.topics()
        if wanted is None:
            pairs = [(name, list(range(meta.partitions))) for name, meta in topics.items()]
        else:
            pairs = wanted
        found: list[LogDirPartition] = []
        seen: set[tuple[str, int]] = set()  # a partition named twice is answered once
        deadline = time.perf_counter() + 0.001
        for name, partitions in pairs:  # bounded by the catalog or the request
            meta = topics.get(name)
            if meta is None:
                continue
            for partition in partitions:
                if not 0 <= partition < meta.partitions or (name, partition) in seen:
                    continue
                seen.add((name, partition))
                if len(found) % _SIZE_CHECK_EVERY == 0 and time.perf_counter() >= deadline:
                    await asyncio.sleep(0)  # thousands of partitions: let other clients in
                    deadline = time.perf_counter() + 0.001
                try:
                    size = logs.partition_size_bytes(name, partition)
                except UnknownTopicError:  # deleted while this request yielded
                    continue
                found.append(LogDirPartition(name, partition, size))
        return LogDirDescription(str(data_dir), total_bytes, usable_bytes, found)


def _count_resources(resources: Sequence[tuple[int, str, object]]) -> dict[tuple[int, str], int]:
    """How often each (type, name) appears in an AlterConfigs request."""
    named: dict[tuple[int, str], int] = {}
    for resource_type, name, _ in resources:
        named[(resource_type, name)] = named.get((resource_type, name), 0) + 1
    return named
