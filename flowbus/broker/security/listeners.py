"""Listeners as Kafka names them, and the server-side TLS context.

A listener is ``[NAME=]PROTOCOL://HOST:PORT`` with PROTOCOL one of Kafka's security protocols:

===================  ======  =====================================================
protocol             TLS     authentication
===================  ======  =====================================================
``PLAINTEXT``        no      none: every connection is ``User:ANONYMOUS``
``SSL``              yes     the client certificate's subject when one is sent
``SASL_PLAINTEXT``   no      SASL (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512)
``SASL_SSL``         yes     SASL over TLS
===================  ======  =====================================================

The listener's name is the protocol unless given (``INTERNAL=SASL_PLAINTEXT://...``), so two
listeners of one protocol need names. Each listener has its own advertised address, what
Metadata, FindCoordinator and DescribeCluster answer on its connections (Kafka's
``advertised.listeners``): ``--advertised-listener NAME://HOST:PORT``.
"""

from __future__ import annotations

import enum
import ssl
from dataclasses import dataclass
from pathlib import Path

from flowbus.broker.security.errors import SecurityConfigError

#: Seconds a TLS handshake may take before the connection is dropped (asyncio's default is 60).
TLS_HANDSHAKE_TIMEOUT_S = 10.0


class SecurityProtocol(enum.Enum):
    """Kafka's ``security.protocol`` values."""

    PLAINTEXT = "PLAINTEXT"
    SSL = "SSL"
    SASL_PLAINTEXT = "SASL_PLAINTEXT"
    SASL_SSL = "SASL_SSL"

    @property
    def uses_tls(self) -> bool:
        return self in (SecurityProtocol.SSL, SecurityProtocol.SASL_SSL)

    @property
    def uses_sasl(self) -> bool:
        return self in (SecurityProtocol.SASL_PLAINTEXT, SecurityProtocol.SASL_SSL)


class ClientAuth(enum.Enum):
    """Kafka's ``ssl.client.auth``: whether a TLS client must present a certificate."""

    NONE = "none"
    REQUESTED = "requested"
    REQUIRED = "required"


def _no_key_password() -> str:
    """The password callback of a key loaded without one: called only if the key is encrypted."""
    raise SecurityConfigError(
        "the TLS key is encrypted: give its password with --ssl-key-password-file or --ssl-key-password-env "
        "(ssl.key.password.file= or ssl.key.password.env= in a --listen URL)"
    )


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """The server's certificate and key, and how client certificates are checked.

    ``cafile`` holds the CAs client certificates must chain to (needed for ``requested`` and
    ``required``).
    """

    certfile: Path
    keyfile: Path | None = None
    cafile: Path | None = None
    client_auth: ClientAuth = ClientAuth.NONE
    #: The key file's password, if it is encrypted.
    key_password: str | None = None

    def server_context(self) -> ssl.SSLContext:
        """A TLS 1.2+ server context.

        Raises:
            SecurityConfigError: a file is missing or does not hold what it should.
        """
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(
                str(self.certfile),
                str(self.keyfile) if self.keyfile else None,
                # Without a password OpenSSL would prompt on the terminal for an encrypted key
                # (and a broker under a supervisor would wait there); say what to give instead.
                password=self.key_password if self.key_password is not None else _no_key_password,
            )
            if self.cafile is not None:
                context.load_verify_locations(cafile=str(self.cafile))
        except (OSError, ssl.SSLError) as exc:
            raise SecurityConfigError(f"cannot load the TLS certificate, key or CA: {exc}") from exc
        if self.client_auth is not ClientAuth.NONE and self.cafile is None:
            raise SecurityConfigError("client certificate authentication needs --ssl-cafile")
        context.verify_mode = {
            ClientAuth.NONE: ssl.CERT_NONE,
            ClientAuth.REQUESTED: ssl.CERT_OPTIONAL,
            ClientAuth.REQUIRED: ssl.CERT_REQUIRED,
        }[self.client_auth]
        return context


