"""Compression codecs of RecordBatch v2, with a hard limit on decompressed size.

A compressed batch carries all its records as one blob after the 61-byte header; bits 0-2
of the batch attributes name the codec (protocol guide, "Record Batch"). Wire formats:

* GZIP (1): a gzip member (RFC 1952), as Java's ``GZIPOutputStream`` writes it. Concatenated
  members are accepted on read, as Java's ``GZIPInputStream`` does.
* SNAPPY (2): we write one raw snappy block. Java producers (through xerial's
  ``SnappyOutputStream``) and kafka-python send the xerial framing instead: the 8-byte magic
  ``\\x82SNAPPY\\x00``, two big-endian int32 versions, then chunks of
  ``[int32 big-endian length][raw snappy block]``. We read both; every reader we know of
  (xerial, librdkafka, kafka-python) accepts a raw block too.
* LZ4 (3): the LZ4 *frame* format (KIP-57 fixed Kafka's frame header checksum for message
  format v1 and later). We write 64 KiB *independent* blocks because Java's
  ``Lz4BlockInputStream`` decompresses each block on its own and cannot read linked blocks.
* ZSTD (4): a zstd frame (KIP-110).

Decompression is where a 1 MiB produce request can turn into gigabytes (a "zip bomb"), so
:func:`decompress` never produces more than ``max_bytes`` and sizes its output buffer from
what the stream itself declares (snappy's length prefix; the block headers of LZ4 and zstd
frames, walked without decompressing) instead of trusting the codec to allocate. Every codec failure is reported as
:class:`CorruptRecordError`, the same as any other malformed batch.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from enum import IntEnum

import cramjam

from flowbus.records.errors import CorruptRecordError, UnsupportedCompressionError

#: Largest records blob a compressed batch may expand to. Kafka's default message.max.bytes
#: is about 1 MiB of *compressed* batch; 64 MiB leaves room for a 64:1 ratio.
MAX_DECOMPRESSED_BYTES = 64 * 1024 * 1024


class Codec(IntEnum):
    """Compression codec ids, the values of the low three attribute bits."""

    NONE = 0
    GZIP = 1
    SNAPPY = 2
    LZ4 = 3
    ZSTD = 4


#: Default levels, chosen for throughput. Kafka's own defaults are gzip 6 (Java's
#: Deflater default), lz4 9 and zstd 3 (KIP-390); lz4 level 9 is several times slower
#: than the fast mode we use when no level is given.
GZIP_DEFAULT_LEVEL = 6
ZSTD_DEFAULT_LEVEL = 3

# Errors the codec libraries raise on bad input; any of them means a corrupt batch.
_CODEC_ERRORS = (cramjam.DecompressionError, OSError, ValueError, zlib.error, EOFError)

_U32_LE = struct.Struct("<I")
_U64_LE = struct.Struct("<Q")
_I32_BE = struct.Struct(">i")

# --- snappy (xerial framing, see module docstring) ---------------------------------------
XERIAL_MAGIC = b"\x82SNAPPY\x00"
_XERIAL_HEADER_BYTES = 16  # magic + int32 version + int32 minimum compatible version

# --- LZ4 frame (lz4 frame format spec 1.6; KIP-57) -----------------------------------------
_LZ4_MAGIC = b"\x04\x22\x4d\x18"  # 0x184D2204 little-endian
_LZ4_FLG_VERSION_MASK = 0xC0
_LZ4_FLG_VERSION_01 = 0x40
_LZ4_FLG_BLOCK_INDEPENDENT = 0x20
_LZ4_FLG_BLOCK_CHECKSUM = 0x10
_LZ4_FLG_CONTENT_SIZE = 0x08
_LZ4_FLG_CONTENT_CHECKSUM = 0x04
_LZ4_FLG_RESERVED = 0x02
_LZ4_FLG_DICT_ID = 0x01
_LZ4_BD_RESERVED = 0x8F
_LZ4_BLOCK_MAX_BYTES = {4: 64 << 10, 5: 256 << 10, 6: 1 << 20, 7: 4 << 20}
_LZ4_UNCOMPRESSED_BIT = 0x80000000
_LZ4_END_MARK = b"\x00\x00\x00\x00"
#: We write 64 KiB blocks: the smallest size every reader supports, and Java's default.
_LZ4_WRITE_BLOCK_BYTES = 64 << 10

# --- zstd frame (RFC 8878, section 3.1.1) -----------------------------------------------------
_ZSTD_MAGIC = 0xFD2FB528
_ZSTD_SKIPPABLE_MAGIC = 0x184D2A50  # low four bits free
_ZSTD_BLOCK_MAX_BYTES = 128 << 10



def _xxh32(data: bytes, seed: int = 0) -> int:
    """XXH32 of a short input (< 16 bytes), enough for the LZ4 frame header checksum."""
    if len(data) >= 16:
        raise ValueError("_xxh32 handles inputs shorter than 16 bytes only")
    p1, p2, p3, p4, p5 = 2654435761, 2246822519, 3266489917, 668265263, 374761393
    mask = 0xFFFFFFFF

    def rotl(x: int, r: int) -> int:
        return ((x << r) | (x >> (32 - r))) & mask

    h = (seed + p5 + len(data)) & mask
    i = 0
    while i + 4 <= len(data):
        h = rotl((h + _U32_LE.unpack_from(data, i)[0] * p3) & mask, 17) * p4 & mask
        i += 4
    for byte in data[i:]:
        h = rotl((h + byte * p5) & mask, 11) * p1 & mask
    h ^= h >> 15
    h = h * p2 & mask
    h ^= h >> 13
    h = h * p3 & mask
    h ^= h >> 16
    return h


def _lz4_frame_header() -> bytes:
    """Magic, FLG (version 01, independent blocks, no checksums), BD (64 KiB), HC."""
    descriptor = bytes([_LZ4_FLG_VERSION_01 | _LZ4_FLG_BLOCK_INDEPENDENT, 4 << 4])
    header_checksum = (_xxh32(descriptor) >> 8) & 0xFF
    return _LZ4_MAGIC + descriptor + bytes([header_checksum])


_LZ4_FRAME_HEADER = _lz4_frame_header()


def compress(codec: Codec | int, data: bytes | bytearray | memoryview, *, level: int | None = None) -> bytes:
    """Compress a records blob with ``codec``; ``level`` None picks the codec's default.

    Raises:
        UnsupportedCompressionError: ``codec`` is not one of :class:`Codec`.
    """
    if codec == Codec.NONE:
        return bytes(data)
    if codec == Codec.GZIP:
        # wbits 31 = 16 + 15: a gzip container (header, deflate, CRC-32 and size trailer).
        return zlib.compress(data, GZIP_DEFAULT_LEVEL if level is None else level, wbits=31)
    if codec == Codec.SNAPPY:
        return bytes(cramjam.snappy.compress_raw(data))
    if codec == Codec.LZ4:
        return _lz4_compress_frame(data, level)
    if codec == Codec.ZSTD:
        return bytes(cramjam.zstd.compress(data, level=ZSTD_DEFAULT_LEVEL if level is None else level))
    raise UnsupportedCompressionError(f"unknown compression codec id {int(codec)}")


def decompress(
    codec: Codec | int, data: bytes | bytearray | memoryview, *, max_bytes: int = MAX_DECOMPRESSED_BYTES
) -> bytes:
    """Decompress a records blob, refusing to produce more than ``max_bytes``.

    Raises:
        CorruptRecordError: the stream is malformed, truncated, has trailing garbage, or
            expands beyond ``max_bytes``.
        UnsupportedCompressionError: ``codec`` is not one of :class:`Codec`.
    """
    if codec == Codec.NONE:
        if len(data) > max_bytes:
            raise CorruptRecordError(f"records blob of {len(data)} bytes exceeds the {max_bytes}-byte limit")
        return bytes(data)
    if codec == Codec.GZIP:
        decoder = _gunzip
    elif codec == Codec.SNAPPY:
        decoder = _snappy_decompress
    elif codec == Codec.LZ4:
        decoder = _lz4_decompress
    elif codec == Codec.ZSTD:
        decoder = _zstd_decompress
    else:
        raise UnsupportedCompressionError(f"unknown compression codec id {int(codec)}")
    try:
        return decoder(data, max_bytes)
    except _CODEC_ERRORS as exc:
        raise CorruptRecordError(f"{Codec(codec).name} records blob cannot be decompressed: {exc}") from None


def _too_large(codec_name: str, max_bytes: int) -> CorruptRecordError:
    return CorruptRecordError(f"{codec_name} records blob expands beyond the {max_bytes}-byte limit")


# --- gzip ------------------------------------------------------------------------------------


def _gunzip(data: bytes | bytearray | memoryview, max_bytes: int) -> bytes:
    """Inflate one or more concatenated gzip members, stopping at ``max_bytes`` + 1."""
    pieces: list[bytes] = []
    total = 0
    rest: bytes | bytearray | memoryview = data
    if not rest:
        raise CorruptRecordError("GZIP records blob is empty")
    # Each member consumes at least its 18-byte header and trailer, so this loop ends.
    while rest:
        inflater = zlib.decompressobj(wbits=31)
        piece = inflater.decompress(rest, max_bytes - total + 1)
        total += len(piece)
        if total > max_bytes:
            raise _too_large("GZIP", max_bytes)
        if not inflater.eof:
            raise CorruptRecordError("GZIP records blob is truncated")
        pieces.append(piece)
        rest = inflater.unused_data
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


# --- snappy ----------------------------------------------------------------------------------


def _snappy_block(block: bytes | bytearray | memoryview, budget_bytes: int) -> bytes:
    """Decompress one raw snappy block after checking its declared length against the budget."""
    declared = cramjam.snappy.decompress_raw_len(block)
    if declared > budget_bytes:
        raise CorruptRecordError(f"SNAPPY block declares {declared} bytes, over the remaining {budget_bytes}")
    out = bytes(cramjam.snappy.decompress_raw(block))
    if len(out) != declared:
        raise CorruptRecordError(f"SNAPPY block declared {declared} bytes but produced {len(out)}")
    return out


def _snappy_decompress(data: bytes | bytearray | memoryview, max_bytes: int) -> bytes:
    view = memoryview(data)
    if view[: len(XERIAL_MAGIC)] != XERIAL_MAGIC:
        return _snappy_block(view, max_bytes)
    if len(view) < _XERIAL_HEADER_BYTES:
        raise CorruptRecordError("xerial snappy header is truncated")
    pieces: list[bytes] = []
    total = 0
    pos = _XERIAL_HEADER_BYTES
    # Each chunk consumes at least its 4-byte length, so this loop ends.
    while pos < len(view):
        if len(view) - pos < 4:
            raise CorruptRecordError(f"xerial snappy chunk length truncated at {pos}")
        (chunk_bytes,) = _I32_BE.unpack_from(view, pos)
        pos += 4
        if chunk_bytes < 0 or chunk_bytes > len(view) - pos:
            raise CorruptRecordError(f"xerial snappy chunk of {chunk_bytes} bytes at {pos} overruns the blob")
        piece = _snappy_block(view[pos : pos + chunk_bytes], max_bytes - total)
        total += len(piece)
        pieces.append(piece)
        pos += chunk_bytes
    return b"".join(pieces)


# --- LZ4 -------------------------------------------------------------------------------------


def _lz4_compress_frame(data: bytes | bytearray | memoryview, level: int | None) -> bytes:
    """One LZ4 frame of independent 64 KiB blocks; incompressible blocks are stored raw."""
    view = memoryview(data)
    parts: list[bytes | memoryview] = [_LZ4_FRAME_HEADER]
    for start in range(0, len(view), _LZ4_WRITE_BLOCK_BYTES):
        chunk = view[start : start + _LZ4_WRITE_BLOCK_BYTES]
        if level is None:
            block = cramjam.lz4.compress_block(chunk, store_size=False)
        else:
            block = cramjam.lz4.compress_block(chunk, mode="high_compression", compression=level, store_size=False)
        if len(block) < len(chunk):
            parts.append(_U32_LE.pack(len(block)))
            parts.append(bytes(block))
        else:
            parts.append(_U32_LE.pack(len(chunk) | _LZ4_UNCOMPRESSED_BIT))
            parts.append(chunk)
    parts.append(_LZ4_END_MARK)
    return b"".join(parts)


def _lz4_frame_bound(view: memoryview) -> int:
    """Walk the frame's block headers (not its bytes): validate the layout, bound the output."""
    if len(view) < 7 or view[:4] != _LZ4_MAGIC:
        raise CorruptRecordError("LZ4 records blob does not start with an LZ4 frame magic")
    flg = view[4]
    bd = view[5]
    if flg & _LZ4_FLG_VERSION_MASK != _LZ4_FLG_VERSION_01 or flg & _LZ4_FLG_RESERVED or bd & _LZ4_BD_RESERVED:
        raise CorruptRecordError(f"LZ4 frame descriptor {flg:#04x} {bd:#04x} is invalid")
    if flg & _LZ4_FLG_DICT_ID:
        raise CorruptRecordError("LZ4 frame needs a dictionary, which Kafka never uses")
    block_max_bytes = _LZ4_BLOCK_MAX_BYTES.get(bd >> 4)
    if block_max_bytes is None:
        raise CorruptRecordError(f"LZ4 frame block size code {bd >> 4} is invalid")
    pos = 6
    content_bytes: int | None = None
    if flg & _LZ4_FLG_CONTENT_SIZE:
        if len(view) < pos + 9:
            raise CorruptRecordError("LZ4 frame header is truncated")
        (content_bytes,) = _U64_LE.unpack_from(view, pos)
        pos += 8
    pos += 1  # header checksum, verified by the codec
    block_checksum_bytes = 4 if flg & _LZ4_FLG_BLOCK_CHECKSUM else 0
    bound = 0
    # Each block consumes at least its 4-byte size, so this loop ends.
    while True:
        if len(view) - pos < 4:
            raise CorruptRecordError("LZ4 frame is truncated before its end mark")
        (block_bytes,) = _U32_LE.unpack_from(view, pos)
        pos += 4
        if block_bytes == 0:
            break
        stored_raw = block_bytes & _LZ4_UNCOMPRESSED_BIT
        block_bytes &= ~_LZ4_UNCOMPRESSED_BIT
        if block_bytes > block_max_bytes:
            raise CorruptRecordError(f"LZ4 block of {block_bytes} bytes exceeds the frame's {block_max_bytes}")
        pos += block_bytes + block_checksum_bytes
        if pos > len(view):
            raise CorruptRecordError("LZ4 frame is truncated inside a block")
        bound += block_bytes if stored_raw else block_max_bytes
    if flg & _LZ4_FLG_CONTENT_CHECKSUM:
        pos += 4
    if pos != len(view):
        raise CorruptRecordError(f"LZ4 frame ends at {pos} but the blob has {len(view)} bytes")
    return bound if content_bytes is None else min(bound, content_bytes)


