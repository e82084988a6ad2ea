"""A per-user 10-second tumbling count with final results in Quix Streams, for comparison with
flowbus's (flowbus_windows.py, benchmarks/window_bench.py).

Reads JSON clicks {"user": u} keyed by the user from topic `clicks` (event time = the record
timestamp) and runs ``sdf.tumbling_window(10 s).count().final()`` (Quix's default closing
strategy, "key": a user's windows close when that user's next click comes after their end) into
--out, whose records are ``{"start": ms, "end": ms, "value": n}`` keyed by the user. Stops by
itself once it has processed --events clicks and prints

    events_per_s=<float> events=<N> seconds=<float>

timed from the first to the last processed click. Runs in an environment with quixstreams (the
`peers` extra); run_window_peers.py starts it:

    python benchmarks/peers/quix_windows.py --broker 127.0.0.1:9092 --events 20000 --state-dir /tmp/qw --out out
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from typing import Any

from quixstreams import Application
from quixstreams.models import TopicConfig

WINDOW_MS = 10_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broker", required=True, help="HOST:PORT of the Kafka-protocol broker")
    parser.add_argument("--events", type=int, required=True, help="stop after processing this many clicks")
    parser.add_argument("--state-dir", required=True, help="directory of the app's RocksDB state")
    parser.add_argument("--topic", default="clicks")
    parser.add_argument("--out", required=True, help="topic of the window results")
    parser.add_argument("--partitions", type=int, default=4, help="partitions of the output topic")
    parser.add_argument("--app-id", default=None, help="consumer group (default: unique)")
    parser.add_argument("--guarantee", choices=["at_least_once", "exactly_once"], default="at_least_once")
    parser.add_argument("--closing-strategy", choices=["key", "partition"], default="key")
    parser.add_argument("--close-wait-s", type=float, default=0.0, help="ignored: Quix closes windows only on new clicks")
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
        processing_guarantee=args.guarantee.replace("_", "-"),  # type: ignore[arg-type]
        loglevel=args.loglevel,
    )
    clicks = app.topic(args.topic, key_deserializer="bytes", value_deserializer="json")
    out = app.topic(args.out, key_serializer="bytes", value_serializer="json",
                    config=TopicConfig(num_partitions=args.partitions, replication_factor=1))
    progress = {"events": 0, "first": 0.0, "last": 0.0}
    target = args.events

    def tick(click: Any) -> None:
        done = progress["events"] + 1
        progress["events"] = done
        if done == 1:
            progress["first"] = time.perf_counter()
        if done == target:
            progress["last"] = time.perf_counter()
            app.stop()  # after this message; run() then commits the checkpoint and closes

    sdf = app.dataframe(clicks)
    sdf = sdf.update(tick)
    sdf = sdf.tumbling_window(duration_ms=WINDOW_MS).count().final(closing_strategy=args.closing_strategy)
    sdf.to_topic(out)
    app.run()

    if progress["events"] < target:
        print(f"quix_windows: stopped after {progress['events']} of {target} events", file=sys.stderr)
        return 1
    seconds = progress["last"] - progress["first"]
    rate = target / seconds if seconds > 0 else float("inf")
    print(f"events_per_s={rate:.1f} events={target} seconds={seconds:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
