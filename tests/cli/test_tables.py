"""``flowbus tables list|get`` against a real ``flowbus worker`` process counting words into a
RocksDB table: read while the worker holds its databases, then again after it stopped.

The worker serves its embedded broker on ``--listen`` so this test produces with confluent-kafka and
the commands reach the changelogs over TCP, as an operator would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import confluent_kafka
import pytest
from click.testing import Result

from flowbus.state.errors import StateError, StoreOpenError
from flowbus.state.rocksdb.database import RocksDBBackend, list_stores, open_rocksdb_read_only
from flowbus.transports.partitioner import partition_for_key
from tests.cli.conftest import Invoke
from tests.support.broker_process import free_port

pytestmark = pytest.mark.timeout(90)

WAIT_S = 30.0
"""Bound on every wait for the worker (start, commits, stop)."""
POLL_INTERVAL_S = 0.1
WORDS = ["apple", "banana", "apple", "cherry", "apple", "banana", "date", "elderberry", "fig", "apple", "grape"]
APP_MODULE = textwrap.dedent(
    """
    from flowbus import App

    app = App("wc", broker={broker!r}, commit_interval_ms=100)
    words = app.topic("words", key_type=str, value_type=str, value_serializer="raw", partitions=2)
    counts = app.Table("counts", default=int, key_type=str, value_type=int)
    places = app.GlobalTable("places", key_type=str)

    @app.agent(words)
    async def count(stream):
        async for word in stream:      # records keyed by the word
            counts[word] += 1
    """
)


@pytest.fixture
def app_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A word-count app on ``embedded://<tmp>/data``, importable from the cwd under a unique name."""
    name = f"tables_app_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(APP_MODULE.format(broker=f"embedded://{tmp_path / 'data'}"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FLOWBUS_STATE_DIR", raising=False)
    yield f"{name}:app"
    sys.modules.pop(name, None)


