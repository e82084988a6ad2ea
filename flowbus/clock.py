"""Clocks passed into every component that reads time, so tests control time without sleeping.

Wall-clock time (``now_ms``) drives record timestamps, retention, segment age and cron
schedules; monotonic time (``monotonic_ms``) drives timeouts and intervals, which must not
jump when the system clock is set. Components take a :class:`Clock` argument and default to
:data:`SYSTEM_CLOCK`; tests pass a :class:`ManualClock` and call :meth:`ManualClock.advance`.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Source of wall-clock and monotonic time, both in milliseconds."""

    def now_ms(self) -> int:
        """Milliseconds since the Unix epoch."""
        ...

    def monotonic_ms(self) -> int:
        """Milliseconds on a clock that never goes backwards; only differences mean anything."""
        ...


class SystemClock:
    """The real clocks of the machine."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic_ms(self) -> int:
        return time.monotonic_ns() // 1_000_000


class ManualClock:
    """A clock that moves only when told to; both readings advance together.

    Example:
        >>> clock = ManualClock(now_ms=1_000)
        >>> clock.advance(250)
        >>> clock.now_ms()
        1250
    """

    def __init__(self, now_ms: int = 1_700_000_000_000, monotonic_ms: int = 0) -> None:
        self._now_ms = now_ms
        self._monotonic_ms = monotonic_ms

    def now_ms(self) -> int:
        return self._now_ms

    def monotonic_ms(self) -> int:
        return self._monotonic_ms

    def advance(self, delta_ms: int) -> None:
        """Move both clocks forward by ``delta_ms`` (which must not be negative)."""
        if delta_ms < 0:
            raise ValueError(f"a clock cannot go backwards (delta_ms={delta_ms})")
        self._now_ms += delta_ms
        self._monotonic_ms += delta_ms


SYSTEM_CLOCK: Clock = SystemClock()
