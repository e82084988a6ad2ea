"""Variable-length integers as Kafka writes them in records and flexible protocol versions.

Kafka's record format (KIP-98, protocol guide "Record") encodes lengths, deltas and counts as
protobuf-style base-128 varints: seven payload bits per byte, least significant group first,
the high bit set on every byte but the last. Signed values are zigzag-mapped first
(0, -1, 1, -2, ... become 0, 1, 2, 3, ...) so that small negative numbers stay short;
the flexible request versions (KIP-482) use the same encoding without zigzag for
compact lengths and tagged fields ("unsigned varint").

Sizes are bounded: an int32 needs at most 5 bytes and an int64 at most 10. Anything
longer, anything that overflows the type, or a buffer that ends inside a varint is
peer-sent garbage and raises :class:`CorruptRecordError`. Values a caller passes to an
encoder that do not fit the type are a programming error and raise ``ValueError``.

The record decoder in :mod:`flowbus.records.record` inlines the one-byte case of these
decoders in its hot loop; this module is the reference and the slow path.
"""

from __future__ import annotations

from flowbus.records.errors import CorruptRecordError

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1
INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
UINT32_MAX = (1 << 32) - 1

#: Longest legal encodings: ceil(32 / 7) and ceil(64 / 7) bytes.
MAX_VARINT_BYTES = 5
MAX_VARLONG_BYTES = 10

#: Signed values in [-SMALL_VARINT_LIMIT, SMALL_VARINT_LIMIT) zigzag-encode to one or two
#: bytes. They are prebuilt (about 0.7 MB) because record encoding is dominated by such
#: values -- timestamp and offset deltas within a batch, lengths of keys and values -- and a
#: list lookup costs a fraction of encoding: index with ``value + SMALL_VARINT_LIMIT``.
SMALL_VARINT_LIMIT = 1 << 13
SMALL_VARINTS: list[bytes] = []
for _v in range(-SMALL_VARINT_LIMIT, SMALL_VARINT_LIMIT):
    _n = (_v << 1) ^ (_v >> 63)
    SMALL_VARINTS.append(bytes([_n]) if _n < 0x80 else bytes([(_n & 0x7F) | 0x80, _n >> 7]))
del _v, _n
_ONE_BYTE_UNSIGNED: list[bytes] = [bytes([v]) for v in range(128)]


def _encode_unsigned(n: int) -> bytes:
    """Base-128 groups of a non-negative integer, least significant first."""
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _decode_unsigned(buf: bytes | bytearray | memoryview, pos: int, max_bytes: int, max_value: int) -> tuple[int, int]:
    """Read one unsigned base-128 integer of at most ``max_bytes`` bytes that fits ``max_value``."""
    result = 0
    shift = 0
    end = len(buf)
    for i in range(max_bytes):
        if pos + i >= end:
            raise CorruptRecordError(f"varint truncated at byte {i} (position {pos + i}, buffer {end} bytes)")
        b = buf[pos + i]
        result |= (b & 0x7F) << shift
        if b < 0x80:
            if result > max_value:
                raise CorruptRecordError(f"varint at position {pos} overflows: {result} > {max_value}")
            return result, pos + i + 1
        shift += 7
    raise CorruptRecordError(f"varint at position {pos} is longer than {max_bytes} bytes")


def encode_varint(value: int) -> bytes:
    """Zigzag-encode a signed int32 (Kafka ``varint``).

    Example:
        >>> encode_varint(-1), encode_varint(150)
        (b'\\x01', b'\\xac\\x02')
    """
    if -SMALL_VARINT_LIMIT <= value < SMALL_VARINT_LIMIT:
        return SMALL_VARINTS[value + SMALL_VARINT_LIMIT]
    if not INT32_MIN <= value <= INT32_MAX:
        raise ValueError(f"varint value {value} is outside int32")
    return _encode_unsigned((value << 1) ^ (value >> 31))


def encode_varlong(value: int) -> bytes:
    """Zigzag-encode a signed int64 (Kafka ``varlong``, used for timestamp deltas)."""
    if -SMALL_VARINT_LIMIT <= value < SMALL_VARINT_LIMIT:
        return SMALL_VARINTS[value + SMALL_VARINT_LIMIT]
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"varlong value {value} is outside int64")
    return _encode_unsigned((value << 1) ^ (value >> 63))


def encode_unsigned_varint(value: int) -> bytes:
    """Encode a uint32 without zigzag (compact lengths and tagged fields, KIP-482)."""
    if 0 <= value < 128:
        return _ONE_BYTE_UNSIGNED[value]
    if not 0 <= value <= UINT32_MAX:
        raise ValueError(f"unsigned varint value {value} is outside uint32")
    return _encode_unsigned(value)


def decode_varint(buf: bytes | bytearray | memoryview, pos: int = 0) -> tuple[int, int]:
    """Decode a zigzag int32 at ``pos``; return ``(value, position after it)``.

    Raises:
        CorruptRecordError: truncated, longer than 5 bytes, or outside int32.
    """
    if 0 <= pos < len(buf):
        b = buf[pos]
        if b < 0x80:
            return (b >> 1) ^ -(b & 1), pos + 1
    elif pos < 0:
        raise CorruptRecordError(f"varint position {pos} is negative")
    n, pos = _decode_unsigned(buf, pos, MAX_VARINT_BYTES, UINT32_MAX)
    return (n >> 1) ^ -(n & 1), pos


def decode_varlong(buf: bytes | bytearray | memoryview, pos: int = 0) -> tuple[int, int]:
    """Decode a zigzag int64 at ``pos``; return ``(value, position after it)``.

    Raises:
        CorruptRecordError: truncated, longer than 10 bytes, or outside int64.
    """
    if 0 <= pos < len(buf):
        b = buf[pos]
        if b < 0x80:
            return (b >> 1) ^ -(b & 1), pos + 1
    elif pos < 0:
        raise CorruptRecordError(f"varlong position {pos} is negative")
    n, pos = _decode_unsigned(buf, pos, MAX_VARLONG_BYTES, (1 << 64) - 1)
    return (n >> 1) ^ -(n & 1), pos


def decode_unsigned_varint(buf: bytes | bytearray | memoryview, pos: int = 0) -> tuple[int, int]:
    """Decode a uint32 (no zigzag) at ``pos``; return ``(value, position after it)``.

    Raises:
        CorruptRecordError: truncated, longer than 5 bytes, or above uint32.
    """
    if 0 <= pos < len(buf):
        b = buf[pos]
        if b < 0x80:
            return b, pos + 1
    elif pos < 0:
        raise CorruptRecordError(f"varint position {pos} is negative")
    return _decode_unsigned(buf, pos, MAX_VARINT_BYTES, UINT32_MAX)


def varint_size(value: int) -> int:
    """Bytes :func:`encode_varint` / :func:`encode_varlong` would write for ``value``."""
    n = (value << 1) ^ (value >> 63) if value < 0 else value << 1
    size = 1
    while n >= 0x80:
        n >>= 7
        size += 1
    return size
