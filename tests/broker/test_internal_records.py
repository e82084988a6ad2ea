"""The internal topics' records are Kafka's, byte for byte, and old flowbus data still loads.

Expected bytes are built here with ``struct`` from the facts of Kafka's JSON schemas and read
back with an independent reader (``tests/support/kafka_internal_records.py``), never with
flowbus's own schema engine. Records in the layout flowbus wrote before (issue 12, item 3) are
built with that old code, copied below, and must replay: both through the decoders and through
a data directory that a restarted :class:`BrokerCore` loads.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from flowbus.broker.config import BrokerConfig
from flowbus.broker.core import OFFSETS_TOPIC, BrokerCore, NewTopic
from flowbus.broker.group_coordinator import (
    CommittedOffset,
    GroupConfig,
    GroupCoordinator,
    GroupState,
    JoinResult,
    OffsetToCommit,
)
from flowbus.broker.group_records import (
    GroupMetadata,
    GroupRecord,
    MemberMetadata,
    OffsetRecord,
    decode_offsets_record,
    encode_group_key,
    encode_group_value,
    encode_offset_key,
    encode_offset_value,
)
from flowbus.broker.txn_state import (
    TXN_STATE_TOPIC,
    TxnMetadata,
    TxnState,
    decode_txn_record,
    encode_txn_key,
    encode_txn_value,
)
from flowbus.clock import ManualClock
from flowbus.protocol.codec import encode_consumer_subscription
from flowbus.protocol.error_codes import ErrorCode
from flowbus.records.builder import BatchBuilder
from flowbus.records.record import decode_batch
from tests.support import kafka_internal_records as ref

pytestmark = pytest.mark.timeout(60)
T = TypeVar("T")
NOW_MS = 1_764_000_000_000
SESSION_MS = 10_000
REBALANCE_MS = 5_000
#: The first rebalance waits this long, so that members joining together form one generation.
INITIAL_DELAY_MS = 1_000


def s16(text: str | None) -> bytes:
    """A Kafka string: int16 length (-1 for null), then UTF-8."""
    if text is None:
        return struct.pack(">h", -1)
    raw = text.encode()
    return struct.pack(">h", len(raw)) + raw


def b32(data: bytes) -> bytes:
    return struct.pack(">i", len(data)) + data


def uvarint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def compact(text: str) -> bytes:
    raw = text.encode()
    return uvarint(len(raw) + 1) + raw


# -- the layout of the previous main, copied from its code (only to build old records) --------


def old_offset_value(offset: int, leader_epoch: int, metadata: str | None, commit_ms: int) -> bytes:
    """flowbus's committed-offset value before Kafka's format: labelled v1, v3's fields."""
    meta = struct.pack(">h", -1) if metadata is None else s16(metadata)
    return struct.pack(">hqi", 1, offset, leader_epoch) + meta + struct.pack(">q", commit_ms)


def old_txn_value(
    pid: int, epoch: int, timeout_ms: int, state: int,
    partitions: list[tuple[str, int]], start_ms: int, update_ms: int,
) -> bytes:
    """flowbus's transaction value before Kafka's format: labelled v0, flat partitions, start
    before update."""
    parts = [struct.pack(">hqhib", 0, pid, epoch, timeout_ms, state), struct.pack(">i", len(partitions))]
    for topic, partition in sorted(partitions):
        parts.append(s16(topic) + struct.pack(">i", partition))
    parts.append(struct.pack(">qq", start_ms, update_ms))
    return b"".join(parts)


# -- __consumer_offsets: committed offsets ----------------------------------------------------


