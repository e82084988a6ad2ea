"""Which ACL operation each Kafka API checks, applied around the handlers (issue 14, item 3).

``GUARDS`` maps every API the broker advertises to a guard, or to None for the few Kafka never
authorizes (ApiVersions, the SASL exchange, DescribeCluster, whose answer only carries the
authorized-operations bits). A test fails when an advertised API has no entry, so a new API
cannot be forgotten. The table follows Kafka's ``KafkaApis``:

=====================================  =====================================================
API                                    checks (error when refused)
=====================================  =====================================================
Produce                                WRITE transactional id (53), WRITE topic (29)
Fetch                                  READ topic (29)
ListOffsets, OffsetForLeaderEpoch      DESCRIBE topic (29)
Metadata                               DESCRIBE topic (left out, or 29 when named); auto-create
                                       needs CREATE on cluster or topic (29)
OffsetCommit                           READ group (30), READ topic (29)
OffsetFetch                            DESCRIBE group (30), DESCRIBE topic (29 / left out)
FindCoordinator                        DESCRIBE group (30) / transactional id (53)
JoinGroup, SyncGroup, Heartbeat,       READ group (30)
LeaveGroup
DescribeGroups                         DESCRIBE group (30)
ListGroups                             DESCRIBE cluster, else only groups with DESCRIBE
CreateTopics                           CREATE cluster or topic (29)
DeleteTopics, DeleteRecords            DELETE topic (29)
CreatePartitions                       ALTER topic (29)
DescribeConfigs                        DESCRIBE_CONFIGS topic (29) / cluster (31)
AlterConfigs, IncrementalAlterConfigs  ALTER_CONFIGS topic (29) / cluster (31)
DescribeLogDirs                        DESCRIBE cluster (31)
InitProducerId                         WRITE transactional id (53); without one IDEMPOTENT_WRITE
                                       cluster or WRITE on some topic (31)
AddPartitionsToTxn                     WRITE transactional id (53), WRITE topic (29, others 55)
AddOffsetsToTxn                        WRITE transactional id (53), READ group (30)
EndTxn                                 WRITE transactional id (53)
TxnOffsetCommit                        WRITE transactional id (53), READ group (30), READ topic (29)
DeleteGroups                           DELETE group (30)
OffsetDelete                           DELETE group (30), READ topic (29)
DescribeProducers                      READ topic (29)
DescribeTransactions                   DESCRIBE transactional id (53)
ListTransactions                       only transactional ids with DESCRIBE
Describe/AlterUserScramCredentials     DESCRIBE / ALTER cluster (31)
DescribeAcls / CreateAcls, DeleteAcls  DESCRIBE / ALTER cluster (31)
=====================================  =====================================================

A guard takes the request, answers the refused parts itself, passes the rest to the handler
(or nothing, when nothing is left) and merges both answers. With the authorizer off the
guards do not run at all.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from flowbus.broker.errors import CloseConnection
from flowbus.broker.security.acls import CLUSTER_NAME, Authorizer, ResourceType
from flowbus.broker.security.acls import AclOperation as Op
from flowbus.protocol.api import ApiKey
from flowbus.protocol.codec import RequestHeader
from flowbus.protocol.error_codes import ErrorCode

Body = dict[str, Any]
Inner = Callable[[Body], Awaitable[Body | None]]

TOPIC, GROUP, CLUSTER, TXN = (
    ResourceType.TOPIC, ResourceType.GROUP, ResourceType.CLUSTER, ResourceType.TRANSACTIONAL_ID,
)
TOPIC_DENIED = ErrorCode.TOPIC_AUTHORIZATION_FAILED
GROUP_DENIED = ErrorCode.GROUP_AUTHORIZATION_FAILED
CLUSTER_DENIED = ErrorCode.CLUSTER_AUTHORIZATION_FAILED
TXN_DENIED = ErrorCode.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
#: DescribeConfigs / AlterConfigs resource types (Kafka's ConfigResource.Type).
CONFIG_TOPIC, CONFIG_BROKER, CONFIG_BROKER_LOGGER = 2, 4, 8
OMITTED = -(1 << 31)


@dataclass(slots=True)
class Check:
    """The authorizer bound to one request's principal and host."""

    authorizer: Authorizer
    principal: str
    host: str
    header: RequestHeader
    #: The broker's ``auto.create.topics.enable``: Metadata refuses auto-creation only where
    #: it would happen.
    auto_create: bool = True

    def __call__(self, resource_type: ResourceType, name: str, operation: Op) -> bool:
        return self.authorizer.authorize(self.principal, self.host, resource_type, name, operation)

    def cluster(self, operation: Op) -> bool:
        return self(CLUSTER, CLUSTER_NAME, operation)

    def operations(self, resource_type: ResourceType, name: str) -> int:
        return self.authorizer.authorized_operations(self.principal, self.host, resource_type, name)

    @property
    def version(self) -> int:
        return self.header.api_version


