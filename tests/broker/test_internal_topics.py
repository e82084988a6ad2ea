"""What a real broker writes to ``__consumer_offsets`` and ``__transaction_state`` is Kafka's format.

Real clients do the work (a kafka-python consumer group, a confluent-kafka transactional
producer); another kafka-python consumer then reads both internal topics like any other topic, as
Burrow and Kafka's console tools do, and every key and value is checked with the independent
reader in ``tests/support/kafka_internal_records.py``. Then the broker restarts: groups, their
generations and protocol types, and committed offsets survive (issue 12, item 3).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import confluent_kafka
import confluent_kafka.admin as ck_admin
import kafka
import pytest
from kafka.structs import OffsetAndMetadata, TopicPartition

from flowbus.protocol.codec import decode_consumer_assignment
from tests.broker.test_static_membership import Tracked, create_topic, poll_until
from tests.support import kafka_internal_records as ref
from tests.support.broker_process import DEFAULT_EXTRA_ARGS, BrokerProcess

pytestmark = pytest.mark.timeout(120)

#: TransactionLogValue statuses (Kafka's TransactionState ids).
ONGOING, PREPARE_COMMIT, COMPLETE_COMMIT = 1, 2, 4


def read_topic(bootstrap: str, topic: str) -> list[tuple[bytes, bytes | None]]:
    """Every (key, value) of ``topic``, oldest first per partition, read by a plain consumer."""
    consumer = kafka.KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
        auto_offset_reset="earliest", consumer_timeout_ms=1000,
    )
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        assert partitions, f"no partitions for {topic}"
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        ends = consumer.end_offsets(partitions)
        records: list[tuple[bytes, bytes | None]] = []
        deadline = time.monotonic() + 30
        while any(consumer.position(tp) < ends[tp] for tp in partitions):
            assert time.monotonic() < deadline, "the internal topic was not read to its end"
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend((r.key, r.value) for r in batch)
        return records
    finally:
        consumer.close()


def offsets_topic(bootstrap: str) -> tuple[dict[tuple[str, str, int], list[dict[str, Any]]], dict[str, list[dict[str, Any] | None]]]:
    """``__consumer_offsets`` decoded: offset values by (group, topic, partition) and group
    values (None for tombstones) by group; every record must be Kafka's current versions."""
    offsets: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    groups: dict[str, list[dict[str, Any] | None]] = {}
    for key, value in read_topic(bootstrap, "__consumer_offsets"):
        kind, key_version, fields = ref.read_key(key)
        if kind == "offset":
            assert key_version == 1
            if value is not None:
                value_version, committed = ref.read_offset_value(value)
                assert value_version == 3
                offsets.setdefault((fields["group"], fields["topic"], fields["partition"]), []).append(committed)
        else:
            assert key_version == 2
            if value is None:
                groups.setdefault(fields["group"], []).append(None)
            else:
                value_version, group = ref.read_group_value(value)
                assert value_version == 3
                groups.setdefault(fields["group"], []).append(group)
    return offsets, groups


def consume_until_assigned(consumer: kafka.KafkaConsumer) -> None:
    deadline = time.monotonic() + 30
    while not consumer.assignment():
        assert time.monotonic() < deadline, "the consumer never got an assignment"
        consumer.poll(timeout_ms=200)