def test_offset_records_are_kafkas_key_v1_and_value_v3() -> None:
    key = encode_offset_key("grp", "topic", 7)
    assert key == struct.pack(">h", 1) + s16("grp") + s16("topic") + struct.pack(">i", 7)
    value = encode_offset_value(CommittedOffset(42, 5, "héllo", NOW_MS))
    assert value == struct.pack(">hqi", 3, 42, 5) + s16("héllo") + struct.pack(">q", NOW_MS)
    assert ref.read_key(key) == ("offset", 1, {"group": "grp", "topic": "topic", "partition": 7})
    assert ref.read_offset_value(value) == (
        3, {"offset": 42, "leader_epoch": 5, "metadata": "héllo", "commit_timestamp": NOW_MS}
    )
    # Kafka's metadata is not nullable: no metadata is "".
    assert ref.read_offset_value(encode_offset_value(CommittedOffset(1, -1, None, NOW_MS)))[1][
        "metadata"
    ] == ""
    decoded = decode_offsets_record(key, value)
    assert decoded == OffsetRecord("grp", "topic", 7, CommittedOffset(42, 5, "héllo", NOW_MS))
    assert decode_offsets_record(key, None) == OffsetRecord("grp", "topic", 7, None)


def test_offset_with_an_expiry_is_value_v1_as_kafka_writes_it() -> None:
    value = encode_offset_value(CommittedOffset(9, 4, "m", NOW_MS, NOW_MS + 60_000))
    assert value == struct.pack(">hq", 1, 9) + s16("m") + struct.pack(">qq", NOW_MS, NOW_MS + 60_000)
    assert ref.read_offset_value(value)[0] == 1
    record = decode_offsets_record(encode_offset_key("g", "t", 0), value)
    assert isinstance(record, OffsetRecord)
    assert record.committed == CommittedOffset(9, -1, "m", NOW_MS, NOW_MS + 60_000)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (struct.pack(">hq", 0, 11) + s16("a") + struct.pack(">q", NOW_MS), CommittedOffset(11, -1, "a", NOW_MS)),
        (struct.pack(">hq", 2, 12) + s16("") + struct.pack(">q", NOW_MS), CommittedOffset(12, -1, "", NOW_MS)),
        # v4, flexible: compact metadata, then an empty tagged-field section.
        (struct.pack(">hqi", 4, 13, 2) + compact("b") + struct.pack(">q", NOW_MS) + b"\x00",
         CommittedOffset(13, 2, "b", NOW_MS)),
        # v5 does not exist yet: read as v4 (KIP-915: later versions only add tagged fields).
        (struct.pack(">hqi", 5, 14, 2) + compact("") + struct.pack(">q", NOW_MS) + b"\x01\x07\x01\x00",
         CommittedOffset(14, 2, "", NOW_MS)),
    ],
)
def test_every_kafka_offset_value_version_is_read(value: bytes, expected: CommittedOffset) -> None:
    record = decode_offsets_record(encode_offset_key("g", "t", 0), value)
    assert isinstance(record, OffsetRecord) and record.committed == expected


@pytest.mark.parametrize(
    ("epoch", "metadata"),
    [(-1, None), (-1, "meta"), (0, None), (3, ""), (70_000, "x" * 10),
     # The one shape both layouts can parse: an epoch below 65536 and 4 bytes of metadata.
     (0, "abcd"), (7, "wxyz")],
)
def test_old_flowbus_offset_values_still_load(epoch: int, metadata: str | None) -> None:
    value = old_offset_value(1234, epoch, metadata, NOW_MS)
    record = decode_offsets_record(encode_offset_key("g", "t", 0), value)
    assert isinstance(record, OffsetRecord)
    assert record.committed == CommittedOffset(1234, epoch, metadata or "", NOW_MS)


def test_other_key_versions_are_skipped_not_fatal() -> None:
    """Kafka 4 writes consumer-group records (key versions 3 and up) to the same topic."""
    coordinator = GroupCoordinator(clock=ManualClock(), store=MemoryStore())
    coordinator.load_record(struct.pack(">h", 3) + s16("g"), b"\x00\x00whatever")
    coordinator.load_record(struct.pack(">h", 1) + b"\x00", b"")  # malformed: logged, skipped
    coordinator.finish_loading()
    assert coordinator.list_groups() == (ErrorCode.NONE, [])


# -- __consumer_offsets: group metadata --------------------------------------------------------


