"""What gateways and delivery workers share: Redis names for presence and routing.

The shapes of what travels (Kafka envelopes, routed frames) are the
contract's: ``parley_contract.envelopes``.

Redis (every key carries the user id or gateway id inside ``{}`` so that Redis
Cluster keeps one user's keys on one shard):

- ``<p>:presence:{<user>}``: hash, connection id -> ``<gateway id>|<unix ms>``,
  refreshed by the hosting gateway; entries older than the presence TTL are stale.
- ``<p>:gw:{<gateway id>}``: the pub/sub channel of one gateway pod; messages
  are ``parley_contract.envelopes.Routed``, or a list of them (a batch: one
  publish per pod whatever the number of frames, :func:`publish`);
- ``<p>:gwroom``: the room channel, which every pod subscribes to: room-wide
  frames for a list of users (``parley_contract.envelopes.Multicast``,
  :func:`multicast`: a private room's message, a public room's post, a room's
  change); a pod pushes to the users it holds a socket of.

(:func:`publish`'s routing script reads several users' presence keys: it
assumes one Redis, not a Cluster, as docs/deployment.md says the services do.)
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import redis.asyncio as aioredis
from parley_contract import envelopes as e
from parley_contract import frames as f

from services.common import scripts

Push = tuple[str, int | None, f.ServerFrames]
"""(user, device or None for all of them, frame): what :func:`publish` sends."""

# Routing in one round trip: KEYS the presence hashes of the frames' users; ARGV[1]
# now (ms), ARGV[2] the presence TTL (ms), ARGV[3] the channel name up to the gateway
# id, then per frame its user's index in KEYS and the encoded frame. Publishes each
# live gateway's frames as one message (the frame, or a JSON list of them), as
# :func:`publish` does from Python; returns the number of (frame, gateway) pairs. The
# presence keys are on as many shards as users: one Redis, not a Cluster
# (docs/deployment.md).
_ROUTE = scripts.define("""
local now, ttl, chan = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local live = {}
for i = 1, #KEYS do
  local gws = {}
  local all = redis.call('HGETALL', KEYS[i])
  for j = 2, #all, 2 do
    local gw, ts = string.match(all[j], '^([^|]*)|(%d+)$')
    -- A set: a user's sockets on one pod get the frame from one publish.
    if gw and now - tonumber(ts) <= ttl then gws[gw] = true end
  end
  live[i] = gws
