"""BrokerStats: records counted from batch headers (never per record), topics bounded."""

from __future__ import annotations

import pytest

from flowbus.metrics import broker_stats
from flowbus.metrics.broker_stats import OTHER_TOPICS, BrokerStats
from flowbus.records.builder import BatchBuilder
from flowbus.records.header import read_header


def _batch(records: int) -> bytes:
    builder = BatchBuilder()
    for i in range(records):
        builder.append(None, b"v" * i, timestamp_ms=1)
    return builder.build()


def test_produced_and_fetched_count_records_and_bytes() -> None:
    stats = BrokerStats()
    first, second = _batch(7), _batch(3)
    stats.produced("t", [read_header(first)], len(first))
    stats.produced("t", [read_header(second)], len(second))
    stats.fetched("t", first + second)
    traffic = stats.topics["t"]
    assert (traffic.records_in, traffic.bytes_in) == (10, len(first) + len(second))
    assert (traffic.records_out, traffic.bytes_out) == (10, len(first) + len(second))


def test_fetched_stops_at_bytes_that_are_no_batch() -> None:
    stats = BrokerStats()
    stats.fetched("t", _batch(2) + b"\0" * 70)
    assert stats.topics["t"].records_out == 2


def test_topics_beyond_the_limit_share_one_entry_and_deleted_ones_are_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(broker_stats, "TOPICS_TRACKED_MAX", 2)
    stats = BrokerStats()
    for name in ("a", "b", "c", "d"):
        stats.traffic(name).records_in += 1
    assert sorted(stats.topics) == [OTHER_TOPICS, "a", "b"]
    assert stats.topics[OTHER_TOPICS].records_in == 2
    stats.forget_topics(lambda name: name == "a")
    assert sorted(stats.topics) == [OTHER_TOPICS, "a"]


def test_request_latencies_per_api() -> None:
    stats = BrokerStats()
    stats.request_done(0, 0.002)
    stats.request_done(0, 0.004)
    stats.request_failed(0)
    assert stats.requests[0].count == 2
    assert stats.request_errors == {0: 1}