def _start_worker(tmp_path: Path, app_spec: str, port: int) -> subprocess.Popen[bytes]:
    log = open(tmp_path / "worker.log", "ab")  # noqa: SIM115 - the child owns it
    return subprocess.Popen(
        [sys.executable, "-m", "flowbus", "worker", "-A", app_spec, "-l", "info", "--listen", f"127.0.0.1:{port}"],
        cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _wait_for_log(log_path: Path, text: str, worker: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not log_path.exists() or text not in log_path.read_text():
        assert worker.poll() is None, log_path.read_text() if log_path.exists() else "no log"
        assert time.monotonic() < deadline, f"no {text!r} in the worker's log"
        time.sleep(POLL_INTERVAL_S)  # waiting on a child process's log file


def _wait_for_output(run: Callable[[], Result], expected: str, what: str) -> Result:
    """Run a command until it prints ``expected`` (the worker commits every 100 ms)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        result = run()
        if result.exit_code == 0 and result.stdout.strip() == expected:
            return result
        assert time.monotonic() < deadline, f"{what}: still {result.exit_code} {result.output!r}"
        time.sleep(POLL_INTERVAL_S)  # the worker's next commit


def _row(stdout: str, table: str) -> list[str]:
    return next(line.split() for line in stdout.splitlines() if line.split()[:1] == [table])


def test_list_and_get_while_the_worker_runs_and_after_it_stops(
    invoke: Invoke, app_module: str, tmp_path: Path
) -> None:
    port = free_port()
    url = f"kafka://127.0.0.1:{port}"
    counts = Counter(WORDS)
    assert {partition_for_key(w.encode(), 2) for w in counts} == {0, 1}, "the words must cover both partitions"
    worker = _start_worker(tmp_path, app_module, port)
    try:
        # "assigned" comes after the worker created its topics (words with 2 partitions).
        _wait_for_log(tmp_path / "worker.log", "assigned", worker)
        # Kafka's Java partitioner (murmur2), which the table's partitioning follows.
        producer = confluent_kafka.Producer({"bootstrap.servers": f"127.0.0.1:{port}", "partitioner": "murmur2_random"})
        for word in WORDS:
            producer.produce("words", word.encode(), word.encode())
        producer.produce("wc-places-changelog", b'"Paris"', b"fr")
        assert producer.flush(10) == 0

        def get(key: str, *args: str) -> Result:
            return invoke("tables", "get", "-A", app_module, "counts", key, "--broker", url, *args)

        for word, count in counts.items():
            _wait_for_output(partial(get, word, "--from", "changelog"), str(count), f"changelog {word}")
            _wait_for_output(partial(get, word), str(count), f"local {word}")
        assert get("apple", "--raw").stdout.strip() == "b'4'"

        missing = get("durian")
        assert missing.exit_code == 1 and missing.stdout == ""
        assert "not found" in missing.stderr and "partition-" in missing.stderr
        missing = get("durian", "--from", "changelog")
        assert missing.exit_code == 1 and "not found" in missing.stderr

        for source in ("local", "changelog"):
            place = _wait_for_output(
                partial(invoke, "tables", "get", "-A", app_module, "places", "fr", "--from", source, "--broker", url),
                '"Paris"', f"global table from {source}",
            )
            assert place.exit_code == 0

        listed = invoke("tables", "list", "-A", app_module, "--broker", url)
        assert listed.exit_code == 0, listed.output
        assert _row(listed.stdout, "counts") == [
            "counts", "table", "raw:str", "json:int", "wc-counts-changelog", "2", _row(listed.stdout, "counts")[6],
            "0,1", "of", "2",
        ]
        assert 0 < int(_row(listed.stdout, "counts")[6]) <= len(WORDS)
        assert _row(listed.stdout, "places") == [
            "places", "global", "raw:str", "json", "wc-places-changelog", "1", "1", "0", "of", "1",
        ]

        # Without --broker the app's own broker is the embedded data dir the worker holds: the
        # partition count then comes from the local directory names, with a note saying so.
        fallback = invoke("tables", "get", "-A", app_module, "counts", "apple")
        assert fallback.exit_code == 0 and fallback.stdout.strip() == "4", fallback.output
        assert "from the local directories" in fallback.stderr
        unreachable = invoke("tables", "list", "-A", app_module)
        assert unreachable.exit_code == 0
        assert _row(unreachable.stdout, "counts")[5:8] == ["unreachable", "unreachable", "0,1"]
        assert "Traceback" not in unreachable.output

        worker.send_signal(signal.SIGTERM)
        assert worker.wait(WAIT_S) == 0, (tmp_path / "worker.log").read_text()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(WAIT_S)

    # The databases are closed now; the app's embedded broker is free for the command to open.
    for word, count in counts.items():
        after = invoke("tables", "get", "-A", app_module, "counts", word)
        assert after.exit_code == 0 and after.stdout.strip() == str(count), after.output
    gone = invoke("tables", "get", "-A", app_module, "counts", "apple", "--from", "changelog",
                  "--broker", url, "--timeout-s", "1")
    assert gone.exit_code == 1 and gone.stderr.startswith("Error: ") and len(gone.stderr.splitlines()) == 1
    unknown = invoke("tables", "get", "-A", app_module, "nope", "x")
    assert unknown.exit_code == 1 and "has no table 'nope' (its tables: counts, places)" in unknown.stderr


def test_a_read_only_open_never_writes_and_sees_what_the_writer_logged(tmp_path: Path) -> None:
    """The reader sees WAL-logged writes of a database open for writing (the worker's commits),
    not restore writes made without the WAL until they are flushed, and refuses to write."""
    with pytest.raises(StoreOpenError, match="no database here"):
        open_rocksdb_read_only(tmp_path / "absent")
    assert not (tmp_path / "absent").exists(), "a reader must not create a database"

    backend = RocksDBBackend()
    writer = backend.open(tmp_path / "db", ["counts"])
    try:
        writer.write({"counts": {b"apple": b"1"}}, {b"changelog:counts": b"\x00" * 7 + b"\x01"})
        writer.write({"counts": {b"banana": b"2"}}, bulk=True)
        reader = open_rocksdb_read_only(tmp_path / "db")
        try:
            assert reader.stores() == ["counts"] == list_stores(tmp_path / "db")
            assert reader.get("counts", b"apple") == b"1"
            assert reader.get("counts", b"banana") is None, "bulk writes skip the WAL until flushed"
            with pytest.raises(StateError, match="read-only"):
                reader.write({"counts": {b"apple": b"2"}})
        finally:
            reader.close()
        assert not reader.secondary_dir.exists()
        writer.write({"counts": {b"cherry": b"3"}})  # flushes the bulk writes first
        reader = open_rocksdb_read_only(tmp_path / "db")
        try:
            assert list(reader.items("counts")) == [(b"apple", b"1"), (b"banana", b"2"), (b"cherry", b"3")]
        finally:
            reader.close()
    finally:
        backend.close()
