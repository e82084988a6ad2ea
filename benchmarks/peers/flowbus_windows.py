"""A per-user 10-second tumbling count with final results in flowbus, written like the Quix Streams
and faust ones beside it, so run_window_peers.py runs all three the same way on the same broker.

Reads JSON clicks {"user": u} keyed by the user from topic `clicks` on kafka://--broker (event
time = the record timestamp), counts them per user and 10-s window, and sends one result per
window when it closes, ``{"start": ms, "end": ms, "value": n}`` keyed by the user, to --out.
Stops by itself once it has processed --events clicks (after --close-wait-s more seconds, so the
idle close can emit the last windows) and prints

    events_per_s=<float> events=<N> seconds=<float>

timed from the first to the last processed click, as the peers' scripts do.

    python benchmarks/peers/flowbus_windows.py --broker 127.0.0.1:9092 --events 20000 --state-dir /tmp/fw --out out
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from flowbus import App
from flowbus.cli.common import TIMEOUT_S_DEFAULT
from flowbus.cli.worker import run_worker

WINDOW_MS = 10_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broker", required=True, help="HOST:PORT of the Kafka-protocol broker")
    parser.add_argument("--events", type=int, required=True, help="stop after processing this many clicks")
    parser.add_argument("--state-dir", required=True, help="directory of the app's RocksDB state")
    parser.add_argument("--topic", default="clicks")
    parser.add_argument("--out", required=True, help="topic of the window results")
    parser.add_argument("--app-id", default=None, help="consumer group (default: unique)")
    parser.add_argument("--guarantee", choices=["at_least_once", "exactly_once"], default="at_least_once")
    parser.add_argument("--close-wait-s", type=float, default=0.0,
                        help="keep running this long after the last click (the idle close emits the last windows)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.events < 1:
        raise SystemExit("--events must be at least 1")
    app_id = args.app_id or f"peers-flowbus-{uuid.uuid4().hex[:12]}"
    app = App(app_id, broker=f"kafka://{args.broker}", state_dir=Path(args.state_dir), max_poll_records=5_000,
              processing_guarantee=args.guarantee, window_idle_ms=1_000)
    clicks = app.topic(args.topic, key_type=str)
    out = app.topic(args.out, key_type=str)
    progress = {"events": 0, "first": 0.0, "last": 0.0}
    target = args.events

    def tick(click: Any) -> None:
        done = progress["events"] + 1
        progress["events"] = done
        if done == 1:
            progress["first"] = time.perf_counter()
        if done == target:
            progress["last"] = time.perf_counter()
            if args.close_wait_s > 0:
                asyncio.get_running_loop().call_later(args.close_wait_s, app.stop)
            else:
                app.stop()  # the worker commits (results, changelog and offsets) and leaves the group

    app.stream(clicks).update(tick).tumbling_window(WINDOW_MS, name="counts").count().final().to(out)
    # Run as `flowbus worker` runs it (signal handling, logging, the start-up GC freeze); not
    # app.main(), which parses sys.argv as worker options and exits the process when the worker
    # stops, before the figures below are printed.
    run_worker(app, listen=None, timeout_s=TIMEOUT_S_DEFAULT, log_level="warning")
    if progress["events"] < target:
        print(f"flowbus_windows: stopped after {progress['events']} of {target} events", file=sys.stderr)
        return 1
    seconds = progress["last"] - progress["first"]
    rate = target / seconds if seconds > 0 else float("inf")
    print(f"events_per_s={rate:.1f} events={target} seconds={seconds:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
