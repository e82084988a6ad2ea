"""Retention by time and by size for ``cleanup.policy`` containing ``delete``.

Whole segments only, oldest first, never the active segment and never one at or after the
recovery segment (see :meth:`PartitionLog.deletable_segments`). Like Kafka:

* time: a segment goes when its largest timestamp is more than ``retention.ms`` old;
* size: the oldest segments go while the log stays at or above ``retention.bytes`` without them.

An active segment whose every record has expired is rolled so that the next pass can delete it.
"""

from __future__ import annotations

from flowbus.log.partition_log import PartitionLog


def apply_retention(log: PartitionLog) -> int:
    """Delete the segments retention no longer keeps; returns the bytes removed."""
    config = log.config
    if not config.is_deleting or log.closed:
        return 0
    now_ms = log.clock.now_ms()
    candidates = log.deletable_segments()
    by_time = 0
    if config.retention_ms >= 0:
        for segment in candidates:  # bounded by the segment count
            if now_ms - segment.max_timestamp_ms <= config.retention_ms:
                break
            by_time += 1
        active = log.segments()[-1]
        if not active.is_empty and now_ms - active.max_timestamp_ms > config.retention_ms:
            log.roll()
    by_size = 0
    if config.retention_bytes >= 0:
        excess_bytes = log.size_bytes - config.retention_bytes
        for segment in candidates:  # bounded by the segment count
            if excess_bytes - segment.size_bytes < 0:
                break
            excess_bytes -= segment.size_bytes
            by_size += 1
    count = max(by_time, by_size)
    if count == 0:
        return 0
    reason = "retention.ms" if by_time >= by_size else "retention.bytes"
    return log.delete_oldest_segments(count, reason)
