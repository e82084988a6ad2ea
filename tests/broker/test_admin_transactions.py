"""DescribeTransactions (65), ListTransactions (66) and DescribeProducers (61) on a real broker.

A real transactional producer (confluent-kafka) opens a transaction; kafka-python's
KafkaAdminClient (``describe_transactions``, ``list_transactions``, ``describe_producers``; the
hanging-transaction tooling of KIP-664) must see it Ongoing with its partitions, and the
partitions must show the producer with the first offset of its open transaction; after the commit
it is CompleteCommit and the partitions have no open transaction. Raw frames of our own codec cover
what the client does not send (unknown state names) or hides (it raises on a per-id error).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import confluent_kafka
import confluent_kafka.admin as ck_admin
import kafka
import kafka.admin
import kafka.errors
import pytest
from kafka.admin import TransactionState

from flowbus.protocol.api import ApiKey
from flowbus.protocol.error_codes import ErrorCode
from tests.support.broker_process import BrokerProcess
from tests.support.wire import Wire

pytestmark = pytest.mark.timeout(120)

READ_TIMEOUT_S = 10.0
TXN_TIMEOUT_MS = 60_000


@pytest.fixture
def wire(broker: BrokerProcess) -> Iterator[Wire]:
    connection = Wire(broker, "admin-txn-test")
    yield connection
    connection.close()


@pytest.fixture
def admin(broker: BrokerProcess) -> Iterator[kafka.admin.KafkaAdminClient]:
    client = kafka.admin.KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    yield client
    client.close()


def _create_topic(broker: BrokerProcess, topic: str, partitions: int) -> None:
    ck = ck_admin.AdminClient({"bootstrap.servers": broker.bootstrap})
    ck.create_topics([ck_admin.NewTopic(topic, partitions, 1)])[topic].result(10)


def _transactional_producer(broker: BrokerProcess, transactional_id: str) -> confluent_kafka.Producer:
    producer = confluent_kafka.Producer({
        "bootstrap.servers": broker.bootstrap,
        "transactional.id": transactional_id,
        "transaction.timeout.ms": TXN_TIMEOUT_MS,
    })
    producer.init_transactions(10)
    return producer


def test_an_open_transaction_is_described_listed_and_seen_on_its_partitions(
    broker: BrokerProcess, admin: kafka.admin.KafkaAdminClient, unique: Callable[[str], str]
) -> None:
    topic, tid = unique("txd"), unique("tid")
    _create_topic(broker, topic, 3)
    producer = _transactional_producer(broker, tid)
    producer.begin_transaction()
    before_ms = int(time.time() * 1000)
    for partition in (0, 1):
        for _ in range(3):
            producer.produce(topic, b"v", partition=partition)
    producer.flush(10)

    described = admin.describe_transactions([tid])[tid]
    assert described.state is TransactionState.ONGOING
    assert described.topic_partitions == {kafka.TopicPartition(topic, 0), kafka.TopicPartition(topic, 1)}
    assert described.transaction_timeout_ms == TXN_TIMEOUT_MS
    assert before_ms - 5_000 <= described.transaction_start_time_ms <= int(time.time() * 1000)
    producer_id, epoch = described.producer_id, described.producer_epoch
    assert producer_id >= 0 and epoch >= 0

    listed = admin.list_transactions(state_filters=["Ongoing"])
    ours = [t for t in next(iter(listed.values())) if t.transactional_id == tid]
    assert [(t.producer_id, t.state) for t in ours] == [(producer_id, TransactionState.ONGOING)]
    assert not [
        t for txns in admin.list_transactions(producer_id_filters=[producer_id + 1_000_000]).values()
        for t in txns if t.transactional_id == tid
    ]
    assert not [
        t for txns in admin.list_transactions(state_filters=["CompleteCommit"]).values()
        for t in txns if t.transactional_id == tid
    ]
    # ListTransactions v1 (KIP-994): running longer than an hour? No; longer than nothing? Yes.
    long_running = admin.list_transactions(duration_filter_ms=3_600_000)
    assert tid not in {t.transactional_id for txns in long_running.values() for t in txns}
    assert tid in {
        t.transactional_id for txns in admin.list_transactions(duration_filter_ms=0).values() for t in txns
    }

    producers = admin.describe_producers([kafka.TopicPartition(topic, p) for p in range(3)])
    (open_0,) = producers[kafka.TopicPartition(topic, 0)].active_producers
    assert (open_0.producer_id, open_0.producer_epoch) == (producer_id, epoch)
    assert open_0.current_transaction_start_offset == 0  # the first batch of the topic
    assert open_0.last_sequence == 2  # three records, sequences 0-2 (one batch or more)
    assert open_0.coordinator_epoch == 0
    assert open_0.last_timestamp >= before_ms - 5_000
    assert producers[kafka.TopicPartition(topic, 2)].active_producers == []

    producer.commit_transaction(10)
    described = admin.describe_transactions([tid])[tid]
    assert described.state is TransactionState.COMPLETE_COMMIT
    assert described.topic_partitions == set()
    assert described.producer_id == producer_id
    producers = admin.describe_producers([kafka.TopicPartition(topic, 0)])
    (closed_0,) = producers[kafka.TopicPartition(topic, 0)].active_producers
    assert closed_0.current_transaction_start_offset == -1
    listed = admin.list_transactions(state_filters=["CompleteCommit"])
    assert tid in {t.transactional_id for txns in listed.values() for t in txns}


def test_offsets_in_a_transaction_name_the_offsets_partition(
    broker: BrokerProcess, admin: kafka.admin.KafkaAdminClient, unique: Callable[[str], str]
) -> None:
    """send_offsets_to_transaction adds the group's ``__consumer_offsets`` partition, as in Kafka."""
    topic, tid, group = unique("txo"), unique("tido"), unique("txg")
    _create_topic(broker, topic, 1)
    producer = _transactional_producer(broker, tid)
    producer.begin_transaction()
    producer.produce(topic, b"v", partition=0)
    producer.flush(10)
    metadata = confluent_kafka.Consumer(
        {"bootstrap.servers": broker.bootstrap, "group.id": group}
    ).consumer_group_metadata()
    producer.send_offsets_to_transaction([confluent_kafka.TopicPartition(topic, 0, 1)], metadata, 10)
    described = admin.describe_transactions([tid])[tid]
    assert kafka.TopicPartition(topic, 0) in described.topic_partitions
    assert {tp.topic for tp in described.topic_partitions} == {topic, "__consumer_offsets"}
    producer.abort_transaction(10)
    assert admin.describe_transactions([tid])[tid].state is TransactionState.COMPLETE_ABORT


