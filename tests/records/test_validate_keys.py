"""``keyless_record_indexes``: the key check of compacted topics' produce path.

It walks records without decoding them, so it is checked against the full decoder on random
batches (every codec, keys and deltas from one to several varint bytes), and on forged records
for the malformed cases.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from flowbus.records import BatchBuilder, Codec
from flowbus.records.errors import CorruptRecordError, UnsupportedCompressionError
from flowbus.records.header import ATTRIBUTES_POS, check_batch, read_header
from flowbus.records.record import decode_batch
from flowbus.records.validate import keyless_record_indexes
from tests.records.conftest import forge_batch, raw_record, refresh_crc

T0 = 1_700_000_000_000

keys = st.one_of(st.none(), st.binary(max_size=300))


@settings(max_examples=80, deadline=None)
@example(batch_keys=[None], shifts=[0], codec=Codec.NONE)
@example(batch_keys=[b"k", None, b"", None], shifts=[0, 10**11, -5, 1], codec=Codec.ZSTD)
@given(
    batch_keys=st.lists(keys, min_size=1, max_size=40),
    shifts=st.lists(st.integers(-(10**9), 10**12), min_size=40, max_size=40),
    codec=st.sampled_from(list(Codec)),
)
def test_matches_the_decoder(batch_keys: list[bytes | None], shifts: list[int], codec: Codec) -> None:
    builder = BatchBuilder(codec)
    for i, key in enumerate(batch_keys):
        # Sparse offsets and wide timestamps: both deltas take several varint bytes at times.
        builder.append(key, b"v" * (i % 3) * 50, timestamp_ms=T0 + shifts[i], offset=i * 1_000)
    batch = builder.build()
    _, records = decode_batch(batch)
    expected = [i for i, record in enumerate(records) if record.key is None]
    assert keyless_record_indexes(batch, 0, read_header(batch)) == expected


def test_a_batch_at_an_offset_in_a_larger_buffer() -> None:
    first, second = BatchBuilder(), BatchBuilder(Codec.GZIP)
    first.append(b"k", b"v", timestamp_ms=T0)
    second.append(b"k", b"v", timestamp_ms=T0)
    second.append(None, b"v", timestamp_ms=T0)
    buffer = memoryview(first.build() + second.build())
    at = read_header(buffer).size_bytes
    assert keyless_record_indexes(buffer, 0, read_header(buffer)) == []
    assert keyless_record_indexes(buffer, at, read_header(buffer, at)) == [1]


def test_an_empty_batch_has_no_records() -> None:
    batch = forge_batch(b"", record_count=0)
    assert keyless_record_indexes(batch, 0, check_batch(batch)) == []


def test_a_long_form_of_minus_one_is_a_null_key() -> None:
    """Zigzag -1 is 0x01; a producer may still spell it 0x81 0x00 (the decoder reads both)."""
    record = bytearray(raw_record(key=None))
    # length, attributes, timestamp delta, offset delta, then the key length byte 0x01
    assert record[4] == 0x01
    record[4:5] = b"\x81\x00"
    record[0] += 2  # one more byte in the record (a one-byte zigzag length: +1 is +2)
    batch = forge_batch(bytes(record), record_count=1)
    assert [r.key for r in decode_batch(batch)[1]] == [None]
    assert keyless_record_indexes(batch, 0, check_batch(batch)) == [0]


@pytest.mark.parametrize(
    ("blob", "count"),
    [
        (raw_record(key=None, key_length=-2), 1),  # negative but not null
        (raw_record(key=b"k")[:-1], 1),  # truncated
        (raw_record(key=b"k") + raw_record(key=None), 1),  # more records than the header says
        (raw_record(key=b"k"), 2),  # fewer
        # the record ends before its key: an 8-byte timestamp delta in an 8-byte record
        (raw_record(key=b"k", timestamp_delta=10**15, length_adjust=-7), 1),
    ],
)
def test_malformed_records_raise(blob: bytes, count: int) -> None:
    batch = forge_batch(blob, record_count=count)
    with pytest.raises(CorruptRecordError):
        keyless_record_indexes(batch, 0, read_header(batch))


def test_an_unknown_codec_raises() -> None:
    batch = bytearray(forge_batch(raw_record(key=None), record_count=1))
    batch[ATTRIBUTES_POS + 1] |= 0x07
    batch = bytearray(refresh_crc(batch))
    with pytest.raises(UnsupportedCompressionError):
        keyless_record_indexes(batch, 0, read_header(batch))
