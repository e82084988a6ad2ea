"""Hostile clients against a real ``flowbus broker`` process: they lose their connection, and
everyone else keeps being served (issue 10, items 4 and 6).

Every loop here is bounded (a count or a deadline) and every socket has a timeout.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Self

import pytest

from flowbus.protocol.api import ApiKey
from flowbus.protocol.codec import decode_response, encode_request
from tests.protocol.test_decode_bounds import header_tags_frame, metadata_v0_frame
from tests.support.broker_process import DEFAULT_EXTRA_ARGS, BrokerProcess

MAX_CONNECTIONS_PER_ADDRESS = 50
REQUEST_RECEIVE_TIMEOUT_MS = 2_000
#: A well-behaved client's round trip while a hostile one attacks must stay below this.
ROUND_TRIP_S_MAX = 0.100
SOCKET_TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    data_dir: Path = tmp_path_factory.mktemp("hostile") / "data"
    args = (*DEFAULT_EXTRA_ARGS,
            "--max-connections-per-address", str(MAX_CONNECTIONS_PER_ADDRESS),
            "--request-receive-timeout-ms", str(REQUEST_RECEIVE_TIMEOUT_MS))
    with BrokerProcess(data_dir, extra_args=args) as process:
        yield process


def connect(broker: BrokerProcess) -> socket.socket:
    sock = socket.create_connection((broker.host, broker.port), timeout=SOCKET_TIMEOUT_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("closed by the broker")
        chunks += chunk
    return bytes(chunks)


def api_versions_frame(correlation_id: int) -> bytes:
    return encode_request(int(ApiKey.API_VERSIONS), 3, correlation_id, "probe",
                          {"client_software_name": "t", "client_software_version": "1"})


def api_versions(sock: socket.socket, correlation_id: int = 1) -> None:
    """One ApiVersions v3 round trip; raises ConnectionError if the broker closed the socket."""
    sock.sendall(api_versions_frame(correlation_id))
    read_api_versions(sock, correlation_id)


def read_api_versions(sock: socket.socket, correlation_id: int) -> None:
    (size,) = struct.unpack(">i", recv_exactly(sock, 4))
    got, body = decode_response(int(ApiKey.API_VERSIONS), 3, recv_exactly(sock, size))
    assert got == correlation_id
    assert body["error_code"] == 0


def wait_for_log(broker: BrokerProcess, text: str, *, count: int = 1, timeout_s: float = 5.0) -> None:
    """Wait until the broker's log holds ``text`` ``count`` times: it writes the line after it acted,
    so the client can see the effect before the line is in the file."""
    deadline = time.monotonic() + timeout_s
    while broker.log_text().count(text) < count:
        assert time.monotonic() < deadline, f"no {text!r} (x{count}) in the broker's log:\n{broker.log_text()[-2000:]}"
        time.sleep(0.05)  # polling a child process's log file


def wait_closed(sock: socket.socket, timeout_s: float) -> float:
    """Seconds until the broker closes ``sock`` (reading and dropping anything it sends)."""
    started = time.monotonic()
    sock.settimeout(timeout_s)
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, BrokenPipeError):
        pass
    except TimeoutError:
        pytest.fail(f"the broker did not close the connection within {timeout_s} s")
    return time.monotonic() - started


class LatencyProbe:
    """A well-behaved client doing ApiVersions round trips in a thread, recording the slowest."""

    def __init__(self, broker: BrokerProcess) -> None:
        self.sock = connect(broker)
        self.round_trips_s: list[float] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            for correlation_id in range(1, 100_000):  # bounded; stopped long before
                if self._stop.is_set():
                    return
                started = time.perf_counter()
                api_versions(self.sock, correlation_id)
                self.round_trips_s.append(time.perf_counter() - started)
                time.sleep(0.002)
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.error = exc

    def __enter__(self) -> Self:
        self._thread.start()
        time.sleep(0.2)  # a few round trips before the attack
        return self

    def __exit__(self, *exc_info: object) -> None:
        time.sleep(0.2)  # and a few after it
        self._stop.set()
        self._thread.join(SOCKET_TIMEOUT_S)
        self.sock.close()

    def check(self) -> None:
        assert self.error is None, f"the well-behaved client failed: {self.error!r}"
        assert len(self.round_trips_s) >= 20
        slowest_s = max(self.round_trips_s)
        assert slowest_s < ROUND_TRIP_S_MAX, f"slowest round trip {slowest_s * 1000:.1f} ms"


HOSTILE_FRAMES = {
    "200k tagged fields": lambda: header_tags_frame(int(ApiKey.API_VERSIONS), 3, 200_000),
    "2M tagged fields": lambda: header_tags_frame(int(ApiKey.METADATA), 12, 2_000_000),
    "Metadata for 1M topics": lambda: metadata_v0_frame(1_000_000),
}


@pytest.mark.parametrize("name", list(HOSTILE_FRAMES))
def test_a_frame_of_huge_counts_closes_that_connection_quickly(broker: BrokerProcess, name: str) -> None:
    payload = HOSTILE_FRAMES[name]()
    frame = struct.pack(">i", len(payload)) + payload
    with LatencyProbe(broker) as probe, connect(broker) as hostile:
        hostile.sendall(frame)
        closed_after_s = wait_closed(hostile, timeout_s=5.0)
    probe.check()
    assert closed_after_s < 2.0
    wait_for_log(broker, "exceed the limit of elements per message")
    with connect(broker) as sock:
        api_versions(sock)


def test_connections_beyond_the_per_address_limit_are_closed_at_once(broker: BrokerProcess) -> None:
    log_lines_before = broker.log_text().count("refusing connection")
    extra = 10
    sockets = [connect(broker) for _ in range(MAX_CONNECTIONS_PER_ADDRESS + extra)]
    try:
        served = refused = 0
        for correlation_id, sock in enumerate(sockets, start=1):
            try:
                api_versions(sock, correlation_id)
                served += 1
            except (ConnectionError, OSError):
                refused += 1
        assert (served, refused) == (MAX_CONNECTIONS_PER_ADDRESS, extra)
        # Rate-limited: ten refusals in a burst write one line.
        wait_for_log(broker, "refusing connection", count=log_lines_before + 1)
        assert broker.log_text().count("refusing connection") == log_lines_before + 1
    finally:
        for sock in sockets:
            sock.close()
    # The closed connections are uncounted: new ones are served again (bounded wait).
    deadline = time.monotonic() + 5.0
    while True:
        try:
            with connect(broker) as sock:
                api_versions(sock)
            break
        except (ConnectionError, OSError):
            assert time.monotonic() < deadline, "connections from 127.0.0.1 were never uncounted"
            time.sleep(0.1)


def test_a_slowloris_client_is_closed_at_the_receive_deadline(broker: BrokerProcess) -> None:
    frame = api_versions_frame(7)
    with connect(broker) as slow:
        started = time.monotonic()
        closed = False
        for index in range(len(frame) - 1):  # never the last byte; bounded by the frame's size
            try:
                slow.sendall(frame[index:index + 1])
            except (ConnectionResetError, BrokenPipeError):
                closed = True
                break
            slow.settimeout(1.0)
            try:
                if slow.recv(1) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass  # a byte a second
            except ConnectionResetError:
                closed = True
                break
        elapsed_s = time.monotonic() - started
    assert closed, "the broker never closed a client sending a byte a second"
    assert REQUEST_RECEIVE_TIMEOUT_MS / 1000 - 0.5 < elapsed_s < REQUEST_RECEIVE_TIMEOUT_MS / 1000 + 2.5
    wait_for_log(broker, "request not received within 2000 ms")


def test_the_deadline_is_per_request_not_per_connection(broker: BrokerProcess) -> None:
    """Requests that each arrive within the deadline are served, even if some partial request is
    buffered on the connection for much longer than the deadline in total."""
    frames = [api_versions_frame(correlation_id) for correlation_id in (1, 2, 3)]
    with connect(broker) as sock:
        sock.sendall(frames[0][:5])
        time.sleep(1.2)
        sock.sendall(frames[0][5:] + frames[1][:5])
        read_api_versions(sock, 1)
        time.sleep(1.2)
        sock.sendall(frames[1][5:] + frames[2][:5])
        read_api_versions(sock, 2)
        time.sleep(1.2)
        sock.sendall(frames[2][5:])
        read_api_versions(sock, 3)
