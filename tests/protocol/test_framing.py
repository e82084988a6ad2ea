"""FrameDecoder: whole frames out of arbitrary chunks, limits checked before buffering."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowbus.protocol.errors import (
    FrameTooLargeError,
    InvalidFrameError,
    RemoteProtocolError,
)
from flowbus.protocol.framing import FrameDecoder, encode_frame


def frame(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


@given(st.lists(st.binary(max_size=50), max_size=10), st.lists(st.integers(1, 40), min_size=1, max_size=50))
def test_any_chunking_yields_the_same_frames(payloads: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(frame(p) for p in payloads)
    decoder = FrameDecoder(max_frame_bytes=100)
    out: list[bytes] = []
    pos = 0
    index = 0
    while pos < len(stream):
        size = cuts[index % len(cuts)]
        out += decoder.feed(stream[pos:pos + size])
        pos += size
        index += 1
    assert out == payloads
    assert decoder.buffered_bytes == 0


def test_one_feed_many_frames_and_a_partial_tail() -> None:
    decoder = FrameDecoder(max_frame_bytes=10)
    assert decoder.feed(frame(b"a") + frame(b"") + frame(b"bc")[:3]) == [b"a", b""]
    assert decoder.buffered_bytes == 3
    assert decoder.feed(frame(b"bc")[3:]) == [b"bc"]


def test_size_is_checked_before_the_body_is_buffered() -> None:
    decoder = FrameDecoder(max_frame_bytes=1024)
    # Only the 4-byte prefix of a 2 GiB frame arrives: rejected at once, nothing buffered.
    with pytest.raises(FrameTooLargeError) as info:
        decoder.feed(struct.pack(">i", 0x7FFFFFFF))
    assert info.value.size_bytes == 0x7FFFFFFF and info.value.max_frame_bytes == 1024
    assert decoder.buffered_bytes == 0


def test_size_prefix_split_across_feeds_is_still_checked_first() -> None:
    decoder = FrameDecoder(max_frame_bytes=16)
    assert decoder.feed(b"\x00\x00") == []
    with pytest.raises(FrameTooLargeError):
        decoder.feed(b"\x00\x11" + b"x" * 5)


def test_exact_limit_is_accepted() -> None:
    decoder = FrameDecoder(max_frame_bytes=16)
    assert decoder.feed(frame(b"x" * 16)) == [b"x" * 16]


def test_negative_size_is_invalid_and_poisons_the_decoder() -> None:
    decoder = FrameDecoder(max_frame_bytes=16)
    with pytest.raises(InvalidFrameError):
        decoder.feed(b"\xff\xff\xff\xfe")
    with pytest.raises(InvalidFrameError):
        decoder.feed(frame(b"ok"))
    assert issubclass(InvalidFrameError, RemoteProtocolError) and issubclass(FrameTooLargeError, RemoteProtocolError)


def test_frames_are_independent_bytes() -> None:
    decoder = FrameDecoder()
    data = bytearray(frame(b"abc"))
    (out,) = decoder.feed(data)
    data[4] = 0
    assert out == b"abc" and isinstance(out, bytes)


def test_memoryview_input_and_encode_frame() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(memoryview(encode_frame(b"hi") + encode_frame(b"yo"))) == [b"hi", b"yo"]
