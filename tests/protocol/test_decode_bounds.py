"""The decode work of one frame is bounded: counts are checked before any loop runs (issue 10, item 4)."""

from __future__ import annotations

import struct
import time

import pytest

from flowbus.protocol.api import ApiKey
from flowbus.protocol.codec import (
    decode_consumer_subscription,
    decode_request,
    encode_request,
    max_request_elements,
)
from flowbus.protocol.errors import RequestTooComplexError, TruncatedMessageError
from flowbus.protocol.primitives import Reader, Writer

#: A rejected frame must be rejected this fast, whatever its counts claim.
REJECT_S_MAX = 0.005


def uvarint(value: int) -> bytes:
    writer = Writer()
    writer.uvarint(value)
    return bytes(writer.buf)


def header_tags_frame(api_key: int, api_version: int, tags: int) -> bytes:
    """A flexible request whose header carries ``tags`` empty tagged fields (tag n, size 0)."""
    plain = encode_request(api_key, api_version, 1, "x", {})[4:]
    header_v1 = 8 + 2 + 1  # api key, version, correlation id, client id "x"
    section = uvarint(tags) + b"".join(uvarint(tag) + b"\x00" for tag in range(tags))
    return plain[:header_v1] + section + plain[header_v1 + 1:]


def metadata_v0_frame(topics: int) -> bytes:
    """Metadata v0 naming ``topics`` one-letter topics, built without a million dicts."""
    header = struct.pack(">hhih", int(ApiKey.METADATA), 0, 1, 1) + b"x"
    return header + struct.pack(">i", topics) + b"\x00\x01a" * topics


def decode_time_s(frame: bytes) -> tuple[float, Exception | None]:
    started = time.perf_counter()
    try:
        decode_request(frame)
    except Exception as exc:  # noqa: BLE001 - returned for the assertions
        return time.perf_counter() - started, exc
    return time.perf_counter() - started, None


@pytest.mark.parametrize("tags", [200_000, 2_000_000])
@pytest.mark.parametrize(("api_key", "api_version"), [(int(ApiKey.API_VERSIONS), 3), (int(ApiKey.METADATA), 12)])
def test_a_flood_of_tagged_fields_is_rejected_before_the_loop(api_key: int, api_version: int, tags: int) -> None:
    frame = header_tags_frame(api_key, api_version, tags)
    elapsed_s, error = decode_time_s(frame)
    assert isinstance(error, RequestTooComplexError), error
    assert elapsed_s < REJECT_S_MAX


def test_metadata_for_a_million_topics_is_rejected_before_the_loop() -> None:
    elapsed_s, error = decode_time_s(metadata_v0_frame(1_000_000))
    assert isinstance(error, RequestTooComplexError), error
    assert elapsed_s < REJECT_S_MAX


def test_metadata_at_its_limit_decodes_and_one_more_does_not() -> None:
    limit = max_request_elements(int(ApiKey.METADATA))
    assert len(decode_request(metadata_v0_frame(limit)).body["topics"]) == limit
    _, error = decode_time_s(metadata_v0_frame(limit + 1))
    assert isinstance(error, RequestTooComplexError)


def test_the_budget_is_shared_by_every_nesting_level() -> None:
    """Many small arrays add up: 30 topics of 1,000 partitions exceed a Fetch's budget of 10,000."""
    body = {"topics": [{"topic": f"t{t}", "partitions": [{"partition": p} for p in range(1_000)]}
                       for t in range(30)]}
    _, error = decode_time_s(encode_request(int(ApiKey.FETCH), 12, 1, "x", body)[4:])
    assert isinstance(error, RequestTooComplexError)
    body["topics"] = body["topics"][:9]
    assert len(decode_request(encode_request(int(ApiKey.FETCH), 12, 1, "x", body)[4:]).body["topics"]) == 9


def test_a_count_larger_than_the_bytes_left_is_truncation() -> None:
    """The element budget never even sees a count that cannot fit: that is a malformed frame."""
    reader = Reader(struct.pack(">i", 1_000) + b"\x00" * 10)
    with pytest.raises(TruncatedMessageError):
        reader.array_length(min_element_bytes=2)
    reader = Reader(uvarint(6) + b"\x00" * 10)
    with pytest.raises(TruncatedMessageError):
        reader.tagged_fields()


def test_reader_budget_counts_arrays_and_tagged_fields() -> None:
    data = struct.pack(">i", 3) + b"\x00" * 3 + uvarint(2) + b"\x00\x00\x01\x00"
    reader = Reader(data, max_elements=5)
    assert reader.array_length() == 3
    reader.pos += 3
    assert len(reader.tagged_fields()) == 2
    assert reader.elements_left == 0
    with pytest.raises(RequestTooComplexError):
        Reader(data, max_elements=2).array_length()


def test_embedded_consumer_subscription_is_bounded_too() -> None:
    topics = 1_000_000
    data = struct.pack(">hi", 0, topics) + b"\x00\x01a" * topics + b"\xff\xff\xff\xff"
    started = time.perf_counter()
    with pytest.raises(RequestTooComplexError):
        decode_consumer_subscription(data)
    assert time.perf_counter() - started < REJECT_S_MAX
