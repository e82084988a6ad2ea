"""``flowbus tables list|get -A module:app``: an app's tables, and one key's value, from outside the app.

faust has ``faust -A app tables``; this goes one step further and reads values, from either side of
a table's durability:

- the **local** copy: the partition databases a worker keeps under the state dir
  (``<state dir>/<app id>/partition-<p>-of-<N>/db`` and ``global-<table>/partition-<p>/db``,
  see docs/state.md). They are opened read-only (a RocksDB secondary instance, see
  :func:`flowbus.state.rocksdb.database.open_rocksdb_read_only`), so reading works while a worker
  holds them, and neither the worker's ``LOCK.flowbus`` nor RocksDB's ``LOCK`` is taken. A worker
  writes a partition's changes there after each commit, so this copy lags by up to one commit
  interval.
- the **changelog** topic, the table's source of truth: the key's partition is read from its start
  to the end offset taken when the command starts, with a ``read_committed`` consumer outside any
  group, and the last record for the key wins (a tombstone means deleted).

The app module is imported (as ``flowbus worker -A`` does) for what only it knows: the tables,
their serializers and key types, the app id and its state dir.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from flowbus.cli.common import (
    BROKER_ENVVAR,
    BrokerUrlOption,
    connect,
    echo_table,
    run,
    timeout_option,
)
from flowbus.cli.worker import load_app
from flowbus.errors import FlowbusError
from flowbus.transports import TopicPartition
from flowbus.transports.partitioner import partition_for_key

if TYPE_CHECKING:
    from flowbus.app import App
    from flowbus.state.table import Table
    from flowbus.transports import Transport

F = TypeVar("F", bound=Callable[..., Any])

STATE_DIR_ENVVAR = "FLOWBUS_STATE_DIR"
"""Read by ``--state-dir``, as by ``flowbus worker --state-dir``."""
GET_TIMEOUT_S_DEFAULT = 30.0
"""How long ``tables get`` waits for the broker and, with ``--from changelog``, for the read."""
BROKER_LOOKUP_TIMEOUT_S_MAX = 5.0
"""``--from local`` asks the broker only for the partition count, and falls back to the local
directory names when it cannot: a broker that does not answer is not waited for long."""
CHANGELOG_POLL_RECORDS = 5_000
"""Records per poll while scanning a changelog partition for one key."""
CHANGELOG_POLL_TIMEOUT_MS = 200
"""A poll waits at most this long, so the deadline is checked often."""
CLIENT_ID = "flowbus-tables"
NONE_SHOWN = "-"
UNREACHABLE = "unreachable"
PARTITION_DIR_PATTERN = re.compile(r"partition-(\d+)-of-(\d+)")
"""A partitioned table's database directory: ``partition-<p>-of-<N>`` (StateManager.partition_dir)."""
GLOBAL_PARTITION_DIR_PATTERN = re.compile(r"partition-(\d+)")
"""A global table's database directory under ``global-<table>/``."""
DATABASE_DIRNAME = "db"
"""The database inside a partition directory (flowbus.state.opening.DATABASE_DIRNAME)."""


class _NotFound:
    """The key has no value (never written, or deleted)."""

    __slots__ = ()


NOT_FOUND: Any = _NotFound()


# -- options ----------------------------------------------------------------------------------


def _app_options(func: F) -> F:
    """``-A``, ``--state-dir`` and ``--broker``: which app, where its local state is, which broker."""
    func = click.option(
        "--broker", "broker_url", metavar="URL", default=None, envvar=BROKER_ENVVAR, show_envvar=True,
        cls=BrokerUrlOption,
        help="kafka://HOST:PORT (a worker started with --listen, a flowbus broker, any Kafka) or "
        "embedded://DIR (only while no worker has DIR open). Default: the app's broker.",
    )(func)
    func = click.option(
        "--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
        envvar=STATE_DIR_ENVVAR, show_envvar=True,
        help="The state dir the worker uses (its --state-dir). Default: the app's state_dir, else "
        "DIR/state for embedded://DIR (DIR from an embedded:// --broker, else from the app's broker), "
        "else ./flowbus-state.",
    )(func)
    return click.option("-A", "--app", "app_spec", required=True, help="The app, as module:attribute.")(func)


