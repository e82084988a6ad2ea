"""Windows on a real broker (embedded, and a broker process through kafka://): the window store,
its stream time and watermark survive a restart and a lost state directory, at least once and
exactly once; closed windows stay closed."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from flowbus import App
from flowbus.state.windowed import WindowedTable
from flowbus.transports import transport_from_url
from flowbus.transports.base import TopicPartition, TopicSpec
from tests.state.test_restore import run_until
from tests.support.broker_process import BrokerProcess

S = 1_000
WAIT_S = 30.0
NOW_MS = time.time_ns() // 1_000_000
BASE = NOW_MS - NOW_MS % (10 * S) - 600 * S
"""Event times start ten minutes ago: recent enough that retention (on record timestamps, as in
Kafka) keeps the results, which are stamped with their window's start."""
USERS = [f"u{i}" for i in range(12)]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    with BrokerProcess(tmp_path_factory.mktemp("window-broker") / "data") as process:
        yield process


@pytest.fixture(params=["embedded", "kafka"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "kafka":
        broker: BrokerProcess = request.getfixturevalue("broker")
        return f"kafka://{broker.bootstrap}?session.timeout.ms=6000&heartbeat.interval.ms=500"
    return f"embedded://{tmp_path / 'data'}"


def make_app(tmp_path: Path, url: str, guarantee: str) -> tuple[App, WindowedTable]:
    app_id = f"win-{tmp_path.name}"[:60]
    app = App(app_id, broker=url, topic_partitions=3, commit_interval_ms=50, processing_guarantee=guarantee,  # type: ignore[arg-type]
              state_dir=tmp_path / "state", window_idle_ms=None)
    clicks = app.topic(f"{app_id}-clicks", key_type=str)
    out = app.topic(f"{app_id}-counts", key_type=str)
    app.stream(clicks).tumbling_window(10 * S, name="per-user").count().final().to(out)
    table = app.tables["per-user"]
    assert isinstance(table, WindowedTable)
    return app, table


async def produce(url: str, topic: str, items: list[tuple[str, int]]) -> None:
    transport = transport_from_url(url)
    await transport.start()
    await transport.create_topics([TopicSpec(topic, 3)])
    producer = transport.producer()
    for user, ts in items:
        producer.send_soon(topic, b"{}", user.encode(), timestamp_ms=ts)
    await producer.close()
    await transport.close()


async def read_all(url: str, topic: str) -> list[tuple[str, dict[str, Any]]]:
    import orjson

    transport = transport_from_url(url)
    await transport.start()
    consumer = transport.consumer(None, isolation_level="read_committed")
    tps = [TopicPartition(topic, p) for p in range(3)]
    ends = await consumer.end_offsets(tps)
    consumer.assign(tps, {tp: 0 for tp in tps})
    out: list[tuple[str, dict[str, Any]]] = []
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while any((consumer.position(tp) or 0) < ends[tp] for tp in tps):
        assert asyncio.get_running_loop().time() < deadline
        for record in await consumer.poll_batch(1000, 100):
            out.append((record.key.decode(), orjson.loads(record.value)))
    await consumer.close()
    await transport.close()
    return out


def windows_held(table: WindowedTable, expected: dict[tuple[str, tuple[int, int]], int]) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return dict(table.items()) == expected
        except Exception:  # noqa: BLE001 - partitions not owned yet
            return False

    return check


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
@pytest.mark.parametrize("lose_state", [False, True])
def test_open_windows_and_the_watermark_survive_a_restart(tmp_path: Path, url: str, guarantee: str, lose_state: bool) -> None:
    first = [(u, BASE + 1 * S + i) for i, u in enumerate(USERS * 2)] + [(u, BASE + 12 * S) for u in USERS]
    # every user's first window [0, 10 s) closed by the 12 s records; [10, 20 s) open with 1 each
    second = [(u, BASE + t) for t in (15 * S,) for u in USERS] + [(u, BASE + 3 * S) for u in USERS[:3]]
    second += [(u, BASE + 31 * S) for u in USERS]

    async def main() -> None:
        app, table = make_app(tmp_path, url, guarantee)
        clicks, out = f"{app.id}-clicks", f"{app.id}-counts"
        await produce(url, clicks, first)
        await run_until(app, windows_held(table, {(u, (BASE + 10 * S, BASE + 20 * S)): 1 for u in USERS}))
        if lose_state:
            shutil.rmtree(tmp_path / "state")
        app, table = make_app(tmp_path, url, guarantee)
        await produce(url, clicks, second)
        await run_until(app, windows_held(table, {(u, (BASE + 30 * S, BASE + 40 * S)): 1 for u in USERS}))
        assert table.late_records == 3  # [0, 10 s) stayed closed across the restart
        results = await read_all(url, out)
        got = Counter((user, v["start"] - BASE, v["value"]) for user, v in results)
        expected = Counter({(u, 0, 2): 1 for u in USERS} | {(u, 10 * S, 2): 1 for u in USERS})
        assert got == expected

    asyncio.run(main())


@pytest.mark.parametrize("kind", ["session", "sliding", "hopping"])
def test_sessions_sliding_and_hopping_windows_are_rebuilt_from_the_changelog(tmp_path: Path, kind: str) -> None:
    url = f"embedded://{tmp_path / 'data'}"

    def make() -> tuple[App, WindowedTable]:
        app = App(f"k-{kind}", broker=url, topic_partitions=3, commit_interval_ms=50, state_dir=tmp_path / "state",
                  window_idle_ms=None)
        clicks = app.topic("clicks", key_type=str)
        out = app.topic("out", key_type=str)
        stream = app.stream(clicks)
        if kind == "session":
            windowed = stream.session_window(5 * S, name="w")
        elif kind == "sliding":
            windowed = stream.sliding_window(5 * S, name="w")
        else:
            windowed = stream.hopping_window(10 * S, 5 * S, name="w")
        windowed.count().final().to(out)
        table = app.tables["w"]
        assert isinstance(table, WindowedTable)
        return app, table

    def held(table: WindowedTable, count: int) -> Callable[[], bool]:
        def check() -> bool:
            try:
                if kind == "sliding":  # the window of 1 s closed (at 3 s); those of 3 s open
                    return table.closed_windows == count
                return sum(1 for _ in table.items()) == count
            except Exception:  # noqa: BLE001 - partitions not owned yet
                return False

        return check

    first = [(u, BASE + 1 * S) for u in USERS] + [(u, BASE + 3 * S) for u in USERS]
    second = [(u, BASE + 4 * S) for u in USERS] + [(u, BASE + 60 * S) for u in USERS]

    async def main() -> None:
        app, table = make()
        await produce(url, "clicks", first)
        await run_until(app, held(table, {"session": 1, "sliding": 1, "hopping": 2}[kind] * len(USERS)))
        shutil.rmtree(tmp_path / "state")
        app, table = make()
        await produce(url, "clicks", second)
        closing = {"session": 1, "sliding": 2, "hopping": 2}[kind] * len(USERS)
        await run_until(app, lambda: table.closed_windows >= closing)
        assert table.closed_windows == closing
        results = await read_all(url, "out")
        values = Counter((u, v["start"] - BASE, v["end"] - BASE, v["value"]) for u, v in results)
        if kind == "session":
            assert values == Counter({(u, 1 * S, 4 * S + 1, 3): 1 for u in USERS})
        elif kind == "sliding":
            assert values == Counter(
                {(u, -4 * S + 1, 1 * S + 1, 1): 1 for u in USERS} | {(u, -2 * S + 1, 3 * S + 1, 2): 1 for u in USERS}
                | {(u, -1 * S + 1, 4 * S + 1, 3): 1 for u in USERS}
            )
        else:
            assert values == Counter({(u, -5 * S, 5 * S, 3): 1 for u in USERS} | {(u, 0, 10 * S, 3): 1 for u in USERS})

    asyncio.run(main())
