"""Keyless records on a compacted topic are refused, per record, on a real ``flowbus broker``.

Compaction keeps the latest record of each key, so Kafka refuses a produce whose batch holds a
record without a key when the topic's ``cleanup.policy`` contains ``compact``: INVALID_RECORD
(87) for that partition, ``record_errors`` naming each keyless record by its index in the batch
(Produce v8+), and nothing of the batch appended. librdkafka reads ``record_errors``: the keyless
messages fail with INVALID_RECORD, the keyed ones of the same batch with its local
``_INVALID_DIFFERENT_RECORD``; a later keyed batch succeeds, idempotent or not. Compressed
batches are checked too (the broker decompresses them for this); other topics take keyless
records as before.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import confluent_kafka
import confluent_kafka.admin as ck_admin
import kafka
import kafka.errors
import pytest

from flowbus.protocol.api import ApiKey
from flowbus.protocol.error_codes import ErrorCode
from flowbus.records import BatchBuilder, Codec
from tests.support.broker_process import BrokerProcess
from tests.support.wire import Wire

pytestmark = pytest.mark.timeout(120)

READ_TIMEOUT_S = 10.0
#: librdkafka's local error for a message failed only because another record of its batch was
#: invalid (RD_KAFKA_RESP_ERR__INVALID_DIFFERENT_RECORD).
INVALID_DIFFERENT_RECORD = -138
KEYLESS = "Compacted topic cannot accept message without key in topic partition"


@pytest.fixture
def wire(broker: BrokerProcess) -> Iterator[Wire]:
    connection = Wire(broker, "compacted-keys-test")
    yield connection
    connection.close()


def _create_topic(broker: BrokerProcess, topic: str, policy: str) -> None:
    admin = ck_admin.AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([ck_admin.NewTopic(topic, 1, 1, config={"cleanup.policy": policy})])[topic].result(10)


def _high_watermark(wire: Wire, topic: str) -> int:
    answer = wire.call(ApiKey.LIST_OFFSETS, 7, {
        "replica_id": -1, "isolation_level": 0,
        "topics": [{"name": topic, "partitions": [{"partition_index": 0, "timestamp": -1}]}],
    })
    (partition,) = answer["topics"][0]["partitions"]
    assert partition["error_code"] == ErrorCode.NONE
    return int(partition["offset"])


def _batch(keys: list[bytes | None], codec: Codec = Codec.NONE) -> bytes:
    builder = BatchBuilder(codec)
    now_ms = int(time.time() * 1000)
    for i, key in enumerate(keys):
        builder.append(key, b"value-%d" % i * 20, timestamp_ms=now_ms)
    return builder.build()


def _produce(wire: Wire, version: int, topic: str, records: bytes) -> dict[str, Any]:
    answer = wire.call(ApiKey.PRODUCE, version, {
        "transactional_id": None, "acks": -1, "timeout_ms": 5_000,
        "topic_data": [{"name": topic, "partition_data": [{"index": 0, "records": records}]}],
    })
    ((partition,),) = [t["partition_responses"] for t in answer["responses"]]
    return partition


def _confluent_send(
    broker: BrokerProcess, topic: str, keys: list[bytes | None], **config: Any
) -> list[tuple[bytes | None, int | None]]:
    """Send one record per key in one batch (long linger, one flush); (key, error code or None)
    per delivery report, in send order.

    The topic's metadata is fetched first: records produced before librdkafka knows the
    partition may leave in a batch of their own.
    """
    producer = confluent_kafka.Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 100, **config})
    producer.list_topics(topic, timeout=10)
    reports: list[tuple[bytes | None, int | None]] = []

    def delivered(error: confluent_kafka.KafkaError | None, message: confluent_kafka.Message) -> None:
        reports.append((message.key(), None if error is None else error.code()))

    for i, key in enumerate(keys):
        producer.produce(topic, b"value-%d" % i, key=key, on_delivery=delivered)
    assert producer.flush(30) == 0
    return reports


# -- confluent-kafka ---------------------------------------------------------------------------


@pytest.mark.parametrize("idempotent", [False, True])
def test_confluent_keyless_records_fail_and_keyed_ones_succeed(
    broker: BrokerProcess, wire: Wire, unique: Callable[[str], str], idempotent: bool
) -> None:
    topic = unique("compact-ck")
    _create_topic(broker, topic, "compact")
    config = {"enable.idempotence": idempotent}
    assert _confluent_send(broker, topic, [b"a", b"b"], **config) == [(b"a", None), (b"b", None)]
    assert _high_watermark(wire, topic) == 2
    # One batch, keyless records at 1 and 3: those two are INVALID_RECORD, the keyed ones of
    # the same batch fail with them (librdkafka tells them apart by record_errors when it lists
    # more than one record).
    mixed = _confluent_send(broker, topic, [b"c", None, b"d", None], **config)
    assert mixed == [
        (b"c", INVALID_DIFFERENT_RECORD),
        (None, ErrorCode.INVALID_RECORD),
        (b"d", INVALID_DIFFERENT_RECORD),
        (None, ErrorCode.INVALID_RECORD),
    ]
    assert _high_watermark(wire, topic) == 2  # nothing of the batch appended
    # The producer goes on (an idempotent one too: no sequence was consumed).
    assert _confluent_send(broker, topic, [b"e"], **config) == [(b"e", None)]
    assert _high_watermark(wire, topic) == 3


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_confluent_compressed_batches_are_checked(
    broker: BrokerProcess, wire: Wire, unique: Callable[[str], str], codec: str
) -> None:
    topic = unique(f"compact-{codec}")
    _create_topic(broker, topic, "compact,delete")
    keys: list[bytes | None] = [b"k%d" % i for i in range(50)]
    # Two of them: with a single record error librdkafka gives every message of the batch the
    # partition's error; with more it tells them apart by record_errors.
    keys[11] = keys[37] = None
    reports = _confluent_send(broker, topic, keys, **{"compression.type": codec})
    assert [error for key, error in reports if key is None] == [ErrorCode.INVALID_RECORD] * 2
    assert {error for key, error in reports if key is not None} == {INVALID_DIFFERENT_RECORD}
    assert _high_watermark(wire, topic) == 0
    keyed = _confluent_send(broker, topic, [b"k%d" % i for i in range(50)], **{"compression.type": codec})
    assert {error for _, error in keyed} == {None}
    assert _high_watermark(wire, topic) == 50


def test_confluent_keyless_records_on_a_normal_topic(
    broker: BrokerProcess, wire: Wire, unique: Callable[[str], str]
) -> None:
    topic = unique("delete-ck")
    _create_topic(broker, topic, "delete")
    assert _confluent_send(broker, topic, [None, b"k", None], **{"compression.type": "lz4"}) == [
        (None, None), (b"k", None), (None, None),
    ]
    assert _high_watermark(wire, topic) == 3


# -- kafka-python ------------------------------------------------------------------------------


def test_kafka_python_keyless_records(broker: BrokerProcess, wire: Wire, unique: Callable[[str], str]) -> None:
    compacted, normal = unique("compact-kp"), unique("delete-kp")
    _create_topic(broker, compacted, "compact")
    _create_topic(broker, normal, "delete")
    producer = kafka.KafkaProducer(bootstrap_servers=broker.bootstrap, compression_type="gzip", retries=0)
    try:
        with pytest.raises(kafka.errors.InvalidRecordError):
            producer.send(compacted, b"no key").get(timeout=15)
        assert producer.send(compacted, b"keyed", key=b"k").get(timeout=15).offset == 0
        assert producer.send(normal, b"no key").get(timeout=15).offset == 0
    finally:
        producer.close(timeout=10)
    assert (_high_watermark(wire, compacted), _high_watermark(wire, normal)) == (1, 1)


# -- raw frames --------------------------------------------------------------------------------


def test_record_errors_on_the_wire(broker: BrokerProcess, wire: Wire, unique: Callable[[str], str]) -> None:
    """v8+ carries record_errors and Kafka's message; v3-7 the error code alone."""
    topic = unique("compact-wire")
    _create_topic(broker, topic, "compact")
    keys = [b"a", None, b"b", None, None, None]
    for version, codec in ((8, Codec.NONE), (9, Codec.ZSTD)):
        answer = _produce(wire, version, topic, _batch(keys, codec))
        assert (answer["error_code"], answer["base_offset"]) == (ErrorCode.INVALID_RECORD, -1)
        message = f"{KEYLESS} {topic}-0"
        assert answer["record_errors"] == [
            {"batch_index": index, "batch_index_error_message": message} for index in (1, 3, 4, 5)
        ]
        # Kafka's text: the total, then at most three of the record errors.
        assert answer["error_message"].startswith(
            "One or more records have been rejected due to 4 record errors in total"
        )
        assert answer["error_message"].count("RecordError(batchIndex=") == 3
    old = _produce(wire, 7, topic, _batch(keys))
    assert old["error_code"] == ErrorCode.INVALID_RECORD and "record_errors" not in old
    assert _high_watermark(wire, topic) == 0
    ok = _produce(wire, 9, topic, _batch([b"a", b"b"], Codec.GZIP))
    assert (ok["error_code"], ok["base_offset"], ok["record_errors"]) == (ErrorCode.NONE, 0, [])


