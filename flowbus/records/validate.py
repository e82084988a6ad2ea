"""What the broker checks in a producer's batch beyond its CRC: max timestamp, keys when compacted.

A RecordBatch v2 header carries ``max_timestamp``, and the log trusts it: time retention deletes
a segment when its largest max_timestamp is older than ``retention.ms``, the time index is built
from it, and ListOffsets by timestamp skips every batch whose max_timestamp is below the time
asked for. Producers get it wrong: Go's sarama up to 1.22 always sends -1 (its ``MaxTimestamp``
is never set), so a broker that trusts the header deletes the topic at the next retention pass
and never finds its records by time. Kafka's ``LogValidator`` therefore recomputes the field
from the records on every append and rewrites it (with the CRC) when it differs; so do we.

The scan reads only each record's length and timestamp delta (see :mod:`flowbus.records.record`
for the layout), never keys, values or headers, and builds no objects: about 140 ns a record on
the reference machine, against about 900 ns for a full decode. It is the only per-record work
on the produce path (everything else there is per batch). A compressed batch is decompressed
once for it, bounded by ``max_bytes`` as the decoder is.

On a compacted topic (``cleanup.policy`` containing ``compact``) a record needs a key: the
cleaner keeps the latest record of each key, so a keyless one could never be cleaned. Kafka's
``LogValidator`` refuses such a batch; :func:`keyless_record_indexes` finds those records, with
a walk of the same kind, and only the compacted topics' produce path calls it.
"""

from __future__ import annotations

from flowbus.records.compression import MAX_DECOMPRESSED_BYTES, Codec, decompress
from flowbus.records.errors import CorruptRecordError, UnsupportedCompressionError
from flowbus.records.header import (
    HEADER_SIZE,
    NO_TIMESTAMP,
    BatchHeader,
    read_header,
    set_max_timestamp,
)
from flowbus.records.record import MIN_RECORD_BYTES
from flowbus.records.varint import decode_varint, decode_varlong

#: Below any varlong, so the first record's delta always replaces it.
_NO_DELTA = -(1 << 64)
#: The value of every one-byte zigzag varint (0..127), by byte: a tuple index is cheaper than
#: decoding in CPython's hot loop.
_ZIGZAG_1 = tuple((b >> 1) ^ -(b & 1) for b in range(0x80))
#: A record's bytes after its length varint: at least attributes, timestamp delta, offset
#: delta, key length, value length and header count, one byte each.
_MIN_RECORD_BODY = MIN_RECORD_BYTES - 1
INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1


def records_max_timestamp(
    buf: bytes | bytearray | memoryview,
    pos: int,
    header: BatchHeader,
    *,
    max_bytes: int = MAX_DECOMPRESSED_BYTES,
) -> int:
    """The largest record timestamp (base_timestamp + timestampDelta) of the batch at ``pos``.

    ``header`` is the batch's decoded header; its CRC must have been checked already (this is
    called on the append path right after :func:`~flowbus.records.header.check_batch`). A batch
    without records gives ``NO_TIMESTAMP`` (-1), as do records that carry no timestamp (base
    timestamp -1, deltas 0), as in Kafka.

    Raises:
        CorruptRecordError: the records do not fill the batch exactly, a length does not fit,
            or the blob cannot be decompressed.
        UnsupportedCompressionError: the attributes name an unknown codec.
    """
    start = pos + HEADER_SIZE
    end = pos + header.size_bytes
    if header.record_count == 0 and start == end:
        return NO_TIMESTAMP
    codec = header.compression
    if codec == Codec.NONE:
        data: bytes | bytearray | memoryview = buf
    elif codec <= Codec.ZSTD:
        data = decompress(codec, memoryview(buf)[start:end], max_bytes=max_bytes)
        start, end = 0, len(data)
    else:
        raise UnsupportedCompressionError(f"record batch at {pos} uses unknown compression codec id {codec}")
    count = header.record_count
    if count > (end - start) // MIN_RECORD_BYTES:
        raise CorruptRecordError(f"record_count {count} cannot fit in a records blob of {end - start} bytes")
    max_delta = _max_timestamp_delta(data, start, end, count)
    if max_delta is None:
        return NO_TIMESTAMP
    timestamp = header.base_timestamp + max_delta
    if not INT64_MIN <= timestamp <= INT64_MAX:
        raise CorruptRecordError(f"record timestamp {timestamp} overflows an int64")
    # Records without a timestamp (base -1, deltas 0) give -1; the log treats any negative max
    # timestamp as "no time known" (see flowbus.log.retention).
    return timestamp


