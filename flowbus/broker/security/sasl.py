"""SASL authentication of one connection: SaslHandshake and SaslAuthenticate (KIP-43, KIP-152).

The state machine, per connection::

    start --SaslHandshake(mech)--> handshaken --SaslAuthenticate...--> authenticated
                                                     | failure
                                                     v
                                      SASL_AUTHENTICATION_FAILED, connection closed

On a SASL listener nothing but ApiVersions, SaslHandshake and SaslAuthenticate is served before
``authenticated`` (:meth:`SaslSession.allows`; the server closes the connection on anything
else). One attempt per connection: a failure, a second handshake, or a token out of order
answers with an error and closes the connection, and a failure is answered only after
:data:`FAILED_AUTHENTICATION_DELAY_S` (Kafka's ``connection.failed.authentication.delay.ms``),
so guessing passwords costs a connection and a delay per guess.

Re-authentication (KIP-368): with ``reauth_ms`` > 0 a SaslAuthenticate v1+ success carries
``session_lifetime_ms``; the client must authenticate again on the same connection before it
ends (same mechanism, same principal), and a request after the end closes the connection. With
0 (the default, as Kafka's ``connections.max.reauth.ms``) sessions do not expire and a second
handshake on an authenticated connection is refused with ILLEGAL_SASL_STATE.

Mechanisms: PLAIN (checked against the user's SCRAM entry by deriving its keys, on a worker
thread since that is PBKDF2), SCRAM-SHA-256 and SCRAM-SHA-512 (:mod:`scram`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import functools
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, NoReturn

from flowbus.broker.errors import CloseAfterResponse
from flowbus.broker.security.credentials import CredentialStore
from flowbus.broker.security.errors import SecurityConfigError
from flowbus.broker.security.scram import (
    ITERATIONS_DEFAULT,
    MECHANISMS,
    SCRAM_SHA_512,
    ScramAuthenticationError,
    ScramCredential,
    ScramProtocolError,
    ScramServer,
)
from flowbus.protocol.api import ApiKey
from flowbus.protocol.error_codes import ErrorCode

log = logging.getLogger(__name__)

Body = dict[str, Any]

PLAIN = "PLAIN"
#: Every mechanism the broker can serve, in the order SaslHandshake lists them.
SUPPORTED_MECHANISMS = (PLAIN, "SCRAM-SHA-256", "SCRAM-SHA-512")
#: Largest SaslAuthenticate token accepted; also the frame limit of a connection that has not
#: authenticated yet (Kafka's ``sasl.server.max.receive.size`` is 512 KiB; PLAIN and SCRAM
#: messages are a few hundred bytes).
SASL_TOKEN_BYTES_MAX = 16 * 1024
UNAUTHENTICATED_FRAME_BYTES_MAX = 64 * 1024
#: A failed authentication is answered this much later (Kafka's default is 100 ms).
FAILED_AUTHENTICATION_DELAY_S = 0.1
#: Requests a connection may send before it has authenticated.
PRE_AUTHENTICATION_APIS = frozenset(
    {ApiKey.API_VERSIONS, ApiKey.SASL_HANDSHAKE, ApiKey.SASL_AUTHENTICATE}
)
ANONYMOUS = "User:ANONYMOUS"


@dataclass(slots=True)
class SaslSettings:
    """What every SASL connection of one server shares.

    Args:
        credentials: the user store PLAIN and SCRAM check against.
        mechanisms: those offered (a subset of :data:`SUPPORTED_MECHANISMS`).
        reauth_ms: Kafka's ``connections.max.reauth.ms``; 0: sessions never expire.
    """

    credentials: CredentialStore
    mechanisms: tuple[str, ...] = SUPPORTED_MECHANISMS
    reauth_ms: int = 0
    #: Keys the fake salts of unknown users (random per process).
    fake_secret: bytes = field(default_factory=lambda: os.urandom(32))
    #: One thread derives PLAIN passwords' keys (PBKDF2): off the event loop, and at most one
    #: at a time, so a flood of PLAIN logins takes one core, not all.
    executor: concurrent.futures.ThreadPoolExecutor = field(
        default_factory=lambda: concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="flowbus-sasl"
        )
    )

    def __post_init__(self) -> None:
        unknown = [m for m in self.mechanisms if m not in SUPPORTED_MECHANISMS]
        if unknown or not self.mechanisms:
            raise SecurityConfigError(
                f"SASL mechanisms are some of {', '.join(SUPPORTED_MECHANISMS)}, got {', '.join(self.mechanisms)}"
            )
        if self.reauth_ms < 0:
            raise SecurityConfigError("connections.max.reauth.ms cannot be negative")

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


class _State(enum.Enum):
    START = "start"
    HANDSHAKEN = "handshaken"
    SCRAM_FIRST = "scram-first"
    CHECKING = "checking"
    AUTHENTICATED = "authenticated"
    FAILED = "failed"


class SaslSession:
    """The authentication state of one connection on a SASL listener."""

    def __init__(self, settings: SaslSettings) -> None:
        self._settings = settings
        self._state = _State.START
        self._mechanism: str | None = None
        self._scram: ScramServer | None = None
        #: The principal once authenticated (kept through re-authentication).
        self.principal: str | None = None
        #: Monotonic deadline of the session (None: no expiry); see KIP-368.
        self._expires_s: float | None = None
        self._reauthenticating = False

    @property
    def authenticated(self) -> bool:
        """The last exchange succeeded (False halfway through a re-authentication)."""
        return self._state is _State.AUTHENTICATED

    def allows(self, api_key: int) -> bool:
        """May a request of ``api_key`` be served now? False closes the connection."""
        if api_key in PRE_AUTHENTICATION_APIS:
            return True
        if self.principal is None or self._state is _State.FAILED:
            return False
        return self._expires_s is None or time.monotonic() < self._expires_s

    def expired_reason(self) -> str:
        if self.principal is None:
            return "request before SASL authentication"
        return "SASL session expired without re-authentication (KIP-368)"

    # -- SaslHandshake ---------------------------------------------------------------------

    def handshake(self, mechanism: str) -> Body:
        offered = list(self._settings.mechanisms)
        if self._state is _State.AUTHENTICATED and self._settings.reauth_ms > 0:
            # KIP-368 re-authentication: the same mechanism as the first time.
            if mechanism != self._mechanism:
                self._fail()
                raise CloseAfterResponse(
                    "re-authentication with another mechanism",
                    {"error_code": ErrorCode.ILLEGAL_SASL_STATE, "mechanisms": offered},
                )
            self._reauthenticating = True
            self._state = _State.HANDSHAKEN
            return {"error_code": ErrorCode.NONE, "mechanisms": offered}
        if self._state is not _State.START:
            self._fail()
            raise CloseAfterResponse(
                f"SaslHandshake in state {self._state.value}",
                {"error_code": ErrorCode.ILLEGAL_SASL_STATE, "mechanisms": offered},
            )
        if mechanism not in offered:
            self._fail()
            raise CloseAfterResponse(
                f"unsupported SASL mechanism {mechanism[:40]!r}",
                {"error_code": ErrorCode.UNSUPPORTED_SASL_MECHANISM, "mechanisms": offered},
            )
        self._mechanism = mechanism
        self._state = _State.HANDSHAKEN
        return {"error_code": ErrorCode.NONE, "mechanisms": offered}

    # -- SaslAuthenticate ------------------------------------------------------------------

    async def authenticate(self, api_version: int, auth_bytes: bytes) -> Body:
        """One SaslAuthenticate: the answer, or CloseAfterResponse carrying the error answer."""
        if len(auth_bytes) > SASL_TOKEN_BYTES_MAX:
            self._fail()
            raise CloseAfterResponse(
                f"SASL token of {len(auth_bytes)} bytes",
                _authenticate_error(ErrorCode.SASL_AUTHENTICATION_FAILED, "SASL token too large"),
            )
        state = self._state
        if state is _State.HANDSHAKEN and self._mechanism == PLAIN:
            self._state = _State.CHECKING
            user = await self._check_plain(auth_bytes)
            return self._succeed(user, api_version, b"")
        if state is _State.HANDSHAKEN:
            mechanism = MECHANISMS[self._mechanism or ""]
            self._scram = ScramServer(
                mechanism,
                lambda name: self._settings.credentials.get(name, mechanism),
                self._settings.fake_secret,
                ITERATIONS_DEFAULT,
            )
            try:
                server_first = self._scram.receive_client_first(auth_bytes)
            except (ScramProtocolError, ScramAuthenticationError) as exc:
                await self._refuse(str(exc))
            self._state = _State.SCRAM_FIRST
            return {"error_code": ErrorCode.NONE, "error_message": None, "auth_bytes": server_first,
                    "session_lifetime_ms": 0}
        if state is _State.SCRAM_FIRST and self._scram is not None:
            self._state = _State.CHECKING
            try:
                server_final = self._scram.receive_client_final(auth_bytes)
            except (ScramProtocolError, ScramAuthenticationError) as exc:
                await self._refuse(f"{exc} (user {self._scram.user!r})")
            return self._succeed(self._scram.user or "", api_version, server_final)
        self._fail()
        raise CloseAfterResponse(
            f"SaslAuthenticate in state {state.value}",
            _authenticate_error(ErrorCode.ILLEGAL_SASL_STATE, f"unexpected SaslAuthenticate ({state.value})"),
        )

    async def _check_plain(self, token: bytes) -> str:
        """``authzid NUL user NUL password`` (RFC 4616) checked against the user's SCRAM entry."""
        parts = token.split(b"\x00")
        if len(parts) != 3:
            await self._refuse("malformed PLAIN token")
        try:
            authzid, user, password = (part.decode("utf-8") for part in parts)
        except UnicodeDecodeError:
            await self._refuse("PLAIN token is not UTF-8")
        if authzid and authzid != user:
            await self._refuse(f"authorization id differs from user {user!r}")
        credential = self._settings.credentials.plain_credential(user)
        # An unknown user costs the same derivation as a known one: the answer's timing does
        # not tell which names exist.
        check = credential or _decoy_credential()
        loop = asyncio.get_running_loop()
        matches = await loop.run_in_executor(self._settings.executor, check.matches_password, password)
        if credential is None or not matches:
            await self._refuse(f"wrong password or unknown user {user!r}")
        return user

    def _succeed(self, user: str, api_version: int, auth_bytes: bytes) -> Body:
        principal = f"User:{user}"
        if self._reauthenticating and principal != self.principal:
            self._fail()
            raise CloseAfterResponse(
                f"re-authentication as {principal} on a connection of {self.principal}",
                _authenticate_error(ErrorCode.SASL_AUTHENTICATION_FAILED,
                                    "cannot change principals during re-authentication"),
            )
        self.principal = principal
        self._state = _State.AUTHENTICATED
        self._reauthenticating = False
        lifetime_ms = self._settings.reauth_ms if api_version >= 1 else 0
        # Session expiry only for clients that can see the lifetime (v1+, KIP-368).
        self._expires_s = time.monotonic() + lifetime_ms / 1000 if lifetime_ms else None
        return {"error_code": ErrorCode.NONE, "error_message": None, "auth_bytes": auth_bytes,
                "session_lifetime_ms": lifetime_ms}

    async def _refuse(self, reason: str) -> NoReturn:
        """Answer SASL_AUTHENTICATION_FAILED (after the delay) and close: always raises."""
        self._fail()
        await asyncio.sleep(FAILED_AUTHENTICATION_DELAY_S)
        mechanism = self._mechanism or "?"
        raise CloseAfterResponse(
            f"SASL {mechanism} authentication failed: {reason}",
            _authenticate_error(
                ErrorCode.SASL_AUTHENTICATION_FAILED,
                f"Authentication failed: invalid credentials with SASL mechanism {mechanism}",
            ),
        )

    def _fail(self) -> None:
        self._state = _State.FAILED
        self._reauthenticating = False
        self.principal = None


def _authenticate_error(code: int, message: str) -> Body:
    return {"error_code": code, "error_message": message, "auth_bytes": b"", "session_lifetime_ms": 0}


@functools.cache
def _decoy_credential() -> ScramCredential:
    """Checked for unknown users so that they take as long as a usual user (its password is
    random); made on first use, not at import (it costs one PBKDF2)."""
    return ScramCredential.from_password(
        SCRAM_SHA_512, os.urandom(16).hex(), iterations=ITERATIONS_DEFAULT, salt=os.urandom(32)
    )
