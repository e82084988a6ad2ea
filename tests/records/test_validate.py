"""The broker's max_timestamp computation (flowbus/records/validate.py)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from flowbus.records import BatchBuilder, Codec
from flowbus.records.errors import CorruptRecordError, UnsupportedCompressionError
from flowbus.records.header import MAX_TIMESTAMP_POS, NO_TIMESTAMP, check_batch
from flowbus.records.record import decode_batch
from flowbus.records.validate import fix_max_timestamp, records_max_timestamp
from tests.records.conftest import forge_batch, raw_record, refresh_crc

T0 = 1_700_000_000_000


def with_max_timestamp(batch: bytes, max_timestamp: int) -> bytearray:
    """The batch with its max_timestamp replaced (and a valid CRC), as a buggy producer sends it."""
    edited = bytearray(batch)
    struct.pack_into(">q", edited, MAX_TIMESTAMP_POS, max_timestamp)
    return bytearray(refresh_crc(edited))


@settings(max_examples=60, deadline=None)
@example(shifts=[0], codec=Codec.NONE, claimed=T0)  # the producer's value is right
@example(shifts=[5, 1, 3], codec=Codec.NONE, claimed=-1)  # sarama 1.22
# deltas at the edges of one-, two-, three- and four-byte zigzag varints, both signs
@example(shifts=[0, 63, -64, 64, 8191, -8192, 8192, -8193, 1_048_575, -1_048_576], codec=Codec.NONE, claimed=T0)
@example(shifts=[0, -1_048_576, 1_048_575], codec=Codec.NONE, claimed=T0)
@example(shifts=[0, 1_048_576, -1_048_577, 20_000], codec=Codec.NONE, claimed=-1)
@example(shifts=[-1_048_577, -1_048_576, -8193], codec=Codec.NONE, claimed=T0)
@given(
    shifts=st.lists(st.integers(-(10**9), 10**12), min_size=1, max_size=40),
    codec=st.sampled_from(list(Codec)),
    claimed=st.sampled_from([-1, 0, T0]),
)
def test_the_max_is_computed_from_the_records_whatever_the_header_says(
    shifts: list[int], codec: Codec, claimed: int
) -> None:
    builder = BatchBuilder(codec)
    for shift in shifts:  # unordered, and deltas from one to many varint bytes
        builder.append(None, b"v" * 20, timestamp_ms=T0 + shift)
    batch = with_max_timestamp(builder.build(), claimed)
    header = check_batch(batch)
    expected = T0 + max(shifts)
    assert records_max_timestamp(batch, 0, header) == expected
    fixed = fix_max_timestamp(batch, 0, header)
    if claimed == expected:
        assert fixed is None  # the producer was right: nothing rewritten
        fixed = header
    else:
        assert fixed is not None and fixed.max_timestamp == expected
        assert check_batch(batch) == fixed  # the CRC was recomputed
    assert fix_max_timestamp(batch, 0, fixed) is None  # now right: nothing rewritten
    _, records = decode_batch(batch)
    assert [r.timestamp_ms for r in records] == [T0 + s for s in shifts]


def test_a_correct_batch_is_left_alone_at_any_position() -> None:
    builder = BatchBuilder()
    builder.append(b"k", b"v", timestamp_ms=T0)
    builder.append(b"k", b"v", timestamp_ms=T0 + 5)
    batch = builder.build()
    buffer = bytearray(b"x" * 7 + batch)
    header = check_batch(buffer, 7)
    assert records_max_timestamp(buffer, 7, header) == T0 + 5
    assert fix_max_timestamp(buffer, 7, header) is None
    assert bytes(buffer[7:]) == batch


def test_records_without_timestamps_give_minus_one() -> None:
    builder = BatchBuilder()
    builder.append(None, b"v", timestamp_ms=-1)
    builder.append(None, b"w", timestamp_ms=-1)
    batch = bytearray(builder.build())
    assert records_max_timestamp(batch, 0, check_batch(batch)) == NO_TIMESTAMP
    assert fix_max_timestamp(batch, 0, check_batch(batch)) is None


def test_an_empty_batch_has_no_max_timestamp() -> None:
    batch = bytearray(forge_batch(b"", record_count=0, max_timestamp=T0 + 10**9))
    fixed = fix_max_timestamp(batch, 0, check_batch(batch))
    assert fixed is not None and fixed.max_timestamp == NO_TIMESTAMP


@pytest.mark.parametrize(
    "blob, count",
    [
        (raw_record() + b"\x00", 1),  # a byte after the last record
        (raw_record(), 2),  # fewer records than the header says
        (raw_record()[:-1], 1),  # the record runs past the blob
        (b"\x01" + raw_record()[1:], 1),  # a negative record length
    ],
)
def test_records_that_do_not_fill_the_batch_are_corrupt(blob: bytes, count: int) -> None:
    batch = bytearray(forge_batch(blob, record_count=count))
    with pytest.raises(CorruptRecordError):
        records_max_timestamp(batch, 0, check_batch(batch))


def test_a_huge_record_count_is_refused_before_any_loop() -> None:
    batch = bytearray(forge_batch(raw_record(), record_count=2**31 - 1))
    with pytest.raises(CorruptRecordError, match="cannot fit"):
        records_max_timestamp(batch, 0, check_batch(batch))


def test_an_overflowing_timestamp_is_corrupt() -> None:
    blob = raw_record(timestamp_delta=10)
    batch = bytearray(forge_batch(blob, record_count=1, base_timestamp=(1 << 63) - 5, max_timestamp=0))
    with pytest.raises(CorruptRecordError, match="overflows"):
        records_max_timestamp(batch, 0, check_batch(batch))


def test_an_unknown_codec_is_refused() -> None:
    batch = bytearray(forge_batch(raw_record(), record_count=1, attributes=6))
    with pytest.raises(UnsupportedCompressionError):
        records_max_timestamp(batch, 0, check_batch(batch))
