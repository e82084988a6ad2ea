"""The declarative form: ``app.stream(src).filter(f).map(g).to(dst)``.

Each fluent call adds a node and returns it; nothing runs at declaration time. When the worker
starts, :func:`compile_dataflows` walks the tree once and composes the nodes into closures
(see :mod:`flowbus.operators.steps`), one head function per source topic.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from flowbus.operators.joins import (
    HOW_STREAM_STREAM,
    HOW_STREAM_TABLE,
    GlobalJoinStep,
    JoinTable,
    JoinWindow,
    MaterializedTable,
    StreamStreamJoinStep,
    StreamTableJoinStep,
    ToTableStep,
    TwoInputStep,
    add_partition_check,
    check_how,
    check_same_keys,
    merge,
    table_check,
    topics_check,
)
from flowbus.operators.steps import (
    BranchStep,
    Emit,
    FilterStep,
    FlatMapStep,
    GroupByStep,
    MapStep,
    Runtime,
    Step,
    TakeStep,
    ThroughStep,
    ToStep,
    UpdateStep,
    fan_out,
)
from flowbus.operators.stateful import AggregateStep, StatefulStep, add_one
from flowbus.operators.windowed import _APP_DEFAULT, WindowDefinition, definition
from flowbus.serializers import Serializer
from flowbus.state.table import Table
from flowbus.state.windowed import WindowedTable
from flowbus.state.windows import Hopping, Session, Sliding, Tumbling, as_ms

if TYPE_CHECKING:
    from flowbus.app import App
    from flowbus.topic import Topic


_SAME_TYPE: Any = object()
"""``to_table(value_type=...)`` not given: the topic's value type when the values are the topic's."""


class Dataflow:
    """A node of a declarative stream; every method returns a new node below this one."""

    def __init__(self, app: App, source: Topic | None, step: Step | None = None) -> None:
        self.app = app
        self.source = source
        self.step = step
        self.children: list[Dataflow] = []

    def __repr__(self) -> str:
        what = self.step.name if self.step else f"source {self.source.name if self.source else '?'}"
        return f"<Dataflow {what} children={len(self.children)}>"

    def _add(self, step: Step) -> Dataflow:
        child = Dataflow(self.app, None, step)
        self.children.append(child)
        return child

    def map(self, fn: Callable[..., Any], *, stateful: bool = False) -> Dataflow:
        """Replace each value by ``fn(value)`` (``fn(value, state)`` with ``stateful=True``)."""
        if stateful:
            return self._add(StatefulStep("map", fn, self._state_table()))
        return self._add(MapStep(fn))

    def filter(self, predicate: Callable[..., Any], *, stateful: bool = False) -> Dataflow:
        """Keep the values for which ``predicate(value)`` (or ``predicate(value, state)``) is true."""
        if stateful:
            return self._add(StatefulStep("filter", predicate, self._state_table()))
        return self._add(FilterStep(predicate))

    def update(self, fn: Callable[..., Any], *, stateful: bool = False) -> Dataflow:
        """Call ``fn(value)`` (or ``fn(value, state)``) for its effect and pass the value on unchanged."""
        if stateful:
            return self._add(StatefulStep("update", fn, self._state_table()))
        return self._add(UpdateStep(fn))

    # -- keyed aggregations (Kafka Streams: groupByKey().count() ... .toStream()) ------------
    def count(self, *, name: str | None = None) -> Dataflow:
        """Count records per key in table ``name``; passes each new count on."""
        return self._aggregate("count", name, lambda: 0, add_one)

    def sum(self, fn: Callable[[Any], Any] | None = None, *, name: str | None = None) -> Dataflow:
        """Sum ``fn(value)`` (the value itself by default) per key; passes each new sum on."""
        if fn is None:
            return self._aggregate("sum", name, lambda: 0, lambda total, value: total + value)
        return self._aggregate("sum", name, lambda: 0, lambda total, value: total + fn(value))

    def reduce(self, fn: Callable[[Any, Any], Any], *, name: str | None = None) -> Dataflow:
        """Combine values per key with ``fn(aggregate, value)``; the first value starts it."""
        first = object()

        def step(aggregate: Any, value: Any) -> Any:
            return value if aggregate is first else fn(aggregate, value)

        return self._aggregate("reduce", name, lambda: first, step)

    def aggregate(self, initial: Any, fn: Callable[[Any, Any], Any], *, name: str | None = None) -> Dataflow:
        """Fold values per key with ``fn(aggregate, value)`` starting from ``initial`` (a value, or
        a callable making one: ``list``, ``dict``); passes each new aggregate on."""
        make = initial if callable(initial) else (lambda: copy.deepcopy(initial))
        return self._aggregate("aggregate", name, make, fn)

    def _aggregate(self, kind: str, name: str | None, initial: Callable[[], Any], fn: Callable[[Any, Any], Any]) -> Dataflow:
        topic = self._current_topic()
        table = self.app._add_table(Table(
            self.app, name or f"{topic.name}-{kind}", key_serializer=topic.key_codec.serializer,
            key_type=topic.key_type,
        ))
        table.source_topic = topic.name
        return self._add(AggregateStep(kind, table, initial, fn))

    def _state_table(self) -> Table:
        topic = self._current_topic()
        name = f"{topic.name}-state"
        table = self.app.tables.get(name)
        if table is None:
            table = self.app._add_table(Table(
                self.app, name, key_serializer=topic.key_codec.serializer, key_type=topic.key_type,
            ))
            table.source_topic = topic.name
        return table

    def _current_topic(self) -> Topic:
        """The topic the records at this node are read from: the last group_by/through above it,
        else the root's source (state is partitioned like that topic)."""
        for root in self.app.dataflows:
            path = _path_to(root, self)
            if path is not None:
                topic = root.source
                for node in path:
                    if isinstance(node.step, ThroughStep):
                        topic = node.step.topic
                assert topic is not None
                return topic
        raise ValueError("this dataflow node is not part of the app's dataflows")

    # -- windows (Quix Streams names; Kafka Streams: windowedBy(...).count().suppress(...)) ----
    def tumbling_window(
        self,
        duration_ms: int | timedelta,
        *,
        grace_ms: int | timedelta = 0,
        name: str | None = None,
        timestamp: Callable[[Any], int] | None = None,
        on_late: Topic | str | None = None,
        idle_ms: int | timedelta | None = _APP_DEFAULT,
    ) -> WindowDefinition:
        """Back-to-back windows of ``duration_ms`` per key: ``.count().final()`` and friends.

        ``grace_ms``: how long after its end a window still takes out-of-order records;
        ``timestamp``: event time from the value (default: the record timestamp);
        ``on_late``: a topic for records whose windows closed (default: dropped and counted);
        ``idle_ms``: see ``App(window_idle_ms=...)``; ``name``: the window store's name.
        """
        spec = Tumbling(grace_ms=as_ms(grace_ms, "grace_ms"), size_ms=as_ms(duration_ms, "duration_ms", minimum=1))
        return definition(self, spec, name, timestamp, on_late, idle_ms)

    def hopping_window(
        self,
        duration_ms: int | timedelta,
        step_ms: int | timedelta,
        *,
        grace_ms: int | timedelta = 0,
        name: str | None = None,
        timestamp: Callable[[Any], int] | None = None,
        on_late: Topic | str | None = None,
        idle_ms: int | timedelta | None = _APP_DEFAULT,
    ) -> WindowDefinition:
        """Windows of ``duration_ms`` starting every ``step_ms``; a record counts in each one
        containing it. Other arguments as :meth:`tumbling_window`."""
        spec = Hopping(
            grace_ms=as_ms(grace_ms, "grace_ms"), size_ms=as_ms(duration_ms, "duration_ms", minimum=1),
            step_ms=as_ms(step_ms, "step_ms", minimum=1),
        )
        return definition(self, spec, name, timestamp, on_late, idle_ms)

    def sliding_window(
        self,
        duration_ms: int | timedelta,
        *,
        grace_ms: int | timedelta = 0,
        name: str | None = None,
        timestamp: Callable[[Any], int] | None = None,
        on_late: Topic | str | None = None,
        idle_ms: int | timedelta | None = _APP_DEFAULT,
    ) -> WindowDefinition:
        """One window per record: the ``duration_ms`` up to and including it. Records are kept
        until no open window needs them (their values must be JSON-serializable). Other
        arguments as :meth:`tumbling_window`."""
        spec = Sliding(grace_ms=as_ms(grace_ms, "grace_ms"), size_ms=as_ms(duration_ms, "duration_ms", minimum=1))
        return definition(self, spec, name, timestamp, on_late, idle_ms)

    def session_window(
        self,
        gap_ms: int | timedelta,
        *,
        grace_ms: int | timedelta = 0,
        name: str | None = None,
        timestamp: Callable[[Any], int] | None = None,
        on_late: Topic | str | None = None,
        idle_ms: int | timedelta | None = _APP_DEFAULT,
    ) -> WindowDefinition:
        """Per key, records at most ``gap_ms`` apart form one session; a session closes once the
        watermark is ``gap_ms + grace_ms`` past its last record. Other arguments as
        :meth:`tumbling_window`."""
        spec = Session(grace_ms=as_ms(grace_ms, "grace_ms"), gap_ms=as_ms(gap_ms, "gap_ms", minimum=1))
        return definition(self, spec, name, timestamp, on_late, idle_ms)

    def flat_map(self, fn: Callable[[Any], Iterable[Any]]) -> Dataflow:
        """Replace each value by every item of ``fn(value)`` (zero or more)."""
        return self._add(FlatMapStep(fn))

    def branch(self, *predicates: Callable[[Any], Any]) -> tuple[Dataflow, ...]:
        """One dataflow per predicate; each value goes to the first whose predicate holds.

        Example: ``big, rest = app.stream(orders).branch(lambda o: o["total"] > 100, lambda o: True)``
        """
        if not predicates:
            raise ValueError("branch needs at least one predicate")
        node = self._add(BranchStep(list(predicates)))
        node.children = [Dataflow(self.app, None, None) for _ in predicates]
        return tuple(node.children)

    def group_by(
        self, key: Callable[[Any], Any], *, name: str, partitions: int | None = None, key_type: Any = None
    ) -> Dataflow:
        """Re-key by ``key(value)`` through the internal topic ``<app>-<name>-repartition``.

        Keys are written as JSON; ``key_type=str`` (or ``bytes``) writes them raw, as a topic
        declared with that key type does, so the result joins with such a topic's table.
        """
        source = self._root_source()
        topic = self.app.topic(
            f"{self.app.id}-{name}-repartition",
            key_type=key_type,
            value_serializer=source.value_codec.serializer if source else "json",
            value_type=source.value_type if source else None,
            partitions=partitions,
            internal=True,
        )
        return self._add(GroupByStep(topic, key))

    def through(self, topic: Topic, *, key: Callable[[Any], Any] | None = None) -> Dataflow:
        """Send to ``topic`` and continue from what is read back from it."""
        return self._add(ThroughStep(topic, key))

    def take(self, max_events: int, *, within_s: float) -> Dataflow:
        """Lists of up to ``max_events`` values, emitted at most ``within_s`` after the first one."""
        return self._add(TakeStep(max_events, int(within_s * 1000)))

    def to(self, topic: Topic, *, key: Callable[[Any], Any] | None = None) -> Dataflow:
        """Send each value to ``topic`` (keyed by ``key(value)`` if given, else the current key)."""
        return self._add(ToStep(topic, key))

    def _root_source(self) -> Topic | None:
        return self.app._dataflow_source(self)

    # -- joins (Kafka Streams: toTable, join/leftJoin/outerJoin; Quix Streams: join_lookup,
    # -- join_interval); see flowbus.operators.joins and docs/joins.md ----------------------------
    def to_table(
        self, name: str, *, value_type: Any = _SAME_TYPE, value_serializer: str | Serializer | None = None
    ) -> MaterializedTable:
        """Materialize this stream as table ``name``: the latest value of each key, a ``None``
        value (a tombstone) deleting the key (Kafka Streams' ``toTable``/``builder.table``).

        Returns the table: read it like any table, ``stream.join(table)`` it, or join it with
        another such table (:meth:`MaterializedTable.join`). ``value_type`` and
        ``value_serializer`` default to the topic's when the values come straight from it (no
        ``map`` on the way), else to no type and JSON.

        Example: ``customers = app.stream(customers_topic).to_table("customers")``
        """
        topic = self._current_topic()
        as_read = self._values_as_read(topic)
        if value_type is _SAME_TYPE:
            value_type = topic.value_type if as_read else None
        if value_serializer is None:
            value_serializer = topic.value_codec.serializer if as_read else "json"
        table = self.app._add_table(MaterializedTable(
            self.app, name, key_serializer=topic.key_codec.serializer, key_type=topic.key_type,
            value_type=value_type, value_serializer=value_serializer,
        ))
        table.source_topic = topic.name
        node = self._add(ToTableStep(table))
        table.node = node
        return table

    def join(self, table: Table, *, joiner: Callable[[Any, Any], Any] | None = None, how: str = "inner") -> Dataflow:
        """Stream-table join: each record with the latest value of its key in ``table``, passed on
        as ``joiner(value, table value)`` (default :func:`~flowbus.operators.joins.merge`: one dict
        of both). ``how``: ``inner`` drops records whose key is not in the table, ``left`` passes
        ``None`` as the table value. Table updates emit nothing. The table (``to_table``, or an
        ``app.Table`` updated by an agent) must be co-partitioned with this stream, checked at
        start; a global table is looked up with :meth:`join_global`. Kafka Streams:
        ``KStream.join(KTable)``/``leftJoin``; Quix Streams: ``join_lookup``.
        """
        if isinstance(table, WindowedTable):
            raise TypeError(f"{table!r} is a window store; join a stream with a table of latest values")
        if table.global_table:
            return self.join_global(table, joiner=joiner, how=how)
        topic = self._current_topic()
        what = f"{how} join of {topic.name!r} with table {table.name!r}"
        check_how(how, HOW_STREAM_TABLE, what)
        check_same_keys(what, (f"topic {topic.name!r}", topic.key_codec), (f"table {table.name!r}", table.key_codec))
        node = self._add(StreamTableJoinStep(table, joiner or merge, how))
        add_partition_check(table, table_check(what, topic.name, table))
        return node

    def join_window(
        self,
        other: Dataflow,
        *,
        within_ms: int | timedelta,
        how: str = "inner",
        grace_ms: int | timedelta = 0,
        joiner: Callable[[Any, Any], Any] | None = None,
        name: str | None = None,
        on_late: Topic | str | None = None,
        idle_ms: int | timedelta | None = _APP_DEFAULT,
    ) -> Dataflow:
        """Stream-stream join: records of this stream and ``other`` with the same key and event
        times at most ``within_ms`` apart, passed on as ``joiner(left, right)`` as soon as both
        are there (stamped with the later time). ``how``: ``inner``; ``left``: a record of this
        stream that never matched is passed on as ``joiner(left, None)`` once its window closed
        (the watermark, shared by both inputs, passed ``t + within_ms + grace_ms``), never
        before; ``outer``: unmatched records of both sides. ``on_late``/``idle_ms`` as for
        windows; ``name``: the buffers' store. Kafka Streams: ``join(other, joiner,
        JoinWindows.ofTimeDifferenceAndGrace(within, grace))``; Quix Streams: ``join_interval``.
        """
        if not isinstance(other, Dataflow):
            raise TypeError(f"join_window joins two streams; to join with a table use join(), not join_window({other!r})")
        if other.app is not self.app:
            raise ValueError("both streams of a join must belong to the same app")
        left, right = self._current_topic(), other._current_topic()
        what = f"{how} join of {left.name!r} with {right.name!r}"
        check_how(how, HOW_STREAM_STREAM, what)
        check_same_keys(what, (f"topic {left.name!r}", left.key_codec), (f"topic {right.name!r}", right.key_codec))
        spec = JoinWindow(grace_ms=as_ms(grace_ms, "grace_ms"), within_ms=as_ms(within_ms, "within_ms"))
        table = self.app._add_table(JoinTable(
            self.app, name or f"{left.name}-{right.name}-join", spec, key_serializer=left.key_codec.serializer,
            key_type=left.key_type, value_serializer="msgpack",
        ))
        table.source_topic = left.name
        if idle_ms is _APP_DEFAULT:
            idle_ms = self.app.window_idle_ms
        elif idle_ms is not None:
            idle_ms = as_ms(idle_ms, "idle_ms")
        step = StreamStreamJoinStep(
            self, other, table, topics=(left.name, right.name), joiner=joiner or merge, how=how,
            on_late=self.app._as_topic(on_late) if on_late is not None else None, idle_ms=idle_ms,
        )
        node = Dataflow(self.app, None, step)
        self.children.append(node)
        if other is not self:
            other.children.append(node)
        add_partition_check(table, topics_check(what, left.name, right.name))
        return node

    def join_global(
        self,
        table: Table,
        *,
        key: Callable[[Any], Any] | None = None,
        joiner: Callable[[Any, Any], Any] | None = None,
        how: str = "inner",
    ) -> Dataflow:
        """Lookup join with a global table (every worker holds all of it, so nothing needs to be
        co-partitioned): each record with the value of ``key(value)`` (default: the record key),
        as :meth:`join`. Kafka Streams: ``join(GlobalKTable, keySelector, joiner)``."""
        if not table.global_table:
            raise TypeError(f"join_global reads an app.GlobalTable; {table!r} is not one (use join())")
        check_how(how, HOW_STREAM_TABLE, f"{how} join with global table {table.name!r}")
        return self._add(GlobalJoinStep(table, key, joiner or merge, how))

    def _values_as_read(self, topic: Topic) -> bool:
        """Whether the values reaching this node are those of ``topic`` (nothing mapped them)."""
        for root in self.app.dataflows:
            path = _path_to(root, self)
            if path is not None:
                after = [n for n in path if n.step is not None]
                for at, node in enumerate(after):
                    if isinstance(node.step, ThroughStep) and node.step.topic is topic:
                        after = after[at + 1:]
                return all(isinstance(n.step, FilterStep | ToStep | BranchStep) for n in after)
        return False


