"""A transactional copier, run as a subprocess by the transaction tests (and SIGKILLed by them).

Reads topic SRC read_committed from the committed offsets of GROUP, and copies every record to
the same partition of DST inside transactions that also commit the consumed offsets
(``send_offsets_to_transaction``): the classic exactly-once consume-transform-produce loop.
It exits 0 once it has copied and committed everything up to SRC's end, 3 on a fatal
(fenced) producer error, 4 when it cannot finish in ``--deadline-s``.

Usage::

    python tests/broker/txn_copier.py --bootstrap H:P --src A --dst B --group G --txn-id T \
        [--client confluent|kafka-python] [--batch 200] [--subscribe] [--pause-ms 0]

The consumer is assigned all of SRC's partitions by hand (restarts need no rebalance); with
``--subscribe`` it joins GROUP instead. Each transaction prints ``committed N`` on stdout.
"""

from __future__ import annotations

import argparse
import faulthandler
import functools
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

EXIT_DONE = 0
EXIT_FENCED = 3
EXIT_DEADLINE = 4
#: Timeout of each blocking client call: a stuck call fails the transaction instead of the run.
CALL_TIMEOUT_S = 10
#: Attempts of a transactional call that fails with a retriable error.
RETRIES_MAX = 5


def retrying(call: Callable[[], object]) -> None:
    """Run a transactional call again while it fails with a retriable error (a timeout while
    the broker restarts, say), as confluent-kafka's documentation asks; bounded."""
    from confluent_kafka import KafkaException

    for attempt in range(RETRIES_MAX):
        try:
            call()
            return
        except KafkaException as exc:
            if not exc.args[0].retriable() or attempt == RETRIES_MAX - 1:
                raise
            print(f"retrying: {exc.args[0]}", flush=True)


def run_confluent(args: argparse.Namespace) -> int:
    from confluent_kafka import (
        Consumer,
        KafkaError,
        KafkaException,
        Producer,
        TopicPartition,
    )

    producer = Producer(
        {
            "bootstrap.servers": args.bootstrap,
            "transactional.id": args.txn_id,
            "transaction.timeout.ms": args.txn_timeout_ms,
            "linger.ms": 5,
            **({"debug": args.debug} if args.debug else {}),
        }
    )
    producer.init_transactions(30)  # fences older instances and ends their transaction first
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
            "max.poll.interval.ms": 10000,
            "fetch.queue.backoff.ms": 5,
        }
    )
    metadata = consumer.list_topics(args.src, timeout=10)
    partitions = sorted(metadata.topics[args.src].partitions)
    if args.subscribe:
        consumer.subscribe([args.src])
    else:
        consumer.assign([TopicPartition(args.src, p) for p in partitions])
    ends = {
        p: consumer.get_watermark_offsets(TopicPartition(args.src, p), timeout=10)[1]
        for p in partitions
    }
    deadline = time.monotonic() + args.deadline_s
    total = 0
    while time.monotonic() < deadline:
        messages = consumer.consume(args.batch, 0.2)
        messages = [m for m in messages if m.error() is None]
        assignment = consumer.assignment()
        if not messages:
            if assignment and len(assignment) == len(partitions):
                # A partition with nothing left to read reports no position yet (-1001):
                # its committed offset says where it stands.
                positions = consumer.position(assignment)
                if any(tp.offset < 0 for tp in positions):
                    positions = consumer.committed(assignment, timeout=10)
                if all(tp.offset >= ends[tp.partition] for tp in positions):
                    consumer.close()
                    return EXIT_DONE
            continue
        try:
            producer.begin_transaction()
            for m in messages:
                producer.produce(
                    args.dst, value=m.value(), key=m.key(), partition=m.partition()
                )
            if args.pause_ms:
                producer.flush(CALL_TIMEOUT_S)  # the records are in the log, the transaction still open
                time.sleep(args.pause_ms / 1000)
            positions = consumer.position(assignment)
            metadata = consumer.consumer_group_metadata()
            retrying(
                functools.partial(
                    producer.send_offsets_to_transaction, positions, metadata, CALL_TIMEOUT_S
                )
            )
            retrying(lambda: producer.commit_transaction(CALL_TIMEOUT_S))
            total += len(messages)
            print(f"committed {total}", flush=True)
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.fatal():
                print(f"fatal: {error}", flush=True)
                return EXIT_FENCED
            print(f"aborting: {error}", flush=True)
            try:
                retrying(lambda: producer.abort_transaction(CALL_TIMEOUT_S))
            except KafkaException as abort_exc:
                if abort_exc.args[0].fatal():  # fenced while aborting
                    print(f"fatal: {abort_exc.args[0]}", flush=True)
                    return EXIT_FENCED
                raise
            # Rewind to the committed offsets and try again.
            committed = consumer.committed(assignment, timeout=10)
            for tp in committed:
                consumer.seek(
                    TopicPartition(tp.topic, tp.partition, max(tp.offset, 0))
                )
    return EXIT_DEADLINE


