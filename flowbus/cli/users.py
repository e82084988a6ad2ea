"""``flowbus users add|delete|list``: SCRAM credentials of a flowbus broker.

Two ways to reach them:

* ``--data-dir DIR`` (the default, ``./flowbus-data``): edit ``DIR/credentials.json`` of a
  **stopped** broker (the command takes the data directory's lock, so it refuses while a broker
  or worker has it open; the broker reads the file at start-up).
* ``--bootstrap URL``: a running broker (flowbus or Kafka), through Kafka's
  AlterUserScramCredentials / DescribeUserScramCredentials APIs. URL is ``HOST:PORT`` or a
  ``kafka://`` / ``kafkas://`` URL with security parameters (``docs/security.md``).

Passwords are never taken from the command line (other users of the machine see argv): ``add``
prompts for it twice, or reads the first line of ``--password-file FILE`` (``-`` is stdin).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from flowbus.broker.security.scram import (
    ITERATIONS_DEFAULT,
    ITERATIONS_MAX,
    ITERATIONS_MIN,
)
from flowbus.cli.common import BrokerUrlOption, locked_data_dir

DEFAULT_DATA_DIR = Path("./flowbus-data")
#: Longest password read from a file or stdin, in characters (the rest is not read).
PASSWORD_CHARS_MAX = 1024
#: How long a --bootstrap command waits for the broker.
REQUEST_TIMEOUT_S = 15.0
MECHANISM_CHOICES = ["SCRAM-SHA-256", "SCRAM-SHA-512"]


def _target_options(func: Any) -> Any:
    func = click.option(
        "--bootstrap",
        metavar="URL",
        default=None,
        cls=BrokerUrlOption,
        help="A running broker (HOST:PORT or kafka://... with security parameters): change it "
        "through AlterUserScramCredentials instead of editing --data-dir.",
    )(func)
    return click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=DEFAULT_DATA_DIR,
        show_default=True,
        help="Data directory of a stopped broker.",
    )(func)


@click.group("users")
def users() -> None:
    """Manage SASL/SCRAM users of a flowbus broker (docs/security.md)."""


@users.command("add")
@click.argument("name")
@click.option(
    "--mechanism",
    "mechanisms",
    multiple=True,
    type=click.Choice(MECHANISM_CHOICES, case_sensitive=False),
    help="Repeatable [default: both]. PLAIN logins are checked against these entries.",
)
@click.option(
    "--iterations",
    type=click.IntRange(ITERATIONS_MIN, ITERATIONS_MAX),
    default=ITERATIONS_DEFAULT,
    show_default=True,
    help="PBKDF2 rounds (Kafka's range): more makes a stolen credentials file harder to crack.",
)
@click.option(
    "--password-file",
    type=click.File("r"),
    default=None,
    help="Read the password from the first line of this file ('-': stdin) instead of a prompt.",
)
@_target_options
def add(name: str, mechanisms: tuple[str, ...], iterations: int, password_file: Any,
        data_dir: Path, bootstrap: str | None) -> None:
    """Add NAME or change its password."""
    from flowbus.broker.security.errors import CredentialError
    from flowbus.broker.security.scram import (
        MECHANISMS,
        ScramCredential,
        check_user_name,
    )

    try:
        check_user_name(name)
    except CredentialError as exc:
        raise click.UsageError(str(exc)) from exc
    password = _read_password(password_file)
    chosen = [MECHANISMS[m.upper()] for m in (mechanisms or MECHANISM_CHOICES)]
    if bootstrap is not None:
        _alter_online(bootstrap, name, upsert=[(m, password, iterations) for m in chosen], delete=[])
    else:
        with _store(data_dir) as store:
            for mechanism in chosen:
                store.put(name, ScramCredential.from_password(mechanism, password, iterations=iterations))
            store.save()
    click.echo(f"user {name}: {', '.join(m.name for m in chosen)} ({iterations} iterations)")


@users.command("delete")
@click.argument("name")
@click.option(
    "--mechanism",
    "mechanisms",
    multiple=True,
    type=click.Choice(MECHANISM_CHOICES, case_sensitive=False),
    help="Repeatable [default: every mechanism of NAME].",
)
@_target_options
def delete(name: str, mechanisms: tuple[str, ...], data_dir: Path, bootstrap: str | None) -> None:
    """Delete NAME (or some of its mechanisms)."""
    from flowbus.broker.security.scram import MECHANISMS, ScramMechanism

    if bootstrap is not None:
        chosen = [m.upper() for m in mechanisms] or [
            m for m, _ in _describe_online(bootstrap, [name]).get(name, [])
        ]
        if not chosen:
            raise click.ClickException(f"no user {name}")
        _alter_online(bootstrap, name, upsert=[], delete=[MECHANISMS[m] for m in chosen])
    else:
        with _store(data_dir) as store:
            selected: list[ScramMechanism | None] = [MECHANISMS[m.upper()] for m in mechanisms] or [None]
            removed = [store.delete(name, m) for m in selected]
            if not any(removed):
                raise click.ClickException(f"no user {name} (with those mechanisms) in {store.path}")
            store.save()
    click.echo(f"deleted {name}")


@users.command("list")
@_target_options
def list_users(data_dir: Path, bootstrap: str | None) -> None:
    """List users and their mechanisms (never salts or keys)."""
    if bootstrap is not None:
        described = _describe_online(bootstrap, None)
    else:
        with _store(data_dir) as store:
            described = {
                user: [(c.mechanism.name, c.iterations) for c in store.mechanisms_of(user)]
                for user in store.users()
            }
    for user, entries in sorted(described.items()):
        click.echo(f"{user}\t" + ", ".join(f"{m} ({i} iterations)" for m, i in entries))


def _read_password(password_file: Any) -> str:
    if password_file is None:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        password = password_file.readline(PASSWORD_CHARS_MAX + 1).rstrip("\r\n")
    if not password:
        raise click.UsageError("the password is empty")
    if len(password) > PASSWORD_CHARS_MAX:
        raise click.UsageError(f"a password has at most {PASSWORD_CHARS_MAX} characters")
    return str(password)


@contextlib.contextmanager
def _store(data_dir: Path) -> Iterator[Any]:
    """The credential store of a stopped broker, its data directory locked meanwhile.

    The lock is the one the broker's log manager holds (``.lock``, flock): taking it proves no
    broker reads or writes the file at the same time.
    """
    from flowbus.broker.security.credentials import CREDENTIALS_FILE, CredentialStore
    from flowbus.broker.security.errors import CredentialError

    with locked_data_dir(data_dir):
        try:
            yield CredentialStore(data_dir / CREDENTIALS_FILE)
        except CredentialError as exc:
            raise click.ClickException(str(exc)) from exc


def _admin(bootstrap: str) -> Any:
    import confluent_kafka.admin

    from flowbus.errors import FlowbusError
    from flowbus.transports.kafka import client_config_from_url

    try:
        config = client_config_from_url(bootstrap if "://" in bootstrap else f"kafka://{bootstrap}")
    except FlowbusError as exc:
        raise click.UsageError(str(exc)) from exc
    return confluent_kafka.admin.AdminClient({**config, "log_level": 0})


def _wait(futures: dict[Any, Any]) -> dict[Any, Any]:
    import confluent_kafka

    results = {}
    for key, future in futures.items():
        try:
            results[key] = future.result(timeout=REQUEST_TIMEOUT_S)
        except confluent_kafka.KafkaException as exc:
            error = exc.args[0] if exc.args else exc
            results[key] = error
        except Exception as exc:  # noqa: BLE001 - a timeout or a refused request: one line
            results[key] = exc
    return results


def _describe_online(bootstrap: str, names: list[str] | None) -> dict[str, list[tuple[str, int]]]:
    admin = _admin(bootstrap)
    futures = admin.describe_user_scram_credentials(names, request_timeout=REQUEST_TIMEOUT_S)
    if not isinstance(futures, dict):  # all users: one future of a dict
        try:
            answers = futures.result(timeout=REQUEST_TIMEOUT_S)
        except Exception as exc:
            raise click.ClickException(f"DescribeUserScramCredentials failed: {exc}") from exc
    else:
        answers = _wait(futures)
    described: dict[str, list[tuple[str, int]]] = {}
    for user, answer in answers.items():
        infos = getattr(answer, "scram_credential_infos", None)
        if infos is None:
            if names is not None and "RESOURCE_NOT_FOUND" in str(answer):
                continue
            raise click.ClickException(f"{user}: {answer}")
        described[user] = [(_mechanism_name(i.mechanism), i.iterations) for i in infos]
    return described


def _mechanism_name(mechanism: Any) -> str:
    return str(getattr(mechanism, "name", mechanism)).replace("_", "-")


def _alter_online(bootstrap: str, name: str, *, upsert: list[tuple[Any, str, int]], delete: list[Any]) -> None:
    from confluent_kafka.admin import (
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialDeletion,
        UserScramCredentialUpsertion,
    )

    def code(mechanism: Any) -> Any:
        return ScramMechanism[mechanism.name.replace("-", "_")]

    alterations: list[Any] = [
        UserScramCredentialUpsertion(name, ScramCredentialInfo(code(m), iterations), password.encode("utf-8"))
        for m, password, iterations in upsert
    ]
    alterations += [UserScramCredentialDeletion(name, code(m)) for m in delete]
    admin = _admin(bootstrap)
    results = _wait(admin.alter_user_scram_credentials(alterations, request_timeout=REQUEST_TIMEOUT_S))
    for user, result in results.items():
        if result is not None:
            print(f"{user}: {result}", file=sys.stderr)
            raise click.ClickException(f"AlterUserScramCredentials failed for {user}: {result}")
