"""``flowbus broker --metrics``: a known workload from real Kafka clients, then ``/metrics``
checked by name and value (issue 13, item 1)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import confluent_kafka
import confluent_kafka.admin as ck_admin
import pytest

from tests.support.broker_process import DEFAULT_EXTRA_ARGS, BrokerProcess, free_port
from tests.support.metrics import Samples, documented_metrics, scrape

pytestmark = pytest.mark.timeout(120)

TOPIC = "metrics-orders"
VALUE_BYTES = 50
#: Records produced to partitions 0 and 1 of TOPIC.
RECORDS_P0 = 60
RECORDS_P1 = 40
#: What the group commits: all of partition 0, the first 10 records of partition 1.
COMMITTED_P1 = 10
GROUP = "metrics-group"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    data_dir = tmp_path_factory.mktemp("metrics") / "data"
    metrics_port = free_port()
    process = BrokerProcess(data_dir, extra_args=(*DEFAULT_EXTRA_ARGS, "--metrics", f"127.0.0.1:{metrics_port}"))
    process.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"  # type: ignore[attr-defined]
    with process:
        yield process


def _scrape(broker: BrokerProcess) -> Samples:
    return scrape(broker.metrics_url)  # type: ignore[attr-defined]


def _create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = ck_admin.AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([ck_admin.NewTopic(name, partitions, 1)]).values():
        future.result(timeout=30)


def _produce(bootstrap: str) -> None:
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for partition, count in ((0, RECORDS_P0), (1, RECORDS_P1)):
        for i in range(count):
            producer.produce(TOPIC, b"v" * VALUE_BYTES, key=f"k{i}".encode(), partition=partition)
    assert producer.flush(30) == 0


def _consume_and_commit(bootstrap: str) -> None:
    consumer = confluent_kafka.Consumer({
        "bootstrap.servers": bootstrap, "group.id": GROUP, "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    })
    consumer.subscribe([TOPIC])
    seen = 0
    deadline = time.monotonic() + 30
    while seen < RECORDS_P0 + RECORDS_P1 and time.monotonic() < deadline:
        for message in consumer.consume(100, timeout=1.0):
            assert message.error() is None, message.error()
            seen += 1
    assert seen == RECORDS_P0 + RECORDS_P1
    consumer.commit(offsets=[confluent_kafka.TopicPartition(TOPIC, 0, RECORDS_P0),
                             confluent_kafka.TopicPartition(TOPIC, 1, COMMITTED_P1)], asynchronous=False)
    consumer.close()


def test_traffic_partitions_groups_and_requests(broker: BrokerProcess) -> None:
    before = _scrape(broker)
    assert before.families["flowbus_broker_request_duration_seconds"] == "histogram"
    _create_topic(broker.bootstrap, TOPIC, 2)
    _produce(broker.bootstrap)
    _consume_and_commit(broker.bootstrap)
    samples = _scrape(broker)
    total = RECORDS_P0 + RECORDS_P1

    assert samples.value("flowbus_broker_topic_records_in_total", topic=TOPIC) == total
    assert samples.value("flowbus_broker_topic_bytes_in_total", topic=TOPIC) >= total * VALUE_BYTES
    # Each batch is served whole and the consumer read everything once.
    assert samples.value("flowbus_broker_topic_records_out_total", topic=TOPIC) == total
    assert samples.value("flowbus_broker_topic_bytes_out_total", topic=TOPIC) == samples.value(
        "flowbus_broker_topic_bytes_in_total", topic=TOPIC)

    assert samples.value("flowbus_broker_partition_end_offset", topic=TOPIC, partition="0") == RECORDS_P0
    assert samples.value("flowbus_broker_partition_end_offset", topic=TOPIC, partition="1") == RECORDS_P1
    assert samples.value("flowbus_broker_partition_log_start_offset", topic=TOPIC, partition="0") == 0
    assert samples.value("flowbus_broker_partition_size_bytes", topic=TOPIC, partition="0") >= RECORDS_P0 * VALUE_BYTES
    assert samples.value("flowbus_broker_partition_segments", topic=TOPIC, partition="1") == 1

    labels = {"group": GROUP, "topic": TOPIC}
    assert samples.value("flowbus_broker_group_committed_offset", partition="0", **labels) == RECORDS_P0
    assert samples.value("flowbus_broker_group_committed_offset", partition="1", **labels) == COMMITTED_P1
    assert samples.value("flowbus_broker_group_lag", partition="0", **labels) == 0
    assert samples.value("flowbus_broker_group_lag", partition="1", **labels) == RECORDS_P1 - COMMITTED_P1
    assert sum(samples.matching("flowbus_broker_group_lag", group=GROUP).values()) == total - RECORDS_P0 - COMMITTED_P1
    assert samples.value("flowbus_broker_group_members", group=GROUP) == 0  # the consumer left
    assert samples.value("flowbus_broker_groups", state="Empty") >= 1

    # The requests of the workload, counted per API, with a histogram each.
    assert samples.value("flowbus_broker_requests_total", api="OffsetCommit") == 1
    assert samples.value("flowbus_broker_requests_total", api="CreateTopics") == 1
    for api in ("ApiVersions", "Metadata", "Produce", "Fetch", "JoinGroup", "SyncGroup", "FindCoordinator"):
        count = samples.value("flowbus_broker_requests_total", api=api)
        assert count >= 1, api
        assert samples.value("flowbus_broker_request_duration_seconds_count", api=api) == count
        assert samples.value("flowbus_broker_request_duration_seconds_bucket", api=api, le="+Inf") == count
        assert samples.value("flowbus_broker_request_duration_seconds_sum", api=api) > 0
    assert samples.value("flowbus_broker_requests_total", api="Produce") > before.get(
        "flowbus_broker_requests_total", 0, api="Produce")

    assert samples.value("flowbus_broker_connections_accepted_total") >= 3  # admin, producer, consumer
    assert samples.value("flowbus_broker_connections") >= 0
    assert samples.value("flowbus_broker_network_received_bytes_total") >= total * VALUE_BYTES
    assert samples.value("flowbus_broker_network_sent_bytes_total") >= total * VALUE_BYTES
    assert samples.value("flowbus_broker_partitions") >= 2
    assert samples.value("process_resident_memory_bytes") > 0


def test_transactions_open_then_committed(broker: BrokerProcess) -> None:
    _create_topic(broker.bootstrap, "metrics-txn", 1)
    before = _scrape(broker)
    committed_before = before.value("flowbus_broker_transactions_committed_total")
    producer = confluent_kafka.Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": "metrics-tx"})
    producer.init_transactions(30)
    producer.begin_transaction()
    for i in range(5):
        producer.produce("metrics-txn", f"t{i}".encode())
    assert producer.flush(30) == 0

    during = _scrape(broker)
    assert during.value("flowbus_broker_transactions_open") == 1
    assert during.value("flowbus_broker_transactional_ids", state="Ongoing") == 1
    assert during.value("flowbus_broker_topic_records_in_total", topic="metrics-txn") == 5
    # The open transaction holds the last stable offset back, not the end offset.
    assert during.value("flowbus_broker_partition_end_offset", topic="metrics-txn", partition="0") == 5

    producer.commit_transaction(30)
    after = _scrape(broker)
    assert after.value("flowbus_broker_transactions_open") == 0
    assert after.value("flowbus_broker_transactions_committed_total") == committed_before + 1
    assert after.value("flowbus_broker_transactions_aborted_total") == before.value(
        "flowbus_broker_transactions_aborted_total")
    assert after.value("flowbus_broker_transactional_ids", state="CompleteCommit") == 1
    assert after.value("flowbus_broker_requests_total", api="EndTxn") == 1
    assert after.value("flowbus_broker_requests_total", api="InitProducerId") >= 1
    # The commit marker is one more offset in the partition.
    assert after.value("flowbus_broker_partition_end_offset", topic="metrics-txn", partition="0") == 6


def test_index_lists_the_routes(broker: BrokerProcess) -> None:
    import json
    import urllib.request

    root = broker.metrics_url.removesuffix("/metrics")  # type: ignore[attr-defined]
    with urllib.request.urlopen(root + "/", timeout=10) as response:
        assert json.loads(response.read()) == {
            "metrics": "/metrics", "dashboard": "/dashboard", "dashboard-static": "/dashboard/static/{name}",
            "stats": "/api/stats"}
    # The dashboard's page, script and numbers (tests/web/test_dashboard.py runs them in Chromium).
    with urllib.request.urlopen(root + "/dashboard", timeout=10) as response:
        assert b"/dashboard/static/dashboard.js" in response.read()
    with urllib.request.urlopen(root + "/dashboard/static/dashboard.js", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/javascript")
    with urllib.request.urlopen(root + "/api/stats", timeout=10) as response:
        stats = json.loads(response.read())
    assert stats["kind"] == "broker" and stats["totals"]["partitions"] >= 1


def test_busy_metrics_port_is_one_line(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "flowbus", "broker", "--data-dir", str(tmp_path / "d"), "--listen", "127.0.0.1:0",
             "--metrics", f"127.0.0.1:{port}"],
            check=False, capture_output=True, text=True, timeout=60,
        )
    assert result.returncode == 1
    assert f"cannot serve HTTP on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_every_broker_metric_is_documented(broker: BrokerProcess) -> None:
    """docs/operations.md lists exactly what /metrics exposes (after the workload above)."""
    exposed = _scrape(broker).exposed_families("flowbus_broker_")
    assert exposed == documented_metrics("flowbus_broker_")