@dataclass(frozen=True, slots=True)
class Listener:
    """One address the broker accepts connections on, with its protocol and advertised address."""

    name: str
    protocol: SecurityProtocol
    host: str
    port: int
    advertised_host: str | None = None
    advertised_port: int | None = None

    def with_advertised(self, host: str, port: int) -> Listener:
        return Listener(self.name, self.protocol, self.host, self.port, host, port)

    def __str__(self) -> str:
        return f"{self.name}={self.protocol.value}://{self.host}:{self.port}"


def _split_url(text: str, what: str) -> tuple[str, str, int]:
    scheme, sep, address = text.partition("://")
    if not sep or not scheme:
        raise SecurityConfigError(f"expected {what}, got {text!r}")
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise SecurityConfigError(f"expected {what} with a port in 0..65535, got {text!r}")
    host = host.strip("[]")
    return scheme, host, int(port_text)


def parse_listener(text: str) -> Listener:
    """``[NAME=]PROTOCOL://HOST:PORT`` -> Listener (HOST may be empty: all interfaces).

    Raises:
        SecurityConfigError: malformed, or an unknown protocol.
    """
    name, sep, rest = text.partition("=")
    if not sep:
        name, rest = "", text
    scheme, host, port = _split_url(rest, "[NAME=]PROTOCOL://HOST:PORT")
    try:
        protocol = SecurityProtocol(scheme.upper())
    except ValueError:
        known = ", ".join(p.value for p in SecurityProtocol)
        raise SecurityConfigError(f"unknown security protocol {scheme!r} (one of {known})") from None
    name = (name or protocol.value).upper()
    if not name.replace("_", "").isalnum():
        raise SecurityConfigError(f"a listener name is letters, digits and _, got {name!r}")
    return Listener(name, protocol, host or "0.0.0.0", port)


def parse_advertised(text: str) -> tuple[str, str, int]:
    """``NAME://HOST:PORT`` -> (listener name, host, port).

    Raises:
        SecurityConfigError: malformed.
    """
    name, host, port = _split_url(text, "NAME://HOST:PORT")
    if not host:
        raise SecurityConfigError(f"an advertised address needs a host, got {text!r}")
    return name.upper(), host, port


def resolve_listeners(listeners: list[Listener], advertised: list[tuple[str, str, int]]) -> list[Listener]:
    """Attach each advertised address to its listener; a listener without one advertises its
    own address (``127.0.0.1`` for a wildcard host; port 0: the bound port, filled in later).

    Raises:
        SecurityConfigError: two listeners of one name or one port, or an advertised name with
            no listener.
    """
    names = [listener.name for listener in listeners]
    duplicates = {name for name in names if names.count(name) > 1}
    if duplicates:
        raise SecurityConfigError(
            f"listener names must differ (give NAME=PROTOCOL://...): {', '.join(sorted(duplicates))}"
        )
    ports = [listener.port for listener in listeners if listener.port]
    if len(ports) != len(set(ports)):
        raise SecurityConfigError("two listeners on the same port")
    by_name = {name: (host, port) for name, host, port in advertised}
    unknown = set(by_name) - set(names)
    if unknown:
        raise SecurityConfigError(f"advertised address for no listener: {', '.join(sorted(unknown))}")
    resolved = []
    for listener in listeners:
        host, port = by_name.get(
            listener.name,
            (listener.host if listener.host not in ("0.0.0.0", "::", "") else "127.0.0.1", listener.port),
        )
        resolved.append(listener.with_advertised(host, port))
    return resolved


def principal_of_certificate(peercert: dict[str, object] | None) -> str | None:
    """The subject of a verified client certificate as Kafka's default principal builder
    writes it (RFC 2253 order, most specific first: ``CN=client,O=example``), or None."""
    if not peercert:
        return None
    subject = peercert.get("subject")
    if not isinstance(subject, tuple) or not subject:
        return None
    parts: list[str] = []
    for rdn in reversed(subject):
        for key, value in rdn:
            short = _SHORT_NAMES.get(key, key)
            escaped = str(value).replace("\\", "\\\\").replace(",", "\\,").replace("+", "\\+")
            parts.append(f"{short}={escaped}")
    return ",".join(parts)


_SHORT_NAMES = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "stateOrProvinceName": "ST",
    "localityName": "L",
    "domainComponent": "DC",
    "emailAddress": "EMAILADDRESS",
}
