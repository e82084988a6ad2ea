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
file.delete.delay.ms has passed, lets the cleaner do a bounded amount of compaction, and releases
the descriptors of inactive segments nobody read for a while.

Descriptor accounting counts what is open: each partition's active segment (3 files), the few
inactive segments a read reopened (see :mod:`flowbus.log.partition_log`), and everything else
the process holds. A roll that would pass the budget first closes idle segment files and idle
partitions, then fails with :class:`~flowbus.log.errors.StorageError` rather than pass it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import resource
import shutil
import uuid
from collections.abc import Generator, Iterator, Mapping
from pathlib import Path
from typing import NamedTuple

from flowbus.clock import SYSTEM_CLOCK, Clock
from flowbus.log.catalog import (
    CATALOG_FILE,
    Catalog,
    TopicEntry,
    collision_key,
    validate_topic_name,
)
from flowbus.log.checkpoint import CHECKPOINT_FILE, fsync_directory
from flowbus.log.cleaner import LogCleaner
from flowbus.log.config import TopicConfig
from flowbus.log.errors import (
    DescriptorBudgetError,
    InvalidPartitionsError,
    InvalidTopicError,
    LogClosedError,
    LogError,
    StorageError,
    TopicExistsError,
    UnknownTopicError,
)
from flowbus.log.partition_log import FDS_PER_SEGMENT, PartitionLog
from flowbus.log.retention import apply_retention

log = logging.getLogger(__name__)

CLEAN_SHUTDOWN_FILE = ".flowbus_clean_shutdown"
LOCK_FILE = ".lock"
DELETE_DIR_SUFFIX = "-delete"
#: Kafka caps partitions per topic only by cluster limits; one process opening this many files
#: (three per active segment) is already unreasonable.
MAX_PARTITIONS_PER_TOPIC = 10_000
#: Part of RLIMIT_NOFILE kept free of partition logs for sockets, checkpoints, the catalog and
#: Python itself: a quarter of the limit, and never fewer than this many.
FD_HEADROOM_MIN = 64
#: A partition log not asked for this long may be closed to make room for one that is (its
#: descriptors are the budget's); longer than any Fetch long poll or group-commit wait.
IDLE_LOG_CLOSE_MS = 120_000


def descriptor_budget() -> int:
    """Descriptors the partition logs of this process may hold, derived from RLIMIT_NOFILE.

    The soft limit minus headroom (a quarter of it, at least :data:`FD_HEADROOM_MIN`), so a full
    budget still leaves room to accept connections and write checkpoints.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(0, soft - max(FD_HEADROOM_MIN, soft // 4))


def open_descriptor_count() -> int | None:
    """Descriptors this process has open now (Linux ``/proc/self/fd``), None where unknown."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


class TopicMetadata(NamedTuple):
    """A topic as the broker sees it."""

    name: str
    partitions: int
    config: TopicConfig
    topic_id: str


def partition_dir_name(topic: str, partition: int) -> str:
    return f"{topic}-{partition}"


FD_RECOUNT_INTERVAL_MS = 1_000
"""How long a count of the process's descriptors is trusted while well under the budget."""

