"""Where a removed message's tombstones go: every current device of the conversation's
parties (docs/delivery.md, "Reports and tombstones").

Delivery keeps no per-message record of who got a copy: a conversation names its
parties (``dm:<a>:<b>``: the two users; ``room:<id>``: the room's members, read from
the rooms service), and the key directory lists their devices now. Read with the
caller's token, fresh (a removal is rare; a device added a minute ago must not be
missed).

An admin's removal reads the room (its kind) and its members from the rooms service's
database, read only (:class:`RoomRecords`, as the notifier reads its messages), not
through the rooms service's admin routes: those audit every read, and delivery's
look-ups for one removal wrote a ``room.view`` and a ``room.members`` entry per page in
the admin's name, a refused removal included (docs/moderation.md, "Once per action").
"""

from __future__ import annotations

import re
from typing import Any

import aiohttp
from parley_contract import envelopes as e
from pymongo.asynchronous.database import AsyncDatabase

from services.common.clients import in_id_order
from services.common.config import Settings
from services.common.devices import DeviceLists, call_as, member_ids, rooms_get
from services.common.errors import ApiError, ErrorCode

ROOM_ID = re.compile("[0-9a-f]{24}")  # services/rooms/models.py
USER_ID = re.compile("[A-Za-z0-9_-]{1,64}")  # parley_contract.frames.UserId


def parties_of(conversation: str) -> tuple[list[str], str | None]:
    """A conversation's users (``dm:<a>:<b>``, both user ids, sorted) or its room
    (``room:<id>``); ``validation_failed`` for anything else. Only the order was
    checked: ``dm:<me>:~not.a/user?id`` was taken, and recorded as the removal's
    conversation, which later removals of that message reuse."""
    kind, _, rest = conversation.partition(":")
    if kind == "dm":
        users = rest.split(":")
        if (
            len(users) == 2
            and all(USER_ID.fullmatch(u) for u in users)
            and e.conversation_id(*users) == conversation
        ):
            return users, None
    elif kind == "room" and ROOM_ID.fullmatch(rest):
        return [], rest
    raise ApiError(
        ErrorCode.VALIDATION_FAILED, "Not a conversation.",
        details=[{"field": "conversation", "problem": "dm:<a>:<b> or room:<id> expected"}],
    )  # fmt: skip


class RoomRecords:
    """The rooms service's ``rooms`` and ``members`` (``<db_prefix>rooms``), read only,
    for an admin's removal: what the admins' routes would answer (deleted rooms too),
    without an audit entry for each read. The documents are the rooms service's
    (services/rooms/store.py): a room by its id, a membership ``"<room>|<user>"``, the
    commit point of a join (a join under way has none; a leave deletes it)."""

    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        self.rooms = db["rooms"]
        self.members = db["members"]

    async def kind(self, room_id: str) -> str:
        """The room's kind; ``room_not_found`` for a room that never was."""
        room = await self.rooms.find_one({"_id": room_id}, {"kind": 1})
        if room is None:
            raise ApiError(ErrorCode.ROOM_NOT_FOUND, "No such room.")
        return str(room.get("kind"))

    async def member_ids(self, room_id: str) -> list[str]:
        """Every member of the room: one ``_id`` range (an aggregation, answered from the
        index by the embedded server too: ``in_id_order``)."""
        query = {"_id": {"$gt": f"{room_id}|", "$lt": f"{room_id}}}"}}
        docs = await in_id_order(self.members, query, None)
        return list(dict.fromkeys(str(d["user"]) for d in docs))


