"""Rate limits, the same for every service.

:class:`RateLimiter` counts in Redis, so every replica of a service shares the
limits. Keys are ``<namespace>:rl:<rule>:<ident>``, the ident hashed (keys
never hold an address, a username or an e-mail in clear). Two kinds of rule:

- **fixed windows** (a :class:`Limit`, ``COUNT/SECONDS``), two ways:

  - *request limits* (:meth:`RateLimiter.hit`): every attempt counts; the one
    over the limit gets 429 ``rate_limited``.
  - *failure lockouts* (:meth:`RateLimiter.reserve` before the work,
    :meth:`RateLimiter.release` or :meth:`RateLimiter.clear` when it
    succeeded): every attempt takes its place in the window atomically
    *before* the work runs, and keeps it if it fails. Once COUNT attempts are
    counted, every further one is refused with 429 ``account_locked`` until
    the window ends, so that guessing stops even with the right answer, and
    a burst of parallel guesses gets exactly COUNT tried, never more.

- **token buckets** (:meth:`RateLimiter.take`): ``capacity`` tokens, one back
  every ``refill_s`` seconds; each event takes one (``n`` at once: all or none) or gets 429
  ``rate_limited``. The same long-run rate as a window, without a double
  burst at a window's edge. The state uses the Redis server's clock, so that
  every replica agrees.

Every refusal answers ``Retry-After`` (whole seconds, at least 1) and
``details.retry_after`` (the same number) via :func:`too_many`.

:class:`TokenBucket` is the in-process bucket, for a limit that belongs to one
object in one process (the sends of one WebSocket).

With a :class:`RateLimitMetrics`, a limiter counts its refusals
(``parley_rate_limit_refusals_total{service,rule,code}``: ``rate_limited`` or
``account_locked``) and the lockouts it starts
(``parley_rate_limit_lockouts_total{service,rule}``: the first attempt a full
failure window refuses, once per window). Not the attempt that fills the window:
its outcome is not known yet, and if it succeeds it gives its place back and
nobody is locked out. A marker key beside the window's
(``<key>:locked``, expiring with it) says the lockout was counted; a place
given back (:meth:`RateLimiter.release`) or a cleared window ends it, so that
the window filling again counts a new one.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Counter

from services.common import scripts
from services.common.errors import ApiError, ErrorCode

_LIMIT = re.compile(r"^(\d{1,7})/(\d{1,7})$")


@dataclass(frozen=True, slots=True)
class Limit:
    """At most ``count`` events per ``window_s`` seconds."""

    count: int
    window_s: int

    @classmethod
    def parse(cls, text: str) -> Limit:
        """``"COUNT/SECONDS"``, both at least 1 (the form of the ``PARLEY_LIMIT_*`` options)."""
        m = _LIMIT.match(text)
        if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
            raise ValueError("a limit is written COUNT/SECONDS, both at least 1")
        return cls(int(m.group(1)), int(m.group(2)))


def too_many(
    retry_after_s: float,
    code: ErrorCode = ErrorCode.RATE_LIMITED,
    message: str = "Too many requests; slow down.",
) -> ApiError:
    """The 429 for a refused event: ``Retry-After`` and ``details.retry_after`` (seconds)."""
    retry_after = max(1, math.ceil(retry_after_s))
    return ApiError(
        code,
        message,
        status=429,
        headers={"Retry-After": str(retry_after)},
        details={"retry_after": retry_after},
    )


# A token bucket per key: ``tokens`` and ``ts`` (ms, Redis server clock so
# that every replica agrees). Returns {allowed (0/1), ms until a token is back}.
_TOKEN_BUCKET = """
local capacity = tonumber(ARGV[1])
local refill_ms = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = capacity
  ts = now
end
if now > ts then
  tokens = math.min(capacity, tokens + (now - ts) / refill_ms)
  ts = now
end
local n = tonumber(ARGV[3] or '1')
local allowed = 0
local wait = 0
if tokens >= n then
  tokens = tokens - n
  allowed = 1
else
  wait = math.ceil((n - tokens) * refill_ms)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(ts))
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity * refill_ms) + 1000)
return {allowed, wait}
"""


# A window: take ARGV[3] places unless that makes more than COUNT. Returns
# {allowed (0/1), seconds left in the window, places taken, first refusal (0/1)}.
# With KEYS[2] (a failure lockout's marker), a refusal sets it for the rest of the
# window: "first refusal" is 1 only for the refusal that set it (a lockout starts).
_RESERVE = """
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
local n = tonumber(ARGV[3])
if count + n > tonumber(ARGV[1]) then
  local first = 0
  if KEYS[2] then
    local ms = redis.call('PTTL', KEYS[1])
    if ms <= 0 then
      ms = tonumber(ARGV[2]) * 1000
    end
    if redis.call('SET', KEYS[2], '1', 'PX', ms, 'NX') then
      first = 1
    end
  end
  return {0, redis.call('TTL', KEYS[1]), count, first}
