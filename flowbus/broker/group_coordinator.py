"""The classic consumer-group protocol: membership, rebalances and committed offsets.

A group moves through Kafka's states (``GroupCoordinator.scala``, KIP-62, KIP-345, KIP-394):

* **Empty** — no members; it may still hold committed offsets.
* **PreparingRebalance** — a member joined, left or timed out: every member must (re)send
  JoinGroup. The join completes when all known members have rejoined, or when the rebalance
  timeout passes (members that did not rejoin are dropped).
* **CompletingRebalance** — the generation is bumped and JoinGroup answered; the leader (who
  received every member's metadata) computes assignments and sends them with SyncGroup.
* **Stable** — assignments are handed out; members heartbeat within their session timeout.
* **Dead** — the group is being removed; it answers nothing.

Static members (KIP-345, ``group.instance.id``) outlive their member ids: one that restarts
within its session timeout takes its previous place and assignment under a new member id,
without a rebalance, and the old id is fenced (FENCED_INSTANCE_ID). A rebalance does not drop
a static member that failed to rejoin; only its session timeout or a LeaveGroup does.

Time comes from an injected clock and one periodic :meth:`GroupCoordinator.tick`: session
timeouts, rebalance timeouts, the initial rebalance delay and MEMBER_ID_REQUIRED reservations
expire there, so there is no per-member sleeping task and tests use a ``ManualClock``.

Committed offsets and group metadata are records of the compacted internal topic
``__consumer_offsets`` (written through an :class:`OffsetStore`, replayed by
:meth:`GroupCoordinator.load_record` at start), in Kafka's own formats so that lag monitors such as
Burrow can read them (``internal_records.py`` has the layouts and versions):

* OffsetCommitKey v1 (group, topic, partition) → OffsetCommitValue v3 (offset, leader epoch,
  metadata, commit timestamp); a tombstone deletes the committed offset.
* GroupMetadataKey v2 (group) → GroupMetadataValue v3: generation, protocol type and name,
  leader, and every member (member id, group instance id, client id and host, timeouts,
  subscription and assignment). Written when a rebalance completes (the leader's SyncGroup, or the
  group becoming Empty), when a static member takes over its place (KIP-345), and as a tombstone
  when the group is deleted or forgotten. So a restart keeps each group's generation, protocol type
  and members: the members are loaded as they were (Stable) and keep their session timeout from the
  load on, so a consumer that keeps heartbeating carries on, a static member that rejoins gets its
  assignment back, and members that never return expire and trigger a rebalance.

Key versions this broker does not know (Kafka 4's consumer-group records) are skipped, so a
topic shared with newer writers still loads. Values that flowbus wrote before it used Kafka's
formats are read too (see ``group_records.py``).

Transactional offset commits (TxnOffsetCommit, KIP-98/KIP-447) use the same records, written in a
*transactional* batch carrying the producer's id and epoch. They stay pending (invisible to
OffsetFetch) until the transaction coordinator ends the transaction: a commit marker on the same
``__consumer_offsets`` partition makes them the group's committed offsets, an abort marker drops
them. The loader applies the same rule while replaying, so a restart sees exactly the committed
ones; offsets still pending at the end of the replay are resolved by the transaction
coordinator's recovery, which writes the missing marker.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from flowbus.broker.errors import InternalTopicError
from flowbus.broker.group_records import (
    CommittedOffset,
    GroupMetadata,
    GroupRecord,
    MemberMetadata,
    decode_offset_record,
    decode_offsets_record,
    encode_group_key,
    encode_group_value,
    encode_offset_key,
    encode_offset_value,
)
from flowbus.clock import Clock
from flowbus.errors import FlowbusError
from flowbus.protocol.codec import decode_consumer_subscription
from flowbus.protocol.error_codes import ErrorCode
from flowbus.protocol.errors import MalformedMessageError

log = logging.getLogger(__name__)

#: Offsets deleted per ``__consumer_offsets`` batch (DeleteGroups, OffsetDelete): about 60 bytes
#: a tombstone, so a batch stays far below the topic's record-batch size limit.
TOMBSTONES_PER_BATCH = 1_000
#: The ``client_host`` of the embedded transport's consumers (``embedded://``, ``memory://``):
#: they live in the process of the core they join, so none outlives it (see :meth:`GroupCoordinator.finish_loading`).
EMBEDDED_CLIENT_HOST = "embedded"


class GroupState(Enum):
    """Kafka's classic group states; the values are the names DescribeGroups reports."""

    EMPTY = "Empty"
    PREPARING_REBALANCE = "PreparingRebalance"
    COMPLETING_REBALANCE = "CompletingRebalance"
    STABLE = "Stable"
    DEAD = "Dead"


@dataclass(frozen=True, slots=True)
class GroupConfig:
    """Limits of the group coordinator (names follow Kafka's broker settings)."""

    group_min_session_timeout_ms: int = 6_000
    group_max_session_timeout_ms: int = 1_800_000
    #: Wait this long after the first member joins an empty group, so that members starting
    #: together land in one generation; 0 in tests.
    group_initial_rebalance_delay_ms: int = 3_000
    group_max_size: int = 1_000
    offset_metadata_max_bytes: int = 4_096


@dataclass(frozen=True, slots=True)
class JoinedMember:
    """A member as the group leader sees it in the JoinGroup response."""

    member_id: str
    group_instance_id: str | None
    metadata: bytes


@dataclass(frozen=True, slots=True)
class JoinResult:
    error_code: int
    generation_id: int = -1
    protocol_type: str | None = None
    protocol_name: str | None = None
    leader: str = ""
    member_id: str = ""
    members: list[JoinedMember] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SyncResult:
    error_code: int
    protocol_type: str | None = None
    protocol_name: str | None = None
    assignment: bytes = b""


