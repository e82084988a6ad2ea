"""Windowed aggregations on a controlled clock (the test harness, real RocksDB stores).

Event times are the records' timestamps; the manual clock only drives the idle close.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flowbus import App
from flowbus.clock import ManualClock
from flowbus.operators.dataflow import Dataflow
from flowbus.state.windowed import WindowedTable
from flowbus.testing import TestContext
from flowbus.topic import Topic

S = 1_000


def make_app(tmp_path: Path, **kwargs: Any) -> tuple[App, Topic, Topic]:
    kwargs.setdefault("window_idle_ms", None)
    app = App("win", broker="memory://", state_dir=tmp_path / "state", topic_partitions=2,
              clock=ManualClock(now_ms=1_700_000_000_000), **kwargs)
    return app, app.topic("events", key_type=str), app.topic("results", key_type=str)


def run(app: App, body: Callable[[TestContext], Any]) -> None:
    async def main() -> None:
        async with app.test_context() as t:
            await body(t)

    asyncio.run(main())


async def send(t: TestContext, topic: Topic, key: str, ts: int, value: Any = 1) -> None:
    await t.send(topic, value, key=key, timestamp_ms=ts)


def results(t: TestContext, topic: Topic, key: str | None = None) -> list[tuple[int, int, Any]]:
    return [(v["start"], v["end"], v["value"]) for k, v in t.items(topic) if key is None or k == key]


def test_tumbling_final_emits_once_when_stream_time_passes_the_end(tmp_path: Path) -> None:
    app, events, out = make_app(tmp_path)
    app.stream(events).tumbling_window(10 * S).count().final().to(out)

    async def body(t: TestContext) -> None:
        for ts in (1 * S, 2 * S, 9_999):
            await send(t, events, "a", ts)
        assert results(t, out) == []
        await send(t, events, "a", 10 * S)  # stream time reaches the end: [0, 10 s) closes
        assert results(t, out) == [(0, 10 * S, 3)]
        await send(t, events, "a", 25 * S)
        assert results(t, out) == [(0, 10 * S, 3), (10 * S, 20 * S, 1)]
        assert [r.timestamp_ms for r in t.records(out)] == [0, 10 * S]  # stamped with the window start

    run(app, body)


@pytest.mark.parametrize("out_key", ["str", "json"], ids=["same key codec", "another key codec"])
def test_final_results_sent_straight_to_the_topic_have_the_window_start_and_no_input_headers(
    tmp_path: Path, out_key: str
) -> None:
    """A chain ending in .to(topic) right after the window gets the results without a pass
    through the generic output (the window's stored key bytes go out as they are when the
    topic encodes keys the same way): the same records as the generic path would send."""
    app, events, _ = make_app(tmp_path)
    out = app.topic("direct", key_type=str) if out_key == "str" else app.topic("direct", key_serializer="json")
    app.stream(events).tumbling_window(10 * S).count().final().to(out)

    async def body(t: TestContext) -> None:
        await t.send(events, 1, key="ü-a", timestamp_ms=3 * S, headers={"trace": b"x"})
        await t.send(events, 1, key="ü-a", timestamp_ms=4 * S, headers={"trace": b"y"})
        await t.send(events, 1, key="ü-a", timestamp_ms=12 * S, headers={"trace": b"z"})
        records = t.records(out)
        assert [(r.key, r.timestamp_ms, r.headers) for r in records] == [
            ("ü-a".encode() if out_key == "str" else b'"\xc3\xbc-a"', 0, ())
        ]
        assert t.items(out) == [("ü-a", {"start": 0, "end": 10 * S, "value": 2})]

    run(app, body)


def test_windows_are_per_key_and_per_partition_stream_time(tmp_path: Path) -> None:
    app, events, out = make_app(tmp_path)
    app.stream(events).tumbling_window(10 * S).count().final().to(out)

    async def body(t: TestContext) -> None:
        await t.send(events, 1, key="a", partition=0, timestamp_ms=1 * S)
        await t.send(events, 1, key="b", partition=1, timestamp_ms=2 * S)
        await t.send(events, 1, key="c", partition=0, timestamp_ms=3 * S)
        await t.send(events, 1, key="a", partition=0, timestamp_ms=12 * S)
        # partition 0 passed 10 s: a and c close; b's partition is still at 2 s
        assert sorted(results_with_keys(t, out)) == [("a", 0, 10 * S, 1), ("c", 0, 10 * S, 1)]
        await t.send(events, 1, key="b", partition=1, timestamp_ms=11 * S)
        assert ("b", 0, 10 * S, 1) in results_with_keys(t, out)

    run(app, body)


def results_with_keys(t: TestContext, topic: Topic) -> list[tuple[str, int, int, Any]]:
    return [(k, v["start"], v["end"], v["value"]) for k, v in t.items(topic)]


def test_grace_accepts_out_of_order_records_then_late_ones_are_dropped_and_counted(tmp_path: Path) -> None:
    app, events, out = make_app(tmp_path)
    app.stream(events).tumbling_window(10 * S, grace_ms=5 * S, name="g").count().final().to(out)

    async def body(t: TestContext) -> None:
        await send(t, events, "a", 8 * S)
        await send(t, events, "a", 12 * S)  # past the end, within grace: [0, 10) still open
        await send(t, events, "a", 9 * S)  # out of order, within grace: counted
        assert results(t, out) == []
        await send(t, events, "a", 15 * S)  # end + grace reached
        assert results(t, out) == [(0, 10 * S, 2)]
        await send(t, events, "a", 3 * S)  # its window closed: late
        table = app.tables["g"]
        assert isinstance(table, WindowedTable) and table.late_records == 1
        await send(t, events, "a", 31 * S)
        assert results(t, out) == [(0, 10 * S, 2), (10 * S, 20 * S, 2)]

    run(app, body)


def test_late_records_go_to_the_on_late_topic_with_their_timestamp(tmp_path: Path) -> None:
    app, events, out = make_app(tmp_path)
    late = app.topic("late", key_type=str)
    app.stream(events).tumbling_window(10 * S, on_late=late).count().final().to(out)

    async def body(t: TestContext) -> None:
        await send(t, events, "a", 11 * S)
        await send(t, events, "a", 4 * S, {"n": 4})
        assert t.items(late) == [("a", {"n": 4})]
        assert [r.timestamp_ms for r in t.records(late)] == [4 * S]

    run(app, body)


def test_current_emits_every_update_and_nothing_on_close(tmp_path: Path) -> None:
    app, events, out = make_app(tmp_path)
    app.stream(events).tumbling_window(10 * S).sum().current().to(out)

    async def body(t: TestContext) -> None:
        for ts, n in [(1 * S, 5), (2 * S, 7), (11 * S, 1)]:
            await send(t, events, "a", ts, n)
        assert results(t, out) == [(0, 10 * S, 5), (0, 10 * S, 12), (10 * S, 20 * S, 1)]

    run(app, body)


def test_hopping_windows_count_a_record_in_every_window_containing_it(tmp_path: Path) -> None:
    app, events, out = make_app(tmp_path)
    app.stream(events).hopping_window(10 * S, 5 * S).count().final().to(out)

    async def body(t: TestContext) -> None:
        await send(t, events, "a", 7 * S)  # in [0, 10) and [5, 15)
        await send(t, events, "a", 12 * S)  # in [5, 15) and [10, 20); closes [0, 10)
        assert results(t, out) == [(0, 10 * S, 1)]
        await send(t, events, "a", 40 * S)
        assert results(t, out) == [(0, 10 * S, 1), (5 * S, 15 * S, 2), (10 * S, 20 * S, 1)]

    run(app, body)


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda w: w.count(), 3),
        (lambda w: w.sum("n"), 12),
        (lambda w: w.sum(lambda v: v["n"] * 2), 24),
        (lambda w: w.min("n"), 1),
        (lambda w: w.max("n"), 7),
        (lambda w: w.mean("n"), 4.0),
        (lambda w: w.reduce(lambda a, b: {"n": a["n"] + b["n"]}), {"n": 12}),
        (lambda w: w.aggregate(list, lambda acc, v: [*acc, v["n"]]), [4, 7, 1]),
        (lambda w: w.aggregate({"n": 0}, lambda acc, v: {"n": acc["n"] + v["n"]}), {"n": 12}),
        (lambda w: w.collect("n"), [4, 7, 1]),
        (lambda w: w.collect(), [{"n": 4}, {"n": 7}, {"n": 1}]),
    ],
)
def test_every_aggregation(tmp_path: Path, make: Callable[[Any], Any], expected: Any) -> None:
    app, events, out = make_app(tmp_path)
    make(app.stream(events).tumbling_window(10 * S)).final().to(out)

    async def body(t: TestContext) -> None:
        for ts, n in [(1 * S, 4), (2 * S, 7), (3 * S, 1)]:
            await send(t, events, "a", ts, {"n": n})
        await send(t, events, "a", 20 * S, {"n": 0})
        assert results(t, out) == [(0, 10 * S, expected)]

    run(app, body)


def test_sliding_window_final_one_result_per_record_over_the_last_duration(tmp_path: Path) -> None:
    app, events, out = make_app(tmp_path)
    app.stream(events).sliding_window(10 * S, grace_ms=2 * S).sum().final().to(out)

    async def body(t: TestContext) -> None:
        await send(t, events, "a", 1 * S, 1)
        await send(t, events, "a", 5 * S, 10)
        await send(t, events, "a", 4 * S, 100)  # out of order: in the window of 5 s, not of 1 s
        await send(t, events, "a", 12 * S, 1000)  # 1 s is out of its window
        await send(t, events, "a", 40 * S, 0)
        assert results(t, out) == [
            (0, 1 * S + 1, 1),
            (4 * S - 10 * S + 1 if False else 0, 4 * S + 1, 101),
            (0, 5 * S + 1, 111),
            (2 * S + 1, 12 * S + 1, 1110),
        ]

    run(app, body)


def test_sliding_window_current_and_expiry(tmp_path: Path) -> None:
    app, events, out = make_app(tmp_path)
    table_name = "slide"
    app.stream(events).sliding_window(10 * S, name=table_name).count().current().to(out)

    async def body(t: TestContext) -> None:
        await send(t, events, "a", 1 * S)
        await send(t, events, "a", 5 * S)
        await send(t, events, "a", 12 * S)
        assert [v for _, _, v in results(t, out)] == [1, 2, 2]
        await send(t, events, "a", 100 * S)
        await t.commit()
        table = app.tables[table_name]
        entries = [v for k, v in table._partition_items(next(iter(p for p in table.parts.values())))]
        assert entries == [[[100 * S, None]]] or entries == []  # only what an open window needs

    run(app, body)


def test_session_windows_merge_and_close_after_the_gap(tmp_path: Path) -> None:
    app, events, out = make_app(tmp_path)
    app.stream(events).session_window(5 * S, grace_ms=5 * S).collect().final().to(out)

    async def body(t: TestContext) -> None:
        await send(t, events, "a", 1 * S, "x1")
        await send(t, events, "a", 10 * S, "x10")  # a second session (more than 5 s later)
        await send(t, events, "a", 5 * S, "x5")  # bridges both: one session 1..10
        await send(t, events, "b", 11 * S, "y")
        assert results(t, out) == []
        await send(t, events, "a", 20 * S, "x20")  # gap + grace after 10 s: not yet closed
        assert results(t, out) == []
        await send(t, events, "a", 21 * S, "x21")  # now closed; x21 joins x20's session
        assert results(t, out, "a") == [(1 * S, 10 * S + 1, ["x1", "x10", "x5"])]  # arrival order
        await send(t, events, "a", 40 * S, "x40")
        assert results(t, out, "a")[1] == (20 * S, 21 * S + 1, ["x20", "x21"])
        assert results(t, out, "b") == [(11 * S, 11 * S + 1, ["y"])]

    run(app, body)


def test_session_closed_with_grace_zero_is_not_reopened(tmp_path: Path) -> None:
    app, events, out = make_app(tmp_path)
    app.stream(events).session_window(5 * S).count().final().to(out)

    async def body(t: TestContext) -> None:
        await send(t, events, "a", 1 * S)
        await send(t, events, "a", 10 * S)  # closes the session of 1 s (gap passed)
        assert results(t, out) == [(1 * S, 1 * S + 1, 1)]
        await send(t, events, "a", 5 * S)  # joins the open session of 10 s, not the closed one
        await send(t, events, "a", 30 * S)
        assert results(t, out) == [(1 * S, 1 * S + 1, 1), (5 * S, 10 * S + 1, 2)]

    run(app, body)


def test_session_aggregate_needs_merge(tmp_path: Path) -> None:
    app, events, _ = make_app(tmp_path)
    with pytest.raises(ValueError, match="merge"):
        app.stream(events).session_window(5 * S).aggregate(0, lambda a, v: a + v)


def test_idle_close_emits_the_last_window_of_a_quiet_stream(tmp_path: Path) -> None:
    app, events, out = make_app(tmp_path, window_idle_ms=3 * S)
    app.stream(events).tumbling_window(10 * S).count().final().to(out)

    async def body(t: TestContext) -> None:
        now = t.clock.now_ms()
        start = now - now % (10 * S)
        await send(t, events, "a", now)  # one record, then silence
        await t.advance(2.0)
        assert results(t, out) == []
        # the watermark follows the wall clock once idle: the window closes at its end (>= idle)
        await t.advance((start + 10 * S - now) / 1000 + 3.5)
        assert results(t, out) == [(start, start + 10 * S, 1)]

    run(app, body)


def test_idle_close_waits_for_the_idle_time_and_keeps_later_records_late(tmp_path: Path) -> None:
    app, events, out = make_app(tmp_path, window_idle_ms=4 * S)
    app.stream(events).tumbling_window(1 * S, name="t").count().final().to(out)

    async def body(t: TestContext) -> None:
        await send(t, events, "a", 500)  # window [0, 1 s), event time far behind the wall clock
        await t.advance(3.9)
        assert results(t, out) == []  # not idle long enough yet
        await t.advance(0.2)
        assert results(t, out) == [(0, 1 * S, 1)]
        await send(t, events, "a", 700)  # the window was closed: late, not a second result
        assert results(t, out) == [(0, 1 * S, 1)]
        assert app.tables["t"].late_records == 1  # type: ignore[attr-defined]

    run(app, body)


def test_no_idle_close_when_disabled(tmp_path: Path) -> None:
    app, events, out = make_app(tmp_path, window_idle_ms=None)
    app.stream(events).tumbling_window(1 * S).count().final().to(out)

    async def body(t: TestContext) -> None:
        await send(t, events, "a", 500)
        await t.advance(60.0)
        assert results(t, out) == []

    run(app, body)


def test_group_by_keeps_event_time_for_windows_downstream(tmp_path: Path) -> None:
    app, events, out = make_app(tmp_path)
    flow: Dataflow = app.stream(events).group_by(lambda v: v["user"], name="by-user")
    flow.tumbling_window(10 * S).count().final().to(out)

    async def body(t: TestContext) -> None:
        for ts, user in [(1 * S, "u1"), (2 * S, "u2"), (3 * S, "u1")]:
            await t.send(events, {"user": user}, key="any", timestamp_ms=ts)
        for user in ("u1", "u2"):
            await t.send(events, {"user": user}, key="any", timestamp_ms=30 * S)
        assert sorted(results_with_keys(t, out)) == [("u1", 0, 10 * S, 2), ("u2", 0, 10 * S, 1)]

    run(app, body)


def test_timestamp_extractor(tmp_path: Path) -> None:
    app, events, out = make_app(tmp_path)
    app.stream(events).tumbling_window(10 * S, timestamp=lambda v: v["at"]).count().final().to(out)

    async def body(t: TestContext) -> None:
        await send(t, events, "a", 99 * S, {"at": 1 * S})
        await send(t, events, "a", 1, {"at": 12 * S})
        assert results(t, out) == [(0, 10 * S, 1)]

    run(app, body)


def test_a_window_continues_across_commits(tmp_path: Path) -> None:
    """A window's records before and after commits add up: once a commit has taken a window,
    its next record reads it back from the committed state (a window opened after the last
    commit is new and is opened without a lookup)."""
    app, events, out = make_app(tmp_path)
    app.stream(events).tumbling_window(10 * S, name="c").count().final().to(out)

    async def body(t: TestContext) -> None:
        await send(t, events, "a", 1 * S)
        await send(t, events, "a", 2 * S)
        await t.commit()
        await send(t, events, "a", 3 * S)
        await t.commit()
        await send(t, events, "b", 4 * S)  # a first record for "b" after the commits: a new window
        await send(t, events, "a", 5 * S)
        assert dict(app.tables["c"].items()) == {("a", (0, 10 * S)): 4, ("b", (0, 10 * S)): 1}
        await send(t, events, "a", 10 * S)
        await send(t, events, "b", 10 * S)
        assert sorted(results(t, out)) == [(0, 10 * S, 1), (0, 10 * S, 4)]

    run(app, body)


@pytest.mark.parametrize("out_key", ["str", "json"], ids=["same key codec", "another key codec"])
def test_windows_closing_at_one_time_each_come_out_once(tmp_path: Path, out_key: str) -> None:
    """Windows closing at the same time are closed in one run: those committed before (read
    back from the store), those opened since the last commit, one updated on both sides of a
    commit; each comes out once with its count, and nothing of them stays in the store."""
    app, events, _ = make_app(tmp_path)
    out = app.topic("direct", key_type=str) if out_key == "str" else app.topic("direct", key_serializer="json")
    app.stream(events).tumbling_window(10 * S, grace_ms=2 * S, name="c").count().final().to(out)

    async def body(t: TestContext) -> None:
        for i in range(20):
            await t.send(events, 1, key=f"k{i:02d}", partition=0, timestamp_ms=1 * S + i)
        await t.commit()
        for i in range(10, 40):
            await t.send(events, 1, key=f"k{i:02d}", partition=0, timestamp_ms=2 * S + i)
        await t.send(events, 1, key="k05", partition=0, timestamp_ms=13 * S)  # the watermark passes 12 s
        expected = [(f"k{i:02d}", 0, 10 * S, 2 if 10 <= i < 20 else 1) for i in range(40)]
        assert sorted(results_with_keys(t, out)) == expected  # (the topic has two partitions)
        assert [r.timestamp_ms for r in t.records(out)] == [0] * 40
        assert dict(app.tables["c"].items()) == {("k05", (10 * S, 20 * S)): 1}

    run(app, body)


def test_window_store_is_committed_and_closed_windows_tombstoned(tmp_path: Path) -> None:
    app, events, out = make_app(tmp_path)
    app.stream(events).tumbling_window(10 * S, name="c").count().final().to(out)

    async def body(t: TestContext) -> None:
        await send(t, events, "a", 1 * S)
        await t.commit()
        changelog = t.records("win-c-changelog")
        assert any(r.value == b"1" for r in changelog)
        await send(t, events, "a", 11 * S)
        await t.commit()
        changelog = t.records("win-c-changelog")
        window_keys = [r.key for r in changelog if r.key]
        first = window_keys[0]
        assert any(r.key == first and r.value is None for r in changelog)  # tombstoned on close
        assert dict(app.tables["c"].items()) == {("a", (10 * S, 20 * S)): 1}

    run(app, body)


def test_the_stream_time_record_is_sent_again_before_the_changelog_retention_removes_it(tmp_path: Path) -> None:
    """Window changelogs are compact,delete with a retention of a day past the windows: a stream
    silent for longer would lose its stream-time record (key b""), so a commit sends it again
    once it is half a day old, even though stream time did not move."""
    from flowbus.state.windowed import TIME_REFRESH_MS

    app, events, out = make_app(tmp_path, commit_interval_ms=3_600_000)
    app.stream(events).tumbling_window(10 * S, name="c").count().final().to(out)

    def time_records(t: TestContext) -> int:
        return sum(1 for r in t.records("win-c-changelog") if r.key == b"")

    async def body(t: TestContext) -> None:
        await send(t, events, "a", 1 * S)
        await t.commit()
        assert time_records(t) == 1
        await t.advance(3_600)  # an hour of silence: one commit, nothing to send
        assert time_records(t) == 1
        await t.advance(TIME_REFRESH_MS / 1000)
        assert time_records(t) == 2, "the stream-time record was not refreshed"
        [last] = [r for r in t.records("win-c-changelog") if r.key == b""][-1:]
        assert last.timestamp_ms >= t.clock.now_ms() - 3_600_000

    run(app, body)


def test_bad_window_arguments_are_clear_errors(tmp_path: Path) -> None:
    app, events, _ = make_app(tmp_path)
    stream = app.stream(events)
    with pytest.raises(ValueError, match="step"):
        stream.hopping_window(5 * S, 10 * S)
    with pytest.raises(ValueError, match="duration_ms"):
        stream.tumbling_window(0)
    with pytest.raises(TypeError, match="grace_ms"):
        stream.tumbling_window(10, grace_ms="1s")  # type: ignore[arg-type]
