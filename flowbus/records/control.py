"""Control batches: the commit and abort markers of Kafka transactions (KIP-98).

A control batch has the transactional and control attribute bits set and holds one record
whose key and value are fixed big-endian structs (protocol guide, "Control Batches")::

    key    version int16 (0)   type int16 (0 abort, 1 commit)
    value  version int16 (0)   coordinator_epoch int32

The transaction coordinator writes one marker into every partition of a transaction when
it ends; read_committed consumers use the abort markers to drop the aborted producer's
records and never deliver control records to the application.
"""

from __future__ import annotations

import struct
from enum import IntEnum

from flowbus.records.builder import BatchBuilder
from flowbus.records.errors import CorruptRecordError
from flowbus.records.record import Record

#: Version of the key and value structs we write. Readers accept later versions as long as
#: they start with the same fields, as Kafka's ControlRecordType and EndTransactionMarker do.
CONTROL_RECORD_VERSION = 0

_KEY = struct.Struct(">hh")
_VALUE = struct.Struct(">hi")


class ControlType(IntEnum):
    """The control record types a data partition can hold."""

    ABORT = 0
    COMMIT = 1


def build_control_batch(
    *,
    producer_id: int,
    producer_epoch: int,
    control_type: ControlType | int,
    coordinator_epoch: int,
    timestamp_ms: int,
    base_offset: int = 0,
) -> bytes:
    """Build a transaction marker batch: one control record, no compression.

    Example:
        >>> from flowbus.records import decode_batch
        >>> batch = build_control_batch(producer_id=7, producer_epoch=0, control_type=ControlType.COMMIT,
        ...                             coordinator_epoch=3, timestamp_ms=1_000)
        >>> header, [record] = decode_batch(batch)
        >>> header.is_control, parse_control_record(record)
        (True, (<ControlType.COMMIT: 1>, 3))
    """
    builder = BatchBuilder(
        producer_id=producer_id,
        producer_epoch=producer_epoch,
        is_transactional=True,
        is_control=True,
        base_offset=base_offset,
    )
    builder.append(
        _KEY.pack(CONTROL_RECORD_VERSION, ControlType(control_type)),
        _VALUE.pack(CONTROL_RECORD_VERSION, coordinator_epoch),
        timestamp_ms=timestamp_ms,
    )
    return builder.build()


def parse_control_record(record: Record) -> tuple[ControlType, int]:
    """Read ``(control type, coordinator epoch)`` from the record of a control batch.

    Raises:
        CorruptRecordError: key or value missing, too short, a negative version, or a
            control type other than ABORT and COMMIT.
    """
    key = record.key
    value = record.value
    if key is None or len(key) < _KEY.size:
        raise CorruptRecordError(f"control record at offset {record.offset} has a key shorter than {_KEY.size} bytes")
    if value is None or len(value) < _VALUE.size:
        raise CorruptRecordError(
            f"control record at offset {record.offset} has a value shorter than {_VALUE.size} bytes"
        )
    key_version, type_id = _KEY.unpack_from(key)
    value_version, coordinator_epoch = _VALUE.unpack_from(value)
    if key_version < 0 or value_version < 0:
        raise CorruptRecordError(
            f"control record at offset {record.offset} has negative versions {key_version}/{value_version}"
        )
    try:
        control_type = ControlType(type_id)
    except ValueError:
        raise CorruptRecordError(f"control record at offset {record.offset} has unknown type {type_id}") from None
    return control_type, coordinator_epoch
