"""aiokafka against a real broker process: produce, consume, a group with commits."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiokafka
import pytest
from aiokafka.structs import TopicPartition

from tests.support.broker_process import BrokerProcess

pytestmark = pytest.mark.timeout(120)


def test_produce_consume_and_group_commit(
    broker: BrokerProcess, unique: Callable[[str], str]
) -> None:
    topic, group = unique("aio"), unique("aiog")

    async def body() -> None:
        producer = aiokafka.AIOKafkaProducer(
            bootstrap_servers=broker.bootstrap, acks="all", enable_idempotence=True
        )
        await producer.start()
        try:
            for i in range(300):
                await producer.send(topic, key=str(i).encode(), value=f"v{i}".encode())
            await producer.flush()
            meta = await producer.send_and_wait(topic, b"last")
            assert meta.offset == 300
        finally:
            await producer.stop()

        consumer = aiokafka.AIOKafkaConsumer(
            topic,
            bootstrap_servers=broker.bootstrap,
            group_id=group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            session_timeout_ms=6000,
            heartbeat_interval_ms=500,
        )
        await consumer.start()
        try:
            got: list[bytes] = []
            async with asyncio.timeout(30):
                while len(got) < 301:
                    batches = await consumer.getmany(timeout_ms=500)
                    for records in batches.values():
                        got.extend(r.value for r in records)
            assert got[-1] == b"last" and len(got) == 301
            await consumer.commit()
            assert await consumer.committed(TopicPartition(topic, 0)) == 301
        finally:
            await consumer.stop()

        resumed = aiokafka.AIOKafkaConsumer(
            topic,
            bootstrap_servers=broker.bootstrap,
            group_id=group,
            auto_offset_reset="earliest",
            session_timeout_ms=6000,
        )
        await resumed.start()
        try:
            tp = TopicPartition(topic, 0)
            async with asyncio.timeout(20):
                while not resumed.assignment():
                    await resumed.getmany(timeout_ms=200)
            assert await resumed.position(tp) == 301
        finally:
            await resumed.stop()

    asyncio.run(body())
