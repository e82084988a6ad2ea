"""SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802, RFC 7677) as Kafka uses them (KIP-84): no I/O.

A stored credential is what RFC 5802 section 3 lets a server keep instead of the password:
the salt, the iteration count, ``StoredKey = H(HMAC(SaltedPassword, "Client Key"))`` and
``ServerKey = HMAC(SaltedPassword, "Server Key")``, where ``SaltedPassword = PBKDF2(password,
salt, iterations)``. Knowing them lets the server check a client's proof and prove itself, but
not log in as the user.

:class:`ScramServer` is one server-side exchange: ``client-first`` in, ``server-first`` out,
``client-final`` in, ``server-final`` out. A failed check raises :class:`ScramAuthenticationError`
(the peer's fault: the connection is answered SASL_AUTHENTICATION_FAILED and closed) and a
malformed message :class:`ScramProtocolError`. Every comparison of secrets uses
``hmac.compare_digest``.

Example::

    credential = ScramCredential.from_password(SCRAM_SHA_256, "secret", iterations=4096)
    server = ScramServer(SCRAM_SHA_256, lookup={"alice": credential}.get)
    server_first = server.receive_client_first(b"n,,n=alice,r=abc")
    server_final = server.receive_client_final(client_final)   # raises on a wrong proof
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass

from flowbus.broker.security.errors import CredentialError

#: Kafka's limits on a SCRAM credential's iterations (``ScramMechanism.minIterations`` and the
#: admin client's maximum): fewer is too cheap to brute-force, more is a CPU denial of service
#: for anyone allowed to log in over PLAIN.
ITERATIONS_MIN = 4096
ITERATIONS_MAX = 16384
#: Iterations of a credential ``flowbus users add`` makes, and of the fake credentials unknown
#: users are answered with (so that their answers look like a usual user's).
ITERATIONS_DEFAULT = 8192
#: The salt a new credential gets, in bytes (RFC 5802 leaves it to us; Kafka uses 32).
SALT_BYTES = 32
#: Salts accepted from AlterUserScramCredentials, in bytes.
SALT_BYTES_MIN = 8
SALT_BYTES_MAX = 256
#: Server nonce, in random bytes before base64.
NONCE_BYTES = 24
#: A client nonce longer than this is refused (it is echoed back and hashed).
CLIENT_NONCE_CHARS_MAX = 256
#: User names: non-empty, at most this many characters.
USER_NAME_CHARS_MAX = 255


@dataclass(frozen=True, slots=True)
class ScramMechanism:
    """One SCRAM variant: its SASL name, its hash and its Kafka mechanism code (int8)."""

    name: str
    hash_name: str
    #: ``ScramMechanism`` codes of DescribeUserScramCredentials / AlterUserScramCredentials.
    code: int

    def digest(self, data: bytes) -> bytes:
        return hashlib.new(self.hash_name, data).digest()

    def hmac(self, key: bytes, data: bytes) -> bytes:
        return hmac.new(key, data, self.hash_name).digest()

    def salted_password(self, password: str, salt: bytes, iterations: int) -> bytes:
        """RFC 5802's Hi(): PBKDF2 with this hash (the expensive step, ``iterations`` rounds)."""
        return hashlib.pbkdf2_hmac(self.hash_name, password.encode("utf-8"), salt, iterations)


SCRAM_SHA_256 = ScramMechanism("SCRAM-SHA-256", "sha256", 1)
SCRAM_SHA_512 = ScramMechanism("SCRAM-SHA-512", "sha512", 2)
#: Mechanisms by SASL name and by Kafka code.
MECHANISMS: dict[str, ScramMechanism] = {m.name: m for m in (SCRAM_SHA_256, SCRAM_SHA_512)}
MECHANISMS_BY_CODE: dict[int, ScramMechanism] = {m.code: m for m in MECHANISMS.values()}


def check_iterations(iterations: int) -> None:
    """Raises CredentialError unless ITERATIONS_MIN <= iterations <= ITERATIONS_MAX."""
    if not ITERATIONS_MIN <= iterations <= ITERATIONS_MAX:
        raise CredentialError(
            f"iterations must be between {ITERATIONS_MIN} and {ITERATIONS_MAX}, got {iterations}"
        )


def check_user_name(name: str) -> None:
    """Raises CredentialError for an empty or overlong name (any other text is allowed: SCRAM
    escapes ``,`` and ``=`` on the wire)."""
    if not name or len(name) > USER_NAME_CHARS_MAX:
        raise CredentialError(f"a user name has 1 to {USER_NAME_CHARS_MAX} characters, got {len(name)}")


