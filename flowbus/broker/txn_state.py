"""Transaction metadata and its records in the internal topic ``__transaction_state``.

Each transactional id has one :class:`TxnMetadata`; every state change is first appended to the
compacted topic ``__transaction_state`` (keyed by transactional id, so compaction keeps the
latest), and a restarted broker replays the topic to find every transaction again. The states
are Kafka's (``TransactionState.scala``, KIP-98)::

    Empty ──AddPartitions/AddOffsets──► Ongoing ──EndTxn──► PrepareCommit ─markers─► CompleteCommit
                                          │                 PrepareAbort  ─markers─► CompleteAbort
                                          └─timeout / fencing InitProducerId──► PrepareAbort
    PrepareEpochFence is Kafka's name for "aborting because a newer producer took the id".

The encoding is flowbus's own, all integers big-endian::

    key   = version int16 (= 0)
            transactional_id string (int16 length + UTF-8)
    value = version int16 (= 0)
            producer_id int64, producer_epoch int16, transaction_timeout_ms int32,
            state int8 (TxnState value),
            partition count int32, then per partition: topic string, partition int32,
            txn_start_ms int64 (wall clock; -1 when no transaction has started),
            update_ms int64 (wall clock of this change)
    value absent (tombstone) = the transactional id was forgotten
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum

from flowbus.broker.errors import InternalTopicError
from flowbus.broker.internal_records import decode_str, encode_str

TXN_STATE_TOPIC = "__transaction_state"
TXN_KEY_VERSION = 0
TXN_VALUE_VERSION = 0
#: Kafka's ceiling for a producer epoch: at this epoch the id is replaced by a new producer id.
MAX_PRODUCER_EPOCH = 32_767

_INT16 = struct.Struct(">h")
_INT32 = struct.Struct(">i")
_VALUE_HEAD = struct.Struct(">hqhib")
_TIMES = struct.Struct(">qq")


class TxnState(IntEnum):
    """Kafka's transaction states; the values are this module's on-disk codes."""

    EMPTY = 0
    ONGOING = 1
    PREPARE_COMMIT = 2
    PREPARE_ABORT = 3
    COMPLETE_COMMIT = 4
    COMPLETE_ABORT = 5
    DEAD = 6
    PREPARE_EPOCH_FENCE = 7

    @property
    def is_preparing(self) -> bool:
        """An end was decided but its markers are not all written yet."""
        return self in (
            TxnState.PREPARE_COMMIT,
            TxnState.PREPARE_ABORT,
            TxnState.PREPARE_EPOCH_FENCE,
        )

    @property
    def kafka_name(self) -> str:
        """The state's name as Kafka spells it on the wire (DescribeTransactions and
        ListTransactions report it, and ListTransactions filters by it): ``PrepareCommit``."""
        return _KAFKA_NAMES[self]

    @classmethod
    def from_kafka_name(cls, name: str) -> TxnState | None:
        """The state Kafka calls ``name`` (exact spelling, as Kafka matches it), or None."""
        return _BY_KAFKA_NAME.get(name)

    @property
    def is_idle(self) -> bool:
        """No transaction open: a new one may begin."""
        return self in (
            TxnState.EMPTY,
            TxnState.COMPLETE_COMMIT,
            TxnState.COMPLETE_ABORT,
        )


_KAFKA_NAMES: dict[TxnState, str] = {
    TxnState.EMPTY: "Empty",
    TxnState.ONGOING: "Ongoing",
    TxnState.PREPARE_COMMIT: "PrepareCommit",
    TxnState.PREPARE_ABORT: "PrepareAbort",
    TxnState.COMPLETE_COMMIT: "CompleteCommit",
    TxnState.COMPLETE_ABORT: "CompleteAbort",
    TxnState.DEAD: "Dead",
    TxnState.PREPARE_EPOCH_FENCE: "PrepareEpochFence",
}
_BY_KAFKA_NAME: dict[str, TxnState] = {name: state for state, name in _KAFKA_NAMES.items()}


@dataclass(slots=True)
class TxnMetadata:
    """Everything the coordinator knows about one transactional id."""

    transactional_id: str
    producer_id: int
    producer_epoch: int
    transaction_timeout_ms: int
    state: TxnState = TxnState.EMPTY
    #: Partitions of the open transaction, including ``__consumer_offsets`` ones for offsets.
    partitions: set[tuple[str, int]] = field(default_factory=set)
    txn_start_ms: int = -1
    update_ms: int = -1
    #: Groups whose offsets the open transaction commits (not persisted: their
    #: ``__consumer_offsets`` partitions are, and the loader finds the groups by producer id).
    groups: set[str] = field(default_factory=set)


def encode_txn_key(transactional_id: str) -> bytes:
    return _INT16.pack(TXN_KEY_VERSION) + encode_str(transactional_id)


def encode_txn_value(meta: TxnMetadata) -> bytes:
    parts = [
        _VALUE_HEAD.pack(
            TXN_VALUE_VERSION,
            meta.producer_id,
            meta.producer_epoch,
            meta.transaction_timeout_ms,
            int(meta.state),
        ),
        _INT32.pack(len(meta.partitions)),
    ]
    for topic, partition in sorted(meta.partitions):
        parts.append(encode_str(topic))
        parts.append(_INT32.pack(partition))
    parts.append(_TIMES.pack(meta.txn_start_ms, meta.update_ms))
    return b"".join(parts)


def decode_txn_record(
    key: bytes, value: bytes | None
) -> tuple[str, TxnMetadata | None] | None:
    """``(transactional id, metadata or None for a tombstone)``; None for unknown versions.

    Raises:
        InternalTopicError: the record is malformed.
    """
    try:
        (version,) = _INT16.unpack_from(key, 0)
        if version != TXN_KEY_VERSION:
            return None
        transactional_id, _ = decode_str(key, 2)
        if value is None:
            return transactional_id, None
        value_version, pid, epoch, timeout_ms, state = _VALUE_HEAD.unpack_from(value, 0)
        if value_version != TXN_VALUE_VERSION:
            return None
        pos = _VALUE_HEAD.size
        (count,) = _INT32.unpack_from(value, pos)
        pos += 4
        if count < 0 or count > len(value):
            raise InternalTopicError(f"bad partition count {count}")
        partitions: set[tuple[str, int]] = set()
        for _ in range(count):
            topic, pos = decode_str(value, pos)
            (partition,) = _INT32.unpack_from(value, pos)
            pos += 4
            partitions.add((topic, partition))
        start_ms, update_ms = _TIMES.unpack_from(value, pos)
        meta = TxnMetadata(
            transactional_id,
            pid,
            epoch,
            timeout_ms,
            TxnState(state),
            partitions,
            start_ms,
            update_ms,
        )
    except (struct.error, UnicodeDecodeError, ValueError) as exc:
        raise InternalTopicError(f"malformed transaction-state record: {exc}") from exc
    return transactional_id, meta
