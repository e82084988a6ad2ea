"""Windowed tables, faust style (``app.Table(...).tumbling(...)``), on a controlled clock.

Event times are the records' timestamps; the manual clock drives ``relative_to_now`` and the
idle close. One test runs on the embedded broker and restarts the app mid-window.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from flowbus import App
from flowbus.app_errors import ConfigurationError
from flowbus.clock import ManualClock
from flowbus.state.window_tables import WindowSet, WindowTable, WindowWrapper
from flowbus.state.windows import key_prefix, window_key
from flowbus.testing import TestContext
from flowbus.topic import Topic
from flowbus.transports.partitioner import partition_for_key

S = 1_000
NOW_MS = 1_700_000_000_000
"""The manual clock's wall time at start (a multiple of 10 s)."""


def make_app(tmp_path: Path, **kwargs: Any) -> tuple[App, Topic]:
    kwargs.setdefault("window_idle_ms", None)
    kwargs.setdefault("topic_partitions", 1)
    app = App("views", broker="memory://", state_dir=tmp_path / "state", clock=ManualClock(now_ms=NOW_MS), **kwargs)
    return app, app.topic("views", key_type=str)


def run(app: App, body: Callable[[TestContext], Any]) -> None:
    async def main() -> None:
        async with app.test_context() as t:
            await body(t)

    asyncio.run(main())


async def view(t: TestContext, topic: Topic, page: str, ts_ms: int, value: Any = None) -> None:
    await t.send(topic, value if value is not None else {"page": page}, key=page, timestamp_ms=ts_ms)


def windows(counts: WindowWrapper) -> dict[tuple[str, tuple[int, int]], Any]:
    """Every open window of the store, in ms."""
    return dict(counts.table.items())


def counting_agent(app: App, topic: Topic, counts: WindowWrapper, seen: list[Any] | None = None) -> None:
    @app.agent(topic)
    async def count(stream):  # type: ignore[no-untyped-def]
        async for v in stream:
            counts[v["page"]] += 1
            if seen is not None:
                w = counts[v["page"]]
                seen.append((v["page"], w.current(), w.value(), w.now(), w.delta(10)))


def test_tumbling_counts_from_an_agent_in_the_windows_of_event_time(tmp_path: Path) -> None:
    app, views = make_app(tmp_path)
    counts = app.Table("page_views", default=int).tumbling(10.0, expires=timedelta(seconds=10))
    seen: list[Any] = []
    counting_agent(app, views, counts, seen)

    async def body(t: TestContext) -> None:
        for page, ts in [("a", 1 * S), ("a", 2 * S), ("b", 3 * S), ("a", 12 * S)]:
            await view(t, views, page, ts)
        # (page, current, value, now, delta(10)): now is the wall clock's window, empty here;
        # delta(10) at 12 s reads [0, 10), still open (expires 10 s).
        assert seen == [("a", 1, 1, 0, 0), ("a", 2, 2, 0, 0), ("b", 1, 1, 0, 0), ("a", 1, 1, 0, 2)]
        assert windows(counts) == {("a", (0, 10 * S)): 2, ("b", (0, 10 * S)): 1, ("a", (10 * S, 20 * S)): 1}
        # Outside an event, current() is the window of the partition's stream time (12 s).
        assert counts["a"].current() == 1 and counts["a"].delta(10) == 2 and counts["b"].current() == 0
        assert counts["a"][(0.0, 10.0)] == 2 and counts["a"][(10.0, 20.0)] == 1
        assert dict(counts.items()) == {"a": 1}
        assert dict(counts.items().delta(10)) == {"a": 2, "b": 1}
        assert sorted(counts.keys().delta(timedelta(seconds=10))) == ["a", "b"]
        assert list(counts.values().current()) == [1] and list(counts.items().now()) == []
        assert "a" in counts and "b" not in counts

    run(app, body)