Guard = Callable[[Check, Body, Inner], Awaitable[Body | None]]


async def _answer(inner: Inner, body: Body | None, empty: Body) -> Body:
    """The handler's answer to ``body``, or ``empty`` when the guard left nothing to ask
    (the handler would wait or work for nothing: an empty Fetch long-polls)."""
    if body is None:
        return empty
    response = await inner(body)
    assert response is not None  # only Produce acks=0 answers None, and it is never split
    return response


def _split(items: list[Body], allowed: Callable[[Body], bool]) -> tuple[list[Body], list[Body]]:
    ok: list[Body] = []
    denied: list[Body] = []
    for item in items:
        (ok if allowed(item) else denied).append(item)
    return ok, denied


# -- produce / fetch / offsets ------------------------------------------------------------------

async def produce(check: Check, body: Body, inner: Inner) -> Body | None:
    txn = body.get("transactional_id")
    txn_ok = not txn or check(TXN, txn, Op.WRITE)
    topics = body["topic_data"]
    ok, denied = _split(topics, lambda t: txn_ok and check(TOPIC, t["name"], Op.WRITE))
    if not denied:
        return await inner(body)
    if body.get("acks") == 0:
        raise CloseConnection("acks=0 produce refused by the authorizer")
    error = TOPIC_DENIED if txn_ok else TXN_DENIED
    response = await _answer(inner, {**body, "topic_data": ok} if ok else None, {"responses": [], "throttle_time_ms": 0})
    response["responses"] += [
        {"name": t["name"], "partition_responses": [
            {"index": p["index"], "error_code": error, "base_offset": -1, "log_append_time_ms": -1,
             "log_start_offset": -1, "record_errors": [], "error_message": None}
            for p in t["partition_data"]]}
        for t in denied
    ]
    return response


async def fetch(check: Check, body: Body, inner: Inner) -> Body | None:
    ok, denied = _split(body["topics"], lambda t: check(TOPIC, t["topic"], Op.READ))
    if not denied:
        return await inner(body)
    # Nothing allowed: answer now (the handler would long-poll an empty request).
    response = await _answer(inner, {**body, "topics": ok} if ok else None, {
        "throttle_time_ms": 0, "error_code": 0, "session_id": 0, "responses": []})
    response["responses"] += [
        {"topic": t["topic"], "partitions": [
            {"partition_index": p["partition"], "error_code": TOPIC_DENIED, "high_watermark": -1,
             "last_stable_offset": -1, "log_start_offset": -1, "aborted_transactions": None,
             "preferred_read_replica": -1, "records": None}
            for p in t["partitions"]]}
        for t in denied
    ]
    return response


async def list_offsets(check: Check, body: Body, inner: Inner) -> Body | None:
    ok, denied = _split(body["topics"], lambda t: check(TOPIC, t["name"], Op.DESCRIBE))
    if not denied:
        return await inner(body)
    response = await _answer(inner, {**body, "topics": ok} if ok else None, {"throttle_time_ms": 0, "topics": []})
    response["topics"] += [
        {"name": t["name"], "partitions": [
            {"partition_index": p["partition_index"], "error_code": TOPIC_DENIED, "old_style_offsets": [],
             "timestamp": -1, "offset": -1, "leader_epoch": -1}
            for p in t["partitions"]]}
        for t in denied
    ]
    return response


