"""A corrupt batch in the middle of a partition, against a real broker and confluent-kafka.

Records are produced across several small segments, the broker is stopped (cleanly or with
SIGKILL), one batch of a middle segment is damaged on disk, and the broker is started again.
Everything before the damage must be readable, the damaged offsets must give the client an
error (CORRUPT_MESSAGE, which librdkafka reports as INVALID_MSG on every retried fetch), every
record after the damage must be reachable by seeking, and the broker must log the damage once.
"""

from __future__ import annotations

import asyncio
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import confluent_kafka
import confluent_kafka.admin
import pytest

from flowbus.broker.config import BrokerConfig
from flowbus.broker.core import (
    EARLIEST_TIMESTAMP,
    LATEST_TIMESTAMP,
    BrokerCore,
    FetchRequestPartition,
    NewTopic,
)
from flowbus.clock import ManualClock
from flowbus.protocol.error_codes import ErrorCode
from flowbus.records.builder import BatchBuilder
from flowbus.records.header import iter_batches
from flowbus.records.record import iter_records
from tests.support.broker_process import BrokerProcess

pytestmark = pytest.mark.timeout(120)

TOPIC = "damaged"
RECORDS = 400
#: Record timestamps: recent, so that time retention (7 days) leaves them alone.
TIMESTAMP_BASE_MS = int(time.time() * 1000) - 60_000
CLIENT = {"socket.connection.setup.timeout.ms": 5000, "reconnect.backoff.ms": 50, "log_level": 0}


def _produce(bootstrap: str) -> None:
    admin = confluent_kafka.admin.AdminClient({"bootstrap.servers": bootstrap})
    # Index entries every 256 bytes: after a clean shutdown the damage lies before a segment's
    # last entry, so opening does not read it and the first fetch that crosses it must cope.
    config = {"segment.bytes": "4096", "index.interval.bytes": "256"}
    topic = confluent_kafka.admin.NewTopic(TOPIC, 1, 1, config=config)
    admin.create_topics([topic])[TOPIC].result(10)
    producer = confluent_kafka.Producer(
        {"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0, "batch.num.messages": 4, **CLIENT}
    )
    failures: list[Any] = []
    for i in range(RECORDS):
        producer.produce(
            TOPIC,
            value=b"record-%05d" % i + b"." * 40,
            timestamp=TIMESTAMP_BASE_MS + i,
            on_delivery=lambda err, msg: failures.append(err) if err is not None else None,
        )
        if i % 4 == 3:
            producer.flush(10)
    assert producer.flush(20) == 0 and failures == []


def _segments(data_dir: Path) -> list[Path]:
    return sorted((data_dir / f"{TOPIC}-0").glob("*.log"))


def _damage_middle_segment(data_dir: Path, how: str) -> tuple[int, int]:
    """Damage the second batch of a middle segment; returns the offsets it held, ``(first, last)``."""
    segments = _segments(data_dir)
    assert len(segments) >= 5, segments
    middle = segments[len(segments) // 2]
    data = bytearray(middle.read_bytes())
    batches = list(iter_batches(data, verify_crc=False))
    position, header = batches[1]
    if how == "huge-length":
        struct.pack_into(">i", data, position + 8, 0x7FFFFF00)
    else:  # flipped payload bytes: the CRC no longer matches
        for i in range(70, 74):
            data[position + i] ^= 0xFF
    middle.write_bytes(bytes(data))
    return header.base_offset, header.last_offset


def _consumer(bootstrap: str) -> confluent_kafka.Consumer:
    return confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "reader",
            "enable.auto.commit": False,
            "fetch.error.backoff.ms": 100,
            **CLIENT,
        }
    )


def _read_until(
    consumer: confluent_kafka.Consumer, *, last_offset: int | None, timeout_s: float = 20.0
) -> tuple[list[int], Any]:
    """Offsets read until the first error (returned with them) or until ``last_offset`` arrives."""
    offsets: list[int] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:  # bounded by the deadline
        msg = consumer.poll(0.2)
        if msg is None:
            continue
        if msg.error() is not None:
            return offsets, msg.error()
        offsets.append(msg.offset())
        assert msg.value().startswith(b"record-%05d" % msg.offset())
        if msg.offset() == last_offset:
            break
    return offsets, None


@pytest.mark.parametrize(
    ("how", "stop"),
    [("huge-length", "clean"), ("flipped-bytes", "clean"), ("huge-length", "sigkill"), ("flipped-bytes", "sigkill")],
)
def test_reads_around_a_damaged_batch(tmp_path: Path, how: str, stop: str) -> None:
    data_dir = tmp_path / "data"
    with BrokerProcess(data_dir) as broker:
        _produce(broker.bootstrap)
        if stop == "sigkill":
            broker.kill()
            # As if the crash came before the first checkpoint: every segment is re-validated on
            # open, which used to delete everything after the damaged one.
            (data_dir / f"{TOPIC}-0" / "partition.checkpoint").unlink(missing_ok=True)
        else:
            assert broker.terminate() == 0
        names_before = [p.name for p in _segments(data_dir)]
        first_bad, last_bad = _damage_middle_segment(data_dir, how)
        broker.start()

        consumer = _consumer(broker.bootstrap)
        try:
            consumer.assign([confluent_kafka.TopicPartition(TOPIC, 0, 0)])
            before, error = _read_until(consumer, last_offset=None)
            assert before == list(range(first_bad)), broker.log_tail()
            assert error is not None and error.code() == confluent_kafka.KafkaError.INVALID_MSG  # CORRUPT_MESSAGE (2)
            # Still at the damage: the fetch is retried and reported again, never skipped silently.
            more, error = _read_until(consumer, last_offset=None, timeout_s=5)
            assert more == [] and error is not None and error.code() == confluent_kafka.KafkaError.INVALID_MSG
            consumer.seek(confluent_kafka.TopicPartition(TOPIC, 0, last_bad + 1))
            after, error = _read_until(consumer, last_offset=RECORDS - 1)
            assert error is None and after == list(range(last_bad + 1, RECORDS))

            # ListOffsets keeps working, by position and by time.
            assert consumer.get_watermark_offsets(confluent_kafka.TopicPartition(TOPIC, 0), timeout=10) == (0, RECORDS)
            for wanted in (5, first_bad - 1, last_bad + 1, RECORDS - 1):
                found = consumer.offsets_for_times(
                    [confluent_kafka.TopicPartition(TOPIC, 0, TIMESTAMP_BASE_MS + wanted)], timeout=10
                )
                assert found[0].error is None and found[0].offset == wanted
        finally:
            consumer.close()
        assert [p.name for p in _segments(data_dir)] == names_before  # nothing deleted, nothing cut
        broker.terminate()
    log_text = broker.log_text()
    damage_lines = [line for line in log_text.splitlines() if "damaged data" in line]
    assert len(damage_lines) == 1, damage_lines
    assert f"offsets {first_bad}..{last_bad}" in damage_lines[0]
    assert "Traceback" not in log_text


