"""Transaction metadata and its records in the internal topic ``__transaction_state``.

Each transactional id has one :class:`TxnMetadata`; every state change is first appended to the
compacted topic ``__transaction_state`` (keyed by transactional id, so compaction keeps the
latest), and a restarted broker replays the topic to find every transaction again. The states
are Kafka's (``TransactionState.scala``, KIP-98)::

    Empty ──AddPartitions/AddOffsets──► Ongoing ──EndTxn──► PrepareCommit ─markers─► CompleteCommit
                                          │                 PrepareAbort  ─markers─► CompleteAbort
                                          └─timeout / fencing InitProducerId──► PrepareAbort
    PrepareEpochFence is Kafka's name for "aborting because a newer producer took the id".

The records are Kafka's (``internal_records.py``), so Kafka's tools can read the topic:
TransactionLogKey v0 (the transactional id) → TransactionLogValue v0: producer id and epoch,
timeout, state (the :class:`TxnState` value), the partitions grouped by topic (null when Empty),
last-update then start timestamps (wall clock ms). A tombstone forgets the transactional id.

Data directories from before then hold values also labelled v0 but in flowbus's own layout: a flat
list of ``(topic, partition)`` and the *start* timestamp before the *update* one.
:func:`decode_txn_record` parses both layouts strictly and keeps the one that fits, see
:func:`_decode_value_v0`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum

from flowbus.broker.errors import InternalTopicError
from flowbus.broker.internal_records import (
    TRANSACTION_LOG_KEY,
    TRANSACTION_LOG_KEY_VERSION,
    TRANSACTION_LOG_VALUE,
    TRANSACTION_LOG_VALUE_VERSION,
    decode_exact,
    decode_record,
    decode_str,
    encode_record,
    is_topic_name,
    read_version,
)
from flowbus.protocol.schema import Body

TXN_STATE_TOPIC = "__transaction_state"
TXN_KEY_VERSION = TRANSACTION_LOG_KEY_VERSION
TXN_VALUE_VERSION = TRANSACTION_LOG_VALUE_VERSION
#: Kafka's ceiling for a producer epoch: at this epoch the id is replaced by a new producer id.
MAX_PRODUCER_EPOCH = 32_767

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
    """TransactionLogKey v0."""
    return encode_record(
        TRANSACTION_LOG_KEY, TXN_KEY_VERSION, {"transactional_id": transactional_id}
    )


def encode_txn_value(meta: TxnMetadata) -> bytes:
    """TransactionLogValue v0, as Kafka's ``TransactionLog.valueToBytes`` writes it: the
    partitions grouped by topic, and null (not empty) when the state is Empty."""
    partitions: list[dict[str, object]] | None = None
    if meta.state is not TxnState.EMPTY:
        by_topic: dict[str, list[int]] = {}
        for topic, partition in sorted(meta.partitions):
            by_topic.setdefault(topic, []).append(partition)
        partitions = [{"topic": t, "partition_ids": ids} for t, ids in by_topic.items()]
    return encode_record(
        TRANSACTION_LOG_VALUE,
        TXN_VALUE_VERSION,
        {
            "producer_id": meta.producer_id,
            "producer_epoch": meta.producer_epoch,
            "transaction_timeout_ms": meta.transaction_timeout_ms,
            "transaction_status": int(meta.state),
            "transaction_partitions": partitions,
            "transaction_last_update_timestamp_ms": meta.update_ms,
            "transaction_start_timestamp_ms": meta.txn_start_ms,
        },
    )


def decode_txn_record(
    key: bytes, value: bytes | None
) -> tuple[str, TxnMetadata | None] | None:
    """``(transactional id, metadata or None for a tombstone)``; None for unknown key versions.

    Raises:
        InternalTopicError: the record is malformed.
    """
    if read_version(key) != TXN_KEY_VERSION:
        return None
    _, key_body = decode_record(TRANSACTION_LOG_KEY, key)
    transactional_id: str = key_body["transactional_id"]
    if value is None:
        return transactional_id, None
    if read_version(value) == 0:
        body = _decode_value_v0(value)
    else:
        _, body = decode_record(TRANSACTION_LOG_VALUE, value)
    try:
        state = TxnState(body["transaction_status"])
    except ValueError as exc:
        raise InternalTopicError(f"unknown transaction state: {exc}") from exc
    partitions = {
        (p["topic"], partition)
        for p in body["transaction_partitions"] or ()
        for partition in p["partition_ids"]
    }
    meta = TxnMetadata(
        transactional_id,
        body["producer_id"],
        body["producer_epoch"],
        body["transaction_timeout_ms"],
        state,
        partitions,
        body["transaction_start_timestamp_ms"],
        body["transaction_last_update_timestamp_ms"],
    )
    return transactional_id, meta


def _decode_value_v0(value: bytes) -> Body:
    """A value labelled v0: Kafka's layout, or the one flowbus wrote before.

    Both are parsed strictly (every byte accounted for, topic names that could be topics,
    no topic without partitions, which Kafka never writes). In practice only one fits; they
    can both fit only with no partitions at all, and then they differ only in the order of the
    two timestamps, so the earlier one is taken as the start (a start never follows an update;
    a start of -1 is earlier than any update).

    Raises:
        InternalTopicError: neither layout fits.
    """
    kafka = decode_exact(TRANSACTION_LOG_VALUE, 0, value)
    if kafka is not None and not all(
        is_topic_name(p["topic"]) and p["partition_ids"]
        for p in kafka["transaction_partitions"] or ()
    ):
        kafka = None
    legacy = _decode_legacy_value(value)
    if kafka is None:
        if legacy is None:
            raise InternalTopicError("malformed TransactionLogValue v0")
        return legacy
    if legacy is None:
        return kafka
    first = kafka["transaction_last_update_timestamp_ms"]
    second = kafka["transaction_start_timestamp_ms"]
    kafka["transaction_start_timestamp_ms"] = min(first, second)
    kafka["transaction_last_update_timestamp_ms"] = max(first, second)
    return kafka


def _decode_legacy_value(value: bytes) -> Body | None:
    """flowbus's layout before Kafka's, as the body Kafka's would decode to; None unless it
    fits exactly."""
    try:
        _, pid, epoch, timeout_ms, state = _VALUE_HEAD.unpack_from(value, 0)
        pos = _VALUE_HEAD.size
        (count,) = _INT32.unpack_from(value, pos)
        pos += 4
        if count < 0 or count > len(value):
            return None
        by_topic: dict[str, list[int]] = {}
        for _ in range(count):
            topic, pos = decode_str(value, pos)
            (partition,) = _INT32.unpack_from(value, pos)
            pos += 4
            if not is_topic_name(topic) or partition < 0:
                return None
            by_topic.setdefault(topic, []).append(partition)
        start_ms, update_ms = _TIMES.unpack_from(value, pos)
    except (struct.error, InternalTopicError):
        return None
    if pos + _TIMES.size != len(value):
        return None
    return {
        "producer_id": pid,
        "producer_epoch": epoch,
        "transaction_timeout_ms": timeout_ms,
        "transaction_status": state,
        "transaction_partitions": [
            {"topic": t, "partition_ids": ids} for t, ids in by_topic.items()
        ],
        "transaction_last_update_timestamp_ms": update_ms,
        "transaction_start_timestamp_ms": start_ms,
    }
