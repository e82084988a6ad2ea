"""Which input partition the code running now is processing.

Tables need it: a table is partitioned like the stream that updates it, so a write made while
processing an event of ``orders[3]`` belongs to partition 3 of the table (and of its changelog).
Agents run as separate asyncio tasks and interleave at every ``await``, so a plain global would
let one agent's event leak into another's write: a :class:`~contextvars.ContextVar` is per task.
The stream sets it before handing an event to an agent; the worker sets it to each record before
running a dataflow on it (and back to ``None`` after the run), and a dataflow's outputs take that
record's timestamp and headers from it.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Protocol


class Source(Protocol):
    """Where an event comes from: a :class:`~flowbus.transports.base.TopicPartition`, or the
    :class:`~flowbus.transports.base.Record` itself (set as is, so no object is made per event)."""

    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...


current_source: ContextVar[Source | None] = ContextVar("flowbus_current_source", default=None)
"""The event being processed in this task (its topic partition, or the record), ``None`` outside any event."""
