"""Run the per-user windowed count in flowbus, Quix Streams and faust-streaming on one broker.

The workload of issue 9: clicks {"user": u} keyed by the user on a 4-partition topic, click ``i``
at event time ``base + i * 10 ms`` (1,000 clicks per 10-s window), counted per user in 10-s
tumbling windows, one result per window when it closes (flowbus ``.final()``, Quix ``.final()``,
faust ``on_window_close``). After the clicks, every user gets one more click two windows later,
so each real window can close on event time in every framework (Quix's default closing strategy
closes a user's windows only on that user's next click); those last windows are left out of the
comparison.

Starts `python -m flowbus broker` on 127.0.0.1 (free port, temporary data directory), then:

1. **Check** (``--check-events``, small): each peer processes the whole check topic once per
   guarantee in ``--check-guarantees``, keeping on for a while after the last click (flowbus: its
   idle close; faust: its table cleanup, every ``--faust-cleanup-interval-s``); its results topic
   is read read_committed and compared with the truth computed from the input: per peer, windows
   exact / wrong / repeated / missing, and whether the three outputs are equal. faust closes
   windows on the wall clock (stale once the wall clock is past their end + expires), so every
   window of this past input closes at the first cleanup; and faust-streaming 0.15.3 reports a
   closed window only if it starts after the last window it reported, on any partition
   (``Table.last_closed_window`` is one value for the whole table), so windows of the partitions
   cleaned up after the first are dropped without a call to ``on_window_close``.
2. **Throughput**: ``--runs`` rounds; in each, for each guarantee, each peer in turn (interleaved)
   with a fresh app id, consumer group and state directory reads the big topic from the start.
   faust processes only its first ``--faust-events`` clicks (it is ~20x slower). Median and range
   per peer and guarantee, and flowbus's ratio to each. Per run: the group's committed offsets
   and ``out_offsets``, the end offsets of its results topic (results, plus transaction markers
   under exactly_once).

    python benchmarks/peers/run_window_peers.py --python /tmp/peers-venv/bin/python
    python benchmarks/peers/run_window_peers.py --python /tmp/peers-venv/bin/python --quick

Run it with the python whose flowbus you want to measure (it starts the broker and flowbus's
script with it); the Quix and faust scripts run with --python, an environment with the `peers`
extra (pip install -e '.[peers]'). The flowbus script runs with that python too unless
--flowbus-python says otherwise.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run_peers import RESULT, Broker, Run, end_offsets, finish, fmt_load, loadavg, peer_versions

SCRIPTS = {
    "flowbus": HERE / "flowbus_windows.py",
    "faust": HERE / "faust_windows.py",
    "quix": HERE / "quix_windows.py",
}
PARTITIONS = 4
WINDOW_MS = 10_000
STEP_MS = 10
TOPIC = "clicks"
CHECK_TOPIC = "check-clicks"
FLOWBUS_CLOSE_WAIT_S = 3.0
"""After the last click of a check run: the idle close (1 s in the script) emits the last windows."""
FAUST_STOP_WAIT_S = 1.0
"""faust under exactly_once crashes when SIGTERMed right at its last click (a CancelledError in the
agent, exit code 1); a second later it stops cleanly. Outside the timed part."""
READ_IDLE_S = 5.0
"""Reading a results topic ends when nothing new came for this long (a read_committed reader can
stop short of the high watermark behind a transaction left open)."""

WindowId = tuple[str, int]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000, help="clicks in the throughput topic (200 windows)")
    parser.add_argument("--faust-events", type=int, default=10_000,
                        help="clicks faust processes in a throughput run (it is ~20x slower than flowbus)")
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--runs", type=int, default=3, help="throughput rounds (median of each peer)")
    parser.add_argument("--peers", default="flowbus,quix,faust")
    parser.add_argument("--guarantees", default="at_least_once,exactly_once")
    parser.add_argument("--check-events", type=int, default=5_000,
                        help="clicks of the equality check (5 windows); 0 skips it")
    parser.add_argument("--check-guarantees", default="at_least_once,exactly_once")
    parser.add_argument("--faust-cleanup-interval-s", type=float, default=2.0,
                        help="faust's table_cleanup_interval in the check (its default, 30 s, in throughput runs)")
    parser.add_argument("--faust-close-wait-s", type=float, default=8.0,
                        help="how long faust keeps running after a check's last click (its table cleanup closes "
                             "the windows)")
    parser.add_argument("--python", default=sys.executable, help="python with quixstreams and faust-streaming")
    parser.add_argument("--flowbus-python", default=None, help="python for flowbus's script (default: --python)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds allowed to each peer run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true",
                        help="small: 20,000 clicks (2,000 for faust), 1 round, the check at least once only")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (broker data, logs)")
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.faust_events, args.runs = 20_000, 2_000, 1
        args.check_guarantees = "at_least_once"
    args.peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = [p for p in args.peers if p not in SCRIPTS]
    if unknown or not args.peers:
        parser.error(f"--peers: unknown {unknown}; choose from {sorted(SCRIPTS)}")
    args.guarantees = [g for g in args.guarantees.split(",") if g]
    args.check_guarantees = [g for g in args.check_guarantees.split(",") if g]
    args.faust_events = min(args.faust_events, args.events)
    args.flowbus_python = args.flowbus_python or args.python
    return args


# -- input ------------------------------------------------------------------------------------
def fill(bootstrap: str, topic: str, events: int, users: int, seed: int) -> Counter[WindowId]:
    """Create ``topic`` and write the clicks, then one click per user two windows after the last;
    return the true count of each (user, window start) of the clicks."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, PARTITIONS, 1)], operation_timeout=30).values():
        future.result(timeout=60)
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "linger.ms": 10,
                         "acks": "all"})
    failures: list[str] = []

    def on_delivery(err, _msg) -> None:  # type: ignore[no-untyped-def]
        if err is not None:
            failures.append(str(err))

    def send(user: str, ts: int) -> None:
        while True:
            try:
                producer.produce(topic, json.dumps({"user": user}).encode(), user.encode(), timestamp=ts,
                                 on_delivery=on_delivery)
                return
            except BufferError:
                producer.poll(0.05)

    now = int(time.time() * 1000)
    base = now - now % WINDOW_MS - events * STEP_MS - 3 * WINDOW_MS  # recent, so retention keeps everything
    rng = random.Random(seed)
    names = [f"u{i:05d}" for i in range(users)]
    truth: Counter[WindowId] = Counter()
    for i in range(events):
        user, ts = names[rng.randrange(users)], base + i * STEP_MS
        send(user, ts)
        truth[(user, ts - ts % WINDOW_MS)] += 1
        producer.poll(0)
    closing = base + events * STEP_MS + 2 * WINDOW_MS
    for user in names:
        send(user, closing)
    if producer.flush(120) or failures:
        raise RuntimeError(f"producing failed: errors {failures[:5]}")
    return truth