def _lz4_decompress(data: bytes | bytearray | memoryview, max_bytes: int) -> bytes:
    view = memoryview(data)
    bound = _lz4_frame_bound(view)
    return _decompress_into(cramjam.lz4.decompress_into, "LZ4", view, bound, max_bytes)


# --- zstd ------------------------------------------------------------------------------------


def _zstd_bound(view: memoryview) -> int:
    """Walk the frames and block headers (not their bytes): validate the layout, bound the output.

    RFC 8878: a frame is a header, blocks with 3-byte headers (last-block bit, type, size),
    and an optional 4-byte checksum. A raw or RLE block regenerates exactly its size field,
    a compressed block at most 128 KiB; a declared Frame_Content_Size is tighter still.
    Skippable frames (magic 0x184D2A5?) are stepped over.
    """
    bound = 0
    pos = 0
    end = len(view)
    # Every frame and block consumes at least 3 bytes, so these loops end.
    while pos < end:
        if end - pos < 8:
            raise CorruptRecordError(f"ZSTD frame header truncated at {pos}")
        (magic,) = _U32_LE.unpack_from(view, pos)
        if magic & 0xFFFFFFF0 == _ZSTD_SKIPPABLE_MAGIC:
            (skip_bytes,) = _U32_LE.unpack_from(view, pos + 4)
            pos += 8 + skip_bytes
            continue
        if magic != _ZSTD_MAGIC:
            raise CorruptRecordError(f"ZSTD records blob has no zstd frame magic at {pos}")
        descriptor = view[pos + 4]
        if descriptor & 0x08:
            raise CorruptRecordError("ZSTD frame header sets its reserved bit")
        single_segment = (descriptor >> 5) & 1
        fcs_bytes = (single_segment, 2, 4, 8)[descriptor >> 6]
        pos += 5 + (1 - single_segment) + (0, 1, 2, 4)[descriptor & 3]
        if end - pos < fcs_bytes:
            raise CorruptRecordError("ZSTD frame header is truncated")
        content_bytes: int | None = None
        if fcs_bytes:
            content_bytes = int.from_bytes(view[pos : pos + fcs_bytes], "little") + (256 if fcs_bytes == 2 else 0)
            pos += fcs_bytes
        frame_bound = 0
        while True:
            if end - pos < 3:
                raise CorruptRecordError("ZSTD block header is truncated")
            block_header = view[pos] | (view[pos + 1] << 8) | (view[pos + 2] << 16)
            pos += 3
            block_type = (block_header >> 1) & 3
            block_bytes = block_header >> 3
            if block_type == 0:  # raw
                frame_bound += block_bytes
                pos += block_bytes
            elif block_type == 1:  # RLE: one byte repeated block_bytes times
                frame_bound += block_bytes
                pos += 1
            elif block_type == 2:  # compressed
                frame_bound += _ZSTD_BLOCK_MAX_BYTES
                pos += block_bytes
            else:
                raise CorruptRecordError("ZSTD block uses the reserved block type")
            if pos > end:
                raise CorruptRecordError("ZSTD frame is truncated inside a block")
            if block_header & 1:
                break
        if descriptor & 0x04:
            pos += 4  # content checksum, verified by the codec
        bound += frame_bound if content_bytes is None else min(frame_bound, content_bytes)
    if pos != end:
        raise CorruptRecordError("ZSTD frame is truncated")
    return bound


