"""Run the faust-streaming and Quix Streams word counts against a local flowbus broker.

Starts `python -m flowbus broker` on 127.0.0.1 (a free port) over a temporary data directory,
creates topic `words` with 4 partitions, fills it with --events JSON events {"word": w} over
--words distinct words (key = the word, murmur2 partitioner, so records are co-partitioned by
word), then runs each peer app (faust_wordcount.py, quix_wordcount.py) --runs times, interleaved
(faust, quix, faust, quix, ...), each with a fresh app id / consumer group and state directory so
that every run reads the topic from the start with empty state. --faust-events N makes faust
process only its first N events (spread over the 4 partitions), as it is ~20x slower than Quix.

The default is 1,000,000 events (faust: the first 100,000; its rate is flat). flowbus's dataflow
counts 200,000 events in ~0.2 s, too short a span to time on a shared host: three such runs
took 0.18 to 0.27 s; over a million both frameworks run long enough to include periodic commits.

    python benchmarks/peers/run_peers.py --python /tmp/peers-venv/bin/python
    python benchmarks/peers/run_peers.py --python /tmp/peers-venv/bin/python --events 20000 --runs 1
    python benchmarks/peers/run_peers.py --python /tmp/peers-venv/bin/python --events 200000 --faust-events 200000

This script needs flowbus and confluent-kafka (both environments have them): it starts the broker
with its own python, so run it with the python whose flowbus you want to measure. The peer apps run
with --python, an environment with the `peers` extra: pip install -e '.[peers]'.

Per run it prints the app's own figure (events/s from its first to its last processed event), the
wall time of the whole process (start-up, group join, processing, shutdown), its CPU seconds, and
checks against the broker: the group's committed offsets and the records in the app's changelog
topic. Then the median and range per peer, the peers' versions and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = {
    "flowbus": HERE / "flowbus_wordcount.py",
    "faust": HERE / "faust_wordcount.py",
    "quix": HERE / "quix_wordcount.py",
    "flowbus-dataflow": HERE / "flowbus_wordcount.py",
}
#: Options per peer: flowbus-dataflow is the same script counting with ``app.stream(...).count()``.
SCRIPT_ARGS: dict[str, tuple[str, ...]] = {"flowbus-dataflow": ("--form", "dataflow")}
TOPIC = "words"
EVENTS_DEFAULT = 1_000_000
FAUST_EVENTS_DEFAULT = 100_000
PARTITIONS = 4
RESULT = re.compile(r"events_per_s=([0-9.]+|inf) events=(\d+) seconds=([0-9.]+)")
DISTINCT = re.compile(r"distinct_words=(\d+)")
VERSIONS_CODE = """
import importlib.metadata as m, platform
out = {"python": platform.python_version()}
for name in ("faust-streaming", "mode-streaming", "aiokafka", "quixstreams", "confluent-kafka", "rocksdict"):
    try:
        out[name] = m.version(name)
    except m.PackageNotFoundError:
        out[name] = None
