"""Agents' sinks: what a ``yield`` sends, and with which key (docs/framework.md, Agents)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import flowbus.stream as stream_module
from flowbus import App


def test_a_yield_keeps_the_key_of_the_event_in_hand(tmp_path: Path) -> None:
    app = App("sinks", state_dir=tmp_path)
    orders = app.topic("orders", key_type=str, partitions=4)
    same_codec = app.topic("big", key_type=str)
    other_codec = app.topic("big-json-keys")  # keys as JSON: decoded from raw, encoded again
    batched = app.topic("batched", key_type=str)
    called: list[Any] = []

    @app.agent(orders, sink=[same_codec, other_codec, called.append])
    async def find_big(stream):  # type: ignore[no-untyped-def]
        async for order in stream:
            if order["total"] > 1000:
                yield order

    @app.agent(app.topic("to-batch", key_type=str), sink=[batched])
    async def batch(stream):  # type: ignore[no-untyped-def]
        async for values in stream.take(2, within_s=1):
            yield values

    async def main() -> None:
        async with app.test_context() as t:
            await t.send(orders, {"total": 2000}, key="o-1")
            await t.send(orders, {"total": 5}, key="o-2")
            await t.send(orders, {"total": 3000})  # no key in, no key out
            await t.send("to-batch", 1, key="a", settle=False)
            await t.send("to-batch", 2, key="b")
            assert t.items(same_codec) == [("o-1", {"total": 2000}), (None, {"total": 3000})]
            assert [r.key for r in t.records(other_codec)] == [b'"o-1"', None]
            assert called == [{"total": 2000}, {"total": 3000}], "callables get the value only"
            assert t.items(batched) == [(None, [1, 2])], "a take list may mix keys: none"

    asyncio.run(main())


@pytest.mark.parametrize("group_s", [stream_module.STATS_GROUP_S, 0.0])
def test_an_agent_counts_its_events_into_the_stats_in_groups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              group_s: float) -> None:
    """Every finished event is counted (processing time and end-to-end latency), in groups: at
    most STATS_GROUP_EVENTS events, or STATS_GROUP_S seconds, behind while a backlog is worked
    through, and none behind once the stream waits for records."""
    monkeypatch.setattr(stream_module, "STATS_GROUP_S", group_s)
    app = App("grouped-stats", state_dir=tmp_path, max_poll_records=5_000)
    clicks = app.topic("clicks", partitions=1)
    behind: list[int] = []
    worker: list[Any] = []

    @app.agent(clicks)
    async def count(stream):  # type: ignore[no-untyped-def]
        async for index in stream:
            events = worker[0].stats.topics["clicks"]
            assert events.processing.count == events.end_to_end.count
            behind.append(index - events.processing.count)

    async def main() -> None:
        async with app.test_context() as t:
            worker.append(t.worker)
            for index in range(2_500):
                await t.send(clicks, index, settle=False)
            await t.settle()
            events = t.worker.stats.topics["clicks"]
            assert events.processing.count == events.end_to_end.count == 2_500

    asyncio.run(main())
    assert len(behind) == 2_500
    if group_s:
        assert max(behind) <= stream_module.STATS_GROUP_EVENTS and max(behind) > 1
    else:
        assert max(behind) == 0
