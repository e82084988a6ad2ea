"""Agents' sinks: what a ``yield`` sends, and with which key (docs/framework.md, Agents)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

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