@dataclass(frozen=True)
class _Target:
    """The app, where its partition databases are, and the broker to ask."""

    app: App
    app_dir: Path
    broker_url: str

    @property
    def shown_url(self) -> str:
        """The broker URL as messages show it: a password (from ``$FLOWBUS_BROKER`` or the app)
        masked."""
        from flowbus.transports.kafka import redact_url

        return redact_url(self.broker_url)


def _target(app_spec: str, state_dir: Path | None, broker_url: str | None) -> _Target:
    from flowbus.state.manager import default_state_dir

    app = load_app(app_spec)
    if state_dir is None:
        # The worker derives it from the app's broker; an embedded --broker here names that same
        # data dir (a kafka:// one says nothing about where the worker keeps its state).
        derived_from = broker_url if broker_url and broker_url.startswith("embedded://") else app.broker
        state_dir = app.state_dir if app.state_dir is not None else default_state_dir(derived_from)
    return _Target(app, state_dir / app.id, broker_url or app.broker)


def _table(app: App, name: str) -> Table:
    table = app.tables.get(name)
    if table is None:
        known = ", ".join(sorted(app.tables)) or "none"
        raise click.ClickException(f"app {app.id!r} has no table {name!r} (its tables: {known})")
    return table


# -- what the broker and the disk know --------------------------------------------------------


@dataclass(frozen=True)
class _Changelog:
    partitions: int
    end_offsets_sum: int


async def _changelogs(transport: Transport, tables: list[Table], timeout_s: float) -> dict[str, _Changelog]:
    """Partition count and summed end offsets of each table's changelog topic that exists."""
    names = [t.changelog_topic for t in tables]
    described = await transport.describe_topics(names)
    out = {}
    for name, description in described.items():
        tps = [TopicPartition(name, p) for p in range(description.partitions)]
        marks = await transport.watermarks(tps, timeout_s=timeout_s)
        out[name] = _Changelog(description.partitions, sum(marks[tp].high for tp in tps))
    return out


def _ask_broker(url: str, tables: list[Table], timeout_s: float) -> dict[str, _Changelog] | str:
    """:func:`_changelogs`, or why the broker could not answer (one line)."""

    async def main() -> dict[str, _Changelog]:
        async with connect(url, timeout_s=timeout_s) as transport:
            return await _changelogs(transport, tables, timeout_s)

    try:
        return run(main())
    except click.ClickException as exc:
        return exc.format_message()


@dataclass(frozen=True)
class _LocalPartition:
    partition: int
    count: int | None
    """``N`` of ``partition-<p>-of-<N>``; ``None`` for a global table (its directories do not say)."""
    database: Path


def _local_partitions(app_dir: Path, table: Table, count: int | None) -> list[_LocalPartition]:
    """The partition databases of ``table`` that exist under ``app_dir``, by partition.

    A partitioned table with ``N`` partitions lives in every ``partition-<p>-of-<N>`` database;
    when ``N`` is unknown (no broker), the databases holding a store named like the table count.
    """
    from flowbus.state.errors import StoreOpenError
    from flowbus.state.rocksdb.database import CURRENT_FILENAME, list_stores

    found = []
    if table.global_table:
        for child in _children(app_dir / f"global-{table.name}"):
            match = GLOBAL_PARTITION_DIR_PATTERN.fullmatch(child.name)
            database = child / DATABASE_DIRNAME
            if match and (database / CURRENT_FILENAME).exists():
                found.append(_LocalPartition(int(match[1]), count, database))
        return sorted(found, key=lambda lp: lp.partition)
    for child in _children(app_dir):
        match = PARTITION_DIR_PATTERN.fullmatch(child.name)
        database = child / DATABASE_DIRNAME
        if not match or not (database / CURRENT_FILENAME).exists():
            continue
        partition, of = int(match[1]), int(match[2])
        if count is not None:
            if of == count:
                found.append(_LocalPartition(partition, of, database))
            continue
        try:
            holds_table = table.name in list_stores(database)
        except StoreOpenError:
            holds_table = False  # unreadable MANIFEST: cannot tell, so not shown as the table's
        if holds_table:
            found.append(_LocalPartition(partition, of, database))
    return sorted(found, key=lambda lp: (lp.count or 0, lp.partition))


