"""Idempotent-producer state: producer ids, and per (producer id, partition) epochs and sequences.

Kafka's idempotence (KIP-98) lets a producer retry a batch without creating a duplicate: every
batch carries (producer id, epoch, base sequence), and the broker checks them per partition:

* an epoch older than the one last seen → INVALID_PRODUCER_EPOCH (a fenced, zombie producer);
* a newer epoch (or a producer never seen on this partition) must start at sequence 0;
* the same epoch must continue at last sequence + 1, wrapping at INT32 max;
* a batch equal to one of the last five appended (same epoch and sequence range) is a retry:
  it is *not* appended again and is answered with success and its original offsets. Answering
  a retry with an error makes clients bump the epoch and resend, which creates duplicates.

The state is rebuilt from the log after a restart (every stored batch keeps its producer
fields), so a retry that crosses a broker restart is still recognised.

For transactions (issue 4) each entry also remembers the first offset of its open transaction,
so the partition's last stable offset is the smallest of those, or the high watermark.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from flowbus.broker.errors import ProducerIdExhaustedError
from flowbus.protocol.error_codes import ErrorCode
from flowbus.records.header import NO_PRODUCER_ID, BatchHeader

log = logging.getLogger(__name__)

#: Kafka keeps the metadata of the last five batches per producer and partition, matching the
#: largest ``max.in.flight.requests.per.connection`` that idempotence allows.
RETRY_CACHE_BATCHES_MAX = 5

#: Sequences wrap to 0 after INT32 max (Kafka's DefaultRecordBatch.incrementSequence).
SEQUENCE_MODULUS = 1 << 31

#: Producer ids are reserved on disk in blocks, so a crash never reuses one and an allocation
#: costs an fsync only once per block.
PRODUCER_ID_BLOCK_SIZE = 1000

_INT64 = struct.Struct(">q")


@dataclass(frozen=True, slots=True)
class SnapshotEntry:
    """A partition's producer state as of ``end_offset`` (the log end when it was taken)."""

    topic_id: str
    end_offset: int
    rows: list[list[Any]]


class ProducerSnapshotFile:
    """Producer state of every partition, saved so a restart need not rescan whole logs.

    One JSON file, replaced atomically (write, fsync, rename). An entry is used only when its
    topic id matches (a deleted and re-created topic never inherits state) and its end offset
    is not past the log end; the log is then replayed from that offset on. Without a usable
    entry the partition's state is rebuilt from the whole log, which is always correct.
    """

    def __init__(self, path: Path) -> None:
        self._path = path

    def load(self) -> dict[tuple[str, int], SnapshotEntry]:
        try:
            raw = json.loads(self._path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable producer snapshot %s: %s", self._path, exc)
            return {}
        entries: dict[tuple[str, int], SnapshotEntry] = {}
        for item in raw.get("partitions", []):
            try:
                key = (str(item["topic"]), int(item["partition"]))
                entries[key] = SnapshotEntry(
                    str(item["topic_id"]),
                    int(item["end_offset"]),
                    list(item["producers"]),
                )
            except (KeyError, TypeError, ValueError):
                continue
        return entries

    def save(self, entries: dict[tuple[str, int], SnapshotEntry]) -> None:
        doc = {
            "version": 1,
            "partitions": [
                {
                    "topic": t,
                    "partition": p,
                    "topic_id": e.topic_id,
                    "end_offset": e.end_offset,
                    "producers": e.rows,
                }
                for (t, p), e in entries.items()
            ],
        }
        tmp = self._path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(doc, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._path)


class ProducerIdManager:
    """Hands out producer ids that never repeat, even after a crash.

    The file holds the first id *not yet reserved*. Before handing out ids of a new block the
    manager writes the block's end and fsyncs it, so after a restart allocation continues past
    every id that may have been given out (some ids of the last block are skipped; that is fine).
    """

    def __init__(self, path: Path, *, block_size: int = PRODUCER_ID_BLOCK_SIZE) -> None:
        self._path = path
        self._block_size = block_size
        self._next_id = 0
        self._reserved_end = 0
        if path.exists():
            data = path.read_bytes()
            if len(data) == _INT64.size:
                self._next_id = self._reserved_end = _INT64.unpack(data)[0]

    def allocate(self) -> int:
        """A fresh producer id.

        Raises:
            ProducerIdExhaustedError: the id space (INT64) is used up.
        """
        if self._next_id >= self._reserved_end:
            self._reserve(self._next_id + self._block_size)
        producer_id = self._next_id
        self._next_id += 1
        return producer_id

    def _reserve(self, end: int) -> None:
        if end >= (1 << 63) - 1:
            raise ProducerIdExhaustedError("no producer ids left")
        tmp = self._path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(_INT64.pack(end))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._path)
        self._reserved_end = end


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """What the retry cache remembers of one appended batch."""

    first_sequence: int
    last_sequence: int
    base_offset: int
    last_offset: int
    log_append_time_ms: int


