"""Declarative dataflows: each operator in a few lines — source, run, assert."""

from __future__ import annotations

import asyncio
from typing import Any

from flowbus.operators import Dataflow, compile_dataflows
from flowbus.operators.steps import Emit

from flowbus import App, ManualClock


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def through_harness(app: App, src: str, values: list[Any], *outputs: str, advance_s: float = 0) -> dict[str, list[Any]]:
    async def main() -> dict[str, list[Any]]:
        async with app.test_context() as t:
            await t.send_many(src, values)
            if advance_s:
                await t.advance(advance_s)
            return {name: t.values(name) for name in outputs}

    return run(main())


def test_filter_map_to() -> None:
    app = App("ops", broker="memory://")
    app.stream("in").filter(lambda v: v % 2 == 0).map(lambda v: v * 10).to(app.topic("out"))
    assert through_harness(app, "in", list(range(6)), "out") == {"out": [0, 20, 40]}


def test_flat_map_and_continue_after_to() -> None:
    app = App("ops", broker="memory://")
    app.stream("in").flat_map(lambda s: s.split()).to(app.topic("words")).map(len).to(app.topic("lengths"))
    got = through_harness(app, "in", ["a bb", "ccc"], "words", "lengths")
    assert got == {"words": ["a", "bb", "ccc"], "lengths": [1, 2, 3]}


def test_branch_sends_each_value_to_the_first_match() -> None:
    app = App("ops", broker="memory://")
    big, small, _rest = app.stream("in").branch(lambda v: v > 100, lambda v: v > 10, lambda v: True)
    big.to(app.topic("big"))
    small.map(lambda v: -v).to(app.topic("small"))
    got = through_harness(app, "in", [5, 50, 500, 20], "big", "small")
    assert got == {"big": [500], "small": [-50, -20]}


def test_fan_out_from_one_node() -> None:
    app = App("ops", broker="memory://")
    root = app.stream("in")
    root.map(str.upper).to(app.topic("upper"))
    root.map(str.lower).to(app.topic("lower"))
    assert through_harness(app, "in", ["Ab"], "upper", "lower") == {"upper": ["AB"], "lower": ["ab"]}


def test_group_by_repartitions_by_the_new_key() -> None:
    app = App("shop", broker="memory://", topic_partitions=3)
    (
        app.stream("orders")
        .group_by(lambda o: o["user"], name="by-user")
        .map(lambda o: o["amount"])
        .to(app.topic("amounts"))
    )

    async def main() -> None:
        async with app.test_context() as t:
            orders = [{"user": f"u{i % 4}", "amount": i} for i in range(20)]
            await t.send_many("orders", orders)
            repartitioned = t.events("shop-by-user-repartition")
            assert len(repartitioned) == 20
            partitions_of: dict[str, set[int]] = {}
            for e in repartitioned:
                partitions_of.setdefault(e.key, set()).add(e.partition)
                assert e.key == e.value["user"]
            assert all(len(p) == 1 for p in partitions_of.values())
            assert sorted(t.values("amounts")) == list(range(20))

    run(main())


def test_through_continues_from_the_topic() -> None:
    app = App("ops", broker="memory://")
    mid = app.topic("mid")
    app.stream("in").map(lambda v: v + 1).through(mid).map(lambda v: v * 2).to(app.topic("out"))
    got = through_harness(app, "in", [1, 2], "mid", "out")
    assert got == {"mid": [2, 3], "out": [4, 6]}


def test_take_by_count_and_by_clock() -> None:
    # A commit emits what take() holds: the interval is longer than within_s, so the clock decides.
    app = App("ops", broker="memory://", clock=ManualClock(), commit_interval_ms=60_000)
    app.stream("in").take(2, within_s=5).map(sum).to(app.topic("sums"))

    async def main() -> None:
        async with app.test_context() as t:
            await t.send_many("in", [1, 2, 3])
            assert t.values("sums") == [3]
            await t.advance(4.9)
            assert t.values("sums") == [3]
            await t.advance(0.1)
            assert t.values("sums") == [3, 3]

    run(main())


def test_take_emits_what_it_holds_at_a_commit() -> None:
    app = App("ops", broker="memory://")
    app.stream("in").take(100, within_s=60).map(len).to(app.topic("sizes"))

    async def main() -> None:
        async with app.test_context() as t:
            await t.send_many("in", [1, 2, 3])
            await t.commit()
            assert t.values("sizes") == [3]
            assert t.committed_offsets()[("in", 0)] == 3

    run(main())


