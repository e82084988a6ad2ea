"""Tables under chaos: real ``flowbus worker`` processes on a real ``flowbus broker`` process, killed
and restarted while events flow, then every output and every table checked against the truth.

One app module keeps state both ways, and each way is checked on its own output topic:

* an agent counting words in ``app.Table("counts")`` and sending ``(word, new count)``;
* a dataflow ``app.stream(words).count(name="dfcounts").to(...)``.

The input is ``DISTINCT_WORDS`` words keyed by themselves on a 4-partition topic, produced by the
test in chunks while the workers run. Each worker slot is one "host": its own stable
transactional id and its own state directory, reused when the slot restarts.

Proven:

1. ``exactly_once`` across >= 10 worker SIGKILLs and one broker SIGKILL, two workers at a time:
   for every word the read_committed outputs of both are exactly 1, 2, ..., n (nothing lost,
   nothing repeated, in order); the changelogs' last values are the true counts; and a final
   worker that restores every partition (local database + changelog) holds the true counts.
2. ``at_least_once`` across worker SIGKILLs: no update is lost — every word's final count is at
   least the truth, and its outputs contain every value 1..n.
3. ``exactly_once`` across rebalances 1 -> 3 -> 1 workers (partitions move to new owners that
   restore them from the changelogs, then move back on SIGTERM): exact as in 1.

A worker that exits by itself is restarted at once (as a supervisor would), so the checks still
run, and fails the test at its end; the one exception is a worker fenced because the restarted
broker aborted the transaction it had open. A wait that sees no input offset committed for
``STALL_S`` fails early, with every running worker's thread stacks (``faulthandler`` on SIGUSR1).

The seed of the kill schedule is printed (``FLOWBUS_CHAOS_SEED`` replays a schedule; timing still
varies). A failure names the words, the values lost or repeated with where they were written,
the timeline of kills, and the ends of the worker and broker logs.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from flowbus.state import make_backend
from flowbus.state.opening import database_path
from flowbus.transports.base import Record, TopicPartition, TopicSpec
from flowbus.transports.errors import TransportError
from flowbus.transports.kafka import KafkaTransport
from flowbus.transports.partitioner import partition_for_key
from tests.support.broker_process import DEFAULT_EXTRA_ARGS, BrokerProcess

PARTITIONS = 4
DISTINCT_WORDS = 1_000
WORD_SKEW = 0.8
"""Zipf exponent of word frequencies: a few hot words (thousands of updates), a long tail."""
TABLES = ("counts", "dfcounts")
"""The agent's table and the dataflow's table (also their stores in the partition databases)."""

SESSION_TIMEOUT_MS = 3_000
"""How long the group waits for a SIGKILLed member: the stall each kill costs."""
HEARTBEAT_INTERVAL_MS = 300
BROKER_ARGS = (*DEFAULT_EXTRA_ARGS, "--group-min-session-timeout-ms", "1000")

EOS_EVENTS = 200_000
EOS_WORKERS = 2
EOS_WORKER_KILLS = 10
EOS_PRODUCE_S = 45.0
EOS_COMMIT_INTERVAL_MS = 100

ALO_EVENTS = 50_000
ALO_WORKERS = 2
ALO_WORKER_KILLS = 5
ALO_PRODUCE_S = 20.0
ALO_COMMIT_INTERVAL_MS = 200

REBALANCE_EVENTS = 60_000
REBALANCE_PRODUCE_S = 25.0
REBALANCE_JOINERS = 2
REBALANCE_GROW_AT = 0.2
"""Fraction of the events committed by the single worker before two more join."""
REBALANCE_SHRINK_AT = 0.55
"""Fraction committed (with three workers, after the joiners restored) before two leave."""
FENCED_TEXT = "fenced by a newer instance"
"""librdkafka's words for a transactional producer whose epoch the broker bumped."""
ASSIGNED_TEXT = "flowbus.worker: assigned"
"""What a worker logs when the group gave it partitions."""
RESTORED_TEXT = "restored partition"
"""What a worker logs when a partition's restore from the changelogs finished."""

KILL_GAP_MIN_S = 2.0
KILL_GAP_MAX_S = 6.0
"""Seconds between kills: short ones hit a worker still starting or restoring."""
BROKER_DOWN_S = 1.0
CHUNK_EVENTS = 1_000
"""Events per produced chunk; each chunk is flushed before the next."""