def _zstd_decompress(data: bytes | bytearray | memoryview, max_bytes: int) -> bytes:
    view = memoryview(data)
    if not view:
        raise CorruptRecordError("ZSTD records blob is empty")
    bound = _zstd_bound(view)
    return _decompress_into(cramjam.zstd.decompress_into, "ZSTD", view, bound, max_bytes)


def _decompress_into(
    decode_into: Callable[[memoryview, bytearray], int],
    codec_name: str,
    view: memoryview,
    bound_bytes: int,
    max_bytes: int,
) -> bytes:
    """Decompress into a buffer of ``min(bound_bytes, max_bytes + 1)`` bytes.

    A preallocated output is the only way cramjam lets us cap what it produces. The bound
    comes from walking the stream's block headers, so one attempt suffices: a stream that
    does not fit is either corrupt or over the limit.
    """
    capacity = max(1, min(bound_bytes, max_bytes + 1))
    out = bytearray(capacity)
    try:
        written = decode_into(view, out)
    except _CODEC_ERRORS as exc:
        if bound_bytes > max_bytes:
            raise CorruptRecordError(
                f"{codec_name} records blob is malformed or expands beyond the {max_bytes}-byte limit: {exc}"
            ) from None
        raise CorruptRecordError(f"{codec_name} records blob is malformed: {exc}") from None
    if written > max_bytes:
        raise _too_large(codec_name, max_bytes)
    del out[written:]
    return bytes(out)