def test_internal_topics_hold_kafkas_records_and_survive_a_restart(
    fresh_broker: BrokerProcess, unique: Callable[[str], str]
) -> None:
    broker = fresh_broker
    topic, group, txn_group, tid = unique("it"), unique("it-g"), unique("it-txg"), unique("it-tid")
    admin = ck_admin.AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([ck_admin.NewTopic(topic, 2, 1)])[topic].result(10)
    producer = confluent_kafka.Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(10):
        producer.produce(topic, b"v%d" % i, partition=i % 2)
    producer.flush(10)

    # A consumer group commits offsets (with metadata on one partition).
    consumer = kafka.KafkaConsumer(
        bootstrap_servers=broker.bootstrap, group_id=group, client_id="it-client",
        enable_auto_commit=False, auto_offset_reset="earliest",
    )
    consumer.subscribe([topic])
    consume_until_assigned(consumer)
    consumer.commit({
        TopicPartition(topic, 0): OffsetAndMetadata(3, "meta", -1),
        TopicPartition(topic, 1): OffsetAndMetadata(1, "", -1),
    })

    # A transaction commits offsets for another group.
    txn = confluent_kafka.Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": tid})
    txn.init_transactions(10)
    txn.begin_transaction()
    txn.produce(topic, b"in-txn", partition=0)
    txn_consumer = confluent_kafka.Consumer({"bootstrap.servers": broker.bootstrap, "group.id": txn_group})
    txn.send_offsets_to_transaction(
        [confluent_kafka.TopicPartition(topic, 1, 4)], txn_consumer.consumer_group_metadata(), 10
    )
    txn.commit_transaction(10)
    txn_consumer.close()

    offsets, groups = offsets_topic(broker.bootstrap)
    assert offsets[(group, topic, 0)][-1]["offset"] == 3 and offsets[(group, topic, 0)][-1]["metadata"] == "meta"
    assert offsets[(group, topic, 1)][-1]["offset"] == 1
    assert offsets[(txn_group, topic, 1)][-1]["offset"] == 4
    stable = groups[group][-1]
    assert stable is not None
    assert (stable["protocol_type"], stable["protocol"]) == ("consumer", "range")
    [member] = stable["members"]
    assert (member["client_id"], member["group_instance_id"], stable["leader"]) == ("it-client", None, member["member_id"])
    _, assignment = decode_consumer_assignment(member["assignment"])
    assert {(a["topic"], p) for a in assignment["assigned_partitions"] for p in a["partitions"]} == {(topic, 0), (topic, 1)}

    states = []
    for key, value in read_topic(broker.bootstrap, "__transaction_state"):
        _, transactional_id = ref.read_txn_key(key)
        if transactional_id == tid and value is not None:
            states.append(ref.read_txn_value(value)[1])
    assert states[0]["transaction_partitions"] is None  # Empty, after InitProducerId
    statuses = [s["transaction_status"] for s in states]
    assert statuses[-3:] == [ONGOING, PREPARE_COMMIT, COMPLETE_COMMIT]
    ongoing = states[-3]
    assert dict(ongoing["transaction_partitions"])[topic] == [0]
    assert "__consumer_offsets" in dict(ongoing["transaction_partitions"])
    assert states[-1]["transaction_partitions"] == []
    assert ongoing["transaction_start_timestamp_ms"] <= states[-1]["transaction_last_update_timestamp_ms"]

    # The member leaves: the group is Empty, one generation on, and so recorded.
    consumer.close()
    _, groups = offsets_topic(broker.bootstrap)
    empty, recorded_before = groups[group][-1], len(groups[group])
    assert empty is not None and empty["members"] == [] and empty["generation"] == stable["generation"] + 1

    broker.restart()
    listed = _list_groups(admin)
    assert (listed[group].is_simple_consumer_group, listed[group].state) == (False, confluent_kafka.ConsumerGroupState.EMPTY)
    # (kafka-python's admin: confluent-kafka 2.16 reads a non-empty metadata past its end.)
    kp_admin = kafka.KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    committed = kp_admin.list_group_offsets(group)[group]
    kp_admin.close()
    assert {(tp.partition, om.offset, om.metadata) for tp, om in committed.items()} == {(0, 3, "meta"), (1, 1, "")}

    # The next member continues the generation count instead of starting again at 1.
    again = kafka.KafkaConsumer(
        bootstrap_servers=broker.bootstrap, group_id=group, enable_auto_commit=False,
    )
    again.subscribe([topic])
    consume_until_assigned(again)
    again.close()
    _, groups = offsets_topic(broker.bootstrap)
    later = [g["generation"] for g in groups[group][recorded_before:] if g is not None]
    assert later and later[0] == empty["generation"] + 1 and later == sorted(later)


def _list_groups(admin: ck_admin.AdminClient) -> dict[str, Any]:
    """Group id → listing, waiting out COORDINATOR_LOAD_IN_PROGRESS after a restart."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return {g.group_id: g for g in admin.list_consumer_groups().result(10).valid}
        except confluent_kafka.KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_static_members_carry_on_across_a_broker_restart(tmp_path: Any, unique: Callable[[str], str]) -> None:
    """The restarted broker knows the group's members: their heartbeats are accepted (no
    rebalance, no callbacks), and a static member restarted afterwards gets its partitions back.
    Without the group's metadata in ``__consumer_offsets`` every member would be unknown after
    the restart and the group would rebalance."""
    topic, group = unique("it-static"), unique("it-sg")
    extra = (*DEFAULT_EXTRA_ARGS, "--group-min-session-timeout-ms", "1000")
    made: list[Tracked] = []
    with BrokerProcess(tmp_path / "data", extra_args=extra) as broker:
        try:
            create_topic(broker.bootstrap, topic, 4)
            a = Tracked(broker.bootstrap, group, "inst-a", topic, 15_000)
            b = Tracked(broker.bootstrap, group, "inst-b", topic, 15_000)
            made += [a, b]
            poll_until([a, b], lambda: len(a.partitions()) == len(b.partitions()) == 2, 40, "two partitions each")
            a_before, b_before, b_partitions = a.callbacks(), b.callbacks(), b.partitions()

            broker.restart()
            settle_until = time.monotonic() + 3  # several heartbeats (300 ms apart) after the restart
            poll_until([a, b], lambda: time.monotonic() > settle_until, 20, "heartbeats after the restart")
            assert (a.callbacks(), b.callbacks()) == (a_before, b_before), broker.log_tail()

            b.close()  # a static member sends no LeaveGroup
            b_again = Tracked(broker.bootstrap, group, "inst-b", topic, 15_000)
            made.append(b_again)
            poll_until([a, b_again], lambda: bool(b_again.partitions()), 30, "the restarted member's partitions")
            assert b_again.partitions() == b_partitions and b_again.revokes == []
            assert a.callbacks() == a_before, broker.log_tail()
        finally:
            for consumer in made:
                consumer.close()
