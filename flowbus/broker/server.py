"""The broker's asyncio TCP server: it only moves bytes and dispatches.

Per connection (an ``asyncio.Protocol``): a :class:`FrameDecoder` splits the byte stream into
frames, ``decode_request`` turns each into a header and body, a task runs the handler, and the
responses are written **strictly in request order** — a Fetch that long-polls holds back the
responses behind it, as Kafka clients expect (they match responses by order and correlation id).
Requests of one connection are processed concurrently; the produce path appends before it first
awaits (see ``core.py``), so one connection's produce requests are appended in order.

Limits (each named): ``max_frame_bytes`` (checked before the frame is buffered),
``max_in_flight_requests_per_connection`` (reading pauses while the pipeline is full), and
``connections_max_idle_ms`` (idle connections are closed, Kafka's default 10 minutes).

A malformed or oversized frame, or a request the codec cannot decode, closes only that
connection, with one log line; everyone else keeps being served.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from flowbus.broker.core import BrokerCore
from flowbus.broker.errors import CloseConnection
from flowbus.broker.handlers import ConnectionInfo, Handlers
from flowbus.clock import SYSTEM_CLOCK, Clock
from flowbus.protocol.api import ApiKey
from flowbus.protocol.codec import (
    Request,
    api_versions_fallback_response,
    decode_request,
    encode_response,
)
from flowbus.protocol.error_codes import ErrorCode
from flowbus.protocol.errors import (
    ProtocolError,
    RemoteProtocolError,
    UnsupportedVersionError,
)
from flowbus.protocol.framing import FrameDecoder

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """Per-connection limits of the server (names follow Kafka's broker settings)."""

    #: Kafka's ``socket.request.max.bytes``: larger frames close the connection unread.
    max_frame_bytes: int = 100 * 1024 * 1024
    #: Requests read but not yet answered on one connection; reading pauses at this many.
    max_in_flight_requests_per_connection: int = 64
    #: Kafka's ``connections.max.idle.ms``: a connection with nothing in flight for this long is closed.
    connections_max_idle_ms: int = 600_000
    #: Open connections at once; new ones beyond this are closed immediately.
    max_connections: int = 4_096


@dataclass(frozen=True, slots=True)
class _CloseMarker:
    """In the pipeline instead of a response: close the connection at this point."""

    reason: str


class _Connection(asyncio.Protocol):
    """One client connection: frames in, ordered responses out."""

    def __init__(self, server: BrokerServer) -> None:
        self._server = server
        self._decoder = FrameDecoder(server.limits.max_frame_bytes)
        self._pipeline: collections.deque[
            asyncio.Future[bytes | _CloseMarker | None]
        ] = collections.deque()
        self._transport: asyncio.Transport | None = None
        self._peer = "?"
        self._info = ConnectionInfo("")
        self._closed = False
        self._reading_paused = False
        self._writing_paused = False
        self.last_active_ms = server.clock.monotonic_ms()

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self._peer = f"{peer[0]}:{peer[1]}"
            self._info = ConnectionInfo(f"/{peer[0]}")
        if len(self._server.connections) >= self._server.limits.max_connections:
            log.warning(
                "refusing connection from %s: %d connections open",
                self._peer,
                len(self._server.connections),
            )
            self._closed = True
            transport.abort()
            return
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._server.connections.discard(self)
        for future in self._pipeline:
            future.cancel()
        self._pipeline.clear()

    def pause_writing(self) -> None:
        # The client reads slower than we answer: stop reading requests until it catches up.
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._update_reading()

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        self.last_active_ms = self._server.clock.monotonic_ms()
        try:
            frames = self._decoder.feed(data)
        except RemoteProtocolError as exc:
            self.abort(f"bad frame: {exc}")
            return
        for frame in frames:
            if self._closed:
                return
            self._dispatch(frame)

    # -- requests --------------------------------------------------------------------------

    def _dispatch(self, frame: bytes) -> None:
        try:
            request = decode_request(frame)
        except UnsupportedVersionError as exc:
            if exc.api_key == ApiKey.API_VERSIONS and exc.header is not None:
                # Never disconnect here: the client retries with a version from our range.
                ready: asyncio.Future[bytes | _CloseMarker | None] = (
                    asyncio.get_running_loop().create_future()
                )
                ready.set_result(api_versions_fallback_response(exc.header))  # type: ignore[arg-type]
                self._enqueue(ready)
            else:
                self.abort(f"unsupported request: {exc}")
            return
        except ProtocolError as exc:
            self.abort(f"malformed request: {exc}")
            return
        task = asyncio.get_running_loop().create_task(self._run(request))
        self._enqueue(task)

    def _enqueue(self, future: asyncio.Future[bytes | _CloseMarker | None]) -> None:
        self._pipeline.append(future)
        future.add_done_callback(self._flush)
        self._update_reading()

    async def _run(self, request: Request) -> bytes | _CloseMarker | None:
        header = request.header
        handlers = self._server.handlers
        debug = log.isEnabledFor(logging.DEBUG)
        if debug:
            log.debug(
                "%s: %s v%d #%d %r",
                self._peer,
                _api_name(header.api_key),
                header.api_version,
                header.correlation_id,
                request.body if header.api_key not in _BODIES_NOT_LOGGED else "",
            )
        try:
            body = await handlers.handle(header, request.body, self._info)
            if debug:
                log.debug(
                    "%s: -> #%d %r",
                    self._peer,
                    header.correlation_id,
                    body if header.api_key not in _BODIES_NOT_LOGGED else "",
                )
            if body is None:
                return None
            return encode_response(header, body)
        except CloseConnection as exc:
            return _CloseMarker(str(exc))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception(
                "request %s v%d from %s failed",
                _api_name(header.api_key),
                header.api_version,
                self._peer,
            )
            try:
                return encode_response(
                    header, {"error_code": ErrorCode.UNKNOWN_SERVER_ERROR}
                )
            except Exception:  # noqa: BLE001 - the response itself cannot be built: give up on the connection
                self.abort("could not encode an error response")
                return None

    def _flush(self, _: Any = None) -> None:
        """Write every finished response at the head of the pipeline, in request order."""
        transport = self._transport
        pipeline = self._pipeline
        while pipeline and pipeline[0].done():
            future = pipeline.popleft()
            if future.cancelled() or self._closed or transport is None:
                continue
            data = future.result()
            if isinstance(data, _CloseMarker):
                log.info("closing connection from %s: %s", self._peer, data.reason)
                self._closed = True
                transport.close()  # after the responses already written
                return
            if data:
                transport.write(data)
        self.last_active_ms = self._server.clock.monotonic_ms()
        self._update_reading()

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None or self._closed:
            return
        should_pause = (
            self._writing_paused
            or len(self._pipeline)
            >= self._server.limits.max_in_flight_requests_per_connection
        )
        if should_pause and not self._reading_paused:
            transport.pause_reading()
            self._reading_paused = True
        elif not should_pause and self._reading_paused:
            transport.resume_reading()
            self._reading_paused = False

    # -- closing ---------------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        return not self._pipeline

    def abort(self, reason: str) -> None:
        """Close this connection at once (one log line); other connections are unaffected."""
        if self._closed:
            return
        log.warning("closing connection from %s: %s", self._peer, reason)
        self._closed = True
        for future in self._pipeline:
            future.cancel()
        self._pipeline.clear()
        if self._transport is not None:
            self._transport.abort()

    def close_quietly(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self._closed = True


#: Debug logging leaves out record data (Produce, Fetch) and credentials (SASL).
_BODIES_NOT_LOGGED = frozenset(
    {ApiKey.PRODUCE, ApiKey.FETCH, ApiKey.SASL_HANDSHAKE, ApiKey.SASL_AUTHENTICATE}
)


def _api_name(api_key: int) -> str:
    try:
        return ApiKey(api_key).name
    except ValueError:
        return f"api{api_key}"


class BrokerServer:
    """Accepts connections and serves them from a :class:`BrokerCore`.

    Example::

        core = BrokerCore(BrokerConfig(data_dir=path))
        await core.start()
        server = BrokerServer(core, host="127.0.0.1", port=0)
        await server.start()          # server.port is the bound port
        ...
        await server.close()
        await core.close()
    """

    def __init__(
        self,
        core: BrokerCore,
        *,
        host: str,
        port: int,
        limits: ServerLimits | None = None,
        clock: Clock = SYSTEM_CLOCK,
        handlers: Handlers | None = None,
    ) -> None:
        self.core = core
        self.handlers = handlers or Handlers(core)
        self.limits = limits or ServerLimits()
        self.clock = clock
        self.host = host
        self.port = port
        self.connections: set[_Connection] = set()
        self._server: asyncio.base_events.Server | None = None
        self._reaper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), self.host, self.port, reuse_address=True
        )
        sockname = self._server.sockets[0].getsockname()
        self.port = sockname[1]
        self._reaper = asyncio.create_task(
            self._reap_idle_connections(), name="flowbus-idle-reaper"
        )

    async def _reap_idle_connections(self) -> None:
        idle_ms = self.limits.connections_max_idle_ms
        interval_s = max(0.05, min(idle_ms / 10_000, 5.0))
        while True:
            await asyncio.sleep(interval_s)
            now_ms = self.clock.monotonic_ms()
            for conn in list(self.connections):
                if conn.idle and now_ms - conn.last_active_ms > idle_ms:
                    log.info("closing connection idle for more than %d ms", idle_ms)
                    conn.close_quietly()

    async def close(self) -> None:
        """Stop accepting, close every connection (pending long polls are cancelled)."""
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.close_quietly()
        if self._server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5)