def _children(directory: Path) -> list[Path]:
    try:
        return sorted(p for p in directory.iterdir() if p.is_dir())
    except FileNotFoundError:
        return []


def _local_summary(local: list[_LocalPartition]) -> str:
    """``0,1 of 2`` (grouped by partition count), ``0 of ?`` for a global table without a count."""
    if not local:
        return NONE_SHOWN
    by_count: dict[int | None, list[str]] = {}
    for lp in local:
        by_count.setdefault(lp.count, []).append(str(lp.partition))
    return "; ".join(f"{','.join(ps)} of {'?' if n is None else n}" for n, ps in by_count.items())


def _codec_name(codec: Any) -> str:
    """``json:int``: the serializer, and the declared type when there is one."""
    serializer = getattr(codec.serializer, "name", type(codec.serializer).__name__)
    type_ = codec.type_
    return serializer if type_ is None else f"{serializer}:{getattr(type_, '__name__', repr(type_))}"


# -- keys and values --------------------------------------------------------------------------


def _parse_key(table: Table, text: str) -> bytes:
    """KEY as the table's key type, encoded with its key codec.

    A raw (``str``/``bytes``) key is the text as given; any other serializer's key is parsed as
    JSON (``42`` is the number 42, ``"42"`` the string), and text that is not JSON is the string.
    """
    key: Any = text
    if getattr(table.key_codec.serializer, "name", None) != "raw":
        try:
            key = json.loads(text)
        except ValueError:
            key = text
    try:
        return table.encode_key(key)
    except (KeyError, TypeError, ValueError) as exc:
        reason = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc  # KeyError's str() quotes it
        raise click.BadParameter(f"cannot encode {text!r} as a key of table {table.name!r}: {reason}",
                                 param_hint="KEY") from exc


def _format_value(table: Table, raw: bytes, show_raw: bool) -> str:
    """The value as JSON text (``--raw``: the stored bytes' repr)."""
    if show_raw:
        return repr(raw)
    from flowbus.serializers import DecodeError, get_serializer

    try:
        value = table.value_codec.decode(raw)
    except DecodeError as exc:
        raise click.ClickException(
            f"the stored value of table {table.name!r} does not decode ({exc}); --raw prints its bytes"
        ) from exc
    if isinstance(value, bytes):  # a raw value serializer without a declared type
        try:
            value = value.decode()
        except UnicodeDecodeError:
            return repr(value)
    try:
        return get_serializer("json").dumps(value).decode()
    except TypeError:
        return repr(value)


# -- windows ----------------------------------------------------------------------------------


def _window_prefixes(table: Table, key: bytes) -> tuple[bytes, ...]:
    """The store-key prefixes of a key's windows and sessions in a window store (``()`` for a
    plain table, whose store key is the key itself)."""
    from flowbus.state.windowed import WindowedTable
    from flowbus.state.windows import KIND_SESSIONS, KIND_WINDOW, key_prefix

    if not isinstance(table, WindowedTable):
        return ()
    return (key_prefix(KIND_WINDOW, key), key_prefix(KIND_SESSIONS, key))


def _kind(table: Table) -> str:
    from flowbus.state.windowed import WindowedTable

    if isinstance(table, WindowedTable):
        return f"{table.spec.kind} window"
    return "global" if table.global_table else "table"