def run_kafka_python(args: argparse.Namespace) -> int:
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.errors import KafkaError, ProducerFencedError

    producer = KafkaProducer(
        bootstrap_servers=args.bootstrap,
        transactional_id=args.txn_id,
        transaction_timeout_ms=args.txn_timeout_ms,
        linger_ms=5,
    )
    producer.init_transactions()
    consumer = KafkaConsumer(
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    partitions = sorted(consumer.partitions_for_topic(args.src) or [])
    tps = [TopicPartition(args.src, p) for p in partitions]
    consumer.assign(tps)
    ends = consumer.end_offsets(tps)
    deadline = time.monotonic() + args.deadline_s
    total = 0
    while time.monotonic() < deadline:
        polled: dict[Any, list[Any]] = consumer.poll(timeout_ms=200, max_records=args.batch)
        messages = [m for batch in polled.values() for m in batch]
        if not messages:
            if all(consumer.position(tp) >= ends[tp] for tp in tps):
                consumer.close()
                producer.close()
                return EXIT_DONE
            continue
        try:
            producer.begin_transaction()
            for m in messages:
                producer.send(args.dst, value=m.value, key=m.key, partition=m.partition)
            from kafka.structs import OffsetAndMetadata

            offsets = {
                tp: OffsetAndMetadata(consumer.position(tp), "", -1) for tp in tps
            }
            producer.send_offsets_to_transaction(offsets, args.group)
            producer.commit_transaction()
            total += len(messages)
            print(f"committed {total}", flush=True)
        except ProducerFencedError as exc:
            print(f"fatal: {exc}", flush=True)
            return EXIT_FENCED
        except KafkaError as exc:
            print(f"abortable: {exc}", flush=True)
            producer.abort_transaction()
            committed = {tp: consumer.committed(tp) for tp in tps}
            for tp, offset in committed.items():
                consumer.seek(tp, offset or 0)
    return EXIT_DEADLINE


def main(argv: list[str] | None = None) -> int:
    # SIGUSR1 prints every thread's stack: how a test shows where a stuck copier waits.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--src", required=True)
    parser.add_argument("--dst", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--txn-id", required=True)
    parser.add_argument("--client", choices=["confluent", "kafka-python"], default="confluent")
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--txn-timeout-ms", type=int, default=10_000)
    parser.add_argument("--deadline-s", type=float, default=60.0)
    parser.add_argument("--subscribe", action="store_true")
    parser.add_argument("--debug", default="", help="librdkafka debug contexts of the producer")
    parser.add_argument(
        "--pause-ms",
        type=int,
        default=0,
        help="sleep this long inside each transaction (so a kill finds one open)",
    )
    args = parser.parse_args(argv)
    if args.client == "confluent":
        return run_confluent(args)
    return run_kafka_python(args)


if __name__ == "__main__":
    sys.exit(main())