CONSUME_WAIT_S = 120.0
"""Bound on waiting for the group to commit every input offset once production ended."""
PHASE_WAIT_S = 60.0
STOP_WAIT_S = 30.0
READ_WAIT_S = 60.0
STALL_S = 45.0
"""A wait fails early when no input offset was committed for this long (a stuck worker)."""
STUCK_AFTER_BROKER_KILL_S = 20.0
"""After the broker's SIGKILL, a worker has been seen (about once in 13 runs) to hang with its
transaction open, as the transactional copier of the broker tests does (librdkafka#5456: a
transactional call ignores its timeout after the coordinator went away). With no progress for this
long after a broker kill, every worker is SIGKILLed once more (its thread stacks first written to
its log) and restarted: one more kill, which exactly-once must survive too. Printed, never silent."""
STUCK_RECOVERIES_MAX = 1
POLL_S = 0.25
ADMIN_TIMEOUT_S = 5.0
LOG_TAIL_LINES = 40
STACK_LOG_LINES = 150
"""Log lines shown per worker when the report holds thread stacks."""
STACK_DUMP_WAIT_S = 1.0
PROBLEMS_SHOWN = 15
NULL_OUTPUT = -1
"""Stands for an output record without a value (wrong as any other value) in the checks."""

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
    )
    words = app.topic(os.environ["WORDS"], key_type=str, value_type=str)
    agent_out = app.topic(os.environ["AGENT_OUT"], key_type=str, value_type=int)
    flow_out = app.topic(os.environ["FLOW_OUT"], key_type=str, value_type=int)
    counts = app.Table("counts", default=int, key_type=str, value_type=int)


    @app.agent(words)
    async def count_words(stream):
        async for word, _ in stream.items():
            counts[word] += 1
            agent_out.send_soon(counts[word], key=word)


    app.stream(words).count(name="dfcounts").to(flow_out)
    """
)
APP_SPEC = "chaos_app:app"


def chaos_seed() -> int:
    """``FLOWBUS_CHAOS_SEED`` when set (to replay a schedule), else a fresh one."""
    return int(os.environ.get("FLOWBUS_CHAOS_SEED") or random.SystemRandom().randrange(2**32))


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    """A broker per test: the exactly-once test kills it, and each test starts from empty topics."""
    with BrokerProcess(tmp_path / "broker-data", extra_args=BROKER_ARGS) as process:
        yield process


class WorkerSlot:
    """One worker "host": a stable transactional id and state directory, restarted in place.

    Every start appends to the slot's log file, after a ``--- test:`` line saying why.
    """

    def __init__(self, index: int, workdir: Path, env: dict[str, str]) -> None:
        self.index = index
        self.workdir = workdir
        self.log_path = workdir / f"worker-{index}.log"
        self.state_dir = workdir / f"state-{index}"
        self.env = {**env, "TXN_ID": f"{env['APP_ID']}-slot-{index}", "STATE_DIR": str(self.state_dir)}
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.started_at = 0
        """Where the log of the current start begins."""
        self.wanted = False
        """Should be running: an exit the test did not cause is noted and the slot restarted."""

    def start(self, why: str) -> None:
        self.starts += 1
        self.started_at = len(self.log_text())
        with open(self.log_path, "ab") as log:
            log.write(f"--- test: start #{self.starts} of slot {self.index} ({why})\n".encode())
            self.process = subprocess.Popen(
                [sys.executable, "-m", "flowbus", "worker", "-A", APP_SPEC, "-l", "info"],
                cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env, "PYTHONUNBUFFERED": "1"},
            )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def kill(self) -> None:
        """SIGKILL (a crash) and reap."""
        if self.running:
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(STOP_WAIT_S)

    def terminate(self) -> int | None:
        """SIGTERM (a clean stop) and wait: the exit code, or None when it did not stop in time
        (it is left running, for the caller to ask for its stacks)."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                return None
        return int(self.process.returncode)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The end of the log without librdkafka's own lines (``%3|...|FAIL|...``: reconnects)."""
        return "\n".join([line for line in self.log_text().splitlines() if not line.startswith("%")][-lines:])


