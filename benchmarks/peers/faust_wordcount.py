"""Word count in faust-streaming, for comparison with flowbus's own (benchmarks/state_bench.py).

Reads JSON events {"word": w} keyed by the word from topic `words` and keeps a per-word count in a
persisted faust Table (RocksDB store through rocksdict, changelog topic in the broker), with faust's
at_least_once guarantee. Stops by itself once it has processed --events events and prints

    events_per_s=<float> events=<N> seconds=<float>

timed from the first to the last processed event (events / seconds). Runs in an environment with
faust-streaming installed (the `peers` extra); run_peers.py starts it:

    python benchmarks/peers/faust_wordcount.py --broker 127.0.0.1:9092 --events 20000 --state-dir /tmp/fw

A fresh --app-id (default: a unique one) reads the topic from the start with an empty table.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
import uuid

import faust


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broker", required=True, help="HOST:PORT of the Kafka-protocol broker")
    parser.add_argument("--events", type=int, required=True, help="stop after processing this many events")
    parser.add_argument("--state-dir", required=True, help="directory of the app's RocksDB table")
    parser.add_argument("--topic", default="words")
    parser.add_argument("--partitions", type=int, default=4, help="partitions of the topic and of the table")
    parser.add_argument("--app-id", default=None, help="app id = consumer group (default: unique)")
    parser.add_argument("--loglevel", default="warning")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.events < 1:
        raise SystemExit("--events must be at least 1")
    app_id = args.app_id or f"peers-faust-{uuid.uuid4().hex[:12]}"
    app = faust.App(
        app_id,
        broker=f"kafka://{args.broker}",
        store="rocksdb://",
        datadir=args.state_dir,
        topic_partitions=args.partitions,
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
    )
    words = app.topic(args.topic, key_type=bytes, key_serializer="raw", value_serializer="json",
                      partitions=args.partitions)
    # Without python-rocksdb, faust's rocksdb:// store uses rocksdict; say so explicitly.
    counts = app.Table("counts", default=int, partitions=args.partitions, options={"driver": "rocksdict"})

    progress = {"events": 0, "distinct": 0, "first": 0.0, "last": 0.0}
    target = args.events

    @app.agent(words)
    async def count_words(stream):  # type: ignore[no-untyped-def]
        async for event in stream:
            word = event["word"]
            n = counts[word] + 1
            counts[word] = n
            done = progress["events"] + 1
            progress["events"] = done
            if done == 1:
                progress["first"] = time.perf_counter()
            if n == 1:
                progress["distinct"] += 1
            if done == target:
                progress["last"] = time.perf_counter()
                # The worker's own SIGTERM handler stops the app cleanly (commits offsets, flushes the
                # changelog producer, closes the table).
                os.kill(os.getpid(), signal.SIGTERM)

    # stdout carries only the result line: faust's banner and progress spinner go to stderr.
    worker = faust.Worker(app, loglevel=args.loglevel, quiet=True, redirect_stdouts=False, stdout=sys.stderr)
    code = 0
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    print(f"distinct_words={progress['distinct']} app_id={app_id}", file=sys.stderr, flush=True)
    if progress["events"] < target:
        print(f"faust_wordcount: stopped after {progress['events']} of {target} events", file=sys.stderr)
        return code or 1
    seconds = progress["last"] - progress["first"]
    rate = target / seconds if seconds > 0 else float("inf")
    print(f"events_per_s={rate:.1f} events={target} seconds={seconds:.3f}", flush=True)
    return code


if __name__ == "__main__":
    logging.captureWarnings(True)
    sys.exit(main())
