"""redis-py's client with its commands sent over one pipelined hiredis connection.

redis-py spends about 10 µs of Python on every command in a pipeline (coredis
about 13): each reply is read by a coroutine of its own through the
connection's parser, under the retry wrapper and the observability hooks. A
room message to 1,000 members is several commands per member, and a 1:1
message about thirty in all, so that cost was most of delivery's CPU
(docs/BENCHMARKS.md, "A thinner Redis client"). The same commands packed by
``hiredis.pack_command`` and their replies parsed by one ``hiredis.Reader``
in a bare asyncio protocol cost about 0.5 µs each
(``loadtest/bench_redis_client.py``).

:class:`FastRedis` *is* a ``redis.asyncio.Redis``: every command method,
response callback and exception class is redis-py's. What changes is how
plain commands and non-transactional pipelines reach the server: over one
connection that every caller of the client shares. Redis answers a
connection's commands in order, so a queue of waiters is the whole
protocol: a call writes its packed commands and waits for as many replies.
Like redis-py's connections, the connection is made on first use,
authenticates and selects the database from the URL, loads the Lua scripts
(``services.common.scripts``), gives up when it owes a reply and has said
nothing for ``socket_timeout`` (one to two timeouts: one timer per
connection) and is made again after an error (the client's ``retry``).

**A request that may have run is not sent again.** After a connection error or
a timeout a request is sent again on a fresh connection only if it was never
written to a connection (a request written to an idle one that then closed
without a byte is not: the server may have closed it before reading it, a
restart, or run it and been told to close it before answering, ``CLIENT
KILL``; until 2026-12-08 it was sent again, and a raced ``INCR`` counted two),
or if every command in it is safe to run twice (:func:`idempotent`:
reads, ``SCRIPT LOAD``, scripts registered with :func:`idempotent_script`, or a
pipeline its caller marked with :func:`may_run_twice`).
Anything else raises the error: a late reply (a slow command ahead of it on the
shared connection) does not mean the commands did not run, and running them
again took a set's members twice (``SPOP``), applied counts twice, or ran an
inbox's ack script a second time, which found the range acknowledged and left
its persisted copies in MongoDB (docs/delivery.md, "Acks"). The caller's own
retry decides, knowing what its commands do.

Through redis-py as before: transactions (``MULTI``), pub/sub, blocking
commands and anything that changes a connection's state (``SELECT``,
``WATCH``, ...), and every command when the URL is not plain TCP or a Unix
socket with RESP2 (TLS, RESP3, a credential provider).
"""

from __future__ import annotations

import asyncio
import copy
import inspect
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis._parsers.base import BaseParser
from redis._parsers.response_callbacks import get_response_callbacks
from redis.asyncio.connection import Connection, UnixDomainSocketConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.client import EMPTY_RESPONSE, NEVER_DECODE
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.common import scripts

# Never over the shared connection: they block it, or change its state for
# every other caller.
_OWN_CONNECTION = frozenset({
    "AUTH", "BLMOVE", "BLMPOP", "BLPOP", "BRPOP", "BRPOPLPUSH", "BZMPOP", "BZPOPMAX",
    "BZPOPMIN", "CLIENT PAUSE", "CLIENT REPLY", "DISCARD", "EXEC", "HELLO", "MONITOR",
    "MULTI", "PSUBSCRIBE", "QUIT", "RESET", "SELECT", "SSUBSCRIBE", "SUBSCRIBE", "SWAPDB",
    "UNWATCH", "WAIT", "WAITAOF", "WATCH", "XREAD", "XREADGROUP",
})  # fmt: skip


# Commands that change nothing: sent again after a connection error, as redis-py does.
_READS = frozenset({
    "BITCOUNT", "CLIENT ID", "CLIENT INFO", "DBSIZE", "ECHO", "EXISTS", "GET", "GETRANGE",
    "HEXISTS", "HGET", "HGETALL", "HKEYS", "HLEN", "HMGET", "HSCAN", "HSTRLEN", "HVALS",
    "INFO", "KEYS", "LINDEX", "LLEN", "LRANGE", "MGET", "PFCOUNT", "PING", "PTTL",
    "PUBSUB CHANNELS", "PUBSUB NUMSUB", "SCAN", "SCARD", "SCRIPT EXISTS", "SCRIPT LOAD",
    "SISMEMBER", "SMEMBERS", "SMISMEMBER", "SRANDMEMBER", "SSCAN", "STRLEN", "TIME", "TTL",
    "TYPE", "XLEN", "XRANGE", "XREVRANGE", "ZCARD", "ZCOUNT", "ZRANGE", "ZRANGEBYSCORE",
    "ZRANK", "ZREVRANGE", "ZREVRANGEBYSCORE", "ZREVRANK", "ZSCAN", "ZSCORE",
})  # fmt: skip

