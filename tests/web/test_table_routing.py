"""Table queries and ``@app.page`` routed across three workers (issue 13, item 3).

Three workers of one app, each with its own state directory and web server, share a broker:
the embedded one of this process, or a ``flowbus broker`` process reached through
confluent-kafka (``kafka://``). A table counts words; every worker is asked for every word, so
each answers the keys of its own partitions and forwards the others to their owner, which it
finds in the group's description (the owners' web URLs ride in their client ids).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

import flowbus
from flowbus import App
from flowbus.transports.base import TopicPartition
from flowbus.transports.partitioner import partition_for_key
from flowbus.web.server import WebServer
from flowbus.web.worker import serve_worker
from flowbus.worker import Worker
from tests.support.broker_process import BrokerProcess

pytestmark = pytest.mark.timeout(180)

WORKERS = 3
PARTITIONS = 6
#: Word i is sent i + 1 times, so every count is different; the last ones need percent-encoding.
WORDS = [*(f"w{i}" for i in range(24)), "hello world", "a/b", "what?", "100%", "naïve"]
WAIT_S = 60.0


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture(params=["embedded", "kafka"])
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "embedded":
        yield f"embedded://{tmp_path / 'data'}"
        return
    with BrokerProcess(tmp_path / "broker") as process:
        yield f"kafka://{process.bootstrap}"


def make_app(broker_url: str, state_dir: Path) -> App:
    """One worker's copy of the app: tables belong to an App object, so each worker has its own."""
    app = App("routing-app", broker=broker_url, commit_interval_ms=100,
              topic_partitions=PARTITIONS, state_dir=state_dir, state_backend="memory")
    words = app.topic("words", key_type=str)
    counts = app.Table("counts", key_type=str, default=int)
    app.Table("by-length", key_type=int, default=int)  # never written: for the 400 and 404 cases

    @app.agent(words)
    async def count(stream: flowbus.Stream) -> None:
        async for word in stream:
            counts[word] += 1

    @app.page("/hello")
    async def hello(request: Any) -> dict[str, Any]:
        assert app.worker is not None
        return {"app": app.id, "served_by": app.worker.web_url}

    @app.page("/count/{word}", table=counts, key="word")
    async def count_page(request: Any) -> dict[str, Any]:
        assert app.worker is not None
        word = request.match_info["word"]
        return {"word": word, "count": counts[word], "served_by": app.worker.web_url}

    return app


def owner_of(workers: list[Worker], word: str) -> Worker:
    tp = TopicPartition("words", partition_for_key(word.encode(), PARTITIONS))
    (owner,) = [w for w in workers if tp in w.assigned]
    return owner


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as response:
        return response.status, await response.json(content_type=None)


