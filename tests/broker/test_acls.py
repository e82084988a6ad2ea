"""The authorizer against a real ``flowbus broker --authorizer on`` and real clients (issue 14).

One broker, deny by default, ``User:admin`` a super user, with a PLAINTEXT listener (anonymous
clients) and a SASL_PLAINTEXT one. Before it starts, ``flowbus acls add`` (offline) gives
alice everything on ``alice-`` prefixed topics, groups and transactional ids, and denies her
writes to ``alice-readonly``. The tests then check what the issue listed: an anonymous or
unauthorized client cannot delete another app's topic, read the internal topics, commit a
group's offsets, kick a member, fence a transactional id, see topics in Metadata or read the
data directory from DescribeConfigs, while alice produces, consumes, commits and runs
transactions; ACLs are managed with confluent-kafka's and kafka-python's admin clients and the
CLI, and survive a restart.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import confluent_kafka
import pytest
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)

from flowbus.protocol.api import ApiKey
from flowbus.protocol.codec import decode_response, encode_request
from flowbus.protocol.error_codes import ErrorCode
from tests.support.broker_process import BrokerProcess, free_port

FLOWBUS = [sys.executable, "-m", "flowbus"]
PASSWORDS = {"alice": "alice-pw-1", "bob": "bob-pw-2", "admin": "admin-pw-3"}
SOCKET_TIMEOUT_S = 15.0
CLIENT_TIMEOUT_S = 30.0

pytestmark = pytest.mark.timeout(240)


@dataclass
class Authorized:
    broker: BrokerProcess
    sasl_port: int

    def config(self, user: str) -> dict[str, Any]:
        return {"bootstrap.servers": f"127.0.0.1:{self.sasl_port}", "security.protocol": "SASL_PLAINTEXT",
                "sasl.mechanism": "SCRAM-SHA-256", "sasl.username": user, "sasl.password": PASSWORDS[user]}

    def admin(self, user: str) -> AdminClient:
        return AdminClient({**self.config(user), "log_level": 0})


def run_cli(args: list[str], *, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FLOWBUS, *args], input=stdin, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def authorized(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Authorized]:
    data_dir = tmp_path_factory.mktemp("acls") / "data"
    for user, password in PASSWORDS.items():
        result = run_cli(["users", "add", user, "--password-file", "-", "--data-dir", str(data_dir)], stdin=password)
        assert result.returncode == 0, result.stderr
    grants = [
        ["--allow-principal", "User:alice", "--operation", "All", "--topic", "alice-", "--group", "alice-",
         "--transactional-id", "alice-", "--resource-pattern-type", "prefixed"],
        ["--deny-principal", "User:alice", "--operation", "Write", "--topic", "alice-readonly"],
    ]
    for grant in grants:
        result = run_cli(["acls", "add", *grant, "--data-dir", str(data_dir)])
        assert result.returncode == 0, result.stderr
    sasl_port = free_port()
    extra = ["--group-initial-rebalance-delay-ms", "0", "--authorizer", "on", "--super-users", "User:admin",
             "--listener", f"SASL_PLAINTEXT://127.0.0.1:{sasl_port}"]
    with BrokerProcess(data_dir, extra_args=extra) as broker:
        env = Authorized(broker, sasl_port)
        admin = env.admin("admin")
        for future in admin.create_topics([NewTopic(t, 1) for t in ("alice-orders", "alice-readonly", "bob-secret")],
                                          request_timeout=CLIENT_TIMEOUT_S).values():
            future.result(timeout=CLIENT_TIMEOUT_S)
        yield env


# -- raw frames ---------------------------------------------------------------------------------

def recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("closed by the broker")
        chunks += chunk
    return bytes(chunks)


def call(sock: socket.socket, api_key: ApiKey, version: int, body: dict[str, Any], correlation_id: int = 1) -> dict[str, Any]:
    sock.sendall(encode_request(int(api_key), version, correlation_id, "acl-test", body))
    (size,) = struct.unpack(">i", recv_exactly(sock, 4))
    got, response = decode_response(int(api_key), version, recv_exactly(sock, size))
    assert got == correlation_id
    return response


def connect(port: int, user: str | None = None) -> socket.socket:
    """A raw connection: anonymous on the PLAINTEXT port, or logged in with SASL/PLAIN."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT_S)
    if user is not None:
        assert call(sock, ApiKey.SASL_HANDSHAKE, 1, {"mechanism": "PLAIN"})["error_code"] == 0
        login = call(sock, ApiKey.SASL_AUTHENTICATE, 2,
                     {"auth_bytes": f"\0{user}\0{PASSWORDS[user]}".encode()}, 2)
        assert login["error_code"] == 0
    return sock


