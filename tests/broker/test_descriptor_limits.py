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
