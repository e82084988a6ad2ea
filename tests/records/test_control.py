"""Transaction markers."""

from __future__ import annotations

import pytest

from flowbus.records import (
    BatchBuilder,
    ControlType,
    CorruptRecordError,
    Record,
    build_control_batch,
    decode_batch,
    parse_control_record,
)


@pytest.mark.parametrize("control_type", list(ControlType))
def test_control_batch_round_trip(control_type: ControlType) -> None:
    batch = build_control_batch(
        producer_id=12,
        producer_epoch=4,
        control_type=control_type,
        coordinator_epoch=7,
        timestamp_ms=1_234,
        base_offset=99,
    )
    header, [record] = decode_batch(batch)
    assert header.is_control and header.is_transactional
    assert (header.producer_id, header.producer_epoch, header.base_offset) == (12, 4, 99)
    assert record.offset == 99 and record.timestamp_ms == 1_234
    assert record.key == b"\x00\x00\x00" + bytes([control_type])
    assert record.value == b"\x00\x00\x00\x00\x00\x07"
    assert parse_control_record(record) == (control_type, 7)


def test_later_versions_with_extra_bytes_are_accepted() -> None:
    record = Record(0, 0, b"\x00\x01\x00\x01extra", b"\x00\x01\x00\x00\x00\x02more")
    assert parse_control_record(record) == (ControlType.COMMIT, 2)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (None, b"\x00\x00\x00\x00\x00\x01"),
        (b"\x00\x00\x00", b"\x00\x00\x00\x00\x00\x01"),
        (b"\x00\x00\x00\x01", None),
        (b"\x00\x00\x00\x01", b"\x00\x00\x00\x00\x00"),
        (b"\x00\x00\x00\x05", b"\x00\x00\x00\x00\x00\x01"),  # unknown type
        (b"\xff\xff\x00\x01", b"\x00\x00\x00\x00\x00\x01"),  # negative key version
        (b"\x00\x00\x00\x01", b"\x80\x00\x00\x00\x00\x01"),  # negative value version
    ],
)
def test_malformed_control_records(key: bytes | None, value: bytes | None) -> None:
    with pytest.raises(CorruptRecordError):
        parse_control_record(Record(3, 0, key, value))


def test_builder_sets_the_control_bit() -> None:
    builder = BatchBuilder(is_control=True, is_transactional=True, producer_id=1, producer_epoch=0)
    builder.append(b"\x00\x00\x00\x00", b"\x00\x00\x00\x00\x00\x00", timestamp_ms=1)
    header, [record] = decode_batch(builder.build())
    assert header.is_control
    assert parse_control_record(record) == (ControlType.ABORT, 0)
