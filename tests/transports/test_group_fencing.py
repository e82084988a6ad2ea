"""KIP-447 through each transport: offsets sent to a transaction with the group metadata of a member
the group moved on without raise :class:`GroupFencedError` (not a fatal error), the transaction then
aborts, nothing of it is visible, and the same producer goes on with the next transaction.

``embedded://`` talks to the broker core in-process; ``kafka://`` is confluent-kafka (librdkafka
sends TxnOffsetCommit v3 with the consumer's generation and member id) against a real ``flowbus
broker`` process.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowbus.transports.base import Consumer, TopicPartition, TopicSpec, Transport
from flowbus.transports.embedded import EmbeddedTransport
from flowbus.transports.errors import GroupFencedError, ProducerFencedError
from flowbus.transports.kafka import KafkaTransport
from tests.support.broker_process import BrokerProcess

pytestmark = pytest.mark.timeout(120)

ASSIGN_WAIT_S = 30.0
READ_IDLE_POLLS = 3


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    with BrokerProcess(tmp_path_factory.mktemp("group-fencing") / "data") as process:
        yield process


async def until_assigned(consumer: Consumer, others: tuple[Consumer, ...] = ()) -> None:
    """Poll (and let ``others`` poll, so they rejoin too) until ``consumer`` owns partitions."""
    deadline = time.monotonic() + ASSIGN_WAIT_S
    while not consumer.assignment():
        assert time.monotonic() < deadline, "never assigned"
        await consumer.poll_batch(100, 50)
        for other in others:
            await other.poll_batch(100, 10)


async def read_all(transport: Transport, topic: str, *, committed_only: bool) -> list[bytes]:
    reader = transport.consumer(
        f"reader-{uuid.uuid4().hex[:8]}", isolation_level="read_committed" if committed_only else "read_uncommitted"
    )
    reader.subscribe([topic])
    values: list[bytes] = []
    idle = 0
    deadline = time.monotonic() + ASSIGN_WAIT_S
    while idle < READ_IDLE_POLLS or not reader.assignment():
        assert time.monotonic() < deadline, "reading never settled"
        batch = await reader.poll_batch(1000, 200)
        idle = 0 if batch else idle + 1
        values += [r.value for r in batch if r.value is not None]
    await reader.close()
    return values


async def zombie_scenario(transport: Transport) -> None:
    """A member reads, the group moves on without it (it leaves; a successor joins), and its
    producer then tries to commit the output with the old member's metadata."""
    suffix = uuid.uuid4().hex[:8]
    src, dst, group = f"src-{suffix}", f"dst-{suffix}", f"g-{suffix}"
    await transport.create_topics([TopicSpec(src, 1), TopicSpec(dst, 1)])
    tp = TopicPartition(src, 0)
    zombie = transport.consumer(group, isolation_level="read_committed")
    zombie.subscribe([src])
    await until_assigned(zombie)
    stale = zombie.group_metadata()
    await zombie.close()
    successor = transport.consumer(group, isolation_level="read_committed")
    successor.subscribe([src])
    await until_assigned(successor)

    producer = transport.producer(transactional_id=f"tx-{suffix}")
    await producer.init_transactions()
    producer.begin_transaction()
    producer.send_soon(dst, b"from-the-zombie")
    await producer.flush()
    with pytest.raises(GroupFencedError) as raised:
        await producer.send_offsets_to_transaction({tp: 5}, stale)
    assert not isinstance(raised.value, ProducerFencedError), "the producer itself stays usable"
    await producer.abort_transaction()

    producer.begin_transaction()  # the same producer, the next transaction, the current member
    producer.send_soon(dst, b"from-the-successor")
    await producer.send_offsets_to_transaction({tp: 3}, successor.group_metadata())
    await producer.commit_transaction()
    assert (await successor.committed([tp]))[tp] == 3
    await successor.close()
    await producer.close()

    assert await read_all(transport, dst, committed_only=True) == [b"from-the-successor"]
    assert sorted(await read_all(transport, dst, committed_only=False)) == [b"from-the-successor", b"from-the-zombie"]


def test_embedded_stale_member_is_fenced_and_the_transaction_aborts(tmp_path: Path) -> None:
    async def main() -> None:
        transport = EmbeddedTransport(f"embedded://{tmp_path}")
        await transport.start()
        try:
            await zombie_scenario(transport)
        finally:
            await transport.close()

    asyncio.run(main())


def test_kafka_stale_member_is_fenced_and_the_transaction_aborts(broker: BrokerProcess) -> None:
    async def main() -> None:
        transport = KafkaTransport(f"kafka://{broker.bootstrap}")
        await transport.start()
        try:
            await zombie_scenario(transport)
        finally:
            await transport.close()

    asyncio.run(main())


@pytest.mark.parametrize("where", ["embedded", "kafka"])
def test_rejoin_starts_again_from_the_committed_offsets(where: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """What the worker relies on after a fenced commit: :meth:`Consumer.rejoin` gives up the
    positions it had and reads every partition again from the group's committed offset."""

    async def main() -> None:
        if where == "kafka":
            transport: Transport = KafkaTransport(f"kafka://{request.getfixturevalue('broker').bootstrap}")
        else:
            transport = EmbeddedTransport(f"embedded://{tmp_path}")
        await transport.start()
        suffix = uuid.uuid4().hex[:8]
        topic, group = f"t-{suffix}", f"g-{suffix}"
        await transport.create_topics([TopicSpec(topic, 1)])
        producer = transport.producer()
        for i in range(10):
            producer.send_soon(topic, b"%d" % i)
        await producer.flush()
        consumer = transport.consumer(group)
        revoked: list[list[TopicPartition]] = []
        assigned: list[list[TopicPartition]] = []

        async def on_revoked(parts: list[TopicPartition]) -> None:
            revoked.append(parts)

        async def on_assigned(parts: list[TopicPartition]) -> None:
            assigned.append(parts)

        consumer.subscribe([topic], on_assigned=on_assigned, on_revoked=on_revoked)
        seen: list[int] = []
        deadline = time.monotonic() + ASSIGN_WAIT_S
        while len(seen) < 10:
            assert time.monotonic() < deadline
            seen += [int(r.value) for r in await consumer.poll_batch(100, 100)]  # type: ignore[arg-type]
        await consumer.commit({TopicPartition(topic, 0): 4})
        consumer.rejoin()
        again: list[int] = []
        deadline = time.monotonic() + ASSIGN_WAIT_S
        while len(assigned) < 2 or len(again) < 6:
            assert time.monotonic() < deadline, f"assigned {assigned}, read again {again}"
            batch = await consumer.poll_batch(100, 100)
            if len(assigned) >= 2:  # records of the old assignment may come first: not counted
                again += [int(r.value) for r in batch]  # type: ignore[arg-type]
        assert revoked and revoked[0] == [TopicPartition(topic, 0)]
        assert again == [4, 5, 6, 7, 8, 9]
        await consumer.close()
        await producer.close()
        await transport.close()

    asyncio.run(main())
