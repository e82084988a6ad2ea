"""KIP-447 on a real ``flowbus broker`` process: TxnOffsetCommit names the consumer's generation and
member, and the group coordinator refuses them once the group moved on without that member.

Raw frames over a socket (the codec of ``flowbus.protocol``, no client library between), so each
case states exactly what a client sent and what the broker answered, as Kafka's coordinator
answers it (``GroupCoordinator.validateOffsetCommit``): UNKNOWN_MEMBER_ID for a member the group
no longer has (left, or expired: also when the group is left empty), ILLEGAL_GENERATION for a known
member of an older generation, FENCED_INSTANCE_ID for a static member whose instance a newer member
took over. A refused commit writes nothing: after the producer aborts, the group's offset is the
one it had.
"""

from __future__ import annotations

import asyncio
import struct
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from flowbus.protocol.api import ApiKey
from flowbus.protocol.codec import decode_response, encode_request
from flowbus.protocol.error_codes import ErrorCode
from tests.support.broker_process import DEFAULT_EXTRA_ARGS, BrokerProcess

pytestmark = pytest.mark.timeout(60)

SESSION_TIMEOUT_MS = 1_000
"""The shortest session the broker below accepts: the expiry case waits a little longer."""
EXPIRY_WAIT_S = 10.0
READ_TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    args = (*DEFAULT_EXTRA_ARGS, "--group-min-session-timeout-ms", str(SESSION_TIMEOUT_MS))
    with BrokerProcess(tmp_path_factory.mktemp("kip447") / "data", extra_args=args) as process:
        yield process


