"""The record format layer: Kafka's RecordBatch v2 (magic 2) as bytes in, records out.

* :mod:`~flowbus.records.header`: the fixed 61-byte batch header, CRC-32C check, in-place
  patching of the fields a broker owns.
* :mod:`~flowbus.records.record`: :class:`Record` and :func:`decode_batch` /
  :func:`iter_records`, which check the CRC before reading any record.
* :mod:`~flowbus.records.builder`: :class:`BatchBuilder`, for producers and the compactor.
* :mod:`~flowbus.records.control`: transaction commit/abort markers.
* :mod:`~flowbus.records.compression`: gzip, snappy (raw and xerial), lz4 frames, zstd,
  with a limit on decompressed size.
* :mod:`~flowbus.records.varint`: Kafka's zigzag varints.

No I/O and no asyncio: the broker and the log hand in bytes. Malformed bytes raise
:class:`CorruptRecordError` and nothing else.
"""

from __future__ import annotations

from flowbus.records.builder import BatchBuilder
from flowbus.records.compression import MAX_DECOMPRESSED_BYTES, Codec, compress, decompress
from flowbus.records.control import ControlType, build_control_batch, parse_control_record
from flowbus.records.errors import BatchFullError, CorruptRecordError, RecordsError, UnsupportedCompressionError
from flowbus.records.header import (
    ATTR_COMPRESSION_MASK,
    ATTR_CONTROL_MASK,
    ATTR_DELETE_HORIZON_MASK,
    ATTR_TIMESTAMP_TYPE_MASK,
    ATTR_TRANSACTIONAL_MASK,
    HEADER_SIZE,
    LOG_OVERHEAD,
    BatchHeader,
    check_batch,
    iter_batches,
    peek_batch_size,
    read_header,
    set_base_offset,
    set_leader_epoch,
    set_log_append_time,
)
from flowbus.records.record import Record, RecordHeader, decode_batch, iter_records

__all__ = [
    "ATTR_COMPRESSION_MASK",
    "ATTR_CONTROL_MASK",
    "ATTR_DELETE_HORIZON_MASK",
    "ATTR_TIMESTAMP_TYPE_MASK",
    "ATTR_TRANSACTIONAL_MASK",
    "HEADER_SIZE",
    "LOG_OVERHEAD",
    "MAX_DECOMPRESSED_BYTES",
    "BatchBuilder",
    "BatchFullError",
    "BatchHeader",
    "Codec",
    "ControlType",
    "CorruptRecordError",
    "Record",
    "RecordHeader",
    "RecordsError",
    "UnsupportedCompressionError",
    "build_control_batch",
    "check_batch",
    "compress",
    "decode_batch",
    "decompress",
    "iter_batches",
    "iter_records",
    "parse_control_record",
    "peek_batch_size",
    "read_header",
    "set_base_offset",
    "set_leader_epoch",
    "set_log_append_time",
]
