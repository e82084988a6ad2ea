"""What the broker counts as it works: plain ints and dicts, per request and per batch.

:class:`BrokerStats` lives on the :class:`~flowbus.broker.core.BrokerCore` (``core.stats``), so
the produce and fetch paths count records and bytes per topic whether the request came over TCP
or from an embedded worker; the TCP server adds request latencies, connections and network bytes.
Nothing here imports ``prometheus_client``: :mod:`flowbus.metrics.broker_collector` reads these
counters when ``/metrics`` is scraped.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from flowbus.metrics.histogram import LatencyHistogram
from flowbus.records.header import (
    HEADER_SIZE,
    LOG_OVERHEAD,
    MIN_BATCH_LENGTH,
    BatchHeader,
)

#: Topics whose traffic is counted under their own name; beyond this many (a broker where topics
#: are created and deleted all day), new topics are counted under :data:`OTHER_TOPICS`. The
#: collector forgets deleted topics at each scrape, so the limit is only reached without scrapes.
TOPICS_TRACKED_MAX = 10_000
#: The ``topic`` label of the traffic of topics beyond :data:`TOPICS_TRACKED_MAX`.
OTHER_TOPICS = "__other__"

#: In a RecordBatch v2 (``flowbus/records/header.py``): ``batchLength`` (int32) after the int64
#: base offset, and ``recordCount`` (int32) as the header's last field, 57 bytes in.
_INT32 = struct.Struct(">i")
_BATCH_LENGTH_POS = 8
_RECORD_COUNT_POS = HEADER_SIZE - 4


class TopicTraffic:
    """Records and bytes of one topic: appended by producers, and served to fetches."""

    __slots__ = ("bytes_in", "bytes_out", "records_in", "records_out")

    def __init__(self) -> None:
        self.records_in = 0
        self.bytes_in = 0
        self.records_out = 0
        self.bytes_out = 0


class BrokerStats:
    """The broker's counters; see the module's documentation."""

    def __init__(self) -> None:
        self.topics: dict[str, TopicTraffic] = {}
        #: Request latency per API key (handler start to encoded response).
        self.requests: dict[int, LatencyHistogram] = {}
        #: Requests whose handler raised (answered UNKNOWN_SERVER_ERROR), per API key.
        self.request_errors: dict[int, int] = {}
        self.connections_accepted = 0
        #: Connections closed at once by ``max_connections`` or ``max_connections_per_address``.
        self.connections_refused = 0
        self.network_received_bytes = 0
        self.network_sent_bytes = 0

    def traffic(self, topic: str) -> TopicTraffic:
        """The counters of ``topic``, made on first use (see :data:`TOPICS_TRACKED_MAX`)."""
        found = self.topics.get(topic)
        if found is None:
            if len(self.topics) >= TOPICS_TRACKED_MAX:
                topic = OTHER_TOPICS
                found = self.topics.get(topic)
            if found is None:
                found = self.topics[topic] = TopicTraffic()
        return found

    def produced(self, topic: str, headers: list[BatchHeader], size_bytes: int) -> None:
        """A produce appended these batches (``size_bytes`` in all) to a partition of ``topic``."""
        traffic = self.traffic(topic)
        traffic.bytes_in += size_bytes
        for header in headers:  # one batch per partition from most producers
            traffic.records_in += header.record_count

    def fetched(self, topic: str, records: bytes | memoryview) -> None:
        """A fetch served these whole batches of ``topic``: a header walk, never per record.

        A batch is served whole, so a consumer starting in the middle of one counts the records
        before its position too (as Kafka's BytesOutPerSec counts the bytes).
        """
        traffic = self.traffic(topic)
        size = len(records)
        traffic.bytes_out += size
        count = 0
        pos = 0
        unpack = _INT32.unpack_from
        while pos + HEADER_SIZE <= size:  # bounded by the batches of one fetch response
            batch_length = unpack(records, pos + _BATCH_LENGTH_POS)[0]
            if batch_length < MIN_BATCH_LENGTH:
                break  # not a batch (the log validated them all): stop rather than loop
            count += unpack(records, pos + _RECORD_COUNT_POS)[0]
            pos += LOG_OVERHEAD + batch_length
        traffic.records_out += count

    def request_done(self, api_key: int, seconds: float) -> None:
        """One request of ``api_key`` was handled in ``seconds``."""
        histogram = self.requests.get(api_key)
        if histogram is None:
            histogram = self.requests[api_key] = LatencyHistogram()
        histogram.observe(seconds)

    def request_failed(self, api_key: int) -> None:
        """A request's handler raised (the client got UNKNOWN_SERVER_ERROR)."""
        self.request_errors[api_key] = self.request_errors.get(api_key, 0) + 1

    def forget_topics(self, exists: Callable[[str], bool]) -> None:
        """Drop the counters of deleted topics (a topic created again starts from zero, which
        Prometheus's ``rate()`` reads as a counter reset)."""
        for topic in [t for t in self.topics if t != OTHER_TOPICS and not exists(t)]:
            del self.topics[topic]
