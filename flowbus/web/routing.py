"""Which worker owns a partition, and forwarding an HTTP request to it.

The group's assignment says who owns what: DescribeGroups lists every member with its client id
and its partitions, on every transport (the embedded coordinator, the flowbus broker, any Kafka
cluster through confluent-kafka). A worker serving ``--web`` joins with its web URL in its
client id (:func:`flowbus.pages.member_client_id`), so the same answer also says where to send
a request for a partition this worker does not own.

A table's partition ``p`` lives with partition ``p`` of the topics that update it (tables are
co-partitioned with their source topics, and the range assignor gives partition ``p`` of every
topic with the same partition count to one member), so a key is routed by its table partition
through any source topic of that count.

A forwarded request carries :data:`FORWARDED_HEADER` and is never forwarded again: during a
rebalance two workers could each believe the other owns a partition, and the request would
bounce between them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web
from yarl import URL

from flowbus.pages import web_url_of
from flowbus.transports.base import GroupDescription, TopicPartition

if TYPE_CHECKING:
    from flowbus.state.table import Table
    from flowbus.worker import Worker

log = logging.getLogger(__name__)

#: How long a group description is used before it is asked again; a lookup that finds no owner
#: (a rebalance happened) asks again at once.
GROUP_DESCRIPTION_TTL_S = 2.0
#: How long DescribeGroups may take before a request is answered 503.
DESCRIBE_TIMEOUT_S = 5.0
#: How long a forwarded request may take on the owning worker.
FORWARD_TIMEOUT_S = 10.0
#: Marks a request one worker forwarded to another (its value: the forwarding worker's URL).
FORWARDED_HEADER = "X-Flowbus-Forwarded-By"
#: Largest forwarded response body read back (aiohttp's default read limit is unbounded for ``read()``).
FORWARDED_BODY_BYTES_MAX = 16 * 1024 * 1024
#: Headers of the owner's response passed back to the client (hop-by-hop and length headers are not).
PASSED_HEADERS = ("Content-Type", "Retry-After", "Cache-Control")


@dataclass(frozen=True, slots=True)
class Owner:
    """The group member owning a partition: this worker (``local``) or another one, with the
    web URL it advertised (None when it serves no ``--web``)."""

    member_id: str
    client_id: str
    web_url: str | None
    local: bool


class NoOwnerError(Exception):
    """No member owns the partition now (a rebalance is under way, or nobody reads the topic)."""


class OwnerUnreachableError(Exception):
    """The owner's web server did not answer (it stopped: the group may not know yet)."""


class Router:
    """Finds partition owners from the group's description and forwards requests to them.

    Args:
        worker: the worker whose group is asked (``app.id``) and whose own partitions are
            answered locally without asking.
    """

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self._described: GroupDescription | None = None
        self._described_at = 0.0
        self._lock = asyncio.Lock()
        """One DescribeGroups at a time: a burst of queries shares one answer."""
        self._session: aiohttp.ClientSession | None = None

    async def describe(self, *, refresh: bool = False) -> GroupDescription | None:
        """The app's group as last described (at most :data:`GROUP_DESCRIPTION_TTL_S` old), or
        None when the broker cannot say now."""
        async with self._lock:
            fresh = time.monotonic() - self._described_at < GROUP_DESCRIPTION_TTL_S
            if self._described is not None and fresh and not refresh:
                return self._described
            worker = self.worker
            try:
                described = await asyncio.wait_for(
                    worker.transport.describe_group(worker.app.id, timeout_s=DESCRIBE_TIMEOUT_S), DESCRIBE_TIMEOUT_S)
            except Exception as exc:  # noqa: BLE001 - a broker that cannot answer is a 503, not a crash
                log.debug("describing group %s failed: %r", worker.app.id, exc)
                return self._described
            self._described, self._described_at = described, time.monotonic()
            return described

    @property
    def described(self) -> GroupDescription | None:
        """The last description of the group (None before the first)."""
        return self._described

    def owners_now(self) -> dict[TopicPartition, Owner]:
        """Every partition of the last description with its owner (the dashboard's table)."""
        described = self._described
        if described is None:
            return {}
        out: dict[TopicPartition, Owner] = {}
        for member in described.members:
            owner = self._owner(member.member_id, member.client_id)
            for tp in member.assignment:
                out[tp] = owner
        return out

    def _owner(self, member_id: str, client_id: str) -> Owner:
        web_url = web_url_of(client_id)
        local = web_url is not None and web_url == self.worker.web_url
        return Owner(member_id, client_id, web_url, local)

    async def owner(self, candidates: list[TopicPartition], *, refresh: bool = False) -> Owner:
        """The owner of the first of ``candidates`` (partitions that live together) anybody owns.

        Raises:
            NoOwnerError: none of them is assigned to any member, even in a fresh description.
        """
        worker = self.worker
        if any(tp in worker.assigned for tp in candidates):
            return Owner("", "", worker.web_url, True)
        for fresh in ((True,) if refresh else (False, True)):
            described = await self.describe(refresh=fresh)
            if described is None:
                continue
            for member in described.members:
                if any(tp in member.assignment for tp in candidates):
                    return self._owner(member.member_id, member.client_id)
        raise NoOwnerError(", ".join(f"{tp.topic}[{tp.partition}]" for tp in candidates))

    def table_partitions(self, table: Table, partition: int) -> list[TopicPartition]:
        """The source partitions that live with ``table``'s ``partition``: partition ``p`` of
        the topic a dataflow's table follows, else of every source topic with the table's
        partition count."""
        if table.source_topic is not None:
            return [TopicPartition(table.source_topic, partition)]
        state = self.worker.state
        counts = state.source_counts if state is not None else {}
        return [TopicPartition(topic, partition) for topic, count in sorted(counts.items()) if count == table.partitions]

    async def forward(self, request: web.Request, owner: Owner) -> web.StreamResponse:
        """Send ``request`` (method, path, query, body) to ``owner`` and answer with its response."""
        assert owner.web_url is not None
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_S))
        # The path as it came, still percent-encoded: a key holding "/", "?" or "%" must reach the
        # owner as the same bytes.
        url = URL(owner.web_url.rstrip("/") + request.rel_url.raw_path_qs, encoded=True)
        headers = {FORWARDED_HEADER: self.worker.web_url or "unknown"}
        if "Content-Type" in request.headers:
            headers["Content-Type"] = request.headers["Content-Type"]
        body = await request.read() if request.can_read_body else None
        try:
            async with self._session.request(request.method, url, data=body, headers=headers) as answer:
                payload = await _read_bounded(answer)
                passed = {h: answer.headers[h] for h in PASSED_HEADERS if h in answer.headers}
                return web.Response(status=answer.status, body=payload, headers=passed)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise OwnerUnreachableError(f"the owner of this key, {owner.web_url}, did not answer: {exc!r}") from exc

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


