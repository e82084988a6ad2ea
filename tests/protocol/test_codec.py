"""Request/response headers (v0, v1, v2), version negotiation errors and the ApiVersions fallback."""

from __future__ import annotations

import struct

import pytest
from kafka.protocol.consumer import fetch
from kafka.protocol.metadata import api_versions

from flowbus.protocol import SUPPORTED_VERSIONS, ApiKey, ErrorCode
from flowbus.protocol.codec import (
    Request,
    RequestHeader,
    api_versions_body,
    api_versions_fallback_response,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)
from flowbus.protocol.errors import (
    LocalProtocolError,
    RemoteProtocolError,
    UnsupportedVersionError,
)


def test_request_header_v1_layout() -> None:
    frame = encode_request(ApiKey.METADATA, 0, 0x01020304, "ab", {"topics": []})
    assert frame == struct.pack(">ihhi", len(frame) - 4, 3, 0, 0x01020304) + b"\x00\x02ab" + b"\x00\x00\x00\x00"


def test_request_header_v2_keeps_int16_client_id_and_adds_tags() -> None:
    frame = encode_request(ApiKey.METADATA, 9, 7, "ab", {"topics": None, "allow_auto_topic_creation": True})
    header = struct.pack(">hhi", 3, 9, 7) + b"\x00\x02ab" + b"\x00"
    assert frame[4:4 + len(header)] == header
    # null topics (compact 0), auto-create, the two authorized-operations flags, empty tags
    assert frame[4 + len(header):] == b"\x00" + b"\x01" + b"\x00\x00" + b"\x00"


def test_null_client_id() -> None:
    frame = encode_request(ApiKey.API_VERSIONS, 0, 1, None, {})
    assert frame[12:14] == b"\xff\xff"
    assert decode_request(frame[4:]).header.client_id is None


def test_unknown_request_header_tags_are_skipped() -> None:
    frame = bytearray(encode_request(ApiKey.HEARTBEAT, 4, 9, "c", {"group_id": "g", "member_id": "m"}))
    tags_at = 4 + 2 + 2 + 4 + 3
    assert frame[tags_at] == 0
    frame[tags_at:tags_at + 1] = b"\x01\x05\x02hi"  # one unknown tag (5) of 2 bytes
    request = decode_request(bytes(frame[4:]))
    assert request.header == RequestHeader(12, 4, 9, "c")
    assert request.body["group_id"] == "g"


def test_response_header_v0_and_v1() -> None:
    metadata_v8 = encode_response(RequestHeader(3, 8, 5, None), {})
    metadata_v9 = encode_response(RequestHeader(3, 9, 5, None), {})
    assert metadata_v8[4:8] == b"\x00\x00\x00\x05" and metadata_v8[8:12] == b"\x00\x00\x00\x00"  # throttle
    assert metadata_v9[4:9] == b"\x00\x00\x00\x05\x00"  # v1 header: empty tagged fields
    assert decode_response(3, 9, metadata_v9[4:])[0] == 5


@pytest.mark.parametrize("version", range(5))
def test_api_versions_response_always_uses_header_v0(version: int) -> None:
    frame = encode_response(RequestHeader(18, version, 0x0A0B0C0D, "c"), api_versions_body())
    assert frame[4:8] == b"\x0a\x0b\x0c\x0d"
    assert frame[8:10] == b"\x00\x00"  # error_code follows the correlation id directly
    correlation_id, body = decode_response(18, version, frame[4:])
    assert correlation_id == 0x0A0B0C0D
    advertised = {entry["api_key"]: (entry["min_version"], entry["max_version"]) for entry in body["api_keys"]}
    assert advertised == {int(key): rng for key, rng in SUPPORTED_VERSIONS.items()}


def test_size_prefix_matches() -> None:
    frame = encode_response(RequestHeader(12, 0, 1, None), {"error_code": 16})
    assert struct.unpack(">i", frame[:4])[0] == len(frame) - 4


@pytest.mark.parametrize("api_key,api_version", [(0, 10), (1, 13), (9, 8), (10, 4), (18, 5), (99, 0), (27, 0),
                                                 (3, -1)])
