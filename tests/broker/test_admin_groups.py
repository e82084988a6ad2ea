"""DeleteGroups (42), OffsetDelete (47) and DescribeCluster (60) on a real ``flowbus broker`` process.

Through the clients that offer them: confluent-kafka's AdminClient (``delete_consumer_groups``;
its ``describe_cluster`` sends Metadata v10, not API 60; it has no call for OffsetDelete) and kafka-python's KafkaAdminClient
(``delete_groups``, ``delete_group_offsets``, ``describe_cluster``), plus raw frames of our own codec
for the cases no client sends (a live group of another protocol type, a controller endpoint type).
Deleted offsets must stay deleted across a broker crash: the tombstones in ``__consumer_offsets``
are what the restarted broker replays.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import confluent_kafka
import confluent_kafka.admin as ck_admin
import kafka
import kafka.admin
import kafka.errors
import pytest

from flowbus.protocol.api import ApiKey
from flowbus.protocol.error_codes import ErrorCode
from tests.support.broker_process import BrokerProcess
from tests.support.wire import Wire

pytestmark = pytest.mark.timeout(120)

READ_TIMEOUT_S = 10.0
#: Kafka's authorized-operations value for "not requested" (KIP-430).
OPERATIONS_OMITTED = -(1 << 31)
#: What confluent-kafka reports for a partition without a committed offset.
NO_OFFSET = confluent_kafka.OFFSET_INVALID


@pytest.fixture
def wire(broker: BrokerProcess) -> Iterator[Wire]:
    connection = Wire(broker, "admin-groups-test")
    yield connection
    connection.close()


def _create_topic(admin: ck_admin.AdminClient, topic: str, partitions: int) -> None:
    admin.create_topics([ck_admin.NewTopic(topic, partitions, 1)])[topic].result(10)


def _commit(admin: ck_admin.AdminClient, group: str, offsets: dict[tuple[str, int], int]) -> None:
    """Commit offsets for an empty group (AlterConsumerGroupOffsets is a plain OffsetCommit)."""
    request = confluent_kafka.ConsumerGroupTopicPartitions(
        group, [confluent_kafka.TopicPartition(t, p, o) for (t, p), o in offsets.items()]
    )
    admin.alter_consumer_group_offsets([request])[group].result(10)


def _committed(admin: ck_admin.AdminClient, group: str, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
    request = confluent_kafka.ConsumerGroupTopicPartitions(
        group, [confluent_kafka.TopicPartition(t, p) for t, p in partitions]
    )
    listed = admin.list_consumer_group_offsets([request])[group].result(10)
    return {(tp.topic, tp.partition): tp.offset for tp in listed.topic_partitions}


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


def _wait_loaded(admin: ck_admin.AdminClient, group: str) -> None:
    """After a restart: wait until the group coordinator has replayed ``__consumer_offsets``."""
    deadline = time.monotonic() + 30
    while True:
        try:
            admin.list_consumer_groups().result(10)
            return
        except confluent_kafka.KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_confluent_deletes_empty_groups_and_they_stay_deleted(
    fresh_broker: BrokerProcess, unique: Callable[[str], str]
) -> None:
    admin = ck_admin.AdminClient({"bootstrap.servers": fresh_broker.bootstrap})
    topic, gone, kept, live = unique("dg"), unique("gone"), unique("kept"), unique("live")
    _create_topic(admin, topic, 3)
    partitions = [(topic, p) for p in range(3)]
    _commit(admin, gone, {(topic, 0): 5, (topic, 1): 7, (topic, 2): 9})
    _commit(admin, kept, {(topic, 0): 11})
    consumer = _join(fresh_broker.bootstrap, live, topic)
    try:
        futures = admin.delete_consumer_groups([gone, live, unique("never")])
        futures[gone].result(10)
        with pytest.raises(confluent_kafka.KafkaException) as non_empty:
            futures[live].result(10)
        assert non_empty.value.args[0].code() == confluent_kafka.KafkaError.NON_EMPTY_GROUP
        unknown = next(f for g, f in futures.items() if g not in (gone, live))
        with pytest.raises(confluent_kafka.KafkaException) as not_found:
            unknown.result(10)
        assert not_found.value.args[0].code() == confluent_kafka.KafkaError.GROUP_ID_NOT_FOUND
        # Deleting again: the group is gone.
        with pytest.raises(confluent_kafka.KafkaException) as again:
            admin.delete_consumer_groups([gone])[gone].result(10)
        assert again.value.args[0].code() == confluent_kafka.KafkaError.GROUP_ID_NOT_FOUND
    finally:
        consumer.close()

    assert set(_committed(admin, gone, partitions).values()) == {NO_OFFSET}
    assert _committed(admin, kept, [(topic, 0)]) == {(topic, 0): 11}
    assert gone not in {g.group_id for g in admin.list_consumer_groups().result(10).valid}

    # A crash (nothing flushed or closed): the replayed tombstones keep the offsets deleted.
    fresh_broker.restart(kill=True)
    admin = ck_admin.AdminClient({"bootstrap.servers": fresh_broker.bootstrap})
    _wait_loaded(admin, gone)
    assert set(_committed(admin, gone, partitions).values()) == {NO_OFFSET}
    assert _committed(admin, kept, [(topic, 0)]) == {(topic, 0): 11}
    assert gone not in {g.group_id for g in admin.list_consumer_groups().result(10).valid}


def test_kafka_python_deletes_groups(broker: BrokerProcess, unique: Callable[[str], str]) -> None:
    ck = ck_admin.AdminClient({"bootstrap.servers": broker.bootstrap})
    topic, group, live = unique("kpdg"), unique("kpgone"), unique("kplive")
    _create_topic(ck, topic, 1)
    _commit(ck, group, {(topic, 0): 3})
    consumer = _join(broker.bootstrap, live, topic)
    admin = kafka.admin.KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        results = admin.delete_groups([group, live])
        assert results == {group: "OK", live: "NonEmptyGroupError"}
        assert admin.delete_groups([group]) == {group: "GroupIdNotFoundError"}
        assert set(_committed(ck, group, [(topic, 0)]).values()) == {NO_OFFSET}
    finally:
        admin.close()
        consumer.close()


def test_kafka_python_deletes_offsets(
    fresh_broker: BrokerProcess, unique: Callable[[str], str]
) -> None:
    ck = ck_admin.AdminClient({"bootstrap.servers": fresh_broker.bootstrap})
    subscribed, other, group = unique("sub"), unique("other"), unique("odg")
    _create_topic(ck, subscribed, 2)
    _create_topic(ck, other, 1)
    all_partitions = [(subscribed, 0), (subscribed, 1), (other, 0)]
    _commit(ck, group, {(subscribed, 0): 10, (subscribed, 1): 20, (other, 0): 30})
    admin = kafka.admin.KafkaAdminClient(bootstrap_servers=fresh_broker.bootstrap)
    try:
        # Empty group: any partition's offset may go; an unknown partition is an error.
        results = admin.delete_group_offsets(
            group, [kafka.TopicPartition(subscribed, 0), kafka.TopicPartition(subscribed, 9)]
        )
        assert results == {
            kafka.TopicPartition(subscribed, 0): kafka.errors.NoError,
            kafka.TopicPartition(subscribed, 9): kafka.errors.UnknownTopicOrPartitionError,
        }
        assert _committed(ck, group, all_partitions) == {
            (subscribed, 0): NO_OFFSET, (subscribed, 1): 20, (other, 0): 30,
        }
        # Live consumer group: the topic its member subscribes to is refused, the other is not.
        consumer = _join(fresh_broker.bootstrap, group, subscribed)
        try:
            results = admin.delete_group_offsets(
                group, [kafka.TopicPartition(subscribed, 1), kafka.TopicPartition(other, 0)]
            )
            assert results == {
                kafka.TopicPartition(subscribed, 1): kafka.errors.GroupSubscribedToTopicError,
                kafka.TopicPartition(other, 0): kafka.errors.NoError,
            }
        finally:
            consumer.close()
        with pytest.raises(kafka.errors.GroupIdNotFoundError):
            admin.delete_group_offsets(unique("nogroup"), [kafka.TopicPartition(other, 0)])
    finally:
        admin.close()

    fresh_broker.restart(kill=True)
    ck = ck_admin.AdminClient({"bootstrap.servers": fresh_broker.bootstrap})
    _wait_loaded(ck, group)
    assert _committed(ck, group, all_partitions) == {
        (subscribed, 0): NO_OFFSET, (subscribed, 1): 20, (other, 0): NO_OFFSET,
    }


def test_offset_delete_refuses_a_live_group_of_another_protocol(
    broker: BrokerProcess, wire: Wire, unique: Callable[[str], str]
) -> None:
    """A ``connect``-type group's subscriptions cannot be read: while it has members, no offset
    of it may be deleted (NON_EMPTY_GROUP), as in Kafka; an empty group id is INVALID_GROUP_ID.

    The group gets an offset first: an empty group with no offset is forgotten at the broker's
    next tick (as Kafka's cleanup does, only sooner), and the deletion after the leave must find it."""
    ck = ck_admin.AdminClient({"bootstrap.servers": broker.bootstrap})
    topic, group = unique("conn"), unique("conng")
    _create_topic(ck, topic, 1)
    _commit(ck, group, {(topic, 0): 7})
    joined = wire.call(ApiKey.JOIN_GROUP, 3, {
        "group_id": group, "session_timeout_ms": 10_000, "rebalance_timeout_ms": 10_000, "member_id": "",
        "protocol_type": "connect", "protocols": [{"name": "default", "metadata": b"\x00"}],
    })
    assert joined["error_code"] == ErrorCode.NONE
    request = {"group_id": group, "topics": [{"name": topic, "partitions": [{"partition_index": 0}]}]}
    answer = wire.call(ApiKey.OFFSET_DELETE, 0, request)
    assert answer == {"error_code": ErrorCode.NON_EMPTY_GROUP, "throttle_time_ms": 0, "topics": []}
    assert wire.call(ApiKey.DELETE_GROUPS, 2, {"groups_names": [group, ""]})["results"] == [
        {"group_id": group, "error_code": ErrorCode.NON_EMPTY_GROUP},
        {"group_id": "", "error_code": ErrorCode.INVALID_GROUP_ID},
    ]
    left = wire.call(ApiKey.LEAVE_GROUP, 0, {"group_id": group, "member_id": joined["member_id"]})
    assert left["error_code"] == ErrorCode.NONE
    answer = wire.call(ApiKey.OFFSET_DELETE, 0, request)
    assert answer["error_code"] == ErrorCode.NONE
    assert answer["topics"] == [{"name": topic, "partitions": [{"partition_index": 0, "error_code": 0}]}]
    assert _committed(ck, group, [(topic, 0)]) == {(topic, 0): NO_OFFSET}
    assert wire.call(ApiKey.OFFSET_DELETE, 0, dict(request, group_id=""))["error_code"] == ErrorCode.INVALID_GROUP_ID


def test_confluent_describe_cluster(broker: BrokerProcess) -> None:
    """librdkafka 2.x implements DescribeCluster with Metadata v10 (it never sends API 60): the
    same answer must come from both."""
    admin = ck_admin.AdminClient({"bootstrap.servers": broker.bootstrap})
    cluster = admin.describe_cluster(include_authorized_operations=True).result(10)
    assert cluster.cluster_id == admin.list_topics(timeout=10).cluster_id
    assert [(n.id, n.host, n.port) for n in cluster.nodes] == [(0, broker.host, broker.port)]
    assert cluster.controller.id == 0
    # No authorizer: every cluster operation is allowed, as Kafka reports it.
    assert {op.name for op in cluster.authorized_operations} == {
        "CREATE", "ALTER", "DESCRIBE", "CLUSTER_ACTION", "DESCRIBE_CONFIGS", "ALTER_CONFIGS", "IDEMPOTENT_WRITE",
    }
    plain = admin.describe_cluster().result(10)
    assert not plain.authorized_operations


def test_kafka_python_describe_cluster(broker: BrokerProcess) -> None:
    admin = kafka.admin.KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        cluster = admin.describe_cluster()
    finally:
        admin.close()
    assert cluster["controller_id"] == 0
    assert [(b["broker_id"], b["host"], b["port"], b["is_fenced"]) for b in cluster["brokers"]] == [
        (0, broker.host, broker.port, False)
    ]
    assert cluster["cluster_id"]


def test_describe_cluster_versions_on_the_wire(broker: BrokerProcess, wire: Wire) -> None:
    v0 = wire.call(ApiKey.DESCRIBE_CLUSTER, 0, {"include_cluster_authorized_operations": False})
    assert v0["error_code"] == ErrorCode.NONE and v0["error_message"] is None
    assert v0["cluster_authorized_operations"] == OPERATIONS_OMITTED
    assert [(b["broker_id"], b["port"], b["rack"]) for b in v0["brokers"]] == [(0, broker.port, None)]
    asked = wire.call(ApiKey.DESCRIBE_CLUSTER, 0, {"include_cluster_authorized_operations": True})
    assert asked["cluster_authorized_operations"] == sum(1 << code for code in (5, 7, 8, 9, 10, 11, 12))
    brokers = wire.call(ApiKey.DESCRIBE_CLUSTER, 1, {"endpoint_type": 1})
    assert brokers["error_code"] == ErrorCode.NONE and brokers["endpoint_type"] == 1
    controllers = wire.call(ApiKey.DESCRIBE_CLUSTER, 1, {"endpoint_type": 2})
    assert controllers["error_code"] == ErrorCode.MISMATCHED_ENDPOINT_TYPE and controllers["brokers"] == []
    odd = wire.call(ApiKey.DESCRIBE_CLUSTER, 2, {"endpoint_type": 7, "include_fenced_brokers": True})
    assert odd["error_code"] == ErrorCode.UNSUPPORTED_ENDPOINT_TYPE
