"""CreatePartitions, AlterConfigs, IncrementalAlterConfigs, DeleteRecords and DescribeLogDirs
against a real ``flowbus broker`` process, through confluent-kafka's AdminClient, kafka-python's
KafkaAdminClient and (where no client sends a version) the project's own codec over a socket.

Each test checks behaviour, not just "no error": new partitions carry records, a changed config
changes what the log does without a restart, and everything survives a restart.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiokafka.admin
import confluent_kafka
import confluent_kafka.admin as ck_admin
import kafka.admin
import kafka.errors
import pytest
from aiokafka.admin.config_resource import ConfigResource as AioConfigResource
from aiokafka.admin.config_resource import ConfigResourceType as AioConfigResourceType
from aiokafka.structs import TopicPartition as AioTopicPartition

from flowbus.protocol.api import ApiKey
from flowbus.protocol.codec import decode_response, encode_request
from flowbus.protocol.error_codes import ErrorCode
from tests.support.broker_process import BrokerProcess

pytestmark = pytest.mark.timeout(120)

TOPIC = ck_admin.ResourceType.TOPIC
SET = ck_admin.AlterConfigOpType.SET
DELETE = ck_admin.AlterConfigOpType.DELETE
APPEND = ck_admin.AlterConfigOpType.APPEND
SUBTRACT = ck_admin.AlterConfigOpType.SUBTRACT


# -- helpers -----------------------------------------------------------------------------------


def call(broker: BrokerProcess, api_key: int, version: int, body: dict[str, Any]) -> dict[str, Any]:
    """One request over a fresh connection with the project's codec; the decoded response."""
    with socket.create_connection((broker.host, broker.port), timeout=10) as sock:
        sock.sendall(encode_request(api_key, version, 7, "flowbus-test", body))
        size = struct.unpack(">i", _read_exactly(sock, 4))[0]
        correlation_id, response = decode_response(api_key, version, _read_exactly(sock, size))
    assert correlation_id == 7
    return response


def _read_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:  # bounded: each recv returns at least one byte or raises
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        data += chunk
    return data


_ADMINS: dict[str, ck_admin.AdminClient] = {}


@pytest.fixture(autouse=True)
def _drop_admin_clients() -> Iterator[None]:
    """Each test's AdminClients go with it, before its broker stops (else they keep reconnecting)."""
    yield
    _ADMINS.clear()


def admin_for(broker: BrokerProcess) -> ck_admin.AdminClient:
    """One AdminClient per broker address, kept alive: a collected client fails its futures."""
    admin = _ADMINS.get(broker.bootstrap)
    if admin is None:
        admin = _ADMINS[broker.bootstrap] = ck_admin.AdminClient({"bootstrap.servers": broker.bootstrap})
    return admin


def create_topic(broker: BrokerProcess, name: str, partitions: int = 1, **configs: str) -> None:
    futures = admin_for(broker).create_topics([ck_admin.NewTopic(name, partitions, 1, config=configs)])
    futures[name].result(10)


def produce(broker: BrokerProcess, topic: str, count: int, *, partition: int = 0, size: int = 100) -> list[Any]:
    """Produce ``count`` records of ``size`` bytes one batch each; returns the delivery errors."""
    producer = confluent_kafka.Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 0})
    errors: list[Any] = []

    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(err)

    for i in range(count):
        producer.produce(topic, b"x" * size, key=str(i).encode(), partition=partition, on_delivery=delivered)
        producer.flush(10)  # one batch per record: many small batches, many segments
    assert producer.flush(10) == 0
    return errors


def offsets(broker: BrokerProcess, topic: str, partition: int = 0) -> tuple[int, int]:
    """(earliest, latest) from ListOffsets."""
    admin = admin_for(broker)
    tp = confluent_kafka.TopicPartition(topic, partition)
    earliest = admin.list_offsets({tp: ck_admin.OffsetSpec.earliest()})[tp].result(10).offset
    latest = admin.list_offsets({tp: ck_admin.OffsetSpec.latest()})[tp].result(10).offset
    return earliest, latest


