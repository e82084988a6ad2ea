"""The framework through the test harness: agents, sinks, streams, errors, timers, guarantees."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import flowbus
from flowbus import AgentError, App, ConfigurationError, ManualClock


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


@dataclass
class Click:
    user: str
    url: str


def make_app(**kwargs: Any) -> App:
    return App("t", broker="memory://", **kwargs)


def test_agent_yields_to_sinks_and_sees_typed_values() -> None:
    app = make_app()
    clicks = app.topic("clicks", value_type=Click)
    out = app.topic("out")
    collected: list[Any] = []

    @app.agent(clicks, sink=[out, collected.append])
    async def enrich(stream: flowbus.Stream) -> Any:
        async for click in stream:
            assert isinstance(click, Click)
            yield {"user": click.user, "section": click.url.strip("/")}

    async def main() -> None:
        async with app.test_context() as t:
            await t.send(clicks, Click("u1", "/a"))
            await t.send(clicks, {"user": "u2", "url": "/b"})
            assert t.values(out) == [{"user": "u1", "section": "a"}, {"user": "u2", "section": "b"}]
            assert collected == t.values(out)

    run(main())


def test_items_events_and_agent_send() -> None:
    app = make_app()
    topic = app.topic("kv", key_type=str)
    seen: list[Any] = []

    @app.agent(topic)
    async def keyed(stream: flowbus.Stream) -> None:
        async for event in stream.events():
            seen.append((event.topic, event.partition, event.offset, event.key, event.value, dict(event.headers)))

    other = app.topic("pairs", key_type=str)
    pairs: list[Any] = []

    @app.agent(other)
    async def items(stream: flowbus.Stream) -> None:
        async for key, value in stream.items():
            pairs.append((key, value))

    async def main() -> None:
        async with app.test_context() as t:
            await t.send(topic, {"n": 1}, key="k1", headers={"h": "v"})
            await keyed.send({"n": 2}, key="k2")
            await t.settle()
            await t.send(other, 5, key="a")
        assert seen[0] == ("kv", 0, 0, "k1", {"n": 1}, {"h": b"v"})
        assert seen[1][3:5] == ("k2", {"n": 2})
        assert pairs == [("a", 5)]

    run(main())


def test_agent_to_agent_sink_and_concurrency_keeps_partition_order() -> None:
    app = make_app(topic_partitions=4)
    numbers = app.topic("numbers", key_type=str)
    per_partition: dict[int, list[int]] = {}

    @app.agent(app.topic("doubled"))
    async def collect(stream: flowbus.Stream) -> None:
        async for event in stream.events():
            per_partition.setdefault(event.partition, []).append(event.value)

    @app.agent(numbers, concurrency=3, sink=[collect])
    async def double(stream: flowbus.Stream) -> Any:
        async for value in stream:
            await asyncio.sleep(0)
            yield value * 2

    async def main() -> None:
        async with app.test_context() as t:
            for i in range(40):
                await t.send(numbers, i, key=f"k{i % 4}", settle=False)
            await t.settle()
            got = sorted(v for vs in per_partition.values() for v in vs)
            assert got == [i * 2 for i in range(40)]

    run(main())


@pytest.mark.parametrize("policy", ["log", "dead_letter"])
def test_bad_records_and_agent_errors_follow_the_policy_and_the_agent_keeps_going(policy: str) -> None:
    app = make_app(error_policy=policy)
    clicks = app.topic("clicks", value_type=Click)
    done: list[str] = []

    @app.agent(clicks)
    async def agent(stream: flowbus.Stream) -> None:
        async for click in stream:
            if click.url == "/boom":
                raise RuntimeError("boom")
            done.append(click.user)

    async def main() -> None:
        async with app.test_context() as t:
            await t.send(clicks, Click("u1", "/a"))
            await t.send_raw(clicks, b"{broken", key=b"kk")
            await t.send(clicks, {"user": "u2"})
            await t.send(clicks, Click("u3", "/boom"))
            await t.send(clicks, Click("u4", "/c"))
            await t.commit()
            assert done == ["u1", "u4"]
            assert t.committed_offsets()[("clicks", 0)] == 5
            dead = t.records(app.dead_letter_topic)
            if policy == "dead_letter":
                assert [r.value for r in dead] == [b"{broken", b'{"user":"u2"}', b'{"user":"u3","url":"/boom"}']
                assert dead[0].key == b"kk"
                headers = dict(dead[2].headers)
                assert headers["flowbus.error.type"] == b"RuntimeError"
                assert headers["flowbus.source.offset"] == b"3"
                assert headers["flowbus.source.topic"] == b"clicks"
            else:
                assert dead == []

    run(main())


@pytest.mark.parametrize("key_type", [str, None], ids=["text keys", "json keys"])
def test_untyped_values_an_agent_cannot_decode_are_dead_lettered(key_type: Any) -> None:
    """Agents decode with the C decoders first (orjson, bytes.decode) and ask the codec again
    only on a failure: a bad value or key still reaches the error policy as a DecodeError."""
    app = make_app(error_policy="dead_letter")
    events = app.topic("events", key_type=key_type)
    seen: list[tuple[Any, Any]] = []

    @app.agent(events)
    async def agent(stream: flowbus.Stream) -> None:
        async for key, value in stream.items():
            seen.append((key, value))

    async def main() -> None:
        async with app.test_context() as t:
            await t.send_raw(events, b'{"n": 1}', key=b'"a"')
            await t.send_raw(events, b"{broken", key=b'"b"')
            await t.send_raw(events, b'{"n": 3}', key=b"\xff")  # not UTF-8, not JSON
            await t.send_raw(events, None, key=b'"d"')  # a tombstone: None, not an error
            await t.commit()
            key_a, key_d = ('"a"', '"d"') if key_type is str else ("a", "d")
            assert seen == [(key_a, {"n": 1}), (key_d, None)]
            dead = t.records(app.dead_letter_topic)
            assert [(r.key, r.value) for r in dead] == [(b'"b"', b"{broken"), (b"\xff", b'{"n": 3}')]
            assert all(dict(r.headers)["flowbus.error.type"] == b"DecodeError" for r in dead)

    run(main())


def test_stop_policy_stops_without_committing_the_failing_event() -> None:
    app = make_app(error_policy="stop")
    topic = app.topic("in")
    done: list[int] = []

    @app.agent(topic)
    async def agent(stream: flowbus.Stream) -> None:
        async for n in stream:
            if n == 3:
                raise ValueError("three")
            done.append(n)

    async def main() -> None:
        with pytest.raises(AgentError) as info:
            async with app.test_context() as t:
                for n in range(5):
                    await t.send(topic, n, settle=False)
                await t.settle()
        assert isinstance(info.value.__cause__, (AgentError, ValueError))
        assert done == [0, 1, 2]
        assert t.committed_offsets()[("in", 0)] == 3

    run(main())


def test_take_batches_by_count_and_by_app_clock() -> None:
    app = make_app()
    topic = app.topic("in")
    batches: list[list[int]] = []

    @app.agent(topic)
    async def agent(stream: flowbus.Stream) -> None:
        async for batch in stream.take(3, within_s=10):
            batches.append(batch)

    async def main() -> None:
        async with app.test_context() as t:
            for n in range(4):
                await t.send(topic, n)
            assert batches == [[0, 1, 2]]
            await t.advance(9.9)
            assert batches == [[0, 1, 2]]
            await t.advance(0.1)
            assert batches == [[0, 1, 2], [3]]

    run(main())


def test_timer_crontab_and_task_use_the_app_clock() -> None:
    clock = ManualClock(now_ms=1_700_000_000_000)  # 2023-11-14T22:13:20Z
    app = make_app(clock=clock)
    ticks: list[int] = []
    crons: list[int] = []
    started: list[bool] = []

    @app.timer(1.0)
    async def tick() -> None:
        ticks.append(clock.now_ms())

    @app.crontab("0 * * * *", timezone="Europe/Paris")
    def hourly() -> None:
        crons.append(clock.now_ms())

    @app.task
    async def startup() -> None:
        started.append(True)

    async def main() -> None:
        async with app.test_context() as t:
            assert started == [True]
            await t.advance(3)
            assert len(ticks) == 3 and ticks[1] - ticks[0] == 1_000
            await t.advance(47 * 60)  # to 23:00:20 UTC: the top of the hour passed once
            assert len(crons) == 1
            assert crons[0] % 3_600_000 == 0
            assert len(ticks) == 3 + 47 * 60

    run(main())


def test_on_leader_timer_runs_on_the_only_worker() -> None:
    app = make_app()
    ticks: list[int] = []

    @app.timer(5, on_leader=True)
    def tick() -> None:
        ticks.append(1)

    async def main() -> None:
        async with app.test_context() as t:
            await t.advance(10)
        assert ticks == [1, 1]

    run(main())


def test_backpressure_pauses_instead_of_dropping() -> None:
    app = make_app(max_poll_records=10)
    topic = app.topic("in")
    release = asyncio.Event()
    got: list[int] = []

    @app.agent(topic, max_buffered_events=20)
    async def slow(stream: flowbus.Stream) -> None:
        async for n in stream:
            if n == 0:
                await release.wait()
            got.append(n)

    async def main() -> None:
        async with app.test_context() as t:
            for n in range(200):
                await t.send(topic, n, settle=False)
            for _ in range(200):
                await asyncio.sleep(0)
            worker = t.worker
            assert worker.paused, "the partition feeding the full channel is paused"
            assert len(worker.channels[0]) <= 20 + 10
            release.set()
            await t.settle()
            assert got == list(range(200))
            assert not worker.paused

    run(main())


def test_at_most_once_commits_before_processing() -> None:
    app = make_app(processing_guarantee="at_most_once", error_policy="stop")
    topic = app.topic("in")

    @app.agent(topic)
    async def agent(stream: flowbus.Stream) -> None:
        async for n in stream:
            if n == 1:
                raise ValueError("lost, not replayed")

    async def main() -> None:
        with pytest.raises(AgentError):
            async with app.test_context() as t:
                await t.send_many(topic, [0, 1, 2])
        assert t.committed_offsets()[("in", 0)] == 3

    run(main())


def test_exactly_once_commits_outputs_and_offsets_together() -> None:
    app = make_app(processing_guarantee="exactly_once")
    src = app.topic("in")
    out = app.topic("out")

    @app.agent(src, sink=[out])
    async def agent(stream: flowbus.Stream) -> Any:
        async for n in stream:
            yield n * 10

    async def main() -> None:
        async with app.test_context() as t:
            await t.send_many(src, [1, 2, 3])
            assert t.records(out, committed_only=True) == []  # transaction still open
            assert ("in", 0) not in t.committed_offsets()
            await t.commit()
            assert [r.value for r in t.records(out, committed_only=True)] == [b"10", b"20", b"30"]
            assert t.committed_offsets()[("in", 0)] == 3

    run(main())


def test_exactly_once_failure_aborts_the_open_transaction() -> None:
    app = make_app(processing_guarantee="exactly_once", error_policy="stop")
    src = app.topic("in")
    out = app.topic("out")

    @app.agent(src, sink=[out])
    async def agent(stream: flowbus.Stream) -> Any:
        async for n in stream:
            if n == 3:
                raise ValueError("crash")
            yield n

    async def main() -> None:
        with pytest.raises(AgentError):
            async with app.test_context() as t:
                await t.send_many(src, [1, 2])
                await t.commit()
                await t.send_many(src, [5, 3])
        assert [r.value for r in t.records(out, committed_only=True)] == [b"1", b"2"]
        assert t.committed_offsets()[("in", 0)] == 2

    run(main())


def test_configuration_is_checked() -> None:
    with pytest.raises(ConfigurationError):
        App("x", processing_guarantee="twice")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        App("x", error_policy="ignore")  # type: ignore[arg-type]
    app = App("x", broker="memory://")
    with pytest.raises(ConfigurationError):
        app.crontab("not a cron")
    with pytest.raises(ConfigurationError):
        app.producer  # noqa: B018


def test_topic_send_outside_a_worker() -> None:
    app = App("x", broker="memory://")
    topic = app.topic("t", key_type=str)

    async def main() -> None:
        meta = await (await topic.send({"a": 1}, key="k"))
        assert (meta.topic, meta.offset) == ("t", 0)
        await app.close()

    run(main())


def test_agent_group_by_brings_each_key_to_one_instance() -> None:
    app = App("acct", broker="memory://", topic_partitions=4)
    withdrawals = app.topic("withdrawals")
    seen: dict[str, set[tuple[int, int]]] = {}

    @app.agent(withdrawals, group_by=lambda w: w["account"], concurrency=2, name="per-account")
    async def per_account(stream: flowbus.Stream) -> None:
        async for event in stream.events():
            seen.setdefault(event.key, set()).add((event.partition, event.value["amount"]))

    async def main() -> None:
        async with app.test_context() as t:
            await t.send_many(withdrawals, [{"account": f"a{i % 5}", "amount": i} for i in range(30)])
            assert per_account.topic.name == "acct-per-account-repartition"

    run(main())
    assert sorted(seen) == [f"a{i}" for i in range(5)]
    assert all(len({p for p, _ in pairs}) == 1 for pairs in seen.values()), "one key, one partition"
    assert sorted(a for pairs in seen.values() for _, a in pairs) == list(range(30))


# -- names and app.main() ---------------------------------------------------------------------

def test_names_that_break_kafkas_rule_are_refused_with_the_rule() -> None:
    with pytest.raises(ConfigurationError, match=r"app id 'my app': use only ASCII letters, digits"):
        App("my app")
    app = App("names")
    with pytest.raises(ConfigurationError, match=r"topic name 'bad topic!' may contain only ASCII letters, digits, "
                                                 r"'\.', '_' and '-' \(Kafka's rule for topic names\)"):
        app.topic("bad topic!")
    with pytest.raises(ConfigurationError, match="topic name is 250 characters; the limit is 249"):
        app.topic("t" * 250)


def test_main_takes_the_worker_options(capsys: pytest.CaptureFixture[str]) -> None:
    """``app.main(argv)`` is ``flowbus worker`` for this app: its options, its one-line errors."""
    import logging
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    app = App("main-args")
    try:
        with pytest.raises(SystemExit) as exited:
            app.main(["--broker", f"kafka://127.0.0.1:{port}", "-l", "warning"])
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    assert exited.value.code == 1
    assert app.broker == f"kafka://127.0.0.1:{port}", "--broker was applied to the app"
    assert capsys.readouterr().err.splitlines() == [
        (f"Error: kafka://127.0.0.1:{port}: cannot connect to the broker (127.0.0.1:{port}: connection refused); "
         "is the broker running?")
    ]
    with pytest.raises(SystemExit) as exited:
        app.main(["--help"])
    assert exited.value.code == 0
    help_text = capsys.readouterr().out
    assert "--data-dir" in help_text and "--timeout-s" in help_text and "-A" not in help_text


def test_main_freezes_what_start_up_built_and_unfreezes_on_stop(tmp_path: Path) -> None:
    """``flowbus worker`` (and ``app.main``) moves start-up's objects out of the cyclic
    collector's reach once the worker has started, and collects the young generation less often
    while it runs; it gives both back when it stops (a process that goes on after ``main(argv)``,
    like this one, is not left with them frozen or with its thresholds changed)."""
    import gc
    import logging

    from flowbus.cli.worker import YOUNG_COLLECTION_OBJECTS

    gc.unfreeze()  # whatever ran before in this process
    thresholds = gc.get_threshold()
    assert thresholds[0] != YOUNG_COLLECTION_OBJECTS
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    app = App("main-gc", broker=f"embedded://{tmp_path / 'data'}", state_dir=tmp_path / "state")
    seen: dict[str, int] = {}

    @app.task
    async def look() -> None:
        for _ in range(500):  # start-up ends soon after tasks start; 5 s at most
            if gc.get_freeze_count():
                break
            await asyncio.sleep(0.01)
        seen["frozen"] = gc.get_freeze_count()
        seen["young"] = gc.get_threshold()[0]
        app.stop()

    try:
        with pytest.raises(SystemExit) as exited:
            app.main(["-l", "warning"])
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    assert exited.value.code == 0
    assert seen["frozen"] > 0
    assert seen["young"] == YOUNG_COLLECTION_OBJECTS
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == thresholds
