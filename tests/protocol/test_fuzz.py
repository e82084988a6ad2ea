"""Garbage and damaged frames never escape as anything but RemoteProtocolError (or, for a header
naming an unknown API/version, UnsupportedVersionError) -- no IndexError, struct.error,
UnicodeDecodeError, MemoryError or hang."""

from __future__ import annotations

import struct
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowbus.protocol import SUPPORTED_VERSIONS
from flowbus.protocol.codec import (
    RequestHeader,
    decode_consumer_assignment,
    decode_consumer_subscription,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)
from flowbus.protocol.errors import RemoteProtocolError, UnsupportedVersionError
from tests.protocol.bodies import all_pairs, rich_body

PAIRS = all_pairs()
SUPPORTED = [(int(key), version) for key, (low, high) in SUPPORTED_VERSIONS.items() for version in range(low, high + 1)]


def _check_request(frame: bytes) -> None:
    try:
        decode_request(frame)
    except UnsupportedVersionError:
        pass
    except RemoteProtocolError as exc:
        # A chained cause means a primitive leaked an internal exception that the guard caught.
        assert exc.__cause__ is None, repr(exc.__cause__)


def _check_response(key: int, version: int, frame: bytes) -> None:
    try:
        decode_response(key, version, frame)
    except RemoteProtocolError as exc:
        assert exc.__cause__ is None, repr(exc.__cause__)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes(data: bytes) -> None:
    _check_request(data)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(SUPPORTED), st.integers(-1, 2**31 - 1), st.binary(max_size=120))
def test_valid_header_random_body(api: tuple[int, int], correlation_id: int, body: bytes) -> None:
    key, version = api
    _check_request(struct.pack(">hhi", key, version, correlation_id) + b"\x00\x01c" + body)
    _check_response(key, version, struct.pack(">i", correlation_id) + body)


@st.composite
def _damaged(draw: st.DrawFn) -> tuple[str, int, int, bytes]:
    kind, key, version, spec = draw(st.sampled_from(PAIRS))
    body = rich_body(spec.fields, version, seed=draw(st.integers(0, 50)))
    if kind == "request":
        frame = encode_request(key, version, 1, "c", body)[4:]
    else:
        frame = encode_response(RequestHeader(key, version, 1, None), body)[4:]
    data = bytearray(frame)
    operation = draw(st.sampled_from(["truncate", "flip", "insert", "delete"]))
    position = draw(st.integers(0, max(len(data) - 1, 0)))
    if operation == "truncate":
        del data[position:]
    elif operation == "flip":
        data[position] ^= draw(st.integers(1, 255))
    elif operation == "insert":
        data[position:position] = draw(st.binary(min_size=1, max_size=8))
    else:
        del data[position:position + draw(st.integers(1, 8))]
    return kind, int(key), version, bytes(data)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_damaged())
def test_damaged_valid_frames(case: tuple[str, int, int, bytes]) -> None:
    kind, key, version, data = case
    if kind == "request":
        _check_request(data)
    else:
        _check_response(key, version, data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_consumer_protocol_garbage(data: bytes) -> None:
    for decode in (decode_consumer_subscription, decode_consumer_assignment):
        try:
            decode(data)
        except RemoteProtocolError as exc:
            assert exc.__cause__ is None


def test_huge_claimed_counts_fail_fast() -> None:
    # Metadata v0 with a topic array claiming 2**31-1 entries: rejected by the bytes-left check.
    frame = struct.pack(">hhi", 3, 0, 1) + b"\xff\xff" + struct.pack(">i", 0x7FFFFFFF)
    try:
        decode_request(frame)
    except RemoteProtocolError:
        pass
    else:  # pragma: no cover
        raise AssertionError("accepted a 2**31 element array in 4 bytes")


def test_truncation_at_every_position_of_every_message_fails_cleanly() -> None:
    for kind, key, version, spec in PAIRS[::3]:
        body: dict[str, Any] = rich_body(spec.fields, version)
        if kind == "request":
            frame = encode_request(key, version, 1, "c", body)[4:]
            for cut in range(0, len(frame), 3):
                _check_request(frame[:cut])
        else:
            frame = encode_response(RequestHeader(key, version, 1, None), body)[4:]
            for cut in range(0, len(frame), 3):
                _check_response(int(key), version, frame[:cut])
