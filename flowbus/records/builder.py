"""Build a RecordBatch v2 from records: the producer's path and the compactor's.

The builder encodes each record as it is appended (layout in :mod:`flowbus.records.record`)
and writes the 61-byte header (layout in :mod:`flowbus.records.header`) at :meth:`build`,
compressing the records blob and computing the CRC-32C last.

Offsets: each record's offset is stored as a delta from ``base_offset``. Appending without
an offset gives the next dense offset; an explicit offset lets the log's compactor rebuild a
batch that keeps the original offsets of the records it retains, with gaps, as Kafka's log
cleaner does (``MemoryRecords.filterTo``). ``build(last_offset_delta=...)`` then keeps the
batch's original last offset even when its last record was removed, so the producer state
(last sequence) recovered from the log is unchanged.

Timestamps: base_timestamp is the first record's timestamp, every record stores its delta
from it, and max_timestamp is the largest. An empty batch (all records compacted away, kept
for its producer state) has both set to -1.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from flowbus.records.compression import MAX_DECOMPRESSED_BYTES, Codec, compress
from flowbus.records.errors import BatchFullError, UnsupportedCompressionError
from flowbus.records.header import (
    ATTR_CONTROL_MASK,
    ATTR_DELETE_HORIZON_MASK,
    ATTR_TRANSACTIONAL_MASK,
    CRC_POS,
    HEADER_SIZE,
    HEADER_STRUCT,
    LOG_OVERHEAD,
    MAGIC_V2,
    NO_TIMESTAMP,
    compute_crc,
)
from flowbus.records.varint import INT32_MAX, SMALL_VARINT_LIMIT, SMALL_VARINTS, encode_varint, encode_varlong

_SMALL = SMALL_VARINT_LIMIT
_CRC = struct.Struct(">I")

_NULL = encode_varint(-1)
_ZERO = encode_varint(0)
_ATTRIBUTES_ZERO = b"\x00"  # record attributes: none defined


def _encode_headers(headers: Iterable[tuple[str, bytes | None]]) -> bytes:
    """Header count and headers (KIP-82): UTF-8 key, nullable value, both varint-length-prefixed."""
    parts: list[bytes] = []
    count = 0
    for name, value in headers:
        name_bytes = name.encode("utf-8")
        parts.append(encode_varint(len(name_bytes)))
        parts.append(name_bytes)
        if value is None:
            parts.append(_NULL)
        else:
            parts.append(encode_varint(len(value)))
            parts.append(bytes(value))
        count += 1
    return encode_varint(count) + b"".join(parts)


class BatchBuilder:
    """Accumulates records and builds one RecordBatch v2.

    Args:
        codec: compression of the records blob.
        producer_id, producer_epoch, base_sequence: idempotence fields (KIP-98); -1 when unused.
        is_transactional: sets the transactional attribute bit (needs a producer id).
        is_control: sets the control attribute bit; see :mod:`flowbus.records.control`.
        base_offset: offset of the batch; the broker overwrites it on append.
        partition_leader_epoch: set by the broker; -1 from producers.
        max_batch_bytes: limit on the uncompressed batch (header and records);
            :meth:`append` raises :class:`BatchFullError` past it. The default matches what
            :func:`decode_batch` accepts, so nothing built here is unreadable.
        delete_horizon_ms: when set, the compactor's tombstone delete horizon (KIP-534): it
            is stored as base_timestamp with the delete-horizon attribute bit.

    Example:
        >>> builder = BatchBuilder(Codec.ZSTD)
        >>> builder.append(b"key", b"value", timestamp_ms=1_700_000_000_000, headers=[("trace", b"1")])
        >>> batch = builder.build()
    """

    __slots__ = (
        "_base_timestamp",
        "_body",
        "_count",
        "_last_offset_delta",
        "_max_timestamp",
        "base_offset",
        "base_sequence",
        "codec",
        "delete_horizon_ms",
        "is_control",
        "is_transactional",
        "max_batch_bytes",
        "partition_leader_epoch",
        "producer_epoch",
        "producer_id",
    )

    def __init__(
        self,
        codec: Codec | int = Codec.NONE,
        *,
        producer_id: int = -1,
        producer_epoch: int = -1,
        base_sequence: int = -1,
        is_transactional: bool = False,
        is_control: bool = False,
        base_offset: int = 0,
        partition_leader_epoch: int = -1,
        max_batch_bytes: int = MAX_DECOMPRESSED_BYTES,
        delete_horizon_ms: int | None = None,
    ) -> None:
        try:
            self.codec = Codec(codec)
        except ValueError:
            raise UnsupportedCompressionError(f"unknown compression codec id {codec}") from None
        self.producer_id = producer_id
        self.producer_epoch = producer_epoch
        self.base_sequence = base_sequence
        self.is_transactional = is_transactional
        self.is_control = is_control
        self.base_offset = base_offset
        self.partition_leader_epoch = partition_leader_epoch
        self.max_batch_bytes = max_batch_bytes
        self.delete_horizon_ms = delete_horizon_ms
        self._body = bytearray()
        self._count = 0
        self._last_offset_delta = -1
        self._base_timestamp = NO_TIMESTAMP if delete_horizon_ms is None else delete_horizon_ms
        self._max_timestamp = NO_TIMESTAMP

    def __len__(self) -> int:
        """Number of records appended."""
        return self._count

    @property
    def size_estimate_bytes(self) -> int:
        """Size of the batch if built uncompressed: exact for Codec.NONE, an upper estimate otherwise."""
        return HEADER_SIZE + len(self._body)

    @property
    def next_offset(self) -> int:
        """Offset an :meth:`append` without ``offset`` would give."""
        return self.base_offset + self._last_offset_delta + 1

    def append(
        self,
        key: bytes | bytearray | memoryview | None,
        value: bytes | bytearray | memoryview | None,
        *,
        timestamp_ms: int,
        headers: Iterable[tuple[str, bytes | None]] = (),
        offset: int | None = None,
    ) -> None:
        """Encode one record into the batch.

        ``offset`` None gives the next dense offset; an explicit offset must be above the
        previous record's (and at or above ``base_offset``).

        Raises:
            ValueError: ``offset`` out of order or out of the batch's int32 delta range.
            BatchFullError: the record would take the batch past ``max_batch_bytes``;
                nothing is appended.
        """
        if offset is None:
            offset_delta = self._last_offset_delta + 1
        else:
            offset_delta = offset - self.base_offset
            if offset_delta <= self._last_offset_delta:
                raise ValueError(
                    f"offset {offset} is not above the previous offset {self.base_offset + self._last_offset_delta}"
                    f" of a batch based at {self.base_offset}"
                )
        if offset_delta > INT32_MAX:
            raise ValueError(f"offset delta {offset_delta} does not fit the batch's int32 last_offset_delta")
        if self._count == 0 and self.delete_horizon_ms is None:
            self._base_timestamp = timestamp_ms
        # Table lookups instead of encode_varint calls: this runs once per produced record.
        small = SMALL_VARINTS
        timestamp_delta = timestamp_ms - self._base_timestamp
        parts = [
            _ATTRIBUTES_ZERO,
            small[timestamp_delta + _SMALL]
            if -_SMALL <= timestamp_delta < _SMALL
            else encode_varlong(timestamp_delta),
            small[offset_delta + _SMALL] if offset_delta < _SMALL else encode_varint(offset_delta),
        ]
        if key is None:
            parts.append(_NULL)
        else:
            size = len(key)
            parts.append(small[size + _SMALL] if size < _SMALL else encode_varint(size))
            parts.append(key)  # type: ignore[arg-type]
        if value is None:
            parts.append(_NULL)
        else:
            size = len(value)
            parts.append(small[size + _SMALL] if size < _SMALL else encode_varint(size))
            parts.append(value)  # type: ignore[arg-type]
        parts.append(_encode_headers(headers) if headers else _ZERO)
        record = b"".join(parts)
        size = len(record)
        length_prefix = small[size + _SMALL] if size < _SMALL else encode_varint(size)
        if HEADER_SIZE + len(self._body) + len(length_prefix) + len(record) > self.max_batch_bytes:
            raise BatchFullError(
                f"a record of {len(record)} bytes would take the batch past {self.max_batch_bytes} bytes"
            )
        body = self._body
        body += length_prefix
        body += record
        self._count += 1
        self._last_offset_delta = offset_delta
        if timestamp_ms > self._max_timestamp or self._count == 1:
            self._max_timestamp = timestamp_ms

    def has_room_for(
        self,
        key: bytes | bytearray | memoryview | None,
        value: bytes | bytearray | memoryview | None,
        headers: Iterable[tuple[str, bytes | None]] = (),
    ) -> bool:
        """Whether a record like this would still fit ``max_batch_bytes`` (a slight overestimate)."""
        # Upper bounds: 5-byte length, 1 attribute, 10-byte timestamp delta, 5-byte offset delta.
        record_bytes = 21 + 5 + (len(key) if key is not None else 0) + 5 + (len(value) if value is not None else 0)
        if headers:
            record_bytes += len(_encode_headers(headers))
        else:
            record_bytes += 1
        return HEADER_SIZE + len(self._body) + record_bytes <= self.max_batch_bytes

    def build(self, *, last_offset_delta: int | None = None) -> bytes:
        """Compress the records, write the header and CRC, and return the whole batch.

        ``last_offset_delta`` overrides the delta of the last record (it may only be larger),
        for a compacted batch that keeps its original last offset. The builder can build
        again (the result is the same) but should not be appended to afterwards.

        Raises:
            ValueError: ``last_offset_delta`` below the last record's delta or above int32.
        """
        if last_offset_delta is None:
            last_offset_delta = max(self._last_offset_delta, 0)
        elif last_offset_delta < self._last_offset_delta or not 0 <= last_offset_delta <= INT32_MAX:
            raise ValueError(
                f"last_offset_delta {last_offset_delta} is below the last record's delta {self._last_offset_delta}"
                " or outside int32"
            )
        if self._count == 0:
            # An empty batch (all records compacted away) has no records blob and, as Kafka's
            # cleaner writes it, no codec: some readers decompress whenever the bits say so.
            blob: bytes | bytearray = b""
            attributes = 0
        elif self.codec == Codec.NONE:
            blob = self._body
            attributes = 0
        else:
            blob = compress(self.codec, self._body)
            attributes = int(self.codec)
        if self.is_transactional:
            attributes |= ATTR_TRANSACTIONAL_MASK
        if self.is_control:
            attributes |= ATTR_CONTROL_MASK
        if self.delete_horizon_ms is not None:
            attributes |= ATTR_DELETE_HORIZON_MASK
        size_bytes = HEADER_SIZE + len(blob)
        out = bytearray(size_bytes)
        HEADER_STRUCT.pack_into(
            out,
            0,
            self.base_offset,
            size_bytes - LOG_OVERHEAD,
            self.partition_leader_epoch,
            MAGIC_V2,
            0,  # CRC, filled in below once the rest is written
            attributes,
            last_offset_delta,
            self._base_timestamp,
            self._max_timestamp,
            self.producer_id,
            self.producer_epoch,
            self.base_sequence,
            self._count,
        )
        out[HEADER_SIZE:] = blob
        _CRC.pack_into(out, CRC_POS, compute_crc(out, 0, size_bytes))
        return bytes(out)
