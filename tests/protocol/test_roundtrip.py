"""decode(encode(body)) == body for every request and response at every supported version."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowbus.protocol.codec import (
    RequestHeader,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)
from flowbus.protocol.schema import MessageSpec
from tests.protocol.bodies import (
    all_pairs,
    body_strategy,
    normalise,
    rich_body,
    sparse_body,
)

PAIRS = all_pairs()
IDS = [f"{spec.name}-v{version}" for _, _, version, spec in PAIRS]


def roundtrip(kind: str, key: int, version: int, body: dict[str, Any]) -> dict[str, Any]:
    if kind == "request":
        frame = encode_request(key, version, 12345, "client-1", body)
        request = decode_request(frame[4:])
        assert request.header == RequestHeader(key, version, 12345, "client-1")
        return request.body
    frame = encode_response(RequestHeader(key, version, 777, None), body)
    correlation_id, decoded = decode_response(key, version, frame[4:])
    assert correlation_id == 777
    return decoded


@pytest.mark.parametrize("kind,key,version,spec", PAIRS, ids=IDS)
def test_rich_body_roundtrips(kind: str, key: int, version: int, spec: MessageSpec) -> None:
    body = rich_body(spec.fields, version)
    assert normalise(roundtrip(kind, key, version, body)) == normalise(body)


@pytest.mark.parametrize("kind,key,version,spec", PAIRS, ids=IDS)
def test_sparse_body_roundtrips(kind: str, key: int, version: int, spec: MessageSpec) -> None:
    body = sparse_body(spec.fields, version)
    assert normalise(roundtrip(kind, key, version, body)) == normalise(body)


@pytest.mark.parametrize("kind,key,version,spec", PAIRS, ids=IDS)
def test_empty_dict_encodes_defaults_and_decodes_every_field(kind: str, key: int, version: int,
                                                             spec: MessageSpec) -> None:
    decoded = roundtrip(kind, key, version, {})
    assert set(decoded) == {fld.name for fld in spec.fields if version in fld.versions}


@st.composite
def _pair_and_body(draw: st.DrawFn) -> tuple[str, int, int, dict[str, Any]]:
    kind, key, version, spec = draw(st.sampled_from(PAIRS))
    return kind, key, version, draw(body_strategy(spec.fields, version))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_pair_and_body())
def test_random_bodies_roundtrip(case: tuple[str, int, int, dict[str, Any]]) -> None:
    kind, key, version, body = case
    assert normalise(roundtrip(kind, key, version, body)) == normalise(body)
