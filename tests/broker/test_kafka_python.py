"""kafka-python against a real broker process: produce, consume, a group with commits."""

from __future__ import annotations

import time
from collections.abc import Callable

import kafka
import kafka.admin
import pytest
from kafka.structs import TopicPartition

from tests.support.broker_process import BrokerProcess

pytestmark = pytest.mark.timeout(120)


def test_produce_consume_and_group_commit(
    broker: BrokerProcess, unique: Callable[[str], str]
) -> None:
    topic, group = unique("kp"), unique("kpg")
    admin = kafka.admin.KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    admin.create_topics(
        [kafka.admin.NewTopic(topic, num_partitions=2, replication_factor=1)]
    )
    admin.close()

    producer = kafka.KafkaProducer(
        bootstrap_servers=broker.bootstrap, acks="all", linger_ms=5
    )
    futures = [
        producer.send(topic, key=str(i).encode(), value=f"v{i}".encode())
        for i in range(200)
    ]
    offsets = [f.get(timeout=10).offset for f in futures]
    assert min(offsets) == 0
    producer.close()

    consumer = kafka.KafkaConsumer(
        topic,
        bootstrap_servers=broker.bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=500,
    )
    got: list[bytes] = []
    deadline = time.monotonic() + 30
    while len(got) < 200 and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            got.extend(r.value for r in records)
    assert sorted(got) == sorted(f"v{i}".encode() for i in range(200))
    consumer.commit()
    committed = sum(consumer.committed(TopicPartition(topic, p)) or 0 for p in range(2))
    assert committed == 200
    consumer.close()

    # A new member of the same group starts from the committed offsets: nothing left.
    again = kafka.KafkaConsumer(
        topic,
        bootstrap_servers=broker.bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
    )
    leftovers: list[bytes] = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for records in again.poll(timeout_ms=300).values():
            leftovers.extend(r.value for r in records)
        if again.assignment() and time.monotonic() > deadline - 3:
            break
    again.close()
    assert leftovers == []