def _path_to(root: Dataflow, target: Dataflow) -> list[Dataflow] | None:
    """The nodes from ``root`` down to ``target`` (both included), or None."""
    stack: list[tuple[Dataflow, list[Dataflow]]] = [(root, [root])]
    while stack:
        node, path = stack.pop()
        if node is target:
            return path
        stack.extend((child, [*path, child]) for child in node.children)
    return None


def _compile(node: Dataflow, runtime: Runtime, joins: dict[Dataflow, dict[str, Emit]]) -> Emit:
    children = [_compile_child(node, child, runtime, joins) for child in node.children]
    if isinstance(node.step, BranchStep):
        return node.step.compile_branches(children)
    nxt = fan_out(children)
    return nxt if node.step is None else node.step.compile(nxt, runtime)


def _compile_child(parent: Dataflow, child: Dataflow, runtime: Runtime, joins: dict[Dataflow, dict[str, Emit]]) -> Emit:
    """The function of ``child`` for ``parent``: a join has two parents, so it (and everything
    below it) is compiled once, into one entry function per side, and each parent gets its own."""
    step = child.step
    if not isinstance(step, TwoInputStep):
        return _compile(child, runtime, joins)
    inputs = joins.get(child)
    if inputs is None:
        below = fan_out([_compile_child(child, grandchild, runtime, joins) for grandchild in child.children])
        inputs = joins[child] = step.compile_inputs(below, runtime)
    return fan_out([inputs[side] for side in step.sides_of(parent)])


def reads_record(node: Dataflow) -> bool:
    """Whether a step at or below ``node`` reads more of the record being processed than its
    topic and partition (:attr:`~flowbus.operators.steps.Step.reads_record`)."""
    stack = [node]
    while stack:
        at = stack.pop()
        if at.step is not None and at.step.reads_record:
            return True
        stack.extend(at.children)
    return False


def compile_dataflows(roots: list[Dataflow], runtime: Runtime) -> None:
    """Compose every dataflow and register its head with ``runtime.add_source``."""
    joins: dict[Dataflow, dict[str, Emit]] = {}
    for root in roots:
        assert root.source is not None, "a root dataflow has a source topic"
        runtime.add_source(root.source, _compile(root, runtime, joins), reads_record=reads_record(root))
