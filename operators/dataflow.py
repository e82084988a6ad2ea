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
    fan_out,
)
from flowbus.operators.stateful import AggregateStep, StatefulStep
from flowbus.operators.windowed import _APP_DEFAULT, WindowDefinition, definition
from flowbus.state.table import Table
from flowbus.state.windows import Hopping, Session, Sliding, Tumbling, as_ms

if TYPE_CHECKING:
    from flowbus.app import App
    from flowbus.topic import Topic


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

        def call_and_pass(value: Any) -> Any:
            fn(value)
            return value

        return self._add(MapStep(call_and_pass))

    # -- keyed aggregations (Kafka Streams: groupByKey().count() ... .toStream()) ------------
    def count(self, *, name: str | None = None) -> Dataflow:
        """Count records per key in table ``name``; passes each new count on."""
        return self._aggregate("count", name, lambda: 0, lambda total, _value: total + 1)

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

    def group_by(self, key: Callable[[Any], Any], *, name: str, partitions: int | None = None) -> Dataflow:
        """Re-key by ``key(value)`` through the internal topic ``<app>-<name>-repartition``."""
        source = self._root_source()
        topic = self.app.topic(
            f"{self.app.id}-{name}-repartition",
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


def _path_to(root: Dataflow, target: Dataflow) -> list[Dataflow] | None:
    """The nodes from ``root`` down to ``target`` (both included), or None."""
    stack: list[tuple[Dataflow, list[Dataflow]]] = [(root, [root])]
    while stack:
        node, path = stack.pop()
        if node is target:
            return path
        stack.extend((child, [*path, child]) for child in node.children)
    return None


def _compile(node: Dataflow, runtime: Runtime) -> Emit:
    if isinstance(node.step, BranchStep):
        return node.step.compile_branches([_compile(child, runtime) for child in node.children])
    nxt = fan_out([_compile(child, runtime) for child in node.children])
    return nxt if node.step is None else node.step.compile(nxt, runtime)


def compile_dataflows(roots: list[Dataflow], runtime: Runtime) -> None:
    """Compose every dataflow and register its head with ``runtime.add_source``."""
    for root in roots:
        assert root.source is not None, "a root dataflow has a source topic"
        runtime.add_source(root.source, _compile(root, runtime))
