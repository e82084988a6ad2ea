"""Durable acks (issue 10, item 2): with flush.messages=1 no produce is answered before its fsync.

The broker runs in-process (BrokerCore behind the real socket server) and clients send pipelined
Produce requests over real sockets. ``os.fsync`` is wrapped to record, per segment file, how
many bytes an fsync has made durable (the size when the fsync began); the produce handler is
wrapped to take a copy of that record at the moment each answer leaves it. Every acknowledged
batch must lie inside the durable part of its file at that moment.
"""

from __future__ import annotations

import asyncio
import errno
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import confluent_kafka.admin
import pytest

from flowbus.broker.config import BrokerConfig
from flowbus.broker.core import BrokerCore, NewTopic
from flowbus.broker.group_coordinator import GroupConfig, OffsetToCommit
from flowbus.broker.handlers import Handlers
from flowbus.broker.server import BrokerServer
from flowbus.protocol.api import ApiKey
from flowbus.protocol.error_codes import ErrorCode
from flowbus.records.builder import BatchBuilder
from flowbus.records.header import iter_batches
from tests.broker.test_server import Client
from tests.support.broker_process import BrokerProcess

pytestmark = pytest.mark.timeout(120)

CONNECTIONS = 4
REQUESTS_PER_CONNECTION = 60
RECORDS_PER_BATCH = 10
#: Added to every fsync of a segment file, as a slow disk would: widens the window in which
#: an ack could overtake its fsync, and lets produces pile up behind one fsync.
FSYNC_DELAY_S = 0.004


@dataclass
class FsyncRecorder:
    """Wraps os.fsync: durable bytes per .log file, and how many fsyncs of .log files ran."""

    real_fsync: Any = os.fsync
    durable: dict[str, int] = field(default_factory=dict)
    log_fsyncs: int = 0
    fail_logs: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fsync(self, fd: int) -> None:
        path = os.path.realpath(os.readlink(f"/proc/self/fd/{fd}"))
        if not path.endswith(".log"):
            self.real_fsync(fd)
            return
        if self.fail_logs:
            raise OSError(errno.EIO, "injected fsync failure")
        size = os.fstat(fd).st_size  # everything written before this is durable once fsync returns
        time.sleep(FSYNC_DELAY_S)
        self.real_fsync(fd)
        with self.lock:
            self.log_fsyncs += 1
            self.durable[path] = max(self.durable.get(path, 0), size)

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return dict(self.durable)


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> FsyncRecorder:
    recorder = FsyncRecorder()
    monkeypatch.setattr(os, "fsync", recorder.fsync)
    return recorder


@pytest.fixture
def acks(monkeypatch: pytest.MonkeyPatch, fsyncs: FsyncRecorder) -> list[tuple[dict[str, int], dict[str, Any]]]:
    """``(durable bytes per file, response body)`` of every produce answer, taken as it leaves."""
    seen: list[tuple[dict[str, int], dict[str, Any]]] = []
    original = Handlers.produce

    async def recording(self: Handlers, header: Any, body: Any, conn: Any) -> Any:
        response = await original(self, header, body, conn)
        seen.append((fsyncs.snapshot(), response))
        return response

    monkeypatch.setattr(Handlers, "produce", recording)
    return seen


def produce_request(topic: str, index: int, acks: int) -> dict[str, Any]:
    builder = BatchBuilder()
    for i in range(RECORDS_PER_BATCH):
        builder.append(None, f"{index}-{i}".encode() * 5, timestamp_ms=1_700_000_000_000 + i)
    return {
        "transactional_id": None,
        "acks": acks,
        "timeout_ms": 10_000,
        "topic_data": [{"name": topic, "partition_data": [{"index": 0, "records": builder.build()}]}],
    }


