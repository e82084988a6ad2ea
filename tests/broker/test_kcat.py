"""kcat (librdkafka's command-line client): -L, -P and -C against a real broker process."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable

import pytest

from tests.support.broker_process import BrokerProcess

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat is not installed"),
]


def kcat(broker: BrokerProcess, *args: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        ["kcat", "-b", broker.bootstrap, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_list_produce_consume(
    broker: BrokerProcess, unique: Callable[[str], str]
) -> None:
    topic = unique("kcat")
    lines = [f"line {i}" for i in range(50)]
    kcat(broker, "-P", "-t", topic, stdin="\n".join(lines) + "\n")
    listing = kcat(broker, "-L")
    assert f'topic "{topic}" with 1 partitions' in listing
    assert "broker 0 at 127.0.0.1" in listing
    consumed = kcat(broker, "-C", "-t", topic, "-o", "beginning", "-e", "-q")
    assert consumed.splitlines() == lines
    keyed = kcat(broker, "-C", "-t", topic, "-o", "-5", "-e", "-q", "-f", "%o:%s\n")
    assert keyed.splitlines() == [f"{45 + i}:line {45 + i}" for i in range(5)]
