"""Who a private room's message goes to: the rooms service's membership and the key
directory's device lists, as the sender may see them (docs/rooms.md, "Private rooms").

The room itself is read on every ``room_send`` (one primary-key read at the
rooms service): whether the sender is a member now, whether the room is
open, its ``version`` and member count. The member list is cached by those
two (:class:`~services.common.rosters.RosterCache`: a list read in the middle
of a join or a leave is never kept). Device lists come from
:class:`DeviceLists` (cached briefly, forgotten when a user's devices change).
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from parley_contract import envelopes as e

from services.common.config import Settings
from services.common.devices import DeviceLists, member_ids, rooms_get
from services.common.errors import ApiError, ErrorCode
from services.common.rosters import RosterCache

DEVICE_LOOKUPS = 32


class RoomMembers:
    def __init__(
        self, settings: Settings, session: aiohttp.ClientSession, devices: DeviceLists
    ) -> None:
        self.base = settings.rooms_url.rstrip("/")
        self.session = session
        self.devices = devices
        self._rosters = RosterCache()

    async def targets(
        self, room_id: str, user_id: str, device: int, token: str, mentions: list[str]
    ) -> list[str]:
        """The device inboxes a message from ``user_id``'s ``device`` to ``room_id`` goes
        to: every device of every member but the sending one. Refuses with the
        rooms service's codes: ``room_not_found`` (no such room, or a private
        room the sender is not in), ``not_a_member``, ``room_closed``, and
        ``forbidden`` for a public room (its messages are posted over HTTP), and
        ``validation_failed`` when ``mentions`` names anyone who is not a member
        (a mention notifies its user and names the room)."""
        members = await self.members(room_id, token, private=True)
        strangers = set(mentions) - set(members)
        if strangers:
            raise ApiError(
                ErrorCode.VALIDATION_FAILED, "Only members of the room can be mentioned.",
                details=[{"field": "mentions", "problem": f"not a member: {sorted(strangers)[0]}"}],
            )  # fmt: skip
        lists = await self._device_lists(members, token)
        return [
            e.inbox_id(member, d)
            for member, devices in zip(members, lists, strict=True)
            for d in sorted(devices)
            if (member, d) != (user_id, device)
        ]

    async def members(self, room_id: str, token: str, private: bool = False) -> tuple[str, ...]:
        """The members of an open room the token's user is a member of now (the room
        is read on every call: one primary-key read at the rooms service), refused
        as :meth:`targets` says; ``private``: a private room only (``forbidden``)."""
        room = await self._get(f"/rooms/v1/rooms/{room_id}", token)
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

    async def _members(self, room_id: str, version: int, count: int, token: str) -> tuple[str, ...]:
        hit = self._rosters.get(room_id, version, count)
        if hit is not None:
            return hit
        members = await member_ids(
            lambda path: self._get(path, token), f"/rooms/v1/rooms/{room_id}/members"
        )
        return self._rosters.put(room_id, version, count, members)

    async def _device_lists(self, members: tuple[str, ...], token: str) -> list[frozenset[int]]:
        """Each member's devices: from the cache without a task per member when it has
        them (the common case), else looked up, ``DEVICE_LOOKUPS`` at a time."""
        lists = [self.devices.peek(m) for m in members]
        missing = [i for i, devices in enumerate(lists) if devices is None]
        if missing:
            gate = asyncio.Semaphore(DEVICE_LOOKUPS)

            async def one(user: str) -> frozenset[int]:
                async with gate:
                    return await self.devices.get(user, token)

            found = await asyncio.gather(*(one(members[i]) for i in missing))
            for i, devices in zip(missing, found, strict=True):
                lists[i] = devices
        return [devices or frozenset() for devices in lists]

    async def _get(self, path: str, token: str) -> dict[str, Any]:
        return await rooms_get(self.session, self.base + path, token)
