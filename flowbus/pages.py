"""User pages: ``@app.page("/path")`` declarations, served by ``flowbus worker --web``.

Declaring a page imports nothing of the web server: aiohttp is loaded only when a worker serves
``--web`` (:mod:`flowbus.web.pages` turns these specs into routes then).

A page handler is ``async def handler(request)`` taking an :class:`aiohttp.web.Request` and
returning either an :class:`aiohttp.web.StreamResponse` (sent as it is) or any JSON-able object
(sent as ``application/json``; dataclasses too). With ``table=`` (or ``topic=``) and ``key=``,
the page is *routed*: the URL's ``{key}`` part is converted to the table's (or topic's) key type,
and the request is answered by the worker owning that key's partition, forwarded there by
whichever worker received it, as faust's ``@app.table_route`` does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flowbus.state.table import Table
    from flowbus.topic import Topic

PageHandler = Callable[[Any], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class PageSpec:
    """One ``@app.page``: the path (aiohttp's syntax, ``/counts/{word}``), the HTTP method, the
    handler, and optionally what routes it to the owner of a key (``route_by`` and the name of
    the path part holding the key)."""

    path: str
    method: str
    handler: PageHandler
    name: str
    route_by: Table | Topic | None = None
    key: str | None = None


#: Between a worker's own client id and its web server's URL in the client id it joins the
#: group with: ``wordcount-host-4242@http://10.0.0.7:6066``. DescribeGroups returns every
#: member's client id with its assignment on every transport (and to any Kafka tool), while
#: librdkafka offers no way to put user data in a member's subscription: so this is how the
#: workers of a group learn where to forward a query for a partition they do not own.
WEB_URL_SEPARATOR = "@"


def member_client_id(client_id: str, web_url: str | None) -> str:
    """``client_id``, with ``web_url`` after :data:`WEB_URL_SEPARATOR` when the worker serves one."""
    return f"{client_id}{WEB_URL_SEPARATOR}{web_url}" if web_url else client_id


def web_url_of(client_id: str) -> str | None:
    """The web server URL a group member's client id carries, or None (no ``--web``, or not a
    flowbus worker)."""
    _, sep, url = client_id.rpartition(WEB_URL_SEPARATOR)
    if sep and url.startswith(("http://", "https://")):
        return url
    return None
