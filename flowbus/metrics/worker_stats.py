"""What a worker counts as it processes: plain ints and :class:`LatencyHistogram` buckets.

The worker updates these per run of records (the records of one partition in one polled batch)
for dataflows, and per event for agents (an agent already costs an ``await`` per event). Nothing
here imports ``prometheus_client``; :mod:`flowbus.metrics.worker_collector` reads it at scrape
time, together with what is cheaper to read then (consumer lag, restore progress, state size).

Latency definitions (``docs/operations.md`` has the metric names):

* *processing*: the time the worker's code spent on the event. For a dataflow, the run's
  duration divided by its events (they are processed one after the other, so this is each
  one's mean); for an agent, from handing it the event to it asking for the next one.
* *end to end*: from the record's timestamp to the end of its processing, on the app's clock.
  For a dataflow run, the first and the last event of the run stand for half its events each
  (two clock reads per run, not one per event). Records without a timestamp are left out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from flowbus.metrics.histogram import DELAY_BOUNDS_S, LATENCY_BOUNDS_S, LatencyHistogram
from flowbus.transports.base import Record, RecordRun


class TopicEvents:
    """Counters of the events of one input topic."""

    __slots__ = ("end_to_end", "events_in", "now_ms", "processing")

    def __init__(self, now_ms: Callable[[], int]) -> None:
        #: Events polled and handed to the topic's dataflows and agents.
        self.events_in = 0
        self.processing = LatencyHistogram(LATENCY_BOUNDS_S)
        self.end_to_end = LatencyHistogram(DELAY_BOUNDS_S)
        self.now_ms = now_ms

    def ran(self, records: Sequence[Record], seconds: float) -> None:
        """A dataflow processed ``records`` (one partition's run) in ``seconds``."""
        self.ran_span(len(records), records[0].timestamp_ms, records[-1].timestamp_ms, seconds)

    def ran_run(self, run: RecordRun, seconds: float) -> None:
        """A dataflow processed ``run`` in ``seconds``."""
        self.ran_span(run.count, run.first_timestamp_ms, run.last_timestamp_ms, seconds)

    def ran_span(self, count: int, first_ms: int, last_ms: int, seconds: float) -> None:
        """``count`` events, timestamped from ``first_ms`` to ``last_ms``, processed in ``seconds``:
        the first half's end-to-end latency counted from the first timestamp, the rest's from the
        last."""
        self.processing.observe_many(seconds / count, count)
        now_ms = self.now_ms()
        half = count // 2
        if first_ms >= 0 and half:
            self.end_to_end.observe_many(max(now_ms - first_ms, 0) / 1000, half)
        if last_ms >= 0:
            self.end_to_end.observe_many(max(now_ms - last_ms, 0) / 1000, count - half)

    def processed_each(self, seconds: list[float], timestamps_ms: list[int]) -> None:
        """Agent events finished, event ``i`` after ``seconds[i]`` on it, with record timestamp
        ``timestamps_ms[i]``; their end-to-end latency counts to now. An agent's stream hands
        its events over in groups (see :class:`flowbus.stream.Stream`): an observation per event
        cost ~0.5 µs of an agent's ~3.4 µs per event."""
        self.processing.observe_each(seconds)
        now_ms = self.now_ms()
        self.end_to_end.observe_each([max(now_ms - ts, 0) / 1000 for ts in timestamps_ms if ts >= 0])

    def processed_many(self, seconds: float, records: Sequence[Record]) -> None:
        """An agent finished a list of events (``stream.take``) after ``seconds`` on it."""
        if records:
            self.ran(records, seconds)


class WorkerStats:
    """Every counter of one worker; see the module's documentation.

    Args:
        now_ms: the app clock's wall time (end-to-end latencies compare record timestamps to it).
    """

    def __init__(self, now_ms: Callable[[], int]) -> None:
        self.now_ms = now_ms
        #: Per input topic; bounded by the app's source topics.
        self.topics: dict[str, TopicEvents] = {}
        #: Commits that succeeded: flush, offsets (and the transaction under exactly-once).
        self.commits = LatencyHistogram(LATENCY_BOUNDS_S)

    def topic(self, name: str) -> TopicEvents:
        """The counters of input topic ``name``, made on first use."""
        found = self.topics.get(name)
        if found is None:
            found = self.topics[name] = TopicEvents(self.now_ms)
        return found
