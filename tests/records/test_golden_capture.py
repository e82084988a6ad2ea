"""Golden test: decode the record batches real clients put on the wire.

A TCP proxy sits between a real client (librdkafka through confluent-kafka, and kafka-python)
and a real ``flowbus broker`` process, and keeps every byte the client sends. The broker
advertises the proxy's address, so the client's Produce requests cross the proxy too. The
captured frames are then split with flowbus's frame decoder, the Produce requests decoded with
flowbus's protocol codec, and their record batches with flowbus's record decoder: every key,
value, header and timestamp the client was given must come back, for every compression codec.

This catches what a round trip through our own encoder cannot: a field we write and read the
same wrong way (an attribute bit, a varint, xerial-framed snappy from kafka-python).
"""

from __future__ import annotations

import socket
import threading
from typing import Iterator

import pytest

from flowbus.protocol import ApiKey
from flowbus.protocol.codec import decode_request
from flowbus.protocol.framing import FrameDecoder
from flowbus.records import Codec, Record, decode_batch, iter_batches
from tests.support.broker_process import BrokerProcess, free_port

#: Bytes a proxy connection keeps of what its client sent: far above what these tests send.
CAPTURE_LIMIT_BYTES = 64 * 1024 * 1024
MESSAGE_COUNT = 50
BASE_TIMESTAMP_MS = 1_700_000_000_000


class CapturingProxy:
    """Forwards 127.0.0.1:port to the broker and records the client-to-broker byte stream."""

    def __init__(self, port: int, upstream_port: int) -> None:
        self.port = port
        self.upstream_port = upstream_port
        self._listener = socket.create_server(("127.0.0.1", port))
        self._lock = threading.Lock()
        self._streams: list[bytearray] = []
        self._sockets: list[socket.socket] = [self._listener]
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            captured = bytearray()
            with self._lock:
                self._streams.append(captured)
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, captured), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, None), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, captured: bytearray | None) -> None:
        try:
            while chunk := source.recv(65536):
                if captured is not None:
                    with self._lock:
                        assert len(captured) + len(chunk) <= CAPTURE_LIMIT_BYTES, "capture limit exceeded"
                        captured += chunk
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def produce_batches(self, topic_name: str) -> list[bytes]:
        """Every record batch for ``topic_name`` inside every Produce request captured so far."""
        with self._lock:
            streams = [bytes(stream) for stream in self._streams]
        batches: list[bytes] = []
        for stream in streams:
            for frame in FrameDecoder(max_frame_bytes=CAPTURE_LIMIT_BYTES).feed(stream):
                request = decode_request(frame)
                if request.header.api_key != ApiKey.PRODUCE:
                    continue
                for topic in request.body["topic_data"]:
                    if topic["name"] != topic_name:
                        continue
                    for partition in topic["partition_data"]:
                        records = partition["records"]
                        if records:
                            batches += [bytes(records[pos : pos + h.size_bytes]) for pos, h in iter_batches(records)]
        return batches

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.close()
                except OSError:
                    pass


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CapturingProxy]:
    """One broker advertising one proxy's address; tests tell their captures apart by topic."""
    proxy_port = free_port()
    base = tmp_path_factory.mktemp("golden")
    extra = ("--group-initial-rebalance-delay-ms", "0", "--advertise", f"127.0.0.1:{proxy_port}")
    with BrokerProcess(base / "data", extra_args=extra) as broker:
        capturing = CapturingProxy(proxy_port, broker.port)
        try:
            yield capturing
        finally:
            capturing.close()


def _expected(i: int) -> tuple[bytes, bytes, list[tuple[str, bytes]], int]:
    key = f"key-{i}".encode()
    value = (f"value-{i}-" + "x" * (i % 17)).encode()
    headers = [("trace", f"t{i}".encode()), ("empty", b"")]
    return key, value, headers, BASE_TIMESTAMP_MS + i


def _decoded_records(batches: list[bytes]) -> list[Record]:
    records: list[Record] = []
    for batch in batches:
        _, batch_records = decode_batch(batch)
        records += batch_records
    return records


def _check(records: list[Record], codec: Codec, batches: list[bytes]) -> None:
    assert len(records) == MESSAGE_COUNT
    by_key = {record.key: record for record in records}
    for i in range(MESSAGE_COUNT):
        key, value, headers, timestamp_ms = _expected(i)
        record = by_key[key]
        assert record.value == value
        assert list(record.headers) == headers
        assert record.timestamp_ms == timestamp_ms
    assert {decode_batch(batch)[0].compression for batch in batches} == {int(codec)}


CONFLUENT_CODECS = {
    Codec.NONE: "none",
    Codec.GZIP: "gzip",
    Codec.SNAPPY: "snappy",
    Codec.LZ4: "lz4",
    Codec.ZSTD: "zstd",
}


@pytest.mark.parametrize("codec", list(CONFLUENT_CODECS), ids=lambda c: c.name.lower())
def test_decodes_what_librdkafka_sends(proxy: CapturingProxy, codec: Codec) -> None:
    import confluent_kafka

    topic = f"golden-librdkafka-{codec.name.lower()}"
    producer = confluent_kafka.Producer(
        {
            "bootstrap.servers": f"127.0.0.1:{proxy.port}",
            "compression.type": CONFLUENT_CODECS[codec],
            "enable.idempotence": True,
            "linger.ms": 20,
        }
    )
    for i in range(MESSAGE_COUNT):
        key, value, headers, timestamp_ms = _expected(i)
        producer.produce(topic, value=value, key=key, headers=headers, timestamp=timestamp_ms, partition=0)
    assert producer.flush(30) == 0
    batches = proxy.produce_batches(topic)
    _check(_decoded_records(batches), codec, batches)
    # librdkafka's idempotent producer stamps a producer id and sequence into every batch.
    headers = [decode_batch(batch)[0] for batch in batches]
    assert all(h.producer_id >= 0 and h.base_sequence >= 0 for h in headers)


KAFKA_PYTHON_CODECS = {
    Codec.NONE: None,
    Codec.GZIP: "gzip",
    Codec.SNAPPY: "snappy",  # kafka-python frames snappy the xerial way, as Java does
    Codec.LZ4: "lz4",
    Codec.ZSTD: "zstd",
}


@pytest.mark.parametrize("codec", list(KAFKA_PYTHON_CODECS), ids=lambda c: c.name.lower())
def test_decodes_what_kafka_python_sends(proxy: CapturingProxy, codec: Codec) -> None:
    import kafka

    topic = f"golden-kafka-python-{codec.name.lower()}"
    producer = kafka.KafkaProducer(
        bootstrap_servers=f"127.0.0.1:{proxy.port}",
        compression_type=KAFKA_PYTHON_CODECS[codec],
        linger_ms=20,
    )
    futures = []
    for i in range(MESSAGE_COUNT):
        key, value, headers, timestamp_ms = _expected(i)
        futures.append(
            producer.send(topic, value=value, key=key, headers=headers, timestamp_ms=timestamp_ms, partition=0)
        )
    for future in futures:
        future.get(timeout=30)
    producer.close(timeout=10)
    batches = proxy.produce_batches(topic)
    _check(_decoded_records(batches), codec, batches)
