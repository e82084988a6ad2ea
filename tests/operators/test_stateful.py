"""Stateful dataflow steps and keyed aggregations, in the test harness (real RocksDB stores)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from flowbus import App
from flowbus.operators.stateful import State


def make_app(tmp_path: Path, **kwargs: object) -> App:
    return App("agg", broker="memory://", state_dir=tmp_path / "state", topic_partitions=3, **kwargs)  # type: ignore[arg-type]


def test_count_sum_reduce_aggregate_emit_each_new_value(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    sales = app.topic("sales", key_type=str)
    counts = app.topic("counts", key_type=str)
    sums = app.topic("sums", key_type=str)
    maxes = app.topic("maxes", key_type=str)
    seen = app.topic("seen", key_type=str)
    stream = app.stream(sales)
    stream.count(name="n").to(counts)
    stream.sum(lambda s: s["amount"], name="total").to(sums)
    stream.map(lambda s: s["amount"]).reduce(max, name="max").to(maxes)
    stream.aggregate(list, lambda acc, s: [*acc, s["amount"]], name="all").to(seen)

    async def main() -> None:
        async with app.test_context() as t:
            for shop, amount in [("x", 5), ("y", 1), ("x", 7), ("x", 2)]:
                await t.send(sales, {"amount": amount}, key=shop, settle=False)
            await t.settle()
            assert [v for k, v in t.items(counts) if k == "x"] == [1, 2, 3]
            assert [v for k, v in t.items(sums) if k == "x"] == [5, 12, 14]
            assert [v for k, v in t.items(maxes) if k == "x"] == [5, 7, 7]
            assert [v for k, v in t.items(seen) if k == "x"][-1] == [5, 7, 2]
            assert app.tables["n"]["x"] == 3 and app.tables["n"]["y"] == 1
            assert app.tables["total"]["x"] == 14
            await t.commit()
            assert {r.key: r.value for r in t.records("agg-n-changelog")} == {b"x": b"3", b"y": b"1"}

    asyncio.run(main())


def test_a_count_over_runs_of_several_partitions_keeps_each_key_in_its_own_partition(tmp_path: Path) -> None:
    """One poll brings runs of several partitions; the aggregation looks a run's table partition
    up once, and each key's count still lands in (and is changelogged from) its own partition."""
    app = make_app(tmp_path)
    words = app.topic("words", key_type=str)
    app.stream(words).count(name="per-word")
    keys = [f"w{i % 40}" for i in range(600)]

    async def main() -> None:
        async with app.test_context() as t:
            for key in keys:
                await t.send(words, 1, key=key, settle=False)
            await t.settle()
            await t.commit()
            source = {r.key: r.partition for r in t.records(words)}
            assert len(set(source.values())) == 3
            changelog = t.records("agg-per-word-changelog")
            assert {r.key: (r.partition, r.value) for r in changelog} == {k: (p, b"15") for k, p in source.items()}
            table = app.tables["per-word"]
            assert dict(table.items()) == {f"w{i}": 15 for i in range(40)}

    asyncio.run(main())


def test_an_update_ending_the_chain_after_an_aggregation_gets_each_new_aggregate(tmp_path: Path) -> None:
    """The aggregation calls a chain-ending update's function with the new aggregate directly;
    an update in the middle of a chain still passes the key and value on."""
    app = make_app(tmp_path)
    words = app.topic("words", key_type=str)
    totals = app.topic("totals", key_type=str)
    last: list[int] = []
    middle: list[int] = []
    app.stream(words).count(name="n").update(last.append)
    app.stream(words).sum(lambda v: v, name="s").update(middle.append).to(totals)

    async def main() -> None:
        async with app.test_context() as t:
            for value in (3, 4, 5):
                await t.send(words, value, key="a", settle=False)
            await t.settle()
            assert last == [1, 2, 3]
            assert middle == [3, 7, 12] and t.items(totals) == [("a", 3), ("a", 7), ("a", 12)]

    asyncio.run(main())


def test_group_by_then_count_keeps_state_on_the_repartition_topic(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    clicks = app.topic("clicks")
    per_user = app.topic("per-user", key_type=str)
    app.stream(clicks).group_by(lambda c: c["user"], name="by-user", partitions=2).count(name="clicks-per-user").to(per_user)

    async def main() -> None:
        async with app.test_context() as t:
            for user in ["u1", "u2", "u1", "u1"]:
                await t.send(clicks, {"user": user}, settle=False)
            await t.settle()
            assert app.tables["clicks-per-user"].partitions == 2
            assert dict(app.tables["clicks-per-user"].items()) == {"u1": 3, "u2": 1}

    asyncio.run(main())


def test_stateful_map_filter_update_see_a_per_key_state(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    events = app.topic("events", key_type=str)
    firsts = app.topic("firsts", key_type=str)
    running = app.topic("running", key_type=str)

    def first_time(value: dict, state: State) -> bool:
        if state.exists("seen"):
            return False
        state.set("seen", True)
        return True

    def running_total(value: dict, state: State) -> int:
        total = state.get("total", 0) + value["n"]
        state.set("total", total)
        return total

    def forget(value: dict, state: State) -> None:
        if value.get("reset"):
            state.delete("total")

    stream = app.stream(events)
    stream.filter(first_time, stateful=True).to(firsts)
    stream.update(forget, stateful=True).map(running_total, stateful=True).to(running)

    async def main() -> None:
        async with app.test_context() as t:
            for key, value in [("a", {"n": 1}), ("b", {"n": 10}), ("a", {"n": 2}), ("a", {"n": 3, "reset": True})]:
                await t.send(events, value, key=key, settle=False)
            await t.settle()
            assert [k for k, _ in t.items(firsts)] == ["a", "b"] or sorted(k for k, _ in t.items(firsts)) == ["a", "b"]
            assert [v for k, v in t.items(running) if k == "a"] == [1, 3, 3]

    asyncio.run(main())


def test_a_record_without_a_key_goes_to_the_error_policy(tmp_path: Path) -> None:
    app = make_app(tmp_path, error_policy="dead_letter")
    sales = app.topic("sales")
    app.stream(sales).count(name="n")

    async def main() -> None:
        async with app.test_context() as t:
            await t.send(sales, {"amount": 1})
            dead = t.records(app.dead_letter_topic)
            assert len(dead) == 1
            headers = dict(dead[0].headers)
            assert headers["flowbus.error.type"] == b"NoKeyError"
            assert b"group_by" in headers["flowbus.error.message"]

    asyncio.run(main())


def test_two_aggregations_with_the_same_default_name_ask_for_a_name(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    sales = app.topic("sales", key_type=str)
    app.stream(sales).count()
    with pytest.raises(Exception, match="already declared"):
        app.stream(sales).count()
