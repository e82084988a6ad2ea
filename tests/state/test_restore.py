"""Tables on the embedded broker: commits, restore from the changelog, and its failure cases."""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from flowbus import App
from flowbus.state import make_backend
from flowbus.state.changelog import encode_offset, offset_meta_key
from flowbus.app_errors import AgentError
from flowbus.state.errors import ChangelogMismatchError, RestoreTimeoutError, StoreLockedError
from flowbus.state.manager import StateManager
from flowbus.state.opening import open_partition
from flowbus.transports.base import TopicPartition, TopicSpec
from flowbus.transports import transport_from_url
from flowbus.transports.embedded import EmbeddedTransport
from flowbus.transports.partitioner import partition_for_key
from tests.support.broker_process import BrokerProcess

WORDS = [f"w{i}" for i in range(40)]
WAIT_S = 30.0


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    with BrokerProcess(tmp_path_factory.mktemp("state-broker") / "data") as process:
        yield process


@pytest.fixture(params=["embedded", "kafka"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where the app runs: the embedded broker in tmp_path, or a flowbus broker process."""
    if request.param == "kafka":
        broker: BrokerProcess = request.getfixturevalue("broker")
        return f"kafka://{broker.bootstrap}?session.timeout.ms=6000&heartbeat.interval.ms=500"
    return f"embedded://{tmp_path / 'data'}"


def make_app(tmp_path: Path, *, url: str | None = None, **kwargs: object) -> tuple[App, object]:
    app_id = "wc"
    if url is not None and url.startswith("kafka://"):
        app_id = f"wc-{tmp_path.name}"  # one broker process serves every test of the module
    app = App(app_id, broker=url or f"embedded://{tmp_path / 'data'}", topic_partitions=4, commit_interval_ms=50,
              state_dir=tmp_path / "data" / "state", **kwargs)  # type: ignore[arg-type]
    words = app.topic(f"words-{app_id}", key_type=str, value_type=str)
    counts = app.Table("counts", default=int, key_type=str, value_type=int)

    @app.agent(words)
    async def count(stream):  # type: ignore[no-untyped-def]
        async for word in stream:
            counts[word] += 1

    return app, counts


async def produce(
    tmp_path: Path, topic: str, items: list[tuple[str, str]], partitions: int = 4, url: str | None = None
) -> None:
    transport = transport_from_url(url) if url else EmbeddedTransport(f"embedded://{tmp_path / 'data'}")
    await transport.start()
    await transport.create_topics([TopicSpec(topic, partitions)])
    producer = transport.producer()
    for key, value in items:
        producer.send_soon(topic, f'"{value}"'.encode(), key.encode())
    await producer.close()
    await transport.close()


async def run_until(app: App, done: Callable[[], bool]) -> None:
    """Run a worker until ``done()`` holds (polled between loop turns), then stop it cleanly."""
    worker = app.make_worker()
    task = asyncio.create_task(worker.run())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    try:
        while not done():
            assert not task.done(), task.exception()
            assert loop.time() < deadline, "the worker did not get there in time"
            await asyncio.sleep(0.02)
        await worker.commit()
    finally:
        worker.stop()
        await task


def table_has(table: object, expected: dict[str, int]) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return dict(table.items()) == expected  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - partitions not owned yet
            return False

    return check


def first_run(tmp_path: Path, url: str | None = None, **kwargs: object) -> dict[str, int]:
    items = [(w, w) for w in WORDS * 3 + WORDS[:10]]
    expected = dict(Counter(w for w, _ in items))
    app, counts = make_app(tmp_path, url=url, **kwargs)

    async def main() -> None:
        await produce(tmp_path, f"words-{app.id}", items, url=url)
        await run_until(app, table_has(counts, expected))

    asyncio.run(main())
    return expected


def second_run(tmp_path: Path, expected: dict[str, int], url: str | None = None, **kwargs: object) -> App:
    app, counts = make_app(tmp_path, url=url, **kwargs)
    asyncio.run(run_until(app, table_has(counts, expected)))
    return app


def test_a_lost_state_directory_is_restored_from_the_changelog(
    tmp_path: Path, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    expected = first_run(tmp_path, url)
    state_dir = tmp_path / "data" / "state" / ("wc" if url.startswith("embedded") else f"wc-{tmp_path.name}")
    assert sorted(p.name for p in state_dir.iterdir()) == [f"partition-{p}-of-4" for p in range(4)]
    for partition_dir in state_dir.iterdir():
        assert (partition_dir / "LOCK.flowbus").exists() and (partition_dir / "db").is_dir()
    shutil.rmtree(state_dir)
    with caplog.at_level(logging.INFO, logger="flowbus.state"):
        second_run(tmp_path, expected, url)
    assert sum("restored partition" in r.getMessage() for r in caplog.records) == 4


def test_a_restart_reads_only_what_the_local_state_lacks(
    tmp_path: Path, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    expected = first_run(tmp_path, url)
    with caplog.at_level(logging.INFO, logger="flowbus.state"):
        second_run(tmp_path, expected, url)
    assert not any("restoring" in r.getMessage() for r in caplog.records), "the local state was complete"


def test_a_stored_offset_outside_the_changelog_wipes_and_restores_in_full(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    expected = first_run(tmp_path)
    backend = make_backend("rocksdb")
    path = tmp_path / "data" / "state" / "wc" / "partition-1-of-4"
    db, _ = open_partition(backend, path, ["counts"], now_ms=0)
    db.write({"counts": {b"bogus": b"99"}}, {offset_meta_key("counts"): encode_offset(10**9)})
    db.close()
    backend.close()
    with caplog.at_level(logging.INFO, logger="flowbus.state"):
        second_run(tmp_path, expected)  # "bogus" is gone: the table equals the truth exactly
    wipes = [r for r in caplog.records if "outside the changelog's range" in r.getMessage()]
    assert len(wipes) == 1 and "partition-1-of-4" in wipes[0].getMessage()


def test_a_corrupt_database_is_moved_aside_and_rebuilt(tmp_path: Path) -> None:
    expected = first_run(tmp_path)
    path = tmp_path / "data" / "state" / "wc" / "partition-2-of-4"
    (path / "db" / "CURRENT").write_bytes(b"garbage\n")
    second_run(tmp_path, expected)
    assert [p.name.startswith("db.corrupt-") for p in path.iterdir()].count(True) == 1


def test_exactly_once_tables_commit_with_the_transaction(tmp_path: Path, url: str) -> None:
    expected = first_run(tmp_path, url, processing_guarantee="exactly_once")
    shutil.rmtree(tmp_path / "data" / "state")
    second_run(tmp_path, expected, url, processing_guarantee="exactly_once")


def test_a_changelog_with_another_partition_count_is_a_clear_error(tmp_path: Path) -> None:
    app, _ = make_app(tmp_path)

    async def main() -> None:
        await produce(tmp_path, "wc-counts-changelog", [], partitions=2)
        await produce(tmp_path, "words-wc", [])
        worker = app.make_worker()
        with pytest.raises(ChangelogMismatchError, match="has 2 partitions but table 'counts' has 4"):
            await worker.start()
        await worker.shutdown()

    asyncio.run(main())


def test_a_partition_database_held_by_another_process_is_not_opened(tmp_path: Path) -> None:
    path = tmp_path / "state" / "wc" / "partition-0-of-1"
    path.mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from pathlib import Path
            from flowbus.state.locking import PartitionLock
            lock = PartitionLock(Path({str(path)!r}))
            lock.acquire(1000)
            print("held", flush=True)
            time.sleep(60)
        """)],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"held"
        app, counts = make_app(tmp_path)

        async def main() -> None:
            transport = EmbeddedTransport(f"embedded://{tmp_path / 'data'}")
            await transport.start()
            await transport.create_topics([TopicSpec("words-wc", 1)])
            counts.partitions = 1  # type: ignore[attr-defined]
            manager = StateManager("wc", [counts], transport, make_backend("memory"),  # type: ignore[list-item]
                                   state_dir=tmp_path / "state", clock=app.clock, lock_timeout_ms=300)
            await manager.start(["words-wc"], ["words-wc"])
            with pytest.raises(StoreLockedError, match="partition-0-of-1"):
                await manager.assigned([TopicPartition("words-wc", 0)])
            await manager.close()
            await transport.close()

        asyncio.run(main())
    finally:
        holder.kill()
        holder.wait()