async def _read_bounded(answer: aiohttp.ClientResponse) -> bytes:
    """The whole body, refused past :data:`FORWARDED_BODY_BYTES_MAX` (a page could return anything)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in answer.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > FORWARDED_BODY_BYTES_MAX:
            raise web.HTTPBadGateway(
                text=_error_json(f"the owner's answer is over {FORWARDED_BODY_BYTES_MAX} bytes"),
                content_type="application/json")
        chunks.append(chunk)
    return b"".join(chunks)


def _error_json(message: str) -> str:
    import json

    return json.dumps({"error": message})


def unavailable(message: str) -> web.HTTPServiceUnavailable:
    """A 503 with a JSON ``error`` and ``Retry-After: 1`` (a rebalance or a restore passes)."""
    return web.HTTPServiceUnavailable(text=_error_json(message), content_type="application/json",
                                      headers={"Retry-After": "1"})


async def route(router: Router, request: web.Request, candidates: list[TopicPartition]) -> Owner | web.StreamResponse:
    """The local owner (answer here), or the remote owner's response (forwarded).

    Raises:
        web.HTTPServiceUnavailable: nobody owns the partition now, or the owner serves no web
            server, or this request was forwarded already and this worker does not own it.
    """
    try:
        owner = await router.owner(candidates)
    except NoOwnerError as exc:
        raise unavailable(f"no worker owns {exc} now (a rebalance?); retry") from None
    if owner.local:
        return owner
    if FORWARDED_HEADER in request.headers:
        raise unavailable(f"forwarded by {request.headers[FORWARDED_HEADER]}, but the partition moved "
                          f"to {owner.web_url or owner.client_id}; retry")
    if owner.web_url is None:
        raise unavailable(f"the owner of this key, {owner.client_id!r}, serves no web server (--web)")
    try:
        return await router.forward(request, owner)
    except OwnerUnreachableError as exc:
        # A worker that stopped stays in the description until the group rebalances: ask the
        # group again, and try once more if the partition has moved (to this worker or another).
        try:
            moved = await router.owner(candidates, refresh=True)
        except NoOwnerError:
            raise unavailable(f"{exc}; no worker owns the partition now (a rebalance?); retry") from None
        if moved.local:
            return moved
        if moved.web_url is None or moved.web_url == owner.web_url:
            raise web.HTTPBadGateway(text=_error_json(str(exc)), content_type="application/json",
                                     headers={"Retry-After": "1"}) from None
        try:
            return await router.forward(request, moved)
        except OwnerUnreachableError as again:
            raise web.HTTPBadGateway(text=_error_json(str(again)), content_type="application/json") from None