def test_hopping_updates_every_window_containing_the_time_and_reads_the_newest(tmp_path: Path) -> None:
    app, views = make_app(tmp_path)
    counts = app.Table("page_views", default=int).hopping(10, 5, expires=20)
    seen: list[Any] = []
    counting_agent(app, views, counts, seen)

    async def body(t: TestContext) -> None:
        await view(t, views, "a", 7 * S)  # in [0, 10) and [5, 15)
        await view(t, views, "a", 12 * S)  # in [5, 15) and [10, 20)
        assert windows(counts) == {
            ("a", (0, 10 * S)): 1, ("a", (5 * S, 15 * S)): 2, ("a", (10 * S, 20 * S)): 1,
        }
        # current() is the newest window containing the event's time (faust's current())
        assert [(cur, delta) for _, cur, _, _, delta in seen] == [(1, 0), (1, 1)]

    run(app, body)


def test_relative_to_now_uses_the_app_clock_not_the_record_timestamps(tmp_path: Path) -> None:
    app, views = make_app(tmp_path)
    counts = app.Table("page_views", default=int).tumbling(10.0).relative_to_now()
    seen: list[Any] = []
    counting_agent(app, views, counts, seen)

    async def body(t: TestContext) -> None:
        await view(t, views, "a", 1 * S)  # the record is from 1970; the wall clock says NOW_MS
        await view(t, views, "a", 2 * S)
        assert windows(counts) == {("a", (NOW_MS, NOW_MS + 10 * S)): 2}
        # value() and now() follow the wall clock; current() the event's own (empty) window
        assert seen[-1] == ("a", 0, 2, 2, 0)
        await t.advance(10.0)  # the next window of the wall clock
        await view(t, views, "a", 3 * S)
        assert windows(counts) == {("a", (NOW_MS + 10 * S, NOW_MS + 20 * S)): 1}  # the first closed
        assert seen[-1][2:4] == (1, 1)

    run(app, body)


def test_relative_to_field_takes_seconds_or_datetimes_from_the_value(tmp_path: Path) -> None:
    app, views = make_app(tmp_path)
    at_field = app.Table("by_field", default=int).tumbling(10.0, expires=60.0).relative_to_field("at")
    by_fn = app.Table("by_fn", default=int).tumbling(10.0, expires=60.0).relative_to_field(
        lambda v: datetime.fromtimestamp(v["at"], UTC))
    seen: list[int] = []

    @app.agent(views)
    async def count(stream):  # type: ignore[no-untyped-def]
        async for v in stream:
            at_field[v["page"]] += 1
            by_fn[v["page"]] += 10
            seen.append(at_field[v["page"]].value())

    async def body(t: TestContext) -> None:
        await view(t, views, "a", 99 * S, {"page": "a", "at": 21.5})
        await view(t, views, "a", 1, {"page": "a", "at": 25})
        assert windows(at_field) == {("a", (20 * S, 30 * S)): 2}
        assert windows(by_fn) == {("a", (20 * S, 30 * S)): 20}
        assert seen == [1, 2]

    run(app, body)


def test_on_window_close_once_per_window_including_a_single_event_window(tmp_path: Path) -> None:
    app, views = make_app(tmp_path)
    closed: list[tuple[Any, Any]] = []
    counts = app.Table("page_views", default=int, on_window_close=lambda k, v: closed.append((k, v))).tumbling(10.0)
    counting_agent(app, views, counts)

    async def body(t: TestContext) -> None:
        await view(t, views, "lonely", 1 * S)  # the only event of its window (faust #250)
        await view(t, views, "a", 4 * S)
        await view(t, views, "a", 9 * S)
        assert closed == []
        await view(t, views, "b", 10 * S)  # stream time reaches 10 s: [0, 10) closes for both keys
        assert sorted(closed) == [(("a", (0.0, 10.0)), 2), (("lonely", (0.0, 10.0)), 1)]
        for ts in (11 * S, 15 * S, 19 * S):
            await view(t, views, "b", ts)
        assert len(closed) == 2
        await view(t, views, "c", 45 * S)
        assert closed[2:] == [(("b", (10.0, 20.0)), 4)]
        assert windows(counts) == {("c", (40 * S, 50 * S)): 1}
        assert counts.table.closed_windows == 3

    run(app, body)


