"""ConsumerProtocolSubscription / ConsumerProtocolAssignment (JoinGroup and SyncGroup payloads)."""

from __future__ import annotations

import struct

import pytest
from kafka.protocol.consumer import metadata

from flowbus.protocol.codec import (
    decode_consumer_assignment,
    decode_consumer_subscription,
    encode_consumer_assignment,
    encode_consumer_subscription,
)
from flowbus.protocol.errors import MalformedMessageError
from tests.protocol.bodies import normalise

SUBSCRIPTION = {"topics": ["orders", "payments"], "user_data": b"\x01\x02", "owned_partitions": [
    {"topic": "orders", "partitions": [0, 3]}], "generation_id": 7, "rack_id": "rack-a"}
ASSIGNMENT = {"assigned_partitions": [{"topic": "orders", "partitions": [1, 2]}], "user_data": None}

@pytest.mark.parametrize("version", range(4))
def test_subscription_roundtrip_and_kafka_python(version: int) -> None:
    data = encode_consumer_subscription(version, SUBSCRIPTION)
    assert struct.unpack(">h", data[:2])[0] == version
    decoded_version, body = decode_consumer_subscription(data)
    assert decoded_version == version
    expected = {"topics": SUBSCRIPTION["topics"], "user_data": b"\x01\x02"}
    if version >= 1:
        expected["owned_partitions"] = SUBSCRIPTION["owned_partitions"]
    if version >= 2:
        expected["generation_id"] = 7
    if version >= 3:
        expected["rack_id"] = "rack-a"
    assert normalise(body) == expected
    theirs = metadata.ConsumerProtocolSubscription.decode(data)
    assert theirs.topics == ["orders", "payments"]
    assert bytes(theirs.encode(version=version)) == data


@pytest.mark.parametrize("version", range(4))
def test_assignment_roundtrip_and_kafka_python(version: int) -> None:
    data = encode_consumer_assignment(version, ASSIGNMENT)
    assert decode_consumer_assignment(data) == (version, ASSIGNMENT)
    theirs = metadata.ConsumerProtocolAssignment.decode(data)
    assert [(p.topic, list(p.partitions)) for p in theirs.assigned_partitions] == [("orders", [1, 2])]
    assert bytes(theirs.encode(version=version)) == data


def test_kafka_python_subscription_decodes_with_ours() -> None:
    theirs = metadata.ConsumerProtocolSubscription(version=0, topics=["a", "b"], user_data=b"")
    version, body = decode_consumer_subscription(theirs.encode(version=0))
    assert (version, body["topics"], body["user_data"]) == (0, ["a", "b"], b"")


def test_newer_versions_read_as_v3_ignoring_trailing_fields() -> None:
    data = bytearray(encode_consumer_subscription(3, SUBSCRIPTION))
    data[0:2] = struct.pack(">h", 9)
    data += b"future-fields"
    version, body = decode_consumer_subscription(bytes(data))
    assert version == 9 and body["rack_id"] == "rack-a"


def test_empty_assignment_means_nothing_assigned() -> None:
    assert decode_consumer_assignment(b"") == (0, {"assigned_partitions": [], "user_data": None})


def test_malformed() -> None:
    with pytest.raises(MalformedMessageError):
        decode_consumer_subscription(b"\xff\xff")
    with pytest.raises(MalformedMessageError):
        decode_consumer_subscription(b"\x00\x00\x00\x00\x00\x05")
