"""``flowbus groups``: the lag it shows is the lag a real confluent-kafka consumer group has."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import confluent_kafka
import pytest

from tests.cli.conftest import Invoke
from tests.support.broker_process import BrokerProcess

pytestmark = pytest.mark.timeout(60)


def _rows(stdout: str, topic: str) -> dict[int, list[str]]:
    """The per-partition rows of ``groups describe``, by partition number."""
    return {int(cols[1]): cols for cols in (line.split() for line in stdout.splitlines()) if cols and cols[0] == topic}


def test_describe_shows_a_confluent_groups_members_commits_and_lag(
    invoke: Invoke, kafka_url: str, broker: BrokerProcess, unique: Callable[[str], str]
) -> None:
    topic, group = unique("cli-lag"), unique("lag-group")
    assert invoke("topics", "create", topic, "-p", "3", "--broker", kafka_url).exit_code == 0
    producer = confluent_kafka.Producer({"bootstrap.servers": broker.bootstrap})
    for partition, count in ((0, 6), (1, 4), (2, 2)):
        for i in range(count):
            producer.produce(topic, b"%d" % i, partition=partition)
    producer.flush(10)

    consumer = confluent_kafka.Consumer({
        "bootstrap.servers": broker.bootstrap, "group.id": group, "client.id": "lag-checker",
        "enable.auto.commit": False, "auto.offset.reset": "earliest",
    })
    consumer.subscribe([topic])
    seen = 0
    deadline = time.monotonic() + 20
    while seen < 12 and time.monotonic() < deadline:
        seen += len([m for m in consumer.consume(12, 0.2) if m.error() is None])
    assert seen == 12
    # Part of the topic: partition 0 up to offset 2 of 6, partition 1 all 4, partition 2 nothing.
    consumer.commit(offsets=[confluent_kafka.TopicPartition(topic, 0, 2), confluent_kafka.TopicPartition(topic, 1, 4)],
                    asynchronous=False)

    try:
        live = invoke("groups", "describe", group, "--broker", kafka_url)
        assert live.exit_code == 0, live.output
        assert f"Group: {group}  State: Stable  Members: 1" in live.stdout
        member_line = next(line for line in live.stdout.splitlines() if "lag-checker" in line and "[" in line)
        assert f"{topic}[0], {topic}[1], {topic}[2]" in member_line
        rows = _rows(live.stdout, topic)
        assert rows[0][2:5] == ["2", "6", "4"]
        assert rows[1][2:5] == ["4", "4", "0"]
        assert rows[2][2:5] == ["-", "2", "-"], "no commit: no committed offset and no lag"
        assert rows[0][6] == "lag-checker"
        listed = invoke("groups", "list", "--broker", kafka_url)
        assert [group, "Stable"] in [line.split() for line in listed.stdout.splitlines()]
    finally:
        consumer.close()

    after = invoke("groups", "describe", group, "--broker", kafka_url)
    assert "State: Empty  Members: 0" in after.stdout
    rows = _rows(after.stdout, topic)
    assert sorted(rows) == [0, 1], "without members only committed partitions are left"
    assert rows[0][2:7] == ["2", "6", "4", "-", "-"]


def test_unknown_group(invoke: Invoke, kafka_url: str, unique: Callable[[str], str]) -> None:
    result = invoke("groups", "describe", unique("never-seen"), "--broker", kafka_url)
    assert result.exit_code == 1 and "unknown group" in result.stderr


def test_groups_on_embedded(invoke: Invoke, tmp_path: Path) -> None:
    url = f"embedded://{tmp_path / 'data'}"
    invoke("topics", "create", "t", "-p", "2", "--broker", url)
    invoke("produce", "t", "-K", ",", "--broker", url, input="".join(f"k{i},v{i}\n" for i in range(20)))
    consumed = invoke("consume", "t", "-g", "readers", "--from-beginning", "--max", "15", "--broker", url)
    assert consumed.exit_code == 0, consumed.output
    assert invoke("groups", "list", "--broker", url).stdout.split()[2:] == ["readers", "Empty"]
    described = invoke("groups", "describe", "readers", "--broker", url)
    rows = _rows(described.stdout, "t")
    committed = sum(int(r[2]) for r in rows.values())
    lag = sum(int(r[4]) for r in rows.values())
    assert (committed, lag) == (15, 5)
    assert sum(int(r[3]) for r in rows.values()) == 20
