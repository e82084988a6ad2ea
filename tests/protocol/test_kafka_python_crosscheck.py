"""Cross-checks against kafka-python's codecs: theirs must read our bytes and write the same bytes.

kafka-python ships two independent implementations:

* ``kafka.protocol.<area>`` -- message classes driven by Apache Kafka's JSON specs, for every version
  of every API we support (decoded bodies come back as dicts with the same snake_case names as ours);
* ``kafka.protocol.old`` -- the hand-written per-version ``Struct`` schemas of earlier releases, an
  independent statement of the old layouts.

For each message and version we encode a rich and a sparse body with our codec, decode it with theirs,
re-encode with theirs and require byte equality (so each side decodes what the other encodes), and for
the JSON-driven classes also require that their decoded fields equal ours by name and value.
"""

from __future__ import annotations

import importlib
import io
import pkgutil
from typing import Any

import kafka.protocol.api_message as kafka_protocol
import pytest

from flowbus.protocol.api import ApiKey
from flowbus.protocol.codec import (
    RequestHeader,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
    request_plan,
    response_plan,
)
from flowbus.protocol.primitives import Writer
from flowbus.protocol.schema import MessageSpec
from tests.protocol.bodies import all_pairs, normalise, rich_body, sparse_body

_NEW_MODULES = ["producer", "consumer.fetch", "consumer.group", "consumer.metadata", "consumer.offsets",
                "metadata.api_versions", "metadata.find_coordinator", "metadata.metadata", "admin.topics",
                "admin.configs", "admin.groups", "admin.transactions", "admin.cluster", "admin.users",
                "sasl", "admin.acl"]


def _new_classes() -> dict[tuple[int, str], Any]:
    found: dict[tuple[int, str], Any] = {}
    base = kafka_protocol.ApiMessage
    for name in _NEW_MODULES:
        module = importlib.import_module("kafka.protocol." + name)
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, base) and value is not base \
                    and value._class_version is None:
                found[(value.API_KEY, value.type)] = value
    return found


def _old_classes() -> dict[tuple[int, str, int], Any]:
    from kafka.protocol import old
    from kafka.protocol.old.api import Request, Response

    found: dict[tuple[int, str, int], Any] = {}
    for info in pkgutil.iter_modules(old.__path__):
        module = importlib.import_module("kafka.protocol.old." + info.name)
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, (Request, Response)) \
                    and isinstance(getattr(value, "API_KEY", None), int) \
                    and isinstance(getattr(value, "API_VERSION", None), int):
                kind = "request" if issubclass(value, Request) else "response"
                found[(value.API_KEY, kind, value.API_VERSION)] = value
    return found


NEW = _new_classes()
OLD = _old_classes()
PAIRS = all_pairs()
SHAPES = {"rich": lambda spec, v: rich_body(spec.fields, v), "sparse": lambda spec, v: sparse_body(spec.fields, v)}


def _body_bytes(kind: str, key: int, version: int, body: dict[str, Any]) -> bytes:
    plan = request_plan(key, version) if kind == "request" else response_plan(key, version)
    writer = Writer()
    plan.encode(writer, body)
    return bytes(writer.buf)


def _plain(value: Any) -> Any:
    """Plain Python (bytes for buffers, lists for arrays) without ``*authorized_operations`` fields,
    which kafka-python renames and turns into sets of ACL operations (bytes are still compared)."""
    value = normalise(value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items() if not key.endswith("authorized_operations")}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _body(spec: MessageSpec, key: ApiKey, kind: str, version: int, shape: str) -> dict[str, Any]:
    body = SHAPES[shape](spec, version)
    if key == ApiKey.API_VERSIONS and kind == "response":
        # Kafka clients read any ApiVersions response with an error in the v0 layout (the broker's
        # fallback answer), so a non-zero error only ever travels in v0.
        body["error_code"] = 0
    return body


NEW_CASES = [(kind, key, version, spec, shape) for kind, key, version, spec in PAIRS
             if (int(key), kind) in NEW for shape in SHAPES]


def test_every_message_we_encode_has_a_json_driven_class() -> None:
    """Guards the discovery above: a message kafka-python's classes do not cover must fail here,
    not silently drop out of NEW_CASES."""
    assert not sorted({(int(key), kind) for kind, key, _, _ in PAIRS} - set(NEW))


@pytest.mark.parametrize("kind,key,version,spec,shape", NEW_CASES,
                         ids=[f"{c[3].name}-v{c[2]}-{c[4]}" for c in NEW_CASES])
