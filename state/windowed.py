"""Window stores: a table of windows per partition, its event-time clock, and its close index.

A :class:`WindowedTable` is a :class:`~flowbus.state.table.Table` whose keys are window store keys
(:mod:`flowbus.state.windows`), so it commits, changelogs and restores like any table. It adds
three things per partition (:class:`WindowPartition`):

* **Stream time and watermark.** Stream time is the largest event time seen on the partition;
  the watermark is how far windows are closed (a window closes when the watermark reaches its
  end + grace). The watermark follows stream time, and, when the partition is idle and caught
  up, the wall clock (the dataflow step drives that). Both are stored under the empty key of the
  store, so they reach the changelog and come back on restore: a record that was late before a
  crash is late after it, and a window closed before it is not opened again.
* **A close index**, in a second store (``<table>#close``) written in the same batch as the
  data but not changelogged: ``close time ‖ store key``. Closing walks it from the last
  watermark to the new one, so it costs what closes, never a scan of every key. Entries not in
  the database yet are kept in memory in one bucket per close time (a heap of close times above
  them), so they close before they reach the database, and a window opened and closed between
  two commits costs two dict operations, not two heap operations on byte strings. An entry only
  says "look at this key at this time": an entry that finds nothing due is dropped, which lets
  restore rebuild the index from every changelog record it replays.
* **Lateness**: records whose windows are all closed are counted (``late_records``) and handed
  to the step's late-record policy, never silently merged into a closed window.
"""

from __future__ import annotations

import heapq
import struct
from collections.abc import Callable, Iterable, Iterator
from itertools import groupby, islice
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from flowbus.context import current_source
from flowbus.metrics.histogram import DELAY_BOUNDS_S, LatencyHistogram
from flowbus.serializers import Serializer
from flowbus.state.table import DELETED, MISSING, Table, TablePartition
from flowbus.state.windows import (
    KIND_ENTRIES,
    KIND_SESSIONS,
    KIND_WINDOW,
    TIME_KEY,
    TIME_MAX_MS,
    Hopping,
    Session,
    Sliding,
    Tumbling,
    WindowRange,
    WindowSpec,
    index_bound,
    index_key,
    split_index_key,
    split_key,
)
from flowbus.transports.base import TopicPartition

if TYPE_CHECKING:
    from flowbus.app import App
    from flowbus.clock import Clock
    from flowbus.operators.steps import Runtime
    from flowbus.state.base import PartitionDatabase

_TIME = struct.Struct(">qq")
_CLOSE_TIME = itemgetter(0)  # of a (close_ms, data_key) index entry

NO_CLOSE_MS = TIME_MAX_MS
"""``next_close_ms`` of a partition with nothing to close."""
INDEX_STORE_SUFFIX = "#close"
"""The close index store of table ``t`` is ``t#close`` ('#' is not allowed in table names)."""
CLOSE_COMMIT_DELAY_MS = 100
"""After windows close under exactly-once, the worker commits within this much, so what closing
produced is readable soon (only a commit makes it visible) without a commit per record."""
CHANGELOG_EXTRA_RETENTION_MS = 24 * 3600 * 1000
TIME_REFRESH_MS = CHANGELOG_EXTRA_RETENTION_MS // 2
"""The stream-time record is sent again at a commit once it is this old (and once after each
restore), even when stream time did not move: otherwise a stream silent for longer than the
changelog's retention would lose it to time retention, and a restore after that would forget the
watermark (and accept records for windows already closed)."""
"""Window changelogs are ``compact,delete``: a record is deleted once older than the window's
size + grace plus this margin (Kafka Streams keeps one day too), so closed windows do not stay
in the changelog forever even where compaction keeps their tombstones."""