def describe(broker: BrokerProcess, topic: str) -> dict[str, ck_admin.ConfigEntry]:
    resource = ck_admin.ConfigResource(TOPIC, topic)
    return admin_for(broker).describe_configs([resource])[resource].result(10)


def incremental(broker: BrokerProcess, topic: str, *entries: ck_admin.ConfigEntry, validate_only: bool = False) -> None:
    resource = ck_admin.ConfigResource(TOPIC, topic, incremental_configs=list(entries))
    admin_for(broker).incremental_alter_configs([resource], validate_only=validate_only)[resource].result(10)


def entry(name: str, value: str | None, op: ck_admin.AlterConfigOpType) -> ck_admin.ConfigEntry:
    return ck_admin.ConfigEntry(name, value, incremental_operation=op)


def kafka_error(future: Any) -> int:
    """The Kafka error code a failed admin future carries."""
    with pytest.raises(confluent_kafka.KafkaException) as info:
        future.result(10)
    return int(info.value.args[0].code())


def segment_files(broker: BrokerProcess, topic: str, partition: int = 0) -> list[Path]:
    return sorted((broker.data_dir / f"{topic}-{partition}").glob("*.log"))


def wait_for(condition: Callable[[], bool], timeout_s: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # bounded by the deadline
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def consume(broker: BrokerProcess, topic: str, partition: int, offset: int, count: int) -> list[bytes]:
    """Read ``count`` record keys from one partition, starting at ``offset``."""
    consumer = confluent_kafka.Consumer(
        {"bootstrap.servers": broker.bootstrap, "group.id": f"reader-{topic}", "enable.auto.commit": False}
    )
    try:
        consumer.assign([confluent_kafka.TopicPartition(topic, partition, offset)])
        keys: list[bytes] = []
        deadline = time.monotonic() + 15
        while len(keys) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                keys.append(msg.key())
        return keys
    finally:
        consumer.close()


# -- CreatePartitions --------------------------------------------------------------------------


def test_create_partitions_with_confluent(broker: BrokerProcess, unique: Callable[[str], str]) -> None:
    admin = admin_for(broker)
    topic = unique("grow")
    create_topic(broker, topic, 2)

    dry = admin.create_partitions([ck_admin.NewPartitions(topic, 4)], validate_only=True)
    dry[topic].result(10)
    assert len(admin.list_topics(topic, timeout=10).topics[topic].partitions) == 2

    admin.create_partitions([ck_admin.NewPartitions(topic, 4)])[topic].result(10)
    # Metadata shows them at once, and they take records and serve them.
    assert sorted(admin.list_topics(topic, timeout=10).topics[topic].partitions) == [0, 1, 2, 3]
    assert produce(broker, topic, 3, partition=3) == []
    assert consume(broker, topic, 3, 0, 3) == [b"0", b"1", b"2"]
    assert (broker.data_dir / f"{topic}-3").is_dir()

    # A manual assignment naming this broker alone is honoured; anything else is refused.
    admin.create_partitions([ck_admin.NewPartitions(topic, 5, [[0]])])[topic].result(10)
    assert len(admin.list_topics(topic, timeout=10).topics[topic].partitions) == 5
    wrong = admin.create_partitions([ck_admin.NewPartitions(topic, 6, [[1]])])
    assert kafka_error(wrong[topic]) == ErrorCode.INVALID_REPLICA_ASSIGNMENT
    short = admin.create_partitions([ck_admin.NewPartitions(topic, 7, [[0]])])
    assert kafka_error(short[topic]) == ErrorCode.INVALID_REPLICA_ASSIGNMENT

    for count in (5, 3):  # the count must grow
        same = admin.create_partitions([ck_admin.NewPartitions(topic, count)])
        assert kafka_error(same[topic]) == ErrorCode.INVALID_PARTITIONS
    missing = admin.create_partitions([ck_admin.NewPartitions(unique("nope"), 3)])
    assert kafka_error(next(iter(missing.values()))) == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    internal = admin.create_partitions([ck_admin.NewPartitions("__consumer_offsets", 9)])
    assert kafka_error(internal["__consumer_offsets"]) == ErrorCode.INVALID_TOPIC_EXCEPTION
    assert len(admin.list_topics(topic, timeout=10).topics[topic].partitions) == 5


def test_a_subscribed_consumer_gets_the_new_partitions(broker: BrokerProcess, unique: Callable[[str], str]) -> None:
    topic, group = unique("grow-sub"), unique("grow-grp")
    create_topic(broker, topic, 1)
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "topic.metadata.refresh.interval.ms": 500,
        }
    )
    try:
        consumer.subscribe([topic])
        wait_for(lambda: consumer.poll(0.1) is None and len(consumer.assignment()) == 1, what="first assignment")
        admin_for(broker).create_partitions([ck_admin.NewPartitions(topic, 3)])[topic].result(10)
        assert produce(broker, topic, 1, partition=2) == []
        got: list[Any] = []

        def received() -> bool:
            msg = consumer.poll(0.1)
            if msg is not None and msg.error() is None:
                got.append((msg.partition(), msg.key()))
            return bool(got)

        wait_for(received, 30, "a record from the new partition")
        assert got == [(2, b"0")]
        assert len(consumer.assignment()) == 3
    finally:
        consumer.close()


