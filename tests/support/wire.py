"""A blocking client of one broker connection speaking flowbus's own codec: a request in, its
response out. For tests of APIs no real client sends (or not at every version)."""

from __future__ import annotations

import socket
import struct
from typing import Any

from flowbus.protocol.codec import decode_response, encode_request
from tests.support.broker_process import BrokerProcess

#: How long a call waits for its response.
READ_TIMEOUT_S = 10.0


class Wire:
    """One connection to ``broker``; :meth:`call` sends a request and returns the decoded answer."""

    def __init__(self, broker: BrokerProcess, client_id: str = "wire-test") -> None:
        self.sock = socket.create_connection((broker.host, broker.port), timeout=READ_TIMEOUT_S)
        self.client_id = client_id
        self.correlation_id = 0

    def call(self, api_key: int, version: int, body: dict[str, Any]) -> dict[str, Any]:
        self.correlation_id += 1
        self.sock.sendall(encode_request(api_key, version, self.correlation_id, self.client_id, body))
        (size,) = struct.unpack(">i", self._read(4))
        got, response = decode_response(api_key, version, self._read(size))
        assert got == self.correlation_id
        return response

    def _read(self, size: int) -> bytes:
        chunks = bytearray()
        while len(chunks) < size:
            chunk = self.sock.recv(size - len(chunks))
            assert chunk, "the broker closed the connection"
            chunks += chunk
        return bytes(chunks)

    def close(self) -> None:
        self.sock.close()
