"""BatchBuilder: offsets, the compactor's last_offset_delta, limits and header fields."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowbus.records import (
    BatchBuilder,
    BatchFullError,
    Codec,
    Record,
    UnsupportedCompressionError,
    decode_batch,
)
from flowbus.records.header import ATTR_DELETE_HORIZON_MASK
from flowbus.records.varint import INT32_MAX


def test_dense_offsets_from_base_offset() -> None:
    builder = BatchBuilder(base_offset=40)
    assert builder.next_offset == 40
    for i in range(3):
        builder.append(b"k", b"%d" % i, timestamp_ms=10)
    assert len(builder) == 3
    header, records = decode_batch(builder.build())
    assert [r.offset for r in records] == [40, 41, 42]
    assert (header.base_offset, header.last_offset_delta, header.last_offset) == (40, 2, 42)


def test_compacted_rebuild_keeps_offsets_and_the_last_offset() -> None:
    """What the log's compactor does: keep some records of a batch based at 100 ending at 109."""
    builder = BatchBuilder(Codec.GZIP, base_offset=100, producer_id=4, producer_epoch=1, base_sequence=0)
    builder.append(b"a", b"1", timestamp_ms=5, offset=102)
    builder.append(b"b", None, timestamp_ms=6, offset=105)
    header, records = decode_batch(builder.build(last_offset_delta=9))
    assert records == [Record(102, 5, b"a", b"1"), Record(105, 6, b"b", None)]
    assert header.last_offset == 109
    assert header.next_offset == 110
    assert header.last_sequence == 9


def test_empty_batch_keeps_producer_state() -> None:
    builder = BatchBuilder(base_offset=7, producer_id=1, producer_epoch=0, base_sequence=3)
    header, records = decode_batch(builder.build(last_offset_delta=4))
    assert records == []
    assert (header.record_count, header.last_offset, header.base_timestamp, header.max_timestamp) == (0, 11, -1, -1)


def test_mixed_explicit_and_dense_offsets() -> None:
    builder = BatchBuilder()
    builder.append(None, b"a", timestamp_ms=1)
    builder.append(None, b"b", timestamp_ms=1, offset=5)
    builder.append(None, b"c", timestamp_ms=1)
    _, records = decode_batch(builder.build())
    assert [r.offset for r in records] == [0, 5, 6]


@pytest.mark.parametrize("offset", [3, 2, -1])
def test_explicit_offsets_must_increase(offset: int) -> None:
    builder = BatchBuilder(base_offset=0)
    builder.append(None, b"a", timestamp_ms=1, offset=3)
    with pytest.raises(ValueError):
        builder.append(None, b"b", timestamp_ms=1, offset=offset)
    assert len(builder) == 1


def test_offset_below_base_and_delta_beyond_int32_are_rejected() -> None:
    with pytest.raises(ValueError):
        BatchBuilder(base_offset=10).append(None, None, timestamp_ms=1, offset=9)
    with pytest.raises(ValueError):
        BatchBuilder().append(None, None, timestamp_ms=1, offset=INT32_MAX + 1)


def test_last_offset_delta_override_cannot_go_backwards() -> None:
    builder = BatchBuilder()
    builder.append(None, b"a", timestamp_ms=1, offset=4)
    with pytest.raises(ValueError):
        builder.build(last_offset_delta=3)
    with pytest.raises(ValueError):
        builder.build(last_offset_delta=INT32_MAX + 1)


def test_max_batch_bytes() -> None:
    builder = BatchBuilder(max_batch_bytes=200)
    assert builder.has_room_for(b"k", bytes(50))
    builder.append(b"k", bytes(50), timestamp_ms=1)
    size_before = builder.size_estimate_bytes
    assert not builder.has_room_for(b"k", bytes(150))
    with pytest.raises(BatchFullError):
        builder.append(b"k", bytes(150), timestamp_ms=1)
    assert len(builder) == 1
    assert builder.size_estimate_bytes == size_before
    _, records = decode_batch(builder.build())
    assert len(records) == 1


def test_has_room_for_never_underestimates() -> None:
    builder = BatchBuilder(max_batch_bytes=1_000)
    headers = [("h", b"x" * 10)]
    while builder.has_room_for(b"key", b"v" * 30, headers):
        builder.append(b"key", b"v" * 30, timestamp_ms=1_700_000_000_000, headers=headers)
    assert builder.size_estimate_bytes <= 1_000


