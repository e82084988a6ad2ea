"""Windowed aggregations in the declarative form, Quix Streams and Kafka Streams style.

``app.stream(clicks).group_by(user, name="by-user").tumbling_window(10_000).count().final()``
counts each key's records per 10-second window of *event time* and passes one result per window
on, once the window closes; ``.current()`` passes every update on instead. A result is
``{"start": ms, "end": ms, "value": aggregate}`` (the window is ``start <= t < end``), keyed by
the record key; a final result carries the window start as its timestamp.

Time: a record's event time is its timestamp (or ``timestamp=fn(value)``). Per partition, stream
time is the largest event time seen and the watermark how far windows are closed: a window
closes when the watermark reaches its end + grace. The watermark follows stream time and, when
the partition has seen no record for ``idle_ms`` and is caught up (its position at the end of
the log, nothing buffered, not restoring), it moves on with the wall clock, so the last window
of a quiet stream closes without any new record. Records whose windows all closed are late:
counted, and dropped or sent to the ``on_late`` topic.

The windows live in a :class:`~flowbus.state.windowed.WindowedTable` partitioned like the
stream, committed and changelogged with the input offsets (in one transaction under
exactly-once): a window closed in a transaction that aborts is closed again after the restart,
so a final result is emitted once.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from flowbus.context import current_source
from flowbus.operators.stateful import NoKeyError
from flowbus.operators.steps import Emit, Runtime, Step, direct_sink
from flowbus.state.errors import PartitionNotOwnedError
from flowbus.state.table import DELETED, MISSING
from flowbus.state.windowed import NO_CLOSE_MS, WindowClock, WindowedTable, WindowPartition
from flowbus.state.windows import (
    _SPAN,
    KIND_ENTRIES,
    KIND_SESSIONS,
    KIND_WINDOW,
    Hopping,
    Session,
    Sliding,
    Tumbling,
    WindowSpec,
    key_prefix,
    split_key,
    window_key,
)
from flowbus.transports.base import Record, TopicPartition

new_tuple = tuple.__new__

if TYPE_CHECKING:
    from flowbus.operators.dataflow import Dataflow
    from flowbus.topic import Topic

log = logging.getLogger("flowbus.windows")

IDLE_MS_DEFAULT = 5_000
"""How long a partition must see no record (and be caught up) before its watermark moves on with
the wall clock; ``App(window_idle_ms=...)`` or ``idle_ms=`` on a window changes it."""
PREFIX_CACHE_KEYS_MAX = 100_000
"""Keys whose store-key prefix a tumbling window step remembers (emptied when full)."""
SPAN_CACHE_MAX = 1_024
"""Window starts whose encoded span a tumbling window step remembers (emptied when full)."""


# -- aggregations ----------------------------------------------------------------------------
class Aggregation:
    """How one window's records fold into a value: ``initial``, ``add``, ``merge`` (two windows
    into one, for sessions), ``result`` (what is emitted), and ``keep`` (what a sliding window
    buffers of each record). Aggregates are stored with the table's serializer (JSON)."""

    name = "aggregate"

    def initial(self) -> Any:
        raise NotImplementedError

    def add(self, acc: Any, value: Any) -> Any:
        raise NotImplementedError

    def merge(self, a: Any, b: Any) -> Any:
        raise NotImplementedError

    def result(self, acc: Any) -> Any:
        return acc

    def keep(self, value: Any) -> Any:
        return value

    def mergeable(self) -> bool:
        return True


def _field(fn: Callable[[Any], Any] | str | None) -> Callable[[Any], Any] | None:
    """A value extractor from a callable or a field name (``sum("amount")``)."""
    if fn is None or callable(fn):
        return fn
    name = fn
    return lambda value: value[name]


class Count(Aggregation):
    name = "count"

    def initial(self) -> Any:
        return 0

    def add(self, acc: Any, value: Any) -> Any:
        return acc + 1

    def merge(self, a: Any, b: Any) -> Any:
        return a + b

    def keep(self, value: Any) -> Any:
        return None


class Sum(Aggregation):
    name = "sum"

    def __init__(self, fn: Callable[[Any], Any] | str | None = None) -> None:
        self.fn = _field(fn)

    def initial(self) -> Any:
        return 0

    def add(self, acc: Any, value: Any) -> Any:
        return acc + value

    def merge(self, a: Any, b: Any) -> Any:
        return a + b

    def keep(self, value: Any) -> Any:
        return value if self.fn is None else self.fn(value)


