"""The declarative form: ``app.stream(src).filter(f).map(g).to(dst)``.

Each fluent call adds a node and returns it; nothing runs at declaration time. When the worker
starts, :func:`compile_dataflows` walks the tree once and composes the nodes into closures
(see :mod:`flowbus.operators.steps`), one head function per source topic.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
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

    def map(self, fn: Callable[[Any], Any]) -> Dataflow:
        """Replace each value by ``fn(value)``."""
        return self._add(MapStep(fn))

    def filter(self, predicate: Callable[[Any], Any]) -> Dataflow:
        """Keep the values for which ``predicate(value)`` is true."""
        return self._add(FilterStep(predicate))

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
