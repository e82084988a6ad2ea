"""KIP-430 authorized operations on a real ``flowbus broker`` process.

flowbus has no authorizer, so when a client asks (``include_*_authorized_operations``) it must
answer what Kafka answers without one: every operation Kafka supports on the resource type, one
bit per AclOperation code; when the client does not ask, -2147483648 ("omitted"). The clients:
confluent-kafka's AdminClient (``describe_topics`` and ``describe_cluster`` send Metadata with
the include flags, ``describe_consumer_groups`` sends DescribeGroups), kafka-python's
KafkaAdminClient (``describe_topics`` and ``describe_groups`` always ask; ``describe_cluster``
sends DescribeCluster), and raw frames of our own codec for the version boundaries.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import confluent_kafka
import confluent_kafka.admin as ck_admin
import kafka.admin
import pytest

from flowbus.protocol.api import ApiKey
from flowbus.protocol.error_codes import ErrorCode
from tests.support.broker_process import BrokerProcess
from tests.support.wire import Wire

pytestmark = pytest.mark.timeout(120)

READ_TIMEOUT_S = 10.0
#: "Not requested" (KIP-430): the schema default of every authorized-operations field.
OMITTED = -(1 << 31)
#: Kafka's ``AclEntry.supportedOperations`` per resource type, by AclOperation name and code.
TOPIC_OPERATIONS = {
    "READ": 3, "WRITE": 4, "CREATE": 5, "DELETE": 6, "ALTER": 7, "DESCRIBE": 8,
    "DESCRIBE_CONFIGS": 10, "ALTER_CONFIGS": 11,
}
CLUSTER_OPERATIONS = {
    "CREATE": 5, "ALTER": 7, "DESCRIBE": 8, "CLUSTER_ACTION": 9, "DESCRIBE_CONFIGS": 10,
    "ALTER_CONFIGS": 11, "IDEMPOTENT_WRITE": 12,
}
#: Up to Kafka 3.9 (4.0 adds the group-config operations; flowbus has no group configs).
GROUP_OPERATIONS = {"READ": 3, "DELETE": 6, "DESCRIBE": 8}


def bits(operations: dict[str, int]) -> int:
    return sum(1 << code for code in operations.values())


@pytest.fixture
def wire(broker: BrokerProcess) -> Iterator[Wire]:
    connection = Wire(broker, "authz-ops-test")
    yield connection
    connection.close()


@pytest.fixture
def admin(broker: BrokerProcess) -> ck_admin.AdminClient:
    return ck_admin.AdminClient({"bootstrap.servers": broker.bootstrap})


def _create_topic(admin: ck_admin.AdminClient, topic: str) -> None:
    admin.create_topics([ck_admin.NewTopic(topic, 1, 1)])[topic].result(10)


def _join(bootstrap: str, group: str, topic: str) -> confluent_kafka.Consumer:
    """A live member of ``group`` subscribed to ``topic`` (returns once it has an assignment)."""
    consumer = confluent_kafka.Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "session.timeout.ms": 6000}
    )
    consumer.subscribe([topic])
    deadline = time.monotonic() + 30
    while not consumer.assignment() and time.monotonic() < deadline:
        consumer.poll(0.1)
    assert consumer.assignment(), "the consumer never got an assignment"
    return consumer


def _names(operations: list[Any] | None) -> set[str]:
    return {op.name for op in operations or []}


# -- confluent-kafka ---------------------------------------------------------------------------


def test_confluent_describe_topics(admin: ck_admin.AdminClient, unique: Callable[[str], str]) -> None:
    topic = unique("authz-topic")
    _create_topic(admin, topic)
    topics = confluent_kafka.TopicCollection([topic])
    asked = admin.describe_topics(topics, include_authorized_operations=True)[topic].result(10)
    assert _names(asked.authorized_operations) == set(TOPIC_OPERATIONS)
    plain = admin.describe_topics(topics)[topic].result(10)
    assert plain.authorized_operations is None


def test_confluent_describe_cluster(admin: ck_admin.AdminClient) -> None:
    """librdkafka asks with Metadata v10's ``include_cluster_authorized_operations``."""
    asked = admin.describe_cluster(include_authorized_operations=True).result(10)
    assert _names(asked.authorized_operations) == set(CLUSTER_OPERATIONS)
    assert admin.describe_cluster().result(10).authorized_operations is None


def test_confluent_describe_consumer_groups(
    broker: BrokerProcess, admin: ck_admin.AdminClient, unique: Callable[[str], str]
) -> None:
    topic, group = unique("authz-grp-topic"), unique("authz-grp")
    _create_topic(admin, topic)
    consumer = _join(broker.bootstrap, group, topic)
    try:
        asked = admin.describe_consumer_groups([group], include_authorized_operations=True)[group].result(10)
        assert asked.group_id == group and asked.state == confluent_kafka.ConsumerGroupState.STABLE
        assert _names(asked.authorized_operations) == set(GROUP_OPERATIONS)
        plain = admin.describe_consumer_groups([group])[group].result(10)
        assert plain.authorized_operations is None
    finally:
        consumer.close()


