"""``flowbus topics``: the same commands on embedded:// and kafka://, cross-checked with
confluent-kafka's AdminClient, and the errors a user meets (one line, non-zero exit)."""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from pathlib import Path

import confluent_kafka.admin as ck_admin
import pytest

from flowbus.app import App
from flowbus.cli.common import DEFAULT_BROKER_URL
from tests.cli.conftest import Invoke
from tests.support.broker_process import BrokerProcess, free_port

pytestmark = pytest.mark.timeout(60)


def _lifecycle(invoke: Invoke, url: str, topic: str) -> None:
    """create → list → describe (configs, offsets) → delete, with the errors in between."""
    created = invoke("topics", "create", topic, "--partitions", "3", "--config", "retention.ms=3600000", "--broker", url)
    assert created.exit_code == 0, created.output
    assert f"created topic {topic} with 3 partitions" in created.stderr

    again = invoke("topics", "create", topic, "--broker", url)
    assert again.exit_code == 1 and "already exists" in again.stderr

    listed = invoke("topics", "list", "--broker", url)
    assert topic in listed.stdout.splitlines()
    assert "__consumer_offsets" not in listed.stdout
    assert "__consumer_offsets" in invoke("topics", "list", "--internal", "--broker", url).stdout

    produced = invoke("produce", topic, "--partition", "2", "--broker", url, input="a\nb\n")
    assert produced.exit_code == 0, produced.output
    described = invoke("topics", "describe", topic, "--broker", url)
    assert described.exit_code == 0, described.output
    lines = described.stdout.splitlines()
    assert lines[0] == f"Topic: {topic}  Partitions: 3"
    assert lines[1] == "Configs: retention.ms=3600000"
    rows = [line.split() for line in lines[3:]]
    assert rows == [["0", "0", "0"], ["1", "0", "0"], ["2", "0", "2"]]

    deleted = invoke("topics", "delete", topic, "--broker", url)
    assert deleted.exit_code == 0, deleted.output
    assert topic not in invoke("topics", "list", "--broker", url).stdout
    for command in (("topics", "describe", topic), ("topics", "delete", topic)):
        missing = invoke(*command, "--broker", url)
        assert missing.exit_code == 1 and f"unknown topic '{topic}'" in missing.stderr, missing.output


def test_topics_on_embedded(invoke: Invoke, tmp_path: Path) -> None:
    _lifecycle(invoke, f"embedded://{tmp_path / 'data'}", "orders")


def test_topics_on_kafka_seen_by_confluent_admin(
    invoke: Invoke, kafka_url: str, broker: BrokerProcess, unique: Callable[[str], str]
) -> None:
    topic = unique("cli-topic")
    assert invoke("topics", "create", topic, "-p", "2", "-c", "cleanup.policy=compact", "--broker", kafka_url).exit_code == 0
    admin = ck_admin.AdminClient({"bootstrap.servers": broker.bootstrap})
    assert len(admin.list_topics(timeout=10).topics[topic].partitions) == 2
    resource = ck_admin.ConfigResource(ck_admin.ResourceType.TOPIC, topic)
    assert admin.describe_configs([resource])[resource].result(10)["cleanup.policy"].value == "compact"
    _lifecycle(invoke, kafka_url, unique("cli-life"))


def test_bad_config_is_one_line(invoke: Invoke, kafka_url: str, unique: Callable[[str], str]) -> None:
    malformed = invoke("topics", "create", unique("t"), "--config", "retention.ms", "--broker", kafka_url)
    assert malformed.exit_code == 2 and "expected key=value" in malformed.stderr
    rejected = invoke("topics", "create", unique("t"), "--config", "no.such.setting=1", "--broker", kafka_url)
    assert rejected.exit_code == 1 and "no.such.setting" in rejected.stderr
    assert "Traceback" not in rejected.output


def test_unreachable_broker_fails_within_the_timeout(invoke: Invoke) -> None:
    started = time.monotonic()
    result = invoke("topics", "list", "--broker", f"kafka://127.0.0.1:{free_port()}", "--timeout-s", "1")
    assert time.monotonic() - started < 5
    assert result.exit_code == 1
    assert "no answer from the broker" in result.stderr and "--timeout-s" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, "librdkafka's own connection errors stay quiet"


def test_missing_embedded_dir_is_not_created(invoke: Invoke, tmp_path: Path) -> None:
    result = invoke("topics", "list", "--broker", f"embedded://{tmp_path / 'typo'}")
    assert result.exit_code == 1 and "no flowbus data in" in result.stderr
    assert not (tmp_path / "typo").exists()


def test_embedded_dir_held_by_a_running_broker_says_to_listen(invoke: Invoke, tmp_path: Path) -> None:
    data = tmp_path / "data"
    with BrokerProcess(data):
        for args in (("topics", "list"), ("groups", "list"), ("consume", "t", "--max", "1")):
            result = invoke(*args, "--broker", f"embedded://{data}")
            assert result.exit_code == 1, result.output
            assert "in use" in result.stderr and "--listen HOST:PORT" in result.stderr
            assert "--broker kafka://HOST:PORT" in result.stderr


def test_default_broker_is_the_apps_and_the_environment_overrides_it(
    invoke: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert DEFAULT_BROKER_URL == inspect.signature(App.__init__).parameters["broker"].default
    monkeypatch.chdir(tmp_path)
    assert invoke("topics", "create", "here").exit_code == 0
    assert (tmp_path / "flowbus-data").is_dir(), "the default is embedded://./flowbus-data, as App's"
    other = tmp_path / "other"
    env = {"FLOWBUS_BROKER": f"embedded://{other}"}
    assert invoke("topics", "create", "there", env=env).exit_code == 0
    assert invoke("topics", "list", env=env).stdout.split() == ["there"]
    assert invoke("topics", "list").stdout.split() == ["here"]


@pytest.mark.parametrize(("name", "rule"), [
    ("bad topic!", "topic name 'bad topic!' may contain only ASCII letters, digits, '.', '_' and '-'"),
    ("..", "topic name cannot be '..'"),
    ("t" * 250, "topic name is 250 characters; the limit is 249"),
])
def test_an_invalid_topic_name_says_which_rule_it_breaks(invoke: Invoke, tmp_path: Path, name: str, rule: str) -> None:
    result = invoke("topics", "create", name, "--broker", f"embedded://{tmp_path / 'data'}")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [f"Error: {rule}"]