def test_create_partitions_with_kafka_python(broker: BrokerProcess, unique: Callable[[str], str]) -> None:
    admin = kafka.admin.KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        topic = unique("kp-grow")
        create_topic(broker, topic, 1)
        admin.create_partitions({topic: 3})
        admin.create_partitions({topic: {"count": 4, "assignments": [[0]]}})
        assert len(admin_for(broker).list_topics(topic, timeout=10).topics[topic].partitions) == 4
        with pytest.raises(kafka.errors.InvalidPartitionsError):
            admin.create_partitions({topic: 2})
        with pytest.raises(kafka.errors.InvalidReplicationAssignmentError):
            admin.create_partitions({topic: {"count": 5, "assignments": [[0, 1]]}})
    finally:
        admin.close()


def test_create_partitions_respects_the_descriptor_budget(tmp_path: Path, unique: Callable[[str], str]) -> None:
    # A budget with room for the internal topics and a few partitions, not for a hundred more.
    with BrokerProcess(tmp_path / "data", extra_args=["--group-initial-rebalance-delay-ms", "0",
                                                      "--log-fd-budget", "150"]) as broker:
        topic = unique("budget")
        create_topic(broker, topic, 1)
        admin = admin_for(broker)
        too_many = admin.create_partitions([ck_admin.NewPartitions(topic, 200)])
        assert kafka_error(too_many[topic]) == ErrorCode.POLICY_VIOLATION
        dry = admin.create_partitions([ck_admin.NewPartitions(topic, 200)], validate_only=True)
        assert kafka_error(dry[topic]) == ErrorCode.POLICY_VIOLATION
        assert len(admin.list_topics(topic, timeout=10).topics[topic].partitions) == 1
        assert not (broker.data_dir / f"{topic}-1").exists()  # nothing reached the disk
        assert "adding 199 partitions to topic" in broker.log_text()


# -- AlterConfigs and IncrementalAlterConfigs ---------------------------------------------------


