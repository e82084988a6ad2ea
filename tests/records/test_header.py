"""The fixed batch header: reading, CRC checks, in-place patching and batch iteration."""

from __future__ import annotations

import struct

import pytest

from flowbus.records import BatchBuilder, Codec, CorruptRecordError, decode_batch
from flowbus.records.header import (
    ATTR_TIMESTAMP_TYPE_MASK,
    BATCH_LENGTH_POS,
    CRC_POS,
    HEADER_SIZE,
    LOG_OVERHEAD,
    MAGIC_POS,
    MIN_BATCH_LENGTH,
    check_batch,
    compute_crc,
    iter_batches,
    set_max_timestamp,
    peek_batch_size,
    read_header,
    set_base_offset,
    set_leader_epoch,
    set_log_append_time,
)


def _batch(codec: Codec = Codec.NONE, base_offset: int = 0, records: int = 2) -> bytes:
    builder = BatchBuilder(codec, base_offset=base_offset)
    for i in range(records):
        builder.append(b"k", b"v%d" % i, timestamp_ms=100 + i)
    return builder.build()


def test_read_header_fields() -> None:
    batch = _batch(base_offset=8, records=3)
    header = read_header(batch)
    assert header.base_offset == 8
    assert header.size_bytes == len(batch) == LOG_OVERHEAD + header.batch_length
    assert header.magic == 2
    assert header.record_count == 3
    assert (header.last_offset, header.next_offset) == (10, 11)
    assert header.last_sequence == -1
    assert header.crc == compute_crc(batch, 0, len(batch))


@pytest.mark.parametrize("length", [0, 1, LOG_OVERHEAD, HEADER_SIZE - 1])
def test_read_header_truncated(length: int) -> None:
    with pytest.raises(CorruptRecordError, match="truncated"):
        read_header(_batch()[:length])


def test_read_header_bad_position() -> None:
    with pytest.raises(CorruptRecordError):
        read_header(_batch(), -1)


@pytest.mark.parametrize("magic", [0, 1, 3, 255])
def test_read_header_wrong_magic(magic: int) -> None:
    batch = bytearray(_batch())
    batch[MAGIC_POS] = magic
    with pytest.raises(CorruptRecordError, match="magic"):
        read_header(batch)


@pytest.mark.parametrize("batch_length", [-1, 0, MIN_BATCH_LENGTH - 1])
def test_read_header_impossible_length(batch_length: int) -> None:
    batch = bytearray(_batch())
    struct.pack_into(">i", batch, BATCH_LENGTH_POS, batch_length)
    with pytest.raises(CorruptRecordError, match="batch_length"):
        read_header(batch)


def test_check_batch_truncated_and_crc() -> None:
    batch = _batch()
    assert check_batch(batch).size_bytes == len(batch)
    with pytest.raises(CorruptRecordError, match="truncated"):
        check_batch(batch[:-1])
    corrupted = bytearray(batch)
    corrupted[-1] ^= 1
    with pytest.raises(CorruptRecordError, match="CRC"):
        check_batch(corrupted)


def test_fields_outside_the_crc_can_be_patched() -> None:
    batch = bytearray(_batch())
    set_base_offset(batch, 0, 1 << 40)
    set_leader_epoch(batch, 0, 17)
    header = check_batch(batch)
    assert (header.base_offset, header.partition_leader_epoch) == (1 << 40, 17)
    _, records = decode_batch(batch)
    assert records[0].offset == 1 << 40


@pytest.mark.parametrize("codec", [Codec.NONE, Codec.ZSTD])
def test_set_log_append_time_recomputes_the_crc(codec: Codec) -> None:
    batch = bytearray(b"\x00" * 3 + _batch(codec))
    old_crc = struct.unpack_from(">I", batch, 3 + CRC_POS)[0]
    set_log_append_time(batch, 3, 55_555)
    header = check_batch(batch, 3)
    assert header.crc != old_crc
    assert header.attributes & ATTR_TIMESTAMP_TYPE_MASK
    assert header.is_log_append_time and header.max_timestamp == 55_555
    assert header.compression == codec
    _, records = decode_batch(batch, 3)
    assert {r.timestamp_ms for r in records} == {55_555}


def test_set_max_timestamp_recomputes_the_crc_and_keeps_create_time() -> None:
    batch = bytearray(b"\x00" * 3 + _batch())
    set_max_timestamp(batch, 3, 77_777)
    header = check_batch(batch, 3)
    assert header.max_timestamp == 77_777 and not header.is_log_append_time
    with pytest.raises(CorruptRecordError):
        set_max_timestamp(bytearray(_batch()[:-1]), 0, 1)


def test_set_log_append_time_on_a_truncated_batch() -> None:
    with pytest.raises(CorruptRecordError):
        set_log_append_time(bytearray(_batch()[:-1]), 0, 1)
    with pytest.raises(CorruptRecordError):
        set_log_append_time(bytearray(5), 0, 1)


def test_peek_batch_size() -> None:
    batch = _batch()
    assert peek_batch_size(batch) == len(batch)
    assert peek_batch_size(batch[:LOG_OVERHEAD]) == len(batch)
    assert peek_batch_size(batch[: LOG_OVERHEAD - 1]) is None


def test_iter_batches() -> None:
    batches = [_batch(Codec.NONE, 0), _batch(Codec.LZ4, 2), _batch(Codec.GZIP, 4, records=5)]
    buf = b"".join(batches)
    found = list(iter_batches(buf))
    assert [pos for pos, _ in found] == [0, len(batches[0]), len(batches[0]) + len(batches[1])]
    assert [h.base_offset for _, h in found] == [0, 2, 4]
    assert list(iter_batches(b"")) == []


@pytest.mark.parametrize("verify_crc", [True, False])
def test_iter_batches_raises_on_a_truncated_tail(verify_crc: bool) -> None:
    buf = _batch() + _batch()[:-3]
    with pytest.raises(CorruptRecordError, match="truncated"):
        list(iter_batches(buf, verify_crc=verify_crc))


def test_iter_batches_crc_check_is_optional() -> None:
    corrupted = bytearray(_batch())
    corrupted[-1] ^= 1
    with pytest.raises(CorruptRecordError, match="CRC"):
        list(iter_batches(corrupted))
    assert len(list(iter_batches(corrupted, verify_crc=False))) == 1
