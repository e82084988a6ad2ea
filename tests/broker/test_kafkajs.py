"""KafkaJS (Node.js) against a real broker process: admin, every codec, idempotence, groups,
transactions and offsets by timestamp.

The scenarios live in tests/broker/kafkajs/scenarios.js; each test runs one with node and
asserts on the JSON it prints (shared checks: real_client_checks.py). The packages come from
package-lock.json through ``npm ci``, at most once per session and not at all while node_modules
matches the lock file. KafkaJS ships only gzip; snappy, LZ4 and zstd are codecs.js over pure-JS packages
(snappyjs, lz4js, zstd-codec as WebAssembly), so nothing is compiled at install time.

Needs node and npm (Debian's nodejs and npm; .ci/run installs them): the tests fail, never
skip, without them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
    read_with_librdkafka,
)
from tests.support.broker_process import BrokerProcess

pytestmark = pytest.mark.timeout(120)

KAFKAJS_DIR = Path(__file__).parent / "kafkajs"
SCENARIOS = KAFKAJS_DIR / "scenarios.js"
#: Written into node_modules after a successful ``npm ci``: the lock file it installed.
INSTALLED_STAMP = ".flowbus-installed-lock-sha256"
NPM_CI_TIMEOUT_S = 300
SCENARIO_TIMEOUT_S = 90


def lock_digest() -> str:
    return hashlib.sha256((KAFKAJS_DIR / "package-lock.json").read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def node() -> str:
    """The node binary, with the scenario packages installed (``npm ci`` when needed)."""
    node_path, npm_path = shutil.which("node"), shutil.which("npm")
    if node_path is None or npm_path is None:
        pytest.fail(
            "KafkaJS tests need node and npm: apt-get install nodejs npm (.ci/run does)"
        )
    stamp = KAFKAJS_DIR / "node_modules" / INSTALLED_STAMP
    digest = lock_digest()
    if not stamp.exists() or stamp.read_text().strip() != digest:
        # npm ci empties node_modules first, so a stale or half-written install never survives.
        install = subprocess.run(
            [npm_path, "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
            cwd=KAFKAJS_DIR,
            capture_output=True,
            text=True,
            timeout=NPM_CI_TIMEOUT_S,
            check=False,
        )
        if install.returncode != 0:
            pytest.fail(f"npm ci failed in {KAFKAJS_DIR}:\n{install.stderr[-3000:]}")
        stamp.write_text(digest + "\n")
    return node_path


def run_scenario(
    node: str, broker: BrokerProcess, scenario: str, **args: Any
) -> dict[str, Any]:
    """Run one scenario against ``broker``; returns the JSON it printed."""
    run = subprocess.run(
        [node, str(SCENARIOS), scenario, broker.bootstrap, json.dumps(args)],
        cwd=KAFKAJS_DIR,
        env=dict(os.environ, KAFKAJS_NO_PARTITIONER_WARNING="1"),
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


def kafkajs_version() -> str:
    lock = json.loads((KAFKAJS_DIR / "package-lock.json").read_text())
    return str(lock["packages"]["node_modules/kafkajs"]["version"])


def test_the_pinned_kafkajs_is_the_one_installed(node: str) -> None:
    installed = json.loads(
        (KAFKAJS_DIR / "node_modules" / "kafkajs" / "package.json").read_text()
    )
    assert installed["version"] == kafkajs_version() == "2.2.4"


def test_admin_create_describe_delete(
    node: str, broker: BrokerProcess, unique: Callable[[str], str]
) -> None:
    topic = unique("kjs-admin")
    out = run_scenario(node, broker, "admin-create-delete", topic=topic)
    assert out["created"] == {"ok": True}
    assert out["createdAgain"] == {
        "ok": False
    }  # KafkaJS's answer to TOPIC_ALREADY_EXISTS
    assert out["listed"] is True
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
    assert out["cluster"]["ok"] == {
        "brokers": [{"nodeId": 0, "host": broker.host, "port": broker.port}],
        "controller": 0,
    }
    assert out["deleted"] == {"ok": None}
    assert out["listedAfterDelete"] == {"ok": False}


def test_admin_create_partitions(
    node: str, broker: BrokerProcess, unique: Callable[[str], str]
) -> None:
    topic = unique("kjs-parts")
    out = run_scenario(node, broker, "admin-partitions", topic=topic)
    assert out["created"] == {"ok": True}
    assert out["grow"] == {"ok": None}
    assert out["partitions"] == {"ok": 3}
    assert out["shrink"]["error"]["type"] == "INVALID_PARTITIONS"
    assert (
        out["sent"]["ok"][0]["partition"] == 2
        and out["sent"]["ok"][0]["errorCode"] == 0
    )
    assert out["offsets"]["ok"] == {
        "0": {"low": 0, "high": 0},
        "1": {"low": 0, "high": 0},
        "2": {"low": 0, "high": 1},
    }


def test_admin_alter_configs(
    node: str, broker: BrokerProcess, unique: Callable[[str], str]
) -> None:
    topic = unique("kjs-configs")
    out = run_scenario(node, broker, "admin-configs", topic=topic)
    assert out["created"] == {"ok": True}
    for name in ("set", "validateOnly", "replace"):
        assert [r["errorCode"] for r in out[name]["ok"]["resources"]] == [0], name
    assert out["badValue"]["error"]["type"] == "INVALID_CONFIG"
    check_configs_replaced(out)


def test_admin_delete_records(
    node: str, broker: BrokerProcess, unique: Callable[[str], str]
) -> None:
    topic = unique("kjs-delrec")
    out = run_scenario(
        node, broker, "admin-delete-records", topic=topic, group=unique("kjs-delrec")
    )
    assert out["created"] == {"ok": True}
    assert out["deleted"] == {"ok": None}
    check_delete_records(out, out["consumed"]["ok"])


def test_admin_groups(
    node: str, broker: BrokerProcess, unique: Callable[[str], str]
) -> None:
    group, group2 = unique("kjs-g1"), unique("kjs-g2")
    out = run_scenario(
        node,
        broker,
        "admin-groups",
        topic=unique("kjs-groups"),
        group=group,
        group2=group2,
    )
    assert out["consumedWhileRunning"] == 10
    assert out["describedRunning"]["ok"] == [
        {
            "groupId": group,
            "state": "Stable",
            "protocolType": "consumer",
            "protocol": "RoundRobinAssigner",
            "members": 1,
            "errorCode": 0,
        }
    ]
    assert out["deleteRunning"]["error"]["groups"] == [
        {"groupId": group, "errorCode": 68, "type": "NON_EMPTY_GROUP"}
    ]
    assert out["describedEmpty"]["ok"] == [
        {
            "groupId": group,
            "state": "Empty",
            "protocolType": "consumer",
            "protocol": "",
            "members": 0,
            "errorCode": 0,
        }
    ]
    assert out["listed"]["ok"] == [{"groupId": group, "protocolType": "consumer"}]
    assert out["committed"]["ok"] == {"0": 10}
    # resetOffsets replaces the member's 10 with the "earliest" sentinel (-2), resolved when a
    # member starts; setOffsets, at the same time, commits 7 for a group that had no offsets.
    assert out["resetOffsets"] == {"ok": None}
    assert out["setOffsets2"] == {"ok": None}
    assert out["afterReset"]["ok"] == {"0": -2}
    assert out["afterSet2"]["ok"] == {"0": 7}
    assert sorted(g["groupId"] for g in out["listedBoth"]["ok"]) == sorted(
        [group, group2]
    )
    assert out["deleted"]["ok"] == [
        {"groupId": group, "errorCode": 0},
        {"groupId": group2, "errorCode": 0},
    ]
    assert out["deleteMissing"]["error"]["groups"][0]["type"] == "GROUP_ID_NOT_FOUND"
    assert out["listedAfterDelete"]["ok"] == []
    assert out["committedAfterDelete"]["ok"] == {"0": -1}


@pytest.mark.parametrize("codec", CODECS)
def test_produce_and_consume_with_codec(
    node: str, broker: BrokerProcess, unique: Callable[[str], str], codec: str
) -> None:
    topic = unique(f"kjs-{codec}")
    out = run_scenario(
        node,
        broker,
        "produce-codec",
        topic=topic,
        group=unique("kjs-codec"),
        codec=codec,
        count=CODEC_RECORDS,
    )
    assert sorted((r["partition"], r["baseOffset"]) for r in out["sendResults"]) == [
        (0, 0),
        (0, 50),
        (1, 0),
        (1, 50),
    ]
    assert {r["errorCode"] for r in out["sendResults"]} == {0}
    check_codec_round_trip(out, out["consumed"])
    check_codec_stored_and_readable(
        broker.data_dir, broker.bootstrap, topic, codec, out["produced"]
    )


def test_idempotent_producer(
    node: str, broker: BrokerProcess, unique: Callable[[str], str]
) -> None:
    topic = unique("kjs-idem")
    out = run_scenario(
        node, broker, "idempotent", topic=topic, group=unique("kjs-idem")
    )
    assert [r["baseOffset"] for r in out["sendResults"]] == [0, 10, 20, 30, 40]
    assert [(r["offset"], r["value"]) for r in out["consumed"]] == list(
        enumerate(out["produced"])
    )
    check_idempotent_batches(broker.data_dir, topic, 50)


def test_group_member_leaves_and_restart_resumes(
    node: str, broker: BrokerProcess, unique: Callable[[str], str]
) -> None:
    topic, group = unique("kjs-group"), unique("kjs-group")
    out = run_scenario(node, broker, "group", topic=topic, group=group)
    check_group_two_members(out)
    assert out["committedTwoMembers"] == {"0": 20, "1": 20, "2": 20}
    check_group_one_member(out)
    assert out["committedOneMember"] == {"0": 30, "1": 30, "2": 30}
    resumed = run_scenario(node, broker, "group-resume", topic=topic, group=group)
    check_group_resumed(resumed, out["committedOneMember"])


def offsets_and_values(records: list[dict[str, Any]]) -> list[tuple[int, str]]:
    return [(r["offset"], r["value"]) for r in records]


def test_transactions_and_read_committed(
    node: str, broker: BrokerProcess, unique: Callable[[str], str]
) -> None:
    topic = unique("kjs-txn")
    out = run_scenario(
        node,
        broker,
        "transactions",
        topic=topic,
        group=unique("kjs-txn"),
        offsetsGroup=unique("kjs-txn-offsets"),
        transactionalId=unique("kjs-txn"),
    )
    # a (commit) at 0-4, its marker at 5; b (abort) 6-10, 11; c (commit) 12-16, 17; d 18-22, 23.
    a = [(i, f"a-{i}") for i in range(5)]
    c = [(12 + i, f"c-{i}") for i in range(5)]
    committed_ac = a + c
    d = [(18 + i, f"d-{i}") for i in range(5)]
    b = [(6 + i, f"b-{i}") for i in range(5)]
    # While d is open the last stable offset stops before it; b is aborted: neither is seen.
    assert offsets_and_values(out["readCommittedWhileOpen"]) == committed_ac
    assert offsets_and_values(out["readCommittedAfterCommit"]) == committed_ac + d
    assert offsets_and_values(out["readUncommitted"]) == sorted(committed_ac + b + d)
    assert out["watermarks"] == {"0": {"low": 0, "high": 24}}
    # Offsets sent in a transaction: 7 from the committed one, the aborted one's 9 discarded.
    assert out["offsetsCommitted"] == {"ok": True}
    assert out["offsetsAborted"] == {"ok": True}
    assert out["groupOffsets"] == {"ok": {"0": 7}}
    # librdkafka agrees: read_committed sees a, c, d and e (committed with the offsets), not b or f.
    by_librdkafka = read_with_librdkafka(
        broker.bootstrap, topic, 16, isolation="read_committed"
    )
    expected = [value for _, value in committed_ac + d] + ["e-0"]
    assert [r["value"] for r in by_librdkafka] == expected


def test_offsets_by_timestamp(
    node: str, broker: BrokerProcess, unique: Callable[[str], str]
) -> None:
    out = run_scenario(
        node,
        broker,
        "offsets-by-timestamp",
        topic=unique("kjs-times"),
        group=unique("kjs-times"),
    )
    # Past the last record Kafka answers -1; KafkaJS reports the end offset instead.
    check_offsets_by_timestamp(out, out["consumed"], after_last=10)
    assert out["watermarks"] == {"0": {"low": 0, "high": 10}}