def test_incremental_alter_configs_with_confluent(broker: BrokerProcess, unique: Callable[[str], str]) -> None:
    topic = unique("incr")
    create_topic(broker, topic, 1, **{"retention.ms": "3600000"})

    incremental(broker, topic, entry("retention.bytes", "123456789", SET), entry("retention.ms", None, DELETE))
    configs = describe(broker, topic)
    assert configs["retention.bytes"].value == "123456789"
    assert configs["retention.bytes"].source == ck_admin.ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert configs["retention.ms"].value == "604800000"  # deleted: back to the default
    assert configs["retention.ms"].source == ck_admin.ConfigSource.DEFAULT_CONFIG.value

    incremental(broker, topic, entry("cleanup.policy", "compact", APPEND))
    assert describe(broker, topic)["cleanup.policy"].value == "compact,delete"
    incremental(broker, topic, entry("cleanup.policy", "delete", SUBTRACT))
    assert describe(broker, topic)["cleanup.policy"].value == "compact"
    incremental(broker, topic, entry("cleanup.policy", "delete", SET), validate_only=True)
    assert describe(broker, topic)["cleanup.policy"].value == "compact"

    admin = admin_for(broker)
    bad_cases = [
        (entry("no.such.config", "1", SET), ErrorCode.INVALID_CONFIG),
        (entry("retention.ms", "soon", SET), ErrorCode.INVALID_CONFIG),
        (entry("retention.ms", "5", APPEND), ErrorCode.INVALID_CONFIG),  # not a list config
        (entry("cleanup.policy", "compact", SUBTRACT), ErrorCode.INVALID_CONFIG),  # would leave it empty
        (entry("cleanup.policy", "shred", APPEND), ErrorCode.INVALID_CONFIG),
    ]
    for bad, code in bad_cases:
        resource = ck_admin.ConfigResource(TOPIC, topic, incremental_configs=[bad])
        assert kafka_error(admin.incremental_alter_configs([resource])[resource]) == code, bad
    # A resource is all or nothing: the good entry next to a bad one is not applied either.
    mixed = ck_admin.ConfigResource(
        TOPIC, topic, incremental_configs=[entry("retention.bytes", "1", SET), entry("nope", "1", SET)]
    )
    assert kafka_error(admin.incremental_alter_configs([mixed])[mixed]) == ErrorCode.INVALID_CONFIG
    assert describe(broker, topic)["retention.bytes"].value == "123456789"

    missing = ck_admin.ConfigResource(TOPIC, unique("nope"), incremental_configs=[entry("retention.ms", "1", SET)])
    assert kafka_error(admin.incremental_alter_configs([missing])[missing]) == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    brokers = ck_admin.ConfigResource(
        ck_admin.ResourceType.BROKER, "0", incremental_configs=[entry("log.retention.ms", "1", SET)]
    )
    assert kafka_error(admin.incremental_alter_configs([brokers])[brokers]) == ErrorCode.INVALID_REQUEST


def test_alter_configs_replaces_every_override(broker: BrokerProcess, unique: Callable[[str], str]) -> None:
    admin = admin_for(broker)
    topic = unique("alter")
    create_topic(broker, topic, 1, **{"max.message.bytes": "500000"})
    resource = ck_admin.ConfigResource(TOPIC, topic, set_config={"retention.ms": "7200000"})
    admin.alter_configs([resource])[resource].result(10)
    configs = describe(broker, topic)
    assert configs["retention.ms"].value == "7200000"
    assert configs["retention.ms"].source == ck_admin.ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    # AlterConfigs is not incremental: a key left out goes back to its default.
    assert configs["max.message.bytes"].value == "1048588"
    assert configs["max.message.bytes"].source == ck_admin.ConfigSource.DEFAULT_CONFIG.value

    dry = ck_admin.ConfigResource(TOPIC, topic, set_config={"retention.ms": "1000"})
    admin.alter_configs([dry], validate_only=True)[dry].result(10)
    assert describe(broker, topic)["retention.ms"].value == "7200000"
    for bad in ({"retention.ms": "-7"}, {"retention.mss": "1"}):
        resource = ck_admin.ConfigResource(TOPIC, topic, set_config=bad)
        assert kafka_error(admin.alter_configs([resource])[resource]) == ErrorCode.INVALID_CONFIG
    assert describe(broker, topic)["retention.ms"].value == "7200000"