def fetch_error(sock: socket.socket, topic: str) -> int:
    response = call(sock, ApiKey.FETCH, 11, {
        "replica_id": -1, "max_wait_ms": 0, "min_bytes": 0, "max_bytes": 1 << 20, "isolation_level": 0,
        "session_id": 0, "session_epoch": -1, "rack_id": "", "forgotten_topics_data": [],
        "topics": [{"topic": topic, "partitions": [{"partition": 0, "current_leader_epoch": -1, "fetch_offset": 0,
                                                   "log_start_offset": -1, "partition_max_bytes": 1 << 20}]}]}, 7)
    return response["responses"][0]["partitions"][0]["error_code"]


# -- what the issue listed ----------------------------------------------------------------------

def test_another_apps_topic_cannot_be_deleted(authorized: Authorized) -> None:
    for user in (None, "bob"):
        port = authorized.broker.port if user is None else authorized.sasl_port
        with connect(port, user) as sock:
            answer = call(sock, ApiKey.DELETE_TOPICS, 4, {"topic_names": ["alice-orders"], "timeout_ms": 5000})
            assert answer["responses"][0]["error_code"] == ErrorCode.TOPIC_AUTHORIZATION_FAILED
    bob = authorized.admin("bob")  # kept: a client destroyed early fails its futures
    futures = bob.delete_topics(["alice-orders"], request_timeout=CLIENT_TIMEOUT_S)
    with pytest.raises(confluent_kafka.KafkaException, match="AUTHORIZATION"):
        futures["alice-orders"].result(timeout=CLIENT_TIMEOUT_S)
    assert "alice-orders" in authorized.admin("admin").list_topics(timeout=CLIENT_TIMEOUT_S).topics


def test_internal_topics_are_not_readable(authorized: Authorized) -> None:
    with connect(authorized.broker.port) as anonymous, connect(authorized.sasl_port, "alice") as alice:
        for topic in ("__consumer_offsets", "__transaction_state"):
            assert fetch_error(anonymous, topic) == ErrorCode.TOPIC_AUTHORIZATION_FAILED
            assert fetch_error(alice, topic) == ErrorCode.TOPIC_AUTHORIZATION_FAILED
    with connect(authorized.sasl_port, "admin") as admin:  # super users may read (not write)
        assert fetch_error(admin, "__consumer_offsets") == ErrorCode.NONE


def test_metadata_hides_topics_a_principal_may_not_describe(authorized: Authorized) -> None:
    bob = AdminClient({**authorized.config("bob"), "log_level": 0}).list_topics(timeout=CLIENT_TIMEOUT_S).topics
    assert not {"alice-orders", "bob-secret", "__consumer_offsets"} & set(bob)
    alice = authorized.admin("alice").list_topics(timeout=CLIENT_TIMEOUT_S).topics
    assert {"alice-orders", "alice-readonly"} <= set(alice) and "bob-secret" not in alice
    with connect(authorized.broker.port) as sock:
        named = call(sock, ApiKey.METADATA, 9, {"topics": [{"name": "alice-orders"}],
                                                 "allow_auto_topic_creation": True,
                                                 "include_topic_authorized_operations": True})
        assert named["topics"][0]["error_code"] == ErrorCode.TOPIC_AUTHORIZATION_FAILED
        created = call(sock, ApiKey.METADATA, 9, {"topics": [{"name": "anon-auto"}], "allow_auto_topic_creation": True})
        assert created["topics"][0]["error_code"] == ErrorCode.TOPIC_AUTHORIZATION_FAILED
    with connect(authorized.sasl_port, "alice") as sock:
        mine = call(sock, ApiKey.METADATA, 9, {"topics": [{"name": "alice-orders"}], "allow_auto_topic_creation": False,
                                               "include_topic_authorized_operations": True})
        ops = mine["topics"][0]["topic_authorized_operations"]
        assert mine["topics"][0]["error_code"] == 0 and ops & (1 << 3) and ops & (1 << 4)


