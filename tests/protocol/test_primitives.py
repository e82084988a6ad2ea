"""Every primitive round-trips, hits its exact boundaries, and fails only with our error classes."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowbus.protocol.errors import (
    LocalProtocolError,
    MalformedMessageError,
    RemoteProtocolError,
    TruncatedMessageError,
)
from flowbus.protocol.primitives import (
    INT32_MAX,
    INT32_MIN,
    INT64_MAX,
    INT64_MIN,
    UINT32_MAX,
    Reader,
    Writer,
    zigzag_decode,
    zigzag_encode,
)


def roundtrip(method: str, value: Any) -> Any:
    writer = Writer()
    getattr(writer, method)(value)
    reader = Reader(bytes(writer.buf))
    result = getattr(reader, method)()
    assert reader.remaining == 0, f"{method} left {reader.remaining} bytes"
    return result


def encoded(method: str, value: Any) -> bytes:
    writer = Writer()
    getattr(writer, method)(value)
    return bytes(writer.buf)


INT_RANGES = {"int8": 8, "int16": 16, "int32": 32, "int64": 64}


@pytest.mark.parametrize("method,bits", INT_RANGES.items())
def test_signed_int_boundaries(method: str, bits: int) -> None:
    low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    for value in (low, low + 1, -1, 0, 1, high - 1, high):
        assert roundtrip(method, value) == value
    assert len(encoded(method, 0)) == bits // 8
    assert encoded(method, 1)[-1] == 1  # big-endian
    for bad in (low - 1, high + 1):
        with pytest.raises(LocalProtocolError):
            encoded(method, bad)
    with pytest.raises(LocalProtocolError):
        encoded(method, "1")


@given(st.integers(-(1 << 63), (1 << 63) - 1))
def test_int64_roundtrip(value: int) -> None:
    assert roundtrip("int64", value) == value


@given(st.integers(-(1 << 31), (1 << 31) - 1))
def test_int32_roundtrip(value: int) -> None:
    assert roundtrip("int32", value) == value


@given(st.integers(-(1 << 15), (1 << 15) - 1), st.integers(-128, 127))
def test_int16_int8_roundtrip(value16: int, value8: int) -> None:
    assert roundtrip("int16", value16) == value16
    assert roundtrip("int8", value8) == value8


@given(st.integers(0, 0xFFFF), st.integers(0, UINT32_MAX))
def test_unsigned_roundtrip(value16: int, value32: int) -> None:
    assert roundtrip("uint16", value16) == value16
    assert roundtrip("uint32", value32) == value32


@given(st.floats(allow_nan=False))
def test_float64_roundtrip(value: float) -> None:
    assert roundtrip("float64", value) == value


def test_float64_nan_roundtrips() -> None:
    assert roundtrip("float64", float("nan")) != roundtrip("float64", float("nan"))  # still NaN


def test_boolean() -> None:
    assert roundtrip("boolean", True) is True
    assert roundtrip("boolean", False) is False
    assert encoded("boolean", True) == b"\x01"
    # Kafka reads any non-zero byte as true.
    assert Reader(b"\x07").boolean() is True


@given(st.uuids())
def test_uuid_roundtrip(value: uuid.UUID) -> None:
    assert roundtrip("uuid", value) == value


def test_uuid_accepts_raw_bytes_and_rejects_wrong_size() -> None:
    assert encoded("uuid", b"\x01" * 16) == b"\x01" * 16
    with pytest.raises(LocalProtocolError):
        encoded("uuid", b"\x01" * 15)


# -- varints: the classic bug sources (sign handling, 5th/10th byte, zigzag of the extremes) ------

VARINT_VECTORS = [  # (value, protobuf zigzag encoding)
    (0, b"\x00"), (-1, b"\x01"), (1, b"\x02"), (-2, b"\x03"), (63, b"\x7e"), (-64, b"\x7f"), (64, b"\x80\x01"),
    (-65, b"\x81\x01"), (8191, b"\xfe\x7f"), (-8192, b"\xff\x7f"), (8192, b"\x80\x80\x01"),
    (INT32_MAX, b"\xfe\xff\xff\xff\x0f"), (INT32_MIN, b"\xff\xff\xff\xff\x0f"),
]


@pytest.mark.parametrize("value,expected", VARINT_VECTORS)
def test_varint_known_encodings(value: int, expected: bytes) -> None:
    assert encoded("varint", value) == expected
    assert roundtrip("varint", value) == value


def test_varlong_extremes() -> None:
    assert encoded("varlong", INT64_MAX) == b"\xfe" + b"\xff" * 8 + b"\x01"
    assert encoded("varlong", INT64_MIN) == b"\xff" * 9 + b"\x01"
    assert roundtrip("varlong", INT64_MAX) == INT64_MAX
    assert roundtrip("varlong", INT64_MIN) == INT64_MIN


@given(st.integers(INT32_MIN, INT32_MAX))
def test_varint_roundtrip(value: int) -> None:
    assert roundtrip("varint", value) == value


@given(st.integers(INT64_MIN, INT64_MAX))
def test_varlong_roundtrip(value: int) -> None:
    assert roundtrip("varlong", value) == value
    assert len(encoded("varlong", value)) <= 10


@given(st.integers(0, UINT32_MAX))
def test_uvarint_roundtrip(value: int) -> None:
    assert roundtrip("uvarint", value) == value
    assert len(encoded("uvarint", value)) <= 5


@pytest.mark.parametrize("value,expected", [(0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"), (300, b"\xac\x02"),
                                            (UINT32_MAX, b"\xff\xff\xff\xff\x0f")])
def test_uvarint_known_encodings(value: int, expected: bytes) -> None:
    assert encoded("uvarint", value) == expected


@given(st.integers(-(1 << 70), 1 << 70))
def test_zigzag_is_a_bijection(value: int) -> None:
    assert zigzag_decode(zigzag_encode(value, 72)) == value


@pytest.mark.parametrize("method,value", [("varint", INT32_MAX + 1), ("varint", INT32_MIN - 1),
                                          ("varlong", INT64_MAX + 1), ("uvarint", -1), ("uvarint", UINT32_MAX + 1)])
def test_varint_out_of_range_is_a_local_error(method: str, value: int) -> None:
    with pytest.raises(LocalProtocolError):
        encoded(method, value)


@pytest.mark.parametrize("data", [b"\x80", b"\xff\xff", b"\x80\x80\x80\x80"])
def test_truncated_varint(data: bytes) -> None:
    with pytest.raises(TruncatedMessageError):
        Reader(data).varint()


def test_overlong_varints_are_rejected() -> None:
    with pytest.raises(MalformedMessageError):
        Reader(b"\x80\x80\x80\x80\x80\x01").uvarint()  # 6 bytes
    with pytest.raises(MalformedMessageError):
        Reader(b"\xff\xff\xff\xff\x7f").uvarint()  # 5 bytes but 35 bits
    with pytest.raises(MalformedMessageError):
        Reader(b"\x80" * 10 + b"\x01").varlong()


# -- strings and bytes --------------------------------------------------------------------------

TEXT = st.text(max_size=300)


@given(TEXT)
def test_strings_roundtrip(value: str) -> None:
    for method in ("string", "nullable_string", "compact_string", "compact_nullable_string"):
        assert roundtrip(method, value) == value


def test_null_strings() -> None:
    assert encoded("nullable_string", None) == b"\xff\xff"
    assert encoded("compact_nullable_string", None) == b"\x00"
    assert roundtrip("nullable_string", None) is None
    assert roundtrip("compact_nullable_string", None) is None
    assert encoded("compact_string", "") == b"\x01"
    assert encoded("string", "ab") == b"\x00\x02ab"
    with pytest.raises(LocalProtocolError):
        encoded("string", None)
    with pytest.raises(MalformedMessageError):
        Reader(b"\xff\xff").string()  # null where not allowed
    with pytest.raises(MalformedMessageError):
        Reader(b"\x00").compact_string()


def test_string_length_limit_and_utf8() -> None:
    assert roundtrip("string", "x" * 0x7FFF) == "x" * 0x7FFF
    with pytest.raises(LocalProtocolError):
        encoded("string", "x" * 0x8000)
    with pytest.raises(MalformedMessageError):
        Reader(b"\x00\x02\xc3\x28").string()
    with pytest.raises(MalformedMessageError):
        Reader(b"\xff\xfe").nullable_string()  # -2


@given(st.binary(max_size=300))
def test_bytes_roundtrip(value: bytes) -> None:
    for method in ("bytes", "nullable_bytes", "compact_bytes", "compact_nullable_bytes"):
        assert roundtrip(method, value) == value
    for method in ("bytes_view", "nullable_bytes_view", "compact_bytes_view", "compact_nullable_bytes_view"):
        writer = Writer()
        getattr(writer, method.replace("_view", ""))(memoryview(value))
        assert getattr(Reader(bytes(writer.buf)), method)() == value


def test_bytes_views_are_zero_copy() -> None:
    frame = bytearray(b"\x00\x00\x00\x03abc")
    view = Reader(frame).bytes_view()
    frame[4] = ord("z")
    assert bytes(view) == b"zbc"


def test_null_bytes() -> None:
    assert encoded("nullable_bytes", None) == b"\xff\xff\xff\xff"
    assert Reader(b"\xff\xff\xff\xff").nullable_bytes_view() is None
    assert Reader(b"\x00").compact_nullable_bytes() is None
    with pytest.raises(MalformedMessageError):
        Reader(b"\xff\xff\xff\xff").bytes()


def test_lengths_beyond_the_buffer_are_truncation() -> None:
    with pytest.raises(TruncatedMessageError):
        Reader(b"\x00\x00\x00\x05abc").bytes()
    with pytest.raises(TruncatedMessageError):
        Reader(b"\x7f\xff\xff\xff").bytes()
    with pytest.raises(TruncatedMessageError):
        Reader(b"\x05ab").compact_string()
    with pytest.raises(TruncatedMessageError):
        Reader(b"\x00\x05ab").string()


# -- arrays and tagged fields ---------------------------------------------------------------------

def test_array_lengths() -> None:
    for count in (None, 0, 1, 1000):
        writer = Writer()
        writer.array_length(count)
        writer.compact_array_length(count)
        writer.buf += b"\x00" * 1000
        reader = Reader(bytes(writer.buf))
        assert reader.array_length(nullable=True) == (-1 if count is None else count)
        assert reader.compact_array_length(nullable=True) == (-1 if count is None else count)


def test_hostile_array_lengths_are_rejected_before_looping() -> None:
    with pytest.raises(TruncatedMessageError):
        Reader(b"\x7f\xff\xff\xff" + b"\x00" * 8).array_length()
    with pytest.raises(TruncatedMessageError):
        Reader(b"\x00\x00\x00\x03" + b"\x00" * 8).array_length(min_element_bytes=4)
    with pytest.raises(MalformedMessageError):
        Reader(b"\xff\xff\xff\xff").array_length(nullable=False)
    with pytest.raises(MalformedMessageError):
        Reader(b"\xff\xff\xff\xfe").array_length(nullable=True)


@given(st.dictionaries(st.integers(0, 1000), st.binary(max_size=20), max_size=6))
def test_tagged_fields_roundtrip(fields: dict[int, bytes]) -> None:
    pairs = sorted(fields.items())
    writer = Writer()
    writer.tagged_fields(pairs)  # type: ignore[arg-type]
    reader = Reader(bytes(writer.buf))
    assert [(tag, bytes(view)) for tag, view in reader.tagged_fields()] == pairs
    assert reader.remaining == 0


def test_tagged_fields_must_ascend() -> None:
    with pytest.raises(LocalProtocolError):
        Writer().tagged_fields([(2, b""), (1, b"")])
    with pytest.raises(MalformedMessageError):
        Reader(b"\x02\x05\x00\x01\x00").tagged_fields()
    assert Reader(b"\x00").tagged_fields() == []


# -- every reader method fails only with RemoteProtocolError on arbitrary bytes ---------------------

READ_METHODS = [name for name in dir(Reader) if not name.startswith("_") and callable(getattr(Reader, name))]


@settings(max_examples=300)
@given(st.binary(max_size=24), st.sampled_from(READ_METHODS))
def test_readers_fail_only_with_remote_errors(data: bytes, method: str) -> None:
    reader = Reader(data)
    call: Callable[[], Any] = getattr(reader, method)
    try:
        call()
    except RemoteProtocolError:
        pass
    assert 0 <= reader.pos <= len(data)


def test_writer_splices_large_records_without_changing_the_bytes() -> None:
    from flowbus.protocol.primitives import SPLICE_MIN_BYTES

    big = bytes(range(256)) * (SPLICE_MIN_BYTES // 256 + 1)
    writer = Writer()
    size_pos = writer.reserve_int32()
    writer.int16(7)
    writer.records(big)
    writer.compact_nullable_records(memoryview(big)[1:])
    writer.nullable_records(None)
    writer.compact_records(b"tiny")
    writer.patch_int32(size_pos, len(writer) - 4)
    reader = Reader(writer.getvalue())
    assert reader.int32() == len(writer) - 4 == len(writer.getvalue()) - 4
    assert reader.int16() == 7
    assert reader.bytes_view() == big
    assert reader.compact_nullable_bytes_view() == big[1:]
    assert reader.nullable_bytes_view() is None
    assert reader.compact_bytes_view() == b"tiny"
    assert reader.remaining == 0
    with pytest.raises(LocalProtocolError):
        Writer().records("not bytes")  # type: ignore[arg-type]