async def offset_for_leader_epoch(check: Check, body: Body, inner: Inner) -> Body | None:
    ok, denied = _split(body["topics"], lambda t: check(TOPIC, t["topic"], Op.DESCRIBE))
    if not denied:
        return await inner(body)
    response = await _answer(inner, {**body, "topics": ok} if ok else None, {"throttle_time_ms": 0, "topics": []})
    response["topics"] += [
        {"topic": t["topic"], "partitions": [
            {"error_code": TOPIC_DENIED, "partition": p["partition"], "leader_epoch": -1, "end_offset": -1}
            for p in t["partitions"]]}
        for t in denied
    ]
    return response


async def metadata(check: Check, body: Body, inner: Inner) -> Body | None:
    """Topics the principal may not DESCRIBE are left out of an all-topics answer and answered
    TOPIC_AUTHORIZATION_FAILED when named; a named topic that does not exist is auto-created
    only with CREATE on the cluster or the topic (else TOPIC_AUTHORIZATION_FAILED, as Kafka)."""
    requested = body.get("topics")
    names = None if requested is None or (check.version == 0 and not requested) else [
        t["name"] for t in requested if t.get("name") is not None]
    refused: list[str] = []
    uncreatable: set[str] = set()
    if names is not None:
        allowed = {n for n in names if check(TOPIC, n, Op.DESCRIBE)}
        refused = list(dict.fromkeys(n for n in names if n not in allowed))
        creating = check.auto_create and body.get("allow_auto_topic_creation", True)
        if creating and not check.cluster(Op.CREATE):
            uncreatable = {n for n in allowed if not check(TOPIC, n, Op.CREATE)}
            if uncreatable:
                # One flag per request: none of its topics is created; those it may not create
                # are answered TOPIC_AUTHORIZATION_FAILED below.
                body = {**body, "allow_auto_topic_creation": False}
        body = {**body, "topics": [t for t in requested or () if t.get("name") in allowed]}
    response = await inner(body)
    assert response is not None
    named = None if names is None else set(names)  # up to 10,000 names: no list scans per topic
    visible = []
    for topic in response["topics"]:
        name = topic["name"]
        if not check(TOPIC, name, Op.DESCRIBE) or (named is not None and name not in named):
            continue  # an all-topics answer (or v0's empty list): left out
        if name in uncreatable and topic["error_code"] == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION:
            topic["error_code"] = TOPIC_DENIED
        if topic.get("topic_authorized_operations", OMITTED) != OMITTED:
            topic["topic_authorized_operations"] = check.operations(TOPIC, name)
        visible.append(topic)
    visible += [
        {"error_code": TOPIC_DENIED, "name": name, "topic_id": b"\x00" * 16, "is_internal": False,
         "partitions": [], "topic_authorized_operations": OMITTED}
        for name in refused
    ]
    response["topics"] = visible
    if response.get("cluster_authorized_operations", OMITTED) != OMITTED:
        response["cluster_authorized_operations"] = check.operations(CLUSTER, CLUSTER_NAME)
    return response


# -- groups -------------------------------------------------------------------------------------

def _commit_denied(topics: list[Body], error: int) -> list[Body]:
    return [{"name": t["name"], "partitions": [
        {"partition_index": p["partition_index"], "error_code": error} for p in t["partitions"]]}
        for t in topics]


async def offset_commit(check: Check, body: Body, inner: Inner) -> Body | None:
    if not check(GROUP, body["group_id"], Op.READ):
        return {"throttle_time_ms": 0, "topics": _commit_denied(body["topics"], GROUP_DENIED)}
    ok, denied = _split(body["topics"], lambda t: check(TOPIC, t["name"], Op.READ))
    if not denied:
        return await inner(body)
    response = await _answer(inner, {**body, "topics": ok} if ok else None, {"throttle_time_ms": 0, "topics": []})
    response["topics"] += _commit_denied(denied, TOPIC_DENIED)
    return response


