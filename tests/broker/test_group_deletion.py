"""DeleteGroups and OffsetDelete in the group coordinator: no sockets, a store we control.

What the coordinator keeps in memory must be what a restarted broker replays from the records it
wrote, also when a commit is still waiting for its write while the group is deleted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from flowbus.broker.group_coordinator import (
    GroupConfig,
    GroupCoordinator,
    OffsetToCommit,
)
from flowbus.clock import ManualClock
from flowbus.errors import FlowbusError
from flowbus.protocol.codec import encode_consumer_subscription
from flowbus.protocol.error_codes import ErrorCode

T = TypeVar("T")
SESSION_MS = 10_000


class GatedStore:
    """An OffsetStore that records at once (as the log appends before waiting for an fsync) and
    then waits for ``gate``, like a commit waiting for its fsync; ``fail`` makes appends raise."""

    def __init__(self) -> None:
        self.records: list[tuple[bytes, bytes | None]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail = False

    async def append_offsets(self, group_id: str, records: list[tuple[bytes, bytes | None]]) -> None:
        if self.fail:
            raise FlowbusError("disk full")
        self.records.extend(records)
        await self.gate.wait()

    def append_offsets_now(self, group_id: str, records: list[tuple[bytes, bytes | None]]) -> None:
        if self.fail:
            raise FlowbusError("disk full")
        self.records.extend(records)

    async def append_txn_offsets(
        self, group_id: str, producer_id: int, producer_epoch: int, records: list[tuple[bytes, bytes | None]]
    ) -> None:
        raise AssertionError("not used here")


def make(store: GatedStore) -> GroupCoordinator:
    coordinator = GroupCoordinator(
        clock=ManualClock(), store=store, config=GroupConfig(group_initial_rebalance_delay_ms=0)
    )
    coordinator.finish_loading()
    return coordinator


def replay(store: GatedStore) -> GroupCoordinator:
    """A restarted broker's coordinator: every record replayed in order."""
    restarted = GroupCoordinator(clock=ManualClock(), store=store)
    for key, value in store.records:
        restarted.load_record(key, value)
    restarted.finish_loading()
    return restarted


def offsets(coordinator: GroupCoordinator, group_id: str) -> dict[tuple[str, int], int]:
    error, fetched = coordinator.fetch_offsets(group_id, None)
    assert error == ErrorCode.NONE
    return {(f.topic, f.partition): f.offset for f in fetched}


