"""Kafka's record formats for the broker's internal topics (``__consumer_offsets``, ``__transaction_state``).

Tools read these topics directly: Burrow and other lag monitors consume ``__consumer_offsets``,
``kafka-console-consumer --formatter`` decodes both. So flowbus writes Kafka's own layouts, byte for
byte, at the versions a current Kafka writes. The facts below are from Kafka's JSON schemas
(``apache/kafka``: ``group-coordinator/src/main/resources/common/message/OffsetCommitKey.json``,
``OffsetCommitValue.json``, ``GroupMetadataKey.json``, ``GroupMetadataValue.json`` and
``transaction-coordinator/.../TransactionLogKey.json``, ``TransactionLogValue.json``).

Every key and value starts with an int16 version, then the schema's fields at that version (big-endian
integers; strings with an int16 length, bytes and arrays with an int32 length; from the first flexible
version on, compact lengths and a tagged-field section, KIP-482). A tombstone (a null value) deletes the
key. In ``__consumer_offsets`` the *key* version says what the record is:

==========================  ===========  =================================================================
key version                 written      value versions (written in bold)
==========================  ===========  =================================================================
0, 1  OffsetCommitKey       1            0 and 2 (offset, metadata, commit ts), **1** (+ expire ts; only
                                         when a commit has an expiry), **3** (+ leader epoch), 4 flexible
2     GroupMetadataKey      2            0, 1 (+ rebalance timeout), 2 (+ current-state ts),
                                         **3** (+ group instance id), 4 flexible
==========================  ===========  =================================================================

``__transaction_state`` has one key version, **0** (TransactionLogKey), and value versions **0** and 1
(flexible, with tagged previous/next producer id and client transaction version). Kafka writes value
v1 only once ``transaction.version`` 2 is enabled; flowbus needs none of v1's fields.

Data directories written before flowbus used these layouts hold two ambiguous record kinds, which
the decoders in ``group_coordinator.py`` and ``txn_state.py`` tell apart by parsing both layouts
strictly (see :func:`decode_exact`): committed-offset values labelled v1 whose fields are v3's
(leader epoch, nullable metadata; no expire timestamp), and transaction values labelled v0 whose
partitions are a flat ``(topic, partition)`` list followed by *start* then *update* timestamps.

A malformed record raises :class:`InternalTopicError`, so the loader can log it and skip it instead of
failing to start.
"""

from __future__ import annotations

import struct

from flowbus.broker.errors import InternalTopicError
from flowbus.protocol.errors import ProtocolError
from flowbus.protocol.primitives import Reader, Writer
from flowbus.protocol.schema import Body, MessageSpec, arr, cached_plan, f, message

_INT16 = struct.Struct(">h")

OFFSET_COMMIT_KEY = message("OffsetCommitKey", "0-1", "none", [
    f("group", "string"),
    f("topic", "string"),
    f("partition", "int32"),
])

OFFSET_COMMIT_VALUE = message("OffsetCommitValue", "0-4", "4+", [
    f("offset", "int64"),
    f("leader_epoch", "int32", "3+", default=-1),
    f("metadata", "string"),
    f("commit_timestamp", "int64"),
    f("expire_timestamp", "int64", "1", default=-1),
])

GROUP_METADATA_KEY = message("GroupMetadataKey", "2", "none", [
    f("group", "string", "2"),
])

GROUP_METADATA_VALUE = message("GroupMetadataValue", "0-4", "4+", [
    f("protocol_type", "string"),
    f("generation", "int32"),
    f("protocol", "string", nullable="0+"),
    f("leader", "string", nullable="0+"),
    f("current_state_timestamp", "int64", "2+", default=-1),
    arr("members", [
        f("member_id", "string"),
        f("group_instance_id", "string", "3+", nullable="3+", default=None),
        f("client_id", "string"),
        f("client_host", "string"),
        f("rebalance_timeout", "int32", "1+", default=-1),
        f("session_timeout", "int32"),
        f("subscription", "bytes"),
        f("assignment", "bytes"),
    ]),
])

TRANSACTION_LOG_KEY = message("TransactionLogKey", "0", "none", [
    f("transactional_id", "string", "0"),
])

TRANSACTION_LOG_VALUE = message("TransactionLogValue", "0-1", "1+", [
    f("producer_id", "int64"),
    f("previous_producer_id", "int64", "1+", tag=0, tagged="1+", default=-1),
    f("next_producer_id", "int64", "1+", tag=1, tagged="1+", default=-1),
    f("producer_epoch", "int16"),
    f("transaction_timeout_ms", "int32"),
    f("transaction_status", "int8"),
    arr("transaction_partitions", [
        f("topic", "string"),
        f("partition_ids", "[]int32"),
    ], nullable="0+"),
    f("transaction_last_update_timestamp_ms", "int64"),
    f("transaction_start_timestamp_ms", "int64"),
    f("client_transaction_version", "int16", "1+", tag=2, tagged="1+", default=0),
])

