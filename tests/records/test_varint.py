"""Round trips and bounds of Kafka's zigzag varints."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from flowbus.records.errors import CorruptRecordError
from flowbus.records.varint import (
    INT32_MAX,
    INT32_MIN,
    INT64_MAX,
    INT64_MIN,
    UINT32_MAX,
    decode_unsigned_varint,
    decode_varint,
    decode_varlong,
    encode_unsigned_varint,
    encode_varint,
    encode_varlong,
    varint_size,
)

int32s = st.integers(INT32_MIN, INT32_MAX)
int64s = st.integers(INT64_MIN, INT64_MAX)


@settings(max_examples=300)
@given(int32s)
@example(INT32_MIN)
@example(INT32_MAX)
@example(0)
@example(-1)
@example(63)
@example(64)
@example(-65)
@example(8191)
@example(8192)
@example(-8193)
def test_varint_round_trip(value: int) -> None:
    encoded = encode_varint(value)
    assert len(encoded) == varint_size(value) <= 5
    prefix = b"\xff\xff"
    assert decode_varint(prefix + encoded + b"tail", len(prefix)) == (value, len(prefix) + len(encoded))


@settings(max_examples=300)
@given(int64s)
@example(INT64_MIN)
@example(INT64_MAX)
@example(INT32_MIN - 1)
@example(INT32_MAX + 1)
def test_varlong_round_trip(value: int) -> None:
    encoded = encode_varlong(value)
    assert len(encoded) == varint_size(value) <= 10
    assert decode_varlong(encoded) == (value, len(encoded))


@settings(max_examples=200)
@given(st.integers(0, UINT32_MAX))
@example(0)
@example(127)
@example(128)
@example(UINT32_MAX)
def test_unsigned_varint_round_trip(value: int) -> None:
    encoded = encode_unsigned_varint(value)
    assert decode_unsigned_varint(encoded) == (value, len(encoded))


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        (0, b"\x00"),
        (-1, b"\x01"),
        (1, b"\x02"),
        (-64, b"\x7f"),
        (64, b"\x80\x01"),
        (150, b"\xac\x02"),
        (INT32_MAX, b"\xfe\xff\xff\xff\x0f"),
        (INT32_MIN, b"\xff\xff\xff\xff\x0f"),
    ],
)
def test_varint_matches_protobuf_zigzag(value: int, wire: bytes) -> None:
    """Known encodings (protobuf's sint32 zigzag, which Kafka's ByteUtils.writeVarint mirrors)."""
    assert encode_varint(value) == wire
    assert decode_varint(wire) == (value, len(wire))


def test_varlong_extremes_on_the_wire() -> None:
    assert encode_varlong(INT64_MIN) == b"\xff" * 9 + b"\x01"
    assert encode_varlong(INT64_MAX) == b"\xfe" + b"\xff" * 8 + b"\x01"


@pytest.mark.parametrize(
    ("encode", "value"),
    [
        (encode_varint, INT32_MAX + 1),
        (encode_varint, INT32_MIN - 1),
        (encode_varlong, INT64_MAX + 1),
        (encode_unsigned_varint, -1),
        (encode_unsigned_varint, UINT32_MAX + 1),
    ],
)
def test_encoders_reject_out_of_range_values(encode: object, value: int) -> None:
    with pytest.raises(ValueError):
        encode(value)  # type: ignore[operator]


@pytest.mark.parametrize(
    ("decode", "wire"),
    [
        (decode_varint, b""),
        (decode_varint, b"\x80"),
        (decode_varint, b"\xff\xff\xff\xff"),
        (decode_varint, b"\xff\xff\xff\xff\xff\x01"),  # 6 bytes: too long for an int32
        (decode_varint, b"\xff\xff\xff\xff\x1f"),  # 5 bytes but 35 bits
        (decode_unsigned_varint, b"\x80\x80\x80\x80\x80\x00"),
        (decode_varlong, b"\xff" * 10 + b"\x01"),  # 11 bytes
        (decode_varlong, b"\xff" * 9 + b"\x02"),  # 65 bits
        (decode_varlong, b"\x80" * 5),
    ],
)
def test_decoders_reject_long_overflowing_or_truncated_input(decode: object, wire: bytes) -> None:
    with pytest.raises(CorruptRecordError):
        decode(wire)  # type: ignore[operator]


def test_decoders_reject_bad_positions() -> None:
    with pytest.raises(CorruptRecordError):
        decode_varint(b"\x00", -1)
    with pytest.raises(CorruptRecordError):
        decode_varlong(b"\x00", 1)


@settings(max_examples=300)
@given(st.binary(max_size=12), st.integers(0, 12))
def test_decoders_on_garbage_raise_only_corrupt_record_error(data: bytes, pos: int) -> None:
    for decode in (decode_varint, decode_varlong, decode_unsigned_varint):
        try:
            value, end = decode(data, pos)
        except CorruptRecordError:
            continue
        assert pos < end <= len(data)
        assert isinstance(value, int)
