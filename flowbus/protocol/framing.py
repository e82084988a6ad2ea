"""Splitting a byte stream into Kafka frames (int32 big-endian size, then that many bytes).

:class:`FrameDecoder` is fed whatever the socket delivered and hands back complete frames. It reads
each size prefix *before* buffering the body and rejects sizes over ``max_frame_bytes``, so a peer
announcing a 2 GiB frame costs us four bytes, not an allocation (kafka-python's parser and h11 do the
same). No I/O here: the broker's asyncio code owns the socket.
"""

from __future__ import annotations

import struct

from flowbus.protocol.errors import FrameTooLargeError, InvalidFrameError, ProtocolError

#: Bytes of the size prefix in front of every frame.
SIZE_PREFIX_BYTES = 4
#: Default limit, as Kafka's ``socket.request.max.bytes`` (100 MiB).
DEFAULT_MAX_FRAME_BYTES = 100 * 1024 * 1024

_SIZE = struct.Struct(">i")


class FrameDecoder:
    """Incremental frame splitter for one connection.

    Args:
        max_frame_bytes: the largest frame body accepted (excluding the 4-byte prefix).

    Example::

        decoder = FrameDecoder(max_frame_bytes=1 << 20)
        for frame in decoder.feed(chunk):      # frames without their size prefix
            request = decode_request(frame)

    After an error the decoder is poisoned: the stream has lost its framing, so every later
    :meth:`feed` raises the same error and the connection must be closed.
    """

    __slots__ = ("_buffer", "_error", "max_frame_bytes")

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        if max_frame_bytes < 0:
            raise ValueError("max_frame_bytes must be >= 0")
        self.max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()
        self._error: ProtocolError | None = None

    @property
    def buffered_bytes(self) -> int:
        """Bytes received but not yet returned as a frame (a partial frame)."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Add received bytes; return every frame they complete, in order.

        Raises:
            FrameTooLargeError: a size prefix exceeds ``max_frame_bytes``.
            InvalidFrameError: a size prefix is negative.
        """
        if self._error is not None:
            raise self._error
        buffered = self._buffer
        if buffered:
            buffered += data
            frames, consumed = self._split(buffered)
            if consumed:
                del buffered[:consumed]
        else:
            # Fast path: parse straight from the caller's bytes; only a partial tail is kept.
            frames, consumed = self._split(data)
            with memoryview(data) as view:
                if consumed < len(view):
                    buffered += view[consumed:]
        return frames

    def _split(self, source: bytes | bytearray | memoryview) -> tuple[list[bytes], int]:
        """Complete frames at the start of ``source`` and how many bytes they used."""
        frames: list[bytes] = []
        pos = 0
        limit = self.max_frame_bytes
        with memoryview(source) as view:
            available = view.nbytes
            while available - pos >= SIZE_PREFIX_BYTES:
                size = _SIZE.unpack_from(view, pos)[0]
                if size < 0:
                    self._error = InvalidFrameError(f"negative frame size {size}")
                    raise self._error
                if size > limit:
                    # Rejected before a single byte of the body is kept.
                    self._error = FrameTooLargeError(size, limit)
                    raise self._error
                start = pos + SIZE_PREFIX_BYTES
                stop = start + size
                if stop > available:
                    break
                frames.append(view[start:stop].tobytes())
                pos = stop
        return frames, pos


def encode_frame(payload: bytes | bytearray | memoryview) -> bytes:
    """Prefix ``payload`` with its int32 size (for callers that built a body without one)."""
    return _SIZE.pack(len(payload)) + bytes(payload)