def read_results(bootstrap: str, topic: str) -> dict[WindowId, list[int]]:
    """(user, window start) -> the counts a read_committed reader finds in ``topic``."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "isolation.level": "read_committed"})
    out: dict[WindowId, list[int]] = {}
    try:
        meta = consumer.list_topics(topic, timeout=30).topics.get(topic)
        if meta is None or not meta.partitions:
            return out
        tps = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(meta.partitions)]
        highs = {tp.partition: consumer.get_watermark_offsets(tp, timeout=30)[1] for tp in tps}
        consumer.assign(tps)
        done: set[int] = {p for p, high in highs.items() if high == 0}
        quiet_since = time.monotonic()
        while len(done) < len(tps) and time.monotonic() - quiet_since < READ_IDLE_S:
            for msg in consumer.consume(1000, 0.2):
                if msg.error() is not None:
                    continue
                quiet_since = time.monotonic()
                value = json.loads(msg.value())
                out.setdefault((msg.key().decode(), value["start"]), []).append(value["value"])
                if msg.offset() + 1 >= highs[msg.partition()]:
                    done.add(msg.partition())
    finally:
        consumer.close()
    return out


def compare(truth: Counter[WindowId], results: dict[WindowId, list[int]], last_start: int) -> dict[str, int]:
    """How the results of windows starting before ``last_start`` match the truth."""
    found = {w: v for w, v in results.items() if w[1] < last_start}
    return {
        "windows": len(truth),
        "exact": sum(1 for w, n in truth.items() if found.get(w) == [n]),
        "wrong": sum(1 for w, n in truth.items() if w in found and len(found[w]) == 1 and found[w] != [n]),
        "repeated": sum(1 for w in truth if len(found.get(w, [])) > 1),
        "missing": sum(1 for w in truth if w not in found),
        "extra": sum(1 for w in found if w not in truth),
    }


# -- runs -------------------------------------------------------------------------------------
def run_peer(args: argparse.Namespace, bootstrap: str, peer: str, guarantee: str, topic: str, events: int,
             close_wait_s: float, work: Path, label: str, extra: tuple[str, ...] = ()) -> tuple[Run, str]:
    """Run one peer to ``events`` clicks; returns the run and its results topic."""
    app_id = f"wpeers-{peer}-{label}-{uuid.uuid4().hex[:8]}"
    out_topic = f"{app_id}-out"
    state_dir = work / "state" / app_id
    state_dir.mkdir(parents=True)
    python = args.flowbus_python if peer == "flowbus" else args.python
    cmd = [python, str(SCRIPTS[peer]), "--broker", bootstrap, "--events", str(events), "--state-dir", str(state_dir),
           "--app-id", app_id, "--topic", topic, "--out", out_topic, "--guarantee", guarantee,
           "--close-wait-s", str(close_wait_s), *extra]
    run = Run(peer, 0, ok=False, load=loadavg())
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=args.timeout,
                              stdin=subprocess.DEVNULL, cwd=work)
    except subprocess.TimeoutExpired as exc:
        run.wall_s = time.perf_counter() - started
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        run.error = f"timed out after {args.timeout:.0f}s; stderr tail:\n" + "\n".join(err.splitlines()[-15:])
        return run, out_topic
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
    run.wall_s = time.perf_counter() - started
    match = RESULT.search(proc.stdout)
    if not match:
        run.error = (f"exit code {proc.returncode}; stdout: {proc.stdout.strip()[-300:]!r}; stderr tail:\n"
                     + "\n".join(proc.stderr.splitlines()[-15:]))
        return run, out_topic
    run.ok = True
    run.events_per_s, run.events, run.seconds = float(match.group(1)), int(match.group(2)), float(match.group(3))
    if proc.returncode != 0:  # it processed every click and timed them; the failure came as it stopped
        last = [line for line in proc.stderr.splitlines() if line.strip()][-2:]
        run.notes.append(f"exit code {proc.returncode} after its result line (stopping): {' | '.join(last)[:300]}")
    from confluent_kafka import KafkaException

    try:
        run.committed = committed_total_of(bootstrap, app_id, topic)
        run.changelog = sum(end_offsets(bootstrap, out_topic))
    except (KafkaException, RuntimeError) as exc:  # reported; the run's figure still stands
        run.notes.append(f"broker check failed: {exc!r}")
    if run.committed is not None and run.committed != run.events:
        run.notes.append(f"committed offsets sum to {run.committed:,} after processing {run.events:,} clicks")
    return run, out_topic


def committed_total_of(bootstrap: str, group: str, topic: str) -> int:
    """The sum of the group's committed offsets on ``topic``."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        parts = consumer.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=30)
        return sum(max(tp.offset, 0) for tp in parts)
    finally:
        consumer.close()