def test_the_idle_close_fires_on_window_close_with_no_further_input(tmp_path: Path) -> None:
    app, views = make_app(tmp_path, window_idle_ms=3 * S)
    closed: list[tuple[Any, Any]] = []
    counts = app.Table("page_views", default=int, on_window_close=lambda k, v: closed.append((k, v))).tumbling(10.0)
    counting_agent(app, views, counts)

    async def body(t: TestContext) -> None:
        await view(t, views, "a", NOW_MS + 4 * S)  # one event at the wall clock's time, then silence
        await t.advance(2.0)
        assert closed == []
        await t.advance(4.5)  # idle for 6.5 s: the watermark reaches 10.5 s past NOW_MS
        assert closed == [(("a", (NOW_MS / 1000, NOW_MS / 1000 + 10)), 1)]
        await t.advance(60.0)
        assert len(closed) == 1 and windows(counts) == {}

    run(app, body)


def test_late_writes_are_ignored_counted_and_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    app, views = make_app(tmp_path)
    closed: list[Any] = []
    counts = app.Table("page_views", default=int, on_window_close=lambda k, v: closed.append((k, v))).tumbling(
        10.0, expires=5.0)
    counting_agent(app, views, counts)

    async def body(t: TestContext) -> None:
        await view(t, views, "a", 8 * S)
        await view(t, views, "a", 12 * S)
        await view(t, views, "a", 9 * S)  # out of order, within expires: counted
        assert windows(counts)[("a", (0, 10 * S))] == 2
        await view(t, views, "a", 15 * S)  # end + expires reached: [0, 10) closes
        assert closed == [(("a", (0.0, 10.0)), 2)]
        with caplog.at_level(logging.WARNING, logger="flowbus.windows"):
            await view(t, views, "a", 3 * S)
            await view(t, views, "a", 4 * S)
        table = app.tables["page_views"]
        assert isinstance(table, WindowTable) and table.late_records == 2
        assert sum("came after its windows closed" in r.getMessage() for r in caplog.records) == 1
        assert closed == [(("a", (0.0, 10.0)), 2)] and ("a", (0, 10 * S)) not in windows(counts)

    run(app, body)


def test_changelog_holds_the_values_and_tombstones_closed_windows(tmp_path: Path) -> None:
    app, views = make_app(tmp_path)
    counts = app.Table("page_views", default=int, key_type=str).tumbling(10.0)
    counting_agent(app, views, counts)
    first = window_key(key_prefix(b"W", b"a"), 0, 10 * S)  # a str key is stored as its UTF-8 bytes

    async def body(t: TestContext) -> None:
        await view(t, views, "a", 1 * S)
        await view(t, views, "a", 2 * S)
        await t.commit()
        log = t.records("views-page_views-changelog")
        assert [(r.key, r.value) for r in log if r.key == first] == [(first, b"2")]
        await view(t, views, "a", 11 * S)
        await t.commit()
        log = t.records("views-page_views-changelog")
        assert [r.value for r in log if r.key == first] == [b"2", None]  # tombstoned on close
        assert windows(counts) == {("a", (10 * S, 20 * S)): 1}

    run(app, body)


def test_each_partition_closes_on_its_own_stream_time(tmp_path: Path) -> None:
    app, views = make_app(tmp_path, topic_partitions=2)
    closed: list[Any] = []
    counts = app.Table("page_views", default=int, key_type=str,
                       on_window_close=lambda k, v: closed.append((k, v))).tumbling(10.0)
    counting_agent(app, views, counts)
    p0, p1 = (next(k for k in "abcdefgh" if partition_for_key(k.encode(), 2) == p) for p in (0, 1))

    async def body(t: TestContext) -> None:
        await view(t, views, p0, 1 * S)
        await view(t, views, p1, 2 * S)
        await view(t, views, p0, 12 * S)  # partition 0 passes 10 s; partition 1 is still at 2 s
        assert closed == [((p0, (0.0, 10.0)), 1)]
        await view(t, views, p1, 10 * S)
        assert closed[1:] == [((p1, (0.0, 10.0)), 1)]

    run(app, body)


