"""Start-up time: from starting ``flowbus worker`` to its first output record, seen by a consumer.

Each run prepares a fresh embedded data dir holding one input record for the clickstream example
(``examples/pipelines/clickstream.py``: filter -> map -> to(topic)), starts

    flowbus worker -A examples.pipelines.clickstream:app --data-dir DIR --listen 127.0.0.1:PORT

as a new process, and times from just before the process is created until a confluent-kafka
consumer reading the output topic over TCP receives the enriched record. The consumer runs from
before the worker starts and retries its connection every 10 ms, so what is measured is what a
user waits for: interpreter start, imports, opening the data dir, joining the group, the first
poll, the first output and its fetch. ``--listen`` is what lets a consumer see the record while
the worker holds the data dir; it adds one socket server to the start-up, nothing else.

    python benchmarks/startup_bench.py              # 3 runs: median and range
    python benchmarks/startup_bench.py --runs 5
    python benchmarks/startup_bench.py --kafka      # also kafka:// (a flowbus broker with its 3 s
                                                    # initial rebalance delay, and with 0)

The machine's load average is printed with the figures: start-up is mostly waiting for the CPU
on a busy shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

EXAMPLES = {
    # name: (app, input topic, output topic); both read JSON clicks like CLICK
    "clickstream": ("examples.pipelines.clickstream:app", "clicks", "clicks-enriched"),
    "pageviews": ("examples.pipelines.pageviews:app", "clicks", "page-views"),
}
"""``clickstream`` is stateless; ``pageviews`` is exactly-once with two tables and two repartitions,
so its first output waits for a transaction commit and two hops through the broker."""
CLICK = {"user": "u1", "url": "/shop/shoes", "referrer": "https://news.example.com/a", "agent": "Firefox"}
RUN_TIMEOUT_S = 60.0
"""A run that shows no output within this long is a failure, not a figure."""


def worker_env(tmp: Path, cold: bool) -> dict[str, str]:
    """The worker's environment. By default with a bytecode cache (in ``tmp``, not the source
    tree), as an installed flowbus has: ``PYTHONDONTWRITEBYTECODE=1`` would make every start
    compile every module again (about 0.2 s here). ``cold`` keeps the caller's environment."""
    env = dict(os.environ)
    if not cold:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _prepare_embedded(data_dir: Path, input_topic: str, output_topic: str) -> None:
    """The input record and both topics, written before the worker starts (and closed again)."""
    from flowbus.transports.base import TopicSpec
    from flowbus.transports.embedded import EmbeddedTransport

    transport = EmbeddedTransport(f"embedded://{data_dir}")
    await transport.start()
    try:
        await transport.create_topics([TopicSpec(input_topic, 1), TopicSpec(output_topic, 1)])
        producer = transport.producer()
        await producer.send(input_topic, json.dumps(CLICK).encode())
        await producer.close()
    finally:
        await transport.close()


def _consumer(bootstrap: str):  # type: ignore[no-untyped-def]
    """A consumer that retries connecting every 10 ms (assigned by :func:`_wait_first`)."""
    from confluent_kafka import Consumer

    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": "startup-bench",
        "enable.auto.commit": False,
        "fetch.wait.max.ms": 10,
        "reconnect.backoff.ms": 10,
        "reconnect.backoff.max.ms": 10,
        "fetch.error.backoff.ms": 10,  # librdkafka's 500 ms default after a failed first fetch
        "retry.backoff.ms": 10,
        "retry.backoff.max.ms": 10,
        "topic.metadata.refresh.fast.interval.ms": 10,
        "topic.metadata.refresh.interval.ms": 100,
        "isolation.level": "read_committed",  # visible means committed (pageviews is exactly-once)
        "log_level": 0,  # every refused connection before the worker listens would be logged
    })
    return consumer


