"""Codecs: round trips, other libraries' wire formats, and the decompressed-size limit."""

from __future__ import annotations

import contextlib
import gzip
import os
import struct

import cramjam
import lz4.frame
import pytest
import snappy
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka import codec as kafka_codec

from flowbus.records.compression import MAX_DECOMPRESSED_BYTES, XERIAL_MAGIC, Codec, compress, decompress
from flowbus.records.errors import CorruptRecordError, UnsupportedCompressionError

CODECS = list(Codec)
COMPRESSED = [c for c in Codec if c != Codec.NONE]

# Larger than one 64 KiB LZ4 block and one 32 KiB xerial chunk; part random, part repetitive.
MIXED = os.urandom(50_000) + b"flowbus " * 30_000


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(CODECS), st.binary(max_size=3000))
def test_round_trip(codec: Codec, data: bytes) -> None:
    assert decompress(codec, compress(codec, data)) == data


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("data", [b"", b"x", MIXED, os.urandom(200_000)], ids=["empty", "one", "mixed", "random"])
def test_round_trip_sizes(codec: Codec, data: bytes) -> None:
    assert decompress(codec, compress(codec, data)) == data


@pytest.mark.parametrize("codec", COMPRESSED)
def test_explicit_levels(codec: Codec) -> None:
    level = {Codec.GZIP: 9, Codec.SNAPPY: None, Codec.LZ4: 9, Codec.ZSTD: 10}[codec]
    assert decompress(codec, compress(codec, MIXED, level=level)) == MIXED


def test_gzip_is_a_gzip_container_and_reads_concatenated_members() -> None:
    blob = compress(Codec.GZIP, MIXED)
    assert blob[:2] == b"\x1f\x8b"
    assert gzip.decompress(blob) == MIXED
    assert decompress(Codec.GZIP, gzip.compress(b"abc") + gzip.compress(b"def")) == b"abcdef"


def test_snappy_writes_raw_and_reads_xerial_framing() -> None:
    raw = compress(Codec.SNAPPY, MIXED)
    assert not raw.startswith(XERIAL_MAGIC)
    assert snappy.uncompress(raw) == MIXED
    xerial = kafka_codec.snappy_encode(MIXED, xerial_compatible=True, xerial_blocksize=32 * 1024)
    assert xerial.startswith(XERIAL_MAGIC)
    assert decompress(Codec.SNAPPY, xerial) == MIXED
    assert kafka_codec.snappy_decode(raw) == MIXED


def test_snappy_xerial_with_no_chunks_is_empty() -> None:
    assert decompress(Codec.SNAPPY, XERIAL_MAGIC + struct.pack(">ii", 1, 1)) == b""


def test_lz4_writes_independent_blocks_that_other_readers_verify() -> None:
    blob = compress(Codec.LZ4, MIXED)
    flg = blob[4]
    assert flg & 0x20, "blocks must be independent: Java's Lz4BlockInputStream cannot read linked blocks"
    assert lz4.frame.decompress(blob) == MIXED  # checks the header checksum byte
    assert bytes(cramjam.lz4.decompress(blob)) == MIXED


@pytest.mark.parametrize("block_linked", [False, True])
@pytest.mark.parametrize("checksums", [False, True])
def test_lz4_reads_frames_of_other_writers(block_linked: bool, checksums: bool) -> None:
    blob = lz4.frame.compress(
        MIXED,
        block_linked=block_linked,
        content_checksum=checksums,
        block_checksum=checksums,
        store_size=checksums,
    )
    assert decompress(Codec.LZ4, blob) == MIXED


@pytest.mark.parametrize("content_size", [False, True])
def test_zstd_reads_frames_with_and_without_content_size(content_size: bool) -> None:
    blob = zstandard.ZstdCompressor(write_content_size=content_size).compress(MIXED)
    assert decompress(Codec.ZSTD, blob) == MIXED


@pytest.mark.parametrize("codec", COMPRESSED)
def test_limit_is_enforced(codec: Codec) -> None:
    data = bytes(300_000)
    blob = compress(codec, data)
    assert decompress(codec, blob, max_bytes=len(data)) == data
    with pytest.raises(CorruptRecordError):
        decompress(codec, blob, max_bytes=len(data) - 1)