class Parties:
    """Made with the app, its HTTP session opened on first use (inside the loop);
    ``records``: the rooms service's records, for admins' look-ups."""

    def __init__(self, settings: Settings, records: RoomRecords) -> None:
        self.settings = settings
        self.rooms = settings.rooms_url.rstrip("/")
        self.records = records
        self._http: tuple[aiohttp.ClientSession, DeviceLists] | None = None

    def _client(self) -> tuple[aiohttp.ClientSession, DeviceLists]:
        if self._http is None:
            session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
            self._http = (session, DeviceLists(self.settings, session))
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http[0].close()
            self._http = None

    async def users(self, conversation: str, token: str, *, admin: bool) -> list[str]:
        """The users of a conversation: a room's members as the caller may read them
        (for an admin, every member: :class:`RoomRecords`); ``room_not_found``
        otherwise."""
        users, room = parties_of(conversation)
        if room is None:
            return users
        if admin:
            return await self.records.member_ids(room)
        path = f"/rooms/v1/rooms/{room}/members"
        session, _ = self._client()
        return await member_ids(lambda p: rooms_get(session, self.rooms + p, token), path)

    async def room_kind(self, room_id: str, token: str, *, admin: bool) -> str:
        """A room's kind (``private`` or ``public``) as the caller may read it (for an
        admin, any room's, deleted ones too: :class:`RoomRecords`): ``room_not_found``
        otherwise."""
        if admin:
            return await self.records.kind(room_id)
        return str((await self._room(room_id, token)).get("kind"))

    async def _room(self, room_id: str, token: str) -> dict[str, Any]:
        """The room as the caller may read it, read fresh from the rooms service:
        ``room_not_found`` otherwise."""
        session, _ = self._client()
        return await rooms_get(session, f"{self.rooms}/rooms/v1/rooms/{room_id}", token)

    async def joined_at(self, room_id: str, token: str) -> int:
        """When the caller joined ``room_id``, a private room (Unix ms): ``room_not_found``
        (no such room, or a private one the caller may not see), ``not_a_member``
        (invited, or a member no more), ``forbidden`` for a public room."""
        room = await self._room(room_id, token)
        if room.get("kind") != "private":
            raise ApiError(
                ErrorCode.FORBIDDEN,
                "A public room's history is its timeline: GET /rooms/v1/rooms/{room_id}/messages.",
            )
        joined = _joined(room)
        if joined is None:
            raise ApiError(ErrorCode.NOT_A_MEMBER, "Only the room's members read its log.")
        return joined

    async def member_since(self, room_id: str, token: str) -> int | None:
        """When the caller joined ``room_id`` (Unix ms), whatever the room's kind; None
        when they are not a member now (no such room, one they may not see, invited only,
        left or removed: the rooms service keeps no record of past memberships).
        ``unavailable`` when it cannot be asked."""
        try:
            return _joined(await self._room(room_id, token))
        except ApiError as exc:
            if exc.code == ErrorCode.ROOM_NOT_FOUND:
                return None
            raise

    async def joined_private(self, room_ids: list[str], token: str) -> dict[str, int]:
        """Of ``room_ids``, the private rooms the caller is a member of, and when they
        joined each (Unix ms): one call to the rooms service (``POST /rooms/v1/lookup``,
        two reads by id there), whatever their number."""
        session, _ = self._client()
        status, body = await call_as(
            session, f"{self.rooms}/rooms/v1/lookup", token, "Cannot read the rooms now.",
            json={"rooms": room_ids},
        )  # fmt: skip
        if status != 200 or not isinstance(body, dict):
            raise ApiError(ErrorCode.UNAVAILABLE, "Cannot read the rooms now.")
        return {
            str(r["room_id"]): int(r["joined_at"])
            for r in body.get("rooms", [])
            if r.get("kind") == "private" and isinstance(r.get("joined_at"), int)
        }

    async def inboxes(self, users: list[str], token: str) -> list[str]:
        """Every current device inbox of these users, in order."""
        _, devices = self._client()
        lists = await devices.get_many(users, token, fresh=True)
        return [e.inbox_id(u, d) for u, ds in zip(users, lists, strict=True) for d in sorted(ds)]


def _joined(room: dict[str, Any]) -> int | None:
    """A room view's ``joined_at`` when the caller is a member (it has a role)."""
    joined = room.get("joined_at")
    return joined if room.get("role") is not None and isinstance(joined, int) else None
