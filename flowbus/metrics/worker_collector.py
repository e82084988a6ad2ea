"""The worker's Prometheus collector.

Counters kept on the hot path (:mod:`flowbus.metrics.worker_stats`) are read as they are; consumer
lag needs the partitions' end offsets, which a transport may have to ask the broker for, so
:meth:`WorkerCollector.refresh` (awaited by the ``/metrics`` route before it renders) fetches them
and :meth:`WorkerCollector.collect` reports what the last refresh found. Everything runs on the
worker's event loop. The worker's registry is its own; with an ``embedded://`` broker the
broker's collector is registered on it too (``flowbus_broker_*``).

Every name is listed, with its type, labels and meaning, in ``docs/operations.md``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from flowbus.state.windowed import WindowedTable
from flowbus.transports.base import TopicPartition

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from flowbus.worker import Worker

log = logging.getLogger(__name__)

#: How long a scrape waits for the end offsets of the assigned partitions; past it the lag of
#: the last refresh is reported again (a slow broker must not hang the scraper).
LAG_REFRESH_TIMEOUT_S = 2.0
#: Files counted per partition database when measuring state size on disk (RocksDB keeps a few
#: dozen); beyond it the size is a lower bound rather than a long walk on the event loop.
STATE_FILES_COUNTED_MAX = 10_000


class WorkerCollector(Collector):
    """Reads a :class:`~flowbus.worker.Worker`'s counters and state at scrape time."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        #: Per assigned partition: (next offset to process, end offset), from the last refresh.
        self.positions: dict[TopicPartition, tuple[int, int]] = {}

    def describe(self) -> list[Metric]:
        """Nothing: registering must not run a scrape."""
        return []

    async def refresh(self) -> None:
        """Ask the end offsets of the assigned partitions (for the lag), within
        :data:`LAG_REFRESH_TIMEOUT_S`; on failure the previous figures stay."""
        worker = self.worker
        consumer = worker.consumer
        if consumer is None or not worker.assigned:
            self.positions = {}
            return
        assigned = sorted(worker.assigned)
        try:
            processed = worker.processed_offsets()
            unknown = [tp for tp in assigned if tp not in processed]
            if unknown:
                committed = await asyncio.wait_for(consumer.committed(unknown), LAG_REFRESH_TIMEOUT_S)
                for tp, offset in committed.items():
                    processed[tp] = offset if offset is not None else 0
            ends = await asyncio.wait_for(consumer.end_offsets(assigned), LAG_REFRESH_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - a scrape never disturbs the worker
            log.debug("metrics: could not refresh the consumer lag: %r", exc)
            return
        self.positions = {
            tp: (processed.get(tp, 0), end) for tp, end in ends.items() if tp in worker.assigned
        }

    def collect(self) -> Iterator[Metric]:
        yield from self._events()
        yield from self._consumer()
        yield from self._commits()
        yield from self._state()
        yield from self._windows()

    def _events(self) -> Iterator[Metric]:
        stats = self.worker.stats
        events_in = CounterMetricFamily(
            "flowbus_worker_events_in", "Events polled and handed to dataflows and agents, per input topic.",
            labels=["topic"])
        processing = HistogramMetricFamily(
            "flowbus_worker_processing_seconds",
            "Time the app's code spent on each event (a dataflow run's duration divided by its events; "
            "an agent's time from receiving the event to asking for the next), per input topic.",
            labels=["topic"])
        end_to_end = HistogramMetricFamily(
            "flowbus_worker_end_to_end_latency_seconds",
            "From each event's record timestamp to the end of its processing (its outputs sent), per input topic.",
            labels=["topic"])
        for topic, events in sorted(stats.topics.items()):
            events_in.add_metric([topic], events.events_in)
            processing.add_metric([topic], events.processing.cumulative(), events.processing.sum_s)
            end_to_end.add_metric([topic], events.end_to_end.cumulative(), events.end_to_end.sum_s)
        yield events_in
        yield processing
        yield end_to_end
        events_out = CounterMetricFamily(
            "flowbus_worker_events_out",
            "Records sent by this worker's producer, per topic (outputs, changelogs, dead letters).",
            labels=["topic"])
        producer = self.worker.producer
        if producer is not None:
            for topic, count in sorted(producer.records_sent_by_topic.items()):
                events_out.add_metric([topic], count)
        yield events_out
        buffered = GaugeMetricFamily(
            "flowbus_worker_agent_buffered_events", "Events waiting in each agent instance's channel.",
            labels=["agent"])
        for channel in self.worker.channels:
            buffered.add_metric([channel.name], len(channel))
        yield buffered

    def _consumer(self) -> Iterator[Metric]:
        worker = self.worker
        yield GaugeMetricFamily("flowbus_worker_assigned_partitions", "Partitions assigned to this worker.",
                                value=len(worker.assigned))
        yield GaugeMetricFamily("flowbus_worker_paused_partitions",
                                "Assigned partitions not fetched now (agent buffers full, or state restoring).",
                                value=len(set(worker.paused) | worker.restoring))
        labels = ["topic", "partition"]
        lag = GaugeMetricFamily(
            "flowbus_worker_consumer_lag",
            "Records of the partition not processed yet: end offset - next offset to process "
            "(the last stable offset under exactly-once).", labels=labels)
        position = GaugeMetricFamily(
            "flowbus_worker_processed_offset", "The next offset of the partition to process.", labels=labels)
        for tp, (processed, end) in sorted(self.positions.items()):
            values = [tp.topic, str(tp.partition)]
            lag.add_metric(values, max(0, end - processed))
            position.add_metric(values, processed)
        yield lag
        yield position

    def _commits(self) -> Iterator[Metric]:
        worker = self.worker
        commits = worker.stats.commits
        family = HistogramMetricFamily(
            "flowbus_worker_commit_seconds",
            "Duration of each successful commit: outputs flushed, offsets committed (in the transaction "
            "under exactly-once), table changes stored.")
        family.add_metric([], commits.cumulative(), commits.sum_s)
        yield family
        yield CounterMetricFamily("flowbus_worker_fencings", "Commits the group refused (KIP-447 fencing).",
                                  value=worker.fencings)
        yield CounterMetricFamily("flowbus_worker_failed_transactions",
                                  "Transactions aborted after a failed commit.", value=worker.failed_transactions)

    def _state(self) -> Iterator[Metric]:
        state = self.worker.state
        if state is None:
            return
        done, total, _ = state.restore_progress()
        yield GaugeMetricFamily("flowbus_worker_restore_restored_records",
                                "Changelog records applied by the restores running now.", value=done)
        yield GaugeMetricFamily("flowbus_worker_restore_target_records",
                                "Changelog records the restores running now have to apply.", value=total)
        slots = list(state.slots.values())
        yield GaugeMetricFamily("flowbus_worker_restoring_partitions",
                                "Table partitions being restored from their changelogs.",
                                value=sum(1 for slot in slots if slot.restoring))
        size = GaugeMetricFamily(
            "flowbus_worker_state_size_bytes",
            "Bytes on disk of each open table partition database (RocksDB; the memory backend has no files).",
            labels=["tables", "partition"])
        for slot in sorted(slots, key=lambda s: (s.count, s.partition)):
            if slot.closed:
                continue
            size.add_metric([",".join(t.name for t in slot.tables), str(slot.partition)], disk_bytes(slot.path))
        yield size

    def _windows(self) -> Iterator[Metric]:
        tables = [t for t in self.worker.app.tables.values() if isinstance(t, WindowedTable)]
        if not tables:
            return
        closed = CounterMetricFamily("flowbus_worker_windows_closed", "Windows closed, per window table.",
                                     labels=["table"])
        late = CounterMetricFamily("flowbus_worker_window_late_records",
                                   "Records that came after every window they belong to had closed.",
                                   labels=["table"])
        latency = HistogramMetricFamily(
            "flowbus_worker_window_close_latency_seconds",
            "From a window's close time (end + grace, event time) to when it was closed (app clock), per table.",
            labels=["table"])
        for table in sorted(tables, key=lambda t: t.name):
            closed.add_metric([table.name], table.closed_windows)
            late.add_metric([table.name], table.late_records)
            histogram = table.close_latency
            latency.add_metric([table.name], histogram.cumulative(), histogram.sum_s)
        yield closed
        yield late
        yield latency


def disk_bytes(path: Path) -> int:
    """Sizes of the files under ``path`` (at most :data:`STATE_FILES_COUNTED_MAX`); 0 when it is
    not there (the memory backend)."""
    total = 0
    counted = 0
    pending = [str(path)]
    while pending and counted < STATE_FILES_COUNTED_MAX:
        try:
            entries = list(os.scandir(pending.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                else:
                    total += entry.stat(follow_symlinks=False).st_size
                    counted += 1
            except OSError:
                continue  # removed meanwhile (a compaction)
    return total
