"""``flowbus worker --web HOST:PORT`` as a real process: its ``/metrics`` counts a workload sent
by a Kafka client to the worker's embedded broker (``--listen``), and a bad or busy address is
one line on stderr with a non-zero exit status."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
from pathlib import Path

import confluent_kafka
import pytest

from tests.support.broker_process import free_port
from tests.support.metrics import Samples, scrape

pytestmark = pytest.mark.timeout(120)

FLOWBUS = [sys.executable, "-m", "flowbus"]
RECORDS = 50
WAIT_S = 30.0

APP = textwrap.dedent(
    """
    from flowbus import App

    app = App("web-cli", topic_partitions=2, commit_interval_ms=100)
    orders = app.topic("orders")
    doubled = app.topic("doubled")
    app.stream(orders).map(lambda v: v * 2).to(doubled)
    """
)


def _scrape_when(url: str, ready: callable, what: str) -> Samples:  # type: ignore[valid-type]
    deadline = time.monotonic() + WAIT_S
    last: Samples | None = None
    while time.monotonic() < deadline:
        try:
            last = scrape(url)
        except (urllib.error.URLError, ConnectionError):
            last = None
        if last is not None and ready(last):
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last scrape:\n{last.text if last else None}")


def test_metrics_of_a_worker_process(tmp_path: Path) -> None:
    (tmp_path / "web_app.py").write_text(APP)
    kafka_port, web_port = free_port(), free_port()
    url = f"http://127.0.0.1:{web_port}/metrics"
    process = subprocess.Popen(
        [*FLOWBUS, "worker", "-A", "web_app:app", "--data-dir", str(tmp_path / "data"),
         "--listen", f"127.0.0.1:{kafka_port}", "--web", f"127.0.0.1:{web_port}"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        _scrape_when(url, lambda s: s.value("flowbus_worker_assigned_partitions") == 2, "the worker's assignment")
        producer = confluent_kafka.Producer({"bootstrap.servers": f"127.0.0.1:{kafka_port}"})
        for i in range(RECORDS):
            producer.produce("orders", str(i).encode(), key=str(i).encode())
        assert producer.flush(30) == 0

        def done(s: Samples) -> bool:
            lags = s.matching("flowbus_worker_consumer_lag", topic="orders")
            return (s.get("flowbus_worker_events_in_total", topic="orders") == RECORDS
                    and len(lags) == 2 and not any(lags.values()))

        samples = _scrape_when(url, done, f"{RECORDS} events processed and no lag")
        assert samples.value("flowbus_worker_processing_seconds_count", topic="orders") == RECORDS
        assert samples.value("flowbus_worker_end_to_end_latency_seconds_count", topic="orders") == RECORDS
        assert samples.value("flowbus_worker_events_out_total", topic="doubled") == RECORDS
        assert samples.value("flowbus_broker_topic_records_in_total", topic="orders") == RECORDS
        assert samples.value("flowbus_broker_connections_accepted_total") >= 1  # the --listen server
        assert samples.value("process_resident_memory_bytes") > 0
        # The dashboard's numbers: the worker joined its group with its web URL in its client id.
        import json
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/api/stats", timeout=10) as response:
            stats = json.loads(response.read())
        assert stats["web_url"] == f"http://127.0.0.1:{web_port}"
        assert stats["totals"]["events_in"] == RECORDS
        assert [m["client_id"].endswith(f"@http://127.0.0.1:{web_port}") for m in stats["group"]["members"]] == [True]
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert f"web server on http://127.0.0.1:{web_port}" in output


def test_bad_web_address_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "web_app.py").write_text(APP)
    result = subprocess.run([*FLOWBUS, "worker", "-A", "web_app:app", "--web", "nowhere"],
                            check=False, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "expected HOST:PORT" in result.stderr


def test_busy_web_port_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "web_app.py").write_text(APP)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [*FLOWBUS, "worker", "-A", "web_app:app", "--data-dir", str(tmp_path / "data"),
             "--web", f"127.0.0.1:{port}"],
            check=False, cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )
    assert result.returncode == 1, result.stderr
    assert f"cannot serve HTTP on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
