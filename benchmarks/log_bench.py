"""Benchmark of flowbus.log: append and sequential-read throughput, and reopen after SIGKILL.

Run: ``python benchmarks/log_bench.py [--data-dir DIR] [--seconds S] [--reopen-bytes N]``

* Append: 100-byte records in batches of 1, 100 and 1000, one batch per ``append()``, with the
  default flush policy of flowbus (flush.ms=1000: an fsync at least every second). The batch is
  built once and appended repeatedly: the log copies it, patches the offset, checks the CRC,
  and writes it, which is exactly its per-batch work on the broker's produce path.
* Read: the same log read back from offset 0 with 1 MiB fetches (KIP-74 sized), from the page cache.
* Reopen: a child process appends ~1 GiB of 1000-record batches with flush.ms=1000 into one
  topic with Kafka's default 1 GiB segments, and is SIGKILLed while still appending; we time
  ``LogManager`` open (recovery from the last checkpoint) plus the first read.
* dd: ``dd if=/dev/zero bs=1M count=1024 conv=fdatasync`` on the same disk, for comparison.

The machine may be shared: figures vary between runs; take the best of a few.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from flowbus.log import LogManager
from flowbus.records import BatchBuilder

_PREFIX = struct.Struct(">qi")
_INT32 = struct.Struct(">i")
RECORD_VALUE_BYTES = 100
TIMESTAMP_MS = 1_700_000_000_000
#: Upper bound of bytes appended per batch size, whatever ``--seconds`` says.
MAX_APPEND_BYTES = 2 << 30
FETCH_BYTES = 1 << 20


def build_batch(count: int) -> bytes:
    builder = BatchBuilder()
    value = b"v" * RECORD_VALUE_BYTES
    for _ in range(count):
        builder.append(None, value, timestamp_ms=TIMESTAMP_MS)
    return builder.build()


def bench_append_and_read(data_dir: Path, records_per_batch: int, seconds: float) -> dict[str, float]:
    topic = f"bench-{records_per_batch}"
    with LogManager(data_dir) as manager:
        manager.create_topic(topic, 1, {"flush.ms": "1000"})
        plog = manager.get_log(topic, 0)
        batch = build_batch(records_per_batch)
        appended_bytes = 0
        records = 0
        started = time.perf_counter()
        deadline = started + seconds
        while True:  # bounded by the deadline and MAX_APPEND_BYTES
            for _ in range(64):
                result = plog.append(batch)
                appended_bytes += result.size_bytes
                records += result.record_count
            if time.perf_counter() >= deadline or appended_bytes >= MAX_APPEND_BYTES:
                break
        plog.flush()
        append_s = time.perf_counter() - started

        offset = 0
        read_bytes = 0
        first_fetch = plog.read(0, FETCH_BYTES)
        assert _next_offset_of_last_batch(first_fetch) == len(first_fetch) // len(batch) * records_per_batch
        end = plog.log_end_offset
        started = time.perf_counter()
        while offset < end:  # bounded: every read returns at least one batch
            data = plog.read(offset, FETCH_BYTES)
            read_bytes += len(data)
            # Every batch is the same size here, so the next offset is arithmetic: the figure
            # is the log's read cost, not a consumer's header walk (_next_offset_of_last_batch
            # checks it on the first fetch).
            offset += len(data) // len(batch) * records_per_batch
        read_s = time.perf_counter() - started
        assert read_bytes == plog.size_bytes
        manager.delete_topic(topic)
    return {
        "append_mb_s": appended_bytes / append_s / 1e6,
        "append_rec_s": records / append_s,
        "read_mb_s": read_bytes / read_s / 1e6,
        "read_rec_s": records / read_s,
        "bytes": appended_bytes,
    }


def _next_offset_of_last_batch(data: bytes) -> int:
    """What a consumer needs to fetch on: two header fields per batch, no record decoding."""
    position = 0
    next_offset = 0
    total = len(data)
    while position < total:  # bounded: advances by a whole batch per step
        base_offset, batch_length = _PREFIX.unpack_from(data, position)
        next_offset = base_offset + _INT32.unpack_from(data, position + 23)[0] + 1
        position += 12 + batch_length
    return next_offset


CHILD = r"""
import sys, time
sys.path.insert(0, {repo!r})
from flowbus.log import LogManager
from flowbus.records import BatchBuilder
manager = LogManager({data_dir!r})
manager.create_topic("reopen", 1, {{"flush.ms": "1000"}})
plog = manager.get_log("reopen", 0)
builder = BatchBuilder()
for _ in range(1000):
    builder.append(None, b"v" * 100, timestamp_ms=1_700_000_000_000)
