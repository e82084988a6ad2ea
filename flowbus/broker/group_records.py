"""The records of ``__consumer_offsets``: committed offsets and group metadata, in Kafka's formats.

The group coordinator keeps its state in memory and appends every change to the compacted topic
``__consumer_offsets``; a restarted broker replays the topic. Lag monitors (Burrow) and Kafka's
own tools read the same topic, so the records are Kafka's, byte for byte (layouts and versions in
``internal_records.py``):

* committed offset: OffsetCommitKey v1 → OffsetCommitValue v3 (v1 when the commit has an expire
  timestamp), or a tombstone when the offset was deleted;
* group metadata: GroupMetadataKey v2 → GroupMetadataValue v3, or a tombstone when the group was
  deleted.

Data directories from before flowbus wrote Kafka's formats hold committed-offset values labelled v1
in v3's layout (flowbus's own, with a nullable metadata string). :func:`decode_offsets_record`
reads them and Kafka's v1 alike, see :func:`_decode_offset_value_v1`.

Kafka's metadata string is not nullable: a commit without metadata is stored as ``""``, which is
also what OffsetFetch then answers, as in Kafka (``OffsetAndMetadata.NoMetadata``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from flowbus.broker.errors import InternalTopicError
from flowbus.broker.internal_records import (
    GROUP_METADATA_KEY,
    GROUP_METADATA_KEY_VERSION,
    GROUP_METADATA_VALUE,
    GROUP_METADATA_VALUE_VERSION,
    OFFSET_COMMIT_KEY,
    OFFSET_COMMIT_KEY_VERSION,
    OFFSET_COMMIT_VALUE,
    OFFSET_COMMIT_VALUE_VERSION,
    OFFSET_COMMIT_VALUE_VERSION_WITH_EXPIRY,
    decode_exact,
    decode_record,
    decode_str,
    encode_record,
    read_version,
)

#: Commit timestamps a real commit can have (2000-01-01 .. about the year 6400, in ms). Bytes of
#: the old flowbus layout read as Kafka's OffsetCommitValue v1 give either about 1.7e10 (1970) or
#: at least 2**48 here, so this range tells the two layouts apart when both parse.
_PLAUSIBLE_COMMIT_MS = range(946_684_800_000, 1 << 47)
_LEGACY_OFFSET_HEAD = struct.Struct(">qi")
_INT16 = struct.Struct(">h")
_INT64 = struct.Struct(">q")


@dataclass(frozen=True, slots=True)
class CommittedOffset:
    """One committed offset of a group, as OffsetFetch reports it and the log stores it."""

    offset: int
    leader_epoch: int
    metadata: str | None
    commit_timestamp_ms: int
    #: Wall-clock expiry (OffsetCommit v2-v4 retention), -1 for none; only Kafka's v1 value has it.
    expire_timestamp_ms: int = -1


@dataclass(frozen=True, slots=True)
class MemberMetadata:
    """One member in a GroupMetadataValue record."""

    member_id: str
    group_instance_id: str | None
    client_id: str
    client_host: str
    rebalance_timeout_ms: int
    session_timeout_ms: int
    #: The member's JoinGroup metadata for the group's selected protocol.
    subscription: bytes
    assignment: bytes


@dataclass(frozen=True, slots=True)
class GroupMetadata:
    """A group as a GroupMetadataValue record stores it (after a completed rebalance)."""

    protocol_type: str
    generation: int
    protocol: str | None
    leader: str | None
    current_state_timestamp_ms: int = -1
    members: list[MemberMetadata] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class OffsetRecord:
    """A decoded committed-offset record; ``committed`` is None for a tombstone."""

    group_id: str
    topic: str
    partition: int
    committed: CommittedOffset | None


@dataclass(frozen=True, slots=True)
class GroupRecord:
    """A decoded group-metadata record; ``metadata`` is None for a tombstone."""

    group_id: str
    metadata: GroupMetadata | None


# -- encoding ---------------------------------------------------------------------------------


def encode_offset_key(group_id: str, topic: str, partition: int) -> bytes:
    """OffsetCommitKey v1."""
    return encode_record(
        OFFSET_COMMIT_KEY,
        OFFSET_COMMIT_KEY_VERSION,
        {"group": group_id, "topic": topic, "partition": partition},
    )


def encode_offset_value(committed: CommittedOffset) -> bytes:
    """OffsetCommitValue v3, or v1 when the commit has an expire timestamp (Kafka's choice:
    v1 is the only version with that field, and it has no leader epoch)."""
    version = (
        OFFSET_COMMIT_VALUE_VERSION_WITH_EXPIRY
        if committed.expire_timestamp_ms >= 0
        else OFFSET_COMMIT_VALUE_VERSION
    )
    return encode_record(
        OFFSET_COMMIT_VALUE,
        version,
        {
            "offset": committed.offset,
            "leader_epoch": committed.leader_epoch,
            "metadata": committed.metadata or "",
            "commit_timestamp": committed.commit_timestamp_ms,
            "expire_timestamp": committed.expire_timestamp_ms,
        },
    )


def encode_group_key(group_id: str) -> bytes:
    """GroupMetadataKey v2."""
    return encode_record(GROUP_METADATA_KEY, GROUP_METADATA_KEY_VERSION, {"group": group_id})


def encode_group_value(metadata: GroupMetadata) -> bytes:
    """GroupMetadataValue v3 (Kafka's highest non-flexible version, which it writes)."""
    return encode_record(
        GROUP_METADATA_VALUE,
        GROUP_METADATA_VALUE_VERSION,
        {
            "protocol_type": metadata.protocol_type,
            "generation": metadata.generation,
            "protocol": metadata.protocol,
            "leader": metadata.leader,
            "current_state_timestamp": metadata.current_state_timestamp_ms,
            "members": [
                {
                    "member_id": m.member_id,
                    "group_instance_id": m.group_instance_id,
                    "client_id": m.client_id,
                    "client_host": m.client_host,
                    "rebalance_timeout": m.rebalance_timeout_ms,
                    "session_timeout": m.session_timeout_ms,
                    "subscription": m.subscription,
                    "assignment": m.assignment,
                }
                for m in metadata.members
            ],
        },
    )


# -- decoding ---------------------------------------------------------------------------------


def decode_offsets_record(
    key: bytes, value: bytes | None
) -> OffsetRecord | GroupRecord | None:
    """Decode one ``__consumer_offsets`` record; None for a key version this broker does not know
    (Kafka 4's consumer-group and share-group records), which the loader skips.

    Raises:
        InternalTopicError: the record is malformed.
    """
    key_version = read_version(key)
    if key_version in (0, 1):
        _, body = decode_record(OFFSET_COMMIT_KEY, key)
        committed = None if value is None else _decode_offset_value(value)
        return OffsetRecord(body["group"], body["topic"], body["partition"], committed)
    if key_version == GROUP_METADATA_KEY_VERSION:
        _, body = decode_record(GROUP_METADATA_KEY, key)
        metadata = None if value is None else _decode_group_value(value)
        return GroupRecord(body["group"], metadata)
    return None


def decode_offset_record(
    key: bytes, value: bytes | None
) -> tuple[str, str, int, CommittedOffset | None] | None:
    """``(group, topic, partition, offset or None for a tombstone)``; None for other records.

    Raises:
        InternalTopicError: the record is malformed.
    """
    decoded = decode_offsets_record(key, value)
    if not isinstance(decoded, OffsetRecord):
        return None
    return decoded.group_id, decoded.topic, decoded.partition, decoded.committed


def _decode_offset_value(value: bytes) -> CommittedOffset:
    if read_version(value) == 1:
        return _decode_offset_value_v1(value)
    _, body = decode_record(OFFSET_COMMIT_VALUE, value)
    return CommittedOffset(
        body["offset"],
        body.get("leader_epoch", -1),
        body["metadata"],
        body["commit_timestamp"],
        body.get("expire_timestamp", -1),
    )


def _decode_offset_value_v1(value: bytes) -> CommittedOffset:
    """A value labelled v1: Kafka's (offset, metadata, commit ts, expire ts) or flowbus's old one
    (offset, leader epoch, nullable metadata, commit ts).

    Both layouts are parsed strictly (every byte accounted for). When only one fits, it is the
    one; in the rare case both do (an old record with a leader epoch below 65536 and exactly 4
    bytes of metadata), Kafka's is taken only if its commit timestamp is a plausible time.

    Raises:
        InternalTopicError: neither layout fits.
    """
    kafka = decode_exact(OFFSET_COMMIT_VALUE, 1, value)
    legacy = _decode_legacy_offset_value(value)
    if kafka is not None and (
        legacy is None or kafka["commit_timestamp"] in _PLAUSIBLE_COMMIT_MS
    ):
        return CommittedOffset(
            kafka["offset"], -1, kafka["metadata"], kafka["commit_timestamp"], kafka["expire_timestamp"]
        )
    if legacy is None:
        raise InternalTopicError("malformed OffsetCommitValue v1")
    return legacy


def _decode_legacy_offset_value(value: bytes) -> CommittedOffset | None:
    """flowbus's layout before Kafka's (labelled v1), or None unless it fits exactly."""
    try:
        pos = 2
        offset, leader_epoch = _LEGACY_OFFSET_HEAD.unpack_from(value, pos)
        pos += _LEGACY_OFFSET_HEAD.size
        (length,) = _INT16.unpack_from(value, pos)
        metadata = ""
        if length == -1:
            pos += 2
        else:
            metadata, pos = decode_str(value, pos)
        (commit_ms,) = _INT64.unpack_from(value, pos)
    except (struct.error, InternalTopicError):
        return None
    if pos + _INT64.size != len(value):
        return None
    return CommittedOffset(offset, leader_epoch, metadata, commit_ms)


def _decode_group_value(value: bytes) -> GroupMetadata:
    _, body = decode_record(GROUP_METADATA_VALUE, value)
    return GroupMetadata(
        body["protocol_type"],
        body["generation"],
        body["protocol"],
        body["leader"],
        body.get("current_state_timestamp", -1),
        [
            MemberMetadata(
                m["member_id"],
                m.get("group_instance_id"),
                m["client_id"],
                m["client_host"],
                m.get("rebalance_timeout", -1),
                m["session_timeout"],
                bytes(m["subscription"]),
                bytes(m["assignment"]),
            )
            for m in body["members"]
        ],
    )
