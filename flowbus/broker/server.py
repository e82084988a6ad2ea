"""The broker's asyncio TCP server: it only moves bytes and dispatches.

Per connection (an ``asyncio.Protocol``): a :class:`FrameDecoder` splits the byte stream into
frames, ``decode_request`` turns each into a header and body, a task runs the handler, and the
responses are written **strictly in request order** — a Fetch that long-polls holds back the
responses behind it, as Kafka clients expect (they match responses by order and correlation id).
Requests of one connection are processed concurrently (a Fetch only at the head, see below); the produce path appends before it first
awaits (see ``core.py``), so one connection's produce requests are appended in order.

Limits (each named): ``max_frame_bytes`` (checked before the frame is buffered),
``max_in_flight_requests_per_connection`` (reading pauses while the pipeline is full),
``connections_max_idle_ms`` (idle connections are closed, Kafka's default 10 minutes),
``max_connections`` and ``max_connections_per_address`` (new connections beyond them are closed
at once), and ``request_receive_timeout_ms`` (a request must arrive whole within this long of its
first byte). The codec bounds the decode work of each frame (``codec.MAX_REQUEST_ELEMENTS``).
Memory is bounded by ``max_buffered_request_bytes`` (unfinished requests across connections: large
partial ones stop being read while the total is over it) and by backpressure on responses: a Fetch
starts only at the head of its connection's pipeline while the client reads its responses, and,
beyond ``max_pending_response_bytes`` in all, only if its connection has nothing left unread.

A malformed or oversized frame, or a request the codec cannot decode, closes only that
connection, with one log line; everyone else keeps being served.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from flowbus.broker.core import BrokerCore
from flowbus.broker.errors import BrokerConfigError, CloseAfterResponse, CloseConnection
from flowbus.broker.handlers import ConnectionInfo, Handlers
from flowbus.broker.security.listeners import (
    TLS_HANDSHAKE_TIMEOUT_S,
    Listener,
    TlsSettings,
    principal_of_certificate,
)
from flowbus.broker.security.sasl import (
    UNAUTHENTICATED_FRAME_BYTES_MAX,
    SaslSession,
    SaslSettings,
)
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

#: A response is encoded on the codec thread when its arrays and the arrays in their entries
#: hold at least this many elements together (a Fetch, ListOffsets or Metadata answer over many
#: partitions or topics; encoding 10,000 partitions takes ~5-8 ms).
OFFLOAD_RESPONSE_ELEMENTS = 256


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """Per-connection limits of the server (names follow Kafka's broker settings)."""

    #: Kafka's ``socket.request.max.bytes``: larger frames close the connection unread. 32 MiB:
    #: 32 times a producer's default ``max.request.size``, and one connection's worst case.
    max_frame_bytes: int = 32 * 1024 * 1024
    #: Requests read but not yet answered on one connection; reading pauses at this many.
    #: Idempotent producers keep at most 5 in flight; 16 leaves room for consumers and admin.
    max_in_flight_requests_per_connection: int = 16
    #: Kafka's ``queued.max.request.bytes``: bytes of unfinished requests buffered across all
    #: connections. Beyond it, a connection holding more than ``request_bytes_unthrottled`` of an
    #: unfinished request stops being read until the total falls again (its receive deadline
    #: still runs, so a client that never finishes is closed and frees its share).
    max_buffered_request_bytes: int = 256 * 1024 * 1024
    #: An unfinished request this small is always read on, whatever the total: small clients are
    #: never held back by large ones.
    request_bytes_unthrottled: int = 1024 * 1024
    #: Response bytes written but not yet taken by the clients, across all connections. A Fetch
    #: from a connection whose earlier responses are still unread waits while the total is
    #: above it; each connection runs one Fetch at a time and none while its socket buffer is
    #: full (responses not being read), so a client that does not read only stops itself.
    max_pending_response_bytes: int = 256 * 1024 * 1024
    #: Kafka's ``connections.max.idle.ms``: a connection with nothing in flight for this long is closed.
    connections_max_idle_ms: int = 600_000
    #: Open connections at once; new ones beyond this are closed immediately.
    max_connections: int = 4_096
    #: Open connections from one IP address; new ones beyond this are closed immediately, so one
    #: host cannot take every slot of ``max_connections`` (Kafka's ``max.connections.per.ip``).
    max_connections_per_address: int = 1_000
    #: Once the first byte of a request has arrived, the whole request must arrive within this
    #: long or the connection is closed (a slowloris client cannot hold a slot forever). Time
    #: during which the broker itself paused reading the connection does not count.
    request_receive_timeout_ms: int = 30_000
    #: Request frames at least this large are decoded on the server's codec thread, not on the
    #: event loop, and so are the responses of requests naming many partitions or topics
    #: (:data:`OFFLOAD_RESPONSE_ELEMENTS`). Decoding or encoding one at the element budget takes
    #: 3-8 ms, which every other client waited for; on the codec thread the event loop gets
    #: the interpreter back every switch interval (1 ms in ``flowbus broker``). 0 turns it off.
    codec_offload_frame_bytes: int = 64 * 1024


@dataclass(frozen=True, slots=True)
class _CloseMarker:
    """In the pipeline instead of a response: close the connection at this point (after
    writing ``last_response``, the answer of the request that closes it, if any)."""

    reason: str
    last_response: bytes = b""


class _Connection(asyncio.Protocol):
    """One client connection: frames in, ordered responses out."""

    def __init__(self, server: BrokerServer, listener: Listener | None = None) -> None:
        self._server = server
        self._listener = listener
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
        #: Reading stopped because the server-wide buffered request bytes are over budget (kept
        #: apart from ``_reading_paused``: the client, not our backpressure, holds that memory).
        self._budget_paused = False
        self._transport_reading = True
        #: This connection's share of ``server.buffered_request_bytes`` (its partial frame).
        self._buffered_counted = 0
        #: Set whenever this connection's responses may have drained (see ``_wait_for_response_room``).
        self._response_room = asyncio.Event()
        self._response_room.set()
        self.last_active_ms = server.clock.monotonic_ms()
        #: The IP address counted in ``server.connections_per_address`` (None until counted).
        self._address: str | None = None
        #: Fires ``request_receive_timeout_ms`` after a partial request started arriving.
        self._receive_deadline: asyncio.TimerHandle | None = None
        #: A frame being decoded on the codec thread; frames after it wait in ``_held_frames``
        #: so requests are still dispatched in the order they arrived.
        self._decoding: asyncio.Future[Request | ProtocolError] | None = None
        self._held_frames: collections.deque[bytes] = collections.deque()

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self._peer = f"{peer[0]}:{peer[1]}"
            self._info = ConnectionInfo(f"/{peer[0]}")
        if self._listener is not None:
            self._secure(transport, self._listener)
        if len(self._server.connections) >= self._server.limits.max_connections:
            log.warning(
                "refusing connection from %s: %d connections open",
                self._peer,
                len(self._server.connections),
            )
            self._closed = True
            self._server.stats.connections_refused += 1
            transport.abort()
            return
        address = peer[0] if isinstance(peer, tuple) else "?"
        if not self._server.admit_address(address, self._peer):
            self._closed = True
            self._server.stats.connections_refused += 1
            transport.abort()
            return
        self._address = address
        self._server.connections.add(self)
        self._server.stats.connections_accepted += 1

    def _secure(self, transport: asyncio.Transport, listener: Listener) -> None:
        """Record the listener, the TLS client's subject and, on a SASL listener, start the
        SASL state machine; until it authenticates, frames are limited to
        ``UNAUTHENTICATED_FRAME_BYTES_MAX`` (an anonymous peer cannot make us buffer 32 MiB)."""
        info = self._info
        info.listener = listener.name
        info.security_protocol = listener.protocol.value
        if listener.advertised_host is not None and listener.advertised_port is not None:
            info.advertised = (listener.advertised_host, listener.advertised_port)
        if listener.protocol.uses_tls:
            subject = principal_of_certificate(transport.get_extra_info("peercert"))
            info.tls_principal = f"User:{subject}" if subject else None
            if subject:
                log.info("connection from %s on listener %s: TLS client %s",
                         self._peer, listener.name, info.tls_principal)
        if listener.protocol.uses_sasl:
            settings = self._server.sasl
            if settings is None:  # BrokerServer refuses this at start: never reached
                raise RuntimeError("a SASL listener without SASL settings")
            info.sasl = SaslSession(settings)
            self._decoder.max_frame_bytes = min(
                UNAUTHENTICATED_FRAME_BYTES_MAX, self._server.limits.max_frame_bytes
            )

    def _authenticated(self) -> None:
        """After each SaslAuthenticate answer: once the session is authenticated, full-size
        frames, and one log line (who logged in where: the audit trail Kafka's logs give)."""
        if self._decoder.max_frame_bytes != self._server.limits.max_frame_bytes:
            self._decoder.max_frame_bytes = self._server.limits.max_frame_bytes
            log.info("connection from %s on listener %s authenticated as %s",
                     self._peer, self._info.listener, self._info.principal)
        else:
            log.debug("connection from %s re-authenticated as %s (KIP-368)", self._peer, self._info.principal)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._cancel_receive_deadline()
        if self._address is not None:
            self._server.release_address(self._address)
            self._address = None
        self._server.connections.discard(self)
        for future in self._pipeline:
            future.cancel()  # pending work of a closed connection: cancelled, memory released
        self._pipeline.clear()
        self._held_frames.clear()
        self._server.budget_paused.discard(self)
        self._account_buffered()
        self._server.response_drained()

    def pause_writing(self) -> None:
        # The client reads slower than we answer: stop reading requests until it catches up,
        # and keep finished responses in the pipeline instead of the transport's buffer.
        self._writing_paused = True
        self._response_room.clear()
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._flush()
        self._server.response_drained()

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        self.last_active_ms = self._server.clock.monotonic_ms()
        self._server.stats.network_received_bytes += len(data)
        try:
            frames = self._decoder.feed(data)
        except RemoteProtocolError as exc:
            self.abort(f"bad frame: {exc}")
            return
        self._account_buffered()
        for frame in frames:
            if self._closed:
                return
            self._dispatch(frame)
        if frames:
            # A request completed: any partial one after it starts its own deadline now.
            self._cancel_receive_deadline()
        self._update_receive_deadline()

    # -- the receive deadline --------------------------------------------------------------

    def _update_receive_deadline(self) -> None:
        """Arm the deadline when a partial request is buffered, disarm it when none is.

        The deadline runs from the first byte of a request to its last, not per byte: a client
        sending one byte a second keeps the connection busy but never finishes a request.
        """
        if self._closed or not self._decoder.buffered_bytes:
            self._cancel_receive_deadline()
        elif self._receive_deadline is None:
            self._arm_receive_deadline()

    def _arm_receive_deadline(self) -> None:
        timeout_s = self._server.limits.request_receive_timeout_ms / 1000
        self._receive_deadline = asyncio.get_running_loop().call_later(
            timeout_s, self._receive_deadline_passed
        )

    def _cancel_receive_deadline(self) -> None:
        if self._receive_deadline is not None:
            self._receive_deadline.cancel()
            self._receive_deadline = None

    def _receive_deadline_passed(self) -> None:
        self._receive_deadline = None
        if self._closed or not self._decoder.buffered_bytes:
            return
        if self._reading_paused:
            # We stopped reading (backpressure), not the client: give it a fresh deadline.
            self._arm_receive_deadline()
            return
        self.abort(
            f"request not received within {self._server.limits.request_receive_timeout_ms} ms "
            f"of its first byte ({self._decoder.buffered_bytes} bytes buffered)"
        )

    # -- requests --------------------------------------------------------------------------

    def _dispatch(self, frame: bytes) -> None:
        if self._decoding is not None or self._held_frames:
            self._held_frames.append(frame)  # behind a frame decoding on the codec thread
            self._update_reading()
            return
        self._dispatch_now(frame)

    def _dispatch_now(self, frame: bytes) -> None:
        """Decode ``frame`` here, or start decoding it on the codec thread when it is large."""
        offload_bytes = self._server.limits.codec_offload_frame_bytes
        if offload_bytes and len(frame) >= offload_bytes:
            loop = asyncio.get_running_loop()
            decoding = loop.run_in_executor(self._server.codec_executor, _decode_or_error, frame)
            self._decoding = decoding
            decoding.add_done_callback(self._decoded)
            self._update_reading()
            return
        try:
            request = decode_request(frame)
        except ProtocolError as exc:
            self._dispatch_failed(exc)
            return
        self._dispatch_request(request)

    def _decoded(self, decoding: asyncio.Future[Request | ProtocolError]) -> None:
        """A frame decoded on the codec thread: dispatch it, then the frames held behind it."""
        self._decoding = None
        if self._closed or decoding.cancelled():
            self._held_frames.clear()
            return
        exc = decoding.exception()
        if exc is not None:  # not a protocol error: a bug in the codec, reported as one
            self._held_frames.clear()
            self.abort(f"could not decode request: {exc!r}")
            return
        result = decoding.result()
        if isinstance(result, ProtocolError):
            self._dispatch_failed(result)  # closes the connection, or answers ApiVersions
        else:
            self._dispatch_request(result, decoded_off_loop=True)
        if self._closed:
            self._held_frames.clear()
            return
        held = self._held_frames
        while held and self._decoding is None and not self._closed:
            self._dispatch_now(held.popleft())
        self._update_reading()

    def _dispatch_failed(self, error: ProtocolError) -> None:
        """A frame that did not decode: ApiVersions at an unknown version is answered (never
        disconnect there: the client retries with a version from our range); anything else
        closes this connection with one log line."""
        if isinstance(error, UnsupportedVersionError):
            if error.api_key == ApiKey.API_VERSIONS and error.header is not None:
                ready: asyncio.Future[bytes | _CloseMarker | None] = (
                    asyncio.get_running_loop().create_future()
                )
                ready.set_result(api_versions_fallback_response(error.header))  # type: ignore[arg-type]
                self._enqueue(ready)
            else:
                self.abort(f"unsupported request: {error}")
            return
        self.abort(f"malformed request: {error}")

    def _dispatch_request(self, request: Request, *, decoded_off_loop: bool = False) -> None:
        sasl = self._info.sasl
        if sasl is not None and not sasl.allows(request.header.api_key):
            # Before authentication only ApiVersions and the SASL requests are served (KIP-152);
            # anything else, or a request after the session expired (KIP-368), closes the
            # connection unanswered, as Kafka does.
            self.abort(f"{_api_name(request.header.api_key)}: {sasl.expired_reason()}")
            return
        task = asyncio.get_running_loop().create_task(self._run(request, decoded_off_loop))
        self._enqueue(task)

    def _enqueue(self, future: asyncio.Future[bytes | _CloseMarker | None]) -> None:
        self._pipeline.append(future)
        future.add_done_callback(self._flush)
        self._update_reading()

    # -- memory budgets ---------------------------------------------------------------------

    def _account_buffered(self) -> None:
        """Update the server-wide count of buffered request bytes with this connection's share,
        and stop reading this connection if it holds a large partial request over the budget."""
        server = self._server
        share = 0 if self._closed else self._decoder.buffered_bytes
        server.buffered_request_bytes += share - self._buffered_counted
        self._buffered_counted = share
        limits = server.limits
        over = server.buffered_request_bytes > limits.max_buffered_request_bytes
        if over and share > limits.request_bytes_unthrottled and not self._budget_paused:
            self._budget_paused = True
            server.budget_paused.add(self)
            server.log_request_budget_pause(self._peer, share)
            self._update_reading()
        elif not over and server.budget_paused:
            server.resume_budget_paused()

    def resume_from_budget(self) -> None:
        self._budget_paused = False
        self._update_reading()

    def _has_response_room(self, task: asyncio.Task[Any] | None) -> bool:
        """May this connection's Fetch ``task`` start: every earlier response written (the task
        heads the pipeline) and being read, and either nothing of this connection in the
        transport's buffer or the server-wide total under budget."""
        if self._closed:
            return True
        if self._writing_paused or not self._pipeline or self._pipeline[0] is not task:
            return False
        transport = self._transport
        if transport is None or not transport.get_write_buffer_size():
            return True
        return self._server.pending_response_bytes() <= self._server.limits.max_pending_response_bytes

    async def _wait_for_response_room(self) -> None:
        # Ends when the client reads (resume_writing / _flush set the event), when another
        # connection drains (the server sets every waiter's event) or when the connection closes
        # (the task is cancelled): each wake-up re-checks, the timeout only guards missed events.
        task = asyncio.current_task()
        while not self._has_response_room(task):
            self._response_room.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._response_room.wait(), 1.0)

    def wake_response_waiters(self) -> None:
        self._response_room.set()

    def pending_write_bytes(self) -> int:
        """Response bytes in this connection's transport buffer, not yet taken by the client."""
        transport = self._transport
        return 0 if transport is None or self._closed else transport.get_write_buffer_size()

    async def _run(self, request: Request, decoded_off_loop: bool = False) -> bytes | _CloseMarker | None:
        if request.header.api_key == ApiKey.FETCH:
            # A Fetch starts only at the head of the pipeline (so one at a time per connection)
            # and while the client reads: its response is the one that can be large.
            await self._wait_for_response_room()
            if self._closed:
                # wait_for can swallow the cancellation of a closed connection's task when the
                # event fires at the same moment (CPython 3.11): never start its Fetch.
                return None
        return await self._run_unthrottled(request, decoded_off_loop)

    async def _run_unthrottled(
        self, request: Request, decoded_off_loop: bool = False
    ) -> bytes | _CloseMarker | None:
        """Handle ``request`` and count its latency per API (metrics: one clock read at each end)."""
        started_s = time.perf_counter()
        try:
            return await self._handle(request, decoded_off_loop)
        finally:
            self._server.stats.request_done(request.header.api_key, time.perf_counter() - started_s)

    async def _handle(self, request: Request, decoded_off_loop: bool) -> bytes | _CloseMarker | None:
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
            if self._server.limits.codec_offload_frame_bytes and (
                decoded_off_loop or _has_many_elements(body)
            ):
                return await asyncio.get_running_loop().run_in_executor(
                    self._server.codec_executor, encode_response, header, body
                )
            sasl = self._info.sasl
            if header.api_key == ApiKey.SASL_AUTHENTICATE and sasl is not None and sasl.authenticated:
                self._authenticated()
            return encode_response(header, body)
        except CloseAfterResponse as exc:
            return _CloseMarker(str(exc), encode_response(header, exc.body))
        except CloseConnection as exc:
            return _CloseMarker(str(exc))
        except asyncio.CancelledError:
            raise
        except Exception:
            self._server.stats.request_failed(header.api_key)
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
        while pipeline and pipeline[0].done() and not (self._writing_paused and not self._closed):
            future = pipeline.popleft()
            if future.cancelled() or self._closed or transport is None:
                continue
            data = future.result()
            if isinstance(data, _CloseMarker):
                log.info("closing connection from %s: %s", self._peer, data.reason)
                if data.last_response:
                    transport.write(data.last_response)
                    self._server.stats.network_sent_bytes += len(data.last_response)
                self._closed = True
                transport.close()  # after the responses already written
                return
            if data:
                transport.write(data)
                self._server.stats.network_sent_bytes += len(data)
        self.last_active_ms = self._server.clock.monotonic_ms()
        if not self._writing_paused:
            self._response_room.set()  # a waiting Fetch may head the pipeline now
        self._update_reading()

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None or self._closed:
            return
        self._reading_paused = (
            self._writing_paused
            or len(self._pipeline) + len(self._held_frames) + (self._decoding is not None)
            >= self._server.limits.max_in_flight_requests_per_connection
        )
        should_read = not (self._reading_paused or self._budget_paused)
        if should_read != self._transport_reading:
            if should_read:
                transport.resume_reading()
            else:
                transport.pause_reading()
            self._transport_reading = should_read

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
        self._held_frames.clear()
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


