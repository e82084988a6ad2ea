"""Burrow, LinkedIn's lag monitor, reads ``__consumer_offsets`` and reports a group's lag correctly.

Burrow decodes the committed-offset records itself (key v0/v1, value v0/v1/v3), so it is the test
that flowbus's records are Kafka's: with values labelled v1 in v3's layout (the old flowbus
format) it dropped every commit and reported no lag at all (issue 12, items 3 and 5).

Burrow 1.x keeps its own coordination in ZooKeeper, so the test runs Debian's ``zookeeper``
(standalone, on a free 127.0.0.1 port) next to Debian's ``burrow`` and a ``flowbus broker``.
Both packages are installed by ``.ci/run``; without them the test is skipped.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import confluent_kafka
import confluent_kafka.admin as ck_admin
import pytest

from tests.support.broker_process import BrokerProcess, free_port

BURROW = shutil.which("Burrow") or "/usr/bin/Burrow"
ZOOKEEPER_CLASSPATH = "/etc/zookeeper/conf:/usr/share/java/zookeeper.jar"
JAVA = shutil.which("java")

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        not Path(BURROW).exists() or JAVA is None or not Path("/usr/share/java/zookeeper.jar").exists(),
        reason="needs Debian's burrow and zookeeper packages (.ci/run installs them)",
    ),
]

#: Burrow's name for the flowbus cluster in its config and HTTP paths.
CLUSTER = "flowbus"


def wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"exited early:\n{log.read_text(errors='replace')[-3000:]}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"nothing listens on {port}:\n{log.read_text(errors='replace')[-3000:]}")


def wait_for_zookeeper(port: int, process: subprocess.Popen[bytes], log: Path, timeout_s: float = 30) -> None:
    """ZooKeeper binds its port before it serves: wait until ``srvr`` (the one four-letter
    command enabled by default) reports a mode, or Burrow's first session is refused."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"exited early:\n{log.read_text(errors='replace')[-3000:]}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                sock.sendall(b"srvr")
                if b"Mode:" in sock.recv(4096):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"ZooKeeper never served:\n{log.read_text(errors='replace')[-3000:]}")


def stop(process: subprocess.Popen[bytes]) -> None:
    """End a process this test started (SIGTERM, then SIGKILL)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@pytest.fixture
def zookeeper(tmp_path: Path) -> Iterator[int]:
    """A standalone ZooKeeper on a free port, for Burrow's own coordination; yields the port."""
    port = free_port()
    config = tmp_path / "zoo.cfg"
    config.write_text(
        f"tickTime=2000\ndataDir={tmp_path / 'zookeeper'}\nclientPort={port}\n"
        "clientPortAddress=127.0.0.1\nadmin.enableServer=false\n"
    )
    log = tmp_path / "zookeeper.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(JAVA), "-cp", ZOOKEEPER_CLASSPATH, "org.apache.zookeeper.server.ZooKeeperServerMain", str(config)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    try:
        wait_for_zookeeper(port, process, log)
        yield port
    finally:
        stop(process)


class Burrow:
    """A Burrow process watching one broker; :meth:`get` calls its HTTP API."""

    def __init__(self, workdir: Path, zookeeper_port: int, bootstrap: str) -> None:
        self.port = free_port()
        self.log = workdir / "burrow.log"
        config_dir = workdir / "burrow"
        config_dir.mkdir()
        # kafka-version 2.0.0: Burrow's sarama then fetches with RecordBatch v2 (Fetch v4+).
        (config_dir / "burrow.toml").write_text(f"""
[general]
pidfile="{workdir / 'burrow.pid'}"
[logging]
level="info"
[zookeeper]
servers=["127.0.0.1:{zookeeper_port}"]
timeout=6
root-path="/burrow"
[client-profile.test]
client-id="burrow-test"
kafka-version="2.0.0"
[cluster.{CLUSTER}]
class-name="kafka"
servers=["{bootstrap}"]
client-profile="test"
topic-refresh=2
offset-refresh=1
[consumer.{CLUSTER}]
class-name="kafka"
cluster="{CLUSTER}"
servers=["{bootstrap}"]
client-profile="test"
group-whitelist=""
[httpserver.default]
address="127.0.0.1:{self.port}"
[storage.default]
class-name="inmemory"
workers=2
intervals=10
expire-group=604800
min-distance=1
""")
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                [BURROW, "-config-dir", str(config_dir)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=workdir,
            )
        wait_for_port(self.port, self.process, self.log)

    def get(self, path: str) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as response:
                return dict(json.loads(response.read()))
        except urllib.error.HTTPError as exc:  # Burrow answers 404 for what it does not know yet
            return dict(json.loads(exc.read() or b"{}"))

    def wait_for(self, path: str, ready: Callable[[dict[str, Any]], bool], timeout_s: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            answer = self.get(path)
            if ready(answer):
                return answer
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"Burrow never answered {path} as expected; last {answer}\n"
                    f"{self.log.read_text(errors='replace')[-4000:]}"
                )
            time.sleep(0.5)


def test_burrow_reports_a_groups_lag_per_partition(
    fresh_broker: BrokerProcess, zookeeper: int, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    topic, group = unique("burrow"), unique("burrow-g")
    admin = ck_admin.AdminClient({"bootstrap.servers": fresh_broker.bootstrap})
    admin.create_topics([ck_admin.NewTopic(topic, 2, 1)])[topic].result(10)
    producer = confluent_kafka.Producer({"bootstrap.servers": fresh_broker.bootstrap})
    for i in range(16):
        producer.produce(topic, b"m%d" % i, partition=0 if i < 10 else 1)
    producer.flush(10)

    burrow = Burrow(tmp_path, zookeeper, fresh_broker.bootstrap)
    try:
        # Burrow drops commits for partitions whose log end it has not fetched yet.
        burrow.wait_for(f"/v3/kafka/{CLUSTER}/topic/{topic}", lambda a: a.get("offsets") == [10, 6])

        consumer = confluent_kafka.Consumer({
            "bootstrap.servers": fresh_broker.bootstrap, "group.id": group,
            "enable.auto.commit": False, "auto.offset.reset": "earliest",
        })
        consumer.subscribe([topic])
        deadline = time.monotonic() + 30
        while not consumer.assignment():
            assert time.monotonic() < deadline, "the consumer never got an assignment"
            consumer.poll(0.2)
        committed = {0: 3, 1: 2}
        consumer.commit(
            offsets=[confluent_kafka.TopicPartition(topic, p, o) for p, o in committed.items()],
            asynchronous=False,
        )
        ends = {p: consumer.get_watermark_offsets(confluent_kafka.TopicPartition(topic, p), 10)[1] for p in committed}
        truth = {p: ends[p] - committed[p] for p in committed}
        assert truth == {0: 7, 1: 4}

        def complete(answer: dict[str, Any]) -> bool:
            partitions = (answer.get("status") or {}).get("partitions") or []
            return len(partitions) == 2 and all(p.get("end") for p in partitions)

        answer = burrow.wait_for(f"/v3/kafka/{CLUSTER}/consumer/{group}/lag", complete)
        partitions = answer["status"]["partitions"]
        assert {p["partition"]: p["end"]["offset"] for p in partitions} == committed
        assert {p["partition"]: p["current_lag"] for p in partitions} == truth
        assert answer["status"]["totallag"] == sum(truth.values())
        consumer.close()
    finally:
        stop(burrow.process)
