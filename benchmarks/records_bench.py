"""Encode and decode throughput of flowbus.records, per codec.

Builds batches of ``--batch-records`` records with ``--value-bytes``-byte values (half
random, half repeated so that codecs have something to do, like typical JSON payloads),
then times :class:`BatchBuilder` (append + build) and :func:`decode_batch`. MB/s counts
uncompressed record payload (key + value bytes), so codecs are comparable.

Run: ``python benchmarks/records_bench.py [--codecs none,zstd] [--seconds 1.0]``.
Figures on a shared machine are noisy: take the best of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import functools
import random
import time
from collections.abc import Callable

from flowbus.records import BatchBuilder, Codec, decode_batch


def make_values(count: int, value_bytes: int, seed: int) -> list[bytes]:
    """Values that compress roughly 2:1: a random half and a repeated half."""
    rng = random.Random(seed)
    random_bytes = value_bytes // 2
    return [rng.randbytes(random_bytes) + b"a" * (value_bytes - random_bytes) for _ in range(count)]


def build_batch(codec: Codec, keys: list[bytes], values: list[bytes], base_timestamp_ms: int) -> bytes:
    builder = BatchBuilder(codec)
    for i, (key, value) in enumerate(zip(keys, values, strict=True)):
        builder.append(key, value, timestamp_ms=base_timestamp_ms + i)
    return builder.build()


def best_rate(work: Callable[[], object], seconds: float, repeat: int) -> float:
    """Best calls per second of ``work`` over ``repeat`` runs of about ``seconds`` each."""
    best = 0.0
    for _ in range(repeat):
        calls = 0
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            work()
            calls += 1
            now = time.perf_counter()
            if now >= deadline:
                break
        best = max(best, calls / (now - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-records", type=int, default=1000)
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=1.0, help="duration of one timed run")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per figure; the best is kept")
    parser.add_argument("--codecs", default=",".join(c.name.lower() for c in Codec))
    args = parser.parse_args()

    keys = [b"key-%08d" % i for i in range(args.batch_records)]
    values = make_values(args.batch_records, args.value_bytes, seed=42)
    payload_bytes = sum(map(len, keys)) + sum(map(len, values))
    timestamp_ms = 1_700_000_000_000

    print(
        f"{args.batch_records} records/batch, {args.value_bytes}-byte values, "
        f"{payload_bytes / args.batch_records:.0f} payload bytes/record; best of {args.repeat} x {args.seconds}s"
    )
    columns = ("batch B", "encode rec/s", "encode MB/s", "decode rec/s", "decode MB/s")
    print(f"{'codec':<7} {columns[0]:>8} {columns[1]:>13} {columns[2]:>12} {columns[3]:>13} {columns[4]:>12}")
    for name in args.codecs.split(","):
        codec = Codec[name.strip().upper()]
        batch = build_batch(codec, keys, values, timestamp_ms)
        _, records = decode_batch(batch)
        assert [r.value for r in records] == values, "round trip failed"
        encode = functools.partial(build_batch, codec, keys, values, timestamp_ms)
        encode_batches_s = best_rate(encode, args.seconds, args.repeat)
        decode_batches_s = best_rate(functools.partial(decode_batch, batch), args.seconds, args.repeat)
        print(
            f"{codec.name.lower():<7} {len(batch):>8} "
            f"{encode_batches_s * args.batch_records:>13,.0f} {encode_batches_s * payload_bytes / 1e6:>12.1f} "
            f"{decode_batches_s * args.batch_records:>13,.0f} {decode_batches_s * payload_bytes / 1e6:>12.1f}"
        )


if __name__ == "__main__":
    main()