#: At most one "refusing connection" line per this interval for the per-address limit.
_REFUSED_LOG_INTERVAL_MS = 10_000


def _decode_or_error(frame: bytes) -> Request | ProtocolError:
    """``decode_request`` for the codec thread: a protocol error is returned, not raised, so the
    event loop handles it as it handles one raised there."""
    try:
        return decode_request(frame)
    except ProtocolError as exc:
        return exc


def _has_many_elements(body: dict[str, Any]) -> bool:
    """Whether ``body``'s arrays and the arrays in their entries hold at least
    :data:`OFFLOAD_RESPONSE_ELEMENTS` elements together (99 topics of 100 partitions each count
    9,999): a cheap bound on the encoding work, checked on the event loop for every response,
    that stops counting once the bound is reached (a few lookups for the usual small ones)."""
    limit = OFFLOAD_RESPONSE_ELEMENTS
    count = 0
    for value in body.values():
        if isinstance(value, list):
            count += len(value)
            if count >= limit:
                return True
            for entry in value:
                if isinstance(entry, dict):
                    for inner in entry.values():
                        if isinstance(inner, list):
                            count += len(inner)
                            if count >= limit:
                                return True
    return False


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
        listeners: list[Listener] | None = None,
        tls: TlsSettings | None = None,
        sasl: SaslSettings | None = None,
    ) -> None:
        self.core = core
        #: Where connections are accepted (``docs/security.md``); None: one PLAINTEXT listener
        #: on ``host:port`` advertising the core's node address (as before listeners existed).
        self.listeners = listeners
        self.tls = tls
        #: Shared by the connections of SASL listeners (credentials, mechanisms, re-auth).
        self.sasl = sasl
        #: Bound port of each listener, by name (after :meth:`start`).
        self.bound_ports: dict[str, int] = {}
        #: The listeners as connections see them (advertised port 0 replaced by the bound one).
        self._listener_by_name: dict[str, Listener] = {}
        #: The core's counters; the server adds request latencies, connections and bytes.
        self.stats = core.stats
        self.handlers = handlers or Handlers(core)
        self.limits = limits or ServerLimits()
        self.clock = clock
        self.host = host
        self.port = port
        self.connections: set[_Connection] = set()
        #: Bytes of unfinished requests buffered across connections (``max_buffered_request_bytes``).
        self.buffered_request_bytes = 0
        #: Connections not read because of that budget, resumed when the total falls under it.
        self.budget_paused: set[_Connection] = set()
        self._budget_logged_ms: int | None = None
        #: Open connections per IP address (addresses with none are removed).
        self.connections_per_address: dict[str, int] = {}
        #: Refusals by the per-address limit not yet logged, and when the last line was written:
        #: a flood of refused connections writes one line per interval, not one per connection.
        self._refused_per_address = 0
        self._refused_logged_ms: int | None = None
        self._server: asyncio.base_events.Server | None = None
        #: Every listener's asyncio server (``_server`` is the first).
        self._servers: list[asyncio.base_events.Server] = []
        self._reaper: asyncio.Task[None] | None = None
        #: One thread decodes large request frames and encodes large responses
        #: (``limits.codec_offload_frame_bytes``); its own, so they never queue behind fsyncs.
        self.codec_executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="flowbus-codec"
        )

    def pending_response_bytes(self) -> int:
        """Response bytes in the transports' buffers, not yet taken by clients."""
        return sum(conn.pending_write_bytes() for conn in self.connections)

    def response_drained(self) -> None:
        """Some connection's pending responses shrank: let waiting Fetches re-check."""
        for conn in self.connections:
            conn.wake_response_waiters()

    def resume_budget_paused(self) -> None:
        """The buffered request bytes fell under the budget: read the held-back connections again."""
        paused = list(self.budget_paused)
        self.budget_paused.clear()
        for conn in paused:
            conn.resume_from_budget()

    def log_request_budget_pause(self, peer: str, share: int) -> None:
        """One line per ``_REFUSED_LOG_INTERVAL_MS`` at most: a flood writes one line, not thousands."""
        now_ms = self.clock.monotonic_ms()
        if self._budget_logged_ms is not None and now_ms - self._budget_logged_ms < _REFUSED_LOG_INTERVAL_MS:
            return
        self._budget_logged_ms = now_ms
        log.warning(
            "buffered requests at %d bytes, over the %d-byte budget: not reading %s (%d bytes of an"
            " unfinished request) until the total falls",
            self.buffered_request_bytes,
            self.limits.max_buffered_request_bytes,
            peer,
            share,
        )

    def admit_address(self, address: str, peer: str) -> bool:
        """Count a new connection from ``address``; False (and a rate-limited log line) when that
        address already has ``max_connections_per_address`` open."""
        count = self.connections_per_address.get(address, 0)
        if count >= self.limits.max_connections_per_address:
            self._log_refused_per_address(address, peer, count)
            return False
        self.connections_per_address[address] = count + 1
        return True

    def release_address(self, address: str) -> None:
        """Uncount a closed connection from ``address``."""
        count = self.connections_per_address.get(address, 0) - 1
        if count > 0:
            self.connections_per_address[address] = count
        else:
            self.connections_per_address.pop(address, None)

    def _log_refused_per_address(self, address: str, peer: str, count: int) -> None:
        self._refused_per_address += 1
        now_ms = self.clock.monotonic_ms()
        last_ms = self._refused_logged_ms
        if last_ms is not None and now_ms - last_ms < _REFUSED_LOG_INTERVAL_MS:
            return
        log.warning(
            "refusing connection from %s: %d connections open from %s (limit %d); "
            "%d refused by this limit since the last such line",
            peer, count, address, self.limits.max_connections_per_address, self._refused_per_address,
        )
        self._refused_per_address = 0
        self._refused_logged_ms = now_ms

    async def start(self) -> None:
        """Bind every listener (the first one's port becomes ``self.port``).

        Raises:
            BrokerConfigError: a TLS listener without TLS settings or a SASL one without SASL
                settings.
            OSError: a port could not be bound (listeners bound so far are closed again).
        """
        loop = asyncio.get_running_loop()
        if self.listeners is None:
            self._server = await loop.create_server(
                lambda: _Connection(self), self.host, self.port, reuse_address=True
            )
            self._servers = [self._server]
            sockname = self._server.sockets[0].getsockname()
            self.port = sockname[1]
        else:
            await self._start_listeners(loop)
        self._reaper = asyncio.create_task(
            self._reap_idle_connections(), name="flowbus-idle-reaper"
        )

    async def _start_listeners(self, loop: asyncio.AbstractEventLoop) -> None:
        listeners = self.listeners or []
        if any(listener.protocol.uses_tls for listener in listeners) and self.tls is None:
            raise BrokerConfigError("an SSL or SASL_SSL listener needs --ssl-certfile")
        if any(listener.protocol.uses_sasl for listener in listeners) and self.sasl is None:
            raise BrokerConfigError("a SASL listener needs SASL settings")
        context = self.tls.server_context() if self.tls is not None else None
        resolved: list[Listener] = []
        try:
            for listener in listeners:
                tls = listener.protocol.uses_tls
                self._listener_by_name[listener.name] = listener
                server = await loop.create_server(
                    lambda name=listener.name: _Connection(self, self._listener_by_name[name]),  # type: ignore[misc]
                    listener.host,
                    listener.port,
                    reuse_address=True,
                    ssl=context if tls else None,
                    ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT_S if tls else None,
                )
                self._servers.append(server)
                port = server.sockets[0].getsockname()[1]
                self.bound_ports[listener.name] = port
                if listener.advertised_port == 0:  # port 0 advertised: the bound one
                    listener = listener.with_advertised(listener.advertised_host or "127.0.0.1", port)
                    self._listener_by_name[listener.name] = listener  # before the next await
                resolved.append(listener)
        except BaseException:
            for server in self._servers:
                server.close()
            self._servers = []
            raise
        self.listeners = resolved
        self._server = self._servers[0]
        self.host = resolved[0].host
        self.port = self.bound_ports[resolved[0].name]

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
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            conn.close_quietly()
        for server in self._servers:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 5)
        self.codec_executor.shutdown(wait=False, cancel_futures=True)
        if self.sasl is not None:
            self.sasl.close()
