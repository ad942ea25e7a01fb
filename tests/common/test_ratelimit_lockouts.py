"""parley_rate_limit_lockouts_total counts the lockouts that start: a full failure window
turning its first attempt away, once per window, whichever replica saw it.

It counted the attempt that filled the window, before its outcome was known: a user's
last allowed attempt that then succeeded (and gave its place back) was a lockout too,
and ParleyLockoutSurge reads this counter.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from services.common.clients import redis_client
from services.common.config import Settings
from services.common.errors import ApiError, ErrorCode
from services.common.ratelimit import Limit, RateLimiter, RateLimitMetrics

RULES = ("failures", "removals")


class Replica:
    """One service replica's limiter and its own registry, on the shared Redis."""

    def __init__(self, limiter: RateLimiter, registry: CollectorRegistry) -> None:
        self.limiter = limiter
        self.registry = registry

    def lockouts(self, rule: str = "failures") -> float:
        value = self.registry.get_sample_value(
            "parley_rate_limit_lockouts_total", {"service": "auth", "rule": rule}
        )
        return value or 0.0

    def refusals(self, code: ErrorCode, rule: str = "failures") -> float:
        value = self.registry.get_sample_value(
            "parley_rate_limit_refusals_total",
            {"service": "auth", "rule": rule, "code": code.value},
        )
        return value or 0.0


@pytest.fixture
async def replicas(settings: Settings) -> AsyncIterator[tuple[Replica, Replica]]:
    redis = redis_client(settings)
    limits = {"failures": Limit(3, 60), "removals": Limit(2, 60)}
    made = []
    for _ in range(2):
        registry = CollectorRegistry()
        metrics = RateLimitMetrics(registry, "auth", RULES)
        limiter = RateLimiter(redis, f"{settings.redis_prefix}:lk", limits.__getitem__, metrics)
        made.append(Replica(limiter, registry))
    yield made[0], made[1]
    await redis.aclose()


async def locked_out(replica: Replica, ident: str) -> None:
    with pytest.raises(ApiError) as info:
        await replica.limiter.reserve("failures", ident)
    assert (info.value.status, info.value.code) == (429, ErrorCode.ACCOUNT_LOCKED)


async def test_a_last_allowed_attempt_that_succeeds_is_no_lockout(
    replicas: tuple[Replica, Replica],
) -> None:
    one, _ = replicas
    for _ in range(2):
        await one.limiter.reserve("failures", "alice")  # two wrong passwords: kept
    await one.limiter.reserve("failures", "alice")  # the last allowed attempt ...
    await one.limiter.release("failures", "alice")  # ... was right: its place back
    assert one.lockouts() == 0
    await one.limiter.reserve("failures", "alice")  # and the user is not locked out
    assert one.lockouts() == 0
    assert one.refusals(ErrorCode.ACCOUNT_LOCKED) == 0


async def test_a_lockout_is_counted_once_when_it_turns_an_attempt_away(
    replicas: tuple[Replica, Replica],
) -> None:
    one, two = replicas
    for _ in range(3):
        await one.limiter.reserve("failures", "bob")  # three failures keep their places
    assert one.lockouts() == 0  # nobody was refused yet
    await locked_out(one, "bob")
    assert one.lockouts() == 1
    # Further refusals, on this replica or another, are the same lockout.
    await locked_out(one, "bob")
    await locked_out(two, "bob")
    assert (one.lockouts(), two.lockouts()) == (1, 0)
    assert one.refusals(ErrorCode.ACCOUNT_LOCKED) + two.refusals(ErrorCode.ACCOUNT_LOCKED) == 3
    # The marker lives no longer than the window it belongs to.
    key = one.limiter.key("failures", "bob")
    redis = one.limiter.redis
    assert 0 < await redis.pttl(f"{key}:locked") <= await redis.pttl(key) + 1000


async def test_a_window_that_fills_again_is_a_new_lockout(
    replicas: tuple[Replica, Replica],
) -> None:
    one, two = replicas
    for _ in range(3):
        await one.limiter.reserve("failures", "carol")
    await locked_out(one, "carol")
    # A success elsewhere ends the run (clear): the next full window is a new lockout.
    await one.limiter.clear("failures", "carol")
    for _ in range(3):
        await one.limiter.reserve("failures", "carol")
    await locked_out(two, "carol")
    assert (one.lockouts(), two.lockouts()) == (1, 1)
    # A place given back (an attempt in flight succeeded) reopens the window, too.
    await one.limiter.release("failures", "carol")
    await one.limiter.reserve("failures", "carol")
    await locked_out(one, "carol")
    assert one.lockouts() + two.lockouts() == 3


async def test_a_burst_against_a_full_window_is_one_lockout(
    replicas: tuple[Replica, Replica],
) -> None:
    one, two = replicas

    async def attempt(replica: Replica) -> bool:
        try:
            await replica.limiter.reserve("failures", "dave", Limit(10, 60))
        except ApiError:
            return False
        return True

    results = await asyncio.gather(*(attempt((one, two)[i % 2]) for i in range(50)))
    assert results.count(True) == 10
    assert one.lockouts() + two.lockouts() == 1
    assert one.refusals(ErrorCode.ACCOUNT_LOCKED) + two.refusals(ErrorCode.ACCOUNT_LOCKED) == 40


async def test_request_limits_taking_places_count_no_lockout(
    replicas: tuple[Replica, Replica],
) -> None:
    one, _ = replicas
    await one.limiter.take_places("removals", "erin", 2)
    with pytest.raises(ApiError) as info:
        await one.limiter.take_places("removals", "erin", 1)
    assert info.value.code == ErrorCode.RATE_LIMITED
    assert one.lockouts("removals") == 0
    key = one.limiter.key("removals", "erin")
    assert await one.limiter.redis.exists(f"{key}:locked") == 0