def test_json_driven_kafka_python_reads_and_writes_our_bytes(kind: str, key: ApiKey, version: int,
                                                             spec: MessageSpec, shape: str) -> None:
    body = _body(spec, key, kind, version, shape)
    ours = _body_bytes(kind, key, version, body)
    theirs_cls = NEW[(int(key), kind)]
    decoded = theirs_cls.decode(ours, version=version)
    decoded._header = None  # some of their encode() overrides look at it
    assert _plain(decoded.to_dict(json=False)) == _plain(body)
    assert bytes(decoded.encode()) == ours


@pytest.mark.parametrize("kind,key,version,spec,shape", NEW_CASES,
                         ids=[f"{c[3].name}-v{c[2]}-{c[4]}" for c in NEW_CASES])
def test_headers_and_framing_match_kafka_python(kind: str, key: ApiKey, version: int, spec: MessageSpec,
                                                shape: str) -> None:
    body = _body(spec, key, kind, version, shape)
    theirs_cls = NEW[(int(key), kind)]
    if kind == "request":
        ours = encode_request(key, version, 4242, "flowbus-test", body)
        message = theirs_cls.decode(ours, version=version, header=True, framed=True)
        assert message.header.correlation_id == 4242
        assert message.header.client_id == "flowbus-test"
        assert bytes(message.encode(header=True, framed=True)) == ours
        assert normalise(decode_request(ours[4:]).body) == normalise(body)
    else:
        ours = encode_response(RequestHeader(key, version, 4242, "x"), body)
        message = theirs_cls.decode(ours, version=version, header=True, framed=True)
        assert message.header.correlation_id == 4242
        message.with_header(correlation_id=4242)
        theirs = bytes(message.encode(header=True, framed=True))
        assert theirs == ours
        assert decode_response(key, version, theirs[4:]) == (4242, decode_response(key, version, ours[4:])[1])


# Old hand-written schemas: layouts only (their names differ). Legacy message-set fields parse the
# records payload, so they only accept real message sets; those versions are exercised above.
_OLD_SKIP = {(0, "request", v) for v in range(3)} | {(1, "response", v) for v in range(4)}
# kafka-python's hand-written DescribeLogDirsRequest_v0 declares `partitions` as one int32; the spec
# (and its JSON-driven class, checked above) says an array of int32.
_OLD_SKIP |= {(35, "request", 0)}
# kafka-python's hand-written DescribeAcls v2 classes are not flexible; the spec makes v2 flexible
# (its JSON-driven classes, checked above, agree with us).
_OLD_SKIP |= {(29, "request", 2), (29, "response", 2)}
OLD_CASES = [(kind, key, version, spec, shape) for kind, key, version, spec in PAIRS
             if (int(key), kind, version) in OLD and (int(key), kind, version) not in _OLD_SKIP for shape in SHAPES]


@pytest.mark.parametrize("kind,key,version,spec,shape", OLD_CASES,
                         ids=[f"{c[3].name}-v{c[2]}-{c[4]}" for c in OLD_CASES])
def test_hand_written_kafka_python_schema_has_our_layout(kind: str, key: ApiKey, version: int, spec: MessageSpec,
                                                         shape: str) -> None:
    body = _body(spec, key, kind, version, shape)
    ours = _body_bytes(kind, key, version, body)
    stream = io.BytesIO(ours)
    decoded = OLD[(int(key), kind, version)].decode(stream)
    assert stream.tell() == len(ours), "kafka-python's schema is shorter than ours"
    assert bytes(decoded.encode()) == ours


# kafka-python patches ListOffsets' ReplicaId default to -1; the spec gives no default (so 0).
DEFAULT_CASES = [(kind, key, version, spec) for kind, key, version, spec in PAIRS
                 if (int(key), kind) in NEW and (int(key), kind) != (2, "request")]


@pytest.mark.parametrize("kind,key,version,spec", DEFAULT_CASES,
                         ids=[f"{c[3].name}-v{c[2]}" for c in DEFAULT_CASES])
def test_defaults_match_kafka_python(kind: str, key: ApiKey, version: int, spec: MessageSpec) -> None:
    """An empty body encodes every field at its spec default, exactly as kafka-python's would."""
    theirs = NEW[(int(key), kind)](version=version)
    theirs._header = None
    assert _body_bytes(kind, key, version, {}) == bytes(theirs.encode())
