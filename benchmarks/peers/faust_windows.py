"""A per-user 10-second tumbling count with closing results in faust-streaming, for comparison with
flowbus's (flowbus_windows.py, benchmarks/window_bench.py).

Reads JSON clicks {"user": u} keyed by the user from topic `clicks` and counts them in a windowed
table, ``app.Table(..., on_window_close=...).tumbling(10 s, expires=10 s).relative_to_stream()``
(event time = the record timestamp, RocksDB store through rocksdict, changelog in the broker). The
close callback sends ``{"start": ms, "end": ms, "value": n}`` keyed by the user to --out. faust
closes windows in a periodic table cleanup (``table_cleanup_interval``, 30 s by default) once
they are stale on the *wall clock*; --close-wait-s keeps the worker running after the last click
so a cleanup can run. Stops by itself and prints

    events_per_s=<float> events=<N> seconds=<float>

timed from the first to the last processed click. Runs in an environment with faust-streaming
(the `peers` extra); run_window_peers.py starts it:

    python benchmarks/peers/faust_windows.py --broker 127.0.0.1:9092 --events 2000 --state-dir /tmp/fw --out out
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
import uuid
from datetime import timedelta
from typing import Any

import faust

WINDOW_S = 10.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broker", required=True, help="HOST:PORT of the Kafka-protocol broker")
    parser.add_argument("--events", type=int, required=True, help="stop after processing this many clicks")
    parser.add_argument("--state-dir", required=True, help="directory of the app's RocksDB table")
    parser.add_argument("--topic", default="clicks")
    parser.add_argument("--out", required=True, help="topic of the window results")
    parser.add_argument("--partitions", type=int, default=4, help="partitions of the topics and of the table")
    parser.add_argument("--app-id", default=None, help="app id = consumer group (default: unique)")
    parser.add_argument("--guarantee", choices=["at_least_once", "exactly_once"], default="at_least_once")
    parser.add_argument("--close-wait-s", type=float, default=0.0,
                        help="keep running this long after the last click (faust closes windows in its cleanup)")
    parser.add_argument("--cleanup-interval-s", type=float, default=30.0,
                        help="faust's table_cleanup_interval: how often stale windows are closed (faust's default: 30)")
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
        processing_guarantee=args.guarantee,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        table_cleanup_interval=args.cleanup_interval_s,
    )
    clicks = app.topic(args.topic, key_type=bytes, key_serializer="raw", value_serializer="json",
                       partitions=args.partitions)
    out = app.topic(args.out, key_type=bytes, key_serializer="raw", value_serializer="raw", partitions=args.partitions)

    def on_close(key: Any, value: Any) -> None:
        user, (start_s, _end_s) = key
        start = round(start_s * 1000)
        out.send_soon(key=user.encode(), value=json.dumps({"start": start, "end": start + round(WINDOW_S * 1000),
                                                            "value": value}).encode())

    counts = app.Table(
        "counts", default=int, partitions=args.partitions, on_window_close=on_close, options={"driver": "rocksdict"},
    ).tumbling(WINDOW_S, expires=timedelta(seconds=WINDOW_S)).relative_to_stream()

    progress = {"events": 0, "first": 0.0, "last": 0.0}
    target = args.events

    @app.agent(clicks)
    async def count_clicks(stream):  # type: ignore[no-untyped-def]
        async for click in stream:
            counts[click["user"]] += 1
            done = progress["events"] + 1
            progress["events"] = done
            if done == 1:
                progress["first"] = time.perf_counter()
            if done == target:
                progress["last"] = time.perf_counter()
                # The worker's own SIGTERM handler stops the app cleanly.
                asyncio.get_running_loop().call_later(args.close_wait_s, os.kill, os.getpid(), signal.SIGTERM)

    # stdout carries only the result line: faust's banner and progress spinner go to stderr.
    worker = faust.Worker(app, loglevel=args.loglevel, quiet=True, redirect_stdouts=False, stdout=sys.stderr)
    code = 0
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    if progress["events"] < target:
        print(f"faust_windows: stopped after {progress['events']} of {target} events", file=sys.stderr)
        return code or 1
    seconds = progress["last"] - progress["first"]
    rate = target / seconds if seconds > 0 else float("inf")
    print(f"events_per_s={rate:.1f} events={target} seconds={seconds:.3f}", flush=True)
    return code


if __name__ == "__main__":
    logging.captureWarnings(True)
    sys.exit(main())
