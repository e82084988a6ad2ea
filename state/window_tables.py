"""Windowed tables, faust style: ``app.Table("views", default=int).tumbling(10.0, expires=5.0)``.

:meth:`Table.tumbling <flowbus.state.table.Table.tumbling>` and :meth:`~flowbus.state.table.Table.hopping`
turn a declared table into a :class:`WindowTable` (a :class:`~flowbus.state.windowed.WindowedTable`
that commits, changelogs and restores like the dataflow windows) and return a
:class:`WindowWrapper`, the object agents use::

    views = app.Table("views", default=int, on_window_close=report).tumbling(10.0, expires=5.0)

    @app.agent(clicks)
    async def count(stream):
        async for click in stream:
            views[click["page"]] += 1        # every window containing the event's time
            views[click["page"]].current()   # the value of the window of the event's time

Units are faust's: sizes, ``expires`` and ``delta`` in seconds (a number or a ``timedelta``), and
``on_window_close`` receives ``key = (key, (start_s, end_s))`` with the window ``start_s <= t <
end_s`` in seconds since the epoch (floats).

Time: ``table[k]`` is a :class:`WindowSet` (all the windows of ``k``); an update (``+=``, ``-=``,
every in-place operator, ``table[k] = v``, ``del table[k]``) applies to every window containing
the wrapper's *relative time*:

* :meth:`WindowWrapper.relative_to_stream` (the default here): the event time of the event being
  processed, its record timestamp. faust defaults to the wall clock, which puts a backlog or a
  replay into the windows of the moment it is processed (faust issue #250); flowbus does not.
* :meth:`WindowWrapper.relative_to_now`: the wall clock of the app clock.
* :meth:`WindowWrapper.relative_to_field`: a time in the event's value (seconds, or a ``datetime``).

Outside an event (a timer, ``stream.take`` lists), event time is the partition's stream time: the
largest event time it has seen.

Closing: the same machinery as the dataflow windows (:class:`~flowbus.state.windowed.WindowClock`).
A window closes when the partition's watermark reaches its end + ``expires``: the watermark follows
the largest time the table's updates used, and, when the partition saw nothing for
``App(window_idle_ms=...)`` and its sources are caught up, the wall clock; never the wall clock
alone for event-time windows. A closing window is passed to ``on_window_close`` once, deleted, and
tombstoned in the changelog at the next commit (with the input offsets, in one transaction under
exactly-once). An update whose windows have all closed is late: counted in
:attr:`WindowedTable.late_records <flowbus.state.windowed.WindowedTable.late_records>`, ignored,
and logged once.
"""

from __future__ import annotations

import inspect
import logging
import operator
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, cast

from flowbus.app_errors import ConfigurationError
from flowbus.context import current_source
from flowbus.state.errors import StateError
from flowbus.state.table import DELETED, MISSING, Table
from flowbus.state.windowed import WindowClock, WindowedTable, WindowPartition
from flowbus.state.windows import (
    KIND_WINDOW,
    Hopping,
    Tumbling,
    WindowRange,
    as_ms,
    key_prefix,
    split_key,
    window_key,
)
from flowbus.transports.base import Record

if TYPE_CHECKING:
    from flowbus.operators.steps import Runtime
    from flowbus.transports.base import TopicPartition

log = logging.getLogger("flowbus.windows")

STREAM, NOW, FIELD = "stream", "now", "field"
"""What a wrapper's relative time is: event time, the wall clock, or a field of the value."""


class NoEventTimeError(StateError):
    """A windowed table was updated relative to the stream (or a field) where no event time is
    known: outside any event, on a partition that has not seen an event yet."""


class _TableRuntime(Protocol):
    """What a windowed table asks of the worker, besides the dataflow runtime."""

    def table_sources(self, table: Table, partition: int) -> list[TopicPartition]: ...


