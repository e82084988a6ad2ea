"""Child process for test_crash.py and the benchmark: appends until killed.

Usage: ``python crash_writer.py DATA_DIR SEED [TARGET_BYTES] [FLUSH_EVERY]``

Every record's value starts with its own offset (8 bytes, big-endian), so the parent can check
after the kill that every record it reads is where it should be. After each ``flush()`` the
child prints the log end offset it made durable, one line per flush; the parent knows every
offset below the last line it read must survive the kill.
"""

from __future__ import annotations

import random
import struct
import sys

from flowbus.log import LogManager
from flowbus.log.errors import UnknownTopicError
from flowbus.records import BatchBuilder

TOPIC = "crash"
_OFFSET = struct.Struct(">q")


def build_batch(first_offset: int, count: int, value_size: int, timestamp_ms: int) -> bytes:
    builder = BatchBuilder()
    padding = b"x" * max(0, value_size - 8)
    for i in range(count):
        builder.append(None, _OFFSET.pack(first_offset + i) + padding, timestamp_ms=timestamp_ms)
    return builder.build()


def main() -> None:
    data_dir, seed = sys.argv[1], int(sys.argv[2])
    target_bytes = int(sys.argv[3]) if len(sys.argv) > 3 else 1 << 62
    flush_every = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    rng = random.Random(seed)
    manager = LogManager(data_dir)
    try:
        manager.topic(TOPIC)
    except UnknownTopicError:
        manager.create_topic(TOPIC, 1, {"segment.bytes": str(1 << 20), "flush.ms": "1000"})
    plog = manager.get_log(TOPIC, 0)
    print(f"ready {plog.log_end_offset}", flush=True)
    written = 0
    appends = 0
    while written < target_bytes:
        count = rng.choice((1, 10, 100, 1000)) if flush_every == 0 else 1000
        value_size = 100 if flush_every else rng.choice((8, 100, 400))
        result = plog.append(build_batch(plog.log_end_offset, count, value_size, 1_700_000_000_000))
        written += result.size_bytes
        appends += 1
        if flush_every == 0 and rng.random() < 0.2:
            plog.flush()
            print(plog.recovery_point, flush=True)
        elif flush_every == 0:
            continue
        else:
            manager.tick()
    print("done", flush=True)


if __name__ == "__main__":
    main()
