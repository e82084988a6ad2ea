"""Kafka API handlers: decoded request dicts → :class:`BrokerCore` calls → response dicts.

This is the only module that knows request and response field names (the snake_case names of
Kafka's JSON message specs, as ``flowbus.protocol`` decodes them) and how versions differ. The
core stays wire-independent; the server stays byte-only.

A handler returns the response body, or None when no response must be sent (Produce acks=0).
Every advertised version is implemented: Produce starts at v3 and Fetch at v4 (RecordBatch v2
only), so an older client fails to negotiate instead of failing on its first request.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any

from flowbus.broker.authz import GUARDS, Check
from flowbus.broker.core import (
    PARTITIONS_PER_SLICE,
    BrokerCore,
    FetchRequestPartition,
    NewTopic,
    ProduceResult,
    slice_deadline,
)
from flowbus.broker.errors import CloseAfterResponse, CloseConnection
from flowbus.broker.group_coordinator import OffsetToCommit
from flowbus.broker.security.acls import (
    ACLS_FILE,
    AclBinding,
    AclError,
    AclFilter,
    AclOperation,
    AclStore,
    Authorizer,
    PatternType,
    Permission,
    ResourceType,
)
from flowbus.broker.security.credentials import CREDENTIALS_FILE, CredentialStore
from flowbus.broker.security.errors import CredentialError
from flowbus.broker.security.sasl import ANONYMOUS, SaslSession
from flowbus.broker.security.scram import (
    MECHANISMS_BY_CODE,
    ScramCredential,
    check_user_name,
)
from flowbus.broker.topic_admin import AlterConfigsResult, ConfigChange, NewPartitions
from flowbus.protocol.api import ApiKey
from flowbus.protocol.codec import RequestHeader, api_versions_body
from flowbus.protocol.error_codes import ErrorCode

log = logging.getLogger(__name__)

Body = dict[str, Any]
ZERO_UUID = b"\x00" * 16


def topic_id_bytes(topic_id: str) -> bytes:
    """A topic id as Metadata carries it (16 bytes): the catalog's UUID, or all zeros (Kafka's
    "no id") for a topic without one. Clients compare ids to notice a topic deleted and created
    again under the same name (librdkafka then drops what it knew of the old one)."""
    return uuid.UUID(topic_id).bytes if topic_id else ZERO_UUID
#: Authorized-operations value meaning "not requested / not provided" (KIP-430).
AUTHORIZED_OPERATIONS_OMITTED = -(1 << 31)
# KIP-430 authorized operations: one bit per AclOperation code (Read 3, Write 4, Create 5,
# Delete 6, Alter 7, Describe 8, ClusterAction 9, DescribeConfigs 10, AlterConfigs 11,
# IdempotentWrite 12). Kafka without an authorizer answers, when asked, every operation its
# ``AclEntry.supportedOperations`` lists for the resource type; so does flowbus with its
# authorizer off (everything is allowed). With it on, ``authz.py`` replaces them per principal.
#: Cluster: Create, Alter, Describe, ClusterAction, DescribeConfigs, AlterConfigs, IdempotentWrite.
CLUSTER_OPERATIONS_ALL = sum(1 << code for code in (5, 7, 8, 9, 10, 11, 12))
#: Topic: Read, Write, Create, Delete, Alter, Describe, DescribeConfigs, AlterConfigs.
TOPIC_OPERATIONS_ALL = sum(1 << code for code in (3, 4, 5, 6, 7, 8, 10, 11))
#: Group: Read, Delete, Describe, as in Kafka up to 3.9. Kafka 4.0 adds DescribeConfigs and
#: AlterConfigs with its group configs (KIP-848, KAFKA-14510); flowbus has no group configs
#: (DescribeConfigs knows topics and this broker only), so it does not claim those two.
GROUP_OPERATIONS_ALL = sum(1 << code for code in (3, 6, 8))
#: DescribeCluster endpoint types (KIP-919): this broker is a broker endpoint only.
ENDPOINT_TYPE_BROKERS = 1
ENDPOINT_TYPE_CONTROLLERS = 2
#: Upsertions and deletions of one AlterUserScramCredentials request, at most (each upsertion
#: is checked and the file rewritten once per request).
ALTER_SCRAM_CREDENTIALS_MAX = 1_000


def _address_for(conn: ConnectionInfo, host: str, port: int) -> dict[str, Any]:
    """This broker's address as the connection's listener advertises it (one broker: every
    node address a response carries is this broker's)."""
    if conn.advertised is not None:
        host, port = conn.advertised
    return {"host": host, "port": port}


#: First version of each transactional API that knows PRODUCER_FENCED (KIP-588); older
#: versions are told INVALID_PRODUCER_EPOCH, which their clients treat as fenced.
PRODUCER_FENCED_MIN_VERSION: dict[int, int] = {
    ApiKey.INIT_PRODUCER_ID: 4,
    ApiKey.ADD_PARTITIONS_TO_TXN: 2,
    ApiKey.ADD_OFFSETS_TO_TXN: 2,
    ApiKey.END_TXN: 2,
    ApiKey.TXN_OFFSET_COMMIT: 3,
}


def _fenced_for(header: RequestHeader, error: int) -> int:
    """PRODUCER_FENCED as the request's API version can express it."""
    if error == ErrorCode.PRODUCER_FENCED and header.api_version < PRODUCER_FENCED_MIN_VERSION.get(
        header.api_key, 0
    ):
        return ErrorCode.INVALID_PRODUCER_EPOCH
    return error


@dataclass(slots=True)
class ConnectionInfo:
    """Who sent a request: for group member descriptions, log lines and the authorizer.

    ``principal`` is ``User:NAME`` after SASL, the TLS client certificate's subject
    (``User:CN=...``) on an SSL listener that received one, else ``User:ANONYMOUS``; ``listener``
    names the listener the connection came through (``docs/security.md``).
    """

    client_host: str
    listener: str = "PLAINTEXT"
    security_protocol: str = "PLAINTEXT"
    #: The listener's advertised (host, port): what Metadata, FindCoordinator and DescribeCluster
    #: tell this connection (None: the core's node address).
    advertised: tuple[str, int] | None = None
    #: ``User:<subject>`` of a verified TLS client certificate.
    tls_principal: str | None = None
    #: The SASL state of a connection on a SASL listener (None elsewhere).
    sasl: SaslSession | None = None

    @property
    def principal(self) -> str:
        """The authenticated principal; ``User:ANONYMOUS`` when there is none."""
        if self.sasl is not None and self.sasl.principal is not None:
            return self.sasl.principal
        return self.tls_principal or ANONYMOUS


Handler = Callable[[RequestHeader, Body, ConnectionInfo], Awaitable[Body | None]]
#: ``GUARDS.get`` default: an API the authorization table forgot.
_UNGUARDED: Any = object()
#: Creations of one CreateAcls and filters of one DeleteAcls request, at most (each request
#: rewrites ``acls.json`` once).
ACL_CHANGES_PER_REQUEST_MAX = 1_000


class ArrivalOrder:
    """Keeps requests that touch the same keys (partitions, groups) in arrival order while some
    of them yield to the event loop halfway (issue 10, item 4).

    A request that will yield, or that touches a key an unfinished earlier one claimed, calls
    :meth:`claim` before its first ``await`` (handler tasks start in arrival order), waits for
    the earlier claimers it returns, does its work, and calls :meth:`release`. Per key the
    claimers form a chain in arrival order, and each waits only for earlier ones: no cycle. A
    request that neither yields nor meets a claimed key never waits (and :attr:`active` False
    lets it skip even the key lookups).
    """

    def __init__(self) -> None:
        #: key -> the completion of the last request that claimed it and has not released it.
        self._tails: dict[Hashable, asyncio.Future[None]] = {}

    @property
    def active(self) -> bool:
        """Some request holds a claim."""
        return bool(self._tails)

    def busy(self, keys: Iterable[Hashable]) -> bool:
        """Does an unfinished request hold a claim on one of ``keys``?"""
        tails = self._tails
        return any(key in tails for key in keys)

    def claim(self, keys: Iterable[Hashable]) -> tuple[list[asyncio.Future[None]], asyncio.Future[None]]:
        """Claim ``keys``; returns the earlier claimers to wait for and this claim's completion."""
        mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        earlier: dict[int, asyncio.Future[None]] = {}
        tails = self._tails
        for key in keys:
            previous = tails.get(key)
            if previous is not None and previous is not mine:  # a key named twice: not earlier
                earlier[id(previous)] = previous
            tails[key] = mine
        return list(earlier.values()), mine

    def release(self, keys: Iterable[Hashable], mine: asyncio.Future[None]) -> None:
        """Drop the claims still ours and let the requests waiting for this one go on."""
        tails = self._tails
        for key in keys:
            if tails.get(key) is mine:
                del tails[key]
        if not mine.done():
            mine.set_result(None)


async def _wait_for_earlier(earlier: list[asyncio.Future[None]]) -> None:
    # asyncio.wait, not await: cancelling this request (its connection closed) must not cancel
    # an earlier request's completion, which others wait for too. Earlier claims are always
    # released (in a finally), so this ends.
    if earlier:
        await asyncio.wait(earlier)


class Handlers:
    """Dispatch table from API key to the adapter of that API."""

    def __init__(self, core: BrokerCore, credentials: CredentialStore | None = None) -> None:
        self.core = core
        #: SCRAM credentials (``<data-dir>/credentials.json``) for SASL and the SCRAM admin APIs.
        self.credentials = credentials or CredentialStore(core.config.data_dir / CREDENTIALS_FILE)
        #: Partitions of produce requests that yield halfway (more than PARTITIONS_PER_SLICE):
        #: a later produce to one of them is appended after it, as if nothing had yielded.
        self._produce_order = ArrivalOrder()
        #: Groups of OffsetCommit requests committed in slices: later commits of the group wait.
        self._commit_order = ArrivalOrder()
        #: The ACL authorizer when ``--authorizer on`` (``core.config.authorizer``), else None:
        #: no request is checked and the ACL APIs answer SECURITY_DISABLED, as Kafka without one.
        self.authorizer: Authorizer | None = None
        if core.config.authorizer is not None:
            self.authorizer = Authorizer(AclStore(core.config.data_dir / ACLS_FILE), core.config.authorizer)
        self._table: dict[int, Handler] = {
            ApiKey.API_VERSIONS: self.api_versions,
            ApiKey.METADATA: self.metadata,
            ApiKey.PRODUCE: self.produce,
            ApiKey.FETCH: self.fetch,
            ApiKey.LIST_OFFSETS: self.list_offsets,
            ApiKey.CREATE_TOPICS: self.create_topics,
            ApiKey.DELETE_TOPICS: self.delete_topics,
            ApiKey.DESCRIBE_CONFIGS: self.describe_configs,
            ApiKey.CREATE_PARTITIONS: self.create_partitions,
            ApiKey.ALTER_CONFIGS: self.alter_configs,
            ApiKey.INCREMENTAL_ALTER_CONFIGS: self.incremental_alter_configs,
            ApiKey.DELETE_RECORDS: self.delete_records,
            ApiKey.DESCRIBE_LOG_DIRS: self.describe_log_dirs,
            ApiKey.OFFSET_FOR_LEADER_EPOCH: self.offset_for_leader_epoch,
            ApiKey.FIND_COORDINATOR: self.find_coordinator,
            ApiKey.JOIN_GROUP: self.join_group,
            ApiKey.SYNC_GROUP: self.sync_group,
            ApiKey.HEARTBEAT: self.heartbeat,
            ApiKey.LEAVE_GROUP: self.leave_group,
            ApiKey.OFFSET_COMMIT: self.offset_commit,
            ApiKey.OFFSET_FETCH: self.offset_fetch,
            ApiKey.DESCRIBE_GROUPS: self.describe_groups,
            ApiKey.LIST_GROUPS: self.list_groups,
            ApiKey.INIT_PRODUCER_ID: self.init_producer_id,
            ApiKey.SASL_HANDSHAKE: self.sasl_handshake,
            ApiKey.SASL_AUTHENTICATE: self.sasl_authenticate,
            ApiKey.DESCRIBE_USER_SCRAM_CREDENTIALS: self.describe_user_scram_credentials,
            ApiKey.ALTER_USER_SCRAM_CREDENTIALS: self.alter_user_scram_credentials,
            ApiKey.ADD_PARTITIONS_TO_TXN: self.add_partitions_to_txn,
            ApiKey.ADD_OFFSETS_TO_TXN: self.add_offsets_to_txn,
            ApiKey.END_TXN: self.end_txn,
            ApiKey.TXN_OFFSET_COMMIT: self.txn_offset_commit,
            ApiKey.DELETE_GROUPS: self.delete_groups,
            ApiKey.OFFSET_DELETE: self.offset_delete,
            ApiKey.DESCRIBE_CLUSTER: self.describe_cluster,
            ApiKey.DESCRIBE_PRODUCERS: self.describe_producers,
            ApiKey.DESCRIBE_TRANSACTIONS: self.describe_transactions,
            ApiKey.LIST_TRANSACTIONS: self.list_transactions,
            ApiKey.DESCRIBE_ACLS: self.describe_acls,
            ApiKey.CREATE_ACLS: self.create_acls,
            ApiKey.DELETE_ACLS: self.delete_acls,
        }

    def register(self, api_key: int, handler: Handler) -> None:
        """Install or replace a handler (issue 4 plugs in the transaction APIs this way)."""
        self._table[api_key] = handler

    def is_produce_without_response(self, header: RequestHeader, body: Body) -> bool:
        """Produce with acks=0 gets no response at all (the client does not read one)."""
        return header.api_key == ApiKey.PRODUCE and body.get("acks") == 0

    async def handle(
        self, header: RequestHeader, body: Body, conn: ConnectionInfo
    ) -> Body | None:
        handler = self._table.get(header.api_key)
        if handler is None:
            return {"error_code": ErrorCode.UNSUPPORTED_VERSION}
        if self.authorizer is not None:
            # Every API has an entry (a test checks): a missing one fails closed here.
            guard = GUARDS.get(ApiKey(header.api_key), _UNGUARDED)
            if guard is _UNGUARDED:
                return {"error_code": ErrorCode.CLUSTER_AUTHORIZATION_FAILED}
            if guard is not None:
                check = Check(self.authorizer, conn.principal, conn.client_host, header,
                              self.core.config.auto_create_topics_enable)

                async def inner(filtered: Body) -> Body | None:
                    return await handler(header, filtered, conn)

                return await guard(check, body, inner)
        return await handler(header, body, conn)

    # -- cluster ---------------------------------------------------------------------------

    async def api_versions(
        self, header: RequestHeader, body: Body, conn: ConnectionInfo
    ) -> Body:
        return api_versions_body()

    async def metadata(
        self, header: RequestHeader, body: Body, conn: ConnectionInfo
    ) -> Body:
        requested = body.get("topics")
        if requested is None or (header.api_version == 0 and not requested):
            names = None
        else:
            names = [t["name"] for t in requested if t.get("name") is not None]
        allow = bool(body.get("allow_auto_topic_creation", True))
        result = await self.core.metadata(names, allow_auto_create=allow)
        node_id = result.controller_id
        # v8+; every topic entry, as Kafka (which has no authorizer to leave some out here).
        topic_operations = (
            TOPIC_OPERATIONS_ALL
            if body.get("include_topic_authorized_operations")
            else AUTHORIZED_OPERATIONS_OMITTED
        )
        return {
            "throttle_time_ms": 0,
            "brokers": [
                {"node_id": b.node_id, **_address_for(conn, b.host, b.port), "rack": None}
                for b in result.brokers
            ],
            "cluster_id": result.cluster_id,
            "controller_id": node_id,
            "topics": [
                {
                    "error_code": t.error_code,
                    "name": t.name,
                    "topic_id": topic_id_bytes(t.topic_id),
                    "is_internal": t.is_internal,
                    "partitions": [
                        {
                            "error_code": 0,
                            "partition_index": p,
                            "leader_id": node_id,
                            "leader_epoch": 0,
                            "replica_nodes": [node_id],
                            "isr_nodes": [node_id],
                            "offline_replicas": [],
                        }
                        for p in range(t.partitions)
                    ],
                    "topic_authorized_operations": topic_operations,
                }
                for t in result.topics
            ],
            # Metadata v8-10 asks for them too; librdkafka's DescribeCluster uses it (not API 60).
            "cluster_authorized_operations": (
                CLUSTER_OPERATIONS_ALL
                if body.get("include_cluster_authorized_operations")
                else AUTHORIZED_OPERATIONS_OMITTED
            ),
        }

    # -- produce / fetch -------------------------------------------------------------------

    async def produce(
        self, header: RequestHeader, body: Body, conn: ConnectionInfo
    ) -> Body | None:
        acks = body.get("acks", 1)
        responses: list[Body] = []
        # Every partition is appended first (in request order); then the answers are collected,
        # some of which wait for an fsync (durable acks, group commit).
        pending: list[tuple[list[dict[str, Any]], int, int, asyncio.Future[ProduceResult]]] = []
        topic_data = body["topic_data"]
        order = self._produce_order
        sliced = sum(len(topic["partition_data"]) for topic in topic_data) > PARTITIONS_PER_SLICE
        keys = None
        if sliced or order.active:
            keys = [(topic["name"], part["index"]) for topic in topic_data for part in topic["partition_data"]]
        if keys is None or not (sliced or order.busy(keys)):
            # The common case: no await before every partition is appended, so requests started
            # in order (one connection's pipeline) are appended in order (see core.py).
            for topic in topic_data:
                name = topic["name"]
                partitions: list[dict[str, Any]] = []
                responses.append({"name": name, "partition_responses": partitions})
                for part in topic["partition_data"]:
                    self._produce_partition(name, part, acks, partitions, pending)
        else:
            # Many partitions: yield to the event loop between slices so other clients are
            # served. Claimed before the first await, so a later produce to any of these
            # partitions (from any connection) is appended after this one, as without slices.
            earlier, mine = order.claim(keys)
            try:
                await _wait_for_earlier(earlier)
                deadline = slice_deadline()
                for topic in topic_data:
                    name = topic["name"]
                    partitions = []
                    responses.append({"name": name, "partition_responses": partitions})
                    for part in topic["partition_data"]:
                        if time.perf_counter() >= deadline:
                            await asyncio.sleep(0)  # never inside one partition's append
                            deadline = slice_deadline()
                        self._produce_partition(name, part, acks, partitions, pending)
            finally:
                order.release(keys, mine)
        deadline = slice_deadline()
        for partitions, slot, index, future in pending:
            if sliced and time.perf_counter() >= deadline:
                await asyncio.sleep(0)  # appended already: only the answers are built here
                deadline = slice_deadline()
            result = await future
            partitions[slot] = {
                "index": index,
                "error_code": result.error_code,
                "base_offset": result.base_offset,
                "log_append_time_ms": result.log_append_time_ms,
                "log_start_offset": result.log_start_offset,
                "record_errors": [
                    {"batch_index": index, "batch_index_error_message": message}
                    for index, message in result.record_errors
                ] if result.record_errors else [],
                "error_message": result.error_message,
            }
        if acks == 0:
            failed = [
                f"{t['name']}-{p['index']}: {ErrorCode(p['error_code']).name}"
                for t in responses
                for p in t["partition_responses"]
                if p["error_code"] != ErrorCode.NONE
            ]
            if failed:
                raise CloseConnection(f"acks=0 produce failed ({', '.join(failed)})")
            return None
        return {"responses": responses, "throttle_time_ms": 0}

    def _produce_partition(
        self,
        name: str,
        part: Body,
        acks: int,
        partitions: list[dict[str, Any]],
        pending: list[tuple[list[dict[str, Any]], int, int, asyncio.Future[ProduceResult]]],
    ) -> None:
        """Append one partition's batches now; its answer goes to ``partitions`` (a placeholder
        filled in from ``pending`` once the answer may be sent)."""
        records = part.get("records")
        if acks not in (0, 1, -1) or records is None:
            error = ErrorCode.INVALID_REQUIRED_ACKS if acks not in (0, 1, -1) else ErrorCode.INVALID_RECORD
            partitions.append({"index": part["index"], "error_code": error, "base_offset": -1})
            return
        future = self.core.produce_nowait(name, part["index"], records)
        pending.append((partitions, len(partitions), part["index"], future))
        partitions.append({})

    async def fetch(
        self, header: RequestHeader, body: Body, conn: ConnectionInfo
    ) -> Body:
        requests: list[FetchRequestPartition] = []
        deadline = slice_deadline()
        for t in body["topics"]:
            topic = t["topic"]
            for p in t["partitions"]:
                requests.append(FetchRequestPartition(
                    topic, p["partition"], p["fetch_offset"], p["partition_max_bytes"],
                    p.get("current_leader_epoch", -1),
                ))
                # ~0.5 us a partition: up to 10,000 would hold the loop ~5 ms in one turn.
                if not len(requests) & 127 and time.perf_counter() >= deadline:
                    await asyncio.sleep(0)
                    deadline = slice_deadline()
        results = await self.core.fetch(
            requests,
            max_wait_ms=body["max_wait_ms"],
            min_bytes=body["min_bytes"],
            max_bytes=body.get("max_bytes", 0x7FFFFFFF),
            isolation_level=body.get("isolation_level", 0),
        )
        responses: list[Body] = []
        by_topic: dict[str, list[Body]] = {}
        sliced = len(results) > PARTITIONS_PER_SLICE
        deadline = slice_deadline()
        for r in results:
            if sliced and time.perf_counter() >= deadline:
                await asyncio.sleep(0)  # up to 10,000 partitions: let other clients in
                deadline = slice_deadline()
            partitions = by_topic.get(r.topic)
            if partitions is None:
                partitions = by_topic[r.topic] = []
                responses.append({"topic": r.topic, "partitions": partitions})
            partitions.append(
                {
                    "partition_index": r.partition,
                    "error_code": r.error_code,
                    "high_watermark": r.high_watermark,
                    "last_stable_offset": r.last_stable_offset,
                    "log_start_offset": r.log_start_offset,
                    "aborted_transactions": (
                        None
                        if r.aborted_transactions is None
                        else [
                            {"producer_id": pid, "first_offset": off}
                            for pid, off in r.aborted_transactions
                        ]
                    ),
                    "preferred_read_replica": -1,
                    "records": r.records,
                }
            )
        return {
            "throttle_time_ms": 0,
            "error_code": 0,
            "session_id": 0,
            "responses": responses,
        }

    async def list_offsets(
        self, header: RequestHeader, body: Body, conn: ConnectionInfo
    ) -> Body:
        isolation = body.get("isolation_level", 0)
        topics = []
        deadline = slice_deadline()
        for topic in body["topics"]:
            partitions = []
            for p in topic["partitions"]:
                if time.perf_counter() >= deadline:
                    # core.list_offsets never suspends: yield here, or 10,000 partitions hold
                    # the event loop in one turn. Read-only, so nothing to keep in order.
                    await asyncio.sleep(0)
                    deadline = slice_deadline()
                r = await self.core.list_offsets(
                    topic["name"],
                    p["partition_index"],
                    p["timestamp"],
                    isolation_level=isolation,
                )
                partitions.append(
                    {
                        "partition_index": p["partition_index"],
                        "error_code": r.error_code,
                        "old_style_offsets": [r.offset] if r.offset >= 0 else [],
                        "timestamp": r.timestamp,
                        "offset": r.offset,
                        "leader_epoch": r.leader_epoch,
                    }
                )
            topics.append({"name": topic["name"], "partitions": partitions})
        return {"throttle_time_ms": 0, "topics": topics}

    async def offset_for_leader_epoch(
        self, header: RequestHeader, body: Body, conn: ConnectionInfo
    ) -> Body:
        topics = []
        for topic in body["topics"]:
            partitions = []
            for p in topic["partitions"]:
                error, epoch, end = await self.core.offset_for_leader_epoch(
                    topic["topic"], p["partition"], p["leader_epoch"]
                )
                partitions.append(
                    {
                        "error_code": error,
                        "partition": p["partition"],
                        "leader_epoch": epoch,
                        "end_offset": end,
                    }
                )
            topics.append({"topic": topic["topic"], "partitions": partitions})
        return {"throttle_time_ms": 0, "topics": topics}

    # -- topics and configs ----------------------------------------------------------------

    def _manual_assignment(self, topic: Body) -> int | tuple[int, str]:
        """A CreateTopics entry's manual replica assignment: its partition count when it is one
        this broker can honour (partitions 0..n-1, each on this broker alone), else Kafka's
        error and a message. As in Kafka, an assignment comes with num_partitions and
        replication_factor of -1 (INVALID_REQUEST otherwise)."""
        if topic["num_partitions"] != -1 or topic["replication_factor"] != -1:
            return ErrorCode.INVALID_REQUEST, "with a replica assignment, num_partitions and replication_factor must be -1"
        node_id = self.core.node.node_id
        indexes = sorted(a["partition_index"] for a in topic["assignments"])
        if indexes != list(range(len(indexes))):
            return ErrorCode.INVALID_REPLICA_ASSIGNMENT, "partitions must be numbered 0 to n-1, each once"
        for a in topic["assignments"]:
            if list(a["broker_ids"]) != [node_id]:
                return (
                    ErrorCode.INVALID_REPLICA_ASSIGNMENT,
                    (
                        f"partition {a['partition_index']} names brokers {list(a['broker_ids'])}; "
                        f"this cluster has one broker, {node_id}, and one replica per partition"
                    ),
                )
        return len(indexes)

    async def create_topics(
        self, header: RequestHeader, body: Body, conn: ConnectionInfo
    ) -> Body:
        new_topics = []
        bad_assignments: dict[str, tuple[int, str]] = {}
        for t in body["topics"]:
            partitions, replication = t["num_partitions"], t["replication_factor"]
            if t.get("assignments"):
                found = self._manual_assignment(t)
                if isinstance(found, tuple):
                    bad_assignments[t["name"]] = found
                else:
                    partitions, replication = found, 1
            configs = {
                c["name"]: c["value"]
                for c in t.get("configs", [])
                if c.get("value") is not None
            }
            new_topics.append(NewTopic(t["name"], partitions, replication, configs))
        results = await self.core.create_topics(
            [t for t in new_topics if t.name not in bad_assignments],
            validate_only=bool(body.get("validate_only", False)),
        )
        by_name = {r.name: r for r in results}
        topics = []
        for t in new_topics:
            r = by_name.get(t.name)
            if r is None:
                code, message = bad_assignments[t.name]
                topics.append({"name": t.name, "error_code": code, "error_message": message, "configs": None})
                continue
            topics.append(
                {
                    "name": r.name,
                    "error_code": r.error_code,
                    "error_message": r.error_message,
                    "topic_config_error_code": 0,
                    "num_partitions": r.num_partitions,
                    "replication_factor": r.replication_factor,
                    "configs": [
                        {
                            "name": c.name,
                            "value": c.value,
                            "read_only": c.read_only,
                            "config_source": c.source,
                            "is_sensitive": c.is_sensitive,
                        }
                        for c in r.configs
                    ]
                    if r.error_code == 0
                    else None,
                }
            )
        return {"throttle_time_ms": 0, "topics": topics}

    async def delete_topics(
        self, header: RequestHeader, body: Body, conn: ConnectionInfo
    ) -> Body:
        results = await self.core.delete_topics(list(body["topic_names"]))
        return {
            "throttle_time_ms": 0,
            "responses": [
                {"name": name, "error_code": error, "error_message": None}
                for name, error in results
            ],
        }

    async def describe_configs(
        self, header: RequestHeader, body: Body, conn: ConnectionInfo
    ) -> Body:
        resources = [
            (r["resource_type"], r["resource_name"], r.get("configuration_keys"))
            for r in body["resources"]
        ]
        results = await self.core.describe_configs(resources)
        return {
            "throttle_time_ms": 0,
            "results": [
                {
                    "error_code": r.error_code,
                    "error_message": r.error_message,
                    "resource_type": r.resource_type,
                    "resource_name": r.resource_name,
                    "configs": [
                        {
                            "name": c.name,
                            "value": c.value,
                            "read_only": c.read_only,
                            "config_source": c.source,
                            "is_default": c.is_default,
                            "is_sensitive": c.is_sensitive,
                            "synonyms": [],
                            "config_type": 0,
                            "documentation": None,
                        }
                        for c in r.configs
                    ],
                }
                for r in results
            ],
        }

    async def create_partitions(
        self, header: RequestHeader, body: Body, conn: ConnectionInfo
    ) -> Body:
        topics = [
            NewPartitions(
                t["name"],
                t["count"],
                None if t.get("assignments") is None else [list(a["broker_ids"]) for a in t["assignments"]],
            )
            for t in body["topics"]
        ]
        results = await self.core.topic_admin.create_partitions(
            topics, validate_only=bool(body.get("validate_only", False))
        )
        return {
            "throttle_time_ms": 0,
            "results": [
                {"name": r.name, "error_code": r.error_code, "error_message": r.error_message}
                for r in results
            ],
        }

    async def alter_configs(
        self, header: RequestHeader, body: Body, conn: ConnectionInfo
    ) -> Body:
        resources = [
            (r["resource_type"], r["resource_name"], [(c["name"], c.get("value")) for c in r["configs"]])
            for r in body["resources"]
        ]
        results = await self.core.topic_admin.alter_configs(
            resources, validate_only=bool(body.get("validate_only", False))
        )
        return {"throttle_time_ms": 0, "responses": _alter_configs_responses(results)}

    async def incremental_alter_configs(
        self, header: RequestHeader, body: Body, conn: ConnectionInfo
    ) -> Body:
        resources = [
            (
                r["resource_type"],
                r["resource_name"],
                [ConfigChange(c["name"], c["config_operation"], c.get("value")) for c in r["configs"]],
            )
            for r in body["resources"]
        ]
        results = await self.core.topic_admin.incremental_alter_configs(
            resources, validate_only=bool(body.get("validate_only", False))
        )
        return {"throttle_time_ms": 0, "responses": _alter_configs_responses(results)}

    async def delete_records(
        self, header: RequestHeader, body: Body, conn: ConnectionInfo
    ) -> Body:
        wanted = [
            (t["name"], p["partition_index"], p["offset"])
            for t in body["topics"]
            for p in t["partitions"]
        ]
        results = await self.core.topic_admin.delete_records(wanted)
        topics: list[Body] = []
        by_topic: dict[str, list[Body]] = {}
        for r in results:
            partitions = by_topic.get(r.topic)
            if partitions is None:
                partitions = by_topic[r.topic] = []
                topics.append({"name": r.topic, "partitions": partitions})
            partitions.append(
                {"partition_index": r.partition, "low_watermark": r.low_watermark, "error_code": r.error_code}
            )
        return {"throttle_time_ms": 0, "topics": topics}

    async def describe_log_dirs(
        self, header: RequestHeader, body: Body, conn: ConnectionInfo
    ) -> Body:
        requested = body.get("topics")
        wanted = None if requested is None else [(t["topic"], list(t["partitions"])) for t in requested]
        d = await self.core.topic_admin.describe_log_dirs(wanted)
        topics: list[Body] = []
        by_topic: dict[str, list[Body]] = {}
        for p in d.partitions:
            partitions = by_topic.get(p.topic)
            if partitions is None:
                partitions = by_topic[p.topic] = []
                topics.append({"name": p.topic, "partitions": partitions})
            # One replica per partition, the current one: no lag, never a future log.
            partitions.append(
                {"partition_index": p.partition, "partition_size": p.size_bytes, "offset_lag": 0, "is_future_key": False}
            )
        return {
            "throttle_time_ms": 0,
            "error_code": 0,
            "results": [
                {
                    "error_code": 0,
                    "log_dir": d.path,
                    "topics": topics,
                    "total_bytes": d.total_bytes,
                    "usable_bytes": d.usable_bytes,
                }
            ],
        }

    # -- groups ----------------------------------------------------------------------------

    async def find_coordinator(
        self, header: RequestHeader, body: Body, conn: ConnectionInfo
    ) -> Body:
        result = await self.core.find_coordinator(body["key"], body.get("key_type", 0))
        node = result.node
        return {
            "throttle_time_ms": 0,
            "error_code": result.error_code,
            "error_message": result.error_message,
            "node_id": node.node_id if node else -1,
            **(_address_for(conn, node.host, node.port) if node else {"host": "", "port": -1}),
        }

    async def join_group(
        self, header: RequestHeader, body: Body, conn: ConnectionInfo
    ) -> Body:
        result = await self.core.groups.join_group(
            body["group_id"],
            body["member_id"],
            body["protocol_type"],
            [(p["name"], bytes(p["metadata"])) for p in body["protocols"]],
            session_timeout_ms=body["session_timeout_ms"],
            rebalance_timeout_ms=body.get("rebalance_timeout_ms", -1),
            group_instance_id=body.get("group_instance_id"),
            client_id=header.client_id or "",
            client_host=conn.client_host,
            require_known_member_id=header.api_version >= 4,
        )
        return {
            "throttle_time_ms": 0,
            "error_code": result.error_code,
            "generation_id": result.generation_id,
            "protocol_type": result.protocol_type,
            # Versions before 7 cannot carry a null protocol name.
            "protocol_name": result.protocol_name
            if result.protocol_name is not None or header.api_version >= 7
            else "",
            "leader": result.leader,
            "member_id": result.member_id,
            "members": [
                {
                    "member_id": m.member_id,
                    "group_instance_id": m.group_instance_id,
                    "metadata": m.metadata,
                }
                for m in result.members
            ],
        }

    async def sync_group(
        self, header: RequestHeader, body: Body, conn: ConnectionInfo
    ) -> Body:
        result = await self.core.groups.sync_group(
            body["group_id"],
            body["generation_id"],
            body["member_id"],
            {
                a["member_id"]: bytes(a["assignment"])
                for a in body.get("assignments", [])
            },
            group_instance_id=body.get("group_instance_id"),
            protocol_type=body.get("protocol_type"),
            protocol_name=body.get("protocol_name"),
        )
        return {
            "throttle_time_ms": 0,
            "error_code": result.error_code,
            "protocol_type": result.protocol_type,
            "protocol_name": result.protocol_name,
            "assignment": result.assignment,
        }

    async def heartbeat(
        self, header: RequestHeader, body: Body, conn: ConnectionInfo
    ) -> Body:
        error = self.core.groups.heartbeat(
            body["group_id"],
            body["generation_id"],
            body["member_id"],
            body.get("group_instance_id"),
        )
        return {"throttle_time_ms": 0, "error_code": error}

    async def leave_group(
        self, header: RequestHeader, body: Body, conn: ConnectionInfo
    ) -> Body:
        members: list[tuple[str, str | None]]
        if header.api_version < 3:
            members = [(body["member_id"], None)]
        else:
            members = [
                (m["member_id"], m.get("group_instance_id"))
                for m in body.get("members", [])
            ]
        result = self.core.groups.leave_group(body["group_id"], members)
        error = result.error_code
        if header.api_version < 3 and error == ErrorCode.NONE and result.members:
            error = result.members[0][2]
        return {
            "throttle_time_ms": 0,
            "error_code": error,
            "members": [
                {"member_id": mid, "group_instance_id": iid, "error_code": code}
                for mid, iid, code in result.members
            ],
        }

    async def offset_commit(
        self, header: RequestHeader, body: Body, conn: ConnectionInfo
    ) -> Body:
        group_id = body["group_id"]
        generation_id = body.get("generation_id_or_member_epoch", -1)
        member_id = body.get("member_id", "")
        # v7+: a replaced static incarnation is fenced (KIP-345).
        instance_id = body.get("group_instance_id")
        order = self._commit_order
        keys = (group_id,)
        count = sum(len(t["partitions"]) for t in body["topics"])
        if count <= PARTITIONS_PER_SLICE and not (order.active and order.busy(keys)):
            # The common case: checked and appended as one batch before the first await.
            offsets = _offsets_to_commit(body)
            errors = await self.core.commit_offsets(
                group_id, generation_id, member_id, offsets, group_instance_id=instance_id
            )
            return {"throttle_time_ms": 0, "topics": _commit_results(offsets, errors)}
        # Many partitions (up to 10,000): commit them in slices of PARTITIONS_PER_SLICE, one
        # __consumer_offsets batch each, yielding in between, so other clients are served.
        # Later commits of the group wait for this one (claimed before the first await), so
        # the group's commits still land in arrival order. Each slice is checked against the
        # group when it runs: a rebalance meanwhile fails the slices after it (ILLEGAL_GENERATION).
        earlier, mine = order.claim(keys)
        try:
            offsets = await _offsets_to_commit_sliced(body)  # claimed first: order is kept
            await _wait_for_earlier(earlier)
            errors = []
            for start in range(0, len(offsets), PARTITIONS_PER_SLICE):
                if start:
                    await asyncio.sleep(0)
                errors += await self.core.commit_offsets(
                    group_id,
                    generation_id,
                    member_id,
                    offsets[start:start + PARTITIONS_PER_SLICE],
                    group_instance_id=instance_id,
                )
        finally:
            order.release(keys, mine)
        return {"throttle_time_ms": 0, "topics": await _commit_results_sliced(offsets, errors)}

    async def offset_fetch(
        self, header: RequestHeader, body: Body, conn: ConnectionInfo
    ) -> Body:
        requested = body.get("topics")
        wanted = (
            None
            if requested is None
            else [(t["name"], p) for t in requested for p in t["partition_indexes"]]
        )
        error, fetched = self.core.groups.fetch_offsets(body["group_id"], wanted)
        if error != ErrorCode.NONE and wanted is not None and header.api_version < 2:
            # v0-1 have no top-level error: report it on every partition.
            topics = self._group_fetched([(t, p, -1, -1, "", error) for t, p in wanted])
        else:
            topics = self._group_fetched(
                [
                    (
                        f.topic,
                        f.partition,
                        f.offset,
                        f.leader_epoch,
                        f.metadata,
                        f.error_code,
                    )
                    for f in fetched
                ]
            )
        return {"throttle_time_ms": 0, "topics": topics, "error_code": error}

    @staticmethod
    def _group_fetched(
        rows: list[tuple[str, int, int, int, str | None, int]],
    ) -> list[Body]:
        topics: list[Body] = []
        by_topic: dict[str, list[Body]] = {}
        for topic, partition, offset, epoch, metadata, error in rows:
            partitions = by_topic.get(topic)
            if partitions is None:
                partitions = by_topic[topic] = []
                topics.append({"name": topic, "partitions": partitions})
            partitions.append(
                {
                    "partition_index": partition,
                    "committed_offset": offset,
                    "committed_leader_epoch": epoch,
                    "metadata": metadata,
                    "error_code": error,
                }
            )
        return topics

    async def describe_groups(
        self, header: RequestHeader, body: Body, conn: ConnectionInfo
    ) -> Body:
        groups = []
        # v3+ (KIP-430). As Kafka: only groups described without an error get the set.
        asked = bool(body.get("include_authorized_operations"))
        for group_id in body["groups"]:
            d = self.core.groups.describe_group(group_id)
            groups.append(
                {
                    "error_code": d.error_code,
                    "group_id": d.group_id,
                    "group_state": d.state,
                    "protocol_type": d.protocol_type,
                    "protocol_data": d.protocol_data,
                    "members": [
                        {
                            "member_id": m.member_id,
                            "group_instance_id": m.group_instance_id,
                            "client_id": m.client_id,
                            "client_host": m.client_host,
                            "member_metadata": m.metadata,
                            "member_assignment": m.assignment,
                        }
                        for m in d.members
                    ],
                    "authorized_operations": (
                        GROUP_OPERATIONS_ALL
                        if asked and d.error_code == ErrorCode.NONE
                        else AUTHORIZED_OPERATIONS_OMITTED
                    ),
                }
            )
        return {"throttle_time_ms": 0, "groups": groups}

    async def list_groups(
        self, header: RequestHeader, body: Body, conn: ConnectionInfo
    ) -> Body:
        error, listings = self.core.groups.list_groups(
            body.get("states_filter") or None
        )
        return {
            "throttle_time_ms": 0,
            "error_code": error,
            "groups": [
                {
                    "group_id": g.group_id,
                    "protocol_type": g.protocol_type,
                    "group_state": g.state,
                }
                for g in listings
            ],
        }

    # -- producers and SASL ----------------------------------------------------------------

    async def init_producer_id(
        self, header: RequestHeader, body: Body, conn: ConnectionInfo
    ) -> Body:
        result = await self.core.init_producer_id(
            body.get("transactional_id"),
            body.get("transaction_timeout_ms", 60_000),
            body.get("producer_id", -1),
            body.get("producer_epoch", -1),
        )
        error = result.error_code
        transactional_id = body.get("transactional_id")
        if transactional_id and error == ErrorCode.NONE:
            # Durable acks: the new epoch is answered once its state record is fsynced.
            error = await self.core.txn.wait_durable(transactional_id)
        if error != ErrorCode.NONE:
            return {
                "throttle_time_ms": 0,
                "error_code": _fenced_for(header, error),
                "producer_id": -1,
                "producer_epoch": -1,
            }
        return {
            "throttle_time_ms": 0,
            "error_code": ErrorCode.NONE,
            "producer_id": result.producer_id,
            "producer_epoch": result.producer_epoch,
        }

    async def add_partitions_to_txn(
        self, header: RequestHeader, body: Body, conn: ConnectionInfo
    ) -> Body:
        wanted = [
            (t["name"], p)
            for t in body.get("v3_and_below_topics") or []
            for p in t["partitions"]
        ]
        transactional_id = body.get("v3_and_below_transactional_id") or ""
        errors = self.core.txn.add_partitions(
            transactional_id,
            body.get("v3_and_below_producer_id", -1),
            body.get("v3_and_below_producer_epoch", -1),
            wanted,
        )
        if errors and all(error == ErrorCode.NONE for error in errors.values()):
            # Durable acks: answered once the Ongoing record naming the partitions is fsynced,
            # so a partition written to is always one recovery knows to end.
            durable = await self.core.txn.wait_durable(transactional_id)
            errors = {tp: durable for tp in errors}
        topics: list[Body] = []
        by_topic: dict[str, list[Body]] = {}
        for (topic, partition), error in errors.items():
            partitions = by_topic.get(topic)
            if partitions is None:
                partitions = by_topic[topic] = []
                topics.append({"name": topic, "results_by_partition": partitions})
            partitions.append(
                {
                    "partition_index": partition,
                    "partition_error_code": _fenced_for(header, error),
                }
            )
        return {"throttle_time_ms": 0, "results_by_topic_v3_and_below": topics}

    async def add_offsets_to_txn(
        self, header: RequestHeader, body: Body, conn: ConnectionInfo
    ) -> Body:
        error = self.core.txn.add_offsets(
            body["transactional_id"],
            body["producer_id"],
            body["producer_epoch"],
            body["group_id"],
        )
        if error == ErrorCode.NONE:
            error = await self.core.txn.wait_durable(body["transactional_id"])
        return {"throttle_time_ms": 0, "error_code": _fenced_for(header, error)}

    async def end_txn(
        self, header: RequestHeader, body: Body, conn: ConnectionInfo
    ) -> Body:
        error = self.core.txn.end_txn(
            body["transactional_id"],
            body["producer_id"],
            body["producer_epoch"],
            bool(body["committed"]),
        )
        if error == ErrorCode.NONE:
            # Durable acks: answered once the decision and the markers are fsynced.
            error = await self.core.txn.wait_durable(body["transactional_id"])
        return {"throttle_time_ms": 0, "error_code": _fenced_for(header, error)}

    async def txn_offset_commit(
        self, header: RequestHeader, body: Body, conn: ConnectionInfo
    ) -> Body:
        offsets = _offsets_to_commit(body)
        errors = await self.core.txn.txn_offset_commit(
            body["transactional_id"],
            body["group_id"],
            body["producer_id"],
            body["producer_epoch"],
            body.get("generation_id", -1),
            body.get("member_id") or "",
            offsets,
            body.get("group_instance_id"),  # v3+ with the generation and member (KIP-447)
        )
        fenced = [_fenced_for(header, error) for error in errors]
        return {"throttle_time_ms": 0, "topics": _commit_results(offsets, fenced)}

    async def sasl_handshake(
        self, header: RequestHeader, body: Body, conn: ConnectionInfo
    ) -> Body:
        """SASL listeners: the connection's state machine (``security/sasl.py``). Elsewhere, as
        Kafka: ILLEGAL_SASL_STATE, the connection stays (no mechanism is offered there)."""
        if conn.sasl is None:
            return {"error_code": ErrorCode.ILLEGAL_SASL_STATE, "mechanisms": []}
        return conn.sasl.handshake(str(body.get("mechanism") or ""))

    async def sasl_authenticate(
        self, header: RequestHeader, body: Body, conn: ConnectionInfo
    ) -> Body:
        """SASL listeners: one step of PLAIN or SCRAM; a failure is answered
        SASL_AUTHENTICATION_FAILED and closes the connection. Elsewhere ILLEGAL_SASL_STATE, then
        closed, as Kafka does."""
        if conn.sasl is None:
            raise CloseAfterResponse(
                "SaslAuthenticate on a listener without SASL",
                {"error_code": ErrorCode.ILLEGAL_SASL_STATE,
                 "error_message": f"listener {conn.listener} does not use SASL",
                 "auth_bytes": b"", "session_lifetime_ms": 0},
            )
        return await conn.sasl.authenticate(header.api_version, bytes(body.get("auth_bytes") or b""))

    async def describe_user_scram_credentials(
        self, header: RequestHeader, body: Body, conn: ConnectionInfo
    ) -> Body:
        """Users' SCRAM mechanisms and iterations (never salts or keys). ``users`` null or
        empty: every user; a name asked twice is DUPLICATE_RESOURCE, an unknown one
        RESOURCE_NOT_FOUND, as in Kafka."""
        store = self.credentials
        requested = body.get("users")
        names = [u["name"] for u in requested] if requested else store.users()
        results: list[Body] = []
        for name in dict.fromkeys(names):
            entries = store.mechanisms_of(name)
            if names.count(name) > 1:
                error, message = ErrorCode.DUPLICATE_RESOURCE, f"user {name!r} asked for more than once"
            elif not entries:
                error, message = ErrorCode.RESOURCE_NOT_FOUND, f"attempt to describe a user credential that does not exist: {name}"
            else:
                error, message = ErrorCode.NONE, None
            results.append({
                "user": name,
                "error_code": error,
                "error_message": message,
                "credential_infos": [
                    {"mechanism": c.mechanism.code, "iterations": c.iterations} for c in entries
                ] if error == ErrorCode.NONE else [],
            })
        return {"throttle_time_ms": 0, "error_code": ErrorCode.NONE, "error_message": None,
                "results": results}

    async def alter_user_scram_credentials(
        self, header: RequestHeader, body: Body, conn: ConnectionInfo
    ) -> Body:
        """Upsert and delete SCRAM credentials, then rewrite ``credentials.json`` once.

        The client sends the salted password (never the password); the broker keeps only
        StoredKey and ServerKey derived from it. Per user: an unknown mechanism is
        UNSUPPORTED_SASL_MECHANISM, iterations or salt out of range UNACCEPTABLE_CREDENTIAL, a
        user named twice for one mechanism DUPLICATE_RESOURCE, deleting what does not exist
        RESOURCE_NOT_FOUND; a user with any error has none of its changes applied.
        """
        deletions = body.get("deletions") or []
        upsertions = body.get("upsertions") or []
        if len(deletions) + len(upsertions) > ALTER_SCRAM_CREDENTIALS_MAX:
            message = f"at most {ALTER_SCRAM_CREDENTIALS_MAX} changes per request"
            users = dict.fromkeys([d["name"] for d in deletions] + [u["name"] for u in upsertions])
            return {"throttle_time_ms": 0, "results": [
                {"user": user, "error_code": ErrorCode.POLICY_VIOLATION, "error_message": message}
                for user in users
            ]}
        store = self.credentials
        errors: dict[str, tuple[int, str]] = {}
        seen: set[tuple[str, int]] = set()
        changes: list[tuple[str, Any]] = []
        order: dict[str, None] = {}
        for kind, entries in (("delete", deletions), ("upsert", upsertions)):
            for entry in entries:
                name, code = entry["name"], entry["mechanism"]
                order[name] = None
                mechanism = MECHANISMS_BY_CODE.get(code)
                if name in errors:
                    continue
                if mechanism is None:
                    errors[name] = (ErrorCode.UNSUPPORTED_SASL_MECHANISM, f"unknown SCRAM mechanism {code}")
                    continue
                if (name, code) in seen:
                    errors[name] = (ErrorCode.DUPLICATE_RESOURCE,
                                    f"more than one change of {mechanism.name} for user {name!r}")
                    continue
                seen.add((name, code))
                if kind == "delete":
                    if store.get(name, mechanism) is None:
                        errors[name] = (ErrorCode.RESOURCE_NOT_FOUND,
                                        f"no {mechanism.name} credential for user {name!r}")
                    else:
                        changes.append((name, mechanism))
                    continue
                try:
                    check_user_name(name)
                    credential = ScramCredential.from_salted_password(
                        mechanism, bytes(entry["salted_password"]), bytes(entry["salt"]), entry["iterations"]
                    )
                except CredentialError as exc:
                    errors[name] = (ErrorCode.UNACCEPTABLE_CREDENTIAL, str(exc))
                    continue
                changes.append((name, credential))
        applied = False
        for name, change in changes:
            if name in errors:
                continue
            applied = True
            if isinstance(change, ScramCredential):
                store.put(name, change)
            else:
                store.delete(name, change)
        if applied:
            try:
                await asyncio.to_thread(store.save)
            except CredentialError as exc:
                log.error("%s", exc)
                store.reload()  # what is on disk is what holds
                for name in order:
                    errors.setdefault(name, (ErrorCode.UNKNOWN_SERVER_ERROR, "could not store the credentials"))
        return {"throttle_time_ms": 0, "results": [
            {"user": name, "error_code": errors.get(name, (ErrorCode.NONE, None))[0],
             "error_message": errors.get(name, (ErrorCode.NONE, None))[1]}
            for name in order
        ]}

    # -- admin: groups, cluster, producers, transactions (issue 12) -------------------------

    async def delete_groups(
        self, header: RequestHeader, body: Body, conn: ConnectionInfo
    ) -> Body:
        results = await self.core.groups.delete_groups(list(body["groups_names"]))
        return {
            "throttle_time_ms": 0,
            "results": [{"group_id": group_id, "error_code": error} for group_id, error in results],
        }

    async def offset_delete(
        self, header: RequestHeader, body: Body, conn: ConnectionInfo
    ) -> Body:
        wanted = [
            (t["name"], p["partition_index"]) for t in body["topics"] for p in t["partitions"]
        ]
        error, errors = await self.core.groups.delete_offsets(
            body["group_id"], wanted, partition_exists=self.core.partition_exists
        )
        topics: list[Body] = []
        if error == ErrorCode.NONE:  # a group-level error carries no topics, as in Kafka
            by_topic: dict[str, list[Body]] = {}
            for (topic, partition), partition_error in zip(wanted, errors):
                partitions = by_topic.get(topic)
                if partitions is None:
                    partitions = by_topic[topic] = []
                    topics.append({"name": topic, "partitions": partitions})
                partitions.append({"partition_index": partition, "error_code": partition_error})
        return {"error_code": error, "throttle_time_ms": 0, "topics": topics}

    async def describe_cluster(
        self, header: RequestHeader, body: Body, conn: ConnectionInfo
    ) -> Body:
        node = self.core.node
        answer: Body = {
            "throttle_time_ms": 0,
            "error_code": ErrorCode.NONE,
            "error_message": None,
            # What this endpoint is (v1+, KIP-919): a broker; it has no controller endpoint.
            "endpoint_type": ENDPOINT_TYPE_BROKERS,
            "cluster_id": self.core.config.cluster_id,
            "controller_id": node.node_id,
            "brokers": [
                {
                    "broker_id": node.node_id,
                    **_address_for(conn, node.host, node.port),
                    "rack": None,
                    "is_fenced": False,
                }
            ],
            "cluster_authorized_operations": (
                CLUSTER_OPERATIONS_ALL
                if body.get("include_cluster_authorized_operations")
                else AUTHORIZED_OPERATIONS_OMITTED
            ),
        }
        endpoint_type = body.get("endpoint_type", ENDPOINT_TYPE_BROKERS)
        if endpoint_type != ENDPOINT_TYPE_BROKERS:
            answer["error_code"] = (
                ErrorCode.MISMATCHED_ENDPOINT_TYPE
                if endpoint_type == ENDPOINT_TYPE_CONTROLLERS
                else ErrorCode.UNSUPPORTED_ENDPOINT_TYPE
            )
            answer["error_message"] = (
                f"endpoint type {endpoint_type} asked for; this is a broker endpoint "
                f"(type {ENDPOINT_TYPE_BROKERS}) and the cluster has no separate controllers"
            )
            answer["brokers"] = []
            answer["cluster_authorized_operations"] = AUTHORIZED_OPERATIONS_OMITTED
        return answer

    async def describe_producers(
        self, header: RequestHeader, body: Body, conn: ConnectionInfo
    ) -> Body:
        txn = self.core.txn
        topics: list[Body] = []
        deadline = slice_deadline()
        for topic in body["topics"]:
            partitions: list[Body] = []
            for index in topic["partition_indexes"]:
                if time.perf_counter() >= deadline:
                    # Up to 10,000 partitions, each maybe rebuilding its producer state from
                    # the log: let other clients in. Read-only, so nothing to keep in order.
                    await asyncio.sleep(0)
                    deadline = slice_deadline()
                error, entries = self.core.describe_producers(topic["name"], index)
                partitions.append(
                    {
                        "partition_index": index,
                        "error_code": error,
                        "error_message": None,
                        "active_producers": [
                            {
                                "producer_id": producer_id,
                                "producer_epoch": entry.epoch,
                                "last_sequence": entry.last_sequence,
                                "last_timestamp": entry.last_timestamp_ms,
                                "coordinator_epoch": txn.coordinator_epoch_of(producer_id),
                                "current_txn_start_offset": (
                                    -1
                                    if entry.current_txn_first_offset is None
                                    else entry.current_txn_first_offset
                                ),
                            }
                            for producer_id, entry in entries
                        ],
                    }
                )
            topics.append({"name": topic["name"], "partitions": partitions})
        return {"throttle_time_ms": 0, "topics": topics}

    async def describe_transactions(
        self, header: RequestHeader, body: Body, conn: ConnectionInfo
    ) -> Body:
        states: list[Body] = []
        for transactional_id, error, meta in self.core.txn.describe_transactions(
            list(body["transactional_ids"])
        ):
            if meta is None:
                states.append(
                    {
                        "error_code": error,
                        "transactional_id": transactional_id,
                        "transaction_state": "",
                        "transaction_timeout_ms": 0,
                        "transaction_start_time_ms": -1,
                        "producer_id": -1,
                        "producer_epoch": -1,
                        "topics": [],
                    }
                )
                continue
            by_topic: dict[str, list[int]] = {}
            for topic, partition in sorted(meta.partitions):
                by_topic.setdefault(topic, []).append(partition)
            states.append(
                {
                    "error_code": ErrorCode.NONE,
                    "transactional_id": transactional_id,
                    "transaction_state": meta.state.kafka_name,
                    "transaction_timeout_ms": meta.transaction_timeout_ms,
                    "transaction_start_time_ms": meta.txn_start_ms,
                    "producer_id": meta.producer_id,
                    "producer_epoch": meta.producer_epoch,
                    "topics": [
                        {"topic": topic, "partitions": partitions}
                        for topic, partitions in by_topic.items()
                    ],
                }
            )
        return {"throttle_time_ms": 0, "transaction_states": states}

    async def list_transactions(
        self, header: RequestHeader, body: Body, conn: ConnectionInfo
    ) -> Body:
        error, unknown, listed = self.core.txn.list_transactions(
            list(body.get("state_filters") or []),
            list(body.get("producer_id_filters") or []),
            body.get("duration_filter", -1),
        )
        return {
            "throttle_time_ms": 0,
            "error_code": error,
            "unknown_state_filters": unknown,
            "transaction_states": [
                {
                    "transactional_id": meta.transactional_id,
                    "producer_id": meta.producer_id,
                    "transaction_state": meta.state.kafka_name,
                }
                for meta in listed
            ],
        }


    # -- ACLs (issue 14, item 3) -------------------------------------------------------------

    def _acls_disabled(self) -> tuple[int, str] | None:
        if self.authorizer is None:
            return ErrorCode.SECURITY_DISABLED, "no authorizer is configured (flowbus broker --authorizer on)"
        return None

    async def describe_acls(
        self, header: RequestHeader, body: Body, conn: ConnectionInfo
    ) -> Body:
        """The bindings a filter matches, grouped by resource pattern (Kafka's layout)."""
        disabled = self._acls_disabled()
        if disabled is not None or self.authorizer is None:
            code, message = disabled or (ErrorCode.SECURITY_DISABLED, None)
            return {"throttle_time_ms": 0, "error_code": code, "error_message": message, "resources": []}
        try:
            flt = _acl_filter(body, header.api_version)
        except AclError as exc:
            return {"throttle_time_ms": 0, "error_code": ErrorCode.INVALID_REQUEST, "error_message": str(exc),
                    "resources": []}
        resources: dict[tuple[int, str, int], list[Body]] = {}
        for b in self.authorizer.store.bindings(flt):
            resources.setdefault((b.resource_type, b.name, b.pattern_type), []).append(
                {"principal": b.principal, "host": b.host, "operation": int(b.operation),
                 "permission_type": int(b.permission)})
        return {"throttle_time_ms": 0, "error_code": ErrorCode.NONE, "error_message": None, "resources": [
            {"resource_type": int(kind), "resource_name": name, "pattern_type": int(pattern), "acls": acls}
            for (kind, name, pattern), acls in resources.items()
        ]}

    async def create_acls(
        self, header: RequestHeader, body: Body, conn: ConnectionInfo
    ) -> Body:
        """Add bindings, each checked on its own (a bad one is INVALID_REQUEST), then rewrite
        ``acls.json`` once; a failed write leaves the file and the ACLs in force as they were."""
        creations = body["creations"]
        disabled = self._acls_disabled()
        if disabled is None and len(creations) > ACL_CHANGES_PER_REQUEST_MAX:
            disabled = ErrorCode.POLICY_VIOLATION, f"at most {ACL_CHANGES_PER_REQUEST_MAX} ACLs per request"
        if disabled is not None or self.authorizer is None:
            code, message = disabled or (ErrorCode.SECURITY_DISABLED, None)
            return {"throttle_time_ms": 0, "results": [
                {"error_code": code, "error_message": message} for _ in creations]}
        results: list[Body] = []
        valid: list[AclBinding] = []
        for c in creations:
            try:
                binding = AclBinding(
                    ResourceType(c["resource_type"]), c["resource_name"],
                    PatternType(c.get("resource_pattern_type", PatternType.LITERAL)), c["principal"],
                    c["host"], AclOperation(c["operation"]), Permission(c["permission_type"]),
                ).validate()
            except (AclError, ValueError) as exc:
                results.append({"error_code": ErrorCode.INVALID_REQUEST, "error_message": str(exc)})
                continue
            valid.append(binding)
            results.append({"error_code": ErrorCode.NONE, "error_message": None})
        store = self.authorizer.store
        if valid:
            try:
                store.add(valid)
                await asyncio.to_thread(store.save)
            except AclError as exc:
                log.error("%s", exc)
                store.reload()  # what is on disk is what holds
                results = [r if r["error_code"] else {"error_code": ErrorCode.UNKNOWN_SERVER_ERROR,
                                                       "error_message": str(exc)} for r in results]
            else:
                log.info("%s created %d ACL(s)", conn.principal, len(valid))
        return {"throttle_time_ms": 0, "results": results}

    async def delete_acls(
        self, header: RequestHeader, body: Body, conn: ConnectionInfo
    ) -> Body:
        """Remove the bindings each filter matches, then rewrite ``acls.json`` once."""
        filters = body["filters"]
        disabled = self._acls_disabled()
        if disabled is None and len(filters) > ACL_CHANGES_PER_REQUEST_MAX:
            disabled = ErrorCode.POLICY_VIOLATION, f"at most {ACL_CHANGES_PER_REQUEST_MAX} filters per request"
        if disabled is not None or self.authorizer is None:
            code, message = disabled or (ErrorCode.SECURITY_DISABLED, None)
            return {"throttle_time_ms": 0, "filter_results": [
                {"error_code": code, "error_message": message, "matching_acls": []} for _ in filters]}
        store = self.authorizer.store
        results: list[Body] = []
        removed_any = False
        for entry in filters:
            try:
                gone = store.remove(_acl_filter(entry, header.api_version))
            except AclError as exc:
                results.append({"error_code": ErrorCode.INVALID_REQUEST, "error_message": str(exc),
                                "matching_acls": []})
                continue
            removed_any = removed_any or bool(gone)
            results.append({"error_code": ErrorCode.NONE, "error_message": None, "matching_acls": [
                {"error_code": ErrorCode.NONE, "error_message": None, "resource_type": int(b.resource_type),
                 "resource_name": b.name, "pattern_type": int(b.pattern_type), "principal": b.principal,
                 "host": b.host, "operation": int(b.operation), "permission_type": int(b.permission)}
                for b in gone]})
        if removed_any:
            try:
                await asyncio.to_thread(store.save)
            except AclError as exc:
                log.error("%s", exc)
                store.reload()
                results = [{"error_code": ErrorCode.UNKNOWN_SERVER_ERROR, "error_message": str(exc),
                            "matching_acls": []} for _ in filters]
            else:
                log.info("%s deleted ACLs", conn.principal)
        return {"throttle_time_ms": 0, "filter_results": results}


def _acl_filter(entry: Body, version: int) -> AclFilter:
    """A DescribeAcls request or DeleteAcls filter as an :class:`AclFilter` (v0 has no
    pattern type: it matches LITERAL bindings, as Kafka).

    Raises:
        AclError: an unknown code, or UNKNOWN where a filter needs a value.
    """
    try:
        return AclFilter(
            ResourceType(entry["resource_type_filter"]), entry.get("resource_name_filter"),
            PatternType(entry.get("pattern_type_filter", PatternType.LITERAL) if version >= 1 else PatternType.LITERAL),
            entry.get("principal_filter"), entry.get("host_filter"),
            AclOperation(entry["operation"]), Permission(entry["permission_type"]),
        ).validate()
    except ValueError as exc:
        raise AclError(f"bad ACL filter: {exc}") from exc


def _offsets_to_commit(body: Body) -> list[OffsetToCommit]:
    """The offsets of an OffsetCommit or TxnOffsetCommit request (same topic layout in both)."""
    return [
        OffsetToCommit(
            t["name"],
            p["partition_index"],
            p["committed_offset"],
            p.get("committed_leader_epoch", -1),
            p.get("committed_metadata"),
        )
        for t in body["topics"]
        for p in t["partitions"]
    ]


def _alter_configs_responses(results: list[AlterConfigsResult]) -> list[Body]:
    """Per-resource answers of AlterConfigs and IncrementalAlterConfigs (same layout)."""
    return [
        {
            "error_code": r.error_code,
            "error_message": r.error_message,
            "resource_type": r.resource_type,
            "resource_name": r.resource_name,
        }
        for r in results
    ]


async def _offsets_to_commit_sliced(body: Body) -> list[OffsetToCommit]:
    """:func:`_offsets_to_commit`, yielding to the event loop every ``LOOP_SLICE_S``: an
    OffsetCommit may name 10,000 partitions (~5 ms to convert in one turn)."""
    offsets: list[OffsetToCommit] = []
    deadline = slice_deadline()
    for t in body["topics"]:
        name = t["name"]
        for p in t["partitions"]:
            offsets.append(OffsetToCommit(
                name, p["partition_index"], p["committed_offset"],
                p.get("committed_leader_epoch", -1), p.get("committed_metadata"),
            ))
            if not len(offsets) & 127 and time.perf_counter() >= deadline:
                await asyncio.sleep(0)
                deadline = slice_deadline()
    return offsets


async def _commit_results_sliced(offsets: list[OffsetToCommit], errors: list[int]) -> list[Body]:
    """:func:`_commit_results` for a commit of many partitions, yielding every ``LOOP_SLICE_S``."""
    topics: list[Body] = []
    by_topic: dict[str, list[Body]] = {}
    deadline = slice_deadline()
    for index, (item, error) in enumerate(zip(offsets, errors)):
        partitions = by_topic.get(item.topic)
        if partitions is None:
            partitions = by_topic[item.topic] = []
            topics.append({"name": item.topic, "partitions": partitions})
        partitions.append({"partition_index": item.partition, "error_code": error})
        if not index & 127 and time.perf_counter() >= deadline:
            await asyncio.sleep(0)
            deadline = slice_deadline()
    return topics


def _commit_results(offsets: list[OffsetToCommit], errors: list[int]) -> list[Body]:
    """Per-partition error codes grouped by topic, in request order, for a commit response."""
    topics: list[Body] = []
    by_topic: dict[str, list[Body]] = {}
    for item, error in zip(offsets, errors):
        partitions = by_topic.get(item.topic)
        if partitions is None:
            partitions = by_topic[item.topic] = []
            topics.append({"name": item.topic, "partitions": partitions})
        partitions.append({"partition_index": item.partition, "error_code": error})
    return topics
