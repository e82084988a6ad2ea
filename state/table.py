"""Tables, faust style: a dict-like view of a keyed store, partitioned like the stream updating it.

A :class:`Table` is used from agents (``table[word] += 1``) and from the stateful dataflow steps
(:mod:`flowbus.operators.stateful`). Every partition of a table lives in that partition's database
(:mod:`flowbus.state.base`), and every change reaches the table's changelog topic
``<app>-<table>-changelog`` at the next commit, so a worker that takes the partition over (or
restarts) rebuilds it from there.

Writes are buffered per partition as Python objects (``pending``) and encoded once per commit;
reads see their own writes. While a commit is in flight the changes it carries move to a second
layer (``committing``), still visible to reads, until the database holds them.

Partitioning: a key belongs to partition ``murmur2(key bytes) % partitions`` (Kafka's default
partitioner, as every flowbus transport uses). A write made while processing an event of
``topic[p]`` must be for a key of partition ``p``: otherwise the table and the stream disagree on
where the key lives and the write would land in a changelog partition some other worker owns.
That is an error naming the key, the partitions and the fix, never a silent write.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from flowbus.app_errors import ConfigurationError
from flowbus.context import current_source
from flowbus.serializers import Codec, Serializer
from flowbus.state.changelog import CHANGELOG_CONFIG
from flowbus.state.errors import PartitionNotOwnedError, ReadOnlyTableError
from flowbus.state.windows import Hopping, Tumbling, as_ms
from flowbus.transports.partitioner import partition_for_key

if TYPE_CHECKING:
    from flowbus.app import App
    from flowbus.operators.steps import Runtime
    from flowbus.state.base import PartitionDatabase
    from flowbus.state.window_tables import WindowWrapper

KEY_CACHE_KEYS_MAX = 100_000
"""Keys whose encoding and partition (a pure-Python murmur2) are remembered, so ``table[k] += 1``
on a hot key costs one dict lookup; the cache is emptied when full."""


_CACHED_KEY_TYPES = frozenset({str, bytes, int})


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<missing>"


MISSING: Any = _Missing()
DELETED: Any = object()
"""Marks a key deleted in a write layer (a tombstone in the changelog)."""


READ_CACHE_KEYS_MAX = 20_000
"""Committed values kept decoded per table partition, so a hot key is not read back from RocksDB
and decoded after every commit; the cache is emptied when full."""
_CACHED_VALUE_TYPES = frozenset({int, float, str, bytes, bool})
"""Only immutable values are cached: a list or dict changed in place (without being assigned
back) must not look stored when it is not."""


class TablePartition:
    """One partition of a table on this worker: its database, the two write layers, and a small
    cache of committed values (``None`` for a partition that changes behind its back: a global
    table's, which its changelog reader writes directly)."""

    __slots__ = ("cache", "committing", "db", "partition", "pending", "ready", "store")

    def __init__(self, partition: int, db: PartitionDatabase, store: str, *, cached: bool = True) -> None:
        self.partition = partition
        self.db = db
        self.store = store
        self.pending: dict[bytes, Any] = {}
        self.committing: dict[bytes, Any] = {}
        self.cache: dict[bytes, Any] | None = {} if cached else None
        self.ready = False
        """False while the partition is restored from the changelog (reads and writes refused)."""


class Table:
    """A keyed, partitioned, durable dict; made by :meth:`flowbus.App.Table`.

    Args:
        name: the store name; the changelog topic is ``<app id>-<name>-changelog``.
        default: a callable giving the value of a missing key (``int``, ``list``); without it a
            missing key raises ``KeyError``.
        key_type, value_type: declared types (dataclasses are checked on decode, as for topics).
        partitions: defaults to the partition count of the app's source topics.
        key_serializer: ``raw`` for ``str``/``bytes`` keys, ``json`` otherwise (as topics).
        value_serializer: ``json`` by default.
        on_window_close: ``fn(key, value)`` called once per closed window of a windowed table
            (:meth:`tumbling`, :meth:`hopping`); an error for a table without windows.

    Values are stored as written: mutating a value in place (``table[k].append(x)``) is not
    seen; assign it back (``table[k] = table[k] + [x]``).
    """

    read_only = False
    global_table = False
    hidden_keys: frozenset[bytes] = frozenset()
    """Store keys that are bookkeeping, not entries (a window store's clock)."""

    def __init__(
        self,
        app: App,
        name: str,
        *,
        default: Callable[[], Any] | None = None,
        key_type: Any = None,
        value_type: Any = None,
        partitions: int | None = None,
        key_serializer: str | Serializer | None = None,
        value_serializer: str | Serializer = "json",
        on_window_close: Callable[[Any, Any], None] | None = None,
    ) -> None:
        self.app = app
        self.name = name
        self.default = default
        self.on_window_close = on_window_close
        self.key_type = key_type
        self.value_type = value_type
        self.declared_partitions = partitions
        self.partitions = partitions or 0
        """Resolved when the worker starts (the source topics' count when not declared)."""
        if key_serializer is None:
            key_serializer = "raw" if key_type in (bytes, str) else "json"
        self.key_codec = Codec(key_serializer, key_type)
        self.value_codec = Codec(value_serializer, value_type)
        self.changelog_topic = f"{app.id}-{name}-changelog"
        self.source_topic: str | None = None
        """Set for a dataflow step's table: the topic it is partitioned like."""
        self.parts: dict[int, TablePartition] = {}
        self._key_cache: dict[Any, tuple[bytes, int]] = {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} partitions={self.partitions or '?'}>"

    # -- where keys live --------------------------------------------------------------------
    def encode_key(self, key: Any) -> bytes:
        data = self.key_codec.encode(key)
        if data is None:
            raise KeyError(f"table {self.name!r}: a key cannot be None")
        return data

    def partition_of(self, key_bytes: bytes) -> int:
        """The partition a key belongs to (Kafka's murmur2 partitioner)."""
        if not self.partitions:
            raise PartitionNotOwnedError(
                f"table {self.name!r} is not open: it is used from a running worker (its agents, "
                f"dataflows and timers), which resolves its partitions and restores it"
            )
        return partition_for_key(key_bytes, self.partitions)

    def locate(self, key: Any) -> tuple[bytes, int]:
        """(encoded key, partition), remembered for ``str``, ``bytes`` and ``int`` keys (only those:
        ``1 == 1.0 == True`` as dict keys, but they encode differently)."""
        if type(key) not in _CACHED_KEY_TYPES:
            key_bytes = self.encode_key(key)
            return key_bytes, self.partition_of(key_bytes)
        found = self._key_cache.get(key)
        if found is None:
            key_bytes = self.encode_key(key)
            found = (key_bytes, self.partition_of(key_bytes))
            if len(self._key_cache) >= KEY_CACHE_KEYS_MAX:
                self._key_cache.clear()
            self._key_cache[key] = found
        return found

    def _part_for_read(self, key: Any, partition: int) -> TablePartition:
        part = self.parts.get(partition)
        if part is None or not part.ready:
            raise PartitionNotOwnedError(self._not_owned(key, partition, part is not None))
        return part

    def _check_writable(self) -> None:
        if self.read_only:
            raise ReadOnlyTableError(
                f"global table {self.name!r} is read-only: it changes only through its changelog "
                f"topic {self.changelog_topic!r} (send to that topic to update it)"
            )

    def _part_for_write(self, key: Any, partition: int) -> TablePartition:
        source = current_source.get()
        if source is not None and source.partition != partition:
            raise PartitionNotOwnedError(
                f"table {self.name!r}: key {key!r} belongs to partition {partition} of {self.partitions}, "
                f"but the event being processed came from {source.topic}[{source.partition}]; a table is "
                f"partitioned like the stream that updates it: re-key the stream by the table's key "
                f"(group_by) or co-partition the topic with the table (same key, {self.partitions} partitions)"
            )
        part = self.parts.get(partition)
        if part is None or not part.ready:
            raise PartitionNotOwnedError(self._not_owned(key, partition, part is not None))
        return part

    def _not_owned(self, key: Any, partition: int, restoring: bool) -> str:
        if restoring:
            return f"table {self.name!r}: partition {partition} (key {key!r}) is still being restored from {self.changelog_topic!r}"
        owned = sorted(p for p, part in self.parts.items() if part.ready)
        return (
            f"table {self.name!r}: key {key!r} belongs to partition {partition}, which this worker does not own "
            f"(it owns {owned}); update a table only from a stream co-partitioned with it "
            f"(group_by the table's key), or read it where that partition is processed"
        )

    # -- reading and writing one partition (the dataflow steps call these directly) -----------
    @staticmethod
    def lookup(part: TablePartition, key_bytes: bytes, decode: Callable[[bytes | None], Any]) -> Any:
        """The value of a key in a partition, or :data:`MISSING`."""
        value = part.pending.get(key_bytes, MISSING)
        if value is MISSING:
            value = part.committing.get(key_bytes, MISSING)
            if value is MISSING:
                cache = part.cache
                if cache is not None:
                    value = cache.get(key_bytes, MISSING)
                    if value is not MISSING:
                        return value
                raw = part.db.get(part.store, key_bytes)
                if raw is None:
                    return MISSING
                value = decode(raw)
                if cache is not None and type(value) in _CACHED_VALUE_TYPES:
                    if len(cache) >= READ_CACHE_KEYS_MAX:
                        cache.clear()
                    cache[key_bytes] = value
                return value
        return MISSING if value is DELETED else value

    # -- the mapping API --------------------------------------------------------------------
    def __getitem__(self, key: Any) -> Any:
        key_bytes, partition = self.locate(key)
        value = self.lookup(self._part_for_read(key, partition), key_bytes, self.value_codec.decode)
        if value is MISSING:
            if self.default is None:
                raise KeyError(key)
            return self.default()
        return value

    def get(self, key: Any, default: Any = None) -> Any:
        key_bytes, partition = self.locate(key)
        value = self.lookup(self._part_for_read(key, partition), key_bytes, self.value_codec.decode)
        return default if value is MISSING else value

    def __contains__(self, key: Any) -> bool:
        key_bytes, partition = self.locate(key)
        return self.lookup(self._part_for_read(key, partition), key_bytes, self.value_codec.decode) is not MISSING

    def __setitem__(self, key: Any, value: Any) -> None:
        if value is None:
            raise ValueError(f"table {self.name!r}: None is not a value (it would be a tombstone); use del")
        self._check_writable()
        key_bytes, partition = self.locate(key)
        self._part_for_write(key, partition).pending[key_bytes] = value

    def __delitem__(self, key: Any) -> None:
        self._check_writable()
        key_bytes, partition = self.locate(key)
        part = self._part_for_write(key, partition)
        if self.lookup(part, key_bytes, self.value_codec.decode) is MISSING:
            raise KeyError(key)
        part.pending[key_bytes] = DELETED

    def pop(self, key: Any, *default: Any) -> Any:
        try:
            value = self[key] if self.default is None else self.get(key, MISSING)
            if value is MISSING:
                raise KeyError(key)
        except KeyError:
            if default:
                return default[0]
            raise
        del self[key]
        return value

    def _partition_items(self, part: TablePartition) -> Iterator[tuple[bytes, Any]]:
        """(key bytes, value) of one partition in key byte order, write layers included."""
        decode = self.value_codec.decode
        hidden = self.hidden_keys
        if not part.pending and not part.committing:
            for key_bytes, raw in part.db.items(part.store):
                if key_bytes not in hidden:
                    yield key_bytes, decode(raw)
            return
        overlay = {**part.committing, **part.pending}
        for key_bytes in hidden:
            overlay.pop(key_bytes, None)
        merged: dict[bytes, Any] = {k: MISSING for k in overlay}
        for key_bytes, raw in part.db.items(part.store):
            if key_bytes not in overlay and key_bytes not in hidden:
                merged[key_bytes] = decode(raw)
        for key_bytes, value in overlay.items():
            merged[key_bytes] = value
        for key_bytes in sorted(merged):
            value = merged[key_bytes]
            if value is not DELETED and value is not MISSING:
                yield key_bytes, value

    def items(self) -> Iterator[tuple[Any, Any]]:
        """(key, value) of every partition this worker owns, partition by partition."""
        decode_key = self.key_codec.decode
        for partition in sorted(self.parts):
            part = self.parts[partition]
            if part.ready:
                for key_bytes, value in self._partition_items(part):
                    yield decode_key(key_bytes), value

    def keys(self) -> Iterator[Any]:
        return (k for k, _ in self.items())

    def values(self) -> Iterator[Any]:
        return (v for _, v in self.items())

    def __iter__(self) -> Iterator[Any]:
        return self.keys()

    def __len__(self) -> int:
        return sum(1 for _ in self.items())

    def owned_partitions(self) -> list[int]:
        """Partitions of this table held and restored on this worker."""
        return sorted(p for p, part in self.parts.items() if part.ready)

    # -- windows, faust style (flowbus.state.window_tables) -------------------------------------
    def tumbling(self, size: float | timedelta, expires: float | timedelta | None = None) -> WindowWrapper:
        """This table in back-to-back windows of ``size`` seconds (faust's ``Table.tumbling``).

        ``expires`` (seconds): how long after its end a window still takes updates (its grace
        period); then it closes: ``on_window_close`` runs and it is deleted. Windows follow event
        time (:meth:`~flowbus.state.window_tables.WindowWrapper.relative_to_stream`) unless told
        otherwise. Call it on a fresh declaration: the windowed table replaces this one in the app.

        Example:
            >>> counts = app.Table("views", default=int).tumbling(10.0, expires=5.0)  # doctest: +SKIP
        """
        from flowbus.state.window_tables import windowed  # it builds on this module

        return windowed(self, Tumbling(
            grace_ms=as_ms(expires or 0, "expires", seconds=True), size_ms=as_ms(size, "size", seconds=True, minimum=1),
        ))

    def hopping(
        self, size: float | timedelta, step: float | timedelta, expires: float | timedelta | None = None
    ) -> WindowWrapper:
        """This table in windows of ``size`` seconds starting every ``step`` seconds (faust's
        ``Table.hopping``): an update goes to every window containing its time; see :meth:`tumbling`."""
        from flowbus.state.window_tables import windowed  # it builds on this module

        return windowed(self, Hopping(
            grace_ms=as_ms(expires or 0, "expires", seconds=True), size_ms=as_ms(size, "size", seconds=True, minimum=1),
            step_ms=as_ms(step, "step", seconds=True, minimum=1),
        ))

    # -- what the worker and the state manager ask (window stores add to these) ---------------
    def attach(self, runtime: Runtime) -> None:
        """The worker starts with ``runtime`` (itself): a table that needs timers takes it here.

        Raises:
            ConfigurationError: ``on_window_close`` was given to a table without windows.
        """
        if self.on_window_close is not None:
            raise ConfigurationError(
                f"table {self.name!r} has on_window_close but no windows: declare it with "
                f".tumbling(size) or .hopping(size, step) (windows close, a plain table's keys do not)"
            )

    def store_names(self) -> list[str]:
        """The stores this table keeps in its partition databases."""
        return [self.name]

    def make_partition(self, partition: int, db: PartitionDatabase) -> TablePartition:
        return TablePartition(partition, db, self.name, cached=not self.global_table)

    def changelog_config(self) -> dict[str, str]:
        return dict(CHANGELOG_CONFIG)

    def partition_ready(self, partition: int) -> None:
        """A partition finished restoring (reads and writes are allowed from now on)."""

    def local_changes(self, partition: int) -> dict[str, dict[bytes, bytes | None]]:
        """Changes of other stores that the database gets with this table's commit but the
        changelog does not (derived data, such as a window store's close index)."""
        return {}

    def restored_changes(self, changes: dict[bytes, bytes | None]) -> dict[str, dict[bytes, bytes | None]]:
        """Derived changes to write with a batch of replayed changelog records."""
        return {}

    # -- commits (the state manager calls these) ---------------------------------------------
    def take_changes(self, partition: int) -> dict[bytes, bytes | None]:
        """Move a partition's pending writes into the committing layer and return them encoded
        (``None`` for a deletion): exactly what the changelog and the database get."""
        part = self.parts.get(partition)
        if part is None or not part.pending:
            return {}
        pending, part.pending = part.pending, {}
        if part.committing:
            part.committing.update(pending)
        else:
            part.committing = pending
        encode = self.value_codec.encode
        # Copied to an exact-size object: orjson 3.13 returns small results inside a ~4 KiB
        # allocation, so keeping 100,000 of them until the commit ends would cost 400 MiB.
        return {k: None if v is DELETED else bytes(memoryview(encode(v))) for k, v in pending.items()}

    def changes_stored(self, partition: int) -> None:
        """The committing layer is in the database now."""
        part = self.parts.get(partition)
        if part is None:
            return
        cache = part.cache
        if cache is not None:
            if len(cache) + len(part.committing) > READ_CACHE_KEYS_MAX:
                cache.clear()
            for key_bytes, value in part.committing.items():
                if type(value) in _CACHED_VALUE_TYPES:
                    cache[key_bytes] = value
                else:
                    cache.pop(key_bytes, None)
        part.committing = {}

    def changes_failed(self, partition: int) -> None:
        """A commit failed: its changes go back under the newer pending writes, to be retried."""
        part = self.parts.get(partition)
        if part is not None and part.committing:
            part.committing.update(part.pending)
            part.pending, part.committing = part.committing, {}


class GlobalTable(Table):
    """Every partition on every worker, kept up to date from the changelog; read-only for agents.

    Its changelog topic is the way in: send ``(key, value)`` records to ``changelog_topic`` (any
    Kafka client can) and every worker applies them. Reads find the key's partition like a table.
    """

    read_only = True
    global_table = True
