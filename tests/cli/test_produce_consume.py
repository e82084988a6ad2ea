"""``flowbus produce`` and ``flowbus consume``, cross-checked with confluent-kafka and kcat on a
real broker, on embedded://, and as real ``python -m flowbus`` processes (stdin, SIGTERM, pipes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import confluent_kafka
import pytest

from tests.cli.conftest import Invoke
from tests.support.broker_process import BrokerProcess

pytestmark = pytest.mark.timeout(60)

FLOWBUS = [sys.executable, "-m", "flowbus"]


def _read_all(bootstrap: str, topic: str, count: int) -> list[tuple[bytes | None, bytes | None, int]]:
    """(key, value, partition) of ``count`` records, read by confluent-kafka outside any group."""
    consumer = confluent_kafka.Consumer({
        "bootstrap.servers": bootstrap, "group.id": "cross-check", "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    })
    meta = consumer.list_topics(topic, 10)
    consumer.assign([confluent_kafka.TopicPartition(topic, p, 0) for p in meta.topics[topic].partitions])
    out = []
    deadline = time.monotonic() + 20
    while len(out) < count and time.monotonic() < deadline:
        for m in consumer.consume(count, 0.2):
            assert m.error() is None, m.error()
            out.append((m.key(), m.value(), m.partition()))
    consumer.close()
    return out


def test_produce_with_keys_is_read_by_confluent_kafka_and_kcat(
    invoke: Invoke, kafka_url: str, broker: BrokerProcess, unique: Callable[[str], str]
) -> None:
    topic = unique("cli-produce")
    assert invoke("topics", "create", topic, "-p", "3", "--broker", kafka_url).exit_code == 0
    lines = "".join(f"user-{i % 4}:event {i}\n" for i in range(20)) + "no separator here\r\n\nk:v:with:colons"
    result = invoke("produce", topic, "--key-separator", ":", "--broker", kafka_url, input=lines)
    assert result.exit_code == 0, result.output
    assert "23 records sent to" in result.stderr

    records = _read_all(broker.bootstrap, topic, 23)
    assert len(records) == 23
    by_key: dict[bytes | None, set[int]] = {}
    for key, _, partition in records:
        by_key.setdefault(key, set()).add(partition)
    assert all(len(parts) == 1 for key, parts in by_key.items() if key is not None), "one key, one partition"
    pairs = {(k, v) for k, v, _ in records}
    assert (b"user-3", b"event 7") in pairs
    assert (None, b"no separator here") in pairs, "no separator: no key, and the \\r\\n is gone"
    assert (None, b"") in pairs, "an empty line is an empty record"
    assert (b"k", b"v:with:colons") in pairs, "only the first separator splits"

    kcat = subprocess.run(
        ["kcat", "-C", "-b", broker.bootstrap, "-t", topic, "-e", "-q", "-K", "\t", "-f", "%k\t%s\n"],
        capture_output=True, timeout=30, check=True,
    )
    assert b"user-3\tevent 7\n" in kcat.stdout and b"k\tv:with:colons\n" in kcat.stdout


def test_records_from_kcat_are_printed_by_flowbus_consume_in_a_subprocess(
    kafka_url: str, broker: BrokerProcess, unique: Callable[[str], str]
) -> None:
    topic = unique("cli-kcat")
    lines = b"".join(b"key-%d=value %d\n" % (i, i) for i in range(10))
    subprocess.run(["kcat", "-P", "-b", broker.bootstrap, "-t", topic, "-K", "="], input=lines, timeout=30, check=True)
    done = subprocess.run(
        [*FLOWBUS, "consume", topic, "--from-beginning", "--max", "10", "--print-key", "--key-separator", "=",
         "--broker", kafka_url],
        capture_output=True, timeout=30, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.splitlines()) == sorted(lines.splitlines())
    assert b"consumed 10 records" in done.stderr


def test_consume_with_a_group_commits_what_it_printed(
    invoke: Invoke, kafka_url: str, unique: Callable[[str], str]
) -> None:
    topic, group = unique("cli-grp"), unique("cli-g")
    assert invoke("topics", "create", topic, "--broker", kafka_url).exit_code == 0
    invoke("produce", topic, "--broker", kafka_url, input="".join(f"{i}\n" for i in range(10)))
    first = invoke("consume", topic, "--group", group, "--from-beginning", "--max", "4", "--broker", kafka_url)
    assert first.exit_code == 0, first.output
    assert first.stdout.split() == ["0", "1", "2", "3"]
    rest = invoke("consume", topic, "-g", group, "--timeout-s", "2", "--broker", kafka_url)
    assert rest.stdout.split() == [str(i) for i in range(4, 10)], "the group resumes where the last run stopped"
    described = invoke("groups", "describe", group, "--broker", kafka_url)
    [row] = [line.split() for line in described.stdout.splitlines() if line.startswith(topic)]
    assert row[:5] == [topic, "0", "10", "10", "0"]


def test_without_from_beginning_only_new_records_are_printed(
    invoke: Invoke, kafka_url: str, broker: BrokerProcess, unique: Callable[[str], str]
) -> None:
    topic = unique("cli-new")
    assert invoke("topics", "create", topic, "--broker", kafka_url).exit_code == 0
    invoke("produce", topic, "--broker", kafka_url, input="old\n")
    consumer = subprocess.Popen(
        [*FLOWBUS, "consume", topic, "--max", "1", "--timeout-s", "20", "--broker", kafka_url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        producer = confluent_kafka.Producer({"bootstrap.servers": broker.bootstrap})
        deadline = time.monotonic() + 20
        while consumer.poll() is None and time.monotonic() < deadline:
            producer.produce(topic, b"new")  # until the consumer, once assigned, sees one
            producer.flush(5)
            time.sleep(0.3)
        out, err = consumer.communicate(timeout=20)
    finally:
        if consumer.poll() is None:
            consumer.kill()
    assert consumer.returncode == 0, err
    assert out == b"new\n"


def test_sigterm_stops_consume_cleanly(tmp_path: Path, unique: Callable[[str], str]) -> None:
    data = tmp_path / "data"
    url = f"embedded://{data}"
    subprocess.run([*FLOWBUS, "topics", "create", "lines", "--broker", url], check=True, capture_output=True, timeout=30)
    subprocess.run([*FLOWBUS, "produce", "lines", "--broker", url], input=b"x\ny\n", check=True, capture_output=True, timeout=30)
    consumer = subprocess.Popen(
        [*FLOWBUS, "consume", "lines", "--from-beginning", "--group", "g", "--broker", url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert consumer.stdout is not None
    assert consumer.stdout.readline() == b"x\n" and consumer.stdout.readline() == b"y\n"
    consumer.send_signal(signal.SIGTERM)
    _, err = consumer.communicate(timeout=20)
    assert consumer.returncode == 0, err
    assert b"consumed 2 records" in err and b"Traceback" not in err
    described = subprocess.run(
        [*FLOWBUS, "groups", "describe", "g", "--broker", url], capture_output=True, timeout=30, check=True
    )
    assert [b"lines", b"0", b"2", b"2", b"0"] in [line.split()[:5] for line in described.stdout.splitlines()]


def test_closed_pipe_ends_consume_quietly(tmp_path: Path) -> None:
    url = f"embedded://{tmp_path / 'data'}"
    subprocess.run([*FLOWBUS, "topics", "create", "many", "--broker", url], check=True, capture_output=True, timeout=30)
    lines = b"".join(b"line %d\n" % i for i in range(5000))
    subprocess.run([*FLOWBUS, "produce", "many", "--broker", url], input=lines, check=True, capture_output=True, timeout=30)
    shell = f"{' '.join(FLOWBUS)} consume many --from-beginning --broker {url} | head -n 2"
    done = subprocess.run(["bash", "-o", "pipefail", "-c", shell], capture_output=True, timeout=30, check=False)
    assert done.stdout == b"line 0\nline 1\n"
    assert b"Traceback" not in done.stderr and b"BrokenPipe" not in done.stderr, done.stderr


def test_embedded_round_trip_and_errors(invoke: Invoke, tmp_path: Path) -> None:
    url = f"embedded://{tmp_path / 'data'}"
    unknown = invoke("produce", "nope", "--broker", url, input="x\n")
    assert unknown.exit_code == 1 and "no flowbus data" in unknown.stderr
    assert invoke("topics", "create", "t", "-p", "2", "--broker", url).exit_code == 0
    unknown = invoke("produce", "nope", "--broker", url, input="x\n")
    assert unknown.exit_code == 1 and "unknown topic 'nope'" in unknown.stderr
    assert invoke("consume", "nope", "--max", "1", "--broker", url).exit_code == 1
    bad_partition = invoke("produce", "t", "--partition", "2", "--broker", url, input="x\n")
    assert bad_partition.exit_code == 1 and "no partition 2" in bad_partition.stderr

    text = "".join(f"k{i}\tv{i}\n" for i in range(50))
    produced = invoke("produce", "t", "-K", "\t", "--broker", url, input=text)
    assert produced.exit_code == 0 and "50 records sent" in produced.stderr
    consumed = invoke("consume", "t", "--from-beginning", "--print-key", "--max", "50", "--broker", url)
    assert consumed.exit_code == 0, consumed.output
    assert sorted(consumed.stdout.splitlines()) == sorted(text.splitlines())
    idle = invoke("consume", "t", "--timeout-s", "0.5", "--broker", url)
    assert idle.exit_code == 0 and idle.stdout == "" and "consumed 0 records" in idle.stderr


def test_binary_values_pass_through_unchanged(invoke: Invoke, tmp_path: Path) -> None:
    url = f"embedded://{tmp_path / 'data'}"
    invoke("topics", "create", "bin", "--broker", url)
    payload = bytes(range(256)).replace(b"\n", b"").replace(b"\r", b"")
    assert invoke("produce", "bin", "--broker", url, input=payload + b"\n").exit_code == 0
    consumed = invoke("consume", "bin", "--from-beginning", "--max", "1", "--broker", url)
    assert consumed.stdout_bytes == payload + b"\n"


def test_worker_honours_flowbus_broker(tmp_path: Path) -> None:
    """``flowbus worker`` reads $FLOWBUS_BROKER like the other commands (and --data-dir beats it)."""
    (tmp_path / "tiny_app.py").write_text(
        "from flowbus import App\n"
        "app = App('tiny', error_policy='stop')\n"
        "numbers = app.topic('numbers')\n"
        "@app.agent(numbers)\n"
        "async def explode(stream):\n"
        "    async for n in stream:\n"
        "        raise RuntimeError(n)\n"
        "@app.task\n"
        "async def feed():\n"
        "    await numbers.send(7)\n"
    )
    env = dict(os.environ, FLOWBUS_BROKER=f"embedded://{tmp_path / 'from-env'}")
    done = subprocess.run(
        [*FLOWBUS, "worker", "-A", "tiny_app:app"], cwd=tmp_path, env=env, capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 1, done.stderr  # the stop policy ends the run
    assert (tmp_path / "from-env").is_dir() and not (tmp_path / "flowbus-data").exists()
    listed = subprocess.run(
        [*FLOWBUS, "topics", "list"], cwd=tmp_path, env=env, capture_output=True, timeout=30, check=True
    )
    assert b"numbers" in listed.stdout.split()


def test_a_line_is_sent_as_soon_as_it_is_written(
    invoke: Invoke, kafka_url: str, broker: BrokerProcess, unique: Callable[[str], str]
) -> None:
    """Interactive use: stdin still open, the record is already on the broker."""
    topic = unique("cli-live")
    assert invoke("topics", "create", topic, "--broker", kafka_url).exit_code == 0
    producer = subprocess.Popen(
        [*FLOWBUS, "produce", topic, "--broker", kafka_url], stdin=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert producer.stdin is not None
    try:
        producer.stdin.write(b"first\n")
        producer.stdin.flush()
        assert _read_all(broker.bootstrap, topic, 1) == [(None, b"first", 0)]
        producer.stdin.write(b"second")  # no newline before EOF: still a record
        producer.stdin.close()
        assert producer.wait(20) == 0
    finally:
        if producer.poll() is None:
            producer.kill()
    assert producer.stderr is not None and b"2 records sent" in producer.stderr.read()


def test_sigterm_while_stdin_is_open_ends_produce_cleanly(
    invoke: Invoke, kafka_url: str, broker: BrokerProcess, unique: Callable[[str], str]
) -> None:
    topic = unique("cli-term")
    assert invoke("topics", "create", topic, "--broker", kafka_url).exit_code == 0
    producer = subprocess.Popen(
        [*FLOWBUS, "produce", topic, "--broker", kafka_url], stdin=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert producer.stdin is not None and producer.stderr is not None
    try:
        producer.stdin.write(b"only line\n")
        producer.stdin.flush()
        assert _read_all(broker.bootstrap, topic, 1) == [(None, b"only line", 0)]
        producer.send_signal(signal.SIGTERM)  # stdin still open, as in a terminal
        assert producer.wait(20) == 0
    finally:
        if producer.poll() is None:
            producer.kill()
        producer.stdin.close()
    err = producer.stderr.read()
    assert b"1 records sent" in err and b"Fatal" not in err and b"Traceback" not in err, err


def test_long_lines_span_reads_and_have_a_limit(
    invoke: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flowbus.cli import produce as produce_module

    url = f"embedded://{tmp_path / 'data'}"
    invoke("topics", "create", "long", "--broker", url)
    long_line = b"x" * 300_000  # several 64 KiB reads
    assert invoke("produce", "long", "--broker", url, input=b"short\n" + long_line + b"\nend").exit_code == 0
    consumed = invoke("consume", "long", "--from-beginning", "--max", "3", "--broker", url)
    assert consumed.stdout_bytes == b"short\n" + long_line + b"\nend\n"

    monkeypatch.setattr(produce_module, "LINE_BYTES_MAX", 100_000)
    too_long = invoke("produce", "long", "--broker", url, input=long_line + b"\n")
    assert too_long.exit_code == 1 and "longer than 100000 bytes" in too_long.stderr


def test_print_headers_prints_them_first_as_kafkas_console_consumer_does(invoke: Invoke, tmp_path: Path) -> None:
    import asyncio

    from flowbus.transports.base import TopicSpec
    from flowbus.transports.embedded import EmbeddedTransport

    url = f"embedded://{tmp_path / 'data'}"

    async def write() -> None:
        transport = EmbeddedTransport(url)
        await transport.start()
        await transport.create_topics([TopicSpec("h", 1)])
        producer = transport.producer()
        await producer.send("h", b"v1", b"k1", headers=(("trace", b"abc"), ("empty", b"")))
        await producer.send("h", b"v2", None)
        await producer.close()
        await transport.close()

    asyncio.run(write())
    result = invoke("consume", "h", "--from-beginning", "-n", "2", "--print-headers", "--broker", url)
    assert result.exit_code == 0, result.output
    assert result.stdout == "trace:abc,empty:\tv1\nNO_HEADERS\tv2\n"
    result = invoke("consume", "h", "--from-beginning", "-n", "2", "--print-headers", "--key-separator", "|",
                    "--broker", url)
    assert result.stdout == "trace:abc,empty:|k1|v1\nNO_HEADERS||v2\n"


def test_a_group_consume_into_head_commits_nothing_head_dropped(tmp_path: Path) -> None:
    """``| head -2``: the batch fits in the pipe and head reads it whole, prints two lines and
    exits; the records it dropped were not written out, so they are not committed."""
    url = f"embedded://{tmp_path / 'data'}"
    subprocess.run([*FLOWBUS, "topics", "create", "small", "--broker", url], check=True, capture_output=True, timeout=30)
    lines = b"".join(b"%d\n" % i for i in range(1000))
    subprocess.run([*FLOWBUS, "produce", "small", "--broker", url], input=lines, check=True, capture_output=True, timeout=30)
    shell = f"{' '.join(FLOWBUS)} consume small --group g --from-beginning --broker {url} | head -n 2"
    done = subprocess.run(["bash", "-c", shell], capture_output=True, timeout=60, check=False)
    assert done.stdout == b"0\n1\n"
    assert b"Traceback" not in done.stderr, done.stderr
    described = subprocess.run([*FLOWBUS, "groups", "describe", "g", "--broker", url], capture_output=True,
                               timeout=30, check=False)
    rows = [line.split() for line in described.stdout.splitlines() if line.startswith(b"small")]
    committed = [int(row[2]) for row in rows if row[2] != b"-"]
    assert all(offset <= 2 for offset in committed), described.stdout

    # A reader that reads everything gets everything committed.
    shell = f"{' '.join(FLOWBUS)} consume small --group g2 --from-beginning --timeout-s 1 --broker {url} | wc -l"
    done = subprocess.run(["bash", "-c", shell], capture_output=True, timeout=60, check=True)
    assert done.stdout.strip() == b"1000"
    described = subprocess.run([*FLOWBUS, "groups", "describe", "g2", "--broker", url], capture_output=True,
                               timeout=30, check=True)
    assert [b"small", b"0", b"1000", b"1000", b"0"] in [line.split()[:5] for line in described.stdout.splitlines()]
