"""The transaction coordinator, LSO and aborted-transaction index through BrokerCore (ManualClock).

Real clients are in ``test_transactions.py``; these tests drive the core directly so that time
(transaction timeouts) and restarts are controlled exactly.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from flowbus.broker.core import (
    ISOLATION_READ_COMMITTED,
    ISOLATION_READ_UNCOMMITTED,
    LATEST_TIMESTAMP,
    OFFSETS_TOPIC,
    BrokerCore,
    FetchRequestPartition,
    FetchResultPartition,
    NewTopic,
)
from flowbus.broker.group_coordinator import OffsetToCommit
from flowbus.broker.handlers import _fenced_for
from flowbus.broker.txn_state import (
    TxnMetadata,
    TxnState,
    decode_txn_record,
    encode_txn_key,
    encode_txn_value,
)
from flowbus.clock import ManualClock
from flowbus.log.txn_index import AbortedTxn, TransactionIndex
from flowbus.protocol.api import ApiKey
from flowbus.protocol.codec import RequestHeader
from flowbus.protocol.error_codes import ErrorCode
from flowbus.records.builder import BatchBuilder
from flowbus.records.header import iter_batches
from flowbus.records.record import iter_records
from tests.broker.test_core import BASE_TS, with_core

pytestmark = pytest.mark.timeout(60)


class Txn:
    """A minimal transactional producer speaking to the core, as a client library would."""

    def __init__(self, core: BrokerCore, transactional_id: str, timeout_ms: int = 10_000) -> None:
        self.core = core
        self.tid = transactional_id
        self.timeout_ms = timeout_ms
        self.pid = -1
        self.epoch = -1
        self.sequences: dict[tuple[str, int], int] = {}

    async def init(self) -> int:
        result = await self.core.init_producer_id(self.tid, self.timeout_ms)
        if result.error_code == ErrorCode.NONE:
            self.pid, self.epoch = result.producer_id, result.producer_epoch
            self.sequences.clear()
        return result.error_code

    def add(self, topic: str, partition: int) -> int:
        return self.core.txn.add_partitions(self.tid, self.pid, self.epoch, [(topic, partition)])[
            (topic, partition)
        ]

    async def send(self, topic: str, partition: int, values: list[bytes]) -> int:
        seq = self.sequences.get((topic, partition), 0)
        builder = BatchBuilder(
            producer_id=self.pid, producer_epoch=self.epoch, base_sequence=seq, is_transactional=True
        )
        for value in values:
            builder.append(None, value, timestamp_ms=BASE_TS)
        result = await self.core.produce(topic, partition, builder.build())
        if result.error_code == ErrorCode.NONE:
            self.sequences[(topic, partition)] = seq + len(values)
        return result.error_code

    def end(self, commit: bool) -> int:
        return self.core.txn.end_txn(self.tid, self.pid, self.epoch, commit)


async def plain(core: BrokerCore, topic: str, values: list[bytes], partition: int = 0) -> None:
    builder = BatchBuilder()
    for value in values:
        builder.append(None, value, timestamp_ms=BASE_TS)
    assert (await core.produce(topic, partition, builder.build())).error_code == 0


async def fetch(core: BrokerCore, topic: str, isolation: int, offset: int = 0) -> FetchResultPartition:
    [result] = await core.fetch(
        [FetchRequestPartition(topic, 0, offset, 1 << 20)],
        max_wait_ms=0,
        min_bytes=1,
        max_bytes=1 << 20,
        isolation_level=isolation,
    )
    return result


def visible(result: FetchResultPartition) -> list[bytes]:
    """Values a read_committed client delivers (librdkafka's rule): a producer's batches are
    dropped from the first offset of one of its aborted transactions to its next marker."""
    pending = sorted((first, pid) for pid, first in result.aborted_transactions or [])
    data = bytes(result.records)
    values = []
    skipping: set[int] = set()
    for _, header in iter_batches(data):
        while pending and pending[0][0] <= header.base_offset:
            skipping.add(pending.pop(0)[1])
        if header.is_control:
            skipping.discard(header.producer_id)
            continue
        if header.producer_id in skipping:
            continue
        for record in iter_records(data):
            if header.base_offset <= record.offset <= header.last_offset:
                values.append(record.value)
    return values


def test_lso_holds_read_committed_until_the_commit(tmp_path: Path) -> None:
    async def body(core: BrokerCore) -> None:
        await core.create_topics([NewTopic("t", 1)])
        await plain(core, "t", [b"before"])
        txn = Txn(core, "lso")
        assert await txn.init() == 0
        assert txn.add("t", 0) == 0
        assert await txn.send("t", 0, [b"t1", b"t2"]) == 0
        await plain(core, "t", [b"after"])
        committed = await fetch(core, "t", ISOLATION_READ_COMMITTED)
        assert (committed.high_watermark, committed.last_stable_offset) == (4, 1)
        assert visible(committed) == [b"before"]
        assert committed.aborted_transactions == []
        uncommitted = await fetch(core, "t", ISOLATION_READ_UNCOMMITTED)
        assert uncommitted.aborted_transactions is None
        assert len(list(iter_records(bytes(uncommitted.records)))) == 4
        latest = await core.list_offsets("t", 0, LATEST_TIMESTAMP, isolation_level=ISOLATION_READ_COMMITTED)
        assert latest.offset == 1
        assert txn.end(commit=True) == 0
        committed = await fetch(core, "t", ISOLATION_READ_COMMITTED)
        assert committed.last_stable_offset == committed.high_watermark == 5
        assert visible(committed) == [b"before", b"t1", b"t2", b"after"]

    with_core(tmp_path, body)


def test_abort_is_indexed_and_reported_to_read_committed_only(tmp_path: Path) -> None:
    async def body(core: BrokerCore) -> None:
        await core.create_topics([NewTopic("t", 1)])
        txn = Txn(core, "abort")
        await txn.init()
        txn.add("t", 0)
        await txn.send("t", 0, [b"x1", b"x2"])
        assert txn.end(commit=False) == 0
        await plain(core, "t", [b"ok"])
        result = await fetch(core, "t", ISOLATION_READ_COMMITTED)
        assert result.aborted_transactions == [(txn.pid, 0)]
        assert visible(result) == [b"ok"]
        assert (await fetch(core, "t", ISOLATION_READ_UNCOMMITTED)).aborted_transactions is None
        # Fetching after the aborted range reports nothing.
        assert (await fetch(core, "t", ISOLATION_READ_COMMITTED, offset=3)).aborted_transactions == []
        [segment] = core.logs.get_log("t", 0).segments()
        assert segment.txn_index.entries == [AbortedTxn(txn.pid, 0, 2, 3)]

    with_core(tmp_path, body)


def test_produce_rules_for_transactional_producers(tmp_path: Path) -> None:
    async def body(core: BrokerCore) -> None:
        await core.create_topics([NewTopic("t", 2)])
        txn = Txn(core, "rules")
        await txn.init()
        txn.add("t", 0)
        # Not added to the transaction: no marker would ever end it.
        assert await txn.send("t", 1, [b"x"]) == ErrorCode.INVALID_TXN_STATE
        assert await txn.send("t", 0, [b"x"]) == 0
        # A non-transactional write of the same producer while its transaction is open.
        builder = BatchBuilder(producer_id=txn.pid, producer_epoch=txn.epoch, base_sequence=1)
        builder.append(None, b"y", timestamp_ms=BASE_TS)
        assert (await core.produce("t", 0, builder.build())).error_code == ErrorCode.INVALID_TXN_STATE
        # Unknown partitions fail the whole AddPartitionsToTxn.
        errors = core.txn.add_partitions(txn.tid, txn.pid, txn.epoch, [("t", 1), ("nope", 0)])
        assert errors == {("t", 1): ErrorCode.OPERATION_NOT_ATTEMPTED, ("nope", 0): ErrorCode.UNKNOWN_TOPIC_OR_PARTITION}
        assert (await core.init_producer_id("big", 900_001)).error_code == ErrorCode.INVALID_TRANSACTION_TIMEOUT
        assert (await core.init_producer_id("zero", 0)).error_code == ErrorCode.INVALID_TRANSACTION_TIMEOUT

    with_core(tmp_path, body)


def test_a_new_instance_fences_the_old_one_and_aborts_its_transaction(tmp_path: Path) -> None:
    async def body(core: BrokerCore) -> None:
        await core.create_topics([NewTopic("t", 1)])
        old = Txn(core, "fence")
        await old.init()
        old.add("t", 0)
        await old.send("t", 0, [b"zombie"])
        new = Txn(core, "fence")
        assert await new.init() == 0
        assert (new.pid, new.epoch) == (old.pid, old.epoch + 1)
        # The old instance's transaction is aborted; all its requests are fenced.
        assert core.txn.describe("fence").state is TxnState.EMPTY
        assert old.end(commit=True) == ErrorCode.PRODUCER_FENCED
        assert old.add("t", 0) == ErrorCode.PRODUCER_FENCED
        assert await old.send("t", 0, [b"late"]) == ErrorCode.INVALID_PRODUCER_EPOCH
        new.add("t", 0)
        assert await new.send("t", 0, [b"fresh"]) == 0
        assert new.end(commit=True) == 0
        result = await fetch(core, "t", ISOLATION_READ_COMMITTED)
        assert visible(result) == [b"fresh"]
        # Older API versions cannot express PRODUCER_FENCED.
        old_end = RequestHeader(ApiKey.END_TXN, 1, 0, None)
        new_end = RequestHeader(ApiKey.END_TXN, 3, 0, None)
        assert _fenced_for(old_end, ErrorCode.PRODUCER_FENCED) == ErrorCode.INVALID_PRODUCER_EPOCH
        assert _fenced_for(new_end, ErrorCode.PRODUCER_FENCED) == ErrorCode.PRODUCER_FENCED

    with_core(tmp_path, body)


def test_a_transaction_past_its_timeout_is_aborted_by_the_tick(tmp_path: Path) -> None:
    clock = ManualClock(now_ms=BASE_TS + 10_000)

    async def body(core: BrokerCore) -> None:
        await core.create_topics([NewTopic("t", 1)])
        txn = Txn(core, "slow", timeout_ms=5_000)
        await txn.init()
        txn.add("t", 0)
        await txn.send("t", 0, [b"late"])
        clock.advance(4_999)
        assert core.txn.tick() == 0
        clock.advance(2)
        assert core.txn.tick() == 1
        meta = core.txn.describe("slow")
        assert meta.state is TxnState.COMPLETE_ABORT and meta.producer_epoch == txn.epoch + 1
        result = await fetch(core, "t", ISOLATION_READ_COMMITTED)
        assert result.last_stable_offset == result.high_watermark == 2
        assert visible(result) == []
        assert txn.end(commit=True) == ErrorCode.PRODUCER_FENCED

    with_core(tmp_path, body, clock=clock)


def test_concurrent_transactions_while_markers_are_pending(tmp_path: Path) -> None:
    """A failed marker write leaves the end in PrepareCommit: requests answer
    CONCURRENT_TRANSACTIONS until the tick has written the markers."""

    async def body(core: BrokerCore) -> None:
        await core.create_topics([NewTopic("t", 1)])
        txn = Txn(core, "busy")
        await txn.init()
        txn.add("t", 0)
        await txn.send("t", 0, [b"v"])
        real = core.write_txn_marker

        def failing(*args: object, **kwargs: object) -> None:
            raise OSError("disk full")

        core.write_txn_marker = failing  # type: ignore[method-assign]
        assert txn.end(commit=True) == ErrorCode.CONCURRENT_TRANSACTIONS
        assert core.txn.describe("busy").state is TxnState.PREPARE_COMMIT
        assert txn.add("t", 0) == ErrorCode.CONCURRENT_TRANSACTIONS
        assert (await core.init_producer_id("busy", 10_000)).error_code == ErrorCode.CONCURRENT_TRANSACTIONS
        core.write_txn_marker = real  # type: ignore[method-assign]
        assert core.txn.tick() == 1
        assert txn.end(commit=True) == 0  # a retried commit of a completed commit
        assert visible(await fetch(core, "t", ISOLATION_READ_COMMITTED)) == [b"v"]

    with_core(tmp_path, body)


def test_transactional_offsets_are_visible_only_after_commit(tmp_path: Path) -> None:
    async def body(core: BrokerCore) -> None:
        await core.create_topics([NewTopic("in", 1)])
        txn = Txn(core, "offsets")
        await txn.init()
        assert core.txn.add_offsets(txn.tid, txn.pid, txn.epoch, "g") == 0
        errors = await core.txn.txn_offset_commit(
            txn.tid, "g", txn.pid, txn.epoch, -1, "", [OffsetToCommit("in", 0, 7)]
        )
        assert errors == [0]
        assert core.groups.fetch_offsets("g", [("in", 0)])[1][0].offset == -1
        assert txn.end(commit=True) == 0
        assert core.groups.fetch_offsets("g", [("in", 0)])[1][0].offset == 7
        core.txn.add_offsets(txn.tid, txn.pid, txn.epoch, "g")
        await core.txn.txn_offset_commit(txn.tid, "g", txn.pid, txn.epoch, -1, "", [OffsetToCommit("in", 0, 9)])
        assert txn.end(commit=False) == 0
        assert core.groups.fetch_offsets("g", [("in", 0)])[1][0].offset == 7

    with_core(tmp_path, body)


def test_restart_recovers_transactions_and_offsets(tmp_path: Path) -> None:
    """A transaction open at shutdown is aborted on start; one in PrepareCommit is completed;
    committed transactional offsets survive and pending ones do not."""

    async def first(core: BrokerCore) -> None:
        await core.create_topics([NewTopic("a", 1), NewTopic("b", 1), NewTopic("in", 1)])
        done = Txn(core, "done")
        await done.init()
        core.txn.add_offsets(done.tid, done.pid, done.epoch, "g")
        await core.txn.txn_offset_commit(done.tid, "g", done.pid, done.epoch, -1, "", [OffsetToCommit("in", 0, 3)])
        assert done.end(commit=True) == 0
        open_ = Txn(core, "open")
        await open_.init()
        open_.add("a", 0)
        await open_.send("a", 0, [b"never"])
        core.txn.add_offsets(open_.tid, open_.pid, open_.epoch, "g2")
        await core.txn.txn_offset_commit(open_.tid, "g2", open_.pid, open_.epoch, -1, "", [OffsetToCommit("in", 0, 5)])
        deciding = Txn(core, "deciding")
        await deciding.init()
        deciding.add("b", 0)
        await deciding.send("b", 0, [b"yes"])
        meta = core.txn.describe("deciding")
        meta.state = TxnState.PREPARE_COMMIT  # the decision is logged; the markers never written
        core.txn._persist(meta)

    async def second(core: BrokerCore) -> None:
        assert core.txn.describe("open").state is TxnState.COMPLETE_ABORT
        assert core.txn.describe("deciding").state is TxnState.COMPLETE_COMMIT
        a = await fetch(core, "a", ISOLATION_READ_COMMITTED)
        assert a.last_stable_offset == a.high_watermark == 2 and visible(a) == []
        b = await fetch(core, "b", ISOLATION_READ_COMMITTED)
        assert visible(b) == [b"yes"]
        assert core.groups.fetch_offsets("g", [("in", 0)])[1][0].offset == 3
        assert core.groups.fetch_offsets("g2", [("in", 0)])[1][0].offset == -1

    with_core(tmp_path, first)
    with_core(tmp_path, second)
    with_core(tmp_path, second)  # a second restart changes nothing


def test_lost_txn_index_is_rebuilt_from_the_log(tmp_path: Path) -> None:
    async def first(core: BrokerCore) -> None:
        await core.create_topics([NewTopic("t", 1)])
        txn = Txn(core, "idx")
        await txn.init()
        txn.add("t", 0)
        await txn.send("t", 0, [b"gone"])
        txn.end(commit=False)

    async def second(core: BrokerCore) -> None:
        result = await fetch(core, "t", ISOLATION_READ_COMMITTED)
        assert len(result.aborted_transactions) == 1
        assert visible(result) == []

    with_core(tmp_path, first)
    for path in (tmp_path / "data").rglob("*.txnindex"):
        path.unlink()
    (tmp_path / "data" / "producer_snapshots.json").unlink()
    with_core(tmp_path, second)


def test_txn_state_records_round_trip(tmp_path: Path) -> None:
    meta = TxnMetadata("id-é", 42, 7, 60_000, TxnState.ONGOING, {("a", 0), ("b", 3)}, 10, 20)
    tid, decoded = decode_txn_record(encode_txn_key(meta.transactional_id), encode_txn_value(meta))
    assert tid == "id-é" and decoded == meta
    assert decode_txn_record(encode_txn_key("x"), None) == ("x", None)
    index = TransactionIndex(tmp_path / "0.txnindex")
    assert index.append(AbortedTxn(1, 0, 5, 6)) and not index.append(AbortedTxn(1, 0, 5, 6))
    index.append(AbortedTxn(2, 3, 9, 10))
    index.close()
    with open(tmp_path / "0.txnindex", "ab") as f:
        f.write(b"\x00\x01")  # a torn write
    reloaded = TransactionIndex(tmp_path / "0.txnindex")
    assert reloaded.entries == [AbortedTxn(1, 0, 5, 6), AbortedTxn(2, 3, 9, 10)]
    reloaded.truncate_to_offset(9)
    assert reloaded.overlapping(0, 100) == [AbortedTxn(1, 0, 5, 6)]
    reloaded.close()


def test_offsets_topic_markers_are_internal(tmp_path: Path) -> None:
    async def body(core: BrokerCore) -> None:
        assert (await core.produce(OFFSETS_TOPIC, 0, b"")).error_code == ErrorCode.INVALID_TOPIC_EXCEPTION
        assert (await core.produce("__transaction_state", 0, b"")).error_code == ErrorCode.INVALID_TOPIC_EXCEPTION

    with_core(tmp_path, body)


def test_many_short_transactions_keep_the_lso_moving(tmp_path: Path) -> None:
    async def body(core: BrokerCore) -> None:
        await core.create_topics([NewTopic("t", 1)])
        txn = Txn(core, "many")
        await txn.init()
        for i in range(50):
            txn.add("t", 0)
            await txn.send("t", 0, [b"%d" % i])
            assert txn.end(commit=i % 2 == 0) == 0
        result = await fetch(core, "t", ISOLATION_READ_COMMITTED)
        assert result.last_stable_offset == result.high_watermark == 100
        assert visible(result) == [b"%d" % i for i in range(0, 50, 2)]
        assert len(result.aborted_transactions) == 25

    with_core(tmp_path, body)


def test_cleaning_the_offsets_topic_keeps_the_last_committed_transactional_offset(tmp_path: Path) -> None:
    """Every exactly-once commit writes a transactional batch and a marker to __consumer_offsets;
    the cleaner must compact committed ones and drop aborted ones, or the topic grows forever."""
    from flowbus.log.cleaner import LogCleaner

    clock = ManualClock(now_ms=BASE_TS + 10_000)

    async def first(core: BrokerCore) -> None:
        await core.create_topics([NewTopic("in", 1)])
        txn = Txn(core, "eos")
        await txn.init()
        for i in range(40):
            core.txn.add_offsets(txn.tid, txn.pid, txn.epoch, "g")
            await core.txn.txn_offset_commit(txn.tid, "g", txn.pid, txn.epoch, -1, "", [OffsetToCommit("in", 0, i)])
            assert txn.end(commit=i % 4 != 3) == 0
        plog = core.logs.get_log(OFFSETS_TOPIC, 0)
        plog.roll()
        plog.flush()
        before = plog.size_bytes
        LogCleaner(clock).clean_all([plog])
        data_batches = [h for h, _ in plog.iter_batches() if not h.is_control]
        assert len(data_batches) == 1 and plog.size_bytes < before
        assert core.groups.fetch_offsets("g", [("in", 0)])[1][0].offset == 38

    async def second(core: BrokerCore) -> None:
        assert core.groups.fetch_offsets("g", [("in", 0)])[1][0].offset == 38

    with_core(tmp_path, first, clock=clock)
    with_core(tmp_path, second, clock=clock)


def test_read_committed_fetches_progress_across_a_long_run_of_aborted_data(tmp_path: Path) -> None:
    """Small fetches over hundreds of aborted batches each return data (the client drops it and
    moves on), so a read_committed consumer never stalls before the committed record."""

    async def body(core: BrokerCore) -> None:
        await core.create_topics([NewTopic("t", 1)])
        txn = Txn(core, "aborts")
        await txn.init()
        for i in range(200):
            txn.add("t", 0)
            await txn.send("t", 0, [b"x" * 100])
            txn.end(commit=False)
        txn.add("t", 0)
        await txn.send("t", 0, [b"kept"])
        txn.end(commit=True)
        offset, seen, fetches = 0, [], 0
        while offset < 402 and fetches < 1_000:
            [result] = await core.fetch(
                [FetchRequestPartition("t", 0, offset, 300)],
                max_wait_ms=0, min_bytes=1, max_bytes=300, isolation_level=ISOLATION_READ_COMMITTED,
            )
            fetches += 1
            assert result.records, f"no progress at offset {offset}"
            seen += visible(result)
            offset = max(h.last_offset for _, h in iter_batches(bytes(result.records))) + 1
        assert seen == [b"kept"] and offset == 402

    with_core(tmp_path, body)


def test_fencing_init_waits_for_the_abort_of_the_old_transaction(tmp_path: Path) -> None:
    async def body(core: BrokerCore) -> None:
        await core.create_topics([NewTopic("t", 1)])
        old = Txn(core, "slow-abort")
        await old.init()
        old.add("t", 0)
        await old.send("t", 0, [b"v"])
        real = core.write_txn_marker

        def failing(*args: object, **kwargs: object) -> None:
            raise OSError("disk full")

        core.write_txn_marker = failing  # type: ignore[method-assign]
        new = Txn(core, "slow-abort")
        assert await new.init() == ErrorCode.CONCURRENT_TRANSACTIONS
        assert core.txn.describe("slow-abort").state is TxnState.PREPARE_ABORT
        core.write_txn_marker = real  # type: ignore[method-assign]
        assert core.txn.tick() == 1
        assert await new.init() == 0 and new.epoch == old.epoch + 2
        assert old.end(commit=True) == ErrorCode.PRODUCER_FENCED
        assert visible(await fetch(core, "t", ISOLATION_READ_COMMITTED)) == []

    with_core(tmp_path, body)