end
count = redis.call('INCRBY', KEYS[1], n)
local ttl = redis.call('TTL', KEYS[1])
if ttl < 0 then
  ttl = tonumber(ARGV[2])
  redis.call('EXPIRE', KEYS[1], ttl)
end
return {1, ttl, count, 0}
"""

# Give ARGV[1] places back (never below zero; the window's expiry is kept). The
# window is not full any more: a lockout (KEYS[2], its marker) is over.
_RELEASE = """
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
if count <= tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[1])
else
  redis.call('DECRBY', KEYS[1], ARGV[1])
end
redis.call('DEL', KEYS[2])
return 0
"""


class RateLimitMetrics:
    """The counters of one service's limiters; ``rules`` are created at zero."""

    def __init__(
        self, registry: CollectorRegistry, service: str, rules: tuple[str, ...] = ()
    ) -> None:
        self.service = service
        self.refusals = Counter(
            "parley_rate_limit_refusals_total",
            "Requests refused by a rate limit (rate_limited) or a lockout (account_locked).",
            ["service", "rule", "code"], registry=registry,
        )  # fmt: skip
        self.lockouts = Counter(
            "parley_rate_limit_lockouts_total",
            "Lockouts started: a full failure window (login, code entry, token "
            "requests) refused its first attempt.",
            ["service", "rule"], registry=registry,
        )  # fmt: skip
        for rule in rules:
            self.refusals.labels(service, rule, ErrorCode.RATE_LIMITED.value)
            self.lockouts.labels(service, rule)

    def refused(self, rule: str, code: ErrorCode) -> None:
        self.refusals.labels(self.service, rule, code.value).inc()

    def locked(self, rule: str) -> None:
        self.lockouts.labels(self.service, rule).inc()


def _no_rules(rule: str) -> Limit:
    raise KeyError(f"no limit configured for rule {rule!r}")


