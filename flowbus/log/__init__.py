"""flowbus.log: the durable partitioned log under the broker.

Kafka's storage layer, one module per concept: :mod:`segment` (records file + indexes),
:mod:`offset_index`, :mod:`time_index`, :mod:`segments`, :mod:`loader` (open and recovery),
:mod:`partition_log`, :mod:`retention`, :mod:`cleaner` (compaction), :mod:`config`,
:mod:`catalog` and :mod:`manager`. See docs/log.md for the on-disk layout and guarantees.
No asyncio here: the broker calls in from its loop, and may flush from a worker thread.
"""

from __future__ import annotations

from flowbus.log.config import ConfigEntry, TopicConfig
from flowbus.log.manager import LogManager, TopicMetadata
from flowbus.log.partition_log import AppendResult, PartitionLog

__all__ = ["AppendResult", "ConfigEntry", "LogManager", "PartitionLog", "TopicConfig", "TopicMetadata"]
