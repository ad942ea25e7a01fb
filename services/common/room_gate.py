"""A room's send gate in Redis: what lets a gateway answer a ``room_send`` without
asking the rooms service each time (docs/rooms.md, "The send gate").

Every ``room_send`` (and ``typing``) needs the room as its sender may see it:
a member now, the room open, its ``version`` and member count. Read from the
rooms service, that is an authenticated HTTP request and two MongoDB reads,
about 700 µs of the rooms service's CPU per message in the fan-out benchmark
(docs/BENCHMARKS.md) and most of a small room's cost.

The gate is a random token per room (``<prefix>:rgate:<room>``) that the rooms
service replaces **after** every change the room's events announce (a join,
a leave, a removal or ban, a role, the state, the kind, a deletion), before
the change's HTTP answer and before its event (:meth:`RoomGate.bump`; the
outbox's retry bumps too, for a process that died in between). A gateway
reads the gate, *then* the room from the rooms service, and keeps the room
under the token it read first. It uses that copy while the gate still holds
the same token: a room read before a change is kept under the old token,
which the change replaces once it is made; so a removal or a close holds from
the sender's next message after the change's answer, as when the room was read
every time.

The token is random, not a counter: a Redis that lost its data (a restart)
starts the gate anew with a token no gateway has kept. A gateway that cannot
read the gate (Redis away) reads the room every time.
"""

from __future__ import annotations

import secrets

import redis.asyncio as aioredis

GATE_TTL_S = 86_400
"""A gate is forgotten after a day without a change (a room nobody reads); the
next read starts a new one, which matches no kept copy."""

READ_GATE_TTL_S = 120
"""A gate a read starts (no change made one) lasts two minutes: a gateway asked
about room ids that do not exist (``typing`` or ``room_send`` to random ids) left
a key for a day each. Longer than a kept copy's life (``ROOM_KEPT_S``, 30 s), so
a busy room's copies are not read again any sooner for it."""


class RoomGate:
    def __init__(self, redis: aioredis.Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix

    def key(self, room_id: str) -> str:
        return f"{self.prefix}:rgate:{room_id}"

    async def bump(self, room_id: str) -> None:
        """The room changed: every copy kept under the old token is stale."""
        await self.redis.set(self.key(room_id), secrets.token_hex(8), ex=GATE_TTL_S)

    async def read(self, room_id: str) -> bytes:
        """The room's token now (one round trip); a room with none gets a new one."""
        key = self.key(room_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(key, secrets.token_hex(8), nx=True, ex=READ_GATE_TTL_S)
            pipe.get(key)
            _, token = await pipe.execute()
        return bytes(token)
