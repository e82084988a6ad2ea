"""The fixed 61-byte header of a Kafka RecordBatch v2 (magic 2), read and patched in place.

Layout (big-endian; see Kafka's protocol guide, "Record Batch")::

    offset  size  field
    0       8     base_offset             set by the broker on append
    8       4     batch_length            bytes after this field
    12      4     partition_leader_epoch  outside the CRC; set by the broker
    16      1     magic                   always 2
    17      4     crc                     CRC-32C (Castagnoli) of bytes 21..end
    21      2     attributes              see the ATTR_* masks below
    23      4     last_offset_delta
    27      8     base_timestamp
    35      8     max_timestamp
    43      8     producer_id             -1 when not idempotent
    51      2     producer_epoch
    53      4     base_sequence
    57      4     record_count
    61      ...   records (one compressed blob when the codec is not NONE)

The broker and the log work per batch: they read this header, check the CRC, and rewrite
only the fields the broker owns (base offset, leader epoch, and the max timestamp when
LogAppendTime stamps it or the producer's value disagrees with its records, see
:mod:`flowbus.records.validate`; a new max timestamp forces a new CRC). Everything here is
pure bytes work with no I/O.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterator

import crc32c as _crc32c

from flowbus.records.errors import CorruptRecordError

MAGIC_V2 = 2

BASE_OFFSET_POS = 0
BATCH_LENGTH_POS = 8
LEADER_EPOCH_POS = 12
MAGIC_POS = 16
CRC_POS = 17
ATTRIBUTES_POS = 21
LAST_OFFSET_DELTA_POS = 23
BASE_TIMESTAMP_POS = 27
MAX_TIMESTAMP_POS = 35
PRODUCER_ID_POS = 43
PRODUCER_EPOCH_POS = 51
BASE_SEQUENCE_POS = 53
RECORD_COUNT_POS = 57
HEADER_SIZE = 61

#: Bytes before batch_length ends: a batch occupies LOG_OVERHEAD + batch_length bytes.
LOG_OVERHEAD = 12
#: The smallest legal batch_length: the header after the length field, with no records.
MIN_BATCH_LENGTH = HEADER_SIZE - LOG_OVERHEAD

ATTR_COMPRESSION_MASK = 0x07
ATTR_TIMESTAMP_TYPE_MASK = 0x08  # set: LogAppendTime; clear: CreateTime
ATTR_TRANSACTIONAL_MASK = 0x10
ATTR_CONTROL_MASK = 0x20
ATTR_DELETE_HORIZON_MASK = 0x40  # KIP-534: base_timestamp holds the tombstone delete horizon

NO_PRODUCER_ID = -1
NO_PRODUCER_EPOCH = -1
NO_SEQUENCE = -1
NO_TIMESTAMP = -1

_HEADER = struct.Struct(">qiibIhiqqqhii")
_PREFIX = struct.Struct(">qi")
_INT64 = struct.Struct(">q")
_INT32 = struct.Struct(">i")
_UINT32 = struct.Struct(">I")

#: The fixed header as one struct, in the field order of :class:`BatchHeader`; writers (the
#: batch builder) pack it in one call.
HEADER_STRUCT = _HEADER


@dataclass(frozen=True, slots=True)
class BatchHeader:
    """The decoded fixed header of one RecordBatch v2."""

    base_offset: int
    batch_length: int
    partition_leader_epoch: int
    magic: int
    crc: int
    attributes: int
    last_offset_delta: int
    base_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    record_count: int

    @property
    def size_bytes(self) -> int:
        """Total bytes the batch occupies, length prefix included."""
        return LOG_OVERHEAD + self.batch_length

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.last_offset_delta

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.last_offset_delta + 1

    @property
    def compression(self) -> int:
        return self.attributes & ATTR_COMPRESSION_MASK

    @property
    def is_log_append_time(self) -> bool:
        return bool(self.attributes & ATTR_TIMESTAMP_TYPE_MASK)

    @property
    def is_transactional(self) -> bool:
        return bool(self.attributes & ATTR_TRANSACTIONAL_MASK)

    @property
    def is_control(self) -> bool:
        return bool(self.attributes & ATTR_CONTROL_MASK)

    @property
    def last_sequence(self) -> int:
        """Sequence of the batch's last record, wrapping at INT32 max as Kafka does."""
        if self.base_sequence == NO_SEQUENCE:
            return NO_SEQUENCE
        return (self.base_sequence + self.last_offset_delta) % (1 << 31)


def read_header(buf: bytes | bytearray | memoryview, pos: int = 0) -> BatchHeader:
    """Decode the fixed header of the batch starting at ``pos``.

    Checks magic, that the header fits in ``buf`` and that batch_length is sane; it does not
    check the CRC or that the whole batch is present (use :func:`check_batch`).

    Raises:
        CorruptRecordError: truncated header, wrong magic, or impossible lengths.
    """
    if pos < 0 or len(buf) - pos < HEADER_SIZE:
        raise CorruptRecordError(
            f"record batch header truncated: need {HEADER_SIZE} bytes at {pos}, have {max(0, len(buf) - pos)}"
        )
    fields = _HEADER.unpack_from(buf, pos)
    header = BatchHeader(*fields)
    if header.magic != MAGIC_V2:
        raise CorruptRecordError(f"unsupported record batch magic {header.magic} (only v2 is supported)")
    if header.batch_length < MIN_BATCH_LENGTH:
        raise CorruptRecordError(f"batch_length {header.batch_length} is below the minimum {MIN_BATCH_LENGTH}")
    if header.last_offset_delta < 0 or header.record_count < 0:
        raise CorruptRecordError(
            f"negative last_offset_delta {header.last_offset_delta} or record_count {header.record_count}"
        )
    return header