async def pipelined_producer(port: int, topic: str, first: int, acks: int) -> None:
    """Send REQUESTS_PER_CONNECTION produce requests, one a millisecond without waiting for
    answers, while reading the answers: appends, fsyncs and acks interleave.

    The answers' contents are checked where the broker sent them (the ``acks`` fixture).
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    client = Client(reader, writer)

    async def read_all() -> None:
        for _ in range(REQUESTS_PER_CONNECTION):
            await client.read_frame(timeout_s=30)

    reading = asyncio.create_task(read_all())
    try:
        for i in range(REQUESTS_PER_CONNECTION):
            client.send(ApiKey.PRODUCE, 7, produce_request(topic, first + i, acks))
            await writer.drain()
            await asyncio.sleep(0.001)
        await reading
    finally:
        reading.cancel()
        writer.close()


def batch_ends_on_disk(partition_dir: Path) -> dict[int, tuple[str, int]]:
    """base offset -> (segment file, byte position just after the batch)."""
    ends: dict[int, tuple[str, int]] = {}
    for path in sorted(partition_dir.glob("*.log")):
        data = path.read_bytes()
        for position, header in iter_batches(data):
            ends[header.base_offset] = (os.path.realpath(path), position + header.size_bytes)
    return ends


def run_durable_produce(
    tmp_path: Path, *, broker_setting: int | None, topic_configs: dict[str, str], acks: int
) -> tuple[BrokerCore, Path]:
    async def main() -> tuple[BrokerCore, Path]:
        extra = {} if broker_setting is None else {"log_flush_interval_messages": broker_setting}
        config = BrokerConfig(
            data_dir=tmp_path / "data", groups=GroupConfig(group_initial_rebalance_delay_ms=0), **extra
        )
        core = BrokerCore(config)
        await core.start()
        await core.wait_loaded()
        server = BrokerServer(core, host="127.0.0.1", port=0)
        await server.start()
        try:
            created = await core.create_topics([NewTopic("durable", 1, configs=topic_configs)])
            assert created[0].error_code == ErrorCode.NONE
            await asyncio.gather(
                *(
                    pipelined_producer(server.port, "durable", c * REQUESTS_PER_CONNECTION, acks)
                    for c in range(CONNECTIONS)
                )
            )
        finally:
            await server.close()
            await core.close()
        return core, tmp_path / "data" / "durable-0"

    return asyncio.run(main())


def check_every_ack_was_durable(
    acks: list[tuple[dict[str, int], dict[str, Any]]], partition_dir: Path
) -> None:
    ends = batch_ends_on_disk(partition_dir)
    assert len(acks) == CONNECTIONS * REQUESTS_PER_CONNECTION
    early = []
    for durable, response in acks:
        part = response["responses"][0]["partition_responses"][0]
        assert part["error_code"] == ErrorCode.NONE
        path, end = ends[part["base_offset"]]
        if durable.get(path, 0) < end:
            early.append((part["base_offset"], end, durable.get(path, 0)))
    assert not early, f"{len(early)} of {len(acks)} produces answered before their fsync, e.g. {early[:3]}"


@pytest.mark.parametrize("acks_setting", [1, -1])
def test_topic_flush_messages_1_answers_only_after_fsync(
    tmp_path: Path, fsyncs: FsyncRecorder, acks: list[Any], acks_setting: int
) -> None:
    _, partition_dir = run_durable_produce(
        tmp_path, broker_setting=None, topic_configs={"flush.messages": "1"}, acks=acks_setting
    )
    check_every_ack_was_durable(acks, partition_dir)
    # Group commit: produces waiting at the same moment shared fsyncs.
    requests = CONNECTIONS * REQUESTS_PER_CONNECTION
    assert fsyncs.log_fsyncs <= requests // 2, f"{fsyncs.log_fsyncs} fsyncs for {requests} produces"


def test_broker_wide_setting_applies_to_every_topic(
    tmp_path: Path, fsyncs: FsyncRecorder, acks: list[Any]
) -> None:
    _, partition_dir = run_durable_produce(tmp_path, broker_setting=1, topic_configs={}, acks=-1)
    check_every_ack_was_durable(acks, partition_dir)


def test_a_topic_setting_overrides_the_broker_setting(
    tmp_path: Path, fsyncs: FsyncRecorder, acks: list[Any]
) -> None:
    """A topic with its own large flush.messages is not fsynced per produce (Kafka's precedence)."""
    run_durable_produce(
        tmp_path, broker_setting=1, topic_configs={"flush.messages": str(10**9), "flush.ms": "60000"}, acks=-1
    )
    assert len(acks) == CONNECTIONS * REQUESTS_PER_CONNECTION
    assert fsyncs.log_fsyncs <= 3  # the shutdown flush (and the internal topics'), not one per ack


def idempotent_batch(pid: int, seq: int) -> bytes:
    builder = BatchBuilder(producer_id=pid, producer_epoch=0, base_sequence=seq)
    builder.append(None, b"once", timestamp_ms=1_700_000_000_000)
    return builder.build()


def test_a_retried_batch_is_not_answered_before_the_first_ones_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idempotent retry (a DUPLICATE) waits for the fsync of the batch it duplicates."""
    release = threading.Event()
    holding = threading.Event()
    real_fsync = os.fsync

    def held_fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".log"):
            holding.set()
            release.wait(10)
        real_fsync(fd)

    async def main() -> None:
        core = BrokerCore(BrokerConfig(data_dir=tmp_path / "data", log_flush_interval_messages=1))
        await core.start()
        await core.wait_loaded()
        try:
            await core.create_topics([NewTopic("idem", 1)])
            pid = (await core.init_producer_id(None, 60_000)).producer_id
            monkeypatch.setattr(os, "fsync", held_fsync)
            first = core.produce_nowait("idem", 0, idempotent_batch(pid, 0))
            assert await asyncio.to_thread(holding.wait, 10), "the first batch never reached its fsync"
            retry = core.produce_nowait("idem", 0, idempotent_batch(pid, 0))
            await asyncio.sleep(0.1)  # a window for a wrong early answer to the retry: none may come
            assert not first.done() and not retry.done()
            release.set()
            results = await asyncio.wait_for(asyncio.gather(first, retry), 10)
            assert [(r.error_code, r.base_offset) for r in results] == [(0, 0), (0, 0)]
            assert core.logs.get_log("idem", 0).log_end_offset == 1
        finally:
            release.set()
            await core.close()

    asyncio.run(main())


def test_a_failed_fsync_is_answered_with_a_storage_error(
    tmp_path: Path, fsyncs: FsyncRecorder
) -> None:
    async def main() -> None:
        core = BrokerCore(BrokerConfig(data_dir=tmp_path / "data", log_flush_interval_messages=1))
        await core.start()
        await core.wait_loaded()
        try:
            await core.create_topics([NewTopic("eio", 1)])
            fsyncs.fail_logs = True
            failed = await core.produce("eio", 0, idempotent_batch(-1, -1))
            assert failed.error_code == ErrorCode.KAFKA_STORAGE_ERROR
            fsyncs.fail_logs = False  # the disk recovers: the next flush retries the same files
            ok = await core.produce("eio", 0, idempotent_batch(-1, -1))
            assert (ok.error_code, ok.base_offset) == (0, 1)
            assert core.logs.get_log("eio", 0).recovery_point == 2
        finally:
            fsyncs.fail_logs = False
            await core.close()

    asyncio.run(main())


def test_offset_commits_are_answered_after_their_fsync_with_the_broker_setting(
    tmp_path: Path, fsyncs: FsyncRecorder
) -> None:
    async def main() -> None:
        core = BrokerCore(BrokerConfig(data_dir=tmp_path / "data", log_flush_interval_messages=1))
        await core.start()
        await core.wait_loaded()
        try:
            await core.create_topics([NewTopic("c", 1)])
            for offset in range(5):
                errors = await core.commit_offsets("grp", -1, "", [OffsetToCommit("c", 0, offset)])
                assert errors == [ErrorCode.NONE]
                topic, partition = core.offsets_partition_key("grp")
                plog = core.logs.get_log(topic, partition)
                assert plog.recovery_point == plog.log_end_offset  # fsynced before the answer
        finally:
            await core.close()

    asyncio.run(main())


def test_flush_messages_option_of_the_broker_process(tmp_path: Path) -> None:
    with BrokerProcess(tmp_path / "data", extra_args=["--flush-messages", "1"]) as broker:
        admin = confluent_kafka.admin.AdminClient({"bootstrap.servers": broker.bootstrap})
        admin.create_topics([confluent_kafka.admin.NewTopic("t", 1, 1)])["t"].result(timeout=20)
        resource = confluent_kafka.admin.ConfigResource("topic", "t")
        config = admin.describe_configs([resource])[resource].result(timeout=20)
        assert config["flush.messages"].value == "1"
        node = confluent_kafka.admin.ConfigResource("broker", "0")
        broker_config = admin.describe_configs([node])[node].result(timeout=20)
        assert broker_config["log.flush.interval.messages"].value == "1"
        producer = confluent_kafka.Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
        delivered: list[Any] = []
        producer.produce("t", b"v", on_delivery=lambda err, msg: delivered.append(err))
        assert producer.flush(20) == 0 and delivered == [None]



def test_embedded_transport_url_setting(tmp_path: Path) -> None:
    from flowbus.transports.embedded import EmbeddedTransport
    from flowbus.transports.errors import TransportError

    with pytest.raises(TransportError, match="unknown"):
        EmbeddedTransport(f"embedded://{tmp_path}/x?fsync=1")
    with pytest.raises(TransportError, match="positive"):
        EmbeddedTransport(f"embedded://{tmp_path}/x?flush.messages=0")

    async def main() -> None:
        transport = EmbeddedTransport(f"embedded://{tmp_path}/data?flush.messages=1")
        assert transport.data_dir == (tmp_path / "data").resolve()
        await transport.start()
        try:
            core = transport.core
            await core.create_topics([NewTopic("e", 1)])
            assert core.logs.get_log("e", 0).config.flush_messages == 1
            result = await core.produce("e", 0, idempotent_batch(-1, -1))
            assert result.error_code == ErrorCode.NONE
            assert core.logs.get_log("e", 0).recovery_point == 1  # fsynced before the answer
        finally:
            await transport.close()

    asyncio.run(main())