def _format_windows(table: Table, values: dict[bytes, bytes | None], show_raw: bool) -> list[str]:
    """One JSON line per open window of the key (``--raw``: per stored record), oldest first."""
    from flowbus.serializers import get_serializer
    from flowbus.state.windows import KIND_SESSIONS, split_key

    lines: list[tuple[int, str]] = []
    dumps = get_serializer("json").dumps
    for data_key, raw in sorted(values.items()):
        if raw is None:
            continue
        kind, _, window = split_key(data_key)
        if show_raw:
            lines.append((window.start if window else 0, f"{data_key!r} {raw!r}"))
            continue
        decoded = table.value_codec.decode(raw)
        if window is not None:
            lines.append((window.start, dumps({"start": window.start, "end": window.end, "value": decoded}).decode()))
        elif kind == KIND_SESSIONS:
            for start, last, acc in decoded:
                lines.append((start, dumps({"start": start, "end": last + 1, "value": acc}).decode()))
    return [line for _, line in sorted(lines, key=lambda item: item[0])]


# -- reading one key --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Where:
    """Where a key was looked up: its partition, of how many, and the database or topic read."""

    partition: int
    count: int
    read_from: str


def _local_count(target: _Target, table: Table, timeout_s: float) -> int:
    """The table's partition count for a local read: declared, else the changelog topic's, else
    the local directory names (a note on stderr says so)."""
    if table.declared_partitions:
        return table.declared_partitions
    answer = _ask_broker(target.broker_url, [table], min(timeout_s, BROKER_LOOKUP_TIMEOUT_S_MAX))
    if isinstance(answer, dict) and table.changelog_topic in answer:
        return answer[table.changelog_topic].partitions
    reason = answer if isinstance(answer, str) else f"no changelog topic {table.changelog_topic!r} on it"
    local = _local_partitions(target.app_dir, table, None)
    if table.global_table:
        counts = {max(lp.partition for lp in local) + 1} if local else set()
    else:
        counts = {lp.count for lp in local if lp.count is not None}
    if len(counts) != 1:
        found = (
            f"databases with {' and '.join(map(str, sorted(counts)))} partitions" if counts else "no database"
        )
        raise click.ClickException(
            f"cannot tell how many partitions table {table.name!r} has: the broker ({target.shown_url}) did not "
            f"say ({reason}) and {target.app_dir} holds {found} of it; pass --broker URL of a reachable broker"
        )
    (count,) = counts
    click.echo(f"note: {count} partitions, from the local directories (broker: {reason})", err=True)
    return count


def _read_local(target: _Target, table: Table, key: bytes, timeout_s: float) -> tuple[_Where, dict[bytes, bytes | None]]:
    from flowbus.state.base import prefix_end
    from flowbus.state.rocksdb.database import open_rocksdb_read_only

    count = _local_count(target, table, timeout_s)
    partition = partition_for_key(key, count)
    here = {lp.partition: lp for lp in _local_partitions(target.app_dir, table, count)}
    local = here.get(partition)
    if local is None:
        held = ", ".join(map(str, sorted(here))) or "none"
        raise click.ClickException(
            f"partition {partition} of table {table.name!r} ({count} partitions) has no database under "
            f"{target.app_dir} (partitions here: {held}); it is on the worker that owns it, or use --from changelog"
        )
    db = open_rocksdb_read_only(local.database)
    values: dict[bytes, bytes | None] = {}
    try:
        if table.name in db.stores():
            prefixes = _window_prefixes(table, key)
            if prefixes:
                for prefix in prefixes:
                    values.update(db.items(table.name, prefix, prefix_end(prefix)))
            else:
                values[key] = db.get(table.name, key)
    finally:
        db.close()
    return _Where(partition, count, str(local.database)), values