def test_unsupported_versions_raise_after_the_header(api_key: int, api_version: int) -> None:
    frame = struct.pack(">hhi", api_key, api_version, 77) + b"\x00\x03cli" + b"\x00" * 8
    with pytest.raises(UnsupportedVersionError) as info:
        decode_request(frame)
    error = info.value
    assert (error.api_key, error.api_version, error.correlation_id) == (api_key, api_version, 77)
    assert error.header == RequestHeader(api_key, api_version, 77, "cli")
    assert not isinstance(error, RemoteProtocolError)


def test_api_versions_fallback_is_error_35_in_v0_layout() -> None:
    frame = struct.pack(">hhi", 18, 9, 1234) + b"\x00\x01x" + b"\x00\x00\x00"  # ApiVersions v9 from the future
    with pytest.raises(UnsupportedVersionError) as info:
        decode_request(frame)
    response = api_versions_fallback_response(info.value.header)  # type: ignore[arg-type]
    correlation_id, body = decode_response(18, 0, response[4:])
    assert correlation_id == 1234
    assert body["error_code"] == ErrorCode.UNSUPPORTED_VERSION
    assert {"api_key": 18, "min_version": 0, "max_version": 4} in body["api_keys"]
    # Byte layout: size, correlation id, error 35, one-entry int32 array.
    assert response == struct.pack(">iihihhh", 4 + 2 + 4 + 6, 1234, 35, 1, 18, 0, 4)


def test_fallback_is_read_by_kafka_python_as_an_error() -> None:
    response = api_versions_fallback_response(RequestHeader(18, 4, 3, "c"))
    # A client that sent v4 decodes the reply as v4: the error makes it fall back to the v0 layout.
    message = api_versions.ApiVersionsResponse.decode(response, version=4, header=True, framed=True)
    assert message.error_code == 35
    assert message.header.correlation_id == 3


def test_request_object() -> None:
    request = decode_request(encode_request(ApiKey.END_TXN, 3, 1, "c", {"transactional_id": "t", "committed": True})[4:])
    assert isinstance(request, Request)
    assert request.body == {"transactional_id": "t", "producer_id": 0, "producer_epoch": 0, "committed": True}


def test_records_decode_as_zero_copy_views_of_the_frame() -> None:
    batch = bytes(range(256)) * 64
    frame = encode_request(ApiKey.PRODUCE, 9, 1, "c", {"acks": -1, "timeout_ms": 5, "topic_data": [
        {"name": "t", "partition_data": [{"index": 0, "records": batch}]}]})[4:]
    request = decode_request(frame)
    records = request.body["topic_data"][0]["partition_data"][0]["records"]
    assert isinstance(records, memoryview)
    assert records.obj is frame
    assert records == batch


def test_encode_accepts_bytearray_and_memoryview_records() -> None:
    for records in (bytearray(b"abc"), memoryview(b"xxabcxx")[2:5]):
        frame = encode_response(RequestHeader(1, 12, 1, None), {"responses": [{"topic": "t", "partitions": [
            {"partition_index": 0, "records": records}]}]})
        _, body = decode_response(1, 12, frame[4:])
        assert body["responses"][0]["partitions"][0]["records"] == b"abc"


def test_missing_fields_take_spec_defaults() -> None:
    frame = encode_response(RequestHeader(1, 12, 1, None), {"responses": [{"topic": "t", "partitions": [
        {"partition_index": 3}]}]})
    _, body = decode_response(1, 12, frame[4:])
    partition = body["responses"][0]["partitions"][0]
    assert partition["last_stable_offset"] == -1
    assert partition["log_start_offset"] == -1
    assert partition["preferred_read_replica"] == -1
    # Nullable without "default": "null" means empty, as in Kafka: librdkafka rejects null records
    # ("invalid MessageSetSize -1"), so an omitted record set must go out as length 0.
    assert partition["records"] == b""
    assert partition["aborted_transactions"] == []
    assert partition["diverging_epoch"] == {"epoch": -1, "end_offset": -1}
    assert body["session_id"] == 0