def test_group_records_are_kafkas_key_v2_and_value_v3() -> None:
    metadata = GroupMetadata(
        "consumer", 4, "range", "m-1", NOW_MS,
        [
            MemberMetadata("m-1", "static-1", "client", "/127.0.0.1", 30_000, 10_000, b"sub1", b"asg1"),
            MemberMetadata("m-2", None, "client", "/127.0.0.1", -1, 6_000, b"", b""),
        ],
    )
    key = encode_group_key("grp")
    value = encode_group_value(metadata)
    assert key == struct.pack(">h", 2) + s16("grp")
    assert value == (
        struct.pack(">h", 3) + s16("consumer") + struct.pack(">i", 4) + s16("range") + s16("m-1")
        + struct.pack(">q", NOW_MS) + struct.pack(">i", 2)
        + s16("m-1") + s16("static-1") + s16("client") + s16("/127.0.0.1")
        + struct.pack(">ii", 30_000, 10_000) + b32(b"sub1") + b32(b"asg1")
        + s16("m-2") + s16(None) + s16("client") + s16("/127.0.0.1")
        + struct.pack(">ii", -1, 6_000) + b32(b"") + b32(b"")
    )
    version, fields = ref.read_group_value(value)
    assert version == 3 and fields["generation"] == 4 and fields["members"][0]["group_instance_id"] == "static-1"
    assert decode_offsets_record(key, value) == GroupRecord("grp", metadata)
    assert decode_offsets_record(key, None) == GroupRecord("grp", None)
    empty = GroupMetadata("consumer", 5, None, None, NOW_MS, [])
    assert decode_offsets_record(key, encode_group_value(empty)) == GroupRecord("grp", empty)


def test_older_and_flexible_group_values_are_read() -> None:
    key = encode_group_key("g")
    member_v0 = s16("m") + s16("c") + s16("h") + struct.pack(">i", 6_000) + b32(b"s") + b32(b"a")
    v0 = struct.pack(">h", 0) + s16("consumer") + struct.pack(">i", 2) + s16("range") + s16("m") + struct.pack(">i", 1) + member_v0
    record = decode_offsets_record(key, v0)
    assert isinstance(record, GroupRecord) and record.metadata is not None
    assert record.metadata.members == [MemberMetadata("m", None, "c", "h", -1, 6_000, b"s", b"a")]
    v4 = (
        struct.pack(">h", 4) + compact("consumer") + struct.pack(">i", 3) + compact("range") + compact("m")
        + struct.pack(">q", NOW_MS) + uvarint(2)
        + compact("m") + b"\x00" + compact("c") + compact("h") + struct.pack(">ii", 9_000, 6_000)
        + uvarint(2) + b"s" + uvarint(2) + b"a" + b"\x00"
        + b"\x00"
    )
    record = decode_offsets_record(key, v4)
    assert isinstance(record, GroupRecord) and record.metadata is not None
    assert (record.metadata.generation, record.metadata.members[0].rebalance_timeout_ms) == (3, 9_000)


# -- __transaction_state -----------------------------------------------------------------------


def test_txn_records_are_kafkas_key_v0_and_value_v0() -> None:
    meta = TxnMetadata("tid", 42, 7, 60_000, TxnState.ONGOING, {("b", 3), ("a", 2), ("a", 0)}, 10, 20)
    key = encode_txn_key("tid")
    value = encode_txn_value(meta)
    assert key == struct.pack(">h", 0) + s16("tid")
    assert value == (
        struct.pack(">hqhib", 0, 42, 7, 60_000, 1) + struct.pack(">i", 2)
        + s16("a") + struct.pack(">iii", 2, 0, 2) + s16("b") + struct.pack(">ii", 1, 3)
        + struct.pack(">qq", 20, 10)  # last update, then start
    )
    assert ref.read_txn_key(key) == (0, "tid")
    assert ref.read_txn_value(value)[1]["transaction_partitions"] == [("a", [0, 2]), ("b", [3])]
    assert decode_txn_record(key, value) == ("tid", meta)
    # Empty: the partitions are null, as Kafka writes them.
    empty = TxnMetadata("tid", 42, 8, 60_000, TxnState.EMPTY, set(), -1, 30)
    assert ref.read_txn_value(encode_txn_value(empty))[1]["transaction_partitions"] is None
    assert decode_txn_record(key, encode_txn_value(empty)) == ("tid", empty)
    done = TxnMetadata("tid", 42, 8, 60_000, TxnState.COMPLETE_COMMIT, set(), 25, 30)
    assert ref.read_txn_value(encode_txn_value(done))[1]["transaction_partitions"] == []
    assert decode_txn_record(key, encode_txn_value(done)) == ("tid", done)