class WindowTable(WindowedTable):
    """The store of a faust-style windowed table: windows of one user key per store key, a value
    (``default()`` to start with) per window. Made by :func:`windowed`; agents use it through a
    :class:`WindowWrapper`."""

    def __init__(self, table: Table, spec: Tumbling | Hopping) -> None:
        super().__init__(table.app, table.name, spec, partitions=table.declared_partitions)
        self.spec: Tumbling | Hopping = spec
        self.default = table.default
        self.key_type, self.value_type = table.key_type, table.value_type
        self.key_codec, self.value_codec = table.key_codec, table.value_codec
        self.on_window_close = table.on_window_close
        self.warned_late = False
        self.clock = WindowClock(self, self._close, idle_ms=self.app.window_idle_ms)

    def attach(self, runtime: Runtime) -> None:
        """Close windows on the worker's clock: its commits, and the idle close of each partition
        once restored (caught up means: every source partition feeding the table's partition)."""
        self.clock.idle_ms = self.app.window_idle_ms
        sources = cast(_TableRuntime, runtime).table_sources
        self.clock.start(runtime, lambda partition: sources(self, partition))

    # -- closing ------------------------------------------------------------------------------
    def _close(self, part: WindowPartition, close_ms: int, data_key: bytes) -> None:
        """One due close-index entry: delete the window and pass it to ``on_window_close``."""
        value = self.get(part, data_key)
        if value is MISSING:
            return  # deleted by the agent, or closed already: nothing to report
        part.pending[data_key] = DELETED
        self.closed_windows += 1
        callback = self.on_window_close
        if callback is None:
            return
        _, key_bytes, window = split_key(data_key)
        assert window is not None
        key = (self.key_codec.decode(key_bytes), (window.start / 1000, window.end / 1000))
        try:
            callback(key, value)
        except Exception:  # one failing callback must not stop the other windows closing
            log.exception("table %r: on_window_close(%r, %r) failed; the window is closed all the same",
                          self.name, key, value)

    # -- one key's windows --------------------------------------------------------------------
    def update(self, part: WindowPartition, key: Any, key_bytes: bytes, t: int, fn: Callable[[Any], Any]) -> None:
        """Set every open window of ``key`` containing ``t`` (ms) to ``fn(its value)`` (the value is
        :data:`~flowbus.state.table.MISSING` for a new window; ``fn`` returns ``DELETED`` to
        delete). ``t`` moves the partition's clock first, which may close windows."""
        self.clock.observe(part, t, self.app.clock.monotonic_ms())
        prefix = key_prefix(KIND_WINDOW, key_bytes)
        watermark, grace = part.watermark_ms, self.spec.grace_ms
        writes = []
        for window in self.spec.windows(t):
            close_ms = window.end + grace
            if close_ms > watermark:
                data_key = window_key(prefix, window.start, window.end)
                current = self.get(part, data_key)
                writes.append((data_key, close_ms, current, fn(current)))
        if not writes:
            self.late(key, t, part)
            return
        # Written once every new value is known, so a failing fn (a KeyError) writes nothing.
        for data_key, close_ms, current, value in writes:
            if value is DELETED:
                if current is not MISSING:
                    part.pending[data_key] = DELETED
                continue
            if current is MISSING:
                self.add_close(part, close_ms, data_key)
            part.pending[data_key] = value
        self.clock.arm(part)

    def late(self, key: Any, t: int, part: WindowPartition) -> None:
        self.late_records += 1
        if not self.warned_late:
            self.warned_late = True
            log.warning(
                "table %r: an update of key %r at %d ms came after its windows closed (watermark %d ms); "
                "late updates are ignored and counted in late_records (a larger expires= keeps windows open longer)",
                self.name, key, t, part.watermark_ms,
            )

    def window_at(self, t: int) -> WindowRange:
        """The newest window containing ``t`` (ms): faust's ``current`` window."""
        return self.spec.windows(t)[-1]

    def value_at(self, part: WindowPartition, key_bytes: bytes, t: int | None) -> Any:
        """The value of ``key``'s window containing ``t``, or ``MISSING`` (none, or closed)."""
        if t is None or t < 0:
            return MISSING
        window = self.window_at(t)
        return self.get(part, window_key(key_prefix(KIND_WINDOW, key_bytes), window.start, window.end))

    def initial(self, key: Any) -> Any:
        if self.default is None:
            raise KeyError(key)
        return self.default()