def test_zip_bombs_are_refused_without_expanding() -> None:
    """16 MiB of zeros shrinks to a few KiB; none may be expanded past a 1 MiB limit."""
    limit_bytes = 1 << 20
    zeros = bytes(16 * limit_bytes)
    bombs = {
        Codec.ZSTD: compress(Codec.ZSTD, zeros),
        Codec.GZIP: compress(Codec.GZIP, zeros, level=1),
    }
    bombs["zstd without content size"] = zstandard.ZstdCompressor(write_content_size=False).compress(zeros)
    for name, blob in bombs.items():
        codec = Codec.ZSTD if isinstance(name, str) else name
        with pytest.raises(CorruptRecordError, match="limit"):
            decompress(codec, blob, max_bytes=limit_bytes)
    # Snappy declares its length up front: a forged header is refused before any allocation.
    with pytest.raises(CorruptRecordError):
        decompress(Codec.SNAPPY, b"\xff\xff\xff\xff\x0f" + b"\x00" * 8)
    # LZ4 and zstd blobs are bounded by walking their block headers first.
    for codec in (Codec.LZ4, Codec.ZSTD):
        with pytest.raises(CorruptRecordError, match="limit"):
            decompress(codec, compress(codec, zeros), max_bytes=limit_bytes)
    assert MAX_DECOMPRESSED_BYTES >= 1 << 20


def test_none_is_limited_too() -> None:
    with pytest.raises(CorruptRecordError):
        decompress(Codec.NONE, b"12345", max_bytes=4)


@pytest.mark.parametrize("codec_id", [5, 6, 7, -1])
def test_unknown_codec(codec_id: int) -> None:
    with pytest.raises(UnsupportedCompressionError):
        decompress(codec_id, b"abc")
    with pytest.raises(UnsupportedCompressionError):
        compress(codec_id, b"abc")


@pytest.mark.parametrize("codec", COMPRESSED)
def test_every_truncation_is_corrupt(codec: Codec) -> None:
    blob = compress(codec, MIXED[:70_000])
    step = max(1, len(blob) // 300)
    for cut in [*range(0, len(blob), step), len(blob) - 1]:
        with pytest.raises(CorruptRecordError):
            decompress(codec, blob[:cut])


@pytest.mark.parametrize("codec", COMPRESSED)
def test_trailing_garbage_is_corrupt(codec: Codec) -> None:
    with pytest.raises(CorruptRecordError):
        decompress(codec, compress(codec, MIXED) + b"\x01\x02\x03\x04\x05")


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(COMPRESSED), st.binary(max_size=200), st.data())
def test_garbage_raises_only_corrupt_record_error(codec: Codec, garbage: bytes, data: st.DataObject) -> None:
    # Half the time, keep a valid stream start so the garbage reaches the codec itself.
    if data.draw(st.booleans()):
        garbage = compress(codec, b"hello flowbus")[:8] + garbage
    try:
        out = decompress(codec, garbage, max_bytes=1 << 20)
    except CorruptRecordError:
        return
    assert len(out) <= 1 << 20


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(COMPRESSED), st.binary(min_size=1, max_size=500), st.data())
def test_flipped_bytes_raise_only_corrupt_record_error(codec: Codec, payload: bytes, data: st.DataObject) -> None:
    blob = bytearray(compress(codec, payload * 20))
    index = data.draw(st.integers(0, len(blob) - 1))
    blob[index] ^= data.draw(st.integers(1, 255))
    with contextlib.suppress(CorruptRecordError):
        decompress(codec, bytes(blob), max_bytes=1 << 20)


@pytest.mark.parametrize(
    ("data", "digest"),
    [(b"", 0x02CC5D05), (b"a", 0x550D7456), (b"abc", 0x32D153FF)],
)
def test_xxh32_known_values(data: bytes, digest: int) -> None:
    """The LZ4 frame header checksum is the second byte of XXH32 over the descriptor."""
    from flowbus.records.compression import _xxh32

    assert _xxh32(data) == digest