class WindowPartition(TablePartition):
    """One partition of a window store, with its clock and the part of its index in memory."""

    __slots__ = (
        "armed_stream_ms",
        "born_here",
        "close_times",
        "idle_armed",
        "idle_due_ms",
        "index_committing",
        "index_pending",
        "new_index",
        "next_close_ms",
        "scan_from_ms",
        "seen_ms",
        "stored_from_ms",
        "taken_index",
        "stream_time_ms",
        "taken_time_ms",
        "time_dirty",
        "time_loaded",
        "time_written_ms",
        "watermark_ms",
    )

    def __init__(self, partition: int, db: PartitionDatabase, store: str) -> None:
        super().__init__(partition, db, store)
        self.time_loaded = False
        self.stream_time_ms = -1
        self.watermark_ms = -1
        """Every window closing at or before this time is closed."""
        self.taken_time_ms = TIME_MAX_MS
        """Stream time when a commit last took this partition's changes (or the stored stream time
        at load): every window in the database, the commit under way or the read cache was opened
        by a record at or before it, so a window starting later is new if it is not pending, and
        opening it needs no database lookup. TIME_MAX_MS (look every window up) until loaded."""
        self.time_dirty = False
        self.time_written_ms = -1
        """Wall-clock time this process last sent the stream-time record (-1: not yet)."""
        self.new_index: dict[int, dict[bytes, None]] = {}
        """Index entries added since the last commit took the changes: close time -> store keys
        (an ordered set). The commit that takes them writes them to the database."""
        self.taken_index: dict[int, dict[bytes, None]] = {}
        """Index entries the commit under way writes (in memory until it is stored)."""
        self.close_times: list[int] = []
        """Heap of the close times of :attr:`new_index` and :attr:`taken_index` (a time whose
        buckets are gone is skipped when it comes up)."""
        self.index_pending: dict[bytes, None] = {}
        """Deletions of index entries in the database (or being written to it), since the last take."""
        self.index_committing: dict[bytes, bytes | None] = {}
        """What the commit under way writes to the index store: new entries and deletions."""
        self.born_here: set[bytes] = set()
        """Store keys indexed since the last commit, among the entries :meth:`WindowedTable.due` took."""
        self.scan_from_ms = 0
        """The database's index is closed below this time already (entries there are stale)."""
        self.stored_from_ms = 0
        """No live entry of the database's index closes before this time (from the last scan and
        the commits stored since): closing up to an earlier time needs no database scan."""
        self.next_close_ms = NO_CLOSE_MS
        self.seen_ms = 0
        """Monotonic time the last record of this partition was seen (for the idle close)."""
        self.idle_armed = False
        self.idle_due_ms = 0
        self.armed_stream_ms = 0
        """Stream time when the idle check was armed: a step re-arms once stream time ran more
        than the idle time past it (a catch-up), so the check is not left due too late."""
        """When the armed idle check fires (monotonic); a :class:`WindowClock` check only."""


