"""Errors of the record format layer."""

from __future__ import annotations

from flowbus.errors import FlowbusError


class RecordsError(FlowbusError):
    """Base class of errors about record batches."""


class CorruptRecordError(RecordsError):
    """The bytes are not a valid RecordBatch v2: bad CRC, bad lengths, truncated or malformed.

    Raised for any malformed input, never an ``IndexError`` or ``struct.error``, so that callers
    (the broker's produce path, the log's recovery) can reject exactly the bad batch.
    """


class UnsupportedCompressionError(RecordsError):
    """The batch names a compression codec flowbus cannot read or write."""


class BatchFullError(RecordsError):
    """An append would take a batch past its builder's ``max_batch_bytes``; start a new batch."""