def _fetched_denied(topic: str, partitions: list[int], error: int) -> Body:
    return {"name": topic, "partitions": [
        {"partition_index": p, "committed_offset": -1, "committed_leader_epoch": -1, "metadata": "",
         "error_code": error} for p in partitions]}


async def offset_fetch(check: Check, body: Body, inner: Inner) -> Body | None:
    requested = body.get("topics")
    if not check(GROUP, body["group_id"], Op.DESCRIBE):
        topics = [] if requested is None or check.version >= 2 else [
            _fetched_denied(t["name"], t["partition_indexes"], GROUP_DENIED) for t in requested]
        return {"throttle_time_ms": 0, "topics": topics, "error_code": GROUP_DENIED}
    if requested is None:
        response = await inner(body)
        assert response is not None
        response["topics"] = [t for t in response["topics"] if check(TOPIC, t["name"], Op.DESCRIBE)]
        return response
    ok, denied = _split(requested, lambda t: check(TOPIC, t["name"], Op.DESCRIBE))
    if not denied:
        return await inner(body)
    response = await _answer(inner, {**body, "topics": ok} if ok else None, {
        "throttle_time_ms": 0, "topics": [], "error_code": 0})
    response["topics"] += [_fetched_denied(t["name"], t["partition_indexes"], TOPIC_DENIED) for t in denied]
    return response


async def find_coordinator(check: Check, body: Body, inner: Inner) -> Body | None:
    key, key_type = body["key"], body.get("key_type", 0)
    if key_type == 0 and not check(GROUP, key, Op.DESCRIBE):
        error = GROUP_DENIED
    elif key_type == 1 and not check(TXN, key, Op.DESCRIBE):
        error = TXN_DENIED
    else:
        return await inner(body)
    return {"throttle_time_ms": 0, "error_code": error, "error_message": None, "node_id": -1,
            "host": "", "port": -1}


def _group_read(refusal: Callable[[Check], Body]) -> Guard:
    """A guard for the membership APIs: READ on the request's group, else ``refusal``."""
    async def guard(check: Check, body: Body, inner: Inner) -> Body | None:
        if check(GROUP, body["group_id"], Op.READ):
            return await inner(body)
        return {"throttle_time_ms": 0, "error_code": GROUP_DENIED, **refusal(check)}
    return guard


join_group = _group_read(lambda check: {
    "generation_id": -1, "protocol_type": None, "protocol_name": None if check.version >= 7 else "",
    "leader": "", "member_id": "", "members": []})
sync_group = _group_read(lambda check: {"protocol_type": None, "protocol_name": None, "assignment": b""})
heartbeat = _group_read(lambda check: {})
leave_group = _group_read(lambda check: {"members": []})


async def describe_groups(check: Check, body: Body, inner: Inner) -> Body | None:
    asked = bool(body.get("include_authorized_operations"))
    ok = [g for g in body["groups"] if check(GROUP, g, Op.DESCRIBE)]
    response = await _answer(inner, {**body, "groups": ok} if ok else None, {"throttle_time_ms": 0, "groups": []})
    answered = iter(response["groups"])
    groups = []
    for group_id in body["groups"]:
        if group_id in ok:
            entry = next(answered)
            if asked and entry["authorized_operations"] != OMITTED:
                entry["authorized_operations"] = check.operations(GROUP, group_id)
        else:
            entry = {"error_code": GROUP_DENIED, "group_id": group_id, "group_state": "", "protocol_type": "",
                     "protocol_data": "", "members": [], "authorized_operations": OMITTED}
        groups.append(entry)
    response["groups"] = groups
    return response


