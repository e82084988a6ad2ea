"""The worker on the real broker: ``memory://`` (the test harness's transport: the broker core
in-process on a temporary directory), ``embedded://`` (the same core on a data directory), and
kafka:// against a ``flowbus broker`` process. The same scenarios run on all three; those with
several workers run them concurrently, each in its own task, as separate processes would."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import flowbus
from flowbus import App
from flowbus.transports import transport_from_url
from flowbus.transports.base import TopicPartition
from tests.support.broker_process import BrokerProcess

WAIT_S = 20.0


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    with BrokerProcess(tmp_path_factory.mktemp("broker") / "data") as process:
        yield process


_counter = iter(range(1_000_000))


@pytest.fixture(params=["memory", "embedded", "kafka"])
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return f"memory://{tmp_path.name}"  # named: every app of the test shares one core
    if request.param == "embedded":
        return f"embedded://{tmp_path / 'data'}"
    process: BrokerProcess = request.getfixturevalue("broker")
    return f"kafka://{process.bootstrap}"


def unique(prefix: str) -> str:
    """Topic and group names unique per test, since the kafka broker is shared by the module."""
    return f"{prefix}-{next(_counter)}-{int(time.time() * 1000) % 100000}"


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def read_all(url: str, topic: str, count: int) -> list[bytes | None]:
    transport = transport_from_url(url)
    await transport.start()
    consumer = transport.consumer(unique("reader"))
    consumer.subscribe([topic])
    values: list[bytes | None] = []
    deadline = time.monotonic() + WAIT_S
    while len(values) < count and time.monotonic() < deadline:
        values.extend(r.value for r in await consumer.poll_batch(1000, 100))
    await consumer.close()
    await transport.close()
    return values


def test_agents_and_dataflows_end_to_end(broker_url: str) -> None:
    app_id = unique("e2e")
    app = App(app_id, broker=broker_url, commit_interval_ms=100, topic_partitions=2)
    src = app.topic(unique("in"), key_type=str)
    doubled = app.topic(unique("doubled"))
    evens = app.topic(unique("evens"))
    seen: list[int] = []

    @app.agent(src, sink=[doubled], concurrency=2)
    async def double(stream: flowbus.Stream) -> Any:
        async for value in stream:
            seen.append(value)
            yield value * 2

    app.stream(src).filter(lambda v: v % 2 == 0).to(evens)

    async def main() -> None:
        await app.create_topics()
        worker = asyncio.create_task(app.run())
        for i in range(200):
            await src.send(i, key=f"k{i % 7}")
        await app.close()
        await wait_until(lambda: len(seen) == 200, "200 events through the agent")
        app.stop()  # the shutdown commits what was processed: no need to wait for a periodic commit
        await worker
        assert sorted(int(v) for v in await read_all(broker_url, doubled.name, 200)) == [2 * i for i in range(200)]  # type: ignore[arg-type]
        assert sorted(int(v) for v in await read_all(broker_url, evens.name, 100)) == list(range(0, 200, 2))  # type: ignore[arg-type]
        transport = transport_from_url(broker_url)
        await transport.start()
        consumer = transport.consumer(app_id)
        committed = await consumer.committed([TopicPartition(src.name, 0), TopicPartition(src.name, 1)])
        ends = await consumer.end_offsets(list(committed))
        assert committed == ends, "everything processed is committed at clean shutdown"
        await transport.close()

    asyncio.run(main())
    assert sorted(seen) == list(range(200))


def test_bad_records_are_dead_lettered(broker_url: str) -> None:
    app = App(unique("dlq"), broker=broker_url, error_policy="dead_letter", commit_interval_ms=100)
    src = app.topic(unique("in"), value_type=int)
    ok: list[int] = []

    @app.agent(src)
    async def agent(stream: flowbus.Stream) -> None:
        async for value in stream:
            ok.append(value)

    async def main() -> None:
        worker = asyncio.create_task(app.run())
        producer = await app.ensure_producer()
        for raw in (b"1", b"not json", b'"str"', b"2"):
            producer.send_soon(src.name, raw)
        await producer.flush()
        await app.close()
        await wait_until(lambda: len(ok) == 2, "the two good records")
        app.stop()  # the shutdown flushes the dead letters; read_all below waits for them
        await worker
        dead = await read_all(broker_url, app.dead_letter_topic.name, 2)
        assert dead == [b"not json", b'"str"']

    asyncio.run(main())
    assert ok == [1, 2]


def test_a_dataflow_reading_keys_and_values_only_sends_its_failing_records_alone_to_the_policy(
    broker_url: str,
) -> None:
    """A chain that reads only keys and values takes a polled run's two columns, without a
    record being made for each message; a record that fails (undecodable, or refused by a step)
    in the middle of a run still reaches the error policy as itself (its own offset and bytes),
    and the records around it flow in order."""
    app = App(unique("columns"), broker=broker_url, error_policy="dead_letter", commit_interval_ms=100)
    src = app.topic(unique("in"), key_type=str, value_type=int, partitions=1)
    seen: list[tuple[int, int]] = []

    def check(value: int) -> int:
        if value == 13:
            raise ValueError("thirteen")
        return value

    app.stream(src).map(check).count(name="counts").update(lambda n: None)
    app.stream(src).filter(lambda v: v != 13).update(lambda v: seen.append(v))
    raws = [b"%d" % i for i in range(10, 20)]
    raws[5] = b"not json"  # offset 5; offset 3 holds 13

    async def main() -> None:
        producer_app = App(unique("producer"), broker=broker_url)
        producer_app.topic(src.name, partitions=1)
        await producer_app.create_topics()
        producer = await producer_app.ensure_producer()
        for raw in raws:  # all in the log before the worker polls: one run of ten
            producer.send_soon(src.name, raw, b"k")
        await producer.flush()
        await producer_app.close()
        worker = asyncio.create_task(app.run())
        await wait_until(lambda: len(seen) == 8, "the eight records the filter passes")
        app.stop()
        await worker
        transport = transport_from_url(broker_url)
        await transport.start()
        reader = transport.consumer(unique("reader"))
        reader.subscribe([app.dead_letter_topic.name])
        dead: list[Any] = []
        deadline = time.monotonic() + WAIT_S
        while len(dead) < 2 and time.monotonic() < deadline:
            dead += await reader.poll_batch(100, 100)
        await reader.close()
        await transport.close()
        # One decode serves both chains: the undecodable record is dead-lettered once.
        assert sorted((dict(r.headers)["flowbus.source.offset"], r.value) for r in dead) == [
            (b"3", b"13"), (b"5", b"not json")]

    asyncio.run(main())
    assert seen == [10, 11, 12, 14, 16, 17, 18, 19]


def test_a_second_worker_takes_half_the_partitions_without_loss_or_duplicates(broker_url: str) -> None:
    app_id = unique("grp")
    topic_name = unique("in")
    seen: list[tuple[str, int]] = []

    def build(name: str) -> App:
        app = App(app_id, broker=broker_url, topic_partitions=4, commit_interval_ms=100)
        topic = app.topic(topic_name, key_type=str)

        @app.agent(topic)
        async def agent(stream: flowbus.Stream) -> None:
            async for value in stream:
                seen.append((name, value))
                await asyncio.sleep(0.001)

        return app

    async def main() -> None:
        a, b = build("a"), build("b")
        task_a = asyncio.create_task(a.run())
        producer_app = App(unique("producer"), broker=broker_url)
        topic = producer_app.topic(topic_name, key_type=str, partitions=4)
        await producer_app.create_topics()
        for i in range(300):
            await topic.send(i, key=f"k{i}")
        await wait_until(lambda: len(seen) >= 50, "the first worker to start")
        task_b = asyncio.create_task(b.run())
        await wait_until(lambda: b.worker is not None and bool(b.worker.assigned), "the second worker's assignment")
        for i in range(300, 600):
            await topic.send(i, key=f"k{i}")
        await producer_app.close()
        await wait_until(lambda: len({v for _, v in seen}) == 600, "all 600 events")
        assert a.worker is not None and b.worker is not None
        wa, wb = a.worker, b.worker
        await wait_until(lambda: bool(wa.assigned) and bool(wb.assigned), "both workers to own partitions")
        assert not (wa.assigned & wb.assigned)
        assert len(wa.assigned | wb.assigned) == 4
        assert any(n == "b" for n, _ in seen)
        a.stop()
        b.stop()
        await asyncio.gather(task_a, task_b)

    asyncio.run(main())
    values = [v for _, v in seen]
    assert sorted(set(values)) == list(range(600))
    assert len(values) == 600, "revocation commits before partitions move: nothing is processed twice"


def test_exactly_once_across_a_live_rebalance_commits_each_output_once(broker_url: str, tmp_path: Path) -> None:
    """A second exactly-once worker of the app (default transactional ids, one state directory)
    joins mid-stream: the first commits its transaction, outputs and offsets together, before
    its partitions move, so the committed outputs have every input once, no gap, no duplicate."""
    app_id, in_name, out_name = unique("eos"), unique("in"), unique("out")
    count = 400

    def build() -> App:
        app = App(app_id, broker=broker_url, topic_partitions=4, processing_guarantee="exactly_once",
                  state_dir=tmp_path / "state")
        out = app.topic(out_name)

        @app.agent(app.topic(in_name, key_type=str), sink=[out])
        async def relay(stream: flowbus.Stream) -> Any:
            async for n in stream:
                await asyncio.sleep(0.001)
                yield n

        return app

    async def main() -> None:
        a, b = build(), build()
        task_a = asyncio.create_task(a.run())
        producer_app = App(unique("producer"), broker=broker_url)
        topic = producer_app.topic(in_name, key_type=str, partitions=4)
        await producer_app.create_topics()
        for i in range(count // 2):
            await topic.send(i, key=f"k{i}")
        await wait_until(lambda: a.worker is not None and a.worker.events_in >= 50, "the first worker to start")
        task_b = asyncio.create_task(b.run())
        await wait_until(lambda: b.worker is not None and bool(b.worker.assigned), "the second worker's assignment")
        for i in range(count // 2, count):
            await topic.send(i, key=f"k{i}")
        await producer_app.close()
        assert a.worker is not None and b.worker is not None
        wa, wb = a.worker, b.worker
        assert wa.transactional_id != wb.transactional_id
        committed: list[bytes | None] = []

        async def all_committed() -> bool:
            committed[:] = await read_committed(broker_url, out_name)
            return len(committed) >= count

        deadline = time.monotonic() + WAIT_S
        while not await all_committed():
            assert time.monotonic() < deadline, f"{len(committed)} of {count} outputs committed"
            await asyncio.sleep(0.1)
        assert bool(wa.assigned) and bool(wb.assigned) and not (wa.assigned & wb.assigned)
        a.stop()
        b.stop()
        await asyncio.gather(task_a, task_b)
        assert sorted(int(v or b"-1") for v in committed) == list(range(count))

    asyncio.run(main())


async def read_committed(url: str, topic: str) -> list[bytes | None]:
    """Every record of ``topic`` a read_committed reader outside any group sees now."""
    transport = transport_from_url(url)
    await transport.start()
    partitions = (await transport.describe_topics([topic]))[topic].partitions
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer = transport.consumer(None, isolation_level="read_committed")
    ends = await consumer.end_offsets(tps)
    consumer.assign(tps, {tp: 0 for tp in tps})
    values: list[bytes | None] = []
    deadline = time.monotonic() + WAIT_S
    while any((consumer.position(tp) or 0) < ends[tp] for tp in tps if ends[tp] > 0):
        assert time.monotonic() < deadline, "could not read the committed outputs"
        values.extend(r.value for r in await consumer.poll_batch(1000, 100))
    await consumer.close()
    await transport.close()
    return values


async def wait_for_group(url: str, group_id: str, *, members: int) -> None:
    """Until ``group_id`` is Stable with ``members`` members (as the group coordinator says)."""
    transport = transport_from_url(url)
    await transport.start()
    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            group = await transport.describe_group(group_id)
            if group.state == "Stable" and len(group.members) == members:
                return
            assert time.monotonic() < deadline, f"group {group_id!r}: {group.state}, {len(group.members)} members"
            await asyncio.sleep(0.05)
    finally:
        await transport.close()


def test_on_leader_timers_run_on_one_worker_of_the_group(broker_url: str) -> None:
    """Two workers of one app: a timer with ``on_leader=True`` runs only on the worker that owns
    the leader partition, one without runs on both."""
    app_id = unique("leader")
    ticks: dict[str, int] = {}

    def build(name: str) -> App:
        app = App(app_id, broker=broker_url)

        @app.timer(0.05, on_leader=True)
        def lead() -> None:
            ticks[name + "-leader"] = ticks.get(name + "-leader", 0) + 1

        @app.timer(0.05)
        def everywhere() -> None:
            ticks[name] = ticks.get(name, 0) + 1

        return app

    async def main() -> None:
        a, b = build("a"), build("b")
        tasks = [asyncio.create_task(a.run()), asyncio.create_task(b.run())]

        def settled() -> bool:
            wa, wb = a.worker, b.worker
            return wa is not None and wb is not None and wa.started and wb.started and wa.is_leader() != wb.is_leader()

        # The first worker leads alone until the second one's join is done: wait for a stable
        # group of two before telling who leads.
        await wait_for_group(broker_url, app_id, members=2)
        await wait_until(settled, "one of the two workers to lead")
        assert a.worker is not None and b.worker is not None
        leader, other = ("a", "b") if a.worker.is_leader() else ("b", "a")
        before = dict(ticks)
        await wait_until(lambda: min(ticks.get(n, 0) - before.get(n, 0) for n in ("a", "b")) >= 5,
                         "five runs of the timer on each worker")
        assert settled(), "the leader did not change meanwhile"
        assert ticks.get(leader + "-leader", 0) - before.get(leader + "-leader", 0) >= 4
        assert ticks.get(other + "-leader", 0) == before.get(other + "-leader", 0)
        a.stop()
        b.stop()
        await asyncio.gather(*tasks)

    asyncio.run(main())


def test_a_kafka_worker_joins_the_group_of_a_listening_embedded_worker(tmp_path: Path) -> None:
    """``embedded://`` with a listener: a second worker of the app connects over kafka:// to the
    first one's broker and they share the partitions (the consumer protocol bytes interoperate
    with librdkafka's, whichever member leads)."""
    from flowbus.transports.embedded import EmbeddedTransport
    from tests.support.broker_process import free_port

    port = free_port()
    app_id, topic_name = unique("mixed"), unique("in")
    seen: list[tuple[str, int]] = []

    def build(name: str, url: str) -> App:
        app = App(app_id, broker=url, topic_partitions=4, commit_interval_ms=100)

        @app.agent(app.topic(topic_name, key_type=str))
        async def agent(stream: flowbus.Stream) -> None:
            async for value in stream:
                seen.append((name, value))

        return app

    async def main() -> None:
        embedded_url = f"embedded://{tmp_path / 'data'}"
        a = build("embedded", embedded_url)
        a.use_transport(EmbeddedTransport(embedded_url, listen=f"127.0.0.1:{port}"))
        task_a = asyncio.create_task(a.run())
        await wait_until(lambda: a.worker is not None and len(a.worker.assigned) == 4, "the embedded worker")
        b = build("kafka", f"kafka://127.0.0.1:{port}?session.timeout.ms=6000")
        task_b = asyncio.create_task(b.run())
        await wait_until(
            lambda: b.worker is not None and bool(b.worker.assigned) and a.worker is not None and bool(a.worker.assigned),
            "both workers to own partitions",
        )
        assert a.worker is not None and b.worker is not None
        assert not (a.worker.assigned & b.worker.assigned)
        for i in range(200):
            await b.topic(topic_name).send(i, key=f"k{i}")
        await wait_until(lambda: len(seen) >= 200, "200 events")
        b.stop()
        await task_b
        a.stop()
        await task_a

    asyncio.run(main())
    assert sorted(v for _, v in seen) == list(range(200))
    assert {n for n, _ in seen} == {"embedded", "kafka"}


