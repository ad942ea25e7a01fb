"""Real-time frames from the rooms service to connected sockets (docs/rooms.md, "Live frames").

Best effort: the timeline and the notification list are the record, a frame
only says "look now". A user with no live presence entry gets nothing (no
Redis publish at all); a failure to reach Redis is logged and counted, never
an error for the request that caused it.

Cost of a room-wide frame for a room of ``m`` members: the roster is read as an
``_id`` range, ``ROSTER_PAGE`` entries a read (a leave deletes its entry: what is
read are the members, not the slots ever handed out), and their member documents
by id (``$in``), then the frame goes out once with the member list on the room
channel every gateway pod subscribes to
(:func:`services.common.routing.multicast`: no presence read, one publish per
2,000 members); each pod pushes it to the members it holds a socket of.
A notification is one user's: routed by presence (:meth:`Pusher.send`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

import redis.asyncio as aioredis
from parley_contract import frames as f
from redis.exceptions import RedisError

from services.common.config import Settings
from services.common.rosters import RosterCache
from services.common.routing import Push, multicast, publish
from services.rooms.metrics import RoomsMetrics
from services.rooms.store import Doc, RoomStore, now_ms, slot_of

log = logging.getLogger(__name__)

# Roster entries read per round trip by members_of (a room has at most 5,000 members;
# their member documents are read 500 ids a round trip).
ROSTER_PAGE = 2000


class Pusher:
    def __init__(self, redis: aioredis.Redis, settings: Settings, metrics: RoomsMetrics) -> None:
        self.redis = redis
        self.prefix = settings.redis_prefix
        self.ttl_s = settings.presence_ttl_s
        self.timeout_s = max(settings.dependency_timeout_ms / 1000, 1.0)
        self.metrics = metrics
        # Member lists of the rooms pushed to (a public room's post read 4 MongoDB
        # pages of 500 ids for 1,000 members, every post).
        self.rosters = RosterCache()

    async def send(self, frames: list[Push], kind: str) -> int:
        """Publish ``frames`` to their users' gateways; how many (frame, pod) pairs went."""
        if not frames:
            return 0
        return await self._publish(
            publish(self.redis, self.prefix, self.ttl_s, frames), kind, len(frames)
        )

    async def send_all(self, users: list[str], frame: f.ServerFrames, kind: str) -> int:
        """Publish one frame for every socket of each of ``users`` (a room-wide frame:
        :func:`~services.common.routing.multicast`); how many (frame, pod) pairs went."""
        if not users:
            return 0
        return await self._publish(multicast(self.redis, self.prefix, users, frame), kind, 1)

    async def _publish(self, call: Awaitable[int], kind: str, frames: int) -> int:
        try:
            sent = await asyncio.wait_for(call, self.timeout_s)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("frames not pushed", extra={"error": repr(exc), "kind": kind})
            self.metrics.pushed.labels(kind, "failed").inc(frames)
            return 0
        self.metrics.pushed.labels(kind, "published").inc(sent)
        return sent


async def members_of(store: RoomStore, room: Doc, cache: RosterCache | None = None) -> list[str]:
    """Every member of the room, in join order, read page by page from the roster, or
    from ``cache`` when it holds the list of the room as ``room`` (read before) says
    it is (docs/rooms.md, "Member lists")."""
    room_id = str(room["_id"])
    version, count = int(room.get("version", 0)), int(room.get("members", -1))
    if cache is not None and (hit := cache.get(room_id, version, count)) is not None:
        return list(hit)
    # The roster's entries in slot order, as an ``_id`` range: slots are never reused,
    # and reading every slot ever handed out (500 ids a round trip, 8 at once) cost a
    # room 50,000 had joined and left 100 round trips on every miss of the cache.
    users: list[str] = []
    after = 0
    while True:
        entries = await store.roster_after(room_id, after, ROSTER_PAGE)
        # An entry counts while the member document names its slot (docs/rooms.md).
        users += [str(m["user"]) for _, m in await store.listed(room_id, entries)]
        if len(entries) < ROSTER_PAGE:
            break
        after = slot_of(entries[-1])
    if cache is not None:
        cache.put(room_id, version, count, users)
    return users


async def to_members(
    store: RoomStore,
    pusher: Pusher,
    room: Doc,
    frame: f.ServerFrames,
    kind: str,
    also: tuple[str, ...] = (),
) -> int:
    """One frame to every connected member (and to ``also``: a member just removed)."""
    try:
        users = await members_of(store, room, pusher.rosters)
    except Exception as exc:  # best effort: the change is stored whatever happens here
        log.warning("room members not read for a push", extra={"error": repr(exc)})
        return 0
    users += [u for u in also if u not in users]
    return await pusher.send_all(users, frame, kind)


async def room_changed(
    store: RoomStore,
    pusher: Pusher,
    room: Doc,
    change: str,
    also: tuple[str, ...] = (),
    user_id: str | None = None,
    role: str | None = None,
) -> int:
    """A ``room_changed`` frame about ``room`` (as it is now) to its connected members."""
    settings = change == "settings"
    frame = f.RoomChanged(
        room_id=room["_id"], change=change, kind=room["kind"], state=room["state"],  # type: ignore[arg-type]
        version=int(room.get("version", 1)), at=now_ms(), user_id=user_id,
        name=room["name"] if settings else None,
        topic=room.get("topic", "") if settings else None, role=role,
    )  # fmt: skip
    return await to_members(store, pusher, room, frame, "room_changed", also)


async def room_post(store: RoomStore, pusher: Pusher, room: Doc, frame: f.RoomPost) -> int:
    """A public room's new message to every connected member (the sender's other
    devices too: they show what was sent from elsewhere)."""
    try:
        users = await members_of(store, room, pusher.rosters)
    except Exception as exc:  # best effort: the post is stored whatever happens here
        log.warning("room members not read for a push", extra={"error": repr(exc)})
        return 0
    return await pusher.send_all(users, frame, "room_post")