def test_what_on_window_close_sends_commits_with_the_close_under_exactly_once(tmp_path: Path) -> None:
    app, views = make_app(tmp_path, processing_guarantee="exactly_once", commit_interval_ms=60_000)
    finals = app.topic("finals", key_type=str)
    counts = app.Table(
        "page_views", default=int, key_type=str,
        on_window_close=lambda key, value: finals.send_soon({"start": key[1][0], "count": value}, key=key[0]),
    ).tumbling(10.0)
    counting_agent(app, views, counts)

    async def body(t: TestContext) -> None:
        await view(t, views, "a", 1 * S)
        await view(t, views, "a", 2 * S)
        await view(t, views, "b", 11 * S)  # closes a's [0, 10): the result is in the open transaction
        assert t.items(finals) == [("a", {"start": 0.0, "count": 2})]
        assert t.records(finals, committed_only=True) == []
        await t.advance(0.1)  # a close brings the commit forward (100 ms), not the 60 s interval
        assert len(t.records(finals, committed_only=True)) == 1
        first = window_key(key_prefix(b"W", b"a"), 0, 10 * S)
        assert [r.value for r in t.records("views-page_views-changelog", committed_only=True) if r.key == first] == [None]

    run(app, body)


def test_set_delete_other_operators_and_errors(tmp_path: Path) -> None:
    app, views = make_app(tmp_path, error_policy="stop")
    totals = app.Table("totals", default=int).hopping(10.0, 5.0, expires=30.0)
    strict = app.Table("strict").tumbling(10.0)
    results: list[Any] = []

    @app.agent(views)
    async def agent(stream):  # type: ignore[no-untyped-def]
        async for v in stream:
            if v["op"] == "set":
                totals[v["page"]] = 10
            elif v["op"] == "mul":
                totals[v["page"]] *= 3
                totals[v["page"]] -= 1
            elif v["op"] == "del":
                del totals[v["page"]]
            elif v["op"] == "strict":
                try:
                    strict[v["page"]] += 1
                except KeyError as exc:
                    results.append(("KeyError", exc.args[0]))
                strict[v["page"]] = 5
                strict[v["page"]] += 1
                results.append(strict[v["page"]].value())
            elif v["op"] == "misuse":
                try:
                    totals[v["page"]].items()
                except TypeError as exc:
                    results.append("TypeError" if "one key" in str(exc) else exc)

    async def body(t: TestContext) -> None:
        await view(t, views, "a", 7 * S, {"page": "a", "op": "set"})  # [0, 10) and [5, 15)
        await view(t, views, "a", 12 * S, {"page": "a", "op": "mul"})  # [5, 15) and [10, 20)
        assert windows(totals) == {("a", (0, 10 * S)): 10, ("a", (5 * S, 15 * S)): 29, ("a", (10 * S, 20 * S)): -1}
        await view(t, views, "a", 13 * S, {"page": "a", "op": "del"})
        assert windows(totals) == {("a", (0, 10 * S)): 10}
        await view(t, views, "b", 1 * S, {"page": "b", "op": "strict"})
        await view(t, views, "b", 1 * S, {"page": "b", "op": "misuse"})
        assert results == [("KeyError", "b"), 6, "TypeError"]

    run(app, body)
    assert isinstance(totals["x"], WindowSet) and "relative to stream" in repr(totals)


def test_on_window_close_needs_windows_and_a_table_is_windowed_once(tmp_path: Path) -> None:
    app, _ = make_app(tmp_path)
    plain = app.Table("plain", on_window_close=print)

    async def main() -> None:
        with pytest.raises(ConfigurationError, match="on_window_close but no windows"):
            async with app.test_context():
                pass

    asyncio.run(main())
    plain.tumbling(10.0)
    with pytest.raises(ConfigurationError, match="once"):
        plain.tumbling(10.0)
    with pytest.raises(ValueError, match="step"):
        app.Table("h").hopping(5.0, 10.0)

    async def coroutine(key: Any, value: Any) -> None: ...

    with pytest.raises(ConfigurationError, match="plain function"):
        app.Table("c", on_window_close=coroutine).tumbling(10.0)


# -- on the embedded broker, across a restart ---------------------------------------------
WAIT_S = 30.0


def restart_app(tmp_path: Path, closed: list[Any], seen: list[Any]) -> App:
    app = App("wv", broker=f"embedded://{tmp_path / 'data'}", state_dir=tmp_path / "data" / "state",
              topic_partitions=1, commit_interval_ms=50, window_idle_ms=500)
    views = app.topic("views", key_type=str)
    counts = app.Table("page_views", default=int, on_window_close=lambda k, v: closed.append((k, v))).tumbling(60.0)

    @app.agent(views)
    async def count(stream):  # type: ignore[no-untyped-def]
        async for v in stream:
            counts[v["page"]] += 1
            seen.append((v["page"], counts[v["page"]].current()))

    return app


