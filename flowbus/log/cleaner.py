"""Log compaction (placeholder until the cleaner lands)."""

from __future__ import annotations

from typing import Sequence

from flowbus.clock import Clock


class LogCleaner:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def clean_some(self, logs: Sequence[object]) -> int:
        return 0
