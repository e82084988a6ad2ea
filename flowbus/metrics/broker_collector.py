"""The broker's Prometheus collector: counters kept on the hot paths, state read at scrape time.

Registered on a registry of the broker's own (never ``prometheus_client``'s global one), so
several brokers in one process (tests, embedded workers) each expose only their own numbers.
Everything is read on the broker's event loop, where the core's dicts are changed, so a scrape
never sees one half-updated; the work is a walk over the open partitions, the groups' committed
offsets and the transactional ids (a few milliseconds with thousands of partitions).

Every name is listed, with its type, labels and meaning, in ``docs/operations.md``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from flowbus.broker.txn_state import TxnState
from flowbus.protocol.api import ApiKey
from flowbus.protocol.error_codes import ErrorCode

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from flowbus.broker.core import BrokerCore
    from flowbus.broker.server import BrokerServer

#: States of a transactional id whose transaction is open: begun and not yet completed.
OPEN_TXN_STATES = frozenset({TxnState.ONGOING, TxnState.PREPARE_COMMIT, TxnState.PREPARE_ABORT,
                             TxnState.PREPARE_EPOCH_FENCE})


def api_name(api_key: int) -> str:
    """``Produce``, ``Fetch``, ``ListOffsets``: Kafka's own spelling of the API, as its
    ``kafka.network:type=RequestMetrics,request=...`` metrics name it."""
    try:
        return "".join(part.capitalize() for part in ApiKey(api_key).name.split("_"))
    except ValueError:
        return f"Api{api_key}"


class BrokerCollector(Collector):
    """Reads :class:`~flowbus.metrics.broker_stats.BrokerStats` and the core's state.

    Args:
        core: the broker core (its logs, group and transaction coordinators, and ``stats``).
        server: the TCP server, for connection counts; None for a core served only in-process.
    """

    def __init__(self, core: BrokerCore, server: BrokerServer | None = None) -> None:
        self.core = core
        self.server = server

    def describe(self) -> list[Metric]:
        """Nothing: registering must not run a scrape (the registry would collect to find names)."""
        return []

    def collect(self) -> Iterator[Metric]:
        yield from self._requests()
        yield from self._network()
        yield from self._topics()
        yield from self._partitions()
        yield from self._groups()
        yield from self._transactions()

    # -- requests and connections -----------------------------------------------------------

    def _requests(self) -> Iterator[Metric]:
        stats = self.core.stats
        requests = CounterMetricFamily("flowbus_broker_requests", "Requests handled, per API.", labels=["api"])
        durations = HistogramMetricFamily(
            "flowbus_broker_request_duration_seconds",
            "Time from a request's dispatch to its encoded response, per API (a Fetch includes its long poll).",
            labels=["api"],
        )
        for api_key, histogram in sorted(stats.requests.items()):
            name = api_name(api_key)
            requests.add_metric([name], histogram.count)
            durations.add_metric([name], histogram.cumulative(), histogram.sum_s)
        errors = CounterMetricFamily(
            "flowbus_broker_request_errors",
            "Requests whose handler failed (answered UNKNOWN_SERVER_ERROR), per API.",
            labels=["api"],
        )
        for api_key, count in sorted(stats.request_errors.items()):
            errors.add_metric([api_name(api_key)], count)
        yield requests
        yield durations
        yield errors

    def _network(self) -> Iterator[Metric]:
        stats = self.core.stats
        if self.server is not None:
            yield GaugeMetricFamily("flowbus_broker_connections", "Client connections open now.",
                                    value=len(self.server.connections))
        yield CounterMetricFamily("flowbus_broker_connections_accepted", "Client connections accepted.",
                                  value=stats.connections_accepted)
        yield CounterMetricFamily(
            "flowbus_broker_connections_refused",
            "Connections closed at once by --max-connections or --max-connections-per-address.",
            value=stats.connections_refused,
        )
        yield CounterMetricFamily("flowbus_broker_network_received_bytes",
                                  "Bytes read from client connections.", value=stats.network_received_bytes)
        yield CounterMetricFamily("flowbus_broker_network_sent_bytes",
                                  "Bytes of responses written to client connections.", value=stats.network_sent_bytes)

    # -- topics and partitions ----------------------------------------------------------------

    def _topics(self) -> Iterator[Metric]:
        stats = self.core.stats
        stats.forget_topics(self.core.logs.has_topic)
        families = {
            "records_in": CounterMetricFamily(
                "flowbus_broker_topic_records_in", "Records appended by producers, per topic.", labels=["topic"]),
            "bytes_in": CounterMetricFamily(
                "flowbus_broker_topic_bytes_in", "Bytes of record batches appended by producers, per topic.",
                labels=["topic"]),
            "records_out": CounterMetricFamily(
                "flowbus_broker_topic_records_out", "Records in the batches served to fetches, per topic.",
                labels=["topic"]),
            "bytes_out": CounterMetricFamily(
                "flowbus_broker_topic_bytes_out", "Bytes of record batches served to fetches, per topic.",
                labels=["topic"]),
        }
        for topic, traffic in sorted(stats.topics.items()):
            for field, family in families.items():
                family.add_metric([topic], getattr(traffic, field))
        yield from families.values()

    def _partitions(self) -> Iterator[Metric]:
        logs = self.core.logs
        yield GaugeMetricFamily("flowbus_broker_partitions", "Partitions of every topic, internal ones included.",
                                value=logs.partition_count())
        labels = ["topic", "partition"]
        start = GaugeMetricFamily("flowbus_broker_partition_log_start_offset",
                                  "First offset still in the partition's log.", labels=labels)
        end = GaugeMetricFamily("flowbus_broker_partition_end_offset",
                                "The partition's log end offset (its high watermark on a single broker).",
                                labels=labels)
        size = GaugeMetricFamily("flowbus_broker_partition_size_bytes",
                                 "Bytes of the partition's segment files.", labels=labels)
        segments = GaugeMetricFamily("flowbus_broker_partition_segments",
                                     "Segments of the partition's log.", labels=labels)
        for plog in sorted(logs.logs(), key=lambda p: (p.topic, p.partition)):  # open logs only
            if plog.closed:
                continue
            values = [plog.topic, str(plog.partition)]
            start.add_metric(values, plog.log_start_offset)
            end.add_metric(values, plog.high_watermark)
            size.add_metric(values, plog.size_bytes)
            segments.add_metric(values, plog.segment_count)
        yield start
        yield end
        yield size
        yield segments

    # -- groups -------------------------------------------------------------------------------

    def _groups(self) -> Iterator[Metric]:
        groups = self.core.groups
        code, listings = groups.list_groups()
        if code != ErrorCode.NONE:
            return  # still loading __consumer_offsets: no group is known yet
        by_state = GaugeMetricFamily("flowbus_broker_groups", "Consumer groups, per state.", labels=["state"])
        counts: dict[str, int] = {}
        for listing in listings:
            counts[listing.state] = counts.get(listing.state, 0) + 1
        for state, count in sorted(counts.items()):
            by_state.add_metric([state], count)
        yield by_state
        ends = {(p.topic, p.partition): p.high_watermark for p in self.core.logs.logs() if not p.closed}
        members = GaugeMetricFamily("flowbus_broker_group_members", "Members of each group.", labels=["group"])
        labels = ["group", "topic", "partition"]
        committed = GaugeMetricFamily("flowbus_broker_group_committed_offset",
                                      "The group's committed offset (the next offset it reads).", labels=labels)
        lag = GaugeMetricFamily("flowbus_broker_group_lag",
                                "Records of the partition after the group's committed offset (end offset - committed).",
                                labels=labels)
        for listing in sorted(listings, key=lambda g: g.group_id):
            group_id = listing.group_id
            members.add_metric([group_id], len(groups.describe_group(group_id).members))
            _, fetched = groups.fetch_offsets(group_id, None)
            for offset in fetched:
                if offset.offset < 0:
                    continue
                values = [group_id, offset.topic, str(offset.partition)]
                committed.add_metric(values, offset.offset)
                end = ends.get((offset.topic, offset.partition))
                if end is not None:  # a partition closed for the descriptor budget has no lag here
                    lag.add_metric(values, max(0, end - offset.offset))
        yield members
        yield committed
        yield lag

    # -- transactions -------------------------------------------------------------------------

    def _transactions(self) -> Iterator[Metric]:
        txn = self.core.txn
        yield CounterMetricFamily("flowbus_broker_transactions_committed", "Transactions committed.",
                                  value=txn.committed_count)
        yield CounterMetricFamily(
            "flowbus_broker_transactions_aborted",
            "Transactions aborted (by their producer, a timeout or a fencing InitProducerId).",
            value=txn.aborted_count,
        )
        code, _, listed = txn.list_transactions([], [])
        if code != ErrorCode.NONE:
            return  # still loading __transaction_state
        counts: dict[str, int] = {}
        open_count = 0
        for meta in listed:
            name = meta.state.kafka_name
            counts[name] = counts.get(name, 0) + 1
            open_count += meta.state in OPEN_TXN_STATES
        yield GaugeMetricFamily("flowbus_broker_transactions_open",
                                "Transactions begun and not yet completed (Ongoing or Prepare*).", value=open_count)
        ids = GaugeMetricFamily("flowbus_broker_transactional_ids",
                                "Transactional ids known to the coordinator, per state.", labels=["state"])
        for state, count in sorted(counts.items()):
            ids.add_metric([state], count)
        yield ids
