"""decode_batch and iter_records: round trips, LogAppendTime, and every way a batch can be malformed."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowbus.records import (
    BatchBuilder,
    Codec,
    CorruptRecordError,
    Record,
    UnsupportedCompressionError,
    decode_batch,
    iter_records,
    set_log_append_time,
)
from flowbus.records.header import ATTRIBUTES_POS, RECORD_COUNT_POS
from flowbus.records.varint import INT64_MAX, INT64_MIN
from flowbus.transports.base import Record as Located  # what the embedded consumer builds

from .conftest import forge_batch, raw_record, refresh_crc

header_keys = st.text(max_size=8)
nullable_bytes = st.none() | st.binary(max_size=40)
records_strategy = st.lists(
    st.tuples(
        nullable_bytes,  # key
        nullable_bytes,  # value
        st.lists(st.tuples(header_keys, nullable_bytes), max_size=3),
        st.integers(-(1 << 40), 1 << 40),  # timestamp offset from the batch's first timestamp
        st.integers(1, 1 << 20),  # gap to the previous offset (1 = dense)
    ),
    max_size=25,
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    codec=st.sampled_from(list(Codec)),
    rows=records_strategy,
    base_offset=st.integers(0, 1 << 50),
    first_timestamp_ms=st.integers(0, 1 << 45),
    explicit_offsets=st.booleans(),
    extra_last_offset_delta=st.integers(0, 3),
)
def test_batch_round_trip(
    codec: Codec,
    rows: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]], int, int]],
    base_offset: int,
    first_timestamp_ms: int,
    explicit_offsets: bool,
    extra_last_offset_delta: int,
) -> None:
    builder = BatchBuilder(codec, base_offset=base_offset, producer_id=9, producer_epoch=2, base_sequence=40)
    expected: list[Record] = []
    offset = base_offset - 1
    for key, value, headers, timestamp_shift, gap in rows:
        offset = offset + gap if explicit_offsets else offset + 1
        timestamp_ms = first_timestamp_ms + timestamp_shift
        explicit = offset if explicit_offsets else None
        builder.append(key, value, timestamp_ms=timestamp_ms, headers=headers, offset=explicit)
        expected.append(Record(offset, timestamp_ms, key, value, tuple(headers)))
    last_offset_delta = offset - base_offset + extra_last_offset_delta if rows else extra_last_offset_delta
    batch = builder.build(last_offset_delta=last_offset_delta)

    header, records = decode_batch(batch)
    assert records == expected
    assert header.compression == (codec if rows else Codec.NONE)
    assert header.record_count == len(rows)
    assert header.base_offset == base_offset
    assert header.last_offset_delta == last_offset_delta
    assert (header.producer_id, header.producer_epoch, header.base_sequence) == (9, 2, 40)
    assert header.size_bytes == len(batch)
    if rows:
        assert header.base_timestamp == expected[0].timestamp_ms
        assert header.max_timestamp == max(r.timestamp_ms for r in expected)
    else:
        assert header.base_timestamp == header.max_timestamp == -1
    if codec == Codec.NONE:
        assert builder.size_estimate_bytes == len(batch)


@pytest.mark.parametrize("codec", [c for c in Codec if c != Codec.NONE])
def test_empty_batch_with_codec_bits_is_not_decompressed(codec: Codec) -> None:
    """Kafka never decompresses a batch with no records, so an empty blob is fine whatever the codec."""
    header, records = decode_batch(forge_batch(b"", record_count=0, attributes=int(codec)))
    assert records == [] and header.compression == codec
    with pytest.raises(CorruptRecordError):
        decode_batch(forge_batch(b"", record_count=1, attributes=int(codec)))


def test_decode_at_position_and_from_memoryview() -> None:
    builder = BatchBuilder(base_offset=5)
    builder.append(b"a", b"b", timestamp_ms=7, headers=[("h", b"1")])
    batch = builder.build()
    buf = memoryview(bytearray(b"junk" + batch))
    _, records = decode_batch(buf, 4)
    assert records == [Record(5, 7, b"a", b"b", (("h", b"1"),))]
    assert type(records[0].value) is bytes


@pytest.mark.parametrize("codec", list(Codec))
def test_log_append_time_reports_max_timestamp_for_every_record(codec: Codec) -> None:
    builder = BatchBuilder(codec)
    for i in range(3):
        builder.append(None, b"v", timestamp_ms=100 + i)
    batch = bytearray(builder.build())
    set_log_append_time(batch, 0, 9_999)
    header, records = decode_batch(batch)
    assert header.is_log_append_time
    assert [r.timestamp_ms for r in records] == [9_999] * 3


def test_extreme_timestamps_round_trip() -> None:
    builder = BatchBuilder()
    builder.append(None, None, timestamp_ms=0)
    builder.append(None, None, timestamp_ms=INT64_MAX)
    _, records = decode_batch(builder.build())
    assert [r.timestamp_ms for r in records] == [0, INT64_MAX]
    builder = BatchBuilder()
    builder.append(None, None, timestamp_ms=-1)
    builder.append(None, None, timestamp_ms=INT64_MIN + 1)
    _, records = decode_batch(builder.build())
    assert [r.timestamp_ms for r in records] == [-1, INT64_MIN + 1]


@pytest.mark.parametrize("delta", [63, 64, 8_191, 8_192, 1_048_575, 1_048_576, 1 << 28])
def test_deltas_at_every_varint_length_edge(delta: int) -> None:
    """The hot loop inlines 1-, 2- and 3-byte deltas and calls the varint module beyond: each
    side of each edge (zigzag: +-64, +-8,192, +-1,048,576), for timestamps both ways and offsets."""
    builder = BatchBuilder(base_offset=100)
    base_ms = 1 << 42
    builder.append(b"k", b"a", timestamp_ms=base_ms, offset=100)
    builder.append(b"k", b"b", timestamp_ms=base_ms + delta, offset=100 + delta)
    builder.append(b"k", b"c", timestamp_ms=base_ms - delta, offset=100 + delta + 1)
    builder.append(b"k", b"d", timestamp_ms=base_ms - delta - 1, offset=100 + 2 * delta + 1)
    _, records = decode_batch(builder.build())
    assert [(r.offset, r.timestamp_ms, r.value) for r in records] == [
        (100, base_ms, b"a"),
        (100 + delta, base_ms + delta, b"b"),
        (100 + delta + 1, base_ms - delta, b"c"),
        (100 + 2 * delta + 1, base_ms - delta - 1, b"d"),
    ]


@pytest.mark.parametrize("codec", [Codec.NONE, Codec.GZIP])
def test_decode_into_a_consumers_own_record_type(codec: Codec) -> None:
    """What a transport builds in the same pass: its leading fields, then the record's; a null
    header value given as asked; LogAppendTime applied as for plain records."""
    builder = BatchBuilder(codec, base_offset=7)
    builder.append(b"k", b"v", timestamp_ms=5, headers=[("a", None), ("b", b"2")])
    builder.append(None, None, timestamp_ms=6)
    batch = bytearray(builder.build())
    _, records = decode_batch(batch, record_type=Located, leading_fields=("t", 3), null_header_value=b"")
    assert records == [
        Located("t", 3, 7, 5, b"k", b"v", (("a", b""), ("b", b"2"))),
        Located("t", 3, 8, 6, None, None, ()),
    ]
    assert all(type(r) is Located for r in records)
    set_log_append_time(batch, 0, 99)
    _, records = decode_batch(batch, record_type=Located, leading_fields=("t", 3))
    assert [(r.timestamp_ms, r.headers) for r in records] == [(99, (("a", None), ("b", b"2"))), (99, ())]
    assert all(type(r) is Located for r in records)


def test_iter_records_over_concatenated_batches() -> None:
    batches = []
    for base in (0, 3, 6):
        builder = BatchBuilder(Codec.LZ4 if base else Codec.NONE, base_offset=base)
        for _ in range(3):
            builder.append(None, b"%d" % builder.next_offset, timestamp_ms=1)
        batches.append(builder.build())
    buf = b"".join(batches)
    assert [r.offset for r in iter_records(buf)] == list(range(9))
    assert [r.value for r in iter_records(buf)] == [b"%d" % i for i in range(9)]
    assert list(iter_records(b"")) == []


def test_iter_records_raises_on_a_partial_last_batch_after_yielding_the_whole_ones() -> None:
    builder = BatchBuilder()
    builder.append(None, b"x", timestamp_ms=1)
    batch = builder.build()
    seen: list[Record] = []
    with pytest.raises(CorruptRecordError):
        for record in iter_records(batch + batch[:-1]):
            seen.append(record)
    assert len(seen) == 1
    with pytest.raises(CorruptRecordError):
        list(iter_records(batch + b"\x00" * 5))


# --- Forged batches: valid CRC, malformed records -------------------------------------------


def test_forged_valid_batch_decodes() -> None:
    """The forging helpers themselves produce decodable batches (so the failures below are real)."""
    blob = raw_record(headers=[(b"h", b"v"), (b"n", None)]) + raw_record(offset_delta=1, key=None, value=None)
    _, records = decode_batch(forge_batch(blob, record_count=2, last_offset_delta=1))
    assert records == [Record(0, 1_000, b"k", b"v", (("h", b"v"), ("n", None))), Record(1, 1_000, None, None, ())]


@pytest.mark.parametrize(
    ("blob", "record_count", "last_offset_delta"),
    [
        pytest.param(raw_record(), 2, 1, id="fewer-records-than-count"),
        pytest.param(raw_record() + raw_record(offset_delta=1), 1, 1, id="more-bytes-than-count"),
        pytest.param(raw_record(), 1 << 30, 0, id="huge-count"),
        pytest.param(raw_record(), -1, 0, id="negative-count"),
        pytest.param(raw_record(key_length=-2), 1, 0, id="key-length-below-minus-one"),
        pytest.param(raw_record(value_length=-7), 1, 0, id="value-length-below-minus-one"),
        pytest.param(raw_record(key_length=100), 1, 0, id="key-overruns-record"),
        pytest.param(raw_record(value_length=1 << 30), 1, 0, id="value-overruns-blob"),
        pytest.param(raw_record(length_adjust=1), 1, 0, id="record-length-too-long"),
        pytest.param(raw_record(length_adjust=-1), 1, 0, id="record-length-too-short"),
        pytest.param(raw_record(length_adjust=-1000), 1, 0, id="record-length-negative"),
        pytest.param(raw_record(header_count=1 << 28), 1, 0, id="huge-header-count"),
        pytest.param(raw_record(header_count=-1), 1, 0, id="negative-header-count"),
        pytest.param(raw_record(headers=[(b"\xff\xfe", b"v")]), 1, 0, id="header-key-not-utf8"),
        pytest.param(raw_record(offset_delta=1), 1, 0, id="offset-beyond-last-offset-delta"),
        pytest.param(raw_record(offset_delta=-1), 1, 0, id="negative-offset-delta"),
        pytest.param(raw_record(offset_delta=1) + raw_record(offset_delta=1), 2, 1, id="repeated-offset"),
        pytest.param(raw_record(offset_delta=1) + raw_record(offset_delta=0), 2, 1, id="decreasing-offset"),
        pytest.param(b"\x80\x80\x80\x80\x80\x80" + raw_record(), 1, 0, id="overlong-length-varint"),
        pytest.param(raw_record()[:-1], 1, 0, id="truncated-last-record"),
        pytest.param(raw_record() + b"\x00", 1, 0, id="trailing-byte"),
    ],
)
def test_malformed_records_raise_corrupt_record_error(blob: bytes, record_count: int, last_offset_delta: int) -> None:
    batch = forge_batch(blob, record_count=record_count, last_offset_delta=last_offset_delta)
    with pytest.raises(CorruptRecordError):
        decode_batch(batch)


def test_header_with_bad_key_or_value_lengths() -> None:
    # A header key length of -1 (null) is not allowed: header keys are strings.
    body = b"\x00\x00\x00" + b"\x01" + b"\x01" + b"\x02" + b"\x01" + b"\x02v"
    with pytest.raises(CorruptRecordError):
        decode_batch(forge_batch(bytes([len(body) * 2]) + body, record_count=1))
    # A header value length below -1.
    body = b"\x00\x00\x00" + b"\x01" + b"\x01" + b"\x02" + b"\x02h" + b"\x05"
    with pytest.raises(CorruptRecordError):
        decode_batch(forge_batch(bytes([len(body) * 2]) + body, record_count=1))


@pytest.mark.parametrize("codec_id", [5, 6, 7])
def test_unknown_codec_with_a_valid_crc(codec_id: int) -> None:
    with pytest.raises(UnsupportedCompressionError):
        decode_batch(forge_batch(raw_record(), record_count=1, attributes=codec_id))


@pytest.mark.parametrize("codec", [c for c in Codec if c != Codec.NONE])
def test_compressed_blob_that_is_not_compressed(codec: Codec) -> None:
    with pytest.raises(CorruptRecordError):
        decode_batch(forge_batch(raw_record(), record_count=1, attributes=int(codec)))


def test_crc_is_checked_before_any_record() -> None:
    """A batch whose records are garbage *and* whose CRC is wrong reports the CRC."""
    batch = bytearray(forge_batch(raw_record(key_length=-9), record_count=1))
    batch[-1] ^= 0xFF
    with pytest.raises(CorruptRecordError, match="CRC"):
        decode_batch(bytes(batch))


def test_record_count_is_part_of_the_crc() -> None:
    builder = BatchBuilder()
    builder.append(b"k", b"v", timestamp_ms=1)
    batch = bytearray(builder.build())
    struct.pack_into(">i", batch, RECORD_COUNT_POS, 2)
    with pytest.raises(CorruptRecordError, match="CRC"):
        decode_batch(bytes(batch))
    with pytest.raises(CorruptRecordError, match="record"):
        decode_batch(refresh_crc(batch))


def test_decompressed_size_limit_applies_to_batches() -> None:
    builder = BatchBuilder(Codec.ZSTD)
    builder.append(None, bytes(100_000), timestamp_ms=1)
    batch = builder.build()
    decode_batch(batch, max_bytes=200_000)
    with pytest.raises(CorruptRecordError, match="limit"):
        decode_batch(batch, max_bytes=50_000)
    plain = BatchBuilder()
    plain.append(None, bytes(1000), timestamp_ms=1)
    with pytest.raises(CorruptRecordError, match="limit"):
        decode_batch(plain.build(), max_bytes=500)


# --- Corruption: truncation and byte flips --------------------------------------------------


def _sample_batch(codec: Codec) -> bytes:
    builder = BatchBuilder(codec, base_offset=1_000, producer_id=3, producer_epoch=0, base_sequence=0)
    for i in range(12):
        builder.append(
            None if i % 4 == 0 else b"key-%d" % i,
            None if i % 5 == 0 else b"value-%d" % i * (i % 3 + 1),
            timestamp_ms=1_700_000_000_000 + i * 37,
            headers=[("trace", b"%d" % i), ("null", None)] if i % 2 else (),
        )
    return builder.build()


SAMPLES = {codec: _sample_batch(codec) for codec in Codec}


@pytest.mark.parametrize("codec", list(Codec))
def test_truncation_at_every_position_is_corrupt(codec: Codec) -> None:
    batch = SAMPLES[codec]
    for cut in range(len(batch)):
        with pytest.raises(CorruptRecordError):
            decode_batch(batch[:cut])


@settings(max_examples=200, deadline=None)
@given(codec=st.sampled_from(list(Codec)), data=st.data())
def test_flipped_bytes_are_corrupt(codec: Codec, data: st.DataObject) -> None:
    batch = bytearray(SAMPLES[codec])
    # Flip anywhere but base_offset and leader epoch (bytes 0-7 and 12-15), the fields outside
    # the CRC that a broker rewrites: a change there is not corruption.
    positions = st.integers(8, 11) | st.integers(16, len(batch) - 1)
    for position in data.draw(st.lists(positions, min_size=1, max_size=3, unique=True)):
        batch[position] ^= data.draw(st.integers(1, 255))
    with pytest.raises(CorruptRecordError):
        decode_batch(bytes(batch))


@settings(max_examples=300, deadline=None)
@given(codec=st.sampled_from(list(Codec)), data=st.data())
def test_records_blob_garbage_with_a_valid_crc_raises_only_corrupt_record_error(
    codec: Codec, data: st.DataObject
) -> None:
    """Bypass the CRC: edit the records and recompute it, so the record parser itself is fuzzed."""
    batch = bytearray(SAMPLES[Codec.NONE])
    for _ in range(data.draw(st.integers(1, 4))):
        batch[data.draw(st.integers(61, len(batch) - 1))] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        struct.pack_into(">i", batch, RECORD_COUNT_POS, data.draw(st.integers(-5, 40)))
    with contextlib.suppress(CorruptRecordError):
        decode_batch(refresh_crc(batch))


@settings(max_examples=200, deadline=None)
@given(blob=st.binary(max_size=120), record_count=st.integers(-2, 20), last_offset_delta=st.integers(0, 20))
def test_random_records_blobs_raise_only_corrupt_record_error(
    blob: bytes, record_count: int, last_offset_delta: int
) -> None:
    with contextlib.suppress(CorruptRecordError):
        decode_batch(forge_batch(blob, record_count=record_count, last_offset_delta=last_offset_delta))


def test_attributes_position_constant() -> None:
    assert ATTRIBUTES_POS == 21