async def run_until(app: App, done: Callable[[], bool], send: list[tuple[str, int]], *, at_least_s: float = 0) -> None:
    """Run a worker, send ``send`` ((page, event time ms)) through it, wait until ``done()``
    (and ``at_least_s``), commit and stop."""
    worker = app.make_worker()
    task = asyncio.create_task(worker.run())
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        while not worker.started:
            assert not task.done(), task.exception()
            await asyncio.sleep(0.01)
        views = app.topics["views"]
        for page, ts in send:
            await views.send({"page": page}, key=page, timestamp_ms=ts)
        while not done() or loop.time() < started + at_least_s:
            assert not task.done(), task.exception()
            assert loop.time() < started + WAIT_S, "the worker did not get there in time"
            await asyncio.sleep(0.02)
        await worker.commit()
    finally:
        worker.stop()
        await task


def test_counts_survive_a_restart_mid_window_and_close_once_after_it(tmp_path: Path) -> None:
    # Event times an hour ago (well inside the topic's retention), in one-minute windows: the
    # window [w, w + 60 s) closes on stream time and the idle close, whatever the wall clock says.
    hour_ago = int(datetime.now(UTC).timestamp() * 1000) - 3600 * S
    w = hour_ago - hour_ago % (60 * S)
    w_s = w / 1000
    closed: list[Any] = []
    seen: list[Any] = []
    # An older window closes as soon as stream time passes it; [w, w + 60 s) stays open (the
    # idle close would need 57 s of silence), and the run stops.
    sends = [("a", w - 120 * S), ("a", w + 1 * S), ("b", w + 2 * S), ("a", w + 3 * S)]
    asyncio.run(run_until(restart_app(tmp_path, closed, seen), lambda: len(seen) == 4, sends))
    assert seen == [("a", 1), ("a", 1), ("b", 1), ("a", 2)]
    assert closed == [(("a", (w_s - 120, w_s - 60)), 1)]

    # After the restart the window goes on counting; the idle close (500 ms after its last event,
    # 400 ms before its end) closes it once, with the counts of both runs.
    closed2: list[Any] = []
    seen2: list[Any] = []
    asyncio.run(run_until(restart_app(tmp_path, closed2, seen2), lambda: len(closed2) == 2, [("a", w + 59_600)]))
    assert seen2 == [("a", 3)]
    assert sorted(closed2) == [(("a", (w_s, w_s + 60)), 3), (("b", (w_s, w_s + 60)), 1)]

    # Closed windows stay closed: a third run restores nothing to close and calls nothing.
    closed3: list[Any] = []
    asyncio.run(run_until(restart_app(tmp_path, closed3, []), lambda: True, [], at_least_s=1.5))
    assert closed3 == []


# -- the documentation -----------------------------------------------------------------------
DOC = Path(__file__).resolve().parents[2] / "docs" / "windows.md"
SECTION = "## Windowed tables, faust style"


def test_the_docs_example_counts_page_views_and_reports_each_window_once(tmp_path: Path) -> None:
    section = DOC.read_text().split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert len(blocks) == 1, "update this test when that section of docs/windows.md gains or loses an example"
    namespace: dict[str, Any] = {}
    exec(blocks[0], namespace)  # noqa: S102 - our own documentation
    app, views, finals = namespace["app"], namespace["views"], namespace["finals"]
    app.state_dir = tmp_path

    async def main() -> None:
        async with app.test_context() as t:
            now = t.clock.now_ms()  # a multiple of 10 s
            for page, ts in [("home", 1 * S), ("home", 2 * S), ("about", 3 * S), ("home", 16 * S)]:
                await t.send(views, {"page": page}, key=page, timestamp_ms=now + ts)
            start = now / 1000
            # 16 s passes the first window's end + expires (15 s): it closes, once per page
            assert sorted(t.items(finals)) == [
                ("about", {"start": start, "end": start + 10, "views": 1}),
                ("home", {"start": start, "end": start + 10, "views": 2}),
            ]
            await t.advance(30.0)  # then silence: the idle close reports the last window
            assert t.items(finals)[2:] == [("home", {"start": start + 10, "end": start + 20, "views": 1})]

    asyncio.run(main())