def test_table_queries_and_pages_are_answered_by_the_owner(broker_url: str, tmp_path: Path) -> None:
    apps = [make_app(broker_url, tmp_path / f"state{i}") for i in range(WORKERS)]
    expected = {word: i + 1 for i, word in enumerate(WORDS)}

    async def main() -> None:
        workers = [app.make_worker() for app in apps]
        webs: list[WebServer] = []
        runs: list[asyncio.Task[None]] = []
        try:
            for worker in workers:
                webs.append(await serve_worker(worker, "127.0.0.1", 0))  # before start: its URL joins the group
                runs.append(asyncio.create_task(worker.run()))
            await wait_for(lambda: all(len(w.assigned) == PARTITIONS // WORKERS for w in workers),
                           "the partitions spread over the three workers")
            producer = apps[0].topics["words"]
            for word, times in expected.items():
                for _ in range(times):
                    await producer.send(word, key=word)
            await wait_for(lambda: sum(sum(a.tables["counts"].values()) for a in apps) == sum(expected.values()),
                           "every word counted")
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
                await check_keys(session, workers, webs, expected)
                await check_errors(session, workers, webs)
                await check_pages(session, workers, webs, expected)
                # One worker stops: its partitions move to the other two, which restore them from
                # the changelogs; queries follow (a stale description's owner does not answer any
                # more, so the group is asked again and the request goes to the new owner).
                workers[2].stop()
                await runs[2]
                await webs[2].close()
                remaining = workers[:2]
                await wait_for(lambda: all(len(a.tables["counts"].owned_partitions()) == PARTITIONS // 2
                                           for a in apps[:2]), "the stopped worker's partitions taken over")
                await check_keys(session, remaining, webs[:2], expected, retry=True)
        finally:
            for worker in workers:
                worker.stop()
            await asyncio.gather(*runs, return_exceptions=True)
            for web in webs:
                await web.close()

    asyncio.run(main())


async def check_keys(session: aiohttp.ClientSession, workers: list[Worker], webs: list[WebServer],
                     expected: dict[str, int], *, retry: bool = False) -> None:
    """Ask every worker for every word. With ``retry``, a 503 (a partition being restored after
    a rebalance: the group may rebalance more than once as a member leaves) is asked again after
    its ``Retry-After``, as a client would; in a stable group there must be none."""
    forwarded: Counter[int] = Counter()
    for i, (worker, web) in enumerate(zip(workers, webs, strict=True)):
        base = f"http://127.0.0.1:{web.port}"
        for word, count in expected.items():
            owner = owner_of(workers, word)
            url = f"{base}/tables/counts/{quote(word, safe='')}"
            status, body = await get(session, url)
            deadline = time.monotonic() + WAIT_S
            while retry and status == 503 and time.monotonic() < deadline:
                await asyncio.sleep(1)
                status, body = await get(session, url)
            assert status == 200, body
            assert body == {"table": "counts", "key": word, "value": count,
                            "partition": partition_for_key(word.encode(), PARTITIONS), "owner": owner.web_url}
            forwarded[i] += owner is not worker
        status, body = await get(session, f"{base}/tables/counts")
        assert status == 200
        assert body["owner"] == worker.web_url
        assert sorted(int(p) for p in body["owned"]) == sorted(tp.partition for tp in worker.assigned)
        assert sum(p["keys"] for p in body["owned"].values()) == sum(
            1 for word in expected if owner_of(workers, word) is worker)
    # Every worker answered keys it does not own, by forwarding them.
    assert all(forwarded[i] > 0 for i in range(len(workers))), forwarded


async def check_errors(session: aiohttp.ClientSession, workers: list[Worker], webs: list[WebServer]) -> None:
    for web in webs:
        base = f"http://127.0.0.1:{web.port}"
        status, body = await get(session, f"{base}/tables/nope/x")
        assert status == 404 and "no table named 'nope'" in body["error"] and "counts" in body["error"]
        status, body = await get(session, f"{base}/tables/by-length/abc")
        assert status == 400 and "'abc' is not an int" in body["error"]
        status, body = await get(session, f"{base}/tables/by-length/7")  # an int: routed, then not found
        assert status == 404 and "has no key 7" in body["error"]
        owner = owner_of(workers, "never-counted")
        status, body = await get(session, f"{base}/tables/counts/never-counted")
        assert status == 404 and body["owner"] == owner.web_url


async def check_pages(session: aiohttp.ClientSession, workers: list[Worker], webs: list[WebServer],
                      expected: dict[str, int]) -> None:
    for worker, web in zip(workers, webs, strict=True):
        base = f"http://127.0.0.1:{web.port}"
        status, body = await get(session, f"{base}/hello")
        assert (status, body) == (200, {"app": "routing-app", "served_by": worker.web_url})
        for word in WORDS[:8]:
            status, body = await get(session, f"{base}/count/{word}")
            assert status == 200
            assert body == {"word": word, "count": expected[word], "served_by": owner_of(workers, word).web_url}
        status, index = await get(session, f"{base}/")
        assert index["page:hello"] == "/hello" and index["page:count_page"] == "/count/{word}"
        assert index["table-key"] == "/tables/{table}/{key:.+}"
