"""Every API version the broker advertises is answered (issue 12, item 4).

A client picks the highest version both sides support, or, when it is old, the only one it speaks:
segmentio/kafka-go 0.2 and sarama's default configuration send Produce and Fetch v0-v2. A version
advertised but not implemented makes such a client fail on its first real request instead of
failing to negotiate (or picking another version) at connection time.

The test asks a real ``flowbus broker`` for its ApiVersions, then sends one request at every
advertised version of every API, over a fresh connection per API, and checks that the answer
decodes at that version, carries no UNSUPPORTED_VERSION (35) anywhere in it, and leaves the
connection usable. Produce, Fetch, ListOffsets, Metadata and the offset APIs carry a real partition,
so a version refused per partition is caught too.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flowbus.protocol.api import ApiKey
from flowbus.protocol.codec import decode_response, encode_request
from flowbus.protocol.error_codes import ErrorCode
from flowbus.protocol.messages import REQUESTS
from flowbus.records.builder import BatchBuilder
from tests.protocol.bodies import sparse_body
from tests.support.broker_process import BrokerProcess

TOPIC = "advertised-versions"
GROUP = "advertised-versions-group"
SOCKET_TIMEOUT_S = 20.0


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("closed by the broker")
        chunks += chunk
    return bytes(chunks)


def round_trip(sock: socket.socket, api_key: int, version: int, correlation_id: int,
               body: dict[str, Any]) -> dict[str, Any]:
    sock.sendall(encode_request(api_key, version, correlation_id, "versions", body))
    (size,) = struct.unpack(">i", recv_exactly(sock, 4))
    got, response = decode_response(api_key, version, recv_exactly(sock, size))
    assert got == correlation_id
    return response


def advertised(sock: socket.socket) -> dict[int, tuple[int, int]]:
    response = round_trip(sock, int(ApiKey.API_VERSIONS), 3, 1,
                          {"client_software_name": "versions", "client_software_version": "1"})
    assert response["error_code"] == 0
    return {a["api_key"]: (a["min_version"], a["max_version"]) for a in response["api_keys"]}


def record_batch() -> bytes:
    builder = BatchBuilder()
    builder.append(key=b"k", value=b"v", timestamp_ms=int(time.time() * 1000))
    return builder.build()


def request_body(api_key: int, version: int) -> dict[str, Any]:
    """The sparse body (nulls, empty arrays, zeros) with a real partition where the API takes one."""
    body = sparse_body(REQUESTS[ApiKey(api_key)].fields, version)
    key = ApiKey(api_key)
    if key is ApiKey.PRODUCE:
        body.update(acks=-1, timeout_ms=5_000, transactional_id=None, topic_data=[
            {"name": TOPIC, "partition_data": [{"index": 0, "records": record_batch()}]}])
    elif key is ApiKey.FETCH:
        body.update(max_wait_ms=0, min_bytes=0, max_bytes=1 << 20, topics=[
            {"topic": TOPIC, "partitions": [
                {"partition": 0, "fetch_offset": 0, "partition_max_bytes": 1 << 20}]}])
    elif key is ApiKey.LIST_OFFSETS:
        body.update(replica_id=-1, topics=[
            {"name": TOPIC, "partitions": [{"partition_index": 0, "timestamp": -1}]}])
    elif key is ApiKey.METADATA:
        body.update(topics=[{"name": TOPIC}])
    elif key in (ApiKey.OFFSET_COMMIT, ApiKey.OFFSET_FETCH):
        body["group_id"] = GROUP
        body["generation_id_or_member_epoch"] = -1
        partition = {"partition_index": 0}
        if key is ApiKey.OFFSET_COMMIT:
            partition.update(committed_offset=0, committed_metadata="")
        else:
            partition = 0  # type: ignore[assignment]
        name = "partitions" if key is ApiKey.OFFSET_COMMIT else "partition_indexes"
        body["topics"] = [{"name": TOPIC, name: [partition]}]
    elif key is ApiKey.FIND_COORDINATOR:
        body.update(key=GROUP)
    elif key is ApiKey.SASL_HANDSHAKE:
        body.update(mechanism="PLAIN")
    return body


def error_codes(value: Any) -> Iterator[int]:
    """Every ``error_code`` anywhere in a decoded response."""
    if isinstance(value, dict):
        for name, item in value.items():
            if name == "error_code" and isinstance(item, int):
                yield item
            else:
                yield from error_codes(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from error_codes(item)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    data_dir: Path = tmp_path_factory.mktemp("versions") / "data"
    with BrokerProcess(data_dir) as process:
        with socket.create_connection((process.host, process.port), timeout=SOCKET_TIMEOUT_S) as sock:
            response = round_trip(sock, int(ApiKey.CREATE_TOPICS), 0, 1, {
                "topics": [{"name": TOPIC, "num_partitions": 1, "replication_factor": 1,
                            "assignments": [], "configs": []}], "timeout_ms": 10_000})
            assert response["topics"][0]["error_code"] == 0
        yield process


def advertised_pairs() -> list[tuple[int, int]]:
    """(api key, version) for every version of every API this codec knows; the test skips those
    the live broker does not advertise."""
    from flowbus.protocol.api import SUPPORTED_VERSIONS

    return [(int(k), v) for k, (low, high) in sorted(SUPPORTED_VERSIONS.items()) for v in range(low, high + 1)]


# SaslAuthenticate without a handshake is a protocol violation: Kafka answers and then closes.
CLOSES_AFTER_ANSWER = {int(ApiKey.SASL_AUTHENTICATE)}


@pytest.mark.timeout(120)
def test_every_advertised_version_of_every_api_is_answered(broker: BrokerProcess) -> None:
    with socket.create_connection((broker.host, broker.port), timeout=SOCKET_TIMEOUT_S) as sock:
        ranges = advertised(sock)
    missing = [k for k in ranges if k not in {int(k) for k in REQUESTS}]
    assert not missing, f"advertised without a request definition: {missing}"
    refused: list[str] = []
    checked = 0
    for api_key, (low, high) in sorted(ranges.items()):
        with socket.create_connection((broker.host, broker.port), timeout=SOCKET_TIMEOUT_S) as sock:
            for correlation_id, version in enumerate(range(low, high + 1), start=10):
                name = f"{ApiKey(api_key).name} v{version}"
                response = round_trip(sock, api_key, version, correlation_id, request_body(api_key, version))
                checked += 1
                if ErrorCode.UNSUPPORTED_VERSION in set(error_codes(response)):
                    refused.append(f"{name}: {response}")
                if api_key in CLOSES_AFTER_ANSWER:
                    break
            if api_key not in CLOSES_AFTER_ANSWER:
                assert advertised(sock) == ranges  # still usable after every version
    assert not refused, "advertised but answered UNSUPPORTED_VERSION:\n" + "\n".join(refused)
    assert checked >= sum(high - low + 1 for k, (low, high) in ranges.items() if k not in CLOSES_AFTER_ANSWER)


def test_a_version_below_the_advertised_minimum_closes_that_connection_only(broker: BrokerProcess) -> None:
    """Produce v2 / Fetch v3 (below the range): as Kafka does, the broker closes that connection
    (a client that did not negotiate has nothing to decode an answer with) and logs one line;
    other connections are untouched."""
    with socket.create_connection((broker.host, broker.port), timeout=SOCKET_TIMEOUT_S) as other:
        ranges = advertised(other)
        for api_key in (int(ApiKey.PRODUCE), int(ApiKey.FETCH)):
            low = ranges[api_key][0]
            assert low > 0
            with socket.create_connection((broker.host, broker.port), timeout=SOCKET_TIMEOUT_S) as sock:
                # Encoded at the minimum, then relabelled one version lower (bytes 6-7: the
                # header's api_version after the size and api_key): our encoder speaks only
                # supported versions, and these layouts match.
                frame = bytearray(encode_request(api_key, low, 7, "old-client", request_body(api_key, low)))
                frame[6:8] = struct.pack(">h", low - 1)
                sock.sendall(bytes(frame))
                with pytest.raises(ConnectionError):
                    recv_exactly(sock, 4)
            assert advertised(other) == ranges