def test_an_idempotent_producer_has_no_transaction_or_coordinator(
    broker: BrokerProcess, admin: kafka.admin.KafkaAdminClient, unique: Callable[[str], str]
) -> None:
    topic = unique("idem")
    _create_topic(broker, topic, 1)
    producer = confluent_kafka.Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True})
    for _ in range(5):
        producer.produce(topic, b"v", partition=0)
        producer.flush(10)  # one batch each: five sequences
    (state,) = admin.describe_producers([kafka.TopicPartition(topic, 0)])[
        kafka.TopicPartition(topic, 0)
    ].active_producers
    assert state.last_sequence == 4
    assert state.current_transaction_start_offset == -1
    assert state.coordinator_epoch == -1


def test_unknown_ids_states_and_partitions(
    broker: BrokerProcess, admin: kafka.admin.KafkaAdminClient, wire: Wire, unique: Callable[[str], str]
) -> None:
    missing = f"never-{uuid.uuid4().hex[:8]}"
    with pytest.raises(kafka.errors.TransactionalIdNotFoundError):
        admin.describe_transactions([missing])
    answer = wire.call(ApiKey.DESCRIBE_TRANSACTIONS, 0, {"transactional_ids": [missing, ""]})
    assert [(s["transactional_id"], s["error_code"]) for s in answer["transaction_states"]] == [
        (missing, ErrorCode.TRANSACTIONAL_ID_NOT_FOUND),
        ("", ErrorCode.TRANSACTIONAL_ID_NOT_FOUND),
    ]
    # Names are Kafka's exact spellings: others are reported back and match nothing.
    listed = wire.call(ApiKey.LIST_TRANSACTIONS, 1, {
        "state_filters": ["ongoing", "NoSuchState"], "producer_id_filters": [], "duration_filter": -1,
    })
    assert listed["error_code"] == ErrorCode.NONE
    assert listed["unknown_state_filters"] == ["ongoing", "NoSuchState"]
    assert listed["transaction_states"] == []

    topic = unique("dpu")
    _create_topic(broker, topic, 1)
    answer = wire.call(ApiKey.DESCRIBE_PRODUCERS, 0, {
        "topics": [
            {"name": topic, "partition_indexes": [0, 5]},
            {"name": unique("nope"), "partition_indexes": [0]},
            {"name": "__consumer_offsets", "partition_indexes": [0]},  # broker-written: not tracked
        ],
    })
    errors = [(t["name"] == topic, p["partition_index"], p["error_code"], p["active_producers"])
              for t in answer["topics"] for p in t["partitions"]]
    assert errors == [
        (True, 0, ErrorCode.NONE, []),
        (True, 5, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, []),
        (False, 0, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, []),
        (False, 0, ErrorCode.NONE, []),
    ]
