"""Rooms in the client: membership over the rooms API, and private rooms' end-to-end
encryption with sender keys (docs/client.md "Rooms", docs/crypto.md "Sender keys in
rooms").

Public rooms are server-readable: their messages are posted to, and read from,
the rooms service's timeline; new posts and mention notifications may also
arrive live (``room_post``, ``notification`` frames).

Private rooms: every device keeps one :class:`~parley.crypto.GroupSession` per
room (group id = the room id), holding its own sender chain and the chains of
the other member devices (keyed ``"<user id>:<device id>"``, the sender of the
pairwise session that carried them). Before a ``room_send``:

1. the room (its ``version``) and its members are read;
2. if a member that was there at this device's last send is gone (left or was
   removed), or a device that had our sender key is gone, the chain is
   **rotated** and nobody has the new one yet;
3. every member device that lacks the current chain gets its distribution
   message in an ordinary pairwise ``send`` whose plaintext is a control payload
   (:func:`parley.messenger.encode_control`, ``{"t": "skd", "room", "d"}``); those
   sends are ``accepted`` before the room message goes out, so in every inbox
   the key comes before the message (same inbox partition, earlier offset);
4. the text is encrypted once with the chain and sent as ``room_send``, with
   the user ids of the members it @mentions.

A room message whose sender key has not arrived is kept (sealed in the store)
and decrypted when the key comes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgspec
from parley_contract import frames as f
from parley_contract.envelopes import room_server_id

from parley.account import Account, StoreRef
from parley.api import Api
from parley.crypto import (
    CryptoError,
    GroupSession,
    ReplayedMessage,
    RetiredSenderKey,
    UnknownSenderKey,
    commitment_from_message,
)
from parley.crypto.encoding import b64decode, b64encode
from parley.crypto.wire import SKDM_FIXED_LEN, SenderKeyDistribution
from parley.errors import ApiError, MessageTooLarge, NotSent, ParleyError
from parley.events import (
    DecryptFailed,
    Event,
    EventBus,
    RoomChanged,
    RoomMessage,
    RoomMessageChanged,
    RoomNotification,
    Typing,
)
from parley.messenger import Messenger, NotQueued, RoomFrame, encode_control, for_now
from parley.moderation import alias_key, report_fields
from parley.store import Transaction

log = logging.getLogger(__name__)

__all__ = ["DEVICE_RECHECK_S", "RoomNotFound", "Rooms", "member_key", "room_conversation"]

ROOM_ID = re.compile(r"[0-9a-f]{24}")
DEVICE_RECHECK_S = 30.0
"""Members' device lists are read again before a send when the room's version changed,
or when they were last read longer ago than this (a member linked a device: the gateway
refuses a message its key has not reached, ``devices_changed``, see REDO_MAX)."""
REDO_MAX = 3
"""Times one room message is encrypted again after ``devices_changed`` before it fails."""
DISTRIBUTE_AT_ONCE = 64
"""Pairwise sender-key sends in flight at once (each waits for its ``accepted``; the
gateway allows 256 a socket): enough to hide the round trips in a room of 1,000."""
MAX_PENDING = 1000
"""Room messages kept per room while their sender key has not arrived. Past it a
message is not kept but not lost either: the room remembers the lowest number not kept
(``room_unkept``), and when a sender key for the room arrives the cursor goes back
before it and the room's log brings it (and those after it) again (``Rooms.on_control``)."""
HELD_KEYS_KEPT = 256
"""Sender keys for rooms this device does not know, held (sealed, in one row) until
the rooms service says this account is in the room: at most this many, the oldest
dropped first (each is checked as soon as it comes, so only an unreachable rooms
service or a flood keeps more than a few). Only a distribution message for the room
named is held (:func:`held_key_max` characters), so the row stays under ~70 KB."""
GROUP_INDEX_BUCKETS = 32
"""Rows the names of a room's members with sender-key rows are listed in (by a keyed
hash of the name): a member new to the room rewrites one of them, ~1/32 of the list
(~1.3 KB in a room of 1,000 member devices), not all of it. Only a whole state
(:meth:`Rooms.group`) reads them all."""
MAX_MENTIONS = 20
LOG_PAGE = 200
"""Messages per page when a room's log is read."""
LOGS_AT_ONCE = 100
"""Rooms whose logs one ``POST /delivery/v1/rooms/logs`` reads (the server's most)."""
_ROOM_ID = re.compile(r"[0-9a-f]{24}")
POSTED_KEPT = 1000
POST_RETRY = (0.25, 4.0)
"""First and longest wait before a public post is asked again with the same id (Rooms._post)."""
"""Public posts made here whose live copy is known as this client's (``RoomMessage.here``)."""
TIMELINE_WAIT = (0.25, 2.0, 15.0)
"""A public room's page asked ``before`` a number that is taken but not written yet (a
post in flight; a dead writer's, until a reader marks it a hole: about two graces,
~10 s) ends before that number, and may come back empty with ``next_before == before``
(docs/rooms.md "Numbers in flight"): "not yet", never the timeline's end.
:meth:`Rooms.history` asks again after the first wait (s), doubling up to the second,
and gives up once the third have been waited."""
TIMELINE_EMPTY_READS = 50
"""Empty pages that do go further back (numbers that were holes) read on at most, one
after the other, for one :meth:`Rooms.history` page."""
_MENTION = re.compile(r"(?<![\w@./])@([A-Za-z0-9._-]{1,64})")


class RoomNotFound(ApiError):
    """No such room among yours (or the server does not show it to you)."""

    def __init__(self, message: str) -> None:
        super().__init__("room_not_found", message, 404)


def room_conversation(room_id: str) -> str:
    """The local history's conversation of a room (as the server names it)."""
    return f"room:{room_id}"


def member_key(user_id: str, device_id: int) -> str:
    """The name of a member device in a :class:`GroupSession`."""
    return f"{user_id}:{device_id}"


@dataclass
class _RoomState:
    """What a device remembers of a private room between sends."""

    members_seen: list[str]
    version_seen: int
    has_key: list[str]  # member devices that got the current chain
    chain_id: int | None
    devices_read_at: float

    @classmethod
    def from_json(cls, obj: Any) -> _RoomState:
        obj = obj or {}
        return cls(
            members_seen=list(obj.get("members_seen") or []),
            version_seen=int(obj.get("version_seen", -1)),
            has_key=list(obj.get("has_key") or []),
            chain_id=obj.get("chain_id"),
            devices_read_at=float(obj.get("devices_read_at") or 0.0),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "members_seen": self.members_seen,
            "version_seen": self.version_seen,
            "has_key": self.has_key,
            "chain_id": self.chain_id,
            "devices_read_at": self.devices_read_at,
        }