class RateLimiter:
    """Limits counted in Redis under ``<namespace>:rl:``; safe to share across requests.

    ``limits`` maps a rule name to its window limit (a service's configuration);
    a call may also pass the ``limit`` itself.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        namespace: str,
        limits: Callable[[str], Limit] = _no_rules,
        metrics: RateLimitMetrics | None = None,
    ) -> None:
        self.redis = redis
        self.metrics = metrics
        self.prefix = f"{namespace}:rl"
        self.limits = limits
        self._bucket = scripts.register(redis, _TOKEN_BUCKET)
        self._reserve = redis.register_script(_RESERVE)
        self._release = redis.register_script(_RELEASE)

    def key(self, rule: str, ident: str) -> str:
        digest = hashlib.sha256(ident.encode()).hexdigest()[:32]
        return f"{self.prefix}:{rule}:{digest}"

    @staticmethod
    def _locked(key: str) -> str:
        """The marker of a lockout counted in ``key``'s window (see _RESERVE)."""
        return f"{key}:locked"

    # Fixed windows.

    async def _count(self, key: str, window_s: int) -> tuple[int, int]:
        """Count one event in a fixed window: (events so far, seconds left)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, window_s, nx=True)
            pipe.ttl(key)
            count, _, ttl = await pipe.execute()
        return int(count), int(ttl) if int(ttl) > 0 else window_s

    async def count(self, rule: str, ident: str, limit: Limit | None = None) -> tuple[int, int]:
        """Count an event in ``ident``'s window, refusing nothing: (events in the
        window so far, this one included; seconds until the window ends)."""
        limit = limit or self.limits(rule)
        return await self._count(self.key(rule, ident), limit.window_s)

    async def hit(self, rule: str, ident: str, limit: Limit | None = None) -> None:
        """Count an attempt; raise 429 ``rate_limited`` if it is over the limit."""
        limit = limit or self.limits(rule)
        count, ttl = await self.count(rule, ident, limit)
        if count > limit.count:
            self.refused(rule, ErrorCode.RATE_LIMITED)
            raise too_many(ttl)

    async def check(self, rule: str, ident: str, limit: Limit | None = None) -> None:
        """Raise 429 ``rate_limited`` if ``ident``'s window is full already, counting
        nothing: for a request whose checks cost other services' time, refused before
        them, and counted (:meth:`hit`) only once they pass."""
        limit = limit or self.limits(rule)
        key = self.key(rule, ident)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(key)
            pipe.ttl(key)
            count, ttl = await pipe.execute()
        if count is not None and int(count) >= limit.count:
            self.refused(rule, ErrorCode.RATE_LIMITED)
            raise too_many(int(ttl) if int(ttl) > 0 else limit.window_s)

    async def reserve(self, rule: str, ident: str, limit: Limit | None = None) -> None:
        """Take a place for one attempt in ``ident``'s window *before* making it.

        Atomic (one script): of any number of concurrent calls, at most the
        limit's COUNT get a place; the others get 429 ``account_locked``. A
        failed attempt keeps its place (it is the failure count); one that
        succeeded gives it back with :meth:`release` or :meth:`clear`.

        A lockout is counted when the full window refuses its first attempt, not
        when an attempt fills it: that one may yet succeed and give its place back.
        """
        limit = limit or self.limits(rule)
        key = self.key(rule, ident)
        allowed, ttl, _, first = await self._reserve(
            keys=[key, self._locked(key)], args=[limit.count, limit.window_s, 1]
        )
        if not allowed:
            if int(first) and self.metrics is not None:
                self.metrics.locked(rule)
            self.refused(rule, ErrorCode.ACCOUNT_LOCKED)
            raise too_many(
                max(int(ttl), 0) or limit.window_s,
                ErrorCode.ACCOUNT_LOCKED,
                "Too many failed attempts; try again later.",
            )

    async def take_places(
        self,
        rule: str,
        ident: str,
        n: int,
        limit: Limit | None = None,
        message: str = "Too many requests; slow down.",
    ) -> None:
        """Count ``n`` events in ``ident``'s window at once, all of them if they fit,
        else none and 429 ``rate_limited``: for a request that is several events (a
        list removing several devices), refused before it is made. :meth:`release`
        gives them back if it is not made after all."""
        limit = limit or self.limits(rule)
        allowed, ttl, _, _ = await self._reserve(
            keys=[self.key(rule, ident)], args=[limit.count, limit.window_s, n]
        )
        if not allowed:
            self.refused(rule, ErrorCode.RATE_LIMITED)
            raise too_many(max(int(ttl), 0) or limit.window_s, message=message)

    async def release(self, rule: str, ident: str, n: int = 1) -> None:
        """Give back ``n`` places taken by :meth:`reserve` (the attempt did not fail) or
        :meth:`take_places` (the request was not made)."""
        key = self.key(rule, ident)
        await self._release(keys=[key, self._locked(key)], args=[n])

    async def clear(self, rule: str, ident: str) -> None:
        """Forget ``ident``'s count (a success ends a run of failures)."""
        key = self.key(rule, ident)
        await self.redis.delete(key, self._locked(key))

    # Token buckets.

    async def take(
        self,
        rule: str,
        ident: str,
        capacity: int,
        refill_s: float,
        message: str = "Too many requests; slow down.",
        n: int = 1,
    ) -> None:
        """Take ``n`` tokens from ``ident``'s bucket (all or none), or raise 429
        ``rate_limited``."""
        wait_s = await self._take(rule, ident, capacity, refill_s, n)
        if wait_s is not None:
            self.refused(rule, ErrorCode.RATE_LIMITED)
            raise too_many(wait_s, message=message)

    async def _take(
        self, rule: str, ident: str, capacity: int, refill_s: float, n: int = 1
    ) -> float | None:
        """None when ``n`` tokens were taken, else the seconds until there are ``n``."""
        refill_ms = max(1, round(refill_s * 1000))
        allowed, wait_ms = await self._bucket(
            keys=[self.key(rule, ident)], args=[capacity, refill_ms, n]
        )
        return None if allowed else int(wait_ms) / 1000

    async def take_each(
        self, rule: str, idents: Sequence[str], capacity: int, refill_s: float,
        *, count_refused: bool = True,
    ) -> list[float | None]:  # fmt: skip
        """A token from each of these buckets, in one round trip (one pipeline of the
        script): for each, None when it was taken, else the seconds until there is
        one (nothing taken; the caller answers for it). ``count_refused``: as
        :meth:`take` (a refusal), else not counted (a budget that only withholds)."""
        if not idents:
            return []
        refill_ms = max(1, round(refill_s * 1000))
        async with self.redis.pipeline(transaction=False) as pipe:
            for ident in idents:
                await scripts.queue(pipe, self._bucket, [self.key(rule, ident)],
                                    [capacity, refill_ms, 1])  # fmt: skip
            rows = await pipe.execute()
        out: list[float | None] = []
        for allowed, wait_ms in rows:
            if allowed:
                out.append(None)
            else:
                if count_refused:
                    self.refused(rule, ErrorCode.RATE_LIMITED)
                out.append(int(wait_ms) / 1000)
        return out

    def refused(self, rule: str, code: ErrorCode = ErrorCode.RATE_LIMITED) -> None:
        if self.metrics is not None:
            self.metrics.refused(rule, code)


class TokenBucket:
    """An in-process token bucket: ``burst`` tokens, ``rate`` tokens back per second."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.clock = clock
        self.stamp = clock()

    def full(self) -> bool:
        """Whether every token is back (a new bucket would allow the same)."""
        return self.tokens + (self.clock() - self.stamp) * self.rate >= self.burst

    def take(self) -> bool:
        """Take a token if there is one; False (and nothing taken) if not."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False