def test_flexible_txn_value_v1_is_read() -> None:
    value = (
        struct.pack(">hq", 1, 42)
        + struct.pack(">hib", 7, 60_000, 4) + uvarint(2) + compact("t") + uvarint(2) + struct.pack(">i", 1) + b"\x00"
        + struct.pack(">qq", 20, 10)
        + uvarint(2) + uvarint(0) + uvarint(8) + struct.pack(">q", 41) + uvarint(2) + uvarint(2) + struct.pack(">h", 2)
    )
    decoded = decode_txn_record(encode_txn_key("x"), value)
    assert decoded == ("x", TxnMetadata("x", 42, 7, 60_000, TxnState.COMPLETE_COMMIT, {("t", 1)}, 10, 20))


@pytest.mark.parametrize(
    ("state", "partitions", "start_ms", "update_ms"),
    [
        (TxnState.ONGOING, [("orders", 0), ("orders", 2), ("__consumer_offsets", 0)], 100, 200),
        (TxnState.ONGOING, [("t", 0)], 100, 200),  # also Kafka's layout with no partitions, strictly
        (TxnState.PREPARE_COMMIT, [("t", 5)], 100, 100),
        (TxnState.COMPLETE_ABORT, [], -1, 300),  # both layouts parse: only the timestamp order differs
        (TxnState.EMPTY, [], -1, 300),
        (TxnState.COMPLETE_COMMIT, [], 150, 300),
    ],
)
def test_old_flowbus_txn_values_still_load(
    state: TxnState, partitions: list[tuple[str, int]], start_ms: int, update_ms: int
) -> None:
    value = old_txn_value(42, 3, 60_000, int(state), partitions, start_ms, update_ms)
    decoded = decode_txn_record(encode_txn_key("tid"), value)
    assert decoded == ("tid", TxnMetadata("tid", 42, 3, 60_000, state, set(partitions), start_ms, update_ms))


# -- the coordinator: group metadata written and replayed --------------------------------------


class MemoryStore:
    """An OffsetStore that keeps what it is given, in order."""

    def __init__(self) -> None:
        self.records: list[tuple[bytes, bytes | None]] = []

    async def append_offsets(self, group_id: str, records: list[tuple[bytes, bytes | None]]) -> None:
        self.records.extend(records)

    async def append_txn_offsets(
        self, group_id: str, producer_id: int, producer_epoch: int, records: list[tuple[bytes, bytes | None]]
    ) -> None:
        self.records.extend(records)

    def append_offsets_now(self, group_id: str, records: list[tuple[bytes, bytes | None]]) -> None:
        self.records.extend(records)

    def group_values(self, group_id: str) -> list[dict[str, Any] | None]:
        """The group's metadata records as the independent reader sees them, oldest first."""
        key = encode_group_key(group_id)
        return [None if v is None else ref.read_group_value(v)[1] for k, v in self.records if k == key]


def make(store: MemoryStore, clock: ManualClock) -> GroupCoordinator:
    coordinator = GroupCoordinator(
        clock=clock, store=store, config=GroupConfig(group_initial_rebalance_delay_ms=INITIAL_DELAY_MS)
    )
    coordinator.finish_loading()
    return coordinator


def restart(store: MemoryStore, clock: ManualClock) -> GroupCoordinator:
    """A restarted broker's coordinator: every record replayed in order."""
    coordinator = GroupCoordinator(
        clock=clock, store=store, config=GroupConfig(group_initial_rebalance_delay_ms=INITIAL_DELAY_MS)
    )
    for key, value in store.records:
        coordinator.load_record(key, value)
    coordinator.finish_loading()
    return coordinator