def _max_timestamp_delta(data: bytes | bytearray | memoryview, pos: int, end: int, count: int) -> int | None:
    """Walk the records filling ``data[pos:end]``; the largest timestamp delta (None if none).

    The hot loop of every append, so written for CPython: one- and two-byte varints (record
    lengths up to 8191, deltas up to +-8191 ms) and three-byte deltas are decoded inline, with
    the one-byte zigzag values looked up in a tuple; longer ones call :mod:`flowbus.records.varint`. It runs at
    most once per MIN_RECORD_BYTES of the blob (each pass moves that far or raises), and the
    number of records must equal ``count``.
    """
    zigzag = _ZIGZAG_1
    best = _NO_DELTA
    seen = 0
    try:
        while pos < end:
            b = data[pos]
            if b < 0x80:
                length = zigzag[b]
                pos += 1
            elif (b2 := data[pos + 1]) < 0x80 and not b & 1:
                length = ((b & 0x7E) >> 1) | (b2 << 6)  # a two-byte zigzag of a positive value
                pos += 2
            else:
                length, pos = decode_varint(data, pos)
            if length < _MIN_RECORD_BODY:
                raise CorruptRecordError(f"record length {length} at {pos} is below the minimum")
            # pos is at the record's attributes byte; the timestamp delta follows it.
            b = data[pos + 1]
            if b < 0x80:
                delta = zigzag[b]
            elif (b2 := data[pos + 2]) < 0x80:
                b = (b & 0x7F) | (b2 << 7)
                delta = (b >> 1) ^ -(b & 1)
            elif (b3 := data[pos + 3]) < 0x80:
                # Three bytes: deltas up to +-1,048,575 ms, as in a batch of records stamped with
                # their event times (a window's results carry its start, spread over minutes).
                b = (b & 0x7F) | ((b2 & 0x7F) << 7) | (b3 << 14)
                delta = (b >> 1) ^ -(b & 1)
            else:
                delta, _ = decode_varlong(data, pos + 1)
            if delta > best:  # noqa: PLR1730 - max() is a call: slower in this loop
                best = delta
            pos += length
            seen += 1
    except IndexError:
        raise CorruptRecordError(f"records blob ends inside a record at {pos}") from None
    if pos != end or seen != count:
        raise CorruptRecordError(
            f"{seen} records end at byte {pos} of a {end}-byte blob; the header says {count} records"
        )
    return None if best == _NO_DELTA else best


def fix_max_timestamp(buf: bytearray, pos: int, header: BatchHeader) -> BatchHeader | None:
    """Make the batch at ``pos`` carry the max timestamp of its records (CreateTime batches).

    Returns None when the producer's value was right, else the header as rewritten (the new
    max_timestamp and CRC are in ``buf``).

    Raises:
        CorruptRecordError: as :func:`records_max_timestamp`.
        UnsupportedCompressionError: as :func:`records_max_timestamp`.
    """
    actual = records_max_timestamp(buf, pos, header)
    if actual == header.max_timestamp:
        return None
    set_max_timestamp(buf, pos, actual)
    return read_header(buf, pos)


#: What Kafka's ``LogValidator`` says of each keyless record on a compacted topic (its text,
#: followed by ``topic-partition``); Produce v8+ carries it per record in ``record_errors``.
KEYLESS_ON_COMPACTED = "Compacted topic cannot accept message without key in topic partition"