batch = builder.build()
written = 0
announced = False
while True:
    written += plog.append(batch).size_bytes
    if not announced and written >= {target} and plog.recovery_point >= {min_flushed}:
        print("written", written, plog.recovery_point, plog.log_end_offset, flush=True)
        announced = True
"""


def bench_reopen(data_dir: Path, target_bytes: int, *, after_a_flush: bool) -> dict[str, float]:
    """Kill a child once it wrote ``target_bytes`` (and, with ``after_a_flush``, once a flush
    completed, so a checkpoint exists and only the data since then is re-validated)."""
    directory = data_dir / f"reopen-{int(after_a_flush)}"
    directory.mkdir()
    script = CHILD.format(
        repo=str(REPO), data_dir=str(directory), target=target_bytes, min_flushed=1 if after_a_flush else 0
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    assert child.stdout is not None
    line = child.stdout.readline().decode().split()
    time.sleep(0.05)  # still appending: the kill lands mid-append or between appends
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stdout.close()
    assert line and line[0] == "written", "child failed"
    started = time.perf_counter()
    manager = LogManager(directory)
    plog = manager.get_log("reopen", 0)
    first = plog.read(plog.log_start_offset, FETCH_BYTES)
    elapsed = time.perf_counter() - started
    result = {
        "reopen_s": elapsed,
        "log_bytes": plog.size_bytes,
        "revalidated_bytes": plog.bytes_validated_on_open,
        "bytes_cut": plog.bytes_cut_on_open,
        "first_read_bytes": len(first),
        "child_recovery_point": int(line[2]),
        "child_log_end": int(line[3]),
    }
    manager.close()
    return result


def bench_dd(directory: Path) -> str:
    target = directory / "ddtest"
    try:
        completed = subprocess.run(
            ["dd", "if=/dev/zero", f"of={target}", "bs=1M", "count=1024", "conv=fdatasync"],
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        target.unlink(missing_ok=True)
    match = re.search(r"copied, ([\d.]+) s, ([\d.]+ [kMG]B/s)", completed.stderr)
    return f"{match.group(2)} ({match.group(1)} s)" if match else completed.stderr.strip().splitlines()[-1]


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="  log: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=None, help="where to write (default: a temp dir in the repo)")
    parser.add_argument("--seconds", type=float, default=4.0, help="append time per batch size")
    parser.add_argument("--reopen-bytes", type=int, default=1 << 30, help="bytes the killed child writes")
    parser.add_argument("--skip-dd", action="store_true")
    args = parser.parse_args()
    base = args.data_dir or Path(tempfile.mkdtemp(prefix="log_bench.", dir=REPO))
    base.mkdir(parents=True, exist_ok=True)
    try:
        print(f"data dir: {base}  (cpus: {os.cpu_count()})")
        print(f"{'records/batch':>13} {'append MB/s':>12} {'append rec/s':>13} {'read MB/s':>10} {'read rec/s':>12} {'MB written':>11}")
        for count in (1, 100, 1000):
            r = bench_append_and_read(base / f"a{count}", count, args.seconds)
            print(
                f"{count:>13} {r['append_mb_s']:>12.1f} {r['append_rec_s']:>13,.0f} {r['read_mb_s']:>10.1f} "
                f"{r['read_rec_s']:>12,.0f} {r['bytes'] / 1e6:>11.0f}"
            )
        for after_a_flush in (False, True):
            r = bench_reopen(base, args.reopen_bytes, after_a_flush=after_a_flush)
            print(
                f"reopen after SIGKILL{' (after a flush)' if after_a_flush else ''}: "
                f"{r['reopen_s']:.3f} s for a {r['log_bytes'] / 2**30:.2f} GiB log "
                f"({r['revalidated_bytes'] / 1e6:.0f} MB re-validated, {r['bytes_cut']} bytes cut), "
                f"first read {r['first_read_bytes']} bytes; the child had flushed up to offset "
                f"{r['child_recovery_point']:,} of {r['child_log_end']:,}"
            )
        if not args.skip_dd:
            print(f"dd bs=1M count=1024 conv=fdatasync: {bench_dd(REPO)}")
    finally:
        if args.data_dir is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
