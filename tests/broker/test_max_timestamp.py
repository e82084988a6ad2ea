"""Producers that send a wrong batch max_timestamp (issue 10, item 1), against a real broker process.

Go's sarama up to 1.22 (Debian's golang-github-shopify-sarama-dev) sends max_timestamp -1 in
every batch. A broker that trusts the field deleted the whole topic at the next retention pass
and could not find its records by time; the broker now computes the field from the records.
The sarama test runs the real client (built here with Debian's Go, skipped when it is not
installed); the other tests build such batches with our own builder and send them over a socket.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import struct
import subprocess
import time
from pathlib import Path

import confluent_kafka
import confluent_kafka.admin
import pytest

from flowbus.protocol.api import ApiKey
from flowbus.records import BatchBuilder, Codec
from flowbus.records.header import CRC_POS, MAX_TIMESTAMP_POS, compute_crc
from tests.broker.test_server import Client
from tests.support.broker_process import BrokerProcess

pytestmark = pytest.mark.timeout(120)

SARAMA_SOURCE = Path(__file__).parent / "sarama" / "producer.go"
#: Where Debian installs Go library sources (GOPATH mode).
DEBIAN_GOPATH = Path("/usr/share/gocode")
#: How long the broker gets to (wrongly) apply time retention: ticks are 100 ms and the topics
#: below fsync within 100 ms, so the old broker deleted everything well inside this.
RETENTION_WINDOW_S = 2.0


def create_topic(bootstrap: str, topic: str, configs: dict[str, str]) -> None:
    admin = confluent_kafka.admin.AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([confluent_kafka.admin.NewTopic(topic, 1, 1, config=configs)])
    futures[topic].result(timeout=20)


def low_watermark(bootstrap: str, topic: str) -> int:
    consumer = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": "watermarks"})
    try:
        low, _ = consumer.get_watermark_offsets(confluent_kafka.TopicPartition(topic, 0), timeout=10)
        return int(low)
    finally:
        consumer.close()


def offset_for_time(bootstrap: str, topic: str, timestamp_ms: int) -> int:
    consumer = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": "times"})
    try:
        found = consumer.offsets_for_times([confluent_kafka.TopicPartition(topic, 0, timestamp_ms)], timeout=10)
        return int(found[0].offset)
    finally:
        consumer.close()


def consume_timestamps(bootstrap: str, topic: str, count: int) -> list[tuple[int, int]]:
    """``(offset, timestamp)`` of the first ``count`` records, read by a real client."""
    consumer = confluent_kafka.Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"read-{topic}", "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic])
    got: list[tuple[int, int]] = []
    try:
        for _ in range(100):  # bounded: 100 polls of 0.2 s
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                got.append((msg.offset(), msg.timestamp()[1]))
            if len(got) >= count:
                break
    finally:
        consumer.close()
    return got


def assert_kept_and_findable(bootstrap: str, topic: str, first_ms: int, count: int) -> None:
    """The records stay through RETENTION_WINDOW_S and are found by time."""
    deadline = time.monotonic() + RETENTION_WINDOW_S
    while time.monotonic() < deadline:  # bounded by the window
        assert low_watermark(bootstrap, topic) == 0, "time retention deleted fresh records"
        time.sleep(0.2)
    assert offset_for_time(bootstrap, topic, first_ms) == 0
    assert offset_for_time(bootstrap, topic, first_ms + count // 2) == count // 2
    assert offset_for_time(bootstrap, topic, first_ms + count - 1) == count - 1
    assert offset_for_time(bootstrap, topic, first_ms + count + 60_000) == -1
    assert consume_timestamps(bootstrap, topic, count) == [(i, first_ms + i) for i in range(count)]


@pytest.fixture(scope="module")
def sarama_producer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Go producer, built with Debian's Go and sarama; skips when they are not installed."""
    go = shutil.which("go")
    if go is None or not (DEBIAN_GOPATH / "src" / "github.com" / "Shopify" / "sarama").is_dir():
        pytest.skip("needs Go and sarama: apt-get install golang-go golang-github-shopify-sarama-dev")
    out = tmp_path_factory.mktemp("sarama")
    binary = out / "producer"
    env = dict(os.environ, GOPATH=str(DEBIAN_GOPATH), GO111MODULE="off", GOCACHE=str(out / "cache"), GOFLAGS="")
    build = subprocess.run(
        [go, "build", "-o", str(binary), str(SARAMA_SOURCE)],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    if build.returncode != 0:
        pytest.skip(f"cannot build the sarama producer: {build.stderr[-2000:]}")
    return binary


def test_sarama_batches_are_kept_by_retention_and_found_by_time(tmp_path: Path, sarama_producer: Path) -> None:
    count = 20
    first_ms = int(time.time() * 1000) - 60_000
    with BrokerProcess(tmp_path / "data") as broker:
        create_topic(broker.bootstrap, "sarama", {"flush.ms": "100"})
        run = subprocess.run(
            [str(sarama_producer), "-brokers", broker.bootstrap, "-topic", "sarama", "-count", str(count),
             "-timestamp-ms", str(first_ms)],
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert run.returncode == 0, run.stderr
        assert sorted(int(line.split()[1]) for line in run.stdout.splitlines()) == list(range(count))
        assert_kept_and_findable(broker.bootstrap, "sarama", first_ms, count)


def sarama_like_batch(first_ms: int, count: int, codec: Codec = Codec.NONE) -> bytes:
    """A batch as sarama 1.22 writes it: correct record timestamps, max_timestamp -1."""
    builder = BatchBuilder(codec)
    for i in range(count):
        builder.append(None, f"message-{i}".encode(), timestamp_ms=first_ms + i)
    batch = bytearray(builder.build())
    struct.pack_into(">q", batch, MAX_TIMESTAMP_POS, -1)
    struct.pack_into(">I", batch, CRC_POS, compute_crc(batch, 0, len(batch)))
    return bytes(batch)


async def produce_raw(bootstrap: str, topic: str, batch: bytes) -> int:
    """One Produce v7 request over a plain socket; returns its error code."""
    host, port = bootstrap.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        response = await Client(reader, writer).call(
            ApiKey.PRODUCE,
            7,
            {
                "transactional_id": None,
                "acks": -1,
                "timeout_ms": 5000,
                "topic_data": [{"name": topic, "partition_data": [{"index": 0, "records": batch}]}],
            },
        )
    finally:
        writer.close()
    return int(response["responses"][0]["partition_responses"][0]["error_code"])


@pytest.mark.parametrize("codec", [Codec.NONE, Codec.ZSTD])
def test_batches_with_max_timestamp_minus_one_are_kept_and_found(tmp_path: Path, codec: Codec) -> None:
    count = 20
    first_ms = int(time.time() * 1000) - 60_000
    with BrokerProcess(tmp_path / "data") as broker:
        create_topic(broker.bootstrap, "untrusted", {"flush.ms": "100"})
        assert asyncio.run(produce_raw(broker.bootstrap, "untrusted", sarama_like_batch(first_ms, count, codec))) == 0
        assert_kept_and_findable(broker.bootstrap, "untrusted", first_ms, count)


def test_a_too_small_max_timestamp_is_corrected(tmp_path: Path) -> None:
    """A max_timestamp that is a time, only too early, is rewritten too (not just -1)."""
    count = 10
    first_ms = int(time.time() * 1000) - 60_000
    builder = BatchBuilder()
    for i in range(count):
        builder.append(None, b"v", timestamp_ms=first_ms + 1000 * i)
    batch = bytearray(builder.build())
    struct.pack_into(">q", batch, MAX_TIMESTAMP_POS, first_ms)  # the first record's time
    struct.pack_into(">I", batch, CRC_POS, compute_crc(batch, 0, len(batch)))
    with BrokerProcess(tmp_path / "data") as broker:
        create_topic(broker.bootstrap, "early", {})
        assert asyncio.run(produce_raw(broker.bootstrap, "early", bytes(batch))) == 0
        assert offset_for_time(broker.bootstrap, "early", first_ms + 1000 * (count - 1)) == count - 1