class WindowedTable(Table):
    """The store of one windowed aggregation (made by the dataflow window steps and by
    :meth:`flowbus.state.table.Table.tumbling` and friends).

    Values are aggregates encoded with ``value_serializer``; the time record is encoded apart.
    """

    hidden_keys = frozenset({TIME_KEY})

    def __init__(
        self,
        app: App,
        name: str,
        spec: WindowSpec,
        *,
        key_type: Any = None,
        key_serializer: str | Serializer | None = None,
        value_serializer: str | Serializer = "json",
        partitions: int | None = None,
    ) -> None:
        super().__init__(
            app, name, key_type=key_type, key_serializer=key_serializer, value_serializer=value_serializer,
            partitions=partitions,
        )
        self.spec = spec
        self.index_store = name + INDEX_STORE_SUFFIX
        self.late_records = 0
        """Records that came after every window they belong to had closed."""
        self.closed_windows = 0
        self.close_latency = LatencyHistogram(DELAY_BOUNDS_S)
        """Per window closed on a running worker: from its close time (end + grace, event time)
        to the wall-clock time it closed (the metrics' ``flowbus_worker_window_close_latency_seconds``)."""
        self.on_ready: Callable[[int], None] | None = None
        """Called with a partition number once it is restored (the step arms its idle close)."""
        self.wall_clock: Clock | None = None
        """The worker's clock once it runs (see :meth:`WindowClock.start`): when the stream-time
        record was last sent, to send it again before the changelog's retention removes it."""

    # -- what the state manager asks -------------------------------------------------------
    def store_names(self) -> list[str]:
        return [self.name, self.index_store]

    def make_partition(self, partition: int, db: PartitionDatabase) -> TablePartition:
        return WindowPartition(partition, db, self.name)

    def changelog_config(self) -> dict[str, str]:
        return {
            "cleanup.policy": "compact,delete",
            "retention.ms": str(self.spec.retention_ms() + CHANGELOG_EXTRA_RETENTION_MS),
        }

    def partition_ready(self, partition: int) -> None:
        part = self.parts.get(partition)
        if isinstance(part, WindowPartition):
            self.load_time(part)
        if self.on_ready is not None:
            self.on_ready(partition)

    def take_changes(self, partition: int) -> dict[bytes, bytes | None]:
        changes = super().take_changes(partition)
        part = self.parts.get(partition)
        if isinstance(part, WindowPartition):
            if part.time_loaded and part.stream_time_ms > part.taken_time_ms:
                part.taken_time_ms = part.stream_time_ms
            clock = self.wall_clock
            now_ms = clock.now_ms() if clock is not None else -1
            if (not part.time_dirty and clock is not None and part.time_loaded and part.stream_time_ms >= 0
                    and (part.time_written_ms < 0 or now_ms - part.time_written_ms >= TIME_REFRESH_MS)):
                part.time_dirty = True  # keep the record younger than the changelog's retention
            if part.time_dirty:
                part.time_dirty = False
                part.time_written_ms = now_ms
                changes[TIME_KEY] = _TIME.pack(part.stream_time_ms, part.watermark_ms)
            if part.index_pending or part.new_index:
                writes: dict[bytes, bytes | None] = part.index_committing
                writes.update(part.index_pending)
                # A new entry wins over a deletion of the same entry: the deletion came first
                # (closing an entry that is not in the database yet deletes nothing).
                for close_ms, keys in part.new_index.items():
                    prefix = index_key(close_ms, b"")
                    for data_key in keys:
                        writes[prefix + data_key] = b""
                    taken = part.taken_index.get(close_ms)
                    if taken is None:
                        part.taken_index[close_ms] = keys
                    else:
                        taken.update(keys)
                part.index_committing = writes
                part.index_pending = {}
                part.new_index = {}
        return changes

    def local_changes(self, partition: int) -> dict[str, dict[bytes, bytes | None]]:
        """The index changes the database gets with the commit (never the changelog)."""
        part = self.parts.get(partition)
        if not isinstance(part, WindowPartition) or not part.index_committing:
            return {}
        return {self.index_store: part.index_committing}

    def changes_stored(self, partition: int) -> None:
        part = self.parts.get(partition)
        if isinstance(part, WindowPartition):
            if part.taken_index:
                # Now in the database: closing them is the database scan's job (the live ones
                # are still open, so they close at or after scan_from_ms).
                low = min(part.taken_index)
                if low < part.stored_from_ms:
                    part.stored_from_ms = max(low, part.scan_from_ms)
                part.taken_index = {}
            part.index_committing = {}
        super().changes_stored(partition)

    def changes_failed(self, partition: int) -> None:
        part = self.parts.get(partition)
        if isinstance(part, WindowPartition):
            part.time_dirty = True
            # What the failed commit was to write goes back to pending: its deletions, and its
            # new entries (closing them again deletes nothing, as for any entry not stored).
            deletions = {ikey: None for ikey, added in part.index_committing.items() if added is None}
            deletions.update(part.index_pending)
            part.index_pending = deletions
            part.index_committing = {}
            for close_ms, keys in part.taken_index.items():
                bucket = part.new_index.get(close_ms)
                if bucket is None:
                    part.new_index[close_ms] = keys
                else:
                    keys.update(bucket)
                    part.new_index[close_ms] = keys
            part.taken_index = {}
        super().changes_failed(partition)

    def restored_changes(self, changes: dict[bytes, bytes | None]) -> dict[str, dict[bytes, bytes | None]]:
        """The index entries of replayed changelog records (written in the same restore batch)."""
        index: dict[bytes, bytes | None] = {}
        decode = self.value_codec.decode
        grace = self.spec.grace_ms
        end_at = struct.Struct(">Q").unpack_from
        for data_key, raw in changes.items():
            if raw is None or data_key == TIME_KEY:
                continue
            if data_key[:1] == KIND_WINDOW:  # the close time is in the key: no need to decode
                index[index_key(end_at(data_key, len(data_key) - 8)[0] + grace, data_key)] = b""
                continue
            for close_ms in self.close_times(data_key, decode(raw)):
                index[index_key(close_ms, data_key)] = b""
        return {self.index_store: index} if index else {}

    def close_times(self, data_key: bytes, value: Any) -> list[int]:
        """When the record under ``data_key`` has something to close (for the index)."""
        spec = self.spec
        kind, _, window = split_key(data_key)
        if kind == KIND_WINDOW and window is not None:
            return [window.end + spec.grace_ms]
        if kind == KIND_SESSIONS and isinstance(spec, Session):
            return [last + 1 + spec.gap_ms + spec.grace_ms for _, last, _ in value]
        if kind == KIND_ENTRIES and isinstance(spec, Sliding):
            times = sorted({ts for ts, _ in value})
            out = [ts + 1 + spec.grace_ms for ts in times]
            out.append(times[-1] + spec.size_ms + spec.grace_ms)
            return out
        return []

    # -- the clock ---------------------------------------------------------------------------
    def load_time(self, part: WindowPartition) -> None:
        """Read the partition's stream time and watermark back (after open or restore)."""
        if part.time_loaded:
            return
        raw = part.db.get(self.name, TIME_KEY)
        if raw is not None:
            part.stream_time_ms, part.watermark_ms = _TIME.unpack(raw)
            part.taken_time_ms = part.stream_time_ms
        elif not any(key != TIME_KEY for key, _ in islice(part.db.items(self.name), 2)):
            part.taken_time_ms = -1  # nothing stored: every window is new
        # (Windows stored without a stream time, which no commit writes: keep looking them up.)
        part.time_loaded = True
        # Everything closing at or before the stored watermark was closed in the commit that
        # stored it: index entries there are stale (a restore rebuilds entries for every record
        # it replays, including a sliding window's records whose own window is done), so they
        # are dropped, never closed a second time.
        part.scan_from_ms = max(part.watermark_ms + 1, 0)
        for ikey, _ in part.db.items(self.index_store, None, index_bound(part.scan_from_ms)):
            part.index_pending[ikey] = None
        part.stored_from_ms = part.scan_from_ms  # what restore wrote is not known: scan it
        part.next_close_ms = self._next_close(part)

    def _next_close(self, part: WindowPartition) -> int:
        times, new, taken = part.close_times, part.new_index, part.taken_index
        while times and times[0] not in new and times[0] not in taken:
            heapq.heappop(times)  # its entries closed or reached the database
        best = times[0] if times else NO_CLOSE_MS
        if part.stored_from_ms >= best:
            return best
        for ikey, _ in part.db.items(self.index_store, index_bound(part.scan_from_ms), index_bound(best)):
            if ikey in part.index_pending or part.index_committing.get(ikey, b"") is None:
                continue  # closed already; its deletion is not stored yet
            close_ms = split_index_key(ikey)[0]
            part.stored_from_ms = close_ms
            return close_ms
        part.stored_from_ms = best
        return best

    def add_close(self, part: WindowPartition, close_ms: int, data_key: bytes) -> None:
        """Index ``data_key`` to be looked at when the watermark reaches ``close_ms``."""
        bucket = part.new_index.get(close_ms)
        if bucket is None:
            bucket = part.new_index[close_ms] = {}
            if close_ms not in part.taken_index:
                heapq.heappush(part.close_times, close_ms)
        bucket[data_key] = None
        if close_ms < part.next_close_ms:
            part.next_close_ms = close_ms

    def due(self, part: WindowPartition, upto_ms: int) -> list[tuple[int, bytes]]:
        """Take every index entry closing at or before ``upto_ms``: (close time, store key),
        in close-time order (store-key order within a close time); they are deleted from the
        index with the next commit.

        ``part.born_here`` then holds the store keys whose entry was added since the last commit
        took the changes: a window among them was created since, so closing it can simply forget
        it (no tombstone for a record the changelog never got; a backfill or a catch-up, whose
        windows open and close between two commits, writes nothing of them at all)."""
        born = part.born_here
        born.clear()
        pending, committing = part.index_pending, part.index_committing
        out: list[tuple[int, bytes]] = []
        mixed = False
        times, new, taken = part.close_times, part.new_index, part.taken_index
        while times and times[0] <= upto_ms:
            close_ms = heapq.heappop(times)
            keys = new.pop(close_ms, None)
            if keys is not None:
                # Indexed since the last commit took the changes: neither the database nor the
                # changelog has heard of these entries (nor, for a window, of its data).
                born.update(keys)
                out.extend([(close_ms, data_key) for data_key in sorted(keys)])
            written = taken.pop(close_ms, None)
            if written is not None:
                # Being written by the commit under way: the next one deletes them.
                prefix = index_key(close_ms, b"")
                for data_key in written:
                    pending[prefix + data_key] = None
                    if keys is None or data_key not in keys:
                        out.append((close_ms, data_key))
                        mixed = True
        if part.scan_from_ms <= upto_ms:
            if part.stored_from_ms <= upto_ms:
                fresh = set(out)
                for ikey, _ in part.db.items(self.index_store, index_bound(part.scan_from_ms), index_bound(upto_ms + 1)):
                    if ikey in pending or committing.get(ikey, b"") is None:
                        continue  # closed already; its deletion is not stored yet
                    pending[ikey] = None
                    entry = split_index_key(ikey)
                    if entry not in fresh:
                        out.append(entry)
                        mixed = True
            part.scan_from_ms = upto_ms + 1
        if mixed:
            out.sort()
        part.next_close_ms = self._next_close(part)
        return out

    # -- reading and writing windows ---------------------------------------------------------
    def get(self, part: WindowPartition, data_key: bytes) -> Any:  # type: ignore[override]
        """The value under a store key, or :data:`~flowbus.state.table.MISSING`."""
        return Table.lookup(part, data_key, self.value_codec.decode)

    @staticmethod
    def put(part: WindowPartition, data_key: bytes, value: Any) -> None:
        part.pending[data_key] = value

    @staticmethod
    def delete(part: WindowPartition, data_key: bytes) -> None:
        part.pending[data_key] = DELETED

    # -- reading the table (flowbus tables, tests, faust-style access) -----------------------
    def windows_of(self, partition_items: Iterator[tuple[bytes, Any]]) -> Iterator[tuple[Any, WindowRange, Any]]:
        """(key, window, aggregate) of the open windows among store items."""
        decode_key = self.key_codec.decode
        spec = self.spec
        for data_key, value in partition_items:
            kind, key_bytes, window = split_key(data_key)
            if kind == KIND_WINDOW and window is not None:
                yield decode_key(key_bytes), window, value
            elif kind == KIND_SESSIONS:
                for start, last, acc in value:
                    yield decode_key(key_bytes), WindowRange(start, last + 1), acc
            elif kind == KIND_ENTRIES and isinstance(spec, Sliding):
                continue

    def items(self) -> Iterator[tuple[Any, Any]]:  # type: ignore[override]
        """((key, (start, end)), aggregate) of every open window this worker holds."""
        for partition in sorted(self.parts):
            part = self.parts[partition]
            if part.ready:
                for key, window, value in self.windows_of(self._partition_items(part)):
                    yield (key, (window.start, window.end)), value


