"""Field encoding shared by the broker's internal topics (``__consumer_offsets``, ``__transaction_state``).

Both topics are the broker's own storage, not a wire protocol: their keys and values are
written and read only here. Strings are an int16 byte length then UTF-8, as in Kafka's own
internal records, and a malformed record raises :class:`InternalTopicError` so the loader can
log it and skip it instead of failing to start.
"""

from __future__ import annotations

import struct

from flowbus.broker.errors import InternalTopicError

_INT16 = struct.Struct(">h")


def encode_str(value: str) -> bytes:
    """An int16 length, then the UTF-8 bytes."""
    raw = value.encode()
    return _INT16.pack(len(raw)) + raw


def decode_str(buf: bytes, pos: int) -> tuple[str, int]:
    """The string at ``pos`` and the position after it.

    Raises:
        InternalTopicError: the length is negative or runs past the end of ``buf``.
    """
    (length,) = _INT16.unpack_from(buf, pos)
    pos += 2
    if length < 0 or pos + length > len(buf):
        raise InternalTopicError("string runs past the end of the record")
    return buf[pos : pos + length].decode(), pos + length
