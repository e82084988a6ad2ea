"""Requests and responses as bytes: headers plus bodies, for the broker (decode request, encode
response) and for clients and tests (encode request, decode response).

Headers (Kafka protocol guide, "Headers"; KIP-482):

* request header v1: api_key int16, api_version int16, correlation_id int32, client_id nullable
  string (int16 length). v2 (flexible API versions) appends a tagged-field section; client_id keeps
  its int16 length so that any broker can read the header of any ApiVersions request.
* response header v0: correlation_id int32. v1 (flexible versions) appends tagged fields --
  except ApiVersions, whose response always uses header v0 so that a client that sent a version the
  broker does not know can still read the error.

No I/O: :class:`~flowbus.protocol.framing.FrameDecoder` yields frames, this module turns them into
:class:`Request` objects and response dicts into framed bytes.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from flowbus.protocol.api import SUPPORTED_VERSIONS, ApiKey
from flowbus.protocol.error_codes import ErrorCode
from flowbus.protocol.errors import (
    LocalProtocolError,
    MalformedMessageError,
    RemoteProtocolError,
    RequestTooComplexError,
    TruncatedMessageError,
    UnsupportedVersionError,
)
from flowbus.protocol.messages import (
    CONSUMER_PROTOCOL_ASSIGNMENT,
    CONSUMER_PROTOCOL_SUBSCRIPTION,
    REQUESTS,
    RESPONSES,
)
from flowbus.protocol.primitives import BytesLike, Reader, Writer
from flowbus.protocol.schema import Body, MessageSpec, Plan, cached_plan


class RequestHeader(NamedTuple):
    """The fields every request starts with; the broker echoes ``correlation_id`` in the response."""

    api_key: int
    api_version: int
    correlation_id: int
    client_id: str | None


class Request(NamedTuple):
    """A decoded request: its header and its body dict (spec field names in snake_case)."""

    header: RequestHeader
    body: Body


#: (api key, version) -> compiled plan, filled on first use; plain int keys keep the lookup cheap.
_REQUEST_PLANS: dict[tuple[int, int], Plan] = {}
_RESPONSE_PLANS: dict[tuple[int, int], Plan] = {}


def _plan(plans: dict[tuple[int, int], Plan], specs: dict[ApiKey, MessageSpec], api_key: int,
          api_version: int) -> Plan:
    plan = plans.get((api_key, api_version))
    if plan is None:
        try:
            plan = plans[(int(api_key), api_version)] = cached_plan(specs[ApiKey(api_key)], api_version)
        except (KeyError, ValueError):
            raise LocalProtocolError(f"api_key={api_key} api_version={api_version} is not supported") from None
    return plan


def request_plan(api_key: int, api_version: int) -> Plan:
    """The compiled request plan.

    Raises:
        LocalProtocolError: the codec does not support that API version (a caller bug: requests
            from peers are checked by :func:`decode_request`, which raises UnsupportedVersionError).
    """
    return _plan(_REQUEST_PLANS, REQUESTS, api_key, api_version)


def response_plan(api_key: int, api_version: int) -> Plan:
    """The compiled response plan; raises :class:`LocalProtocolError` for an unsupported version."""
    return _plan(_RESPONSE_PLANS, RESPONSES, api_key, api_version)


_API_VERSIONS_KEY = int(ApiKey.API_VERSIONS)


def _response_header_is_flexible(api_key: int, plan: Plan) -> bool:
    """Response header v1 for flexible versions, but ApiVersions always uses v0 (KIP-511)."""
    return plan.flexible and api_key != _API_VERSIONS_KEY


# -------------------------------------------------------------------------------------------------
# Broker side
# -------------------------------------------------------------------------------------------------

_HEADER_FIXED = struct.Struct(">hhi")

#: Supported (api key, version) pairs as plain ints, for a cheap check on every request.
_SUPPORTED_PAIRS: frozenset[tuple[int, int]] = frozenset(
    (int(key), version) for key, (low, high) in SUPPORTED_VERSIONS.items() for version in range(low, high + 1))


def decode_request_header(reader: Reader) -> RequestHeader:
    """Read the v1 part of a request header (the part shared by v1 and v2)."""
    start = reader.pos
    if start + _HEADER_FIXED.size > reader.end:
        raise TruncatedMessageError(f"request header needs {_HEADER_FIXED.size} bytes, {reader.remaining} left")
    api_key, api_version, correlation_id = _HEADER_FIXED.unpack_from(reader.buf, start)
    reader.pos = start + _HEADER_FIXED.size
    return RequestHeader(api_key, api_version, correlation_id, reader.nullable_string())


#: Default element budget of one request: array elements plus tagged fields over every nesting
#: level (strings and bytes cost nothing extra: they are copied in C). A frame over budget is
#: rejected when the count that crosses it is read, before any loop over it. An admitted request
#: costs about 0.4-1 us per element to decode and as much to encode its response, so decoding
#: and encoding each stay within a few ms of the event loop; the broker's handlers work through
#: requests of many partitions in slices (``broker.core.PARTITIONS_PER_SLICE``), because their
#: own cost per partition (5-30 us, Produce the most) would hold the loop for up to ~250 ms. A
#: Fetch, ListOffsets, OffsetCommit or Produce of 10,000 partitions is still allowed.
DEFAULT_MAX_REQUEST_ELEMENTS = 10_000

#: Tighter budgets for requests whose handler does real work per element.
MAX_REQUEST_ELEMENTS: dict[int, int] = {
    # One lookup (or one auto-creation) per named topic, and a response entry for each: ~5 us
    # per topic at v12, so 2,000 topics is ~10 ms. "All topics" (null) is not counted.
    int(ApiKey.METADATA): 2_000,
    # Topics, explicit assignments and configs together; each topic creates files.
    int(ApiKey.CREATE_TOPICS): 1_000,
    int(ApiKey.DELETE_TOPICS): 1_000,
    # The request header and body of ApiVersions carry nothing but a few strings and tags.
    int(ApiKey.API_VERSIONS): 100,
}

#: Element budget of the consumer protocol's embedded subscription and assignment bytes.
MAX_CONSUMER_PROTOCOL_ELEMENTS = 100_000


def max_request_elements(api_key: int) -> int:
    """The element budget of one request of ``api_key`` (see :data:`MAX_REQUEST_ELEMENTS`)."""
    return MAX_REQUEST_ELEMENTS.get(api_key, DEFAULT_MAX_REQUEST_ELEMENTS)


def decode_request(frame: BytesLike) -> Request:
    """Decode one request frame (without its size prefix).

    ``records`` fields in the body are zero-copy ``memoryview`` slices of ``frame``; keep ``frame``
    alive (it is, as long as the views are) and do not mutate it. Bytes after the body are ignored
    (lenient on purpose, so a client appending data we do not know is not disconnected).

    Every count (array length, tagged-field count) is checked against the bytes left and charged
    against the API's element budget (:func:`max_request_elements`) before any loop over it runs.

    Raises:
        UnsupportedVersionError: unknown API key, or a version outside ``SUPPORTED_VERSIONS``. Raised
            after the header is parsed; ``exc.header`` lets the broker answer.
        RemoteProtocolError: the bytes are malformed (a subclass: truncated, bad lengths, ...);
            :class:`~flowbus.protocol.errors.RequestTooComplexError` when over the element budget.
    """
    reader = Reader(frame)
    try:
        header = decode_request_header(reader)
        if (header.api_key, header.api_version) not in _SUPPORTED_PAIRS:
            raise UnsupportedVersionError(header.api_key, header.api_version, header.correlation_id, header)
        reader.elements_left = max_request_elements(header.api_key)
        plan = request_plan(header.api_key, header.api_version)
        if plan.flexible:
            reader.skip_tagged_fields()
        body = plan.decode(reader)
    except RequestTooComplexError as exc:
        # Name the request: the broker's log line should say which API a client overfilled.
        raise RequestTooComplexError(
            f"{ApiKey(header.api_key).name} v{header.api_version} request: {exc}") from None
    except (RemoteProtocolError, UnsupportedVersionError):
        raise
    except (IndexError, struct.error, UnicodeDecodeError, ValueError, OverflowError) as exc:
        # Defence in depth: the Reader should have caught this. The chained cause lets tests spot it.
        raise MalformedMessageError(f"malformed request: {exc!r}") from exc
    return Request(header, body)


def encode_response(header: RequestHeader, body: Body) -> bytes:
    """Encode a response to ``header``'s request, with the 4-byte size prefix.

    Raises:
        LocalProtocolError: ``body`` holds a value the version cannot carry, or ``header`` names an
            unsupported API version (answer those with :func:`api_versions_fallback_response` or an
            error response at a supported version).
    """
    plan = response_plan(header.api_key, header.api_version)
    writer = Writer()
    size_pos = writer.reserve_int32()
    writer.int32(header.correlation_id)
    if _response_header_is_flexible(header.api_key, plan):
        writer.empty_tagged_fields()
    plan.encode(writer, body)
    writer.patch_int32(size_pos, len(writer) - 4)
    return writer.getvalue()


def api_versions_fallback_response(header: RequestHeader) -> bytes:
    """The ApiVersions answer for a version the broker does not know.

    Error 35 (UNSUPPORTED_VERSION) in the v0 body layout with header v0, listing ApiVersions' own
    range: Kafka does exactly this (KIP-511) and librdkafka / kafka-python then retry with the
    highest version both sides know. Never disconnect instead.
    """
    low, high = SUPPORTED_VERSIONS[ApiKey.API_VERSIONS]
    body = {"error_code": int(ErrorCode.UNSUPPORTED_VERSION),
            "api_keys": [{"api_key": int(ApiKey.API_VERSIONS), "min_version": low, "max_version": high}]}
    fallback = RequestHeader(int(ApiKey.API_VERSIONS), 0, header.correlation_id, header.client_id)
    return encode_response(fallback, body)


def api_versions_body(throttle_time_ms: int = 0) -> Body:
    """The ApiVersions response body advertising exactly ``SUPPORTED_VERSIONS``."""
    return {
        "error_code": 0,
        "api_keys": [{"api_key": int(key), "min_version": low, "max_version": high}
                     for key, (low, high) in sorted(SUPPORTED_VERSIONS.items())],
        "throttle_time_ms": throttle_time_ms,
    }


# -------------------------------------------------------------------------------------------------
# Client side (also used by tests and tools)
# -------------------------------------------------------------------------------------------------

def encode_request(api_key: int, api_version: int, correlation_id: int, client_id: str | None, body: Body) -> bytes:
    """Encode a request with header v1 (or v2 for flexible versions) and the 4-byte size prefix."""
    plan = request_plan(api_key, api_version)
    writer = Writer()
    size_pos = writer.reserve_int32()
    writer.int16(api_key)
    writer.int16(api_version)
    writer.int32(correlation_id)
    writer.nullable_string(client_id)
    if plan.flexible:
        writer.empty_tagged_fields()
    plan.encode(writer, body)
    writer.patch_int32(size_pos, len(writer) - 4)
    return writer.getvalue()


def decode_response(api_key: int, api_version: int, frame: BytesLike) -> tuple[int, Body]:
    """Decode a response frame (without size prefix) to ``(correlation_id, body)``.

    Raises:
        RemoteProtocolError: the bytes are malformed.
    """
    plan = response_plan(api_key, api_version)
    reader = Reader(frame)
    try:
        correlation_id = reader.int32()
        if _response_header_is_flexible(api_key, plan):
            reader.skip_tagged_fields()
        body = plan.decode(reader)
    except RemoteProtocolError:
        raise
    except (IndexError, struct.error, UnicodeDecodeError, ValueError, OverflowError) as exc:
        raise MalformedMessageError(f"malformed response: {exc!r}") from exc
    return correlation_id, body


# -------------------------------------------------------------------------------------------------
# Embedded schemas with their own int16 version prefix (consumer group member metadata)
# -------------------------------------------------------------------------------------------------

def _decode_versioned(spec_name: str, data: BytesLike) -> tuple[int, Body]:
    spec = CONSUMER_PROTOCOL_SUBSCRIPTION if spec_name == "subscription" else CONSUMER_PROTOCOL_ASSIGNMENT
    reader = Reader(data, max_elements=MAX_CONSUMER_PROTOCOL_ELEMENTS)
    try:
        version = reader.int16()
        if version < 0:
            raise MalformedMessageError(f"negative consumer protocol version {version}")
        # A newer client's metadata starts with everything our highest version knows; read that
        # much and ignore the rest, as Kafka's ConsumerProtocol does.
        body = cached_plan(spec, min(version, spec.valid.high)).decode(reader)
    except RemoteProtocolError:
        raise
    except (IndexError, struct.error, UnicodeDecodeError, ValueError, OverflowError) as exc:
        raise MalformedMessageError(f"malformed consumer protocol {spec_name}: {exc!r}") from exc
    return version, body


def _encode_versioned(spec_name: str, version: int, body: Body) -> bytes:
    spec = CONSUMER_PROTOCOL_SUBSCRIPTION if spec_name == "subscription" else CONSUMER_PROTOCOL_ASSIGNMENT
    plan = cached_plan(spec, version)
    writer = Writer()
    writer.int16(version)
    plan.encode(writer, body)
    return writer.getvalue()


def decode_consumer_subscription(data: BytesLike) -> tuple[int, Body]:
    """JoinGroup member metadata of the ``consumer`` protocol -> ``(version, body)``.

    Body keys: ``topics``, ``user_data``, ``owned_partitions`` (v1+), ``generation_id`` (v2+),
    ``rack_id`` (v3+). Versions above 3 are read as v3.
    """
    return _decode_versioned("subscription", data)


def encode_consumer_subscription(version: int, body: Body) -> bytes:
    """Encode consumer subscription metadata at ``version`` (0-3), with its int16 version prefix."""
    return _encode_versioned("subscription", version, body)


def decode_consumer_assignment(data: BytesLike) -> tuple[int, Body]:
    """SyncGroup member assignment of the ``consumer`` protocol -> ``(version, body)``.

    Body keys: ``assigned_partitions`` (list of ``{"topic", "partitions"}``), ``user_data``. An empty
    ``data`` (a member with no assignment, as Kafka sends) decodes to version 0 with no partitions.
    """
    if len(data) == 0:
        return 0, {"assigned_partitions": [], "user_data": None}
    return _decode_versioned("assignment", data)


def encode_consumer_assignment(version: int, body: Body) -> bytes:
    """Encode a consumer assignment at ``version`` (0-3), with its int16 version prefix."""
    return _encode_versioned("assignment", version, body)


__all__ = [
    "Request", "RequestHeader", "api_versions_body", "api_versions_fallback_response", "decode_consumer_assignment",
    "decode_consumer_subscription", "decode_request", "decode_request_header", "decode_response",
    "encode_consumer_assignment", "encode_consumer_subscription", "encode_request", "encode_response",
    "request_plan", "response_plan",
]