def _wait_first(consumer, started: float, process: subprocess.Popen[bytes], topic: str) -> float:  # type: ignore[no-untyped-def]
    """Seconds from ``started`` until the first record of ``topic``[0] arrives.

    The partition is assigned only once the broker answered a metadata request: librdkafka
    waits a fixed 500 ms before asking again for the offset of a partition assigned while its
    leader is unknown, which would be measured as start-up time of the worker."""
    from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition

    while time.perf_counter() - started < RUN_TIMEOUT_S:
        try:
            consumer.list_topics(topic, timeout=0.01)
            break
        except KafkaException:
            if process.poll() is not None:
                raise RuntimeError(f"the worker exited with status {process.returncode} before listening") from None
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    while time.perf_counter() - started < RUN_TIMEOUT_S:
        message = consumer.poll(0.01)
        if message is not None and message.error() is None:
            return time.perf_counter() - started
        if process.poll() is not None:
            raise RuntimeError(f"the worker exited with status {process.returncode} before any output")
    raise RuntimeError(f"no output within {RUN_TIMEOUT_S:g} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_embedded(tmp: Path, example: str, env: dict[str, str]) -> float:
    """One embedded:// run; seconds from process start to the first output record."""
    app_spec, input_topic, output_topic = EXAMPLES[example]
    data_dir = tmp / f"data-{time.monotonic_ns()}"
    asyncio.run(_prepare_embedded(data_dir, input_topic, output_topic))
    port = free_port()
    consumer = _consumer(f"127.0.0.1:{port}")
    log = open(tmp / "worker.log", "ab")  # noqa: SIM115 - closed below, after the process
    try:
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-m", "flowbus", "worker", "-A", app_spec, "--data-dir", str(data_dir),
             "--listen", f"127.0.0.1:{port}", "-l", "warning"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log, env=env,
        )
        try:
            return _wait_first(consumer, started, process, output_topic)
        finally:
            _stop(process)
    finally:
        consumer.close()
        log.close()


def run_kafka(tmp: Path, example: str, delay_ms: int, env: dict[str, str]) -> float:
    """One kafka:// run against a ``flowbus broker`` with the given initial rebalance delay."""
    app_spec, input_topic, output_topic = EXAMPLES[example]
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    from tests.support.broker_process import BrokerProcess

    with BrokerProcess(tmp / f"broker-{time.monotonic_ns()}",
                       extra_args=("--group-initial-rebalance-delay-ms", str(delay_ms))) as broker:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        for future in admin.create_topics([NewTopic(input_topic, 1), NewTopic(output_topic, 1)]).values():
            future.result(30)
        producer = Producer({"bootstrap.servers": broker.bootstrap, "log_level": 0})
        producer.produce(input_topic, json.dumps(CLICK).encode())
        producer.flush(30)
        consumer = _consumer(broker.bootstrap)
        try:
            started = time.perf_counter()
            process = subprocess.Popen(
                [sys.executable, "-m", "flowbus", "worker", "-A", app_spec, "--broker",
                 f"kafka://{broker.bootstrap}", "--state-dir", str(tmp / "state"), "-l", "warning"],
                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
            )
            try:
                return _wait_first(consumer, started, process, output_topic)
            finally:
                _stop(process)
        finally:
            consumer.close()


def report(label: str, times_s: list[float]) -> None:
    print(f"  {label:40} median {statistics.median(times_s):.2f} s  "
          f"range {min(times_s):.2f}-{max(times_s):.2f} s  ({len(times_s)} runs: "
          + ", ".join(f"{t:.2f}" for t in times_s) + ")")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--kafka", action="store_true", help="also time kafka:// against a flowbus broker")
    parser.add_argument("--examples", default="clickstream,pageviews", help="comma-separated: " + ", ".join(EXAMPLES))
    parser.add_argument("--cold", action="store_true",
                        help="no bytecode cache when the environment says so (PYTHONDONTWRITEBYTECODE)")
    args = parser.parse_args()
    print(f"start of `flowbus worker` to its first output record seen by a consumer "
          f"({'environment as is' if args.cold else 'with a bytecode cache'}); "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        env = worker_env(tmp, args.cold)
        if not args.cold:
            run_embedded(tmp, "pageviews", env)  # untimed: fills the bytecode cache
        for example in args.examples.split(","):
            report(f"{example}, embedded://", [run_embedded(tmp, example, env) for _ in range(args.runs)])
            if args.kafka:
                for delay_ms in (3_000, 0):
                    report(f"{example}, kafka://, initial delay {delay_ms} ms",
                           [run_kafka(tmp, example, delay_ms, env) for _ in range(args.runs)])
    print(f"load average afterwards {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
