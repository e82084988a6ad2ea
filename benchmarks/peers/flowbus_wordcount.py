"""Word count in flowbus, written like the faust and Quix Streams ones beside it, so run_peers.py
can run all three the same way against the same broker.

Reads JSON events {"word": w} keyed by the word from topic `words` on kafka://--broker, counts
them in `app.Table("counts")` from an agent (at_least_once, changelog topic in the broker), or with
``--form dataflow`` through ``app.stream(words).count()``, stops
by itself once it has processed --events events and prints

    events_per_s=<float> events=<N> seconds=<float>

timed from the first to the last processed event, as the peers' scripts do.

    python benchmarks/peers/flowbus_wordcount.py --broker 127.0.0.1:9092 --events 20000 --state-dir /tmp/fw
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path

from flowbus import App
from flowbus.cli.common import TIMEOUT_S_DEFAULT
from flowbus.cli.worker import run_worker


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broker", required=True, help="HOST:PORT of the Kafka-protocol broker")
    parser.add_argument("--events", type=int, required=True, help="stop after processing this many events")
    parser.add_argument("--state-dir", required=True, help="directory of the app's RocksDB state")
    parser.add_argument("--topic", default="words")
    parser.add_argument("--app-id", default=None, help="consumer group (default: unique)")
    parser.add_argument("--form", choices=["agent", "dataflow"], default="agent",
                        help="agent: counts[word] += 1 in an agent on app.Table (faust style); "
                             "dataflow: app.stream(words).count() (Quix / Kafka Streams style)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.events < 1:
        raise SystemExit("--events must be at least 1")
    app_id = args.app_id or f"peers-flowbus-{uuid.uuid4().hex[:12]}"
    app = App(app_id, broker=f"kafka://{args.broker}", state_dir=Path(args.state_dir), max_poll_records=5_000)
    words = app.topic(args.topic, key_type=str)
    progress = {"events": 0, "distinct": 0, "first": 0.0, "last": 0.0}
    target = args.events

    def counted(n: int) -> None:
        done = progress["events"] + 1
        progress["events"] = done
        if done == 1:
            progress["first"] = time.perf_counter()
        if n == 1:
            progress["distinct"] += 1
        if done == target:
            progress["last"] = time.perf_counter()
            app.stop()  # the worker commits (changelog and offsets) and leaves the group

    if args.form == "dataflow":
        # The record key is the word: count() keeps one count per key and passes each new one on.
        app.stream(words).count(name="counts").update(counted)
    else:
        counts = app.Table("counts", default=int, key_type=str, value_type=int)

        @app.agent(words)
        async def count(stream):  # type: ignore[no-untyped-def]
            async for event in stream:
                word = event["word"]
                n = counts[word] + 1
                counts[word] = n
                counted(n)

    # Run as `flowbus worker` runs it (signal handling, logging, the start-up GC freeze); not
    # app.main(), which parses sys.argv as worker options and exits the process when the worker
    # stops, before the figures below are printed.
    run_worker(app, listen=None, timeout_s=TIMEOUT_S_DEFAULT, log_level="warning")
    print(f"distinct_words={progress['distinct']} app_id={app_id}", file=sys.stderr, flush=True)
    if progress["events"] < target:
        print(f"flowbus_wordcount: stopped after {progress['events']} of {target} events", file=sys.stderr)
        return 1
    seconds = progress["last"] - progress["first"]
    rate = target / seconds if seconds > 0 else float("inf")
    print(f"events_per_s={rate:.1f} events={target} seconds={seconds:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