async def _scan_changelog(
    transport: Transport, tp: TopicPartition, match: Callable[[bytes], bool], deadline: float, timeout_s: float
) -> dict[bytes, bytes | None]:
    """The last committed value of every store key in ``tp`` that ``match`` accepts, up to the
    end offset taken now (``None``: deleted)."""
    low, end = (await transport.watermarks([tp], timeout_s=max(deadline - time.monotonic(), 0.001)))[tp]
    if end <= low:
        return {}
    consumer = transport.consumer(None, isolation_level="read_committed", client_id=CLIENT_ID)
    value: dict[bytes, bytes | None] = {}
    try:
        consumer.assign([tp], {tp: low})
        while True:
            position = consumer.position(tp)
            # Positions step over transaction markers and aborted records: reaching ``end`` means
            # every committed record before it has been seen.
            if position is not None and position >= end:
                return value
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                raise click.ClickException(
                    f"reading {tp.topic}[{tp.partition}] from offset {low} to {end} did not finish within "
                    f"{timeout_s} s (at {position}); is a transaction on it left open? (--timeout-s waits longer)"
                )
            poll_ms = max(1, min(CHANGELOG_POLL_TIMEOUT_MS, int(remaining_s * 1000)))
            for record in await consumer.poll_batch(CHANGELOG_POLL_RECORDS, poll_ms):
                if record.offset < end and record.key is not None and match(record.key):
                    value[record.key] = record.value
    finally:
        await consumer.close()


def _read_changelog(
    target: _Target, table: Table, key: bytes, timeout_s: float
) -> tuple[_Where, dict[bytes, bytes | None]]:
    deadline = time.monotonic() + timeout_s
    topic = table.changelog_topic

    prefixes = _window_prefixes(table, key)

    def match(record_key: bytes) -> bool:
        return record_key.startswith(prefixes) if prefixes else record_key == key

    async def main() -> tuple[_Where, dict[bytes, bytes | None]]:
        async with connect(target.broker_url, timeout_s=timeout_s) as transport:
            description = (await transport.describe_topics([topic])).get(topic)
            if description is None:
                raise click.ClickException(
                    f"no changelog topic {topic!r} on {target.shown_url}: has a worker of {target.app.id!r} run there?"
                )
            partition = partition_for_key(key, description.partitions)
            value = await _scan_changelog(transport, TopicPartition(topic, partition), match, deadline, timeout_s)
            return _Where(partition, description.partitions, topic), value

    return run(main())


# -- the commands -----------------------------------------------------------------------------


@click.group("tables")
def tables() -> None:
    """List an app's tables; read one key from a table's local copy or its changelog."""


@tables.command("list")
@_app_options
@timeout_option
def list_tables(app_spec: str, state_dir: Path | None, broker_url: str | None, timeout_s: float) -> None:
    """Print one line per table of the app (GlobalTables and dataflow aggregations included).

    Columns: the table's name; its kind (table, global, or the window kind of a window store); its key and value serializers with
    the declared type; its changelog topic with the topic's partition count and the sum of its
    partitions' end offsets, from the broker ("unreachable" when it cannot be asked, "-" when
    the topic does not exist yet); and the partitions whose database exists under the state dir
    on this host (LOCAL, e.g. "0,1 of 2").
    """
    target = _target(app_spec, state_dir, broker_url)
    app_tables = list(target.app.tables.values())
    if not app_tables:
        click.echo(f"app {target.app.id!r} declares no tables", err=True)
        return
    answer = _ask_broker(target.broker_url, app_tables, timeout_s)
    if isinstance(answer, str):
        click.echo(f"broker {target.shown_url} unreachable: {answer}", err=True)
    rows = []
    for table in app_tables:
        changelog = answer.get(table.changelog_topic) if isinstance(answer, dict) else None
        count = changelog.partitions if changelog is not None else (table.declared_partitions or None)
        if isinstance(answer, str):
            partitions, ends = UNREACHABLE, UNREACHABLE
        elif changelog is None:
            partitions, ends = NONE_SHOWN, NONE_SHOWN
        else:
            partitions, ends = str(changelog.partitions), str(changelog.end_offsets_sum)
        rows.append((
            table.name, _kind(table),
            _codec_name(table.key_codec), _codec_name(table.value_codec),
            table.changelog_topic, partitions, ends,
            _local_summary(_local_partitions(target.app_dir, table, count)),
        ))
    click.echo(f"App: {target.app.id}  State dir: {target.app_dir}  Broker: {target.shown_url}")
    echo_table(["TABLE", "KIND", "KEY", "VALUE", "CHANGELOG", "PARTITIONS", "END-OFFSETS", "LOCAL"], rows)


