from __future__ import annotations

from pathlib import Path

from flowbus.log.segment import LogSegment, SegmentLimits
from flowbus.log.segments import LogSegments

LIMITS = SegmentLimits(index_interval_bytes=4096, offset_index_max_entries=100, time_index_max_entries=100)


def test_floor_active_and_replacement(tmp_path: Path) -> None:
    segments = LogSegments()
    made = {base: LogSegment.create(tmp_path, base, LIMITS) for base in (0, 100, 250)}
    for base in (250, 0, 100):
        segments.add(made[base])
    assert [s.base_offset for s in segments] == [0, 100, 250]
    assert segments.active is made[250] and segments.first is made[0]
    assert segments.floor(99) is made[0] and segments.floor(100) is made[100] and segments.floor(10**9) is made[250]
    assert [s.base_offset for s in segments.from_offset(150)] == [100, 250]
    assert [s.base_offset for s in segments.inactive()] == [0, 100]
    assert segments.higher(made[0]) is made[100] and segments.higher(made[250]) is None
    replacement = LogSegment.create(tmp_path, 100, LIMITS, ".x")
    segments.add(replacement)
    assert segments.get(100) is replacement and len(segments) == 3
    segments.remove(made[0])
    assert segments.floor(50) is None