end
local batches, order, n = {}, {}, 0
for a = 4, #ARGV, 2 do
  for gw in pairs(live[tonumber(ARGV[a])]) do
    local b = batches[gw]
    if not b then
      b = {}
      batches[gw] = b
      order[#order + 1] = gw
    end
    b[#b + 1] = ARGV[a + 1]
    n = n + 1
  end
end
for _, gw in ipairs(order) do
  local b = batches[gw]
  redis.call('PUBLISH', chan .. gw .. '}', #b == 1 and b[1] or '[' .. table.concat(b, ',') .. ']')
end
return n
""")


def presence_key(prefix: str, user_id: str) -> str:
    return f"{prefix}:presence:{{{user_id}}}"


def pending_key(prefix: str, inbox: str) -> str:
    """A device inbox's waiting-item counts: field ``*`` (all), one field per sender."""
    return f"{prefix}:pending:{{{inbox}}}"


PENDING_ALL = "*"


def gateway_channel(prefix: str, gateway_id: str) -> str:
    return f"{prefix}:gw:{{{gateway_id}}}"


def room_channel(prefix: str) -> str:
    return f"{prefix}:gwroom"


def presence_value(gateway_id: str, now_ms: int | None = None) -> str:
    return f"{gateway_id}|{now_ms if now_ms is not None else int(time.time() * 1000)}"


def live_gateways(entries: dict[bytes, bytes], ttl_s: float, now_ms: int | None = None) -> set[str]:
    """Gateways that host a live connection, from a presence hash."""
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    live = set()
    for value in entries.values():
        gw, _, ts = value.decode().partition("|")
        if ts.isdigit() and now - int(ts) <= ttl_s * 1000:
            live.add(gw)
    return live


def queue_presence(pipe: aioredis.client.Pipeline, prefix: str, users: list[str]) -> None:
    """Queue the presence reads of ``users`` (distinct) on ``pipe``."""
    for user in users:
        pipe.hgetall(presence_key(prefix, user))


def presence_of(users: list[str], results: list[Any], ttl_s: float) -> dict[str, set[str]]:
    """The live gateways of each user who has one, from :func:`queue_presence`'s results."""
    return {u: live_gateways(r, ttl_s) for u, r in zip(users, results, strict=True) if r}


async def gateways_of(
    redis: aioredis.Redis, prefix: str, ttl_s: float, users: Iterable[str]
) -> dict[str, set[str]]:
    """The live gateways of each user who has one (one round trip)."""
    users = list(dict.fromkeys(users))
    if not users:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        queue_presence(pipe, prefix, users)
        results = await pipe.execute()
    return presence_of(users, results, ttl_s)


async def publish(
    redis: aioredis.Redis,
    prefix: str,
    ttl_s: float,
    frames: list[Push],
    where: dict[str, set[str]] | None = None,
) -> int:
    """Push frames to the sockets of (user, device) — every device of the user when
    device is None — on every gateway hosting the user: one round trip (a script
    reads the users' presence and publishes), and one PUBLISH per gateway pod
    whatever the number of frames (a JSON list of routed frames). Each frame is
    encoded once; the gateways forward it as it is. ``where``: the frames'
    users' gateways when the caller read them already (after storing what the
    frames announce: a socket that connects later syncs it): then the publishes
    alone, from here.
    Returns how many (frame, pod) pairs were published.
    """
    if not frames:
        return 0
    if where is None:
        return await _route(redis, prefix, ttl_s, frames)
    batches: dict[str, list[bytes]] = {}
    for user, device, frame in frames:
        gateways = where.get(user, ())
        if not gateways:
            continue
        data = e.encode(e.routed(user, device, frame))
        for gw in gateways:
            batches.setdefault(gw, []).append(data)
    if not batches:
        return 0
    async with redis.pipeline(transaction=False) as pipe:
        for gw, items in batches.items():
            payload = items[0] if len(items) == 1 else b"[" + b",".join(items) + b"]"
            pipe.publish(gateway_channel(prefix, gw), payload)
        await pipe.execute()
    return sum(len(items) for items in batches.values())


# Users per multicast message: a room of 100,000 members is 50 publishes of ~100 KB,
# not one of 5 MB that every pod must take in at once.
MULTICAST_USERS = 2000


async def multicast(
    redis: aioredis.Redis, prefix: str, users: list[str], frame: f.ServerFrames
) -> int:
    """Push one frame to every socket of each of ``users`` (distinct), wherever they
    are connected: published on the room channel every pod subscribes to, the frame
    encoded once, ``MULTICAST_USERS`` users per message, one round trip, and no
    presence read (a room of 1,000 members would be 1,000 presence hashes). Each pod
    pushes it to the users it holds a socket of; one with none of them drops it.
    Returns how many (frame, subscriber) pairs Redis delivered (its ``PUBLISH``
    counts)."""
    if not users:
        return 0
    async with redis.pipeline(transaction=False) as pipe:
        queue_multicast(pipe, prefix, users, frame)
        counts = await pipe.execute()
    return sum(int(n) for n in counts)


def queue_multicast(
    pipe: aioredis.client.Pipeline, prefix: str, users: list[str], frame: f.ServerFrames
) -> None:
    """Queue :func:`multicast`'s publishes on ``pipe`` (several frames in one round trip)."""
    channel = room_channel(prefix)
    for i in range(0, len(users), MULTICAST_USERS):
        pipe.publish(channel, e.encode(e.multicast(users[i : i + MULTICAST_USERS], frame)))


async def _route(redis: aioredis.Redis, prefix: str, ttl_s: float, frames: list[Push]) -> int:
    """:func:`publish` without ``where``: the presence read and the publishes in one
    script (one round trip instead of two)."""
    users: dict[str, int] = {}
    args: list[Any] = [int(time.time() * 1000), int(ttl_s * 1000), f"{prefix}:gw:{{"]
    for user, device, frame in frames:
        args += [users.setdefault(user, len(users) + 1), e.encode(e.routed(user, device, frame))]
    keys = [presence_key(prefix, u) for u in users]
    return int(await scripts.call(redis, _ROUTE, keys, args))


__all__ = [
    "PENDING_ALL",
    "Push",
    "gateway_channel",
    "gateways_of",
    "live_gateways",
    "multicast",
    "pending_key",
    "presence_key",
    "presence_of",
    "presence_value",
    "publish",
    "queue_presence",
    "room_channel",
]
