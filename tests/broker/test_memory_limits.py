"""Issue 10, item 5: the broker's memory stays bounded under hostile clients, against a real
``flowbus broker`` process on 127.0.0.1: connections holding most of a huge frame, and
connections pipelining large Fetches without reading their responses. Everyone else keeps
being served. Every loop is bounded (a count or a deadline) and every socket has a timeout.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import confluent_kafka
import confluent_kafka.admin
import pytest

from flowbus.protocol.api import ApiKey
from flowbus.protocol.codec import decode_response, encode_request
from tests.support.broker_process import DEFAULT_EXTRA_ARGS, BrokerProcess

pytestmark = pytest.mark.timeout(180)

MIB = 1024 * 1024
BUFFERED_REQUEST_BYTES_MAX = 64 * MIB
PENDING_RESPONSE_BYTES_MAX = 64 * MIB
FRAME_BYTES_MAX = 100 * MIB
SOCKET_TIMEOUT_S = 10.0
ROUND_TRIP_S_MAX = 2.0


@pytest.fixture()
def broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    args = (
        *DEFAULT_EXTRA_ARGS,
        "--max-frame-bytes", str(FRAME_BYTES_MAX),
        "--max-buffered-request-bytes", str(BUFFERED_REQUEST_BYTES_MAX),
        "--max-pending-response-bytes", str(PENDING_RESPONSE_BYTES_MAX),
        "--request-receive-timeout-ms", "120000",
    )
    with BrokerProcess(tmp_path / "data", extra_args=args) as process:
        yield process


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def connect(broker: BrokerProcess) -> socket.socket:
    sock = socket.create_connection((broker.host, broker.port), timeout=SOCKET_TIMEOUT_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:  # bounded: each recv returns data, EOF or times out
        chunk = sock.recv(min(size - len(chunks), MIB))
        if not chunk:
            raise ConnectionError("closed by the broker")
        chunks += chunk
    return bytes(chunks)


def round_trip(sock: socket.socket, api_key: ApiKey, version: int, body: dict, correlation_id: int) -> dict:
    started = time.monotonic()
    sock.sendall(encode_request(int(api_key), version, correlation_id, "probe", body))
    (size,) = struct.unpack(">i", recv_exactly(sock, 4))
    got, response = decode_response(int(api_key), version, recv_exactly(sock, size))
    assert got == correlation_id
    assert time.monotonic() - started < ROUND_TRIP_S_MAX
    return response


def api_versions(sock: socket.socket, correlation_id: int) -> None:
    body = {"client_software_name": "t", "client_software_version": "1"}
    assert round_trip(sock, ApiKey.API_VERSIONS, 3, body, correlation_id)["error_code"] == 0


def fetch_body(topic: str, max_bytes: int) -> dict:
    return {
        "max_wait_ms": 0,
        "min_bytes": 1,
        "max_bytes": max_bytes,
        "isolation_level": 0,
        "session_id": 0,
        "session_epoch": -1,
        "topics": [{"topic": topic, "partitions": [
            {"partition": 0, "fetch_offset": 0, "log_start_offset": -1, "partition_max_bytes": max_bytes}
        ]}],
        "forgotten_topics_data": [],
        "rack_id": "",
    }


def produce_and_flush(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = confluent_kafka.Producer(
        {"bootstrap.servers": bootstrap, "acks": "all", "message.max.bytes": 2 * MIB, "linger.ms": 0}
    )
    errors: list[object] = []
    for value in values:
        producer.produce(topic, value, partition=0, on_delivery=lambda err, msg: errors.append(err))
        producer.poll(0)
    assert producer.flush(60) == 0
    assert errors == [None] * len(values)


def test_unfinished_frames_are_bounded_by_the_buffered_request_budget(broker: BrokerProcess) -> None:
    pid = broker.process.pid
    probe = connect(broker)
    api_versions(probe, 1)
    baseline = rss_bytes(pid)
    chunk = b"\x00" * MIB
    declared = 95 * MIB
    sent = [0] * 8
    with ExitStack() as stack:
        attackers = [stack.enter_context(connect(broker)) for _ in range(8)]
        for sock in attackers:
            sock.settimeout(0.2)
            sock.sendall(struct.pack(">i", declared))
        deadline = time.monotonic() + 20
        blocked = [False] * 8
        # Round-robin up to 90 MiB each; a connection the broker stops reading blocks its sends.
        for _ in range(90):  # bounded: 90 rounds of one MiB per connection
            if all(blocked) or time.monotonic() > deadline:
                break
            for i, sock in enumerate(attackers):
                if blocked[i] or sent[i] >= 90 * MIB:
                    continue
                try:
                    sent[i] += sock.send(chunk)
                except (TimeoutError, BlockingIOError):
                    blocked[i] = True
        time.sleep(0.5)
        grown = rss_bytes(pid) - baseline
        # Other clients are still served, quickly.
        for correlation_id in range(2, 12):
            api_versions(probe, correlation_id)
        produce_and_flush(broker.bootstrap, "small", [b"x"])
    assert sum(sent) > BUFFERED_REQUEST_BYTES_MAX  # the attack did offer more than the budget
    # 8 x 95 MiB was 760 MB before; now the budget, one read per connection and kernel buffers.
    assert grown < BUFFERED_REQUEST_BYTES_MAX + 64 * MIB, f"RSS grew by {grown / MIB:.0f} MiB"
    assert "over the" in broker.log_text() and "Traceback" not in broker.log_text()
    probe.close()


def test_pipelined_fetches_without_reading_are_bounded(broker: BrokerProcess) -> None:
    admin = confluent_kafka.admin.AdminClient({"bootstrap.servers": broker.bootstrap})
    futures = admin.create_topics([confluent_kafka.admin.NewTopic("big", 1, 1, config={"max.message.bytes": str(2 * MIB)})])
    futures["big"].result(timeout=30)
    produce_and_flush(broker.bootstrap, "big", [bytes([i]) * (900 * 1024) for i in range(24)])  # ~21 MiB
    pid = broker.process.pid
    probe = connect(broker)
    api_versions(probe, 1)
    baseline = rss_bytes(pid)
    peak = 0
    with ExitStack() as stack:
        attackers = [stack.enter_context(connect(broker)) for _ in range(4)]
        frames = b"".join(
            encode_request(int(ApiKey.FETCH), 11, n, "greedy", fetch_body("big", 64 * MIB)) for n in range(40)
        )
        for sock in attackers:
            sock.sendall(frames)  # small requests: the kernel takes them all
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:  # bounded by the deadline
            peak = max(peak, rss_bytes(pid) - baseline)
            time.sleep(0.1)
        # A well-behaved consumer is served meanwhile, whole responses included.
        response = round_trip(probe, ApiKey.FETCH, 11, fetch_body("big", MIB), 2)
        assert response["responses"][0]["partitions"][0]["error_code"] == 0
        assert response["responses"][0]["partitions"][0]["records"]
    # Closing them releases their work: RSS does not keep growing.
    after_close = 0
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:  # bounded by the deadline
        after_close = max(after_close, rss_bytes(pid) - baseline)
        time.sleep(0.1)
    api_versions(probe, 3)
    probe.close()
    # 4 x 40 x 21 MiB = 3.4 GB of responses without backpressure; now about one each.
    assert peak < 4 * 21 * MIB + PENDING_RESPONSE_BYTES_MAX + 64 * MIB, f"peak {peak / MIB:.0f} MiB"
    assert after_close <= peak + 32 * MIB, f"after close {after_close / MIB:.0f} MiB, peak {peak / MIB:.0f} MiB"


def test_pipelined_fetches_between_other_requests_are_all_answered_in_order(broker: BrokerProcess) -> None:
    produce_and_flush(broker.bootstrap, "mixed", [b"v"] * 3)
    sock = connect(broker)
    versions_body = {"client_software_name": "t", "client_software_version": "1"}
    plan = [(ApiKey.FETCH, 11, fetch_body("mixed", MIB)), (ApiKey.API_VERSIONS, 3, versions_body)] * 10
    sock.sendall(b"".join(encode_request(int(key), v, n, "mixed", body) for n, (key, v, body) in enumerate(plan)))
    for n, (key, version, _) in enumerate(plan):  # bounded: one response per request
        (size,) = struct.unpack(">i", recv_exactly(sock, 4))
        got, response = decode_response(int(key), version, recv_exactly(sock, size))
        assert got == n
        if key == ApiKey.FETCH:
            assert response["responses"][0]["partitions"][0]["records"]
    sock.close()
