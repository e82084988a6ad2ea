"""Wider client coverage: every compression codec, cooperative rebalancing, multi-member groups."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import aiokafka
import confluent_kafka
import confluent_kafka.admin
import kafka
import kafka.admin
import pytest

from tests.support.broker_process import BrokerProcess

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compressed_batches_round_trip(
    broker: BrokerProcess, unique: Callable[[str], str], codec: str
) -> None:
    topic = unique(f"c-{codec}")
    producer = confluent_kafka.Producer(
        {
            "bootstrap.servers": broker.bootstrap,
            "compression.type": codec,
            "enable.idempotence": True,
            "linger.ms": 5,
        }
    )
    for i in range(500):
        producer.produce(
            topic, key=str(i).encode(), value=(f"{codec}-{i}-" * 10).encode()
        )
    assert producer.flush(20) == 0
    # kafka-python decodes too (xerial-framed snappy on its side of things).
    consumer = kafka.KafkaConsumer(
        topic, bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest"
    )
    values: list[bytes] = []
    deadline = time.monotonic() + 30
    while len(values) < 500 and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=200).values():
            values.extend(r.value for r in records)
    consumer.close()
    assert len(values) == 500 and values[7] == (f"{codec}-7-" * 10).encode()


def test_kafka_python_compressed_producer(
    broker: BrokerProcess, unique: Callable[[str], str]
) -> None:
    topic = unique("kpz")
    for codec in ("gzip", "snappy", "lz4", "zstd"):
        producer = kafka.KafkaProducer(
            bootstrap_servers=broker.bootstrap, compression_type=codec
        )
        for i in range(50):
            producer.send(topic, f"{codec}-{i}".encode())
        producer.flush(10)
        producer.close()
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": unique("g"),
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    got: list[bytes] = []
    deadline = time.monotonic() + 30
    while len(got) < 200 and time.monotonic() < deadline:
        for msg in consumer.consume(500, 0.3):
            assert msg.error() is None, msg.error()
            got.append(bytes(msg.value() or b""))
    consumer.close()
    assert len(got) == 200


def test_cooperative_sticky_group_shares_partitions(
    broker: BrokerProcess, unique: Callable[[str], str]
) -> None:
    topic, group = unique("coop"), unique("g")
    admin = confluent_kafka.admin.AdminClient({"bootstrap.servers": broker.bootstrap})
    for f in admin.create_topics(
        [confluent_kafka.admin.NewTopic(topic, 4, 1)]
    ).values():
        f.result(10)
    conf = {
        "bootstrap.servers": broker.bootstrap,
        "group.id": group,
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 500,
        "auto.offset.reset": "earliest",
    }
    a = confluent_kafka.Consumer(conf)
    b = confluent_kafka.Consumer(conf)
    a.subscribe([topic])
    b.subscribe([topic])
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        a.poll(0.1)
        b.poll(0.1)
        if len(a.assignment()) == 2 and len(b.assignment()) == 2:
            break
    assert (len(a.assignment()), len(b.assignment())) == (2, 2)
    a.close()
    b.close()


def test_aiokafka_two_member_group(
    broker: BrokerProcess, unique: Callable[[str], str]
) -> None:
    topic, group = unique("aio2"), unique("g")

    async def body() -> None:
        admin = kafka.admin.KafkaAdminClient(bootstrap_servers=broker.bootstrap)
        admin.create_topics(
            [kafka.admin.NewTopic(topic, num_partitions=4, replication_factor=1)]
        )
        admin.close()
        consumers = [
            aiokafka.AIOKafkaConsumer(
                topic,
                bootstrap_servers=broker.bootstrap,
                group_id=group,
                session_timeout_ms=6000,
                heartbeat_interval_ms=300,
                auto_offset_reset="earliest",
            )
            for _ in range(2)
        ]
        for c in consumers:
            await c.start()
        try:
            async with asyncio.timeout(40):
                while sorted(len(c.assignment()) for c in consumers) != [2, 2]:
                    await asyncio.gather(
                        *(c.getmany(timeout_ms=100) for c in consumers)
                    )
        finally:
            for c in consumers:
                await c.stop()

    asyncio.run(body())


def test_kafka_python_two_member_group(
    broker: BrokerProcess, unique: Callable[[str], str]
) -> None:
    topic, group = unique("kp2"), unique("g")
    admin = kafka.admin.KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    admin.create_topics(
        [kafka.admin.NewTopic(topic, num_partitions=4, replication_factor=1)]
    )
    admin.close()
    sizes: dict[int, int] = {}
    stop = threading.Event()

    def run(index: int) -> None:
        c = kafka.KafkaConsumer(
            topic,
            bootstrap_servers=broker.bootstrap,
            group_id=group,
            session_timeout_ms=6000,
            heartbeat_interval_ms=300,
        )
        while not stop.is_set():
            # kafka-python 3.0.12 drops a finished rejoin (assignment never applied, heartbeats
            # never re-enabled) when a metadata-triggered rejoin outlasts one poll() timeout and
            # the metadata then catches up; a poll longer than a rebalance avoids it.
            c.poll(timeout_ms=3000)
            sizes[index] = len(c.assignment())
        c.close()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(2)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and sorted(sizes.values()) != [2, 2]:
        time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join(20)
    assert sorted(sizes.values()) == [2, 2], broker.log_tail(40)
