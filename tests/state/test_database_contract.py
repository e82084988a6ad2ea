"""The PartitionDatabase contract, checked against both backends with the same tests.

An app must behave the same on RocksDB and in memory: same byte order, same atomicity, same
errors. The property test at the end applies random operations to both backends and to a plain
dict, and compares every read.
"""

from __future__ import annotations

import gc
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowbus.app_errors import ConfigurationError
from flowbus.state import (
    Backend,
    MemoryBudget,
    PartitionDatabase,
    UnknownBackendError,
    make_backend,
)
from flowbus.state.base import FORMAT_KEY, FORMAT_VALUE, META_STORE, Changes, prefix_end
from flowbus.state.budget import MIB
from flowbus.state.errors import StateError, StoreClosedError

BACKEND_NAMES = ["rocksdb", "memory"]
# Keys around the edges of unsigned byte order: empty, 0x00, 0x7f/0x80 (signed-order traps), 0xff runs.
EDGE_KEYS = [
    b"", b"\x00", b"\x00\x00", b"\x01", b"a", b"a\x00", b"a\xff", b"ab", b"\x7f", b"\x80",
    b"\xfe\xff", b"\xff", b"\xff\x00", b"\xff\xff", b"\xff\xff\xff",
]  # fmt: skip


def _budget() -> MemoryBudget:
    return MemoryBudget(cache_bytes=4 * MIB, write_buffer_bytes=4 * MIB)


@pytest.fixture(params=BACKEND_NAMES)
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    backend = make_backend(request.param, _budget())
    yield backend
    backend.close()


@pytest.fixture
def db(backend: Backend, tmp_path: Path) -> Iterator[PartitionDatabase]:
    db = backend.open(tmp_path / "db", ["a", "b"])
    yield db
    db.close()


def _fill(db: PartitionDatabase, keys: list[bytes]) -> None:
    db.write({"a": {key: b"v" + key for key in keys}})


# -- reads and writes ---------------------------------------------------------------------------


def test_get_write_and_delete_through_none(db: PartitionDatabase) -> None:
    assert db.get("a", b"k") is None
    db.write({"a": {b"k": b"1", b"gone": b"2"}})
    assert db.get("a", b"k") == b"1"
    assert db.get("b", b"k") is None  # stores are separate key spaces
    db.write({"a": {b"k": b"3", b"gone": None, b"never-there": None}})
    assert db.get("a", b"k") == b"3"
    assert db.get("a", b"gone") is None
    db.write({"a": {b"": b"empty key", b"empty value": b""}})
    assert db.get("a", b"") == b"empty key"
    assert db.get("a", b"empty value") == b""


def test_stores_exclude_the_metadata_store(db: PartitionDatabase) -> None:
    assert db.stores() == ["a", "b"]
    assert db.get_meta(FORMAT_KEY) == FORMAT_VALUE
    db.write({}, {b"offset": b"\x00\x07"})
    assert db.get_meta(b"offset") == b"\x00\x07"
    db.write({}, {b"offset": None})
    assert db.get_meta(b"offset") is None


def test_write_across_stores_and_meta_is_atomic(db: PartitionDatabase) -> None:
    db.write({"a": {b"x": b"1"}, "b": {b"y": b"2"}}, {b"offset": b"10"})
    assert (db.get("a", b"x"), db.get("b", b"y"), db.get_meta(b"offset")) == (b"1", b"2", b"10")

    with pytest.raises(KeyError, match="nope"):
        db.write({"a": {b"x": b"changed"}, "nope": {b"k": b"v"}}, {b"offset": b"11"})
    with pytest.raises(TypeError):
        db.write({"a": {b"x": b"changed"}, "b": {b"y": "not bytes"}}, {b"offset": b"11"})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        db.write({"a": {b"x": b"changed"}}, {"offset": b"11"})  # type: ignore[dict-item]
    # Nothing of a rejected write is visible.
    assert (db.get("a", b"x"), db.get("b", b"y"), db.get_meta(b"offset")) == (b"1", b"2", b"10")


def test_unknown_and_reserved_stores(backend: Backend, db: PartitionDatabase, tmp_path: Path) -> None:
    with pytest.raises(KeyError):
        db.get("nope", b"k")
    with pytest.raises(KeyError):
        db.items("nope")
    with pytest.raises(KeyError):
        db.write({META_STORE: {b"k": b"v"}})  # metadata goes through meta=
    for reserved in (META_STORE, "default", ""):
        with pytest.raises(ValueError, match="reserved"):
            backend.open(tmp_path / f"other{reserved}", [reserved])


