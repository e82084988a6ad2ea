"""Real clients talk to a tiny test-only server built on the codec: librdkafka (confluent-kafka and
kcat), kafka-python and aiokafka negotiate ApiVersions and read Metadata through our encoding.

The server is not the broker: it answers from fixed data and a list of batches in memory, so these
tests isolate the codec (headers, flexible encoding, the ApiVersions rules, Produce decode and Fetch
encode) from broker logic. It runs in a thread on a free 127.0.0.1 port.
"""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import aiokafka
import confluent_kafka
import confluent_kafka.admin
import kafka
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

pytestmark = pytest.mark.timeout(60)

TOPIC = "codec-check"
PARTITIONS = 3
RECV_BYTES = 65536


class FixedMetadataServer:
    """Answers ApiVersions, Metadata, FindCoordinator, ListOffsets, InitProducerId, and Produce / Fetch
    against an in-memory log; records every (api_key, api_version) it saw."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.seen: list[tuple[int, int]] = []
        self.log: dict[int, list[bytes]] = {}
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
                except (RemoteProtocolError, AssertionError) as exc:  # pragma: no cover - a bug: fail fast
                    self.errors.append(exc)
                    return
                except OSError:  # the client hung up while we answered: its test is over
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
        if header.api_key == ApiKey.INIT_PRODUCER_ID:
            return {"producer_id": 1000, "producer_epoch": 0}
        if header.api_key == ApiKey.PRODUCE:
            return self._produce(body)
        if header.api_key == ApiKey.FETCH:
            return self._fetch(body)
        if header.api_key == ApiKey.LIST_OFFSETS:
            return {"topics": [{"name": t["name"], "partitions": [
                {"partition_index": p["partition_index"], "timestamp": -1,
                 "offset": 0 if p["timestamp"] == -2 else self._end_offset(p["partition_index"])}
                for p in t["partitions"]]} for t in body["topics"]]}
        raise AssertionError(f"unexpected request {header}")

    # A single-partition in-memory log: enough to push Produce and Fetch through real clients.
    def _end_offset(self, partition: int) -> int:
        return sum(_record_count(batch) for batch in self.log.get(partition, []))

    def _produce(self, body: dict[str, Any]) -> dict[str, Any]:
        responses = []
        for topic in body["topic_data"]:
            partitions = []
            for data in topic["partition_data"]:
                base_offset = self._end_offset(data["index"])
                batch = bytearray(data["records"])  # copy: the view belongs to the request frame
                struct.pack_into(">q", batch, 0, base_offset)  # outside the CRC, like a broker does
                self.log.setdefault(data["index"], []).append(bytes(batch))
                partitions.append({"index": data["index"], "base_offset": base_offset})
            responses.append({"name": topic["name"], "partition_responses": partitions})
        return {"responses": responses}

    def _fetch(self, body: dict[str, Any]) -> dict[str, Any]:
        responses = []
        for topic in body["topics"]:
            partitions = []
            for part in topic["partitions"]:
                index, offset = part["partition"], part["fetch_offset"]
                batches, start = [], 0
                for batch in self.log.get(index, []):
                    if start + _record_count(batch) > offset:
                        batches.append(batch)
                    start += _record_count(batch)
                end = self._end_offset(index)
                partitions.append({"partition_index": index, "high_watermark": end, "last_stable_offset": end,
                                   "log_start_offset": 0, "aborted_transactions": None,
                                   "records": b"".join(batches)})
            responses.append({"topic": topic["topic"], "partitions": partitions})
        return {"responses": responses}


def _record_count(batch: bytes) -> int:
    """Records in a RecordBatch v2 (record_count at byte 57)."""
    return struct.unpack_from(">i", batch, 57)[0]


@pytest.fixture
def server() -> Iterator[FixedMetadataServer]:
    srv = FixedMetadataServer()
    yield srv
    srv.close()
    assert not srv.errors


def test_confluent_kafka_lists_topics(server: FixedMetadataServer) -> None:
    admin = confluent_kafka.admin.AdminClient({"bootstrap.servers": f"127.0.0.1:{server.port}",
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
    consumer = kafka.KafkaConsumer(bootstrap_servers=f"127.0.0.1:{server.port}", request_timeout_ms=10_000)
    try:
        assert TOPIC in consumer.topics()
        assert consumer.partitions_for_topic(TOPIC) == set(range(PARTITIONS))
    finally:
        consumer.close()
    assert any(key == ApiKey.API_VERSIONS for key, _ in server.seen)


def test_aiokafka_lists_topics(server: FixedMetadataServer) -> None:
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
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as conn:
        payload = struct.pack(">hhi", 18, 9, 77) + b"\x00\x01x" + b"\x00\x00\x00"
        conn.sendall(struct.pack(">i", len(payload)) + payload)
        decoder = FrameDecoder()
        frames: list[bytes] = []
        while not frames:
            frames = decoder.feed(conn.recv(RECV_BYTES))
    correlation_id, error_code, count, api_key, low, high = struct.unpack(">ihihhh", frames[0])
    assert (correlation_id, error_code, count, api_key, low, high) == (77, 35, 1, 18, 0, 4)


def test_confluent_kafka_produces_and_fetches_through_the_codec(server: FixedMetadataServer) -> None:
    """The hot path with librdkafka: Produce request decode and Fetch response encode."""
    bootstrap = f"127.0.0.1:{server.port}"
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0,
                                         "enable.idempotence": False})
    delivered: list[int] = []
    for n in range(3):
        producer.produce(TOPIC, value=f"value-{n}".encode(), key=b"k", partition=0,
                         on_delivery=lambda err, msg: delivered.append(msg.offset()) if err is None else None)
        producer.flush(10)
    assert delivered == [0, 1, 2]

    consumer = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": "codec-check",
                                         "enable.auto.commit": False, "fetch.wait.max.ms": 50})
    consumer.assign([confluent_kafka.TopicPartition(TOPIC, 0, 0)])
    values: list[bytes] = []
    try:
        for _ in range(100):
            message = consumer.poll(0.2)
            if message is not None and message.error() is None:
                values.append(message.value())
            if len(values) == 3:
                break
    finally:
        consumer.close()
    assert values == [b"value-0", b"value-1", b"value-2"]
    produce_versions = {version for key, version in server.seen if key == ApiKey.PRODUCE}
    fetch_versions = {version for key, version in server.seen if key == ApiKey.FETCH}
    assert produce_versions and fetch_versions


def test_kafka_python_produces_and_fetches_through_the_codec(server: FixedMetadataServer) -> None:
    bootstrap = f"127.0.0.1:{server.port}"
    producer = kafka.KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    try:
        offsets = [producer.send(TOPIC, value=f"kp-{n}".encode(), partition=1).get(timeout=10).offset
                   for n in range(3)]
    finally:
        producer.close()
    assert offsets == [0, 1, 2]
    consumer = kafka.KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=50)
    partition = kafka.TopicPartition(TOPIC, 1)
    consumer.assign([partition])
    consumer.seek(partition, 0)
    values: list[bytes] = []
    try:
        for _ in range(50):
            for records in consumer.poll(timeout_ms=200).values():
                values += [record.value for record in records]
            if len(values) >= 3:
                break
    finally:
        consumer.close()
    assert values == [b"kp-0", b"kp-1", b"kp-2"]


def test_aiokafka_produces_and_fetches_through_the_codec(server: FixedMetadataServer) -> None:
    """aiokafka infers a broker release from our maxima and uses its own (older, classic) versions."""
    import asyncio

    bootstrap = f"127.0.0.1:{server.port}"

    async def run() -> tuple[list[int], list[bytes]]:
        producer = aiokafka.AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            offsets = [(await producer.send_and_wait(TOPIC, f"aio-{n}".encode(), partition=2)).offset
                       for n in range(3)]
        finally:
            await producer.stop()
        consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                             fetch_max_wait_ms=50)
        await consumer.start()
        partition = aiokafka.TopicPartition(TOPIC, 2)
        consumer.assign([partition])
        consumer.seek(partition, 0)
        values: list[bytes] = []
        try:
            while len(values) < 3:
                message = await asyncio.wait_for(consumer.getone(), timeout=10)
                values.append(message.value)
        finally:
            await consumer.stop()
        return offsets, values

    offsets, values = asyncio.run(run())
    assert offsets == [0, 1, 2]
    assert values == [b"aio-0", b"aio-1", b"aio-2"]