def test_user_errors_follow_the_error_policy() -> None:
    app = App("ops", broker="memory://", error_policy="dead_letter")
    app.stream("in").map(lambda v: 10 // v).to(app.topic("out"))

    async def main() -> None:
        async with app.test_context() as t:
            await t.send_many("in", [1, 0, 2])
            assert t.values("out") == [10, 5]
            dead = t.records(app.dead_letter_topic)
            assert [r.value for r in dead] == [b"0"]
            assert dict(dead[0].headers)["flowbus.error.type"] == b"ZeroDivisionError"

    run(main())


class _Collect:
    """A minimal Runtime: the compiled chain is a plain function, callable without a worker."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any, Any]] = []
        self.heads: dict[str, Emit] = {}
        self.reads_record: dict[str, bool] = {}

    def sender(self, topic: Any) -> Emit:
        return lambda key, value: self.sent.append((topic.name, key, value))

    def call_at_ms(self, delay_ms: int, callback: Any) -> None:
        pass

    def before_commit(self, callback: Any) -> None:
        pass

    def add_source(self, topic: Any, head: Emit, *, reads_record: bool = True) -> None:
        self.heads[topic.name] = head
        self.reads_record[topic.name] = reads_record


def test_compiled_chain_is_plain_function_calls() -> None:
    app = App("ops", broker="memory://")
    flow: Dataflow = app.stream("in")
    flow.filter(lambda v: v > 0).map(lambda v: v * 2).to(app.topic("out"))
    runtime = _Collect()
    compile_dataflows(app.dataflows, runtime)
    head = runtime.heads["in"]
    assert not asyncio.iscoroutinefunction(head)
    for v in (-1, 1, 2):
        head(None, v)
    assert runtime.sent == [("out", None, 2), ("out", None, 4)]


def test_a_chain_says_whether_it_reads_the_record_beyond_its_partition() -> None:
    """A chain of map, filter, flat_map, branch, update and keyed aggregations reads nothing of
    the current record but its partition, so the worker may set it once per run; one with an
    output (timestamps and headers) or a window (event time) reads each record."""
    app = App("reads", broker="memory://")
    plain, to_topic, windowed = (app.topic(n, key_type=str) for n in ("plain", "to", "windowed"))
    app.stream(plain).filter(bool).map(str).flat_map(lambda v: [v]).update(print).count(name="c1")
    app.stream(to_topic).map(str).to(app.topic("out"))
    app.stream(windowed).tumbling_window(1_000, name="w").count().final()
    runtime = _Collect()
    runtime.clock = None  # type: ignore[attr-defined]
    compile_dataflows(app.dataflows, runtime)
    assert runtime.reads_record == {"plain": False, "to": True, "windowed": True}


def test_undecodable_records_go_to_the_error_policy_as_decode_errors_and_the_rest_flows() -> None:
    """A dataflow decodes keys and values with the C decoders directly; a record they refuse
    still reaches the policy as the codec's DecodeError (not the decoder's own exception), and
    null keys and values still arrive as None."""
    app = App("decode", broker="memory://", error_policy="dead_letter")
    src = app.topic("in", key_type=str)
    seen: list[tuple[Any, Any]] = []
    app.stream(src).update(lambda v: None).to(app.topic("out", key_type=str))
    app.stream(src).map(lambda v: v).update(lambda v: seen.append(v))

    async def main() -> None:
        async with app.test_context() as t:
            await t.send_raw(src, b'{"n": 1}', key="ü".encode())
            await t.send_raw(src, b'{"n": 2}', key=b"\xff\xfe")  # not UTF-8
            await t.send_raw(src, b"{broken", key=b"k")  # not JSON
            await t.send_raw(src, None, key=b"gone")  # a tombstone
            await t.send_raw(src, b'"no key"', key=None)
            assert t.items("out") == [("ü", {"n": 1}), ("gone", None), (None, "no key")]
            assert seen == [{"n": 1}, None, "no key"]
            dead = t.records(app.dead_letter_topic)
            assert [(r.key, r.value) for r in dead] == [(b"\xff\xfe", b'{"n": 2}'), (b"k", b"{broken")]  # once each: one decode for both chains
            assert {dict(r.headers)["flowbus.error.type"] for r in dead} == {b"DecodeError"}
            messages = sorted(dict(r.headers)["flowbus.error.message"] for r in dead)
            assert messages[0].startswith(b"json decode failed") and messages[-1].startswith(b"not UTF-8")

    run(main())


def test_a_failing_record_in_a_decoded_run_goes_alone_to_the_error_policy() -> None:
    """A run whose keys and values all decode is decoded in one pass; a step failing on one of
    its records sends just that record to the error policy, and the records after it still flow,
    in order, each output keeping its own record's timestamp."""
    app = App("one-fails", broker="memory://", error_policy="dead_letter")
    src = app.topic("in", key_type=str, partitions=1)
    out = app.topic("out", key_type=str)

    def check(value: int) -> int:
        if value == 3:
            raise ValueError("three")
        return value

    app.stream(src).map(check).to(out)

    async def main() -> None:
        async with app.test_context() as t:
            await t.send_many(src, [1, 2, 3, 4, 5])
            await t.settle()
            assert t.values(out) == [1, 2, 4, 5]
            sent = {r.value: r.timestamp_ms for r in t.records(src)}
            assert [r.timestamp_ms for r in t.records(out)] == [sent[v] for v in (b"1", b"2", b"4", b"5")]
            dead = t.records(app.dead_letter_topic)
            assert [r.value for r in dead] == [b"3"]
            assert dict(dead[0].headers)["flowbus.error.message"] == b"three"

    run(main())