_IDEMPOTENT_SCRIPTS: set[str] = set()
"""SHAs of scripts that may run twice (:func:`idempotent_script`)."""


def idempotent_script(sha: str) -> None:
    """Say that the script ``sha`` (``EVALSHA``) may run twice with the same arguments:
    it reads only, or remembers what a call did (a token among its arguments)."""
    _IDEMPOTENT_SCRIPTS.add(sha.lower())


def may_run_twice(pipe: Any) -> None:
    """Mark a pipeline whose commands may all run twice (sent again after a connection
    error: :class:`FastPipeline`); harmless on any other pipeline."""
    pipe.idempotent = True


def idempotent(args: tuple[Any, ...]) -> bool:
    """Whether a command (its arguments, the name first) may run twice: a request made
    only of such commands is sent again after a connection error."""
    name = args[0]
    if isinstance(name, bytes):
        name = name.decode()
    name = str(name).upper()
    if name in _READS:
        return True
    if name in ("EVALSHA", "EVALSHA_RO") and len(args) > 1:
        sha = args[1].decode() if isinstance(args[1], bytes) else str(args[1])
        return sha.lower() in _IDEMPOTENT_SCRIPTS
    if name == "SCRIPT" and len(args) > 1:  # ("SCRIPT", "LOAD", ...) as two words
        return idempotent((f"SCRIPT {args[1]!s}", *args[2:]))
    return False


class _ReplyError(Exception):
    """An error reply, as hiredis hands it over (turned into redis-py's class)."""

    readonly = 0
    """``READONLY`` answers made so far (a replica: the connection is dropped), counted
    as they are parsed, so a call needs no look through its replies."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        if message.startswith("READONLY"):
            _ReplyError.readonly += 1


class _Waiter:
    __slots__ = ("fut", "left", "replies")

    def __init__(self, fut: asyncio.Future[list[Any]], left: int) -> None:
        self.fut = fut
        self.left = left
        self.replies: list[Any] = []


class _Wire(asyncio.Protocol):
    """One connection: packed commands out, replies to their waiters in order.

    ``timeout`` is redis-py's ``socket_timeout``: how long the connection may
    owe a reply without sending anything (a long pipeline that keeps answering
    does not time out). One timer per connection, not per call.
    """

    def __init__(self, timeout: float | None) -> None:
        self.reader = hiredis.Reader(replyError=_ReplyError)
        self.waiting: deque[_Waiter] = deque()
        self.transport: asyncio.Transport | None = None
        self.error: Exception | None = None  # set once the connection is unusable
        self.timeout = timeout
        self.heard = 0.0  # when the connection last answered (or started to owe)
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.heard = -1.0  # "now", read by the timer only when it fires
        self.reader.feed(data)
        waiting = self.waiting
        gets = self.reader.gets
        try:
            while waiting:
                w = waiting[0]
                replies = w.replies
                while w.left:
                    reply = gets()
                    if reply is False:
                        return
                    replies.append(reply)
                    w.left -= 1
                waiting.popleft()
                if not w.fut.done():  # a caller that was cancelled: its replies are dropped
                    w.fut.set_result(replies)
        except hiredis.ProtocolError as exc:
            self.fail(RedisConnectionError(f"Redis protocol error: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError(f"Connection to Redis lost: {exc or 'closed'}"))

    def fail(self, error: Exception) -> None:
        """Make the connection unusable: every waiter gets ``error``."""
        if self.error is None:
            self.error = error
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        while self.waiting:
            w = self.waiting.popleft()
            if not w.fut.done():
                w.fut.set_exception(error)
        if self.transport is not None:
            self.transport.abort()

    def _watch(self) -> None:
        """The timer: fail the connection if it owed a reply and said nothing for
        ``timeout``; else look again ``timeout`` after it last spoke."""
        self.timer = None
        if not self.waiting or self.error is not None or not self.timeout:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self.heard < 0:  # data came since the last look
            self.heard = now
        if now - self.heard >= self.timeout:
            self.fail(RedisTimeoutError("Timeout reading from Redis"))
        else:
            self.timer = loop.call_at(self.heard + self.timeout, self._watch)

    async def call(self, payload: bytes, n: int) -> list[Any]:
        if self.error is not None:
            raise self.error
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[Any]] = loop.create_future()
        if not self.waiting:
            self.heard = -1.0  # owing starts now
        self.waiting.append(_Waiter(fut, n))
        self.transport.write(payload)
        if self.timer is None and self.timeout:
            self.timer = loop.call_later(self.timeout, self._watch)
        return await fut


def _error(reply: _ReplyError) -> Exception:
    """redis-py's exception for an error reply (``NoScriptError`` for ``NOSCRIPT``, ...)."""
    return BaseParser.parse_error(str(reply))  # type: ignore[no-untyped-call,no-any-return]


