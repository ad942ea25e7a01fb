"""Who a private room's message goes to: the rooms service's membership and the key
directory's device lists, as the sender may see them (docs/rooms.md, "Private rooms").

The room itself (whether the sender is a member now, whether the room is
open, its ``version`` and member count) is read from the rooms service and
kept per (room, sender) under the room's send gate, a token in Redis that the
rooms service replaces after every change to the room
(:mod:`services.common.room_gate`): a ``room_send`` reads the gate (one Redis
round trip) and asks the rooms service again only when the token moved. The
member list is cached by ``version`` and member count
(:class:`~services.common.rosters.RosterCache`: a list read in the middle of a
join or a leave is never kept). Device lists come from
:class:`DeviceLists` (cached briefly, forgotten when a user's devices change).
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp
from parley_contract import envelopes as e
from parley_contract import frames as f
from redis.exceptions import RedisError

from services.common.config import Settings
from services.common.devices import DeviceLists, member_ids, rooms_get
from services.common.errors import ApiError, DevicesChanged, ErrorCode
from services.common.room_gate import RoomGate
from services.common.rosters import RosterCache

DIGESTS_KEPT = 10_000
"""(room, sending device) pairs whose last member-device digest is remembered."""
REFRESH_EVERY_S = 10.0
"""A room's member device lists are read again (not from the cache) at most this often,
when a ``room_send``'s digest disagrees with them."""
ROOMS_KEPT = 10_000
"""(room, sender) pairs whose room is kept under its gate."""
ROOM_KEPT_S = 30.0
"""The longest a kept room is used, whatever its gate says: the bound on a stale copy
if the rooms service could not move a gate (Redis away at that moment)."""


