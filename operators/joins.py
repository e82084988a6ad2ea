"""Joins in the declarative form: stream–table, stream–stream within a time window, table–table,
and lookups in a global table (Kafka Streams' KStream/KTable joins, Quix Streams' ``join_*``).

* **Stream–table** (``stream.join(table)``): each record of the stream is joined with the latest
  value of its key in the table at the moment it is processed; table updates emit nothing.
  ``stream.to_table(name)`` materializes a topic as such a table (latest value per key, a
  ``None`` value deletes the key); an ``app.Table`` updated by an agent works too.
* **Stream–stream** (``left.join_window(right, within_ms=...)``): records of both sides with the
  same key and event times at most ``within_ms`` apart are paired, as soon as both are there.
  With ``how="left"``/``"outer"`` a record that never found a partner is emitted with ``None`` for
  the other side once its join window has closed (the watermark passed ``t + within + grace``),
  never before: Kafka Streams' behaviour since KIP-633, not the spurious early results it had.
* **Table–table** (``left_table.join(right_table)``, both made by ``to_table``): on every update
  of either side, ``joiner(left latest, right latest)`` for the key, or a ``None`` value (a
  tombstone) when an update makes the result disappear (KTable–KTable join semantics).
* **Global lookups** (``stream.join_global(global_table, key=fn)``): enrichment from a table every
  worker holds in full, so the inputs need not be co-partitioned.

Every join except the global one reads its two inputs partition by partition: they must be
co-partitioned (same key, same partition count), which the worker checks at start
(:class:`NotCoPartitionedError`). Join state lives in tables committed with the input offsets
(in one transaction under exactly-once), like every other dataflow state.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from flowbus.app_errors import ConfigurationError
from flowbus.context import current_source
from flowbus.operators.stateful import NoKeyError, _partition_getter
from flowbus.operators.steps import Emit, Runtime, Step
from flowbus.operators.windowed import late_records
from flowbus.serializers import Codec
from flowbus.state.errors import PartitionNotOwnedError
from flowbus.state.table import DELETED, MISSING, Table
from flowbus.state.windowed import WindowClock, WindowedTable, WindowPartition
from flowbus.state.windows import WindowSpec, key_prefix, split_key
from flowbus.transports.base import Record, TopicPartition

if TYPE_CHECKING:
    from flowbus.app import App
    from flowbus.operators.dataflow import Dataflow
    from flowbus.topic import Topic

log = logging.getLogger("flowbus.joins")

Joiner = Callable[[Any, Any], Any]
"""``joiner(left, right)``: the joined value; a missing side is ``None``."""

HOW_STREAM_TABLE = ("inner", "left")
HOW_STREAM_STREAM = ("inner", "left", "outer")
HOW_TABLE_TABLE = ("inner", "left", "outer")

KIND_LEFT = b"L"
KIND_RIGHT = b"R"
"""Store key kinds of a stream–stream join's buffers: ``kind ‖ u32 len ‖ key`` -> the side's
records of that key still inside their join window, ``[[t, value, matched], ...]`` in arrival
order (the kinds of :mod:`flowbus.state.windows` are W, S and E)."""

class NotCoPartitionedError(ConfigurationError):
    """The two inputs of a join have different partition counts: the records of one key would be
    read on different partitions, possibly by different workers, and never meet."""


class JoinConflictError(ValueError):
    """The default joiner found a field in both values with different contents."""


# -- the default joiner ------------------------------------------------------------------------
_ABSENT: Any = object()


def merge(left: Any, right: Any) -> Any:
    """The default joiner: one dict with the fields of both sides.

    Both values are dicts (or ``None`` for a missing side): the result has every field of both;
    a field in both must have equal contents there, otherwise :class:`JoinConflictError` (which
    goes to the app's error policy) says which field: pass ``joiner=`` to decide, e.g.
    ``joiner=lambda order, customer: {**order, "customer": customer}``. Anything else (a
    number, a list, a dataclass) gives the pair ``(left, right)``, written as a JSON list.

    Example:
        >>> merge({"id": 1, "total": 5}, {"id": 1, "name": "Ada"})
        {'id': 1, 'total': 5, 'name': 'Ada'}
        >>> merge({"id": 1}, None)
        {'id': 1}
        >>> merge(3, "x")
        (3, 'x')
    """
    if (left is None or isinstance(left, Mapping)) and (right is None or isinstance(right, Mapping)):
        if left is None:
            return None if right is None else dict(right)
        merged = dict(left)
        if right is None:
            return merged
        for field, value in right.items():
            mine = merged.get(field, _ABSENT)
            if mine is _ABSENT:
                merged[field] = value
            elif mine != value:
                raise JoinConflictError(
                    f"the default joiner found field {field!r} on both sides with different values "
                    f"({mine!r} and {value!r}); pass joiner=fn(left, right) to combine them"
                )
        return merged
    return (left, right)


def check_how(how: str, allowed: tuple[str, ...], what: str) -> None:
    """Refuse a ``how`` this kind of join does not have (``ValueError`` naming the valid ones)."""
    if how not in allowed:
        raise ValueError(f"{what}: how={how!r} is not one of {', '.join(map(repr, allowed))}")


def _plain(value: Any) -> Any:
    """A dataclass as its dict (stream–stream joins buffer values with msgpack, and hand both
    sides to the joiner in the form they come back from the store); anything else unchanged."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


# -- co-partitioning, checked at start ----------------------------------------------------------
PartitionCheck = Callable[[Mapping[str, int]], None]

_FIX = (
    "the inputs of a join must be co-partitioned (same key, same partition count) so that the records "
    "of a key meet on one partition of one worker. Repartition one side to {n} partitions "
    "(.group_by(key_fn, name=..., partitions={n}) or .through(app.topic(name, partitions={n}))) or recreate "
    "the topic with {n} partitions; to enrich from a table that cannot be co-partitioned, use an "
    "app.GlobalTable and join_global"
)


def add_partition_check(table: Table, check: PartitionCheck) -> None:
    """Have the state manager run ``check(partition counts of the source topics)`` at start, once
    every table's partition count is resolved (it reads ``table.partition_checks``)."""
    checks: list[PartitionCheck] = vars(table).setdefault("partition_checks", [])
    checks.append(check)


def topics_check(what: str, left_topic: str, right_topic: str) -> PartitionCheck:
    """Both topics have the same partition count."""

    def check(counts: Mapping[str, int]) -> None:
        left, right = counts.get(left_topic), counts.get(right_topic)
        if left is None or right is None or left == right:
            return
        raise NotCoPartitionedError(
            f"{what}: topic {left_topic!r} has {left} partitions but topic {right_topic!r} has {right}; "
            + _FIX.format(n=max(left, right))
        )

    return check


def check_same_keys(what: str, left: tuple[str, Codec], right: tuple[str, Codec]) -> None:
    """Both inputs write keys with the same serializer: otherwise one key is two byte strings,
    partitioned apart, and never matches (``group_by`` writes JSON keys; a ``str`` topic, raw).

    Raises:
        NotCoPartitionedError: the serializers differ (at declaration, not at the first record).
    """
    (left_name, left_codec), (right_name, right_codec) = left, right
    if left_codec.serializer.name != right_codec.serializer.name:
        raise NotCoPartitionedError(
            f"{what}: {left_name} writes keys with the {left_codec.serializer.name!r} serializer and "
            f"{right_name} with {right_codec.serializer.name!r}, so one key is two different byte strings "
            f"on two partitions and never matches; declare both with the same key_type or key_serializer "
            f"(group_by and app.topic(...) without key_type write JSON keys, key_type=str writes raw UTF-8)"
        )


def table_check(what: str, stream_topic: str, table: Table) -> PartitionCheck:
    """The stream's topic has as many partitions as the table."""

    def check(counts: Mapping[str, int]) -> None:
        stream, partitions = counts.get(stream_topic), table.partitions
        if stream is None or not partitions or stream == partitions:
            return
        if table.source_topic is not None:
            where = f"topic {table.source_topic!r} (which table {table.name!r} is made from) has {partitions}"
        else:
            where = (
                f"table {table.name!r} has {partitions} (declared, or the count of the topics its agents read)"
            )
        raise NotCoPartitionedError(
            f"{what}: topic {stream_topic!r} has {stream} partitions but {where}; " + _FIX.format(n=partitions)
        )

    return check


# -- tables made from a dataflow (to_table) ----------------------------------------------------
class Change(NamedTuple):
    """What a ``to_table`` node passes to the table–table joins below it: the key's value before
    and after the record (:data:`~flowbus.state.table.MISSING` when absent or deleted)."""

    old: Any
    new: Any


class MaterializedTable(Table):
    """A table kept up to date by a dataflow (``stream.to_table(name)``): the latest value of each
    key, a ``None`` value deleting the key (Kafka Streams' KTable). Read it like any table, join a
    stream with it (``stream.join(table)``), or join it with another such table (:meth:`join`)."""

    def __init__(self, app: App, name: str, **kwargs: Any) -> None:
        super().__init__(app, name, **kwargs)
        self.node: Dataflow | None = None
        """The dataflow node that writes the table (set by ``to_table``; its updates drive
        table–table joins)."""
        self.changes_wanted = False

    def join(self, other: Table, *, joiner: Joiner | None = None, how: str = "inner") -> Dataflow:
        """A table–table join: on every update of either table, ``joiner(left, right)`` with the
        latest value of the key on each side (``None`` where absent), passed on keyed by the key;
        ``how``: ``inner`` (both present), ``left`` (this one present) or ``outer`` (either).
        When an update makes the result disappear (a side deleted) a ``None`` value is passed on,
        a tombstone for ``to_table`` and for compacted topics. Kafka Streams: ``KTable.join``,
        ``leftJoin``, ``outerJoin``.
        """
        check_how(how, HOW_TABLE_TABLE, f"join of tables {self.name!r} and {getattr(other, 'name', other)!r}")
        if not isinstance(other, MaterializedTable):
            raise TypeError(
                f"a table-table join needs both tables made by to_table (their updates drive the join); "
                f"{other!r} is not: to join a stream with it, use stream.join(table)"
            )
        if other.app is not self.app:
            raise ValueError("both tables of a join must belong to the same app")
        assert self.node is not None and other.node is not None, "set by to_table"
        what = f"{how} join of tables {self.name!r} and {other.name!r}"
        check_same_keys(what, (f"table {self.name!r}", self.key_codec), (f"table {other.name!r}", other.key_codec))
        self.changes_wanted = other.changes_wanted = True
        step = TableTableJoinStep(self, other, joiner or merge, how)
        node = type(self.node)(self.app, None, step)
        self.node.children.append(node)
        other.node.children.append(node)
        assert self.source_topic is not None and other.source_topic is not None
        add_partition_check(self, topics_check(what, self.source_topic, other.source_topic))
        return node


class ToTableStep(Step):
    """Writes each record's value under its key (``None`` deletes it); passes a :class:`Change`
    on only when a table–table join reads the updates."""

    def __init__(self, table: MaterializedTable) -> None:
        self.name = f"to_table {table.name!r}"
        self.table = table

    def compile(self, nxt: Emit, runtime: Runtime) -> Emit:
        table = self.table
        locate = _partition_getter(table, self.name)
        if not table.changes_wanted:
            def to_table_step(key: Any, value: Any) -> None:
                part, key_bytes = locate(key)
                part.pending[key_bytes] = DELETED if value is None else value

            return to_table_step
        decode = table.value_codec.decode
        lookup = Table.lookup

        def to_table_and_pass(key: Any, value: Any) -> None:
            part, key_bytes = locate(key)
            old = lookup(part, key_bytes, decode)
            part.pending[key_bytes] = DELETED if value is None else value
            nxt(key, Change(old, MISSING if value is None else value))

        return to_table_and_pass


# -- one-input joins ---------------------------------------------------------------------------
class StreamTableJoinStep(Step):
    """Joins each record with the latest value of its key in a co-partitioned table."""

    def __init__(self, table: Table, joiner: Joiner, how: str) -> None:
        self.name = f"{how} join with table {table.name!r}"
        self.table = table
        self.joiner = joiner
        self.how = how

    def compile(self, nxt: Emit, runtime: Runtime) -> Emit:
        table, joiner, inner = self.table, self.joiner, self.how == "inner"
        locate = _partition_getter(table, self.name)
        decode = table.value_codec.decode
        lookup = Table.lookup

        def stream_table_join(key: Any, value: Any) -> None:
            part, key_bytes = locate(key)
            found = lookup(part, key_bytes, decode)
            if found is MISSING:
                if inner:
                    return
                found = None
            nxt(key, joiner(value, found))

        return stream_table_join


class GlobalJoinStep(Step):
    """Joins each record with the value of ``key(value)`` (the record key by default) in a global
    table, whose every partition this worker holds."""

    def __init__(self, table: Table, key: Callable[[Any], Any] | None, joiner: Joiner, how: str) -> None:
        self.name = f"{how} join with global table {table.name!r}"
        self.table = table
        self.key = key
        self.joiner = joiner
        self.how = how

    def compile(self, nxt: Emit, runtime: Runtime) -> Emit:
        table, key_fn, joiner, inner = self.table, self.key, self.joiner, self.how == "inner"
        parts, locate = table.parts, table.locate
        decode = table.value_codec.decode
        lookup = Table.lookup
        name = self.name

        def global_join(key: Any, value: Any) -> None:
            wanted = key if key_fn is None else key_fn(value)
            found = MISSING
            if wanted is not None:
                key_bytes, partition = locate(wanted)
                part = parts.get(partition)
                if part is None or not part.ready:
                    raise PartitionNotOwnedError(f"{name}: partition {partition} is not loaded (is the worker started?)")
                found = lookup(part, key_bytes, decode)
            if found is MISSING:
                if inner:
                    return
                found = None
            nxt(key, joiner(value, found))

        return global_join


# -- two-input joins ---------------------------------------------------------------------------
class TwoInputStep(Step):
    """A step fed by two dataflow nodes: the dataflow compiles it once, with the functions of
    everything below it, and hands each parent the entry function of its side."""

    def __init__(self, left: Dataflow, right: Dataflow) -> None:
        self.inputs = {"left": left, "right": right}

    def compile(self, nxt: Emit, runtime: Runtime) -> Emit:  # pragma: no cover - see compile_inputs
        raise TypeError(f"{type(self).__name__} is compiled with compile_inputs")

    @abc.abstractmethod
    def compile_inputs(self, nxt: Emit, runtime: Runtime) -> dict[str, Emit]:
        """The entry function of each side (``left``, ``right``), all passing results to ``nxt``."""

    def sides_of(self, parent: Dataflow) -> list[str]:
        """The sides ``parent`` feeds (both for a join of a stream with itself)."""
        return [side for side, node in self.inputs.items() if node is parent]


def _present(how: str) -> Callable[[Any, Any], bool]:
    """Whether a table–table join has a result for (left, right) values (MISSING when absent)."""
    if how == "inner":
        return lambda left, right: left is not MISSING and right is not MISSING
    if how == "left":
        return lambda left, right: left is not MISSING
    return lambda left, right: left is not MISSING or right is not MISSING


def _none(value: Any) -> Any:
    return None if value is MISSING else value


class TableTableJoinStep(TwoInputStep):
    """KTable–KTable join: each update of either table looks up the other side's latest value."""

    def __init__(self, left: MaterializedTable, right: MaterializedTable, joiner: Joiner, how: str) -> None:
        assert left.node is not None and right.node is not None
        super().__init__(left.node, right.node)
        self.name = f"{how} join of tables {left.name!r} and {right.name!r}"
        self.left = left
        self.right = right
        self.joiner = joiner
        self.how = how

    def compile_inputs(self, nxt: Emit, runtime: Runtime) -> dict[str, Emit]:
        joiner, present = self.joiner, _present(self.how)
        lookup = Table.lookup

        def side(this_is_left: bool, other: Table) -> Emit:
            locate = _partition_getter(other, self.name)
            decode = other.value_codec.decode

            def on_update(key: Any, change: Change) -> None:
                part, key_bytes = locate(key)
                theirs = lookup(part, key_bytes, decode)
                if this_is_left:
                    before, after = present(change.old, theirs), present(change.new, theirs)
                    pair = (change.new, theirs)
                else:
                    before, after = present(theirs, change.old), present(theirs, change.new)
                    pair = (theirs, change.new)
                if after:
                    nxt(key, joiner(_none(pair[0]), _none(pair[1])))
                elif before:
                    nxt(key, None)  # the result is gone: a tombstone

            return on_update

        return {"left": side(True, self.right), "right": side(False, self.left)}


@dataclass(frozen=True)
class JoinWindow(WindowSpec):
    """A stream–stream join window: records ``within_ms`` apart or closer pair up; a record's
    window is ``[t - within, t + within]`` and closes once the watermark passes
    ``t + within + grace`` (Kafka Streams' ``JoinWindows.ofTimeDifferenceAndGrace``)."""

    within_ms: int = 0

    kind = "join"

    def __post_init__(self) -> None:
        if self.within_ms < 0 or self.grace_ms < 0:
            raise ValueError(f"a join window needs within_ms >= 0 and grace_ms >= 0 (got {self.within_ms}, {self.grace_ms})")

    @property
    def reach_ms(self) -> int:
        """A record at ``t`` closes at ``t + reach_ms`` (its window includes ``t + within``)."""
        return self.within_ms + 1 + self.grace_ms

    def describe(self) -> str:
        return f"join within {self.within_ms} ms (grace {self.grace_ms} ms)"

    def retention_ms(self) -> int:
        return self.reach_ms


class JoinTable(WindowedTable):
    """The buffers of one stream–stream join: both sides' records per key, kept until their join
    windows close, with the partition's stream time and watermark (shared by both inputs) and the
    close index of :class:`~flowbus.state.windowed.WindowedTable`."""

    spec: JoinWindow

    def __init__(self, app: App, name: str, spec: JoinWindow, **kwargs: Any) -> None:
        super().__init__(app, name, spec, **kwargs)
        self.skipped_records = 0
        """Records with a ``None`` value (nothing to join), dropped as Kafka Streams does."""
        self.unmatched_records = 0
        """Records emitted without a partner (left and outer joins) when their window closed."""
        self.failed_unmatched = 0
        """Unmatched records whose joiner (or what follows it) raised when their window closed:
        logged and dropped, there being no input record to give the error policy."""

    def close_times(self, data_key: bytes, value: Any) -> list[int]:
        kind = data_key[:1]
        if kind in (KIND_LEFT, KIND_RIGHT):
            reach = self.spec.reach_ms
            return sorted({entry[0] + reach for entry in value})
        return super().close_times(data_key, value)

    def items(self) -> Iterator[tuple[Any, Any]]:  # type: ignore[override]
        """((key, "left" | "right"), [[event time, value, matched], ...]) of every buffer held."""
        decode_key = self.key_codec.decode
        for partition in sorted(self.parts):
            part = self.parts[partition]
            if part.ready:
                for data_key, entries in self._partition_items(part):
                    kind, key_bytes, _ = split_key(data_key)
                    yield (decode_key(key_bytes), "left" if kind == KIND_LEFT else "right"), entries


class StreamStreamJoinStep(TwoInputStep):
    """Pairs records of two co-partitioned streams with the same key and close event times."""

    def __init__(
        self,
        left: Dataflow,
        right: Dataflow,
        table: JoinTable,
        *,
        topics: tuple[str, str],
        joiner: Joiner,
        how: str,
        on_late: Topic | None,
        idle_ms: int | None,
    ) -> None:
        super().__init__(left, right)
        self.name = f"{how} join within {table.spec.within_ms} ms ({table.name!r})"
        self.table = table
        self.topics = topics
        self.joiner = joiner
        self.how = how
        self.on_late = on_late
        self.idle_ms = idle_ms

    def compile_inputs(self, nxt: Emit, runtime: Runtime) -> dict[str, Emit]:
        table, joiner, how = self.table, self.joiner, self.how
        spec = table.spec
        within, reach = spec.within_ms, spec.reach_ms
        parts = table.parts
        get, add_close = table.get, table.add_close
        encode_key, decode_key = table.key_codec.encode, table.key_codec.decode
        left_topic, right_topic = self.topics
        topic_of = {KIND_LEFT: left_topic, KIND_RIGHT: right_topic}
        # The sides whose records are emitted alone when their window closes without a partner.
        unmatched = {KIND_LEFT: how in ("left", "outer"), KIND_RIGHT: how == "outer"}
        mono = runtime.clock.monotonic_ms
        get_source = current_source.get
        late_send = runtime.sender(self.on_late) if self.on_late is not None else None
        idle_topics = list(dict.fromkeys(self.topics))
        name = table.name

        def emit_at(timestamp_ms: int, key: Any, value: Any, source: Any) -> None:
            """Pass a result on stamped ``timestamp_ms`` (the later of a pair's times, or an
            unmatched record's own time), keeping the input record's headers when there is one."""
            if type(source) is Record:
                if source.timestamp_ms == timestamp_ms:
                    nxt(key, value)
                    return
                stamped = source._replace(timestamp_ms=timestamp_ms)
            else:
                stamped = Record(source.topic, source.partition, -1, timestamp_ms, None, None)
            token = current_source.set(stamped)
            try:
                nxt(key, value)
            finally:
                current_source.reset(token)

        late = late_records(table, late_send, f"join {name!r}", "its join window")

        def close(part: WindowPartition, close_ms: int, data_key: bytes) -> None:
            """Drop a buffer's records whose window the watermark passed; emit the unmatched ones
            alone (left and outer joins), stamped with their own event time."""
            entries = get(part, data_key)
            if entries is MISSING:
                return
            watermark = part.watermark_ms
            remaining = [e for e in entries if e[0] + reach > watermark]
            if len(remaining) == len(entries):
                return
            part.pending[data_key] = remaining if remaining else DELETED
            kind = data_key[:1]
            if not unmatched[kind]:
                return
            key = decode_key(split_key(data_key)[1])
            source = TopicPartition(topic_of[kind], part.partition)
            for t, value, matched in entries:
                if matched or t + reach > watermark:
                    continue
                table.unmatched_records += 1
                try:
                    emit_at(t, key, joiner(value, None) if kind == KIND_LEFT else joiner(None, value), source)
                except Exception:
                    # No input record to hand to the error policy (a close may run on a timer):
                    # log it, and let the other rows and windows close.
                    table.failed_unmatched += 1
                    log.exception("join %r: emitting the unmatched record of key %r at %d ms failed", name, key, t)

        # Stream time and watermark are shared by both inputs; the idle close waits until both
        # inputs of the partition are idle and caught up (the machinery of every window store).
        clock = WindowClock(table, close, idle_ms=self.idle_ms)
        clock.start(runtime, lambda partition: [TopicPartition(topic, partition) for topic in idle_topics])
        observe, arm = clock.observe, clock.arm

        # -- per record -------------------------------------------------------------------------
        def side(own: bytes, other: bytes) -> Emit:
            is_left = own == KIND_LEFT
            track_other = unmatched[other]

            def join_input(key: Any, value: Any) -> None:
                if key is None:
                    raise NoKeyError(f"join {name!r}: the record has no key; joins match records by key (group_by)")
                if value is None:
                    table.skipped_records += 1
                    return
                source = get_source()
                part = parts.get(source.partition) if source is not None else None
                if part is None or not part.ready:
                    raise PartitionNotOwnedError(f"join {name!r} has no ready partition for {source}")
                t = source.timestamp_ms if type(source) is Record else 0  # type: ignore[union-attr]
                t = max(t, 0)  # a record without a timestamp (pre-0.10 format) counts as time 0
                observe(part, t, mono())
                if t + reach <= part.watermark_ms:
                    late(key, value, t, part)
                    return
                value = _plain(value)
                key_bytes = encode_key(key)
                assert key_bytes is not None
                other_key = key_prefix(other, key_bytes)
                partners = get(part, other_key)
                # Every pair is joined before any state changes: a joiner that raises leaves the
                # buffers as they were (the record goes to the error policy, whole).
                results: list[tuple[int, Any]] = []
                marked = None
                if partners is not MISSING:
                    watermark = part.watermark_ms
                    for index, (t2, value2, matched2) in enumerate(partners):
                        if t2 - within <= t <= t2 + within and t2 + reach > watermark:
                            results.append((max(t, t2), joiner(value, value2) if is_left else joiner(value2, value)))
                            if track_other and not matched2:
                                if marked is None:
                                    marked = list(partners)
                                marked[index] = [t2, value2, True]
                if marked is not None:
                    part.pending[other_key] = marked
                own_key = key_prefix(own, key_bytes)
                entries = get(part, own_key)
                entry = [t, value, bool(results)]
                part.pending[own_key] = [entry] if entries is MISSING else [*entries, entry]
                add_close(part, t + reach, own_key)
                if not part.idle_armed:
                    arm(part)
                for timestamp_ms, result in results:
                    emit_at(timestamp_ms, key, result, source)

            return join_input

        return {"left": side(KIND_LEFT, KIND_RIGHT), "right": side(KIND_RIGHT, KIND_LEFT)}


__all__ = [
    "Change",
    "GlobalJoinStep",
    "JoinConflictError",
    "JoinTable",
    "JoinWindow",
    "MaterializedTable",
    "NotCoPartitionedError",
    "StreamStreamJoinStep",
    "StreamTableJoinStep",
    "TableTableJoinStep",
    "ToTableStep",
    "TwoInputStep",
    "merge",
]
