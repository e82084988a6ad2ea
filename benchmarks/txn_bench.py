"""Transaction benchmark: transactional copy throughput and EndTxn commit latency.

Starts its own ``flowbus broker`` process on a free 127.0.0.1 port with a temporary data
directory, then measures with confluent-kafka (librdkafka), 100-byte values:

* plain produce: an idempotent producer (acks=all, linger 5 ms) filling the 6-partition
  source topic — the baseline;
* transactional copy: a read_committed consumer of the source and a transactional producer
  writing every record to the destination, committing the consumed offsets with the records
  (``send_offsets_to_transaction`` + ``commit_transaction``) every 100 ms;
* commit latency: the time of ``commit_transaction`` after the records were flushed, which is
  the EndTxn round trip (markers to every partition, the offsets partition, the state log),
  over many small copy transactions (the 100 ms ones are too few for a p99).

Targets (issue 4, client and broker on one 2-core machine): transactional copy ≥ 100k msgs/s
with 100 ms transactions; EndTxn commit p99 ≤ 20 ms. Run::

    python benchmarks/txn_bench.py [--messages 1000000] [--commit-interval-ms 100] [--flush-messages 1]

``--flush-messages 1`` starts the broker with durable acks (every produce, offset commit,
transaction-state record and marker fsynced before the answer that reports it).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import confluent_kafka
import confluent_kafka.admin

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support.broker_process import DEFAULT_EXTRA_ARGS, BrokerProcess

VALUE_BYTES = 100
PARTITIONS = 6
#: Records taken from the consumer per call: bounds the copier's in-memory batch.
CONSUME_BATCH_MAX = 10_000


def create_topics(bootstrap: str, *names: str) -> None:
    admin = confluent_kafka.admin.AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics(
        [confluent_kafka.admin.NewTopic(n, PARTITIONS, 1) for n in names]
    ).values():
        future.result(30)


def bench_plain_produce(bootstrap: str, topic: str, messages: int) -> float:
    """Seconds to produce ``messages`` values with an idempotent producer (the baseline)."""
    producer = confluent_kafka.Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
        }
    )
    value = b"v" * VALUE_BYTES
    produce = producer.produce
    start = time.perf_counter()
    for i in range(messages):
        try:
            produce(topic, value, partition=i % PARTITIONS)
        except BufferError:
            producer.poll(0.001)
            produce(topic, value, partition=i % PARTITIONS)
    if producer.flush(120):
        raise RuntimeError("plain produce did not finish")
    return time.perf_counter() - start


def bench_txn_copy(
    bootstrap: str, src: str, dst: str, messages: int, commit_interval_ms: int
) -> tuple[float, list[float], int]:
    """Copy ``messages`` from ``src`` to ``dst`` in transactions of ``commit_interval_ms``.

    Returns (seconds, commit latencies in ms, transactions).
    """
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "txn-bench",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.queue.backoff.ms": 5,
        }
    )
    consumer.assign([confluent_kafka.TopicPartition(src, p) for p in range(PARTITIONS)])
    producer = confluent_kafka.Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": "txn-bench",
            "linger.ms": 5,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
        }
    )
    producer.init_transactions(30)
    latencies_ms: list[float] = []
    copied = 0
    transactions = 0
    interval_s = commit_interval_ms / 1000
    start = time.perf_counter()
    deadline = start + 300
    produce = producer.produce
    while copied < messages and time.perf_counter() < deadline:
        producer.begin_transaction()
        txn_end = time.perf_counter() + interval_s
        while time.perf_counter() < txn_end and copied < messages:
            batch = consumer.consume(CONSUME_BATCH_MAX, 0.05)
            for m in batch:
                if m.error() is not None:
                    continue
                try:
                    produce(dst, m.value(), m.key(), m.partition())
                except BufferError:
                    producer.poll(0.001)
                    produce(dst, m.value(), m.key(), m.partition())
                copied += 1
        producer.send_offsets_to_transaction(
            consumer.position(consumer.assignment()), consumer.consumer_group_metadata(), 30
        )
        producer.flush(30)
        t0 = time.perf_counter()
        producer.commit_transaction(30)
        latencies_ms.append((time.perf_counter() - t0) * 1000)
        transactions += 1
    elapsed = time.perf_counter() - start
    consumer.close()
    if copied < messages:
        raise RuntimeError(f"copied only {copied} of {messages}")
    return elapsed, latencies_ms, transactions


def bench_commit_latency(
    bootstrap: str, src: str, dst: str, transactions: int
) -> list[float]:
    """``commit_transaction`` times (ms) of many small copy transactions (100 records and the
    consumed offsets each), after their records were flushed: the EndTxn round trip."""
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "txn-bench-latency",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.assign([confluent_kafka.TopicPartition(src, p) for p in range(PARTITIONS)])
    producer = confluent_kafka.Producer(
        {"bootstrap.servers": bootstrap, "transactional.id": "txn-bench-latency", "linger.ms": 1}
    )
    producer.init_transactions(30)
    latencies_ms: list[float] = []
    for _ in range(transactions):
        batch = [m for m in consumer.consume(100, 1.0) if m.error() is None]
        producer.begin_transaction()
        for m in batch:
            producer.produce(dst, m.value(), m.key(), m.partition())
        producer.send_offsets_to_transaction(
            consumer.position(consumer.assignment()), consumer.consumer_group_metadata(), 30
        )
        producer.flush(30)
        t0 = time.perf_counter()
        producer.commit_transaction(30)
        latencies_ms.append((time.perf_counter() - t0) * 1000)
    consumer.close()
    return latencies_ms


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--commit-interval-ms", type=int, default=100)
    parser.add_argument("--latency-transactions", type=int, default=500)
    parser.add_argument(
        "--flush-messages", type=int, default=None,
        help="the broker's --flush-messages (1 = durable acks); unset: the broker default",
    )
    args = parser.parse_args()
    extra = list(DEFAULT_EXTRA_ARGS)
    if args.flush_messages is not None:
        extra += ["--flush-messages", str(args.flush_messages)]
    with (
        tempfile.TemporaryDirectory(prefix="flowbus-txn-bench-") as tmp,
        BrokerProcess(Path(tmp) / "data", log_level="warning", extra_args=extra) as broker,
    ):
        create_topics(broker.bootstrap, "txn-src", "txn-dst", "txn-lat")
        seconds = bench_plain_produce(broker.bootstrap, "txn-src", args.messages)
        rate = args.messages / seconds
        print(
            f"plain produce:       {rate:>10,.0f} msgs/s  {rate * VALUE_BYTES / 1e6:6.1f} MB/s"
        )
        seconds, latencies, transactions = bench_txn_copy(
            broker.bootstrap, "txn-src", "txn-dst", args.messages, args.commit_interval_ms
        )
        rate = args.messages / seconds
        print(
            f"transactional copy:  {rate:>10,.0f} msgs/s  {rate * VALUE_BYTES / 1e6:6.1f} MB/s"
            f"  ({transactions} transactions of {args.commit_interval_ms} ms)"
        )
        print(
            f"  its commits:       p50 {statistics.median(latencies):.2f} ms"
            f"  p99 {percentile(latencies, 0.99):.2f} ms  max {max(latencies):.2f} ms"
        )
        latencies = bench_commit_latency(
            broker.bootstrap, "txn-src", "txn-lat", args.latency_transactions
        )
        print(
            f"EndTxn commit:       p50 {statistics.median(latencies):.2f} ms"
            f"  p99 {percentile(latencies, 0.99):.2f} ms  max {max(latencies):.2f} ms"
            f"  ({len(latencies)} transactions of 100 records + offsets)"
        )


if __name__ == "__main__":
    main()