class Extreme(Aggregation):
    """min or max; ``None`` until the first value."""

    def __init__(self, name: str, fn: Callable[[Any], Any] | str | None = None) -> None:
        self.name = name
        self.pick = min if name == "min" else max
        self.fn = _field(fn)

    def initial(self) -> Any:
        return None

    def add(self, acc: Any, value: Any) -> Any:
        return value if acc is None else self.pick(acc, value)

    def merge(self, a: Any, b: Any) -> Any:
        return b if a is None else a if b is None else self.pick(a, b)

    def keep(self, value: Any) -> Any:
        return value if self.fn is None else self.fn(value)


class Mean(Aggregation):
    """Stored as ``[sum, count]``; the result is their quotient."""

    name = "mean"

    def __init__(self, fn: Callable[[Any], Any] | str | None = None) -> None:
        self.fn = _field(fn)

    def initial(self) -> Any:
        return [0, 0]

    def add(self, acc: Any, value: Any) -> Any:
        return [acc[0] + value, acc[1] + 1]

    def merge(self, a: Any, b: Any) -> Any:
        return [a[0] + b[0], a[1] + b[1]]

    def result(self, acc: Any) -> Any:
        return acc[0] / acc[1] if acc[1] else None

    def keep(self, value: Any) -> Any:
        return value if self.fn is None else self.fn(value)


class Reduce(Aggregation):
    """``fn(aggregate, value)``; the first value starts it (so values must not be ``None``);
    two sessions merge as ``fn(a, b)``."""

    name = "reduce"

    def __init__(self, fn: Callable[[Any, Any], Any]) -> None:
        self.fn = fn

    def initial(self) -> Any:
        return None

    def add(self, acc: Any, value: Any) -> Any:
        return value if acc is None else self.fn(acc, value)

    def merge(self, a: Any, b: Any) -> Any:
        return b if a is None else a if b is None else self.fn(a, b)


class Fold(Aggregation):
    """``aggregate(initial, fn, merge=None)``: sessions need ``merge`` (two partial aggregates
    cannot be combined otherwise)."""

    name = "aggregate"

    def __init__(self, initial: Any, fn: Callable[[Any, Any], Any], merge: Callable[[Any, Any], Any] | None) -> None:
        self.make = initial if callable(initial) else (lambda: copy.deepcopy(initial))
        self.fn = fn
        self.merge_fn = merge

    def initial(self) -> Any:
        return self.make()

    def add(self, acc: Any, value: Any) -> Any:
        return self.fn(acc, value)

    def merge(self, a: Any, b: Any) -> Any:
        assert self.merge_fn is not None
        return self.merge_fn(a, b)

    def mergeable(self) -> bool:
        return self.merge_fn is not None


class Collect(Aggregation):
    """Every value (or ``fn(value)``) of the window, in arrival order."""

    name = "collect"

    def __init__(self, fn: Callable[[Any], Any] | str | None = None) -> None:
        self.fn = _field(fn)

    def initial(self) -> Any:
        return []

    def add(self, acc: Any, value: Any) -> Any:
        acc.append(value)
        return acc

    def merge(self, a: Any, b: Any) -> Any:
        return [*a, *b]

    def keep(self, value: Any) -> Any:
        return value if self.fn is None else self.fn(value)


def late_records(
    table: WindowedTable, send: Emit | None, what: str, closed: str
) -> Callable[[Any, Any, int, WindowPartition], None]:
    """The late-record policy of a window store: count every late record, and send it to the
    ``on_late`` topic (``send``) or drop it with one warning (``what``: whose records, for the log;
    ``closed``: what had closed)."""
    warned = False

    def late(key: Any, value: Any, t: int, part: WindowPartition) -> None:
        nonlocal warned
        table.late_records += 1
        if send is not None:
            send(key, value)
        elif not warned:
            warned = True
            log.warning(
                "%s: a record of key %r at %d ms came after %s closed (watermark %d ms); late records are "
                "dropped and counted (pass on_late=topic to keep them)",
                what, key, t, closed, part.watermark_ms,
            )

    return late


