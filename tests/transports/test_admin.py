"""The transports' administration methods (what ``flowbus topics`` and ``flowbus groups`` use),
the same assertions on memory://, embedded:// and kafka:// against a real ``flowbus broker``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from flowbus.transports import TopicPartition, TopicSpec, Transport, Watermarks
from flowbus.transports.embedded import EmbeddedTransport, data_dir_in_use
from flowbus.transports.errors import BrokerUnavailableError, TopicNotFoundError
from flowbus.transports.kafka import KafkaTransport
from flowbus.transports.memory import MemoryTransport
from tests.support.broker_process import BrokerProcess, free_port

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    with BrokerProcess(tmp_path_factory.mktemp("admin-transport") / "data") as process:
        yield process


@pytest.fixture(params=["memory", "embedded", "kafka"])
def make_transport(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Transport]:
    if request.param == "memory":
        return lambda: MemoryTransport("memory://")
    if request.param == "embedded":
        return lambda: EmbeddedTransport(f"embedded://{tmp_path / 'data'}")
    process: BrokerProcess = request.getfixturevalue("broker")
    return lambda: KafkaTransport(f"kafka://{process.bootstrap}")


def test_topics_offsets_and_groups(make_transport: Callable[[], Transport]) -> None:
    async def main() -> None:
        t = make_transport()
        await t.start()
        name = f"adm-{time.monotonic_ns()}"
        group = f"g-{name}"
        await t.create_topics([TopicSpec(name, 2, config={"retention.ms": "3600000"})])
        assert name in await t.list_topics()
        assert (await t.topic_configs(name))["retention.ms"] == "3600000"
        assert "cleanup.policy" not in await t.topic_configs(name), "defaults are left out"

        producer = t.producer()
        for i in range(5):
            producer.send(name, b"v%d" % i, partition=1)
        await producer.flush()
        await producer.close()
        tps = [TopicPartition(name, 0), TopicPartition(name, 1)]
        assert await t.watermarks(tps) == {tps[0]: Watermarks(0, 0), tps[1]: Watermarks(0, 5)}

        consumer = t.consumer(group, client_id="admin-test")
        consumer.subscribe([name])
        got = []
        deadline = time.monotonic() + 20
        while len(got) < 5 and time.monotonic() < deadline:
            got += await consumer.poll_batch(10, 100)
        assert len(got) == 5
        await consumer.commit({tps[1]: 3})
        assert await t.group_offsets(group) == {tps[1]: 3}
        assert group in {g.group_id for g in await t.list_groups()}
        described = await t.describe_group(group)
        assert described.state == "Stable"
        [member] = described.members
        assert sorted(member.assignment) == tps
        await consumer.close()
        assert (await t.describe_group(f"no-such-group-{name}")).state == "Dead"

        await t.delete_topics([name])
        assert name not in await t.list_topics()
        with pytest.raises(TopicNotFoundError):
            await t.delete_topics([name])
        with pytest.raises(TopicNotFoundError):
            await t.topic_configs(name)
        await t.close()

    asyncio.run(main())


def test_kafka_admin_calls_give_up_on_an_unreachable_broker() -> None:
    async def main() -> None:
        t = KafkaTransport(f"kafka://127.0.0.1:{free_port()}", config={"log_level": 0})
        started = time.monotonic()
        with pytest.raises(BrokerUnavailableError):
            await t.list_topics(timeout_s=1.0)
        assert time.monotonic() - started < 5

    asyncio.run(main())


def test_data_dir_in_use_sees_another_process_lock(tmp_path: Path) -> None:
    """A broker process holding the directory is detected; a free or missing one is not."""
    data = tmp_path / "data"
    assert not data_dir_in_use(data)
    with BrokerProcess(data):
        assert data_dir_in_use(data)
    assert not data_dir_in_use(data)
