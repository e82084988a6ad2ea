"""The state of one worker: which partition databases it holds, restore, and commits.

Partition databases: tables are partitioned like the streams that update them, so partition
``p`` of every table with ``N`` partitions lives in one database, opened when this worker is
given partition ``p`` of a source topic that has ``N`` partitions, and closed when it loses the
last of them. The consumer group's assignor co-partitions topics of equal partition counts
(Kafka's range assignor), so that partition number lands on one worker.

Layout: ``<state_dir>/<app id>/partition-<p>-of-<N>/`` holds ``LOCK.flowbus`` (held while a
worker uses it, so two workers on one host never open it together) and ``db/`` (the database,
one store per table plus metadata).

Restore: a newly opened database is brought up to date from the changelogs by a separate,
unmanaged ``read_committed`` consumer, from the changelog offset stored in the database to the
end offset captured when restore starts; done means the consumer's position reached that end
offset (positions step over transaction markers). While a database restores, the source
partitions that feed it are paused (and any record fetched for them meanwhile is read again
later), so no event is processed before its state is complete; other partitions go on.

Commits (called by the worker inside its commit):

1. :meth:`collect` takes every table's pending writes (the last value of each changed key);
2. :meth:`produce` sends them to the changelogs (inside the transaction under exactly-once);
3. the worker flushes and commits the transaction (at least once: flushes), and only then
4. :meth:`store` writes each partition's changes to its database in one batch, together with
   the changelog offsets they reach (at least once, the input offsets are committed after it). A crash before 3 loses nothing (the transaction aborts; or,
   at least once, the changelog is ahead and restore catches up); a crash between 3 and 4 is
   caught up by restore.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowbus.app_errors import ConfigurationError
from flowbus.state.changelog import changelog_spec, decode_offset, encode_offset, offset_meta_key
from flowbus.state.errors import ChangelogMismatchError, RestoreTimeoutError
from flowbus.state.locking import PartitionLock
from flowbus.state.opening import open_partition
from flowbus.transports.base import Consumer, Producer, RecordMetadata, TopicPartition, Transport

if TYPE_CHECKING:
    from flowbus.clock import Clock
    from flowbus.state.base import Backend, PartitionDatabase
    from flowbus.state.table import Table

log = logging.getLogger("flowbus.state")

RESTORE_BATCH_RECORDS = 20_000
"""Changelog records per restore poll; each poll is written as one batch with the WAL off."""
RESTORE_POLL_TIMEOUT_MS = 100
RESTORE_TIMEOUT_MS_DEFAULT = 120_000
"""A restore whose position does not move for this long raises :class:`RestoreTimeoutError`
(a changelog stuck behind a transaction nobody ends, a broker gone) instead of hanging."""
RESTORE_PROGRESS_INTERVAL_MS = 5_000
"""How often a running restore logs its progress."""
LOCK_TIMEOUT_MS_DEFAULT = 30_000
"""How long a worker waits for another local worker to release a partition's database during a
rebalance before giving up with :class:`~flowbus.state.errors.StoreLockedError`."""


@dataclass(eq=False)
class PartitionSlot:
    """One open partition database and the tables it holds."""

    count: int
    partition: int
    path: Path
    lock: PartitionLock
    db: PartitionDatabase
    tables: list[Table]
    restoring: dict[TopicPartition, int] = field(default_factory=dict)
    """Changelog partitions still to restore -> the end offset captured at start."""
    restore_from: dict[TopicPartition, int] = field(default_factory=dict)
    total_records: int = 0
    done_records: int = 0
    started_ms: int = 0
    progress_ms: int = 0
    closed: bool = False
    follow: bool = False
    """A global table's partition: applies every changelog record, not only up to the end."""

    @property
    def key(self) -> tuple[int, int]:
        return (self.count, self.partition)

    @property
    def ready(self) -> bool:
        return not self.restoring and not self.closed

    def name(self) -> str:
        return f"partition {self.partition} of {self.count} ({', '.join(t.name for t in self.tables)})"


