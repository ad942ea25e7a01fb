"""Routing frames to gateway pods (services/common/routing.py), on the real Redis.

Without ``where``, one script reads the users' presence and publishes; with
it, the caller's presence answer is used. Both must publish the same thing:
one message per live gateway pod, nothing for a stale or absent user.
"""

from __future__ import annotations

import asyncio
import time

import orjson
from parley_contract import frames as f

from services.common import routing
from services.common.clients import redis_client
from services.common.config import Settings


async def test_publish_reads_presence_and_sends_one_message_per_live_pod(
    settings: Settings,
) -> None:
    redis = redis_client(settings)
    prefix, ttl = settings.redis_prefix, 30.0
    now = int(time.time() * 1000)
    await redis.hset(routing.presence_key(prefix, "ann"), "c1", routing.presence_value("gwA", now))
    await redis.hset(routing.presence_key(prefix, "bob"), mapping={
        "c1": routing.presence_value("gwA", now), "c2": routing.presence_value("gwB", now),
    })  # fmt: skip
    stale = routing.presence_value("gwB", now - 60_000)
    await redis.hset(routing.presence_key(prefix, "cat"), "c1", stale)
    frames: list[routing.Push] = [
        ("ann", None, f.Resync(reason="a")),
        ("bob", 2, f.Resync(reason="b")),
        ("cat", None, f.Resync(reason="c")),  # stale presence: nobody
        ("dan", None, f.Resync(reason="d")),  # no presence at all
    ]
    pubsub = redis.pubsub()
    channels = [routing.gateway_channel(prefix, gw).encode() for gw in ("gwA", "gwB")]
    await pubsub.subscribe(*channels)
    try:
        got: dict[bytes, list[object]] = {c: [] for c in channels}
        for where in (None, await routing.gateways_of(redis, prefix, ttl, ["ann", "bob", "cat"])):
            assert await routing.publish(redis, prefix, ttl, frames, where) == 3
            for _ in range(2):
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
                while msg is None:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
                got[msg["channel"]].append(orjson.loads(msg["data"]))
        a, b = (got[c] for c in channels)
        assert a[0] == a[1] and b[0] == b[1], "the script and the Python path agree"
        assert [r["to"] for r in a[0]] == ["ann", "bob"]  # type: ignore[attr-defined]
        assert b[0]["to"] == "bob" and b[0]["device"] == 2  # type: ignore[index]
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await redis.aclose()


async def test_publish_to_nobody_is_no_message(settings: Settings) -> None:
    redis = redis_client(settings)
    try:
        frames: list[routing.Push] = [("nobody-here", None, f.Resync(reason="x"))]
        assert await routing.publish(redis, settings.redis_prefix, 30.0, frames) == 0
        assert await asyncio.wait_for(redis.ping(), 5)
    finally:
        await redis.aclose()
