"""The ordered set of a partition's segments, with floor lookup and the active segment.

Segments are kept sorted by base offset in a plain list with a parallel list of base offsets for
``bisect``: partitions hold tens to thousands of segments, inserts happen only on roll (at the
end) and on the cleaner's swap (in place), so a balanced tree would buy nothing.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterator

from flowbus.log.segment import LogSegment


class LogSegments:
    """Segments of one partition sorted by base offset; the last one is the active segment."""

    def __init__(self) -> None:
        self._bases: list[int] = []
        self._segments: list[LogSegment] = []

    def __len__(self) -> int:
        return len(self._segments)

    def __iter__(self) -> Iterator[LogSegment]:
        return iter(list(self._segments))

    def __bool__(self) -> bool:
        return bool(self._segments)

    @property
    def active(self) -> LogSegment:
        """The segment appends go to: the one with the greatest base offset."""
        assert self._segments, "a partition log always has an active segment"
        return self._segments[-1]

    @property
    def first(self) -> LogSegment:
        assert self._segments
        return self._segments[0]

    def add(self, segment: LogSegment) -> None:
        """Insert ``segment``, or replace the segment with the same base offset."""
        i = bisect_left(self._bases, segment.base_offset)
        if i < len(self._bases) and self._bases[i] == segment.base_offset:
            self._segments[i] = segment
            return
        self._bases.insert(i, segment.base_offset)
        self._segments.insert(i, segment)

    def remove(self, segment: LogSegment) -> None:
        i = bisect_left(self._bases, segment.base_offset)
        assert i < len(self._bases) and self._segments[i] is segment, "removing a segment that is not held"
        del self._bases[i]
        del self._segments[i]

    def get(self, base_offset: int) -> LogSegment | None:
        i = bisect_left(self._bases, base_offset)
        if i < len(self._bases) and self._bases[i] == base_offset:
            return self._segments[i]
        return None

    def floor(self, offset: int) -> LogSegment | None:
        """The segment with the greatest base offset <= ``offset`` (Kafka's ``floorSegment``)."""
        i = bisect_right(self._bases, offset)
        return self._segments[i - 1] if i else None

    def from_offset(self, offset: int) -> list[LogSegment]:
        """The segment holding ``offset`` (or the first) and every later one, as a snapshot list."""
        i = max(0, bisect_right(self._bases, offset) - 1)
        return self._segments[i:]

    def higher(self, segment: LogSegment) -> LogSegment | None:
        """The segment right after ``segment``."""
        i = bisect_right(self._bases, segment.base_offset)
        return self._segments[i] if i < len(self._segments) else None

    def inactive(self) -> list[LogSegment]:
        """Every segment except the active one, oldest first."""
        return self._segments[:-1]

    @property
    def size_bytes(self) -> int:
        return sum(segment.size_bytes for segment in self._segments)
