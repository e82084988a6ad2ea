"""Each processing guarantee across a worker SIGKILL, with ``flowbus worker`` processes on a real
broker: at_least_once loses nothing (and may repeat), at_most_once repeats nothing (and may lose),
exactly_once does neither (outputs and input offsets commit in one broker transaction; the
transaction open at the kill is aborted, and its outputs never reach a read_committed reader).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowbus.transports.base import TopicPartition
from flowbus.transports.kafka import KafkaTransport
from tests.support.broker_process import DEFAULT_EXTRA_ARGS, BrokerProcess, free_port

EVENTS = 600
WAIT_S = 60.0
SESSION_TIMEOUT_MS = 2_000
"""The workers' session on the ``kafka`` broker: the killed worker's partitions move to the
second one once it has passed (Kafka's minimum, 6 s, was most of each kafka case's time)."""
HEARTBEAT_INTERVAL_MS = 250
GROUP_MIN_SESSION_TIMEOUT_MS = 1_000
"""The test broker's ``group.min.session.timeout.ms`` (Kafka's default is 6000), so it accepts
:data:`SESSION_TIMEOUT_MS`."""

APP_MODULE = textwrap.dedent(
    """
    import asyncio, os
    from flowbus import App

    app = App(os.environ["APP_ID"], broker=os.environ["BROKER"], processing_guarantee=os.environ["GUARANTEE"],
              commit_interval_ms=100, max_poll_records=40)
    source = app.topic(os.environ["IN"])
    sink = app.topic(os.environ["OUT"])

    @app.agent(source, sink=[sink], max_buffered_events=20)
    async def relay(stream):
        async for value in stream:
            await asyncio.sleep(0.005)
            yield value
    """
)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    extra_args = (*DEFAULT_EXTRA_ARGS, "--group-min-session-timeout-ms", str(GROUP_MIN_SESSION_TIMEOUT_MS))
    with BrokerProcess(tmp_path_factory.mktemp("guarantees") / "data", extra_args=extra_args) as process:
        yield process


def start_worker(workdir: Path, env: dict[str, str], extra_args: list[str]) -> subprocess.Popen[bytes]:
    log = open(workdir / "worker.log", "ab")  # noqa: SIM115 - the child owns it
    return subprocess.Popen(
        [sys.executable, "-m", "flowbus", "worker", "-A", "relay_app:app", "-l", "info", *extra_args],
        cwd=workdir, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
    )


async def read_values(url: str, topic: str, *, read_committed: bool = False) -> list[int]:
    """Everything in ``topic``, read until every partition is read to its end (the consumer's
    note after each poll: its position reached the high watermark, past any transaction
    marker), not until a few polls in a row bring nothing, which is slower and a slow fetch
    could pass for the end. The outputs are all written, and their transactions ended, before
    this is called."""
    consumer = KafkaTransport(url).consumer(
        f"reader-{time.monotonic_ns()}",
        isolation_level="read_committed" if read_committed else "read_uncommitted",
    )
    consumer.subscribe([topic])
    values: list[int] = []
    deadline = time.monotonic() + WAIT_S
    while True:
        assert time.monotonic() < deadline, f"reading {topic} never reached its end"
        batch = await consumer.poll_batch(5000, 200)
        values.extend(int(r.value) for r in batch if r.value is not None)
        assigned = consumer.assignment()
        if assigned and all(consumer.caught_up_cached(tp) for tp in assigned):
            break
    await consumer.close()
    return values


async def committed(url: str, group: str, topic: str) -> int:
    consumer = KafkaTransport(url).consumer(group)
    found = await consumer.committed([TopicPartition(topic, 0)])
    await consumer.close()
    return found[TopicPartition(topic, 0)] or 0


def run_with_a_kill(where: str, request: pytest.FixtureRequest, tmp_path: Path, guarantee: str) -> list[int]:
    """Produce EVENTS, run a worker, SIGKILL it mid-way, run a second one to the end; the outputs.

    ``where`` is ``kafka`` (workers on a separate broker process) or ``embedded`` (the broker
    lives in the worker, listening so the test can watch: the kill takes the broker down too, and
    the second worker recovers it from the data directory).
    """
    suffix = f"{guarantee}-{time.monotonic_ns()}"
    extra_args: list[str] = []
    if where == "kafka":
        broker: BrokerProcess = request.getfixturevalue("broker")
        url = (f"kafka://{broker.bootstrap}?session.timeout.ms={SESSION_TIMEOUT_MS}"
               f"&heartbeat.interval.ms={HEARTBEAT_INTERVAL_MS}")
        app_broker = url
    else:
        port = free_port()
        url = f"kafka://127.0.0.1:{port}"
        app_broker = f"embedded://{tmp_path / 'data'}"
        extra_args = ["--listen", f"127.0.0.1:{port}"]
    env = {"APP_ID": f"relay-{suffix}", "BROKER": app_broker, "GUARANTEE": guarantee,
           "IN": f"in-{suffix}", "OUT": f"out-{suffix}"}
    (tmp_path / "relay_app.py").write_text(APP_MODULE)
    log_path = tmp_path / "worker.log"
    if where == "embedded":
        # The input is written through the first worker's listener once it is up.
        first = start_worker(tmp_path, env, extra_args)
        wait_for_log(log_path, "listening on", 0, first)

    async def produce() -> None:
        producer = KafkaTransport(url).producer()
        for i in range(EVENTS):
            producer.send_soon(env["IN"], str(i).encode())
        await producer.close()

    asyncio.run(produce())
    if where == "kafka":
        first = start_worker(tmp_path, env, extra_args)
    try:
        deadline = time.monotonic() + WAIT_S
        while asyncio.run(committed(url, env["APP_ID"], env["IN"])) < EVENTS // 4:
            assert first.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "the first worker made no progress"
            time.sleep(0.05)  # polling another process's progress through the broker
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    killed_at = len(log_path.read_text())
    second = start_worker(tmp_path, env, extra_args)
    try:
        deadline = time.monotonic() + WAIT_S
        while "assigned" not in log_path.read_text()[killed_at:] or (
            asyncio.run(committed(url, env["APP_ID"], env["IN"])) < EVENTS
        ):
            assert second.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "the second worker did not finish"
            time.sleep(0.1)
        # Outputs are flushed before offsets are committed: all there now. Read them while the
        # (embedded) broker is still up.
        outputs = asyncio.run(read_values(url, env["OUT"], read_committed=guarantee == "exactly_once"))
        second.send_signal(signal.SIGTERM)
        assert second.wait(WAIT_S) == 0, log_path.read_text()
    finally:
        if second.poll() is None:
            second.kill()
    return outputs


def wait_for_log(log_path: Path, text: str, start: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not log_path.exists() or text not in log_path.read_text()[start:]:
        assert process.poll() is None, log_path.read_text() if log_path.exists() else "no log"
        assert time.monotonic() < deadline, f"no {text!r} in the worker's log"
        time.sleep(0.05)  # waiting on a child process's log file


@pytest.mark.parametrize("where", ["kafka", "embedded"])
def test_at_least_once_loses_nothing_across_a_sigkill(where: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    outputs = run_with_a_kill(where, request, tmp_path, "at_least_once")
    assert set(outputs) == set(range(EVENTS)), "every event has an output"
    print(f"at_least_once: {len(outputs) - EVENTS} events repeated after the kill")


@pytest.mark.parametrize("where", ["kafka", "embedded"])
def test_at_most_once_repeats_nothing_across_a_sigkill(where: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    outputs = run_with_a_kill(where, request, tmp_path, "at_most_once")
    assert len(outputs) == len(set(outputs)), "no event is processed twice"
    assert set(outputs) <= set(range(EVENTS))
    print(f"at_most_once: {EVENTS - len(outputs)} events lost to the kill")


@pytest.mark.parametrize("where", ["kafka", "embedded"])
def test_exactly_once_neither_loses_nor_repeats_across_a_sigkill(
    where: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    outputs = run_with_a_kill(where, request, tmp_path, "exactly_once")
    assert sorted(outputs) == list(range(EVENTS)), "every event has exactly one committed output"