def test_config_wire_answers_carry_messages(broker: BrokerProcess, unique: Callable[[str], str]) -> None:
    """AlterConfigs v0 and IncrementalAlterConfigs v0 (no client here sends them): each
    resource gets its own code and a message saying what is wrong."""
    topic = unique("wire")
    create_topic(broker, topic, 1)
    answer = call(broker, ApiKey.ALTER_CONFIGS, 0, {
        "resources": [
            {"resource_type": 2, "resource_name": topic, "configs": [{"name": "segment.bytes", "value": "4096"}]},
            {"resource_type": 2, "resource_name": topic + "x", "configs": []},
            {"resource_type": 4, "resource_name": "0", "configs": [{"name": "num.partitions", "value": "3"}]},
            {"resource_type": 99, "resource_name": "?", "configs": []},
        ],
        "validate_only": False,
    })
    codes = [(r["error_code"], r["error_message"]) for r in answer["responses"]]
    assert codes[0] == (0, None)
    assert codes[1][0] == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    assert codes[2][0] == ErrorCode.INVALID_REQUEST and "dynamic broker configs are not supported" in codes[2][1]
    assert codes[3][0] == ErrorCode.INVALID_REQUEST
    assert describe(broker, topic)["segment.bytes"].value == "4096"

    answer = call(broker, ApiKey.INCREMENTAL_ALTER_CONFIGS, 0, {
        "resources": [
            {"resource_type": 2, "resource_name": topic, "configs": [
                {"name": "retention.ms", "config_operation": 0, "value": None},
            ]},
            {"resource_type": 2, "resource_name": topic, "configs": []},
        ],
        "validate_only": False,
    })
    # The same resource twice: both refused, whatever each asks.
    assert [r["error_code"] for r in answer["responses"]] == [ErrorCode.INVALID_REQUEST] * 2
    answer = call(broker, ApiKey.INCREMENTAL_ALTER_CONFIGS, 0, {
        "resources": [{"resource_type": 2, "resource_name": topic, "configs": [
            {"name": "retention.ms", "config_operation": 0, "value": None},
        ]}],
        "validate_only": False,
    })
    assert answer["responses"][0]["error_code"] == ErrorCode.INVALID_REQUEST
    assert "null value" in answer["responses"][0]["error_message"]
    answer = call(broker, ApiKey.INCREMENTAL_ALTER_CONFIGS, 0, {
        "resources": [{"resource_type": 2, "resource_name": topic, "configs": [
            {"name": "retention.ms", "config_operation": 9, "value": "1"},
        ]}],
        "validate_only": False,
    })
    assert answer["responses"][0]["error_code"] == ErrorCode.INVALID_REQUEST


def test_alter_configs_with_kafka_python(broker: BrokerProcess, unique: Callable[[str], str]) -> None:
    admin = kafka.admin.KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        topic = unique("kp-alter")
        create_topic(broker, topic, 1)
        resource = kafka.admin.ConfigResource(kafka.admin.ConfigResourceType.TOPIC, topic)
        # IncrementalAlterConfigs (the default with a broker that has it), then AlterConfigs.
        resource.configs = {"retention.ms": "1800000", "cleanup.policy": (kafka.admin.AlterConfigOp.APPEND, "compact")}
        assert admin.alter_configs([resource]) == {"topic": {topic: "OK"}}
        configs = describe(broker, topic)
        assert (configs["retention.ms"].value, configs["cleanup.policy"].value) == ("1800000", "compact,delete")
        resource.configs = {"segment.bytes": "2048"}
        assert admin.alter_configs([resource], incremental=False) == {"topic": {topic: "OK"}}
        configs = describe(broker, topic)
        # kafka-python fills in the other overrides before an AlterConfigs: they stay.
        assert (configs["segment.bytes"].value, configs["retention.ms"].value) == ("2048", "1800000")
        resource.configs = {"retention.ms": "never"}
        result = admin.alter_configs([resource], raise_on_unknown=False)
        assert "InvalidConfigurationError" in result["topic"][topic]
    finally:
        admin.close()


def test_config_changes_take_effect_without_a_restart(broker: BrokerProcess, unique: Callable[[str], str]) -> None:
    topic = unique("live")
    create_topic(broker, topic, 1)

    # max.message.bytes lowered: a batch over it is refused; raised again, it is taken.
    incremental(broker, topic, entry("max.message.bytes", "1000", SET))
    errors = produce(broker, topic, 1, size=5000)
    assert [e.code() for e in errors] == [confluent_kafka.KafkaError.MSG_SIZE_TOO_LARGE]
    incremental(broker, topic, entry("max.message.bytes", None, DELETE))
    assert produce(broker, topic, 1, size=5000) == []

    # segment.bytes lowered: the log rolls small segments from now on.
    incremental(broker, topic, entry("segment.bytes", "1024", SET))
    assert produce(broker, topic, 20, size=200) == []
    assert len(segment_files(broker, topic)) >= 5

    # retention.ms lowered: old segments go at the next ticks, without a restart.
    earliest_before, latest = offsets(broker, topic)
    assert earliest_before == 0
    incremental(broker, topic, entry("retention.ms", "1", SET))
    wait_for(lambda: offsets(broker, topic)[0] == latest, 20, "time retention to delete every segment")
    assert offsets(broker, topic) == (latest, latest)

    # cleanup.policy compact alone: DeleteRecords is refused, as the log now compacts only.
    incremental(broker, topic, entry("cleanup.policy", "compact", SET))
    tp = confluent_kafka.TopicPartition(topic, 0, latest)
    assert kafka_error(admin_for(broker).delete_records([tp])[tp]) == ErrorCode.POLICY_VIOLATION