# -- the declarative builder -----------------------------------------------------------------
class WindowDefinition:
    """``stream.tumbling_window(...)`` and friends: pick an aggregation next."""

    def __init__(
        self,
        node: Dataflow,
        spec: WindowSpec,
        *,
        name: str | None,
        timestamp: Callable[[Any], int] | None,
        on_late: Topic | str | None,
        idle_ms: int | None | object,
    ) -> None:
        self.node = node
        self.spec = spec
        self.name = name
        self.timestamp = timestamp
        self.on_late = node.app._as_topic(on_late) if on_late is not None else None
        self.idle_ms = idle_ms

    def count(self) -> WindowedAggregate:
        return WindowedAggregate(self, Count())

    def sum(self, fn: Callable[[Any], Any] | str | None = None) -> WindowedAggregate:
        return WindowedAggregate(self, Sum(fn))

    def min(self, fn: Callable[[Any], Any] | str | None = None) -> WindowedAggregate:
        return WindowedAggregate(self, Extreme("min", fn))

    def max(self, fn: Callable[[Any], Any] | str | None = None) -> WindowedAggregate:
        return WindowedAggregate(self, Extreme("max", fn))

    def mean(self, fn: Callable[[Any], Any] | str | None = None) -> WindowedAggregate:
        return WindowedAggregate(self, Mean(fn))

    def reduce(self, fn: Callable[[Any, Any], Any]) -> WindowedAggregate:
        return WindowedAggregate(self, Reduce(fn))

    def aggregate(
        self, initial: Any, fn: Callable[[Any, Any], Any], *, merge: Callable[[Any, Any], Any] | None = None
    ) -> WindowedAggregate:
        """Fold with ``fn(aggregate, value)`` from ``initial`` (a value or a callable making one);
        session windows also need ``merge(a, b)``."""
        return WindowedAggregate(self, Fold(initial, fn, merge))

    def collect(self, fn: Callable[[Any], Any] | str | None = None) -> WindowedAggregate:
        return WindowedAggregate(self, Collect(fn))


class WindowedAggregate:
    """An aggregation over windows; ``.final()`` or ``.current()`` makes it a dataflow again."""

    def __init__(self, definition: WindowDefinition, aggregation: Aggregation) -> None:
        self.definition = definition
        self.aggregation = aggregation
        if isinstance(definition.spec, Session) and not aggregation.mergeable():
            raise ValueError(
                "session windows merge when a record bridges two sessions: aggregate(..., merge=fn) needs "
                "fn(a, b) combining two aggregates"
            )

    def final(self) -> Dataflow:
        """One result per window, when it closes (end + grace reached by the watermark)."""
        return self._attach("final")

    def current(self) -> Dataflow:
        """A result after every record, with the window's aggregate so far."""
        return self._attach("current")

    def _attach(self, mode: str) -> Dataflow:
        d = self.definition
        node = d.node
        topic = node._current_topic()
        spec = d.spec
        size = getattr(spec, "size_ms", None) or getattr(spec, "gap_ms", 0)
        name = d.name or f"{topic.name}-{spec.kind}-{size}-{self.aggregation.name}"
        table = node.app._add_table(WindowedTable(
            node.app, name, spec, key_serializer=topic.key_codec.serializer, key_type=topic.key_type,
        ))
        table.source_topic = topic.name
        idle_ms = d.idle_ms if d.idle_ms is not _APP_DEFAULT else node.app.window_idle_ms
        step = WindowStep(table, self.aggregation, mode, timestamp=d.timestamp, on_late=d.on_late,
                          idle_ms=idle_ms)  # type: ignore[arg-type]
        return node._add(step)


_APP_DEFAULT: Any = object()
"""``idle_ms`` not given: the app's ``window_idle_ms``."""


def definition(
    node: Dataflow,
    spec: WindowSpec,
    name: str | None,
    timestamp: Callable[[Any], int] | None,
    on_late: Topic | str | None,
    idle_ms: int | timedelta | None | object,
) -> WindowDefinition:
    if isinstance(idle_ms, timedelta):
        idle_ms = int(idle_ms.total_seconds() * 1000)
    return WindowDefinition(node, spec, name=name, timestamp=timestamp, on_late=on_late, idle_ms=idle_ms)


