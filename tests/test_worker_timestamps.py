"""A dataflow's outputs keep each input record's timestamp and headers on real transports: a
worker on ``embedded://`` (listening, so a real client can read its broker) and on ``kafka://``
against a ``flowbus broker`` process, checked with librdkafka (confluent-kafka) on both ends."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import confluent_kafka
import pytest

from flowbus import App
from flowbus.transports.embedded import EmbeddedTransport
from tests.support.broker_process import BrokerProcess, free_port

EVENTS = 30
BASE_MS = (time.time_ns() // 1_000_000 // 1000 - 3600) * 1000 + 123
"""Input timestamps: an hour old (so the send time cannot pass for one of them) and within the
topics' retention (7 days); years-old records were deleted by time retention within a tick of
being written, sometimes before the worker read them."""
WAIT_S = 30.0


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    with BrokerProcess(tmp_path_factory.mktemp("timestamps-broker") / "data") as process:
        yield process


def input_headers(i: int) -> list[tuple[str, bytes]]:
    return [("trace", f"t{i}".encode()), ("origin", b"test")]


def produce_inputs(bootstrap: str, topic: str) -> None:
    """EVENTS JSON values, each with its own old CreateTime and headers (blocking: run in a thread)."""
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap})
    for i in range(EVENTS):
        value = json.dumps({"i": i, "user": f"u{i % 4}"}).encode()
        producer.produce(topic, value, timestamp=BASE_MS + i, headers=input_headers(i))
    assert producer.flush(WAIT_S) == 0, "inputs not delivered"


def read_metadata(bootstrap: str, topic: str) -> dict[int, tuple[int, int, list[tuple[str, bytes]]]]:
    """(timestamp type, timestamp, headers) of every record of ``topic`` by the ``i`` of its value,
    read from the beginning of each partition until EVENTS arrived (blocking: run in a thread)."""
    consumer = confluent_kafka.Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"reader-{time.monotonic_ns()}", "enable.auto.commit": False,
    })
    try:
        partitions = consumer.list_topics(topic, timeout=WAIT_S).topics[topic].partitions
        consumer.assign([confluent_kafka.TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING) for p in partitions])
        found: dict[int, tuple[int, int, list[tuple[str, bytes]]]] = {}
        count = 0
        deadline = time.monotonic() + WAIT_S
        while count < EVENTS and time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is None or message.error() is not None:
                continue
            count += 1
            kind, timestamp_ms = message.timestamp()
            found[json.loads(message.value())["i"]] = (kind, timestamp_ms, list(message.headers() or []))
        assert count == EVENTS, f"{topic}: {count} records, expected {EVENTS}"
        return found
    finally:
        consumer.close()


@pytest.mark.parametrize("where", ["embedded", "kafka"])
def test_group_by_outputs_carry_the_input_timestamps_and_headers(
    where: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if where == "kafka":
        process: BrokerProcess = request.getfixturevalue("broker")
        bootstrap = process.bootstrap
        url = f"kafka://{bootstrap}?session.timeout.ms=6000&heartbeat.interval.ms=500"
    else:
        bootstrap = f"127.0.0.1:{free_port()}"
        url = f"embedded://{tmp_path / 'data'}"
    suffix = f"{where}-{time.monotonic_ns()}"
    app = App(f"ts-{suffix}", broker=url, topic_partitions=3, commit_interval_ms=100)
    if where == "embedded":
        app.use_transport(EmbeddedTransport(url, listen=bootstrap))
    clicks, out = app.topic(f"clicks-{suffix}"), app.topic(f"out-{suffix}")
    app.stream(clicks).group_by(lambda c: c["user"], name="by-user", partitions=2).map(lambda c: {**c, "n": 1}).to(out)
    repartition = f"{app.id}-by-user-repartition"
    expected = {i: (confluent_kafka.TIMESTAMP_CREATE_TIME, BASE_MS + i, input_headers(i)) for i in range(EVENTS)}

    async def main() -> None:
        task = asyncio.create_task(app.run())
        try:
            deadline = time.monotonic() + WAIT_S
            while app.worker is None or not app.worker.started:  # topics made, listener up
                assert not task.done(), task
                assert time.monotonic() < deadline, "the worker did not start"
                await asyncio.sleep(0.02)
            # librdkafka blocks: in threads, so the embedded broker (on this loop) keeps serving.
            await asyncio.to_thread(produce_inputs, bootstrap, clicks.name)
            assert await asyncio.to_thread(read_metadata, bootstrap, repartition) == expected
            assert await asyncio.to_thread(read_metadata, bootstrap, out.name) == expected
        finally:
            app.stop()
            await task

    asyncio.run(main())
