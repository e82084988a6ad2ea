"""Static group membership (KIP-345): a restarted member gets its partitions back, no rebalance.

The first half drives the coordinator with a ManualClock (as test_group_coordinator.py does);
the second half runs confluent-kafka consumers with ``group.instance.id`` against a real
``flowbus broker`` process, since librdkafka's integration suite is where the missing
behaviour was found.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import confluent_kafka
import confluent_kafka.admin
import pytest

from flowbus.broker.group_coordinator import (
    GroupConfig,
    GroupCoordinator,
    GroupState,
    JoinResult,
    OffsetToCommit,
)
from flowbus.clock import ManualClock
from flowbus.protocol.codec import encode_consumer_subscription
from flowbus.protocol.error_codes import ErrorCode
from tests.support.broker_process import DEFAULT_EXTRA_ARGS, BrokerProcess

T = TypeVar("T")
SESSION_MS = 10_000
REBALANCE_MS = 5_000
#: The first rebalance waits this long, so that ``stable_pair`` forms one generation of two.
INITIAL_DELAY_MS = 1_000


# -- the coordinator alone ---------------------------------------------------------------------


class MemoryStore:
    """An OffsetStore that keeps what it is given."""

    def __init__(self) -> None:
        self.records: list[tuple[bytes, bytes | None]] = []

    async def append_offsets(
        self, group_id: str, records: list[tuple[bytes, bytes | None]]
    ) -> None:
        self.records.extend(records)

    def append_offsets_now(self, group_id: str, records: list[tuple[bytes, bytes | None]]) -> None:
        self.records.extend(records)

    async def append_txn_offsets(
        self,
        group_id: str,
        producer_id: int,
        producer_epoch: int,
        records: list[tuple[bytes, bytes | None]],
    ) -> None:
        self.records.extend(records)


def make() -> tuple[GroupCoordinator, ManualClock]:
    clock = ManualClock()
    coordinator = GroupCoordinator(
        clock=clock,
        store=MemoryStore(),
        config=GroupConfig(group_initial_rebalance_delay_ms=INITIAL_DELAY_MS),
    )
    coordinator.finish_loading()
    return coordinator, clock


def run(test: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(asyncio.wait_for(test(), 5))


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def subscription(*topics: str, generation_id: int = -1) -> bytes:
    """Consumer-protocol metadata (v2, which carries owned partitions and a generation)."""
    return encode_consumer_subscription(
        2,
        {
            "topics": list(topics),
            "user_data": None,
            "owned_partitions": [],
            "generation_id": generation_id,
        },
    )


def join(
    coordinator: GroupCoordinator,
    instance_id: str | None,
    member_id: str = "",
    protocols: list[tuple[str, bytes]] | None = None,
    **kw: Any,
) -> asyncio.Task[JoinResult]:
    """A JoinGroup v5+; static members need no MEMBER_ID_REQUIRED round."""
    return asyncio.ensure_future(
        coordinator.join_group(
            "g",
            member_id,
            "consumer",
            protocols or [("range", subscription("t"))],
            session_timeout_ms=SESSION_MS,
            rebalance_timeout_ms=REBALANCE_MS,
            group_instance_id=instance_id,
            client_id="c",
            **kw,
        )
    )


async def stable_pair(
    coordinator: GroupCoordinator,
    clock: ManualClock,
    protocols: list[tuple[str, bytes]] | None = None,
) -> tuple[str, str]:
    """Static members ``a`` (leader) and ``b`` in a Stable generation 1; their member ids."""
    a_task = join(coordinator, "a", protocols=protocols)
    await settle()
    b_task = join(coordinator, "b", protocols=protocols)
    await settle()
    clock.advance(INITIAL_DELAY_MS)
    coordinator.tick()
    a, b = await a_task, await b_task
    assert a.error_code == b.error_code == ErrorCode.NONE
    assert a.generation_id == b.generation_id == 1 and a.leader == a.member_id
    b_sync = asyncio.ensure_future(coordinator.sync_group("g", 1, b.member_id, {}))
    await settle()
    await coordinator.sync_group(
        "g", 1, a.member_id, {a.member_id: b"for-a", b.member_id: b"for-b"}
    )
    assert (await b_sync).assignment == b"for-b"
    assert coordinator.group_state("g") is GroupState.STABLE
    return a.member_id, b.member_id


def test_restarted_follower_gets_its_assignment_without_a_rebalance() -> None:
    async def body() -> None:
        coordinator, clock = make()
        a_id, old_b_id = await stable_pair(coordinator, clock)
        b = await join(coordinator, "b")
        assert b.error_code == ErrorCode.NONE and b.member_id != old_b_id
        assert (b.generation_id, b.leader, b.members) == (1, a_id, [])
        assert coordinator.group_state("g") is GroupState.STABLE
        assert coordinator.heartbeat("g", 1, a_id, "a") == ErrorCode.NONE
        sync = await coordinator.sync_group(
            "g", 1, b.member_id, {}, group_instance_id="b"
        )
        assert (sync.error_code, sync.assignment) == (ErrorCode.NONE, b"for-b")
        assert coordinator.heartbeat("g", 1, b.member_id, "b") == ErrorCode.NONE

    run(body)


def test_replaced_incarnation_is_fenced_everywhere() -> None:
    async def body() -> None:
        coordinator, clock = make()
        _, old_b_id = await stable_pair(coordinator, clock)
        new_b = await join(coordinator, "b")
        fenced = ErrorCode.FENCED_INSTANCE_ID
        assert coordinator.heartbeat("g", 1, old_b_id, "b") == fenced
        # Without its instance id (JoinGroup/Heartbeat before v5) the old id is just unknown.
        assert coordinator.heartbeat("g", 1, old_b_id) == ErrorCode.UNKNOWN_MEMBER_ID
        sync = await coordinator.sync_group("g", 1, old_b_id, {}, group_instance_id="b")
        assert sync.error_code == fenced
        errors = await coordinator.commit_offsets(
            "g",
            1,
            old_b_id,
            [OffsetToCommit("t", 0, 5)],
            partition_exists=lambda topic, partition: True,
            group_instance_id="b",
        )
        assert errors == [fenced]
        rejoin = await join(coordinator, "b", member_id=old_b_id)
        assert rejoin.error_code == fenced
        # The current incarnation is unaffected by all of that.
        assert coordinator.heartbeat("g", 1, new_b.member_id, "b") == ErrorCode.NONE
        assert coordinator.group_state("g") is GroupState.STABLE

    run(body)


def test_restarted_leader_is_told_the_old_leader_id() -> None:
    """JoinGroup before v9 has no skip_assignment: naming the old id keeps it a follower."""

    async def body() -> None:
        coordinator, clock = make()
        old_a_id, b_id = await stable_pair(coordinator, clock)
        a = await join(coordinator, "a")
        assert a.error_code == ErrorCode.NONE and a.member_id != old_a_id
        assert (a.leader, a.members) == (old_a_id, [])
        assert coordinator.heartbeat("g", 1, b_id, "b") == ErrorCode.NONE
        sync = await coordinator.sync_group(
            "g", 1, a.member_id, {}, group_instance_id="a"
        )
        assert sync.assignment == b"for-a"
        # It is still the leader, under its new id, at the next rebalance.
        a_task = join(coordinator, "a", member_id=a.member_id)
        b_task = join(coordinator, "b", member_id=b_id)
        a2, b2 = await a_task, await b_task
        assert a2.generation_id == b2.generation_id == 2
        assert a2.leader == b2.leader == a.member_id
        assert sorted(m.member_id for m in a2.members) == sorted([a.member_id, b_id])

    run(body)


def test_changed_subscription_or_protocol_rebalances() -> None:
    async def body() -> None:
        coordinator, clock = make()
        a_id, _ = await stable_pair(coordinator, clock)
        # Other owned partitions or generation only: the same subscription, no rebalance.
        same = await join(
            coordinator, "b", protocols=[("range", subscription("t", generation_id=1))]
        )
        assert (
            same.generation_id == 1
            and coordinator.group_state("g") is GroupState.STABLE
        )
        # Another topic: the leader must see it, so the group rebalances.
        b_task = join(coordinator, "b", protocols=[("range", subscription("t", "u"))])
        await settle()
        assert not b_task.done()
        assert coordinator.group_state("g") is GroupState.PREPARING_REBALANCE
        assert (
            coordinator.heartbeat("g", 1, a_id, "a") == ErrorCode.REBALANCE_IN_PROGRESS
        )
        a = await join(coordinator, "a", member_id=a_id)
        b = await b_task
        assert a.generation_id == b.generation_id == 2

    run(body)


def test_changed_protocol_choice_rebalances() -> None:
    async def body() -> None:
        coordinator, clock = make()
        both = [("range", b"r"), ("roundrobin", b"rr")]
        a_id, _ = await stable_pair(coordinator, clock, protocols=both)
        b_task = join(coordinator, "b", protocols=[("roundrobin", b"rr")])
        await settle()
        assert coordinator.group_state("g") is GroupState.PREPARING_REBALANCE
        a = await join(coordinator, "a", member_id=a_id, protocols=both)
        b = await b_task
        assert a.protocol_name == b.protocol_name == "roundrobin"

    run(body)


def test_rejoin_while_rebalancing_fences_the_waiting_old_incarnation() -> None:
    async def body() -> None:
        coordinator, clock = make()
        a_id, old_b_id = await stable_pair(coordinator, clock)
        # A dynamic member (JoinGroup v3: no MEMBER_ID_REQUIRED round).
        c_task = join(coordinator, None, require_known_member_id=False)
        await settle()
        assert coordinator.group_state("g") is GroupState.PREPARING_REBALANCE
        old_b_task = join(coordinator, "b", member_id=old_b_id)
        await settle()
        new_b_task = join(coordinator, "b")
        old_b = await old_b_task
        assert old_b.error_code == ErrorCode.FENCED_INSTANCE_ID
        a = await join(coordinator, "a", member_id=a_id)
        new_b, c = await new_b_task, await c_task
        assert a.generation_id == new_b.generation_id == c.generation_id == 2
        assert new_b.member_id in {m.member_id for m in a.members}
        assert old_b_id not in {m.member_id for m in a.members}

    run(body)


def test_rejoin_while_completing_rebalance_starts_another() -> None:
    """The leader may be assigning to the old id: Kafka rebalances again."""

    async def body() -> None:
        coordinator, clock = make()
        a_id, b_id = await stable_pair(coordinator, clock)
        a_task = join(coordinator, "a", member_id=a_id)  # the leader rejoins: rebalance
        b_task = join(coordinator, "b", member_id=b_id)
        assert (await a_task).generation_id == (await b_task).generation_id == 2
        assert coordinator.group_state("g") is GroupState.COMPLETING_REBALANCE
        b_again = join(coordinator, "b")
        await settle()
        assert coordinator.group_state("g") is GroupState.PREPARING_REBALANCE
        a = await join(coordinator, "a", member_id=a_id)
        assert a.generation_id == (await b_again).generation_id == 3

    run(body)


def test_absent_static_member_survives_a_rebalance_until_its_session_ends() -> None:
    async def body() -> None:
        coordinator, clock = make()
        a_id, b_id = await stable_pair(coordinator, clock)
        # b is restarting (no LeaveGroup) when a rejoins; the rebalance timeout passes.
        a_task = join(coordinator, "a", member_id=a_id)
        await settle()
        clock.advance(REBALANCE_MS + 1)
        coordinator.tick()
        a = await a_task
        assert a.generation_id == 2 and a.leader == a_id
        assert {m.member_id for m in a.members} == {a_id, b_id}  # b keeps its place
        await coordinator.sync_group("g", 2, a_id, {a_id: b"a2", b_id: b"b2"})
        # Back within its session: no rebalance, and the assignment made while it was away.
        b = await join(coordinator, "b")
        sync = await coordinator.sync_group(
            "g", 2, b.member_id, {}, group_instance_id="b"
        )
        assert (b.generation_id, sync.assignment) == (2, b"b2")
        # Gone for longer than its session: removed, and the group rebalances without it.
        clock.advance(SESSION_MS - 1)
        assert coordinator.heartbeat("g", 2, a_id, "a") == ErrorCode.NONE
        clock.advance(2)
        coordinator.tick()
        assert coordinator.group_state("g") is GroupState.PREPARING_REBALANCE
        a = await join(coordinator, "a", member_id=a_id)
        assert [m.member_id for m in a.members] == [a_id]

    run(body)


def test_only_absent_static_members_postpone_the_rebalance() -> None:
    async def body() -> None:
        coordinator, clock = make()
        a_id, _ = await stable_pair(coordinator, clock)
        coordinator.leave_group("g", [(a_id, "a")])
        assert coordinator.group_state("g") is GroupState.PREPARING_REBALANCE
        clock.advance(REBALANCE_MS + 1)
        coordinator.tick()  # nobody rejoined: no generation without a leader
        assert coordinator.group_state("g") is GroupState.PREPARING_REBALANCE
        b = await join(coordinator, "b")
        assert b.generation_id == 2 and b.leader == b.member_id

    run(body)


def test_leave_group_by_instance_id() -> None:
    async def body() -> None:
        coordinator, clock = make()
        a_id, old_b_id = await stable_pair(coordinator, clock)
        new_b = await join(coordinator, "b")
        result = coordinator.leave_group(
            "g", [(old_b_id, "b"), ("", "nobody"), ("", None)]
        )
        assert [e for _, _, e in result.members] == [
            ErrorCode.FENCED_INSTANCE_ID,
            ErrorCode.UNKNOWN_MEMBER_ID,
            ErrorCode.UNKNOWN_MEMBER_ID,
        ]
        assert coordinator.group_state("g") is GroupState.STABLE
        # An admin removes a static member by its instance id alone (its member id unknown).
        result = coordinator.leave_group("g", [("", "b")])
        assert result.members == [("", "b", ErrorCode.NONE)]
        assert coordinator.group_state("g") is GroupState.PREPARING_REBALANCE
        assert (
            coordinator.heartbeat("g", 1, new_b.member_id, "b")
            == ErrorCode.UNKNOWN_MEMBER_ID
        )
        a = await join(coordinator, "a", member_id=a_id)
        assert [m.member_id for m in a.members] == [a_id]

    run(body)


# -- librdkafka against a broker process -------------------------------------------------------

FAST = {
    "topic.metadata.refresh.interval.ms": 1000,
    "socket.connection.setup.timeout.ms": 5000,
    "reconnect.backoff.ms": 50,
    "reconnect.backoff.max.ms": 500,
}


@pytest.fixture(scope="module")
def static_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """A broker accepting short session timeouts, so an expiry test takes seconds."""
    base = tmp_path_factory.mktemp("static")
    extra = (*DEFAULT_EXTRA_ARGS, "--group-min-session-timeout-ms", "1000")
    with BrokerProcess(base / "data", extra_args=extra) as process:
        yield process


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = confluent_kafka.admin.AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics(
        [confluent_kafka.admin.NewTopic(topic, partitions, 1)]
    ).values():
        future.result(10)


class Tracked:
    """A static consumer that records its rebalance callbacks; closed at the end of the test.

    Args:
        bootstrap: the broker.
        group: the group id.
        instance: ``group.instance.id``.
        topic: the topic to subscribe to.
        session_timeout_ms: its session timeout.
    """

    def __init__(
        self,
        bootstrap: str,
        group: str,
        instance: str,
        topic: str,
        session_timeout_ms: int,
    ) -> None:
        self.assigns: list[set[int]] = []
        self.revokes: list[set[int]] = []
        self.closed = False
        self.consumer = confluent_kafka.Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "group.instance.id": instance,
                "session.timeout.ms": session_timeout_ms,
                "heartbeat.interval.ms": 300,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                **FAST,
            }
        )
        self.consumer.subscribe(
            [topic], on_assign=self._on_assign, on_revoke=self._on_revoke
        )

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        self.assigns.append({p.partition for p in partitions})

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        self.revokes.append({p.partition for p in partitions})

    def partitions(self) -> set[int]:
        return {p.partition for p in self.consumer.assignment()}

    def callbacks(self) -> tuple[int, int]:
        return len(self.assigns), len(self.revokes)

    def close(self) -> None:
        """Close once (a static member's close sends no LeaveGroup)."""
        if not self.closed:
            self.closed = True
            self.consumer.close()


@pytest.fixture
def tracked() -> Iterator[Callable[..., Tracked]]:
    """Make Tracked consumers that are closed even when the test fails (no stray threads)."""
    made: list[Tracked] = []

    def make_tracked(*args: Any) -> Tracked:
        made.append(Tracked(*args))
        return made[-1]

    yield make_tracked
    for consumer in made:
        consumer.close()


def poll_until(
    consumers: list[Tracked], done: Callable[[], bool], timeout_s: float, what: str
) -> None:
    """Poll every consumer (rebalance callbacks run inside poll) until ``done()`` or fail."""
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            state = [(c.partitions(), c.assigns, c.revokes) for c in consumers]
            raise AssertionError(f"timed out waiting for {what}: {state}")
        for c in consumers:
            c.consumer.poll(0.05)


def assigned_pair(
    tracked: Callable[..., Tracked],
    bootstrap: str,
    group: str,
    topic: str,
    session_timeout_ms: int,
) -> tuple[Tracked, Tracked]:
    a = tracked(bootstrap, group, "inst-a", topic, session_timeout_ms)
    b = tracked(bootstrap, group, "inst-b", topic, session_timeout_ms)
    poll_until(
        [a, b],
        lambda: len(a.partitions()) == 2 and len(b.partitions()) == 2,
        40,
        "two partitions each",
    )
    return a, b


@pytest.mark.timeout(120)
def test_restarted_static_consumer_gets_its_partitions_back_without_a_rebalance(
    static_broker: BrokerProcess,
    tracked: Callable[..., Tracked],
    unique: Callable[[str], str],
) -> None:
    topic, group = unique("static"), unique("sg")
    create_topic(static_broker.bootstrap, topic, 4)
    # A generous session: the restart must land inside it even on a loaded machine.
    a, b = assigned_pair(tracked, static_broker.bootstrap, group, topic, 15_000)
    a_partitions, b_before = a.partitions(), b.callbacks()
    a.close()  # a static member sends no LeaveGroup: the group just waits

    restarted = tracked(static_broker.bootstrap, group, "inst-a", topic, 15_000)
    poll_until(
        [restarted, b],
        lambda: bool(restarted.partitions()),
        30,
        "the restarted member's partitions",
    )
    assert restarted.partitions() == a_partitions
    assert restarted.revokes == []
    # Had the group rebalanced, the join could only have completed after b rejoined, which
    # revokes first (eager protocol): b's callbacks would already have run.
    assert b.callbacks() == b_before, static_broker.log_tail()
    # A few more heartbeats of b (300 ms apart) bring no late REBALANCE_IN_PROGRESS either.
    settle_until = time.monotonic() + 1.5
    poll_until(
        [restarted, b], lambda: time.monotonic() > settle_until, 10, "heartbeats"
    )
    assert b.callbacks() == b_before and len(b.partitions()) == 2
    assert restarted.partitions() == a_partitions


@pytest.mark.timeout(120)
def test_expired_static_member_partitions_move_to_the_other(
    static_broker: BrokerProcess,
    tracked: Callable[..., Tracked],
    unique: Callable[[str], str],
) -> None:
    topic, group = unique("static-exp"), unique("sg")
    create_topic(static_broker.bootstrap, topic, 4)
    a, b = assigned_pair(tracked, static_broker.bootstrap, group, topic, 3_000)
    a.close()
    started = time.monotonic()
    poll_until([b], lambda: len(b.partitions()) == 4, 30, "all partitions on b")
    # Removed by its session timeout, not at once: a static member's close sends no LeaveGroup.
    assert time.monotonic() - started > 1.0
    assert b.revokes, "b saw the rebalance"


@pytest.mark.timeout(120)
def test_second_instance_with_the_same_id_fences_the_first(
    static_broker: BrokerProcess,
    tracked: Callable[..., Tracked],
    unique: Callable[[str], str],
) -> None:
    """Two live processes with one ``group.instance.id``: the older one gets a fatal error."""
    topic, group = unique("static-fence"), unique("sg")
    create_topic(static_broker.bootstrap, topic, 2)
    first = tracked(static_broker.bootstrap, group, "twin", topic, 10_000)
    poll_until(
        [first], lambda: bool(first.partitions()), 30, "the first twin's partitions"
    )
    second = tracked(static_broker.bootstrap, group, "twin", topic, 10_000)
    fatal: list[confluent_kafka.KafkaError] = []
    deadline = time.monotonic() + 30
    while not (fatal and second.partitions()) and time.monotonic() < deadline:
        # librdkafka reports FENCED_INSTANCE_ID as a fatal error (_FATAL), from poll.
        msg = first.consumer.poll(0.05)
        error = msg.error() if msg is not None else None
        if error is not None:
            fatal.append(error)
        second.consumer.poll(0.05)
    assert fatal and fatal[0].code() == confluent_kafka.KafkaError._FATAL, fatal
    assert "fenced" in fatal[0].str().lower(), fatal
    assert second.partitions() == {0, 1}