#: Key versions of ``__consumer_offsets`` records (Kafka calls a key version the record type).
OFFSET_COMMIT_KEY_VERSION = 1
GROUP_METADATA_KEY_VERSION = 2
#: OffsetCommitValue: v3 normally; v1 (no leader epoch, with an expire timestamp) when a commit
#: carries an expiry, exactly as Kafka's ``MetadataVersion.offsetCommitValueVersion`` decides.
OFFSET_COMMIT_VALUE_VERSION = 3
OFFSET_COMMIT_VALUE_VERSION_WITH_EXPIRY = 1
#: The highest non-flexible version, which Kafka writes until a tagged field is needed.
GROUP_METADATA_VALUE_VERSION = 3
TRANSACTION_LOG_KEY_VERSION = 0
TRANSACTION_LOG_VALUE_VERSION = 0


def encode_record(spec: MessageSpec, version: int, body: Body) -> bytes:
    """``version`` as int16, then ``body`` in ``spec``'s layout at that version.

    Raises:
        flowbus.protocol.errors.LocalProtocolError: a value does not fit its field (a bug here).
    """
    writer = Writer()
    writer.int16(version)
    cached_plan(spec, version).encode(writer, body)
    return writer.getvalue()


def read_version(data: bytes) -> int:
    """The int16 version that starts every key and value.

    Raises:
        InternalTopicError: fewer than two bytes.
    """
    if len(data) < 2:
        raise InternalTopicError("record too short for its version")
    return int(_INT16.unpack_from(data, 0)[0])


def decode_record(spec: MessageSpec, data: bytes) -> tuple[int, Body]:
    """``(version, body)`` of a version-prefixed record of ``spec``.

    A version above the highest this module knows is read as the highest one when that one is
    flexible: Kafka promises (KIP-915) that later versions of these records only add tagged
    fields, which a reader skips. Trailing bytes are ignored, as Kafka's readers ignore them.

    Raises:
        InternalTopicError: a negative or unknown (non-flexible) version, or malformed fields.
    """
    version = read_version(data)
    readable = version
    if version > spec.valid.high and spec.valid.high in spec.flexible:
        readable = spec.valid.high
    if version < spec.valid.low or readable > spec.valid.high:
        raise InternalTopicError(f"{spec.name} has no version {version}")
    body, _ = _decode_at(spec, readable, data)
    return version, body


def decode_exact(spec: MessageSpec, version: int, data: bytes) -> Body | None:
    """``data`` (version prefix included) read as ``spec`` at ``version``, or None unless the
    fields parse and end exactly at the last byte.

    Used where two layouts share a version number (old flowbus data, see the module doc): a
    layout that does not account for every byte is not the one the record was written in.
    """
    try:
        body, end = _decode_at(spec, version, data)
    except InternalTopicError:
        return None
    return body if end == len(data) else None


def _decode_at(spec: MessageSpec, version: int, data: bytes) -> tuple[Body, int]:
    reader = Reader(data, pos=2)
    try:
        body = cached_plan(spec, version).decode(reader)
    except (ProtocolError, struct.error, UnicodeDecodeError, ValueError, OverflowError) as exc:
        raise InternalTopicError(f"malformed {spec.name} v{version}: {exc}") from exc
    return body, reader.pos


# -- the layout flowbus wrote before it used Kafka's (replay of old data directories only) ----


def decode_str(buf: bytes, pos: int) -> tuple[str, int]:
    """The int16-length string at ``pos`` of an old-layout record and the position after it.

    Raises:
        InternalTopicError: the length is negative or runs past the end of ``buf``.
    """
    if pos + 2 > len(buf):
        raise InternalTopicError("string length runs past the end of the record")
    (length,) = _INT16.unpack_from(buf, pos)
    pos += 2
    if length < 0 or pos + length > len(buf):
        raise InternalTopicError("string runs past the end of the record")
    try:
        return buf[pos : pos + length].decode(), pos + length
    except UnicodeDecodeError as exc:
        raise InternalTopicError(f"string is not UTF-8: {exc}") from exc


def is_topic_name(name: str) -> bool:
    """Could ``name`` be a Kafka topic (1-249 of ``[a-zA-Z0-9._-]``)? A sanity check that tells
    a real field from bytes of another layout read at the wrong position."""
    return 0 < len(name) <= 249 and all(c.isascii() and (c.isalnum() or c in "._-") for c in name)