class Wire:
    """One connection: a request in, its response out (in order, as the protocol guarantees)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.correlation_id = 0

    @classmethod
    async def open(cls, broker: BrokerProcess) -> Wire:
        return cls(*await asyncio.open_connection(broker.host, broker.port))

    async def call(self, api_key: int, version: int, body: dict[str, Any]) -> dict[str, Any]:
        self.correlation_id += 1
        self.writer.write(encode_request(api_key, version, self.correlation_id, "kip447-test", body))
        size = struct.unpack(">i", await asyncio.wait_for(self.reader.readexactly(4), READ_TIMEOUT_S))[0]
        frame = await asyncio.wait_for(self.reader.readexactly(size), READ_TIMEOUT_S)
        got, response = decode_response(api_key, version, frame)
        assert got == self.correlation_id
        return response

    def close(self) -> None:
        self.writer.close()


class Setup:
    """A topic, a group, and a transactional producer with its group's offsets in the transaction."""

    def __init__(self, broker: BrokerProcess, wire: Wire) -> None:
        self.broker, self.wire = broker, wire
        suffix = uuid.uuid4().hex[:8]
        self.topic, self.group, self.tid = f"in-{suffix}", f"g-{suffix}", f"tx-{suffix}"
        self.producer_id = self.epoch = -1

    async def start(self) -> None:
        created = await self.wire.call(ApiKey.CREATE_TOPICS, 4, {
            "topics": [{"name": self.topic, "num_partitions": 1, "replication_factor": 1,
                        "assignments": [], "configs": []}],
            "timeout_ms": 5000,
        })
        assert created["topics"][0]["error_code"] == ErrorCode.NONE
        init = await self.wire.call(ApiKey.INIT_PRODUCER_ID, 4, {
            "transactional_id": self.tid, "transaction_timeout_ms": 60_000,
            "producer_id": -1, "producer_epoch": -1,
        })
        assert init["error_code"] == ErrorCode.NONE
        self.producer_id, self.epoch = init["producer_id"], init["producer_epoch"]
        await self.add_offsets()

    async def add_offsets(self) -> None:
        added = await self.wire.call(ApiKey.ADD_OFFSETS_TO_TXN, 3, {
            "transactional_id": self.tid, "producer_id": self.producer_id,
            "producer_epoch": self.epoch, "group_id": self.group,
        })
        assert added["error_code"] == ErrorCode.NONE

    async def txn_commit(self, generation: int, member_id: str, offset: int, instance: str | None = None) -> int:
        """TxnOffsetCommit v3 (the version with the group metadata): the partition's error code."""
        answer = await self.wire.call(ApiKey.TXN_OFFSET_COMMIT, 3, {
            "transactional_id": self.tid, "group_id": self.group,
            "producer_id": self.producer_id, "producer_epoch": self.epoch,
            "generation_id": generation, "member_id": member_id, "group_instance_id": instance,
            "topics": [{"name": self.topic, "partitions": [
                {"partition_index": 0, "committed_offset": offset, "committed_leader_epoch": -1,
                 "committed_metadata": None},
            ]}],
        })
        return int(answer["topics"][0]["partitions"][0]["error_code"])

    async def end(self, commit: bool) -> None:
        ended = await self.wire.call(ApiKey.END_TXN, 3, {
            "transactional_id": self.tid, "producer_id": self.producer_id,
            "producer_epoch": self.epoch, "committed": commit,
        })
        assert ended["error_code"] == ErrorCode.NONE

    async def committed(self) -> int:
        fetched = await self.wire.call(ApiKey.OFFSET_FETCH, 6, {
            "group_id": self.group, "topics": [{"name": self.topic, "partition_indexes": [0]}],
        })
        assert fetched["error_code"] == ErrorCode.NONE
        return int(fetched["topics"][0]["partitions"][0]["committed_offset"])

    async def join(self, wire: Wire | None = None, *, member_id: str = "", instance: str | None = None,
                   session_timeout_ms: int = 30_000) -> tuple[str, int]:
        """JoinGroup v5 (MEMBER_ID_REQUIRED answered) then SyncGroup: (member id, generation)."""
        wire = wire or self.wire
        for _ in range(3):
            joined = await wire.call(ApiKey.JOIN_GROUP, 5, {
                "group_id": self.group, "session_timeout_ms": session_timeout_ms, "rebalance_timeout_ms": 10_000,
                "member_id": member_id, "group_instance_id": instance, "protocol_type": "consumer",
                "protocols": [{"name": "range", "metadata": b""}],
            })
            member_id = joined["member_id"]
            if joined["error_code"] != ErrorCode.MEMBER_ID_REQUIRED:
                break
        assert joined["error_code"] == ErrorCode.NONE, joined
        generation = joined["generation_id"]
        synced = await wire.call(ApiKey.SYNC_GROUP, 3, {
            "group_id": self.group, "generation_id": generation, "member_id": member_id,
            "group_instance_id": instance,
            "assignments": [{"member_id": m["member_id"], "assignment": b""} for m in joined["members"]],
        })
        assert synced["error_code"] == ErrorCode.NONE, synced
        return member_id, generation

    async def leave(self, member_id: str) -> None:
        left = await self.wire.call(ApiKey.LEAVE_GROUP, 3, {
            "group_id": self.group, "members": [{"member_id": member_id, "group_instance_id": None}],
        })
        assert left["error_code"] == ErrorCode.NONE


def run(broker: BrokerProcess, scenario: Any) -> None:
    async def main() -> None:
        wire = await Wire.open(broker)
        try:
            setup = Setup(broker, wire)
            await setup.start()
            await scenario(setup)
        finally:
            wire.close()

    asyncio.run(main())


def test_the_current_member_and_generation_commit_with_the_transaction(broker: BrokerProcess) -> None:
    async def scenario(s: Setup) -> None:
        member, generation = await s.join()
        assert await s.txn_commit(generation, member, 7) == ErrorCode.NONE
        assert await s.committed() == -1, "pending until the transaction commits"
        await s.end(commit=True)
        assert await s.committed() == 7

    run(broker, scenario)


