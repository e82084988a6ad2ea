"""Records inside a RecordBatch v2: the decoded :class:`Record` and the batch decoder.

Each record in the (decompressed) records blob is laid out as (protocol guide, "Record";
KIP-82 for headers)::

    length             varint    bytes after this field
    attributes         int8      unused, always 0
    timestampDelta     varlong   from the batch's base_timestamp
    offsetDelta        varint    from the batch's base_offset
    keyLength          varint    -1 for a null key
    key                bytes
    valueLength        varint    -1 for a null value (a tombstone)
    value              bytes
    headersCount       varint
    headers            headersCount x [keyLength varint, key UTF-8, valueLength varint, value]

:func:`decode_batch` verifies the CRC (:func:`check_batch`) before reading any record, then
checks every length against the record and blob it lives in, that the records fill the
blob exactly, that their number matches the header, and that their offsets increase within
``last_offset_delta``. Anything else raises :class:`CorruptRecordError`; no input can make it
raise ``IndexError``, ``struct.error`` or ``UnicodeDecodeError``, or loop for longer than the
input is long.

The hot loop inlines the one- and two-byte cases of every varint (values up to +-8191:
deltas within a batch, lengths of ordinary keys and values), and the three-byte case of the
deltas (the records after the 8,192nd of a large batch, timestamps spread over minutes); it
calls :mod:`flowbus.records.varint` only for longer ones. A function call per field would
cost more than the rest of the record's decoding.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

from flowbus.records.compression import MAX_DECOMPRESSED_BYTES, Codec, decompress
from flowbus.records.errors import CorruptRecordError, UnsupportedCompressionError
from flowbus.records.header import HEADER_SIZE, BatchHeader, check_batch
from flowbus.records.varint import decode_varint, decode_varlong

#: Smallest encoded record: a 1-byte length and six 1-byte fields (attributes, timestamp
#: delta, offset delta, key length, value length, header count). Bounds record_count by
#: the blob size before the loop starts.
MIN_RECORD_BYTES = 7
#: Smallest encoded header: an empty key and a null value, one length byte each.
MIN_HEADER_BYTES = 2

#: A record header (KIP-82): UTF-8 key and bytes value (None when null).
RecordHeader = tuple[str, bytes | None]


class Record(NamedTuple):
    """One decoded record.

    ``timestamp_ms`` is the timestamp a consumer reports: the record's create time, or the
    batch's max_timestamp for every record when the batch uses LogAppendTime (as Kafka's
    clients do). ``key`` and ``value`` are None when null on the wire (a None value is a
    tombstone for compaction).
    """

    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[RecordHeader, ...] = ()


_new_record = tuple.__new__  # skips NamedTuple's Python-level __new__: 3x faster in the hot loop


def decode_batch(
    buf: bytes | bytearray | memoryview,
    pos: int = 0,
    *,
    max_bytes: int = MAX_DECOMPRESSED_BYTES,
    record_type: type[Any] = Record,
    leading_fields: tuple[Any, ...] = (),
    null_header_value: bytes | None = None,
) -> tuple[BatchHeader, list[Any]]:
    """Decode the batch at ``pos``: its header and all its records.

    ``max_bytes`` caps the decompressed records blob (see :mod:`flowbus.records.compression`).

    A consumer with its own record type builds it in the same pass, rather than copying every
    :class:`Record` into it: each record is then a ``record_type`` tuple of ``leading_fields``
    (a transport's topic and partition) followed by offset, timestamp, key, value and headers,
    with ``null_header_value`` for a null header value.

    Raises:
        CorruptRecordError: bad CRC, truncated batch, malformed or inconsistent records.
        UnsupportedCompressionError: the attributes name an unknown codec.

    Example:
        >>> from flowbus.records import BatchBuilder
        >>> builder = BatchBuilder(base_offset=10)
        >>> builder.append(b"k", b"v", timestamp_ms=1_000)
        >>> header, records = decode_batch(builder.build())
        >>> records[0].offset, records[0].value
        (10, b'v')
    """
    header = check_batch(buf, pos)
    start = pos + HEADER_SIZE
    end = pos + header.size_bytes
    codec = header.attributes & 0x07
    if header.record_count == 0 and start == end:
        # An empty batch kept only for its producer state (Kafka's cleaner writes them); Kafka
        # never decompresses an empty batch, whatever its codec bits say.
        return header, []
    if codec == Codec.NONE:
        if end - start > max_bytes:
            raise CorruptRecordError(f"records blob of {end - start} bytes exceeds the {max_bytes}-byte limit")
        data = bytes(buf[start:end])
    elif codec <= Codec.ZSTD:
        data = decompress(codec, memoryview(buf)[start:end], max_bytes=max_bytes)
    else:
        raise UnsupportedCompressionError(f"record batch at {pos} uses unknown compression codec id {codec}")
    if header.record_count > len(data) // MIN_RECORD_BYTES:
        raise CorruptRecordError(
            f"record_count {header.record_count} cannot fit in a records blob of {len(data)} bytes"
        )
    records = _decode_records(data, header, record_type, leading_fields, null_header_value)
    if header.is_log_append_time:
        # Consumers report the broker's append time (max_timestamp) for every record of a
        # LogAppendTime batch; rare enough to fix up after the hot loop rather than in it.
        max_timestamp = header.max_timestamp
        records = [record._replace(timestamp_ms=max_timestamp) for record in records]
    return header, records


def iter_records(buf: bytes | bytearray | memoryview, *, max_bytes: int = MAX_DECOMPRESSED_BYTES) -> Iterator[Record]:
    """Yield every record of a buffer of concatenated batches, in order.

    Nothing is skipped: a truncated last batch or trailing bytes raise, as does any corrupt
    batch (records of earlier batches have been yielded by then). Control batches' records
    are yielded too; check ``header.is_control`` with :func:`decode_batch` to tell them apart.

    Raises:
        CorruptRecordError: as :func:`decode_batch`, for any batch in ``buf``.
    """
    pos = 0
    end = len(buf)
    while pos < end:
        header, records = decode_batch(buf, pos, max_bytes=max_bytes)
        yield from records
        pos += header.size_bytes


def _decode_records(
    data: bytes, header: BatchHeader, cls: type[Any], leading: tuple[Any, ...], null_header_value: bytes | None
) -> list[Any]:
    """The hot loop: decode ``header.record_count`` records filling ``data`` exactly."""
    base_offset = header.base_offset
    base_timestamp = header.base_timestamp
    last_offset_delta = header.last_offset_delta
    new = _new_record
    records: list[Any] = []
    append = records.append
    end = len(data)
    pos = 0
    prev_offset_delta = -1
    min_length = MIN_RECORD_BYTES - 1  # the length varint itself is not counted
    try:
        for _ in range(header.record_count):
            # length
            b = data[pos]
            if b < 0x80:
                length = (b >> 1) ^ -(b & 1)
                pos += 1
            elif (b2 := data[pos + 1]) < 0x80:
                b = (b & 0x7F) | (b2 << 7)
                length = (b >> 1) ^ -(b & 1)
                pos += 2
            else:
                length, pos = decode_varint(data, pos)
            record_end = pos + length
            if length < min_length or record_end > end:
                raise CorruptRecordError(f"record length {length} at {pos} does not fit the records blob")
            pos += 1  # attributes: no record-level attribute is defined
            # timestampDelta
            b = data[pos]
            if b < 0x80:
                timestamp_delta = (b >> 1) ^ -(b & 1)
                pos += 1
            elif (b2 := data[pos + 1]) < 0x80:
                b = (b & 0x7F) | (b2 << 7)
                timestamp_delta = (b >> 1) ^ -(b & 1)
                pos += 2
            elif (b3 := data[pos + 2]) < 0x80:
                # Three bytes: up to +-1,048,575 ms (records stamped with event times).
                b = (b & 0x7F) | ((b2 & 0x7F) << 7) | (b3 << 14)
                timestamp_delta = (b >> 1) ^ -(b & 1)
                pos += 3
            else:
                timestamp_delta, pos = decode_varlong(data, pos)
            # offsetDelta
            b = data[pos]
            if b < 0x80:
                offset_delta = (b >> 1) ^ -(b & 1)
                pos += 1
            elif (b2 := data[pos + 1]) < 0x80:
                b = (b & 0x7F) | (b2 << 7)
                offset_delta = (b >> 1) ^ -(b & 1)
                pos += 2
            elif (b3 := data[pos + 2]) < 0x80:
                # Three bytes: the records after the 8,192nd of a batch (a large fetch's batches).
                b = (b & 0x7F) | ((b2 & 0x7F) << 7) | (b3 << 14)
                offset_delta = (b >> 1) ^ -(b & 1)
                pos += 3
            else:
                offset_delta, pos = decode_varint(data, pos)
            if offset_delta <= prev_offset_delta or offset_delta > last_offset_delta:
                raise CorruptRecordError(
                    f"record offset delta {offset_delta} after {prev_offset_delta} "
                    f"(last_offset_delta {last_offset_delta})"
                )
            prev_offset_delta = offset_delta
            # key
            b = data[pos]
            if b < 0x80:
                size = (b >> 1) ^ -(b & 1)
                pos += 1
            elif (b2 := data[pos + 1]) < 0x80:
                b = (b & 0x7F) | (b2 << 7)
                size = (b >> 1) ^ -(b & 1)
                pos += 2
            else:
                size, pos = decode_varint(data, pos)
            if size >= 0:
                key: bytes | None = data[pos : pos + size]
                pos += size
            elif size == -1:
                key = None
            else:
                raise CorruptRecordError(f"record key length {size} is negative")
            # value
            b = data[pos]
            if b < 0x80:
                size = (b >> 1) ^ -(b & 1)
                pos += 1
            elif (b2 := data[pos + 1]) < 0x80:
                b = (b & 0x7F) | (b2 << 7)
                size = (b >> 1) ^ -(b & 1)
                pos += 2
            else:
                size, pos = decode_varint(data, pos)
            if size >= 0:
                value: bytes | None = data[pos : pos + size]
                pos += size
            elif size == -1:
                value = None
            else:
                raise CorruptRecordError(f"record value length {size} is negative")
            # headers
            b = data[pos]
            if b == 0:
                headers: tuple[RecordHeader, ...] = ()
                pos += 1
            else:
                headers, pos = _decode_headers(data, pos, record_end, null_header_value)
            if pos != record_end:
                raise CorruptRecordError(f"record fields end at {pos} but its length says {record_end}")
            # () + t is t itself: no copy for a plain Record.
            append(new(cls, leading + (base_offset + offset_delta, base_timestamp + timestamp_delta, key, value, headers)))
    except IndexError:
        raise CorruptRecordError(f"records blob of {end} bytes ends inside a record") from None
    if pos != end:
        raise CorruptRecordError(f"{end - pos} bytes follow the last of {header.record_count} records")
    return records


def _decode_headers(
    data: bytes, pos: int, record_end: int, null_value: bytes | None = None
) -> tuple[tuple[RecordHeader, ...], int]:
    """Decode a header count and the headers of one record; ``record_end`` bounds the count;
    a null value is given as ``null_value``."""
    count, pos = decode_varint(data, pos)
    if count < 0 or count * MIN_HEADER_BYTES > record_end - pos:
        raise CorruptRecordError(f"record header count {count} does not fit the record")
    headers: list[RecordHeader] = []
    for _ in range(count):
        size, pos = decode_varint(data, pos)
        if size < 0 or pos + size > record_end:
            raise CorruptRecordError(f"record header key length {size} does not fit the record")
        try:
            name = data[pos : pos + size].decode("utf-8")
        except UnicodeDecodeError:
            raise CorruptRecordError(f"record header key at {pos} is not UTF-8") from None
        pos += size
        size, pos = decode_varint(data, pos)
        if size >= 0:
            if pos + size > record_end:
                raise CorruptRecordError(f"record header value length {size} does not fit the record")
            header_value: bytes | None = data[pos : pos + size]
            pos += size
        elif size == -1:
            header_value = null_value
        else:
            raise CorruptRecordError(f"record header value length {size} is negative")
        headers.append((name, header_value))
    return tuple(headers), pos