print(__import__("json").dumps(out))
"""


@dataclass
class Run:
    peer: str
    index: int
    ok: bool
    events_per_s: float = 0.0
    events: int = 0
    seconds: float = 0.0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    distinct: int | None = None
    committed: int | None = None
    changelog: int | None = None
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)
    error: str = ""
    notes: list[str] = field(default_factory=list)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=EVENTS_DEFAULT,
                        help="events in the topic; flowbus and Quix process all of them")
    parser.add_argument("--faust-events", type=int, default=None,
                        help=f"events faust processes, at most --events (default: {FAUST_EVENTS_DEFAULT:,}); faust "
                             "is ~20x slower than Quix here, and its rate is flat")
    parser.add_argument("--words", type=int, default=10_000, help="distinct words")
    parser.add_argument("--runs", type=int, default=3, help="runs of each peer, interleaved")
    parser.add_argument("--peers", default="flowbus,faust,quix",
                        help="comma-separated subset of: flowbus, faust, quix, flowbus-dataflow (flowbus's "
                             "word count runs interleaved with the others, on the same broker and interpreter; "
                             "flowbus is the agent on a table, flowbus-dataflow app.stream(words).count())")
    parser.add_argument("--python", default=sys.executable,
                        help="python of the environment with faust-streaming and quixstreams (default: this one)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds allowed to each peer run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (broker data, logs)")
    args = parser.parse_args(argv)
    args.peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = [p for p in args.peers if p not in SCRIPTS]
    if unknown or not args.peers:
        parser.error(f"--peers: unknown {unknown}; choose from {sorted(SCRIPTS)}")
    if args.faust_events is None:
        args.faust_events = FAUST_EVENTS_DEFAULT
    if args.events < 1 or args.faust_events < 1 or args.runs < 1 or args.words < 1:
        parser.error("--events, --faust-events, --runs and --words must be at least 1")
    args.faust_events = min(args.faust_events, args.events)
    return args


def loadavg() -> tuple[float, float, float]:
    return os.getloadavg()


def finish(broker: Broker, work: Path, *, keep: bool, lines_shown: int = 20) -> None:
    """Stop the broker, print the warnings and errors of its log, and remove (or keep) ``work``."""
    code = broker.stop()
    problems = broker.log_problems()
    if problems:
        print(f"\nbroker log: {len(problems)} warning/error lines, first ones:")
        for line in problems[:lines_shown]:
            print(f"  {line}")
    if code not in (0, None):
        print(f"broker exited with code {code}:\n{broker.log_tail()}")
    if keep:
        print(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


def fmt_load(load: tuple[float, float, float]) -> str:
    return " ".join(f"{x:.2f}" for x in load)


def peer_versions(python: str) -> dict[str, str | None]:
    out = subprocess.run([python, "-c", VERSIONS_CODE], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


class Broker:
    """A `python -m flowbus broker` child process on 127.0.0.1, port chosen by the broker (port 0)."""

    READY = re.compile(r"flowbus broker ready on ([0-9.]+):(\d+)")

    def __init__(self, data_dir: Path, log_path: Path) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = ""
        self.command = [sys.executable, "-m", "flowbus", "broker", "--data-dir", str(data_dir),
                        "--listen", "127.0.0.1:0"]

    def start(self, timeout: float = 60.0) -> str:
        with open(self.log_path, "wb") as log:
            # cwd outside the repository: `python -m flowbus` from the repo root would import the bare source
            # tree (without the operators/ and state/ package mapping) instead of the installed flowbus.
            self.proc = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=self.data_dir.parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = self.READY.search(self.log_path.read_text(errors="replace"))
            if match:
                self.address = f"{match.group(1)}:{match.group(2)}"
                return self.address
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"broker did not start (exit code {self.proc.poll()}):\n{self.log_tail()}")

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=30)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def log_problems(self) -> list[str]:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if re.search(r"\b(WARNING|ERROR|CRITICAL)\b|Traceback", line)]


def fill(bootstrap: str, events: int, words: int, seed: int) -> tuple[int, float]:
    """Create the topic and write the events; return (distinct words written, seconds)."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(TOPIC, PARTITIONS, 1)], operation_timeout=30).values():
        future.result(timeout=60)
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "linger.ms": 10,
                         "acks": "all"})
    failures: list[str] = []

    def on_delivery(err, _msg) -> None:  # type: ignore[no-untyped-def]
        if err is not None:
            failures.append(str(err))

    rng = random.Random(seed)
    names = [f"w{i:05d}".encode() for i in range(words)]
    payloads = [json.dumps({"word": name.decode()}).encode() for name in names]
    seen: set[int] = set()
    started = time.perf_counter()
    for _ in range(events):
        i = rng.randrange(words)
        seen.add(i)
        while True:
            try:
                producer.produce(TOPIC, payloads[i], names[i], on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    left = producer.flush(120)
    seconds = time.perf_counter() - started
    if left or failures:
        raise RuntimeError(f"producing failed: {left} undelivered, errors: {failures[:5]}")
    return len(seen), seconds


def end_offsets(bootstrap: str, topic: str) -> list[int]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"peers-check-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False})
    try:
        meta = consumer.list_topics(topic, timeout=30).topics[topic]
        return [consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
                for p in sorted(meta.partitions)]
    finally:
        consumer.close()


def committed_total(bootstrap: str, group: str) -> int:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        parts = consumer.committed([TopicPartition(TOPIC, p) for p in range(PARTITIONS)], timeout=30)
        return sum(max(tp.offset, 0) for tp in parts)
    finally:
        consumer.close()


def changelog_total(bootstrap: str, app_id: str) -> int:
    """Records in the app's changelog topics (flowbus and faust: <app>-counts-changelog; Quix:
    changelog__<group>--...)."""
    from confluent_kafka.admin import AdminClient

    topics = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=30).topics
    return sum(sum(end_offsets(bootstrap, name)) for name in topics if app_id in name and "changelog" in name)


