"""Kafka's primitive wire types: a bounds-checked :class:`Reader` and an appending :class:`Writer`.

Every Kafka message is built from a handful of primitives (see the protocol guide, "Protocol
Primitive Types"): big-endian fixed-width integers, zigzag varints (KIP-482 flexible versions use
*unsigned* varints for lengths and tags), strings and bytes with int16/int32 length prefixes or
"compact" unsigned-varint ``length + 1`` prefixes (0 meaning null), UUIDs and tagged-field sections.

The :class:`Reader` never lets an ``IndexError``, ``struct.error`` or ``UnicodeDecodeError`` escape:
any overrun or malformed value becomes a :class:`~flowbus.protocol.errors.RemoteProtocolError`
subclass, because the bytes came from a peer and the broker must be able to close just that
connection. Byte-typed values are returned as zero-copy ``memoryview`` slices where the caller asks
(``records``), so a 1 MiB produce batch is never copied by the codec.
"""

from __future__ import annotations

import builtins
import struct
import uuid

from flowbus.protocol.errors import (
    LocalProtocolError,
    MalformedMessageError,
    RequestTooComplexError,
    TruncatedMessageError,
)

#: A varint (int32) takes at most 5 bytes; more means a malformed or hostile encoding.
MAX_VARINT_BYTES = 5
#: A varlong (int64) takes at most 10 bytes.
MAX_VARLONG_BYTES = 10
#: Default element budget of a :class:`Reader`: effectively none (responses a client decodes, records).
#: The broker gives each request a small per-API budget instead (``codec.MAX_REQUEST_ELEMENTS``).
UNLIMITED_ELEMENTS = 1 << 62

_I8 = struct.Struct(">b")
_I16 = struct.Struct(">h")
_U16 = struct.Struct(">H")
_I32 = struct.Struct(">i")
_U32 = struct.Struct(">I")
_I64 = struct.Struct(">q")
_F64 = struct.Struct(">d")

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1
INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
UINT32_MAX = (1 << 32) - 1

ZERO_UUID = uuid.UUID(int=0)

#: ``records`` values at least this large are spliced into the output instead of copied into the
#: Writer's buffer (smaller ones are cheaper to copy than to track).
SPLICE_MIN_BYTES = 4096

BytesLike = bytes | bytearray | memoryview


def zigzag_encode(value: int, bits: int) -> int:
    """Map a signed int to an unsigned one so small magnitudes stay short (protobuf's zigzag)."""
    return (value << 1) ^ (value >> (bits - 1))


def zigzag_decode(value: int) -> int:
    """Inverse of :func:`zigzag_encode`."""
    return (value >> 1) ^ -(value & 1)