async def list_groups(check: Check, body: Body, inner: Inner) -> Body | None:
    response = await inner(body)
    assert response is not None
    if not check.cluster(Op.DESCRIBE):
        response["groups"] = [g for g in response["groups"] if check(GROUP, g["group_id"], Op.DESCRIBE)]
    return response


async def delete_groups(check: Check, body: Body, inner: Inner) -> Body | None:
    names = list(body["groups_names"])
    ok = [g for g in names if check(GROUP, g, Op.DELETE)]
    response = await _answer(inner, {**body, "groups_names": ok} if ok else None, {"throttle_time_ms": 0, "results": []})
    response["results"] += [{"group_id": g, "error_code": GROUP_DENIED} for g in names if g not in ok]
    return response


async def offset_delete(check: Check, body: Body, inner: Inner) -> Body | None:
    if not check(GROUP, body["group_id"], Op.DELETE):
        return {"error_code": GROUP_DENIED, "throttle_time_ms": 0, "topics": []}
    ok, denied = _split(body["topics"], lambda t: check(TOPIC, t["name"], Op.READ))
    if not denied:
        return await inner(body)
    response = await _answer(inner, {**body, "topics": ok} if ok else None, {"error_code": 0, "throttle_time_ms": 0, "topics": []})
    if response["error_code"] == ErrorCode.NONE:
        response["topics"] += _commit_denied(denied, TOPIC_DENIED)
    return response


# -- topics and configs -------------------------------------------------------------------------

async def create_topics(check: Check, body: Body, inner: Inner) -> Body | None:
    cluster = check.cluster(Op.CREATE)
    ok, denied = _split(body["topics"], lambda t: cluster or check(TOPIC, t["name"], Op.CREATE))
    response = await _answer(inner, {**body, "topics": ok} if ok else None, {"throttle_time_ms": 0, "topics": []})
    for topic in response["topics"]:
        # v5+ tells the new topic's configs only to whom may DESCRIBE_CONFIGS it, as Kafka.
        if topic.get("configs") is not None and not check(TOPIC, topic["name"], Op.DESCRIBE_CONFIGS):
            topic["configs"], topic["topic_config_error_code"] = None, TOPIC_DENIED
    response["topics"] += [
        {"name": t["name"], "error_code": TOPIC_DENIED, "error_message": "not authorized to create the topic",
         "topic_config_error_code": 0, "num_partitions": -1, "replication_factor": -1, "configs": None}
        for t in denied
    ]
    return response


async def delete_topics(check: Check, body: Body, inner: Inner) -> Body | None:
    names = list(body["topic_names"])
    ok = [n for n in names if check(TOPIC, n, Op.DELETE)]
    if len(ok) == len(names):
        return await inner(body)
    response = await _answer(inner, {**body, "topic_names": ok} if ok else None, {"throttle_time_ms": 0, "responses": []})
    response["responses"] += [
        {"name": n, "error_code": TOPIC_DENIED, "error_message": None} for n in names if n not in ok]
    return response


async def delete_records(check: Check, body: Body, inner: Inner) -> Body | None:
    ok, denied = _split(body["topics"], lambda t: check(TOPIC, t["name"], Op.DELETE))
    if not denied:
        return await inner(body)
    response = await _answer(inner, {**body, "topics": ok} if ok else None, {"throttle_time_ms": 0, "topics": []})
    response["topics"] += [{"name": t["name"], "partitions": [
        {"partition_index": p["partition_index"], "low_watermark": -1, "error_code": TOPIC_DENIED}
        for p in t["partitions"]]} for t in denied]
    return response


async def create_partitions(check: Check, body: Body, inner: Inner) -> Body | None:
    ok, denied = _split(body["topics"], lambda t: check(TOPIC, t["name"], Op.ALTER))
    if not denied:
        return await inner(body)
    response = await _answer(inner, {**body, "topics": ok} if ok else None, {"throttle_time_ms": 0, "results": []})
    response["results"] += [
        {"name": t["name"], "error_code": TOPIC_DENIED, "error_message": None} for t in denied]
    return response


