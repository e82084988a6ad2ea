"""Throughput of the broker's protocol hot path: decode a Produce request, encode a Fetch response.

Run: ``python benchmarks/protocol_bench.py [--seconds 2]``. Prints requests/s for

* decoding a Produce v9 request (flexible, header v2) carrying one 16 KiB record batch -- records stay
  a zero-copy memoryview, so this measures per-request overhead, not byte copying;
* encoding a Fetch v12 response (flexible) with 6 partitions, 16 KiB of records each, including the
  final copy into ``bytes``;
* encoding the same response with empty partitions (pure per-field overhead).

Figures on a shared machine are noisy: each case runs several rounds and prints the best and the median.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from flowbus.protocol.api import ApiKey
from flowbus.protocol.codec import (
    RequestHeader,
    decode_request,
    encode_request,
    encode_response,
)

BATCH_BYTES = 16 * 1024
FETCH_PARTITIONS = 6


def produce_v9_frame() -> bytes:
    body = {"transactional_id": None, "acks": -1, "timeout_ms": 30_000, "topic_data": [
        {"name": "bench-topic", "partition_data": [{"index": 0, "records": b"\xab" * BATCH_BYTES}]}]}
    return encode_request(ApiKey.PRODUCE, 9, 1, "bench-client", body)[4:]


def fetch_v12_body(records_bytes: int) -> dict[str, object]:
    records = b"\xcd" * records_bytes
    return {"throttle_time_ms": 0, "error_code": 0, "session_id": 0, "responses": [{"topic": "bench-topic", "partitions": [
        {"partition_index": p, "error_code": 0, "high_watermark": 1_000_000 + p, "last_stable_offset": 1_000_000 + p,
         "log_start_offset": 0, "aborted_transactions": None, "preferred_read_replica": -1, "records": records}
        for p in range(FETCH_PARTITIONS)]}]}


def rate(label: str, operation: Callable[[], object], seconds: float, rounds: int = 5) -> float:
    """Best and median requests/s over ``rounds`` timed rounds (best is the least disturbed by
    other processes on a shared machine)."""
    for _ in range(200):  # warm up (plan caches, allocator)
        operation()
    results: list[float] = []
    for _ in range(rounds):
        count = 0
        start = time.perf_counter()
        deadline = start + seconds / rounds
        while True:
            for _ in range(100):
                operation()
            count += 100
            now = time.perf_counter()
            if now >= deadline:
                break
        results.append(count / (now - start))
    best = max(results)
    median = statistics.median(results)
    print(f"{label:<52} best {best:>9,.0f} req/s ({1e6 / best:6.2f} us)   median {median:>9,.0f} req/s")
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time per case")
    args = parser.parse_args()

    frame = produce_v9_frame()
    header = RequestHeader(int(ApiKey.FETCH), 12, 1, "bench-client")
    full = fetch_v12_body(BATCH_BYTES)
    empty = fetch_v12_body(0)
    rate(f"decode Produce v9 request, 1 x {BATCH_BYTES // 1024} KiB batch", lambda: decode_request(frame), args.seconds)
    rate(f"encode Fetch v12 response, {FETCH_PARTITIONS} partitions x {BATCH_BYTES // 1024} KiB",
         lambda: encode_response(header, full), args.seconds)
    rate(f"encode Fetch v12 response, {FETCH_PARTITIONS} partitions, no records",
         lambda: encode_response(header, empty), args.seconds)


if __name__ == "__main__":
    main()
