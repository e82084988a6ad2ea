"""Issue 10, item 7: file descriptors. A broker process with a low RLIMIT_NOFILE refuses a
CreateTopics it cannot hold (one clear error, one log line, nothing in the catalog) and starts
on a data directory whose catalog lists more partitions than it has descriptors."""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

import confluent_kafka
import confluent_kafka.admin
import pytest

from tests.support.broker_process import BrokerProcess

pytestmark = pytest.mark.timeout(120)

NOFILE = 256


class LimitedBrokerProcess(BrokerProcess):
    """The broker with RLIMIT_NOFILE set to ``NOFILE`` in the child before flowbus runs."""

    def command(self) -> list[str]:
        args = super().command()
        assert args[1:3] == ["-m", "flowbus"]
        bootstrap = (
            "import resource, runpy, sys;"
            f"resource.setrlimit(resource.RLIMIT_NOFILE, ({NOFILE}, {NOFILE}));"
            "sys.argv = ['flowbus', *sys.argv[1:]];"
            "runpy.run_module('flowbus', run_name='__main__', alter_sys=True)"
        )
        return [sys.executable, "-c", bootstrap, *args[3:]]


def create(bootstrap: str, topic: str, partitions: int) -> confluent_kafka.KafkaError | None:
    admin = confluent_kafka.admin.AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [confluent_kafka.admin.NewTopic(topic, partitions, 1)], request_timeout=30
    )
    try:
        futures[topic].result(timeout=60)
    except confluent_kafka.KafkaException as exc:
        return exc.args[0]
    return None


def produce_and_read_back(bootstrap: str, topic: str, partition: int) -> None:
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    errors: list[object] = []
    producer.produce(topic, b"v", partition=partition, on_delivery=lambda err, msg: errors.append(err))
    assert producer.flush(30) == 0
    assert errors == [None]
    consumer = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": "g", "enable.auto.commit": False})
    consumer.assign([confluent_kafka.TopicPartition(topic, partition, 0)])
    msg = None
    for _ in range(100):  # bounded: 20 s at most
        msg = consumer.poll(0.2)
        if msg is not None and msg.error() is None:
            break
    consumer.close()
    assert msg is not None and msg.error() is None and msg.value() == b"v"


def test_create_topics_over_the_descriptor_budget_is_refused_cleanly(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with LimitedBrokerProcess(data) as broker:
        error = create(broker.bootstrap, "huge", 10_000)
        assert error is not None
        assert error.code() == confluent_kafka.KafkaError.POLICY_VIOLATION
        assert "file descriptors" in error.str()
        # A creation that fits still works, and the broker serves it.
        assert create(broker.bootstrap, "small", 4) is None
        produce_and_read_back(broker.bootstrap, "small", 3)
        log_text = broker.log_text()
        assert log_text.count("refused: creating topic 'huge'") == 1
        assert "Traceback" not in log_text
        catalog = json.loads((data / "catalog.json").read_bytes())
        assert "huge" not in {topic["name"] for topic in catalog["topics"]}
        assert not any(data.glob("huge-*"))
        assert broker.terminate() == 0
        broker.start()  # restarts on the same directory
        produce_and_read_back(broker.bootstrap, "small", 0)


def test_start_up_with_more_partitions_in_the_catalog_than_descriptors(tmp_path: Path) -> None:
    # The state the old broker left behind: a catalog naming 10,000 partitions never created.
    data = tmp_path / "data"
    data.mkdir()
    catalog = {
        "version": 1,
        "topics": [{"name": "big", "partitions": 10_000, "configs": {}, "topic_id": str(uuid.uuid4())}],
    }
    (data / "catalog.json").write_text(json.dumps(catalog))
    with LimitedBrokerProcess(data, start_timeout_s=60) as broker:
        assert "left closed until first use" in broker.log_text()
        produce_and_read_back(broker.bootstrap, "big", 9_999)
        assert "Traceback" not in broker.log_text()


def test_a_partition_rolled_into_more_segments_than_descriptors_is_served(tmp_path: Path) -> None:
    # Issue 10, item 7 (segments): inactive segments release their files, so a partition of
    # more segments than RLIMIT_NOFILE still takes produces, serves old offsets and restarts.
    # Before, every segment held a descriptor: the roll past the limit failed with EMFILE.
    data = tmp_path / "data"
    count = NOFILE + 44
    with LimitedBrokerProcess(data) as broker:
        admin = confluent_kafka.admin.AdminClient({"bootstrap.servers": broker.bootstrap})
        topic = confluent_kafka.admin.NewTopic("rolled", 1, 1, config={"segment.bytes": "100"})
        admin.create_topics([topic], request_timeout=30)["rolled"].result(timeout=60)
        producer = confluent_kafka.Producer(
            {"bootstrap.servers": broker.bootstrap, "acks": "all", "linger.ms": 0, "enable.idempotence": False}
        )
        errors: list[object] = []
        for i in range(count):  # bounded: one batch per produce, so one segment each
            producer.produce("rolled", f"v{i}".encode(), partition=0, on_delivery=lambda err, msg: errors.append(err))
            assert producer.flush(30) == 0
        failed = [str(err) for err in errors if err is not None]
        assert not failed and len(errors) == count, (failed[:3], broker.log_tail())
        assert len(list(data.glob("rolled-0/*.log"))) >= count
        expected = [f"v{i}".encode() for i in range(count)]
        assert read_values(broker.bootstrap, "rolled", count) == expected, broker.log_tail()
        assert "Traceback" not in broker.log_text(), broker.log_tail()
        assert broker.terminate() == 0
        broker.start()
        assert read_values(broker.bootstrap, "rolled", count) == expected, broker.log_tail()
        assert "Traceback" not in broker.log_text(), broker.log_tail()


def read_values(bootstrap: str, topic: str, count: int) -> list[bytes | None]:
    """The values of the first ``count`` records of partition 0, read from offset 0."""
    consumer = confluent_kafka.Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "r", "enable.auto.commit": False}
    )
    consumer.assign([confluent_kafka.TopicPartition(topic, 0, 0)])
    values: list[bytes | None] = []
    try:
        for _ in range(600):  # bounded: 60 s at most
            if len(values) >= count:
                break
            for msg in consumer.consume(500, 0.1):
                assert msg.error() is None, msg.error()
                values.append(msg.value())
    finally:
        consumer.close()
    return values