def _config_error(check: Check, resource: Body, operation: Op) -> int:
    """The refusal of one DescribeConfigs / AlterConfigs resource, or NONE."""
    kind, name = resource["resource_type"], resource["resource_name"]
    if kind == CONFIG_TOPIC:
        return ErrorCode.NONE if check(TOPIC, name, operation) else TOPIC_DENIED
    if kind in (CONFIG_BROKER, CONFIG_BROKER_LOGGER):
        return ErrorCode.NONE if check.cluster(operation) else CLUSTER_DENIED
    return ErrorCode.NONE  # anything else: the handler answers INVALID_REQUEST


def _configs_guard(operation: Op, results_key: str, denied_entry: Callable[[Body, int], Body]) -> Guard:
    """DescribeConfigs / (Incremental)AlterConfigs: refused resources answered in request
    order (librdkafka pairs results with its resources by position)."""
    async def guard(check: Check, body: Body, inner: Inner) -> Body | None:
        errors = [_config_error(check, r, operation) for r in body["resources"]]
        if not any(errors):
            return await inner(body)
        ok = [r for r, e in zip(body["resources"], errors) if not e]
        response = await _answer(inner, {**body, "resources": ok} if ok else None,
                                 {"throttle_time_ms": 0, results_key: []})
        answered = iter(response[results_key])
        response[results_key] = [
            denied_entry(r, e) if e else next(answered) for r, e in zip(body["resources"], errors)
        ]
        return response
    return guard


describe_configs = _configs_guard(Op.DESCRIBE_CONFIGS, "results", lambda r, e: {
    "error_code": e, "error_message": None, "resource_type": r["resource_type"],
    "resource_name": r["resource_name"], "configs": []})
_altered = _configs_guard(Op.ALTER_CONFIGS, "responses", lambda r, e: {
    "error_code": e, "error_message": None, "resource_type": r["resource_type"],
    "resource_name": r["resource_name"]})
alter_configs = incremental_alter_configs = _altered


async def describe_log_dirs(check: Check, body: Body, inner: Inner) -> Body | None:
    if check.cluster(Op.DESCRIBE):
        return await inner(body)
    # As Kafka: no log dirs; v3+ also says why.
    return {"throttle_time_ms": 0, "error_code": CLUSTER_DENIED, "results": []}


def _cluster_only(operation: Op, refusal: Callable[[Body], Body]) -> Guard:
    async def guard(check: Check, body: Body, inner: Inner) -> Body | None:
        if check.cluster(operation):
            return await inner(body)
        return {"throttle_time_ms": 0, **refusal(body)}
    return guard


describe_user_scram_credentials = _cluster_only(Op.DESCRIBE, lambda body: {
    "error_code": CLUSTER_DENIED, "error_message": "not authorized to describe credentials", "results": []})
alter_user_scram_credentials = _cluster_only(Op.ALTER, lambda body: {"results": [
    {"user": name, "error_code": CLUSTER_DENIED, "error_message": None}
    for name in dict.fromkeys([d["name"] for d in body.get("deletions") or []]
                              + [u["name"] for u in body.get("upsertions") or []])]})
describe_acls = _cluster_only(Op.DESCRIBE, lambda body: {
    "error_code": CLUSTER_DENIED, "error_message": "not authorized to describe ACLs", "resources": []})
create_acls = _cluster_only(Op.ALTER, lambda body: {"results": [
    {"error_code": CLUSTER_DENIED, "error_message": None} for _ in body["creations"]]})
delete_acls = _cluster_only(Op.ALTER, lambda body: {"filter_results": [
    {"error_code": CLUSTER_DENIED, "error_message": None, "matching_acls": []} for _ in body["filters"]]})


async def describe_cluster(check: Check, body: Body, inner: Inner) -> Body | None:
    response = await inner(body)
    assert response is not None
    if response.get("cluster_authorized_operations", OMITTED) != OMITTED:
        response["cluster_authorized_operations"] = check.operations(CLUSTER, CLUSTER_NAME)
    return response