@dataclass(frozen=True, slots=True)
class ScramCredential:
    """What the broker keeps of one user's password for one mechanism (never the password)."""

    mechanism: ScramMechanism
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    @classmethod
    def from_salted_password(
        cls, mechanism: ScramMechanism, salted_password: bytes, salt: bytes, iterations: int
    ) -> ScramCredential:
        """The credential of an already salted password (AlterUserScramCredentials sends that).

        Raises:
            CredentialError: iterations out of range, a salt of unusual size, or a salted
                password that is not one digest long.
        """
        check_iterations(iterations)
        if not SALT_BYTES_MIN <= len(salt) <= SALT_BYTES_MAX:
            raise CredentialError(f"a salt has {SALT_BYTES_MIN} to {SALT_BYTES_MAX} bytes, got {len(salt)}")
        if len(salted_password) != hashlib.new(mechanism.hash_name).digest_size:
            raise CredentialError(f"a {mechanism.name} salted password has the hash's size")
        client_key = mechanism.hmac(salted_password, b"Client Key")
        return cls(
            mechanism,
            salt,
            iterations,
            mechanism.digest(client_key),
            mechanism.hmac(salted_password, b"Server Key"),
        )

    @classmethod
    def from_password(
        cls, mechanism: ScramMechanism, password: str, *, iterations: int, salt: bytes | None = None
    ) -> ScramCredential:
        """A new credential for ``password`` with a random salt (``salt`` is for tests)."""
        check_iterations(iterations)
        salt = os.urandom(SALT_BYTES) if salt is None else salt
        salted = mechanism.salted_password(password, salt, iterations)
        return cls.from_salted_password(mechanism, salted, salt, iterations)

    def matches_password(self, password: str) -> bool:
        """Derive the keys from ``password`` and compare (SASL/PLAIN against a SCRAM entry).

        Costs ``iterations`` PBKDF2 rounds: call it off the event loop.
        """
        salted = self.mechanism.salted_password(password, self.salt, self.iterations)
        client_key = self.mechanism.hmac(salted, b"Client Key")
        return hmac.compare_digest(self.mechanism.digest(client_key), self.stored_key)


class ScramProtocolError(Exception):
    """A SCRAM message that does not parse, or arrives out of order (the client's fault)."""


class ScramAuthenticationError(Exception):
    """The proof did not match, or the user is unknown (reported the same way on purpose)."""


def _attributes(message: str) -> list[tuple[str, str]]:
    """``a=x,b=y`` as pairs, in order; a part without ``=`` is a protocol error."""
    pairs = []
    for part in message.split(","):
        name, sep, value = part.partition("=")
        if not sep or len(name) != 1:
            raise ScramProtocolError(f"bad SCRAM attribute {part[:20]!r}")
        pairs.append((name, value))
    return pairs


def _unescape_name(saslname: str) -> str:
    """RFC 5802 saslname: ``=2C`` is ``,`` and ``=3D`` is ``=``; any other ``=`` is an error."""
    if "=" in saslname.replace("=2C", "").replace("=3D", ""):
        raise ScramProtocolError("bad escape in the user name")
    return saslname.replace("=2C", ",").replace("=3D", "=")


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as exc:
        raise ScramProtocolError(f"{what} is not base64") from exc


Lookup = Callable[[str], "ScramCredential | None"]


