"""Admin APIs through confluent-kafka's AdminClient and kafka-python's KafkaAdminClient."""

from __future__ import annotations

import time
from collections.abc import Callable

import confluent_kafka
import confluent_kafka.admin as ck_admin
import kafka.admin
import kafka.errors
import pytest

from tests.support.broker_process import BrokerProcess

pytestmark = pytest.mark.timeout(90)


def test_confluent_admin(broker: BrokerProcess, unique: Callable[[str], str]) -> None:
    admin = ck_admin.AdminClient({"bootstrap.servers": broker.bootstrap})
    topic, group = unique("adm"), unique("admg")
    fs = admin.create_topics(
        [ck_admin.NewTopic(topic, 3, 1, config={"retention.ms": "3600000"})]
    )
    fs[topic].result(10)
    dup = admin.create_topics([ck_admin.NewTopic(topic, 1, 1)])
    with pytest.raises(confluent_kafka.KafkaException) as info:
        dup[topic].result(10)
    assert info.value.args[0].code() == confluent_kafka.KafkaError.TOPIC_ALREADY_EXISTS
    dry = admin.create_topics(
        [ck_admin.NewTopic(unique("dry"), 1, 1)], validate_only=True
    )
    for f in dry.values():
        f.result(10)

    resource = ck_admin.ConfigResource(ck_admin.ResourceType.TOPIC, topic)
    configs = admin.describe_configs([resource])[resource].result(10)
    assert configs["retention.ms"].value == "3600000"
    assert configs["cleanup.policy"].value == "delete"
    broker_resource = ck_admin.ConfigResource(ck_admin.ResourceType.BROKER, "0")
    assert "broker.id" in admin.describe_configs([broker_resource])[
        broker_resource
    ].result(10)

    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": group,
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([topic])
    deadline = time.monotonic() + 20
    while not consumer.assignment() and time.monotonic() < deadline:
        consumer.poll(0.1)
    listed = admin.list_consumer_groups().result(10)
    assert group in {g.group_id for g in listed.valid}
    described = admin.describe_consumer_groups([group])[group].result(10)
    assert described.state == confluent_kafka.ConsumerGroupState.STABLE
    assert len(described.members) == 1
    assert len(described.members[0].assignment.topic_partitions) == 3
    consumer.close()

    producer = confluent_kafka.Producer({"bootstrap.servers": broker.bootstrap})
    for _ in range(10):
        producer.produce(topic, b"v", partition=1)
    producer.flush(10)
    tp = confluent_kafka.TopicPartition(topic, 1)
    latest = admin.list_offsets({tp: ck_admin.OffsetSpec.latest()})[tp].result(10)
    assert latest.offset == 10

    admin.delete_topics([topic])[topic].result(10)
    assert topic not in admin.list_topics(timeout=10).topics


def test_kafka_python_admin(
    broker: BrokerProcess, unique: Callable[[str], str]
) -> None:
    admin = kafka.admin.KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    topic = unique("kpadm")
    admin.create_topics(
        [kafka.admin.NewTopic(topic, num_partitions=2, replication_factor=1)]
    )
    assert topic in admin.list_topics()
    [result] = admin.describe_configs(
        [kafka.admin.ConfigResource(kafka.admin.ConfigResourceType.TOPIC, topic)]
    )
    assert result is not None
    groups = admin.list_groups()
    assert groups is not None
    admin.delete_topics([topic])
    admin.close()


def test_list_offsets_max_timestamp_names_the_record_not_its_batch(
    broker: BrokerProcess, unique: Callable[[str], str]
) -> None:
    """ListOffsets MAX_TIMESTAMP (KIP-734, confluent-kafka's OffsetSpec.max_timestamp()) answers
    the offset of the record with the largest timestamp, as Kafka does since KAFKA-16310, not
    the last offset of the batch holding it (found by librdkafka's own suite)."""
    topic = unique("maxts")
    admin = ck_admin.AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([ck_admin.NewTopic(topic, 1, 1)])[topic].result(10)
    now_ms = int(time.time() * 1000)
    producer = confluent_kafka.Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 1000})
    # One batch (linger): the largest timestamp is the second of four records, and it appears twice.
    for delta_ms in (-4000, -1000, -3000, -1000):
        producer.produce(topic, b"v", timestamp=now_ms + delta_ms)
    assert producer.flush(10) == 0
    tp = confluent_kafka.TopicPartition(topic, 0)
    found = admin.list_offsets({tp: ck_admin.OffsetSpec.max_timestamp()})[tp].result(10)
    assert (found.offset, found.timestamp) == (1, now_ms - 1000)
    producer.produce(topic, b"later", timestamp=now_ms - 2000)  # a later batch, an older time
    assert producer.flush(10) == 0
    found = admin.list_offsets({tp: ck_admin.OffsetSpec.max_timestamp()})[tp].result(10)
    assert (found.offset, found.timestamp) == (1, now_ms - 1000)


def test_metadata_carries_each_topics_id_and_a_new_one_after_it_is_recreated(
    broker: BrokerProcess, unique: Callable[[str], str]
) -> None:
    """Metadata v10+ gives each topic the catalog's id (not the all-zero UUID), the same on every
    answer, and a different one once the topic is deleted and created again: how a client
    notices a topic recreated with fewer partitions (found by librdkafka's own suite)."""
    topic = unique("tid")
    admin = ck_admin.AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([ck_admin.NewTopic(topic, 3, 1)])[topic].result(10)

    def topic_id() -> str:
        [described] = admin.describe_topics(
            confluent_kafka.TopicCollection([topic]), request_timeout=10
        ).values()
        return str(described.result(10).topic_id)

    first = topic_id()
    assert first != "AAAAAAAAAAAAAAAAAAAAAA" and first == topic_id()  # base64 of the zero UUID
    admin.delete_topics([topic])[topic].result(10)
    deadline = time.monotonic() + 20
    while True:  # the deletion is done once a creation succeeds
        try:
            admin.create_topics([ck_admin.NewTopic(topic, 1, 1)])[topic].result(10)
            break
        except confluent_kafka.KafkaException:
            assert time.monotonic() < deadline, "the topic could not be created again"
            time.sleep(0.1)
    second = topic_id()
    assert second not in (first, "AAAAAAAAAAAAAAAAAAAAAA")


def test_create_topics_with_a_replica_assignment_naming_this_broker(
    broker: BrokerProcess, unique: Callable[[str], str]
) -> None:
    """A manual replica assignment that puts every partition on this broker (id 0) is accepted
    and gives the topic one partition per entry; one naming another broker is refused with
    INVALID_REPLICA_ASSIGNMENT (found by librdkafka's own suite). Through kafka-python's admin
    client (confluent-kafka's wrapper refuses assignments before sending them)."""
    admin = kafka.admin.KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    topic, elsewhere = unique("assigned"), unique("elsewhere")
    try:
        admin.create_topics([kafka.admin.NewTopic(topic, -1, -1, replica_assignments={0: [0], 1: [0], 2: [0]})])
        [described] = admin.describe_topics([topic])
        assert (described["error_code"], len(described["partitions"])) == (0, 3)
        with pytest.raises(kafka.errors.InvalidReplicationAssignmentError):
            admin.create_topics([kafka.admin.NewTopic(elsewhere, -1, -1, replica_assignments={0: [0], 1: [1]})])
        assert elsewhere not in admin.list_topics()
    finally:
        admin.close()