class Reader:
    """Reads primitives from a buffer, advancing ``pos``; never reads past ``end``.

    Args:
        data: the bytes to read (a frame). Wrapped in a ``memoryview``; never copied.
        pos: where to start.
        end: one past the last readable byte (default: the end of ``data``).
        max_elements: the element budget: array elements plus tagged fields, summed over every
            nesting level, that this reader may decode. Each count is charged *before* its loop
            runs, so a frame of a million tiny elements fails after reading one varint instead of
            holding the event loop for seconds (issue 10, item 4).

    Raises (from every method):
        TruncatedMessageError: a value runs past ``end``.
        MalformedMessageError: a value is impossible (negative length, overlong varint, bad UTF-8).
        RequestTooComplexError: the counts read so far exceed ``max_elements``.
    """

    __slots__ = ("buf", "elements_left", "end", "pos")

    def __init__(self, data: BytesLike, pos: int = 0, end: int | None = None,
                 max_elements: int = UNLIMITED_ELEMENTS) -> None:
        self.buf = data if isinstance(data, memoryview) else memoryview(data)
        if self.buf.format != "B" or self.buf.ndim != 1:
            self.buf = self.buf.cast("B")
        self.pos = pos
        self.end = len(self.buf) if end is None else end
        self.elements_left = max_elements

    def _charge_elements(self, count: int, what: str) -> None:
        """Take ``count`` elements from the budget before looping over them.

        Raises:
            RequestTooComplexError: the budget is exhausted.
        """
        left = self.elements_left - count
        if left < 0:
            raise RequestTooComplexError(
                f"{what}: {count} more elements exceed the limit of elements per message "
                f"({self.elements_left} left)")
        self.elements_left = left

    @property
    def remaining(self) -> int:
        """Bytes left before ``end``."""
        return self.end - self.pos

    def _advance(self, size: int) -> int:
        """Reserve ``size`` bytes and return where they start."""
        start = self.pos
        stop = start + size
        if stop > self.end:
            raise TruncatedMessageError(f"need {size} bytes at offset {start}, only {self.end - start} left")
        self.pos = stop
        return start

    # -- fixed width -------------------------------------------------------------------------
    def int8(self) -> int:
        return _I8.unpack_from(self.buf, self._advance(1))[0]

    def int16(self) -> int:
        return _I16.unpack_from(self.buf, self._advance(2))[0]

    def uint16(self) -> int:
        return _U16.unpack_from(self.buf, self._advance(2))[0]

    def int32(self) -> int:
        return _I32.unpack_from(self.buf, self._advance(4))[0]

    def uint32(self) -> int:
        return _U32.unpack_from(self.buf, self._advance(4))[0]

    def int64(self) -> int:
        return _I64.unpack_from(self.buf, self._advance(8))[0]

    def float64(self) -> float:
        return _F64.unpack_from(self.buf, self._advance(8))[0]

    def boolean(self) -> bool:
        """Any non-zero byte is true (Kafka's reader does the same)."""
        return self.buf[self._advance(1)] != 0

    def uuid(self) -> uuid.UUID:
        start = self._advance(16)
        return uuid.UUID(bytes=bytes(self.buf[start:start + 16]))

    # -- varints -----------------------------------------------------------------------------
    def _unsigned_varint(self, max_bytes: int) -> int:
        buf = self.buf
        pos = self.pos
        end = self.end
        value = 0
        shift = 0
        for _ in range(max_bytes):
            if pos >= end:
                raise TruncatedMessageError(f"varint runs past the end at offset {pos}")
            byte = buf[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                self.pos = pos
                return value
            shift += 7
        raise MalformedMessageError(f"varint longer than {max_bytes} bytes at offset {self.pos}")

    def uvarint(self) -> int:
        """Unsigned varint (32-bit): compact lengths, tag numbers, tagged-field sizes."""
        pos = self.pos
        if pos < self.end:
            byte = self.buf[pos]
            if byte < 0x80:  # fast path: almost every length and tag count fits one byte
                self.pos = pos + 1
                return byte
        value = self._unsigned_varint(MAX_VARINT_BYTES)
        if value > UINT32_MAX:
            raise MalformedMessageError(f"unsigned varint {value} does not fit 32 bits")
        return value

    def varint(self) -> int:
        """Zigzag-encoded signed 32-bit varint (record fields)."""
        value = self.uvarint()
        return zigzag_decode(value)

    def uvarlong(self) -> int:
        value = self._unsigned_varint(MAX_VARLONG_BYTES)
        if value > (1 << 64) - 1:
            raise MalformedMessageError(f"unsigned varlong {value} does not fit 64 bits")
        return value

    def varlong(self) -> int:
        """Zigzag-encoded signed 64-bit varint (record timestamps)."""
        return zigzag_decode(self.uvarlong())

    # -- lengths -----------------------------------------------------------------------------
    def _length(self, length: int, nullable: bool, what: str) -> int:
        """Validate a decoded length (``-1`` = null) against nullability and remaining bytes."""
        if length < 0:
            if length == -1 and nullable:
                return -1
            raise MalformedMessageError(f"{what}: invalid length {length} (null not allowed here)")
        if length > self.end - self.pos:
            raise TruncatedMessageError(f"{what}: length {length} exceeds the {self.end - self.pos} bytes left")
        return length

    def array_length(self, nullable: bool = False, min_element_bytes: int = 1) -> int:
        """int32 array length; ``-1`` for null. Checked against the bytes left.

        ``min_element_bytes`` is the smallest encoding of one element; a claimed count that cannot
        fit is rejected before the caller loops, so a hostile ``0x7fffffff`` cannot spin the CPU.
        """
        return self._array_count(self.int32(), nullable, min_element_bytes)

    def compact_array_length(self, nullable: bool = False, min_element_bytes: int = 1) -> int:
        """Unsigned varint ``length + 1`` array length (0 = null), as for :meth:`array_length`."""
        return self._array_count(self.uvarint() - 1, nullable, min_element_bytes)

    def _array_count(self, count: int, nullable: bool, min_element_bytes: int) -> int:
        if count < 0:
            if count == -1 and nullable:
                return -1
            raise MalformedMessageError(f"invalid array length {count} (null not allowed here)")
        if count * max(min_element_bytes, 1) > self.end - self.pos:
            raise TruncatedMessageError(f"array of {count} elements cannot fit in {self.end - self.pos} bytes")
        if count:
            self._charge_elements(count, "array")
        return count

    # -- strings -----------------------------------------------------------------------------
    def _utf8(self, size: int) -> str:
        start = self._advance(size)
        try:
            return str(self.buf[start:start + size], "utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedMessageError(f"string at offset {start} is not UTF-8: {exc.reason}") from None

    def string(self) -> str:
        """int16 length + UTF-8 (non-nullable)."""
        return self._utf8(self._length(self.int16(), False, "string"))

    def nullable_string(self) -> str | None:
        size = self._length(self.int16(), True, "nullable string")
        return None if size < 0 else self._utf8(size)

    def compact_string(self) -> str:
        """Unsigned varint ``length + 1`` + UTF-8 (non-nullable; 0 is an error)."""
        size = self.uvarint() - 1
        start = self.pos
        stop = start + size
        if size < 0 or stop > self.end:
            self._length(size, False, "compact string")  # raises the precise error
        self.pos = stop
        try:
            return str(self.buf[start:stop], "utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedMessageError(f"string at offset {start} is not UTF-8: {exc.reason}") from None

    def compact_nullable_string(self) -> str | None:
        size = self.uvarint() - 1
        if size < 0:
            return None
        start = self.pos
        stop = start + size
        if stop > self.end:
            self._length(size, True, "compact nullable string")
        self.pos = stop
        try:
            return str(self.buf[start:stop], "utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedMessageError(f"string at offset {start} is not UTF-8: {exc.reason}") from None

    # -- bytes -------------------------------------------------------------------------------
    def _view(self, size: int) -> memoryview:
        start = self._advance(size)
        return self.buf[start:start + size]

    def bytes_view(self) -> memoryview:
        """int32 length + bytes, returned as a zero-copy slice of the buffer."""
        return self._view(self._length(self.int32(), False, "bytes"))

    def nullable_bytes_view(self) -> memoryview | None:
        size = self._length(self.int32(), True, "nullable bytes")
        return None if size < 0 else self._view(size)

    def compact_bytes_view(self) -> memoryview:
        return self._view(self._length(self.uvarint() - 1, False, "compact bytes"))

    def compact_nullable_bytes_view(self) -> memoryview | None:
        size = self.uvarint() - 1
        if size < 0:
            return None
        start = self.pos
        stop = start + size
        if stop > self.end:
            self._length(size, True, "compact nullable bytes")
        self.pos = stop
        return self.buf[start:stop]

    def bytes(self) -> bytes:
        """int32 length + bytes, copied (for small values handlers keep, e.g. group metadata)."""
        return bytes(self.bytes_view())

    def nullable_bytes(self) -> builtins.bytes | None:
        view = self.nullable_bytes_view()
        return None if view is None else bytes(view)

    def compact_bytes(self) -> builtins.bytes:
        return bytes(self.compact_bytes_view())

    def compact_nullable_bytes(self) -> builtins.bytes | None:
        view = self.compact_nullable_bytes_view()
        return None if view is None else bytes(view)

    # -- tagged fields -----------------------------------------------------------------------
    def tagged_fields(self) -> list[tuple[int, memoryview]]:
        """A KIP-482 tagged-field section: count, then (tag, size, payload) with ascending tags."""
        count = self.uvarint()
        # Each tagged field takes at least two bytes (tag and size).
        if count * 2 > self.end - self.pos:
            raise TruncatedMessageError(f"{count} tagged fields cannot fit in {self.end - self.pos} bytes")
        if count:
            self._charge_elements(count, "tagged fields")
        fields: list[tuple[int, memoryview]] = []
        previous = -1
        for _ in range(count):
            tag = self.uvarint()
            if tag <= previous:
                raise MalformedMessageError(f"tagged field {tag} out of order (after {previous})")
            previous = tag
            size = self._length(self.uvarint(), False, "tagged field")
            fields.append((tag, self._view(size)))
        return fields

    def skip_tagged_fields(self) -> None:
        """Read and discard a tagged-field section (e.g. request header v2 tags we do not know)."""
        self.tagged_fields()


class Writer:
    """Appends primitives to a ``bytearray``. Values out of range raise :class:`LocalProtocolError`.

    The buffer grows in place; :meth:`reserve_int32` leaves a slot (the frame size) to fill later
    with :meth:`patch_int32`. Large ``records`` values are not copied into the buffer: they are
    *spliced* -- remembered with their position -- and :meth:`getvalue` joins buffer pieces and
    record slices in one pass, so a fetch response's record data is copied exactly once.
    """

    __slots__ = ("_spliced_bytes", "_splices", "buf")

    def __init__(self) -> None:
        self.buf = bytearray()
        self._splices: list[tuple[int, BytesLike]] = []
        self._spliced_bytes = 0

    def getvalue(self) -> builtins.bytes:
        """Everything written, spliced values included, as one ``bytes``."""
        if not self._splices:
            return builtins.bytes(self.buf)
        parts: list[BytesLike] = []
        last = 0
        with memoryview(self.buf) as view:
            for pos, value in self._splices:
                parts.append(view[last:pos])
                parts.append(value)
                last = pos
            parts.append(view[last:])
            out = b"".join(parts)
            for part in parts:
                if isinstance(part, memoryview) and part.obj is self.buf:
                    part.release()
        return out

    def __len__(self) -> int:
        return len(self.buf) + self._spliced_bytes

    def reserve_int32(self) -> int:
        pos = len(self.buf)
        self.buf += b"\x00\x00\x00\x00"
        return pos

    def patch_int32(self, pos: int, value: int) -> None:
        _I32.pack_into(self.buf, pos, value)

    # -- fixed width -------------------------------------------------------------------------
    def int8(self, value: int) -> None:
        try:
            self.buf += _I8.pack(value)
        except struct.error as exc:
            raise LocalProtocolError(f"int8: cannot encode {value!r}: {exc}") from None

    def int16(self, value: int) -> None:
        try:
            self.buf += _I16.pack(value)
        except struct.error as exc:
            raise LocalProtocolError(f"int16: cannot encode {value!r}: {exc}") from None

    def uint16(self, value: int) -> None:
        try:
            self.buf += _U16.pack(value)
        except struct.error as exc:
            raise LocalProtocolError(f"uint16: cannot encode {value!r}: {exc}") from None

    def int32(self, value: int) -> None:
        try:
            self.buf += _I32.pack(value)
        except struct.error as exc:
            raise LocalProtocolError(f"int32: cannot encode {value!r}: {exc}") from None

    def uint32(self, value: int) -> None:
        try:
            self.buf += _U32.pack(value)
        except struct.error as exc:
            raise LocalProtocolError(f"uint32: cannot encode {value!r}: {exc}") from None

    def int64(self, value: int) -> None:
        try:
            self.buf += _I64.pack(value)
        except struct.error as exc:
            raise LocalProtocolError(f"int64: cannot encode {value!r}: {exc}") from None

    def float64(self, value: float) -> None:
        try:
            self.buf += _F64.pack(value)
        except struct.error as exc:
            raise LocalProtocolError(f"float64: cannot encode {value!r}: {exc}") from None

    def boolean(self, value: bool) -> None:
        if not isinstance(value, (bool, int)):
            raise LocalProtocolError(f"boolean expected, got {type(value).__name__}")
        self.buf.append(1 if value else 0)

    def uuid(self, value: uuid.UUID | BytesLike) -> None:
        """A UUID as 16 raw bytes; accepts :class:`uuid.UUID` or 16 bytes."""
        raw = value.bytes if isinstance(value, uuid.UUID) else bytes(value)
        if len(raw) != 16:
            raise LocalProtocolError(f"uuid must be 16 bytes, got {len(raw)}")
        self.buf += raw

    # -- varints -----------------------------------------------------------------------------
    def _unsigned_varint(self, value: int) -> None:
        buf = self.buf
        while value > 0x7F:
            buf.append((value & 0x7F) | 0x80)
            value >>= 7
        buf.append(value)

    def uvarint(self, value: int) -> None:
        if not 0 <= value <= UINT32_MAX:
            raise LocalProtocolError(f"unsigned varint {value} out of range")
        if value < 0x80:
            self.buf.append(value)
        else:
            self._unsigned_varint(value)

    def varint(self, value: int) -> None:
        if not INT32_MIN <= value <= INT32_MAX:
            raise LocalProtocolError(f"varint {value} out of int32 range")
        self._unsigned_varint(zigzag_encode(value, 32) & UINT32_MAX)

    def uvarlong(self, value: int) -> None:
        if not 0 <= value < (1 << 64):
            raise LocalProtocolError(f"unsigned varlong {value} out of range")
        self._unsigned_varint(value)

    def varlong(self, value: int) -> None:
        if not INT64_MIN <= value <= INT64_MAX:
            raise LocalProtocolError(f"varlong {value} out of int64 range")
        self._unsigned_varint(zigzag_encode(value, 64) & ((1 << 64) - 1))

    # -- lengths -----------------------------------------------------------------------------
    def array_length(self, count: int | None) -> None:
        """int32 length, ``None`` -> -1 (the caller checked nullability)."""
        self.int32(-1 if count is None else count)

    def compact_array_length(self, count: int | None) -> None:
        self.uvarint(0 if count is None else count + 1)

    # -- strings -----------------------------------------------------------------------------
    @staticmethod
    def _encode_str(value: str) -> bytes:
        if not isinstance(value, str):
            raise LocalProtocolError(f"string expected, got {type(value).__name__}")
        return value.encode("utf-8")

    def string(self, value: str) -> None:
        if value is None:
            raise LocalProtocolError("None given for a non-nullable string")
        raw = self._encode_str(value)
        if len(raw) > 0x7FFF:
            raise LocalProtocolError(f"string of {len(raw)} bytes exceeds the int16 length limit")
        self.buf += _I16.pack(len(raw))
        self.buf += raw

    def nullable_string(self, value: str | None) -> None:
        if value is None:
            self.buf += b"\xff\xff"
        else:
            self.string(value)

    def compact_string(self, value: str) -> None:
        if value.__class__ is not str:
            if value is None:
                raise LocalProtocolError("None given for a non-nullable compact string")
            value = self._encode_str(value).decode("utf-8")
        raw = value.encode("utf-8")
        size = len(raw) + 1
        if size < 0x80:
            self.buf.append(size)
        else:
            self.uvarint(size)
        self.buf += raw

    def compact_nullable_string(self, value: str | None) -> None:
        if value is None:
            self.buf.append(0)
        else:
            self.compact_string(value)

    # -- bytes -------------------------------------------------------------------------------
    @staticmethod
    def _check_bytes(value: object) -> None:
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise LocalProtocolError(f"bytes expected, got {type(value).__name__}")

    def bytes(self, value: BytesLike) -> None:
        if value is None:
            raise LocalProtocolError("None given for non-nullable bytes")
        self._check_bytes(value)
        size = value.nbytes if isinstance(value, memoryview) else len(value)
        self.buf += _I32.pack(size)
        self.buf += value

    def nullable_bytes(self, value: BytesLike | None) -> None:
        if value is None:
            self.buf += b"\xff\xff\xff\xff"
        else:
            self.bytes(value)

    def compact_bytes(self, value: BytesLike) -> None:
        if value is None:
            raise LocalProtocolError("None given for non-nullable compact bytes")
        self._check_bytes(value)
        size = value.nbytes if isinstance(value, memoryview) else len(value)
        self.uvarint(size + 1)
        self.buf += value

    # -- records: bytes on the wire, spliced instead of copied when large ----------------------
    def _splice(self, value: BytesLike, size: int) -> None:
        if size < SPLICE_MIN_BYTES:
            self.buf += value
        else:
            self._splices.append((len(self.buf), value))
            self._spliced_bytes += size

    def _records_size(self, value: BytesLike) -> int:
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise LocalProtocolError(f"records must be bytes-like, got {type(value).__name__}")
        return value.nbytes if isinstance(value, memoryview) else len(value)

    def records(self, value: BytesLike) -> None:
        if value is None:
            raise LocalProtocolError("None given for non-nullable records")
        size = self._records_size(value)
        self.buf += _I32.pack(size)
        self._splice(value, size)

    def nullable_records(self, value: BytesLike | None) -> None:
        if value is None:
            self.buf += b"\xff\xff\xff\xff"
        else:
            self.records(value)

    def compact_records(self, value: BytesLike) -> None:
        if value is None:
            raise LocalProtocolError("None given for non-nullable records")
        size = self._records_size(value)
        self.uvarint(size + 1)
        self._splice(value, size)

    def compact_nullable_records(self, value: BytesLike | None) -> None:
        if value is None:
            self.buf.append(0)
        else:
            self.compact_records(value)

    def compact_nullable_bytes(self, value: BytesLike | None) -> None:
        if value is None:
            self.buf.append(0)
            return
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise LocalProtocolError(f"bytes expected, got {type(value).__name__}")
        size = value.nbytes if isinstance(value, memoryview) else len(value)
        self.uvarint(size + 1)
        self.buf += value

    # -- tagged fields -----------------------------------------------------------------------
    def tagged_fields(self, fields: list[tuple[int, BytesLike]]) -> None:
        """A tagged-field section from (tag, payload) pairs; tags must be ascending and unique."""
        self.uvarint(len(fields))
        previous = -1
        for tag, payload in fields:
            if tag <= previous:
                raise LocalProtocolError(f"tagged fields must be in ascending tag order ({tag} after {previous})")
            previous = tag
            self.uvarint(tag)
            size = payload.nbytes if isinstance(payload, memoryview) else len(payload)
            self.uvarint(size)
            self.buf += payload

    def empty_tagged_fields(self) -> None:
        self.buf.append(0)
