"""An independent reader of Kafka's internal-topic records, for checking what flowbus writes.

Written by hand in the tests from the facts of Kafka's JSON schemas (``apache/kafka``,
``group-coordinator/src/main/resources/common/message/OffsetCommitKey.json``,
``OffsetCommitValue.json``, ``GroupMetadataKey.json``, ``GroupMetadataValue.json``,
``transaction-coordinator/src/main/resources/common/message/TransactionLogKey.json``,
``TransactionLogValue.json``), deliberately without flowbus's schema engine, so a mistake in
flowbus's field lists cannot hide itself. Only the non-flexible versions are read (flowbus writes
no flexible one); every read must account for every byte.

Facts, per version (``string`` = int16 length + UTF-8, ``bytes`` = int32 length, arrays int32 count):

* OffsetCommitKey v0, v1: group string, topic string, partition int32.
* OffsetCommitValue v0, v2: offset int64, metadata string, commit_timestamp int64.
  v1: the same plus expire_timestamp int64. v3: offset int64, leader_epoch int32, metadata string,
  commit_timestamp int64. (v4 is flexible.)
* GroupMetadataKey v2: group string.
* GroupMetadataValue: protocol_type string, generation int32, protocol nullable string, leader
  nullable string, current_state_timestamp int64 (v2+), members array of: member_id string,
  group_instance_id nullable string (v3+), client_id string, client_host string,
  rebalance_timeout int32 (v1+), session_timeout int32, subscription bytes, assignment bytes.
* TransactionLogKey v0: transactional_id string.
* TransactionLogValue v0: producer_id int64, producer_epoch int16, transaction_timeout_ms int32,
  transaction_status int8, transaction_partitions nullable array of (topic string, partition_ids
  array of int32), transaction_last_update_timestamp_ms int64, transaction_start_timestamp_ms int64.
"""

from __future__ import annotations

import struct
from typing import Any


class _Cursor:
    """Big-endian reads that refuse to run past the end."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _take(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        assert self.pos + size <= len(self.data), f"record ends before its {fmt} at {self.pos}"
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return value

    def i8(self) -> int:
        return int(self._take(">b"))

    def i16(self) -> int:
        return int(self._take(">h"))

    def i32(self) -> int:
        return int(self._take(">i"))

    def i64(self) -> int:
        return int(self._take(">q"))

    def string(self, nullable: bool = False) -> str | None:
        length = self.i16()
        if length == -1:
            assert nullable, "null in a non-nullable string"
            return None
        assert length >= 0 and self.pos + length <= len(self.data)
        raw = self.data[self.pos : self.pos + length]
        self.pos += length
        return raw.decode()

    def bytes_(self) -> bytes:
        length = self.i32()
        assert 0 <= length <= len(self.data) - self.pos
        raw = self.data[self.pos : self.pos + length]
        self.pos += length
        return raw

    def end(self) -> None:
        assert self.pos == len(self.data), f"{len(self.data) - self.pos} bytes left over"


def read_key(key: bytes) -> tuple[str, int, dict[str, Any]]:
    """``(kind, key version, fields)`` of a ``__consumer_offsets`` key; ``kind`` is ``offset``
    or ``group``. (``__transaction_state`` keys: :func:`read_txn_key`.)"""
    c = _Cursor(key)
    version = c.i16()
    if version in (0, 1):
        fields = {"group": c.string(), "topic": c.string(), "partition": c.i32()}
        kind = "offset"
    elif version == 2:
        fields = {"group": c.string()}
        kind = "group"
    else:
        raise AssertionError(f"unknown key version {version}")
    c.end()
    return kind, version, fields


def read_offset_value(value: bytes) -> tuple[int, dict[str, Any]]:
    """``(version, fields)`` of an OffsetCommitValue."""
    c = _Cursor(value)
    version = c.i16()
    fields: dict[str, Any] = {"offset": c.i64()}
    if version == 3:
        fields["leader_epoch"] = c.i32()
    elif version not in (0, 1, 2):
        raise AssertionError(f"OffsetCommitValue version {version} is not read here")
    fields["metadata"] = c.string()
    fields["commit_timestamp"] = c.i64()
    if version == 1:
        fields["expire_timestamp"] = c.i64()
    c.end()
    return version, fields


def read_group_value(value: bytes) -> tuple[int, dict[str, Any]]:
    """``(version, fields)`` of a GroupMetadataValue (v0-v3)."""
    c = _Cursor(value)
    version = c.i16()
    assert 0 <= version <= 3, f"GroupMetadataValue version {version} is not read here"
    fields: dict[str, Any] = {
        "protocol_type": c.string(),
        "generation": c.i32(),
        "protocol": c.string(nullable=True),
        "leader": c.string(nullable=True),
    }
    if version >= 2:
        fields["current_state_timestamp"] = c.i64()
    members = []
    for _ in range(c.i32()):
        member: dict[str, Any] = {"member_id": c.string()}
        if version >= 3:
            member["group_instance_id"] = c.string(nullable=True)
        member["client_id"] = c.string()
        member["client_host"] = c.string()
        if version >= 1:
            member["rebalance_timeout"] = c.i32()
        member["session_timeout"] = c.i32()
        member["subscription"] = c.bytes_()
        member["assignment"] = c.bytes_()
        members.append(member)
    fields["members"] = members
    c.end()
    return version, fields


def read_txn_key(key: bytes) -> tuple[int, str]:
    """``(version, transactional id)`` of a TransactionLogKey."""
    c = _Cursor(key)
    version = c.i16()
    assert version == 0, f"TransactionLogKey version {version}"
    transactional_id = c.string()
    c.end()
    assert transactional_id is not None
    return version, transactional_id


def read_txn_value(value: bytes) -> tuple[int, dict[str, Any]]:
    """``(version, fields)`` of a TransactionLogValue v0."""
    c = _Cursor(value)
    version = c.i16()
    assert version == 0, f"TransactionLogValue version {version} is not read here"
    fields: dict[str, Any] = {
        "producer_id": c.i64(),
        "producer_epoch": c.i16(),
        "transaction_timeout_ms": c.i32(),
        "transaction_status": c.i8(),
    }
    count = c.i32()
    if count == -1:
        fields["transaction_partitions"] = None
    else:
        partitions = []
        for _ in range(count):
            topic = c.string()
            partitions.append((topic, [c.i32() for _ in range(c.i32())]))
        fields["transaction_partitions"] = partitions
    fields["transaction_last_update_timestamp_ms"] = c.i64()
    fields["transaction_start_timestamp_ms"] = c.i64()
    c.end()
    return version, fields