# -- producers and transactions -----------------------------------------------------------------

async def init_producer_id(check: Check, body: Body, inner: Inner) -> Body | None:
    txn = body.get("transactional_id")
    if txn:
        error = ErrorCode.NONE if check(TXN, txn, Op.WRITE) else TXN_DENIED
    elif check.cluster(Op.IDEMPOTENT_WRITE) or check.authorizer.authorize_any_of_type(
            check.principal, check.host, TOPIC, Op.WRITE):
        error = ErrorCode.NONE  # KIP-679: WRITE on some topic is enough for idempotence
    else:
        error = CLUSTER_DENIED
    if error == ErrorCode.NONE:
        return await inner(body)
    return {"throttle_time_ms": 0, "error_code": error, "producer_id": -1, "producer_epoch": -1}


async def add_partitions_to_txn(check: Check, body: Body, inner: Inner) -> Body | None:
    topics = body.get("v3_and_below_topics") or []
    txn = body.get("v3_and_below_transactional_id") or ""
    if check(TXN, txn, Op.WRITE):
        refused = {t["name"] for t in topics if not check(TOPIC, t["name"], Op.WRITE)}
        if not refused:
            return await inner(body)
        errors = {t["name"]: TOPIC_DENIED if t["name"] in refused else ErrorCode.OPERATION_NOT_ATTEMPTED
                  for t in topics}
    else:
        errors = {t["name"]: TXN_DENIED for t in topics}
    return {"throttle_time_ms": 0, "results_by_topic_v3_and_below": [
        {"name": t["name"], "results_by_partition": [
            {"partition_index": p, "partition_error_code": errors[t["name"]]} for p in t["partitions"]]}
        for t in topics]}


async def add_offsets_to_txn(check: Check, body: Body, inner: Inner) -> Body | None:
    if not check(TXN, body["transactional_id"], Op.WRITE):
        return {"throttle_time_ms": 0, "error_code": TXN_DENIED}
    if not check(GROUP, body["group_id"], Op.READ):
        return {"throttle_time_ms": 0, "error_code": GROUP_DENIED}
    return await inner(body)


async def end_txn(check: Check, body: Body, inner: Inner) -> Body | None:
    if not check(TXN, body["transactional_id"], Op.WRITE):
        return {"throttle_time_ms": 0, "error_code": TXN_DENIED}
    return await inner(body)


async def txn_offset_commit(check: Check, body: Body, inner: Inner) -> Body | None:
    if not check(TXN, body["transactional_id"], Op.WRITE):
        return {"throttle_time_ms": 0, "topics": _commit_denied(body["topics"], TXN_DENIED)}
    if not check(GROUP, body["group_id"], Op.READ):
        return {"throttle_time_ms": 0, "topics": _commit_denied(body["topics"], GROUP_DENIED)}
    ok, denied = _split(body["topics"], lambda t: check(TOPIC, t["name"], Op.READ))
    if not denied:
        return await inner(body)
    response = await _answer(inner, {**body, "topics": ok} if ok else None, {"throttle_time_ms": 0, "topics": []})
    response["topics"] += _commit_denied(denied, TOPIC_DENIED)
    return response


async def describe_producers(check: Check, body: Body, inner: Inner) -> Body | None:
    ok, denied = _split(body["topics"], lambda t: check(TOPIC, t["name"], Op.READ))
    if not denied:
        return await inner(body)
    response = await _answer(inner, {**body, "topics": ok} if ok else None, {"throttle_time_ms": 0, "topics": []})
    response["topics"] += [{"name": t["name"], "partitions": [
        {"partition_index": p, "error_code": TOPIC_DENIED, "error_message": None, "active_producers": []}
        for p in t["partition_indexes"]]} for t in denied]
    return response