def _pack(args: tuple[Any, ...]) -> bytes:
    name = args[0]
    if isinstance(name, str) and " " in name:  # "SCRIPT LOAD", as redis-py splits it
        args = (*name.split(), *args[1:])
    return hiredis.pack_command(args)  # type: ignore[no-any-return]


class FastRedis(aioredis.Redis):
    """``redis.asyncio.Redis`` with plain commands and non-transactional pipelines
    over one shared pipelined connection (see the module's docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        pool = self.connection_pool
        kw = pool.connection_kwargs
        self._fast = (
            pool.connection_class in (Connection, UnixDomainSocketConnection)
            and str(kw.get("protocol") or 2) == "2"
            and kw.get("legacy_responses", True)
            and kw.get("credential_provider") is None
        )
        # The shared connection speaks RESP2 (no HELLO); redis-py's own connections
        # speak RESP3 and turn the replies into these shapes.
        self._callbacks = {k.upper(): v for k, v in get_response_callbacks(2, True).items()}
        self._timeout: float | None = kw.get("socket_timeout")
        self._connect_timeout: float | None = kw.get("socket_connect_timeout")
        retry = copy.deepcopy(kw.get("retry") or Retry(NoBackoff(), 0))
        retry.update_supported_errors([RedisConnectionError, RedisTimeoutError])
        self._retry: Retry = retry
        self._wire: _Wire | None = None
        self._wire_loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None  # one connection made at a time
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    # The connection ----------------------------------------------------------------
    async def _connect(self) -> _Wire:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        async with self._lock:
            current = self._wire
            if current is not None and current.error is None and self._wire_loop is loop:
                return current
            self._drop()
            kw = self.connection_pool.connection_kwargs
            timeout = self._timeout
            try:
                if kw.get("path"):
                    made = loop.create_unix_connection(lambda: _Wire(timeout), kw["path"])
                else:
                    made = loop.create_connection(
                        lambda: _Wire(timeout),
                        kw.get("host") or "localhost",
                        int(kw.get("port") or 6379),
                    )
                _, wire = await asyncio.wait_for(made, self._connect_timeout)
            except (OSError, TimeoutError) as exc:
                raise RedisConnectionError(f"Error connecting to Redis: {exc!r}") from exc
            hello: list[tuple[Any, ...]] = []
            if kw.get("password"):
                user = kw.get("username")
                hello.append(("AUTH", user, kw["password"]) if user else ("AUTH", kw["password"]))
            if int(kw.get("db") or 0):
                hello.append(("SELECT", int(kw["db"])))
            hello += [("SCRIPT", "LOAD", text) for text in scripts.texts()]
            if hello:
                try:
                    replies = await wire.call(b"".join(_pack(c) for c in hello), len(hello))
                except BaseException:
                    wire.fail(RedisConnectionError("Redis handshake failed"))
                    raise
                for reply in replies:
                    if isinstance(reply, _ReplyError):
                        wire.fail(RedisConnectionError("Redis handshake failed"))
                        raise _error(reply)
            self._wire, self._wire_loop = wire, loop
            return wire

    def _drop(self) -> None:
        wire, self._wire = self._wire, None
        if wire is not None and wire.error is None:
            wire.fail(RedisConnectionError("Redis connection closed"))

    async def _call(
        self, payload: bytes, n: int, again: Callable[[], bool] = lambda: False
    ) -> list[Any]:
        """Send ``n`` packed commands, return their ``n`` raw replies.

        After a connection error or a timeout they are sent again on a fresh
        connection (as redis-py does) only if they were never written to one, or
        ``again()`` (every command may run twice: :func:`idempotent`, asked only
        then); else the error is raised: the commands may have run, and running
        them twice is the caller's decision. That holds for a request written to an
        idle connection that closed without a byte back too: the server may have
        closed it before reading it (a restart), or run it and been told to close
        it before the reply went out (``CLIENT KILL``, a failover's kill, client
        eviction). Until 2026-12-08 such a request was taken for never run and
        sent again, and Redis ran it twice (a counter raised twice, a failed login
        taking two places of the lockout)."""
        written = False

        async def attempt() -> list[Any]:
            nonlocal written
            written = False
            wire = self._wire
            if (
                wire is None
                or wire.error is not None
                or self._wire_loop is not (asyncio.get_running_loop())
            ):
                wire = await self._connect()
            seen = _ReplyError.readonly
            if wire.error is not None:  # lost while connecting: nothing written
                raise wire.error
            written = True
            replies = await wire.call(payload, n)
            if _ReplyError.readonly != seen:
                # A replica: the primary this was (a failover demoted it, and the
                # endpoint's name now leads to the new one). Made again by the next
                # call, as redis-py's own connections are not: kept, every write
                # would be refused until the process restarts.
                if self._wire is wire:
                    self._drop()
            return replies

        async def failed(_: Exception) -> None:
            self._drop()

        def retryable(_: Exception) -> bool:
            return not written or again()

        try:
            return await attempt()
        except (RedisConnectionError, RedisTimeoutError):
            self._drop()
            if not retryable(RedisConnectionError()):
                raise
        return await self._retry.call_with_retry(attempt, failed, retryable)

    def _parse(self, name: Any, reply: Any, options: Mapping[str, Any]) -> Any:
        """A raw reply as redis-py's client returns it (an error reply: the
        exception, not raised)."""
        if isinstance(reply, _ReplyError):
            if EMPTY_RESPONSE in options:
                return options[EMPTY_RESPONSE]
            return _error(reply)
        callback = self._callbacks.get(name)
        if callback is None and isinstance(name, str):
            callback = self._callbacks.get(name.upper())
        if callback is None:
            return reply
        if options:
            options = {k: v for k, v in options.items()
                       if k not in (EMPTY_RESPONSE, NEVER_DECODE, "keys")}  # fmt: skip
        return callback(reply, **options)

    # redis-py's entry points ---------------------------------------------------------
    async def execute_command(self, *args: Any, **options: Any) -> Any:
        if not self._fast or args[0] in _OWN_CONNECTION or self.single_connection_client:
            try:
                return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
            except ReadOnlyError:
                await _forget_replica(self.connection_pool)
                raise
        (reply,) = await self._call(_pack(args), 1, lambda: idempotent(args))
        result = self._parse(args[0], reply, options)
        if inspect.isawaitable(result):
            result = await result
        if isinstance(result, ResponseError):
            raise result
        return result

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        if transaction or not self._fast:
            return _PoolPipeline(
                self.connection_pool, self.response_callbacks, transaction, shard_hint
            )
        return FastPipeline(self, shard_hint)

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        self._drop()
        await super().aclose(close_connection_pool)


async def _forget_replica(pool: Any) -> None:
    """A ``READONLY`` answer over redis-py's pool (TLS, RESP3: every command on AWS):
    its connections lead to a replica, the primary a failover demoted. redis-py keeps
    them (an error reply is no connection error), and every write was refused until the
    process restarted; dropped, the next ones connect to where the endpoint leads now."""
    await pool.disconnect()


class _PoolPipeline(aioredis.client.Pipeline):
    """redis-py's pipeline, whose ``READONLY`` answers drop the pool's connections."""

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        try:
            out: list[Any] = await super().execute(raise_on_error)
        except ReadOnlyError:
            await _forget_replica(self.connection_pool)
            raise
        if any(isinstance(r, ReadOnlyError) for r in out):
            await _forget_replica(self.connection_pool)
        return out


class FastPipeline(aioredis.client.Pipeline):
    """A non-transactional pipeline whose commands go over :class:`FastRedis`'s
    connection in one write (queued with redis-py's command methods).

    Sent again after a connection error only if never written, or if every command
    may run twice (:func:`idempotent`), or if the caller set ``idempotent`` (for
    commands whose second run changes nothing, as a ``SET`` of the same value)."""

    def __init__(self, client: FastRedis, shard_hint: Any) -> None:
        super().__init__(client.connection_pool, client.response_callbacks, False, shard_hint)
        self._client = client
        self.idempotent = False

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if args[0] in _OWN_CONNECTION:
            raise NotImplementedError(f"{args[0]} in a non-transactional FastPipeline")
        return self.pipeline_execute_command(*args, **kwargs)  # type: ignore[no-untyped-call]

    async def reset(self) -> None:  # type: ignore[override]
        self.command_stack = []
        self.scripts = set()

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        stack = self.command_stack
        if not stack:
            return []
        try:
            if self.scripts:  # redis-py's Script objects called with client=pipe
                for s in self.scripts:
                    s.sha = await self._client.script_load(s.script)
            client = self._client
            replies = await client._call(
                b"".join([_pack(a) for a, _ in stack]),
                len(stack),
                lambda: self.idempotent or all(idempotent(a) for a, _ in stack),
            )
            out = []
            for (args, options), reply in zip(stack, replies, strict=True):
                result = client._parse(args[0], reply, options)
                out.append(await result if inspect.isawaitable(result) else result)
            if raise_on_error:
                self.raise_first_error(stack, out)
            return out
        finally:
            await self.reset()


__all__ = ["FastPipeline", "FastRedis", "idempotent", "idempotent_script", "may_run_twice"]