def keyless_record_indexes(
    buf: bytes | bytearray | memoryview,
    pos: int,
    header: BatchHeader,
    *,
    max_bytes: int = MAX_DECOMPRESSED_BYTES,
) -> list[int]:
    """The indexes, within the batch at ``pos``, of its records whose key is null.

    Compaction keeps the latest record of each key, so a record without a key can never be
    compacted: Kafka refuses a batch holding one on a topic whose ``cleanup.policy`` contains
    ``compact`` (INVALID_RECORD, with each such record's index in ``record_errors``). Called for
    those topics only, before the append; the produce path of other topics never pays for it.

    Like :func:`records_max_timestamp` it walks the records without building them, reading only
    each record's length and key length (about 1.3 times that walk's cost, a quarter of a full
    decode), and decompresses a compressed batch once, bounded by ``max_bytes``. The CRC is *not* checked here (the log
    checks it when it appends); a caller that is about to refuse the batch checks it first,
    so a damaged batch is reported as corrupt rather than as keyless.

    Raises:
        CorruptRecordError: the records do not fill the batch exactly, a length does not fit,
            a key length is negative but not -1 (null), or the blob cannot be decompressed.
        UnsupportedCompressionError: the attributes name an unknown codec.

    Example:
        >>> from flowbus.records import BatchBuilder, read_header
        >>> builder = BatchBuilder()
        >>> builder.append(b"k", b"v", timestamp_ms=1_000)
        >>> builder.append(None, b"v", timestamp_ms=1_000)
        >>> batch = builder.build()
        >>> keyless_record_indexes(batch, 0, read_header(batch))
        [1]
    """
    start = pos + HEADER_SIZE
    end = pos + header.size_bytes
    if header.record_count == 0 and start == end:
        return []
    codec = header.compression
    if codec == Codec.NONE:
        data: bytes | bytearray | memoryview = buf
    elif codec <= Codec.ZSTD:
        data = decompress(codec, memoryview(buf)[start:end], max_bytes=max_bytes)
        start, end = 0, len(data)
    else:
        raise UnsupportedCompressionError(f"record batch at {pos} uses unknown compression codec id {codec}")
    count = header.record_count
    if count > (end - start) // MIN_RECORD_BYTES:
        raise CorruptRecordError(f"record_count {count} cannot fit in a records blob of {end - start} bytes")
    return _null_key_indexes(data, start, end, count)


def _null_key_indexes(data: bytes | bytearray | memoryview, pos: int, end: int, count: int) -> list[int]:
    """Walk the records filling ``data[pos:end]``; the indexes of those with a null key.

    Written for CPython as :func:`_max_timestamp_delta` is: the record length's one- and
    two-byte forms are decoded inline; the timestamp and offset deltas are skipped byte by byte
    (their values do not matter here); a null key length is the single byte 0x01 (zigzag -1)
    in every client's encoding, and a longer form goes through :func:`decode_varint`. Each pass
    moves at least MIN_RECORD_BYTES forward or raises, and the record count must equal
    ``count``.
    """
    zigzag = _ZIGZAG_1
    found: list[int] = []
    seen = 0
    try:
        while pos < end:
            b = data[pos]
            if b < 0x80:
                length = zigzag[b]
                pos += 1
            elif (b2 := data[pos + 1]) < 0x80 and not b & 1:
                length = ((b & 0x7E) >> 1) | (b2 << 6)  # a two-byte zigzag of a positive value
                pos += 2
            else:
                length, pos = decode_varint(data, pos)
            if length < _MIN_RECORD_BODY:
                raise CorruptRecordError(f"record length {length} at {pos} is below the minimum")
            record_end = pos + length
            # pos is at the attributes byte; skip it, then the two delta varints.
            at = pos + 1
            while data[at] & 0x80:
                at += 1
            at += 1
            while data[at] & 0x80:
                at += 1
            at += 1
            if at >= record_end:
                raise CorruptRecordError(f"record at {pos} ends before its key")
            b = data[at]
            if b == 0x01:  # zigzag -1: a null key
                found.append(seen)
            elif b & 0x80 or b & 1:  # a multi-byte form, or a negative length other than -1
                size, _ = decode_varint(data, at)
                if size == -1:
                    found.append(seen)
                elif size < 0:
                    raise CorruptRecordError(f"record key length {size} is negative")
            pos = record_end
            seen += 1
    except IndexError:
        raise CorruptRecordError(f"records blob ends inside a record at {pos}") from None
    if pos != end or seen != count:
        raise CorruptRecordError(
            f"{seen} records end at byte {pos} of a {end}-byte blob; the header says {count} records"
        )
    return found
