"""The consumer-group state machine, driven with a ManualClock: no sleeping, no sockets."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from flowbus.broker.group_coordinator import (
    GroupConfig,
    GroupCoordinator,
    GroupState,
    JoinResult,
    OffsetToCommit,
    decode_offset_record,
)
from flowbus.clock import ManualClock
from flowbus.protocol.error_codes import ErrorCode

T = TypeVar("T")
SESSION_MS = 10_000
REBALANCE_MS = 30_000


class MemoryStore:
    """An OffsetStore that keeps the records it is given, to replay them into a new coordinator."""

    def __init__(self) -> None:
        self.records: list[tuple[bytes, bytes | None]] = []

    async def append_offsets(
        self, group_id: str, records: list[tuple[bytes, bytes | None]]
    ) -> None:
        self.records.extend(records)

    def append_offsets_now(self, group_id: str, records: list[tuple[bytes, bytes | None]]) -> None:
        self.records.extend(records)


def make(delay_ms: int = 0) -> tuple[GroupCoordinator, ManualClock, MemoryStore]:
    clock = ManualClock()
    store = MemoryStore()
    coordinator = GroupCoordinator(
        clock=clock,
        store=store,
        config=GroupConfig(group_initial_rebalance_delay_ms=delay_ms),
    )
    coordinator.finish_loading()
    return coordinator, clock, store


def run(test: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(asyncio.wait_for(test(), 5))


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def join(
    coordinator: GroupCoordinator,
    member_id: str = "",
    protocols: list[tuple[str, bytes]] | None = None,
    **kw: Any,
) -> asyncio.Task[JoinResult]:
    return asyncio.ensure_future(
        coordinator.join_group(
            "g",
            member_id,
            "consumer",
            protocols or [("range", b"meta-" + member_id.encode())],
            session_timeout_ms=SESSION_MS,
            rebalance_timeout_ms=REBALANCE_MS,
            client_id="c",
            **kw,
        )
    )


async def join_new(
    coordinator: GroupCoordinator, **kw: Any
) -> asyncio.Task[JoinResult]:
    """v4+: the first join answers MEMBER_ID_REQUIRED; return the task of the second join."""
    first = await join(coordinator, **kw)
    assert first.error_code == ErrorCode.MEMBER_ID_REQUIRED and first.member_id
    task = join(coordinator, first.member_id, **kw)
    await settle()
    return task


def test_single_member_forms_a_stable_group() -> None:
    async def body() -> None:
        coordinator, _, _ = make()
        result = await (await join_new(coordinator))
        assert result.error_code == ErrorCode.NONE
        assert result.generation_id == 1 and result.leader == result.member_id
        assert [m.member_id for m in result.members] == [result.member_id]
        assert coordinator.group_state("g") is GroupState.COMPLETING_REBALANCE
        sync = await coordinator.sync_group(
            "g", 1, result.member_id, {result.member_id: b"assign"}
        )
        assert sync.error_code == ErrorCode.NONE and sync.assignment == b"assign"
        assert coordinator.group_state("g") is GroupState.STABLE
        assert coordinator.heartbeat("g", 1, result.member_id) == ErrorCode.NONE

    run(body)


def test_second_member_triggers_rebalance_and_followers_wait_for_leader() -> None:
    async def body() -> None:
        coordinator, _, _ = make()
        a = await (await join_new(coordinator))
        await coordinator.sync_group("g", 1, a.member_id, {a.member_id: b"a1"})
        b_task = await join_new(coordinator)
        assert coordinator.group_state("g") is GroupState.PREPARING_REBALANCE
        assert (
            coordinator.heartbeat("g", 1, a.member_id)
            == ErrorCode.REBALANCE_IN_PROGRESS
        )
        assert not b_task.done()
        a2 = await join(coordinator, a.member_id)
        b = await b_task
        assert a2.generation_id == b.generation_id == 2
        assert a2.leader == a.member_id and len(a2.members) == 2 and b.members == []
        follower = asyncio.ensure_future(
            coordinator.sync_group("g", 2, b.member_id, {})
        )
        await settle()
        assert not follower.done()
        leader = await coordinator.sync_group(
            "g", 2, a.member_id, {a.member_id: b"A", b.member_id: b"B"}
        )
        assert leader.assignment == b"A" and (await follower).assignment == b"B"

    run(body)


def test_protocol_selection_and_inconsistent_protocols() -> None:
    async def body() -> None:
        coordinator, _, _ = make()
        t1 = await join_new(
            coordinator, protocols=[("range", b""), ("roundrobin", b"")]
        )
        r1 = await t1
        await coordinator.sync_group("g", 1, r1.member_id, {})
        t2 = await join_new(
            coordinator, protocols=[("roundrobin", b""), ("sticky", b"")]
        )
        r1b = await join(
            coordinator, r1.member_id, protocols=[("range", b""), ("roundrobin", b"")]
        )
        r2 = await t2
        assert r1b.protocol_name == r2.protocol_name == "roundrobin"
        bad = await join(coordinator, protocols=[("cooperative-sticky", b"")])
        assert bad.error_code == ErrorCode.INCONSISTENT_GROUP_PROTOCOL

    run(body)


def test_session_timeout_evicts_a_silent_member() -> None:
    async def body() -> None:
        coordinator, clock, _ = make()
        a = await (await join_new(coordinator))
        await coordinator.sync_group("g", 1, a.member_id, {})
        clock.advance(SESSION_MS - 1)
        coordinator.tick()
        assert coordinator.heartbeat("g", 1, a.member_id) == ErrorCode.NONE
        clock.advance(SESSION_MS + 1)
        coordinator.tick()
        assert coordinator.heartbeat("g", 1, a.member_id) == ErrorCode.UNKNOWN_MEMBER_ID
        assert coordinator.group_state("g") in (GroupState.EMPTY, None)

    run(body)


def test_rebalance_timeout_drops_members_that_do_not_rejoin() -> None:
    async def body() -> None:
        coordinator, clock, _ = make()
        a = await (await join_new(coordinator))
        await coordinator.sync_group("g", 1, a.member_id, {})
        b_task = await join_new(coordinator)
        # a keeps heartbeating (told to rejoin) but never rejoins.
        for _ in range(REBALANCE_MS // 5_000):
            clock.advance(5_000)
            assert (
                coordinator.heartbeat("g", 1, a.member_id)
                == ErrorCode.REBALANCE_IN_PROGRESS
            )
            coordinator.tick()
        clock.advance(1)
        coordinator.tick()
        b = await b_task
        assert (
            b.error_code == ErrorCode.NONE
            and b.leader == b.member_id
            and len(b.members) == 1
        )
        assert coordinator.heartbeat("g", 2, a.member_id) == ErrorCode.UNKNOWN_MEMBER_ID

    run(body)


def test_unclaimed_member_id_expires_and_unblocks_the_join() -> None:
    async def body() -> None:
        coordinator, clock, _ = make()
        a_task = await join_new(coordinator)
        assert (await a_task).generation_id == 1
        first = await join(coordinator)  # gets an id, never comes back
        assert first.error_code == ErrorCode.MEMBER_ID_REQUIRED
        clock.advance(SESSION_MS + 1)
        coordinator.tick()
        a = await a_task
        assert coordinator.heartbeat("g", 1, a.member_id) in (
            ErrorCode.NONE,
            ErrorCode.UNKNOWN_MEMBER_ID,
        )
        assert await join(coordinator, first.member_id) != ErrorCode.NONE

    run(body)


def test_leave_group_batch_and_unknown_members() -> None:
    async def body() -> None:
        coordinator, _, _ = make()
        a = await (await join_new(coordinator))
        await coordinator.sync_group("g", 1, a.member_id, {})
        result = coordinator.leave_group("g", [(a.member_id, None), ("nobody", None)])
        assert [e for _, _, e in result.members] == [
            ErrorCode.NONE,
            ErrorCode.UNKNOWN_MEMBER_ID,
        ]
        assert coordinator.group_state("g") is GroupState.EMPTY
        assert coordinator.generation("g") == 2

    run(body)


def test_leave_during_sync_fails_waiting_followers() -> None:
    async def body() -> None:
        coordinator, _, _ = make()
        a = await (await join_new(coordinator))
        await coordinator.sync_group("g", 1, a.member_id, {})
        b_task = await join_new(coordinator)
        await join(coordinator, a.member_id)
        b = await b_task
        follower = asyncio.ensure_future(
            coordinator.sync_group("g", 2, b.member_id, {})
        )
        await settle()
        coordinator.leave_group("g", [(a.member_id, None)])
        assert (await follower).error_code == ErrorCode.REBALANCE_IN_PROGRESS

    run(body)


def test_initial_rebalance_delay_gathers_members() -> None:
    async def body() -> None:
        coordinator, clock, _ = make(delay_ms=3_000)
        a_task = await join_new(coordinator)
        clock.advance(1_000)
        coordinator.tick()
        b_task = await join_new(coordinator)
        clock.advance(2_500)
        coordinator.tick()
        assert not a_task.done()
        clock.advance(1_000)
        coordinator.tick()
        a, b = await a_task, await b_task
        assert a.generation_id == b.generation_id == 1

    run(body)


def test_generation_and_member_checks() -> None:
    async def body() -> None:
        coordinator, _, _ = make()
        a = await (await join_new(coordinator))
        assert (
            await coordinator.sync_group("g", 7, a.member_id, {})
        ).error_code == ErrorCode.ILLEGAL_GENERATION
        assert (
            await coordinator.sync_group("g", 1, "x", {})
        ).error_code == ErrorCode.UNKNOWN_MEMBER_ID
        await coordinator.sync_group("g", 1, a.member_id, {})
        assert (
            coordinator.heartbeat("g", 0, a.member_id) == ErrorCode.ILLEGAL_GENERATION
        )
        assert (
            coordinator.heartbeat("nope", 1, a.member_id) == ErrorCode.UNKNOWN_MEMBER_ID
        )

        def exists(topic: str, partition: int) -> bool:
            return topic == "t"

        ok = await coordinator.commit_offsets(
            "g", 1, a.member_id, [OffsetToCommit("t", 0, 5)], partition_exists=exists
        )
        assert ok == [ErrorCode.NONE]
        stale = await coordinator.commit_offsets(
            "g", 0, a.member_id, [OffsetToCommit("t", 0, 6)], partition_exists=exists
        )
        assert stale == [ErrorCode.ILLEGAL_GENERATION]
        simple = await coordinator.commit_offsets(
            "g", -1, "", [OffsetToCommit("t", 0, 6)], partition_exists=exists
        )
        assert simple == [ErrorCode.UNKNOWN_MEMBER_ID]  # the group has members
        unknown = await coordinator.commit_offsets(
            "g", 1, a.member_id, [OffsetToCommit("u", 0, 1)], partition_exists=exists
        )
        assert unknown == [ErrorCode.UNKNOWN_TOPIC_OR_PARTITION]

    run(body)


def test_offsets_survive_a_reload() -> None:
    async def body() -> None:
        coordinator, clock, store = make()
        errors = await coordinator.commit_offsets(
            "simple",
            -1,
            "",
            [OffsetToCommit("t", 0, 10, metadata="m"), OffsetToCommit("t", 1, 20)],
            partition_exists=lambda t, p: True,
        )
        assert errors == [ErrorCode.NONE, ErrorCode.NONE]
        reloaded = GroupCoordinator(clock=clock, store=store)
        assert (
            reloaded.fetch_offsets("simple", None)[0]
            == ErrorCode.COORDINATOR_LOAD_IN_PROGRESS
        )
        for key, value in store.records:
            reloaded.load_record(key, value)
        reloaded.finish_loading()
        error, fetched = reloaded.fetch_offsets("simple", None)
        assert error == ErrorCode.NONE
        assert [(f.topic, f.partition, f.offset, f.metadata) for f in fetched] == [
            ("t", 0, 10, "m"),
            ("t", 1, 20, ""),  # Kafka stores a null metadata as "" (its field is not nullable)
        ]
        _, missing = reloaded.fetch_offsets("simple", [("t", 9)])
        assert missing[0].offset == -1
        assert [g.group_id for g in reloaded.list_groups()[1]] == ["simple"]

    run(body)


def test_offset_record_encoding_round_trips() -> None:
    from flowbus.broker.group_coordinator import (
        CommittedOffset,
        encode_offset_key,
        encode_offset_value,
    )

    committed = CommittedOffset(42, 3, "héllo", 1_700_000_000_000)
    key = encode_offset_key("grp", "topic", 7)
    assert decode_offset_record(key, encode_offset_value(committed)) == (
        "grp",
        "topic",
        7,
        committed,
    )
    assert decode_offset_record(key, None) == ("grp", "topic", 7, None)
    assert decode_offset_record(b"\x00\x09rest", b"") is None


def test_describe_and_list_groups() -> None:
    async def body() -> None:
        coordinator, _, _ = make()
        a = await (await join_new(coordinator))
        await coordinator.sync_group("g", 1, a.member_id, {a.member_id: b"x"})
        described = coordinator.describe_group("g")
        assert described.state == "Stable" and described.protocol_data == "range"
        assert described.members[0].assignment == b"x"
        assert coordinator.describe_group("missing").state == "Dead"
        assert [g.state for g in coordinator.list_groups(["stable"])[1]] == ["Stable"]
        assert coordinator.list_groups(["empty"])[1] == []

    run(body)


@pytest.mark.parametrize("timeout_ms", [10, 10_000_000])
def test_invalid_session_timeout(timeout_ms: int) -> None:
    async def body() -> None:
        coordinator, _, _ = make()
        result = await coordinator.join_group(
            "g",
            "",
            "consumer",
            [("range", b"")],
            session_timeout_ms=timeout_ms,
            rebalance_timeout_ms=1000,
        )
        assert result.error_code == ErrorCode.INVALID_SESSION_TIMEOUT

    run(body)


def test_static_member_rejoin_replaces_its_previous_incarnation() -> None:
    async def body() -> None:
        coordinator, _, _ = make()
        first = await join(
            coordinator, group_instance_id="worker-1"
        )  # no MEMBER_ID_REQUIRED round
        assert first.error_code == ErrorCode.NONE
        await coordinator.sync_group(
            "g", first.generation_id, first.member_id, {first.member_id: b"a"}
        )
        second = await join(coordinator, group_instance_id="worker-1")
        assert (
            second.error_code == ErrorCode.NONE and second.member_id != first.member_id
        )
        # KIP-345: no rebalance; the answer names the old leader id, so it acts as a follower.
        assert second.generation_id == first.generation_id
        assert second.members == [] and second.leader == first.member_id
        assert (
            coordinator.heartbeat("g", second.generation_id, first.member_id)
            == ErrorCode.UNKNOWN_MEMBER_ID
        )
        sync = await coordinator.sync_group("g", second.generation_id, second.member_id, {})
        assert sync.assignment == b"a"

    run(body)


def test_group_size_limit_counts_reserved_member_ids() -> None:
    async def body() -> None:
        clock = ManualClock()
        coordinator = GroupCoordinator(
            clock=clock,
            store=MemoryStore(),
            config=GroupConfig(group_initial_rebalance_delay_ms=0, group_max_size=2),
        )
        coordinator.finish_loading()
        a = await join(coordinator)
        b = await join(coordinator)
        assert a.error_code == b.error_code == ErrorCode.MEMBER_ID_REQUIRED
        assert (await join(coordinator)).error_code == ErrorCode.GROUP_MAX_SIZE_REACHED
        a_task = join(
            coordinator, a.member_id
        )  # claiming a reserved id is always allowed
        await settle()
        b_task = join(coordinator, b.member_id)
        assert (await a_task).error_code == ErrorCode.NONE and (
            await b_task
        ).error_code == ErrorCode.NONE

    run(body)


def test_an_empty_group_keeps_its_protocol_type() -> None:
    """Kafka keeps an emptied group's protocol type: ListGroups and DescribeGroups still say
    ``consumer`` (admin clients report a group without one as a simple consumer group)."""

    async def body() -> None:
        coordinator, _, _ = make()
        a = await (await join_new(coordinator))
        await coordinator.sync_group("g", 1, a.member_id, {})
        coordinator.leave_group("g", [(a.member_id, None)])
        assert coordinator.group_state("g") is GroupState.EMPTY
        [listing] = coordinator.list_groups()[1]
        assert (listing.group_id, listing.protocol_type, listing.state) == ("g", "consumer", "Empty")
        assert coordinator.describe_group("g").protocol_type == "consumer"

    run(body)