def test_retention_bytes_applies_at_once(broker: BrokerProcess, unique: Callable[[str], str]) -> None:
    topic = unique("bytes")
    create_topic(broker, topic, 1, **{"segment.bytes": "1024"})
    assert produce(broker, topic, 30, size=200) == []
    before = sum(p.stat().st_size for p in segment_files(broker, topic))
    assert before > 4000
    incremental(broker, topic, entry("retention.bytes", "2048", SET))
    wait_for(lambda: offsets(broker, topic)[0] > 0, 20, "size retention")
    wait_for(lambda: sum(p.stat().st_size for p in segment_files(broker, topic)) <= 2048 + 1024, 20, "files deleted")


# -- DeleteRecords -----------------------------------------------------------------------------


def test_delete_records_with_confluent(broker: BrokerProcess, unique: Callable[[str], str]) -> None:
    admin = admin_for(broker)
    topic = unique("delrec")
    create_topic(broker, topic, 2, **{"segment.bytes": "1024"})
    assert produce(broker, topic, 40, size=100) == []
    files_before = segment_files(broker, topic)
    assert len(files_before) >= 5

    tp = confluent_kafka.TopicPartition(topic, 0, 25)
    deleted = admin.delete_records([tp])[tp].result(10)
    assert deleted.low_watermark == 25
    assert offsets(broker, topic) == (25, 40)
    # Whole segments below 25 are gone from disk at once; the one holding 25 stays.
    files_after = segment_files(broker, topic)
    assert len(files_after) < len(files_before)
    assert all(int(p.stem) <= 25 for p in files_after[:1])
    assert int(files_after[0].stem) > 0
    # Consumers: below the start is out of range, from it on records are there.
    fetch = _fetch(broker, topic, 10)
    assert fetch["error_code"] == ErrorCode.OFFSET_OUT_OF_RANGE and fetch["log_start_offset"] == 25
    assert consume(broker, topic, 0, 25, 15) == [str(i).encode() for i in range(25, 40)]

    lower = confluent_kafka.TopicPartition(topic, 0, 5)  # below the start: nothing changes
    assert admin.delete_records([lower])[lower].result(10).low_watermark == 25
    beyond = confluent_kafka.TopicPartition(topic, 0, 41)
    assert kafka_error(admin.delete_records([beyond])[beyond]) == ErrorCode.OFFSET_OUT_OF_RANGE
    other = confluent_kafka.TopicPartition(topic, 1, 0)
    assert admin.delete_records([other])[other].result(10).low_watermark == 0

    # -1: up to the high watermark; every record goes, and so does every old segment.
    to_end = confluent_kafka.TopicPartition(topic, 0, confluent_kafka.OFFSET_END)
    assert admin.delete_records([to_end])[to_end].result(10).low_watermark == 40
    assert offsets(broker, topic) == (40, 40)
    assert [p.name for p in segment_files(broker, topic)] == [f"{40:020d}.log"]
    assert produce(broker, topic, 1) == []  # the log goes on after it
    assert offsets(broker, topic) == (40, 41)

    internal = confluent_kafka.TopicPartition("__consumer_offsets", 0, 0)
    assert kafka_error(admin.delete_records([internal])[internal]) == ErrorCode.INVALID_TOPIC_EXCEPTION


