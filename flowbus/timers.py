"""Time-driven work, all read from the app's clock so tests move time instead of sleeping.

:class:`Scheduler` keeps a heap of deadlines on the clock's monotonic milliseconds. With the
system clock a driver task sleeps until the nearest deadline; with a
:class:`~flowbus.clock.ManualClock` nothing fires until the test harness advances the clock and
calls :meth:`Scheduler.fire_due`. Timers (``@app.timer``), cron jobs (``@app.crontab``),
``take(n, within=...)`` and, later, windows closing on wall-clock time all sit on top of it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import heapq
import inspect
import itertools
import logging
import zoneinfo
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from flowbus.clock import Clock, ManualClock

log = logging.getLogger("flowbus.timers")

TIMER_CATCH_UP_MAX = 100
"""At most this many missed runs of one timer are made up after the clock jumps; then it skips ahead."""


class Scheduler:
    """Callbacks at monotonic deadlines, driven by real time or by the test harness."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.manual = isinstance(clock, ManualClock)
        self._heap: list[tuple[int, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._changed = asyncio.Event()

    def call_at(self, monotonic_ms: int, callback: Callable[[], None]) -> None:
        """Run ``callback`` (synchronous, quick) once the monotonic clock reaches ``monotonic_ms``."""
        heapq.heappush(self._heap, (monotonic_ms, next(self._seq), callback))
        self._changed.set()

    async def sleep_until(self, monotonic_ms: int) -> None:
        """Return once the clock reaches ``monotonic_ms``; immediately if it already has."""
        if self.clock.monotonic_ms() >= monotonic_ms:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not fut.done():
                fut.set_result(None)

        self.call_at(monotonic_ms, wake)
        await fut

    def fire_due(self) -> int:
        """Run every callback whose deadline has passed; returns how many ran."""
        now = self.clock.monotonic_ms()
        fired = 0
        while self._heap and self._heap[0][0] <= now:
            _, _, callback = heapq.heappop(self._heap)
            fired += 1
            try:
                callback()
            except Exception:
                log.exception("scheduled callback failed")
        return fired

    def next_deadline_ms(self) -> int | None:
        return self._heap[0][0] if self._heap else None

    async def run(self) -> None:
        """The driver: fire callbacks as real time passes (or when poked, with a manual clock)."""
        while True:
            self.fire_due()
            self._changed.clear()
            deadline = self.next_deadline_ms()
            if deadline is None or self.manual:
                await self._changed.wait()
                continue
            delay_s = max(0.0, (deadline - self.clock.monotonic_ms()) / 1000)
            try:
                await asyncio.wait_for(self._changed.wait(), delay_s)
            except TimeoutError:
                pass

    def poke(self) -> None:
        """Wake the driver (the harness calls this after advancing a manual clock)."""
        self._changed.set()


async def call_maybe_async(fn: Callable[..., Any], *args: Any) -> Any:
    result = fn(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


async def _guarded_call(fn: Callable[[], Any], guard: asyncio.Lock | None, kind: str) -> None:
    try:
        if guard is None:
            await call_maybe_async(fn)
        else:
            async with guard:
                await call_maybe_async(fn)
    except Exception:
        log.exception("%s %s failed", kind, getattr(fn, "__qualname__", fn))


@dataclass
class TimerSpec:
    """A function to run every ``interval_ms``; with ``on_leader`` only on the group's leader worker."""

    fn: Callable[[], Awaitable[None] | None]
    interval_ms: int
    on_leader: bool = False


@dataclass
class CronSpec:
    """A function to run on a cron schedule in a time zone (default UTC)."""

    fn: Callable[[], Awaitable[None] | None]
    expression: str
    timezone: dt.tzinfo
    on_leader: bool = False


def parse_timezone(tz: str | dt.tzinfo | None) -> dt.tzinfo:
    if tz is None:
        return dt.UTC
    if isinstance(tz, str):
        return zoneinfo.ZoneInfo(tz)
    return tz


async def run_timer(
    spec: TimerSpec, scheduler: Scheduler, is_leader: Callable[[], bool], guard: asyncio.Lock | None = None
) -> None:
    """Call ``spec.fn`` every interval; a failing call is logged and the timer keeps running.

    ``guard`` is held during each call: the worker takes it to commit, so what a timer sends
    never straddles a commit (under exactly-once it lands in one transaction).
    """
    clock = scheduler.clock
    next_ms = clock.monotonic_ms() + spec.interval_ms
    while True:
        await scheduler.sleep_until(next_ms)
        if not spec.on_leader or is_leader():
            await _guarded_call(spec.fn, guard, "timer")
        next_ms += spec.interval_ms
        now = clock.monotonic_ms()
        if now - next_ms > TIMER_CATCH_UP_MAX * spec.interval_ms:
            next_ms = now + spec.interval_ms


def next_cron_ms(expression: str, tz: dt.tzinfo, now_ms: int) -> int:
    """Wall-clock milliseconds of the first cron match strictly after ``now_ms``."""
    # Imported here: croniter (and dateutil) cost every worker start ~7 ms, and most apps have no cron job.
    from croniter import croniter

    start = dt.datetime.fromtimestamp(now_ms / 1000, tz)
    nxt: dt.datetime = croniter(expression, start).get_next(dt.datetime)
    return int(nxt.timestamp() * 1000)


async def run_crontab(
    spec: CronSpec, scheduler: Scheduler, is_leader: Callable[[], bool], guard: asyncio.Lock | None = None
) -> None:
    """Call ``spec.fn`` at each cron match; wall time picks the match, monotonic time waits for it."""
    clock = scheduler.clock
    while True:
        now_ms = clock.now_ms()
        wait_ms = next_cron_ms(spec.expression, spec.timezone, now_ms) - now_ms
        await scheduler.sleep_until(clock.monotonic_ms() + wait_ms)
        if not spec.on_leader or is_leader():
            await _guarded_call(spec.fn, guard, "crontab")
