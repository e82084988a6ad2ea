"""``@app.page`` handlers as routes of the worker's web server (:mod:`flowbus.pages` declares them).

A handler returning an aiohttp response is answered as it is; anything else is sent as JSON. A
routed page (``table=``/``topic=`` and ``key=``) first converts the path's key part to the key
type, finds the key's partition and lets its owner answer (:func:`flowbus.web.routing.route`):
the handler then runs on the worker where ``table[key]`` can be read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from flowbus.app_errors import DecodeError
from flowbus.pages import PageSpec
from flowbus.state.table import Table
from flowbus.transports.base import TopicPartition
from flowbus.transports.partitioner import partition_for_key
from flowbus.web.routing import Router, route, unavailable
from flowbus.web.tables import KeyConversionError, convert_key, error, json_response

if TYPE_CHECKING:
    from flowbus.web.server import Handler, WebServer
    from flowbus.worker import Worker

#: Pages are listed by ``GET /`` under this prefix and their name, apart from flowbus's own routes.
PAGE_ROUTE_PREFIX = "page:"


def _respond(result: Any) -> web.StreamResponse:
    return result if isinstance(result, web.StreamResponse) else json_response(result)


def page_handler(spec: PageSpec, worker: Worker, router: Router) -> Handler:
    """The aiohttp handler of ``spec``: routed to the key's owner when ``spec`` asks for it."""
    if spec.route_by is None:
        async def plain(request: web.Request) -> web.StreamResponse:
            return _respond(await spec.handler(request))

        return plain
    by = spec.route_by
    key_part = spec.key
    assert key_part is not None

    async def candidates(request: web.Request) -> list[TopicPartition] | web.Response:
        text = request.match_info[key_part]
        try:
            key = convert_key(text, by.key_type, by.key_codec.serializer.name, by.key_codec.decode)
            key_bytes = by.key_codec.encode(key)
        except (KeyConversionError, DecodeError, TypeError, ValueError) as exc:
            return error(400, f"page {spec.name!r}: bad key: {exc}")
        if key_bytes is None:
            return error(400, f"page {spec.name!r}: a key cannot be null")
        if isinstance(by, Table):
            if by.global_table:
                return []  # every worker holds every partition: answer here
            if not by.partitions:
                raise unavailable(f"table {by.name!r} is not open yet (the worker is starting)")
            return router.table_partitions(by, partition_for_key(key_bytes, by.partitions))
        assert worker.producer is not None
        count = await worker.producer.partitions_for(by.name)
        return [TopicPartition(by.name, partition_for_key(key_bytes, count))]

    async def routed(request: web.Request) -> web.StreamResponse:
        found = await candidates(request)
        if isinstance(found, web.Response):
            return found
        if found:
            owner = await route(router, request, found)
            if isinstance(owner, web.StreamResponse):
                return owner
        return _respond(await spec.handler(request))

    return routed


def add_page_routes(web_server: WebServer, worker: Worker, router: Router) -> None:
    """One route per ``@app.page`` of ``worker``'s app."""
    for spec in worker.app.pages:
        web_server.add_route(PAGE_ROUTE_PREFIX + spec.name, spec.path, page_handler(spec, worker, router),
                             method=spec.method)