@dataclass(frozen=True, slots=True)
class LeaveResult:
    error_code: int
    #: (member_id, group_instance_id, error_code) per member asked to leave.
    members: list[tuple[str, str | None, int]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class MemberDescription:
    member_id: str
    group_instance_id: str | None
    client_id: str
    client_host: str
    metadata: bytes
    assignment: bytes


@dataclass(frozen=True, slots=True)
class GroupDescription:
    group_id: str
    error_code: int
    state: str
    protocol_type: str
    protocol_data: str
    members: list[MemberDescription]


@dataclass(frozen=True, slots=True)
class GroupListing:
    group_id: str
    protocol_type: str
    state: str


@dataclass(frozen=True, slots=True)
class OffsetToCommit:
    topic: str
    partition: int
    offset: int
    leader_epoch: int = -1
    metadata: str | None = None


@dataclass(frozen=True, slots=True)
class FetchedOffset:
    topic: str
    partition: int
    offset: int
    leader_epoch: int
    metadata: str | None
    error_code: int


class OffsetStore(Protocol):
    """Where committed-offset records go: the ``__consumer_offsets`` topic in the broker."""

    async def append_offsets(
        self, group_id: str, records: list[tuple[bytes, bytes | None]]
    ) -> None:
        """Append the records durably enough to survive a broker process crash."""
        ...

    async def append_txn_offsets(
        self,
        group_id: str,
        producer_id: int,
        producer_epoch: int,
        records: list[tuple[bytes, bytes | None]],
    ) -> None:
        """Append the records as one transactional batch of that producer."""
        ...

    def append_offsets_now(
        self, group_id: str, records: list[tuple[bytes, bytes | None]]
    ) -> None:
        """Append the records before returning, without waiting for an fsync.

        For group metadata, written from state transitions that cannot wait (a session
        timeout in the tick). Once this returns the records survive a process crash; an fsync
        is requested when the log's flush policy asks for one. Raises FlowbusError on failure.
        """
        ...


@dataclass(slots=True, eq=False)
class _Member:
    member_id: str
    group_instance_id: str | None
    client_id: str
    client_host: str
    session_timeout_ms: int
    rebalance_timeout_ms: int
    protocol_type: str
    protocols: list[tuple[str, bytes]]
    last_seen_ms: int
    assignment: bytes = b""
    join_future: asyncio.Future[JoinResult] | None = None
    sync_future: asyncio.Future[SyncResult] | None = None

    def protocol_names(self) -> list[str]:
        return [name for name, _ in self.protocols]

    def metadata_for(self, protocol_name: str | None) -> bytes:
        for name, metadata in self.protocols:
            if name == protocol_name:
                return metadata
        return b""


@dataclass(slots=True, eq=False)
class _Group:
    group_id: str
    state: GroupState = GroupState.EMPTY
    generation_id: int = 0
    protocol_type: str | None = None
    protocol_name: str | None = None
    leader_id: str | None = None
    #: Insertion order = join order; the first member becomes leader when one is needed.
    members: dict[str, _Member] = field(default_factory=dict)
    #: Member ids handed out with MEMBER_ID_REQUIRED (KIP-394) → expiry (monotonic ms).
    pending_members: dict[str, int] = field(default_factory=dict)
    #: KIP-345: group.instance.id → the member id of its current incarnation. An id not
    #: listed here for its instance is a fenced (older) incarnation.
    static_members: dict[str, str] = field(default_factory=dict)
    rebalance_deadline_ms: int = 0
    initial_delay_deadline_ms: int | None = None
    offsets: dict[tuple[str, int], CommittedOffset] = field(default_factory=dict)
    #: A GroupMetadata record of this group is in ``__consumer_offsets``: forgetting the group
    #: must write its tombstone, or a restart would bring it back.
    persisted: bool = False


def _subscription_changed(
    protocol_type: str | None, old_metadata: bytes, new_metadata: bytes
) -> bool:
    """Did a restarted static member of a ``consumer`` group subscribe to other topics?

    Only the topic set counts: a restarted client also sends other owned partitions, another
    generation or user data, and rebalancing on those would defeat static membership.
    Metadata of other protocol types, or that does not decode, is opaque: Kafka's rule (no
    rebalance) applies.
    """
    if protocol_type != "consumer" or old_metadata == new_metadata:
        return False
    try:
        _, old = decode_consumer_subscription(old_metadata)
        _, new = decode_consumer_subscription(new_metadata)
    except MalformedMessageError:
        return False
    return set(old["topics"] or ()) != set(new["topics"] or ())


class GroupCoordinator:
    """All consumer groups of this broker (a single broker coordinates every group).

    Args:
        clock: time source; session and rebalance timeouts use ``clock.monotonic_ms()``.
        store: where committed offsets are appended.
        config: limits and timeouts.
    """

    def __init__(
        self, *, clock: Clock, store: OffsetStore, config: GroupConfig | None = None
    ) -> None:
        self._clock = clock
        self._store = store
        self._config = config or GroupConfig()
        self._groups: dict[str, _Group] = {}
        #: Transactional commits not ended yet: producer id → group id → partition → offset.
        self._pending_txn: dict[int, dict[str, dict[tuple[str, int], CommittedOffset]]] = {}
        #: True until :meth:`finish_loading`: group requests answer COORDINATOR_LOAD_IN_PROGRESS.
        self.loading = True

    # -- loading ---------------------------------------------------------------------------

    def load_record(self, key: bytes | None, value: bytes | None) -> None:
        """Apply one ``__consumer_offsets`` record during start-up (in log order)."""
        if key is None:
            return
        try:
            decoded = decode_offsets_record(key, value)
        except InternalTopicError as exc:
            log.warning("skipping a malformed record in __consumer_offsets: %s", exc)
            return
        if isinstance(decoded, GroupRecord):
            self._load_group(decoded.group_id, decoded.metadata)
            return
        if decoded is None:
            return
        group = self._groups.get(decoded.group_id)
        key_tp = (decoded.topic, decoded.partition)
        if decoded.committed is None:
            if group is not None:
                group.offsets.pop(key_tp, None)
                if not group.offsets and not group.persisted:
                    # Its last offset deleted (DeleteGroups, OffsetDelete) and no members while
                    # loading: nothing left to remember, as the tick decides for a live group.
                    # Listing it after a restart would bring a deleted group back. A group
                    # with metadata waits for its own tombstone (or the first tick).
                    del self._groups[decoded.group_id]
            return
        if group is None:
            group = self._groups[decoded.group_id] = _Group(decoded.group_id)
        group.offsets[key_tp] = decoded.committed

    def _load_group(self, group_id: str, metadata: GroupMetadata | None) -> None:
        """Apply a GroupMetadata record: the group as its last completed rebalance left it.

        Members come back as they were (Stable) with a fresh session (:meth:`finish_loading`
        starts it), as Kafka's coordinator schedules every loaded member's heartbeat expiry: a
        consumer that keeps heartbeating through the restart carries on, a static member that
        rejoins takes its place back (KIP-345), and members that never return time out.
        """
        group = self._groups.get(group_id)
        offsets = group.offsets if group is not None else {}
        if metadata is None:
            # Deleted (DeleteGroups, or forgotten when empty); its offsets have their own
            # tombstones, and any left over keep a bare group.
            if offsets:
                self._groups[group_id] = _Group(group_id, offsets=offsets)
            else:
                self._groups.pop(group_id, None)
            return
        now_ms = self._clock.monotonic_ms()
        fresh = _Group(
            group_id,
            generation_id=metadata.generation,
            protocol_type=metadata.protocol_type or None,
            offsets=offsets,
            persisted=True,
        )
        if metadata.members and metadata.protocol is not None:
            fresh.state = GroupState.STABLE
            fresh.protocol_name = metadata.protocol
            fresh.leader_id = metadata.leader
            for m in metadata.members:  # bounded by the record's size
                session_ms = m.session_timeout_ms
                fresh.members[m.member_id] = _Member(
                    m.member_id,
                    m.group_instance_id,
                    m.client_id,
                    m.client_host,
                    session_ms,
                    m.rebalance_timeout_ms if m.rebalance_timeout_ms > 0 else session_ms,
                    metadata.protocol_type,
                    [(metadata.protocol, m.subscription)],
                    now_ms,
                    m.assignment,
                )
                if m.group_instance_id is not None:
                    fresh.static_members[m.group_instance_id] = m.member_id
        self._groups[group_id] = fresh

    def load_txn_record(
        self, producer_id: int, key: bytes | None, value: bytes | None
    ) -> None:
        """Replay one record of a transactional batch: pending until its marker is replayed."""
        if key is None or value is None:
            return
        try:
            decoded = decode_offset_record(key, value)
        except InternalTopicError as exc:
            log.warning("skipping a malformed record in __consumer_offsets: %s", exc)
            return
        if decoded is None:
            return
        group_id, topic, partition, committed = decoded
        if committed is None:
            return
        by_group = self._pending_txn.setdefault(producer_id, {})
        by_group.setdefault(group_id, {})[(topic, partition)] = committed

    def complete_txn_offsets(self, producer_id: int, commit: bool) -> int:
        """End a producer's pending transactional commits (the coordinator's hook, and replay).

        Commit makes them the groups' committed offsets; abort drops them. Returns how many
        offsets became visible.
        """
        by_group = self._pending_txn.pop(producer_id, None)
        if not by_group or not commit:
            return 0
        applied = 0
        for group_id, offsets in by_group.items():
            group = self._groups.get(group_id)
            if group is None:
                group = self._groups[group_id] = _Group(group_id)
            group.offsets.update(offsets)
            applied += len(offsets)
        return applied

    def pending_txn_producers(self) -> set[int]:
        """Producers with transactional commits still pending (for the coordinator's recovery)."""
        return set(self._pending_txn)

    async def commit_txn_offsets(
        self,
        group_id: str,
        producer_id: int,
        producer_epoch: int,
        generation_id: int,
        member_id: str,
        offsets: list[OffsetToCommit],
        *,
        partition_exists: Callable[[str, int], bool],
        group_instance_id: str | None = None,
    ) -> list[int]:
        """Write transactional commits, pending until the transaction ends (TxnOffsetCommit).

        The transaction coordinator has checked the producer; here the group is checked
        (:meth:`_check_txn_commit`), so a zombie whose partitions moved cannot commit (KIP-447).
        """
        error = self._check_txn_commit(group_id, generation_id, member_id, group_instance_id)
        if error != ErrorCode.NONE:
            return [error] * len(offsets)
        errors, records, accepted = self._offset_records(group_id, offsets, partition_exists)
        if records:
            try:
                await self._store.append_txn_offsets(
                    group_id, producer_id, producer_epoch, records
                )
            except FlowbusError as exc:
                log.error("transactional commit of group %s failed: %s", group_id, exc)
                return [
                    ErrorCode.COORDINATOR_NOT_AVAILABLE if e == ErrorCode.NONE else e
                    for e in errors
                ]
            pending = self._pending_txn.setdefault(producer_id, {}).setdefault(
                group_id, {}
            )
            for key, committed in accepted:
                pending[key] = committed
        return errors

    def _check_txn_commit(
        self, group_id: str, generation_id: int, member_id: str, group_instance_id: str | None
    ) -> int:
        """May a TxnOffsetCommit naming this generation and member commit? (KIP-447)

        As Kafka's group coordinator decides it: a request that names no generation, member or
        instance (TxnOffsetCommit v0-2, or a producer outside group management) is accepted
        whatever the group's state, since those versions cannot name them. One that names any
        of them must be the group's current member, in its current generation:

        * a static member whose instance id now maps to another member id: FENCED_INSTANCE_ID
          (a newer incarnation of that instance joined);
        * a member id the group no longer has (removed after its session timeout, left, or
          dropped by a rebalance it missed), or an instance id it does not know:
          UNKNOWN_MEMBER_ID, also when the group has no members left at all;
        * a known member of another generation: ILLEGAL_GENERATION.

        Unlike OffsetCommit, a commit while the group is CompletingRebalance is accepted: the
        generation check already ties it to the member's current assignment.
        """
        if self.loading:
            return ErrorCode.COORDINATOR_LOAD_IN_PROGRESS
        if not group_id:
            return ErrorCode.INVALID_GROUP_ID
        group = self._groups.get(group_id)
        if group is not None and group.state is GroupState.DEAD:
            return ErrorCode.COORDINATOR_NOT_AVAILABLE
        if generation_id < 0 and not member_id and group_instance_id is None:
            return ErrorCode.NONE
        if generation_id < 0 and (group is None or group.state is GroupState.EMPTY):
            return ErrorCode.NONE  # a member id without a generation: not group-managed
        error = self._check_member(group, member_id, group_instance_id)
        if error != ErrorCode.NONE:
            return error
        assert group is not None
        if generation_id != group.generation_id:
            return ErrorCode.ILLEGAL_GENERATION
        return ErrorCode.NONE

    @staticmethod
    def _check_member(
        group: _Group | None, member_id: str, group_instance_id: str | None
    ) -> int:
        """Is ``member_id`` the group's current member? (Kafka's ``validateCurrentMember``)

        With a ``group_instance_id`` (KIP-345) the instance must be known and mapped to this
        member id: a restarted static member replaces its member id, so the old incarnation,
        still running somewhere, must learn it was replaced (FENCED_INSTANCE_ID) instead of
        rejoining and taking the partitions back. An unknown instance or member id is
        UNKNOWN_MEMBER_ID, which makes the client join again from scratch.
        """
        if group is None:
            return ErrorCode.UNKNOWN_MEMBER_ID
        if group_instance_id is not None:
            current = group.static_members.get(group_instance_id)
            if current is None:
                return ErrorCode.UNKNOWN_MEMBER_ID
            if current != member_id:
                return ErrorCode.FENCED_INSTANCE_ID
        if member_id not in group.members:
            return ErrorCode.UNKNOWN_MEMBER_ID
        return ErrorCode.NONE

    def finish_loading(self) -> None:
        """Start answering group requests (all offsets and groups are loaded).

        Loaded members' sessions start now, so a long replay does not expire them. Except the
        embedded transport's consumers (:data:`EMBEDDED_CLIENT_HOST`): they ran in the process of
        the core that recorded them and ended with it (a crash, or that core closed), so nothing
        will ever heartbeat for them; they expire at the first tick. Waiting out their session
        (10 s) kept a worker restarted on its embedded data dir from getting its partitions back.
        """
        now_ms = self._clock.monotonic_ms()
        for group in self._groups.values():
            for member in group.members.values():
                if member.client_host == EMBEDDED_CLIENT_HOST:
                    log.info(
                        "member %s of group %s was an embedded consumer of the core that recorded it: "
                        "it ended with that core, its session expires now",
                        member.member_id,
                        group.group_id,
                    )
                    member.last_seen_ms = now_ms - member.session_timeout_ms - 1
                else:
                    member.last_seen_ms = now_ms
        self.loading = False

    # -- membership ------------------------------------------------------------------------

    async def join_group(
        self,
        group_id: str,
        member_id: str,
        protocol_type: str,
        protocols: list[tuple[str, bytes]],
        *,
        session_timeout_ms: int,
        rebalance_timeout_ms: int,
        group_instance_id: str | None = None,
        client_id: str = "",
        client_host: str = "",
        require_known_member_id: bool = True,
    ) -> JoinResult:
        """Join (or rejoin) a group; returns once the rebalance this join is part of completes.

        ``require_known_member_id`` is true for JoinGroup v4+: a first join without a member id
        is answered MEMBER_ID_REQUIRED with a generated id, and the client joins again with it.
        """
        if self.loading:
            return JoinResult(
                ErrorCode.COORDINATOR_LOAD_IN_PROGRESS, member_id=member_id
            )
        if not group_id:
            return JoinResult(ErrorCode.INVALID_GROUP_ID, member_id=member_id)
        cfg = self._config
        if (
            not cfg.group_min_session_timeout_ms
            <= session_timeout_ms
            <= cfg.group_max_session_timeout_ms
        ):
            return JoinResult(ErrorCode.INVALID_SESSION_TIMEOUT, member_id=member_id)
        group = self._groups.get(group_id)
        if group is None:
            if member_id:
                return JoinResult(ErrorCode.UNKNOWN_MEMBER_ID, member_id=member_id)
            group = self._groups[group_id] = _Group(group_id)
        if group.state is GroupState.DEAD:
            return JoinResult(ErrorCode.COORDINATOR_NOT_AVAILABLE, member_id=member_id)
        if not protocols or not self._supports(group, protocol_type, protocols):
            return JoinResult(
                ErrorCode.INCONSISTENT_GROUP_PROTOCOL, member_id=member_id
            )
        now_ms = self._clock.monotonic_ms()
        rebalance_timeout_ms = (
            rebalance_timeout_ms if rebalance_timeout_ms > 0 else session_timeout_ms
        )

        if not member_id and group_instance_id is not None:
            previous_id = group.static_members.get(group_instance_id)
            if previous_id is not None:
                # KIP-345: a static member that restarts takes over its previous incarnation.
                return await self._rejoin_static(
                    group,
                    group.members[previous_id],
                    f"{group_instance_id}-{uuid.uuid4()}",
                    protocols,
                    session_timeout_ms=session_timeout_ms,
                    rebalance_timeout_ms=rebalance_timeout_ms,
                    client_id=client_id,
                    client_host=client_host,
                )

        if not member_id or member_id in group.pending_members:
            # Reserved ids count too, so MEMBER_ID_REQUIRED cannot be used to grow state unbounded.
            occupied = (
                len(group.members)
                + len(group.pending_members)
                - (member_id in group.pending_members)
            )
            if occupied >= cfg.group_max_size:
                return JoinResult(ErrorCode.GROUP_MAX_SIZE_REACHED, member_id=member_id)
            if not member_id:
                member_id = (
                    f"{group_instance_id or client_id or 'member'}-{uuid.uuid4()}"
                )
                # Static members skip the MEMBER_ID_REQUIRED round (KIP-345): their instance
                # id already names them across retries.
                if require_known_member_id and group_instance_id is None:
                    group.pending_members[member_id] = now_ms + session_timeout_ms
                    return JoinResult(ErrorCode.MEMBER_ID_REQUIRED, member_id=member_id)
            if group_instance_id is not None and group_instance_id in group.static_members:
                # Only a reserved dynamic id claimed with an instance id gets here; Kafka
                # refuses that too. The instance keeps its current member.
                return JoinResult(ErrorCode.FENCED_INSTANCE_ID, member_id=member_id)
            group.pending_members.pop(member_id, None)
            member = _Member(
                member_id,
                group_instance_id,
                client_id,
                client_host,
                session_timeout_ms,
                rebalance_timeout_ms,
                protocol_type,
                list(protocols),
                now_ms,
            )
            group.members[member_id] = member
            if group_instance_id is not None:
                group.static_members[group_instance_id] = member_id
            if group.initial_delay_deadline_ms is not None:
                # A new member during the initial delay extends it (bounded by the rebalance timeout).
                group.initial_delay_deadline_ms = min(
                    now_ms + cfg.group_initial_rebalance_delay_ms,
                    group.rebalance_deadline_ms,
                )
            return await self._await_join(group, member)

        error = self._check_member(group, member_id, group_instance_id)
        if error != ErrorCode.NONE:
            return JoinResult(error, member_id=member_id)
        member = group.members[member_id]
        member.last_seen_ms = now_ms
        unchanged = member.protocols == list(protocols)
        member.protocols = list(protocols)
        member.session_timeout_ms = session_timeout_ms
        member.rebalance_timeout_ms = rebalance_timeout_ms
        if group.state is GroupState.COMPLETING_REBALANCE and unchanged:
            # A retried join of this generation: answer it again (Kafka does the same).
            return self._join_result(group, member)
        if (
            group.state is GroupState.STABLE
            and unchanged
            and member_id != group.leader_id
        ):
            return self._join_result(group, member)
        return await self._await_join(group, member)

    async def _rejoin_static(
        self,
        group: _Group,
        member: _Member,
        new_member_id: str,
        protocols: list[tuple[str, bytes]],
        *,
        session_timeout_ms: int,
        rebalance_timeout_ms: int,
        client_id: str,
        client_host: str,
    ) -> JoinResult:
        """A known static member joined without a member id: it restarted (KIP-345).

        As Kafka's ``updateStaticMemberAndRebalance``: the member keeps its place, assignment
        and leadership under a new member id, and the old id is fenced. In a Stable group that
        is the whole story: no rebalance, so the other members keep their partitions and this
        one gets its previous assignment from SyncGroup. The answer names the leader as it was
        *before* the replacement, so a restarted leader sees someone else's id there, acts as
        a follower and does not compute an assignment a Stable group would never hand out
        (JoinGroup v9's ``skip_assignment`` is the newer way; flowbus speaks up to v7).

        A rebalance is still needed when the group's protocol would change (as in Kafka), and,
        for ``consumer`` groups, when the member subscribes to other topics than before: Kafka
        would keep the old assignment until some later rebalance, so partitions of a topic
        nobody asked for would stay with it. During CompletingRebalance the leader may be
        assigning to the old id, so the group rebalances; during PreparingRebalance this join
        simply counts as the member's rejoin.
        """
        old_leader_id = group.leader_id
        old_metadata = member.metadata_for(group.protocol_name)
        log.info(
            "static member %s of group %s rejoined as %s (was %s)",
            member.group_instance_id,
            group.group_id,
            new_member_id,
            member.member_id,
        )
        self._replace_member_id(group, member, new_member_id)
        member.client_id = client_id
        member.client_host = client_host
        member.protocols = list(protocols)
        member.session_timeout_ms = session_timeout_ms
        member.rebalance_timeout_ms = rebalance_timeout_ms
        member.last_seen_ms = self._clock.monotonic_ms()
        if (
            group.state is GroupState.STABLE
            and self._select_protocol(group) == group.protocol_name
            and not _subscription_changed(
                group.protocol_type, old_metadata, member.metadata_for(group.protocol_name)
            )
        ):
            # Kafka persists the new member id at once: after a restart the old id is fenced
            # and this one keeps the assignment.
            self._persist_group(group)
            return JoinResult(
                ErrorCode.NONE,
                group.generation_id,
                group.protocol_type,
                group.protocol_name,
                old_leader_id or "",
                new_member_id,
            )
        return await self._await_join(group, member)

    def _replace_member_id(self, group: _Group, member: _Member, new_member_id: str) -> None:
        """Give a static member a new id in place: same position (join order), same role.

        A join or sync the old incarnation is still waiting on is answered FENCED_INSTANCE_ID,
        as every later request with the old id will be.
        """
        old_member_id = member.member_id
        self._fail_waiters(member, ErrorCode.FENCED_INSTANCE_ID)
        group.members = {
            (new_member_id if mid == old_member_id else mid): m
            for mid, m in group.members.items()
        }
        member.member_id = new_member_id
        if group.leader_id == old_member_id:
            group.leader_id = new_member_id
        assert member.group_instance_id is not None
        group.static_members[member.group_instance_id] = new_member_id

    async def _await_join(self, group: _Group, member: _Member) -> JoinResult:
        if member.join_future is not None and not member.join_future.done():
            member.join_future.set_result(
                JoinResult(ErrorCode.REBALANCE_IN_PROGRESS, member_id=member.member_id)
            )
        future: asyncio.Future[JoinResult] = asyncio.get_running_loop().create_future()
        member.join_future = future
        if group.state is GroupState.PREPARING_REBALANCE:
            self._maybe_complete_join(group)
        else:
            self._prepare_rebalance(group)
        return await future

    async def sync_group(
        self,
        group_id: str,
        generation_id: int,
        member_id: str,
        assignments: dict[str, bytes],
        *,
        group_instance_id: str | None = None,
        protocol_type: str | None = None,
        protocol_name: str | None = None,
    ) -> SyncResult:
        """Send the leader's assignments, or wait for them; returns this member's assignment."""
        if self.loading:
            return SyncResult(ErrorCode.COORDINATOR_LOAD_IN_PROGRESS)
        group = self._groups.get(group_id)
        error = self._check_member(group, member_id, group_instance_id)
        if error != ErrorCode.NONE:
            return SyncResult(error)
        assert group is not None
        member = group.members[member_id]
        if generation_id != group.generation_id:
            return SyncResult(ErrorCode.ILLEGAL_GENERATION)
        if (protocol_type is not None and protocol_type != group.protocol_type) or (
            protocol_name is not None and protocol_name != group.protocol_name
        ):
            return SyncResult(ErrorCode.INCONSISTENT_GROUP_PROTOCOL)
        member.last_seen_ms = self._clock.monotonic_ms()
        if group.state is GroupState.PREPARING_REBALANCE:
            return SyncResult(ErrorCode.REBALANCE_IN_PROGRESS)
        if group.state is GroupState.STABLE:
            return self._sync_result(group, member)
        if group.state is not GroupState.COMPLETING_REBALANCE:
            return SyncResult(ErrorCode.UNKNOWN_MEMBER_ID)
        future: asyncio.Future[SyncResult] = asyncio.get_running_loop().create_future()
        if member.sync_future is not None and not member.sync_future.done():
            member.sync_future.set_result(SyncResult(ErrorCode.REBALANCE_IN_PROGRESS))
        member.sync_future = future
        if member_id == group.leader_id:
            for m in group.members.values():
                m.assignment = bytes(assignments.get(m.member_id, b""))
            group.state = GroupState.STABLE
            self._persist_group(group)
            now_ms = self._clock.monotonic_ms()
            for m in group.members.values():
                m.last_seen_ms = now_ms
                if m.sync_future is not None:
                    if not m.sync_future.done():
                        m.sync_future.set_result(self._sync_result(group, m))
                    m.sync_future = None
        return await future

    def heartbeat(
        self,
        group_id: str,
        generation_id: int,
        member_id: str,
        group_instance_id: str | None = None,
    ) -> int:
        """Keep a member's session alive; tells it to rejoin while the group rebalances.

        A replaced static incarnation (KIP-345) is answered FENCED_INSTANCE_ID, so it stops
        instead of rejoining and taking its partitions back from its successor.
        """
        if self.loading:
            return ErrorCode.COORDINATOR_LOAD_IN_PROGRESS
        group = self._groups.get(group_id)
        error = self._check_member(group, member_id, group_instance_id)
        if error != ErrorCode.NONE:
            return error
        assert group is not None
        member = group.members[member_id]
        if generation_id != group.generation_id:
            return ErrorCode.ILLEGAL_GENERATION
        member.last_seen_ms = self._clock.monotonic_ms()
        if group.state is GroupState.PREPARING_REBALANCE:
            return ErrorCode.REBALANCE_IN_PROGRESS
        return ErrorCode.NONE

    def leave_group(
        self, group_id: str, members: list[tuple[str, str | None]]
    ) -> LeaveResult:
        """Remove members at once (LeaveGroup; v3+ sends several); the group rebalances.

        As Kafka's ``handleLeaveGroup`` (KIP-345): an entry with an instance id and no member
        id removes whichever member that instance currently is (an admin removing a static
        member, whose clients never send LeaveGroup themselves); an entry naming both must
        name the current incarnation, else that entry is answered FENCED_INSTANCE_ID and
        nobody leaves. Each entry's answer echoes the ids it was asked with.
        """
        if self.loading:
            return LeaveResult(ErrorCode.COORDINATOR_LOAD_IN_PROGRESS)
        group = self._groups.get(group_id)
        if group is None:
            return LeaveResult(
                ErrorCode.NONE,
                [(mid, iid, ErrorCode.UNKNOWN_MEMBER_ID) for mid, iid in members],
            )
        outcome: list[tuple[str, str | None, int]] = []
        for member_id, instance_id in members:
            if group.pending_members.pop(member_id, None) is not None:
                outcome.append((member_id, instance_id, ErrorCode.NONE))
                self._maybe_complete_join(group)
                continue
            current = member_id
            error: int
            if not member_id and instance_id is not None:
                current = group.static_members.get(instance_id, "")
                error = ErrorCode.NONE if current else ErrorCode.UNKNOWN_MEMBER_ID
            else:
                error = self._check_member(group, member_id, instance_id)
            if error == ErrorCode.NONE:
                self._remove_member(group, group.members[current], "left the group")
            outcome.append((member_id, instance_id, error))
        return LeaveResult(ErrorCode.NONE, outcome)

    # -- offsets ---------------------------------------------------------------------------

    async def commit_offsets(
        self,
        group_id: str,
        generation_id: int,
        member_id: str,
        offsets: list[OffsetToCommit],
        *,
        partition_exists: Callable[[str, int], bool],
        group_instance_id: str | None = None,
    ) -> list[int]:
        """Commit offsets for a group; returns one error code per entry of ``offsets``.

        Generation -1 with no member id is a "simple" commit (a consumer that assigns
        partitions itself); it is accepted only while the group has no members. A replaced
        static incarnation (``group_instance_id``, OffsetCommit v7+) is FENCED_INSTANCE_ID.
        """
        error = self._check_commit(group_id, generation_id, member_id, group_instance_id)
        if error != ErrorCode.NONE:
            return [error] * len(offsets)
        group = self._groups.get(group_id)
        if group is None:
            group = self._groups[group_id] = _Group(group_id)
        errors, records, accepted = self._offset_records(group_id, offsets, partition_exists)
        if records:
            try:
                await self._store.append_offsets(group_id, records)
            except FlowbusError as exc:
                # The offsets topic could not be written: the client retries, maybe elsewhere.
                log.error("committing offsets of group %s failed: %s", group_id, exc)
                return [
                    ErrorCode.COORDINATOR_NOT_AVAILABLE if e == ErrorCode.NONE else e
                    for e in errors
                ]
            for key, committed in accepted:
                group.offsets[key] = committed
        return errors

    def _offset_records(
        self,
        group_id: str,
        offsets: list[OffsetToCommit],
        partition_exists: Callable[[str, int], bool],
    ) -> tuple[list[int], list[tuple[bytes, bytes | None]], list[tuple[tuple[str, int], CommittedOffset]]]:
        """Check each offset to commit and encode the accepted ones for ``__consumer_offsets``.

        Shared by plain and transactional commits, which differ only in where the records go
        and when they become visible. Returns one error code per entry, the records to append,
        and the accepted ``((topic, partition), offset)`` pairs in order.
        """
        now_wall_ms = self._clock.now_ms()
        errors: list[int] = []
        records: list[tuple[bytes, bytes | None]] = []
        accepted: list[tuple[tuple[str, int], CommittedOffset]] = []
        metadata_max_bytes = self._config.offset_metadata_max_bytes
        for item in offsets:
            if item.metadata is not None and len(item.metadata.encode()) > metadata_max_bytes:
                errors.append(ErrorCode.OFFSET_METADATA_TOO_LARGE)
                continue
            if not partition_exists(item.topic, item.partition):
                errors.append(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION)
                continue
            # Kafka stores a null metadata as "" (its record field is not nullable).
            committed = CommittedOffset(
                item.offset, item.leader_epoch, item.metadata or "", now_wall_ms
            )
            records.append(
                (encode_offset_key(group_id, item.topic, item.partition), encode_offset_value(committed))
            )
            accepted.append(((item.topic, item.partition), committed))
            errors.append(ErrorCode.NONE)
        return errors, records, accepted

    def _check_commit(
        self,
        group_id: str,
        generation_id: int,
        member_id: str,
        group_instance_id: str | None = None,
    ) -> int:
        """May an OffsetCommit naming this generation and member (and instance, v7+) commit?"""
        if self.loading:
            return ErrorCode.COORDINATOR_LOAD_IN_PROGRESS
        if not group_id:
            return ErrorCode.INVALID_GROUP_ID
        group = self._groups.get(group_id)
        if generation_id < 0 and not member_id:
            if group is None or (group.state is GroupState.EMPTY and not group.members):
                return ErrorCode.NONE
            return ErrorCode.UNKNOWN_MEMBER_ID
        if group is None:
            return ErrorCode.ILLEGAL_GENERATION
        error = self._check_member(group, member_id, group_instance_id)
        if error != ErrorCode.NONE:
            return error
        member = group.members[member_id]
        if generation_id != group.generation_id:
            return ErrorCode.ILLEGAL_GENERATION
        if group.state is GroupState.COMPLETING_REBALANCE:
            return ErrorCode.REBALANCE_IN_PROGRESS
        member.last_seen_ms = self._clock.monotonic_ms()
        return ErrorCode.NONE

    def fetch_offsets(
        self, group_id: str, partitions: list[tuple[str, int]] | None
    ) -> tuple[int, list[FetchedOffset]]:
        """Committed offsets of a group: the listed partitions, or all of them when None.

        A partition without a commit answers offset -1 with no error, as Kafka does.
        """
        if self.loading:
            return ErrorCode.COORDINATOR_LOAD_IN_PROGRESS, []
        group = self._groups.get(group_id)
        offsets = group.offsets if group is not None else {}
        if partitions is None:
            partitions = sorted(offsets)
        result = []
        for topic, partition in partitions:
            committed = offsets.get((topic, partition))
            if committed is None:
                result.append(
                    FetchedOffset(topic, partition, -1, -1, "", ErrorCode.NONE)
                )
            else:
                result.append(
                    FetchedOffset(
                        topic,
                        partition,
                        committed.offset,
                        committed.leader_epoch,
                        committed.metadata,
                        ErrorCode.NONE,
                    )
                )
        return ErrorCode.NONE, result

    # -- deletion (DeleteGroups, OffsetDelete) ---------------------------------------------

    async def delete_groups(self, group_ids: list[str]) -> list[tuple[str, int]]:
        """Delete empty groups and their committed offsets (DeleteGroups); ``(id, error)`` each.

        As Kafka's coordinator decides it: an empty id is INVALID_GROUP_ID, an unknown group
        (or one already being deleted) GROUP_ID_NOT_FOUND, a group with members
        NON_EMPTY_GROUP. The offsets go by tombstones in ``__consumer_offsets``, which
        :meth:`load_record` applies at start, so a restart does not bring them back.
        Transactional offsets still pending are left to their transaction, live and in the
        replay alike: a commit marker written after the tombstones recreates the group.
        """
        results = []
        for group_id in group_ids:  # bounded by the request's element limit
            results.append((group_id, await self._delete_group(group_id)))
        return results

    async def _delete_group(self, group_id: str) -> int:
        if self.loading:
            return ErrorCode.COORDINATOR_LOAD_IN_PROGRESS
        if not group_id:
            return ErrorCode.INVALID_GROUP_ID
        group = self._groups.get(group_id)
        if group is None or group.state is GroupState.DEAD:
            return ErrorCode.GROUP_ID_NOT_FOUND
        if group.state is not GroupState.EMPTY or group.members:
            return ErrorCode.NON_EMPTY_GROUP
        # Dead while the tombstones are written: a join meanwhile is refused
        # (COORDINATOR_NOT_AVAILABLE) and a commit finds no member, so nothing new is
        # committed that the tombstones would miss.
        group.state = GroupState.DEAD
        written: set[tuple[str, int]] = set()
        error = await self._write_tombstones(group, list(group.offsets), written)
        if error == ErrorCode.NONE:
            # A commit accepted before the group died but waiting for its fsync applies its
            # offsets only now (its waiter is answered before ours: it appended first). Its
            # records precede our tombstones, so tombstone any key it added as well.
            late = [key for key in group.offsets if key not in written]
            error = await self._write_tombstones(group, late, written)
        if error == ErrorCode.NONE:
            # Last, the group's own tombstone (Kafka writes it too), so a restart does not
            # bring back its generation and protocol type either.
            try:
                await self._store.append_offsets(group_id, [(encode_group_key(group_id), None)])
            except FlowbusError as exc:
                log.error("deleting the metadata of group %s failed: %s", group_id, exc)
                error = ErrorCode.COORDINATOR_NOT_AVAILABLE
        if error != ErrorCode.NONE:
            group.state = GroupState.EMPTY  # the client may retry; written keys are gone
            return error
        if self._groups.get(group_id) is group:
            del self._groups[group_id]
        log.info("group %s deleted with %d committed offsets", group_id, len(written))
        return ErrorCode.NONE

    async def delete_offsets(
        self,
        group_id: str,
        partitions: list[tuple[str, int]],
        *,
        partition_exists: Callable[[str, int], bool],
    ) -> tuple[int, list[int]]:
        """Delete a group's committed offsets (OffsetDelete, KIP-496).

        Returns a group-level error (then the list is empty) or one error per partition. As in
        Kafka: an unknown group is GROUP_ID_NOT_FOUND; an empty group loses every offset asked
        for; a live ``consumer`` group keeps those of topics its members subscribe to
        (GROUP_SUBSCRIBED_TO_TOPIC, since its consumers would commit them again or, worse,
        restart from the reset policy); a live group of another protocol type, whose
        subscriptions cannot be read, is NON_EMPTY_GROUP. A partition that does not exist is
        UNKNOWN_TOPIC_OR_PARTITION unless the group still has an offset for it (left over
        from a deleted topic), which is deleted.
        """
        if self.loading:
            return ErrorCode.COORDINATOR_LOAD_IN_PROGRESS, []
        if not group_id:
            return ErrorCode.INVALID_GROUP_ID, []
        group = self._groups.get(group_id)
        if group is None or group.state is GroupState.DEAD:
            return ErrorCode.GROUP_ID_NOT_FOUND, []
        subscribed: frozenset[str] | None = frozenset()
        if group.state is not GroupState.EMPTY or group.members:
            if group.protocol_type != "consumer":
                return ErrorCode.NON_EMPTY_GROUP, []
            subscribed = self._subscribed_topics(group)
        errors: list[int] = []
        deletable: list[tuple[str, int]] = []
        for topic, partition in partitions:
            if (topic, partition) not in group.offsets and not partition_exists(topic, partition):
                errors.append(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION)
            elif subscribed is None or topic in subscribed:
                errors.append(ErrorCode.GROUP_SUBSCRIBED_TO_TOPIC)
            else:
                errors.append(ErrorCode.NONE)
                deletable.append((topic, partition))
        # Every deletable partition gets a tombstone, with an offset or not: a commit waiting
        # for its fsync may hold an offset for it that is not in ``group.offsets`` yet.
        written: set[tuple[str, int]] = set()
        error = await self._write_tombstones(group, list(dict.fromkeys(deletable)), written)
        if error != ErrorCode.NONE:
            errors = [
                error if e == ErrorCode.NONE and tp not in written else e
                for e, tp in zip(errors, partitions)
            ]
        return ErrorCode.NONE, errors

    def _subscribed_topics(self, group: _Group) -> frozenset[str] | None:
        """Topics the members of a ``consumer`` group subscribe to; None when some member's
        metadata cannot be read (then every topic counts as subscribed, as in Kafka).

        Read from each member's metadata for the selected protocol, or for all its protocols
        while none is selected yet (the first rebalance of the group).
        """
        topics: set[str] = set()
        for member in group.members.values():  # bounded by group_max_size
            if group.protocol_name is not None:
                metadatas = [member.metadata_for(group.protocol_name)]
            else:
                metadatas = [metadata for _, metadata in member.protocols]
            for metadata in metadatas:
                try:
                    _, subscription = decode_consumer_subscription(metadata)
                except MalformedMessageError:
                    return None
                topics.update(subscription["topics"] or ())
        return frozenset(topics)

    async def _write_tombstones(
        self, group: _Group, keys: list[tuple[str, int]], written: set[tuple[str, int]]
    ) -> int:
        """Append tombstones for ``keys`` of the group, then forget those offsets; an error code.

        Written in batches of :data:`TOMBSTONES_PER_BATCH` so a group with very many offsets
        never builds one oversized batch. ``written`` collects the keys whose tombstones were
        appended (and dropped from memory), also when a later batch fails.
        """
        for start in range(0, len(keys), TOMBSTONES_PER_BATCH):
            chunk = keys[start:start + TOMBSTONES_PER_BATCH]
            records: list[tuple[bytes, bytes | None]] = [
                (encode_offset_key(group.group_id, topic, partition), None)
                for topic, partition in chunk
            ]
            try:
                await self._store.append_offsets(group.group_id, records)
            except FlowbusError as exc:
                log.error("deleting offsets of group %s failed: %s", group.group_id, exc)
                return ErrorCode.COORDINATOR_NOT_AVAILABLE
            for key in chunk:
                group.offsets.pop(key, None)
                written.add(key)
        return ErrorCode.NONE

    # -- group metadata records ------------------------------------------------------------

    def _persist_group(self, group: _Group) -> None:
        """Append the group's GroupMetadata record: a rebalance completed (or a static member
        took over its place), so this is the state a restarted broker should resume from.

        Written at once (:meth:`OffsetStore.append_offsets_now`), in the same step as the state
        change, so no later record of the group can overtake it in the log.
        """
        members = [
            MemberMetadata(
                m.member_id,
                m.group_instance_id,
                m.client_id,
                m.client_host,
                m.rebalance_timeout_ms,
                m.session_timeout_ms,
                m.metadata_for(group.protocol_name),
                m.assignment,
            )
            for m in group.members.values()  # bounded by group_max_size
        ]
        metadata = GroupMetadata(
            group.protocol_type or "",
            group.generation_id,
            group.protocol_name,
            group.leader_id,
            self._clock.now_ms(),
            members,
        )
        record = (encode_group_key(group.group_id), encode_group_value(metadata))
        if self._append_now(group.group_id, [record]):
            group.persisted = True

    def _append_now(self, group_id: str, records: list[tuple[bytes, bytes | None]]) -> bool:
        """Append group records at once; False (logged) when the log refused them.

        A lost group record costs a rebalance after a restart, not correctness: the group
        carries on in memory, as Kafka's does when its metadata append fails.
        """
        try:
            self._store.append_offsets_now(group_id, records)
        except FlowbusError as exc:
            log.error("writing the metadata of group %s failed: %s", group_id, exc)
            return False
        return True

    # -- inspection ------------------------------------------------------------------------

    def describe_group(self, group_id: str) -> GroupDescription:
        """State and members of a group; an unknown group is reported as Dead with no error."""
        if self.loading:
            return GroupDescription(
                group_id, ErrorCode.COORDINATOR_LOAD_IN_PROGRESS, "", "", "", []
            )
        group = self._groups.get(group_id)
        if group is None:
            return GroupDescription(
                group_id, ErrorCode.NONE, GroupState.DEAD.value, "", "", []
            )
        stable = group.state is GroupState.STABLE
        members = [
            MemberDescription(
                m.member_id,
                m.group_instance_id,
                m.client_id,
                m.client_host,
                m.metadata_for(group.protocol_name) if stable else b"",
                m.assignment if stable else b"",
            )
            for m in group.members.values()
        ]
        return GroupDescription(
            group_id,
            ErrorCode.NONE,
            group.state.value,
            group.protocol_type or "",
            (group.protocol_name or "") if stable else "",
            members,
        )

    def list_groups(
        self, states: list[str] | None = None
    ) -> tuple[int, list[GroupListing]]:
        """Every group (optionally only those in ``states``, ListGroups v4)."""
        if self.loading:
            return ErrorCode.COORDINATOR_LOAD_IN_PROGRESS, []
        wanted = {s.lower() for s in states} if states else None
        listings = [
            GroupListing(g.group_id, g.protocol_type or "", g.state.value)
            for g in self._groups.values()
            if wanted is None or g.state.value.lower() in wanted
        ]
        return ErrorCode.NONE, listings

    def group_state(self, group_id: str) -> GroupState | None:
        group = self._groups.get(group_id)
        return group.state if group is not None else None

    def generation(self, group_id: str) -> int:
        group = self._groups.get(group_id)
        return group.generation_id if group is not None else -1

    # -- time ------------------------------------------------------------------------------

    def tick(self) -> None:
        """Expire sessions, rebalance timeouts, delays and unclaimed member ids (call every ~100 ms)."""
        now_ms = self._clock.monotonic_ms()
        for group in list(self._groups.values()):
            for member_id, expiry_ms in list(group.pending_members.items()):
                if now_ms >= expiry_ms:
                    del group.pending_members[member_id]
                    self._maybe_complete_join(group)
            for member in list(group.members.values()):
                waiting = (
                    member.join_future is not None or member.sync_future is not None
                )
                if (
                    not waiting
                    and now_ms - member.last_seen_ms > member.session_timeout_ms
                ):
                    self._remove_member(group, member, "session timed out")
            if group.state is GroupState.PREPARING_REBALANCE:
                if now_ms >= group.rebalance_deadline_ms:
                    self._maybe_complete_join(group, deadline_passed=True)
                elif (
                    group.initial_delay_deadline_ms is not None
                    and now_ms >= group.initial_delay_deadline_ms
                ):
                    group.initial_delay_deadline_ms = None
                    self._maybe_complete_join(group)
            if (
                group.state is GroupState.EMPTY
                and not group.offsets
                and not group.pending_members
            ):
                # Nothing left to remember: Kafka marks such a group Dead and forgets it.
                group.state = GroupState.DEAD
                del self._groups[group.group_id]
                if group.persisted:
                    self._append_now(group.group_id, [(encode_group_key(group.group_id), None)])

    def close(self) -> None:
        """Answer every waiting join and sync so that no request hangs at shutdown."""
        for group in self._groups.values():
            for member in group.members.values():
                self._fail_waiters(member, ErrorCode.COORDINATOR_NOT_AVAILABLE)

    # -- state machine ---------------------------------------------------------------------

    @staticmethod
    def _supports(
        group: _Group, protocol_type: str, protocols: list[tuple[str, bytes]]
    ) -> bool:
        if not group.members:
            return True
        if any(m.protocol_type != protocol_type for m in group.members.values()):
            return False
        names = {name for name, _ in protocols}
        candidates = set.intersection(
            *(set(m.protocol_names()) for m in group.members.values())
        )
        return bool(names & candidates)

    def _prepare_rebalance(self, group: _Group) -> None:
        if group.state is GroupState.COMPLETING_REBALANCE:
            for member in group.members.values():
                member.assignment = b""
                if member.sync_future is not None:
                    if not member.sync_future.done():
                        member.sync_future.set_result(
                            SyncResult(ErrorCode.REBALANCE_IN_PROGRESS)
                        )
                    member.sync_future = None
        was_empty = group.state is GroupState.EMPTY
        now_ms = self._clock.monotonic_ms()
        timeout_ms = max(
            (m.rebalance_timeout_ms for m in group.members.values()), default=0
        )
        group.state = GroupState.PREPARING_REBALANCE
        group.rebalance_deadline_ms = now_ms + timeout_ms
        delay_ms = self._config.group_initial_rebalance_delay_ms
        if was_empty and delay_ms > 0:
            group.initial_delay_deadline_ms = now_ms + min(delay_ms, timeout_ms)
        else:
            group.initial_delay_deadline_ms = None
        log.info(
            "group %s is rebalancing (generation %d)",
            group.group_id,
            group.generation_id,
        )
        self._maybe_complete_join(group)

    def _maybe_complete_join(
        self, group: _Group, *, deadline_passed: bool = False
    ) -> None:
        if group.state is not GroupState.PREPARING_REBALANCE:
            return
        if not deadline_passed:
            if group.initial_delay_deadline_ms is not None:
                return
            if group.pending_members:
                return
            if any(m.join_future is None for m in group.members.values()):
                return
        self._complete_join(group)

    def _complete_join(self, group: _Group) -> None:
        """End the join phase: bump the generation and answer every waiting JoinGroup.

        Dynamic members that did not rejoin are dropped. Static ones stay (KIP-345, Kafka's
        ``onCompleteJoin``): a static member that is restarting keeps its place and gets its
        partitions back when it returns; only its session timeout removes it. The leader must
        be a member that rejoined, since only it gets the member list; when no member at all
        rejoined, the join phase waits another rebalance timeout for someone to rejoin or for
        the sessions of the absent static members to expire, as Kafka does.
        """
        for member in list(group.members.values()):
            if member.join_future is None and member.group_instance_id is None:
                self._drop(group, member)
        joined = [m for m in group.members.values() if m.join_future is not None]
        if group.members and not joined:
            group.rebalance_deadline_ms = self._clock.monotonic_ms() + max(
                m.rebalance_timeout_ms for m in group.members.values()
            )
            log.info(
                "group %s: no member rejoined before the rebalance timeout; waiting longer",
                group.group_id,
            )
            return
        group.pending_members.clear()
        group.initial_delay_deadline_ms = None
        group.generation_id += 1
        if not group.members:
            # The protocol type stays, as in Kafka: an empty consumer group is still a consumer
            # group (ListGroups and admin clients must not take it for a simple one).
            group.state = GroupState.EMPTY
            group.protocol_name = None
            group.leader_id = None
            self._persist_group(group)
            return
        first = next(iter(group.members.values()))
        group.protocol_type = first.protocol_type
        group.protocol_name = self._select_protocol(group)
        leader = group.members.get(group.leader_id or "")
        if leader is None or leader.join_future is None:
            group.leader_id = joined[0].member_id
        group.state = GroupState.COMPLETING_REBALANCE
        now_ms = self._clock.monotonic_ms()
        for member in group.members.values():
            member.last_seen_ms = now_ms
            future = member.join_future
            member.join_future = None
            if future is not None and not future.done():
                future.set_result(self._join_result(group, member))
        log.info(
            "group %s formed generation %d with %d members (protocol %s)",
            group.group_id,
            group.generation_id,
            len(group.members),
            group.protocol_name,
        )

    @staticmethod
    def _select_protocol(group: _Group) -> str:
        """Kafka's vote: among protocols every member supports, each member votes for its favourite."""
        members = list(group.members.values())
        candidates = set.intersection(*(set(m.protocol_names()) for m in members))
        votes: dict[str, int] = {}
        for member in members:
            choice = next(
                name for name in member.protocol_names() if name in candidates
            )
            votes[choice] = votes.get(choice, 0) + 1
        # Ties go to the leader-to-be's (first member's) preference order, for determinism.
        order = {name: i for i, name in enumerate(members[0].protocol_names())}
        return max(votes, key=lambda name: (votes[name], -order.get(name, 0)))

    def _join_result(self, group: _Group, member: _Member) -> JoinResult:
        is_leader = member.member_id == group.leader_id
        members = (
            [
                JoinedMember(
                    m.member_id,
                    m.group_instance_id,
                    m.metadata_for(group.protocol_name),
                )
                for m in group.members.values()
            ]
            if is_leader
            else []
        )
        return JoinResult(
            ErrorCode.NONE,
            group.generation_id,
            group.protocol_type,
            group.protocol_name,
            group.leader_id or "",
            member.member_id,
            members,
        )

    @staticmethod
    def _sync_result(group: _Group, member: _Member) -> SyncResult:
        return SyncResult(
            ErrorCode.NONE, group.protocol_type, group.protocol_name, member.assignment
        )

    def _fail_waiters(self, member: _Member, error_code: int) -> None:
        if member.join_future is not None and not member.join_future.done():
            member.join_future.set_result(
                JoinResult(error_code, member_id=member.member_id)
            )
        if member.sync_future is not None and not member.sync_future.done():
            member.sync_future.set_result(SyncResult(error_code))
        member.join_future = None
        member.sync_future = None

    def _drop(
        self,
        group: _Group,
        member: _Member,
        error_code: int = ErrorCode.UNKNOWN_MEMBER_ID,
    ) -> None:
        del group.members[member.member_id]
        instance_id = member.group_instance_id
        if instance_id is not None and group.static_members.get(instance_id) == member.member_id:
            del group.static_members[instance_id]
        self._fail_waiters(member, error_code)
        if group.leader_id == member.member_id:
            group.leader_id = None

    def _remove_member(self, group: _Group, member: _Member, reason: str) -> None:
        log.info(
            "member %s of group %s removed: %s",
            member.member_id,
            group.group_id,
            reason,
        )
        self._drop(group, member)
        if group.state in (GroupState.STABLE, GroupState.COMPLETING_REBALANCE):
            self._prepare_rebalance(group)
        else:
            self._maybe_complete_join(group)