def check(args: argparse.Namespace, bootstrap: str, work: Path) -> bool:
    truth = fill(bootstrap, CHECK_TOPIC, args.check_events, args.users, args.seed + 1)
    last_start = max(start for _, start in truth) + WINDOW_MS
    print(f"check: {args.check_events:,} clicks + {args.users:,} closing clicks in {CHECK_TOPIC!r}, "
          f"{len(truth):,} (user, window) counts to find")
    all_equal = True
    for guarantee in args.check_guarantees:
        outputs: dict[str, dict[WindowId, list[int]]] = {}
        for peer in args.peers:
            wait = {"flowbus": FLOWBUS_CLOSE_WAIT_S, "faust": args.faust_close_wait_s}.get(peer, 0.0)
            extra = ("--cleanup-interval-s", str(args.faust_cleanup_interval_s)) if peer == "faust" else ()
            run, out_topic = run_peer(args, bootstrap, peer, guarantee, CHECK_TOPIC, args.check_events + args.users,
                                      wait, work, f"check-{guarantee[:3]}", extra)
            if not run.ok:
                print(f"  {guarantee:14} {peer:7} FAILED: {run.error}")
                all_equal = False
                continue
            outputs[peer] = {w: v for w, v in read_results(bootstrap, out_topic).items() if w[1] < last_start}
            found = compare(truth, outputs[peer], last_start)
            exact = found["exact"] == found["windows"] and not found["extra"]
            all_equal = all_equal and exact
            print(f"  {guarantee:14} {peer:7} {'EXACT' if exact else 'WRONG'}: "
                  + ", ".join(f"{k} {v:,}" for k, v in found.items()) + f"  (wall {run.wall_s:.1f}s)", flush=True)
        peers = sorted(outputs)
        for i, a in enumerate(peers):
            for b in peers[i + 1:]:
                same = outputs[a] == outputs[b]
                print(f"  {guarantee:14} {a} and {b} outputs {'equal' if same else 'DIFFER'}")
    return all_equal