def test_flowbus_data_repair_then_every_intact_record_is_served(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    flowbus = [sys.executable, "-m", "flowbus", "data"]
    with BrokerProcess(data_dir) as broker:
        _produce(broker.bootstrap)
        refused = subprocess.run([*flowbus, "repair", str(data_dir)], capture_output=True, text=True, timeout=60, check=False)
        assert refused.returncode == 1 and "in use" in refused.stderr
        assert broker.terminate() == 0
        first_bad, last_bad = _damage_middle_segment(data_dir, "huge-length")
        checked = subprocess.run([*flowbus, "check", str(data_dir)], capture_output=True, text=True, timeout=60, check=False)
        assert checked.returncode == 1 and f"offsets {first_bad}..{last_bad}" in checked.stdout
        repaired = subprocess.run([*flowbus, "repair", str(data_dir)], capture_output=True, text=True, timeout=60, check=False)
        assert repaired.returncode == 0 and f"offsets {first_bad}..{last_bad}" in repaired.stdout, repaired.stderr
        broker.start()
        consumer = _consumer(broker.bootstrap)
        try:
            consumer.assign([confluent_kafka.TopicPartition(TOPIC, 0, 0)])
            offsets, error = _read_until(consumer, last_offset=RECORDS - 1)
        finally:
            consumer.close()
        assert error is None
        assert offsets == [o for o in range(RECORDS) if not first_bad <= o <= last_bad]
    assert "damaged data" not in broker.log_text().split("--- start #2")[1]


def test_broker_core_fetch_of_damaged_data_waits_like_an_empty_fetch(tmp_path: Path) -> None:
    """CORRUPT_MESSAGE is answered after the long poll, so clients retrying at once do not spin."""
    now_ms = TIMESTAMP_BASE_MS + 10_000

    def batch(value: bytes) -> bytes:
        builder = BatchBuilder()
        builder.append(None, value, timestamp_ms=TIMESTAMP_BASE_MS)
        return builder.build()

    def fetch_request(offset: int) -> list[FetchRequestPartition]:
        return [FetchRequestPartition(TOPIC, 0, offset, 1 << 20)]

    async def main() -> None:
        config = BrokerConfig(data_dir=tmp_path / "data")
        core = BrokerCore(config, clock=ManualClock(now_ms=now_ms))
        await core.start()
        await core.wait_loaded()
        await core.create_topics([NewTopic(TOPIC, 1)])
        for value in (b"a", b"b", b"c"):
            assert (await core.produce(TOPIC, 0, batch(value))).error_code == ErrorCode.NONE
        await core.close()
        segment = _segments(tmp_path / "data")[0]
        data = bytearray(segment.read_bytes())
        data[2 * len(batch(b"a")) - 2] ^= 0xFF  # the value of offset 1's record
        segment.write_bytes(bytes(data))

        core = BrokerCore(config, clock=ManualClock(now_ms=now_ms))
        await core.start()
        await core.wait_loaded()
        try:
            [first] = await core.fetch(fetch_request(0), max_wait_ms=0, min_bytes=1, max_bytes=1 << 20)
            assert first.error_code == ErrorCode.NONE and [r.offset for r in iter_records(first.records)] == [0]
            loop = asyncio.get_running_loop()
            started = loop.time()
            [damaged] = await core.fetch(fetch_request(1), max_wait_ms=300, min_bytes=1, max_bytes=1 << 20)
            assert damaged.error_code == ErrorCode.CORRUPT_MESSAGE and damaged.records == b""
            assert 0.25 <= loop.time() - started < 5
            [at_once] = await core.fetch(fetch_request(1), max_wait_ms=0, min_bytes=1, max_bytes=1 << 20)
            assert at_once.error_code == ErrorCode.CORRUPT_MESSAGE
            [after] = await core.fetch(fetch_request(2), max_wait_ms=0, min_bytes=1, max_bytes=1 << 20)
            assert [r.value for r in iter_records(after.records)] == [b"c"]
            assert (await core.list_offsets(TOPIC, 0, EARLIEST_TIMESTAMP)).offset == 0
            assert (await core.list_offsets(TOPIC, 0, LATEST_TIMESTAMP)).offset == 3
            assert (await core.list_offsets(TOPIC, 0, TIMESTAMP_BASE_MS)).offset == 0
        finally:
            await core.close()

    asyncio.run(main())