def test_bulk_writes_read_like_any_other(db: PartitionDatabase) -> None:
    db.write({"a": {b"k": b"bulk"}}, {b"offset": b"1"}, bulk=True)
    db.write({"a": {b"j": b"plain"}}, {b"offset": b"2"})
    assert [k for k, _ in db.items("a")] == [b"j", b"k"]
    assert db.get_meta(b"offset") == b"2"


# -- ranges ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "start, end",
    [
        (None, None),
        (b"", None),
        (None, b""),
        (b"a", b"b"),
        (b"a", b"a"),
        (b"b", b"a"),
        (b"\x00", b"\x01"),
        (b"\x7f", b"\x81"),
        (b"\xff", None),
        (None, b"\xff"),
        (b"\xff", b"\xff\xff"),
        (b"\xff\x00", b"\xff\xff\xff\xff"),
        (b"zzz", None),
    ],
)
@pytest.mark.parametrize("reverse", [False, True])
def test_items_in_unsigned_byte_order_within_bounds(
    db: PartitionDatabase, start: bytes | None, end: bytes | None, reverse: bool
) -> None:
    _fill(db, EDGE_KEYS)
    expected = sorted(k for k in EDGE_KEYS if (start is None or k >= start) and (end is None or k < end))
    if reverse:
        expected.reverse()
    assert list(db.items("a", start, end, reverse=reverse)) == [(k, b"v" + k) for k in expected]


def test_a_bounded_scan_is_whole_while_its_caller_allocates(db: PartitionDatabase) -> None:
    """The scan's upper bound outlives the call that made it: rocksdict reads it from memory it
    does not own at every step, so a bound freed and reused by the caller's own allocations
    ended a RocksDB scan after its first key."""
    keys = [struct.pack(">Q", 1_000 + i) + b"k" for i in range(50)]
    _fill(db, keys)
    seen = []
    kept = []
    for key, _ in db.items("a", struct.pack(">Q", 0), struct.pack(">Q", 2_000)):
        seen.append(key)
        kept.extend([struct.pack(">Q", len(seen)) * 3, (len(seen), b"x" * 8), bytes(16)])  # reuse freed memory
    assert seen == keys
    gc.collect()
    assert [k for k, _ in db.prefix_items("a", struct.pack(">Q", 1_000)[:6])] == keys


@pytest.mark.parametrize("prefix", [b"", b"a", b"\xff", b"\xff\xff", b"\x00", b"ab", b"q"])
def test_prefix_items(db: PartitionDatabase, prefix: bytes) -> None:
    _fill(db, EDGE_KEYS)
    expected = sorted(k for k in EDGE_KEYS if k.startswith(prefix))
    assert [k for k, _ in db.prefix_items("a", prefix)] == expected


def test_prefix_end() -> None:
    assert prefix_end(b"ab") == b"ac"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") is None
    assert prefix_end(b"") is None


def test_scan_continues_past_writes_made_between_scans(db: PartitionDatabase) -> None:
    """The memory backend's sorted keys are refreshed lazily: inserts, deletes and re-inserts
    between scans must all show up."""
    _fill(db, [b"b", b"d"])
    assert [k for k, _ in db.items("a")] == [b"b", b"d"]
    db.write({"a": {b"c": b"1", b"a": b"1"}})
    db.write({"a": {b"d": None}})
    assert [k for k, _ in db.items("a")] == [b"a", b"b", b"c"]
    db.write({"a": {b"d": b"again", b"b": None}})
    db.write({"a": {b"b": b"again"}})
    assert [k for k, _ in db.items("a")] == [b"a", b"b", b"c", b"d"]
    assert [k for k, _ in db.items("a", reverse=True)] == [b"d", b"c", b"b", b"a"]


# -- wipe, close, reopen --------------------------------------------------------------------------


def test_wipe_removes_every_key_and_all_metadata(db: PartitionDatabase) -> None:
    _fill(db, EDGE_KEYS)
    db.write({"b": {b"\xff" * 40: b"long 0xff key"}}, {b"offset": b"9", b"\xff\xff": b"x"})
    db.wipe()
    assert list(db.items("a")) == []
    assert list(db.items("b")) == []
    assert list(db.items(META_STORE)) == [(FORMAT_KEY, FORMAT_VALUE)]  # the format marker stays
    db.write({"a": {b"k": b"after"}})
    assert list(db.items("a")) == [(b"k", b"after")]