def _fetch(broker: BrokerProcess, topic: str, offset: int) -> dict[str, Any]:
    answer = call(broker, ApiKey.FETCH, 11, {
        "replica_id": -1, "max_wait_ms": 0, "min_bytes": 0, "max_bytes": 1 << 20, "isolation_level": 0,
        "session_id": 0, "session_epoch": -1,
        "topics": [{"topic": topic, "partitions": [{
            "partition": 0, "current_leader_epoch": -1, "fetch_offset": offset, "log_start_offset": -1,
            "partition_max_bytes": 1 << 20,
        }]}],
        "forgotten_topics_data": [], "rack_id": "",
    })
    return answer["responses"][0]["partitions"][0]


def test_delete_records_wire_versions(broker: BrokerProcess, unique: Callable[[str], str]) -> None:
    topic = unique("delwire")
    create_topic(broker, topic, 1)
    assert produce(broker, topic, 5) == []
    for version, offset in ((0, 1), (1, 2), (2, 3)):
        answer = call(broker, ApiKey.DELETE_RECORDS, version, {
            "topics": [
                {"name": topic, "partitions": [{"partition_index": 0, "offset": offset},
                                               {"partition_index": 7, "offset": 0}]},
                {"name": topic + "-missing", "partitions": [{"partition_index": 0, "offset": 0}]},
            ],
            "timeout_ms": 1000,
        })
        rows = [(t["name"], p["partition_index"], p["error_code"], p["low_watermark"])
                for t in answer["topics"] for p in t["partitions"]]
        assert rows == [
            (topic, 0, 0, offset),
            (topic, 7, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, -1),
            (topic + "-missing", 0, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, -1),
        ]
    bad = call(broker, ApiKey.DELETE_RECORDS, 2, {
        "topics": [{"name": topic, "partitions": [{"partition_index": 0, "offset": -5}]}], "timeout_ms": 1000,
    })
    assert bad["topics"][0]["partitions"][0]["error_code"] == ErrorCode.OFFSET_OUT_OF_RANGE


def test_delete_records_with_kafka_python(broker: BrokerProcess, unique: Callable[[str], str]) -> None:
    admin = kafka.admin.KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        topic = unique("kp-delrec")
        create_topic(broker, topic, 1)
        assert produce(broker, topic, 10) == []
        tp = kafka.TopicPartition(topic, 0)
        result = admin.delete_records({tp: 6})
        assert result[tp]["low_watermark"] == 6
        assert offsets(broker, topic) == (6, 10)
        with pytest.raises(kafka.errors.OffsetOutOfRangeError):
            admin.delete_records({tp: 11})
    finally:
        admin.close()


# -- persistence ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
def test_changes_survive_a_restart(fresh_broker: BrokerProcess, unique: Callable[[str], str], kill: bool) -> None:
    broker = fresh_broker
    topic = unique("persist")
    create_topic(broker, topic, 1, **{"segment.bytes": "1024"})
    assert produce(broker, topic, 30, size=100) == []
    admin = admin_for(broker)
    admin.create_partitions([ck_admin.NewPartitions(topic, 3)])[topic].result(10)
    incremental(broker, topic, entry("max.message.bytes", "2000", SET), entry("retention.bytes", "99999999", SET),
                entry("segment.bytes", None, DELETE))
    tp = confluent_kafka.TopicPartition(topic, 0, 17)
    assert admin.delete_records([tp])[tp].result(10).low_watermark == 17

    broker.restart(kill=kill)

    assert len(admin_for(broker).list_topics(topic, timeout=10).topics[topic].partitions) == 3
    configs = describe(broker, topic)
    assert configs["max.message.bytes"].value == "2000"
    assert configs["max.message.bytes"].source == ck_admin.ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert configs["retention.bytes"].value == "99999999"
    assert configs["segment.bytes"].source == ck_admin.ConfigSource.DEFAULT_CONFIG.value
    assert offsets(broker, topic) == (17, 30)
    assert _fetch(broker, topic, 16)["error_code"] == ErrorCode.OFFSET_OUT_OF_RANGE
    errors = produce(broker, topic, 1, size=5000)  # the lowered limit still holds
    assert [e.code() for e in errors] == [confluent_kafka.KafkaError.MSG_SIZE_TOO_LARGE]
    assert produce(broker, topic, 1, partition=2) == []


