from __future__ import annotations

import pytest

from flowbus.clock import SYSTEM_CLOCK, ManualClock


def test_manual_clock_moves_only_when_advanced() -> None:
    clock = ManualClock(now_ms=5_000, monotonic_ms=10)
    assert (clock.now_ms(), clock.monotonic_ms()) == (5_000, 10)
    clock.advance(1_500)
    assert (clock.now_ms(), clock.monotonic_ms()) == (6_500, 1_510)


def test_manual_clock_refuses_to_go_backwards() -> None:
    with pytest.raises(ValueError, match="backwards"):
        ManualClock().advance(-1)


def test_system_clock_is_in_milliseconds() -> None:
    assert 1_600_000_000_000 < SYSTEM_CLOCK.now_ms() < 5_000_000_000_000
    first = SYSTEM_CLOCK.monotonic_ms()
    assert SYSTEM_CLOCK.monotonic_ms() >= first