def run(test: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(asyncio.wait_for(test(), 5))


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


SUBSCRIPTION = encode_consumer_subscription(0, {"topics": ["t"], "user_data": None})


def join(coordinator: GroupCoordinator, instance_id: str | None, member_id: str = "") -> asyncio.Task[JoinResult]:
    return asyncio.ensure_future(
        coordinator.join_group(
            "g", member_id, "consumer", [("range", SUBSCRIPTION)],
            session_timeout_ms=SESSION_MS, rebalance_timeout_ms=REBALANCE_MS,
            group_instance_id=instance_id, client_id=f"client-{instance_id}", client_host="/10.0.0.1",
            require_known_member_id=False,
        )
    )


async def join_together(
    coordinator: GroupCoordinator, clock: ManualClock, *instance_ids: str | None
) -> list[JoinResult]:
    """Members joining an empty group at once: one generation, after the initial delay."""
    tasks = [join(coordinator, instance_id) for instance_id in instance_ids]
    await settle()
    clock.advance(INITIAL_DELAY_MS)
    coordinator.tick()
    return [await task for task in tasks]


async def stable_pair(coordinator: GroupCoordinator, clock: ManualClock) -> tuple[str, str]:
    """Static members ``a`` (leader) and ``b`` in a Stable generation 1."""
    a, b = await join_together(coordinator, clock, "a", "b")
    assert a.generation_id == b.generation_id == 1 and a.leader == a.member_id
    b_sync = asyncio.ensure_future(coordinator.sync_group("g", 1, b.member_id, {}))
    await settle()
    await coordinator.sync_group("g", 1, a.member_id, {a.member_id: b"for-a", b.member_id: b"for-b"})
    assert (await b_sync).assignment == b"for-b"
    return a.member_id, b.member_id


def test_a_completed_rebalance_writes_the_group_and_a_restart_resumes_it() -> None:
    async def body() -> None:
        clock, store = ManualClock(now_ms=NOW_MS), MemoryStore()
        coordinator = make(store, clock)
        a_id, b_id = await stable_pair(coordinator, clock)
        [written] = store.group_values("g")
        assert written is not None
        assert (written["protocol_type"], written["generation"], written["protocol"], written["leader"]) == (
            "consumer", 1, "range", a_id)
        assert [
            (m["member_id"], m["group_instance_id"], m["client_id"], m["client_host"],
             m["rebalance_timeout"], m["session_timeout"], m["subscription"], m["assignment"])
            for m in written["members"]
        ] == [
            (a_id, "a", "client-a", "/10.0.0.1", REBALANCE_MS, SESSION_MS, SUBSCRIPTION, b"for-a"),
            (b_id, "b", "client-b", "/10.0.0.1", REBALANCE_MS, SESSION_MS, SUBSCRIPTION, b"for-b"),
        ]

        restarted = restart(store, clock)
        assert restarted.group_state("g") is GroupState.STABLE and restarted.generation("g") == 1
        described = restarted.describe_group("g")
        assert (described.protocol_type, described.protocol_data) == ("consumer", "range")
        assert [(m.member_id, m.group_instance_id, m.assignment) for m in described.members] == [
            (a_id, "a", b"for-a"), (b_id, "b", b"for-b")]
        # A member that kept running through the restart just carries on.
        assert restarted.heartbeat("g", 1, a_id, "a") == ErrorCode.NONE
        # A restarted static member takes its place back: same generation, same assignment.
        b = await join(restarted, "b")
        assert (b.error_code, b.generation_id) == (ErrorCode.NONE, 1)
        sync = await restarted.sync_group("g", 1, b.member_id, {}, group_instance_id="b")
        assert (sync.error_code, sync.assignment) == (ErrorCode.NONE, b"for-b")
        assert restarted.heartbeat("g", 1, b_id, "b") == ErrorCode.FENCED_INSTANCE_ID
        # ... and that replacement is written, so a second restart knows the new member id.
        last = store.group_values("g")[-1]
        assert last is not None and [m["member_id"] for m in last["members"]] == [a_id, b.member_id]
        again = restart(store, clock)
        assert again.heartbeat("g", 1, b.member_id, "b") == ErrorCode.NONE

    run(body)


def test_members_that_do_not_return_after_a_restart_expire() -> None:
    async def body() -> None:
        clock, store = ManualClock(now_ms=NOW_MS), MemoryStore()
        coordinator = make(store, clock)
        a_id, _ = await stable_pair(coordinator, clock)
        errors = await coordinator.commit_offsets(
            "g", 1, a_id, [OffsetToCommit("t", 0, 5)], partition_exists=lambda t, p: True,
            group_instance_id="a",
        )
        assert errors == [ErrorCode.NONE]
        clock.advance(SESSION_MS * 3)  # however long the broker was down
        restarted = restart(store, clock)
        clock.advance(SESSION_MS - 1)
        restarted.tick()
        assert restarted.group_state("g") is GroupState.STABLE
        clock.advance(2)
        restarted.tick()  # both sessions end: the group rebalances to Empty, generation 2
        assert restarted.group_state("g") is GroupState.EMPTY and restarted.generation("g") == 2
        last = store.group_values("g")[-1]
        assert last is not None and (last["generation"], last["members"], last["protocol"]) == (2, [], None)
        assert restart(store, clock).generation("g") == 2

    run(body)


def test_a_forgotten_group_writes_its_tombstone() -> None:
    async def body() -> None:
        clock, store = ManualClock(now_ms=NOW_MS), MemoryStore()
        coordinator = make(store, clock)
        [a] = await join_together(coordinator, clock, None)
        await coordinator.sync_group("g", 1, a.member_id, {a.member_id: b"x"})
        coordinator.leave_group("g", [(a.member_id, None)])
        last = store.group_values("g")[-1]
        assert last is not None and (last["generation"], last["members"]) == (2, [])
        coordinator.tick()  # empty and without offsets: forgotten, as Kafka does
        assert coordinator.group_state("g") is None and store.group_values("g")[-1] is None
        assert restart(store, clock).list_groups() == (ErrorCode.NONE, [])

    run(body)


def test_an_empty_consumer_group_keeps_its_protocol_type_and_generation_across_a_restart() -> None:
    async def body() -> None:
        clock, store = ManualClock(now_ms=NOW_MS), MemoryStore()
        coordinator = make(store, clock)
        [a] = await join_together(coordinator, clock, None)
        await coordinator.sync_group("g", 1, a.member_id, {a.member_id: b"x"})
        errors = await coordinator.commit_offsets(
            "g", 1, a.member_id, [OffsetToCommit("t", 0, 5)], partition_exists=lambda t, p: True
        )
        assert errors == [ErrorCode.NONE]
        coordinator.leave_group("g", [(a.member_id, None)])
        assert coordinator.generation("g") == 2
        restarted = restart(store, clock)
        error, listed = restarted.list_groups()
        assert error == ErrorCode.NONE
        assert [(g.group_id, g.protocol_type, g.state) for g in listed] == [("g", "consumer", "Empty")]
        assert restarted.generation("g") == 2
        assert [f.offset for f in restarted.fetch_offsets("g", None)[1]] == [5]
        # The next member forms generation 3, not 1: clients fenced by generation stay fenced.
        [b] = await join_together(restarted, clock, None)
        assert b.generation_id == 3

    run(body)


def test_deleting_a_group_writes_its_tombstone() -> None:
    async def body() -> None:
        clock, store = ManualClock(now_ms=NOW_MS), MemoryStore()
        coordinator = make(store, clock)
        [a] = await join_together(coordinator, clock, None)
        await coordinator.sync_group("g", 1, a.member_id, {a.member_id: b"x"})
        await coordinator.commit_offsets(
            "g", 1, a.member_id, [OffsetToCommit("t", 0, 5)], partition_exists=lambda t, p: True
        )
        coordinator.leave_group("g", [(a.member_id, None)])
        assert await coordinator.delete_groups(["g"]) == [("g", ErrorCode.NONE)]
        assert store.group_values("g")[-1] is None
        assert restart(store, clock).list_groups() == (ErrorCode.NONE, [])

    run(body)


# -- a data directory written by the previous main ---------------------------------------------


def with_core(tmp_path: Path, body: Callable[[BrokerCore], Awaitable[T]]) -> T:
    async def main() -> T:
        config = BrokerConfig(data_dir=tmp_path / "data", groups=GroupConfig(group_initial_rebalance_delay_ms=0))
        core = BrokerCore(config, clock=ManualClock(now_ms=NOW_MS))
        await core.start()
        await core.wait_loaded()
        try:
            return await body(core)
        finally:
            await core.close()

    return asyncio.run(main())


def test_a_data_dir_of_the_previous_layout_still_loads(tmp_path: Path) -> None:
    old_offset_key = struct.pack(">h", 1) + s16("legacy") + s16("t") + struct.pack(">i", 0)
    old_offset_key_1 = struct.pack(">h", 1) + s16("legacy") + s16("t") + struct.pack(">i", 1)
    old_txn_key = struct.pack(">h", 0) + s16("legacy-tid")

    async def write_old(core: BrokerCore) -> None:
        """Records exactly as the previous main wrote them (raw bytes into the logs)."""
        await core.create_topics([NewTopic("t", 2)])
        await core.append_offsets("legacy", [
            (old_offset_key, old_offset_value(17, 0, None, NOW_MS)),
            (old_offset_key_1, old_offset_value(23, -1, "abcd", NOW_MS)),
        ])
        builder = BatchBuilder()
        for value in (
            old_txn_value(900, 0, 60_000, int(TxnState.EMPTY), [], -1, NOW_MS),
            old_txn_value(900, 0, 60_000, int(TxnState.ONGOING), [("t", 0)], NOW_MS, NOW_MS),
            old_txn_value(900, 0, 60_000, int(TxnState.PREPARE_COMMIT), [("t", 0)], NOW_MS, NOW_MS + 1),
            old_txn_value(900, 0, 60_000, int(TxnState.COMPLETE_COMMIT), [], -1, NOW_MS + 2),
        ):
            builder.append(old_txn_key, value, timestamp_ms=NOW_MS)
        core.append_internal(TXN_STATE_TOPIC, core.txn._partition_for("legacy-tid"), builder.build())

    async def read_new(core: BrokerCore) -> None:
        error, fetched = core.groups.fetch_offsets("legacy", None)
        assert error == ErrorCode.NONE
        assert [(f.partition, f.offset, f.leader_epoch, f.metadata) for f in fetched] == [
            (0, 17, 0, ""), (1, 23, -1, "abcd")]
        meta = core.txn.describe("legacy-tid")
        assert meta is not None
        assert (meta.producer_id, meta.producer_epoch, meta.state, meta.partitions, meta.txn_start_ms) == (
            900, 0, TxnState.COMPLETE_COMMIT, set(), -1)
        # New records go out in Kafka's layout, next to the old ones.
        await core.commit_offsets("legacy", -1, "", [OffsetToCommit("t", 0, 18)])

    async def read_mixed(core: BrokerCore) -> None:
        _, fetched = core.groups.fetch_offsets("legacy", None)
        assert [(f.partition, f.offset) for f in fetched] == [(0, 18), (1, 23)]
        plog = core.logs.get_log(OFFSETS_TOPIC, core.offsets_partition_for("legacy"))
        versions = []
        for _, raw in plog.iter_batches(plog.log_start_offset):
            _, records = decode_batch(raw)
            versions += [struct.unpack_from(">h", r.value)[0] for r in records if r.value is not None]
        assert versions == [1, 1, 3]  # two old records, then Kafka's v3

    with_core(tmp_path, write_old)
    with_core(tmp_path, read_new)
    with_core(tmp_path, read_mixed)
