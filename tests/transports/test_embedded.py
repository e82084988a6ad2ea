"""The embedded transport: consumer-protocol bytes, batching limits, groups over the broker core."""

from __future__ import annotations

import asyncio
from pathlib import Path

from flowbus.transports.base import TopicPartition, TopicSpec
from flowbus.transports.embedded import (
    EmbeddedTransport,
    decode_assignment,
    decode_subscription,
    encode_assignment,
    encode_subscription,
)


def test_consumer_protocol_round_trips() -> None:
    assert decode_subscription(encode_subscription(["a", "bé"])) == ["a", "bé"]
    parts = [TopicPartition("a", 1), TopicPartition("a", 0), TopicPartition("b", 3)]
    assert sorted(decode_assignment(encode_assignment(parts))) == sorted(parts)
    assert decode_assignment(b"") == []


def test_large_outputs_are_split_into_batches_the_log_accepts(tmp_path: Path) -> None:
    async def main() -> None:
        t = EmbeddedTransport(f"embedded://{tmp_path}")
        await t.start()
        await t.create_topics([TopicSpec("big", 1)])
        producer = t.producer()
        value = b"x" * 10_000
        futures = [producer.send("big", value) for _ in range(300)]  # 3 MB in one loop turn
        await producer.flush()
        assert [(await f).offset for f in futures] == list(range(300))
        consumer = t.consumer("g")
        consumer.subscribe(["big"])
        got = []
        for _ in range(20):
            got += await consumer.poll_batch(1000, 50)
            if len(got) == 300:
                break
        assert [r.offset for r in got] == list(range(300))
        await consumer.close()
        await t.close()

    asyncio.run(main())


def test_two_members_split_partitions_and_resume_from_commits(tmp_path: Path) -> None:
    async def main() -> None:
        t = EmbeddedTransport(f"embedded://{tmp_path}")
        await t.start()
        await t.create_topics([TopicSpec("t", 4)])
        producer = t.producer()
        for i in range(40):
            producer.send_soon("t", b"%d" % i, b"k%d" % i)
        await producer.flush()
        a = t.consumer("g")
        a.subscribe(["t"])
        first = await a.poll_batch(1000, 100)
        assert len(first) == 40 and len(a.assignment()) == 4
        await a.commit({TopicPartition("t", p): 2 for p in range(4)})
        b = t.consumer("g")
        b.subscribe(["t"])
        joined = asyncio.create_task(b.poll_batch(1000, 100))  # waits for a to rejoin
        for _ in range(50):
            await a.poll_batch(1000, 20)
            if joined.done():
                break
            await asyncio.sleep(0.05)
        await joined
        assert len(a.assignment()) == 2 and len(b.assignment()) == 2
        assert not set(a.assignment()) & set(b.assignment())
        # a revoked everything on rejoin: both now read from the committed offsets again
        assert await b.committed(b.assignment()) == {tp: 2 for tp in b.assignment()}
        await a.close()
        await b.close()
        await t.close()

    asyncio.run(main())