@dataclass(slots=True)
class ProducerEntry:
    """The state of one producer on one partition."""

    epoch: int
    batches: deque[BatchRecord] = field(
        default_factory=lambda: deque(maxlen=RETRY_CACHE_BATCHES_MAX)
    )
    #: Offset of the first batch of the producer's open transaction here, or None (issue 4).
    current_txn_first_offset: int | None = None
    #: Wall-clock time of the producer's last write here; idle producers expire.
    last_timestamp_ms: int = -1

    @property
    def last_sequence(self) -> int:
        return self.batches[-1].last_sequence if self.batches else -1


class Verdict(Enum):
    """What to do with an incoming batch."""

    APPEND = "append"
    DUPLICATE = "duplicate"
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class Check:
    """The outcome of :meth:`PartitionProducerState.check`."""

    verdict: Verdict
    error_code: int = 0
    #: For DUPLICATE: the original batch, whose offsets answer the retry.
    original: BatchRecord | None = None


_APPEND = Check(Verdict.APPEND)


def _next_sequence(sequence: int) -> int:
    return (sequence + 1) % SEQUENCE_MODULUS


class PartitionProducerState:
    """Producer entries of one partition; owned by the broker's produce path.

    Example:
        >>> state = PartitionProducerState()
        >>> # header: producer 7, epoch 0, sequences 0..9
        >>> # state.check(header).verdict is Verdict.APPEND; after appending at offset 100,
        >>> # state.record(header, 100, -1); the same header again is Verdict.DUPLICATE.
    """

    def __init__(self) -> None:
        self._producers: dict[int, ProducerEntry] = {}

    def __len__(self) -> int:
        return len(self._producers)

    def entry(self, producer_id: int) -> ProducerEntry | None:
        return self._producers.get(producer_id)

    def entries(self) -> list[tuple[int, ProducerEntry]]:
        """Every producer remembered here, as ``(producer id, entry)`` (DescribeProducers).

        Expired producers are gone already; a copy, so the caller may yield while reading it.
        """
        return list(self._producers.items())

    def check(self, header: BatchHeader) -> Check:
        """Decide whether an idempotent batch is new, a retry, or invalid (see the module doc)."""
        if header.producer_id == NO_PRODUCER_ID:
            return _APPEND
        entry = self._producers.get(header.producer_id)
        if entry is None:
            if header.base_sequence != 0 and not header.is_control:
                # Kafka's answer when it holds no state for the producer (for example after
                # retention removed its batches): clients recover by resetting the sequence.
                return Check(Verdict.REJECT, ErrorCode.UNKNOWN_PRODUCER_ID)
            return _APPEND
        if header.producer_epoch < entry.epoch:
            return Check(Verdict.REJECT, ErrorCode.INVALID_PRODUCER_EPOCH)
        if header.is_control:
            return _APPEND
        if entry.current_txn_first_offset is not None and not header.is_transactional:
            return Check(Verdict.REJECT, ErrorCode.INVALID_TXN_STATE)
        if header.producer_epoch > entry.epoch:
            if header.base_sequence != 0:
                return Check(Verdict.REJECT, ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER)
            return _APPEND
        for cached in entry.batches:
            if (
                cached.first_sequence == header.base_sequence
                and cached.last_sequence == header.last_sequence
            ):
                return Check(Verdict.DUPLICATE, original=cached)
        if entry.batches and header.base_sequence != _next_sequence(
            entry.last_sequence
        ):
            return Check(Verdict.REJECT, ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER)
        return _APPEND

    def record(
        self,
        header: BatchHeader,
        base_offset: int,
        log_append_time_ms: int,
        now_ms: int | None = None,
    ) -> None:
        """Remember a batch that was just appended at ``base_offset`` (also used when rebuilding).

        ``now_ms`` is the append's wall-clock time (the batch's max timestamp when rebuilding),
        used to expire idle producers.
        """
        producer_id = header.producer_id
        if producer_id == NO_PRODUCER_ID:
            return
        entry = self._producers.get(producer_id)
        if entry is None:
            entry = self._producers[producer_id] = ProducerEntry(
                epoch=header.producer_epoch
            )
        elif header.producer_epoch > entry.epoch:
            entry.epoch = header.producer_epoch
            entry.batches.clear()
        entry.last_timestamp_ms = max(
            entry.last_timestamp_ms, header.max_timestamp if now_ms is None else now_ms
        )
        if header.is_control:
            # A commit/abort marker ends the transaction (issue 4); sequences are unaffected.
            entry.current_txn_first_offset = None
            return
        if header.is_transactional and entry.current_txn_first_offset is None:
            entry.current_txn_first_offset = base_offset
        entry.batches.append(
            BatchRecord(
                first_sequence=header.base_sequence,
                last_sequence=header.last_sequence,
                base_offset=base_offset,
                last_offset=base_offset + header.last_offset_delta,
                log_append_time_ms=log_append_time_ms,
            )
        )

    def rebuild(self, batches: Iterable[BatchHeader]) -> int:
        """Replay stored batch headers in log order; returns how many had a producer id."""
        replayed = 0
        for header in batches:
            if header.producer_id != NO_PRODUCER_ID:
                log_append_time_ms = (
                    header.max_timestamp if header.is_log_append_time else -1
                )
                self.record(header, header.base_offset, log_append_time_ms)
                replayed += 1
        return replayed

    def expire(self, now_ms: int, expiration_ms: int) -> int:
        """Forget producers idle for longer than ``expiration_ms`` with no open transaction.

        Kafka does the same (``producer.id.expiration.ms``, a day by default) so that state does
        not grow with every producer that ever wrote. Returns how many were forgotten.
        """
        expired = [
            pid
            for pid, entry in self._producers.items()
            if entry.current_txn_first_offset is None
            and now_ms - entry.last_timestamp_ms > expiration_ms
        ]
        for pid in expired:
            del self._producers[pid]
        return len(expired)

    def to_snapshot(self) -> list[list[Any]]:
        """A JSON-able image of every entry (see :class:`ProducerSnapshotFile`)."""
        return [
            [
                pid,
                e.epoch,
                e.current_txn_first_offset,
                e.last_timestamp_ms,
                [
                    [
                        b.first_sequence,
                        b.last_sequence,
                        b.base_offset,
                        b.last_offset,
                        b.log_append_time_ms,
                    ]
                    for b in e.batches
                ],
            ]
            for pid, e in self._producers.items()
        ]

    @classmethod
    def from_snapshot(cls, rows: list[list[Any]]) -> PartitionProducerState:
        state = cls()
        for pid, epoch, txn_first, last_ts, batches in rows:
            entry = ProducerEntry(
                int(epoch),
                current_txn_first_offset=txn_first,
                last_timestamp_ms=int(last_ts),
            )
            for first, last, base, last_offset, lat in batches:
                entry.batches.append(
                    BatchRecord(
                        int(first), int(last), int(base), int(last_offset), int(lat)
                    )
                )
            state._producers[int(pid)] = entry
        return state

    def first_unstable_offset(self) -> int | None:
        """The first offset of the earliest open transaction, or None (the LSO is then the HW)."""
        offsets = [
            e.current_txn_first_offset
            for e in self._producers.values()
            if e.current_txn_first_offset is not None
        ]
        return min(offsets) if offsets else None