def test_closed_database_raises(db: PartitionDatabase) -> None:
    _fill(db, [b"1", b"2", b"3"])
    scan = db.items("a")
    assert next(scan)[0] == b"1"
    assert not db.closed
    db.close()
    assert db.closed
    db.close()  # twice is fine
    with pytest.raises(StoreClosedError):
        next(scan)  # a scan in progress does not end quietly halfway
    with pytest.raises(StoreClosedError):
        db.get("a", b"1")
    with pytest.raises(StoreClosedError):
        db.get_meta(FORMAT_KEY)
    with pytest.raises(StoreClosedError):
        db.items("a")
    with pytest.raises(StoreClosedError):
        db.write({"a": {b"k": b"v"}})
    with pytest.raises(StoreClosedError):
        db.wipe()
    assert issubclass(StoreClosedError, StateError)


def test_backend_close_closes_its_databases(backend: Backend, tmp_path: Path) -> None:
    first = backend.open(tmp_path / "one", ["a"])
    second = backend.open(tmp_path / "two", ["a"])
    backend.close()
    assert first.closed and second.closed
    with pytest.raises(StoreClosedError):
        backend.open(tmp_path / "three", ["a"])


def test_reopen_adds_stores_and_keeps_unknown_ones(backend: Backend, tmp_path: Path) -> None:
    db = backend.open(tmp_path / "db", ["a", "old"])
    db.write({"a": {b"k": b"1"}, "old": {b"o": b"2"}}, {b"offset": b"5"})
    db.close()

    db = backend.open(tmp_path / "db", ["a", "new"])
    persistent = backend.name == "rocksdb"
    assert db.stores() == (["a", "new", "old"] if persistent else ["a", "new"])
    if persistent:
        assert db.get("a", b"k") == b"1"
        assert db.get("old", b"o") == b"2"  # a table dropped from the app keeps its data
        assert db.get_meta(b"offset") == b"5"
    else:
        assert db.get("a", b"k") is None  # the changelog brings it back
    assert db.get("new", b"k") is None
    db.write({"new": {b"n": b"3"}})
    assert db.get("new", b"n") == b"3"
    db.close()


def test_make_backend() -> None:
    assert make_backend().name == "rocksdb"
    assert make_backend("memory").name == "memory"
    with pytest.raises(UnknownBackendError, match="rocksdb, memory") as raised:
        make_backend("leveldb")
    assert isinstance(raised.value, StateError)
    assert isinstance(raised.value, ConfigurationError)


# -- property: both backends and a dict agree -----------------------------------------------------

_key = st.lists(st.sampled_from([0x00, 0x01, 0x61, 0x7F, 0x80, 0xFE, 0xFF]), max_size=3).map(bytes)
_value = st.binary(max_size=4)
_store = st.sampled_from(["a", "b"])
_write = st.tuples(
    st.just("write"),
    st.dictionaries(_store, st.dictionaries(_key, st.none() | _value, max_size=6), max_size=2),
    st.booleans(),
)
_scan = st.tuples(st.just("scan"), _store, st.tuples(st.none() | _key, st.none() | _key, st.booleans()))
_prefix = st.tuples(st.just("prefix"), _store, _key)
_get = st.tuples(st.just("get"), _store, _key)
_wipe = st.tuples(st.just("wipe"), st.none(), st.none())
_ops = st.lists(st.one_of(_write, _write, _write, _scan, _scan, _prefix, _get, _wipe), min_size=1, max_size=30)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_ops)
def test_backends_agree_with_a_dict(ops: list[tuple[str, Any, Any]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        backends = [make_backend(name, _budget()) for name in BACKEND_NAMES]
        dbs = [backend.open(Path(tmp) / backend.name, ["a", "b"]) for backend in backends]
        model: dict[str, dict[bytes, bytes]] = {"a": {}, "b": {}}
        try:
            for op, first, second in ops:
                if op == "write":
                    _apply_to_model(model, first)
                    for db in dbs:
                        db.write(first, bulk=second)
                elif op == "scan":
                    start, end, reverse = second
                    expected = sorted(
                        (k, v)
                        for k, v in model[first].items()
                        if (start is None or k >= start) and (end is None or k < end)
                    )
                    if reverse:
                        expected.reverse()
                    for db in dbs:
                        assert list(db.items(first, start, end, reverse=reverse)) == expected
                elif op == "prefix":
                    expected = sorted((k, v) for k, v in model[first].items() if k.startswith(second))
                    for db in dbs:
                        assert list(db.prefix_items(first, second)) == expected
                elif op == "get":
                    for db in dbs:
                        assert db.get(first, second) == model[first].get(second)
                else:
                    for db in dbs:
                        db.wipe()
                    model = {"a": {}, "b": {}}
        finally:
            for backend in backends:
                backend.close()


def _apply_to_model(model: dict[str, dict[bytes, bytes]], changes: Changes) -> None:
    for store, entries in changes.items():
        for key, value in entries.items():
            if value is None:
                model[store].pop(key, None)
            else:
                model[store][key] = value