def summarize(runs: list[tuple[str, Run]], args: argparse.Namespace) -> None:
    print("\nsummary (clicks/s from the first to the last processed click)")
    for guarantee in args.guarantees:
        medians: dict[str, float] = {}
        for peer in args.peers:
            ok = [r for g, r in runs if g == guarantee and r.peer == peer and r.ok]
            failed = sum(1 for g, r in runs if g == guarantee and r.peer == peer and not r.ok)
            if not ok:
                print(f"  {guarantee:14} {peer:7}  no successful run ({failed} failed)")
                continue
            rates = [r.events_per_s for r in ok]
            medians[peer] = statistics.median(rates)
            print(f"  {guarantee:14} {peer:7}  median {medians[peer]:10.1f} ev/s  range {min(rates):.1f} - "
                  f"{max(rates):.1f}  ({len(ok)} runs of {ok[0].events} clicks{f', {failed} failed' if failed else ''})")
        for peer, rate in medians.items():
            if peer != "flowbus" and "flowbus" in medians:
                print(f"  {guarantee:14} flowbus / {peer}: {medians['flowbus'] / rate:.1f}x (medians)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_start = loadavg()
    print(f"load average at start: {fmt_load(load_start)}")
    versions = peer_versions(args.python)
    print(f"peer python: {args.python}; flowbus python: {args.flowbus_python}")
    print("peer versions: " + ", ".join(f"{k}={v}" for k, v in versions.items()))
    work = Path(tempfile.mkdtemp(prefix="flowbus-window-peers-"))
    broker = Broker(work / "data", work / "broker.log")
    runs: list[tuple[str, Run]] = []
    ok = True
    try:
        bootstrap = broker.start()
        print(f"broker: {bootstrap}")
        if args.check_events > 0:
            ok = check(args, bootstrap, work)
        fill_started = time.perf_counter()
        fill(bootstrap, TOPIC, args.events, args.users, args.seed)
        print(f"\nthroughput: {args.events:,} clicks + {args.users:,} closing clicks in {TOPIC!r} "
              f"({time.perf_counter() - fill_started:.1f}s to write); faust processes its first "
              f"{args.faust_events:,}; {args.runs} rounds x {args.guarantees} x {args.peers}, interleaved")
        for index in range(args.runs):
            for guarantee in args.guarantees:
                for peer in args.peers:
                    events = args.faust_events if peer == "faust" else args.events + args.users
                    wait = FAUST_STOP_WAIT_S if peer == "faust" else 0.0
                    run, _ = run_peer(args, bootstrap, peer, guarantee, TOPIC, events, wait, work, f"r{index}")
                    runs.append((guarantee, run))
                    if run.ok:
                        print(f"  round {index + 1} {guarantee:14} {peer:7} events_per_s={run.events_per_s:.1f} "
                              f"events={run.events} seconds={run.seconds:.3f} wall={run.wall_s:.1f}s "
                              f"committed={run.committed} out_offsets={run.changelog} load={fmt_load(run.load)}",
                              flush=True)
                    else:
                        print(f"  round {index + 1} {guarantee:14} {peer:7} FAILED after {run.wall_s:.1f}s: "
                              f"{run.error}", flush=True)
                    for note in run.notes:
                        print(f"      note: {note}")
        summarize(runs, args)
    finally:
        finish(broker, work, keep=args.keep, lines_shown=10)
    print(f"\nload average at start: {fmt_load(load_start)}; at end: {fmt_load(loadavg())}")
    return 0 if ok and runs and all(r.ok for _, r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