def compute_crc(buf: bytes | bytearray | memoryview, pos: int, size_bytes: int) -> int:
    """CRC-32C over the batch at ``pos`` from the attributes field to its end."""
    return _crc32c.crc32c(memoryview(buf)[pos + ATTRIBUTES_POS : pos + size_bytes])


def check_batch(buf: bytes | bytearray | memoryview, pos: int = 0) -> BatchHeader:
    """Decode a header and verify that the whole batch is present and its CRC matches.

    This is the check to run before any record of the batch is read.

    Raises:
        CorruptRecordError: truncated batch or CRC mismatch.
    """
    header = read_header(buf, pos)
    if len(buf) - pos < header.size_bytes:
        raise CorruptRecordError(
            f"record batch truncated: batch_length says {header.size_bytes} bytes, have {len(buf) - pos}"
        )
    actual = compute_crc(buf, pos, header.size_bytes)
    if actual != header.crc:
        raise CorruptRecordError(f"record batch CRC mismatch: stored {header.crc:#010x}, computed {actual:#010x}")
    return header


def iter_batches(
    buf: bytes | bytearray | memoryview, *, verify_crc: bool = True
) -> Iterator[tuple[int, BatchHeader]]:
    """Yield ``(position, header)`` for each whole batch in a buffer of concatenated batches.

    Raises:
        CorruptRecordError: a batch is malformed, truncated or (with ``verify_crc``) has a bad CRC.
    """
    pos = 0
    end = len(buf)
    while pos < end:
        header = check_batch(buf, pos) if verify_crc else read_header(buf, pos)
        if not verify_crc and end - pos < header.size_bytes:
            raise CorruptRecordError(
                f"record batch truncated: batch_length says {header.size_bytes} bytes, have {end - pos}"
            )
        yield pos, header
        pos += header.size_bytes


def peek_batch_size(buf: bytes | bytearray | memoryview, pos: int = 0) -> int | None:
    """Bytes the batch at ``pos`` occupies, or None when fewer than 12 bytes are there.

    Lets a reader that holds a partial buffer know how much more to read.
    """
    if len(buf) - pos < LOG_OVERHEAD:
        return None
    _, batch_length = _PREFIX.unpack_from(buf, pos)
    return LOG_OVERHEAD + int(batch_length)


def set_base_offset(buf: bytearray | memoryview, pos: int, base_offset: int) -> None:
    """Overwrite base_offset in place; it lies outside the CRC, so no CRC update is needed."""
    _INT64.pack_into(buf, pos + BASE_OFFSET_POS, base_offset)


def set_leader_epoch(buf: bytearray | memoryview, pos: int, epoch: int) -> None:
    """Overwrite partition_leader_epoch in place; it lies outside the CRC."""
    _INT32.pack_into(buf, pos + LEADER_EPOCH_POS, epoch)


def set_max_timestamp(buf: bytearray | memoryview, pos: int, timestamp_ms: int) -> None:
    """Overwrite max_timestamp in place and recompute the CRC, which covers it.

    The broker calls this when a producer's max_timestamp disagrees with its records (Kafka's
    LogValidator does the same): retention and lookups by time trust this field.

    Raises:
        CorruptRecordError: the batch at ``pos`` is truncated.
    """
    size_bytes = peek_batch_size(buf, pos)
    if size_bytes is None or len(buf) - pos < size_bytes:
        raise CorruptRecordError("cannot set max_timestamp on a truncated batch")
    _INT64.pack_into(buf, pos + MAX_TIMESTAMP_POS, timestamp_ms)
    _UINT32.pack_into(buf, pos + CRC_POS, compute_crc(buf, pos, size_bytes))


def set_log_append_time(buf: bytearray | memoryview, pos: int, timestamp_ms: int) -> None:
    """Mark the batch as LogAppendTime with ``timestamp_ms`` and recompute its CRC.

    Kafka puts the append time in max_timestamp and sets the timestamp-type bit; consumers
    then report that time for every record of the batch.
    """
    size_bytes = peek_batch_size(buf, pos)
    if size_bytes is None or len(buf) - pos < size_bytes:
        raise CorruptRecordError("cannot set LogAppendTime on a truncated batch")
    attrs = struct.unpack_from(">h", buf, pos + ATTRIBUTES_POS)[0] | ATTR_TIMESTAMP_TYPE_MASK
    struct.pack_into(">h", buf, pos + ATTRIBUTES_POS, attrs)
    _INT64.pack_into(buf, pos + MAX_TIMESTAMP_POS, timestamp_ms)
    _UINT32.pack_into(buf, pos + CRC_POS, compute_crc(buf, pos, size_bytes))
