"""Exactly-once that scales out: ``flowbus worker`` processes of one app on one host, with default
settings (no transactional id given), on a ``flowbus broker`` process (``kafka://``) and on the
embedded broker of a worker started with ``--listen`` (the others join through ``kafka://``).

Proven:

1. Two, three and four workers share the partitions, every one of them makes progress (its pid is
   in the outputs), and the committed output is the input exactly once. Before each worker got its
   own transactional id, the second worker's InitProducerId fenced the first.
2. A zombie: a worker stopped (SIGSTOP) until the group gave its partitions to another, then
   resumed (SIGCONT). Its commit is refused by the group (KIP-447), its transaction aborts (its
   outputs are in the log, and never read_committed), it rejoins and works on; no input is lost
   or repeated.
3. Workers killed with a transaction open (SIGKILL) do not hold read_committed readers for the
   coordinator's 60 s transaction timeout: the next worker started in their state directory ends
   the transactions of its own slot and of the other orphaned slots at start.

Each worker's output value is ``{"n": input, "pid": worker pid}``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from flowbus.transports.base import TopicPartition
from flowbus.transports.kafka import KafkaTransport
from tests.support.broker_process import BrokerProcess, free_port

pytestmark = pytest.mark.timeout(240)

PARTITIONS = 8
SCALE_OUT_EVENTS = 2_000
WAIT_S = 90.0
"""Bound on each wait for the workers (start, group formed, everything committed)."""
STOP_WAIT_S = 30.0
POLL_S = 0.1
ZOMBIE_SESSION_PARAMS = "?session.timeout.ms=6000&heartbeat.interval.ms=500"
"""The stopped worker is removed from the group after 6 s (the broker's minimum)."""
ZOMBIE_FIRST_EVENTS = 4_000
ZOMBIE_SECOND_EVENTS = 1_000
ZOMBIE_DELAY_S = 0.002
"""Per event: the workers are busy, so the stopped one has a transaction open with outputs."""
TRANSACTION_TIMEOUT_S = 60.0
"""What ends a dead worker's transaction when nothing else does (librdkafka's default)."""
ORPHANS_ENDED_WITHIN_S = 20.0
TXN_ID_TEXT = "exactly-once with transactional id "
"""What a worker logs at start."""
MARKER_HELD_S = 2.0
"""How long the test checks that the orphaned transactions really hold read_committed readers."""
LOG_LINE_WAIT_S = 10.0
"""How long the worker may take to log what the reader already saw (a bound, not a wait)."""

APP_MODULE = textwrap.dedent(
    """
    import asyncio, os
    from flowbus import App

    app = App(os.environ["APP_ID"], broker=os.environ["BROKER"], processing_guarantee="exactly_once",
              topic_partitions=int(os.environ["PARTITIONS"]))
    source = app.topic(os.environ["IN"], key_type=str, value_type=int)
    sink = app.topic(os.environ["OUT"])
    PID = os.getpid()
    DELAY_S = float(os.environ.get("DELAY_S") or 0)


    @app.agent(source, sink=[sink])
    async def copy(stream):
        async for n in stream:
            if DELAY_S:
                await asyncio.sleep(DELAY_S)
            yield {"n": n, "pid": PID}
    """
)

ORPHAN_MODULE = textwrap.dedent(
    """
    # A worker that dies with its transaction open: claims a slot as a worker does, writes one
    # record in a transaction, says so, and waits to be SIGKILLed.
    import asyncio, sys
    from pathlib import Path
    from flowbus.transactional_id import claim_slot
    from flowbus.transports.kafka import KafkaTransport

    async def main(app_id, state_dir, url, topic):
        slot = claim_slot(app_id, Path(state_dir))
        producer = KafkaTransport(url).producer(transactional_id=slot.transactional_id)
        await producer.init_transactions()
        producer.begin_transaction()
        producer.send_soon(topic, b"orphaned", partition=0)
        await producer.flush()
        print(slot.index, flush=True)
        await asyncio.sleep(600)

    asyncio.run(main(*sys.argv[1:]))
    """
)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    with BrokerProcess(tmp_path_factory.mktemp("eos-scale-out") / "data") as process:
        yield process


class Workers:
    """``flowbus worker`` processes of one app, started in one directory (so they share the
    default state directory, as workers started side by side on a host do).

    ``kafka``: every worker connects to the broker process. ``embedded``: worker 0 runs the
    broker (``--listen``) and the others join through ``kafka://`` to it.
    """

    def __init__(self, where: str, workdir: Path, broker: BrokerProcess | None, *, params: str = "",
                 delay_s: float = 0.0) -> None:
        self.where = where
        self.workdir = workdir
        suffix = uuid.uuid4().hex[:8]
        self.app_id = f"eos-{suffix}"
        self.source, self.sink = f"in-{suffix}", f"out-{suffix}"
        if where == "kafka":
            assert broker is not None
            self.url = f"kafka://{broker.bootstrap}"
            self.port = 0
        else:
            self.port = free_port()
            self.url = f"kafka://127.0.0.1:{self.port}"
        self.params = params
        self.env = {
            **os.environ, "PYTHONUNBUFFERED": "1", "APP_ID": self.app_id, "IN": self.source, "OUT": self.sink,
            "PARTITIONS": str(PARTITIONS), "DELAY_S": str(delay_s),
        }
        (workdir / "copy_app.py").write_text(APP_MODULE)
        self.processes: list[subprocess.Popen[bytes]] = []

    def log_path(self, index: int) -> Path:
        return self.workdir / f"worker-{index}.log"

    def log(self, index: int) -> str:
        path = self.log_path(index)
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, count: int) -> None:
        for _ in range(count):
            index = len(self.processes)
            args: list[str] = []
            broker = self.url + self.params
            if self.where == "embedded" and index == 0:
                broker = f"embedded://{self.workdir / 'data'}"
                args = ["--listen", f"127.0.0.1:{self.port}"]
            with open(self.log_path(index), "ab") as log:
                process = subprocess.Popen(
                    [sys.executable, "-m", "flowbus", "worker", "-A", "copy_app:app", "-l", "info", *args],
                    cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, env={**self.env, "BROKER": broker},
                )
            self.processes.append(process)
            if self.where == "embedded" and index == 0:
                self.wait("the embedded broker listening", lambda: "listening on" in self.log(0))

    @property
    def pids(self) -> set[int]:
        return {p.pid for p in self.processes}

    def check_alive(self) -> None:
        for index, process in enumerate(self.processes):
            if process.poll() is not None:
                raise AssertionError(f"worker {index} exited with {process.returncode}:\n{self.tails()}")

    def tails(self, lines: int = 40) -> str:
        return "\n".join(
            f"--- worker {i} (pid {p.pid}):\n" + "\n".join(self.log(i).splitlines()[-lines:])
            for i, p in enumerate(self.processes)
        )

    def wait(self, what: str, condition: Callable[[], bool], wait_s: float = WAIT_S) -> None:
        deadline = time.monotonic() + wait_s
        while not condition():
            self.check_alive()
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}\n{self.tails()}")
            time.sleep(POLL_S)  # watching other processes through the broker

    def members(self) -> dict[int, int]:
        """Worker pid → partitions of the input it owns, for a group that is Stable (else {})."""
        described = asyncio.run(_describe(self.url, self.app_id))
        if described.state != "Stable":
            return {}
        owned: dict[int, int] = {}
        for member in described.members:
            pid = int(member.client_id.rsplit("-", 1)[1])
            owned[pid] = sum(1 for tp in member.assignment if tp.topic == self.source)
        return owned

    def wait_for_group(self, pids: set[int]) -> None:
        """Until exactly these workers form the group and each owns input partitions."""

        def formed() -> bool:
            owned = self.members()
            return set(owned) == pids and all(owned.values()) and sum(owned.values()) == PARTITIONS

        self.wait(f"a group of workers {sorted(pids)}", formed)

    def produce(self, first: int, count: int) -> None:
        asyncio.run(_produce(self.url, self.source, range(first, first + count)))

    def wait_all_committed(self) -> None:
        self.wait("every input offset committed", lambda: asyncio.run(_all_committed(self.url, self.app_id, self.source)))

    def outputs(self, *, committed_only: bool) -> list[dict[str, Any]]:
        return asyncio.run(_read(self.url, self.sink, committed_only=committed_only))

    def stop(self) -> None:
        """SIGTERM every worker; each must exit cleanly (status 0)."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.send_signal(signal.SIGTERM)
        # The listening worker (the embedded broker) last, so the others can leave the group.
        for index, process in reversed(list(enumerate(self.processes))):
            code = process.wait(STOP_WAIT_S)
            assert code == 0, f"worker {index} exited with {code}\n{self.tails()}"

    def kill_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait(STOP_WAIT_S)


async def _describe(url: str, group: str) -> Any:
    transport = KafkaTransport(url)
    try:
        return await transport.describe_group(group, timeout_s=5)
    finally:
        await transport.close()


async def _produce(url: str, topic: str, values: range) -> None:
    producer = KafkaTransport(url).producer()
    for n in values:
        producer.send_soon(topic, b"%d" % n, b"k%d" % n)
    await producer.close()


async def _all_committed(url: str, group: str, topic: str) -> bool:
    transport = KafkaTransport(url)
    try:
        parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        ends = await transport.watermarks(parts, timeout_s=5)
        done = await transport.group_offsets(group, timeout_s=5)
        return all(done.get(tp, 0) == ends[tp].high for tp in parts)
    finally:
        await transport.close()


async def _read(url: str, topic: str, *, committed_only: bool) -> list[dict[str, Any]]:
    """Everything in ``topic`` (the workers' outputs are all flushed once their offsets are
    committed): read until a few polls in a row bring nothing."""
    consumer = KafkaTransport(url).consumer(
        f"reader-{uuid.uuid4().hex[:8]}", isolation_level="read_committed" if committed_only else "read_uncommitted"
    )
    consumer.subscribe([topic])
    values: list[dict[str, Any]] = []
    idle = 0
    deadline = time.monotonic() + WAIT_S
    while idle < 5 or not consumer.assignment():
        assert time.monotonic() < deadline, "reading the outputs never settled"
        batch = await consumer.poll_batch(5_000, 200)
        idle = 0 if batch else idle + 1
        values += [json.loads(r.value) for r in batch if r.value is not None]
    await consumer.close()
    return values


@pytest.fixture(params=["kafka", "embedded"])
def where(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def make_workers(where: str, tmp_path: Path, request: pytest.FixtureRequest, **kwargs: Any) -> Workers:
    broker = request.getfixturevalue("broker") if where == "kafka" else None
    return Workers(where, tmp_path, broker, **kwargs)


@pytest.mark.parametrize("count", [2, 3, 4])
def test_workers_of_one_app_on_one_host_share_the_partitions_exactly_once(
    count: int, where: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    workers = make_workers(where, tmp_path, request)
    try:
        workers.start(count)
        workers.wait_for_group(workers.pids)
        workers.produce(0, SCALE_OUT_EVENTS)
        workers.wait_all_committed()
        outputs = workers.outputs(committed_only=True)
        workers.check_alive()
        assert sorted(o["n"] for o in outputs) == list(range(SCALE_OUT_EVENTS)), "each input exactly once"
        assert {o["pid"] for o in outputs} == workers.pids, "every worker made progress"
        for index in range(count):
            assert "fenced" not in workers.log(index), workers.tails()
        ids = [line.split(TXN_ID_TEXT)[1].split()[0] for i in range(count)
               for line in workers.log(i).splitlines() if TXN_ID_TEXT in line]
        assert len(ids) == len(set(ids)) == count, f"one transactional id per worker: {ids}"
        workers.stop()
    finally:
        workers.kill_all()


def test_a_stopped_worker_whose_partitions_moved_is_fenced_when_it_resumes(
    where: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    workers = make_workers(where, tmp_path, request, params=ZOMBIE_SESSION_PARAMS, delay_s=ZOMBIE_DELAY_S)
    try:
        workers.start(2)
        keeper, zombie = workers.processes  # on embedded the keeper runs the broker
        workers.wait_for_group(workers.pids)
        workers.produce(0, ZOMBIE_FIRST_EVENTS)
        workers.wait("both workers busy", lambda: _committed_total(workers) >= ZOMBIE_FIRST_EVENTS // 5)
        zombie.send_signal(signal.SIGSTOP)
        try:
            workers.wait("the stopped worker's partitions moved", lambda: workers.members() == {keeper.pid: PARTITIONS})
        finally:
            zombie.send_signal(signal.SIGCONT)
        workers.wait("the zombie's commit refused by the group", lambda: "fenced by the group" in workers.log(1))
        workers.wait_for_group(workers.pids)  # it rejoined
        workers.produce(ZOMBIE_FIRST_EVENTS, ZOMBIE_SECOND_EVENTS)
        workers.wait_all_committed()
        total = ZOMBIE_FIRST_EVENTS + ZOMBIE_SECOND_EVENTS
        committed = workers.outputs(committed_only=True)
        everything = workers.outputs(committed_only=False)
        workers.check_alive()
        assert sorted(o["n"] for o in committed) == list(range(total)), "each input exactly once"
        assert any(o["pid"] == zombie.pid and o["n"] >= ZOMBIE_FIRST_EVENTS for o in committed), (
            "the fenced worker rejoined and worked on"
        )
        aborted = len(everything) - len(committed)
        assert aborted > 0, "the zombie's outputs were written, and never became visible"
        assert "fenced by the group" not in workers.log(0)
        print(f"{where}: {aborted} outputs aborted (the zombie's, and any other transaction aborted meanwhile)")
        workers.stop()
    finally:
        workers.kill_all()


def _committed_total(workers: Workers) -> int:
    async def total() -> int:
        transport = KafkaTransport(workers.url)
        try:
            return sum((await transport.group_offsets(workers.app_id, timeout_s=5)).values())
        finally:
            await transport.close()

    return asyncio.run(total())


def test_transactions_left_open_by_killed_workers_end_when_a_worker_starts(
    tmp_path: Path, broker: BrokerProcess
) -> None:
    """Two workers die with a transaction open (slots 0 and 1 of the state directory); one worker
    starts: it takes slot 0 (its InitProducerId ends that transaction) and ends slot 1's too, so a
    read_committed reader gets past them at once instead of after the 60 s transaction timeout."""
    workers = Workers("kafka", tmp_path, broker)
    state_dir = tmp_path / "flowbus-state"  # the default of workers started in tmp_path
    asyncio.run(_create(workers.url, workers.sink))
    (tmp_path / "orphan.py").write_text(ORPHAN_MODULE)
    children, dead = [], []
    for _ in range(2):  # both alive at once, as two workers running side by side
        child = subprocess.Popen(
            [sys.executable, str(tmp_path / "orphan.py"), workers.app_id, str(state_dir), workers.url, workers.sink],
            stdout=subprocess.PIPE, cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        children.append(child)
        assert child.stdout is not None
        line = child.stdout.readline()  # its transaction is open and holds a record
        assert line.strip(), f"the orphan-to-be exited with {child.wait()}"
        dead.append(int(line))
    for child in children:
        child.kill()
        child.wait(STOP_WAIT_S)
    assert sorted(dead) == [0, 1]
    asyncio.run(_produce_marker(workers.url, workers.sink))
    assert not asyncio.run(_sees_marker(workers.url, workers.sink, MARKER_HELD_S)), "held by the open transactions"
    started = time.monotonic()
    try:
        workers.start(1)
        seen = asyncio.run(_sees_marker(workers.url, workers.sink, ORPHANS_ENDED_WITHIN_S))
        took = time.monotonic() - started
        workers.check_alive()
        assert seen, f"the orphaned transactions still hold readers after {took:.1f} s\n{workers.tails()}"
        assert took < TRANSACTION_TIMEOUT_S / 2
        # The reader sees the marker as soon as the broker ends slot 1's transaction; the worker
        # logs it once its InitProducerId answer is back, a moment later.
        wanted = ("ended what its previous worker (dead) left open", "ended what its worker (dead) left open")
        deadline = time.monotonic() + LOG_LINE_WAIT_S
        while not all(text in workers.log(0) for text in wanted) and time.monotonic() < deadline:
            time.sleep(0.05)
        log = workers.log(0)
        assert all(text in log for text in wanted), log
        workers.stop()
    finally:
        workers.kill_all()


async def _create(url: str, topic: str) -> None:
    from flowbus.transports.base import TopicSpec

    transport = KafkaTransport(url)
    await transport.create_topics([TopicSpec(topic, PARTITIONS)])
    await transport.close()


async def _produce_marker(url: str, topic: str) -> None:
    producer = KafkaTransport(url).producer()
    producer.send_soon(topic, b"marker", partition=0)
    await producer.close()


async def _sees_marker(url: str, topic: str, within_s: float) -> bool:
    consumer = KafkaTransport(url).consumer(f"marker-{uuid.uuid4().hex[:8]}", isolation_level="read_committed")
    consumer.subscribe([topic])
    deadline = time.monotonic() + within_s
    try:
        while time.monotonic() < deadline:
            if any(r.value == b"marker" for r in await consumer.poll_batch(100, 100)):
                return True
        return False
    finally:
        await consumer.close()
