"""Windows under chaos: a per-user 10-second tumbling count with final results, run by real
``flowbus worker`` processes on a real ``flowbus broker`` process under ``exactly_once``, with
workers SIGKILLed at random while events flow, then every final result checked against the truth.

The input is ``EVENTS`` clicks keyed by user on a 4-partition topic. The producer (this test)
stamps click ``i`` with event time ``BASE + i * STEP_MS``, so the events span ``WINDOWS`` windows
of 10 s and every partition sees its event times in increasing order (nothing is late unless
the app gets its clock wrong). The app counts clicks per user and window and sends each window's
count once, when it closes; late records go to a topic of their own, which must stay empty.
Each partition's last window closes through the idle close (the partition is caught up and saw
nothing for ``IDLE_MS``): no heartbeat record is produced.

Proven (issue 9, point 6), across >= ``WORKER_KILLS`` worker SIGKILLs, two workers at a time:

* each (user, window) with clicks has exactly one final result in the read_committed output,
  its count equals the truth computed from the input, it is stamped with the window's start,
  and there is no result for a window without clicks;
* no record was late (the watermark and stream time survive the kills with the windows);
* every closed window is deleted: the changelog's last value of every window key is a tombstone.

The worker machinery (slots, kills, supervision, progress, reading topics, the timeline in
failure messages) is the state chaos test's (:mod:`tests.state.test_chaos`); the seed of the
kill schedule is printed, ``FLOWBUS_CHAOS_SEED`` replays it (timing still varies).

Why no ``group_by`` in front of the window: a repartition topic interleaves records of the four
input partitions, and while a killed worker's partitions wait for the group to notice, the other
partitions run ahead by many windows of event time (events here are 10 ms of event time apart,
about 40 s of event time per wall second), so records behind would be late by design, not by a
bug. The input is keyed by user, as after a group_by; ``test_windows.py`` covers the group_by path.

Why no broker kill (the state chaos test has one): a producer held up for longer than the idle
time leaves partitions caught up and quiet, and the idle close then rightly moves their watermark
on with the wall clock; records produced after that, whose event times fall in windows already
closed, are late by design. The test notes the longest pause between produced chunks.
"""

from __future__ import annotations

import asyncio
import json
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowbus.transports.base import Record
from tests.state.test_chaos import BROKER_ARGS, PARTITIONS, POLL_S, PROBLEMS_SHOWN, ChaosRun, WorkerSlot
from tests.support.broker_process import BrokerProcess

EVENTS = 200_000
USERS = 200
USER_SKEW = 0.8
"""Zipf exponent of user activity: a few busy users in every window, a tail seen now and then."""
WINDOW_MS = 10_000
STEP_MS = 10
"""Event time between consecutive clicks: 1,000 clicks per window, 200 windows in all."""
WINDOWS = EVENTS * STEP_MS // WINDOW_MS
NOW_MS = time.time_ns() // 1_000_000
BASE_MS = NOW_MS - NOW_MS % WINDOW_MS - WINDOWS * WINDOW_MS - 60_000
"""Event times end about a minute ago: recent, so retention (on record timestamps, as in Kafka)
keeps the results, which carry their window's start as timestamp."""
IDLE_MS = 4_000
"""``App(window_idle_ms=...)``: how long a caught-up partition waits before its last window closes;
well above the producer's pauses between chunks (0.1-0.5 s seen on a busy 2-core machine, over 1 s
once in a full suite run)."""
WORKERS = 2
WORKER_KILLS = 10
PRODUCE_S = 40.0
COMMIT_INTERVAL_MS = 100
CHUNK_EVENTS = 500
"""Clicks per produced (and flushed) chunk: 5 s of event time, well under a chunk per idle time."""
RESULTS_WAIT_S = 45.0
"""Bound on waiting, once every input offset is committed, for the last windows to close."""
STORE = "clicks-per-user"

APP_MODULE = textwrap.dedent(
    """
    import faulthandler, os, signal
    from flowbus import App

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test asks for stacks when stuck

    app = App(
        os.environ["APP_ID"],
        broker=os.environ["BROKER"],
        processing_guarantee=os.environ["GUARANTEE"],
        transactional_id=os.environ["TXN_ID"],
        state_dir=os.environ["STATE_DIR"],
        commit_interval_ms=int(os.environ["COMMIT_MS"]),
        topic_partitions=int(os.environ["PARTITIONS"]),
        window_idle_ms=int(os.environ["IDLE_MS"]),
    )
    clicks = app.topic(os.environ["CLICKS"], key_type=str)
    counts = app.topic(os.environ["COUNTS"], key_type=str)
    late = app.topic(os.environ["LATE"], key_type=str)

    (
        app.stream(clicks)
        .tumbling_window(int(os.environ["WINDOW_MS"]), name=os.environ["STORE"], on_late=late)
        .count()
        .final()
        .to(counts)
    )
    """
)

