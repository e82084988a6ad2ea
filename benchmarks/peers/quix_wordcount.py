"""Word count in Quix Streams, for comparison with flowbus's own (benchmarks/state_bench.py).

Reads JSON events {"word": w} keyed by the word from topic `words` and keeps a per-word count in
Quix Streams' persisted state (RocksDB per partition, changelog topic in the broker) through
`sdf.update(fn, stateful=True)`, with processing_guarantee="at-least-once". Stops by itself once it
has processed --events events and prints

    events_per_s=<float> events=<N> seconds=<float>

timed from the first to the last processed event (events / seconds). Runs in an environment with
quixstreams installed (the `peers` extra); run_peers.py starts it:

    python benchmarks/peers/quix_wordcount.py --broker 127.0.0.1:9092 --events 20000 --state-dir /tmp/qw

A fresh --app-id (default: a unique one) is a new consumer group that reads the topic from the start
with empty state.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from typing import Any

from quixstreams import Application, State


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broker", required=True, help="HOST:PORT of the Kafka-protocol broker")
    parser.add_argument("--events", type=int, required=True, help="stop after processing this many events")
    parser.add_argument("--state-dir", required=True, help="directory of the app's RocksDB state")
    parser.add_argument("--topic", default="words")
    parser.add_argument("--app-id", default=None, help="consumer group (default: unique)")
    parser.add_argument("--loglevel", default="WARNING")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.events < 1:
        raise SystemExit("--events must be at least 1")
    app_id = args.app_id or f"peers-quix-{uuid.uuid4().hex[:12]}"
    app = Application(
        broker_address=args.broker,
        consumer_group=app_id,
        auto_offset_reset="earliest",
        state_dir=args.state_dir,
        processing_guarantee="at-least-once",
        loglevel=args.loglevel,
    )
    words = app.topic(args.topic, key_deserializer="bytes", value_deserializer="json")
    sdf = app.dataframe(words)

    progress = {"events": 0, "distinct": 0, "first": 0.0, "last": 0.0}
    target = args.events

    def count_word(event: dict[str, Any], state: State) -> None:
        # State is scoped to the message key, which is the word: one "count" per word.
        n = state.get("count", 0) + 1
        state.set("count", n)
        done = progress["events"] + 1
        progress["events"] = done
        if done == 1:
            progress["first"] = time.perf_counter()
        if n == 1:
            progress["distinct"] += 1
        if done == target:
            progress["last"] = time.perf_counter()
            # Stops the poll loop after this message; run() then commits the checkpoint (state and
            # offsets) and closes the consumer and producer.
            app.stop()

    sdf.update(count_word, stateful=True)
    app.run()

    print(f"distinct_words={progress['distinct']} app_id={app_id}", file=sys.stderr, flush=True)
    if progress["events"] < target:
        print(f"quix_wordcount: stopped after {progress['events']} of {target} events", file=sys.stderr)
        return 1
    seconds = progress["last"] - progress["first"]
    rate = target / seconds if seconds > 0 else float("inf")
    print(f"events_per_s={rate:.1f} events={target} seconds={seconds:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
