"""Helpers shared by the record tests: forge batches whose CRC is valid but whose records are not."""

from __future__ import annotations

import struct

import pytest

from flowbus.records.header import ATTRIBUTES_POS, CRC_POS, HEADER_SIZE, LOG_OVERHEAD, compute_crc
from flowbus.records.varint import encode_varint, encode_varlong


def refresh_crc(batch: bytearray) -> bytes:
    """Recompute the CRC of a single batch after a test edited it, so only the edit is wrong."""
    struct.pack_into(">I", batch, CRC_POS, compute_crc(batch, 0, len(batch)))
    return bytes(batch)


def forge_batch(
    records_blob: bytes,
    *,
    record_count: int,
    last_offset_delta: int = 0,
    attributes: int = 0,
    base_offset: int = 0,
    base_timestamp: int = 1_000,
    max_timestamp: int = 1_000,
) -> bytes:
    """A batch with a correct header and CRC around an arbitrary records blob."""
    batch = bytearray(HEADER_SIZE)
    struct.pack_into(
        ">qiibIhiqqqhii",
        batch,
        0,
        base_offset,
        HEADER_SIZE - LOG_OVERHEAD + len(records_blob),
        -1,
        2,
        0,
        attributes,
        last_offset_delta,
        base_timestamp,
        max_timestamp,
        -1,
        -1,
        -1,
        record_count,
    )
    batch += records_blob
    assert ATTRIBUTES_POS == 21
    return refresh_crc(batch)


def raw_record(
    *,
    offset_delta: int = 0,
    timestamp_delta: int = 0,
    key: bytes | None = b"k",
    value: bytes | None = b"v",
    headers: list[tuple[bytes, bytes | None]] | None = None,
    key_length: int | None = None,
    value_length: int | None = None,
    header_count: int | None = None,
    length_adjust: int = 0,
) -> bytes:
    """Encode one record by hand; the ``*_length``/``header_count`` overrides forge bad lengths."""
    body = b"\x00" + encode_varlong(timestamp_delta) + encode_varint(offset_delta)
    body += encode_varint(key_length if key_length is not None else (-1 if key is None else len(key)))
    body += key or b""
    body += encode_varint(value_length if value_length is not None else (-1 if value is None else len(value)))
    body += value or b""
    headers = headers or []
    body += encode_varint(len(headers) if header_count is None else header_count)
    for name, header_value in headers:
        body += encode_varint(len(name)) + name
        body += encode_varint(-1) if header_value is None else encode_varint(len(header_value)) + header_value
    return encode_varint(len(body) + length_adjust) + body


@pytest.fixture
def forge() -> object:
    return forge_batch
