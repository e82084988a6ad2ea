"""Table queries over HTTP: ``GET /tables``, ``GET /tables/{name}``, ``GET /tables/{name}/{key}``.

A key query is answered by the worker owning the key's partition; any other worker forwards it
there (:mod:`flowbus.web.routing`), so a client may ask any worker of the app. The key comes as a
URL path segment (percent-encoded as needed) and is converted to the table's key type:

* ``str`` (and tables without a key type and a ``raw`` key serializer): as it is;
* ``bytes``: its UTF-8 bytes;
* ``int``, ``float``: parsed (``/tables/by-user/42``); ``bool``: ``true``/``false``;
* anything else (no key type with the ``json`` serializer, dataclasses, dicts): the segment is
  JSON (``/tables/by-point/{"x":1,"y":2}``), decoded and checked by the table's key codec. With
  no key type, a segment that is not JSON is taken as a string.

Answers are JSON: ``{"table", "key", "value", "partition", "owner"}``; errors are
``{"error": "..."}`` with 404 (no such table, or no such key), 400 (a key that does not convert),
501 (windowed tables: their keys are windows, not queried this way yet) or 503 (nobody owns the
partition right now: a rebalance, or the partition is being restored; retry).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from flowbus.app_errors import DecodeError
from flowbus.state.table import MISSING, Table
from flowbus.state.windowed import WindowedTable
from flowbus.web.routing import Router, route, unavailable

if TYPE_CHECKING:
    from flowbus.web.server import WebServer
    from flowbus.worker import Worker

#: Route names and paths (``docs/operations.md``, "HTTP API").
TABLES_ROUTE, TABLES_PATH = "tables", "/tables"
TABLE_ROUTE, TABLE_PATH = "table", "/tables/{table}"
TABLE_KEY_ROUTE, TABLE_KEY_PATH = "table-key", "/tables/{table}/{key:.+}"


class KeyConversionError(ValueError):
    """A key from a URL that the table's key type cannot hold."""


def _default(value: Any) -> Any:
    """orjson's fallback: bytes as text, anything else unknown as its ``str``."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


def json_response(payload: Any, *, status: int = 200) -> web.Response:
    """``payload`` as JSON (dataclasses, datetimes and numpy values included, via orjson)."""
    body = orjson.dumps(payload, default=_default, option=orjson.OPT_NON_STR_KEYS)
    return web.Response(body=body, status=status, content_type="application/json")


def error(status: int, message: str) -> web.Response:
    return json_response({"error": message}, status=status)


def convert_key(text: str, key_type: Any, serializer_name: str, decode: Any) -> Any:
    """The key a URL path segment stands for; see the module's documentation.

    Raises:
        KeyConversionError: the segment is not a value of ``key_type``.
    """
    if key_type is str:
        return text
    if key_type is bytes:
        return text.encode()
    if key_type is bool:
        lowered = text.lower()
        if lowered not in ("true", "false"):
            raise KeyConversionError(f"{text!r} is not a bool (true or false)")
        return lowered == "true"
    if key_type in (int, float):
        try:
            return key_type(text)
        except ValueError:
            raise KeyConversionError(f"{text!r} is not {'an' if key_type is int else 'a'} {key_type.__name__}") from None
    if key_type is None and serializer_name != "json":
        return decode(text.encode())
    try:
        return decode(text.encode())
    except DecodeError as exc:
        if key_type is None:
            return text  # not JSON: a plain string key
        name = getattr(key_type, "__name__", repr(key_type))
        raise KeyConversionError(f"{text!r} is not a {name} (as JSON): {exc}") from None


def _table_or_404(worker: Worker, name: str) -> Table:
    table = worker.app.tables.get(name)
    if table is None:
        known = ", ".join(sorted(worker.app.tables)) or "none"
        raise web.HTTPNotFound(text=orjson.dumps({"error": f"no table named {name!r} (tables: {known})"}).decode(),
                               content_type="application/json")
    return table


def _key_count(table: Table, partition: int) -> int:
    part = table.parts[partition]
    return sum(1 for _ in table._partition_items(part))  # the table's own walk, write layers included


def add_table_routes(web_server: WebServer, worker: Worker, router: Router) -> None:
    """Serve the three table routes for ``worker``'s app on ``web_server``."""

    async def tables(request: web.Request) -> web.Response:
        return json_response({
            name: {"partitions": table.partitions, "owned": table.owned_partitions(),
                   "windowed": isinstance(table, WindowedTable), "global": table.global_table}
            for name, table in sorted(worker.app.tables.items())
        })

    async def table_partitions(request: web.Request) -> web.Response:
        table = _table_or_404(worker, request.match_info["table"])
        owned = table.owned_partitions()
        return json_response({
            "table": table.name,
            "partitions": table.partitions,
            "owner": worker.web_url,
            "owned": {str(p): {"keys": _key_count(table, p)} for p in owned},
        })

    async def table_key(request: web.Request) -> web.StreamResponse:
        table = _table_or_404(worker, request.match_info["table"])
        text = request.match_info["key"]
        if isinstance(table, WindowedTable):
            return error(501, f"table {table.name!r} is windowed: its keys are (key, window) pairs, "
                              f"not queried over HTTP yet; read it from an @app.page routed by its key")
        if not table.partitions:
            raise unavailable(f"table {table.name!r} is not open yet (the worker is starting)")
        try:
            key = convert_key(text, table.key_type, table.key_codec.serializer.name, table.key_codec.decode)
            key_bytes, partition = table.locate(key)
        except (KeyConversionError, DecodeError, TypeError, ValueError, KeyError) as exc:
            return error(400, f"table {table.name!r}: bad key: {exc}")
        if not table.global_table:
            candidates = router.table_partitions(table, partition)
            if not candidates:
                raise unavailable(f"table {table.name!r}: no source topic of this app has its {table.partitions} "
                                  f"partitions, so no worker owns partition {partition}")
            routed = await route(router, request, candidates)
            if isinstance(routed, web.StreamResponse):
                return routed
        part = table.parts.get(partition)
        if part is None or not part.ready:
            raise unavailable(f"table {table.name!r}: partition {partition} is not ready here (restoring); retry")
        value = table.lookup(part, key_bytes, table.value_codec.decode)
        if value is MISSING:
            return json_response({"error": f"table {table.name!r} has no key {key!r}", "key": key,
                                  "partition": partition, "owner": worker.web_url}, status=404)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = dataclasses.asdict(value)
        return json_response({"table": table.name, "key": key, "value": value, "partition": partition,
                              "owner": worker.web_url})

    web_server.add_route(TABLES_ROUTE, TABLES_PATH, tables)
    web_server.add_route(TABLE_ROUTE, TABLE_PATH, table_partitions)
    web_server.add_route(TABLE_KEY_ROUTE, TABLE_KEY_PATH, table_key)