class StateManager:
    """Opens, restores, commits and closes the partition databases of one worker."""

    def __init__(
        self,
        app_id: str,
        tables: Sequence[Table],
        transport: Transport,
        backend: Backend,
        *,
        state_dir: Path,
        clock: Clock,
        restore_timeout_ms: int = RESTORE_TIMEOUT_MS_DEFAULT,
        lock_timeout_ms: int = LOCK_TIMEOUT_MS_DEFAULT,
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.app_id = app_id
        self.tables = [t for t in tables if not t.global_table]
        self.global_tables = [t for t in tables if t.global_table]
        self.transport = transport
        self.backend = backend
        self.state_dir = Path(state_dir)
        self.clock = clock
        self.restore_timeout_ms = restore_timeout_ms
        self.lock_timeout_ms = lock_timeout_ms
        self.on_failure = on_failure
        self.source_counts: dict[str, int] = {}
        self.slots: dict[tuple[int, int], PartitionSlot] = {}
        self.held: dict[TopicPartition, tuple[int, int]] = {}
        """Source partitions paused until their database is restored."""
        self.ready_sources: list[TopicPartition] = []
        """Source partitions whose restore finished since the worker last asked."""
        self.feeders: dict[tuple[int, int], set[TopicPartition]] = {}
        """The assigned source partitions feeding each open database; closed when none is left."""
        self._restore_consumer: Consumer | None = None
        self._restore_task: asyncio.Task[None] | None = None
        self._global_consumer: Consumer | None = None
        self._global_task: asyncio.Task[None] | None = None
        self.global_slots: list[PartitionSlot] = []
        self._last_report_ms = 0
        self.failure: BaseException | None = None

    @property
    def app_dir(self) -> Path:
        return self.state_dir / self.app_id

    def partition_dir(self, count: int, partition: int) -> Path:
        return self.app_dir / f"partition-{partition}-of-{count}"

    # -- start ------------------------------------------------------------------------------
    async def start(self, source_topics: Sequence[str], table_sources: Sequence[str]) -> None:
        """Resolve each table's partition count, then create or check its changelog topic.

        ``table_sources`` are the topics whose events may update tables (agents' topics): a table
        declared without ``partitions`` takes their partition count, which must then be unique.
        """
        described = await self.transport.describe_topics(list(source_topics))
        self.source_counts = {name: d.partitions for name, d in described.items()}
        feeding = sorted({self.source_counts[t] for t in table_sources if t in self.source_counts})
        for table in self.tables:
            if table.partitions:
                continue
            if table.source_topic is not None:
                table.partitions = self.source_counts[table.source_topic]
                continue
            if len(feeding) > 1:
                named = ", ".join(f"{t} ({self.source_counts[t]})" for t in table_sources if t in self.source_counts)
                raise ConfigurationError(
                    f"table {table.name!r} has no partition count and the topics that may update it have "
                    f"different ones: {named}; declare app.Table({table.name!r}, partitions=N) with the count "
                    f"of the topic that updates it"
                )
            table.partitions = feeding[0] if feeding else max(self.source_counts.values(), default=1)
        # A join reads its two inputs partition by partition: each join leaves a check of its
        # inputs' partition counts on a table it reads (flowbus.operators.joins), run here, once
        # every count is known and before anything is processed.
        for table in self.tables:
            for check in getattr(table, "partition_checks", ()):
                check(self.source_counts)
        await self._start_globals()
        if not self.tables:
            return
        names = [t.changelog_topic for t in self.tables]
        existing = await self.transport.describe_topics(names)
        for table in self.tables:
            found = existing.get(table.changelog_topic)
            if found is not None and found.partitions != table.partitions:
                raise ChangelogMismatchError(
                    f"changelog topic {table.changelog_topic!r} has {found.partitions} partitions but table "
                    f"{table.name!r} has {table.partitions}: each table partition needs its changelog partition. "
                    f"Declare the table with partitions={found.partitions}, or delete the changelog topic "
                    f"(and the state directory {self.app_dir}) to rebuild the table from its input"
                )
        await self.transport.create_topics(
            [
                changelog_spec(t.changelog_topic, t.partitions, t.changelog_config())
                for t in self.tables if t.changelog_topic not in existing
            ]
        )
        self._restore_consumer = self.transport.consumer(
            None, isolation_level="read_committed", client_id=f"{self.app_id}-restore"
        )

    def slot_key(self, tp: TopicPartition) -> tuple[int, int] | None:
        """The database a source partition feeds (``None`` when no table has its partition count)."""
        count = self.source_counts.get(tp.topic)
        if count is None or not any(t.partitions == count for t in self.tables):
            return None
        return (count, tp.partition)

    # -- assignment -------------------------------------------------------------------------
    async def assigned(self, partitions: Iterable[TopicPartition]) -> list[TopicPartition]:
        """Open the databases the new partitions feed and start restoring them; returns the
        source partitions to hold back (pause) until their restore is done."""
        hold: list[TopicPartition] = []
        for tp in partitions:
            key = self.slot_key(tp)
            if key is None:
                continue
            self.feeders.setdefault(key, set()).add(tp)
            slot = self.slots.get(key)
            if slot is None:
                slot = await self._open(*key)
            if not slot.ready:
                self.held[tp] = key
                hold.append(tp)
        if hold:
            self._ensure_restore_task()
        return hold

    async def _open(
        self, count: int, partition: int, tables: list[Table] | None = None, path: Path | None = None
    ) -> PartitionSlot:
        path = path or self.partition_dir(count, partition)
        path.mkdir(parents=True, exist_ok=True)
        lock = PartitionLock(path)
        await lock.acquire_async(self.lock_timeout_ms)
        if tables is None:
            tables = [t for t in self.tables if t.partitions == count]
        try:
            stores = [store for t in tables for store in t.store_names()]
            db, moved = open_partition(self.backend, path, stores, now_ms=self.clock.now_ms())
        except BaseException:
            lock.release()
            raise
        slot = PartitionSlot(count, partition, path, lock, db, tables, follow=tables[0].global_table)
        if not slot.follow:
            self.slots[slot.key] = slot
        for table in tables:
            table.parts[partition] = table.make_partition(partition, db)
        try:
            await self._plan_restore(slot, rebuilt=moved is not None)
        except BaseException:
            self._close_slot(slot)
            raise
        if slot.ready:
            self._mark_ready(slot)
        return slot

    async def _plan_restore(self, slot: PartitionSlot, *, rebuilt: bool) -> None:
        """Decide where each changelog partition's restore starts and ends."""
        tps = {TopicPartition(t.changelog_topic, slot.partition): t for t in slot.tables}
        marks = await self.transport.watermarks(list(tps))
        starts: dict[TopicPartition, int] = {}
        wipe_reason = None
        for tp, table in tps.items():
            stored = decode_offset(slot.db.get_meta(offset_meta_key(table.name)))
            low, high = marks[tp]
            if stored is not None and not low <= stored <= high:
                wipe_reason = (
                    f"{tp.topic}[{tp.partition}]: the stored changelog offset {stored} is outside the "
                    f"changelog's range [{low}, {high}] (topic recreated, or records deleted)"
                )
            starts[tp] = low if stored is None else stored
        if wipe_reason is not None:
            log.warning("state %s: %s; wiping the local copy and restoring it in full", slot.path, wipe_reason)
            slot.db.wipe()
            starts = {tp: marks[tp].low for tp in tps}
        elif rebuilt:
            starts = {tp: marks[tp].low for tp in tps}
        now = self.clock.monotonic_ms()
        slot.started_ms = slot.progress_ms = now
        for tp, start in starts.items():
            end = marks[tp].high
            if start < end:
                slot.restoring[tp] = end
                slot.restore_from[tp] = start
                slot.total_records += end - start
        if slot.restoring:
            log.info("restoring %s from %s: %d records", slot.name(), slot.path, slot.total_records)

    def _mark_ready(self, slot: PartitionSlot) -> None:
        for table in slot.tables:
            table.parts[slot.partition].ready = True
        for table in slot.tables:
            table.partition_ready(slot.partition)
        if slot.follow:
            return
        released = [tp for tp, key in self.held.items() if key == slot.key]
        for tp in released:
            del self.held[tp]
        self.ready_sources.extend(released)

    async def revoked(self, partitions: Iterable[TopicPartition]) -> None:
        """Close the databases no remaining source partition feeds (after the worker committed)."""
        gone = set(partitions)
        for tp in gone:
            self.held.pop(tp, None)
            key = self.slot_key(tp)
            if key is not None and key in self.feeders:
                self.feeders[key].discard(tp)
        self.ready_sources = [tp for tp in self.ready_sources if tp not in gone]
        for key, slot in list(self.slots.items()):
            if not self.feeders.get(key):
                self._close_slot(slot)

    def _close_slot(self, slot: PartitionSlot) -> None:
        if slot.closed:
            return
        slot.closed = True
        for table in slot.tables:
            part = table.parts.get(slot.partition)
            if part is not None and part.db is slot.db:
                del table.parts[slot.partition]
        if self.slots.get(slot.key) is slot:
            del self.slots[slot.key]
            self.feeders.pop(slot.key, None)
        try:
            slot.db.close()
        finally:
            slot.lock.release()
        log.debug("closed state %s", slot.path)

    def take_ready(self) -> list[TopicPartition]:
        """Source partitions whose state became complete since the last call."""
        ready, self.ready_sources = self.ready_sources, []
        return ready

    @property
    def restoring(self) -> bool:
        return any(slot.restoring for slot in self.slots.values())

    # -- global tables --------------------------------------------------------------------
    async def _start_globals(self) -> None:
        """Open every partition of every global table, catch up to the changelogs' ends (before
        the worker processes anything, so lookups are complete), then keep following them."""
        if not self.global_tables:
            return
        existing = await self.transport.describe_topics([t.changelog_topic for t in self.global_tables])
        for table in self.global_tables:
            found = existing.get(table.changelog_topic)
            if found is not None and table.declared_partitions and found.partitions != table.declared_partitions:
                raise ChangelogMismatchError(
                    f"global table {table.name!r} is declared with {table.declared_partitions} partitions but its "
                    f"changelog topic {table.changelog_topic!r} has {found.partitions}"
                )
            table.partitions = found.partitions if found is not None else (table.declared_partitions or 1)
        await self.transport.create_topics([
            changelog_spec(t.changelog_topic, t.partitions) for t in self.global_tables if t.changelog_topic not in existing
        ])
        for table in self.global_tables:
            for partition in range(table.partitions):
                path = self.app_dir / f"global-{table.name}" / f"partition-{partition}"
                self.global_slots.append(await self._open(table.partitions, partition, [table], path))
        consumer = self._global_consumer = self.transport.consumer(
            None, isolation_level="read_committed", client_id=f"{self.app_id}-global"
        )
        assigned = {TopicPartition(s.tables[0].changelog_topic, s.partition): s for s in self.global_slots}
        offsets = {}
        for tp, slot in assigned.items():
            stored = decode_offset(slot.db.get_meta(offset_meta_key(slot.tables[0].name)))
            offsets[tp] = slot.restore_from.get(tp, stored if stored is not None else 0)
        consumer.assign(list(assigned), offsets)
        while any(slot.restoring for slot in self.global_slots):
            records = await consumer.poll_batch(RESTORE_BATCH_RECORDS, RESTORE_POLL_TIMEOUT_MS)
            self._apply(records, assigned, consumer)
            self._check_progress(self.global_slots)
        self._global_task = asyncio.get_running_loop().create_task(
            self._follow_globals(consumer, assigned), name="flowbus-global-tables"
        )

    async def _follow_globals(self, consumer: Consumer, assigned: dict[TopicPartition, PartitionSlot]) -> None:
        try:
            while True:
                records = await consumer.poll_batch(RESTORE_BATCH_RECORDS, RESTORE_POLL_TIMEOUT_MS)
                if records:
                    self._apply(records, assigned, consumer)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001
            log.error("following the global tables failed: %s", exc)
            self.failure = exc
            if self.on_failure is not None:
                self.on_failure(exc)

    # -- restore ----------------------------------------------------------------------------
    def _ensure_restore_task(self) -> None:
        if self._restore_task is None or self._restore_task.done():
            self._restore_task = asyncio.get_running_loop().create_task(self._restore_loop(), name="flowbus-restore")

    def _restore_targets(self) -> dict[TopicPartition, PartitionSlot]:
        return {tp: slot for slot in self.slots.values() for tp in slot.restoring}

    async def _restore_loop(self) -> None:
        consumer = self._restore_consumer
        assert consumer is not None
        assigned: dict[TopicPartition, PartitionSlot] = {}
        try:
            while True:
                targets = self._restore_targets()
                if not targets:
                    if assigned:
                        consumer.assign([])
                    return
                if targets.keys() != assigned.keys() or any(assigned[tp] is not s for tp, s in targets.items()):
                    offsets = {}
                    for tp, slot in targets.items():
                        position = consumer.position(tp) if tp in assigned and assigned[tp] is slot else None
                        offsets[tp] = position if position is not None else slot.restore_from[tp]
                    consumer.assign(list(targets), offsets)
                    assigned = dict(targets)
                records = await consumer.poll_batch(RESTORE_BATCH_RECORDS, RESTORE_POLL_TIMEOUT_MS)
                self._apply(records, assigned, consumer)
                self._check_progress(list(self.slots.values()))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - a failed restore stops the worker, loudly
            log.error("restore failed: %s", exc)
            self.failure = exc
            if self.on_failure is not None:
                self.on_failure(exc)

    def _apply(self, records: list[Any], assigned: dict[TopicPartition, PartitionSlot], consumer: Consumer) -> None:
        per_slot: dict[int, tuple[PartitionSlot, dict[str, dict[bytes, bytes | None]], dict[bytes, bytes | None]]] = {}
        stores = {t.changelog_topic: t.name for s in assigned.values() for t in s.tables}
        count = len(records)
        start = 0
        while start < count:
            # Records of one partition come in runs: look the partition up once per run.
            first = records[start]
            topic, partition = first.topic, first.partition
            end = start + 1
            while end < count and records[end].partition == partition and records[end].topic == topic:
                end += 1
            tp = TopicPartition(topic, partition)
            slot = assigned.get(tp)
            if slot is not None and not slot.closed and (slot.follow or tp in slot.restoring):
                entry = per_slot.get(id(slot))
                if entry is None:
                    entry = per_slot[id(slot)] = (slot, {}, {})
                store = stores[topic]
                changes = entry[1].get(store)
                if changes is None:
                    changes = entry[1][store] = {}
                for record in records[start:end]:
                    changes[record.key] = record.value
                entry[2][offset_meta_key(store)] = encode_offset(records[end - 1].offset + 1)
                slot.done_records += end - start
            start = end
        now = self.clock.monotonic_ms()
        for slot, changes, meta in per_slot.values():
            for table in slot.tables:
                replayed = changes.get(table.name)
                if replayed:
                    for derived_store, derived in table.restored_changes(replayed).items():
                        changes.setdefault(derived_store, {}).update(derived)
            slot.db.write(changes, meta, bulk=bool(slot.restoring))
            slot.progress_ms = now
        for tp, slot in assigned.items():
            if slot.closed or tp not in slot.restoring:
                continue
            position = consumer.position(tp)
            if position is not None and position >= slot.restoring[tp]:
                store = stores[tp.topic]
                # Not bulk: this write makes the restored data durable (and visible to readers).
                slot.db.write({}, {offset_meta_key(store): encode_offset(position)})
                del slot.restoring[tp]
                slot.progress_ms = now
                if not slot.restoring:
                    elapsed_s = max(now - slot.started_ms, 1) / 1000
                    log.info(
                        "restored %s: %d records in %.1f s (%.0f records/s)",
                        slot.name(), slot.done_records, elapsed_s, slot.done_records / elapsed_s,
                    )
                    self._mark_ready(slot)

    def _check_progress(self, slots: list[PartitionSlot]) -> None:
        now = self.clock.monotonic_ms()
        for slot in slots:
            if slot.restoring and now - slot.progress_ms > self.restore_timeout_ms:
                where = ", ".join(f"{tp.topic}[{tp.partition}] (end {end})" for tp, end in slot.restoring.items())
                raise RestoreTimeoutError(
                    f"restoring {slot.name()} made no progress for {self.restore_timeout_ms} ms: {where}; "
                    f"is a transaction on the changelog left open, or the broker unreachable?"
                )
        if now - self._last_report_ms >= RESTORE_PROGRESS_INTERVAL_MS and self.restoring:
            self._last_report_ms = now
            done, total, rate = self.restore_progress()
            log.info("restoring state: %d / %d records (%.0f records/s)", done, total, rate)

    def restore_progress(self) -> tuple[int, int, float]:
        """(records restored, records to restore, records/s) over the restores running now."""
        running = [s for s in self.slots.values() if s.restoring]
        done = sum(s.done_records for s in running)
        total = sum(s.total_records for s in running)
        now = self.clock.monotonic_ms()
        started = min((s.started_ms for s in running), default=now)
        return done, total, done * 1000 / max(now - started, 1)

    # -- commits ----------------------------------------------------------------------------
    def collect(self) -> list[tuple[PartitionSlot, Table, dict[bytes, bytes | None]]]:
        """Every ready partition's pending table changes, moved to the committing layer."""
        out = []
        for slot in self.slots.values():
            if not slot.ready:
                continue
            for table in slot.tables:
                changes = table.take_changes(slot.partition)
                if changes:
                    out.append((slot, table, changes))
        return out

    @staticmethod
    def produce(
        producer: Producer, collected: list[tuple[PartitionSlot, Table, dict[bytes, bytes | None]]]
    ) -> list[asyncio.Future[RecordMetadata]]:
        """Send the collected changes to the changelogs: one future per (table, partition), on
        its last record, whose offset tells how far the changelog reaches."""
        return [
            producer.send_many(table.changelog_topic, slot.partition, list(changes.items()))
            for slot, table, changes in collected
        ]

    def store(
        self,
        collected: list[tuple[PartitionSlot, Table, dict[bytes, bytes | None]]],
        futures: list[asyncio.Future[RecordMetadata]],
    ) -> None:
        """Write committed changes to the databases, each partition in one batch with its offsets."""
        batches: dict[int, tuple[PartitionSlot, dict[str, dict[bytes, bytes | None]], dict[bytes, bytes | None]]] = {}
        for (slot, table, changes), future in zip(collected, futures, strict=True):
            if slot.closed:
                continue
            entry = batches.get(id(slot))
            if entry is None:
                entry = batches[id(slot)] = (slot, {}, {})
            entry[1][table.name] = changes
            entry[1].update(table.local_changes(slot.partition))
            entry[2][offset_meta_key(table.name)] = encode_offset(future.result().offset + 1)
        for slot, changes, meta in batches.values():
            slot.db.write(changes, meta)
        for slot, table, _ in collected:
            table.changes_stored(slot.partition)

    @staticmethod
    def failed(collected: list[tuple[PartitionSlot, Table, dict[bytes, bytes | None]]]) -> None:
        """A commit failed: keep its changes pending for the next one."""
        for slot, table, _ in collected:
            table.changes_failed(slot.partition)

    # -- shutdown ---------------------------------------------------------------------------
    async def close(self) -> None:
        """Stop restoring and close every database (they are consistent: each write is a batch)."""
        tasks = [t for t in (self._restore_task, self._global_task) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for slot in [*self.slots.values(), *self.global_slots]:
            self._close_slot(slot)
        self.global_slots = []
        for consumer in (self._restore_consumer, self._global_consumer):
            if consumer is not None:
                await consumer.close()
        self._restore_consumer = self._global_consumer = None
        self.backend.close()


def default_state_dir(broker_url: str) -> Path:
    """``<data dir>/state`` for ``embedded://DIR``, ``./flowbus-state`` otherwise."""
    if broker_url.startswith("embedded://"):
        return Path(broker_url.removeprefix("embedded://").partition("?")[0] or "./flowbus-data") / "state"
    return Path("./flowbus-state")

