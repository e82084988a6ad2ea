"""Transactions with real clients against a real ``flowbus broker`` process (issue 4).

The copier (``txn_copier.py``) runs as a subprocess so it can be SIGKILLed like a real worker.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from tests.support.broker_process import BrokerProcess

pytestmark = pytest.mark.timeout(120)

COPIER = Path(__file__).with_name("txn_copier.py")
PARTITIONS = 6
#: Copier processes of the running test, killed at its end whatever happened (no orphans).
_RUNNING: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _kill_copiers() -> Iterator[None]:
    yield
    while _RUNNING:
        process = _RUNNING.pop()
        if process.poll() is None:
            process.kill()
            process.wait(10)


def create_topics(broker: BrokerProcess, *names: str) -> None:
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    for future in admin.create_topics([NewTopic(n, PARTITIONS, 1) for n in names]).values():
        future.result(10)


def fill(broker: BrokerProcess, topic: str, count: int) -> dict[int, list[bytes]]:
    """Produce ``count`` records round-robin over the partitions; returns them per partition."""
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})
    expected: dict[int, list[bytes]] = {p: [] for p in range(PARTITIONS)}
    for i in range(count):
        value = b"record-%06d" % i
        producer.produce(topic, value=value, key=b"%d" % i, partition=i % PARTITIONS)
        expected[i % PARTITIONS].append(value)
    assert producer.flush(30) == 0
    return expected


def read_all(
    broker: BrokerProcess, topic: str, count: int, isolation: str = "read_committed"
) -> dict[int, list[bytes]]:
    """Every record of ``topic`` per partition, reading until ``count`` arrived and a short quiet."""
    consumer = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": f"verify-{time.monotonic_ns()}",
            "isolation.level": isolation,
            "enable.auto.commit": False,
            "fetch.queue.backoff.ms": 5,
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    got: dict[int, list[bytes]] = {p: [] for p in range(PARTITIONS)}
    total = 0
    deadline = time.monotonic() + 30
    quiet_until = None
    while time.monotonic() < deadline:
        messages = [m for m in consumer.consume(1000, 0.2) if m.error() is None]
        for m in messages:
            got[m.partition()].append(m.value())
        total += len(messages)
        if total >= count:
            quiet_until = quiet_until or time.monotonic() + 0.5
            if time.monotonic() >= quiet_until:
                break
    consumer.close()
    return got


def copier(
    broker: BrokerProcess, src: str, dst: str, group: str, txn_id: str, *extra: str
) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [
            sys.executable,
            str(COPIER),
            "--bootstrap",
            broker.bootstrap,
            "--src",
            src,
            "--dst",
            dst,
            "--group",
            group,
            "--txn-id",
            txn_id,
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    _RUNNING.append(process)
    return process


def finish(process: subprocess.Popen[str], timeout_s: float = 60) -> tuple[int, str]:
    output, _ = process.communicate(timeout=timeout_s)
    return process.returncode, output


def wait_first_commit(broker: BrokerProcess, group: str, topic: str, process: subprocess.Popen[str]) -> None:
    """Until the copier has committed its first transaction (offsets of ``group`` on ``topic``)."""
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        deadline = time.monotonic() + 30
        while not any(tp.offset > 0 for tp in consumer.committed(tps, timeout=10)):
            assert process.poll() is None, f"the copier ended early: {finish(process)[1][-3000:]}"
            assert time.monotonic() < deadline, "the copier never committed a transaction"
            time.sleep(0.05)  # polling the group's committed offsets
    finally:
        consumer.close()


def test_copier_output_equals_input_record_for_record(
    broker: BrokerProcess, unique: Callable[[str], str]
) -> None:
    src, dst = unique("a"), unique("b")
    create_topics(broker, src, dst)
    expected = fill(broker, src, 3_000)
    rc, output = finish(copier(broker, src, dst, unique("g"), unique("t"), "--subscribe"))
    assert rc == 0, output
    assert read_all(broker, dst, 3_000) == expected


def test_kafka_python_transactional_copier(
    broker: BrokerProcess, unique: Callable[[str], str]
) -> None:
    src, dst = unique("a"), unique("b")
    create_topics(broker, src, dst)
    expected = fill(broker, src, 2_000)
    rc, output = finish(
        copier(broker, src, dst, unique("g"), unique("t"), "--client", "kafka-python")
    )
    assert rc == 0, output
    assert read_all(broker, dst, 2_000) == expected


def test_aborted_transaction_is_invisible_to_read_committed_only(
    broker: BrokerProcess, unique: Callable[[str], str]
) -> None:
    topic = unique("iso")
    create_topics(broker, topic)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": unique("t")})
    producer.init_transactions(10)
    producer.begin_transaction()
    for i in range(10):
        producer.produce(topic, value=b"aborted-%d" % i, partition=i % PARTITIONS)
    producer.flush(10)
    producer.abort_transaction(10)
    producer.begin_transaction()
    for i in range(5):
        producer.produce(topic, value=b"committed-%d" % i, partition=i % PARTITIONS)
    producer.commit_transaction(10)
    committed = read_all(broker, topic, 5)
    assert sorted(v for vs in committed.values() for v in vs) == [b"committed-%d" % i for i in range(5)]
    uncommitted = read_all(broker, topic, 15, isolation="read_uncommitted")
    assert sum(len(vs) for vs in uncommitted.values()) == 15


def test_second_producer_with_the_same_id_fences_the_first(
    broker: BrokerProcess, unique: Callable[[str], str]
) -> None:
    topic, txn_id = unique("fence"), unique("t")
    create_topics(broker, topic)
    first = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": txn_id})
    first.init_transactions(10)
    first.begin_transaction()
    first.produce(topic, value=b"zombie", partition=0)
    first.flush(10)
    second = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": txn_id})
    second.init_transactions(10)  # aborts the first one's transaction and fences it
    with pytest.raises(KafkaException) as raised:
        first.produce(topic, value=b"late", partition=0)
        first.commit_transaction(10)
    assert raised.value.args[0].fatal(), raised.value
    second.begin_transaction()
    second.produce(topic, value=b"winner", partition=0)
    second.commit_transaction(10)
    got = read_all(broker, topic, 1)
    assert got[0] == [b"winner"]


def test_copier_sigkilled_again_and_again_copies_exactly_once(
    broker: BrokerProcess, unique: Callable[[str], str]
) -> None:
    src, dst, group, txn_id = unique("a"), unique("b"), unique("g"), unique("t")
    create_topics(broker, src, dst)
    expected = fill(broker, src, 12_000)
    rng = random.Random(4)
    kills = 0
    for _ in range(30):  # bounded: each round either kills the copier or it finishes
        process = copier(broker, src, dst, group, txn_id, "--batch", "100", "--pause-ms", "20")
        time.sleep(rng.uniform(0.4, 1.2))
        if process.poll() is None and kills < 10:
            process.kill()
            process.wait(10)
            kills += 1
            continue
        rc, output = finish(process)
        assert rc == 0, output
        break
    assert kills >= 10
    assert read_all(broker, dst, 12_000) == expected


def test_broker_sigkilled_mid_run_recovers_and_the_copier_finishes(
    fresh_broker: BrokerProcess, unique: Callable[[str], str]
) -> None:
    broker = fresh_broker
    src, dst, group, txn_id = unique("a"), unique("b"), unique("g"), unique("t")
    create_topics(broker, src, dst)
    expected = fill(broker, src, 6_000)
    # An open transaction of another producer, its records already in the log.
    dangling = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": "dangling"})
    dangling.init_transactions(10)
    dangling.begin_transaction()
    for p in range(PARTITIONS):
        dangling.produce(dst, value=b"never-committed", partition=p)
    dangling.flush(10)
    process = copier(broker, src, dst, group, txn_id, "--batch", "100", "--pause-ms", "20")
    wait_first_commit(broker, group, src, process)  # the broker dies mid-run, not before the copier started
    broker.kill()
    broker.start()
    restarts = 0
    outputs = []
    while True:
        try:
            rc, output = finish(process, timeout_s=45)
        except subprocess.TimeoutExpired:
            process.kill()
            rc, output = -9, process.communicate()[0]
        if rc == 0:
            break
        # A copier that found its transaction aborted by the recovery is fenced (exit 3): start
        # it again, as a supervisor would. About one run in twenty, librdkafka 2.16's
        # send_offsets_to_transaction blocks past its timeout after the broker came back (the
        # group-coordinator request waits for a broker state change that never comes: upstream
        # confluentinc/librdkafka#5456 and #5511; SIGUSR1 shows the copier inside that call, the
        # broker shows AddOffsetsToTxn answered and no TxnOffsetCommit sent). The copier is then
        # killed and restarted too. Any other end is kept for the failure message.
        outputs.append(f"exit {rc}:\n{output[-3000:]}")
        assert restarts < 5, "\n".join(outputs)
        restarts += 1
        process = copier(broker, src, dst, group, txn_id, "--batch", "100", "--deadline-s", "40")
    assert "recovery: aborting transaction of 'dangling'" in broker.log_text()
    assert read_all(broker, dst, 6_000) == expected
    if any(not o.startswith("exit 3") for o in outputs):
        print("copier runs other than a fenced exit:", *outputs, sep="\n")


def test_aiokafka_transactions(broker: BrokerProcess, unique: Callable[[str], str]) -> None:
    """aiokafka speaks the transactional APIs at v0 (it infers the broker release)."""
    import asyncio

    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.structs import OffsetAndMetadata
    from aiokafka.structs import TopicPartition as AioTopicPartition

    topic, group = unique("aio"), unique("g")
    create_topics(broker, topic)

    async def main() -> list[bytes]:
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, transactional_id=unique("t"))
        await producer.start()
        try:
            async with producer.transaction():
                await producer.send_and_wait(topic, b"first", partition=0)
            await producer.begin_transaction()
            await producer.send_and_wait(topic, b"aborted", partition=0)
            await producer.abort_transaction()
            async with producer.transaction():
                await producer.send_and_wait(topic, b"second", partition=0)
                await producer.send_offsets_to_transaction(
                    {AioTopicPartition(topic, 0): OffsetAndMetadata(7, "")}, group
                )
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=broker.bootstrap, isolation_level="read_committed", group_id=group,
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            tp = AioTopicPartition(topic, 0)
            assert await consumer.committed(tp) == 7
            consumer.assign([tp])
            consumer.seek(tp, 0)
            got = await consumer.getmany(tp, timeout_ms=3000)
            return [m.value for m in got.get(tp, [])]
        finally:
            await consumer.stop()

    assert asyncio.run(main()) == [b"first", b"second"]
