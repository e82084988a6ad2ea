"""What the broker-facing commands (topics, produce, consume, groups) share.

They reach the broker through the transport layer only, like the framework does, so each one
behaves the same on ``embedded://DIR`` and ``kafka://HOST:PORT``. This module turns the ways that
can go wrong before a command's real work starts — a data dir held by a running worker, a broker
that does not answer, a topic that does not exist — into one-line :class:`click.ClickException`
messages instead of tracebacks.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import sys
from collections.abc import (
    AsyncIterator,
    Callable,
    Coroutine,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from flowbus.errors import FlowbusError
from flowbus.transports import TopicDescription, Transport, transport_from_url
from flowbus.transports.errors import BrokerUnavailableError, TopicNotFoundError

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_BROKER_URL = "embedded://./flowbus-data"
"""The broker a command uses without ``--broker``: the same as :class:`flowbus.App`'s default,
so ``flowbus worker`` and these commands find the same data when neither is told otherwise."""
BROKER_ENVVAR = "FLOWBUS_BROKER"
"""Read by ``--broker`` of every command, ``flowbus worker`` included."""
TIMEOUT_S_DEFAULT = 10.0
"""How long a command waits for a kafka:// broker to answer before it gives up."""

# librdkafka logs every failed connection attempt to stderr, twenty lines a second. A command
# reports an unreachable broker itself, in one line, so the library stays quiet.
_KAFKA_CLIENT_CONFIG: dict[str, Any] = {"log_level": 0}


class InlineSecretError(click.ClickException):
    """A secret written on the command line: one ``Error:`` line and exit status 2, as click's
    usage errors, without the usage text (the fix is in the message)."""

    exit_code = 2


def refuse_inline_secrets(url: str | None, option: str, *, envvar: str | None = None) -> None:
    """Refuse a broker URL from the command line that carries a secret itself (issue 14, item 4:
    secrets come from files or environment variables, never from the command line, where
    every user of the machine reads them with ``ps``).

    Args:
        url: the option's value; None and URLs without secrets pass.
        option: the option's name, for the message (``--broker``).
        envvar: the environment variable the option also reads, named as a place where the
            whole URL may carry its secrets.

    Raises:
        InlineSecretError: naming the ``.file`` and ``.env`` forms of the first secret found.
    """
    if not url or "://" not in url:
        return
    from flowbus.transports.kafka import inline_secrets

    found = inline_secrets(url)
    if not found:
        return
    name = found[0]
    alternative = f" (or put the whole URL in ${envvar})" if envvar else ""
    raise InlineSecretError(
        f"{option}: {name} is not taken from the command line, where other users see it; "
        f"use {name}.file=PATH or {name}.env=VARNAME in the URL instead{alternative}"
    )


class BrokerUrlOption(click.Option):
    """A broker URL option (``--broker``, ``--bootstrap``) that applies
    :func:`refuse_inline_secrets` to a value from the command line only: a whole URL kept in
    the environment (``$FLOWBUS_BROKER``) may carry its secrets.

    The check sits in ``consume_value``, the one place that knows where the value came from
    (click sets the parameter source only after a callback has run)."""

    def consume_value(self, ctx: click.Context, opts: Mapping[str, Any]) -> tuple[Any, Any]:
        value, source = super().consume_value(ctx, opts)
        if source is click.core.ParameterSource.COMMANDLINE and isinstance(value, str):
            envvar = self.envvar if isinstance(self.envvar, str) else None
            refuse_inline_secrets(value, self.opts[0], envvar=envvar)
        return value, source


def broker_option(func: F) -> F:
    """``--broker URL`` (or ``$FLOWBUS_BROKER``), defaulting to the app's default broker."""
    return click.option(
        "--broker",
        "broker_url",
        metavar="URL",
        envvar=BROKER_ENVVAR,
        show_envvar=True,
        default=DEFAULT_BROKER_URL,
        show_default=True,
        cls=BrokerUrlOption,
        help=(
            "kafka://HOST:PORT (a flowbus broker, a worker started with --listen, any Kafka) "
            "or embedded://DIR (an embedded broker's data dir that no worker has open)."
        ),
    )(func)


def timeout_option(func: F) -> F:
    """``--timeout-s``: how long to wait for a kafka:// broker."""
    return click.option(
        "--timeout-s",
        type=click.FloatRange(min=0, min_open=True),
        default=TIMEOUT_S_DEFAULT,
        show_default=True,
        help="Give up when the broker does not answer within this many seconds.",
    )(func)


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine; transport errors become one-line ClickExceptions (exit 1)."""
    try:
        return asyncio.run(main)
    except BrokerUnavailableError as exc:
        raise click.ClickException(f"{exc}; is the broker running? (--timeout-s waits longer)") from exc
    except TopicNotFoundError as exc:
        raise click.ClickException(f"unknown topic: {exc}") from exc
    except FlowbusError as exc:
        raise click.ClickException(str(exc)) from exc
    except Exception as exc:
        # The kafka transport wraps librdkafka's errors where it expects them; one escaping from
        # elsewhere (the broker going away mid-command) is still a broker error, not a bug.
        kafka = sys.modules.get("confluent_kafka")
        if kafka is not None and isinstance(exc, kafka.KafkaException):
            raise click.ClickException(f"broker error: {exc}") from exc
        raise


def _embedded_dir(url: str) -> Path:
    return Path(url.removeprefix("embedded://").partition("?")[0] or "./flowbus-data")


def _check_embedded(url: str, *, create: bool) -> None:
    """Refuse a data dir that a running worker or broker holds, or (unless creating) one that
    does not exist — opening it would make an empty broker and answer "no topics", which hides
    a mistyped path."""
    from flowbus.transports.embedded import data_dir_in_use

    data_dir = _embedded_dir(url)
    if not create and not data_dir.is_dir():
        raise click.ClickException(
            f"no flowbus data in {data_dir} ({url}); pass --broker kafka://HOST:PORT, "
            f"or embedded://DIR with your app's data dir (or set ${BROKER_ENVVAR})"
        )
    if data_dir_in_use(data_dir):
        raise click.ClickException(
            f"{data_dir} is in use by a running worker or broker, which alone may open it. "
            f"Start the worker with --listen HOST:PORT and use --broker kafka://HOST:PORT."
        )


def make_transport(url: str) -> Transport:
    """The transport for ``url``; kafka:// clients are told not to log connection failures."""
    scheme = url.partition("://")[0]
    if scheme in ("kafka", "kafkas"):
        from flowbus.transports.kafka import KafkaTransport

        return KafkaTransport(url, config=_KAFKA_CLIENT_CONFIG)
    return transport_from_url(url)


