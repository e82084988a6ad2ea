"""Everything ``flowbus broker`` needs to secure its listeners, in one object."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from flowbus.broker.security.errors import SecurityConfigError
from flowbus.broker.security.listeners import (
    ClientAuth,
    Listener,
    TlsSettings,
    parse_listener,
    resolve_listeners,
)
from flowbus.broker.security.sasl import SUPPORTED_MECHANISMS
from flowbus.secret_sources import SECRET_SOURCES, SecretSourceError, read_secret

#: Query parameters of a listener URL (``parse_listen_url``), with Kafka's broker setting names.
LISTEN_URL_PARAMETERS = (
    "ssl.certfile", "ssl.keyfile", "ssl.cafile", "ssl.client.auth",
    "ssl.key.password", "ssl.key.password.file", "ssl.key.password.env",
    "sasl.mechanisms", "connections.max.reauth.ms", "advertised",
)


def key_password(params: dict[str, str]) -> str | None:
    """The password of an encrypted ``ssl.keyfile`` (Kafka's ``ssl.key.password``): given as is
    (the Python API), or from ``ssl.key.password.file=PATH`` / ``ssl.key.password.env=VARNAME``
    (the command line, which refuses the first form).

    Raises:
        SecurityConfigError: the file cannot be read or the variable is not set.
    """
    for source in SECRET_SOURCES:
        where = params.get(f"ssl.key.password.{source}")
        if where is not None:
            try:
                return read_secret("ssl.key.password", source, where)
            except SecretSourceError as exc:
                raise SecurityConfigError(str(exc)) from exc
    return params.get("ssl.key.password")


@dataclass(frozen=True, slots=True)
class SecuritySettings:
    """Listeners, TLS and SASL of one broker (``docs/security.md``).

    Args:
        listeners: every listener, advertised addresses resolved (``resolve_listeners``); the
            first one is the one the ready line names.
        tls: certificate, key and client-certificate checking of SSL and SASL_SSL listeners.
        sasl_mechanisms: mechanisms SASL listeners offer.
        reauth_ms: Kafka's ``connections.max.reauth.ms`` (KIP-368); 0: sessions never expire.
    """

    listeners: tuple[Listener, ...]
    tls: TlsSettings | None = None
    sasl_mechanisms: tuple[str, ...] = SUPPORTED_MECHANISMS
    reauth_ms: int = 0

    @property
    def uses_sasl(self) -> bool:
        return any(listener.protocol.uses_sasl for listener in self.listeners)


def parse_listen_url(text: str) -> SecuritySettings:
    """One secured listener from a URL, for ``flowbus worker --listen`` (the embedded broker):
    ``PROTOCOL://HOST:PORT?ssl.certfile=..&ssl.keyfile=..&ssl.cafile=..&ssl.client.auth=required
    &sasl.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512&connections.max.reauth.ms=0
    &advertised=HOST:PORT`` (every parameter optional; the same settings as ``flowbus broker``),
    and for an encrypted key ``ssl.key.password.file=PATH`` or ``ssl.key.password.env=VARNAME``
    (:func:`key_password`).

    Raises:
        SecurityConfigError: a malformed URL, an unknown parameter, or TLS without a certificate.
    """
    spec, _, query = text.partition("?")
    listener = parse_listener(spec)
    params: dict[str, str] = {}
    for item in filter(None, query.split("&")):
        name, sep, value = item.partition("=")
        if not sep or name not in LISTEN_URL_PARAMETERS:
            known = ", ".join(LISTEN_URL_PARAMETERS)
            raise SecurityConfigError(f"unknown listener parameter {name!r} (known: {known})")
        params[name] = urllib.parse.unquote(value)
    advertised: list[tuple[str, str, int]] = []
    if "advertised" in params:
        host, _, port = params["advertised"].rpartition(":")
        if not host or not port.isdigit():
            raise SecurityConfigError(f"advertised=HOST:PORT, got {params['advertised']!r}")
        advertised.append((listener.name, host.strip("[]"), int(port)))
    tls = None
    if "ssl.certfile" in params:
        try:
            client_auth = ClientAuth(params.get("ssl.client.auth", "none").lower())
        except ValueError:
            raise SecurityConfigError("ssl.client.auth is none, requested or required") from None
        tls = TlsSettings(
            Path(params["ssl.certfile"]),
            Path(params["ssl.keyfile"]) if "ssl.keyfile" in params else None,
            Path(params["ssl.cafile"]) if "ssl.cafile" in params else None,
            client_auth,
            key_password(params),
        )
    elif listener.protocol.uses_tls:
        raise SecurityConfigError(f"a {listener.protocol.value} listener needs ssl.certfile=PATH")
    mechanisms = tuple(
        m.strip().upper() for m in params.get("sasl.mechanisms", ",".join(SUPPORTED_MECHANISMS)).split(",")
        if m.strip()
    )
    reauth = params.get("connections.max.reauth.ms", "0")
    if not reauth.isdigit():
        raise SecurityConfigError(f"connections.max.reauth.ms is a number of ms, got {reauth!r}")
    return SecuritySettings(tuple(resolve_listeners([listener], advertised)), tls, mechanisms, int(reauth))