def test_a_global_table_holds_every_partition_and_follows_its_changelog(tmp_path: Path) -> None:
    app = App("g", broker=f"embedded://{tmp_path / 'data'}", topic_partitions=2)
    lookups = app.topic("lookups", key_type=str, value_type=str)
    countries = app.GlobalTable("countries", key_type=str, value_type=str, partitions=3)
    results: list[tuple[str, str | None]] = []

    @app.agent(lookups)
    async def look(stream):  # type: ignore[no-untyped-def]
        async for code in stream:
            results.append((code, countries.get(code)))

    async def main() -> None:
        await produce(tmp_path, "g-countries-changelog", [("fr", "France"), ("de", "Germany"), ("it", "Italy")], partitions=3)
        await produce(tmp_path, "lookups", [("fr", "fr"), ("it", "it"), ("xx", "xx")], partitions=2)
        worker = app.make_worker()
        task = asyncio.create_task(worker.run())
        try:
            for _ in range(int(WAIT_S / 0.02)):
                if len(results) == 3:
                    break
                await asyncio.sleep(0.02)
            assert sorted(results) == [("fr", "France"), ("it", "Italy"), ("xx", None)]
            assert countries.owned_partitions() == [0, 1, 2]
            await produce(tmp_path, "g-countries-changelog", [("xx", "Nowhere")], partitions=3)
            for _ in range(int(WAIT_S / 0.02)):
                if countries.get("xx") == "Nowhere":
                    break
                await asyncio.sleep(0.02)
            assert countries.get("xx") == "Nowhere"
        finally:
            worker.stop()
            await task

    asyncio.run(main())


