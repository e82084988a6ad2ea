"""Retention by time and by size for ``cleanup.policy`` containing ``delete``.

Whole segments only, oldest first, never the active segment and never one at or after the
recovery segment (see :meth:`PartitionLog.deletable_segments`). Like Kafka:

* time: a segment goes when its largest timestamp is more than ``retention.ms`` old. That
  timestamp is computed by the broker from the records on append (never the producer's header
  field, see :mod:`flowbus.records.validate`). A segment none of whose records has a timestamp
  (largest timestamp -1) is judged by its last write instead (the broker's clock, or the file's
  mtime after a restart), as Kafka does: it is never expired on a timestamp nobody wrote;
* size: the oldest segments go while the log stays at or above ``retention.bytes`` without them.

An active segment whose every record has expired is rolled so that the next pass can delete it.

Segments wholly below the log start offset (moved up by DeleteRecords) go too, whatever
``cleanup.policy`` says: no read can reach them any more.
"""

from __future__ import annotations

from flowbus.log.partition_log import PartitionLog
from flowbus.log.segment import LogSegment


def retention_time_ms(segment: LogSegment) -> int:
    """The time time-retention measures a segment's age from.

    Its largest record timestamp; for a segment without any (-1: records carrying no
    timestamp), the time of its last write, so it is kept ``retention.ms`` after it.
    """
    if segment.max_timestamp_ms >= 0:
        return segment.max_timestamp_ms
    return segment.last_write_ms


def _below_log_start(log: PartitionLog, candidates: list[LogSegment]) -> int:
    """How many of the oldest ``candidates`` hold only offsets below the log start offset
    (moved there by DeleteRecords): nothing can read them any more, whatever the policy.

    As Kafka, a segment qualifies when the segment after it starts at or below the log start
    (its own end offset would also count an empty cleaned segment that the start sits on).
    """
    start = log.log_start_offset
    following = log.segments()[1:]  # candidates are the oldest segments, in order
    count = 0
    for _, after in zip(candidates, following):  # bounded by the segment count
        if after.base_offset > start:
            break
        count += 1
    return count


def apply_retention(log: PartitionLog) -> int:
    """Delete the segments retention no longer keeps, and those wholly below the log start
    offset; returns the bytes removed."""
    if log.closed:
        return 0
    config = log.config
    candidates = log.deletable_segments()
    below_start = _below_log_start(log, candidates)
    if not config.is_deleting:
        return log.delete_oldest_segments(below_start, "below the log start offset") if below_start else 0
    now_ms = log.clock.now_ms()
    by_time = 0
    if config.retention_ms >= 0:
        for segment in candidates:  # bounded by the segment count
            if now_ms - retention_time_ms(segment) <= config.retention_ms:
                break
            by_time += 1
        active = log.segments()[-1]
        if not active.is_empty and now_ms - retention_time_ms(active) > config.retention_ms:
            log.roll()
    by_size = 0
    if config.retention_bytes >= 0:
        excess_bytes = log.size_bytes - config.retention_bytes
        for segment in candidates:  # bounded by the segment count
            if excess_bytes - segment.size_bytes < 0:
                break
            excess_bytes -= segment.size_bytes
            by_size += 1
    count = max(by_time, by_size, below_start)
    if count == 0:
        return 0
    if below_start >= max(by_time, by_size):
        reason = "below the log start offset"
    else:
        reason = "retention.ms" if by_time >= by_size else "retention.bytes"
    return log.delete_oldest_segments(count, reason)