FIRST_ANSWER_SLICE_S = 0.25
"""How long each metadata request of :func:`first_answer` waits before it looks again for a refused
login: a wrong password or an untrusted certificate ends a command this long after the broker
refused it at most."""


async def first_answer(transport: Transport, timeout_s: float) -> list[str]:
    """The broker's topics, asked until it answers or ``timeout_s`` passed; a refused login ends
    the wait at once.

    librdkafka retries a refused SASL login (or a failed TLS handshake) like a lost connection and
    reports it only through its error callback, which the blocking metadata request does not
    serve, so one request of ``timeout_s`` hid it until the very end: a wrong password waited the
    whole timeout. Kafka's own clients fail at once (an authentication error is not retriable),
    and so does this: the request is made in slices of :data:`FIRST_ANSWER_SLICE_S`, and the
    transport's error for a refused login (a :class:`FlowbusError` that is not a
    :class:`BrokerUnavailableError`) ends the wait. An unreachable broker is still waited for until
    ``timeout_s``, as it may be starting.

    Raises:
        BrokerUnavailableError: no answer within ``timeout_s`` (the last slice's error).
        FlowbusError: the broker refused the login, or another error that waiting does not fix.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        slice_end = min(deadline, loop.time() + FIRST_ANSWER_SLICE_S)
        try:
            return await transport.list_topics(timeout_s=max(slice_end - loop.time(), 0.001))
        except BrokerUnavailableError:
            # A request that failed before its slice ended (no broker usable yet) is not repeated
            # in a busy loop.
            await asyncio.sleep(max(slice_end - loop.time(), 0))
            if loop.time() >= deadline:
                raise


@asynccontextmanager
async def connect(url: str, *, timeout_s: float, create: bool = False) -> AsyncIterator[Transport]:
    """A started transport for ``url``, closed on exit.

    A kafka:// broker is asked for its topics within ``timeout_s`` (:func:`first_answer`), so an
    unreachable one fails here with :class:`BrokerUnavailableError` rather than later inside a
    client's retries, and a refused login fails at once.

    Args:
        create: an embedded data dir may be created (``topics create``); otherwise it must exist.
    """
    if url.startswith("embedded://"):
        _check_embedded(url, create=create)
    try:
        transport = make_transport(url)
    except FlowbusError as exc:
        raise click.BadParameter(str(exc), param_hint="--broker") from exc
    try:
        await transport.start()
    except FlowbusError as exc:
        from flowbus.transports.kafka import redact_url

        raise click.ClickException(f"cannot open {redact_url(url)}: {exc}") from exc
    try:
        if url.startswith(("kafka://", "kafkas://")):
            await first_answer(transport, timeout_s)
        yield transport
    finally:
        await transport.close()


async def require_topic(transport: Transport, name: str) -> TopicDescription:
    """The topic's description, or a ClickException naming the topic when it does not exist."""
    found = (await transport.describe_topics([name])).get(name)
    if found is None:
        raise click.ClickException(
            f"unknown topic {name!r} (`flowbus topics list` shows them, `flowbus topics create` makes one)"
        )
    return found


def echo_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Left-aligned columns, two spaces apart, as ``kafka-consumer-groups`` prints them."""
    cells = [list(map(str, headers))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())



@contextmanager
def stop_signals(on_stop: Callable[[], None]) -> Iterator[None]:
    """Call ``on_stop`` on SIGINT or SIGTERM instead of raising KeyboardInterrupt, so a command
    can finish its batch, commit and close its clients, then exit 0.

    Must run inside the event loop; outside the main thread (where Python cannot install signal
    handlers) the default behaviour stays.
    """
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_stop)
        except (ValueError, RuntimeError):
            continue
        installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


async def next_or_stop(queue: asyncio.Queue[T], stop: asyncio.Event) -> T | None:
    """The next item of ``queue``, or None as soon as ``stop`` is set."""
    if stop.is_set():
        return None
    getter = asyncio.ensure_future(queue.get())
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not getter.done():
            getter.cancel()
    return getter.result() if getter.done() and not getter.cancelled() else None


@contextmanager
def locked_data_dir(data_dir: Path) -> Iterator[None]:
    """Hold a stopped broker's data directory for an offline edit (``flowbus users``,
    ``flowbus acls``). The lock is the one the broker's log manager holds (``.lock``, flock):
    taking it proves no broker or worker reads or writes the directory's files meanwhile."""
    from flowbus.log.manager import LOCK_FILE

    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise click.ClickException(
                f"{data_dir} is open in a running broker or worker: use --bootstrap HOST:PORT"
            ) from None
        yield
    finally:
        os.close(fd)