# -- DescribeLogDirs -----------------------------------------------------------------------------


def _sizes_on_disk(broker: BrokerProcess, topic: str, partition: int) -> int:
    return sum(p.stat().st_size for p in segment_files(broker, topic, partition))


def test_describe_log_dirs_with_kafka_python(broker: BrokerProcess, unique: Callable[[str], str]) -> None:
    topic, other = unique("logdirs"), unique("logdirs-other")
    create_topic(broker, topic, 2)
    create_topic(broker, other, 1)
    assert produce(broker, topic, 7, partition=1, size=300) == []
    admin = kafka.admin.KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        answer = admin.describe_log_dirs({topic: [0, 1, 5]})
    finally:
        admin.close()
    assert len(answer) == 1 and answer[0]["broker"] == 0
    (log_dir,) = answer[0]["log_dirs"]
    assert log_dir["error_code"] == 0
    assert Path(log_dir["log_dir"]) == broker.data_dir.resolve()
    assert log_dir["total_bytes"] > 0 and 0 <= log_dir["usable_bytes"] <= log_dir["total_bytes"]
    (described,) = log_dir["topics"]
    assert described["name"] == topic
    rows = {p["partition_index"]: p for p in described["partitions"]}
    assert sorted(rows) == [0, 1]  # partition 5 does not exist: left out
    assert rows[0]["partition_size"] == 0
    assert rows[1]["partition_size"] == _sizes_on_disk(broker, topic, 1) > 7 * 300
    assert all(p["offset_lag"] == 0 and p["is_future_key"] is False for p in rows.values())


@pytest.mark.parametrize("version", [0, 1, 2, 3, 4])
def test_describe_log_dirs_wire_versions(broker: BrokerProcess, unique: Callable[[str], str], version: int) -> None:
    topic = unique("logdirs-wire")
    create_topic(broker, topic, 1)
    assert produce(broker, topic, 3) == []
    everything = call(broker, ApiKey.DESCRIBE_LOG_DIRS, version, {"topics": None})
    (result,) = everything["results"]
    names = {t["name"] for t in result["topics"]}
    assert {topic, "__consumer_offsets"} <= names
    one = call(broker, ApiKey.DESCRIBE_LOG_DIRS, version,
               {"topics": [{"topic": topic, "partitions": [0, 0, -1, 3]}, {"topic": topic + "-nope", "partitions": [0]},
                           {"topic": topic, "partitions": [0]}]})
    (result,) = one["results"]
    assert [(t["name"], [(p["partition_index"], p["partition_size"]) for p in t["partitions"]])
            for t in result["topics"]] == [(topic, [(0, _sizes_on_disk(broker, topic, 0))])]
    if version >= 4:
        assert result["total_bytes"] > 0


# -- aiokafka ------------------------------------------------------------------------------------


def test_aiokafka_admin(broker: BrokerProcess, unique: Callable[[str], str]) -> None:
    """aiokafka picks its own versions (CreatePartitions and AlterConfigs v0-1, DeleteRecords v0-2)."""
    topic = unique("aio")
    create_topic(broker, topic, 1)
    assert produce(broker, topic, 8) == []

    async def body() -> None:
        admin = aiokafka.admin.AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
        await admin.start()
        try:
            await admin.create_partitions({topic: aiokafka.admin.NewPartitions(total_count=2)})
            resource = AioConfigResource(AioConfigResourceType.TOPIC, topic, configs={"retention.ms": "900000"})
            (response,) = await admin.alter_configs([resource])
            assert [tuple(r)[:2] for r in response.resources] == [(0, None)]
            low = await admin.delete_records({AioTopicPartition(topic, 0): aiokafka.admin.RecordsToDelete(5)})
            assert low == {AioTopicPartition(topic, 0): 5}
        finally:
            await admin.close()

    asyncio.run(body())
    assert len(admin_for(broker).list_topics(topic, timeout=10).topics[topic].partitions) == 2
    assert describe(broker, topic)["retention.ms"].value == "900000"
    assert offsets(broker, topic) == (5, 8)