def test_backpressure_pauses_the_partition_and_loses_nothing(broker_url: str) -> None:
    app = App(unique("bp"), broker=broker_url, commit_interval_ms=100, max_poll_records=100)
    src = app.topic(unique("in"))
    release = asyncio.Event()
    got: list[int] = []

    @app.agent(src, max_buffered_events=200)
    async def slow(stream: flowbus.Stream) -> None:
        async for value in stream:
            await release.wait()
            got.append(value)

    async def main() -> None:
        await app.create_topics()
        producer = await app.ensure_producer()
        for i in range(3000):
            producer.send_soon(src.name, str(i).encode())
        await producer.flush()
        await app.close()
        task = asyncio.create_task(app.run())
        await wait_until(lambda: app.worker is not None and bool(app.worker.paused), "the partition to be paused")
        worker = app.worker
        assert worker is not None
        await asyncio.sleep(0.5)  # the paused partition must not keep filling the buffer
        assert len(worker.channels[0]) <= 200 + 100
        release.set()
        await wait_until(lambda: len(got) == 3000, "every event after the release")
        await wait_until(lambda: not worker.paused, "the partition to be resumed")
        app.stop()
        await task

    asyncio.run(main())
    assert got == list(range(3000))


def test_an_exactly_once_output_the_broker_refuses_stops_the_worker_and_commits_nothing(
    broker_url: str, tmp_path: Path
) -> None:
    """A record the output topic refuses (over its max.message.bytes) cannot commit, ever: the
    worker must stop with the broker's error naming it, rather than abort and replay the same
    refusal forever, and read_committed readers see none of that transaction's outputs. (On
    kafka:// the outputs carry no delivery callback inside a transaction: the refusal surfaces at
    the commit, and the replay reports each record, so it fails at the flush.)"""
    from flowbus.transports.errors import ProduceError, TransactionError

    app = App(unique("refused"), broker=broker_url, processing_guarantee="exactly_once", commit_interval_ms=100,
              topic_partitions=1, state_dir=tmp_path / "state")
    src = app.topic(unique("in"), key_type=str)
    out = app.topic(unique("out"), key_type=str, value_serializer="raw", config={"max.message.bytes": "1000"})
    app.stream(src).map(lambda size: b"x" * size).to(out)

    async def main() -> BaseException | None:
        await app.create_topics()
        for size in (10, 20, 5_000, 30):
            await src.send(size, key="k")
        try:
            await asyncio.wait_for(app.run(), WAIT_S)
        except (ProduceError, TransactionError) as exc:
            return exc
        finally:
            await app.close()
        return None

    async def visible() -> list[int]:
        transport = transport_from_url(broker_url)
        await transport.start()
        reader = transport.consumer(unique("reader"), isolation_level="read_committed")
        reader.subscribe([out.name])
        values: list[int] = []
        deadline = time.monotonic() + 2.0  # nothing more is coming: read what there is
        while time.monotonic() < deadline:
            values.extend(len(r.value or b"") for r in await reader.poll_batch(1000, 100))
        await reader.close()
        await transport.close()
        return values

    outcome = asyncio.run(main())
    assert outcome is not None, "the worker went on with an output the broker refuses"
    assert re.search(r"too large|max\.message\.bytes", str(outcome)), outcome
    assert app.worker is not None and app.worker.failed_transactions <= 1
    # Records before the refused one may have committed in an earlier transaction; the one after
    # it never can.
    assert set(asyncio.run(visible())) <= {10, 20}