class LogManager:
    """Opens, creates and deletes partition logs under ``data_dir`` and runs their periodic work.

    Args:
        data_dir: created if missing; one manager per directory (enforced with a lock file).
        clock: drives segment age, retention, flush timing and compaction lag.
        default_config: the broker's defaults; topics override them key by key.
        fd_budget: descriptors the partition logs may hold (see :func:`descriptor_budget`, the
            default). Topic creation beyond it is refused; at start-up, partitions beyond it are
            left closed and opened on first use, so the catalog's size never prevents a start.

    Example:
        >>> manager = LogManager(tmp_path)                                  # doctest: +SKIP
        >>> manager.create_topic("orders", 3, {"cleanup.policy": "compact"})  # doctest: +SKIP
        >>> manager.get_log("orders", 0).append(batch_bytes)                 # doctest: +SKIP
    """

    def __init__(
        self,
        data_dir: str | Path,
        *,
        clock: Clock = SYSTEM_CLOCK,
        default_config: TopicConfig | None = None,
        fd_budget: int | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.clock = clock
        self._fd_estimate: int | None = None
        """Descriptors in use at the last count plus those granted since (see _descriptors_free)."""
        self._fd_counted_ms = 0
        #: The same for topic creation (check_descriptor_budget).
        self._create_fd_estimate: int | None = None
        self._create_fd_counted_ms = 0
        #: Topics whose creation is under way (create_topic_steps): their names are taken.
        self._creating: set[str] = set()
        #: Topics forgotten by the catalog whose files are still being removed.
        self._deleting: set[str] = set()
        self.fd_budget = descriptor_budget() if fd_budget is None else fd_budget
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
        #: Partitions in the catalog not open (over the descriptor budget at start-up, or closed
        #: while idle), each with whether it was closed cleanly: untouched since start-up, the
        #: start-up's clean-shutdown state holds; closed while idle, it was flushed and checkpointed.
        self._deferred: dict[tuple[str, int], bool] = {}
        #: When each open partition log was last asked for (``get_log``), for closing idle ones.
        self._last_used_ms: dict[tuple[str, int], int] = {}
        #: Partitions whose roll or retention failed at the last tick (logged once until it works).
        self._maintenance_failing: set[tuple[str, int]] = set()
        self._clean_on_open = clean_shutdown
        self._remove_orphans()
        for entry in self._catalog.topics.values():
            self._configs[entry.name] = TopicConfig.from_overrides(entry.overrides, self.default_config)
        self._open_within_budget()
        if clean_shutdown:
            # From here on a crash must be detected: the marker goes before any new write.
            marker.unlink()
            fsync_directory(self.data_dir)
        self.cleaner = LogCleaner(clock)
        cut = sum(plog.bytes_cut_on_open for plog in self._logs.values())
        log.info(
            "opened %s: %d topics, %d partitions, %s%s%s",
            self.data_dir,
            len(self._catalog.topics),
            len(self._logs),
            "new data directory" if is_new else "clean shutdown" if clean_shutdown else "unclean shutdown",
            f", {cut} bytes cut in recovery" if cut else "",
            f", {len(self._deferred)} partitions left closed until first use (descriptor budget"
            f" {self.fd_budget}; raise ulimit -n)"
            if self._deferred
            else "",
        )

    def _open_within_budget(self) -> None:
        """Open the catalog's partitions within half the descriptor budget; defer the rest.

        The other half stays free for deferred partitions opened on first use and for sockets,
        so a data directory with more partitions than descriptors still starts and serves. Each
        open partition counts what it holds once open: its active segment's files plus any
        segment re-validated after a crash (released by the first flush); segments the checkpoint
        vouches for are opened, read and released, whatever their number.
        """
        in_use = open_descriptor_count() or 0
        startup_budget = in_use + (self.fd_budget - in_use) // 2
        for entry in self._catalog.topics.values():
            config = self._configs[entry.name]
            for partition in range(entry.partitions):
                key = (entry.name, partition)
                if self._deferred or in_use + FDS_PER_SEGMENT > startup_budget:
                    self._deferred[key] = self._clean_on_open
                    continue
                try:
                    plog = self._open_log(entry.name, partition, config, self._clean_on_open)
                except OSError as exc:
                    if exc.errno not in (errno.EMFILE, errno.ENFILE):
                        raise
                    self._deferred[key] = self._clean_on_open
                    continue
                in_use += plog.open_fd_count

    def check_descriptor_budget(self, name: str, partitions: int, *, adding: bool = False) -> None:
        """Refuse ``partitions`` new partitions if their descriptors would exceed the budget.

        Args:
            adding: the partitions are added to the existing topic ``name`` (CreatePartitions),
                not a new topic's; only the message differs.

        Raises:
            DescriptorBudgetError: with a message naming the need, what is free and the limit.
        """
        needed = FDS_PER_SEGMENT * partitions
        # Listing /proc/self/fd costs ~3 ms with thousands open, once per topic of a CreateTopics
        # of 1,000: the count is reused for FD_RECOUNT_INTERVAL_MS, plus what creations asked for
        # since, and taken again near the budget (kept apart from the rolls' estimate).
        now_ms = self.clock.monotonic_ms()
        in_use = self._create_fd_estimate
        if (in_use is None or now_ms - self._create_fd_counted_ms >= FD_RECOUNT_INTERVAL_MS
                or in_use + needed > self.fd_budget):
            in_use = self.descriptors_in_use()
            self._create_fd_counted_ms = now_ms
        if in_use + needed <= self.fd_budget:
            self._create_fd_estimate = in_use + needed
            return
        self._create_fd_estimate = in_use
        free = max(0, self.fd_budget - in_use)
        what = (
            f"adding {partitions} partitions to topic {name!r}"
            if adding
            else f"creating topic {name!r} with {partitions} partitions"
        )
        message = (
            f"{what} needs {needed} file descriptors;"
            f" {free} of the broker's budget of {self.fd_budget} are free (raise ulimit -n to allow more)"
        )
        log.warning("refused: %s", message)
        raise DescriptorBudgetError(message)

    def descriptors_in_use(self) -> int:
        """Descriptors the process holds now (``/proc/self/fd``), or, where that is unknown,
        those the open partition logs hold (active segments and open inactive ones)."""
        in_use = open_descriptor_count()
        if in_use is None:
            return self.log_descriptor_count()
        return in_use

    def log_descriptor_count(self) -> int:
        """Descriptors the open partition logs hold now, counted segment by segment."""
        return sum(plog.open_fd_count for plog in list(self._logs.values()))

    def _descriptors_free(self, count: int) -> bool:
        """Whether ``count`` more descriptors fit the budget (asked by a log about to roll, or
        about to open). Listing ``/proc/self/fd`` costs ~10 ms at 3,000 descriptors, so the count
        is taken at most every FD_RECOUNT_INTERVAL_MS and what was granted since is added to it;
        near the budget (the estimate says no) it is always taken again, so the answer there is
        exact. Many rolls in one tick (old timestamps expiring every segment) list it once."""
        now_ms = self.clock.monotonic_ms()
        estimate = self._fd_estimate
        if estimate is None or now_ms - self._fd_counted_ms >= FD_RECOUNT_INTERVAL_MS or estimate + count > self.fd_budget:
            estimate = self.descriptors_in_use()
            self._fd_counted_ms = now_ms
        if estimate + count <= self.fd_budget:
            self._fd_estimate = estimate + count
            return True
        self._fd_estimate = estimate
        return False

    def _make_room(self, asking: PartitionLog | None, count: int) -> None:
        """Free descriptors until ``count`` more fit the budget, if idle files allow it.

        Cheapest first: files of inactive segments no read is using (a later read reopens
        them), then whole partition logs idle for IDLE_LOG_CLOSE_MS (:meth:`_close_idle_logs`).
        ``asking`` (the log that wants to roll) is never closed. Takes each log's lock in turn,
        so the caller must hold none.
        """
        if self._descriptors_free(count):
            return
        # All of them in one pass: counting the process's descriptors after each log would cost
        # a listing of /proc/self/fd per partition. Released files cost only a reopen later.
        for plog in list(self._logs.values()):  # bounded by the open logs
            if not plog.closed:
                plog.close_idle_segments(keep=0)
        if not self._descriptors_free(count):
            self._close_idle_logs(count, keep=asking)

    def _open_log(self, topic: str, partition: int, config: TopicConfig, clean_shutdown: bool) -> PartitionLog:
        plog = self._new_log(topic, partition, config, clean_shutdown)
        self._logs[(topic, partition)] = plog
        self._last_used_ms[(topic, partition)] = self.clock.monotonic_ms()
        return plog

    def _new_log(self, topic: str, partition: int, config: TopicConfig, clean_shutdown: bool) -> PartitionLog:
        plog = PartitionLog(
            self.data_dir / partition_dir_name(topic, partition),
            topic,
            partition,
            config,
            self.clock,
            clean_shutdown=clean_shutdown,
        )
        # Rolls count against this manager's budget (see PartitionLog._roll_locked).
        plog.descriptors_free = self._descriptors_free
        plog.make_room = self._make_room
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
        """Create a topic and its partition logs, all or nothing.

        The partition directories are created first and the catalog is saved last: a failure
        removes what was created and leaves the catalog as it was, and a crash in between leaves
        directories the catalog does not name, which the next open removes.

        Raises:
            InvalidTopicError: illegal name, or one colliding with an existing topic ('.' vs '_').
            TopicExistsError: the name is taken (or being created).
            InvalidPartitionsError: ``partitions`` below 1 (or absurdly many).
            InvalidConfigError: an unknown key or bad value in ``configs``.
            DescriptorBudgetError: the partitions would exceed the descriptor budget.
            StorageError: the disk (or the process' descriptors) failed us; nothing was kept.
        """
        steps = self.create_topic_steps(name, partitions, configs)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]

    def create_topic_steps(
        self, name: str, partitions: int, configs: Mapping[str, str] | None = None
    ) -> Generator[None, None, TopicMetadata]:
        """:meth:`create_topic` as a generator that yields after each partition's files; it
        returns the new topic's metadata.

        Each partition costs a directory and three files (~1-3 ms): a topic of thousands of
        partitions created in one go held the broker's event loop for seconds, so the broker
        runs the steps in slices between which it serves its clients. Everything is checked
        before the first yield; until the catalog is saved at the end, the topic does not exist
        for readers, and a second creation of the same name is refused. Closing the generator
        early (its task cancelled) removes what it created.
        """
        self._require_open()
        validate_topic_name(name)
        if name in self._catalog.topics or name in self._creating:
            raise TopicExistsError(f"topic {name!r} already exists")
        if name in self._deleting:
            raise TopicExistsError(f"topic {name!r} is being deleted; create it again once that is done")
        for existing in (*self._catalog.topics, *self._creating):
            if collision_key(existing) == collision_key(name):
                raise InvalidTopicError(f"topic {name!r} collides with existing topic {existing!r}")
        if not isinstance(partitions, int) or not 1 <= partitions <= MAX_PARTITIONS_PER_TOPIC:
            raise InvalidPartitionsError(f"partitions must be between 1 and {MAX_PARTITIONS_PER_TOPIC}, got {partitions}")
        overrides = dict(configs or {})
        config = TopicConfig.from_overrides(overrides, self.default_config)
        self.check_descriptor_budget(name, partitions)
        entry = TopicEntry(name, partitions, dict(config.overrides))
        created: list[PartitionLog] = []
        self._creating.add(name)
        try:
            try:
                for partition in range(partitions):  # bounded by MAX_PARTITIONS_PER_TOPIC
                    created.append(self._new_log(name, partition, config, clean_shutdown=False))
                    yield
                self._require_open()
                self._catalog.topics[name] = entry
                try:
                    self._catalog.save()
                except BaseException:
                    del self._catalog.topics[name]
                    raise
            except BaseException as exc:
                self._discard_new_logs(name, range(partitions), created)
                if isinstance(exc, OSError):
                    log.warning("could not create topic %s: %s; nothing was kept", name, exc)
                    raise StorageError(f"could not create topic {name!r}: {exc}; nothing was kept") from exc
                raise
        finally:
            self._creating.discard(name)
        self._configs[name] = config
        now_ms = self.clock.monotonic_ms()
        for plog in created:
            self._logs[(name, plog.partition)] = plog
            self._last_used_ms[(name, plog.partition)] = now_ms
        return self.topic(name)

    def _discard_new_logs(self, name: str, partitions: range, created: list[PartitionLog]) -> None:
        """Undo a failed creation: close and remove the directories of ``partitions`` it made."""
        for plog in created:
            with contextlib.suppress(OSError, LogError):  # never hide the first failure
                plog.delete()
        for partition in partitions:
            shutil.rmtree(self.data_dir / partition_dir_name(name, partition), ignore_errors=True)

    def add_partitions(self, name: str, partitions: int, *, validate_only: bool = False) -> TopicMetadata:
        """Grow topic ``name`` to ``partitions`` partitions, all or nothing (CreatePartitions).

        As :meth:`create_topic`: the new partition directories are created first and the catalog
        is saved last, so a failure removes them and leaves the topic as it was, and a crash in
        between leaves directories the catalog does not name, which the next open removes. The
        new partitions take the topic's current config.

        Args:
            validate_only: check everything (including the descriptor budget), change nothing.

        Raises:
            UnknownTopicError: no such topic.
            InvalidPartitionsError: ``partitions`` not above the current count, or over
                :data:`MAX_PARTITIONS_PER_TOPIC` (Kafka never removes partitions).
            DescriptorBudgetError: the new partitions would exceed the descriptor budget.
            StorageError: the disk failed us; nothing was kept.
        """
        self._require_open()
        entry = self._catalog.topics.get(name)
        if entry is None:
            raise UnknownTopicError(f"unknown topic {name!r}")
        current = entry.partitions
        if not isinstance(partitions, int) or partitions <= current:
            raise InvalidPartitionsError(
                f"topic {name!r} has {current} partitions; the new count must be larger, got {partitions}"
            )
        if partitions > MAX_PARTITIONS_PER_TOPIC:
            raise InvalidPartitionsError(f"partitions must be at most {MAX_PARTITIONS_PER_TOPIC}, got {partitions}")
        self.check_descriptor_budget(name, partitions - current, adding=True)
        if validate_only:
            return self.topic(name)
        config = self._configs[name]
        new_indexes = range(current, partitions)
        created: list[PartitionLog] = []
        try:
            for partition in new_indexes:  # bounded by MAX_PARTITIONS_PER_TOPIC
                created.append(self._new_log(name, partition, config, clean_shutdown=False))
            entry.partitions = partitions
            try:
                self._catalog.save()
            except BaseException:
                entry.partitions = current
                raise
        except BaseException as exc:
            self._discard_new_logs(name, new_indexes, created)
            if isinstance(exc, OSError):
                log.warning("could not add partitions to topic %s: %s; nothing was kept", name, exc)
                raise StorageError(f"could not add partitions to topic {name!r}: {exc}; nothing was kept") from exc
            raise
        now_ms = self.clock.monotonic_ms()
        for plog in created:
            self._logs[(name, plog.partition)] = plog
            self._last_used_ms[(name, plog.partition)] = now_ms
        return self.topic(name)

    def delete_topic(self, name: str) -> None:
        """Delete a topic: the catalog forgets it durably, then its directories are removed.

        Raises:
            UnknownTopicError: no such topic.
        """
        for _ in self.delete_topic_steps(name):
            pass

    def delete_topic_steps(self, name: str) -> Iterator[None]:
        """:meth:`delete_topic` as a generator that yields after each partition's removal.

        The catalog forgets the topic (durably) before the first yield; until the last
        directory is gone the name cannot be created again, so a new topic never meets the old
        one's files. A broker runs the steps in 1 ms slices (2,000 partitions take ~250 ms).

        Raises:
            UnknownTopicError: no such topic (before the first yield).
        """
        self._require_open()
        entry = self._catalog.topics.get(name)
        if entry is None:
            raise UnknownTopicError(f"unknown topic {name!r}")
        del self._catalog.topics[name]
        try:
            self._catalog.save()
        except BaseException:
            # Nothing is deleted yet: the topic stays, as it still is in the catalog on disk.
            self._catalog.topics[name] = entry
            raise
        del self._configs[name]
        self._deleting.add(name)
        remaining = iter(range(entry.partitions))
        try:
            for partition in remaining:
                self._delete_partition_files(name, partition)
                yield
        finally:
            # Abandoned midway (a cancelled task): the rest goes at once, never left behind.
            for partition in remaining:
                self._delete_partition_files(name, partition)
            self._deleting.discard(name)

    def _delete_partition_files(self, name: str, partition: int) -> None:
        directory = self.data_dir / partition_dir_name(name, partition)
        plog = self._logs.pop((name, partition), None)
        self._deferred.pop((name, partition), None)
        self._last_used_ms.pop((name, partition), None)
        if plog is not None:
            plog.delete()
        elif not directory.exists():
            return  # a deferred partition never opened: it may have no directory yet
        # Rename first so a crash mid-rmtree leaves a directory the next open recognises.
        doomed = self.data_dir / f"{partition_dir_name(name, partition)}.{uuid.uuid4().hex}{DELETE_DIR_SUFFIX}"
        os.replace(directory, doomed)
        shutil.rmtree(doomed)

    def alter_topic_config(
        self, name: str, overrides: Mapping[str, str | None], *, validate_only: bool = False
    ) -> TopicMetadata:
        """Set (or, with None, remove) config overrides of a topic (AlterConfigs,
        IncrementalAlterConfigs), all or nothing.

        The catalog is saved before anything changes in memory, so the new settings survive a
        restart; then every open partition log switches to them at once (retention, cleanup
        policy, flush policy and max.message.bytes at their next use, segment sizes from the next
        roll). A partition not open yet reads them when it opens.

        Args:
            validate_only: check the result, change nothing; returns the topic as it would be.

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
        if validate_only:
            return TopicMetadata(entry.name, entry.partitions, config, entry.topic_id)
        previous = entry.overrides
        entry.overrides = dict(config.overrides)
        try:
            self._catalog.save()
        except BaseException:
            entry.overrides = previous
            raise
        self._configs[name] = config
        for partition in range(entry.partitions):
            plog = self._logs.get((name, partition))
            if plog is not None:  # a deferred partition reads self._configs when it opens
                plog.update_config(config)
        return self.topic(name)

    def partition_count(self) -> int:
        """Partitions in the catalog (open, deferred or idle-closed)."""
        return sum(entry.partitions for entry in self._catalog.topics.values())

    def has_topic(self, name: str) -> bool:
        """Whether the catalog names topic ``name`` (without building :meth:`topics`)."""
        return name in self._catalog.topics

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
        key = (topic, partition)
        plog = self._logs.get(key)
        if plog is None and key in self._deferred:
            plog = self._open_deferred(topic, partition)
        if plog is not None:
            self._last_used_ms[key] = self.clock.monotonic_ms()
        if plog is None:
            if topic in self._catalog.topics:
                raise UnknownTopicError(
                    f"topic {topic!r} has no partition {partition} (it has {self._catalog.topics[topic].partitions})"
                )
            raise UnknownTopicError(f"unknown topic {topic!r}")
        return plog

    def _open_deferred(self, topic: str, partition: int) -> PartitionLog:
        """Open a partition start-up left closed.

        Raises:
            StorageError: still no descriptors for it (retriable: KAFKA_STORAGE_ERROR).
        """
        self._require_open()
        key = (topic, partition)
        if not self._descriptors_free(FDS_PER_SEGMENT):
            self._make_room(None, FDS_PER_SEGMENT)
            if not self._descriptors_free(FDS_PER_SEGMENT):
                raise StorageError(
                    f"{topic}-{partition} cannot be opened: the broker's {self.fd_budget} file descriptors"
                    f" are in use by partitions used within the last {IDLE_LOG_CLOSE_MS} ms"
                )
        try:
            plog = self._open_log(topic, partition, self._configs[topic], self._deferred[key])
        except OSError as exc:
            raise StorageError(f"{topic}-{partition} cannot be opened: {exc}") from exc
        del self._deferred[key]
        return plog

    def _close_idle_logs(self, fds_wanted: int, *, keep: PartitionLog | None = None) -> None:
        """Close the least recently used logs idle for IDLE_LOG_CLOSE_MS until ``fds_wanted``
        descriptors are free; internal topics (``__consumer_offsets``...) and ``keep`` (a log
        asking for room) always stay open."""
        now_ms = self.clock.monotonic_ms()
        idle = sorted(
            (self._last_used_ms.get(key, 0), key)
            for key, plog in self._logs.items()
            if not key[0].startswith("__")
            and plog is not keep
            and now_ms - self._last_used_ms.get(key, 0) >= IDLE_LOG_CLOSE_MS
        )
        for _, key in idle:  # bounded by the number of open logs
            if self._descriptors_free(fds_wanted):
                return
            plog = self._logs.pop(key)
            self._last_used_ms.pop(key, None)
            plog.close()  # flushed and checkpointed: reopening it needs no recovery
            self._deferred[key] = True

    @property
    def deferred_partitions(self) -> int:
        """Partitions of the catalog not opened yet (start-up was over the descriptor budget)."""
        return len(self._deferred)

    def logs(self) -> list[PartitionLog]:
        return list(self._logs.values())

    def partition_size_bytes(self, topic: str, partition: int) -> int:
        """Bytes of the partition's segment files (DescribeLogDirs), without opening a partition
        left closed (a deferred one is measured on disk: its ``.log`` files).

        Raises:
            UnknownTopicError: unknown topic, or a partition number it does not have.
        """
        plog = self._logs.get((topic, partition))
        if plog is not None:
            return plog.size_bytes
        entry = self._catalog.topics.get(topic)
        if entry is None or not 0 <= partition < entry.partitions:
            raise UnknownTopicError(f"unknown topic or partition {topic}-{partition}")
        directory = self.data_dir / partition_dir_name(topic, partition)
        total = 0
        with contextlib.suppress(FileNotFoundError):  # never opened: no directory yet
            for path in directory.glob("*.log"):  # bounded by the partition's segments
                with contextlib.suppress(FileNotFoundError):  # deleted meanwhile
                    total += path.stat().st_size
        return total

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
        for _ in self.maintenance_steps():
            pass

    def maintenance_steps(self) -> Iterator[None]:
        """:meth:`tick`'s maintenance (without the flush) as a generator that yields after each
        partition's share and after the cleaner's.

        With thousands of partitions one pass takes tens of milliseconds (~5 us a partition); a
        broker runs the steps in ~1 ms slices between which it serves its clients, so the pass
        never holds its event loop that long. Partitions created after the pass began wait for the
        next one; those deleted or closed meanwhile are skipped.
        """
        self._require_open()
        for key, plog in list(self._logs.items()):
            if self._closed or plog.closed:
                continue
            try:
                plog.maybe_roll_by_age()
                apply_retention(plog)  # may roll: without a free descriptor that waits a tick
            except StorageError as exc:
                if key not in self._maintenance_failing:  # one line per episode, not one per tick
                    log.warning("maintenance of %s-%d postponed (retried every tick): %s", *key, exc)
                    self._maintenance_failing.add(key)
            else:
                self._maintenance_failing.discard(key)
            plog.tick_deletes()
            yield
        if self._closed:
            return
        self.cleaner.clean_some([p for p in self._logs.values() if p.config.is_compacted and not p.closed])
        yield
        for plog in list(self._logs.values()):  # after the cleaner, which reads old segments
            if self._closed:
                return
            if not plog.closed:
                plog.close_idle_segments()
                yield

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

