"""Stateful dataflow steps, Quix Streams style, and keyed aggregations, Kafka Streams style.

``app.stream(topic).map(fn, stateful=True)`` (also ``filter`` and ``update``) calls
``fn(value, state)`` where ``state`` is a :class:`State`: a small per-key store (``get``,
``set``, ``delete``, ``exists``) for the record's key, kept in a table named after the stream
(``<topic>-state``) and changelogged like any table.

``count``, ``sum``, ``reduce`` and ``aggregate`` keep one value per record key in a table and
pass each new value on (key unchanged), as Kafka Streams' ``groupByKey().count().toStream()``
does; the table stays readable by name (``app.tables[name]``).

State is kept in the partition the record came from, keyed by the record's key, as in Quix
Streams and Kafka Streams: records must be keyed (``group_by`` re-keys and repartitions) and a key
always arrives on the same partition. A record without a key is an error that goes to the app's
error policy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flowbus.context import current_source
from flowbus.operators.steps import Emit, Runtime, Step, value_sink
from flowbus.state.errors import PartitionNotOwnedError
from flowbus.state.table import DELETED, MISSING, Table, TablePartition


ENCODED_KEYS_MAX = 100_000
"""String keys whose encoded bytes an aggregation step remembers (emptied when full)."""


def add_one(total: int, _value: Any) -> int:
    """``count()``'s fold; :class:`AggregateStep` adds one inline when given this function."""
    return total + 1


class NoKeyError(ValueError):
    """A stateful step got a record without a key (state is kept per key)."""


def _partition_getter(table: Table, what: str) -> Callable[[Any], tuple[TablePartition, bytes]]:
    """A function (key) -> (the current event's table partition, key bytes)."""
    parts = table.parts
    encode_key = table.key_codec.encode

    def locate(key: Any) -> tuple[TablePartition, bytes]:
        if key is None:
            raise NoKeyError(f"{what}: the record has no key; state is kept per key (re-key it with group_by)")
        source = current_source.get()
        part = parts.get(source.partition) if source is not None else None
        if part is None or not part.ready:
            raise PartitionNotOwnedError(f"{what}: table {table.name!r} has no ready partition for {source}")
        return part, encode_key(key)  # type: ignore[return-value]

    return locate


class State:
    """The state of one key in a stateful step: named values, persisted with the table."""

    __slots__ = ("_changed", "_values")

    def __init__(self, values: dict[str, Any] | None) -> None:
        self._values = values
        self._changed = False

    def get(self, name: str, default: Any = None) -> Any:
        values = self._values
        return default if values is None else values.get(name, default)

    def set(self, name: str, value: Any) -> None:
        if self._values is None:
            self._values = {}
        self._values[name] = value
        self._changed = True

    def delete(self, name: str) -> None:
        if self._values is not None and name in self._values:
            del self._values[name]
            self._changed = True

    def exists(self, name: str) -> bool:
        return self._values is not None and name in self._values


class StatefulStep(Step):
    """``map``/``filter``/``update`` with ``fn(value, state)``."""

    reads_record = False  # the partition only

    def __init__(self, kind: str, fn: Callable[[Any, State], Any], table: Table) -> None:
        self.name = f"stateful {kind}"
        self.kind = kind
        self.fn = fn
        self.table = table

    def compile(self, nxt: Emit, runtime: Runtime) -> Emit:
        fn, kind, table = self.fn, self.kind, self.table
        locate = _partition_getter(table, f"stateful {kind} on {table.name!r}")
        decode = table.value_codec.decode
        lookup = Table.lookup

        def run(key: Any, value: Any) -> Any:
            part, key_bytes = locate(key)
            found = lookup(part, key_bytes, decode)
            state = State(None if found is MISSING else dict(found))
            result = fn(value, state)
            if state._changed:
                part.pending[key_bytes] = state._values if state._values else DELETED
            return result

        if kind == "map":
            def stateful_map(key: Any, value: Any) -> None:
                nxt(key, run(key, value))

            return stateful_map
        if kind == "filter":
            def stateful_filter(key: Any, value: Any) -> None:
                if run(key, value):
                    nxt(key, value)

            return stateful_filter

        def stateful_update(key: Any, value: Any) -> None:
            run(key, value)
            nxt(key, value)

        return stateful_update


class AggregateStep(Step):
    """Folds each record's value into its key's aggregate and passes the new aggregate on."""

    reads_record = False  # the partition only

    def __init__(self, kind: str, table: Table, initial: Callable[[], Any], fn: Callable[[Any, Any], Any]) -> None:
        self.name = kind
        self.table = table
        self.initial = initial
        self.fn = fn

    def compile(self, nxt: Emit, runtime: Runtime) -> Emit:
        initial, fn, table = self.initial, self.fn, self.table
        locate = _partition_getter(table, f"{self.name} into {table.name!r}")
        decode = table.value_codec.decode
        lookup = Table.lookup
        parts = table.parts
        get_source = current_source.get
        # Key bytes of recent keys: a key is encoded once, not once per record (emptied when full).
        encoded: dict[Any, bytes] = {}
        counting = fn is add_one  # count(): adds one, no call of initial() and fn() per record
        to_value = value_sink(nxt)  # an update() ending the chain: called with the aggregate directly

        # The partition of the last source looked up: a run of one partition shares one source.
        last_source: Any = MISSING
        last_part: TablePartition | None = None

        def aggregate_step(key: Any, value: Any) -> None:
            nonlocal last_source, last_part
            # locate(), inlined for the common case: a key seen before, its partition ready.
            key_bytes = encoded.get(key) if type(key) is str else None
            part = None
            if key_bytes is not None:
                source = get_source()
                if source is last_source:
                    part = last_part  # ready: nothing changes a partition within a run
                elif source is not None:
                    part = parts.get(source.partition)
                    if part is not None and part.ready:
                        last_source, last_part = source, part
            if part is None or not part.ready:
                part, key_bytes = locate(key)
                if type(key) is str:
                    if len(encoded) >= ENCODED_KEYS_MAX:
                        encoded.clear()
                    encoded[key] = key_bytes
            pending = part.pending
            current = pending.get(key_bytes, MISSING)
            if current is MISSING or current is DELETED:
                current = lookup(part, key_bytes, decode)
            if counting:
                result = 1 if current is MISSING else current + 1
            else:
                result = fn(initial() if current is MISSING else current, value)
            pending[key_bytes] = result
            if to_value is None:
                nxt(key, result)
            else:
                to_value(result)

        return aggregate_step