def test_tagged_fields_are_written_only_when_not_default() -> None:
    base = {"responses": [{"topic": "t", "partitions": [{"partition_index": 0}]}]}
    plain = encode_response(RequestHeader(1, 12, 1, None), base)
    tagged = {"responses": [{"topic": "t", "partitions": [
        {"partition_index": 0, "current_leader": {"leader_id": 2, "leader_epoch": 7}}]}]}
    with_tag = encode_response(RequestHeader(1, 12, 1, None), tagged)
    assert len(with_tag) == len(plain) + 1 + 1 + 8 + 1  # tag, size, two int32, struct's own tag count
    _, body = decode_response(1, 12, with_tag[4:])
    assert body["responses"][0]["partitions"][0]["current_leader"] == {"leader_id": 2, "leader_epoch": 7}


def test_fields_outside_the_version_are_ignored() -> None:
    old = encode_request(ApiKey.LIST_OFFSETS, 1, 1, "c", {"replica_id": -1, "isolation_level": 1})
    assert decode_request(old[4:]).body == {"replica_id": -1, "topics": []}


@pytest.mark.parametrize("body", [{"acks": 1 << 20}, {"acks": "1"}, {"topic_data": None},
                                  {"topic_data": [{"name": None}]}, {"transactional_id": 5}])
def test_bad_values_are_local_errors(body: dict[str, object]) -> None:
    with pytest.raises(LocalProtocolError):
        encode_request(ApiKey.PRODUCE, 9, 1, "c", body)


def test_empty_and_truncated_frames_are_remote_errors() -> None:
    with pytest.raises(RemoteProtocolError):
        decode_request(b"")
    frame = encode_request(ApiKey.JOIN_GROUP, 7, 1, "c", {"group_id": "g", "protocols": [{"name": "range"}]})[4:]
    for cut in range(len(frame)):
        with pytest.raises(RemoteProtocolError):
            decode_request(frame[:cut])


@pytest.mark.parametrize("version", [4, 11, 12])
def test_large_records_are_spliced_and_still_byte_identical(version: int) -> None:
    batches = [bytes([n]) * (5000 + n) for n in range(3)] + [b"small"]
    body = {"responses": [{"topic": "t", "partitions": [
        {"partition_index": n, "high_watermark": 10, "records": records} for n, records in enumerate(batches)]}]}
    frame = encode_response(RequestHeader(1, version, 9, None), body)
    assert struct.unpack(">i", frame[:4])[0] == len(frame) - 4
    _, decoded = decode_response(1, version, frame[4:])
    assert [p["records"] for p in decoded["responses"][0]["partitions"]] == batches
    theirs = fetch.FetchResponse.decode(frame, version=version, header=True, framed=True)
    theirs.with_header(correlation_id=9)
    assert bytes(theirs.encode(header=True, framed=True)) == frame


def test_large_produce_records_roundtrip() -> None:
    batch = memoryview(bytearray(b"r" * 70_000))
    for version in (3, 8, 9):
        frame = encode_request(ApiKey.PRODUCE, version, 1, "c", {"acks": 1, "topic_data": [
            {"name": "t", "partition_data": [{"index": 0, "records": batch}, {"index": 1, "records": None}]}]})
        partitions = decode_request(frame[4:]).body["topic_data"][0]["partition_data"]
        assert partitions[0]["records"] == batch and partitions[1]["records"] is None


def test_encoding_an_unsupported_version_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        encode_response(RequestHeader(1, 13, 1, None), {})
    with pytest.raises(LocalProtocolError):
        encode_request(99, 0, 1, None, {})
    with pytest.raises(LocalProtocolError):
        decode_response(18, 5, b"\x00\x00\x00\x01")


@pytest.mark.parametrize("version", [4, 11, 12])
def test_omitted_fetch_records_are_empty_not_null_on_the_wire(version: int) -> None:
    frame = encode_response(RequestHeader(1, version, 1, None), {"responses": [{"topic": "t", "partitions": [
        {"partition_index": 0, "error_code": 3, "aborted_transactions": None}]}]})
    if version >= 12:
        assert frame.endswith(b"\x01\x00\x00\x00")  # records length+1 = 1, then three tag sections
    else:
        assert frame.endswith(b"\x00\x00\x00\x00")  # int32 length 0, not -1
    _, body = decode_response(1, version, frame[4:])
    partition = body["responses"][0]["partitions"][0]
    assert partition["records"] == b"" and partition["aborted_transactions"] is None