class RoomMembers:
    def __init__(
        self, settings: Settings, session: aiohttp.ClientSession, devices: DeviceLists,
        gate: RoomGate | None = None,
    ) -> None:  # fmt: skip
        self.base = settings.rooms_url.rstrip("/")
        self.session = session
        self.devices = devices
        self.gate = gate
        self._rooms: dict[tuple[str, str], tuple[bytes, float, dict[str, Any]]] = {}
        self._rosters = RosterCache()
        self._digests: dict[tuple[str, str, int], tuple[int, str]] = {}
        self._refreshed: dict[str, float] = {}

    async def targets(
        self, room_id: str, user_id: str, device: int, token: str, mentions: list[str],
        digest: str | None = None,
    ) -> list[str]:  # fmt: skip
        """The device inboxes a message from ``user_id``'s ``device`` to ``room_id`` goes
        to: every device of every member but the sending one. Refuses with the
        rooms service's codes: ``room_not_found`` (no such room, or a private
        room the sender is not in), ``not_a_member``, ``room_closed``, and
        ``forbidden`` for a public room (its messages are posted over HTTP), and
        ``validation_failed`` when ``mentions`` names anyone who is not a member
        (a mention notifies its user and names the room).

        ``digest`` (``room_send.device_digest``): the member devices the sender's key
        went to; other than these targets' (:func:`~parley_contract.frames.device_digest`),
        the message is refused with :class:`DevicesChanged` and every member's
        current devices (the sender's without the sending one)."""
        members = await self.members(room_id, user_id, token, private=True)
        strangers = set(mentions) - set(members)
        if strangers:
            raise ApiError(
                ErrorCode.VALIDATION_FAILED, "Only members of the room can be mentioned.",
                details=[{"field": "mentions", "problem": f"not a member: {sorted(strangers)[0]}"}],
            )  # fmt: skip
        lists = await self._device_lists(members, token)
        targets = _targets(members, lists, user_id, device)
        key = (room_id, user_id, device)
        if digest is None or digest == self._digest(key, targets):
            return targets
        # A cached list may be behind (a change notice lost): the lists are read again,
        # at most once per room every REFRESH_EVERY_S (a thousand look-ups for a room
        # of a thousand), before the message is refused.
        now = time.monotonic()
        if now - self._refreshed.get(room_id, -REFRESH_EVERY_S) >= REFRESH_EVERY_S:
            if len(self._refreshed) >= DIGESTS_KEPT:
                self._refreshed.clear()
            self._refreshed[room_id] = now
            lists = await self._device_lists(members, token, fresh=True)
            targets = _targets(members, lists, user_id, device)
            if digest == self._digest(key, targets):
                return targets
        raise DevicesChanged(
            [
                f.DeviceList(user=m, devices=sorted(d - {device} if m == user_id else d))
                for m, d in zip(members, lists, strict=True)
            ]
        )

    def _digest(self, key: tuple[str, str, int], targets: list[str]) -> str:
        """``device_digest`` of ``targets`` (inbox ids), remembered per room and sending
        device while the targets stay the same (a room of a thousand: 220 µs to
        compute, 6 µs to recognise)."""
        seen = hash(tuple(targets))
        hit = self._digests.get(key)
        if hit is not None and hit[0] == seen:
            return hit[1]
        digest: str = f.device_digest(
            (user, int(d)) for user, _, d in (t.rpartition(".") for t in targets)
        )
        if len(self._digests) >= DIGESTS_KEPT:
            self._digests.clear()
        self._digests[key] = (seen, digest)
        return digest

    async def members(
        self, room_id: str, user_id: str, token: str, private: bool = False
    ) -> tuple[str, ...]:
        """The members of an open room ``user_id`` (the token's user) is a member of now
        (:meth:`room`), refused as :meth:`targets` says; ``private``: a private room
        only (``forbidden``)."""
        room = await self.room(room_id, user_id, token)
        if room.get("role") is None:
            raise ApiError(ErrorCode.NOT_A_MEMBER, "Join the room (accept its invitation) first.")
        if private and room.get("kind") != "private":
            raise ApiError(
                ErrorCode.FORBIDDEN,
                "A public room's messages are posted with POST /rooms/v1/rooms/{room_id}/messages.",
            )
        if room.get("state") != "open":
            raise ApiError(ErrorCode.ROOM_CLOSED, "The room is closed: no new messages.")
        return await self._members(
            room_id, int(room.get("version", 0)), int(room.get("members", -1)), token
        )

    async def room(self, room_id: str, user_id: str, token: str) -> dict[str, Any]:
        """The room as ``user_id`` sees it now: kept under its gate while the gate holds
        the token read before the rooms service was asked (a member's view of an
        open room only: a refusal is asked again each time)."""
        gate = None
        if self.gate is not None:
            try:
                gate = await self.gate.read(room_id)
            except (RedisError, OSError):
                gate = None  # read the room every time until Redis answers
        key, now = (room_id, user_id), time.monotonic()
        kept = self._rooms.get(key)
        if gate is not None and kept is not None and kept[0] == gate and now < kept[1]:
            return kept[2]
        room = await self._get(f"/rooms/v1/rooms/{room_id}", token)
        if gate is not None and room.get("role") is not None and room.get("state") == "open":
            if len(self._rooms) >= ROOMS_KEPT:
                self._rooms.clear()
            self._rooms[key] = (gate, now + ROOM_KEPT_S, room)
        else:
            self._rooms.pop(key, None)
        return room

    async def _members(self, room_id: str, version: int, count: int, token: str) -> tuple[str, ...]:
        hit = self._rosters.get(room_id, version, count)
        if hit is not None:
            return hit
        members = await member_ids(
            lambda path: self._get(path, token), f"/rooms/v1/rooms/{room_id}/members"
        )
        return self._rosters.put(room_id, version, count, members)

    async def _device_lists(
        self, members: tuple[str, ...], token: str, fresh: bool = False
    ) -> list[frozenset[int]]:
        """Each member's devices: from the cache when it has them (the common case),
        else read in bulk (:meth:`DeviceLists.get_many`); ``fresh``: all read."""
        return await self.devices.get_many(members, token, fresh=fresh)

    async def _get(self, path: str, token: str) -> dict[str, Any]:
        return await rooms_get(self.session, self.base + path, token)


def _targets(
    members: tuple[str, ...], lists: list[frozenset[int]], user_id: str, device: int
) -> list[str]:
    """The inboxes of every member device but the sending one."""
    return [
        e.inbox_id(member, d)
        for member, devices in zip(members, lists, strict=True)
        for d in sorted(devices)
        if (member, d) != (user_id, device)
    ]
