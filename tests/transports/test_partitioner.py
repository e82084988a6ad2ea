"""murmur2 must match Kafka's Java client bit for bit (vectors from Kafka's own UtilsTest)."""

from __future__ import annotations

import pytest

from flowbus.transports.partitioner import murmur2, partition_for_key


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"21", -973932308),
        (b"foobar", -790332482),
        (b"a-little-bit-long-string", -985981536),
        (b"a-little-bit-longer-string", -1486304829),
        (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
        (b"abc", 479470107),
    ],
)
def test_murmur2_matches_kafka(data: bytes, expected: int) -> None:
    assert murmur2(data) == expected


def test_partition_is_stable_and_in_range() -> None:
    assert all(0 <= partition_for_key(str(i).encode(), 7) < 7 for i in range(200))
    assert partition_for_key(b"user-1", 12) == partition_for_key(b"user-1", 12)