async def describe_transactions(check: Check, body: Body, inner: Inner) -> Body | None:
    ids = list(body["transactional_ids"])
    ok = [i for i in ids if check(TXN, i, Op.DESCRIBE)]
    response = await _answer(inner, {**body, "transactional_ids": ok} if ok else None, {
        "throttle_time_ms": 0, "transaction_states": []})
    for state in response["transaction_states"]:  # as Kafka: topics it may not describe are left out
        state["topics"] = [t for t in state["topics"] if check(TOPIC, t["topic"], Op.DESCRIBE)]
    response["transaction_states"] += [
        {"error_code": TXN_DENIED, "transactional_id": i, "transaction_state": "", "transaction_timeout_ms": 0,
         "transaction_start_time_ms": -1, "producer_id": -1, "producer_epoch": -1, "topics": []}
        for i in ids if i not in ok]
    return response


async def list_transactions(check: Check, body: Body, inner: Inner) -> Body | None:
    response = await inner(body)
    assert response is not None
    response["transaction_states"] = [
        s for s in response["transaction_states"] if check(TXN, s["transactional_id"], Op.DESCRIBE)]
    return response


#: Every advertised API -> its guard; None: Kafka authorizes nothing there (see the table above).
GUARDS: dict[ApiKey, Guard | None] = {
    ApiKey.API_VERSIONS: None,
    ApiKey.SASL_HANDSHAKE: None,
    ApiKey.SASL_AUTHENTICATE: None,
    ApiKey.PRODUCE: produce,
    ApiKey.FETCH: fetch,
    ApiKey.LIST_OFFSETS: list_offsets,
    ApiKey.METADATA: metadata,
    ApiKey.OFFSET_COMMIT: offset_commit,
    ApiKey.OFFSET_FETCH: offset_fetch,
    ApiKey.FIND_COORDINATOR: find_coordinator,
    ApiKey.JOIN_GROUP: join_group,
    ApiKey.HEARTBEAT: heartbeat,
    ApiKey.LEAVE_GROUP: leave_group,
    ApiKey.SYNC_GROUP: sync_group,
    ApiKey.DESCRIBE_GROUPS: describe_groups,
    ApiKey.LIST_GROUPS: list_groups,
    ApiKey.CREATE_TOPICS: create_topics,
    ApiKey.DELETE_TOPICS: delete_topics,
    ApiKey.DELETE_RECORDS: delete_records,
    ApiKey.INIT_PRODUCER_ID: init_producer_id,
    ApiKey.OFFSET_FOR_LEADER_EPOCH: offset_for_leader_epoch,
    ApiKey.ADD_PARTITIONS_TO_TXN: add_partitions_to_txn,
    ApiKey.ADD_OFFSETS_TO_TXN: add_offsets_to_txn,
    ApiKey.END_TXN: end_txn,
    ApiKey.TXN_OFFSET_COMMIT: txn_offset_commit,
    ApiKey.DESCRIBE_ACLS: describe_acls,
    ApiKey.CREATE_ACLS: create_acls,
    ApiKey.DELETE_ACLS: delete_acls,
    ApiKey.DESCRIBE_CONFIGS: describe_configs,
    ApiKey.ALTER_CONFIGS: alter_configs,
    ApiKey.DESCRIBE_LOG_DIRS: describe_log_dirs,
    ApiKey.CREATE_PARTITIONS: create_partitions,
    ApiKey.INCREMENTAL_ALTER_CONFIGS: incremental_alter_configs,
    ApiKey.DELETE_GROUPS: delete_groups,
    ApiKey.OFFSET_DELETE: offset_delete,
    ApiKey.DESCRIBE_USER_SCRAM_CREDENTIALS: describe_user_scram_credentials,
    ApiKey.ALTER_USER_SCRAM_CREDENTIALS: alter_user_scram_credentials,
    ApiKey.DESCRIBE_CLUSTER: describe_cluster,
    ApiKey.DESCRIBE_PRODUCERS: describe_producers,
    ApiKey.DESCRIBE_TRANSACTIONS: describe_transactions,
    ApiKey.LIST_TRANSACTIONS: list_transactions,
}
