"""Joins on a controlled clock (the test harness, real RocksDB stores), one restart on the
embedded broker, and the examples of docs/joins.md.

Event times are the records' timestamps; the manual clock only drives the idle close.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flowbus import App
from flowbus.app_errors import ConfigurationError
from flowbus.clock import ManualClock
from flowbus.operators.joins import JoinConflictError, JoinTable, NotCoPartitionedError, merge
from flowbus.testing import TestContext
from flowbus.topic import Topic
from flowbus.transports.base import TopicPartition, TopicSpec
from flowbus.transports.embedded import EmbeddedTransport

S = 1_000
DOC = Path(__file__).resolve().parents[2] / "docs" / "joins.md"


def make_app(tmp_path: Path, *, partitions: int = 2, **kwargs: Any) -> App:
    kwargs.setdefault("window_idle_ms", None)
    return App("joins", broker="memory://", state_dir=tmp_path / "state", topic_partitions=partitions,
               clock=ManualClock(now_ms=1_700_000_000_000), **kwargs)


def run(app: App, body: Callable[[TestContext], Any]) -> None:
    async def main() -> None:
        async with app.test_context() as t:
            await body(t)

    asyncio.run(main())


async def send(t: TestContext, topic: Topic, key: str, value: Any, ts: int = 0) -> None:
    await t.send(topic, value, key=key, timestamp_ms=ts)


# -- the default joiner ------------------------------------------------------------------------
def test_merge_joins_dicts_and_refuses_conflicting_fields() -> None:
    assert merge({"id": 1, "total": 5}, {"id": 1, "name": "Ada"}) == {"id": 1, "total": 5, "name": "Ada"}
    assert merge({"id": 1}, None) == {"id": 1}
    assert merge(None, {"id": 2}) == {"id": 2}
    assert merge(3, None) == (3, None)
    with pytest.raises(JoinConflictError, match="'at'.*joiner="):
        merge({"at": 1}, {"at": 2})


def test_a_conflict_goes_to_the_error_policy_and_processing_goes_on(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    orders, customers, out = app.topic("orders", key_type=str), app.topic("customers", key_type=str), app.topic("out")
    table = app.stream(customers).to_table("customers")
    app.stream(orders).join(table).to(out)

    async def body(t: TestContext) -> None:
        await send(t, customers, "c1", {"name": "Ada", "note": "vip"})
        await send(t, orders, "c1", {"total": 5, "note": "gift"})  # 'note' on both sides: logged, skipped
        await send(t, orders, "c1", {"total": 7})
        assert t.values(out) == [{"total": 7, "name": "Ada", "note": "vip"}]

    run(app, body)


# -- stream-table ------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["inner", "left"])
def test_stream_table_join_reads_the_latest_value_and_tombstones_delete(tmp_path: Path, how: str) -> None:
    app = make_app(tmp_path)
    orders, customers, out = app.topic("orders", key_type=str), app.topic("customers", key_type=str), app.topic("out", key_type=str)
    table = app.stream(customers).to_table("customers")
    app.stream(orders).join(table, how=how, joiner=lambda o, c: [o["n"], c and c["name"]]).to(out)

    async def body(t: TestContext) -> None:
        await send(t, orders, "c1", {"n": 1})  # no customer yet
        await send(t, customers, "c1", {"name": "Ada"})
        await send(t, orders, "c1", {"n": 2})
        await send(t, customers, "c1", {"name": "Ada L."})  # table updates emit nothing
        await send(t, orders, "c1", {"n": 3})
        await t.send(customers, None, key="c1")  # a tombstone deletes the customer
        await send(t, orders, "c1", {"n": 4})
        assert dict(table.items()) == {}
        expected = [("c1", [2, "Ada"]), ("c1", [3, "Ada L."])]
        if how == "left":
            expected = [("c1", [1, None]), *expected, ("c1", [4, None])]
        assert t.items(out) == expected
        await t.commit()
        await send(t, customers, "c2", {"name": "Bob"})
        await t.commit()  # read back from the store after a commit
        assert dict(table.items()) == {"c2": {"name": "Bob"}}

    run(app, body)


def test_stream_table_join_with_an_agent_updated_table(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    orders, customers, out = app.topic("orders", key_type=str), app.topic("customers", key_type=str), app.topic("out")
    names = app.Table("names", key_type=str)

    @app.agent(customers)
    async def keep(stream):  # type: ignore[no-untyped-def]
        async for event in stream.events():
            names[event.key] = event.value["name"]

    app.stream(orders).join(names, how="left", joiner=lambda o, name: f"{o['id']}:{name}").to(out)

    async def body(t: TestContext) -> None:
        await send(t, orders, "c1", {"id": "o1"})
        await send(t, customers, "c1", {"name": "Ada"})
        await send(t, orders, "c1", {"id": "o2"})
        assert t.values(out) == ["o1:None", "o2:Ada"]

    run(app, body)


def test_to_table_keeps_the_topic_value_type(tmp_path: Path) -> None:
    from dataclasses import dataclass

    @dataclass
    class Customer:
        name: str

    app = make_app(tmp_path)
    customers = app.topic("customers", key_type=str, value_type=Customer)
    table = app.stream(customers).to_table("customers")
    mapped = app.stream(customers).map(lambda c: c.name).to_table("names")
    assert table.value_codec.type_ is Customer and mapped.value_codec.type_ is None

    async def body(t: TestContext) -> None:
        await t.send(customers, Customer("Ada"), key="c1")
        await t.commit()
        assert table["c1"] == Customer("Ada") and mapped["c1"] == "Ada"

    run(app, body)


# -- global tables -----------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["inner", "left"])
def test_join_global_looks_up_any_key(tmp_path: Path, how: str) -> None:
    app = make_app(tmp_path)
    orders, out = app.topic("orders", key_type=str), app.topic("out")
    products = app.GlobalTable("products", key_type=str, partitions=3)
    app.stream(orders).join_global(products, key=lambda o: o["sku"], how=how).to(out)

    async def body(t: TestContext) -> None:
        await t.send_raw(products.changelog_topic, b'{"title": "Lamp"}', key=b"sku-1")
        for _ in range(100):  # the global table follows its changelog in a task of its own
            if "sku-1" in products:
                break
            await asyncio.sleep(0.01)
        await send(t, orders, "u1", {"sku": "sku-1", "qty": 2})
        await send(t, orders, "u2", {"sku": "sku-9", "qty": 1})
        expected = [{"sku": "sku-1", "qty": 2, "title": "Lamp"}]
        if how == "left":
            expected.append({"sku": "sku-9", "qty": 1})
        assert sorted(t.values(out), key=str) == sorted(expected, key=str)

    run(app, body)


def test_join_routes_a_global_table_and_refuses_wrong_tables(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    orders, other = app.topic("orders", key_type=str), app.topic("other", key_type=str)
    products = app.GlobalTable("products")
    plain = app.Table("plain")
    flow = app.stream(orders)
    assert type(flow.join(products).step).__name__ == "GlobalJoinStep"
    with pytest.raises(TypeError, match="GlobalTable"):
        flow.join_global(plain)
    with pytest.raises(TypeError, match="to_table"):
        app.stream(other).to_table("t1").join(plain)
    with pytest.raises(ValueError, match="how="):
        flow.join(plain, how="outer")
    with pytest.raises(TypeError, match="join\\(\\)"):
        flow.join_window(plain, within_ms=1)  # type: ignore[arg-type]


# -- stream-stream -----------------------------------------------------------------------------
def window_app(tmp_path: Path, how: str, *, within: int = 5 * S, grace: int = 0, **kwargs: Any) -> tuple[App, Topic, Topic, Topic]:
    """A click-view join on one partition (so every key shares one stream time)."""
    app = make_app(tmp_path, partitions=1, **kwargs)
    clicks, views, out = app.topic("clicks", key_type=str), app.topic("views", key_type=str), app.topic("out", key_type=str)
    app.stream(clicks).join_window(
        app.stream(views), within_ms=within, grace_ms=grace, how=how, name="cv",
        joiner=lambda c, v: [c, v],
    ).to(out)
    return app, clicks, views, out


def test_inner_window_join_pairs_as_soon_as_both_are_there(tmp_path: Path) -> None:
    app, clicks, views, out = window_app(tmp_path, "inner")

    async def body(t: TestContext) -> None:
        await send(t, views, "u1", "v1", 10 * S)
        await send(t, clicks, "u1", "c1", 12 * S)  # 2 s apart: a pair, right away
        assert t.items(out) == [("u1", ["c1", "v1"])]
        await send(t, clicks, "u2", "c2", 12 * S)  # another key: nothing
        await send(t, views, "u1", "v0", 8 * S)  # out of order, within 5 s of c1 (12 s): pairs
        await send(t, views, "u1", "v2", 17 * S)  # exactly 5 s after c1: pairs with it
        await send(t, clicks, "u1", "c3", 23 * S)  # 6 s after v2: no pair
        assert t.items(out) == [("u1", ["c1", "v1"]), ("u1", ["c1", "v0"]), ("u1", ["c1", "v2"])]
        assert [r.timestamp_ms for r in t.records(out)] == [12 * S, 12 * S, 17 * S]  # the later time

    run(app, body)


def test_left_window_join_emits_unmatched_rows_only_after_close_and_grace(tmp_path: Path) -> None:
    app, clicks, views, out = window_app(tmp_path, "left", grace=2 * S)

    async def body(t: TestContext) -> None:
        await send(t, clicks, "a", "c-a", 10 * S)  # never matched: out once 10 + 5 + 2 s passed
        await send(t, clicks, "b", "c-b", 10 * S)  # matched below: never out alone
        await send(t, views, "b", "v-b", 14 * S)
        await send(t, views, "z", "v-z", 11 * S)  # right side of a left join: never out alone
        await send(t, clicks, "x", "c-x", 17 * S)  # stream time 17 s = close time of c-a: not passed
        assert t.items(out) == [("b", ["c-b", "v-b"])]
        await send(t, views, "a", "v-a", 12 * S)  # within grace: still pairs with c-a
        assert t.items(out)[-1] == ("a", ["c-a", "v-a"])
        await send(t, clicks, "y", "c-y", 40 * S)  # passes every close time
        assert t.items(out) == [("b", ["c-b", "v-b"]), ("a", ["c-a", "v-a"]), ("x", ["c-x", None])]
        assert t.records(out)[-1].timestamp_ms == 17 * S  # an unmatched row keeps its own time

    run(app, body)


def test_left_window_join_unmatched_row_after_the_window_closes(tmp_path: Path) -> None:
    app, clicks, _views, out = window_app(tmp_path, "left", grace=1 * S)

    async def body(t: TestContext) -> None:
        await send(t, clicks, "a", "c-a", 10 * S)
        await send(t, clicks, "q", "c-q", 16 * S)  # 10 + 5 + 1 s reached, not passed
        assert t.items(out) == []
        await send(t, clicks, "q", "c-q2", 16 * S + 1)  # passed: c-a is out, with None
        assert t.items(out) == [("a", ["c-a", None])]
        table = app.tables["cv"]
        assert isinstance(table, JoinTable) and table.unmatched_records == 1

    run(app, body)


def test_outer_window_join_emits_both_sides_unmatched(tmp_path: Path) -> None:
    app, clicks, views, out = window_app(tmp_path, "outer")

    async def body(t: TestContext) -> None:
        await send(t, clicks, "a", "c-a", 1 * S)
        await send(t, views, "b", "v-b", 2 * S)
        await send(t, clicks, "c", "c-c", 3 * S)
        await send(t, views, "c", "v-c", 4 * S)
        assert t.items(out) == [("c", ["c-c", "v-c"])]
        await send(t, views, "z", "v-z", 30 * S)
        assert sorted(t.items(out)[1:]) == [("a", ["c-a", None]), ("b", [None, "v-b"])]
        table = app.tables["cv"]
        await t.commit()
        assert [k for k, _ in table.items()] == [("z", "right")]  # closed buffers are gone

    run(app, body)


def test_window_join_pairs_every_match_and_keeps_buffers_per_partition(tmp_path: Path) -> None:
    app, clicks, views, out = window_app(tmp_path, "inner", within=10 * S)

    async def body(t: TestContext) -> None:
        await send(t, clicks, "a", "c1", 1 * S)
        await send(t, clicks, "a", "c2", 2 * S)
        await send(t, views, "a", "v1", 3 * S)  # pairs with both clicks
        await send(t, views, "a", "v2", 4 * S)  # and again
        assert sorted(map(tuple, t.values(out))) == [("c1", "v1"), ("c1", "v2"), ("c2", "v1"), ("c2", "v2")]

    run(app, body)


def test_late_records_on_a_join_are_dropped_or_sent_to_on_late(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    clicks, views, out, late = (app.topic(n, key_type=str) for n in ("clicks", "views", "out", "late"))
    app.stream(clicks).join_window(app.stream(views), within_ms=5 * S, how="left", name="j", on_late=late,
                                   joiner=lambda c, v: [c, v]).to(out)

    async def body(t: TestContext) -> None:
        await send(t, clicks, "a", "c-a", 10 * S)
        await send(t, clicks, "a", "c-next", 30 * S)  # c-a's window closed: it is out, alone
        assert t.values(out) == [["c-a", None]]
        await send(t, views, "a", "v-late", 11 * S)  # its own window closed long ago: late
        assert t.values(out) == [["c-a", None]]  # never a pair contradicting the row above
        assert t.items(late) == [("a", "v-late")]
        assert app.tables["j"].late_records == 1  # type: ignore[attr-defined]

    run(app, body)


def test_idle_close_emits_an_unmatched_row_without_further_input(tmp_path: Path) -> None:
    app, clicks, _views, out = window_app(tmp_path, "left", grace=1 * S, window_idle_ms=3 * S)

    async def body(t: TestContext) -> None:
        now = t.clock.now_ms()
        await send(t, clicks, "a", "c-a", now)  # one record, then silence
        await t.advance(5.5)  # idle, but the window (5 s + 1 s grace) is still open
        assert t.items(out) == []
        await t.advance(1.0)
        assert t.items(out) == [("a", ["c-a", None])]

    run(app, body)


def test_idle_close_waits_until_both_inputs_are_quiet(tmp_path: Path) -> None:
    app, clicks, views, out = window_app(tmp_path, "left", within=1 * S, window_idle_ms=3 * S)

    async def body(t: TestContext) -> None:
        await send(t, clicks, "a", "c-a", 500)  # event time far behind the wall clock
        await t.advance(2.0)
        await send(t, views, "b", "v-b", 600)  # the partition is not idle: the other input is busy
        await t.advance(2.0)
        assert t.items(out) == []
        await t.advance(1.5)
        assert t.items(out) == [("a", ["c-a", None])]
        await send(t, views, "a", "v-a", 700)  # c-a was emitted alone: v-a is late, never paired
        assert t.items(out) == [("a", ["c-a", None])]

    run(app, body)


def test_no_key_and_none_values_on_a_window_join(tmp_path: Path) -> None:
    app, clicks, views, out = window_app(tmp_path, "inner")

    async def body(t: TestContext) -> None:
        await t.send(clicks, "x", key=None, timestamp_ms=1 * S)  # error policy: logged, skipped
        await t.send(views, None, key="a", timestamp_ms=1 * S)  # a tombstone: nothing to join
        await send(t, clicks, "a", "c-a", 2 * S)
        assert t.values(out) == []
        assert app.tables["cv"].skipped_records == 1  # type: ignore[attr-defined]

    run(app, body)


def test_a_join_is_compiled_once_below_group_by_and_with_children(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    # group_by writes JSON keys: the other side has JSON keys too (no key_type), or nothing matches
    clicks, views, out = app.topic("clicks"), app.topic("views"), app.topic("out")
    by_user = app.stream(views).group_by(lambda v: v["user"], name="views-by-user")
    joined = app.stream(clicks).join_window(by_user, within_ms=5 * S, joiner=lambda c, v: v["page"])
    joined.count(name="pages-per-user").to(out)

    async def body(t: TestContext) -> None:
        await t.send(views, {"user": "u1", "page": "/a"}, key="any", timestamp_ms=1 * S)
        await t.send(clicks, "click", key="u1", timestamp_ms=2 * S)
        await t.send(clicks, "click", key="u1", timestamp_ms=3 * S)
        assert t.items(out) == [("u1", 1), ("u1", 2)]  # each pair counted once

    run(app, body)


def test_window_join_commits_with_the_transaction_under_exactly_once(tmp_path: Path) -> None:
    app, clicks, views, out = window_app(tmp_path, "left", processing_guarantee="exactly_once")

    async def body(t: TestContext) -> None:
        await send(t, clicks, "a", "c-a", 1 * S)
        await send(t, views, "a", "v-a", 2 * S)
        await send(t, clicks, "b", "c-b", 3 * S)
        assert t.records(out, committed_only=True) == []  # in the open transaction
        await t.commit()
        assert [t.app.topics["out"].value_codec.decode(r.value) for r in t.records(out, committed_only=True)] == [
            ["c-a", "v-a"]
        ]
        changelog = t.records("joins-cv-changelog", committed_only=True)
        assert changelog and all(r.key is not None for r in changelog)
        await send(t, clicks, "z", "c-z", 20 * S)  # closes c-b: its unmatched row is out
        await t.commit()
        assert ["c-b", None] in [t.app.topics["out"].value_codec.decode(r.value)
                                 for r in t.records(out, committed_only=True)]

    run(app, body)


# -- table-table -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("inner", [["L1", "R1"], ["L2", "R1"], None]),
        ("left", [["L1", None], ["L1", "R1"], ["L2", "R1"], ["L2", None], None]),
        ("outer", [["L1", None], ["L1", "R1"], ["L2", "R1"], ["L2", None], None, [None, "R2"]]),
    ],
)
def test_table_table_join_emits_on_every_update_of_either_side(tmp_path: Path, how: str, expected: list[Any]) -> None:
    app = make_app(tmp_path)
    lefts, rights, out = app.topic("lefts", key_type=str), app.topic("rights", key_type=str), app.topic("out", key_type=str)
    joined_table = app.stream(lefts).to_table("l").join(app.stream(rights).to_table("r"), how=how,
                                                        joiner=lambda a, b: [a, b])
    joined_table.to(out)
    view = joined_table.to_table("joined")

    async def body(t: TestContext) -> None:
        await send(t, lefts, "k", "L1")
        await send(t, rights, "k", "R1")
        await send(t, lefts, "k", "L2")
        await t.send(rights, None, key="k")  # right deleted
        await t.send(lefts, None, key="k")  # left deleted
        await send(t, rights, "k", "R2")
        assert t.values(out) == expected
        assert dict(view.items()) == ({"k": [None, "R2"]} if how == "outer" else {})
        assert [r.value for r in t.records(out) if r.value is None] == [None]  # a real tombstone

    run(app, body)


# -- co-partitioning ---------------------------------------------------------------------------
def start_app(app: App) -> None:
    async def main() -> None:
        async with app.test_context():
            pass

    asyncio.run(main())


def test_stream_stream_join_of_topics_not_co_partitioned_fails_at_start(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    clicks, views = app.topic("clicks", partitions=4), app.topic("views", partitions=2)
    app.stream(clicks).join_window(app.stream(views), within_ms=S).to(app.topic("out"))
    with pytest.raises(NotCoPartitionedError) as failure:
        start_app(app)
    message = str(failure.value)
    assert isinstance(failure.value, ConfigurationError)
    for part in ("'clicks' has 4 partitions", "'views' has 2", "co-partitioned", "partitions=4", "join_global"):
        assert part in message, message


def test_stream_table_join_not_co_partitioned_fails_at_start(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    orders, customers = app.topic("orders", partitions=3), app.topic("customers", partitions=2)
    app.stream(orders).join(app.stream(customers).to_table("customers"))
    with pytest.raises(NotCoPartitionedError, match=r"'orders' has 3 partitions but topic 'customers' .* has 2"):
        start_app(app)


def test_agent_table_join_not_co_partitioned_fails_at_start(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    orders, customers = app.topic("orders", partitions=3), app.topic("customers", partitions=2)
    names = app.Table("names")

    @app.agent(customers)
    async def keep(stream):  # type: ignore[no-untyped-def]
        async for _ in stream:
            pass

    app.stream(orders).join(names)
    with pytest.raises(NotCoPartitionedError, match=r"'orders' has 3 partitions but table 'names' has 2"):
        start_app(app)


def test_table_table_join_not_co_partitioned_fails_at_start(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    a, b = app.topic("a", partitions=1), app.topic("b", partitions=2)
    app.stream(a).to_table("ta").join(app.stream(b).to_table("tb"))
    with pytest.raises(NotCoPartitionedError, match="'a' has 1 partitions but topic 'b' has 2"):
        start_app(app)


def test_keys_serialized_differently_are_refused_at_declaration(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    raw_keys, json_keys = app.topic("clicks", key_type=str), app.topic("views")
    with pytest.raises(NotCoPartitionedError, match="'raw' serializer and topic 'views' with 'json'"):
        app.stream(raw_keys).join_window(app.stream(json_keys), within_ms=S)
    with pytest.raises(NotCoPartitionedError, match="key_type"):
        app.stream(raw_keys).join(app.Table("json-keyed"))


def test_global_join_needs_no_co_partitioning(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    orders = app.topic("orders", partitions=3)
    app.stream(orders).join_global(app.GlobalTable("products", partitions=2), key=lambda o: o["sku"])
    start_app(app)


# -- a restart on the embedded broker ----------------------------------------------------------
def test_window_join_across_a_crash_and_a_lost_state_dir_loses_and_doubles_no_pair(tmp_path: Path) -> None:
    """Exactly-once on embedded://: a worker commits some pairs, processes more and dies without
    committing (its transaction aborts); the state directory is lost too. The next worker
    restores the join buffers from the changelog, reprocesses what was not committed, and every
    pair (and every unmatched row) comes out exactly once, including pairs across the restart."""
    url = f"embedded://{tmp_path / 'data'}"
    keys = [f"k{i}" for i in range(12)]

    def make() -> tuple[App, Topic, Topic, Topic]:
        app = App("jr", broker=url, processing_guarantee="exactly_once", topic_partitions=3,
                  commit_interval_ms=600_000, state_dir=tmp_path / "state", window_idle_ms=None)
        lefts, rights, out = (app.topic(n, key_type=str) for n in ("lefts", "rights", "pairs"))
        app.stream(lefts).join_window(app.stream(rights), within_ms=10 * S, how="left", name="lr",
                                      joiner=lambda a, b: f"{a}+{b}").to(out)
        return app, lefts, rights, out

    now_ms = int(time.time()) * S  # event times near now: the broker deletes older records (retention)

    def batch(side: str, at: int) -> list[tuple[str, str, str, int]]:
        return [(side, key, f"{side}{at // S}-{key}", now_ms + at) for key in keys]

    # Lefts at 1 s pair with rights at 5 s (same batch), with rights at 8 s (second batch, lost
    # in the crash, read again), and with rights at 10 s (after the restart); lefts at 40 s
    # close every earlier window, so the lefts at 25 s (15 s after the last rights) come out
    # alone. Each batch is produced once the one before is processed: a join processes its two
    # topics in poll order, not in event-time order.
    first = batch("L", 1 * S) + batch("R", 5 * S)
    lost = batch("R", 8 * S)
    after = batch("R", 10 * S)
    last = batch("L", 25 * S) + batch("L", 40 * S)
    expected = Counter(
        [f"L1-{k}+R{n}-{k}" for k in keys for n in (5, 8, 10)] + [f"L25-{k}+None" for k in keys]
    )

    async def produce(records: list[tuple[str, str, str, int]]) -> None:
        transport = EmbeddedTransport(url)
        await transport.start()
        await transport.create_topics([TopicSpec(n, 3) for n in ("lefts", "rights", "pairs")])
        producer = transport.producer()
        for side, key, value, ts in records:
            producer.send_soon("lefts" if side == "L" else "rights", f'"{value}"'.encode(), key.encode(), timestamp_ms=ts)
        await producer.close()
        await transport.close()

    async def wait_for(check: Callable[[], bool], task: asyncio.Task[None]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while not check():
            assert not task.done(), task.exception()
            assert loop.time() < deadline, "the worker did not get there in time"
            await asyncio.sleep(0.02)

    def processed(worker: Any, topic: str) -> int:
        """Records of ``topic`` the worker ran through the join, counting from the start of the
        topic (positions are offsets: the inputs are written without transactions)."""
        return sum(offset for tp, offset in worker.dispatched_next.items() if tp.topic == topic)

    def count(records: list[tuple[str, str, str, int]], side: str) -> int:
        return sum(1 for r in records if r[0] == side)

    async def crash_run() -> None:
        app, *_ = make()
        await produce(first)
        worker = app.make_worker()
        task = asyncio.create_task(worker.run())
        await wait_for(lambda: processed(worker, "lefts") + processed(worker, "rights") >= len(first), task)
        await worker.commit()
        await produce(lost)
        await wait_for(lambda: processed(worker, "rights") >= count(first + lost, "R"), task)
        worker.fail(RuntimeError("simulated crash: the open transaction aborts"))
        with pytest.raises(Exception, match="simulated crash"):
            await task

    async def read_pairs(transport: EmbeddedTransport, isolation_level: str = "read_committed") -> list[str]:
        consumer = transport.consumer(None, isolation_level=isolation_level)
        tps = [TopicPartition("pairs", p) for p in range(3)]
        consumer.assign(tps, {tp: 0 for tp in tps})
        values: list[str] = []
        idle = 0
        while idle < 3:
            batch_ = await consumer.poll_batch(5000, 100)
            idle = 0 if batch_ else idle + 1
            values.extend(r.value.decode().strip('"') for r in batch_ if r.value is not None)
        await consumer.close()
        return values

    async def second_run() -> list[str]:
        app, *_ = make()
        await produce(after)
        worker = app.make_worker()
        task = asyncio.create_task(worker.run())
        await wait_for(lambda: processed(worker, "rights") >= count(first + lost + after, "R"), task)
        await produce(last)
        await wait_for(lambda: processed(worker, "lefts") >= count(first + last, "L"), task)
        await worker.commit()
        pairs = await read_pairs(worker.transport)  # type: ignore[arg-type]
        everything = await read_pairs(worker.transport, "read_uncommitted")  # type: ignore[arg-type]
        worker.stop()
        await task
        # The crash did throw work away: the pairs of the lost batch are in the log twice, once
        # in the aborted transaction.
        assert Counter(everything) - Counter(pairs) == Counter(f"L1-{k}+R8-{k}" for k in keys)
        return pairs

    asyncio.run(crash_run())
    shutil.rmtree(tmp_path / "state")  # and the local state is lost: restore from the changelog
    assert Counter(asyncio.run(second_run())) == expected


# -- the examples of docs/joins.md -------------------------------------------------------------
def test_the_examples_in_docs_joins_md_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    assert len(blocks) == 4, "update this test when docs/joins.md gains or loses an example"
    monkeypatch.chdir(tmp_path)  # the examples' apps keep their state in ./flowbus-state
    for block in blocks:
        exec(block, {"__name__": "joins_doc"})  # noqa: S102 - our own documentation, asserts included
