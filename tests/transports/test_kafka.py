"""The kafka:// transport against a real ``flowbus broker`` process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from flowbus.transports.base import TopicPartition, TopicSpec
from flowbus.transports.errors import ProduceError
from flowbus.transports.kafka import KafkaTransport
from tests.support.broker_process import BrokerProcess


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    with BrokerProcess(tmp_path_factory.mktemp("kafka-transport") / "data") as process:
        yield process


def test_topics_produce_consume_commit_and_lag(broker: BrokerProcess) -> None:
    async def main() -> None:
        t = KafkaTransport(f"kafka://{broker.bootstrap}")
        name = f"kt-{time.monotonic_ns()}"
        await t.create_topics([TopicSpec(name, 3)])
        await t.create_topics([TopicSpec(name, 3)])  # existing: no error
        assert (await t.describe_topics([name, "missing-topic"]))[name].partitions == 3
        producer = t.producer()
        futures = [producer.send(name, b"v%d" % i, b"key-%d" % (i % 5), headers=(("h", b"1"),)) for i in range(30)]
        await producer.flush()
        metas = [await f for f in futures]
        by_key = {}
        for i, meta in enumerate(metas):
            by_key.setdefault(i % 5, set()).add(meta.partition)
        assert all(len(parts) == 1 for parts in by_key.values()), "murmur2: one key, one partition"
        assigned: list[TopicPartition] = []

        async def on_assigned(tps: list[TopicPartition]) -> None:
            assigned.extend(tps)

        consumer = t.consumer(f"g-{name}")
        consumer.subscribe([name], on_assigned=on_assigned)
        got = []
        deadline = time.monotonic() + 20
        while len(got) < 30 and time.monotonic() < deadline:
            got += await consumer.poll_batch(100, 100)
        assert len(got) == 30 and sorted(assigned) == [TopicPartition(name, p) for p in range(3)]
        assert got[0].headers == (("h", b"1"),)
        tp = TopicPartition(name, got[0].partition)
        await consumer.commit({tp: 1})
        assert (await consumer.committed([tp]))[tp] == 1
        ends = await consumer.end_offsets([tp])
        assert ends[tp] == sum(1 for m in metas if m.partition == tp.partition)
        await consumer.close()
        await producer.close()

    asyncio.run(main())


def test_transactions_commit_offsets_and_records_atomically(broker: BrokerProcess) -> None:
    """exactly_once over kafka:// rests on the broker's transactions: records and the consumed
    offsets commit together; an aborted transaction's records never reach read_committed."""

    async def main() -> None:
        t = KafkaTransport(f"kafka://{broker.bootstrap}?transaction.timeout.ms=10000")
        src, dst = f"ktx-src-{time.monotonic_ns()}", f"ktx-dst-{time.monotonic_ns()}"
        await t.create_topics([TopicSpec(src, 1), TopicSpec(dst, 1)])
        plain = t.producer()
        for i in range(5):
            plain.send(src, b"in-%d" % i, partition=0)
        await plain.flush()
        consumer = t.consumer(f"g-{src}", isolation_level="read_committed")
        consumer.subscribe([src])
        got = []
        deadline = time.monotonic() + 20
        while len(got) < 5 and time.monotonic() < deadline:
            got += await consumer.poll_batch(100, 100)
        assert len(got) == 5
        producer = t.producer(transactional_id=f"tx-{time.monotonic_ns()}")
        await producer.init_transactions()
        producer.begin_transaction()
        producer.send(dst, b"aborted", partition=0)
        await producer.abort_transaction()
        producer.begin_transaction()
        for record in got:
            producer.send(dst, record.value.replace(b"in", b"out"), partition=0)
        tp = TopicPartition(src, 0)
        await producer.send_offsets_to_transaction({tp: 5}, consumer.group_metadata())
        await producer.commit_transaction()
        assert (await consumer.committed([tp]))[tp] == 5
        reader = t.consumer(f"r-{dst}", isolation_level="read_committed")
        reader.subscribe([dst])
        out = []
        deadline = time.monotonic() + 20
        while len(out) < 5 and time.monotonic() < deadline:
            out += await reader.poll_batch(100, 100)
        assert [r.value for r in out] == [b"out-%d" % i for i in range(5)]
        for c in (consumer, reader):
            await c.close()
        await producer.close()
        await plain.close()

    asyncio.run(main())


def test_sender_for_passes_timestamp_headers_and_key_and_reports_failures(broker: BrokerProcess) -> None:
    """The per-topic sender calls produce with positional arguments: each must land where the
    keyword would have put it (timestamp, headers, the key partitioned like send()), and a
    record the broker refuses must still fail the flush."""

    async def main() -> None:
        t = KafkaTransport(f"kafka://{broker.bootstrap}")
        name = f"ks-{time.monotonic_ns()}"
        await t.create_topics([TopicSpec(name, 3)])
        producer = t.producer()
        send = producer.sender_for(name)
        for i in range(12):
            send(b"key-%d" % (i % 4), b"v%d" % i, 1_600_000_000_000 + i, (("h", b"%d" % i),) if i % 2 else ())
        send(None, b"now")
        reference = [producer.send(name, b"ref", b"key-%d" % k) for k in range(4)]
        await producer.flush()
        partition_of = {b"key-%d" % k: (await f).partition for k, f in enumerate(reference)}
        assert producer.records_sent_by_topic[name] == 17
        consumer = t.consumer(None)
        consumer.assign([TopicPartition(name, p) for p in range(3)])
        got = []
        deadline = time.monotonic() + 20
        while len(got) < 17 and time.monotonic() < deadline:
            got += await consumer.poll_batch(100, 100)
        sent = sorted((r for r in got if r.value not in (b"ref", b"now")), key=lambda r: r.timestamp_ms)
        assert [r.value for r in sent] == [b"v%d" % i for i in range(12)]
        assert [r.timestamp_ms for r in sent] == [1_600_000_000_000 + i for i in range(12)]
        assert [r.headers for r in sent] == [(("h", b"%d" % i),) if i % 2 else () for i in range(12)]
        assert all(r.partition == partition_of[r.key] for r in sent), "the key decides the partition"
        now = next(r for r in got if r.value == b"now")
        assert now.key is None and abs(now.timestamp_ms - time.time() * 1000) < 60_000
        small = f"{name}-small"
        await t.create_topics([TopicSpec(small, 1, config={"max.message.bytes": "1000"})])
        producer.sender_for(small)(b"big", b"x" * 5_000)  # over that topic's max.message.bytes
        with pytest.raises(ProduceError, match="too large"):
            await producer.flush()
        await consumer.close()
        await producer.close()

    asyncio.run(main())
