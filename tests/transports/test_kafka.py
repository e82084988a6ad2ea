"""The kafka:// transport against a real ``flowbus broker`` process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from flowbus.transports.base import TopicPartition, TopicSpec
from flowbus.transports.errors import ProduceError, TransactionError
from flowbus.transports.kafka import KafkaTransport
from tests.support.broker_process import BrokerProcess


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    with BrokerProcess(tmp_path_factory.mktemp("kafka-transport") / "data") as process:
        yield process


async def poll_until(consumer: Any, count: int, timeout_s: float = 20.0) -> list[Any]:
    """What ``consumer`` polls until it has ``count`` records or ``timeout_s`` passed."""
    got: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count and time.monotonic() < deadline:
        got += await consumer.poll_batch(100, 100)
    return got


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
        got = await poll_until(consumer, 30)
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
        got = await poll_until(consumer, 5)
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
        out = await poll_until(reader, 5)
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
        got = await poll_until(consumer, 17)
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


def test_a_transaction_whose_unreported_records_fail_does_not_commit(broker: BrokerProcess) -> None:
    """In a transaction, send_soon and sender_for records go without a delivery callback (the
    client's per-report cost); a refused one must still fail the commit, the records then report
    their delivery one by one so the next failure names its cause, and a later successful commit
    goes back to no callback."""

    async def main() -> None:
        t = KafkaTransport(f"kafka://{broker.bootstrap}?transaction.timeout.ms=10000")
        name = f"ktf-{time.monotonic_ns()}"
        small = f"{name}-small"
        await t.create_topics([TopicSpec(name, 1), TopicSpec(small, 1, config={"max.message.bytes": "1000"})])
        producer = t.producer(transactional_id=f"tx-{name}")
        await producer.init_transactions()
        producer.begin_transaction()
        producer.sender_for(name)(b"k", b"kept out")
        producer.sender_for(small)(b"big", b"x" * 5_000)  # over that topic's max.message.bytes
        await producer.flush()  # no callback: the failure is the transaction's, not the flush's
        with pytest.raises(TransactionError, match="too large"):
            await producer.commit_transaction()
        await producer.abort_transaction()
        producer.begin_transaction()
        producer.send_soon(small, b"x" * 5_000, b"big")
        with pytest.raises(ProduceError, match="too large"):
            await producer.flush()
        await producer.abort_transaction()
        producer.begin_transaction()
        send = producer.sender_for(name)
        for i in range(3):
            send(b"k", b"v%d" % i)
        await producer.flush()
        await producer.commit_transaction()
        assert producer._soon_callback is None, "a successful commit drops the per-record callback again"
        reader = t.consumer(f"r-{name}", isolation_level="read_committed")
        reader.subscribe([name])
        got = await poll_until(reader, 3)
        assert [r.value for r in got] == [b"v0", b"v1", b"v2"], "only the committed transaction is visible"
        await reader.close()
        await producer.close()

    asyncio.run(main())


def test_a_flush_that_cannot_finish_stops_at_its_timeout(broker: BrokerProcess) -> None:
    """The flush waits in short slices until every record is delivered or its time is up: with
    the broker gone, it gives up at the timeout and says how many records are left."""
    from tests.support.broker_process import free_port

    async def main() -> None:
        # Nothing listens there; the records fail after message.timeout.ms, so close() ends.
        t = KafkaTransport(f"kafka://127.0.0.1:{free_port()}?message.timeout.ms=1000")
        producer = t.producer()
        for i in range(5):
            producer.send_soon("nowhere", b"v%d" % i)
        started = time.monotonic()
        with pytest.raises(ProduceError, match="5 records still undelivered after 0.3s"):
            await producer.flush(timeout_ms=300)
        assert time.monotonic() - started < 10, "the flush outlived its timeout"
        await producer.close()

    asyncio.run(main())


def test_poll_batch_builds_records_and_skips_error_events(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    """poll_batch turns librdkafka's messages into records column by column; error events among
    them are dropped (a partition's end silently, a transient error with a warning), a fatal one
    raises; headers keep their order and a header without a value becomes b""."""
    import logging

    import confluent_kafka

    from flowbus.transports.base import Record
    from flowbus.transports.errors import TransportError
    from flowbus.transports.kafka import KafkaConsumer
    from tests.support.broker_process import free_port

    def message(offset: int, *, error: Any = None, headers: Any = None) -> Any:
        try:
            return confluent_kafka.Message(topic="t", partition=2, offset=offset, key=b"k%d" % offset,
                                           value=b"v%d" % offset, headers=headers, error=error,
                                           timestamp=(confluent_kafka.TIMESTAMP_CREATE_TIME, 1_000 + offset))
        except TypeError:
            pytest.skip("this confluent-kafka cannot make Message objects")

    eof = confluent_kafka.KafkaError(confluent_kafka.KafkaError._PARTITION_EOF)
    transient = confluent_kafka.KafkaError(confluent_kafka.KafkaError._TRANSPORT)
    fatal = confluent_kafka.KafkaError(confluent_kafka.KafkaError._FATAL, fatal=True)

    async def main() -> None:
        consumer = KafkaConsumer({"bootstrap.servers": f"127.0.0.1:{free_port()}", "group.id": "g"})
        try:
            batches = [
                [message(0), message(1, error=eof), message(2, headers=[("a", b"1"), ("b", None)]),
                 message(3, error=transient), message(4)],
                [message(5), message(6)],
                [message(7, error=fatal)],
            ]
            monkeypatch.setattr(consumer, "_consume_and_note_ends", lambda n, t: batches.pop(0))
            with caplog.at_level(logging.WARNING, logger="flowbus.transports.kafka"):
                got = await consumer.poll_batch(10, 0)
            assert got == [
                Record("t", 2, 0, 1_000, b"k0", b"v0", ()),
                Record("t", 2, 2, 1_002, b"k2", b"v2", (("a", b"1"), ("b", b""))),
                Record("t", 2, 4, 1_004, b"k4", b"v4", ()),
            ]
            assert [r.message for r in caplog.records] == [f"consumer: {transient}"]
            assert [r.offset for r in await consumer.poll_batch(10, 0)] == [5, 6]
            with pytest.raises(TransportError, match="consume failed"):
                await consumer.poll_batch(10, 0)
        finally:
            await consumer.close()

    asyncio.run(main())


def test_poll_runs_cuts_by_partition_and_topic_and_makes_records_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """poll_runs gives runs of one topic partition with their keys and values; two topics'
    partitions of the same number one after the other are two runs; a run's records, made on
    demand, are what poll_batch makes of the same messages; error events are left out."""
    import confluent_kafka

    from flowbus.transports.base import Record
    from flowbus.transports.kafka import KafkaConsumer
    from tests.support.broker_process import free_port

    def message(topic: str, partition: int, offset: int, *, error: Any = None, headers: Any = None) -> Any:
        try:
            return confluent_kafka.Message(topic=topic, partition=partition, offset=offset, key=b"k%d" % offset,
                                           value=b"v%d" % offset, headers=headers, error=error,
                                           timestamp=(confluent_kafka.TIMESTAMP_CREATE_TIME, 1_000 + offset))
        except TypeError:
            pytest.skip("this confluent-kafka cannot make Message objects")

    eof = confluent_kafka.KafkaError(confluent_kafka.KafkaError._PARTITION_EOF)
    batch = [message("a", 0, 7), message("a", 0, 8, headers=[("h", b"1")]), message("b", 0, 3),
             message("b", 0, 4, error=eof), message("b", 1, 5), message("a", 0, 9)]

    async def main() -> None:
        consumer = KafkaConsumer({"bootstrap.servers": f"127.0.0.1:{free_port()}", "group.id": "g"})
        try:
            consumer.subscribe(["a", "b"])
            monkeypatch.setattr(consumer, "_consume_and_note_ends", lambda n, t: list(batch))
            runs = await consumer.poll_runs(10, 0)
            assert [(r.tp, r.count, r.first_offset, r.next_offset) for r in runs] == [
                (TopicPartition("a", 0), 2, 7, 9), (TopicPartition("b", 0), 1, 3, 4),
                (TopicPartition("b", 1), 1, 5, 6), (TopicPartition("a", 0), 1, 9, 10)]
            assert [(r.first_timestamp_ms, r.last_timestamp_ms) for r in runs][0] == (1_007, 1_008)
            assert runs[0].keys_values() == ([b"k7", b"k8"], [b"v7", b"v8"])
            assert runs[0].record(1) == Record("a", 0, 8, 1_008, b"k8", b"v8", (("h", b"1"),))
            whole = [record for run in runs for record in run.records()]
            assert whole == await consumer.poll_batch(10, 0)
            assert runs[0].records() is runs[0].records(), "made once"
            consumer.subscribe(["a"])  # one topic: no topic comparison, one run per partition
            monkeypatch.setattr(consumer, "_consume_and_note_ends", lambda n, t: [message("a", 0, 1), message("a", 0, 2)])
            assert [(r.tp, r.count) for r in await consumer.poll_runs(10, 0)] == [(TopicPartition("a", 0), 2)]
        finally:
            await consumer.close()

    asyncio.run(main())


def test_poll_runs_against_the_broker(broker: BrokerProcess) -> None:
    """Runs polled from a real broker over two topics hold each record once, in offset order per
    partition, with the keys, values, timestamps and headers that were sent."""
    async def main() -> None:
        t = KafkaTransport(f"kafka://{broker.bootstrap}")
        names = [f"kr-{i}-{time.monotonic_ns()}" for i in range(2)]
        await t.create_topics([TopicSpec(name, 2) for name in names])
        producer = t.producer()
        now_ms = int(time.time() * 1000)  # recent: the broker's retention deletes old records
        for i in range(200):
            producer.send(names[i % 2], b"v%d" % i, b"k%d" % (i % 9), timestamp_ms=now_ms + i, headers=(("i", b"%d" % i),))
        await producer.flush()
        consumer = t.consumer(f"g-{names[0]}")
        consumer.subscribe(names)
        runs: list[Any] = []
        deadline = time.monotonic() + 20
        while sum(r.count for r in runs) < 200 and time.monotonic() < deadline:
            runs += await consumer.poll_runs(50, 100)
        records = [record for run in runs for record in run.records()]
        assert sorted(int(r.value[1:]) for r in records) == list(range(200))
        for run in runs:
            got = run.records()
            assert {(r.topic, r.partition) for r in got} == {run.tp}
            assert [r.offset for r in got] == list(range(run.first_offset, run.next_offset))
            assert run.keys_values() == ([r.key for r in got], [r.value for r in got])
            assert (run.first_timestamp_ms, run.last_timestamp_ms) == (got[0].timestamp_ms, got[-1].timestamp_ms)
        for r in records:
            i = int(r.value[1:])
            assert (r.topic, r.key, r.timestamp_ms, r.headers) == (names[i % 2], b"k%d" % (i % 9), now_ms + i, (("i", b"%d" % i),))
        await consumer.close()
        await producer.close()

    asyncio.run(main())
