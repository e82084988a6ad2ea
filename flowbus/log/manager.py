"""The log manager: every partition log of one data directory, the catalog, and periodic work.

Data directory layout::

    data_dir/
      .lock                       flock held while a LogManager has the directory open
      .flowbus_clean_shutdown     present only between a clean close() and the next open
      catalog.json                topics, partition counts, config overrides
      orders-0/                   one directory per partition: <topic>-<partition>
        00000000000000000000.log / .index / .timeindex
        partition.checkpoint

``tick()`` is the broker's ~100 ms heartbeat: it flushes logs the flush policy says are due,
rolls segments older than segment.ms, applies retention, deletes files whose
file.delete.delay.ms has passed, and lets the cleaner do a bounded amount of compaction.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from flowbus.clock import SYSTEM_CLOCK, Clock
from flowbus.log.catalog import CATALOG_FILE, Catalog, TopicEntry, collision_key, validate_topic_name
from flowbus.log.checkpoint import CHECKPOINT_FILE, fsync_directory
from flowbus.log.cleaner import LogCleaner
from flowbus.log.config import TopicConfig
from flowbus.log.errors import (
    InvalidPartitionsError,
    InvalidTopicError,
    LogClosedError,
    LogError,
    TopicExistsError,
    UnknownTopicError,
)
from flowbus.log.partition_log import PartitionLog
from flowbus.log.retention import apply_retention

log = logging.getLogger(__name__)

CLEAN_SHUTDOWN_FILE = ".flowbus_clean_shutdown"
LOCK_FILE = ".lock"
DELETE_DIR_SUFFIX = "-delete"
#: Kafka caps partitions per topic only by cluster limits; one process opening this many files
#: (three per segment) is already unreasonable.
MAX_PARTITIONS_PER_TOPIC = 10_000


class TopicMetadata(NamedTuple):
    """A topic as the broker sees it."""

    name: str
    partitions: int
    config: TopicConfig
    topic_id: str


def partition_dir_name(topic: str, partition: int) -> str:
    return f"{topic}-{partition}"


class LogManager:
    """Opens, creates and deletes partition logs under ``data_dir`` and runs their periodic work.

    Args:
        data_dir: created if missing; one manager per directory (enforced with a lock file).
        clock: drives segment age, retention, flush timing and compaction lag.
        default_config: the broker's defaults; topics override them key by key.

    Example:
        >>> manager = LogManager(tmp_path)                                  # doctest: +SKIP
        >>> manager.create_topic("orders", 3, {"cleanup.policy": "compact"})  # doctest: +SKIP
        >>> manager.get_log("orders", 0).append(batch_bytes)                 # doctest: +SKIP
    """

    def __init__(
        self, data_dir: str | Path, *, clock: Clock = SYSTEM_CLOCK, default_config: TopicConfig | None = None
    ) -> None:
        self.data_dir = Path(data_dir)
        self.clock = clock
        self.default_config = (default_config or TopicConfig()).as_defaults()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise LogError(f"{self.data_dir} is in use by another LogManager") from None
        self._closed = False
        marker = self.data_dir / CLEAN_SHUTDOWN_FILE
        clean_shutdown = marker.exists()
        is_new = not (self.data_dir / CATALOG_FILE).exists()
        self._catalog = Catalog(self.data_dir)
        self._configs: dict[str, TopicConfig] = {}
        self._logs: dict[tuple[str, int], PartitionLog] = {}
        self._remove_orphans()
        for entry in self._catalog.topics.values():
            config = TopicConfig.from_overrides(entry.overrides, self.default_config)
            self._configs[entry.name] = config
            for partition in range(entry.partitions):
                self._open_log(entry.name, partition, config, clean_shutdown)
        if clean_shutdown:
            # From here on a crash must be detected: the marker goes before any new write.
            marker.unlink()
            fsync_directory(self.data_dir)
        self.cleaner = LogCleaner(clock)
        cut = sum(plog.bytes_cut_on_open for plog in self._logs.values())
        log.info(
            "opened %s: %d topics, %d partitions, %s%s",
            self.data_dir,
            len(self._catalog.topics),
            len(self._logs),
            "new data directory" if is_new else "clean shutdown" if clean_shutdown else "unclean shutdown",
            f", {cut} bytes cut in recovery" if cut else "",
        )

    def _open_log(self, topic: str, partition: int, config: TopicConfig, clean_shutdown: bool) -> PartitionLog:
        plog = PartitionLog(
            self.data_dir / partition_dir_name(topic, partition),
            topic,
            partition,
            config,
            self.clock,
            clean_shutdown=clean_shutdown,
        )
        self._logs[(topic, partition)] = plog
        return plog

    def _remove_orphans(self) -> None:
        """Remove partition directories the catalog does not name (an interrupted delete)."""
        expected = {
            partition_dir_name(entry.name, p) for entry in self._catalog.topics.values() for p in range(entry.partitions)
        }
        for child in sorted(self.data_dir.iterdir()):
            if not child.is_dir() or child.name in expected:
                continue
            looks_like_partition = child.name.endswith(DELETE_DIR_SUFFIX) or (child / CHECKPOINT_FILE).exists() or any(
                child.glob("*.log")
            )
            if looks_like_partition:
                log.warning("removing %s: not a partition of any topic in the catalog", child)
                shutil.rmtree(child)

    # -- topics ------------------------------------------------------------------------------

    def create_topic(self, name: str, partitions: int, configs: Mapping[str, str] | None = None) -> TopicMetadata:
        """Create a topic and its partition logs; the catalog is updated durably first.

        Raises:
            InvalidTopicError: illegal name, or one colliding with an existing topic ('.' vs '_').
            TopicExistsError: the name is taken.
            InvalidPartitionsError: ``partitions`` below 1 (or absurdly many).
            InvalidConfigError: an unknown key or bad value in ``configs``.
        """
        self._require_open()
        validate_topic_name(name)
        if name in self._catalog.topics:
            raise TopicExistsError(f"topic {name!r} already exists")
        for existing in self._catalog.topics:
            if collision_key(existing) == collision_key(name):
                raise InvalidTopicError(f"topic {name!r} collides with existing topic {existing!r}")
        if not isinstance(partitions, int) or not 1 <= partitions <= MAX_PARTITIONS_PER_TOPIC:
            raise InvalidPartitionsError(f"partitions must be between 1 and {MAX_PARTITIONS_PER_TOPIC}, got {partitions}")
        overrides = dict(configs or {})
        config = TopicConfig.from_overrides(overrides, self.default_config)
        entry = TopicEntry(name, partitions, dict(config.overrides))
        self._catalog.topics[name] = entry
        try:
            self._catalog.save()
        except BaseException:
            del self._catalog.topics[name]
            raise
        self._configs[name] = config
        for partition in range(partitions):
            self._open_log(name, partition, config, clean_shutdown=False)
        return self.topic(name)

    def delete_topic(self, name: str) -> None:
        """Delete a topic: the catalog forgets it durably, then its directories are removed.

        Raises:
            UnknownTopicError: no such topic.
        """
        self._require_open()
        entry = self._catalog.topics.get(name)
        if entry is None:
            raise UnknownTopicError(f"unknown topic {name!r}")
        del self._catalog.topics[name]
        self._catalog.save()
        del self._configs[name]
        for partition in range(entry.partitions):
            plog = self._logs.pop((name, partition))
            plog.delete()
            # Rename first so a crash mid-rmtree leaves a directory the next open recognises.
            doomed = self.data_dir / f"{partition_dir_name(name, partition)}.{uuid.uuid4().hex}{DELETE_DIR_SUFFIX}"
            os.replace(plog.directory, doomed)
            shutil.rmtree(doomed)

    def alter_topic_config(self, name: str, overrides: Mapping[str, str | None]) -> TopicMetadata:
        """Set (or, with None, remove) config overrides of a topic (IncrementalAlterConfigs).

        Raises:
            UnknownTopicError, InvalidConfigError.
        """
        self._require_open()
        entry = self._catalog.topics.get(name)
        if entry is None:
            raise UnknownTopicError(f"unknown topic {name!r}")
        merged = {k: v for k, v in entry.overrides.items() if k not in overrides}
        merged.update({k: v for k, v in overrides.items() if v is not None})
        config = TopicConfig.from_overrides(merged, self.default_config)
        previous = entry.overrides
        entry.overrides = dict(config.overrides)
        try:
            self._catalog.save()
        except BaseException:
            entry.overrides = previous
            raise
        self._configs[name] = config
        for partition in range(entry.partitions):
            self._logs[(name, partition)].update_config(config)
        return self.topic(name)

    def topics(self) -> dict[str, TopicMetadata]:
        return {name: self.topic(name) for name in sorted(self._catalog.topics)}

    def topic(self, name: str) -> TopicMetadata:
        """Raises UnknownTopicError."""
        entry = self._catalog.topics.get(name)
        if entry is None:
            raise UnknownTopicError(f"unknown topic {name!r}")
        return TopicMetadata(entry.name, entry.partitions, self._configs[name], entry.topic_id)

    def get_log(self, topic: str, partition: int) -> PartitionLog:
        """The log of one partition.

        Raises:
            UnknownTopicError: unknown topic, or a partition number it does not have.
        """
        plog = self._logs.get((topic, partition))
        if plog is None:
            if topic in self._catalog.topics:
                raise UnknownTopicError(
                    f"topic {topic!r} has no partition {partition} (it has {self._catalog.topics[topic].partitions})"
                )
            raise UnknownTopicError(f"unknown topic {topic!r}")
        return plog

    def logs(self) -> list[PartitionLog]:
        return list(self._logs.values())

    # -- periodic work -----------------------------------------------------------------------

    def tick(self, *, flush: bool = True) -> None:
        """The broker's periodic call (~every 100 ms).

        Args:
            flush: fsync the logs due under flush.ms / flush.messages here. A broker that wants
                those fsyncs off its event loop passes False and calls :meth:`flush_due` from a
                worker thread instead.
        """
        self._require_open()
        if flush:
            self.flush_due()
        for plog in list(self._logs.values()):
            plog.maybe_roll_by_age()
            apply_retention(plog)
            plog.tick_deletes()
        self.cleaner.clean_some([p for p in self._logs.values() if p.config.is_compacted])

    def flush_due(self) -> int:
        """fsync every log whose flush policy says so; returns how many were flushed. Thread-safe."""
        flushed = 0
        for plog in list(self._logs.values()):
            if not plog.closed and plog.flush_due():
                plog.flush()
                flushed += 1
        return flushed

    def flush(self) -> None:
        """fsync every log now."""
        for plog in list(self._logs.values()):
            plog.flush()

    def close(self) -> None:
        """Flush every log, write checkpoints durably, then the clean-shutdown marker."""
        if self._closed:
            return
        for plog in list(self._logs.values()):
            plog.close()
        marker = self.data_dir / CLEAN_SHUTDOWN_FILE
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_directory(self.data_dir)
        self._closed = True
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        os.close(self._lock_fd)

    def __enter__(self) -> LogManager:  # noqa: PYI034 - a subclass has no reason to exist
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _require_open(self) -> None:
        if self._closed:
            raise LogClosedError(f"log manager of {self.data_dir} is closed")
