"""Durable acks for transactions (issue 10, item 2): with the broker-wide ``flush.messages=1``
every transaction-coordinator answer that reports a state change waits for the fsync of the
``__transaction_state`` record it wrote, and an end's completion waits for its markers' fsync.

The proofs hold fsyncs: ``os.fsync`` is wrapped so that fsyncs of chosen segment files wait at
a gate while the test checks that no answer left (an answer sent before its fsync would be
there already), and so that the bytes each fsync made durable are recorded per file. A
*machine crash* is simulated from that record: the data directory is copied while the broker
runs and every ``.log`` file of the copy is cut to its durable bytes (what the page cache held
beyond them is lost); a second broker recovers from the copy.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import threading
import time
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from flowbus.broker.config import BrokerConfig
from flowbus.broker.core import ISOLATION_READ_COMMITTED, BrokerCore, NewTopic
from flowbus.broker.group_coordinator import GroupConfig
from flowbus.broker.handlers import ConnectionInfo, Handlers
from flowbus.broker.txn_state import TXN_STATE_TOPIC, TxnState, decode_txn_record
from flowbus.log.config import LONG_MAX
from flowbus.protocol.api import ApiKey
from flowbus.protocol.codec import RequestHeader
from flowbus.protocol.error_codes import ErrorCode
from flowbus.records.builder import BatchBuilder
from flowbus.records.record import decode_batch
from tests.broker.test_txn_coordinator import BASE_TS, fetch, visible

pytestmark = pytest.mark.timeout(60)

#: How long a held fsync waits at the gate at most (a failing test must not hang).
GATE_TIMEOUT_S = 10.0
#: The window in which an answer sent before its fsync would show up.
EARLY_ANSWER_WINDOW_S = 0.1
TID = "durable-tx"
#: A slow disk's fsync (test of a crash right after an answer).
SLOW_FSYNC_S = 0.02
CONN = ConnectionInfo("127.0.0.1")


@dataclass
class Disk:
    """Wraps os.fsync of segment files: durable bytes per file, and a gate to hold some.

    ``hold(part)`` makes every later fsync of a ``.log`` file whose path contains ``part``
    wait until ``release()``; ``waiting`` is set when one is waiting.
    """

    real_fsync: Any = os.fsync
    durable: dict[str, int] = field(default_factory=dict)
    held: str | None = None
    #: fsyncs of ``.log`` files whose path contains this fail with EIO.
    failing: str | None = None
    #: Added to every fsync of a ``.log`` file, as a slow disk would: an fsync that started
    #: just before an answer cannot have finished by the time the test looks.
    delay_s: float = 0.0
    gate: threading.Event = field(default_factory=threading.Event)
    waiting: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.gate.set()

    def fsync(self, fd: int) -> None:
        path = os.path.realpath(os.readlink(f"/proc/self/fd/{fd}"))
        if not path.endswith(".log"):
            self.real_fsync(fd)
            return
        failing = self.failing
        if failing is not None and failing in path:
            raise OSError(errno.EIO, "injected fsync failure")
        held = self.held
        if held is not None and held in path:
            self.waiting.set()
            self.gate.wait(GATE_TIMEOUT_S)
        size = os.fstat(fd).st_size  # everything written before the fsync is durable after it
        time.sleep(self.delay_s)
        self.real_fsync(fd)
        with self.lock:
            self.durable[path] = max(self.durable.get(path, 0), size)

    def hold(self, part: str) -> None:
        self.waiting.clear()
        self.gate.clear()
        self.held = part

    def release(self) -> None:
        self.held = None
        self.gate.set()

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return dict(self.durable)


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> Iterator[Disk]:
    recorder = Disk()
    monkeypatch.setattr(os, "fsync", recorder.fsync)
    yield recorder
    recorder.release()


def crash_image(data_dir: Path, image_dir: Path, durable: dict[str, int]) -> None:
    """The data directory as a machine crash now would leave it: ``.log`` files cut to their
    fsynced bytes (files never fsynced lose everything)."""
    shutil.copytree(data_dir, image_dir)
    for path in image_dir.rglob("*.log"):
        original = os.path.realpath(data_dir / path.relative_to(image_dir))
        keep = durable.get(original, 0)
        if path.stat().st_size > keep:
            os.truncate(path, keep)


def header(api_key: ApiKey, version: int) -> RequestHeader:
    return RequestHeader(api_key, version, 1, "test")


class NetTxn:
    """A transactional producer speaking through the network handlers (as a client would)."""

    def __init__(self, handlers: Handlers) -> None:
        self.h = handlers
        self.pid = -1
        self.epoch = -1
        self.sequence = 0

    async def init(self) -> int:
        body = await self.h.init_producer_id(
            header(ApiKey.INIT_PRODUCER_ID, 4),
            {"transactional_id": TID, "transaction_timeout_ms": 60_000, "producer_id": -1, "producer_epoch": -1},
            CONN,
        )
        assert body is not None
        if body["error_code"] == ErrorCode.NONE:
            self.pid, self.epoch = body["producer_id"], body["producer_epoch"]
        return int(body["error_code"])

    async def add(self, topic: str, partition: int) -> int:
        body = await self.h.add_partitions_to_txn(
            header(ApiKey.ADD_PARTITIONS_TO_TXN, 3),
            {
                "v3_and_below_transactional_id": TID,
                "v3_and_below_producer_id": self.pid,
                "v3_and_below_producer_epoch": self.epoch,
                "v3_and_below_topics": [{"name": topic, "partitions": [partition]}],
            },
            CONN,
        )
        assert body is not None
        return int(body["results_by_topic_v3_and_below"][0]["results_by_partition"][0]["partition_error_code"])

    async def add_offsets(self, group_id: str) -> int:
        body = await self.h.add_offsets_to_txn(
            header(ApiKey.ADD_OFFSETS_TO_TXN, 3),
            {"transactional_id": TID, "producer_id": self.pid, "producer_epoch": self.epoch, "group_id": group_id},
            CONN,
        )
        assert body is not None
        return int(body["error_code"])

    async def commit_offset(self, group_id: str, topic: str, offset: int) -> int:
        body = await self.h.txn_offset_commit(
            header(ApiKey.TXN_OFFSET_COMMIT, 3),
            {
                "transactional_id": TID,
                "group_id": group_id,
                "producer_id": self.pid,
                "producer_epoch": self.epoch,
                "generation_id": -1,
                "member_id": "",
                "group_instance_id": None,
                "topics": [
                    {
                        "name": topic,
                        "partitions": [
                            {"partition_index": 0, "committed_offset": offset, "committed_leader_epoch": -1,
                             "committed_metadata": None}
                        ],
                    }
                ],
            },
            CONN,
        )
        assert body is not None
        return int(body["topics"][0]["partitions"][0]["error_code"])

    async def send(self, core: BrokerCore, topic: str, values: list[bytes]) -> int:
        builder = BatchBuilder(
            producer_id=self.pid, producer_epoch=self.epoch, base_sequence=self.sequence, is_transactional=True
        )
        for value in values:
            builder.append(None, value, timestamp_ms=BASE_TS)
        result = await core.produce(topic, 0, builder.build())
        self.sequence += len(values)
        return result.error_code

    async def end(self, commit: bool) -> int:
        body = await self.h.end_txn(
            header(ApiKey.END_TXN, 3),
            {"transactional_id": TID, "producer_id": self.pid, "producer_epoch": self.epoch, "committed": commit},
            CONN,
        )
        assert body is not None
        return int(body["error_code"])


def run(tmp_path: Path, body: Any, *, durable: bool) -> None:
    """Run ``body(core, handlers)`` on a broker with topics ``t`` and ``src`` (one partition)."""

    async def main() -> None:
        config = BrokerConfig(
            data_dir=tmp_path / "data",
            groups=GroupConfig(group_initial_rebalance_delay_ms=0),
            log_flush_interval_messages=1 if durable else LONG_MAX,
        )
        core = BrokerCore(config)
        await core.start()
        await core.wait_loaded()
        try:
            created = await core.create_topics([NewTopic("t", 1), NewTopic("src", 1)])
            assert all(c.error_code == ErrorCode.NONE for c in created)
            await body(core, Handlers(core))
        finally:
            await core.close()

    asyncio.run(main())


async def answered_only_after_fsync(disk: Disk, part: str, call: Awaitable[int]) -> int:
    """Hold the fsyncs of ``part``'s segment files while ``call`` runs: it must not answer
    before one of them was released; returns its error code."""
    disk.hold(part)
    task = asyncio.ensure_future(call)
    try:
        await asyncio.sleep(EARLY_ANSWER_WINDOW_S)
        assert not task.done(), f"answered before the fsync of {part}: {task.result() if task.done() else ''}"
        assert disk.waiting.is_set(), f"no fsync of {part} was asked for"
    finally:
        disk.release()
    return await asyncio.wait_for(task, GATE_TIMEOUT_S)


def state_records(core: BrokerCore) -> list[TxnState]:
    """The states of TID logged in ``__transaction_state``, oldest first."""
    plog = core.logs.get_log(TXN_STATE_TOPIC, 0)
    states = []
    for _, raw in plog.iter_batches(plog.log_start_offset):
        for record in decode_batch(raw)[1]:
            assert record.key is not None
            decoded = decode_txn_record(record.key, record.value)
            if decoded is not None and decoded[0] == TID and decoded[1] is not None:
                states.append(decoded[1].state)
    return states


STATE_FILES = f"/{TXN_STATE_TOPIC}-0/"


def test_every_state_change_is_answered_after_its_fsync_with_the_broker_setting(
    tmp_path: Path, disk: Disk
) -> None:
    async def body(core: BrokerCore, handlers: Handlers) -> None:
        txn = NetTxn(handlers)
        state = core.logs.get_log(TXN_STATE_TOPIC, 0)
        assert await answered_only_after_fsync(disk, STATE_FILES, txn.init()) == 0
        assert state.recovery_point == state.log_end_offset
        assert await answered_only_after_fsync(disk, STATE_FILES, txn.add("t", 0)) == 0
        assert state.recovery_point == state.log_end_offset
        assert await answered_only_after_fsync(disk, STATE_FILES, txn.add_offsets("g")) == 0
        assert state.recovery_point == state.log_end_offset
        assert await txn.send(core, "t", [b"v"]) == 0
        # TxnOffsetCommit: its pending offset records in __consumer_offsets are fsynced first.
        offsets_part = f"/__consumer_offsets-{core.offsets_partition_key('g')[1]}/"
        assert await answered_only_after_fsync(disk, offsets_part, txn.commit_offset("g", "src", 7)) == 0
        # EndTxn: the decision and the markers (data partition, offsets partition) are fsynced.
        assert await answered_only_after_fsync(disk, STATE_FILES, txn.end(commit=True)) == 0
        assert state_records(core)[-3:] == [TxnState.ONGOING, TxnState.PREPARE_COMMIT, TxnState.COMPLETE_COMMIT]
        _, fetched = core.groups.fetch_offsets("g", [("src", 0)])
        assert fetched[0].offset == 7
        # The markers too: an end waits for the marker's fsync as well as the decision's.
        assert await answered_only_after_fsync(disk, "/t-0/", txn_after(txn)) == 0
        data = core.logs.get_log("t", 0)
        assert data.recovery_point == data.log_end_offset
        assert state_records(core)[-1] is TxnState.COMPLETE_ABORT

    run(tmp_path, body, durable=True)


async def txn_after(txn: NetTxn) -> int:
    """A second transaction ended by abort (its marker goes to ``t-0`` as well)."""
    assert await txn.add("t", 0) == 0
    return await txn.end(commit=False)


def test_an_end_is_completed_only_after_its_markers_are_fsynced(tmp_path: Path, disk: Disk) -> None:
    """No CompleteCommit/CompleteAbort is written while a marker of its transaction may still be
    lost from the page cache (recovery would trust it and never rewrite the marker)."""
    early: list[tuple[str, int, int]] = []

    async def body(core: BrokerCore, handlers: Handlers) -> None:
        real_append = core.append_internal

        def checking_append(topic: str, partition: int, batch: bytes) -> Any:
            if topic == TXN_STATE_TOPIC:
                record = decode_batch(batch)[1][0]
                assert record.key is not None
                decoded = decode_txn_record(record.key, record.value)
                if decoded is not None and decoded[1] is not None and decoded[1].state in (
                    TxnState.COMPLETE_COMMIT,
                    TxnState.COMPLETE_ABORT,
                ):
                    for name in ("t", "__consumer_offsets"):
                        p = core.offsets_partition_key("g")[1] if name == "__consumer_offsets" else 0
                        plog = core.logs.get_log(name, p)
                        if plog.recovery_point < plog.log_end_offset:
                            early.append((name, plog.recovery_point, plog.log_end_offset))
            return real_append(topic, partition, batch)

        core.append_internal = checking_append  # type: ignore[method-assign]
        txn = NetTxn(handlers)
        assert await txn.init() == 0
        for commit in (True, False):
            assert await txn.add("t", 0) == 0
            assert await txn.add_offsets("g") == 0
            assert await txn.send(core, "t", [b"v"]) == 0
            assert await txn.commit_offset("g", "src", 3) == 0
            assert await txn.end(commit) == 0
        assert state_records(core)[-1] is TxnState.COMPLETE_ABORT

    run(tmp_path, body, durable=True)
    assert not early, f"completion logged before its markers were fsynced: {early}"


def test_without_the_setting_no_answer_waits_for_an_fsync(tmp_path: Path, disk: Disk) -> None:
    """The default path (flush.ms) is unchanged: every answer comes while all fsyncs are held."""

    async def body(core: BrokerCore, handlers: Handlers) -> None:
        disk.hold(".log")
        txn = NetTxn(handlers)
        try:
            for _ in range(3):
                steps = [txn.init(), txn.add("t", 0), txn.add_offsets("g")]
                for step in steps:
                    assert await asyncio.wait_for(step, 1.0) == 0
                assert await asyncio.wait_for(txn.send(core, "t", [b"v"]), 1.0) == 0
                assert await asyncio.wait_for(txn.commit_offset("g", "src", 1), 1.0) == 0
                assert await asyncio.wait_for(txn.end(commit=True), 1.0) == 0
                txn.sequence = 0
            assert state_records(core)[-1] is TxnState.COMPLETE_COMMIT
        finally:
            disk.release()

    run(tmp_path, body, durable=False)


async def recover(image: Path) -> tuple[list[bytes], int, TxnState | None]:
    """Start a broker on a crash image: (read_committed values of t-0, committed offset of
    group g on src-0, the state of TID)."""
    core = BrokerCore(BrokerConfig(data_dir=image, log_flush_interval_messages=1))
    await core.start()
    await core.wait_loaded()
    try:
        for _ in range(100):  # a recovered end completes once its markers are fsynced
            meta = core.txn.describe(TID)
            if meta is None or not meta.state.is_preparing:
                break
            await asyncio.sleep(0.01)
        result = await fetch(core, "t", ISOLATION_READ_COMMITTED)
        _, fetched = core.groups.fetch_offsets("g", [("src", 0)])
        meta = core.txn.describe(TID)
        return visible(result), fetched[0].offset, meta.state if meta is not None else None
    finally:
        await core.close()


async def open_transaction(core: BrokerCore, txn: NetTxn) -> None:
    assert await txn.init() == 0
    assert await txn.add("t", 0) == 0
    assert await txn.add_offsets("g") == 0
    assert await txn.send(core, "t", [b"committed"]) == 0
    assert await txn.commit_offset("g", "src", 42) == 0


def test_an_answered_commit_survives_a_machine_crash(tmp_path: Path, disk: Disk) -> None:
    """The machine dies just after EndTxn was answered: the data and the offsets are committed
    after recovery, whatever the page cache held."""
    image = tmp_path / "image"
    disk.delay_s = SLOW_FSYNC_S

    async def body(core: BrokerCore, handlers: Handlers) -> None:
        txn = NetTxn(handlers)
        await open_transaction(core, txn)
        assert await txn.end(commit=True) == 0
        crash_image(tmp_path / "data", image, disk.snapshot())  # no await: nothing else ran

    run(tmp_path, body, durable=True)
    assert asyncio.run(recover(image)) == ([b"committed"], 42, TxnState.COMPLETE_COMMIT)


def test_a_durable_decision_is_completed_on_recovery_when_its_markers_were_lost(
    tmp_path: Path, disk: Disk
) -> None:
    """The machine dies after PrepareCommit was fsynced but before the marker was: recovery
    writes the markers again, so the transaction ends committed (none left open)."""
    image = tmp_path / "image"

    async def body(core: BrokerCore, handlers: Handlers) -> None:
        txn = NetTxn(handlers)
        await open_transaction(core, txn)
        state = core.logs.get_log(TXN_STATE_TOPIC, 0)
        disk.hold("/t-0/")
        end = asyncio.ensure_future(txn.end(commit=True))
        try:
            for _ in range(int(GATE_TIMEOUT_S / 0.01)):  # the decision durable, the marker held
                if disk.waiting.is_set() and state.recovery_point >= state.log_end_offset:
                    break
                await asyncio.sleep(0.01)
            assert disk.waiting.is_set()
            assert TxnState.PREPARE_COMMIT in state_records(core)
            crash_image(tmp_path / "data", image, disk.snapshot())
        finally:
            disk.release()
        assert await end == 0

    run(tmp_path, body, durable=True)
    assert asyncio.run(recover(image)) == ([b"committed"], 42, TxnState.COMPLETE_COMMIT)


def test_embedded_transport_commit_returns_after_the_fsync(tmp_path: Path, disk: Disk) -> None:
    from flowbus.transports.embedded import EmbeddedTransport

    async def main() -> None:
        transport = EmbeddedTransport(f"embedded://{tmp_path}/data?flush.messages=1")
        await transport.start()
        try:
            await transport.core.create_topics([NewTopic("t", 1)])
            producer = transport.producer(transactional_id=TID)
            disk.hold(STATE_FILES)
            init = asyncio.ensure_future(producer.init_transactions())
            await asyncio.sleep(EARLY_ANSWER_WINDOW_S)
            assert not init.done() and disk.waiting.is_set()
            disk.release()
            await asyncio.wait_for(init, GATE_TIMEOUT_S)
            producer.begin_transaction()
            producer.send_soon("t", b"v")
            await producer.flush()
            disk.hold(STATE_FILES)
            commit = asyncio.ensure_future(producer.commit_transaction())
            await asyncio.sleep(EARLY_ANSWER_WINDOW_S)
            assert not commit.done() and disk.waiting.is_set()
            disk.release()
            await asyncio.wait_for(commit, GATE_TIMEOUT_S)
            core = transport.core
            data = core.logs.get_log("t", 0)
            assert data.recovery_point == data.log_end_offset  # the marker too
            assert state_records(core)[-1] is TxnState.COMPLETE_COMMIT
        finally:
            disk.release()
            await transport.close()

    asyncio.run(main())


def test_a_failed_fsync_is_answered_not_coordinator_and_the_retry_succeeds(
    tmp_path: Path, disk: Disk
) -> None:
    """Kafka's coordinator maps a storage error to NOT_COORDINATOR: clients retry, and the
    retry's wait fsyncs the same record again. An end whose marker could not be fsynced stays
    in Prepare (CONCURRENT_TRANSACTIONS) until the tick completes it."""

    async def body(core: BrokerCore, handlers: Handlers) -> None:
        txn = NetTxn(handlers)
        disk.failing = STATE_FILES
        assert await txn.init() == ErrorCode.NOT_COORDINATOR
        disk.failing = None
        assert await txn.init() == 0
        assert await txn.add("t", 0) == 0
        assert await txn.send(core, "t", [b"v"]) == 0
        disk.failing = "/t-0/"
        assert await txn.end(commit=True) == ErrorCode.NOT_COORDINATOR
        assert core.txn.describe(TID).state is TxnState.PREPARE_COMMIT  # type: ignore[union-attr]
        disk.failing = None
        for _ in range(300):  # the tick (every 100 ms) writes the marker again and completes
            error = await txn.end(commit=True)
            if error != ErrorCode.CONCURRENT_TRANSACTIONS:
                break
            await asyncio.sleep(0.01)
        assert error == 0
        assert state_records(core)[-1] is TxnState.COMPLETE_COMMIT
        assert visible(await fetch(core, "t", ISOLATION_READ_COMMITTED)) == [b"v"]

    run(tmp_path, body, durable=True)


def test_embedded_batches_shipped_while_the_partition_add_waits_keep_their_order(tmp_path: Path, disk: Disk) -> None:
    """With durable acks the embedded producer's first batch of a partition waits for the fsync
    of the AddPartitionsToTxn record; batches shipped meanwhile (one per loop turn here) must be
    appended after it, in order, or their sequences would be refused."""
    from flowbus.transports.embedded import EmbeddedTransport

    async def main() -> None:
        transport = EmbeddedTransport(f"embedded://{tmp_path}/data?flush.messages=1")
        await transport.start()
        try:
            await transport.core.create_topics([NewTopic("t", 1)])
            producer = transport.producer(transactional_id=TID)
            await producer.init_transactions()
            for round_ in range(3):
                producer.begin_transaction()
                for i in range(200):  # one batch shipped per loop turn, across the fsyncs
                    producer.send_soon("t", b"%d-%d" % (round_, i))
                    await asyncio.sleep(0)
                await producer.commit_transaction()
            result = await fetch(transport.core, "t", ISOLATION_READ_COMMITTED)
            assert visible(result) == [b"%d-%d" % (r, i) for r in range(3) for i in range(200)]
        finally:
            await transport.close()

    asyncio.run(main())
