"""Broker benchmark: produce throughput, group-consume throughput, produce→consume latency.

Starts its own ``flowbus broker`` process on a free 127.0.0.1 port with a temporary data
directory, then measures with confluent-kafka (librdkafka):

* produce: 100-byte values, acks=all, idempotent, linger 5 ms, large batches;
* group consume: one consumer in a group reading everything produced;
* latency: a producer process sending at a fixed rate (default 10k msgs/s), a consumer
  measuring now − send time from the value; p50/p99.

Targets (issue 3, client and broker on one 2-core machine): produce ≥ 300k msgs/s, group
consume ≥ 500k msgs/s, p99 ≤ 10 ms at 10k msgs/s. Run::

    python benchmarks/broker_bench.py [--messages 2000000] [--rate 10000] [--latency-seconds 10]

``--durability`` measures produce throughput only, with and without durable acks (issue 10):
a broker with the default flush policy (fsync within ``flush.ms``, 1 s) against one started
with ``--flush-messages 1`` (every produce answered after an fsync, with group commit), each
``--runs`` times (median and range)::

    python benchmarks/broker_bench.py --durability [--runs 3] [--messages 2000000]

``--sasl-ssl`` measures what security costs (issue 14, item 6; target: TLS costs at most 35%
of plaintext produce throughput): one broker with two listeners, PLAINTEXT and SASL_SSL
(SCRAM-SHA-512, a throwaway CA and certificate, a user added with ``flowbus users add`` before
the broker starts), produce runs alternating between the two, ``--runs`` times each::

    python benchmarks/broker_bench.py --sasl-ssl [--runs 3] [--messages 2000000]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import secrets
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import confluent_kafka
import confluent_kafka.admin

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support.broker_process import BrokerProcess, free_port

VALUE_BYTES = 100
_STAMP = struct.Struct(">q")


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = confluent_kafka.admin.AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics(
        [confluent_kafka.admin.NewTopic(topic, partitions, 1)]
    ).values():
        future.result(30)


def bench_produce(bootstrap: str, topic: str, messages: int, security: dict[str, str] | None = None) -> float:
    """Seconds to produce and get acknowledged ``messages`` 100-byte values.

    ``security``: librdkafka's security settings (``security.protocol``, ``sasl.*``, ``ssl.*``).
    """
    producer = confluent_kafka.Producer(
        {
            **(security or {}),
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            "batch.size": 1_000_000,
            "batch.num.messages": 100_000,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
            "compression.type": "none",
        }
    )
    value = b"v" * VALUE_BYTES
    produce = producer.produce
    poll = producer.poll
    start = time.perf_counter()
    for _ in range(messages):
        try:
            produce(topic, value)
        except BufferError:
            # The client's queue is full: wait for acknowledgements (a slower broker, e.g. with
            # durable acks, keeps it full for longer than one short poll).
            for _ in range(10_000):  # bounded: at most ~100 s
                poll(0.01)
                try:
                    produce(topic, value)
                    break
                except BufferError:
                    continue
            else:
                raise RuntimeError("the producer's queue stayed full for 100 s") from None
    remaining = producer.flush(120)
    elapsed = time.perf_counter() - start
    if remaining:
        raise RuntimeError(f"{remaining} messages not delivered")
    return elapsed


def bench_consume(bootstrap: str, topic: str, messages: int) -> float:
    """Seconds for one group member to receive ``messages`` (from its first assignment)."""
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{time.time_ns()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": True,
            # librdkafka >= 2.1 pauses fetching for fetch.queue.backoff.ms (default 1 s) whenever its
            # prefetch queue is full; a consumer that drains fast wants to refetch at once.
            "fetch.queue.backoff.ms": 1,
            "session.timeout.ms": 10_000,
        }
    )
    consumer.subscribe([topic])
    received = 0
    start = None
    deadline = time.monotonic() + 300
    while received < messages and time.monotonic() < deadline:
        batch = consumer.consume(10_000, 0.5)
        if batch and start is None:
            start = time.perf_counter()
        received += len(batch)
    elapsed = time.perf_counter() - (start or time.perf_counter())
    consumer.close()
    if received < messages:
        raise RuntimeError(f"consumed only {received} of {messages}")
    return elapsed


def _latency_producer(
    bootstrap: str, topic: str, rate: int, seconds: float, linger_ms: float
) -> None:
    producer = confluent_kafka.Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": linger_ms,
        }
    )
    padding = b"p" * (VALUE_BYTES - _STAMP.size)
    interval_s = 1 / rate
    total = int(rate * seconds)
    start = time.perf_counter()
    for i in range(total):
        target = start + i * interval_s
        now = time.perf_counter()
        if target > now:
            time.sleep(target - now)  # pacing the send rate is the point here
        producer.produce(topic, _STAMP.pack(time.time_ns()) + padding)
        producer.poll(0)
    producer.flush(30)


def bench_latency(
    bootstrap: str, topic: str, rate: int, seconds: float, linger_ms: float
) -> list[float]:
    """Produce→consume latencies in ms at ``rate`` msgs/s (producer in another process)."""
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"latency-{time.time_ns()}",
            "auto.offset.reset": "latest",
            "fetch.wait.max.ms": 100,
            "fetch.min.bytes": 1,
        }
    )
    consumer.subscribe([topic])
    while not consumer.assignment():
        consumer.poll(0.1)
    # The first poll with an assignment resolves "latest"; give it a moment before sending.
    consumer.poll(0.5)
    proc = multiprocessing.Process(
        target=_latency_producer, args=(bootstrap, topic, rate, seconds, linger_ms)
    )
    proc.start()
    latencies: list[float] = []
    expected = int(rate * seconds)
    deadline = time.monotonic() + seconds + 30
    while len(latencies) < expected and time.monotonic() < deadline:
        # poll(), not consume(n, timeout): consume waits for n messages or the timeout, which
        # would measure the batching of this loop instead of the broker.
        msg = consumer.poll(0.2)
        if msg is not None and msg.error() is None:
            latencies.append(
                (time.time_ns() - _STAMP.unpack_from(msg.value())[0]) / 1e6
            )
    proc.join(30)
    consumer.close()
    # Drop the first second (connection set-up, first metadata) from the steady-state figures.
    return latencies[rate:]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=2_000_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--rate", type=int, default=10_000)
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    parser.add_argument("--latency-linger-ms", type=float, default=1.0)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument(
        "--durability",
        action="store_true",
        help="only produce throughput, default flush policy vs --flush-messages 1",
    )
    parser.add_argument(
        "--sasl-ssl",
        action="store_true",
        help="only produce throughput, PLAINTEXT vs SASL_SSL (SCRAM-SHA-512) listeners of one broker",
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per setting with --durability and --sasl-ssl")
    args = parser.parse_args()
    if args.durability:
        bench_durability(args.messages, args.partitions, args.runs)
        return
    if args.sasl_ssl:
        bench_sasl_ssl(args.messages, args.partitions, args.runs)
        return

    with (
        tempfile.TemporaryDirectory(prefix="flowbus-bench-") as tmp,
        BrokerProcess(Path(tmp) / "data", log_level="warning") as broker,
    ):
        create_topic(broker.bootstrap, "bench", args.partitions)
        mb = args.messages * VALUE_BYTES / 1e6
        if not args.skip_throughput:
            bench_throughput(broker.bootstrap, args.messages, mb)
        create_topic(broker.bootstrap, "latency", 1)
        latencies = bench_latency(
            broker.bootstrap,
            "latency",
            args.rate,
            args.latency_seconds,
            args.latency_linger_ms,
        )
        if latencies:
            latencies.sort()
            p50 = statistics.median(latencies)
            p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
            print(
                f"latency at {args.rate} msgs/s (producer linger {args.latency_linger_ms} ms): p50 {p50:.2f} ms, "
                f"p99 {p99:.2f} ms, max {latencies[-1]:.2f} ms ({len(latencies)} samples)"
            )
        else:
            print("latency: no samples")


def bench_throughput(bootstrap: str, messages: int, mb: float) -> None:
    """Produce ``messages`` to topic ``bench``, then consume them all in a fresh group."""
    elapsed = bench_produce(bootstrap, "bench", messages)
    print(
        f"produce: {messages} msgs in {elapsed:.2f} s = {messages / elapsed:,.0f} msgs/s, "
        f"{mb / elapsed:.1f} MB/s (acks=all, idempotent, linger 5 ms)"
    )
    elapsed = bench_consume(bootstrap, "bench", messages)
    print(
        f"group consume: {messages} msgs in {elapsed:.2f} s = {messages / elapsed:,.0f} msgs/s, {mb / elapsed:.1f} MB/s"
    )


def bench_durability(messages: int, partitions: int, runs: int) -> None:
    """Produce throughput without and with durable acks; a fresh topic per run.

    Both brokers run side by side and the runs alternate between them, so a change in the
    machine's load hits both settings alike.
    """
    settings = [
        ("default: fsync within flush.ms=1000", []),
        ("durable acks: --flush-messages 1", ["--flush-messages", "1"]),
    ]
    rates: dict[str, list[float]] = {label: [] for label, _ in settings}
    with tempfile.TemporaryDirectory(prefix="flowbus-bench-") as tmp, contextlib.ExitStack() as stack:
        brokers = [
            stack.enter_context(
                BrokerProcess(
                    Path(tmp) / f"data-{i}",
                    log_level="warning",
                    extra_args=["--group-initial-rebalance-delay-ms", "0", *extra],
                )
            )
            for i, (_, extra) in enumerate(settings)
        ]
        for run in range(runs):
            for (label, _), broker in zip(settings, brokers):
                topic = f"durability-{run}"
                create_topic(broker.bootstrap, topic, partitions)
                rates[label].append(messages / bench_produce(broker.bootstrap, topic, messages))
    for label, values in rates.items():
        print(
            f"produce, {label}: median {statistics.median(values):,.0f} msgs/s "
            f"(runs: {', '.join(f'{r:,.0f}' for r in values)}; {partitions} partitions, acks=all, "
            f"idempotent, linger 5 ms, {messages} msgs of {VALUE_BYTES} bytes)"
        )


#: What ``--sasl-ssl`` allows TLS to cost, as a fraction of plaintext produce throughput (issue 14).
TLS_COST_MAX = 0.35


def _load_average() -> str:
    return " ".join(f"{load:.2f}" for load in os.getloadavg())


def bench_sasl_ssl(messages: int, partitions: int, runs: int) -> None:
    """Produce throughput through a PLAINTEXT and a SASL_SSL listener of one broker.

    One broker process serves both, so the only difference is the listener: TLS (a P-256
    certificate from a throwaway CA, as the tests make them) and one SCRAM-SHA-512 login per
    connection. Runs alternate between the listeners, each to a fresh topic, so a change in the
    machine's load hits both alike.
    """
    from tests.support.certs import TestCa  # the cryptography package: a dev extra

    password = secrets.token_urlsafe(16)
    with tempfile.TemporaryDirectory(prefix="flowbus-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        ca = TestCa(Path(tmp) / "certs")
        server = ca.issue("server", "localhost", server=True)
        # Offline, before the broker starts: the password goes through stdin, never argv.
        subprocess.run(
            [sys.executable, "-m", "flowbus", "users", "add", "bench", "--mechanism", "SCRAM-SHA-512",
             "--password-file", "-", "--data-dir", str(data_dir)],
            input=password, text=True, capture_output=True, check=True, timeout=60,
        )
        sasl_ssl_port = free_port()
        extra = [
            "--group-initial-rebalance-delay-ms", "0",
            "--listener", f"SASL_SSL://127.0.0.1:{sasl_ssl_port}",
            "--ssl-certfile", str(server.cert), "--ssl-keyfile", str(server.key),
        ]
        sasl_ssl = {
            "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": "bench", "sasl.password": password, "ssl.ca.location": str(ca.pem.cert),
        }
        rates: dict[str, list[float]] = {"PLAINTEXT": [], "SASL_SSL": []}
        load_before = _load_average()
        with BrokerProcess(data_dir, log_level="warning", extra_args=extra) as broker:
            settings = [
                ("PLAINTEXT", broker.bootstrap, None),
                ("SASL_SSL", f"127.0.0.1:{sasl_ssl_port}", sasl_ssl),
            ]
            for run in range(runs):
                for label, bootstrap, security in settings:
                    topic = f"security-{label.lower()}-{run}"
                    create_topic(broker.bootstrap, topic, partitions)
                    rates[label].append(messages / bench_produce(bootstrap, topic, messages, security))
        load_after = _load_average()
    for label, values in rates.items():
        print(
            f"produce, {label}: median {statistics.median(values):,.0f} msgs/s "
            f"(range {min(values):,.0f}-{max(values):,.0f}; runs: {', '.join(f'{r:,.0f}' for r in values)}; "
            f"{partitions} partitions, acks=all, idempotent, linger 5 ms, {messages} msgs of {VALUE_BYTES} bytes)"
        )
    ratio = statistics.median(rates["SASL_SSL"]) / statistics.median(rates["PLAINTEXT"])
    verdict = "within" if 1 - ratio <= TLS_COST_MAX else "OVER"
    print(
        f"SASL_SSL / PLAINTEXT: {ratio:.2f} (TLS costs {1 - ratio:.0%} of plaintext throughput; "
        f"{verdict} the {TLS_COST_MAX:.0%} target); load average before {load_before}, after {load_after}"
    )


if __name__ == "__main__":
    main()
