"""Lua scripts in pipelines by SHA alone (services/common/scripts.py), on the real Redis."""

from __future__ import annotations

import uuid

from services.common import scripts
from services.common.clients import redis_client
from services.common.config import Settings

_INCR_BY = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


async def script_exists_calls(redis: object) -> int:
    stats = await redis.info("commandstats")  # type: ignore[attr-defined]
    return int(stats.get("cmdstat_script|exists", {}).get("calls", 0))


async def test_a_pipeline_runs_a_script_in_one_round_trip_and_survives_a_lost_cache(
    settings: Settings,
) -> None:
    redis = redis_client(settings)
    try:
        script = scripts.register(redis, _INCR_BY + " -- " + uuid.uuid4().hex)
        key = f"{settings.redis_prefix}:scripts-test"
        before = await script_exists_calls(redis)
        for _ in range(3):
            async with redis.pipeline(transaction=False) as pipe:
                await scripts.queue(pipe, script, [key], [2])
                pipe.get(key)
                results = await pipe.execute()
        assert results == [6, b"6"]
        # No SCRIPT EXISTS before each pipeline (redis-py's own way asks every time).
        assert await script_exists_calls(redis) == before

        # A script the server has never seen, on connections made after it was
        # registered (as every connection to a Redis that restarted and lost its
        # script cache): each new connection loads it before its first command.
        # (The test does not flush the shared server's cache: other tests use it.)
        fresh = scripts.register(redis, _INCR_BY + " -- " + uuid.uuid4().hex)
        assert await redis.script_exists(fresh.sha) == [False]
        scripts._LOADED.add(fresh.sha)  # as if loaded before the "restart"
        # The server drops every connection of this client: redis-py's pooled ones
        # and the shared one plain commands and pipelines use (fastredis.py).
        await redis.connection_pool.disconnect()
        other = redis_client(settings)
        try:
            await other.client_kill_filter(_id=await redis.client_id())
        finally:
            await other.aclose()
        async with redis.pipeline(transaction=False) as pipe:
            await scripts.queue(pipe, fresh, [key], [4])
            assert await pipe.execute() == [10]
    finally:
        await redis.aclose()
