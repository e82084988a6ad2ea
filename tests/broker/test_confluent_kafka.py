"""confluent-kafka (librdkafka) against a real broker process."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import confluent_kafka
import confluent_kafka.admin
import pytest

from tests.support.broker_process import BrokerProcess

pytestmark = pytest.mark.timeout(120)

FAST = {
    "topic.metadata.refresh.interval.ms": 1000,
    "socket.connection.setup.timeout.ms": 5000,
    "reconnect.backoff.ms": 50,
    "reconnect.backoff.max.ms": 500,
}


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = confluent_kafka.admin.AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics(
        [confluent_kafka.admin.NewTopic(topic, partitions, 1)]
    ).values():
        future.result(10)


def produce(
    bootstrap: str, topic: str, count: int, *, start: int = 0, **conf: Any
) -> None:
    producer = confluent_kafka.Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            **FAST,
            **conf,
        }
    )
    errors: list[Any] = []

    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(err)

    for i in range(start, start + count):
        producer.produce(
            topic,
            key=str(i).encode(),
            value=f"value-{i}".encode(),
            on_delivery=delivered,
        )
        producer.poll(0)
    assert producer.flush(30) == 0
    assert errors == []


def consumer(bootstrap: str, group: str, **conf: Any) -> confluent_kafka.Consumer:
    return confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
            "enable.auto.commit": False,
            **FAST,
            **conf,
        }
    )


def drain(
    c: confluent_kafka.Consumer, want: int, timeout_s: float = 30
) -> list[confluent_kafka.Message]:
    got: list[confluent_kafka.Message] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        for msg in c.consume(1000, 0.5):
            assert msg.error() is None, msg.error()
            got.append(msg)
    return got


def test_idempotent_producer_acks_all(
    broker: BrokerProcess, unique: Callable[[str], str]
) -> None:
    topic = unique("idem")
    create_topic(broker.bootstrap, topic, 3)
    produce(broker.bootstrap, topic, 5000)
    c = consumer(broker.bootstrap, unique("g"))
    c.subscribe([topic])
    values = [bytes(m.value() or b"") for m in drain(c, 5000)]
    c.close()
    assert sorted(values) == sorted(f"value-{i}".encode() for i in range(5000))


def test_three_consumers_each_message_exactly_once_and_rebalance_on_leave(
    broker: BrokerProcess, unique: Callable[[str], str]
) -> None:
    topic, group = unique("six"), unique("grp")
    create_topic(broker.bootstrap, topic, 6)
    total = 6000
    seen: dict[int, set[bytes]] = {0: set(), 1: set(), 2: set()}
    assigned: dict[int, int] = {}
    stop = threading.Event()
    lock = threading.Lock()
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            c = consumer(
                broker.bootstrap,
                group,
                **{"enable.auto.commit": True, "auto.commit.interval.ms": 200},
            )
            c.subscribe([topic])
            while not stop.is_set():
                for msg in c.consume(500, 0.2):
                    assert msg.error() is None, msg.error()
                    with lock:
                        seen[index].add(msg.key())
                assigned[index] = len(c.assignment())
            c.close()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(3)]
    for t in threads:
        t.start()
    # Produce once the group is stable with two partitions each, so every consumer gets a share.
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and not (
        len(assigned) == 3 and all(v == 2 for v in assigned.values())
    ):
        time.sleep(0.1)
    assert sorted(assigned.values()) == [2, 2, 2], (assigned, broker.log_tail())
    produce(broker.bootstrap, topic, total)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with lock:
            union = set().union(*seen.values())
        if len(union) == total:
            break
        time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join(30)
    assert not errors, errors
    union = set().union(*seen.values())
    assert len(union) == total
    assert sum(len(s) for s in seen.values()) == total, (
        "a message was delivered to two consumers"
    )
    assert all(seen.values()), "every consumer got a share"

    # A rebalance when one member leaves: the remaining two take over its partitions.
    more = 600
    a = consumer(broker.bootstrap, group)
    b = consumer(broker.bootstrap, group)
    leaver = consumer(broker.bootstrap, group)
    for c in (a, b, leaver):
        c.subscribe([topic])
    deadline = time.monotonic() + 30
    while (
        time.monotonic() < deadline
        and sum(len(c.assignment()) for c in (a, b, leaver)) != 6
        or any(not c.assignment() for c in (a, b, leaver))
    ):
        for c in (a, b, leaver):
            c.poll(0.1)
        if time.monotonic() > deadline:
            break
    assert all(c.assignment() for c in (a, b, leaver))
    leaver.close()
    produce(broker.bootstrap, topic, more, start=total)
    got: set[bytes] = set()
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and (
        len(got) < more or len(a.assignment()) + len(b.assignment()) != 6
    ):
        for c in (a, b):
            for msg in c.consume(500, 0.2):
                assert msg.error() is None
                if int(msg.key()) >= total:
                    got.add(msg.key())
    assert len(a.assignment()) + len(b.assignment()) == 6
    assert len(got) == more
    a.close()
    b.close()


def test_committed_offsets_resume_after_consumer_and_broker_restart(
    fresh_broker: BrokerProcess, unique: Callable[[str], str]
) -> None:
    broker = fresh_broker
    topic, group = unique("resume"), unique("g")
    create_topic(broker.bootstrap, topic, 2)
    produce(broker.bootstrap, topic, 100)
    c = consumer(broker.bootstrap, group)
    c.subscribe([topic])
    first = drain(c, 100)
    assert len(first) == 100
    c.commit(asynchronous=False)
    c.close()

    produce(broker.bootstrap, topic, 50, start=100)
    c = consumer(broker.bootstrap, group)
    c.subscribe([topic])
    second = drain(c, 50)
    assert sorted(int(m.key()) for m in second) == list(range(100, 150))
    c.commit(asynchronous=False)
    c.close()

    broker.restart()
    produce(broker.bootstrap, topic, 25, start=150)
    c = consumer(broker.bootstrap, group)
    c.subscribe([topic])
    third = drain(c, 25)
    extra = drain(c, 1, timeout_s=1)
    c.close()
    assert sorted(int(m.key()) for m in third) == list(range(150, 175))
    assert extra == []


def test_broker_sigkill_loses_no_acknowledged_record(
    fresh_broker: BrokerProcess, unique: Callable[[str], str]
) -> None:
    broker = fresh_broker
    topic = unique("crash")
    create_topic(broker.bootstrap, topic, 3)
    acked: set[bytes] = set()
    failed: list[Any] = []
    lock = threading.Lock()
    stop = threading.Event()
    producer = confluent_kafka.Producer(
        {
            "bootstrap.servers": broker.bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 2,
            "message.timeout.ms": 60000,
            **FAST,
        }
    )

    def delivered(err: Any, msg: Any) -> None:
        with lock:
            if err is None:
                acked.add(msg.value())
            else:
                failed.append(err)

    def run() -> None:
        i = 0
        while not stop.is_set():
            try:
                producer.produce(topic, value=f"r-{i}".encode(), on_delivery=delivered)
                i += 1
            except BufferError:
                producer.poll(0.05)
                continue
            if i % 100 == 0:
                producer.poll(0.001)
        producer.flush(60)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with lock:
            if len(acked) >= 5000:
                break
        time.sleep(0.05)
    broker.kill()
    with lock:
        acked_at_kill = len(acked)
    assert acked_at_kill > 0
    time.sleep(0.5)  # let the producer notice and start retrying
    broker.start()
    with lock:
        acked_at_restart = len(acked)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # until the restarted broker acknowledges new records
        with lock:
            if len(acked) > acked_at_restart:
                break
        time.sleep(0.05)
    with lock:
        assert len(acked) > acked_at_restart, f"nothing acknowledged after the restart\n{broker.log_tail()}"
    stop.set()
    thread.join(90)
    assert not thread.is_alive()
    c = consumer(broker.bootstrap, unique("check"))
    c.subscribe([topic])
    with lock:
        expected = set(acked)
    stored = [m.value() for m in drain(c, len(expected), timeout_s=60)]
    stored += [m.value() for m in drain(c, 10**9, timeout_s=2)]
    c.close()
    assert expected <= set(stored), (
        f"{len(expected - set(stored))} acknowledged records lost\n{broker.log_tail()}"
    )
    assert len(stored) == len(set(stored)), "duplicates after retries"


def test_offsets_for_times_and_watermarks(
    broker: BrokerProcess, unique: Callable[[str], str]
) -> None:
    topic = unique("times")
    create_topic(broker.bootstrap, topic, 1)
    producer = confluent_kafka.Producer({"bootstrap.servers": broker.bootstrap, **FAST})
    base_ms = 1_700_000_000_000
    for i in range(10):
        producer.produce(topic, value=f"t{i}".encode(), timestamp=base_ms + i * 1000)
    assert producer.flush(10) == 0
    c = consumer(broker.bootstrap, unique("g"))
    assert c.get_watermark_offsets(
        confluent_kafka.TopicPartition(topic, 0), timeout=10
    ) == (0, 10)
    [found] = c.offsets_for_times(
        [confluent_kafka.TopicPartition(topic, 0, base_ms + 4500)], timeout=10
    )
    assert found.offset == 5
    [past] = c.offsets_for_times(
        [confluent_kafka.TopicPartition(topic, 0, base_ms + 99_000)], timeout=10
    )
    assert past.offset == -1  # librdkafka: no such record (end)
    c.close()