def windowed(table: Table, spec: Tumbling | Hopping) -> WindowWrapper:
    """Replace the app's declaration of ``table`` with a :class:`WindowTable` of ``spec``.

    Raises:
        ConfigurationError: the table is global, windowed already, or not the app's declaration;
            or its ``on_window_close`` is a coroutine function.
    """
    app = table.app
    if table.global_table or isinstance(table, WindowedTable):
        raise ConfigurationError(f"table {table.name!r}: only a plain app.Table(...) can be windowed")
    if app.tables.get(table.name) is not table:
        raise ConfigurationError(
            f"table {table.name!r} is not the app's declaration of that name (windowed already?): call "
            f".tumbling() or .hopping() once, on what app.Table(...) returned"
        )
    if inspect.iscoroutinefunction(table.on_window_close):
        raise ConfigurationError(
            f"table {table.name!r}: on_window_close must be a plain function, not a coroutine: it runs while "
            f"windows close, inside event processing and its commit; send from it with topic.send_soon(...)"
        )
    store = WindowTable(table, spec)
    app.tables[table.name] = store
    return WindowWrapper(store)


# -- what agents use -------------------------------------------------------------------------
def _seconds_to_ms(value: Any) -> int:
    """An event time from a field: seconds since the epoch (faust's unit), a ``datetime``, or an
    ISO-8601 string."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"a window time field must be seconds, a datetime or an ISO-8601 string, not {value!r}")
    return round(value * 1000)


class WindowWrapper:
    """A windowed table as agents see it (faust's ``WindowWrapper``): ``table[k]`` is a
    :class:`WindowSet`, and updates go to every window containing the relative time.

    ``relative_to_*`` return a new wrapper over the same table (as in faust), so several views of
    one table may coexist; the one :meth:`~flowbus.state.table.Table.tumbling` returns is
    relative to the stream.
    """

    def __init__(self, table: WindowTable, relative_to: str = STREAM, field: Callable[[Any], Any] | None = None) -> None:
        self.table = table
        self.relative_to = relative_to
        self.field = field
        self._decoded: tuple[Record | None, Any] = (None, None)

    def __repr__(self) -> str:
        return f"<WindowWrapper {self.table.name!r} {self.table.spec.describe()} relative to {self.relative_to}>"

    @property
    def name(self) -> str:
        return self.table.name

    # -- time ---------------------------------------------------------------------------------
    def relative_to_stream(self) -> WindowWrapper:
        """Windows of the event time of the event being processed (its record timestamp): the
        default. faust's default is the wall clock (``relative_to_now``), which counts a replayed
        or delayed backlog in the windows of when it is processed (faust issue #250)."""
        return WindowWrapper(self.table, STREAM)

    def relative_to_now(self) -> WindowWrapper:
        """Windows of the wall clock (the app clock) when the update runs: processing time."""
        return WindowWrapper(self.table, NOW)

    def relative_to_field(self, field: str | Callable[[Any], Any]) -> WindowWrapper:
        """Windows of a time in the event's value: ``field`` is a field name (a dict key or an
        attribute) or a function of the value, giving seconds since the epoch, a ``datetime`` or
        an ISO-8601 string."""
        if isinstance(field, str):
            name = field

            def get(value: Any) -> Any:
                return value[name] if isinstance(value, dict) else getattr(value, name)

            return WindowWrapper(self.table, FIELD, get)
        if not callable(field):
            raise TypeError(f"relative_to_field takes a field name or a function, not {field!r}")
        return WindowWrapper(self.table, FIELD, field)

    def event_time(self, part: WindowPartition) -> int | None:
        """The current event's timestamp (ms), else the partition's stream time, else ``None``."""
        source = current_source.get()
        if type(source) is Record:
            return max(source.timestamp_ms, 0)  # no timestamp (pre-0.10 records) counts as time 0
        return part.stream_time_ms if part.stream_time_ms >= 0 else None

    def time(self, part: WindowPartition) -> int | None:
        """The wrapper's relative time (ms) for an event of ``part``; ``None`` when unknown."""
        if self.relative_to == NOW:
            return self.table.app.clock.now_ms()
        if self.relative_to == FIELD:
            source = current_source.get()
            if type(source) is Record:
                assert self.field is not None
                return max(_seconds_to_ms(self.field(self._value_of(source))), 0)
        return self.event_time(part)

    def _value_of(self, record: Record) -> Any:
        """The decoded value of the record being processed (decoded once per record)."""
        seen, value = self._decoded
        if seen is not record:
            topic = self.table.app.topics.get(record.topic)
            if topic is None:
                raise NoEventTimeError(f"table {self.name!r}: relative_to_field on an event of an undeclared topic {record.topic!r}")
            value = topic.value_codec.decode(record.value)
            self._decoded = (record, value)
        return value

    # -- one key ------------------------------------------------------------------------------
    def _read(self, key: Any) -> tuple[WindowPartition, bytes]:
        table = self.table
        key_bytes, partition = table.locate(key)
        return cast(WindowPartition, table._part_for_read(key, partition)), key_bytes

    def _update(self, key: Any, fn: Callable[[Any], Any]) -> None:
        table = self.table
        table._check_writable()
        key_bytes, partition = table.locate(key)
        part = cast(WindowPartition, table._part_for_write(key, partition))
        t = self.time(part)
        if t is None:
            raise NoEventTimeError(
                f"table {self.name!r}: no event time for key {key!r}: update a windowed table while processing "
                f"an event, or use .relative_to_now()"
            )
        table.update(part, key, key_bytes, t, fn)

    def __getitem__(self, key: Any) -> WindowSet:
        return WindowSet(self, key)

    def __setitem__(self, key: Any, value: Any) -> None:
        if isinstance(value, WindowSet):
            return  # ``table[k] += 1``: the WindowSet applied it already
        if value is None:
            raise ValueError(f"table {self.name!r}: None is not a value (it would be a tombstone); use del")
        self._update(key, lambda current: value)

    def __delitem__(self, key: Any) -> None:
        """Delete ``key`` from every window containing the relative time (no ``on_window_close``
        for a deleted window)."""
        self._update(key, lambda current: DELETED)

    def __contains__(self, key: Any) -> bool:
        """Whether ``key`` has a value in the window of the relative time."""
        part, key_bytes = self._read(key)
        return self.table.value_at(part, key_bytes, self.time(part)) is not MISSING

    # -- every key (faust's views) ------------------------------------------------------------
    def items(self) -> WindowedView:
        """(key, value) of every key with a value in the window of the relative time (per
        partition owned here); ``.now()``, ``.current()`` and ``.delta(s)`` pick another window."""
        return WindowedView(self, "items")

    def keys(self) -> WindowedView:
        return WindowedView(self, "keys")

    def values(self) -> WindowedView:
        return WindowedView(self, "values")

    def __iter__(self) -> Iterator[Any]:
        return iter(self.keys())

    def _items_at(self, time_of: Callable[[WindowPartition], int | None]) -> Iterator[tuple[Any, Any]]:
        table = self.table
        decode_key = table.key_codec.decode
        for partition in sorted(table.parts):
            part = cast(WindowPartition, table.parts[partition])
            if not part.ready:
                continue
            t = time_of(part)
            if t is None or t < 0:
                continue
            target = table.window_at(t)
            for data_key, value in table._partition_items(part):
                kind, key_bytes, window = split_key(data_key)
                if kind == KIND_WINDOW and window == target:
                    yield decode_key(key_bytes), value


class WindowedView:
    """``wrapper.items()`` / ``keys()`` / ``values()``: iterating uses the wrapper's relative
    time; :meth:`now`, :meth:`current` and :meth:`delta` choose the window as their
    :class:`WindowSet` namesakes do."""

    def __init__(self, wrapper: WindowWrapper, what: str) -> None:
        self.wrapper = wrapper
        self.what = what

    def _pick(self, pairs: Iterator[tuple[Any, Any]]) -> Iterator[Any]:
        if self.what == "items":
            return pairs
        index = 0 if self.what == "keys" else 1
        return (pair[index] for pair in pairs)

    def __iter__(self) -> Iterator[Any]:
        return self._pick(self.wrapper._items_at(self.wrapper.time))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def now(self) -> Iterator[Any]:
        clock = self.wrapper.table.app.clock
        return self._pick(self.wrapper._items_at(lambda part: clock.now_ms()))

    def current(self) -> Iterator[Any]:
        return self._pick(self.wrapper._items_at(self.wrapper.event_time))

    def delta(self, d: float | timedelta) -> Iterator[Any]:
        d_ms = as_ms(d, "delta", seconds=True)
        event_time = self.wrapper.event_time

        def time_of(part: WindowPartition) -> int | None:
            t = event_time(part)
            return None if t is None else t - d_ms

        return self._pick(self.wrapper._items_at(time_of))


def _inplace(op: Callable[[Any, Any], Any]) -> Callable[[WindowSet, Any], WindowSet]:
    def apply(self: WindowSet, other: Any) -> WindowSet:
        return self.apply(op, other)

    apply.__doc__ = f"Apply ``{op.__name__}`` with the operand to every window containing the relative time."
    return apply


class WindowSet:
    """The windows of one key (faust's ``WindowSet``): in-place operators update every window
    containing the wrapper's relative time; :meth:`value`, :meth:`current`, :meth:`now` and
    :meth:`delta` read one window (``default()`` when it has no value, or ``KeyError`` without a
    default). For hopping windows the window read is the newest one containing the time."""

    __slots__ = ("key", "wrapper")

    def __init__(self, wrapper: WindowWrapper, key: Any) -> None:
        self.wrapper = wrapper
        self.key = key

    def __repr__(self) -> str:
        return f"<WindowSet {self.wrapper.name!r}[{self.key!r}]>"

    def apply(self, op: Callable[[Any, Any], Any], value: Any) -> WindowSet:
        """``window = op(window, value)`` for every open window containing the relative time
        (a new window starts at ``default()``)."""
        table, key = self.wrapper.table, self.key

        def fn(current: Any) -> Any:
            return op(table.initial(key) if current is MISSING else current, value)

        self.wrapper._update(key, fn)
        return self

    __iadd__ = _inplace(operator.add)
    __isub__ = _inplace(operator.sub)
    __imul__ = _inplace(operator.mul)
    __itruediv__ = _inplace(operator.truediv)
    __ifloordiv__ = _inplace(operator.floordiv)
    __imod__ = _inplace(operator.mod)
    __ipow__ = _inplace(operator.pow)
    __ilshift__ = _inplace(operator.lshift)
    __irshift__ = _inplace(operator.rshift)
    __iand__ = _inplace(operator.and_)
    __ixor__ = _inplace(operator.xor)
    __ior__ = _inplace(operator.or_)

    def _at(self, time_of: Callable[[WindowPartition], int | None]) -> Any:
        wrapper = self.wrapper
        part, key_bytes = wrapper._read(self.key)
        value = wrapper.table.value_at(part, key_bytes, time_of(part))
        return wrapper.table.initial(self.key) if value is MISSING else value

    def value(self) -> Any:
        """The window of the wrapper's relative time (stream, now or field)."""
        return self._at(self.wrapper.time)

    def current(self) -> Any:
        """The window of the current event's time (outside an event: the partition's stream time)."""
        return self._at(self.wrapper.event_time)

    def now(self) -> Any:
        """The window of the wall clock now (the app clock)."""
        clock = self.wrapper.table.app.clock
        return self._at(lambda part: clock.now_ms())

    def delta(self, d: float | timedelta) -> Any:
        """The window of the current event's time minus ``d`` seconds (or a ``timedelta``); a
        window that closed since is gone (``expires`` keeps windows longer)."""
        d_ms = as_ms(d, "delta", seconds=True)
        event_time = self.wrapper.event_time

        def time_of(part: WindowPartition) -> int | None:
            t = event_time(part)
            return None if t is None else t - d_ms

        return self._at(time_of)

    def __getitem__(self, window: tuple[float, float]) -> Any:
        """The value of one window, ``(start_s, end_s)`` in seconds as ``on_window_close`` gives it."""
        start_s, end_s = window
        wrapper = self.wrapper
        part, key_bytes = wrapper._read(self.key)
        data_key = window_key(key_prefix(KIND_WINDOW, key_bytes), round(start_s * 1000), round(end_s * 1000))
        value = wrapper.table.get(part, data_key)
        return wrapper.table.initial(self.key) if value is MISSING else value

    def _not_a_mapping(self, *args: Any) -> Any:
        raise TypeError(
            f"a WindowSet holds the windows of one key ({self.key!r}): read one window with .value(), "
            f".current(), .now() or .delta(s), or iterate the table's .items()"
        )

    keys = items = values = _not_a_mapping


__all__ = ["NoEventTimeError", "WindowSet", "WindowTable", "WindowWrapper", "WindowedView", "windowed"]