class ScramServer:
    """The server side of one SCRAM exchange (two client messages, two answers).

    Args:
        mechanism: the variant negotiated by SaslHandshake.
        lookup: user name -> that user's credential for ``mechanism``, or None.
        fake_secret: keys the fake salt of unknown users, so that an unknown name gets the same
            kind of answer (a stable salt and the default iterations) as a known one and the
            exchange fails only at the proof: user names cannot be probed.
        server_nonce: fixed server nonce, for test vectors only (default: random).
    """

    def __init__(self, mechanism: ScramMechanism, lookup: Lookup, fake_secret: bytes,
                 fake_iterations: int = ITERATIONS_DEFAULT, *, server_nonce: str | None = None) -> None:
        self.mechanism = mechanism
        self._lookup = lookup
        self._fake_secret = fake_secret
        self._fake_iterations = fake_iterations
        self.user: str | None = None
        self._credential: ScramCredential | None = None
        self._client_first_bare = ""
        self._server_first = ""
        self._nonce = ""
        self._gs2_header = ""
        self._step = 0
        self._server_nonce = server_nonce

    def receive_client_first(self, data: bytes) -> bytes:
        """Parse ``client-first`` and return ``server-first`` (``r=..,s=..,i=..``).

        Raises:
            ScramProtocolError: malformed, channel binding asked for, or an extension other
                than none (Kafka's ``tokenauth`` delegation tokens are not supported).
        """
        if self._step != 0:
            raise ScramProtocolError("client-first received twice")
        self._step = 1
        text = _decode_utf8(data)
        # gs2-header: "n" (no channel binding) or "y" (client supports it, server does not
        # advertise it), then an optional authzid, each followed by a comma.
        flag, sep1, rest = text.partition(",")
        authzid, sep2, bare = rest.partition(",")
        if not (sep1 and sep2) or flag not in ("n", "y"):
            raise ScramProtocolError("bad gs2 header (channel binding is not supported)")
        if authzid and not authzid.startswith("a="):
            raise ScramProtocolError("bad authzid in the gs2 header")
        self._gs2_header = f"{flag},{authzid},"
        pairs = _attributes(bare)
        if len(pairs) < 2 or pairs[0][0] != "n" or pairs[1][0] != "r":
            raise ScramProtocolError("client-first must start with n= and r=")
        if len(pairs) > 2:
            raise ScramProtocolError("SCRAM extensions are not supported")
        user = _unescape_name(pairs[0][1])
        authz = _unescape_name(authzid[2:]) if authzid else ""
        if authz and authz != user:
            raise ScramAuthenticationError("authorization id differs from the user name")
        client_nonce = pairs[1][1]
        if not client_nonce or len(client_nonce) > CLIENT_NONCE_CHARS_MAX or "," in client_nonce:
            raise ScramProtocolError("bad client nonce")
        self.user = user
        credential = self._lookup(user) if user and len(user) <= USER_NAME_CHARS_MAX else None
        self._credential = credential
        if credential is not None:
            salt, iterations = credential.salt, credential.iterations
        else:
            salt = hmac.new(self._fake_secret, user.encode("utf-8"), "sha256").digest()
            iterations = self._fake_iterations
        server_nonce = self._server_nonce or base64.b64encode(os.urandom(NONCE_BYTES)).decode("ascii")
        self._nonce = client_nonce + server_nonce
        self._client_first_bare = bare
        self._server_first = (
            f"r={self._nonce},s={base64.b64encode(salt).decode('ascii')},i={iterations}"
        )
        return self._server_first.encode("utf-8")

    def receive_client_final(self, data: bytes) -> bytes:
        """Check ``client-final`` and return ``server-final`` (``v=ServerSignature``).

        Raises:
            ScramProtocolError: malformed or out of order.
            ScramAuthenticationError: wrong channel binding, nonce or proof, or unknown user.
        """
        if self._step != 1:
            raise ScramProtocolError("client-final out of order")
        self._step = 2
        text = _decode_utf8(data)
        without_proof, sep, proof_part = text.rpartition(",p=")
        if not sep:
            raise ScramProtocolError("client-final has no proof")
        pairs = _attributes(without_proof)
        if len(pairs) != 2 or pairs[0][0] != "c" or pairs[1][0] != "r":
            raise ScramProtocolError("client-final must be c=,r=,p=")
        channel_binding = _b64decode(pairs[0][1], "channel binding")
        # The nonce must end with ours (client nonce + our fresh server nonce), as Kafka's
        # ScramSaslServer checks: RFC 5802 wants it equal, but librdkafka 2.0.x sends the client
        # nonce twice (client nonce + full nonce) and works with Kafka. The fresh random part
        # must be there either way, so a replayed exchange still fails, and the proof covers
        # the message as sent.
        nonce = pairs[1][1]
        if len(nonce) > 2 * len(self._nonce) or not hmac.compare_digest(
            nonce[-len(self._nonce):].encode("utf-8"), self._nonce.encode("utf-8")
        ):
            raise ScramAuthenticationError("nonce mismatch")
        if not hmac.compare_digest(channel_binding, self._gs2_header.encode("utf-8")):
            raise ScramAuthenticationError("channel binding mismatch")
        proof = _b64decode(proof_part, "proof")
        credential = self._credential
        if credential is None:
            raise ScramAuthenticationError("unknown user")
        auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}".encode()
        mechanism = self.mechanism
        client_signature = mechanism.hmac(credential.stored_key, auth_message)
        if len(proof) != len(client_signature):
            raise ScramAuthenticationError("proof of the wrong size")
        client_key = bytes(a ^ b for a, b in zip(proof, client_signature))
        if not hmac.compare_digest(mechanism.digest(client_key), credential.stored_key):
            raise ScramAuthenticationError("wrong proof")
        server_signature = mechanism.hmac(credential.server_key, auth_message)
        return b"v=" + base64.b64encode(server_signature)


def _decode_utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ScramProtocolError("SCRAM message is not UTF-8") from exc


def escape_name(name: str) -> str:
    """A user name as a SCRAM saslname (``,`` and ``=`` escaped), for clients and tests."""
    return name.replace("=", "=3D").replace(",", "=2C")