# -- kafka-python ------------------------------------------------------------------------------


def test_kafka_python_describe_topics_groups_and_cluster(
    broker: BrokerProcess, admin: ck_admin.AdminClient, unique: Callable[[str], str]
) -> None:
    """kafka-python always asks, and turns each bitfield into AclOperation names."""
    topic, group = unique("authz-kp-topic"), unique("authz-kp-grp")
    _create_topic(admin, topic)
    request = confluent_kafka.ConsumerGroupTopicPartitions(group, [confluent_kafka.TopicPartition(topic, 0, 0)])
    admin.alter_consumer_group_offsets([request])[group].result(10)  # an Empty group with offsets
    client = kafka.admin.KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        (described,) = client.describe_topics([topic])
        groups = client.describe_groups([group])
        cluster = client.describe_cluster()
    finally:
        client.close()
    assert described["name"] == topic
    assert set(described["authorized_operations"]) == set(TOPIC_OPERATIONS)
    assert groups[group]["error"] is None and groups[group]["group_state"] == "Empty"
    assert set(groups[group]["authorized_operations"]) == set(GROUP_OPERATIONS)
    assert set(cluster["authorized_operations"]) == set(CLUSTER_OPERATIONS)


# -- raw frames: version boundaries ------------------------------------------------------------


def test_metadata_fields_on_the_wire(
    admin: ck_admin.AdminClient, wire: Wire, unique: Callable[[str], str]
) -> None:
    """v8-10 carry both flags and both fields; v11+ dropped the cluster ones (KIP-700), and
    Kafka answers the topic field for every topic entry, an unknown topic's too."""
    topic, missing = unique("authz-md"), unique("authz-missing")
    _create_topic(admin, topic)
    names = [{"name": topic}, {"name": missing}]
    for version in (8, 10):
        plain = wire.call(ApiKey.METADATA, version, {"topics": names, "allow_auto_topic_creation": False})
        assert plain["cluster_authorized_operations"] == OMITTED
        assert [t["topic_authorized_operations"] for t in plain["topics"]] == [OMITTED, OMITTED]
        asked = wire.call(
            ApiKey.METADATA,
            version,
            {
                "topics": names,
                "allow_auto_topic_creation": False,
                "include_cluster_authorized_operations": True,
                "include_topic_authorized_operations": True,
            },
        )
        assert asked["cluster_authorized_operations"] == bits(CLUSTER_OPERATIONS)
        by_name = {t["name"]: t for t in asked["topics"]}
        assert by_name[missing]["error_code"] == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
        assert [by_name[n]["topic_authorized_operations"] for n in (topic, missing)] == [bits(TOPIC_OPERATIONS)] * 2
    only_topics = wire.call(
        ApiKey.METADATA, 12, {"topics": [{"name": topic}], "include_topic_authorized_operations": True}
    )
    assert "cluster_authorized_operations" not in only_topics
    assert only_topics["topics"][0]["topic_authorized_operations"] == bits(TOPIC_OPERATIONS)
    assert wire.call(ApiKey.METADATA, 12, {"topics": [{"name": topic}]})["topics"][0][
        "topic_authorized_operations"
    ] == OMITTED


def test_describe_groups_field_on_the_wire(wire: Wire, unique: Callable[[str], str]) -> None:
    """v3+; only a group described without an error gets the set (a group the coordinator does
    not know is Dead with no error, as in Kafka, and gets it too)."""
    group = unique("authz-dead")
    for version in (3, 5):
        asked = wire.call(ApiKey.DESCRIBE_GROUPS, version, {"groups": [group], "include_authorized_operations": True})
        (described,) = asked["groups"]
        assert (described["error_code"], described["group_state"]) == (ErrorCode.NONE, "Dead")
        assert described["authorized_operations"] == bits(GROUP_OPERATIONS)
        plain = wire.call(ApiKey.DESCRIBE_GROUPS, version, {"groups": [group], "include_authorized_operations": False})
        assert plain["groups"][0]["authorized_operations"] == OMITTED


def test_describe_cluster_field_on_the_wire(wire: Wire) -> None:
    for version in (0, 1, 2):
        asked = wire.call(ApiKey.DESCRIBE_CLUSTER, version, {"include_cluster_authorized_operations": True})
        assert asked["error_code"] == ErrorCode.NONE
        assert asked["cluster_authorized_operations"] == bits(CLUSTER_OPERATIONS)
        plain = wire.call(ApiKey.DESCRIBE_CLUSTER, version, {"include_cluster_authorized_operations": False})
        assert plain["cluster_authorized_operations"] == OMITTED
