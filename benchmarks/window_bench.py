"""Windows: how fast a per-user tumbling count runs, and how soon a closed window is readable.

The workload is issue 9's: ``app.stream(clicks).tumbling_window(10 s).count().final().to(counts)``,
clicks keyed by user, results ``{"start", "end", "value"}`` keyed by user. Printed per place
(embedded://, and kafka:// to a local ``flowbus broker`` process) and guarantee
(at_least_once, exactly_once):

1. **Throughput.** ``--events`` clicks over ``--users`` users (uniformly drawn, seeded) are written
   to a 4-partition topic first, click ``i`` at event time ``base + i * 10 ms`` (so 1,000 clicks per
   10-s window and ``events / 1000`` windows, each closing while the stream flows); then a worker in
   this process counts them, timed from its start until every click is processed and the last
   commit is done. events/s, median of ``--runs`` with the range (as ``state_bench.py``). The
   emitted counts plus the windows still open must add up to the clicks.
2. **Close latency**, with the worker in a child process (on embedded://, its broker listens on
   TCP for this process's producer and reader) and a read_committed reader here; event time is the
   wall clock at send; ``--latency-window-ms`` windows (1 s by default: many closes in a short run):

   * busy stream: ``--rate`` clicks/s for ``--busy-s`` seconds; a window's latency is from when the
     first click at or after its end + grace was sent on its partition (stream time passes the
     close time) to when its result was read. Windows closing in the first ``--warmup-s`` seconds
     are reported apart (``warm-up``): the worker's consumer is still starting then (its offset
     lookups and first fetch, ~0.6 s after the assignment on kafka://), which is start-up, not a
     busy stream;
   * idle stream: ``--cycles`` bursts, each sent in the last 300-100 ms of a window, then silence;
     the latency is from the window's end + grace to when its result was read. The idle close
     (``--idle-ms``, the partition caught up and quiet) decides, so expect about the idle time.

   p50 / p99 / max over every (user, window) result, and how many were expected but not read.

    python benchmarks/window_bench.py                   # embedded only, default sizes
    python benchmarks/window_bench.py --kafka --runs 3  # also kafka://, throughput median of 3
    python benchmarks/window_bench.py --quick --kafka   # a small run of everything (about 1-2 min)
    python benchmarks/window_bench.py --only latency --busy-s 30 --cycles 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from bisect import bisect_left
from dataclasses import dataclass, field
from pathlib import Path

# The repository root, for tests.support.broker_process; appended so the installed flowbus wins.
ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT))

from flowbus import App
from flowbus.state.windowed import WindowedTable
from flowbus.transports.base import Record, TopicPartition, TopicSpec, Transport
from flowbus.transports.embedded import EmbeddedTransport
from flowbus.transports.partitioner import partition_for_key

PARTITIONS = 4
WINDOW_MS = 10_000
STEP_MS = 10
"""Event time between consecutive clicks of the throughput input."""
STORE = "per-user"
PRODUCE_CHUNK = 20_000
READY_TEXT = "window-bench-worker-ready"
CHILD_START_S = 60.0
READER_POLL_MS = 10
TAIL_WAIT_MS = 3_000
"""After the busy phase, the pause (beyond the idle time) before the idle phase starts; results of
the busy phase read later still count."""
LATE_WAIT_MS = 10_000
"""How long after a window's end + idle time an idle-stream result is waited for (then: missing)."""
IDLE_MS_APP = 5_000
"""The App's default idle time, for the throughput runs (the stream is never idle there)."""
BURST_MS = (300, 100)
"""Idle-stream bursts are sent from this long before a window's end until this long before it."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def user_keys(users: int) -> list[bytes]:
    return [f"u{i:05d}".encode() for i in range(users)]


def click_value(key: bytes) -> bytes:
    return b'{"user":"' + key + b'"}'


# -- throughput ------------------------------------------------------------------------------
async def fill(transport: Transport, topic: str, events: int, users: int, base_ms: int, seed: int) -> None:
    """Write ``events`` clicks to ``topic`` (4 partitions), click ``i`` at ``base_ms + i * STEP_MS``."""
    await transport.start()
    await transport.create_topics([TopicSpec(topic, PARTITIONS)])
    producer = transport.producer(linger_ms=20)
    keys = user_keys(users)
    values = [click_value(k) for k in keys]
    rng = random.Random(seed)
    for i in range(events):
        u = rng.randrange(users)
        producer.send_soon(topic, values[u], keys[u], timestamp_ms=base_ms + i * STEP_MS)
        if i % PRODUCE_CHUNK == PRODUCE_CHUNK - 1:
            await producer.flush()
    await producer.close()


def count_app(url: str, guarantee: str, app_id: str, state_dir: Path, window_ms: int,
              idle_ms: int | None) -> tuple[App, WindowedTable, list[int]]:
    """The per-user tumbling count; ``totals`` is [results emitted, sum of their counts]."""
    app = App(app_id, broker=url, processing_guarantee=guarantee,  # type: ignore[arg-type]
              commit_interval_ms=1_000 if guarantee != "exactly_once" else 100, max_poll_records=5_000,
              state_dir=state_dir, topic_partitions=PARTITIONS, window_idle_ms=idle_ms)
    clicks = app.topic(f"{app_id}-clicks", key_type=str)
    counts = app.topic(f"{app_id}-counts", key_type=str)
    totals = [0, 0]

    def tally(result: dict[str, int]) -> None:
        totals[0] += 1
        totals[1] += result["value"]

    app.stream(clicks).tumbling_window(window_ms, name=STORE).count().final().update(tally).to(counts)
    table = app.tables[STORE]
    assert isinstance(table, WindowedTable)
    return app, table, totals


async def bench_throughput(url: str, transport: Transport, guarantee: str, events: int, users: int, tmp: Path,
                           run: int) -> float:
    app_id = f"wb-{guarantee.replace('_', '-')}-{run}-{time.monotonic_ns() % 10**9}"
    now = now_ms()
    base = now - now % WINDOW_MS - events * STEP_MS - 60_000  # recent: retention keeps the results
    await fill(transport, f"{app_id}-clicks", events, users, base, seed=run)
    app, table, totals = count_app(url, guarantee, app_id, tmp / f"state-{app_id}", WINDOW_MS, idle_ms=IDLE_MS_APP)
    app.use_transport(transport)
    worker = app.make_worker(transport)
    started = time.perf_counter()
    await worker.start()
    while worker.events_in < events:
        await worker.step(100)
        if worker.failure is not None:
            raise RuntimeError(f"worker failed: {worker.failure!r}")
    await worker.commit(barrier=True)
    elapsed = time.perf_counter() - started
    still_open = sum(v for _, v in table.items())
    await worker.shutdown()
    assert totals[1] + still_open == events, (
        f"{totals[0]} results count {totals[1]} clicks and {still_open} are in open windows, not {events}"
    )
    return events / elapsed


# -- close latency: the worker in a child process ------------------------------------------------
def serve_worker(args: argparse.Namespace) -> None:
    """The child: run the count until SIGTERM; print READY_TEXT once every partition is owned."""
    app, table, _ = count_app(args.url, args.guarantee, args.app_id, Path(args.state_dir), args.latency_window_ms,
                              args.idle_ms)
    if args.listen:
        app.use_transport(EmbeddedTransport(args.url, listen=args.listen))

    @app.task
    async def say_ready() -> None:
        while not all(p in table.parts and table.parts[p].ready for p in range(PARTITIONS)):
            await asyncio.sleep(0.02)
        print(READY_TEXT, flush=True)

    app.main([])  # the script parsed its own options: the worker takes none from sys.argv


class ChildWorker:
    """``window_bench.py --serve-worker`` in a child process, its output in a log file."""

    def __init__(self, work: Path, url: str, guarantee: str, app_id: str, args: argparse.Namespace,
                 listen: str | None) -> None:
        self.log_path = work / f"{app_id}.log"
        self.command = [
            sys.executable, str(Path(__file__).resolve()), "--serve-worker", "--url", url, "--guarantee", guarantee,
            "--app-id", app_id, "--state-dir", str(work / f"state-{app_id}"), "--idle-ms", str(args.idle_ms),
            "--latency-window-ms", str(args.latency_window_ms), *(["--listen", listen] if listen else []),
        ]
        self.process: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        with open(self.log_path, "wb") as log:
            # cwd outside the repository, so the child imports the installed flowbus
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, cwd=self.log_path.parent)

    async def start(self) -> None:
        self.spawn()
        assert self.process is not None
        deadline = time.monotonic() + CHILD_START_S
        while READY_TEXT not in self.log_path.read_text(errors="replace"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not get ready:\n{self.log_tail()}")
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Reader:
    """Reads results read_committed as they come; ``seen`` maps (user, window end) to read times."""

    transport: Transport
    topic: str
    seen: dict[tuple[bytes, int], list[int]] = field(default_factory=dict)

    async def run(self, stop: asyncio.Event) -> None:
        consumer = self.transport.consumer(None, isolation_level="read_committed")
        tps = [TopicPartition(self.topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps, {tp: 0 for tp in tps})
        try:
            while not stop.is_set():
                records: list[Record] = await consumer.poll_batch(5_000, READER_POLL_MS)
                read_at = now_ms()
                for record in records:
                    assert record.key is not None and record.value is not None
                    end = json.loads(record.value)["end"]
                    self.seen.setdefault((record.key, end), []).append(read_at)
        finally:
            await consumer.close()


@dataclass
class Latencies:
    samples: list[int] = field(default_factory=list)
    missing: int = 0
    repeated: int = 0
    windows: int = 0

    def text(self) -> str:
        if not self.samples:
            return f"no result read ({self.missing} missing)"
        ordered = sorted(self.samples)

        def pct(q: float) -> int:
            return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

        extra = f", {self.missing} MISSING" if self.missing else ""
        extra += f", {self.repeated} REPEATED" if self.repeated else ""
        return (f"p50 {pct(0.50):>5} ms  p99 {pct(0.99):>5} ms  max {ordered[-1]:>5} ms  "
                f"({len(ordered):,} results of {self.windows} window closes{extra})")


@dataclass
class BusySent:
    """What the busy phase sent: per partition the event times in order, and the (user, window
    end) pairs that have a result to wait for."""

    partition_of: list[int]
    sent: list[list[int]]
    wanted: set[tuple[bytes, int]]
    started_ms: int = 0
    """Wall-clock time the first click was sent."""

    def latencies(self, reader: Reader, warmup_ms: int = 0) -> tuple[Latencies, Latencies]:
        """From the first click at or after a window's end on its partition (grace is 0) to the
        result; windows with no later click on their partition closed idle and are left out.
        Returns (windows closing after the first ``warmup_ms``, those closing before)."""
        out, early = Latencies(), Latencies()
        closes: set[tuple[int, int]] = set()
        early_closes: set[tuple[int, int]] = set()
        for key, end in self.wanted:
            p = self.partition_of[int(key[1:])]
            at = bisect_left(self.sent[p], end)
            if at == len(self.sent[p]):
                continue
            warm = end < self.started_ms + warmup_ms
            into = early if warm else out
            (early_closes if warm else closes).add((p, end))
            reads = reader.seen.get((key, end))
            if not reads:
                into.missing += 1
                continue
            into.repeated += len(reads) - 1
            into.samples.append(reads[0] - self.sent[p][at])
        out.windows = len(closes)
        early.windows = len(early_closes)
        return out, early


async def busy_phase(producer_transport: Transport, topic: str, args: argparse.Namespace,
                     rng: random.Random) -> BusySent:
    """Steady clicks at ``--rate`` for ``--busy-s``, event time = the wall clock at send."""
    producer = producer_transport.producer()
    keys = user_keys(args.users)
    partition_of = [partition_for_key(k, PARTITIONS) for k in keys]
    out = BusySent(partition_of, [[] for _ in range(PARTITIONS)], set(), started_ms=now_ms())
    window = args.latency_window_ms
    tick_s = 0.01
    per_tick = args.rate * tick_s
    owed = 0.0
    started = time.monotonic()
    next_tick = started
    while time.monotonic() - started < args.busy_s:
        owed += per_tick
        while owed >= 1:
            owed -= 1
            u = rng.randrange(args.users)
            ts = now_ms()
            producer.send_soon(topic, click_value(keys[u]), keys[u], partition=partition_of[u], timestamp_ms=ts)
            out.sent[partition_of[u]].append(ts)
            out.wanted.add((keys[u], ts - ts % window + window))
        next_tick += tick_s
        await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
    await producer.close()
    return out


async def idle_phase(producer_transport: Transport, reader: Reader, topic: str, args: argparse.Namespace,
                     rng: random.Random) -> Latencies:
    """``--cycles`` bursts at the end of a window, then silence; latency from the window's end."""
    producer = producer_transport.producer()
    keys = user_keys(args.users)
    window = args.latency_window_ms
    burst_from, burst_to = BURST_MS
    out = Latencies()
    for _ in range(args.cycles):
        now = now_ms()
        end = now - now % window + window
        if end - now < burst_from:
            end += window
        await asyncio.sleep((end - burst_from - now_ms()) / 1000)
        users: set[bytes] = set()
        partitions: set[int] = set()
        burst = max(1, args.rate * (burst_from - burst_to) // 1000)
        for n in range(burst):
            u = rng.randrange(args.users)
            ts = now_ms()
            if ts >= end - burst_to:
                break
            producer.send_soon(topic, click_value(keys[u]), keys[u], partition=partition_for_key(keys[u], PARTITIONS),
                               timestamp_ms=ts)
            users.add(keys[u])
            partitions.add(partition_for_key(keys[u], PARTITIONS))
            await asyncio.sleep(max(0.0, (end - burst_from + (n + 1) * (burst_from - burst_to) / burst - now_ms()) / 1000))
        await producer.flush()
        deadline = end + args.idle_ms + LATE_WAIT_MS
        while now_ms() < deadline and any((k, end) not in reader.seen for k in users):
            await asyncio.sleep(0.02)
        out.windows += len(partitions)
        for key in users:
            reads = reader.seen.get((key, end))
            if not reads:
                out.missing += 1
                continue
            out.repeated += len(reads) - 1
            out.samples.append(reads[0] - end)
    await producer.close()
    return out


async def bench_latency(place: str, guarantee: str, args: argparse.Namespace, work: Path,
                        kafka_bootstrap: str | None) -> tuple[Latencies, Latencies, Latencies]:
    from flowbus.transports.kafka import KafkaTransport
    from tests.support.broker_process import free_port

    app_id = f"wl-{place}-{guarantee.replace('_', '-')}-{time.monotonic_ns() % 10**9}"
    if place == "embedded":
        bootstrap = f"127.0.0.1:{free_port()}"
        url, listen = f"embedded://{work / app_id}-data", bootstrap
    else:
        assert kafka_bootstrap is not None
        bootstrap, url, listen = kafka_bootstrap, f"kafka://{kafka_bootstrap}", None
    child = ChildWorker(work, url, guarantee, app_id, args, listen)
    clients = KafkaTransport(f"kafka://{bootstrap}")
    try:
        await child.start()
        await clients.start()
        reader = Reader(clients, f"{app_id}-counts")
        stop = asyncio.Event()
        reading = asyncio.create_task(reader.run(stop))
        rng = random.Random(7)
        try:
            sent = await busy_phase(clients, f"{app_id}-clicks", args, rng)
            await asyncio.sleep((args.idle_ms + TAIL_WAIT_MS) / 1000)  # the busy phase's last windows close
            idle = await idle_phase(clients, reader, f"{app_id}-clicks", args, rng)
        finally:
            stop.set()
            await reading
        busy, warmup = sent.latencies(reader, int(args.warmup_s * 1000))
        return busy, warmup, idle
    except Exception:
        print(f"worker log ({child.log_path}):\n{child.log_tail()}", file=sys.stderr)
        raise
    finally:
        child.stop()
        await clients.close()


# -- main ------------------------------------------------------------------------------------
def summary(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:>10,.0f}"
    return f"{statistics.median(values):>10,.0f} (range {min(values):,.0f}-{max(values):,.0f}, {len(values)} runs)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=300_000, help="clicks per throughput run")
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--runs", type=int, default=1, help="throughput runs per case (median shown)")
    parser.add_argument("--kafka", action="store_true", help="also kafka:// to a local flowbus broker")
    parser.add_argument("--only", choices=["throughput", "latency"], default=None)
    parser.add_argument("--guarantees", default="at_least_once,exactly_once")
    parser.add_argument("--rate", type=int, default=2_000, help="clicks/s of the busy stream and in bursts")
    parser.add_argument("--busy-s", type=float, default=20.0)
    parser.add_argument("--warmup-s", type=float, default=2.0,
                        help="busy windows closing this soon after the first click are reported apart (start-up)")
    parser.add_argument("--cycles", type=int, default=10, help="idle-stream bursts")
    parser.add_argument("--idle-ms", type=int, default=1_000, help="App(window_idle_ms=...) of the latency runs")
    parser.add_argument("--latency-window-ms", type=int, default=1_000)
    parser.add_argument("--quick", action="store_true",
                        help="a small run: 30,000 clicks, 1 run, 6 s busy, 3 idle cycles")
    # the child worker of the latency runs
    parser.add_argument("--serve-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--guarantee", help=argparse.SUPPRESS)
    parser.add_argument("--app-id", help=argparse.SUPPRESS)
    parser.add_argument("--state-dir", help=argparse.SUPPRESS)
    parser.add_argument("--listen", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.runs, args.busy_s, args.cycles = 30_000, 1, 6.0, 3
    return args


async def main(args: argparse.Namespace) -> None:
    from tests.support.broker_process import BrokerProcess

    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    places = ["embedded"] + (["kafka"] if args.kafka else [])
    guarantees = args.guarantees.split(",")
    broker: BrokerProcess | None = None
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        try:
            if args.kafka:
                broker = BrokerProcess(tmp / "broker-data").start()
            if args.only in (None, "throughput"):
                print(f"throughput: {args.events:,} clicks, {args.users:,} users, {PARTITIONS} partitions, "
                      f"10-s tumbling count per user (final), {args.events * STEP_MS // WINDOW_MS} windows")
                for place in places:
                    for guarantee in guarantees:
                        rates = []
                        for run in range(args.runs):
                            if place == "kafka":
                                from flowbus.transports.kafka import KafkaTransport

                                assert broker is not None
                                url = f"kafka://{broker.bootstrap}"
                                transport: Transport = KafkaTransport(url)
                            else:
                                url = f"embedded://{tmp / f'embedded-{guarantee}-{run}'}"
                                transport = EmbeddedTransport(url)
                            rates.append(await bench_throughput(url, transport, guarantee, args.events, args.users,
                                                                tmp, run))
                            await transport.close()
                        print(f"  {place:9} {guarantee:14} {summary(rates)} events/s", flush=True)
            if args.only in (None, "latency"):
                print(f"close latency: {args.latency_window_ms} ms windows, idle time {args.idle_ms} ms, "
                      f"{args.users:,} users; busy: {args.rate:,} clicks/s for {args.busy_s:.0f} s; "
                      f"idle: {args.cycles} bursts, each ending {BURST_MS[1]} ms before a window's end")
                for place in places:
                    for guarantee in guarantees:
                        busy, warmup, idle = await bench_latency(place, guarantee, args, tmp,
                                                                 broker.bootstrap if broker else None)
                        print(f"  {place:9} {guarantee:14} busy: {busy.text()}", flush=True)
                        print(f"  {place:9} {guarantee:14} warm-up (first {args.warmup_s:g} s): {warmup.text()}",
                              flush=True)
                        print(f"  {place:9} {guarantee:14} idle: {idle.text()}", flush=True)
        finally:
            if broker is not None:
                broker.terminate()
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.serve_worker:
        serve_worker(arguments)
    else:
        asyncio.run(main(arguments))
