"""The group coordinator: Kafka's classic consumer-group protocol, in memory.

States, as in Kafka: ``Empty`` → ``PreparingRebalance`` (members (re)join;
the join completes when every known member has joined, or when the
rebalance timeout removes those that did not) → ``CompletingRebalance``
(the leader got every member's metadata and sends the assignments with
SyncGroup) → ``Stable``. A group's first rebalance waits a short initial
delay, extended while new members keep arriving, so consumers that start
together land in one generation. Heartbeats answer ``REBALANCE_IN_PROGRESS``
while members must rejoin; a member whose session times out, or that leaves,
triggers a rebalance at once.

Membership is not durable: after a broker restart every member learns that
its member id is unknown and rejoins. Committed offsets are (offsets.py).

A group exists while it has members (or members asked to rejoin with the id
they were given, KIP-394) or committed offsets: a refused JoinGroup creates
none, and a group left empty without committed offsets is forgotten (Kafka's
``Dead``), so clients that try many group ids do not grow the broker's memory.
Its committed offsets, if it has any, are the offset store's and are kept.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple

from embedded.kafka.config import BrokerConfig

log = logging.getLogger(__name__)

NONE = 0
COORDINATOR_NOT_AVAILABLE = 15
ILLEGAL_GENERATION = 22
INCONSISTENT_GROUP_PROTOCOL = 23
INVALID_GROUP_ID = 24
UNKNOWN_MEMBER_ID = 25
INVALID_SESSION_TIMEOUT = 26
REBALANCE_IN_PROGRESS = 27
MEMBER_ID_REQUIRED = 79


class State(StrEnum):
    EMPTY = "Empty"
    PREPARING = "PreparingRebalance"
    COMPLETING = "CompletingRebalance"
    STABLE = "Stable"


class JoinResult(NamedTuple):
    error: int
    generation: int = -1
    protocol: str | None = None
    leader: str = ""
    member_id: str = ""
    members: list[tuple[str, bytes]] = []


class SyncResult(NamedTuple):
    error: int
    assignment: bytes = b""


@dataclass(eq=False)
class Member:
    member_id: str
    client_id: str
    client_host: str
    session_timeout_ms: int
    rebalance_timeout_ms: int
    protocols: list[tuple[str, bytes]]
    assignment: bytes = b""
    joining: asyncio.Future[JoinResult] | None = None
    syncing: asyncio.Future[SyncResult] | None = None
    deadline: float = 0.0
    timer: asyncio.TimerHandle | None = None

    @property
    def awaiting(self) -> bool:
        return (self.joining is not None and not self.joining.done()) or (
            self.syncing is not None and not self.syncing.done()
        )

    def metadata(self, protocol: str | None) -> bytes:
        return next((meta for name, meta in self.protocols if name == protocol), b"")


@dataclass(eq=False)
class Group:
    group_id: str
    state: State = State.EMPTY
    generation: int = 0
    protocol_type: str | None = None
    protocol: str | None = None
    leader: str | None = None
    members: dict[str, Member] = field(default_factory=dict)
    pending: dict[str, float] = field(default_factory=dict)  # member id -> deadline (KIP-394)
    join_timer: asyncio.TimerHandle | None = None
    initial_until: float | None = None  # in the initial delay until this time; None: not

    def candidates(self) -> set[str]:
        """Protocols every member supports."""
        sets = [{name for name, _ in m.protocols} for m in self.members.values()]
        return set.intersection(*sets) if sets else set()


class GroupCoordinator:
    def __init__(self, config: BrokerConfig, has_offsets: Callable[[str], bool]) -> None:
        self.config = config
        self.has_offsets = has_offsets  # whether the group has committed offsets
        self.groups: dict[str, Group] = {}

    @property
    def _loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    # JoinGroup --------------------------------------------------------------------
    async def join(
        self,
        group_id: str,
        member_id: str,
        *,
        client_id: str,
        client_host: str,
        session_timeout_ms: int,
        rebalance_timeout_ms: int,
        protocol_type: str,
        protocols: list[tuple[str, bytes]],
        require_member_id: bool,
    ) -> JoinResult:
        if not group_id:
            return JoinResult(INVALID_GROUP_ID)
        cfg = self.config
        if not (
            cfg.group_min_session_timeout_ms
            <= session_timeout_ms
            <= cfg.group_max_session_timeout_ms
        ):
            return JoinResult(INVALID_SESSION_TIMEOUT)
        group = self.groups.get(group_id)
        if (
            not protocol_type
            or not protocols
            or (group is not None and not self._compatible(group, protocol_type, protocols))
        ):
            return JoinResult(INCONSISTENT_GROUP_PROTOCOL)
        if group is None:
            if member_id:  # no group, so no such member: nothing to create
                return JoinResult(UNKNOWN_MEMBER_ID, member_id=member_id)
            group = self.groups[group_id] = Group(group_id)
        rebalance_timeout_ms = max(rebalance_timeout_ms, session_timeout_ms)
        self._expire_pending(group)
        if not group.members:
            group.protocol_type = protocol_type

        def new_member(mid: str) -> Member:
            return Member(
                mid,
                client_id,
                client_host,
                session_timeout_ms,
                rebalance_timeout_ms,
                list(protocols),
            )

        if not member_id:
            mid = f"{client_id or 'member'}-{uuid.uuid4()}"
            if require_member_id:
                group.pending[mid] = self._loop.time() + session_timeout_ms / 1000
                self._loop.call_later(session_timeout_ms / 1000, self._pending_expired, group)
                return JoinResult(MEMBER_ID_REQUIRED, member_id=mid)
            return await self._add_member(group, new_member(mid))
        if member_id in group.pending:
            del group.pending[member_id]
            return await self._add_member(group, new_member(member_id))
        member = group.members.get(member_id)
        if member is None:
            return JoinResult(UNKNOWN_MEMBER_ID, member_id=member_id)
        changed = member.protocols != protocols
        member.protocols = list(protocols)
        member.session_timeout_ms = session_timeout_ms
        member.rebalance_timeout_ms = rebalance_timeout_ms
        if group.state == State.PREPARING:
            return await self._await_join(group, member)
        if group.state == State.COMPLETING and not changed:
            return self._join_result(group, member)  # a repeated join: same generation
        if group.state == State.STABLE and not changed and member_id != group.leader:
            return self._join_result(group, member)
        self._prepare_rebalance(group, f"member {member_id} rejoined")
        return await self._await_join(group, member)

    def _compatible(
        self, group: Group, protocol_type: str, protocols: list[tuple[str, bytes]]
    ) -> bool:
        if not group.members:
            return True
        if protocol_type != group.protocol_type:
            return False
        return bool(group.candidates() & {name for name, _ in protocols})

    async def _add_member(self, group: Group, member: Member) -> JoinResult:
        group.members[member.member_id] = member
        if group.state == State.PREPARING:
            if group.initial_until is not None:
                self._extend_initial_delay(group)
        else:
            self._prepare_rebalance(group, f"new member {member.member_id}")
        return await self._await_join(group, member)

    async def _await_join(self, group: Group, member: Member) -> JoinResult:
        if member.joining is not None and not member.joining.done():
            member.joining.set_result(JoinResult(REBALANCE_IN_PROGRESS, member_id=member.member_id))
        fut: asyncio.Future[JoinResult] = self._loop.create_future()
        member.joining = fut
        self._maybe_complete_join(group)
        return await fut

    def _join_result(self, group: Group, member: Member) -> JoinResult:
        members = (
            [(m.member_id, m.metadata(group.protocol)) for m in group.members.values()]
            if member.member_id == group.leader
            else []
        )
        return JoinResult(
            NONE, group.generation, group.protocol, group.leader or "", member.member_id, members
        )

    # Rebalance ------------------------------------------------------------------------
    def _prepare_rebalance(self, group: Group, reason: str) -> None:
        log.debug("group %s: rebalancing (%s)", group.group_id, reason)
        if group.state == State.COMPLETING:
            self._fail_syncs(group, REBALANCE_IN_PROGRESS)
        initial = group.state == State.EMPTY
        group.state = State.PREPARING
        if group.join_timer is not None:
            group.join_timer.cancel()
        if not group.members:
            self._complete_join(group)
            return
        timeout = max(m.rebalance_timeout_ms for m in group.members.values()) / 1000
        now = self._loop.time()
        if initial and self.config.group_initial_rebalance_delay_ms > 0:
            group.initial_until = now + timeout
            self._extend_initial_delay(group)
        else:
            group.initial_until = None
            group.join_timer = self._loop.call_later(timeout, self._complete_join, group)

    def _extend_initial_delay(self, group: Group) -> None:
        assert group.initial_until is not None
        if group.join_timer is not None:
            group.join_timer.cancel()
        now = self._loop.time()
        delay = min(
            self.config.group_initial_rebalance_delay_ms / 1000, max(group.initial_until - now, 0)
        )
        group.join_timer = self._loop.call_later(delay, self._end_initial_delay, group)

    def _end_initial_delay(self, group: Group) -> None:
        group.initial_until = None
        group.join_timer = None
        self._complete_join(group)

    def _maybe_complete_join(self, group: Group) -> None:
        if (
            group.state == State.PREPARING
            and group.initial_until is None
            and not group.pending
            and all(m.joining is not None and not m.joining.done() for m in group.members.values())
        ):
            self._complete_join(group)

    def _complete_join(self, group: Group) -> None:
        if group.state != State.PREPARING:
            return
        if group.join_timer is not None:
            group.join_timer.cancel()
            group.join_timer = None
        group.initial_until = None
        for m in list(group.members.values()):
            if m.joining is None or m.joining.done():
                log.debug("group %s: %s did not rejoin in time", group.group_id, m.member_id)
                self._remove(group, m)
        group.generation += 1
        if not group.members:
            group.state = State.EMPTY
            group.protocol = group.leader = None
            self._maybe_forget(group)
            return
        group.protocol = self._select_protocol(group)
        if group.leader not in group.members:
            group.leader = next(iter(group.members))
        group.state = State.COMPLETING
        now = self._loop.time()
        for m in group.members.values():
            m.assignment = b""
            assert m.joining is not None
            fut, m.joining = m.joining, None
            fut.set_result(self._join_result(group, m))
            self._touch(group, m, now)

    def _select_protocol(self, group: Group) -> str:
        candidates = group.candidates()
        votes: dict[str, int] = {}
        for m in group.members.values():
            choice = next(name for name, _ in m.protocols if name in candidates)
            votes[choice] = votes.get(choice, 0) + 1
        return max(votes, key=lambda name: votes[name])

    def _fail_syncs(self, group: Group, error: int) -> None:
        for m in group.members.values():
            m.assignment = b""
            if m.syncing is not None and not m.syncing.done():
                m.syncing.set_result(SyncResult(error))
            m.syncing = None

    # SyncGroup ----------------------------------------------------------------------
    async def sync(
        self,
        group_id: str,
        generation: int,
        member_id: str,
        assignments: Iterable[tuple[str, bytes]],
    ) -> SyncResult:
        group = self.groups.get(group_id)
        member = group.members.get(member_id) if group is not None else None
        if group is None or member is None:
            return SyncResult(UNKNOWN_MEMBER_ID)
        if generation != group.generation:
            return SyncResult(ILLEGAL_GENERATION)
        if group.state == State.PREPARING:
            return SyncResult(REBALANCE_IN_PROGRESS)
        if group.state == State.STABLE:
            self._touch(group, member)
            return SyncResult(NONE, member.assignment)
        # CompletingRebalance: wait for the leader's assignments.
        self._touch(group, member)
        fut: asyncio.Future[SyncResult] = self._loop.create_future()
        if member.syncing is not None and not member.syncing.done():
            member.syncing.set_result(SyncResult(REBALANCE_IN_PROGRESS))
        member.syncing = fut
        if member_id == group.leader:
            given = dict(assignments)
            group.state = State.STABLE
            for m in group.members.values():
                m.assignment = given.get(m.member_id) or b""
                if m.syncing is not None and not m.syncing.done():
                    m.syncing.set_result(SyncResult(NONE, m.assignment))
                m.syncing = None
        return await fut

    # Heartbeat, LeaveGroup, sessions -----------------------------------------------------
    def heartbeat(self, group_id: str, generation: int, member_id: str) -> int:
        group = self.groups.get(group_id)
        member = group.members.get(member_id) if group is not None else None
        if group is None or member is None:
            return UNKNOWN_MEMBER_ID
        if generation != group.generation:
            return ILLEGAL_GENERATION
        self._touch(group, member)
        return REBALANCE_IN_PROGRESS if group.state == State.PREPARING else NONE

    def leave(self, group_id: str, member_id: str) -> int:
        group = self.groups.get(group_id)
        member = group.members.get(member_id) if group is not None else None
        if group is None or member is None:
            if group is not None and member_id in group.pending:
                del group.pending[member_id]
                self._maybe_complete_join(group)
                self._maybe_forget(group)
                return NONE
            return UNKNOWN_MEMBER_ID
        self._remove(group, member)
        self._membership_changed(group, f"member {member_id} left")
        return NONE

    def _touch(self, group: Group, member: Member, now: float | None = None) -> None:
        """The member is alive: push its session deadline."""
        now = self._loop.time() if now is None else now
        member.deadline = now + member.session_timeout_ms / 1000
        if member.timer is None:
            member.timer = self._loop.call_at(member.deadline, self._check_session, group, member)

    def _check_session(self, group: Group, member: Member) -> None:
        member.timer = None
        if group.members.get(member.member_id) is not member:
            return
        now = self._loop.time()
        if member.awaiting:  # blocked in JoinGroup/SyncGroup: alive (cannot heartbeat)
            member.deadline = now + member.session_timeout_ms / 1000
        if now < member.deadline:
            member.timer = self._loop.call_at(member.deadline, self._check_session, group, member)
            return
        log.info("group %s: member %s session expired", group.group_id, member.member_id)
        self._remove(group, member)
        self._membership_changed(group, f"member {member.member_id} expired")

    def _remove(self, group: Group, member: Member) -> None:
        group.members.pop(member.member_id, None)
        if member.timer is not None:
            member.timer.cancel()
            member.timer = None
        if member.joining is not None and not member.joining.done():
            member.joining.set_result(JoinResult(UNKNOWN_MEMBER_ID, member_id=member.member_id))
        if member.syncing is not None and not member.syncing.done():
            member.syncing.set_result(SyncResult(UNKNOWN_MEMBER_ID))
        member.joining = member.syncing = None

    def _membership_changed(self, group: Group, reason: str) -> None:
        if group.state in (State.STABLE, State.COMPLETING):
            self._prepare_rebalance(group, reason)
        elif group.state == State.PREPARING:
            if not group.members:
                self._complete_join(group)
            else:
                self._maybe_complete_join(group)

    def _expire_pending(self, group: Group) -> None:
        now = self._loop.time()
        expired = [mid for mid, deadline in group.pending.items() if deadline <= now]
        for mid in expired:
            del group.pending[mid]
        if expired:
            self._maybe_complete_join(group)

    def _pending_expired(self, group: Group) -> None:
        self._expire_pending(group)
        self._maybe_forget(group)

    def _maybe_forget(self, group: Group) -> None:
        """Kafka's ``Dead``: no members, none pending, no committed offsets: forgotten."""
        if (
            group.state == State.EMPTY
            and not group.members
            and not group.pending
            and self.groups.get(group.group_id) is group
            and not self.has_offsets(group.group_id)
        ):
            if group.join_timer is not None:
                group.join_timer.cancel()
                group.join_timer = None
            del self.groups[group.group_id]

    # Offsets: who may commit ----------------------------------------------------------------
    def check_commit(self, group_id: str, generation: int, member_id: str) -> int:
        group = self.groups.get(group_id)
        if generation < 0 and (group is None or group.state == State.EMPTY):
            return NONE  # the group uses Kafka only to store offsets
        if group is None:
            return ILLEGAL_GENERATION
        if group.state == State.COMPLETING:
            return REBALANCE_IN_PROGRESS
        member = group.members.get(member_id)
        if member is None:
            return UNKNOWN_MEMBER_ID
        if generation != group.generation:
            return ILLEGAL_GENERATION
        self._touch(group, member)
        return NONE

    def close(self) -> None:
        for group in self.groups.values():
            if group.join_timer is not None:
                group.join_timer.cancel()
            for m in list(group.members.values()):
                self._remove(group, m)
