"""BrokerCore without sockets: the typed API the embedded transport will call."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from flowbus.broker.config import BrokerConfig
from flowbus.broker.core import (
    EARLIEST_TIMESTAMP,
    LATEST_TIMESTAMP,
    OFFSETS_TOPIC,
    RESOURCE_BROKER,
    RESOURCE_TOPIC,
    BrokerCore,
    FetchRequestPartition,
    NewTopic,
)
from flowbus.broker.group_coordinator import GroupConfig, OffsetToCommit
from flowbus.clock import ManualClock
from flowbus.protocol.error_codes import ErrorCode
from flowbus.records.builder import BatchBuilder
from flowbus.records.record import iter_records

pytestmark = pytest.mark.timeout(60)
T = TypeVar("T")
BASE_TS = 1_700_000_000_000


def batch(
    values: list[bytes],
    *,
    pid: int = -1,
    epoch: int = -1,
    seq: int = -1,
    ts: int = BASE_TS,
) -> bytes:
    builder = BatchBuilder(producer_id=pid, producer_epoch=epoch, base_sequence=seq)
    for i, value in enumerate(values):
        builder.append(None, value, timestamp_ms=ts + i)
    return builder.build()


def with_core(
    tmp_path: Path,
    body: Callable[[BrokerCore], Awaitable[T]],
    clock: ManualClock | None = None,
    **cfg: Any,
) -> T:
    async def main() -> T:
        config = BrokerConfig(
            data_dir=tmp_path / "data",
            groups=GroupConfig(group_initial_rebalance_delay_ms=0),
            **cfg,
        )
        core = BrokerCore(config, clock=clock or ManualClock(now_ms=BASE_TS + 10_000))
        await core.start()
        await core.wait_loaded()
        try:
            return await body(core)
        finally:
            await core.close()

    return asyncio.run(main())


def test_produce_fetch_and_offsets(tmp_path: Path) -> None:
    async def body(core: BrokerCore) -> None:
        await core.create_topics([NewTopic("t", 1)])
        first = await core.produce("t", 0, batch([b"a", b"b"]))
        second = await core.produce("t", 0, batch([b"c"], ts=BASE_TS + 5_000))
        assert (first.error_code, first.base_offset, second.base_offset) == (0, 0, 2)
        [result] = await core.fetch(
            [FetchRequestPartition("t", 0, 0, 1 << 20)],
            max_wait_ms=0,
            min_bytes=1,
            max_bytes=1 << 20,
        )
        assert [r.value for r in iter_records(result.records)] == [b"a", b"b", b"c"]
        assert result.high_watermark == 3 and result.aborted_transactions is None
        assert (await core.list_offsets("t", 0, EARLIEST_TIMESTAMP)).offset == 0
        assert (await core.list_offsets("t", 0, LATEST_TIMESTAMP)).offset == 3
        by_time = await core.list_offsets("t", 0, BASE_TS + 1_000)
        assert (by_time.offset, by_time.timestamp) == (2, BASE_TS + 5_000)
        [bad] = await core.fetch(
            [FetchRequestPartition("t", 0, 99, 1 << 20)],
            max_wait_ms=0,
            min_bytes=1,
            max_bytes=1 << 20,
        )
        assert bad.error_code == ErrorCode.OFFSET_OUT_OF_RANGE
        [missing] = await core.fetch(
            [FetchRequestPartition("nope", 0, 0, 100)],
            max_wait_ms=0,
            min_bytes=1,
            max_bytes=100,
        )
        assert missing.error_code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
        assert (
            await core.produce("nope", 0, batch([b"x"]))
        ).error_code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION

    with_core(tmp_path, body)


def test_fetch_byte_limits_return_at_least_one_batch(tmp_path: Path) -> None:
    async def body(core: BrokerCore) -> None:
        await core.create_topics([NewTopic("lim", 2)])
        for _ in range(5):
            await core.produce("lim", 0, batch([b"x" * 1000]))
            await core.produce("lim", 1, batch([b"y" * 1000]))
        requests = [FetchRequestPartition("lim", p, 0, 2500) for p in (0, 1)]
        results = await core.fetch(requests, max_wait_ms=0, min_bytes=1, max_bytes=3000)
        sizes = [len(r.records) for r in results]
        assert 0 < sizes[0] <= 2500 and sum(sizes) <= 3000
        tiny = await core.fetch(
            [FetchRequestPartition("lim", 0, 0, 10)],
            max_wait_ms=0,
            min_bytes=1,
            max_bytes=10,
        )
        assert (
            len(list(iter_records(tiny[0].records))) == 1
        )  # KIP-74: one whole batch anyway

    with_core(tmp_path, body)


def test_idempotent_retry_answers_original_offset_across_restart(
    tmp_path: Path,
) -> None:
    async def first(core: BrokerCore) -> int:
        await core.create_topics([NewTopic("idem", 1)])
        pid = (await core.init_producer_id(None, 60_000)).producer_id
        await core.produce("idem", 0, batch([b"other"]))
        assert (
            await core.produce("idem", 0, batch([b"a", b"b"], pid=pid, epoch=0, seq=0))
        ).base_offset == 1
        retry = await core.produce(
            "idem", 0, batch([b"a", b"b"], pid=pid, epoch=0, seq=0)
        )
        assert (retry.error_code, retry.base_offset) == (0, 1)
        gap = await core.produce("idem", 0, batch([b"z"], pid=pid, epoch=0, seq=5))
        assert gap.error_code == ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER
        return pid

    pid = with_core(tmp_path, first)

    async def second(core: BrokerCore) -> None:
        retry = await core.produce(
            "idem", 0, batch([b"a", b"b"], pid=pid, epoch=0, seq=0)
        )
        assert (retry.error_code, retry.base_offset) == (0, 1)
        nxt = await core.produce("idem", 0, batch([b"c"], pid=pid, epoch=0, seq=2))
        assert (nxt.error_code, nxt.base_offset) == (0, 3)
        fenced = await core.produce("idem", 0, batch([b"d"], pid=pid, epoch=-1, seq=3))
        assert fenced.error_code == ErrorCode.INVALID_PRODUCER_EPOCH
        new_pid = (await core.init_producer_id(None, 60_000)).producer_id
        assert new_pid > pid  # producer ids never repeat after a restart

    with_core(tmp_path, second)


def test_log_append_time_and_too_large(tmp_path: Path) -> None:
    clock = ManualClock(now_ms=BASE_TS + 123_456)

    async def body(core: BrokerCore) -> None:
        results = await core.create_topics(
            [
                NewTopic(
                    "lat",
                    1,
                    configs={
                        "message.timestamp.type": "LogAppendTime",
                        "max.message.bytes": "2000",
                    },
                )
            ]
        )
        assert results[0].error_code == 0
        produced = await core.produce("lat", 0, batch([b"v"]))
        assert produced.log_append_time_ms == BASE_TS + 123_456
        [fetched] = await core.fetch(
            [FetchRequestPartition("lat", 0, 0, 1 << 20)],
            max_wait_ms=0,
            min_bytes=1,
            max_bytes=1 << 20,
        )
        assert [r.timestamp_ms for r in iter_records(fetched.records)] == [
            BASE_TS + 123_456
        ]
        too_big = await core.produce("lat", 0, batch([b"x" * 5000]))
        assert too_big.error_code == ErrorCode.MESSAGE_TOO_LARGE

    with_core(tmp_path, body, clock=clock)


def test_create_delete_describe_topics(tmp_path: Path) -> None:
    async def body(core: BrokerCore) -> None:
        checked = await core.create_topics([NewTopic("dry", 3)], validate_only=True)
        assert checked[0].error_code == 0 and checked[0].num_partitions == 3
        assert "dry" not in core.logs.topics()
        results = await core.create_topics(
            [
                NewTopic("ok", 2, configs={"retention.ms": "1000"}),
                NewTopic("bad name!", 1),
                NewTopic("badcfg", 1, configs={"no.such.config": "1"}),
                NewTopic("zero", 0),
                NewTopic("rf", 1, replication_factor=3),
            ]
        )
        assert [r.error_code for r in results] == [
            ErrorCode.NONE,
            ErrorCode.INVALID_TOPIC_EXCEPTION,
            ErrorCode.INVALID_CONFIG,
            ErrorCode.INVALID_PARTITIONS,
            ErrorCode.INVALID_REPLICATION_FACTOR,
        ]
        assert (await core.create_topics([NewTopic("ok", 1)]))[
            0
        ].error_code == ErrorCode.TOPIC_ALREADY_EXISTS
        [topic_cfg, broker_cfg] = await core.describe_configs(
            [(RESOURCE_TOPIC, "ok", ["retention.ms"]), (RESOURCE_BROKER, "0", None)]
        )
        assert [(c.name, c.value, c.is_default) for c in topic_cfg.configs] == [
            ("retention.ms", "1000", False)
        ]
        assert any(c.name == "broker.id" for c in broker_cfg.configs)
        assert await core.delete_topics(["ok", "ok", OFFSETS_TOPIC]) == [
            ("ok", ErrorCode.NONE),
            ("ok", ErrorCode.UNKNOWN_TOPIC_OR_PARTITION),
            (OFFSETS_TOPIC, ErrorCode.INVALID_TOPIC_EXCEPTION),
        ]

    with_core(tmp_path, body)


def test_metadata_auto_create_is_configurable(tmp_path: Path) -> None:
    async def on(core: BrokerCore) -> None:
        result = await core.metadata(["auto"])
        assert (result.topics[0].error_code, result.topics[0].partitions) == (0, 3)
        refused = await core.metadata(["other"], allow_auto_create=False)
        assert refused.topics[0].error_code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION

    with_core(tmp_path / "a", on, auto_create_topics_partitions=3)

    async def off(core: BrokerCore) -> None:
        assert (await core.metadata(["auto"])).topics[
            0
        ].error_code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION

    with_core(tmp_path / "b", off, auto_create_topics_enable=False)


def test_committed_offsets_survive_restart(tmp_path: Path) -> None:
    async def first(core: BrokerCore) -> None:
        await core.create_topics([NewTopic("c", 2)])
        errors = await core.commit_offsets(
            "grp",
            -1,
            "",
            [OffsetToCommit("c", 0, 7), OffsetToCommit("c", 1, 9, metadata="m")],
        )
        assert errors == [0, 0]

    with_core(tmp_path, first)

    async def second(core: BrokerCore) -> None:
        error, fetched = core.groups.fetch_offsets("grp", None)
        assert error == 0
        assert [(f.partition, f.offset, f.metadata) for f in fetched] == [
            (0, 7, ""),  # Kafka stores a null metadata as "" (its field is not nullable)
            (1, 9, "m"),
        ]

    with_core(tmp_path, second)


def test_fetch_long_poll_times_out_without_data(tmp_path: Path) -> None:
    async def body(core: BrokerCore) -> None:
        await core.create_topics([NewTopic("quiet", 1)])
        loop = asyncio.get_running_loop()
        start = loop.time()
        [result] = await core.fetch(
            [FetchRequestPartition("quiet", 0, 0, 100)],
            max_wait_ms=300,
            min_bytes=1,
            max_bytes=100,
        )
        assert 0.25 <= loop.time() - start < 2
        assert result.error_code == 0 and len(result.records) == 0

    with_core(tmp_path, body)


def test_producer_state_snapshot_is_used_after_a_clean_restart(tmp_path: Path) -> None:
    async def first(core: BrokerCore) -> int:
        await core.create_topics([NewTopic("snap", 1)])
        pid = (await core.init_producer_id(None, 60_000)).producer_id
        assert (
            await core.produce("snap", 0, batch([b"a"], pid=pid, epoch=0, seq=0))
        ).base_offset == 0
        return pid

    pid = with_core(tmp_path, first)
    assert (tmp_path / "data" / "producer_snapshots.json").exists()

    async def second(core: BrokerCore) -> None:
        # One more batch after the snapshot, then a retry of it: answered from the replayed tail.
        assert (
            await core.produce("snap", 0, batch([b"b"], pid=pid, epoch=0, seq=1))
        ).base_offset == 1

    with_core(tmp_path, second)

    async def third(core: BrokerCore) -> None:
        retry = await core.produce("snap", 0, batch([b"b"], pid=pid, epoch=0, seq=1))
        assert (retry.error_code, retry.base_offset) == (0, 1)
        assert (
            await core.produce("snap", 0, batch([b"c"], pid=pid, epoch=0, seq=2))
        ).base_offset == 2

    with_core(tmp_path, third)


def test_control_batches_and_transactional_batches_outside_a_transaction_are_refused(
    tmp_path: Path,
) -> None:
    """Markers are the coordinator's to write; a transactional batch of an idempotent (not
    transactional) producer belongs to no transaction that could ever end."""

    async def body(core: BrokerCore) -> None:
        await core.create_topics([NewTopic("tx", 1)])
        pid = (await core.init_producer_id(None, 60_000)).producer_id
        builder = BatchBuilder(
            producer_id=pid, producer_epoch=0, base_sequence=0, is_transactional=True
        )
        builder.append(None, b"v", timestamp_ms=BASE_TS)
        assert (
            await core.produce("tx", 0, builder.build())
        ).error_code == ErrorCode.INVALID_TXN_STATE
        control = BatchBuilder(
            producer_id=pid, producer_epoch=0, is_transactional=True, is_control=True
        )
        control.append(
            b"\x00\x00\x00\x01", b"\x00\x00\x00\x00\x00\x00", timestamp_ms=BASE_TS
        )
        assert (
            await core.produce("tx", 0, control.build())
        ).error_code == ErrorCode.INVALID_RECORD

    with_core(tmp_path, body)
