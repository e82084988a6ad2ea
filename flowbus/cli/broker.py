"""``flowbus broker``: run the Kafka-protocol broker in the foreground."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import click

from flowbus.broker.config import BrokerConfig, parse_host_port
from flowbus.broker.errors import BrokerConfigError, BrokerError

if TYPE_CHECKING:
    from flowbus.broker.security.acls import AuthorizerConfig
    from flowbus.broker.security.settings import SecuritySettings


def _host_port(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> tuple[str, int] | None:
    if value is None:
        return None
    try:
        return parse_host_port(value)
    except BrokerConfigError as exc:
        raise click.BadParameter(str(exc)) from exc


@click.command("broker")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("./flowbus-data"),
    show_default=True,
    help="Directory of the logs and broker state.",
)
@click.option(
    "--listen",
    default="127.0.0.1:9092",
    show_default=True,
    callback=_host_port,
    help="HOST:PORT to accept connections on (port 0 picks a free port).",
)
@click.option(
    "--advertise",
    default=None,
    callback=_host_port,
    help="HOST:PORT clients are told to connect to (default: the listen address).",
)
@click.option(
    "-l",
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
)
@click.option(
    "--no-auto-create",
    is_flag=True,
    help="Do not create topics on first use (Metadata).",
)
@click.option(
    "--auto-create-topics-partitions",
    "auto_create_partitions",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Partitions of auto-created topics and CreateTopics with -1.",
)
@click.option(
    "--group-initial-rebalance-delay-ms",
    type=click.IntRange(0),
    default=3000,
    show_default=True,
    help="Wait after the first member joins an empty group (0 in tests).",
)
@click.option(
    "--group-min-session-timeout-ms",
    type=click.IntRange(1),
    default=6000,
    show_default=True,
)
@click.option(
    "--group-max-session-timeout-ms",
    type=click.IntRange(1),
    default=1_800_000,
    show_default=True,
)
@click.option(
    "--transaction-max-timeout-ms",
    type=click.IntRange(1),
    default=900_000,
    show_default=True,
    help="Largest transaction.timeout.ms a transactional producer may ask for.",
)
@click.option(
    "--connections-max-idle-ms",
    type=click.IntRange(1),
    default=600_000,
    show_default=True,
    help="Close connections idle for longer than this.",
)
@click.option(
    "--flush-messages",
    "flush_messages",
    type=click.IntRange(1),
    default=None,
    help="Kafka's log.flush.interval.messages: every topic's flush.messages unless it sets its "
    "own. 1 = a produce is answered only after an fsync covers its records (durable acks, "
    "with group commit). Default: no count limit (fsync within flush.ms, 1 s).",
)
@click.option(
    "--max-frame-bytes",
    type=click.IntRange(1024),
    default=32 * 1024 * 1024,
    show_default=True,
    help="Largest request accepted; larger ones close the connection.",
)
@click.option(
    "--max-in-flight-requests-per-connection",
    type=click.IntRange(1),
    default=16,
    show_default=True,
    help="Requests read but not yet answered on one connection; reading pauses at this many.",
)
@click.option(
    "--max-buffered-request-bytes",
    type=click.IntRange(1024),
    default=256 * 1024 * 1024,
    show_default=True,
    help="Bytes of unfinished requests buffered across connections; beyond it, large ones wait.",
)
@click.option(
    "--max-pending-response-bytes",
    type=click.IntRange(1024),
    default=256 * 1024 * 1024,
    show_default=True,
    help="Response bytes not yet read by clients; beyond it, Fetches of slow readers wait.",
)
@click.option(
    "--log-fd-budget",
    type=click.IntRange(0),
    default=None,
    help="File descriptors the partition logs may hold [default: RLIMIT_NOFILE minus a quarter].",
)
@click.option(
    "--max-connections",
    type=click.IntRange(1),
    default=4_096,
    show_default=True,
    help="Open connections at once; new ones beyond this are closed at once.",
)
@click.option(
    "--max-connections-per-address",
    type=click.IntRange(1),
    default=1_000,
    show_default=True,
    help="Open connections from one IP address; new ones beyond this are closed at once.",
)
@click.option(
    "--request-receive-timeout-ms",
    type=click.IntRange(1),
    default=30_000,
    show_default=True,
    help="Close a connection whose request has not arrived whole this long after its first byte.",
)
@click.option(
    "--metrics",
    "--web",
    "metrics_listen",
    metavar="HOST:PORT",
    default=None,
    callback=_host_port,
    help="Serve Prometheus metrics at http://HOST:PORT/metrics and the live dashboard at "
    "http://HOST:PORT/ (port 0 picks a free port; default: off; --web is the same option, "
    "named like the worker's). See docs/operations.md.",
)
@click.option(
    "--listener",
    "listener_specs",
    multiple=True,
    metavar="[NAME=]PROTOCOL://HOST:PORT",
    help="A listener, repeatable: PROTOCOL is PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL; "
    "NAME (default: the protocol) tells two listeners of one protocol apart. With --listener, "
    "--listen adds a PLAINTEXT listener only when given. See docs/security.md.",
)
@click.option(
    "--advertised-listener",
    "advertised_specs",
    multiple=True,
    metavar="NAME://HOST:PORT",
    help="What Metadata tells clients of listener NAME to connect to (repeatable; default: "
    "the listener's own address).",
)
@click.option("--ssl-certfile", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="PEM certificate (chain) of SSL and SASL_SSL listeners.")
@click.option("--ssl-keyfile", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="PEM private key (default: in --ssl-certfile).")
@click.option("--ssl-key-password-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Kafka's ssl.key.password of an encrypted --ssl-keyfile: the first line of this file.")
@click.option("--ssl-key-password-env", metavar="VARNAME", default=None,
              help="Kafka's ssl.key.password of an encrypted --ssl-keyfile: this environment variable.")
@click.option("--ssl-cafile", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="PEM CA certificates client certificates must chain to.")
@click.option(
    "--ssl-client-auth",
    type=click.Choice(["none", "requested", "required"], case_sensitive=False),
    default="none",
    show_default=True,
    help="Whether TLS clients must present a certificate; its subject becomes the principal.",
)
@click.option(
    "--sasl-mechanisms",
    default="PLAIN,SCRAM-SHA-256,SCRAM-SHA-512",
    show_default=True,
    help="Comma-separated SASL mechanisms SASL listeners offer.",
)
@click.option(
    "--connections-max-reauth-ms",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="KIP-368: SASL clients must re-authenticate within this long (0: sessions never expire).",
)
@click.option(
    "--authorizer",
    type=click.Choice(["on", "off"], case_sensitive=False),
    default="off",
    show_default=True,
    help="Check every request against the ACLs (flowbus acls): on, a client may do only what an "
    "ACL allows. See docs/security.md.",
)
@click.option(
    "--super-users",
    default="",
    metavar="User:A;User:B",
    help="Principals the authorizer allows everything (Kafka's super.users).",
)
@click.option(
    "--allow-everyone-if-no-acl-found",
    is_flag=True,
    default=False,
    help="With --authorizer on, allow a resource no ACL names to everyone (default: deny).",
)
def broker(
    data_dir: Path,
    listen: tuple[str, int],
    advertise: tuple[str, int] | None,
    log_level: str,
    no_auto_create: bool,
    auto_create_partitions: int,
    group_initial_rebalance_delay_ms: int,
    group_min_session_timeout_ms: int,
    group_max_session_timeout_ms: int,
    transaction_max_timeout_ms: int,
    connections_max_idle_ms: int,
    max_frame_bytes: int,
    max_in_flight_requests_per_connection: int,
    max_buffered_request_bytes: int,
    max_pending_response_bytes: int,
    log_fd_budget: int | None,
    flush_messages: int | None,
    max_connections: int,
    max_connections_per_address: int,
    request_receive_timeout_ms: int,
    metrics_listen: tuple[str, int] | None,
    listener_specs: tuple[str, ...],
    advertised_specs: tuple[str, ...],
    ssl_certfile: Path | None,
    ssl_keyfile: Path | None,
    ssl_key_password_file: Path | None,
    ssl_key_password_env: str | None,
    ssl_cafile: Path | None,
    ssl_client_auth: str,
    sasl_mechanisms: str,
    connections_max_reauth_ms: int,
    authorizer: str,
    super_users: str,
    allow_everyone_if_no_acl_found: bool,
) -> None:
    """Run the Kafka-protocol broker until SIGTERM or Ctrl-C."""
    # Imported here so that other commands do not pay for loading the broker.
    from flowbus.broker.group_coordinator import GroupConfig
    from flowbus.broker.runner import run_broker
    from flowbus.broker.server import ServerLimits
    from flowbus.broker.txn_coordinator import TxnConfig

    logging.basicConfig(
        level=getattr(logging, log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("flowbus.broker.ready").setLevel(logging.INFO)
    host, port = listen
    adv_host, adv_port = (
        advertise
        if advertise is not None
        else (host if host not in ("0.0.0.0", "::", "") else "127.0.0.1", port)
    )
    security = None
    if listener_specs or advertised_specs or ssl_certfile is not None:
        ctx = click.get_current_context()
        listen_given = ctx.get_parameter_source("listen") is not click.core.ParameterSource.DEFAULT
        security = _security_settings(
            listener_specs, advertised_specs, (host, port, adv_host, adv_port) if listen_given or not listener_specs else None,
            ssl_certfile, ssl_keyfile, ssl_cafile, ssl_client_auth, sasl_mechanisms, connections_max_reauth_ms,
            key_password=_key_password(ssl_key_password_file, ssl_key_password_env),
        )
        first = security.listeners[0]
        host, port = first.host, first.port
        adv_host, adv_port = first.advertised_host or host, first.advertised_port or 0
    config = BrokerConfig(
        data_dir=data_dir,
        advertised_host=adv_host,
        advertised_port=adv_port,
        auto_create_topics_enable=not no_auto_create,
        auto_create_topics_partitions=auto_create_partitions,
        groups=GroupConfig(
            group_initial_rebalance_delay_ms=group_initial_rebalance_delay_ms,
            group_min_session_timeout_ms=group_min_session_timeout_ms,
            group_max_session_timeout_ms=group_max_session_timeout_ms,
        ),
        transactions=TxnConfig(transaction_max_timeout_ms=transaction_max_timeout_ms),
        **({} if flush_messages is None else {"log_flush_interval_messages": flush_messages}),
        log_fd_budget=log_fd_budget,
        authorizer=_authorizer_config(authorizer, super_users, allow_everyone_if_no_acl_found),
    )
    limits = ServerLimits(
        max_frame_bytes=max_frame_bytes,
        max_in_flight_requests_per_connection=max_in_flight_requests_per_connection,
        max_buffered_request_bytes=max_buffered_request_bytes,
        max_pending_response_bytes=max_pending_response_bytes,
        connections_max_idle_ms=connections_max_idle_ms,
        max_connections=max_connections,
        max_connections_per_address=max_connections_per_address,
        request_receive_timeout_ms=request_receive_timeout_ms,
    )
    try:
        asyncio.run(
            run_broker(config, listen_host=host, listen_port=port, limits=limits, metrics_listen=metrics_listen,
                       security=security)
        )
    except BrokerError as exc:
        raise click.ClickException(str(exc)) from exc


def _authorizer_config(mode: str, super_users: str, allow_everyone: bool) -> AuthorizerConfig | None:
    """``--authorizer on`` with its super users, else None; a bad principal is a usage error."""
    from flowbus.broker.security.acls import (
        AclError,
        AuthorizerConfig,
        parse_super_users,
    )

    if mode.lower() != "on":
        if super_users or allow_everyone:
            raise click.UsageError("--super-users and --allow-everyone-if-no-acl-found need --authorizer on")
        return None
    try:
        return AuthorizerConfig(parse_super_users(super_users), allow_everyone)
    except AclError as exc:
        raise click.UsageError(str(exc)) from exc


def _key_password(file: Path | None, env: str | None) -> str | None:
    """``--ssl-key-password-file`` or ``--ssl-key-password-env``: the key's password never comes
    from the command line itself (``ps`` shows argv to every user of the machine).

    Raises:
        click.UsageError: both given, an unreadable file or an unset variable (exit 2).
    """
    from flowbus.secret_sources import SecretSourceError, read_secret

    if file is not None and env is not None:
        raise click.UsageError("give --ssl-key-password-file or --ssl-key-password-env, not both")
    try:
        if file is not None:
            return read_secret("ssl.key.password", "file", str(file))
        if env is not None:
            return read_secret("ssl.key.password", "env", env)
    except SecretSourceError as exc:
        raise click.UsageError(str(exc)) from exc
    return None


def _security_settings(
    listener_specs: tuple[str, ...],
    advertised_specs: tuple[str, ...],
    plaintext: tuple[str, int, str, int] | None,
    certfile: Path | None,
    keyfile: Path | None,
    cafile: Path | None,
    client_auth: str,
    mechanisms: str,
    reauth_ms: int,
    *,
    key_password: str | None = None,
) -> SecuritySettings:
    """The listeners of ``--listener`` (after the ``--listen`` one, when it counts) with their
    advertised addresses, TLS and SASL settings; a bad spec is a usage error (exit 2)."""
    from flowbus.broker.security.listeners import (
        ClientAuth,
        Listener,
        SecurityProtocol,
        TlsSettings,
        parse_advertised,
        parse_listener,
        resolve_listeners,
    )
    from flowbus.broker.security.settings import SecuritySettings

    try:
        listeners = [parse_listener(spec) for spec in listener_specs]
        advertised = [parse_advertised(spec) for spec in advertised_specs]
        if plaintext is not None:
            host, port, adv_host, adv_port = plaintext
            listeners.insert(0, Listener("PLAINTEXT", SecurityProtocol.PLAINTEXT, host, port))
            if not any(name == "PLAINTEXT" for name, _, _ in advertised):
                advertised.append(("PLAINTEXT", adv_host, adv_port))
        resolved = resolve_listeners(listeners, advertised)
    except BrokerConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    tls = None
    if certfile is not None:
        tls = TlsSettings(certfile, keyfile, cafile, ClientAuth(client_auth.lower()), key_password)
    elif any(listener.protocol.uses_tls for listener in resolved):
        raise click.UsageError("an SSL or SASL_SSL listener needs --ssl-certfile (and --ssl-keyfile)")
    names = tuple(m.strip().upper() for m in mechanisms.split(",") if m.strip())
    return SecuritySettings(tuple(resolved), tls, names, reauth_ms)