def test_an_app_produces_consumes_commits_and_runs_transactions(authorized: Authorized) -> None:
    producer = confluent_kafka.Producer({**authorized.config("alice"), "enable.idempotence": True})
    producer.produce("alice-orders", b"order-1")
    assert producer.flush(CLIENT_TIMEOUT_S) == 0
    tx = confluent_kafka.Producer({**authorized.config("alice"), "transactional.id": "alice-tx-1"})
    tx.init_transactions(CLIENT_TIMEOUT_S)
    tx.begin_transaction()
    tx.produce("alice-orders", b"order-2")
    tx.commit_transaction(CLIENT_TIMEOUT_S)
    consumer = confluent_kafka.Consumer({**authorized.config("alice"), "group.id": "alice-app",
                                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe(["alice-orders"])
    values: list[bytes] = []
    deadline = time.monotonic() + CLIENT_TIMEOUT_S
    while len(values) < 2 and time.monotonic() < deadline:
        message = consumer.poll(1.0)
        if message is not None and message.error() is None:
            values.append(message.value() or b"")
            consumer.commit(message=message, asynchronous=False)
    consumer.close()
    assert values == [b"order-1", b"order-2"]
    # Deny wins over the prefixed allow: alice's writes to alice-readonly fail.
    errors: list[Any] = []
    readonly = confluent_kafka.Producer({**authorized.config("alice"), "message.timeout.ms": 5000})
    readonly.produce("alice-readonly", b"x", on_delivery=lambda err, msg: errors.append(err))
    readonly.flush(CLIENT_TIMEOUT_S)
    assert errors and errors[0] is not None and errors[0].code() == confluent_kafka.KafkaError.TOPIC_AUTHORIZATION_FAILED


def test_groups_and_transactional_ids_of_others_are_out_of_reach(authorized: Authorized) -> None:
    with connect(authorized.sasl_port, "bob") as sock:
        commit = call(sock, ApiKey.OFFSET_COMMIT, 2, {
            "group_id": "alice-app", "generation_id_or_member_epoch": -1, "member_id": "", "retention_time_ms": -1,
            "topics": [{"name": "alice-orders", "partitions": [
                {"partition_index": 0, "committed_offset": 0, "committed_metadata": None}]}]})
        assert commit["topics"][0]["partitions"][0]["error_code"] == ErrorCode.GROUP_AUTHORIZATION_FAILED
        leave = call(sock, ApiKey.LEAVE_GROUP, 3, {"group_id": "alice-app", "members": [
            {"member_id": "someone", "group_instance_id": None}]}, 2)
        assert leave["error_code"] == ErrorCode.GROUP_AUTHORIZATION_FAILED
        join = call(sock, ApiKey.JOIN_GROUP, 5, {
            "group_id": "alice-app", "session_timeout_ms": 10000, "rebalance_timeout_ms": 10000, "member_id": "",
            "group_instance_id": None, "protocol_type": "consumer", "protocols": []}, 3)
        assert join["error_code"] == ErrorCode.GROUP_AUTHORIZATION_FAILED
        fenced = call(sock, ApiKey.INIT_PRODUCER_ID, 3, {
            "transactional_id": "alice-tx-1", "transaction_timeout_ms": 60000, "producer_id": -1,
            "producer_epoch": -1}, 4)
        assert fenced["error_code"] == ErrorCode.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
        coordinator = call(sock, ApiKey.FIND_COORDINATOR, 2, {"key": "alice-tx-1", "key_type": 1}, 5)
        assert coordinator["error_code"] == ErrorCode.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
        idempotent = call(sock, ApiKey.INIT_PRODUCER_ID, 3, {
            "transactional_id": None, "transaction_timeout_ms": 60000, "producer_id": -1, "producer_epoch": -1}, 6)
        assert idempotent["error_code"] == ErrorCode.CLUSTER_AUTHORIZATION_FAILED
        groups = call(sock, ApiKey.LIST_GROUPS, 3, {}, 7)
        assert "alice-app" not in {g["group_id"] for g in groups["groups"]}
        scram = call(sock, ApiKey.ALTER_USER_SCRAM_CREDENTIALS, 0, {"deletions": [{"name": "alice", "mechanism": 1}],
                                                                   "upsertions": []}, 8)
        assert scram["results"][0]["error_code"] == ErrorCode.CLUSTER_AUTHORIZATION_FAILED
    with connect(authorized.sasl_port, "alice") as sock:  # the committed offset is still alice's
        fetched = call(sock, ApiKey.OFFSET_FETCH, 3, {"group_id": "alice-app", "topics": None})
        assert fetched["error_code"] == 0
        assert fetched["topics"][0]["partitions"][0]["committed_offset"] >= 2


def test_describe_configs_reveals_no_path(authorized: Authorized) -> None:
    data_dir = str(authorized.broker.data_dir.resolve())
    body = {"resources": [{"resource_type": 4, "resource_name": "0", "configuration_keys": None}],
            "include_synonyms": False, "include_documentation": False}
    with connect(authorized.broker.port) as sock:
        assert call(sock, ApiKey.DESCRIBE_CONFIGS, 4, body)["results"][0]["error_code"] == \
            ErrorCode.CLUSTER_AUTHORIZATION_FAILED
    with connect(authorized.sasl_port, "admin") as sock:
        result = call(sock, ApiKey.DESCRIBE_CONFIGS, 4, body)["results"][0]
    assert result["error_code"] == 0
    configs = {c["name"]: c for c in result["configs"]}
    assert configs["log.dirs"]["value"] is None and configs["log.dirs"]["is_sensitive"]
    assert not any(c["value"] and str(authorized.broker.data_dir) in c["value"] for c in result["configs"])
    assert data_dir not in repr(result)


def internal_write_errors(sock: socket.socket) -> set[int]:
    """Produce, DeleteTopics, DeleteRecords, CreatePartitions and AlterConfigs on
    ``__consumer_offsets``: the error codes they get."""
    from flowbus.records.builder import BatchBuilder

    topic = "__consumer_offsets"
    builder = BatchBuilder()
    builder.append(key=b"k", value=b"v", timestamp_ms=int(time.time() * 1000))
    produced = call(sock, ApiKey.PRODUCE, 7, {"transactional_id": None, "acks": -1, "timeout_ms": 5000, "topic_data": [
        {"name": topic, "partition_data": [{"index": 0, "records": builder.build()}]}]}, 11)
    deleted = call(sock, ApiKey.DELETE_TOPICS, 4, {"topic_names": [topic], "timeout_ms": 5000}, 12)
    records = call(sock, ApiKey.DELETE_RECORDS, 1, {"topics": [{"name": topic, "partitions": [
        {"partition_index": 0, "offset": 0}]}], "timeout_ms": 5000}, 13)
    partitions = call(sock, ApiKey.CREATE_PARTITIONS, 1, {"topics": [{"name": topic, "count": 5, "assignments": None}],
                                                          "timeout_ms": 5000, "validate_only": False}, 14)
    altered = call(sock, ApiKey.ALTER_CONFIGS, 1, {"resources": [{"resource_type": 2, "resource_name": topic, "configs": [
        {"name": "retention.ms", "value": "1"}]}], "validate_only": False}, 15)
    return {produced["responses"][0]["partition_responses"][0]["error_code"],
            deleted["responses"][0]["error_code"], records["topics"][0]["partitions"][0]["error_code"],
            partitions["results"][0]["error_code"], altered["responses"][0]["error_code"]}


def test_internal_topics_are_not_writable_even_by_super_users(authorized: Authorized) -> None:
    with connect(authorized.sasl_port, "admin") as sock:
        assert internal_write_errors(sock) == {ErrorCode.INVALID_TOPIC_EXCEPTION}
    with connect(authorized.broker.port) as sock:
        assert internal_write_errors(sock) == {ErrorCode.TOPIC_AUTHORIZATION_FAILED}


# -- managing ACLs ------------------------------------------------------------------------------

def test_confluent_kafka_admin_creates_describes_and_deletes_acls(authorized: Authorized) -> None:
    topic = f"bob-{uuid.uuid4().hex[:8]}"
    admin = authorized.admin("admin")
    admin.create_topics([NewTopic(topic, 1)])[topic].result(timeout=CLIENT_TIMEOUT_S)
    bindings = [AclBinding(ResourceType.TOPIC, topic, ResourcePatternType.LITERAL, "User:bob", "*", op,
                           AclPermissionType.ALLOW) for op in (AclOperation.WRITE, AclOperation.READ)]
    bindings.append(AclBinding(ResourceType.GROUP, "bob-group", ResourcePatternType.LITERAL, "User:bob", "*",
                               AclOperation.READ, AclPermissionType.ALLOW))
    for future in admin.create_acls(bindings, request_timeout=CLIENT_TIMEOUT_S).values():
        assert future.result(timeout=CLIENT_TIMEOUT_S) is None
    # Not a super user: refused.
    bob = authorized.admin("bob")
    refused = bob.create_acls(bindings[:1], request_timeout=CLIENT_TIMEOUT_S)
    with pytest.raises(confluent_kafka.KafkaException, match="AUTHORIZATION"):
        next(iter(refused.values())).result(timeout=CLIENT_TIMEOUT_S)
    producer = confluent_kafka.Producer(authorized.config("bob"))
    producer.produce(topic, b"hello")
    assert producer.flush(CLIENT_TIMEOUT_S) == 0
    flt = AclBindingFilter(ResourceType.TOPIC, topic, ResourcePatternType.ANY, None, None,  # type: ignore[arg-type]
                           AclOperation.ANY, AclPermissionType.ANY)
    described = admin.describe_acls(flt, request_timeout=CLIENT_TIMEOUT_S).result(timeout=CLIENT_TIMEOUT_S)
    assert {b.operation for b in described} == {AclOperation.WRITE, AclOperation.READ}
    deleted = admin.delete_acls([flt], request_timeout=CLIENT_TIMEOUT_S)[flt].result(timeout=CLIENT_TIMEOUT_S)
    assert len(deleted) == 2
    assert admin.describe_acls(flt, request_timeout=CLIENT_TIMEOUT_S).result(timeout=CLIENT_TIMEOUT_S) == []
    errors: list[Any] = []
    again = confluent_kafka.Producer({**authorized.config("bob"), "message.timeout.ms": 5000})
    again.produce(topic, b"denied", on_delivery=lambda err, msg: errors.append(err))
    again.flush(CLIENT_TIMEOUT_S)
    assert errors and errors[0] is not None


def test_create_topics_needs_create_and_hides_configs_without_describe_configs(authorized: Authorized) -> None:
    admin = authorized.admin("admin")
    binding = AclBinding(ResourceType.TOPIC, "bob-made", ResourcePatternType.LITERAL, "User:bob", "*",
                         AclOperation.CREATE, AclPermissionType.ALLOW)
    assert admin.create_acls([binding], request_timeout=CLIENT_TIMEOUT_S)[binding].result(timeout=CLIENT_TIMEOUT_S) is None
    with connect(authorized.sasl_port, "bob") as sock:
        answer = call(sock, ApiKey.CREATE_TOPICS, 5, {"topics": [
            {"name": name, "num_partitions": 1, "replication_factor": 1, "assignments": [], "configs": []}
            for name in ("bob-made", "bob-other")], "timeout_ms": 5000, "validate_only": False})
    by_name = {t["name"]: t for t in answer["topics"]}
    made = by_name["bob-made"]
    assert made["error_code"] == 0 and made["configs"] is None
    assert made["topic_config_error_code"] == ErrorCode.TOPIC_AUTHORIZATION_FAILED
    assert by_name["bob-other"]["error_code"] == ErrorCode.TOPIC_AUTHORIZATION_FAILED


def test_kafka_python_admin_manages_acls(authorized: Authorized) -> None:
    from kafka.admin import (  # type: ignore[import-untyped]
        ACL,
        ACLFilter,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        KafkaAdminClient,
        ResourcePattern,
        ResourcePatternFilter,
    )
    from kafka.admin import ResourceType as KpResourceType

    admin = KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{authorized.sasl_port}", security_protocol="SASL_PLAINTEXT",
                             sasl_mechanism="PLAIN", sasl_plain_username="admin", sasl_plain_password=PASSWORDS["admin"],
                             request_timeout_ms=int(CLIENT_TIMEOUT_S * 1000))
    try:
        pattern = ResourcePattern(KpResourceType.GROUP, "kp-", ACLResourcePatternType.PREFIXED)
        acl = ACL("User:bob", "*", ACLOperation.READ, ACLPermissionType.ALLOW, pattern)
        created = admin.create_acls([acl])
        assert created["failed"] == [] and len(created["succeeded"]) == 1
        flt = ACLFilter("User:bob", None, ACLOperation.ANY, ACLPermissionType.ANY,
                        ResourcePatternFilter(KpResourceType.GROUP, "kp-", ACLResourcePatternType.PREFIXED))
        found, error = admin.describe_acls(flt)
        assert error.errno == 0 and [a.resource_pattern.resource_name for a in found] == ["kp-"]
        ((_, deleted, error),) = admin.delete_acls([flt])
        assert len(deleted) == 1 and error.errno == 0
    finally:
        admin.close()


def test_cli_online_and_acls_survive_a_restart(authorized: Authorized, monkeypatch: pytest.MonkeyPatch) -> None:
    # The password comes from the environment (the CLI's subprocess inherits it): the command
    # line refuses one written into the URL.
    monkeypatch.setenv("FLOWBUS_TEST_ADMIN_PASSWORD", PASSWORDS["admin"])
    url = (f"kafka://127.0.0.1:{authorized.sasl_port}?security.protocol=SASL_PLAINTEXT&sasl.mechanism=SCRAM-SHA-256"
           f"&sasl.username=admin&sasl.password.env=FLOWBUS_TEST_ADMIN_PASSWORD")
    added = run_cli(["acls", "add", "--bootstrap", url, "--allow-principal", "User:bob", "--operation", "Describe",
                     "--topic", "bob-secret"])
    assert added.returncode == 0, added.stderr
    listed = run_cli(["acls", "list", "--bootstrap", url, "--topic", "bob-secret"])
    assert listed.returncode == 0 and "User:bob ALLOW DESCRIBE" in listed.stdout, listed.stderr
    authorized.broker.restart()
    bob = authorized.admin("bob").list_topics(timeout=CLIENT_TIMEOUT_S).topics
    assert "bob-secret" in bob and "alice-orders" not in bob
    removed = run_cli(["acls", "remove", "--bootstrap", url, "--topic", "bob-secret"])
    assert removed.returncode == 0 and "removed" in removed.stdout, removed.stderr
    assert "bob-secret" not in authorized.admin("bob").list_topics(timeout=CLIENT_TIMEOUT_S).topics


def test_cli_offline_edits_need_a_stopped_broker(authorized: Authorized, tmp_path: Path) -> None:
    busy = run_cli(["acls", "list", "--data-dir", str(authorized.broker.data_dir)])
    assert busy.returncode != 0 and "running broker" in busy.stderr
    data_dir = str(tmp_path / "offline")
    for args in (["--allow-principal", "User:a", "--operation", "Read", "--operation", "Describe", "--topic", "t"],
                 ["--deny-principal", "User:b", "--deny-host", "10.1.1.1", "--operation", "All", "--cluster"]):
        assert run_cli(["acls", "add", *args, "--data-dir", data_dir]).returncode == 0
    listed = run_cli(["acls", "list", "--data-dir", data_dir]).stdout.splitlines()
    assert len(listed) == 3 and "CLUSTER:LITERAL:kafka-cluster\tUser:b DENY ALL from 10.1.1.1" in listed
    removed = run_cli(["acls", "remove", "--topic", "t", "--operation", "Read", "--data-dir", data_dir])
    assert removed.stdout.count("removed") == 1
    bad = run_cli(["acls", "add", "--allow-principal", "User:a", "--operation", "IdempotentWrite", "--topic", "t",
                   "--data-dir", data_dir])
    assert bad.returncode == 2 and "does not apply to TOPIC" in bad.stderr


def test_acl_apis_without_an_authorizer_say_security_disabled(tmp_path: Path) -> None:
    with BrokerProcess(tmp_path / "data") as broker, connect(broker.port) as sock:
        described = call(sock, ApiKey.DESCRIBE_ACLS, 1, {
            "resource_type_filter": 1, "resource_name_filter": None, "pattern_type_filter": 1,
            "principal_filter": None, "host_filter": None, "operation": 1, "permission_type": 1})
        assert described["error_code"] == ErrorCode.SECURITY_DISABLED
        configs = call(sock, ApiKey.DESCRIBE_CONFIGS, 1, {
            "resources": [{"resource_type": 4, "resource_name": "0", "configuration_keys": None}],
            "include_synonyms": False}, 2)
        assert str(broker.data_dir) not in repr(configs)
        assert internal_write_errors(sock) == {ErrorCode.INVALID_TOPIC_EXCEPTION}
        assert fetch_error(sock, "__consumer_offsets") == ErrorCode.NONE  # readable, as Kafka (Burrow)


def test_every_advertised_version_is_answered_when_refused(tmp_path: Path) -> None:
    """The refusals the authorization guards build must encode at every advertised version:
    an anonymous client of a broker with no ACL is refused everything (as in
    ``test_advertised_versions.py``, but every answer here is built by a guard)."""
    from tests.broker.test_advertised_versions import (
        CLOSES_AFTER_ANSWER,
        advertised,
        request_body,
        round_trip,
    )

    with BrokerProcess(tmp_path / "data", extra_args=["--authorizer", "on"]) as broker:
        with connect(broker.port) as sock:
            ranges = advertised(sock)
        refusals = 0
        for api_key, (low, high) in sorted(ranges.items()):
            with connect(broker.port) as sock:
                for correlation_id, version in enumerate(range(low, high + 1), start=10):
                    response = round_trip(sock, api_key, version, correlation_id, request_body(api_key, version))
                    refusals += "AUTHORIZATION_FAILED" in repr(
                        {ErrorCode(c).name for c in _codes(response) if c in set(ErrorCode)})
                    if api_key in CLOSES_AFTER_ANSWER:
                        break
                if api_key not in CLOSES_AFTER_ANSWER:
                    assert advertised(sock) == ranges
        assert refusals > 100
        assert broker.running


def _codes(value: Any) -> Iterator[int]:
    if isinstance(value, dict):
        for name, item in value.items():
            if name.endswith("error_code") and isinstance(item, int):
                yield item
            else:
                yield from _codes(item)
    elif isinstance(value, list):
        for item in value:
            yield from _codes(item)