def _unkept_map(value: Any) -> dict[str, int]:
    """A room's ``room_unkept`` row: the lowest number not kept per member device
    (``member_key``). A plain number (written before it was kept per device) applies to
    every device: ``"*"``, taken by the next key of any."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return {str(k): int(v) for k, v in value.items()}
    return {"*": int(value)}


def held_key_max(room_id: str) -> int:
    """The longest ``d`` of a sender key for ``room_id``: its distribution message
    (``SKDM_FIXED_LEN`` bytes and the group id, :class:`SenderKeyDistribution`) in
    unpadded base64url, 134 characters for a room id of 24."""
    size = SKDM_FIXED_LEN + len(room_id.encode("utf-8"))
    return (4 * size + 2) // 3


def _may_hold(room_id: str, d: Any) -> bool:
    """Whether a sender key for a room not known yet may be held (``room_keys_held``):
    a distribution message for that very room. Anything else could never be taken
    (``_take_key`` refuses it), and an unchecked ``d`` made the held row, rewritten
    whole for every key, as large as the sender cared to make 256 of them."""
    if not isinstance(d, str) or len(d) > held_key_max(room_id):
        return False
    try:
        return SenderKeyDistribution.decode(b64decode(d)).group_id == room_id
    except (CryptoError, ValueError):
        return False


class Rooms:
    """Rooms for one account on one device (``Client.rooms``)."""

    def __init__(
        self, api: Api, store: StoreRef, account: Account, messenger: Messenger, events: EventBus
    ) -> None:
        self.api = api
        self._store = store
        self.account = account
        self.messenger = messenger
        self.events = events
        self._locks: dict[str, asyncio.Lock] = {}
        self.rotations = 0  # sender keys rotated by this process (tests and metrics)
        self.distributions = 0  # pairwise sends of sender keys by this process
        # Each room's log read under way, and the rooms whose read must go again when
        # it ends (a gap seen meanwhile).
        self._reading: dict[str, asyncio.Task[int]] = {}
        self._again: set[str] = set()
        # Client ids of the public posts made here, the latest POSTED_KEPT: their live
        # copy is this client's own (``RoomMessage.here``), another device's is news.
        self._posted: dict[str, None] = {}
        self._checking: asyncio.Task[int] | None = None  # the held keys' check
        messenger.room_hook = self

    # -- store keys (opaque: the file does not show room ids) -----------------------------
    def _key(self, kind: str, room_id: str) -> str:
        return f"{kind}:{self._store().ref(kind, room_id)}"

    # A room's sender keys are rows (docs/client.md "Sender keys in the store"): ``group``
    # holds this device's own chain, ``group_member`` one member device's chains and
    # retired ids, ``group_index`` (GROUP_INDEX_BUCKETS rows) the names of the members
    # with a row. A message reads and writes its sender's row only; a key, its member's.
    def _member_row_key(self, room_id: str, member: str) -> str:
        return self._key("group_member", f"{room_id}\x00{member}")

    def _index_key(self, room_id: str, bucket: int) -> str:
        return self._key("group_index", f"{room_id}\x00{bucket}")

    def _bucket(self, room_id: str, member: str) -> int:
        return int(self._store().ref("group_bucket", f"{room_id}\x00{member}")[:8], 16) % (
            GROUP_INDEX_BUCKETS
        )

    def group(self, tx: Transaction, room_id: str) -> GroupSession:
        """This device's whole sender-key state for a room (made on first use): every
        member's row is read. Sending and receiving read only the rows they need."""
        return self._group(tx, room_id, None)

    def _group(self, tx: Transaction, room_id: str, members: Iterable[str] | None) -> GroupSession:
        """The room's sender-key state with ``members``' rows loaded (None: all of them;
        only those can be used). A state stored whole (one ``group`` row, before
        2026-12-08) is split into rows first, in ``tx``."""
        raw = tx.get_bytes(self._key("group", room_id))
        if raw is None:
            return GroupSession.create(room_id)  # written by _put_group (own_changed)
        if GroupSession.is_whole(raw):
            whole = GroupSession.from_bytes(raw)
            self._split_group(tx, whole)
            if members is None:
                return whole
            raw = whole.own_row()
        every = members is None
        if members is None:
            members = [
                str(m)
                for bucket in range(GROUP_INDEX_BUCKETS)
                for m in tx.get(self._index_key(room_id, bucket)) or ()
            ]
        rows = {m: tx.get_bytes(self._member_row_key(room_id, m)) for m in members}
        return GroupSession.from_rows(raw, rows, every=every)

    def _split_group(self, tx: Transaction, whole: GroupSession) -> None:
        """Write a whole state as rows (the ``group`` row becomes the own row)."""
        room_id = whole.group_id
        buckets: dict[int, list[str]] = {}
        for member in whole.row_members():
            row = whole.member_row(member)
            if row is not None:
                tx.put_bytes(self._member_row_key(room_id, member), row)
                buckets.setdefault(self._bucket(room_id, member), []).append(member)
        for bucket, names in buckets.items():
            tx.put(self._index_key(room_id, bucket), names)
        tx.put_bytes(self._key("group", room_id), whole.own_row())
        whole.mark_saved()
        log.info("moved a room's sender keys (%d member rows) into rows", len(whole.row_members()))

    def _put_group(self, tx: Transaction, session: GroupSession) -> None:
        """Write what changed in ``session``: its own row, its changed members' rows, and
        the index rows of members new to it (or without a row now)."""
        room_id = session.group_id
        if session.own_changed:
            tx.put_bytes(self._key("group", room_id), session.own_row())
        added: dict[int, set[str]] = {}
        gone: dict[int, set[str]] = {}
        for member in session.changed_members():
            row, had = session.member_row(member), session.had_row(member)
            if row is None:
                tx.delete(self._member_row_key(room_id, member))
                if had:
                    gone.setdefault(self._bucket(room_id, member), set()).add(member)
                continue
            tx.put_bytes(self._member_row_key(room_id, member), row)
            if not had:
                added.setdefault(self._bucket(room_id, member), set()).add(member)
        for bucket in {*added, *gone}:
            key = self._index_key(room_id, bucket)
            names = [str(m) for m in tx.get(key) or ()]
            names = [m for m in names if m not in gone.get(bucket, ())]
            names += sorted(added.get(bucket, set()) - set(names))
            tx.put(key, names)
        session.mark_saved()

    def _state(self, tx: Transaction, room_id: str) -> _RoomState:
        return _RoomState.from_json(tx.get(self._key("room", room_id)))

    def _put_state(self, tx: Transaction, room_id: str, state: _RoomState) -> None:
        tx.put(self._key("room", room_id), state.to_json())

    # -- the rooms API --------------------------------------------------------------------
    async def _token(self) -> None:
        await self.account.access_token()

    async def create(
        self, name: str, *, public: bool = False, topic: str | None = None
    ) -> dict[str, Any]:
        """Create a room (private unless ``public``); you are its owner."""
        await self._token()
        return await self.api.create_room(name, "public" if public else "private", topic)

    async def mine(self) -> list[dict[str, Any]]:
        """Your rooms, the most recently joined first."""
        await self._token()
        out: list[dict[str, Any]] = []
        before: Any = None
        while True:
            page = await self.api.rooms(before)
            out.extend(page.get("rooms", []))
            before = page.get("next_before")
            if before is None:
                return out

    async def directory(self, query: str = "", limit: int = 50) -> list[dict[str, Any]]:
        """Public rooms whose name contains ``query``, in name order."""
        await self._token()
        page = await self.api.directory(query, limit=limit)
        rooms: list[dict[str, Any]] = page.get("rooms", [])
        return rooms

    async def invitations(self) -> list[dict[str, Any]]:
        """Rooms you are invited to (each room with ``invited_by``)."""
        await self._token()
        answer = await self.api.invitations()
        by_room = {i["room_id"]: i for i in answer.get("invitations", [])}
        return [
            {**r, "invited_by": by_room.get(r["room_id"], {}).get("invited_by")}
            for r in answer.get("rooms", [])
        ]

    async def resolve(
        self, ref: str, *, invited: bool = False, directory: bool = False
    ) -> dict[str, Any]:
        """A room by id or by name (``#name`` or ``name``, any case) among your rooms;
        with ``invited`` also among your invitations, with ``directory`` among public
        rooms.  Raises :class:`RoomNotFound`, or :class:`ParleyError` if several of
        your rooms have that name (give the id)."""
        key = ref.strip().removeprefix("#").strip()
        if not key:
            raise ParleyError("Give a room's name (#name) or id.")
        await self._token()
        if ROOM_ID.fullmatch(key):
            try:
                return await self.api.room(key)
            except ApiError as exc:
                if exc.code == "room_not_found":
                    raise RoomNotFound(
                        f"No room {key} (or it is private and you are not in it)."
                    ) from None
                raise
        folded = key.casefold()
        found = [r for r in await self.mine() if str(r.get("name", "")).casefold() == folded]
        if not found and invited:
            found = [r for r in await self.invitations() if str(r.get("name")).casefold() == folded]
        if not found and directory:
            found = [
                r for r in await self.directory(key, 200)
                if str(r.get("name")).casefold() == folded
            ]  # fmt: skip
        if len(found) > 1:
            ids = ", ".join(str(r["room_id"]) for r in found)
            raise ParleyError(f"Several rooms are called #{key}: give the id of one ({ids}).")
        if not found:
            where = "your rooms" + (" or invitations" if invited else "")
            raise RoomNotFound(f"No room #{key} among {where}.")
        room = found[0]
        if "kind" not in room or "version" not in room:
            room = await self.api.room(str(room["room_id"]))
        return room

    async def update(
        self,
        ref: str,
        *,
        name: str | None = None,
        topic: str | None = None,
        state: str | None = None,
    ) -> dict[str, Any]:
        """Rename the room, change its topic, or close it (``state="closed"``: no new
        messages or members, history readable) or open it again: the owner and
        moderators. Returns the room as it is now."""
        fields = {k: v for k, v in (("name", name), ("topic", topic), ("state", state))
                  if v is not None}  # fmt: skip
        if not fields:
            raise ParleyError("Nothing to change: give a name, a topic or a state.")
        room = await self.resolve(ref)
        return await self.api.update_room(str(room["room_id"]), fields)

    async def invite(self, ref: str, user: str) -> dict[str, Any]:
        room = await self.resolve(ref)
        return await self.api.invite(room["room_id"], user.strip().removeprefix("@"))

    async def accept(self, ref: str) -> dict[str, Any]:
        room = await self.resolve(ref, invited=True)
        return await self.api.accept_invitation(room["room_id"])

    async def decline(self, ref: str) -> None:
        room = await self.resolve(ref, invited=True)
        await self.api.decline_invitation(room["room_id"])

    async def join(self, ref: str) -> dict[str, Any]:
        """Join a public room (a private one: accept its invitation)."""
        room = await self.resolve(ref, invited=True, directory=True)
        return await self.api.join_room(room["room_id"])

    async def leave(self, ref: str) -> dict[str, Any]:
        room = await self.resolve(ref)
        await self.api.leave_room(room["room_id"])
        return room

    async def remove(self, ref: str, user: str) -> None:
        room, user_id = await self._room_and_user(ref, user)
        await self.api.remove_member(room["room_id"], user_id)

    async def ban(self, ref: str, user: str, ban: bool = True) -> dict[str, Any]:
        """Ban a user from the room (removed if a member; joining, accepting and
        invitations refused until the ban is lifted), or (``ban=False``) lift the ban
        (the owner and moderators); returns the room."""
        room, user_id = await self._room_and_user(ref, user)
        await self.api.ban(room["room_id"], user_id, ban)
        return room

    async def bans(self, ref: str) -> list[dict[str, Any]]:
        """The room's bans (the owner and moderators), each with the banned user's and
        the banner's ``username``."""
        room = await self.resolve(ref)
        found: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            page = await self.api.bans(room["room_id"], after)
            found += page["bans"]
            after = page.get("next_after")
            if not after:
                break
        for ban in found:
            ban["username"] = await self.messenger.name_of(ban["user_id"])
            ban["banned_by_username"] = await self.messenger.name_of(ban["banned_by"])
        return found

    async def set_moderator(self, ref: str, user: str, moderator: bool = True) -> dict[str, Any]:
        """Make a member a moderator, or (``moderator=False``) a plain member again (the
        owner only); returns the room."""
        room, user_id = await self._room_and_user(ref, user)
        await self.api.set_moderator(room["room_id"], user_id, moderator)
        return room

    async def hand_over(self, ref: str, user: str) -> dict[str, Any]:
        """Make a member the owner (the owner only; the owner becomes a moderator)."""
        room, user_id = await self._room_and_user(ref, user)
        return await self.api.hand_over(room["room_id"], user_id)

    async def _room_and_user(self, ref: str, user: str) -> tuple[dict[str, Any], str]:
        room = await self.resolve(ref)
        user_id, _ = await self.messenger.resolve(user.strip().removeprefix("@"))
        return room, user_id

    async def member_ids(self, room_id: str) -> list[str]:
        """The members' user ids (their usernames remembered for the messenger)."""
        out: list[str] = []
        after: Any = None
        while True:
            page = await self.api.room_members(room_id, after)
            members = page.get("members", [])
            out.extend(str(m["user_id"]) for m in members)
            self.messenger.remember_names(
                {str(m["user_id"]): str(m["username"]) for m in members if m.get("username")}
            )
            after = page.get("next_after")
            if after is None:
                return list(dict.fromkeys(out))

    async def members(self, ref: str) -> list[dict[str, Any]]:
        """The members (``user_id``, ``username``, ``role``, ``joined_at``, ``online``: a
        device of theirs is connected and they show it), in join order."""
        room = await self.resolve(ref)
        out: list[dict[str, Any]] = []
        after: Any = None
        while True:
            page = await self.api.room_members(room["room_id"], after)
            out.extend(page.get("members", []))
            after = page.get("next_after")
            if after is None:
                break
        for m in out:  # the server names them (a gone account: asked, as a sender is)
            m["username"] = m.get("username") or await self.messenger.name_of(str(m["user_id"]))
        return out

    # -- notifications ----------------------------------------------------------------------
    async def notifications(self, before: int | None = None, limit: int = 50) -> dict[str, Any]:
        """``{"notifications": [...] newest first, "unread", "next_before"}``."""
        await self._token()
        return await self.api.notifications(before, limit)

    async def mark_notifications_read(self, up_to: int | None = None) -> int:
        """Mark notifications read up to ``up_to`` (default: all); returns the unread count."""
        await self._token()
        if up_to is None:
            page = await self.api.notifications(None, 1)
            items = page.get("notifications", [])
            if not items:
                return int(page.get("unread", 0))
            up_to = int(items[0]["seq"])
        answer = await self.api.read_notifications(up_to)
        return int(answer.get("unread", 0))

    # -- history ----------------------------------------------------------------------------
    async def history(
        self, ref: str, *, limit: int = 50, before: int | None = None
    ) -> dict[str, Any]:
        """``{"room", "messages" (oldest first), "next_before"}``.  A private room's
        messages come from the local store (what this device decrypted); a public
        room's from its timeline, a page of ``limit`` before ``before`` (a ``seq``);
        pass ``next_before`` back for the page before (``None``: the first message). A
        page held back by a message still being sent (a number in flight) is asked
        again for up to about 15 s (:data:`TIMELINE_WAIT`); if it is still held back
        then, it comes empty with ``next_before == before``: ask again later."""
        try:
            room = await self.resolve(ref, directory=True)
        except RoomNotFound:
            # A private room left (or that removed us): what this device stored stays.
            key = ref.strip().removeprefix("#")
            kept = self._store().read().history(room_conversation(key), limit)
            if not ROOM_ID.fullmatch(key) or not kept:
                raise
            room = {"room_id": key, "name": key, "kind": "private", "role": None}
        room_id = str(room["room_id"])
        if room.get("kind") == "private":
            entries = self._store().read().history(room_conversation(room_id), limit)
            return {"room": room, "messages": entries, "next_before": None}
        page = await self._timeline_page(room_id, before, limit)
        me = self.account.user_id
        messages = []
        for m in reversed(page.get("messages", [])):
            messages.append(
                {
                    "dir": "out" if m["sender"] == me else "in",
                    "kind": "message",
                    "sender": m["sender"],
                    "username": await self.messenger.name_of(str(m["sender"])),
                    "text": m["text"],
                    "at": m["sent_at"],
                    "seq": m["seq"],
                    "mentions": m.get("mentions") or [],
                    "marker": m.get("marker"),
                }
            )
        return {"room": room, "messages": messages, "next_before": page.get("next_before")}

    async def _timeline_page(self, room_id: str, before: int | None, limit: int) -> dict[str, Any]:
        """The page of a public room's timeline ``before``: asked again while it does not
        go further back (a number in flight: :data:`TIMELINE_WAIT`), read on from its
        ``next_before`` while it is empty but does; as it last came when given up on
        (empty, ``next_before == before``: the caller may ask again)."""
        first, most, give_up = TIMELINE_WAIT
        wait, waited, empty_reads = first, 0.0, 0
        while True:
            page = await self.api.room_messages(room_id, before, limit)
            after = page.get("next_before")
            if after is None:
                return page  # the start
            if before is not None and int(after) >= before:
                if waited >= give_up:
                    log.info("a timeline page still held back by a number in flight")
                    return page
                await asyncio.sleep(wait)
                waited += wait
                wait = min(2 * wait, most)
                continue
            if page.get("messages") or empty_reads >= TIMELINE_EMPTY_READS:
                return page
            empty_reads += 1  # holes only: the page before it
            before = int(after)

    # -- changing a public room's message -------------------------------------------------
    async def edit(self, ref: str, seq: int, text: str) -> dict[str, Any]:
        """Edit a public room's message (``seq``): your own (marked ``edited``), or, as
        the room's owner or a moderator, a member's. Every version is kept."""
        self.messenger.check_text(text)
        room_id = await self._public_id(ref)
        result: dict[str, Any] = await self.api.request(
            "PATCH", f"/rooms/v1/rooms/{room_id}/messages/{int(seq)}", json={"text": text}
        )
        return result

    async def delete(self, ref: str, seq: int) -> dict[str, Any]:
        """Delete your own public-room message (``deleted_by_author``), or, as the room's
        owner or a moderator, remove a member's; the original is kept for admins."""
        room_id = await self._public_id(ref)
        result: dict[str, Any] = await self.api.request(
            "DELETE", f"/rooms/v1/rooms/{room_id}/messages/{int(seq)}"
        )
        return result

    async def restore(self, ref: str, seq: int) -> dict[str, Any]:
        """As the room's owner or a moderator, undo the removal of a member's public-room
        message (``removed_by_moderator``): it is as it was before, and the removal stays
        in its history. An author's own deletion is final (``conflict``)."""
        room_id = await self._public_id(ref)
        result: dict[str, Any] = await self.api.request(
            "POST", f"/rooms/v1/rooms/{room_id}/messages/{int(seq)}/restore"
        )
        return result

    async def _public_id(self, ref: str) -> str:
        room = await self.resolve(ref)
        if room.get("kind") == "private":
            raise ParleyError(
                "A private room's messages are end-to-end encrypted: the server cannot "
                "change them; remove one of yours with unsend."
            )
        return str(room["room_id"])

    # -- sending ----------------------------------------------------------------------------
    async def send(
        self, ref: str, text: str, *, wait: str | None = "accepted", timeout: float = 30,
        accept_new_identity: bool = False,
    ) -> str:  # fmt: skip
        """Send ``text`` to a room; returns the client id.  A public room's message is
        posted to its timeline; a private room's is encrypted with this device's sender
        key (distributed or rotated first as needed) and sent as ``room_send``.
        ``accept_new_identity``: a member whose safety number changed (unverified) is
        given the key all the same, as :meth:`Client.send` does for a contact (else
        :class:`SafetyNumberChanged`, nothing sent)."""
        self.messenger.check_text(text)
        room = await self.resolve(ref)
        room_id = str(room["room_id"])
        if room.get("role") is None:
            raise ApiError("not_a_member", f"You are not a member of #{room.get('name')}.", 403)
        if room.get("kind") != "private":
            client_id = uuid.uuid4().hex
            self._posted[client_id] = None  # before: its push may come before the answer
            while len(self._posted) > POSTED_KEPT:
                del self._posted[next(iter(self._posted))]
            await self._post(room_id, client_id, text, timeout)
            return client_id
        if not self.messenger.connected:
            raise ParleyError("Connect first: a private room's message needs the socket.")
        lock = self._locks.setdefault(room_id, asyncio.Lock())
        async with lock:
            version = int(room.get("version", 0))
            seen = self._state(self._store().read(), room_id)
            # Every membership change raises the version: an unchanged one means the
            # members we saw at our last send are still the members.
            if seen.version_seen == version and seen.members_seen:
                members = seen.members_seen
            else:
                members = await self.member_ids(room_id)
            try:
                keyed = await self._distribute(room_id, version, members, accept_new_identity)
            except TimeoutError:
                # Before the message was queued: it exists nowhere, the caller must
                # not be told it will be resent.
                raise NotSent(
                    "The room's keys could not be handed out to every member in time "
                    "(the server did not accept them): nothing was sent; send it again."
                ) from None
            mentions = await self._mentions(room_id, text, members)
            frame = await self._encrypt(room_id, text, mentions, keyed)
        return await self.messenger.submit(
            frame, room_conversation(room_id), wait=wait, timeout=timeout
        )

    async def _post(self, room_id: str, client_id: str, text: str, timeout: float) -> None:
        """Post to a public room's timeline; an answer lost or refused for now (no answer,
        429, 5xx) is asked again with the same ``client_id``, which the rooms service
        takes once (a post stored whose answer was lost was posted twice by the caller's
        own retry, with a new id)."""
        loop = asyncio.get_running_loop()
        deadline, wait = loop.time() + timeout, POST_RETRY[0]
        while True:
            try:
                await self.api.post_room_message(room_id, client_id, text)
                return
            except (ParleyError, OSError, TimeoutError) as exc:
                if not for_now(exc) or loop.time() + wait > deadline:
                    raise
            await asyncio.sleep(wait)
            wait = min(wait * 2, POST_RETRY[1])

    async def typing(self, ref: str, typing: bool = True) -> None:
        """Tell the room's members this device is typing there (``typing``: call it
        again every ~3 s while the user types, at most every 2 s), or stopped
        (``typing=False``, when the draft is sent or cleared). A hint, not stored; the
        server sees it (docs/crypto.md). The gateway answers a refusal with an error
        event (``not_a_member``, ``room_closed``, ``rate_limited``)."""
        room_id = ref if _ROOM_ID.fullmatch(ref) else str((await self.resolve(ref))["room_id"])
        if self.messenger.conn is None or not self.messenger.connected:
            raise ParleyError("Connect first: typing is said on the socket.")
        await self.messenger.conn.send(f.Typing(room=room_id, typing=typing))

    async def _distribute(
        self, room_id: str, version: int, members: list[str], accept: bool = False
    ) -> set[str]:
        """Rotate if someone left, then give the current sender key to every member
        device that lacks it (pairwise, each send ``accepted`` before we go on).
        Returns the member devices it worked from (``member_key``s: every device of
        every member and of ours but this one), which the ``room_send`` names."""
        me = self.account.user_id
        assert me is not None
        my_device = self.messenger.keys.known_device_id()
        read = self._store().read()
        state = self._state(read, room_id)
        stale = state.version_seen != version or (
            time.time() - state.devices_read_at > DEVICE_RECHECK_S
        )
        refresh = [u for u in members if stale or not self.messenger._peer(read, u).devices]
        if me not in members:
            refresh.append(me)
        await self.messenger.refresh_peers(refresh)  # in bulk: 1,000 lists a request

        def targets(tx: Transaction) -> set[str]:
            return {
                member_key(user, d)
                for user in {*members, me}
                for d in self.messenger._peer(tx, user).devices
                if (user, d) != (me, my_device)
            }

        async with self._store().transaction() as tx:
            state = self._state(tx, room_id)
            session = self._group(tx, room_id, ())  # our chain: no member's row
            now = targets(tx)
            departed = set(state.members_seen) - set(members)
            lost_devices = set(state.has_key) - now
            if state.chain_id != session.chain_id:
                state.has_key = []
            elif departed or lost_devices:
                session.rotate()
                self.rotations += 1
                state.has_key = []
            state.chain_id = session.chain_id
            state.members_seen = list(members)
            state.version_seen = version
            if stale:
                state.devices_read_at = time.time()
            self._put_group(tx, session)
            self._put_state(tx, room_id, state)
            lacking = now - set(state.has_key)
            dist = session.distribution_message()
        if not lacking:
            return now
        # A pairwise send always covers our other devices too; when only they lack
        # the key (we are alone in the room, or just linked one) it is a note to self.
        users = sorted({k.rsplit(":", 1)[0] for k in lacking} - {me}) or [me]
        payload = encode_control({"t": "skd", "room": room_id, "d": b64encode(dist)})
        # New sessions' bundles claimed in bulk (100 users a request), not one by one.
        claims = self.messenger.claim_missing(users)
        gate = asyncio.Semaphore(DISTRIBUTE_AT_ONCE)
        # Who has the key now, recorded as the ``accepted`` come: those that come while
        # a write waits for the store join it (one commit for many, not one per member).
        done: list[set[tuple[str, int]]] = []
        recording: asyncio.Future[None] | None = None

        async def write() -> None:
            nonlocal recording
            async with self._store().transaction() as tx:
                recording = None  # later ones make the next write
                # The devices each accepted key send was encrypted for, not the lists as
                # they are now: a device linked meanwhile (and learned of by another
                # route) was recorded as keyed without the key, and could not read
                # this device's messages until the next rotation.
                copies = set().union(*done)
                done.clear()
                state = self._state(tx, room_id)
                got = {member_key(u, d) for u, d in copies if (u, d) != (me, my_device)}
                state.has_key = sorted(set(state.has_key) | got)
                self._put_state(tx, room_id, state)

        async def give(user: str) -> None:
            nonlocal recording
            await claims.ready(user)  # its request's answer, not all ten
            async with gate:
                got = await self.messenger.send_control(
                    user, payload, bundles=claims.bundles, accept_new_identity=accept
                )
            self.distributions += 1
            done.append(got)
            if recording is None:
                recording = asyncio.ensure_future(write())
            await asyncio.shield(recording)

        results = await asyncio.gather(*(give(u) for u in users), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result  # the others' keys are recorded; the next send retries
        return now

    async def _mentions(self, room_id: str, text: str, members: list[str]) -> list[str]:
        """User ids of the room's members that ``text`` @mentions (not ours), by user id
        or by username, matched here against the members' names: no word of the text
        is asked of a server (looked up, "@home" told the auth service a word of an
        encrypted message). Names not known here come from the member list (the
        rooms service knows who is in the room, not what is written)."""
        me = self.account.user_id
        found: list[str] = []
        names: dict[str, str] | None = None  # lower-case username -> user id
        for raw in dict.fromkeys(m.rstrip("._-") for m in _MENTION.findall(text)):
            if len(found) >= MAX_MENTIONS:
                break
            if not raw:
                continue  # "@..." mentions no one; those after it may
            user_id: str | None = raw.lower() if raw.lower() in members else None
            if user_id is None:
                if names is None:
                    names = await self._member_names(room_id, members)
                user_id = names.get(raw.lower())
            if user_id is not None and user_id != me and user_id not in found:
                found.append(user_id)
        return found

    async def _member_names(self, room_id: str, members: list[str]) -> dict[str, str]:
        known = self.messenger.known_names(members)
        if len(known) < len(members):
            # Some not known here: the member list names them (and is remembered).
            with contextlib.suppress(ParleyError):
                listed = set(await self.member_ids(room_id))
                known = self.messenger.known_names([m for m in members if m in listed])
        return {name.lower(): user_id for user_id, name in known.items()}

    async def redo_room_send(
        self, client_id: str, queued: dict[str, Any], lists: list[f.DeviceList]
    ) -> f.RoomSend:
        """The gateway refused a ``room_send`` with ``devices_changed``: the room's member
        devices are not the ones this device gave its sender key to (a device linked or
        removed, a member joined). The lists that differ from ours are read again from
        the key directory (signed: the error's lists only say which), the key goes to
        the devices that lack it, and the text is encrypted again, a new step of the
        chain (a device given the key now cannot read the old ciphertext), to be sent
        with the same id: nothing was stored. At most ``REDO_MAX`` times for one id."""
        room_id = str(queued["room_send"]["room"])
        redo = int(queued.get("redo", 0)) + 1
        if redo > REDO_MAX:
            raise ParleyError(
                f"The room's devices kept changing ({REDO_MAX} tries): the message was not sent."
            )
        me = self.account.user_id
        assert me is not None
        my_device = self.messenger.keys.known_device_id()
        async with self._locks.setdefault(room_id, asyncio.Lock()):
            room = await self.resolve(room_id)
            if room.get("role") is None:
                raise ParleyError(
                    "You are no longer a member of the room: the message was not sent."
                )
            read = self._store().read()

            def known(user: str) -> set[int]:
                devices = set(self.messenger._peer(read, user).devices)
                return devices - {my_device} if user == me else devices

            behind = [dl.user for dl in lists if set(dl.devices) != known(dl.user)]
            await self.messenger.refresh_peers(behind)
            members = await self.member_ids(room_id)
            keyed = await self._distribute(room_id, int(room.get("version", 0)), members)
            mentions = [m for m in queued.get("mentions") or [] if m in members]
            return await self._encrypt(
                room_id, str(queued.get("text") or ""), mentions, keyed,
                client_id=client_id, redo=redo,
            )  # fmt: skip

    async def _encrypt(
        self, room_id: str, text: str, mentions: list[str], keyed: set[str],
        *, client_id: str | None = None, redo: int = 0,
    ) -> f.RoomSend:  # fmt: skip
        """Encrypt ``text`` with this device's chain and queue the ``room_send`` in the
        outbox (again with ``client_id``: a resend after ``devices_changed``). Its
        ``device_digest`` names ``keyed``, the member devices :meth:`_distribute` has
        just given the chain to (under the room's lock), not the device lists as they
        are now: one read meanwhile (a 1:1 send's refresh) may name a device without
        the key, and then the gateway must refuse the message, not take it
        unreadable."""
        client_id = client_id or uuid.uuid4().hex
        conv = room_conversation(room_id)
        digest = f.device_digest(
            (user, int(device)) for user, _, device in (k.rpartition(":") for k in keyed)
        )
        async with self._store().transaction() as tx:
            if redo and not tx.is_queued(client_id):
                raise NotQueued(client_id)  # dropped or failed while its redo read keys
            session = self._group(tx, room_id, ())
            body = session.encrypt(text.encode())
            frame = f.RoomSend(
                id=client_id, room=room_id, body=b64encode(body),
                commitment=b64encode(commitment_from_message(body)), mentions=mentions,
                device_digest=digest,
            )  # fmt: skip
            size, limit = len(f.encode(frame)), self.messenger.max_frame_bytes
            if size > limit:
                raise MessageTooLarge(size, limit, len(text.encode()) - (size - limit))
            self._put_group(tx, session)
            entry = {
                "dir": "out", "kind": "message", "peer": conv, "room": room_id,
                "sender": self.account.user_id, "text": text, "at": int(time.time() * 1000),
                "client_id": client_id, "status": "queued", "mentions": mentions,
            }  # fmt: skip
            server_id = room_server_id(room_id, str(self.account.user_id), client_id)
            tx.add_message(conv, entry, ref=client_id, ids=(server_id,))
            tx.put(alias_key(server_id), client_id)
            tx.queue(
                client_id,
                {"room_send": msgspec.to_builtins(frame), "peer": conv, "text": text,
                 "mentions": mentions, "redo": redo},
            )  # fmt: skip
        return frame

    # -- receiving --------------------------------------------------------------------------
    async def on_room_message(self, frame: f.RoomMessage) -> None:
        """A private room's pushed message: the next one after this device's cursor is
        decrypted with the sender device's chain (or kept until that chain's key
        arrives) and moves the cursor; one further ahead means some are missing (a
        push lost, a message removed): the log is read from the cursor, which brings
        it too, in the room's order; one at or below the cursor is a repeat."""
        room_id = frame.room
        cursor = self.cursor(room_id)
        if frame.seq > cursor + 1:
            self._read_soon(room_id)
            return
        if frame.seq <= cursor:
            return
        await self._take(room_id, [frame], start=frame.seq - 1, upto=frame.seq)

    async def _take(
        self, room_id: str, frames: list[f.RoomMessage], *, start: int, upto: int
    ) -> None:
        """Keep ``frames``, the room's messages after ``start`` up to ``upto`` (decrypted,
        or sealed until their key comes) and move the room's cursor to ``upto``, in one
        transaction: this device has every message of the room up to it. The cursor
        moves only if it is within ``start`` .. ``upto``: one put back meanwhile (a
        sender key came for messages that were not kept, :meth:`on_control`) stays
        where it was put, for the read that follows."""
        me, device = self.account.user_id, self.messenger.keys.known_device_id()
        names = {
            fr.from_: (self.account.username or "")
            if fr.from_ == me
            else await self.messenger.name_of(fr.from_)
            for fr in frames
        }
        events: list[Event] = []
        async with self._store().transaction() as tx:
            # The room's log (or a push of it) came: we are in it. Keys held for it
            # (their check could not be made: the rooms service away) are taken now,
            # before its messages, which they may open.
            events += self._take_held(tx, room_id, member=True)[0]
            session: GroupSession | None = None
            senders = [
                member_key(fr.from_, fr.from_device)
                for fr in frames
                if (fr.from_, fr.from_device) != (me, device)
            ]
            for frame in frames:
                if (frame.from_, frame.from_device) == (me, device):
                    # This device's own, in the history since it was sent: placed now.
                    own = tx.get(alias_key(frame.server_id))
                    if own is not None:
                        tx.place_message(str(own), frame.seq)
                    continue
                if tx.has_message(frame.server_id):
                    continue  # pushed and read from the log: once
                item = {
                    "server_id": frame.server_id, "seq": frame.seq, "from": frame.from_,
                    "device": frame.from_device, "body": frame.body,
                    "sent_at": frame.sent_at, "mentions": frame.mentions or [],
                    "conversation": room_conversation(room_id), "commitment": frame.commitment,
                    "franking_tag": frame.franking_tag,
                }  # fmt: skip
                # The senders' rows only, once for the page (not the room's every chain).
                session = session or self._group(tx, room_id, dict.fromkeys(senders))
                event = self._open(tx, session, room_id, item, names[frame.from_], keep=True)
                if event is not None:
                    events.append(event)
            if session is not None:
                self._put_group(tx, session)
            key = self._key("room_cursor", room_id)
            if start <= int(tx.get(key) or 0) < upto:
                tx.put(key, upto)
        for event in events:
            self.events.emit(event)

    # -- this device's place in each room's log ---------------------------------------------
    def cursor(self, room_id: str) -> int:
        """The room log's number up to which this device has every message."""
        return int(self._store().read().get(self._key("room_cursor", room_id)) or 0)

    def _read_soon(self, room_id: str) -> None:
        """Read the room's log from the cursor: now, or again after the read under way
        (which may have passed the end before the message that asks was stored)."""
        running = self._reading.get(room_id)
        if running is None or running.done():
            self._start_read(room_id)
        else:
            self._again.add(room_id)

    def _start_read(self, room_id: str) -> asyncio.Task[int]:
        task = asyncio.get_running_loop().create_task(self._read_log(room_id))
        self._reading[room_id] = task
        return task

    async def read_log(self, room_id: str) -> int:
        """Read the room's log from this device's cursor to its end (one read at a time
        per room: a read under way is awaited, then one more is made); how many
        messages came."""
        running = self._reading.get(room_id)
        if running is not None and not running.done():
            await asyncio.wait([running])
        return await self._start_read(room_id)

    async def _read_log(self, room_id: str) -> int:
        got = 0
        try:
            await self._token()
            since = int((self._store().read().get("account") or {}).get("linked_at") or 0)
            while True:
                self._again.discard(room_id)
                after = self.cursor(room_id)
                while True:
                    page = await self.api.room_log(room_id, after, since, LOG_PAGE)
                    frames = [msgspec.convert(m, f.RoomMessage) for m in page["messages"]]
                    start, after = after, max(after, int(page.get("next", after)))
                    await self._take(room_id, frames, start=start, upto=after)
                    got += len(frames)
                    if not page.get("more"):
                        break
                if room_id not in self._again:
                    return got
        except ApiError as exc:
            if exc.code not in ("room_not_found", "not_a_member"):
                log.info("could not read room %s's log: %s", room_id, exc)
        except (ParleyError, TimeoutError, OSError) as exc:
            log.info("could not read room %s's log: %s", room_id, exc)
        return got

    async def sync_rooms(self) -> int:
        """Read every private room's log from this device's cursor (on connect, and when
        the server lost pushes); how many messages came. ``LOGS_AT_ONCE`` rooms a call
        (``POST /delivery/v1/rooms/logs``): a room with nothing new costs the server two
        reads by id shared with the others, not a call of its own; a room with more
        than a page reads on alone."""
        if self._store().read().get("room_keys_held"):
            await self.check_held_keys()  # those the rooms service could not answer for
        private = [str(r["room_id"]) for r in await self.mine() if r.get("kind") == "private"]
        got = 0
        for i in range(0, len(private), LOGS_AT_ONCE):
            chunk = []
            for room_id in private[i : i + LOGS_AT_ONCE]:
                if self._busy(room_id):
                    # Read on after the read under way: it may have passed its end
                    # before what this sync is for (a push lost while offline) was stored.
                    self._read_soon(room_id)
                else:
                    chunk.append(room_id)
            if not chunk:
                continue
            # The rooms of the call are being read until their pages are taken: a gap
            # pushed meanwhile waits for the call (``_read_soon``: ``_again``), then
            # reads once from the new cursor, not beside it.
            batch = asyncio.get_running_loop().create_task(self._read_batch(chunk))
            for room_id in chunk:
                self._reading[room_id] = batch
            try:
                got += await batch
            finally:
                for room_id in chunk:
                    if self._reading.get(room_id) is batch:
                        del self._reading[room_id]
            for room_id in [r for r in chunk if r in self._again]:
                got += await self.read_log(room_id)
        return got

    async def _read_batch(self, chunk: list[str]) -> int:
        """One ``POST /delivery/v1/rooms/logs`` for ``chunk``, its pages taken; a room
        with more than its page is marked to read on alone (``_again``)."""
        try:
            await self._token()
            since = int((self._store().read().get("account") or {}).get("linked_at") or 0)
            cursors = {r: self.cursor(r) for r in chunk}
            answer = await self.api.room_logs(cursors, since, LOG_PAGE)
        except (ParleyError, TimeoutError, OSError) as exc:
            log.info("could not read the rooms' logs: %s", exc)
            return 0
        got = 0
        for page in answer.get("pages", []):
            room_id = str(page["room"])
            frames = [msgspec.convert(m, f.RoomMessage) for m in page["messages"]]
            await self._take(
                room_id, frames, start=cursors.get(room_id, 0), upto=int(page.get("next", 0))
            )
            got += len(frames)
            if page.get("more"):
                self._again.add(room_id)
        return got

    def _busy(self, room_id: str) -> bool:
        """A read of this room's log is under way (it reads to the end)."""
        running = self._reading.get(room_id)
        return running is not None and not running.done()

    def _open(
        self,
        tx: Transaction,
        session: GroupSession,
        room_id: str,
        item: dict[str, Any],
        name: str,
        *,
        keep: bool,
    ) -> Event | None:
        """Decrypt one room message into the history; returns its event.  Without the
        sender's key it is kept pending (``keep``) and None is returned; with
        ``MAX_PENDING`` kept already, its number is remembered instead (``room_unkept``:
        the log is read again from there when a sender key comes)."""
        me = self.account.user_id
        sender = str(item["from"])
        own = sender == me
        conv = room_conversation(room_id)
        entry: dict[str, Any] = {
            "dir": "out" if own else "in", "peer": conv, "room": room_id, "sender": sender,
            "username": name, "at": int(item.get("sent_at") or time.time() * 1000),
            "server_id": item["server_id"], "seq": item["seq"], "device": item["device"],
            "mentions": list(item.get("mentions") or []),
        }  # fmt: skip
        try:
            wire = b64decode(str(item["body"]))
            message = session.decrypt_message(member_key(sender, int(item["device"])), wire)
        except UnknownSenderKey:
            if keep:
                # One row a message (``Transaction.keep_pending``): keeping one neither
                # reads nor writes the others (a list row rewritten whole was ~40 MB a
                # message for a member sending 1,000 large ones under a withheld key).
                server_id, device = str(item["server_id"]), int(item["device"])
                if tx.is_pending(room_id, server_id):
                    pass  # kept already (the log read again)
                elif tx.pending_count(room_id) < MAX_PENDING:
                    tx.keep_pending(room_id, sender, device, server_id, {**item, "name": name})
                else:  # not kept: the room's log has it, read again when its key comes
                    marker = self._key("room_unkept", room_id)
                    lowest = _unkept_map(tx.get(marker))
                    chain = member_key(sender, device)
                    if chain not in lowest or int(item["seq"]) < lowest[chain]:
                        tx.put(marker, {**lowest, chain: int(item["seq"])})
            return None
        except RetiredSenderKey:
            # Its chain was dropped here (CHAINS_KEPT_PER_SENDER newer ones came, or the
            # sender was removed): it will never open, so it is shown as such, not kept
            # waiting for a key that cannot be taken again.
            entry.update(kind="error", text="[could not decrypt: its sender key was dropped]")
            if not tx.add_message(conv, entry, ref=str(item["server_id"]), pos=int(item["seq"])):
                return None  # its place is taken (removed meanwhile: a tombstone's mark)
            return DecryptFailed(sender, name, "sender key dropped")
        except ReplayedMessage:
            # Not one read before (the callers look for its id first): the key we hold
            # starts at a later point of the chain, so it was sent before this device
            # was given the sender's key (a device linked meanwhile; or the inbox's
            # sync brought a later key before the log's older message). Said in the
            # history: read from the log, it went by with no trace.
            entry.update(kind="error", text="[sent before this device had the sender's key]")
            if not tx.add_message(conv, entry, ref=str(item["server_id"]), pos=int(item["seq"])):
                return None
            return DecryptFailed(sender, name, "sent before this device had the key")
        except (CryptoError, ValueError) as exc:
            entry.update(kind="error", text=f"[could not decrypt: {type(exc).__name__}]")
            if not tx.add_message(conv, entry, ref=str(item["server_id"]), pos=int(item["seq"])):
                return None
            return DecryptFailed(sender, name, type(exc).__name__)
        text = message.plaintext.decode("utf-8", errors="replace")
        entry.update(kind="message", text=text)
        if own:
            entry["status"] = "sent"
        elif item.get("franking_tag"):
            frame = f.Message(
                seq=int(item["seq"]), server_id=str(item["server_id"]), from_=sender,
                from_device=int(item["device"]), body="-", conversation=item.get("conversation"),
                commitment=item.get("commitment"), sent_at=item.get("sent_at"),
                franking_tag=item.get("franking_tag"),
            )  # fmt: skip
            report = report_fields(frame, message.franking_key, message.plaintext, text)
            if report is not None:
                entry["report"] = report
        if not tx.add_message(conv, entry, ref=str(item["server_id"]), pos=int(item["seq"])):
            # Its place in the history is taken: removed while it waited for its key (an
            # unsend or an admin's removal: the tombstone's mark). Not shown: before
            # 2026-12-08 its event went out with the text the removal took down.
            return None
        return RoomMessage(
            room_id, sender, name, text, entry["at"], str(item["server_id"]), int(item["seq"]),
            tuple(entry["mentions"]), public=False, own=own,
        )  # fmt: skip

    def on_control(
        self, tx: Transaction, sender: str, device: int, control: dict[str, Any]
    ) -> list[Event]:
        """A control payload from a pairwise session (inside its transaction): a room
        sender key is stored, and the room's pending messages it opens are decrypted.
        If messages of the room were not kept (``MAX_PENDING``), the room's cursor goes
        back before the first of them and its log is read again from there: what this
        key opens is decrypted, what still waits for a key is kept or remembered."""
        room_id = control.get("room")
        if control.get("t") != "skd" or not isinstance(room_id, str):
            log.info("ignoring an unknown control payload from %s", sender)
            return []
        if not self._known(tx, room_id):
            # Anyone with a pairwise session can send keys naming any room id: a room
            # this device does not know waits for the rooms service to say we are in it
            # (each made-up room id was a group row of its own, for good).
            if _ROOM_ID.fullmatch(room_id) and _may_hold(room_id, control.get("d")):
                held = tx.get("room_keys_held") or []
                item = {"room": room_id, "from": sender, "device": device, "d": control["d"]}
                tx.put("room_keys_held", [*held, item][-HELD_KEYS_KEPT:])
                self._check_soon()
            return []
        return self._take_key(tx, room_id, sender, device, control)

    def _known(self, tx: Transaction, room_id: str) -> bool:
        """Has this device been in the room (its sender keys, its state, a log read)?"""
        return tx.get_bytes(self._key("group", room_id)) is not None or any(
            tx.get(self._key(kind, room_id)) is not None for kind in ("room", "room_cursor")
        )

    def _check_soon(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a blocking caller): checked at the next sync
        if self._checking is None or self._checking.done():
            self._checking = loop.create_task(self.check_held_keys())

    async def check_held_keys(self) -> int:
        """Take the held sender keys of rooms the rooms service says this account is in
        (its room view has a role), drop those of rooms it is not in (``room_not_found``
        or no role); a room it cannot ask now keeps its keys for the next sync, or for
        the room's first log page or push (:meth:`_take`: only a member gets them).
        Returns how many keys were taken."""
        taken = 0
        asked: set[str] = set()
        while True:
            # Read in a transaction: after the one that held a key and asked for this
            # check (transactions run one at a time), so its key is seen.
            async with self._store().transaction() as tx:
                held = tx.get("room_keys_held") or []
            todo = [h["room"] for h in held if h["room"] not in asked]
            if not todo:
                return taken
            room_id = str(todo[0])
            asked.add(room_id)
            try:
                await self._token()
                member = (await self.api.room(room_id)).get("role") is not None
            except ApiError as exc:
                if exc.code != "room_not_found":
                    continue  # asked again at the next sync, or when the room's log comes
                member = False
            except (ParleyError, TimeoutError, OSError):
                continue
            events: list[Event] = []
            async with self._store().transaction() as tx:
                events, held = self._take_held(tx, room_id, member=member)
                taken += held if member else 0
                if held and not member:
                    log.info("dropped %d sender keys for a room we are not in", held)
            for event in events:
                self.events.emit(event)

    def _take_held(self, tx: Transaction, room_id: str, *, member: bool) -> tuple[list[Event], int]:
        """Take the keys held for ``room_id`` out of ``room_keys_held``: stored when we
        are a ``member`` (their events), dropped otherwise; and how many there were."""
        held = tx.get("room_keys_held") or []
        mine = [h for h in held if h["room"] == room_id]
        if not mine:
            return [], 0
        tx.put("room_keys_held", [h for h in held if h["room"] != room_id])
        events: list[Event] = []
        for h in mine if member else ():
            events += self._take_key(tx, room_id, str(h["from"]), int(h["device"]), h)
        return events, len(mine)

    def _take_key(
        self, tx: Transaction, room_id: str, sender: str, device: int, control: dict[str, Any]
    ) -> list[Event]:
        """Store a room's sender key and open the pending messages it is for."""
        member = member_key(sender, device)
        try:
            session = self._group(tx, room_id, (member,))  # an empty or odd room id: refused
            session.process_distribution(member, b64decode(str(control["d"])))
        except (CryptoError, ValueError, KeyError) as exc:
            log.warning("refused a sender key from %s:%s: %s", sender, device, exc)
            return []
        events: list[Event] = []
        for item in tx.pending(room_id, sender, device):  # this device's rows only
            event = self._open(tx, session, room_id, item, str(item.get("name", "")), keep=False)
            if event is not None:
                events.append(event)
            elif not tx.has_message(str(item["server_id"])):
                continue  # another chain of the sender's: its key may come later
            tx.take_pending(room_id, str(item["server_id"]))
        self._put_group(tx, session)
        self._reread_unkept(tx, room_id, member_key(sender, device))
        return events

    def _reread_unkept(self, tx: Transaction, room_id: str, chain: str) -> None:
        """Put the room's cursor back before the first message of ``chain`` (the member
        device whose key came) that was not kept, if any, and read its log again (the
        read starts once this transaction's caller yields; its reads see the cursor put
        back, as the store's reads see the open transaction). Only that device's: a key
        of a device with nothing left out reads nothing, so one chain whose key never
        comes does not make every other key (or the same one sent again) read the log
        again from its first message, for as long as the log keeps it."""
        marker = self._key("room_unkept", room_id)
        lowest = _unkept_map(tx.get(marker))
        mine = [c for c in (chain, "*") if c in lowest]
        if not mine:
            return
        start = min(lowest.pop(c) for c in mine)
        if lowest:
            tx.put(marker, lowest)
        else:
            tx.delete(marker)
        key = self._key("room_cursor", room_id)
        if int(tx.get(key) or 0) >= start:
            tx.put(key, start - 1)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a blocking caller): the next sync reads from the cursor
        self._read_soon(room_id)

    def pending(self, room_id: str) -> int:
        """Room messages kept until their sender key arrives."""
        return self._store().read().pending_count(room_id)

    def unkept(self, room_id: str) -> int | None:
        """The lowest number of the room's messages that waited for their sender key
        past ``MAX_PENDING`` (not kept: read again from the log when their key comes)."""
        lowest = _unkept_map(self._store().read().get(self._key("room_unkept", room_id)))
        return min(lowest.values(), default=None)

    async def on_room_frame(self, frame: RoomFrame) -> None:
        if isinstance(frame, f.RoomMessageChanged):
            self.events.emit(
                RoomMessageChanged(
                    frame.room_id, frame.seq, frame.rev, frame.marker, frame.text, frame.at
                )
            )
        elif isinstance(frame, f.RoomChanged):
            who = frame.user_id
            self.events.emit(
                RoomChanged(
                    frame.room_id, frame.change, frame.kind, frame.state, who, frame.name,
                    frame.topic, frame.role,
                    None if who is None else await self.messenger.name_of(who),
                )
            )  # fmt: skip
        elif isinstance(frame, f.TypingNotice):
            if frame.user != self.account.user_id:  # our own other devices: not news
                name = await self.messenger.name_of(frame.user)
                self.events.emit(
                    Typing(frame.room_id, frame.user, name, frame.device, frame.typing)
                )
        elif isinstance(frame, f.RoomPost):
            name = await self.messenger.name_of(frame.sender)
            self.events.emit(
                RoomMessage(
                    frame.room_id, frame.sender, name, frame.text, frame.sent_at, None,
                    frame.seq, tuple(frame.mentions), public=True,
                    own=frame.sender == self.account.user_id, here=frame.client_id in self._posted,
                )
            )  # fmt: skip
        else:
            self.events.emit(
                RoomNotification(
                    frame.seq, frame.room_id, frame.room_name, frame.sender, frame.excerpt,
                    frame.at, frame.message_seq, frame.server_id,
                )
            )  # fmt: skip