def test_an_older_generation_is_illegal(broker: BrokerProcess) -> None:
    async def scenario(s: Setup) -> None:
        member, old = await s.join()
        same, new = await s.join(member_id=member)  # the leader rejoins: a new generation
        assert same == member and new > old
        assert await s.txn_commit(old, member, 5) == ErrorCode.ILLEGAL_GENERATION
        await s.end(commit=False)
        assert await s.committed() == -1

    run(broker, scenario)


def test_a_member_that_left_an_empty_group_is_unknown(broker: BrokerProcess) -> None:
    """The zombie of a group nobody else is in: refused too (the old check let it through)."""

    async def scenario(s: Setup) -> None:
        member, generation = await s.join()
        assert await s.txn_commit(generation, member, 3) == ErrorCode.NONE
        await s.end(commit=True)
        await s.leave(member)
        await s.add_offsets()
        assert await s.txn_commit(generation, member, 9) == ErrorCode.UNKNOWN_MEMBER_ID
        await s.end(commit=False)
        assert await s.committed() == 3, "the refused commit wrote nothing"

    run(broker, scenario)


def test_a_member_whose_session_expired_is_unknown_while_its_successor_owns_the_group(broker: BrokerProcess) -> None:
    """The zombie of KIP-447: a member paused past its session timeout; the group removed it and
    a new member took the partitions. Its commit is refused; the successor's goes through."""

    async def scenario(s: Setup) -> None:
        zombie, old = await s.join(session_timeout_ms=SESSION_TIMEOUT_MS)
        other = await Wire.open(s.broker)
        try:
            deadline = time.monotonic() + EXPIRY_WAIT_S
            while True:  # no heartbeat from the zombie: the broker's tick removes it
                described = await s.wire.call(ApiKey.DESCRIBE_GROUPS, 5, {
                    "groups": [s.group], "include_authorized_operations": False,
                })
                if not described["groups"][0]["members"]:
                    break
                assert time.monotonic() < deadline, "the member was never expired"
                await asyncio.sleep(0.1)  # waiting for the broker's session expiry
            # The emptied group may be forgotten and start again at generation 1: the member id,
            # not the generation, is what tells the zombie from its successor then.
            successor, new = await s.join(other)
            assert await s.txn_commit(old, zombie, 11) == ErrorCode.UNKNOWN_MEMBER_ID
            assert await s.txn_commit(new, zombie, 11) == ErrorCode.UNKNOWN_MEMBER_ID
            await s.end(commit=False)
            await s.add_offsets()
            assert await s.txn_commit(new, successor, 4) == ErrorCode.NONE
            await s.end(commit=True)
            assert await s.committed() == 4
        finally:
            other.close()

    run(broker, scenario)


def test_a_static_member_replaced_by_a_newer_incarnation_is_fenced(broker: BrokerProcess) -> None:
    async def scenario(s: Setup) -> None:
        old_member, old = await s.join(instance="worker-a")
        new_member, new = await s.join(instance="worker-a")  # the instance restarted
        assert new_member != old_member
        assert await s.txn_commit(old, old_member, 6, instance="worker-a") == ErrorCode.FENCED_INSTANCE_ID
        assert await s.txn_commit(new, new_member, 6, instance="worker-b") == ErrorCode.UNKNOWN_MEMBER_ID
        await s.end(commit=False)
        await s.add_offsets()
        assert await s.txn_commit(new, new_member, 6, instance="worker-a") == ErrorCode.NONE
        await s.end(commit=True)
        assert await s.committed() == 6

    run(broker, scenario)


def test_commits_without_group_metadata_are_accepted_as_before_kip_447(broker: BrokerProcess) -> None:
    """TxnOffsetCommit v0-2 (and a producer outside group management) name no generation or
    member: accepted whatever the group's state, as Kafka does."""

    async def scenario(s: Setup) -> None:
        await s.join()
        assert await s.txn_commit(-1, "", 2) == ErrorCode.NONE
        await s.end(commit=True)
        assert await s.committed() == 2

    run(broker, scenario)
