"""A latency histogram that costs a bisect and three additions per observation.

``prometheus_client.Histogram`` takes a lock and walks its buckets on every ``observe``; this one
keeps non-cumulative bucket counts in a list and leaves the cumulative sums Prometheus wants to
scrape time (:meth:`LatencyHistogram.cumulative`). It is not thread-safe: each one is updated
from one event loop, and read by a collector running on that same loop.
"""

from __future__ import annotations

from bisect import bisect_left

#: Upper bounds of request and processing latencies, in seconds: from half a millisecond (a
#: Metadata request, one event of a dataflow) to a minute (a long-polling Fetch waits up to its
#: ``max_wait_ms``, 500 ms by default; a commit may wait for fsyncs).
LATENCY_BOUNDS_S: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)

#: Upper bounds of end-to-end and window-close latencies, in seconds: these are measured against
#: record timestamps and window ends, so a backlog being caught up shows minutes or hours.
DELAY_BOUNDS_S: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 86400.0,
)


class LatencyHistogram:
    """Counts of observations per bucket, their sum and their count.

    ``bucket_counts[i]`` counts observations ``<= bounds_s[i]`` and above the bound before it; the
    last entry counts those above every bound (Prometheus's ``+Inf`` bucket).

    Example::

        h = LatencyHistogram()
        h.observe(0.003)
        h.observe_many(0.0002, 10)     # ten events of one batch, each 0.2 ms
        h.count, h.cumulative()[-1]    # (11, ('+Inf', 11))
    """

    __slots__ = ("bounds_s", "bucket_counts", "count", "sum_s")

    def __init__(self, bounds_s: tuple[float, ...] = LATENCY_BOUNDS_S) -> None:
        assert list(bounds_s) == sorted(bounds_s), "bucket bounds must ascend"
        self.bounds_s = bounds_s
        self.bucket_counts = [0] * (len(bounds_s) + 1)
        self.sum_s = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        """Count one observation of ``seconds``."""
        self.bucket_counts[bisect_left(self.bounds_s, seconds)] += 1
        self.sum_s += seconds
        self.count += 1

    def observe_many(self, seconds: float, count: int) -> None:
        """Count ``count`` observations of ``seconds`` each (the events of one batch)."""
        self.bucket_counts[bisect_left(self.bounds_s, seconds)] += count
        self.sum_s += seconds * count
        self.count += count

    def observe_each(self, values_s: list[float]) -> None:
        """Count each of ``values_s`` (the events an agent finished since the last call): one
        call and one loop for many events, instead of an :meth:`observe` call each."""
        counts = self.bucket_counts
        bounds = self.bounds_s
        for seconds in values_s:
            counts[bisect_left(bounds, seconds)] += 1
        self.sum_s += sum(values_s)
        self.count += len(values_s)

    def cumulative(self) -> list[tuple[str, float]]:
        """``(le, count)`` pairs as Prometheus exposes them: cumulative, ending with ``+Inf``."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip(self.bounds_s, self.bucket_counts, strict=False):
            running += count
            out.append((_bound_label(bound), running))
        out.append(("+Inf", running + self.bucket_counts[-1]))
        return out


def _bound_label(bound: float) -> str:
    """``0.0005``, ``1.0``: what prometheus_client writes for its own bucket bounds."""
    return repr(float(bound))