def test_header_fields_and_attributes() -> None:
    builder = BatchBuilder(
        Codec.SNAPPY,
        producer_id=77,
        producer_epoch=3,
        base_sequence=1_000,
        is_transactional=True,
        base_offset=5,
        partition_leader_epoch=9,
    )
    builder.append(b"k", b"v", timestamp_ms=200)
    builder.append(b"k", b"v", timestamp_ms=150)
    header, records = decode_batch(builder.build())
    assert header.partition_leader_epoch == 9
    assert header.is_transactional and not header.is_control and not header.is_log_append_time
    assert header.compression == Codec.SNAPPY
    assert (header.base_timestamp, header.max_timestamp) == (200, 200)
    assert [r.timestamp_ms for r in records] == [200, 150]


def test_delete_horizon_is_stored_as_base_timestamp() -> None:
    builder = BatchBuilder(delete_horizon_ms=5_000)
    builder.append(b"k", None, timestamp_ms=1_000)
    header, records = decode_batch(builder.build())
    assert header.attributes & ATTR_DELETE_HORIZON_MASK
    assert header.base_timestamp == 5_000
    assert records[0].timestamp_ms == 1_000


def test_build_is_repeatable() -> None:
    builder = BatchBuilder(Codec.ZSTD)
    builder.append(b"k", b"v", timestamp_ms=1)
    assert builder.build() == builder.build()


def test_accepts_bytearray_and_memoryview() -> None:
    builder = BatchBuilder()
    builder.append(bytearray(b"k"), memoryview(b"value"), timestamp_ms=1, headers=[("h", bytearray(b"x"))])
    _, [record] = decode_batch(builder.build())
    assert record == Record(0, 1, b"k", b"value", (("h", b"x"),))


def test_long_keys_values_and_many_headers() -> None:
    """Lengths past the two-byte varint table take the general encoder."""
    headers = [(f"h{i}", b"x" * i) for i in range(300)]
    builder = BatchBuilder(Codec.LZ4)
    builder.append(b"k" * 20_000, b"v" * 1_000_000, timestamp_ms=1, headers=headers)
    builder.append(None, b"", timestamp_ms=1 + (1 << 40), offset=1 << 20)
    _, records = decode_batch(builder.build())
    assert records[0].key == b"k" * 20_000 and len(records[0].value) == 1_000_000
    assert records[0].headers == tuple(headers)
    assert records[1] == Record(1 << 20, 1 + (1 << 40), None, b"", ())


def test_unicode_header_keys() -> None:
    builder = BatchBuilder()
    builder.append(None, None, timestamp_ms=1, headers=[("clé-😀", b"v"), ("", None)])
    _, [record] = decode_batch(builder.build())
    assert record.headers == (("clé-😀", b"v"), ("", None))


def test_unknown_codec_is_refused_up_front() -> None:
    with pytest.raises(UnsupportedCompressionError):
        BatchBuilder(6)


@settings(max_examples=60, deadline=None)
@given(
    codec=st.sampled_from(list(Codec)),
    count=st.integers(1, 30),
    keep=st.lists(st.booleans(), min_size=30, max_size=30),
    base_offset=st.integers(0, 1 << 40),
)
def test_compactor_style_rebuild_keeps_offsets_timestamps_and_last_offset(
    codec: Codec, count: int, keep: list[bool], base_offset: int
) -> None:
    """Decode a batch, keep a subset, rebuild with the original offsets: what the cleaner does."""
    original = BatchBuilder(codec, base_offset=base_offset, producer_id=8, producer_epoch=1, base_sequence=100)
    for i in range(count):
        original.append(b"k%d" % (i % 4), None if i % 5 == 4 else b"v%d" % i, timestamp_ms=1_000 + 3 * i)
    header, records = decode_batch(original.build())

    rebuilt_builder = BatchBuilder(
        header.compression,
        producer_id=header.producer_id,
        producer_epoch=header.producer_epoch,
        base_sequence=header.base_sequence,
        base_offset=header.base_offset,
    )
    kept = [record for record, keep_it in zip(records, keep, strict=False) if keep_it]
    for record in kept:
        rebuilt_builder.append(
            record.key, record.value, timestamp_ms=record.timestamp_ms, headers=record.headers, offset=record.offset
        )
    rebuilt_header, rebuilt_records = decode_batch(rebuilt_builder.build(last_offset_delta=header.last_offset_delta))

    assert rebuilt_records == kept
    assert rebuilt_header.last_offset == header.last_offset
    assert rebuilt_header.last_sequence == header.last_sequence
    assert rebuilt_header.producer_id == 8
