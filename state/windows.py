"""Window definitions: which windows a record's event time falls in, and when each one closes.

Every window is a half-open interval of event time ``[start, end)`` in milliseconds, and closes
when the *watermark* (see :mod:`flowbus.state.windowed`) reaches its close time. Once closed, a
window never changes again: its final result is emitted, it is deleted from the store, and a
record that would still fall in it is late.

* :class:`Tumbling` ``(size)``: back-to-back windows ``[k·size, (k+1)·size)``; a record is in one.
* :class:`Hopping` ``(size, step)``: windows of ``size`` starting every ``step``; a record is in
  ``size / step`` of them.
* :class:`Sliding` ``(size)``: one window per record, ending with it: a record at ``t`` opens
  ``[t - size + 1, t + 1)`` (the last ``size`` milliseconds up to and including ``t``) and counts
  in the windows of every later record less than ``size`` after it.
* :class:`Session` ``(gap)``: records of one key less than ``gap`` apart form one window
  ``[first, last + 1)``; the session closes once no record can extend it any more.

Each takes a ``grace_ms``: how long after its end a window still accepts out-of-order records.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import timedelta
from typing import NamedTuple

_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
_SPAN = struct.Struct(">QQ")

TIME_MAX_MS = (1 << 63) - 1
"""The largest event time flowbus accepts (Kafka timestamps are signed 64-bit milliseconds)."""


def as_ms(value: int | float | timedelta, what: str, *, seconds: bool = False, minimum: int = 0) -> int:
    """A duration in milliseconds from an int of milliseconds (``seconds=True``: a number of
    seconds, faust style) or a :class:`~datetime.timedelta`; refuses what is below ``minimum``."""
    if isinstance(value, timedelta):
        ms = int(value.total_seconds() * 1000)
    elif isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} must be a number or a timedelta, not {type(value).__name__}")
    else:
        ms = int(round(value * 1000)) if seconds else int(value)
    if ms < minimum:
        raise ValueError(f"{what} must be at least {minimum} ms (got {ms} ms)")
    return ms


class WindowRange(NamedTuple):
    """One window: ``start <= event time < end``, in milliseconds."""

    start: int
    end: int


@dataclass(frozen=True)
class WindowSpec:
    """What every window kind has: a name for messages, and a grace period."""

    grace_ms: int

    kind = "window"

    def describe(self) -> str:
        raise NotImplementedError

    def retention_ms(self) -> int:
        """How long (event time) a window lives at most: its changelog keeps records that long."""
        raise NotImplementedError


@dataclass(frozen=True)
class Tumbling(WindowSpec):
    size_ms: int = 0

    kind = "tumbling"

    def __post_init__(self) -> None:
        if self.size_ms < 1:
            raise ValueError(f"a tumbling window needs a size of at least 1 ms (got {self.size_ms})")

    def windows(self, timestamp_ms: int) -> list[WindowRange]:
        start = timestamp_ms - timestamp_ms % self.size_ms
        return [WindowRange(start, start + self.size_ms)]

    def describe(self) -> str:
        return f"tumbling {self.size_ms} ms (grace {self.grace_ms} ms)"

    def retention_ms(self) -> int:
        return self.size_ms + self.grace_ms


@dataclass(frozen=True)
class Hopping(WindowSpec):
    size_ms: int = 0
    step_ms: int = 0

    kind = "hopping"

    def __post_init__(self) -> None:
        if self.size_ms < 1 or self.step_ms < 1:
            raise ValueError(f"a hopping window needs size and step of at least 1 ms (got {self.size_ms}, {self.step_ms})")
        if self.step_ms > self.size_ms:
            raise ValueError(
                f"a hopping window's step ({self.step_ms} ms) is larger than its size ({self.size_ms} ms): "
                f"records between windows would be lost; use a step <= size"
            )

    def windows(self, timestamp_ms: int) -> list[WindowRange]:
        """Every window containing the time, oldest first (windows start at multiples of step)."""
        size, step = self.size_ms, self.step_ms
        last_start = timestamp_ms - timestamp_ms % step
        first_start = max(last_start - size + step, 0)
        first_start -= first_start % step
        out = []
        start = first_start
        while start <= last_start:
            if start + size > timestamp_ms:
                out.append(WindowRange(start, start + size))
            start += step
        return out

    def describe(self) -> str:
        return f"hopping {self.size_ms} ms every {self.step_ms} ms (grace {self.grace_ms} ms)"

    def retention_ms(self) -> int:
        return self.size_ms + self.grace_ms


@dataclass(frozen=True)
class Sliding(WindowSpec):
    size_ms: int = 0

    kind = "sliding"

    def __post_init__(self) -> None:
        if self.size_ms < 1:
            raise ValueError(f"a sliding window needs a size of at least 1 ms (got {self.size_ms})")

    def window_ending_at(self, timestamp_ms: int) -> WindowRange:
        return WindowRange(max(timestamp_ms - self.size_ms + 1, 0), timestamp_ms + 1)

    def describe(self) -> str:
        return f"sliding {self.size_ms} ms (grace {self.grace_ms} ms)"

    def retention_ms(self) -> int:
        return self.size_ms + self.grace_ms


@dataclass(frozen=True)
class Session(WindowSpec):
    gap_ms: int = 0

    kind = "session"

    def __post_init__(self) -> None:
        if self.gap_ms < 1:
            raise ValueError(f"a session window needs an inactivity gap of at least 1 ms (got {self.gap_ms})")

    def describe(self) -> str:
        return f"session, gap {self.gap_ms} ms (grace {self.grace_ms} ms)"

    def retention_ms(self) -> int:
        return self.gap_ms + self.grace_ms


# -- keys in the window store ----------------------------------------------------------------
# A window store holds, per partition, records of a few kinds, each key starting with its kind:
#   WINDOW  ‖ u32 len ‖ key ‖ u64 start ‖ u64 end  -> aggregate of one window (tumbling, hopping)
#   SESSIONS‖ u32 len ‖ key                        -> the open sessions of a key
#   ENTRIES ‖ u32 len ‖ key                        -> a sliding window's buffered records of a key
#   TIME (the empty key)                           -> [stream time, watermark] of the partition
# Big-endian integers make byte order time order; the length prefix keeps keys that are
# prefixes of each other apart without any separator byte.
KIND_WINDOW = b"W"
KIND_SESSIONS = b"S"
KIND_ENTRIES = b"E"
TIME_KEY = b""


def key_prefix(kind: bytes, key: bytes) -> bytes:
    return kind + _U32.pack(len(key)) + key


def window_key(prefix: bytes, start_ms: int, end_ms: int) -> bytes:
    return prefix + _SPAN.pack(start_ms, end_ms)


def split_key(data_key: bytes) -> tuple[bytes, bytes, WindowRange | None]:
    """(kind, user key bytes, window or None) of a store key."""
    kind = data_key[:1]
    (length,) = _U32.unpack_from(data_key, 1)
    key = data_key[5 : 5 + length]
    if kind == KIND_WINDOW:
        start, end = _SPAN.unpack_from(data_key, 5 + length)
        return kind, key, WindowRange(start, end)
    return kind, key, None


def split_window_key(data_key: bytes) -> tuple[bytes, int, int]:
    """(user key bytes, window start, window end) of a :data:`KIND_WINDOW` store key, without
    the :class:`WindowRange` that :func:`split_key` builds (closing calls this per window)."""
    (length,) = _U32.unpack_from(data_key, 1)
    start, end = _SPAN.unpack_from(data_key, 5 + length)
    return data_key[5 : 5 + length], start, end


# The close index: u64 close time ‖ store key -> b"". An entry means "at this watermark, look at
# this key": what is due there is closed, the rest stays. Entries that find nothing are harmless.
def index_key(close_ms: int, data_key: bytes) -> bytes:
    return _U64.pack(close_ms) + data_key


def index_bound(close_ms: int) -> bytes:
    """The smallest index key of a close time (``index_bound(t + 1)`` ends a scan up to ``t``)."""
    return _U64.pack(min(close_ms, TIME_MAX_MS))


def split_index_key(ikey: bytes) -> tuple[int, bytes]:
    return _U64.unpack_from(ikey)[0], ikey[8:]