class WindowClock:
    """Event time and closing of one window store on a running worker.

    :meth:`observe` moves a partition's stream time (and watermark) with each event time and
    closes what the watermark passed; :meth:`arm` schedules the idle close: once the partition
    saw nothing for ``idle_ms`` and its sources are caught up, the watermark moves on with the
    wall clock, so the last window of a quiet stream closes with no further record (never while
    restoring or behind: the worker's ``idle_check`` says whether the sources are caught up).

    Args:
        table: the window store.
        close: ``close(part, close_ms, data_key)`` for each due close-index entry, in close-time
            order; it looks the key up and closes what is due (an entry may find nothing).
        idle_ms: idle time before the wall clock moves the watermark; ``None``: event time only.
        close_run: optionally, ``close_run(part, close_ms, entries)`` closing at once every due
            entry of one close time (``entries``: its ``(close_ms, data_key)`` pairs, in store-key
            order), in place of ``close`` for each: what windows closing together share (their
            span) is then worked out once, not per window.

    Example (what a store's owner does):
        >>> clock = WindowClock(table, close_one, idle_ms=5_000)       # doctest: +SKIP
        >>> clock.start(worker, lambda p: [TopicPartition("events", p)])  # doctest: +SKIP
        >>> clock.observe(part, event_time_ms, worker.clock.monotonic_ms())  # doctest: +SKIP
    """

    def __init__(
        self,
        table: WindowedTable,
        close: Callable[[WindowPartition, int, bytes], None],
        *,
        idle_ms: int | None,
        close_run: Callable[[WindowPartition, int, Iterable[tuple[int, bytes]]], None] | None = None,
    ) -> None:
        self.table = table
        self.close = close
        self.close_run = close_run
        self.idle_ms = idle_ms
        self.runtime: Runtime | None = None
        self.sources: Callable[[int], list[TopicPartition]] = lambda partition: []
        """The source partitions of a table partition, which must be caught up for the idle close."""

    def start(self, runtime: Runtime, sources: Callable[[int], list[TopicPartition]]) -> None:
        """Run on ``runtime`` (the worker): commits soon after closing, and arms the idle close of
        every partition once it is restored."""
        self.runtime = runtime
        self.sources = sources
        self.table.on_ready = self.on_ready
        self.table.wall_clock = runtime.clock

    def observe(self, part: WindowPartition, t: int, seen_ms: int) -> None:
        """An event at event time ``t`` (ms) was seen at monotonic ``seen_ms``."""
        part.seen_ms = seen_ms
        if t > part.stream_time_ms:
            part.stream_time_ms = t
            part.time_dirty = True
            if t > part.watermark_ms:
                part.watermark_ms = t
                if t >= part.next_close_ms:
                    self.close_due(part)

    def close_due(self, part: WindowPartition) -> None:
        """Close everything the partition's watermark passed, then commit soon (so the closed
        windows' results and tombstones are readable without waiting for the interval)."""
        due = self.table.due(part, part.watermark_ms)
        if not due:
            return
        table = self.table
        wall = table.wall_clock
        now_ms = wall.now_ms() if wall is not None else None  # one clock read per closing round
        observe_many = table.close_latency.observe_many
        close_run = self.close_run if self.close_run is not None else self._close_each
        # The latency histogram gets one observation per close time, not per window: due is in
        # close-time order, and windows of one size closing together share their close time.
        for close_ms, entries in groupby(due, _CLOSE_TIME):
            closed_before = table.closed_windows
            close_run(part, close_ms, entries)
            if now_ms is not None and table.closed_windows != closed_before:
                observe_many(max(now_ms - close_ms, 0) / 1000, table.closed_windows - closed_before)
        if self.runtime is not None:
            self.runtime.commit_soon(CLOSE_COMMIT_DELAY_MS)

    def _close_each(self, part: WindowPartition, close_ms: int, entries: Iterable[tuple[int, bytes]]) -> None:
        close = self.close
        for _, data_key in entries:
            close(part, close_ms, data_key)

    def arm(self, part: WindowPartition) -> None:
        """Schedule the idle close of a partition with something to close: one check at a time,
        brought forward when stream time moved closer to the next close (after a restart, or a
        backlog whose event time runs ahead of the wall clock); cheap to call per event."""
        runtime, idle_ms = self.runtime, self.idle_ms
        if runtime is None or idle_ms is None or part.next_close_ms >= NO_CLOSE_MS:
            return
        due_at = part.seen_ms + max(idle_ms, part.next_close_ms - max(part.stream_time_ms, 0))
        if part.idle_armed and part.idle_due_ms <= due_at:
            # The armed check comes first; it re-arms from what it finds. Noting the stream time
            # looked at keeps a backlog (stream time racing ahead) from calling this per record.
            part.armed_stream_ms = part.stream_time_ms
            return
        tps = self.sources(part.partition)
        if not tps:
            return
        part.idle_armed = True
        part.idle_due_ms = due_at
        part.armed_stream_ms = part.stream_time_ms
        now = runtime.clock.monotonic_ms()
        clock = runtime.clock

        def idle() -> bool:
            return clock.monotonic_ms() - part.seen_ms >= idle_ms  # type: ignore[operator]

        runtime.idle_check(max(due_at - now, 1), tps, self._on_idle(part, tps[0].topic, due_at), idle)

    def _on_idle(self, part: WindowPartition, topic: str, due_at: int) -> Callable[[bool], None]:
        def check(caught_up: bool) -> None:
            if part.idle_due_ms != due_at:
                return  # superseded by a check armed for earlier
            part.idle_armed = False
            runtime, idle_ms = self.runtime, self.idle_ms
            if self.table.parts.get(part.partition) is not part or not part.ready or runtime is None or idle_ms is None:
                return
            now = runtime.clock.monotonic_ms()
            idle_for = now - part.seen_ms
            if idle_for >= idle_ms and caught_up:
                target = max(part.stream_time_ms, 0) + idle_for
                if target > part.watermark_ms:
                    part.watermark_ms = target
                    part.time_dirty = True
                    if target >= part.next_close_ms:
                        # What closing emits or writes belongs to this partition.
                        token = current_source.set(TopicPartition(topic, part.partition))
                        try:
                            self.close_due(part)
                        finally:
                            current_source.reset(token)
            elif idle_for >= idle_ms:
                part.seen_ms = now  # not caught up: look again after another idle period
            self.arm(part)

        return check

    def on_ready(self, partition: int) -> None:
        """A partition is restored: idle from now on, and armed if it has windows to close."""
        part = self.table.parts.get(partition)
        if isinstance(part, WindowPartition) and self.runtime is not None:
            part.seen_ms = self.runtime.clock.monotonic_ms()
            self.arm(part)


def window_spec(kind: str, **kwargs: int) -> WindowSpec:
    """A spec by kind name (``tumbling``, ``hopping``, ``sliding``, ``session``)."""
    kinds: dict[str, type[WindowSpec]] = {"tumbling": Tumbling, "hopping": Hopping, "sliding": Sliding, "session": Session}
    return kinds[kind](**kwargs)


__all__ = ["MISSING", "NO_CLOSE_MS", "WindowClock", "WindowPartition", "WindowedTable", "window_spec"]
