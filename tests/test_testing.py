"""The test harness (``app.test_context()``) runs the worker on the real broker core: what it
waits for, what it reads, and what it leaves behind."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import flowbus
from flowbus import App
from flowbus.app_errors import AgentError
from flowbus.broker.core import BrokerCore
from flowbus.clock import ManualClock
from flowbus.testing import NotSettledError


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_the_harness_runs_on_the_broker_core_and_removes_its_directory() -> None:
    app = App("core", broker="memory://")
    out = app.topic("out")

    @app.agent(app.topic("in"), sink=[out])
    async def double(stream: flowbus.Stream) -> Any:
        async for n in stream:
            yield n * 2

    async def main() -> None:
        async with app.test_context() as t:
            assert isinstance(t.transport.core, BrokerCore)
            directory = t.transport.data_dir
            record = await t.send("in", 21)
            assert (record.topic, record.partition, record.offset) == ("in", 0, 0)
            assert t.values(out) == [42]
            group = await t.transport.describe_group("core")
            assert group.state == "Stable" and len(group.members) == 1
        assert not directory.exists()
        assert t.values(out) == [42], "outputs stay readable after the block"

    run(main())


def test_advancing_past_the_commit_interval_commits_as_a_live_worker_does() -> None:
    app = App("interval", broker="memory://", clock=ManualClock(), commit_interval_ms=1_000)

    @app.agent(app.topic("in"))
    async def sink(stream: flowbus.Stream) -> None:
        async for _ in stream:
            pass

    async def main() -> None:
        async with app.test_context() as t:
            await t.send_many("in", [1, 2, 3])
            assert t.committed_offsets().get(("in", 0)) is None
            await t.advance(0.5)
            assert t.committed_offsets().get(("in", 0)) is None
            await t.advance(0.5)
            assert t.committed_offsets()[("in", 0)] == 3

    run(main())


def test_records_leave_out_aborted_transactions_and_committed_only_open_ones() -> None:
    app = App("eos", broker="memory://", clock=ManualClock(), processing_guarantee="exactly_once",
              commit_interval_ms=60_000, error_policy="stop")
    out = app.topic("out")

    @app.agent(app.topic("in"), sink=[out])
    async def relay(stream: flowbus.Stream) -> Any:
        async for n in stream:
            if n < 0:
                raise ValueError("negative")
            yield n

    async def main() -> None:
        with pytest.raises(AgentError):
            async with app.test_context() as t:
                await t.send_many("in", [1, 2])
                await t.commit()
                await t.send("in", 3)
                assert t.values(out) == [1, 2, 3], "the open transaction's output is in the log"
                assert [r.value for r in t.records(out, committed_only=True)] == [b"1", b"2"]
                await t.send("in", -1)  # stops the app: the open transaction aborts
        assert t.values(out) == [1, 2], "the aborted output is left out"
        assert t.committed_offsets()[("in", 0)] == 2

    run(main())


def test_an_agent_waiting_on_real_time_is_reported_not_waited_for() -> None:
    app = App("stuck", broker="memory://")
    release = asyncio.Event()
    done: list[int] = []

    @app.agent(app.topic("in"))
    async def waiter(stream: flowbus.Stream) -> None:
        async for n in stream:
            await release.wait()  # something outside the harness (real time, I/O)
            done.append(n)

    async def main() -> None:
        async with app.test_context(settle_timeout_s=0.5) as t:
            with pytest.raises(NotSettledError, match="0.5 s"):
                await t.send("in", 1)
            release.set()
            await t.settle()
            assert done == [1]

    run(main())


def test_a_record_sent_raw_reaches_the_error_policy() -> None:
    app = App("raw", broker="memory://", error_policy="dead_letter")
    seen: list[Any] = []

    @app.agent(app.topic("in", value_type=dict))
    async def keep(stream: flowbus.Stream) -> None:
        async for value in stream:
            seen.append(value)

    async def main() -> None:
        async with app.test_context() as t:
            await t.send_raw("in", b"not json", key=b"k")
            await t.send("in", {"ok": True})
            [dead] = t.records("raw-dead-letters")
            assert (dead.key, dead.value) == (b"k", b"not json")
        assert seen == [{"ok": True}]

    run(main())