@tables.command("get")
@click.argument("table_name", metavar="TABLE")
@click.argument("key_text", metavar="KEY")
@click.option(
    "--from", "source", type=click.Choice(["local", "changelog"]), default="local", show_default=True,
    help="local: this host's partition database (lags the changelog by up to one commit interval); "
    "changelog: the table's changelog topic (needs the broker).",
)
@click.option("--raw", "show_raw", is_flag=True, help="Print the stored bytes (Python repr) instead of JSON.")
@_app_options
@click.option(
    "--timeout-s", type=click.FloatRange(min=0, min_open=True), default=GET_TIMEOUT_S_DEFAULT, show_default=True,
    help=f"Give up when the broker, or the changelog read, takes longer (a local read asks the broker "
    f"for at most {BROKER_LOOKUP_TIMEOUT_S_MAX:g} s).",
)
def get_value(
    table_name: str, key_text: str, source: str, show_raw: bool, app_spec: str, state_dir: Path | None,
    broker_url: str | None, timeout_s: float,
) -> None:
    """Print the value of KEY in TABLE as JSON; print "not found" and exit 1 when it has none.

    For a window store (a windowed aggregation), print each open window of KEY on its own line,
    oldest first: {"start": ms, "end": ms, "value": aggregate} (a session's end is its last
    record's time + 1). Closed windows are deleted, so they are not shown.

    KEY is read as the table's key type: as given for raw (str or bytes) keys; as JSON for other
    serializers, falling back to the plain string (42 is a number, '"42"' and apple are strings).
    Its partition is Kafka's murmur2 of the encoded key modulo the table's partition count, as
    the worker computes it.

    \b
    --from local (default): the key's partition database under the state dir, opened read-only
      (a RocksDB secondary instance, no lock taken), also while a worker holds it. It holds what
      the worker stored at its last commit: it lags the changelog by up to one commit interval
      (the app's commit_interval_ms), and what a running worker restored from the changelog may
      show only once that worker writes to the partition again or stops. The partition count is
      the table's declared one, else the changelog topic's (broker), else the local directory names'.
    --from changelog: the key's changelog partition, read from its start to its end offset taken
      when the command starts (read_committed, outside any consumer group); the last record
      wins and a tombstone means deleted. Bounded by --timeout-s.
    """
    target = _target(app_spec, state_dir, broker_url)
    table = _table(target.app, table_name)
    key = _parse_key(table, key_text)
    try:
        if source == "changelog":
            where, values = _read_changelog(target, table, key, timeout_s)
        else:
            where, values = _read_local(target, table, key, timeout_s)
    except FlowbusError as exc:
        raise click.ClickException(str(exc)) from exc
    lines = _format_windows(table, values, show_raw) if _window_prefixes(table, key) else []
    value = values.get(key)
    if not lines and value is None:
        click.echo(
            f"not found: {key_text!r} in table {table.name!r} (partition {where.partition} of {where.count}, "
            f"{where.read_from})",
            err=True,
        )
        sys.exit(1)
    if lines:
        click.echo("\n".join(lines))
    else:
        assert value is not None
        click.echo(_format_value(table, value, show_raw))