Click = tuple[str, int]
"""(user, event time in ms)."""
WindowId = tuple[str, int]
"""(user, window start in ms)."""


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    with BrokerProcess(tmp_path / "broker-data", extra_args=BROKER_ARGS) as process:
        yield process


class WindowChaosRun(ChaosRun):
    """The state chaos test's run, with the windowed app, timestamped clicks and window checks.

    ``truth`` counts clicks per (user, window start); ``words_topic`` (what the progress and
    the "everything consumed" waits watch) is the clicks topic.
    """

    def __init__(self, tmp_path: Path, broker: BrokerProcess) -> None:
        super().__init__(tmp_path, broker, "exactly_once", WORKERS, COMMIT_INTERVAL_MS)
        self.app_id = "winchaos"
        self.words_topic = f"{self.app_id}-clicks"
        self.counts_topic = f"{self.app_id}-counts"
        self.late_topic = f"{self.app_id}-late"
        self.changelog_topic = f"{self.app_id}-{STORE}-changelog"
        env = {
            "APP_ID": self.app_id, "BROKER": self.url, "GUARANTEE": self.guarantee,
            "COMMIT_MS": str(COMMIT_INTERVAL_MS), "PARTITIONS": str(PARTITIONS), "IDLE_MS": str(IDLE_MS),
            "CLICKS": self.words_topic, "COUNTS": self.counts_topic, "LATE": self.late_topic,
            "WINDOW_MS": str(WINDOW_MS), "STORE": STORE,
        }
        (tmp_path / "chaos_app.py").write_text(APP_MODULE)  # replaces the word-count app
        self.slots = [WorkerSlot(i, tmp_path, env) for i in range(WORKERS)]
        self.users = [f"user-{i:03d}" for i in range(USERS)]
        self.truth: Counter[WindowId] = Counter()  # type: ignore[assignment]
        self.pause_max_s = 0.0
        """The longest time between two flushed chunks (see the module docstring)."""

    # -- input ---------------------------------------------------------------------------------
    def make_events(self, count: int) -> list[Click]:  # type: ignore[override]
        weights = [1 / (rank + 1) ** USER_SKEW for rank in range(USERS)]
        users = self.rng.choices(self.users, weights, k=count)
        return [(user, BASE_MS + i * STEP_MS) for i, user in enumerate(users)]

    async def produce(self, events: list[Click], duration_s: float) -> None:  # type: ignore[override]
        """Produce ``events`` in order, in flushed chunks spread over about ``duration_s``."""
        producer = self.transport.producer()
        chunks = [events[i:i + CHUNK_EVENTS] for i in range(0, len(events), CHUNK_EVENTS)]
        pause_s = duration_s / max(len(chunks), 1)
        last_flush = time.monotonic()
        try:
            for chunk in chunks:
                async with self.produce_lock:
                    for user, ts in chunk:
                        producer.send_soon(self.words_topic, b'{"user":"' + user.encode() + b'"}', user.encode(),
                                           timestamp_ms=ts)
                    await producer.flush()
                    self.truth.update((user, ts - ts % WINDOW_MS) for user, ts in chunk)
                    self.produced += len(chunk)
                now = time.monotonic()
                self.pause_max_s = max(self.pause_max_s, now - last_flush)
                last_flush = now
                await asyncio.sleep(pause_s)
        finally:
            await producer.close()
        self.note(f"produced {self.produced:,} events; longest pause between chunks {self.pause_max_s:.2f} s")

    async def read_input(self) -> Counter[WindowId]:  # type: ignore[override]
        return Counter(
            (r.key.decode(), r.timestamp_ms - r.timestamp_ms % WINDOW_MS)
            for r in await self.read_topic(self.words_topic) if r.key is not None
        )

    # -- results -------------------------------------------------------------------------------
    async def read_results(self) -> dict[WindowId, list[Record]]:
        by_window: dict[WindowId, list[Record]] = {}
        for record in await self.read_topic(self.counts_topic):
            assert record.key is not None and record.value is not None, (
                f"a result without key or value at {record.partition}@{record.offset}"
            )
            start = json.loads(record.value)["start"]
            by_window.setdefault((record.key.decode(), start), []).append(record)
        return by_window

    async def wait_results(self) -> None:
        """Wait until every (user, window) of the input has a result: the last window of each
        partition closes through the idle close, after every input offset was committed."""
        deadline = time.monotonic() + RESULTS_WAIT_S
        while True:
            self.supervise()
            found = await self.read_results()
            missing = len(set(self.truth) - set(found))
            if not missing:
                self.note(f"every window has a result ({len(found):,} windows)")
                return
            if time.monotonic() >= deadline:
                raise AssertionError(self.report(
                    f"{missing} windows still without a result {RESULTS_WAIT_S} s after the input was consumed "
                    f"(idle close after {IDLE_MS} ms expected), e.g. {sorted(set(self.truth) - set(found))[:5]}",
                    stacks=True,
                ))
            await asyncio.sleep(POLL_S * 4)

    def result_problems(self, by_window: dict[WindowId, list[Record]]) -> list[str]:
        problems = []
        for window in sorted(set(self.truth) | set(by_window)):
            records = by_window.get(window, [])
            values = [json.loads(r.value) for r in records if r.value is not None]
            where = [f"p{r.partition}@{r.offset}" for r in records]
            user, start = window
            n = self.truth[window]
            if len(records) != 1:
                problems.append(f"{user} window {(start - BASE_MS) // WINDOW_MS}: {len(records)} results "
                                f"{[v['value'] for v in values]} at {where} (truth {n})")
                continue
            value, record = values[0], records[0]
            expected = {"start": start, "end": start + WINDOW_MS, "value": n}
            if value != expected or record.timestamp_ms != start:
                problems.append(f"{user} window {(start - BASE_MS) // WINDOW_MS}: {value} stamped "
                                f"{record.timestamp_ms} at {where[0]}, expected {expected} stamped {start}")
        return problems

    async def check_results(self) -> None:
        await self.check_input()
        by_window = await self.read_results()
        results = sum(len(r) for r in by_window.values())
        self.note(f"{self.counts_topic}: {results:,} results for {len(self.truth):,} (user, window) pairs "
                  f"of {EVENTS:,} clicks in {len({s for _, s in self.truth})} windows")
        late = [f"late click of {r.key!r} at event time {r.timestamp_ms - BASE_MS} ms (p{r.partition})"
                for r in await self.read_topic(self.late_topic)]
        if late and self.pause_max_s * 1000 >= IDLE_MS:
            late.insert(0, f"the producer paused {self.pause_max_s:.2f} s, more than the idle time ({IDLE_MS} ms): "
                           f"the idle close may rightly have closed windows those clicks fall in")
        found = {
            self.counts_topic: self.result_problems(by_window),
            self.late_topic: late,
            self.changelog_topic: await self.open_windows_in_changelog(),
        }
        self.assert_no_problems(found, "window results wrong")

    async def open_windows_in_changelog(self) -> list[str]:
        """Window keys whose last changelog value is not a tombstone (every window closed)."""
        last: dict[bytes, bytes | None] = {}
        for record in await self.read_topic(self.changelog_topic):
            assert record.key is not None
            last[record.key] = record.value
        window_keys = [key for key in last if key[:1] == b"W"]
        assert window_keys, f"no window key in {self.changelog_topic}"
        return [f"window key {key!r} still holds {value!r}" for key, value in last.items()
                if key[:1] == b"W" and value is not None][:PROBLEMS_SHOWN]


def test_exactly_once_final_window_counts_survive_worker_sigkills(tmp_path: Path, broker: BrokerProcess) -> None:
    """>= 10 worker SIGKILLs while 200,000 clicks over 200 windows flow through two workers:
    each (user, window) final count emitted exactly once and equal to the truth."""
    run = WindowChaosRun(tmp_path, broker)
    started = time.monotonic()

    async def scenario() -> None:
        await run.create_input()
        for index in range(WORKERS):
            run.start_slot(index, "initial")
        await run.kill_workers_while_producing(EVENTS, PRODUCE_S, WORKER_KILLS, broker_kill=False)
        await run.wait_consumed()
        await run.wait_results()
        for index in range(WORKERS):
            await run.terminate_slot(index)
        await run.check_results()

    try:
        asyncio.run(scenario())
    finally:
        run.stop_all()
    run.summary()
    print(f"window chaos: {run.worker_kills} worker SIGKILLs, {len(run.truth):,} windows exact, "
          f"{time.monotonic() - started:.0f} s")
    assert run.worker_kills >= WORKER_KILLS
    run.check_no_unexpected_exit()
