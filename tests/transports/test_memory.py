"""``memory://`` is the broker core on a temporary directory, not a broker of its own: how long
its data lives, what shares it, and which clock does what. (The broker semantics it serves are
proven in ``tests/broker`` and ``tests/transports/test_embedded.py``; the harness's own behaviour
in ``tests/test_testing.py``.)"""

from __future__ import annotations

import asyncio

from flowbus.broker.core import BrokerCore
from flowbus.clock import ManualClock
from flowbus.transports import transport_from_url
from flowbus.transports.base import TopicPartition, TopicSpec
from flowbus.transports.memory import MemoryTransport


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_an_unnamed_transport_runs_the_broker_core_and_removes_its_directory_when_closed() -> None:
    async def main() -> None:
        t = MemoryTransport()
        assert not t.data_dir.exists(), "nothing is written before the transport starts"
        await t.start()
        assert isinstance(t.core, BrokerCore)
        await t.create_topics([TopicSpec("t", 2)])
        producer = t.producer()
        await producer.send("t", b"v", b"k")
        await producer.close()
        assert t.data_dir.is_dir()
        assert [r.value for r in t.read_records("t")] == [b"v"]
        await t.close()
        assert not t.data_dir.exists()

    run(main())


def test_an_alias_shares_the_core_and_the_last_one_closed_removes_the_directory() -> None:
    async def main() -> None:
        first = MemoryTransport()
        second = first.alias()
        await first.start()
        await second.start()
        assert second.core is first.core
        producer = second.producer()
        await producer.send("t", b"one")
        await producer.close()
        await second.close()
        assert [r.value for r in first.read_records("t")] == [b"one"], "closing one user keeps the core"
        await first.close()
        assert not first.data_dir.exists()

    run(main())


def test_named_transports_share_a_core_and_unnamed_ones_do_not() -> None:
    async def main() -> None:
        a = transport_from_url("memory://shared-test")
        b = transport_from_url("memory://shared-test")
        other = transport_from_url("memory://")
        assert isinstance(a, MemoryTransport) and isinstance(b, MemoryTransport) and isinstance(other, MemoryTransport)
        assert a.data_dir == b.data_dir != other.data_dir
        for t in (a, b, other):
            await t.start()
        producer = a.producer()
        await producer.send("shared", b"x")
        await producer.close()
        assert [r.value for r in b.read_records("shared")] == [b"x"]
        assert "shared" not in await other.list_topics()
        for t in (a, b, other):
            await t.close()

    run(main())


def test_records_take_the_app_clock_while_group_sessions_keep_real_time() -> None:
    """Moving a manual clock an hour stamps records an hour later, and the consumer's group
    membership survives: the core's session timeout runs on the system clock."""

    async def main() -> None:
        clock = ManualClock(now_ms=1_000_000)
        t = MemoryTransport(clock=clock)
        await t.start()
        await t.create_topics([TopicSpec("t", 1)])
        consumer = t.consumer("g")
        consumer.subscribe(["t"])
        assert await consumer.poll_batch(10, 0) == []
        assert consumer.assignment() == [TopicPartition("t", 0)]
        clock.advance(3_600_000)
        producer = t.producer()
        await producer.send("t", b"later")
        await producer.close()
        [record] = await consumer.poll_batch(10, 1000)
        assert record.timestamp_ms == 1_000_000 + 3_600_000
        assert consumer.assignment() == [TopicPartition("t", 0)], "the session did not expire"
        await consumer.commit({TopicPartition("t", 0): record.offset + 1})
        assert t.group_offsets_now("g") == {TopicPartition("t", 0): 1}
        await consumer.close()
        await t.close()

    run(main())


def test_records_stamped_by_a_manual_clock_are_not_expired_by_the_cores_real_clock() -> None:
    """The harness's records carry its manual clock (2023 by default): with the default
    retention.ms of 7 days, the core's ticks would roll and delete them as years old."""

    async def main() -> None:
        t = MemoryTransport(clock=ManualClock())
        await t.start()
        producer = t.producer()
        await producer.send("old", b"kept")
        await producer.close()
        for _ in range(3):  # a retention pass rolls an expired active segment, a later one deletes it
            t.core.logs.flush()  # (only flushed segments are deleted)
            t.core.tick()
        assert [r.value for r in t.read_records("old")] == [b"kept"]
        await t.close()

    run(main())