def test_every_batch_of_a_produce_is_checked(wire: Wire, broker: BrokerProcess, unique: Callable[[str], str]) -> None:
    """Two batches for one partition (allowed without idempotence): the keyless record of the
    second refuses the whole produce, its index counted within that batch, as in Kafka."""
    topic = unique("compact-two")
    _create_topic(broker, topic, "compact")
    answer = _produce(wire, 9, topic, _batch([b"a", b"b"]) + _batch([b"c", None]))
    assert answer["error_code"] == ErrorCode.INVALID_RECORD
    assert [e["batch_index"] for e in answer["record_errors"]] == [1]
    assert _high_watermark(wire, topic) == 0


def test_a_damaged_keyless_batch_is_corrupt(wire: Wire, broker: BrokerProcess, unique: Callable[[str], str]) -> None:
    """The CRC is checked before the batch is refused for its keys: CORRUPT_MESSAGE, as the
    append would answer, not INVALID_RECORD."""
    topic = unique("compact-crc")
    _create_topic(broker, topic, "compact")
    damaged = bytearray(_batch([None, b"k"]))
    damaged[-1] ^= 0xFF  # a value byte: the CRC no longer matches
    answer = _produce(wire, 9, topic, bytes(damaged))
    assert (answer["error_code"], answer["record_errors"]) == (ErrorCode.CORRUPT_MESSAGE, [])


def test_turning_compaction_on_applies_at_once(
    wire: Wire, broker: BrokerProcess, unique: Callable[[str], str]
) -> None:
    topic = unique("becomes-compact")
    _create_topic(broker, topic, "delete")
    assert _produce(wire, 9, topic, _batch([None]))["error_code"] == ErrorCode.NONE
    admin = ck_admin.AdminClient({"bootstrap.servers": broker.bootstrap})
    resource = ck_admin.ConfigResource(
        ck_admin.ResourceType.TOPIC,
        topic,
        incremental_configs=[
            ck_admin.ConfigEntry(
                "cleanup.policy", "compact", incremental_operation=ck_admin.AlterConfigOpType.APPEND
            )
        ],
    )
    admin.incremental_alter_configs([resource])[resource].result(10)
    assert _produce(wire, 9, topic, _batch([None]))["error_code"] == ErrorCode.INVALID_RECORD
    assert _high_watermark(wire, topic) == 1
