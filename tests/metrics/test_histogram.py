"""LatencyHistogram: each observation in the first bucket whose bound is at least it, cumulative
counts as Prometheus exposes them."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from flowbus.metrics.histogram import DELAY_BOUNDS_S, LATENCY_BOUNDS_S, LatencyHistogram


def test_bounds_are_inclusive_and_the_last_bucket_is_inf() -> None:
    h = LatencyHistogram((0.001, 0.01))
    h.observe(0.001)  # on the bound: in it (Prometheus's "le")
    h.observe(0.0011)
    h.observe(5.0)
    h.observe_many(0.0, 3)
    assert h.bucket_counts == [4, 1, 1]
    assert h.cumulative() == [("0.001", 4), ("0.01", 5), ("+Inf", 6)]
    assert h.count == 6
    assert abs(h.sum_s - (0.001 + 0.0011 + 5.0)) < 1e-12


@given(st.lists(st.tuples(st.floats(min_value=0, max_value=1e6, allow_nan=False), st.integers(1, 50)), max_size=50))
def test_cumulative_counts_match_the_observations(observations: list[tuple[float, int]]) -> None:
    for bounds in (LATENCY_BOUNDS_S, DELAY_BOUNDS_S):
        h = LatencyHistogram(bounds)
        for seconds, count in observations:
            h.observe_many(seconds, count)
        cumulative = h.cumulative()
        assert [le for le, _ in cumulative][-1] == "+Inf"
        assert cumulative[-1][1] == h.count == sum(c for _, c in observations)
        for (le, running), bound in zip(cumulative, bounds, strict=False):
            assert float(le) == bound
            assert running == sum(c for s, c in observations if s <= bound)


@given(st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), max_size=60))
def test_observe_each_counts_as_one_observe_per_value(values: list[float]) -> None:
    one_by_one, grouped = LatencyHistogram(), LatencyHistogram()
    for seconds in values:
        one_by_one.observe(seconds)
    grouped.observe_each(values)
    assert grouped.bucket_counts == one_by_one.bucket_counts and grouped.count == one_by_one.count
    assert abs(grouped.sum_s - one_by_one.sum_s) <= 1e-9 * max(1.0, one_by_one.sum_s)