def run_peer(args: argparse.Namespace, bootstrap: str, peer: str, index: int, work: Path, distinct: int) -> Run:
    events = args.faust_events if peer == "faust" else args.events
    app_id = f"peers-{peer}-r{index}-{uuid.uuid4().hex[:8]}"
    state_dir = work / "state" / f"{peer}-{index}"
    state_dir.mkdir(parents=True)
    cmd = [args.python, str(SCRIPTS[peer]), "--broker", bootstrap, "--events", str(events),
           "--state-dir", str(state_dir), "--app-id", app_id, *SCRIPT_ARGS.get(peer, ())]
    run = Run(peer, index, ok=False, load=loadavg())
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=args.timeout,
                              stdin=subprocess.DEVNULL, cwd=work)
    except subprocess.TimeoutExpired as exc:
        run.wall_s = time.perf_counter() - started
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        run.error = f"timed out after {args.timeout:.0f}s; stderr tail:\n" + "\n".join(err.splitlines()[-15:])
        return run
    finally:
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        run.cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        shutil.rmtree(state_dir, ignore_errors=True)
    run.wall_s = time.perf_counter() - started
    match = RESULT.search(proc.stdout)
    if proc.returncode != 0 or not match:
        run.error = (f"exit code {proc.returncode}; stdout: {proc.stdout.strip()[-300:]!r}; stderr tail:\n"
                     + "\n".join(proc.stderr.splitlines()[-15:]))
        return run
    run.ok = True
    run.events_per_s, run.events, run.seconds = float(match.group(1)), int(match.group(2)), float(match.group(3))
    found = DISTINCT.search(proc.stderr)
    run.distinct = int(found.group(1)) if found else None
    from confluent_kafka import KafkaException

    try:
        run.committed = committed_total(bootstrap, app_id)
        run.changelog = changelog_total(bootstrap, app_id)
    except (KafkaException, RuntimeError) as exc:  # a failed check is reported, the run's figure still stands
        run.notes.append(f"broker check failed: {exc!r}")
    if run.events != events:
        run.notes.append(f"processed {run.events}, expected {events}")
    if events == args.events:
        if run.distinct is not None and run.distinct != distinct:
            run.notes.append(f"counted {run.distinct} distinct words, the topic has {distinct}")
        if run.committed is not None and run.committed != args.events:
            run.notes.append(f"committed offsets sum to {run.committed}, expected {args.events}")
    elif run.committed is not None and run.committed < events:
        run.notes.append(f"committed offsets sum to {run.committed} < {events} processed")
    return run


def summarize(runs: list[Run], peers: list[str]) -> None:
    print("\nsummary (events/s from first to last processed event)")
    for peer in peers:
        ok = [r for r in runs if r.peer == peer and r.ok]
        failed = sum(1 for r in runs if r.peer == peer and not r.ok)
        if not ok:
            print(f"  {peer:7s}  no successful run ({failed} failed)")
            continue
        rates = [r.events_per_s for r in ok]
        walls = [r.wall_s for r in ok]
        print(f"  {peer:7s}  median {statistics.median(rates):10.1f} ev/s  range {min(rates):.1f} - {max(rates):.1f}"
              f"  ({len(ok)} runs of {ok[0].events} events{f', {failed} failed' if failed else ''});"
              f"  wall median {statistics.median(walls):.1f}s")
    # Each flowbus form against each other framework (the agent on a table is faust's program,
    # the dataflow count() is the shape of Quix's and Kafka Streams').
    for form in ("flowbus", "flowbus-dataflow"):
        ours = [r.events_per_s for r in runs if r.peer == form and r.ok]
        for peer in peers:
            theirs = [r.events_per_s for r in runs if r.peer == peer and r.ok]
            if not peer.startswith("flowbus") and ours and theirs:
                print(f"  {form} / {peer}: {statistics.median(ours) / statistics.median(theirs):.1f}x (medians)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_start = loadavg()
    print(f"load average at start: {fmt_load(load_start)}  (cpus: {os.cpu_count()})")
    versions = peer_versions(args.python)
    print(f"peer python: {args.python}")
    print("peer versions: " + ", ".join(f"{k}={v}" for k, v in versions.items()))
    missing = [p for p, pkg in (("faust", "faust-streaming"), ("quix", "quixstreams"))
               if p in args.peers and not versions.get(pkg)]
    if missing:
        print(f"error: {args.python} lacks {missing}; install the peers extra: pip install -e '.[peers]'",
              file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="flowbus-peers-"))
    broker = Broker(work / "data", work / "broker.log")
    runs: list[Run] = []
    try:
        bootstrap = broker.start()
        print(f"broker: {' '.join(broker.command)}  -> {bootstrap}")
        distinct, fill_s = fill(bootstrap, args.events, args.words, args.seed)
        offsets = end_offsets(bootstrap, TOPIC)
        print(f"filled {TOPIC!r}: {args.events} events, {distinct} distinct words, {fill_s:.1f}s; "
              f"per partition {offsets}")
        if sum(offsets) != args.events:
            print(f"warning: the topic holds {sum(offsets)} records, {args.events} were produced")
        print(f"runs: {args.runs} x {args.peers} interleaved; faust processes {args.faust_events} events, "
              f"flowbus and quix {args.events}\n")
        for index in range(args.runs):
            for peer in args.peers:
                run = run_peer(args, bootstrap, peer, index, work, distinct)
                runs.append(run)
                if run.ok:
                    print(f"  {peer:5s} run {index + 1}: events_per_s={run.events_per_s:.1f} events={run.events} "
                          f"seconds={run.seconds:.3f}  wall={run.wall_s:.1f}s cpu={run.cpu_s:.1f}s "
                          f"distinct={run.distinct} committed={run.committed} changelog_records={run.changelog} "
                          f"load={fmt_load(run.load)}", flush=True)
                else:
                    print(f"  {peer:5s} run {index + 1}: FAILED after {run.wall_s:.1f}s: {run.error}", flush=True)
                for note in run.notes:
                    print(f"      note: {note}", flush=True)
        summarize(runs, args.peers)
    finally:
        finish(broker, work, keep=args.keep)
    print(f"\nload average at start: {fmt_load(load_start)}; at end: {fmt_load(loadavg())}")
    return 0 if runs and all(r.ok for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
