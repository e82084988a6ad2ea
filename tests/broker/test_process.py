"""The ``flowbus broker`` process itself: clean SIGTERM, restart, CLI flags."""

from __future__ import annotations

from pathlib import Path

import confluent_kafka
import confluent_kafka.admin
import pytest

from tests.support.broker_process import BrokerProcess

pytestmark = pytest.mark.timeout(90)


def produce_one(bootstrap: str, topic: str, value: bytes) -> None:
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    errors: list[object] = []
    producer.produce(topic, value, on_delivery=lambda err, msg: errors.append(err))
    assert producer.flush(20) == 0
    assert errors == [None]


def test_sigterm_flushes_writes_marker_and_exits_zero(tmp_path: Path) -> None:
    broker = BrokerProcess(tmp_path / "data")
    with broker:
        produce_one(broker.bootstrap, "kept", b"before")
        assert broker.terminate() == 0
        assert (tmp_path / "data" / ".flowbus_clean_shutdown").exists()
        assert "stopped cleanly" in broker.log_text()
        broker.start()
        assert "clean shutdown" in broker.log_text().split("--- start #2")[1]
        consumer = confluent_kafka.Consumer(
            {
                "bootstrap.servers": broker.bootstrap,
                "group.id": "g",
                "auto.offset.reset": "earliest",
            }
        )
        consumer.subscribe(["kept"])
        msg = None
        for _ in range(100):
            msg = consumer.poll(0.2)
            if msg is not None:
                break
        consumer.close()
        assert msg is not None and msg.value() == b"before"


def test_no_auto_create(tmp_path: Path) -> None:
    with BrokerProcess(tmp_path / "data", extra_args=["--no-auto-create"]) as broker:
        admin = confluent_kafka.admin.AdminClient(
            {"bootstrap.servers": broker.bootstrap}
        )
        metadata = admin.list_topics("missing", timeout=10)
        assert metadata.topics["missing"].error is not None
        assert (
            metadata.topics["missing"].error.code()
            == confluent_kafka.KafkaError.UNKNOWN_TOPIC_OR_PART
        )


def test_a_broker_that_cannot_start_is_reported_with_its_log(tmp_path: Path) -> None:
    from tests.support.broker_process import BrokerStartError

    with BrokerProcess(tmp_path / "a") as first:
        second = BrokerProcess(tmp_path / "b", port=first.port, start_timeout_s=20)
        with pytest.raises(BrokerStartError, match="exited with"):
            second.start()
        assert second.log_text()