def run(test: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(asyncio.wait_for(test(), 5))


async def commit(coordinator: GroupCoordinator, group_id: str, *items: tuple[str, int, int]) -> list[int]:
    """A simple commit (generation -1, no member), as admin tools and assign() consumers send."""
    return await coordinator.commit_offsets(
        group_id, -1, "", [OffsetToCommit(t, p, o) for t, p, o in items], partition_exists=lambda t, p: True
    )


def consumer_metadata(*topics: str) -> bytes:
    return encode_consumer_subscription(0, {"topics": list(topics), "user_data": None})


def test_a_deleted_group_is_gone_after_a_replay() -> None:
    async def scenario() -> None:
        store = GatedStore()
        coordinator = make(store)
        await commit(coordinator, "gone", ("t", 0, 5), ("t", 1, 6))
        await commit(coordinator, "kept", ("t", 0, 7))
        assert await coordinator.delete_groups(["gone", "gone", "never", ""]) == [
            ("gone", ErrorCode.NONE),
            ("gone", ErrorCode.GROUP_ID_NOT_FOUND),
            ("never", ErrorCode.GROUP_ID_NOT_FOUND),
            ("", ErrorCode.INVALID_GROUP_ID),
        ]
        for view in (coordinator, replay(store)):
            assert offsets(view, "gone") == {}
            assert offsets(view, "kept") == {("t", 0): 7}
            assert [g.group_id for g in view.list_groups()[1]] == ["kept"]

    run(scenario)


def test_a_commit_waiting_for_its_write_is_deleted_with_the_group() -> None:
    async def scenario() -> None:
        store = GatedStore()
        coordinator = make(store)
        await commit(coordinator, "g", ("t", 1, 3))
        store.gate.clear()  # the next appends wait, as for an fsync
        pending = asyncio.ensure_future(commit(coordinator, "g", ("t", 0, 9)))
        await asyncio.sleep(0)
        deleting = asyncio.ensure_future(coordinator.delete_groups(["g"]))
        await asyncio.sleep(0)
        # Dead while its tombstones are written: nothing new may be committed or joined.
        assert await commit(coordinator, "g", ("t", 2, 1)) == [ErrorCode.UNKNOWN_MEMBER_ID]
        joined = await coordinator.join_group(
            "g", "", "consumer", [("range", b"")], session_timeout_ms=SESSION_MS, rebalance_timeout_ms=SESSION_MS,
            require_known_member_id=False,
        )
        assert joined.error_code == ErrorCode.COORDINATOR_NOT_AVAILABLE
        store.gate.set()
        assert await pending == [ErrorCode.NONE]
        assert await deleting == [("g", ErrorCode.NONE)]
        assert offsets(coordinator, "g") == {}
        assert offsets(replay(store), "g") == {}

    run(scenario)


def test_a_failed_write_keeps_the_group() -> None:
    async def scenario() -> None:
        store = GatedStore()
        coordinator = make(store)
        await commit(coordinator, "g", ("t", 0, 5))
        store.fail = True
        assert await coordinator.delete_groups(["g"]) == [("g", ErrorCode.COORDINATOR_NOT_AVAILABLE)]
        assert await coordinator.delete_offsets("g", [("t", 0)], partition_exists=lambda t, p: True) == (
            ErrorCode.NONE, [ErrorCode.COORDINATOR_NOT_AVAILABLE],
        )
        assert offsets(coordinator, "g") == {("t", 0): 5}
        store.fail = False
        assert await coordinator.delete_groups(["g"]) == [("g", ErrorCode.NONE)]

    run(scenario)


def test_offset_delete_spares_the_topics_of_live_consumers() -> None:
    async def scenario() -> None:
        store = GatedStore()
        coordinator = make(store)
        await commit(coordinator, "g", ("sub", 0, 1), ("other", 0, 2), ("gone-topic", 0, 3))
        member = asyncio.ensure_future(coordinator.join_group(
            "g", "", "consumer", [("range", consumer_metadata("sub"))], session_timeout_ms=SESSION_MS,
            rebalance_timeout_ms=SESSION_MS, require_known_member_id=False,
        ))
        joined = await member
        assert joined.error_code == ErrorCode.NONE

        def exists(topic: str, partition: int) -> bool:
            return topic in ("sub", "other") and partition == 0

        error, errors = await coordinator.delete_offsets(
            "g", [("sub", 0), ("other", 0), ("gone-topic", 0), ("missing", 0)], partition_exists=exists
        )
        assert error == ErrorCode.NONE
        # An offset left over from a deleted topic may go; a partition with neither is unknown.
        assert errors == [
            ErrorCode.GROUP_SUBSCRIBED_TO_TOPIC, ErrorCode.NONE, ErrorCode.NONE, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
        ]
        assert offsets(coordinator, "g") == {("sub", 0): 1}
        assert await coordinator.delete_groups(["g"]) == [("g", ErrorCode.NON_EMPTY_GROUP)]
        assert offsets(replay(store), "g") == {("sub", 0): 1}
        assert await coordinator.delete_offsets("never", [("sub", 0)], partition_exists=exists) == (
            ErrorCode.GROUP_ID_NOT_FOUND, [],
        )

    run(scenario)


def test_unreadable_subscriptions_protect_every_topic() -> None:
    """Kafka's rule when a consumer group's subscriptions are unknown: every topic counts."""

    async def scenario() -> None:
        store = GatedStore()
        coordinator = make(store)
        await commit(coordinator, "g", ("t", 0, 1))
        member = asyncio.ensure_future(coordinator.join_group(
            "g", "", "consumer", [("range", b"\xff")], session_timeout_ms=SESSION_MS,
            rebalance_timeout_ms=SESSION_MS, require_known_member_id=False,
        ))
        assert (await member).error_code == ErrorCode.NONE
        assert await coordinator.delete_offsets("g", [("t", 0)], partition_exists=lambda t, p: True) == (
            ErrorCode.NONE, [ErrorCode.GROUP_SUBSCRIBED_TO_TOPIC],
        )

    run(scenario)