def test_a_restore_that_cannot_progress_stops_the_worker_with_a_typed_error(tmp_path: Path) -> None:
    """A transaction left open on the changelog holds read_committed readers back: the restore
    gives up after restore_timeout_ms instead of hanging."""
    app, counts = make_app(tmp_path, restore_timeout_ms=500)

    async def main() -> None:
        transport = EmbeddedTransport(f"embedded://{tmp_path / 'data'}")
        await transport.start()
        await transport.create_topics([TopicSpec("words-wc", 4), TopicSpec("wc-counts-changelog", 4)])
        stuck = transport.producer(transactional_id="never-commits")
        await stuck.init_transactions()
        stuck.begin_transaction()
        stuck.send_soon("wc-counts-changelog", b"1", b"w1", partition=0)
        await stuck.flush()
        worker = app.make_worker()
        with pytest.raises(AgentError) as failure:
            await asyncio.wait_for(worker.run(), WAIT_S)
        assert isinstance(failure.value.__cause__, RestoreTimeoutError)
        assert "made no progress for 500 ms" in str(failure.value.__cause__)
        await stuck.abort_transaction()
        await stuck.close()
        await transport.close()

    asyncio.run(main())


def test_a_restoring_partition_waits_while_the_others_go_on(tmp_path: Path) -> None:
    """Events of a partition are processed only once its state is restored; the other
    partitions do not wait for it."""
    app = App("wc", broker=f"embedded://{tmp_path / 'data'}", topic_partitions=2, commit_interval_ms=50,
              state_dir=tmp_path / "state")
    words = app.topic("words", key_type=str, value_type=str)
    counts = app.Table("counts", default=int, key_type=str, value_type=int)
    big_key = next(f"k{i}" for i in range(100) if partition_for_key(f"k{i}".encode(), 2) == 0)
    small_key = next(f"k{i}" for i in range(100) if partition_for_key(f"k{i}".encode(), 2) == 1)
    seen: list[tuple[str, int, bool]] = []
    restored_records = 60_000

    @app.agent(words)
    async def count(stream):  # type: ignore[no-untyped-def]
        async for word in stream:
            counts[word] += 1
            seen.append((word, counts[word], app.worker.state.restoring))  # type: ignore[union-attr]

    async def main() -> None:
        transport = EmbeddedTransport(f"embedded://{tmp_path / 'data'}")
        await transport.start()
        await transport.create_topics([TopicSpec("words", 2), TopicSpec("wc-counts-changelog", 2)])
        producer = transport.producer()
        for i in range(restored_records):  # partition 0's changelog: many keys, big_key last at 1000
            producer.send_soon("wc-counts-changelog", b"5", f"filler-{i}".encode() if i else big_key.encode(), partition=0)
        producer.send_soon("wc-counts-changelog", b"1000", big_key.encode(), partition=0)
        producer.send_soon("words", b'"%s"' % big_key.encode(), big_key.encode(), partition=0)
        producer.send_soon("words", b'"%s"' % small_key.encode(), small_key.encode(), partition=1)
        await producer.close()
        await transport.close()
        await run_until(app, lambda: len(seen) == 2)

    asyncio.run(main())
    by_word = {word: (value, restoring) for word, value, restoring in seen}
    assert by_word[big_key] == (1001, False), "partition 0's event waited for its whole state"
    assert by_word[small_key] == (1, True), "partition 1's event was processed during partition 0's restore"
    assert [w for w, _, _ in seen] == [small_key, big_key], "partition 1 did not wait for partition 0"
