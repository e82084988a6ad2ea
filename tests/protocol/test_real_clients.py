"""Real clients talk to a tiny test-only server built on the codec: librdkafka (confluent-kafka and
kcat), kafka-python and aiokafka negotiate ApiVersions and read Metadata through our encoding.

The server is not the broker: it answers ApiVersions, Metadata and FindCoordinator from fixed data,
so these tests isolate the codec (headers, flexible encoding, the ApiVersions rules) from broker
logic. It runs in a thread on a free 127.0.0.1 port; each client connects, negotiates and lists the
topics.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from flowbus.protocol import ApiKey
from flowbus.protocol.codec import (
    RequestHeader,
    api_versions_body,
    api_versions_fallback_response,
    decode_request,
    encode_response,
)
from flowbus.protocol.errors import RemoteProtocolError, UnsupportedVersionError
from flowbus.protocol.framing import FrameDecoder

TOPIC = "codec-check"
PARTITIONS = 3
RECV_BYTES = 65536


class FixedMetadataServer:
    """Answers ApiVersions / Metadata / FindCoordinator; records (api_key, api_version) it saw."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.seen: list[tuple[int, int]] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(timeout=5)

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        decoder = FrameDecoder(max_frame_bytes=1 << 20)
        conn.settimeout(0.2)
        with conn:
            while not self._stop.is_set():
                try:
                    data = conn.recv(RECV_BYTES)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                try:
                    for frame in decoder.feed(data):
                        conn.sendall(self._answer(frame))
                except RemoteProtocolError as exc:  # pragma: no cover - a codec bug
                    self.errors.append(exc)
                    return

    def _answer(self, frame: bytes) -> bytes:
        try:
            request = decode_request(frame)
        except UnsupportedVersionError as exc:
            self.seen.append((exc.api_key, exc.api_version))
            assert exc.api_key == ApiKey.API_VERSIONS, exc
            return api_versions_fallback_response(exc.header)  # type: ignore[arg-type]
        header = request.header
        self.seen.append((header.api_key, header.api_version))
        return encode_response(header, self._body(header, request.body))

    def _body(self, header: RequestHeader, body: dict[str, Any]) -> dict[str, Any]:
        if header.api_key == ApiKey.API_VERSIONS:
            return api_versions_body()
        broker = {"node_id": 1, "host": "127.0.0.1", "port": self.port, "rack": None}
        if header.api_key == ApiKey.METADATA:
            partitions = [{"partition_index": p, "leader_id": 1, "leader_epoch": 0, "replica_nodes": [1],
                           "isr_nodes": [1]} for p in range(PARTITIONS)]
            return {"brokers": [broker], "cluster_id": "flowbus-codec-test", "controller_id": 1,
                    "topics": [{"name": TOPIC, "topic_id": uuid.UUID(int=1), "partitions": partitions}]}
        if header.api_key == ApiKey.FIND_COORDINATOR:
            return {"node_id": 1, "host": "127.0.0.1", "port": self.port}
        raise AssertionError(f"unexpected request {header}")


@pytest.fixture
def server() -> Iterator[FixedMetadataServer]:
    srv = FixedMetadataServer()
    yield srv
    srv.close()
    assert not srv.errors


def test_confluent_kafka_lists_topics(server: FixedMetadataServer) -> None:
    confluent_kafka = pytest.importorskip("confluent_kafka.admin")
    admin = confluent_kafka.AdminClient({"bootstrap.servers": f"127.0.0.1:{server.port}",
                                         "socket.timeout.ms": 5000})
    metadata = admin.list_topics(timeout=10)
    assert metadata.cluster_id == "flowbus-codec-test"
    assert sorted(metadata.topics[TOPIC].partitions) == list(range(PARTITIONS))
    assert (int(ApiKey.API_VERSIONS), 3) in server.seen  # librdkafka opens with ApiVersions v3
    assert any(key == ApiKey.METADATA and version >= 9 for key, version in server.seen)


@pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat not installed")
def test_kcat_lists_topics(server: FixedMetadataServer) -> None:
    out = subprocess.run(["kcat", "-b", f"127.0.0.1:{server.port}", "-L", "-m", "10"], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    assert f'topic "{TOPIC}" with {PARTITIONS} partitions' in out


def test_kafka_python_lists_topics(server: FixedMetadataServer) -> None:
    kafka = pytest.importorskip("kafka")
    consumer = kafka.KafkaConsumer(bootstrap_servers=f"127.0.0.1:{server.port}", request_timeout_ms=10_000)
    try:
        assert TOPIC in consumer.topics()
        assert consumer.partitions_for_topic(TOPIC) == set(range(PARTITIONS))
    finally:
        consumer.close()
    assert any(key == ApiKey.API_VERSIONS for key, _ in server.seen)


def test_aiokafka_lists_topics(server: FixedMetadataServer) -> None:
    aiokafka = pytest.importorskip("aiokafka")
    import asyncio

    async def run() -> set[str]:
        consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers=f"127.0.0.1:{server.port}", request_timeout_ms=10_000)
        await consumer.start()
        try:
            return set(await consumer.topics())
        finally:
            await consumer.stop()

    assert TOPIC in asyncio.run(run())


def test_future_api_versions_gets_the_fallback(server: FixedMetadataServer) -> None:
    """A client sending ApiVersions v9 gets error 35 with ApiVersions' range, then retries lower."""
    import struct

    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as conn:
        payload = struct.pack(">hhi", 18, 9, 77) + b"\x00\x01x" + b"\x00\x00\x00"
        conn.sendall(struct.pack(">i", len(payload)) + payload)
        decoder = FrameDecoder()
        frames: list[bytes] = []
        while not frames:
            frames = decoder.feed(conn.recv(RECV_BYTES))
    correlation_id, error_code, count, api_key, low, high = struct.unpack(">ihihhh", frames[0])
    assert (correlation_id, error_code, count, api_key, low, high) == (77, 35, 1, 18, 0, 4)
