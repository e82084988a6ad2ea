"""The steps of a declarative dataflow, each compiled once into a plain closure.

A step receives the already-compiled function of everything after it (``nxt``) and returns the
function for itself; calling a compiled chain is therefore a chain of Python calls with no
coroutine, no queue and no per-event allocation beyond what the user's functions make. Steps
that need time (``take``) or that leave the chain (``group_by``, ``through``) ask the
:class:`Runtime` for it.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    from flowbus.clock import Clock
    from flowbus.serializers import Codec
    from flowbus.topic import Topic
    from flowbus.transports.base import TopicPartition

Emit = Callable[[Any, Any], None]
"""A compiled step: called with (key, value)."""


class DirectSink(NamedTuple):
    """The way straight into the topic that ends a chain (``.to(topic)``), for what a step emits
    outside any input record (a closing window's result): the step gives the timestamp, no
    headers go out, and a key the step holds encoded as the topic's key codec would encode it is
    passed as it is, not decoded to be encoded again. A runtime's sender may carry one as its
    ``direct`` attribute; a step uses it only when its ``nxt`` is that sender (:func:`direct_sink`)."""

    key_codec: Codec
    encode_value: Callable[[Any], bytes | None]
    """The topic's value encoder."""
    send_raw: Callable[[bytes | None, bytes | None, int], None]
    """``send_raw(key_bytes, value_bytes, timestamp_ms)`` (a time of at least 0) enqueues the record."""

    def takes_keys_of(self, codec: Codec) -> bool:
        """Whether keys encoded by ``codec`` are what this sink's key codec makes of them (the
        same serializer and type: encoding what was decoded gives the same bytes back)."""
        return codec.serializer is self.key_codec.serializer and codec.type_ is self.key_codec.type_


def direct_sink(nxt: Emit) -> DirectSink | None:
    """``nxt``'s :class:`DirectSink` when ``nxt`` sends to a topic and nothing else."""
    sink = getattr(nxt, "direct", None)
    return sink if isinstance(sink, DirectSink) else None


def value_sink(nxt: Emit) -> Callable[[Any], Any] | None:
    """The user's function when ``nxt`` is an ``update()`` ending its chain: a step before it may
    call that function with the value itself, one Python frame fewer per record (~23 ns of a
    ~470 ns word-count chain, measured alone)."""
    return getattr(nxt, "value_only", None)


def _drop(key: Any, value: Any) -> None:
    """Where values go after the last step of a branch that sends nowhere."""


class Runtime(Protocol):
    """What compiled steps may ask of the worker."""

    def sender(self, topic: Topic) -> Emit:
        """A function (key, value) that encodes with the topic's codecs and enqueues the record
        (no waiting; delivery is checked at commit), with the timestamp and headers of the record
        being processed. Made once per step, at compile time."""

    def call_at_ms(self, delay_ms: int, callback: Callable[[], None]) -> None:
        """Run ``callback`` after ``delay_ms`` on the app clock."""

    def before_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` before every commit, so buffered steps emit what they hold."""

    def add_source(self, topic: Topic, head: Emit, *, reads_record: bool = True) -> None:
        """Feed records of ``topic`` into ``head`` (how group_by and through continue a chain);
        ``reads_record=False``: no step of the chain reads more of the current source than its
        topic and partition (:attr:`Step.reads_record`)."""

    dispatch_ms: int
    """The monotonic time (app clock) the batch being processed was polled: windows note when a
    partition last saw a record without reading the clock per record."""

    @property
    def clock(self) -> Clock:
        """The app clock (windows measure idle time on its monotonic reading)."""

    def idle_check(
        self,
        delay_ms: int,
        tp: TopicPartition | Sequence[TopicPartition],
        callback: Callable[[bool], None],
        idle: Callable[[], bool] | None = None,
    ) -> None:
        """After ``delay_ms``, call ``callback(caught_up)`` outside any commit, where ``caught_up``
        says the partition's position is at the end of its log with nothing of it buffered or
        held back; not called at all once ``tp`` is no longer assigned to this worker. Several
        partitions are caught up when each one still assigned is. ``idle()`` false: the answer is
        False without looking (a busy partition is not worth a lookup)."""

    def commit_soon(self, within_ms: int) -> None:
        """Commit within ``within_ms`` rather than at the next interval (results are waiting)."""


def fan_out(targets: list[Emit]) -> Emit:
    """One function calling every target; the common single-target case adds no layer."""
    if not targets:
        return _drop
    if len(targets) == 1:
        return targets[0]
    frozen = tuple(targets)

    def each(key: Any, value: Any) -> None:
        for target in frozen:
            target(key, value)

    return each


class Step(abc.ABC):
    """One node of a dataflow."""

    name: str = "step"
    reads_record: bool = True
    """Whether this step's function reads more of the record being processed
    (:data:`flowbus.context.current_source`) than its topic and partition: its timestamp,
    headers, key bytes or offset. The worker sets the source once per record only for a chain
    with such a step; other chains (map, filter, update, keyed aggregations) see it set once per
    run of records of one partition (a context variable set is ~70 ns, ~5% of a word count)."""

    @abc.abstractmethod
    def compile(self, nxt: Emit, runtime: Runtime) -> Emit:
        """The function for this step, calling ``nxt`` with what it passes on."""


class MapStep(Step):
    name = "map"
    reads_record = False

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn

    def compile(self, nxt: Emit, runtime: Runtime) -> Emit:
        fn = self.fn

        def map_step(key: Any, value: Any) -> None:
            nxt(key, fn(value))

        return map_step


class UpdateStep(Step):
    """``fn(value)`` for its effect; the record passes on unchanged (one call per record, not a
    map around a wrapper)."""

    name = "update"
    reads_record = False

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn

    def compile(self, nxt: Emit, runtime: Runtime) -> Emit:
        fn = self.fn
        if nxt is _drop:  # the end of the chain: nothing to pass the value to

            def last_update_step(key: Any, value: Any) -> None:
                fn(value)

            last_update_step.value_only = fn  # type: ignore[attr-defined]  # see value_sink()
            return last_update_step

        def update_step(key: Any, value: Any) -> None:
            fn(value)
            nxt(key, value)

        return update_step


class FilterStep(Step):
    name = "filter"
    reads_record = False

    def __init__(self, predicate: Callable[[Any], Any]) -> None:
        self.predicate = predicate

    def compile(self, nxt: Emit, runtime: Runtime) -> Emit:
        predicate = self.predicate

        def filter_step(key: Any, value: Any) -> None:
            if predicate(value):
                nxt(key, value)

        return filter_step


class FlatMapStep(Step):
    name = "flat_map"
    reads_record = False

    def __init__(self, fn: Callable[[Any], Iterable[Any]]) -> None:
        self.fn = fn

    def compile(self, nxt: Emit, runtime: Runtime) -> Emit:
        fn = self.fn

        def flat_map_step(key: Any, value: Any) -> None:
            for item in fn(value):
                nxt(key, item)

        return flat_map_step


class BranchStep(Step):
    """Routes each value to the first branch whose predicate holds; values matching none are dropped.

    Compiled specially by the dataflow (one child per predicate), so ``compile`` gets the
    children through :meth:`compile_branches`.
    """

    name = "branch"
    reads_record = False

    def __init__(self, predicates: list[Callable[[Any], Any]]) -> None:
        self.predicates = predicates

    def compile(self, nxt: Emit, runtime: Runtime) -> Emit:  # pragma: no cover - see compile_branches
        raise TypeError("BranchStep is compiled with compile_branches")

    def compile_branches(self, branches: list[Emit]) -> Emit:
        pairs = tuple(zip(self.predicates, branches, strict=True))

        def branch_step(key: Any, value: Any) -> None:
            for predicate, target in pairs:
                if predicate(value):
                    target(key, value)
                    return

        return branch_step


class ToStep(Step):
    """Sends every value to a topic and passes it on unchanged (so a chain can continue)."""

    name = "to"

    def __init__(self, topic: Topic, key: Callable[[Any], Any] | None = None) -> None:
        self.topic = topic
        self.key = key

    def compile(self, nxt: Emit, runtime: Runtime) -> Emit:
        key_fn, send = self.key, runtime.sender(self.topic)
        if key_fn is None and nxt is _drop:
            return send

        def to_step_and_continue(key: Any, value: Any) -> None:
            send(key if key_fn is None else key_fn(value), value)
            nxt(key, value)

        return to_step_and_continue


class ThroughStep(Step):
    """Sends to a topic and continues from that topic: the rest of the chain reads it back,
    possibly on another worker (the partition decides)."""

    name = "through"

    def __init__(self, topic: Topic, key: Callable[[Any], Any] | None = None) -> None:
        self.topic = topic
        self.key = key

    def compile(self, nxt: Emit, runtime: Runtime) -> Emit:
        runtime.add_source(self.topic, nxt)
        key_fn, send = self.key, runtime.sender(self.topic)
        if key_fn is None:
            return send

        def through_step(key: Any, value: Any) -> None:
            send(key_fn(value), value)

        return through_step


class GroupByStep(ThroughStep):
    """Re-keys values and repartitions them through an internal topic keyed by the new key, so
    all values with one key meet on one partition (and one worker) downstream."""

    name = "group_by"

    def __init__(self, topic: Topic, key: Callable[[Any], Any]) -> None:
        super().__init__(topic, key)


class TakeStep(Step):
    """Passes on lists of up to ``max_events`` values, each list at most ``within_ms`` after its first
    value arrived (app clock). Lists are also emitted at each commit, so no committed offset ever
    points past a value still held here."""

    name = "take"

    def __init__(self, max_events: int, within_ms: int) -> None:
        if max_events < 1:
            raise ValueError("take needs max_events >= 1")
        self.max_events = max_events
        self.within_ms = within_ms

    def compile(self, nxt: Emit, runtime: Runtime) -> Emit:
        max_events, within_ms = self.max_events, self.within_ms
        buffer: list[Any] = []
        generation = [0]

        def flush() -> None:
            if buffer:
                chunk = buffer[:]
                buffer.clear()
                generation[0] += 1
                nxt(None, chunk)

        def flush_if_same(expected: int) -> Callable[[], None]:
            def on_deadline() -> None:
                if generation[0] == expected:
                    flush()

            return on_deadline

        runtime.before_commit(flush)

        def take_step(key: Any, value: Any) -> None:
            buffer.append(value)
            if len(buffer) == 1:
                runtime.call_at_ms(within_ms, flush_if_same(generation[0]))
            if len(buffer) >= max_events:
                flush()

        return take_step
