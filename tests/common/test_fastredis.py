"""The shared pipelined Redis connection (services/common/fastredis.py), on the real Redis.

What the services get from ``redis_client`` must answer exactly as redis-py
does (same shapes, same exception classes), share one connection among
concurrent callers without mixing up their replies, survive a caller that
is cancelled and a connection the server drops, and give up on a server
that stops answering, but not on one that answers slowly.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import hiredis
import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from scripts.stack import _free_ports, redis_command
from services.common import fastredis, scripts
from services.common.clients import redis_client
from services.common.config import Settings
from services.common.fastredis import FastPipeline, FastRedis, may_run_twice
from tests.support.aio import eventually


@pytest.fixture
async def fast(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = redis_client(settings)
    assert isinstance(client, FastRedis)
    yield client
    await client.aclose()


@pytest.fixture
async def plain(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(settings.redis_url)
    yield client
    await client.aclose()


async def _everything(r: aioredis.Redis, k: str) -> list[object]:
    """One of each command shape the services use, direct and in a pipeline."""
    out: list[object] = [
        await r.set(f"{k}:s", "v", ex=60),
        await r.get(f"{k}:s"),
        await r.get(f"{k}:missing"),
        await r.hset(f"{k}:h", mapping={"a": 1, "b": "two"}),
        await r.hgetall(f"{k}:h"),
        await r.hgetall(f"{k}:nothing"),
        await r.hmget(f"{k}:h", ["a", "zz"]),
        await r.hincrby(f"{k}:h", "a", 5),
        await r.zadd(f"{k}:z", {"x": 1.5, "y": 2}),
        await r.zrangebyscore(f"{k}:z", "-inf", "+inf", withscores=True),
        await r.sadd(f"{k}:set", "p", "q"),
        await r.smembers(f"{k}:set"),
        await r.exists(f"{k}:s", f"{k}:missing"),
        await r.expire(f"{k}:h", 60),
        await r.mget([f"{k}:s", f"{k}:missing"]),
        await r.incr(f"{k}:n"),
        await r.ping(),
        await r.publish(f"{k}:channel", b"nobody listens"),
        await r.delete(f"{k}:n"),
    ]
    async with r.pipeline(transaction=False) as pipe:
        pipe.hgetall(f"{k}:h")
        pipe.zadd(f"{k}:z", {"x": 3})
        pipe.set(f"{k}:s2", "w")
        pipe.mget([f"{k}:s", f"{k}:s2"])
        pipe.exists(f"{k}:s2")
        pipe.smembers(f"{k}:set")
        out.append(await pipe.execute())
    return out


async def test_replies_have_redis_pys_shapes(
    fast: aioredis.Redis, plain: aioredis.Redis, settings: Settings
) -> None:
    base = f"{settings.redis_prefix}:shapes"
    got = await _everything(fast, f"{base}:fast")
    want = await _everything(plain, f"{base}:plain")
    assert got == want
    assert got[4] == {b"a": b"1", b"b": b"two"} and got[16] is True  # HGETALL, PING


async def test_error_replies_are_redis_pys_exceptions_and_leave_the_connection_usable(
    fast: aioredis.Redis, settings: Settings
) -> None:
    k = f"{settings.redis_prefix}:errors"
    await fast.set(k, "a string")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await fast.hgetall(k)
    with pytest.raises(NoScriptError):
        await fast.evalsha("0" * 40, 0)
    async with fast.pipeline(transaction=False) as pipe:
        assert isinstance(pipe, FastPipeline)
        pipe.get(k)
        pipe.hgetall(k)
        pipe.get(k)
        with pytest.raises(ResponseError, match=r"Command # 2 \(HGETALL"):
            await pipe.execute()
    async with fast.pipeline(transaction=False) as pipe:
        pipe.get(k)
        pipe.lpush(k, "x")
        pipe.get(k)
        first, error, last = await pipe.execute(raise_on_error=False)
    assert first == last == b"a string" and isinstance(error, ResponseError)
    assert await fast.get(k) == b"a string"  # nothing written by the failed command


async def test_concurrent_callers_share_one_connection_and_get_their_own_replies(
    fast: aioredis.Redis, settings: Settings
) -> None:
    k = f"{settings.redis_prefix}:many"

    async def one(i: int) -> tuple[int, list[object]]:
        async with fast.pipeline(transaction=False) as pipe:
            for j in range(i % 7 + 1):
                pipe.set(f"{k}:{i}:{j}", f"{i}.{j}")
                pipe.get(f"{k}:{i}:{j}")
            pipe.client_id()
            return i, await pipe.execute()

    results = await asyncio.gather(*(one(i) for i in range(300)), fast.client_id())
    ids = set()
    for i, replies in results[:-1]:  # type: ignore[misc]
        *pairs, cid = replies
        assert pairs[1::2] == [f"{i}.{j}".encode() for j in range(i % 7 + 1)]
        ids.add(cid)
    ids.add(results[-1])
    assert len(ids) == 1, "every caller on the one shared connection"


async def test_a_cancelled_caller_does_not_shift_the_next_callers_replies(
    fast: aioredis.Redis, settings: Settings
) -> None:
    k = f"{settings.redis_prefix}:cancel"
    await fast.set(k, "after")

    async def big() -> list[object]:
        async with fast.pipeline(transaction=False) as pipe:
            for i in range(20_000):
                pipe.set(f"{k}:{i}", i)
            return await pipe.execute()

    task = asyncio.create_task(big())
    await asyncio.sleep(0)  # it has written its commands; no reply has been read
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await fast.get(k) == b"after"
    assert await fast.get(f"{k}:19999") == b"19999"  # the cancelled commands did run


async def test_a_dropped_connection_is_made_again_with_the_scripts_loaded(
    fast: aioredis.Redis, plain: aioredis.Redis, settings: Settings
) -> None:
    key = f"{settings.redis_prefix}:dropped"
    script = scripts.register(
        fast, "return redis.call('INCRBY', KEYS[1], 3) -- " + uuid.uuid4().hex
    )
    before = await fast.client_id()
    await plain.client_kill_filter(_id=before)  # the server drops the shared connection
    # Seen closed before the next request is written (one written to it after, which
    # may have run, is not sent again: the next test).
    wire = fast._wire  # type: ignore[attr-defined]
    await eventually(lambda: _closed(wire), bool, timeout=5)
    # Registered since the connection was made; never loaded by this process: the
    # new connection loads every registered script before its first command.
    scripts._LOADED.add(script.sha)
    async with fast.pipeline(transaction=False) as pipe:
        await scripts.queue(pipe, script, [key], [])
        pipe.client_id()
        three, after = await pipe.execute()
    assert three == 3 and after != before


async def _closed(wire: Any) -> bool:
    return wire is None or wire.error is not None


async def _server(answer: float | None) -> tuple[asyncio.Server, int]:
    """A fake Redis that answers ``+OK`` to each command ``answer`` seconds apart,
    or never (None)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = hiredis.Reader()
        try:
            while data := await reader.read(65536):
                parser.feed(data)
                while parser.gets() is not False:
                    if answer is None:
                        continue
                    await asyncio.sleep(answer)
                    writer.write(b"+OK\r\n")
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_a_server_that_stops_answering_times_out() -> None:
    server, port = await _server(answer=None)
    r = FastRedis.from_url(
        f"redis://127.0.0.1:{port}", socket_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(RedisTimeoutError):
            await r.set("k", "v")
        assert loop.time() - started < 2.0
    finally:
        await r.aclose()
        server.close()


async def test_a_server_that_answers_slowly_but_steadily_does_not_time_out() -> None:
    server, port = await _server(answer=0.05)
    r = FastRedis.from_url(
        f"redis://127.0.0.1:{port}", socket_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )
    try:
        async with r.pipeline(transaction=False) as pipe:
            for i in range(12):  # 0.6 s of answers, three times the timeout
                pipe.set(f"k{i}", i)
            assert await pipe.execute() == [True] * 12
    finally:
        await r.aclose()
        server.close()


async def test_no_server_is_a_connection_error() -> None:
    server, port = await _server(answer=0)
    server.close()
    await server.wait_closed()
    r = FastRedis.from_url(f"redis://127.0.0.1:{port}", retry=Retry(NoBackoff(), 1))
    try:
        with pytest.raises(RedisConnectionError):
            await r.get("k")
    finally:
        await r.aclose()


async def test_transactions_still_go_through_redis_py(
    fast: aioredis.Redis, settings: Settings
) -> None:
    k = f"{settings.redis_prefix}:multi"
    async with fast.pipeline(transaction=True) as pipe:
        assert not isinstance(pipe, FastPipeline)
        pipe.incr(k)
        pipe.incr(k)
        assert await pipe.execute() == [1, 2]


@pytest.mark.parametrize("protocol", [2, 3])  # the shared connection; redis-py's pool
async def test_a_readonly_reply_drops_the_connection_so_the_next_call_makes_a_new_one(
    tmp_path: Path, protocol: int
) -> None:
    """Audit finding: after a failover the connection could sit on the demoted primary,
    now a replica, and every write was refused (``READONLY``) until the process
    restarted: error replies leave a connection usable, so it was kept. Dropped on
    ``READONLY`` now, on the shared connection and on redis-py's pool (TLS, RESP3:
    every command on AWS); the next call connects again (to where the endpoint
    leads: the new primary)."""
    if shutil.which("redis-server") is None:
        pytest.skip("needs redis-server")
    [port] = _free_ports(1)
    proc = await asyncio.create_subprocess_exec(*redis_command("127.0.0.1", port, tmp_path))
    client = FastRedis(port=port, socket_timeout=5, protocol=protocol)
    assert client._fast is (protocol == 2)
    try:
        await eventually(lambda: _pings(client), bool)
        before = await client.client_id()
        await client.execute_command("REPLICAOF", "127.0.0.1", str(_free_ports(1)[0]))
        with pytest.raises(ReadOnlyError):
            await client.set("k", "v")
        async with client.pipeline(transaction=False) as pipe:
            pipe.set("k", "v")
            with pytest.raises(ReadOnlyError):
                await pipe.execute()
        await client.execute_command("REPLICAOF", "NO", "ONE")  # promoted: writes again
        assert await client.client_id() != before  # a new connection
        assert await client.set("k", "v") and await client.get("k") == b"v"
    finally:
        await client.aclose()
        proc.terminate()
        await proc.wait()


async def _pings(client: aioredis.Redis) -> bool:
    try:
        return bool(await client.ping())
    except RedisConnectionError:
        return False


@contextlib.contextmanager
def late_reply(
    match: bytes | Callable[[bytes], bool], stall_s: float = 2.5
) -> Iterator[dict[str, int]]:
    """The first request over FastRedis's connection whose packed commands hold
    ``match`` (or satisfy it) reaches Redis behind a script that keeps Redis busy
    ``stall_s`` seconds,
    on the same connection: Redis has read the request and runs it after the script,
    but its reply comes after the client's socket timeout. What any slow command ahead
    of it on the shared connection does. ``sent`` counts the requests holding
    ``match`` (a request sent again after the timeout is one more)."""
    busy = hiredis.pack_command((
        "EVAL", "local t0 = redis.call('TIME') repeat local t = redis.call('TIME') "
        f"until (t[1] - t0[1]) * 1e6 + (t[2] - t0[2]) > {int(stall_s * 1e6)} return 0", "0",
    ))  # fmt: skip
    real = fastredis._Wire.call
    state = {"sent": 0}

    matches = match if callable(match) else (lambda payload: match in payload)

    async def call(self: Any, payload: bytes, n: int) -> list[Any]:
        if matches(payload):
            state["sent"] += 1
            if state["sent"] == 1:
                return (await real(self, busy + payload, n + 1))[1:]
        return await real(self, payload, n)

    fastredis._Wire.call = call  # type: ignore[method-assign]
    try:
        yield state
    finally:
        fastredis._Wire.call = real  # type: ignore[method-assign]


def _impatient(settings: Settings, retries: int = 3) -> FastRedis:
    """A client that gives up on a reply after 0.5 s (and tries ``retries`` times more)."""
    return FastRedis.from_url(
        settings.redis_url, socket_timeout=0.5, retry=Retry(NoBackoff(), retries)
    )


async def test_a_command_that_may_have_run_is_not_sent_again_after_a_late_reply(
    settings: Settings, plain: aioredis.Redis
) -> None:
    """Audit finding: a reply later than the socket timeout made FastRedis send the
    whole request again on a fresh connection, and Redis ran it twice (it had read the
    first one): ``INCR`` counted two, ``SPOP`` took two sets of members (the first
    set's reply lost), a count script lowered the counts twice, an inbox's ack script
    ran twice. A request that was written is now sent again only if every command in
    it may run twice; else the timeout is raised and the caller decides."""
    key = f"{settings.redis_prefix}:late:incr"
    r = _impatient(settings)
    try:
        with late_reply(key.encode()) as state, pytest.raises(RedisTimeoutError):
            await r.incr(key)
        assert state["sent"] == 1
        assert await plain.get(key) == b"1"  # it ran, once (after the busy script)
        async with r.pipeline(transaction=False) as pipe:
            pipe.incr(key)
            pipe.get(key)
            with late_reply(key.encode()) as state, pytest.raises(RedisTimeoutError):
                await pipe.execute()
        assert state["sent"] == 1 and await plain.get(key) == b"2"
    finally:
        await r.aclose()


async def test_a_read_or_a_request_marked_safe_is_sent_again_after_a_late_reply(
    settings: Settings, plain: aioredis.Redis
) -> None:
    """What may run twice is still sent again, as redis-py does: reads, and a pipeline
    its caller marked (``may_run_twice``: a script that remembers what a call did)."""
    key = f"{settings.redis_prefix}:late:read"
    await plain.set(key, "v")
    r = _impatient(settings, retries=10)
    try:
        with late_reply(key.encode()) as state:
            assert await r.get(key) == b"v"
        assert state["sent"] >= 2
        async with r.pipeline(transaction=False) as pipe:
            pipe.hmget(f"{key}:h", ["a"])
            pipe.mget([key])
            with late_reply(key.encode()) as state:
                assert await pipe.execute() == [[None], [b"v"]]
        assert state["sent"] >= 2
        async with r.pipeline(transaction=False) as pipe:
            may_run_twice(pipe)
            pipe.set(key, "w")
            with late_reply(key.encode()) as state:
                assert await pipe.execute() == [True]
        assert state["sent"] >= 2 and await plain.get(key) == b"w"
    finally:
        await r.aclose()


async def test_a_write_whose_connection_is_killed_as_it_runs_is_not_sent_again(
    settings: Settings, plain: aioredis.Redis
) -> None:
    """Audit finding: an ``INCR`` written to an idle shared connection that Redis ran and
    then closed before the reply went out (``CLIENT KILL`` as an operator, Sentinel's
    failover or client eviction do) was taken for never run and sent again: the
    counter was raised twice (35-56 of 300 such races), and a failed login took two
    places of the lockout. Now the error reaches the caller; the command ran at most
    once."""
    fast = redis_client(settings)
    prefix = f"{settings.redis_prefix}:killed:{uuid.uuid4().hex}"
    ran_twice: list[str] = []
    try:
        host, port = settings.redis_url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
        for i in range(200):
            await fast.ping()  # the shared connection up and idle
            cid = await fast.client_id()
            _reader, writer = await asyncio.open_connection(host, int(port))
            key = f"{prefix}:{i}"
            task = asyncio.ensure_future(fast.incr(key))
            await asyncio.sleep(0)  # the INCR is written
            writer.write(f"CLIENT KILL ID {cid}\r\n".encode())
            await writer.drain()
            with contextlib.suppress(RedisConnectionError):
                got = await task
                assert got == 1
            if int(await plain.get(key) or 0) > 1:
                ran_twice.append(key)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
    finally:
        await fast.aclose()
    assert ran_twice == []
