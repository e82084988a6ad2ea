"""Dataflow outputs keep the timestamp and headers of the input record they come from (as Kafka
Streams does), so event time survives ``group_by`` and ``through``; outputs made outside any
input record get the send time and no headers."""

from __future__ import annotations

import asyncio

from flowbus import App, ManualClock
from flowbus.testing import TestContext
from flowbus.transports.base import Headers, Record

BASE_MS = 1_600_000_000_000
"""Input timestamps: years before the harness clock, so a send-time stamp cannot pass for one."""
EVENTS = 8


def input_time(i: int) -> int:
    return BASE_MS + i


def input_headers(i: int) -> Headers:
    return (("trace", f"t{i}".encode()), ("origin", b"test"))


async def send_inputs(t: TestContext, topic: str) -> None:
    """EVENTS values ``{"i": i, "user": ...}``, each with its own old timestamp and headers."""
    for i in range(EVENTS):
        await t.send(topic, {"i": i, "user": f"u{i % 3}"}, timestamp_ms=input_time(i),
                     headers=dict(input_headers(i)), settle=False)
    await t.settle()


def metadata_by_input(t: TestContext, topic: str) -> dict[int, tuple[int, Headers]]:
    """(timestamp, headers) of each record of ``topic``, by the input index its value carries."""
    records: list[Record] = t.records(topic)
    codec = t.app._as_topic(topic).value_codec
    out = {codec.decode(r.value)["i"]: (r.timestamp_ms, r.headers) for r in records}
    assert len(out) == len(records) == EVENTS, f"{topic}: one record per input"
    return out


EXPECTED = {i: (input_time(i), input_headers(i)) for i in range(EVENTS)}


def test_group_by_keeps_timestamps_and_headers_on_the_repartition_topic_and_after() -> None:
    app = App("ts", broker="memory://", topic_partitions=3)
    app.stream("clicks").group_by(lambda c: c["user"], name="by-user", partitions=2).to(app.topic("out"))

    async def main() -> None:
        async with app.test_context() as t:
            await send_inputs(t, "clicks")
            assert metadata_by_input(t, "ts-by-user-repartition") == EXPECTED
            assert metadata_by_input(t, "out") == EXPECTED

    asyncio.run(main())


def test_through_keeps_timestamps_and_headers() -> None:
    app = App("ts", broker="memory://", topic_partitions=2)
    mid = app.topic("mid")
    app.stream("in").map(lambda v: {**v, "stage": 1}).through(mid, key=lambda v: v["user"]).to(app.topic("out"))

    async def main() -> None:
        async with app.test_context() as t:
            await send_inputs(t, "in")
            assert metadata_by_input(t, "mid") == EXPECTED
            assert metadata_by_input(t, "out") == EXPECTED

    asyncio.run(main())


def test_to_keeps_timestamps_and_headers_on_every_output_of_a_record() -> None:
    app = App("ts", broker="memory://", topic_partitions=2)
    node = app.stream("in").flat_map(lambda v: [v, {**v, "copy": True}])
    node.filter(lambda v: "copy" not in v).to(app.topic("firsts"))
    node.filter(lambda v: "copy" in v).to(app.topic("copies"), key=lambda v: v["user"])

    async def main() -> None:
        async with app.test_context() as t:
            await send_inputs(t, "in")
            assert metadata_by_input(t, "firsts") == EXPECTED
            assert metadata_by_input(t, "copies") == EXPECTED

    asyncio.run(main())


def test_outputs_made_outside_any_record_get_the_send_time_and_no_headers() -> None:
    """A ``take`` list emitted at its deadline or at a commit belongs to no single record; one
    emitted when it fills up carries the record that filled it, as Kafka Streams does."""
    clock = ManualClock()
    app = App("ts", broker="memory://", clock=clock)
    app.stream("in").take(EVENTS // 2, within_s=5).map(lambda vs: [v["i"] for v in vs]).to(app.topic("lists"))

    async def main() -> None:
        async with app.test_context() as t:
            await send_inputs(t, "in")  # two full lists, each emitted inside the record filling it
            await t.send("in", {"i": 100, "user": "u"}, timestamp_ms=BASE_MS, headers={"trace": "late"})
            await t.advance(5)  # the deadline emits the third list
            await t.send("in", {"i": 101, "user": "u"}, timestamp_ms=BASE_MS, headers={"trace": "late"})
            await t.commit()  # the commit emits the fourth
            lists = metadata_by_input_lists(t, "lists")
            half = EVENTS // 2
            assert lists[0] == (input_time(half - 1), input_headers(half - 1))
            assert lists[half] == (input_time(EVENTS - 1), input_headers(EVENTS - 1))
            assert lists[100] == lists[101] == (clock.now_ms(), ())

    asyncio.run(main())


def metadata_by_input_lists(t: TestContext, topic: str) -> dict[int, tuple[int, Headers]]:
    """(timestamp, headers) of each list record of ``topic``, by the first input index it holds."""
    codec = t.app._as_topic(topic).value_codec
    return {codec.decode(r.value)[0]: (r.timestamp_ms, r.headers) for r in t.records(topic)}
