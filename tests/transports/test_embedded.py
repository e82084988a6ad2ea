"""The embedded transport: consumer-protocol bytes, batching limits, groups over the broker core."""

from __future__ import annotations

import asyncio
from pathlib import Path

from flowbus.clock import ManualClock
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


def test_transactions_through_the_core(tmp_path: Path) -> None:
    """exactly_once on embedded:// uses the core's transaction coordinator: aborted records never
    reach read_committed, offsets commit with the records, a newer instance fences the older."""
    import pytest

    from flowbus.transports.errors import ProducerFencedError

    async def main() -> None:
        t = EmbeddedTransport(f"embedded://{tmp_path}")
        await t.start()
        await t.create_topics([TopicSpec("src", 1), TopicSpec("dst", 2)])
        plain = t.producer()
        for i in range(4):
            plain.send_soon("src", b"in-%d" % i)
        await plain.flush()
        source = t.consumer("copier", isolation_level="read_committed")
        source.subscribe(["src"])
        got = []
        for _ in range(20):
            got += await source.poll_batch(100, 50)
            if len(got) == 4:
                break
        producer = t.producer(transactional_id="embedded-tx")
        await producer.init_transactions()
        producer.begin_transaction()
        for i in range(10):
            producer.send_soon("dst", b"aborted-%d" % i, b"k%d" % i)
        await producer.flush()
        await producer.abort_transaction()
        producer.begin_transaction()
        for record in got:
            producer.send_soon("dst", record.value.replace(b"in", b"out"), record.value)
        tp = TopicPartition("src", 0)
        await producer.send_offsets_to_transaction({tp: 4}, source.group_metadata())
        assert (await source.committed([tp]))[tp] is None  # pending until the commit
        await producer.commit_transaction()
        assert (await source.committed([tp]))[tp] == 4
        committed = t.consumer("reader", isolation_level="read_committed")
        committed.subscribe(["dst"])
        everything = t.consumer("raw")
        everything.subscribe(["dst"])
        out, raw = [], []
        for _ in range(20):
            out += await committed.poll_batch(100, 50)
            raw += await everything.poll_batch(100, 50)
            if len(out) >= 4 and len(raw) >= 14:
                break
        assert sorted(r.value for r in out) == [b"out-%d" % i for i in range(4)]
        assert len(raw) == 14  # read_uncommitted sees the aborted records too
        newer = t.producer(transactional_id="embedded-tx")
        await newer.init_transactions()
        producer.begin_transaction()
        producer.send_soon("dst", b"zombie", b"z")
        with pytest.raises(ProducerFencedError):
            await producer.commit_transaction()
        for c in (source, committed, everything):
            await c.close()
        await t.close()

    asyncio.run(main())


def test_sender_for_keeps_timestamps_and_headers_and_counts_headers_in_the_batch_size(tmp_path: Path) -> None:
    """A dataflow's sender passes the input record's timestamp and headers through, and a ``None``
    timestamp is the send time. Headers count toward the batch-full check: a record with 600 kB of
    headers arriving at a batch of almost 512 kB ships that batch first, or the two together would
    pass the log's max.message.bytes (1 MiB) and be refused."""

    async def main() -> None:
        clock = ManualClock()
        t = EmbeddedTransport(f"embedded://{tmp_path}", clock=clock)
        await t.start()
        await t.create_topics([TopicSpec("out", 1)])
        producer = t.producer()
        send = producer.sender_for("out")
        small = (("trace", b"t"), ("empty", b""))
        big = (("trace", b"h" * 600_000),)
        for i in range(50):
            send(b"k", b"v" * 10_000, 1_600_000_000_000 + i, small)
        send(b"k", b"v", 1_600_000_000_050, big)
        send(None, b"now")
        await producer.flush()
        consumer = t.consumer("g")
        consumer.subscribe(["out"])
        got = []
        for _ in range(50):
            got += await consumer.poll_batch(1000, 50)
            if len(got) == 52:
                break
        assert [r.offset for r in got] == list(range(52))
        assert [r.timestamp_ms for r in got[:51]] == [1_600_000_000_000 + i for i in range(51)]
        assert [r.headers for r in got[:51]] == [small] * 50 + [big]
        assert (got[51].timestamp_ms, got[51].headers) == (clock.now_ms(), ())
        await consumer.close()
        await t.close()

    asyncio.run(main())