class ChaosRun:
    """The workers, the producer, the timeline and the checks of one chaos scenario."""

    def __init__(self, tmp_path: Path, broker: BrokerProcess, guarantee: str, slots: int, commit_ms: int) -> None:
        self.seed = chaos_seed()
        self.rng = random.Random(self.seed)
        self.broker = broker
        self.guarantee = guarantee
        self.url = (
            f"kafka://{broker.bootstrap}?session.timeout.ms={SESSION_TIMEOUT_MS}"
            f"&heartbeat.interval.ms={HEARTBEAT_INTERVAL_MS}"
        )
        self.app_id = f"chaos-{guarantee.replace('_', '-')}"
        self.words_topic = f"{self.app_id}-words"
        self.agent_out = f"{self.app_id}-agent-out"
        self.flow_out = f"{self.app_id}-flow-out"
        env = {
            "APP_ID": self.app_id, "BROKER": self.url, "GUARANTEE": guarantee, "COMMIT_MS": str(commit_ms),
            "PARTITIONS": str(PARTITIONS), "WORDS": self.words_topic, "AGENT_OUT": self.agent_out,
            "FLOW_OUT": self.flow_out,
        }
        (tmp_path / "chaos_app.py").write_text(APP_MODULE)
        self.slots = [WorkerSlot(i, tmp_path, env) for i in range(slots)]
        self.vocabulary = [f"w{i:04d}" for i in range(DISTINCT_WORDS)]
        self.truth: Counter[str] = Counter()
        """Words whose chunk was flushed to the broker (what the outputs must account for)."""
        self.produced = 0
        self.produce_lock = asyncio.Lock()
        self.started = time.monotonic()
        self.wall_started_ms = time.time_ns() // 1_000_000
        self.timeline: list[str] = []
        self.unexpected_exits: list[str] = []
        self.fenced_exits: list[str] = []
        """Workers fenced by the broker's recovery (see :meth:`supervise`)."""
        self.worker_kills = 0
        self.broker_killed = False
        self.stuck_recoveries = 0
        self.transport = KafkaTransport(self.url)
        print(f"chaos seed {self.seed} ({guarantee}); replay with FLOWBUS_CHAOS_SEED={self.seed}")

    # -- what happened when --------------------------------------------------------------------
    def note(self, what: str) -> None:
        line = f"{time.monotonic() - self.started:7.2f}s  {what}"
        self.timeline.append(line)
        print(line)

    def report(self, headline: str, *, stacks: bool = False) -> str:
        """An assertion message: the headline, the seed, the timeline and the ends of the logs;
        with ``stacks``, every running worker first writes the stacks of its threads there."""
        lines = LOG_TAIL_LINES
        if stacks:
            for slot in self.slots:
                if slot.running:
                    assert slot.process is not None
                    slot.process.send_signal(signal.SIGUSR1)
                    lines = STACK_LOG_LINES
            time.sleep(STACK_DUMP_WAIT_S)  # a failure path: let them write it
        parts = [headline, f"seed {self.seed} (FLOWBUS_CHAOS_SEED={self.seed})", "timeline:", *self.timeline]
        for slot in self.slots:
            parts.append(f"--- end of {slot.log_path.name}:\n{slot.log_tail(lines)}")
        parts.append(f"--- end of the broker log:\n{self.broker.log_tail(LOG_TAIL_LINES)}")
        return "\n".join(parts)

    # -- input ---------------------------------------------------------------------------------
    def make_events(self, count: int) -> list[str]:
        """Every word once (so each one is present), then Zipf-skewed picks, shuffled."""
        weights = [1 / (rank + 1) ** WORD_SKEW for rank in range(DISTINCT_WORDS)]
        events = list(self.vocabulary) + self.rng.choices(self.vocabulary, weights, k=count - DISTINCT_WORDS)
        self.rng.shuffle(events)
        return events

    async def create_input(self) -> None:
        await self.transport.create_topics([TopicSpec(self.words_topic, PARTITIONS)])

    async def produce(self, events: list[str], duration_s: float) -> None:
        """Produce ``events`` in flushed chunks spread over about ``duration_s``."""
        producer = self.transport.producer()
        chunks = [events[i:i + CHUNK_EVENTS] for i in range(0, len(events), CHUNK_EVENTS)]
        pause_s = duration_s / max(len(chunks), 1)
        try:
            for chunk in chunks:
                async with self.produce_lock:  # never a chunk in flight while the broker is killed
                    for word in chunk:
                        producer.send_soon(self.words_topic, json.dumps(word).encode(), word.encode())
                    await producer.flush()
                    self.truth.update(chunk)
                    self.produced += len(chunk)
                await asyncio.sleep(pause_s)
        finally:
            await producer.close()
        self.note(f"produced {self.produced:,} events")

    # -- workers -------------------------------------------------------------------------------
    def supervise(self) -> None:
        """Restart a worker that exited without being told to (as a supervisor would), noting it.

        Exits fail the test at its end (after the exactness checks, which they must not break),
        except a worker fenced because the broker, recovering from its SIGKILL, aborted the
        transaction that worker had open (flowbus's broker ends open transactions when it
        restarts, bumping the producer epoch): that worker has to stop.
        """
        for slot in self.slots:
            if slot.wanted and slot.process is not None and slot.process.poll() is not None:
                code = slot.process.returncode
                run_log = slot.log_text()[slot.started_at:]
                tail = "\n    ".join(slot.log_tail(8).splitlines())
                fenced = self.broker.starts > 1 and FENCED_TEXT in run_log
                what = f"slot {slot.index} pid {slot.pid} exited with {code}"
                (self.fenced_exits if fenced else self.unexpected_exits).append(what)
                self.note(f"{what} by itself{' (fenced)' if fenced else ''}; restarting. Log:\n    {tail}")
                slot.start(f"restart after it exited with {code}")

    def start_slot(self, index: int, why: str) -> None:
        slot = self.slots[index]
        slot.wanted = True
        slot.start(why)
        self.note(f"started slot {index} (pid {slot.pid}): {why}")

    async def kill_and_restart(self, index: int) -> None:
        slot = self.slots[index]
        progress = await self.progress_text()
        pid = slot.pid
        slot.kill()
        self.worker_kills += 1
        self.note(f"SIGKILL #{self.worker_kills} slot {index} (pid {pid}); {progress}")
        slot.start(f"restart after SIGKILL #{self.worker_kills}")
        self.note(f"restarted slot {index} (pid {slot.pid})")

    async def terminate_slot(self, index: int) -> None:
        """SIGTERM slot ``index`` once it joined the group (before, Python's default handler
        would kill it), and check it stopped cleanly."""
        slot = self.slots[index]
        await self.wait_log(index, ASSIGNED_TEXT, start=slot.started_at)
        slot.wanted = False
        pid = slot.pid
        code = slot.terminate()
        self.note(f"SIGTERM slot {index} (pid {pid}): exit code {code}")
        if code is None:
            raise AssertionError(self.report(f"slot {index} did not stop within {STOP_WAIT_S} s of SIGTERM", stacks=True))
        assert code == 0, self.report(f"slot {index} did not stop cleanly on SIGTERM (exit code {code})")

    async def kill_broker(self) -> None:
        async with self.produce_lock:
            progress = await self.progress_text()
            self.broker_killed = True
            self.broker.kill()
            self.note(f"SIGKILL broker; {progress}")
            await asyncio.sleep(BROKER_DOWN_S)
            await asyncio.to_thread(self.broker.start)
            self.note("broker restarted (same data dir and port)")

    def recover_stuck_workers(self, where: str) -> None:
        """SIGKILL and restart every running worker after its stacks went to its log (see
        ``STUCK_AFTER_BROKER_KILL_S``)."""
        self.stuck_recoveries += 1
        running = [slot for slot in self.slots if slot.running]
        for slot in running:
            assert slot.process is not None
            slot.process.send_signal(signal.SIGUSR1)
        time.sleep(STACK_DUMP_WAIT_S)
        self.note(f"STUCK after the broker kill ({where}): SIGKILL and restart of {len(running)} workers; "
                  f"their stacks are in their logs")
        for slot in running:
            slot.kill()
            self.worker_kills += 1
            slot.start("restart after a stuck worker")

    async def sleep_supervised(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.supervise()
            await asyncio.sleep(min(POLL_S, left))

    def stop_all(self) -> None:
        """SIGKILL whatever still runs (the finally of every test)."""
        for slot in self.slots:
            if slot.running:
                slot.kill()

    # -- progress ------------------------------------------------------------------------------
    async def offsets(self) -> tuple[dict[int, int], dict[int, int]]:
        """(input offsets committed by the app's group, input end offsets), by partition.

        A failed query drops the admin client: after a broker restart, librdkafka's admin client
        never gets an answer to a group-offsets request again, while a new one does.
        """
        tps = [TopicPartition(self.words_topic, p) for p in range(PARTITIONS)]
        try:
            ends = await self.transport.watermarks(tps, timeout_s=ADMIN_TIMEOUT_S)
            committed = await self.transport.group_offsets(self.app_id, timeout_s=ADMIN_TIMEOUT_S)
        except TransportError:
            self.transport = KafkaTransport(self.url)
            raise
        return {tp.partition: committed.get(tp, 0) for tp in tps}, {tp.partition: ends[tp].high for tp in tps}

    async def progress_text(self) -> str:
        try:
            committed, ends = await self.offsets()
        except TransportError as exc:
            return f"progress unknown ({exc})"
        return f"committed {sum(committed.values()):,}/{sum(ends.values()):,} (produced {self.produced:,})"

    async def wait_for(self, what: str, done: Callable[[dict[int, int], dict[int, int]], bool], timeout_s: float) -> None:
        """Wait, supervising the workers, until ``done(committed, ends)`` holds; fail after
        ``timeout_s``, or sooner when no input offset was committed for ``STALL_S``."""
        now = time.monotonic()
        deadline, moved_at, best = now + timeout_s, now, -1
        committed: dict[int, int] = {}
        ends: dict[int, int] = {}
        while True:
            self.supervise()
            try:
                committed, ends = await self.offsets()
            except TransportError:
                pass  # the broker is restarting; the deadlines still hold
            else:
                if done(committed, ends):
                    return
                if sum(committed.values()) > best:
                    best, moved_at = sum(committed.values()), time.monotonic()
            now = time.monotonic()
            where = f"committed {committed} of {ends} (produced {self.produced:,})"
            if (self.broker_killed and now - moved_at >= STUCK_AFTER_BROKER_KILL_S
                    and self.stuck_recoveries < STUCK_RECOVERIES_MAX):
                self.recover_stuck_workers(where)
                moved_at = time.monotonic()
            if now - moved_at >= STALL_S:
                raise AssertionError(self.report(f"{what}: no input offset committed for {STALL_S} s; {where}", stacks=True))
            if now >= deadline:
                raise AssertionError(self.report(f"{what}: not done after {timeout_s} s; {where}", stacks=True))
            await asyncio.sleep(POLL_S)

    async def wait_committed(self, at_least: int, what: str) -> None:
        """Wait until the group committed ``at_least`` input offsets in total."""
        await self.wait_for(what, lambda committed, _: sum(committed.values()) >= at_least, PHASE_WAIT_S)

    async def wait_consumed(self) -> None:
        """Wait until the group committed every input offset (every produced event processed)."""
        def consumed(committed: dict[int, int], ends: dict[int, int]) -> bool:
            return committed == ends and sum(ends.values()) >= self.produced

        await self.wait_for("consuming the whole input", consumed, CONSUME_WAIT_S)
        self.note(f"all {self.produced:,} input offsets committed")

    async def wait_log(self, index: int, text: str, *, start: int = 0) -> None:
        """Wait until slot ``index``'s log has ``text`` after character ``start``."""
        slot = self.slots[index]
        deadline = time.monotonic() + PHASE_WAIT_S
        while text not in slot.log_text()[start:]:
            self.supervise()
            if time.monotonic() >= deadline:
                raise AssertionError(self.report(f"no {text!r} in slot {index}'s log after {PHASE_WAIT_S} s", stacks=True))
            await asyncio.sleep(POLL_S)

    # -- reading results -----------------------------------------------------------------------
    async def read_topic(self, topic: str) -> list[Record]:
        """Every record of ``topic`` a read_committed reader sees, partition by partition in order."""
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        ends = await self.transport.watermarks(tps)
        consumer = self.transport.consumer(None, isolation_level="read_committed")
        consumer.assign(tps, {tp: 0 for tp in tps})
        records: list[Record] = []
        deadline = time.monotonic() + READ_WAIT_S
        try:
            while any((consumer.position(tp) or 0) < ends[tp].high for tp in tps):
                assert time.monotonic() < deadline, self.report(f"reading {topic} to its end took over {READ_WAIT_S} s")
                records.extend(await consumer.poll_batch(20_000, 200))
        finally:
            await consumer.close()
        records.sort(key=lambda r: (r.partition, r.offset))
        return records

    async def read_input(self) -> Counter[str]:
        return Counter(r.key.decode() for r in await self.read_topic(self.words_topic) if r.key is not None)

    async def read_outputs(self, topic: str) -> dict[str, list[Record]]:
        by_key: dict[str, list[Record]] = {}
        for record in await self.read_topic(topic):
            assert record.key is not None, f"{topic}: a record without a key at {record.partition}@{record.offset}"
            by_key.setdefault(record.key.decode(), []).append(record)
        return by_key

    async def read_changelog(self, table: str) -> dict[str, int]:
        """The table as its changelog says: the last value of each key (a tombstone deletes it)."""
        table_now: dict[str, int] = {}
        for record in await self.read_topic(f"{self.app_id}-{table}-changelog"):
            assert record.key is not None
            if record.value is None:
                table_now.pop(record.key.decode(), None)
            else:
                table_now[record.key.decode()] = json.loads(record.value)
        return table_now

    def read_local_tables(self, slot: WorkerSlot) -> dict[str, dict[str, int]]:
        """The tables in a stopped worker's partition databases (every partition it holds)."""
        backend = make_backend("rocksdb")
        tables: dict[str, dict[str, int]] = {name: {} for name in TABLES}
        try:
            for partition in range(PARTITIONS):
                path = database_path(slot.state_dir / self.app_id / f"partition-{partition}-of-{PARTITIONS}")
                db = backend.open(path, list(TABLES))
                try:
                    for name in TABLES:
                        for key, raw in db.items(name):
                            tables[name][key.decode()] = json.loads(raw)
                finally:
                    db.close()
        finally:
            backend.close()
        return tables

    # -- checks --------------------------------------------------------------------------------
    def output_problems(self, topic: str, by_key: dict[str, list[Record]], *, exact: bool) -> list[str]:
        """Words whose outputs are not exactly 1..n (``exact``) or do not contain each of 1..n."""
        problems = []
        for word in sorted(set(self.truth) | set(by_key)):
            n = self.truth[word]
            records = by_key.get(word, [])
            values: list[int] = [json.loads(r.value) if r.value is not None else NULL_OUTPUT for r in records]
            wanted = list(range(1, n + 1))
            missing = sorted(set(wanted) - set(values))
            if values == wanted or (not exact and n > 0 and not missing):
                continue
            repeated = sorted(v for v, c in Counter(values).items() if c > 1)
            where = {
                v: [f"p{r.partition}@{r.offset} written at {self.at(r.timestamp_ms)}" for r, rv in zip(records, values, strict=True) if rv == v]
                for v in repeated[:3]
            }
            problems.append(
                f"{topic} key {word!r}: {len(values)} outputs for {n} events; missing {missing[:10]}"
                f"{'...' if len(missing) > 10 else ''}; repeated {repeated[:10]}{'...' if len(repeated) > 10 else ''}"
                f" at {where}; in order: {values == sorted(values)}; last outputs {values[-5:]}"
            )
        return problems

    def at(self, timestamp_ms: int) -> str:
        """A record timestamp on the timeline's clock (seconds since the run started)."""
        return f"{(timestamp_ms - self.wall_started_ms) / 1000:.2f}s"

    def table_problems(self, where: str, table: dict[str, int], *, exact: bool) -> list[str]:
        problems = []
        for word in sorted(set(self.truth) | set(table)):
            got, n = table.get(word), self.truth[word]
            if got == n or (not exact and got is not None and got >= n):
                continue
            problems.append(f"{where} key {word!r}: {got} (truth {n})")
        return problems

    def assert_no_problems(self, found: dict[str, list[str]], what: str) -> None:
        """Fail with, per output topic or table, how many words are wrong, and the first ones."""
        problems = [line for lines in found.values() for line in lines]
        counts = "; ".join(f"{where}: {len(lines)} words wrong" for where, lines in found.items())
        shown = "\n".join(problems[:PROBLEMS_SHOWN])
        more = f"\n... and {len(problems) - PROBLEMS_SHOWN} more" if len(problems) > PROBLEMS_SHOWN else ""
        assert not problems, self.report(f"{what} ({counts}):\n{shown}{more}")

    async def check_input(self) -> None:
        """The input holds exactly what the test produced (else the truth itself would be wrong)."""
        found = await self.read_input()
        wrong = sorted(w for w in set(found) | set(self.truth) if found[w] != self.truth[w])
        assert not wrong, self.report(
            f"the input topic differs from what was produced for {len(wrong)} words, e.g. "
            + ", ".join(f"{w}: {found[w]} stored, {self.truth[w]} produced" for w in wrong[:10])
        )

    async def check_outputs_and_changelogs(self, *, exact: bool) -> None:
        """Each output topic and each table's changelog against the truth: exactly (exactly_once),
        or with nothing lost (at_least_once, where repeats are noted)."""
        await self.check_input()
        found: dict[str, list[str]] = {}
        events = sum(self.truth.values())
        for topic in (self.agent_out, self.flow_out):
            by_key = await self.read_outputs(topic)
            found[topic] = self.output_problems(topic, by_key, exact=exact)
            self.note(f"{topic}: {sum(len(r) for r in by_key.values()) - events:+,} outputs beyond one per event")
        for table in TABLES:
            table_now = await self.read_changelog(table)
            found[f"changelog of {table}"] = self.table_problems(f"changelog of {table}", table_now, exact=exact)
            self.note(f"{table}: {sum(table_now.values()) - events:+,} counted beyond the events")
        self.assert_no_problems(found, f"{self.guarantee} outputs or changelogs wrong")

    async def check_final_worker(self, index: int) -> None:
        """Run one worker alone until it processed an event of every partition (so it holds every
        partition, restored), stop it, and compare its local databases with the truth."""
        sentinels = [
            next(w for w in self.vocabulary if partition_for_key(w.encode(), PARTITIONS) == p) for p in range(PARTITIONS)
        ]
        self.start_slot(index, "final check: holds every partition")
        await self.produce(sentinels, 0)
        await self.wait_consumed()
        await self.terminate_slot(index)
        local = self.read_local_tables(self.slots[index])
        found = {f"local {table}": self.table_problems(f"slot {index}'s local {table}", local[table], exact=True) for table in TABLES}
        self.assert_no_problems(found, f"the tables restored by a final worker (slot {index}) wrong")

    def check_no_unexpected_exit(self) -> None:
        """No worker exited by itself, but for the fencing :meth:`supervise` describes (each was
        restarted meanwhile, so the checks above ran)."""
        assert not self.unexpected_exits, self.report(
            f"workers exited without being stopped: {self.unexpected_exits} (their logs are in the timeline)"
        )

    def summary(self) -> None:
        self.note(
            f"done: {self.produced:,} events, {self.worker_kills} worker SIGKILLs, "
            f"{len(self.unexpected_exits)} unexpected exits {self.unexpected_exits}, "
            f"{len(self.fenced_exits)} fenced by the broker's recovery {self.fenced_exits}"
        )

    # -- scenarios -----------------------------------------------------------------------------
    async def kill_workers_while_producing(self, events: int, produce_s: float, kills: int, *, broker_kill: bool) -> None:
        """Produce ``events`` over ``produce_s`` while SIGKILLing a random worker ``kills`` times
        (restarting it at once), and the broker once between two of them if ``broker_kill``."""
        producing = asyncio.create_task(self.produce(self.make_events(events), produce_s))
        broker_kill_after = self.rng.randrange(2, kills - 1) if broker_kill else None
        try:
            for number in range(1, kills + 1):
                await self.sleep_supervised(self.rng.uniform(KILL_GAP_MIN_S, KILL_GAP_MAX_S))
                await self.kill_and_restart(self.rng.randrange(len(self.slots)))
                if number == broker_kill_after:
                    await self.sleep_supervised(self.rng.uniform(KILL_GAP_MIN_S, KILL_GAP_MAX_S))
                    await self.kill_broker()
            while not producing.done():
                await self.sleep_supervised(POLL_S)
            await producing
        finally:
            if not producing.done():
                producing.cancel()
                await asyncio.gather(producing, return_exceptions=True)


def test_exactly_once_tables_and_outputs_survive_worker_and_broker_sigkills(
    tmp_path: Path, broker: BrokerProcess
) -> None:
    """10 worker SIGKILLs and a broker SIGKILL while 200,000 events flow through two workers:
    outputs exactly 1..n per word, changelogs and a final worker's restored tables exact."""
    run = ChaosRun(tmp_path, broker, "exactly_once", EOS_WORKERS, EOS_COMMIT_INTERVAL_MS)

    async def scenario() -> None:
        await run.create_input()
        for index in range(EOS_WORKERS):
            run.start_slot(index, "initial")
        await run.kill_workers_while_producing(EOS_EVENTS, EOS_PRODUCE_S, EOS_WORKER_KILLS, broker_kill=True)
        await run.wait_consumed()
        for index in range(EOS_WORKERS):
            await run.terminate_slot(index)
        await run.check_outputs_and_changelogs(exact=True)
        await run.check_final_worker(0)

    try:
        asyncio.run(scenario())
    finally:
        run.stop_all()
    run.summary()
    assert run.worker_kills >= EOS_WORKER_KILLS and run.broker.starts == 2
    run.check_no_unexpected_exit()


def test_at_least_once_loses_no_table_update_across_worker_sigkills(tmp_path: Path, broker: BrokerProcess) -> None:
    """5 worker SIGKILLs while 50,000 events flow through two workers: every word's count is at
    least the truth and its outputs hold every value 1..n."""
    run = ChaosRun(tmp_path, broker, "at_least_once", ALO_WORKERS, ALO_COMMIT_INTERVAL_MS)

    async def scenario() -> None:
        await run.create_input()
        for index in range(ALO_WORKERS):
            run.start_slot(index, "initial")
        await run.kill_workers_while_producing(ALO_EVENTS, ALO_PRODUCE_S, ALO_WORKER_KILLS, broker_kill=False)
        await run.wait_consumed()
        for index in range(ALO_WORKERS):
            await run.terminate_slot(index)
        await run.check_outputs_and_changelogs(exact=False)

    try:
        asyncio.run(scenario())
    finally:
        run.stop_all()
    run.summary()
    run.check_no_unexpected_exit()


def test_exactly_once_tables_move_and_restore_across_rebalances(tmp_path: Path, broker: BrokerProcess) -> None:
    """1 -> 3 -> 1 workers while 60,000 events flow: the joiners restore their partitions from the
    changelogs and process them; on their SIGTERM the first worker takes them back, restoring what
    they added; outputs, changelogs and a final worker's restored tables exact."""
    run = ChaosRun(tmp_path, broker, "exactly_once", 1 + REBALANCE_JOINERS, EOS_COMMIT_INTERVAL_MS)
    joiners = range(1, 1 + REBALANCE_JOINERS)

    async def scenario() -> None:
        await run.create_input()
        run.start_slot(0, "alone")
        producing = asyncio.create_task(run.produce(run.make_events(REBALANCE_EVENTS), REBALANCE_PRODUCE_S))
        try:
            await run.wait_committed(int(REBALANCE_EVENTS * REBALANCE_GROW_AT), "one worker")
            for index in joiners:
                run.start_slot(index, "joins: 1 -> 3 workers")
            for index in joiners:  # an empty state directory: the whole changelog partition
                await run.wait_log(index, RESTORED_TEXT)
            run.note(f"joiners restored: {await run.progress_text()}")
            baseline, _ = await run.offsets()

            def three_workers_went_on(committed: dict[int, int], ends: dict[int, int]) -> bool:
                return all(committed[p] > baseline[p] for p in baseline) and (
                    sum(committed.values()) >= REBALANCE_EVENTS * REBALANCE_SHRINK_AT
                )

            await run.wait_for("three workers processing every partition", three_workers_went_on, PHASE_WAIT_S)
            shrink_mark = len(run.slots[0].log_text())
            for index in joiners:
                await run.terminate_slot(index)
            await producing
        finally:
            if not producing.done():
                producing.cancel()
                await asyncio.gather(producing, return_exceptions=True)
        await run.wait_consumed()
        # Slot 0 held those partitions before: it restores only what the joiners added since.
        await run.wait_log(0, RESTORED_TEXT, start=shrink_mark)
        await run.terminate_slot(0)
        await run.check_outputs_and_changelogs(exact=True)
        await run.check_final_worker(1)

    try:
        asyncio.run(scenario())
    finally:
        run.stop_all()
    run.summary()
    run.check_no_unexpected_exit()
