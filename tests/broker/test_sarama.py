"""Go's sarama against a real broker process: admin, every codec, idempotence, groups,
offsets by timestamp, and reading transactions that confluent-kafka wrote (Debian's sarama 1.22
cannot produce transactions, but reads them with either isolation level).

The scenarios live in tests/broker/sarama/scenarios/main.go, built once per session with
Debian's Go and golang-github-shopify-sarama-dev (GOPATH mode, as test_max_timestamp.py
builds its producer); each test runs one and asserts on the JSON it prints (shared checks:
real_client_checks.py). sarama is set to Kafka 2.2.0, the newest version it knows; it never
asks the broker for versions, and at that setting sends Produce v3 and Fetch v4.

Needs Go and the sarama sources (.ci/run installs them): the tests fail, never skip, without.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import confluent_kafka
import confluent_kafka.admin
import pytest

from tests.broker.real_client_checks import (
    CODEC_RECORDS,
    CODECS,
    check_codec_round_trip,
    check_codec_stored_and_readable,
    check_configs_replaced,
    check_delete_records,
    check_group_one_member,
    check_group_resumed,
    check_group_two_members,
    check_idempotent_batches,
    check_offsets_by_timestamp,
)
from tests.support.broker_process import BrokerProcess

pytestmark = pytest.mark.timeout(120)

SCENARIOS_SOURCE = Path(__file__).parent / "sarama" / "scenarios" / "main.go"
#: Where Debian installs Go library sources (GOPATH mode).
DEBIAN_GOPATH = Path("/usr/share/gocode")
SARAMA_SOURCES = DEBIAN_GOPATH / "src" / "github.com" / "Shopify" / "sarama"
BUILD_TIMEOUT_S = 300
SCENARIO_TIMEOUT_S = 90
#: Kafka error codes the scenarios report.
TOPIC_ALREADY_EXISTS = 36
INVALID_PARTITIONS = 37
NON_EMPTY_GROUP = 68
GROUP_ID_NOT_FOUND = 69


@pytest.fixture(scope="session")
def sarama_scenarios(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The scenarios binary, built with Debian's Go and sarama."""
    go = shutil.which("go")
    if go is None or not SARAMA_SOURCES.is_dir():
        pytest.fail(
            "sarama tests need Go and sarama: apt-get install golang-go golang-github-shopify-sarama-dev"
        )
    out = tmp_path_factory.mktemp("sarama-scenarios")
    binary = out / "scenarios"
    env = dict(
        os.environ,
        GOPATH=str(DEBIAN_GOPATH),
        GO111MODULE="off",
        GOCACHE=str(out / "cache"),
        GOFLAGS="",
    )
    build = subprocess.run(
        [go, "build", "-o", str(binary), str(SCENARIOS_SOURCE)],
        env=env,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    if build.returncode != 0:
        pytest.fail(f"cannot build the sarama scenarios:\n{build.stderr[-3000:]}")
    return binary


def run_scenario(
    binary: Path, broker: BrokerProcess, scenario: str, **args: Any
) -> dict[str, Any]:
    """Run one scenario against ``broker``; returns the JSON it printed."""
    run = subprocess.run(
        [str(binary), scenario, broker.bootstrap, json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=SCENARIO_TIMEOUT_S,
        check=False,
    )
    assert run.returncode == 0, (
        f"{scenario} failed:\n{run.stderr[-4000:]}\n--- broker log:\n{broker.log_tail()}"
    )
    result: dict[str, Any] = json.loads(run.stdout)
    return result


def test_admin_create_describe_delete(
    sarama_scenarios: Path, broker: BrokerProcess, unique: Callable[[str], str]
) -> None:
    out = run_scenario(
        sarama_scenarios, broker, "admin-create-delete", topic=unique("sar-admin")
    )
    assert out["created"] is None
    assert out["createdAgain"]["code"] == TOPIC_ALREADY_EXISTS
    assert out["listed"] == {"ok": 3}
    assert out["partitions"] == {"ok": 3}
    configs = out["configs"]["ok"]
    assert configs["retention.ms"] == {
        "value": "3600000",
        "isDefault": False,
        "readOnly": False,
    }
    assert configs["cleanup.policy"] == {
        "value": "compact",
        "isDefault": False,
        "readOnly": False,
    }
    assert configs["segment.bytes"]["isDefault"] is True
    # sarama asks with Metadata v0, which has no controller field: it reports -1.
    assert out["cluster"]["ok"] == {
        "brokers": [f"0 {broker.bootstrap}"],
        "controller": -1,
    }
    assert out["deleted"] is None
    assert out["listedAfterDelete"] == {"ok": False}


def test_admin_create_partitions(
    sarama_scenarios: Path, broker: BrokerProcess, unique: Callable[[str], str]
) -> None:
    out = run_scenario(
        sarama_scenarios, broker, "admin-partitions", topic=unique("sar-parts")
    )
    assert out["created"] is None and out["grow"] is None
    assert out["partitions"] == {"ok": 3}
    assert out["shrink"]["code"] == INVALID_PARTITIONS
    assert out["sent"] == {"ok": ["2 0"]}
    assert out["offsets"]["ok"] == {
        "0": {"low": 0, "high": 0},
        "1": {"low": 0, "high": 0},
        "2": {"low": 0, "high": 1},
    }


def test_admin_alter_configs(
    sarama_scenarios: Path, broker: BrokerProcess, unique: Callable[[str], str]
) -> None:
    out = run_scenario(
        sarama_scenarios, broker, "admin-configs", topic=unique("sar-configs")
    )
    assert out["created"] is None
    assert out["set"] is None and out["validateOnly"] is None and out["replace"] is None
    # This sarama turns a resource error into its message only.
    assert "retention.ms" in out["badValue"]["message"]
    check_configs_replaced(out)


def test_admin_delete_records(
    sarama_scenarios: Path, broker: BrokerProcess, unique: Callable[[str], str]
) -> None:
    out = run_scenario(
        sarama_scenarios, broker, "admin-delete-records", topic=unique("sar-delrec")
    )
    assert out["created"] is None and out["deleted"] is None
    check_delete_records(
        out, sorted(out["consumed"]["ok"], key=lambda r: (r["partition"], r["offset"]))
    )


def test_admin_groups(
    sarama_scenarios: Path, broker: BrokerProcess, unique: Callable[[str], str]
) -> None:
    group, group2 = unique("sar-g1"), unique("sar-g2")
    out = run_scenario(
        sarama_scenarios,
        broker,
        "admin-groups",
        topic=unique("sar-groups"),
        group=group,
        group2=group2,
    )
    assert out["consumedWhileRunning"] == 10
    assert out["describedRunning"]["ok"] == [
        {
            "state": "Stable",
            "protocolType": "consumer",
            "protocol": "range",
            "members": 1,
            "errorCode": 0,
        }
    ]
    assert out["deleteRunning"]["ok"] == {group: NON_EMPTY_GROUP}
    assert out["describedEmpty"]["ok"] == [
        {
            "state": "Empty",
            "protocolType": "consumer",
            "protocol": "",
            "members": 0,
            "errorCode": 0,
        }
    ]
    assert out["listed"]["ok"] == {group: "consumer"}
    assert out["committed"]["ok"] == {"0": 10}
    assert out["setOffsets"] == {"ok": None} and out["afterSet"]["ok"] == {"0": 3}
    # group2 exists only through an offset committed outside any generation: no protocol type.
    assert out["setOffsets2"] == {"ok": None}
    assert out["listedBoth"]["ok"] == {group: "consumer", group2: ""}
    assert out["deleted"]["ok"] == {group: 0, group2: 0}
    assert out["deleteMissing"]["ok"] == {f"{group}-never-existed": GROUP_ID_NOT_FOUND}
    assert out["listedAfterDelete"]["ok"] == {}
    assert out["committedAfterDelete"]["ok"] == {"0": -1}


@pytest.mark.parametrize("codec", CODECS)
def test_produce_and_consume_with_codec(
    sarama_scenarios: Path,
    broker: BrokerProcess,
    unique: Callable[[str], str],
    codec: str,
) -> None:
    """sarama 1.22 sends zstd in Produce v3 and reads it with Fetch v4; Kafka (2.1+) refuses
    zstd below Produce v7 / Fetch v10, flowbus accepts it (see docs/broker.md)."""
    topic = unique(f"sar-{codec}")
    out = run_scenario(
        sarama_scenarios,
        broker,
        "produce-codec",
        topic=topic,
        codec=codec,
        count=CODEC_RECORDS,
    )
    assert "sendError" not in out, out["sendError"]
    assert sorted(out["acks"]) == sorted(
        f"{p} {o}" for p in (0, 1) for o in range(CODEC_RECORDS // 2)
    )
    check_codec_round_trip(out, out["consumed"]["ok"])
    check_codec_stored_and_readable(
        broker.data_dir, broker.bootstrap, topic, codec, out["produced"]
    )


def test_idempotent_producer(
    sarama_scenarios: Path, broker: BrokerProcess, unique: Callable[[str], str]
) -> None:
    topic = unique("sar-idem")
    out = run_scenario(sarama_scenarios, broker, "idempotent", topic=topic)
    assert "sendError" not in out, out["sendError"]
    assert out["acks"] == [f"0 {i}" for i in range(50)]
    consumed = sorted(out["consumed"]["ok"], key=lambda r: r["offset"])
    assert [(r["offset"], r["value"]) for r in consumed] == list(
        enumerate(out["produced"])
    )
    check_idempotent_batches(broker.data_dir, topic, 50)


def test_group_member_leaves_and_restart_resumes(
    sarama_scenarios: Path, broker: BrokerProcess, unique: Callable[[str], str]
) -> None:
    topic, group = unique("sar-group"), unique("sar-group")
    out = run_scenario(sarama_scenarios, broker, "group", topic=topic, group=group)
    check_group_two_members(out)
    assert out["committedTwoMembers"] == {"ok": {"0": 20, "1": 20, "2": 20}}
    check_group_one_member(out)
    assert out["committedOneMember"] == {"ok": {"0": 30, "1": 30, "2": 30}}
    resumed = run_scenario(
        sarama_scenarios, broker, "group-resume", topic=topic, group=group
    )
    resumed["committedAtStart"] = resumed["committedAtStart"]["ok"]
    resumed["committedAtEnd"] = resumed["committedAtEnd"]["ok"]
    resumed["watermarks"] = resumed["watermarks"]["ok"]
    check_group_resumed(resumed, out["committedOneMember"]["ok"])


def test_offsets_by_timestamp(
    sarama_scenarios: Path, broker: BrokerProcess, unique: Callable[[str], str]
) -> None:
    out = run_scenario(
        sarama_scenarios, broker, "offsets-by-timestamp", topic=unique("sar-times")
    )
    check_offsets_by_timestamp(out, out["consumed"]["ok"], after_last=-1)
    assert out["watermarks"] == {"ok": {"0": {"low": 0, "high": 10}}}


def offsets_and_values(records: list[dict[str, Any]]) -> list[tuple[int, str]]:
    return sorted((r["offset"], r["value"]) for r in records)


def test_read_committed_hides_aborted_and_open_transactions(
    sarama_scenarios: Path, broker: BrokerProcess, unique: Callable[[str], str]
) -> None:
    """Fetch v4's last stable offset and aborted-transactions list, as sarama uses them."""
    topic = unique("sar-txn")
    admin = confluent_kafka.admin.AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([confluent_kafka.admin.NewTopic(topic, 1, 1)])[topic].result(
        timeout=20
    )
    producer = confluent_kafka.Producer(
        {"bootstrap.servers": broker.bootstrap, "transactional.id": unique("sar-txn")}
    )
    producer.init_transactions(20)

    def transaction(prefix: str, finish: str) -> None:
        producer.begin_transaction()
        for i in range(5):
            producer.produce(topic, value=f"{prefix}-{i}".encode(), partition=0)
        assert producer.flush(20) == 0
        if finish == "commit":
            producer.commit_transaction(20)
        elif finish == "abort":
            producer.abort_transaction(20)

    transaction("a", "commit")
    transaction("b", "abort")
    transaction("c", "commit")
    transaction("d", "leave open")
    # a at 0-4, its marker at 5; b (aborted) 6-10, 11; c 12-16, 17; d 18-22, its marker at 23.
    a = [(i, f"a-{i}") for i in range(5)]
    b = [(6 + i, f"b-{i}") for i in range(5)]
    c = [(12 + i, f"c-{i}") for i in range(5)]
    d = [(18 + i, f"d-{i}") for i in range(5)]
    while_open = run_scenario(
        sarama_scenarios,
        broker,
        "read",
        topic=topic,
        count=10,
        isolation="read_committed",
    )
    assert offsets_and_values(while_open["consumed"]["ok"]) == a + c
    producer.commit_transaction(20)
    committed = run_scenario(
        sarama_scenarios,
        broker,
        "read",
        topic=topic,
        count=15,
        isolation="read_committed",
    )
    assert offsets_and_values(committed["consumed"]["ok"]) == a + c + d
    assert committed["watermarks"] == {"ok": {"0": {"low": 0, "high": 24}}}
    uncommitted = run_scenario(
        sarama_scenarios,
        broker,
        "read",
        topic=topic,
        count=20,
        isolation="read_uncommitted",
    )
    assert offsets_and_values(uncommitted["consumed"]["ok"]) == a + b + c + d