# -- the step --------------------------------------------------------------------------------
class WindowStep(Step):
    """Updates the windows of each record, closes what the watermark passed, emits results."""

    def __init__(
        self,
        table: WindowedTable,
        aggregation: Aggregation,
        mode: str,
        *,
        timestamp: Callable[[Any], int] | None,
        on_late: Topic | None,
        idle_ms: int | None,
    ) -> None:
        self.name = f"{table.spec.kind} window {aggregation.name} ({mode})"
        self.table = table
        self.aggregation = aggregation
        self.mode = mode
        self.timestamp = timestamp
        self.on_late = on_late
        self.idle_ms = idle_ms

    def compile(self, nxt: Emit, runtime: Runtime) -> Emit:  # noqa: C901 - one closure per window kind
        table, agg, spec = self.table, self.aggregation, self.table.spec
        final = self.mode == "final"
        grace = spec.grace_ms
        parts = table.parts
        encode_key = table.key_codec.encode
        decode_key = table.key_codec.decode
        get, add_close = table.get, table.add_close
        initial, add, merge, result, keep = agg.initial, agg.add, agg.merge, agg.result, agg.keep
        extract = self.timestamp
        get_source = current_source.get
        source_topic = table.source_topic
        assert source_topic is not None
        late_send = runtime.sender(self.on_late) if self.on_late is not None else None
        idle_ms = self.idle_ms

        set_source, reset_source = current_source.set, current_source.reset

        sink = direct_sink(nxt)
        # A chain ending here in .to(topic): results go straight to the topic, and a key stored
        # in the sink's own encoding goes out as it is stored (not decoded and encoded again).
        sink_send = sink.send_raw if sink is not None else None
        sink_encode_key = sink.key_codec.encode if sink is not None else None
        sink_encode_value = sink.encode_value if sink is not None else None
        raw_keys = sink is not None and sink.takes_keys_of(table.key_codec)

        def emit_at(start_ms: int, key: Any, value: Any, partition: int) -> None:
            """Pass a closed window's result on, stamped with the window start."""
            if sink_send is not None:
                sink_send(None if key is None else sink_encode_key(key), sink_encode_value(value), start_ms)  # type: ignore[misc]
                return
            # tuple.__new__ skips NamedTuple's Python-level __new__ (once per closed window).
            token = set_source(new_tuple(Record, (source_topic, partition, -1, start_ms, None, None, ())))
            try:
                nxt(key, value)
            finally:
                reset_source(token)

        late = late_records(table, late_send, f"window {table.name!r}", "its windows")

        # -- closing ------------------------------------------------------------------------
        lookup, decode_value = table.lookup, table.value_codec.decode

        plain_result = type(agg).result is Aggregation.result  # the aggregate is the result
        unpack_span = _SPAN.unpack

        def close_windows(part: WindowPartition, close_ms: int, entries: Iterable[tuple[int, bytes]]) -> None:
            """Close every window closing at ``close_ms``, in one call: closing is bursty (each
            user's window ends at once), and per window it was a third of a busy windowed
            count's time. A window key ends with its span (16 bytes): windows closing together
            share it, so it is decoded once per distinct span."""
            pending, born = part.pending, part.born_here
            pending_get = pending.get
            closed = 0
            last_span, start, end = b"", 0, 0
            try:
                for _, data_key in entries:
                    acc = pending_get(data_key, MISSING)  # a window closing soon after it opened
                    if acc is MISSING or acc is DELETED:
                        acc = lookup(part, data_key, decode_value)
                        if acc is MISSING:
                            continue
                    if data_key in born:
                        del pending[data_key]  # opened and closed between two commits: nothing to undo
                    else:
                        pending[data_key] = DELETED
                    closed += 1
                    if final:
                        span = data_key[-16:]
                        if span != last_span:
                            start, end = unpack_span(span)
                            last_span = span
                        value = {"start": start, "end": end, "value": acc if plain_result else result(acc)}
                        if raw_keys:
                            sink_send(data_key[5:-16], sink_encode_value(value), start)  # type: ignore[misc]
                        else:
                            emit_at(start, decode_key(data_key[5:-16]), value, part.partition)
            finally:
                table.closed_windows += closed

        def close_window(part: WindowPartition, close_ms: int, data_key: bytes) -> None:
            close_windows(part, close_ms, ((close_ms, data_key),))

        def close_sessions(part: WindowPartition, close_ms: int, data_key: bytes) -> None:
            sessions = get(part, data_key)
            if sessions is MISSING:
                return
            gap = spec.gap_ms  # type: ignore[attr-defined]
            watermark = part.watermark_ms
            keep_open = [s for s in sessions if s[1] + 1 + gap + grace > watermark]
            if len(keep_open) == len(sessions):
                return
            part.pending[data_key] = keep_open if keep_open else DELETED
            key = decode_key(split_key(data_key)[1]) if final else None
            for start, last, acc in sessions:
                if last + 1 + gap + grace <= watermark:
                    table.closed_windows += 1
                    if final:
                        emit_at(start, key, {"start": start, "end": last + 1, "value": result(acc)}, part.partition)

        def fold(entries: list[Any], low: int, high: int) -> Any:
            acc = initial()
            for ts, kept in entries:
                if low <= ts <= high:
                    acc = add(acc, kept)
            return acc

        def close_entries(part: WindowPartition, close_ms: int, data_key: bytes) -> None:
            entries = get(part, data_key)
            if entries is MISSING:
                return
            size = spec.size_ms  # type: ignore[attr-defined]
            if final:
                t = close_ms - 1 - grace
                if any(ts == t for ts, _ in entries):
                    table.closed_windows += 1
                    start = max(t - size + 1, 0)
                    emit_at(start, decode_key(split_key(data_key)[1]),
                            {"start": start, "end": t + 1, "value": result(fold(entries, t - size + 1, t))},
                            part.partition)
            remaining = [e for e in entries if e[0] + size + grace > close_ms]
            if len(remaining) != len(entries):
                part.pending[data_key] = remaining if remaining else DELETED

        closers = {KIND_WINDOW: close_window, KIND_SESSIONS: close_sessions, KIND_ENTRIES: close_entries}

        def close_one(part: WindowPartition, close_ms: int, data_key: bytes) -> None:
            closers[data_key[:1]](part, close_ms, data_key)

        # Closing what the watermark passed, and the idle close: shared with the faust-style
        # windowed tables (flowbus.state.window_tables).
        # Tumbling and hopping stores hold windows only: no dispatch on the key's kind.
        windows_only = isinstance(spec, Tumbling | Hopping)
        window_clock = WindowClock(table, close_window if windows_only else close_one, idle_ms=idle_ms,
                                   close_run=close_windows if windows_only else None)
        window_clock.start(runtime, lambda partition: [TopicPartition(source_topic, partition)])
        close_due, arm = window_clock.close_due, window_clock.arm
        rearm_ms = idle_ms if idle_ms is not None else NO_CLOSE_MS

        # -- per record ---------------------------------------------------------------------
        def locate(key: Any, value: Any) -> tuple[WindowPartition, bytes, int]:
            if key is None:
                raise NoKeyError(f"window {table.name!r}: the record has no key; windows are kept per key (group_by)")
            source = get_source()
            part = parts.get(source.partition) if source is not None else None
            if part is None or not part.ready:
                raise PartitionNotOwnedError(f"window {table.name!r} has no ready partition for {source}")
            if extract is not None:
                t = int(extract(value))
            else:
                t = source.timestamp_ms  # type: ignore[union-attr]
                if t < 0:
                    t = 0  # a record without a timestamp (pre-0.10 format) counts as time 0
            return part, encode_key(key), t  # type: ignore[return-value]

        clock_observe = window_clock.observe

        def observe(part: WindowPartition, t: int) -> None:
            clock_observe(part, t, runtime.dispatch_ms)

        emit_current = not final

        if isinstance(spec, Tumbling) and extract is None:
            # The common case, kept to plain arithmetic and dict operations per record.
            size = spec.size_ms
            span = _SPAN.pack
            prefixes: dict[Any, bytes] = {}
            counting = type(agg) is Count  # adds one per record: no calls to add() and keep()
            spans: dict[int, bytes] = {}
            """Encoded (start, end) of recent window starts: one struct.pack per window start."""

            def tumbling_step(key: Any, value: Any) -> None:
                prefix = prefixes.get(key)
                if prefix is None:
                    if key is None:
                        raise NoKeyError(f"window {table.name!r}: the record has no key; windows are kept per key")
                    prefix = key_prefix(KIND_WINDOW, encode_key(key))  # type: ignore[arg-type]
                    if len(prefixes) >= PREFIX_CACHE_KEYS_MAX:
                        prefixes.clear()
                    prefixes[key] = prefix
                source = get_source()
                part = parts.get(source.partition)  # type: ignore[union-attr]
                if part is None or not part.ready:
                    raise PartitionNotOwnedError(f"window {table.name!r} has no ready partition for {source}")
                t = source.timestamp_ms  # type: ignore[union-attr]
                if t < 0:
                    t = 0
                part.seen_ms = runtime.dispatch_ms
                if t > part.stream_time_ms:
                    part.stream_time_ms = t
                    part.time_dirty = True
                    if t > part.watermark_ms:
                        part.watermark_ms = t
                        if t >= part.next_close_ms:
                            close_due(part)
                start = t - t % size
                close_ms = start + size + grace
                if close_ms <= part.watermark_ms:
                    late(key, value, t, part)
                    return
                suffix = spans.get(start)
                if suffix is None:
                    if len(spans) >= SPAN_CACHE_MAX:
                        spans.clear()
                    suffix = spans[start] = span(start, start + size)
                data_key = prefix + suffix
                pending = part.pending
                acc = pending.get(data_key, MISSING)
                if acc is MISSING:
                    if start <= part.taken_time_ms:  # else no commit has seen this window: it is new
                        acc = lookup(part, data_key, decode_value)
                    if acc is MISSING:
                        acc = 0 if counting else initial()
                        bucket = part.new_index.get(close_ms)
                        if bucket is not None:
                            bucket[data_key] = None  # add_close, inlined: its close time is indexed
                        else:
                            add_close(part, close_ms, data_key)
                acc = pending[data_key] = acc + 1 if counting else add(acc, keep(value))
                if emit_current:
                    nxt(key, {"start": start, "end": start + size, "value": result(acc)})
                if not part.idle_armed or part.stream_time_ms > part.armed_stream_ms + rearm_ms:
                    arm(part)

            return tumbling_step

        if isinstance(spec, Tumbling | Hopping):
            windows_of = spec.windows
            single = isinstance(spec, Tumbling)

            def window_step(key: Any, value: Any) -> None:
                part, key_bytes, t = locate(key, value)
                observe(part, t)
                prefix = key_prefix(KIND_WINDOW, key_bytes)
                watermark = part.watermark_ms
                updated = False
                kept = keep(value)
                for window in windows_of(t) if not single else (windows_of(t)[0],):
                    close_ms = window.end + grace
                    if close_ms <= watermark:
                        continue
                    data_key = window_key(prefix, window.start, window.end)
                    acc = get(part, data_key)
                    if acc is MISSING:
                        acc = initial()
                        add_close(part, close_ms, data_key)
                    acc = add(acc, kept)
                    part.pending[data_key] = acc
                    updated = True
                    if emit_current:
                        nxt(key, {"start": window.start, "end": window.end, "value": result(acc)})
                if not updated:
                    late(key, value, t, part)
                elif not part.idle_armed or part.stream_time_ms > part.armed_stream_ms + rearm_ms:
                    arm(part)

            return window_step

        if isinstance(spec, Session):
            gap = spec.gap_ms

            def session_step(key: Any, value: Any) -> None:
                part, key_bytes, t = locate(key, value)
                observe(part, t)
                if t + 1 + gap + grace <= part.watermark_ms:
                    late(key, value, t, part)
                    return
                data_key = key_prefix(KIND_SESSIONS, key_bytes)
                sessions = get(part, data_key)
                if sessions is MISSING:
                    sessions = []
                start, last, acc = t, t, None
                others = []
                for session in sessions:
                    s_start, s_last, s_acc = session
                    if s_start - gap <= t <= s_last + gap:
                        start, last = min(start, s_start), max(last, s_last)
                        acc = s_acc if acc is None else merge(acc, s_acc)
                    else:
                        others.append(session)
                acc = add(initial() if acc is None else acc, keep(value))
                others.append([start, last, acc])
                others.sort(key=lambda s: s[0])
                part.pending[data_key] = others
                add_close(part, last + 1 + gap + grace, data_key)
                if emit_current:
                    nxt(key, {"start": start, "end": last + 1, "value": result(acc)})
                if not part.idle_armed or part.stream_time_ms > part.armed_stream_ms + rearm_ms:
                    arm(part)

            return session_step

        assert isinstance(spec, Sliding)
        size = spec.size_ms

        def sliding_step(key: Any, value: Any) -> None:
            part, key_bytes, t = locate(key, value)
            observe(part, t)
            watermark = part.watermark_ms
            expiry = t + size + grace
            if expiry <= watermark:
                late(key, value, t, part)
                return
            data_key = key_prefix(KIND_ENTRIES, key_bytes)
            entries = get(part, data_key)
            if entries is MISSING:
                entries = []
            entry = [t, keep(value)]
            if not entries or entries[-1][0] <= t:
                entries.append(entry)
            else:
                at = len(entries)
                while at > 0 and entries[at - 1][0] > t:
                    at -= 1
                entries.insert(at, entry)
            part.pending[data_key] = entries
            add_close(part, expiry, data_key)
            own_close = t + 1 + grace
            if own_close > watermark:
                if final:
                    add_close(part, own_close, data_key)
                else:
                    start = max(t - size + 1, 0)
                    nxt(key, {"start": start, "end": t + 1, "value": result(fold(entries, t - size + 1, t))})
            if not part.idle_armed or part.stream_time_ms > part.armed_stream_ms + rearm_ms:
                arm(part)

        return sliding_step
