"""The shared rate limiter: fixed windows, lockouts and token buckets in the real Redis,
and the in-process token bucket."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable

import pytest

from services.common.clients import redis_client
from services.common.config import Settings
from services.common.errors import ApiError
from services.common.ratelimit import Limit, RateLimiter, TokenBucket, too_many
from tests.support.aio import eventually


@pytest.fixture
async def limiter(settings: Settings) -> AsyncIterator[RateLimiter]:
    redis = redis_client(settings)
    limits = {"login": Limit(3, 60), "failures": Limit(2, 60)}
    yield RateLimiter(redis, f"{settings.redis_prefix}:svc", limits.__getitem__)
    await redis.aclose()


async def refused(call: Awaitable[None]) -> ApiError:
    with pytest.raises(ApiError) as info:
        await call
    return info.value


def test_limits_are_written_count_slash_seconds() -> None:
    assert Limit.parse("30/300") == Limit(30, 300)
    for bad in ("0/10", "10/0", "10", "a/b", "1/2/3", "-1/5", "10 / 5"):
        with pytest.raises(ValueError):
            Limit.parse(bad)


def test_a_refusal_says_when_to_come_back() -> None:
    err = too_many(2.1)
    assert (err.status, err.code.value, err.headers["Retry-After"]) == (429, "rate_limited", "3")
    assert err.details == {"retry_after": 3}
    assert too_many(0).headers["Retry-After"] == "1"  # never "come back in 0 s"


async def test_a_window_refuses_the_attempt_over_the_limit(limiter: RateLimiter) -> None:
    for _ in range(3):
        await limiter.hit("login", "10.0.0.1")
    err = await refused(limiter.hit("login", "10.0.0.1"))
    assert (err.status, err.code.value) == (429, "rate_limited")
    assert 1 <= int(err.headers["Retry-After"]) <= 60
    assert err.details == {"retry_after": int(err.headers["Retry-After"])}
    # Another ident has its own count, and a limit may be given per call.
    await limiter.hit("login", "10.0.0.2")
    await limiter.hit("other", "10.0.0.2", Limit(1, 60))
    await refused(limiter.hit("other", "10.0.0.2", Limit(1, 60)))


async def test_a_lockout_holds_until_cleared(limiter: RateLimiter) -> None:
    await limiter.reserve("failures", "alice")  # one failure of two: not yet
    await limiter.reserve("failures", "alice")
    err = await refused(limiter.reserve("failures", "alice"))
    assert (err.status, err.code.value) == (429, "account_locked")
    assert 1 <= err.details["retry_after"] <= 60
    assert err.details == {"retry_after": int(err.headers["Retry-After"])}
    await limiter.reserve("failures", "bob")
    await limiter.clear("failures", "alice")
    await limiter.reserve("failures", "alice")


async def test_a_released_place_is_given_back(limiter: RateLimiter) -> None:
    """An attempt that succeeded does not count as a failure."""
    await limiter.reserve("failures", "carol")
    await limiter.release("failures", "carol")
    await limiter.reserve("failures", "carol")
    await limiter.reserve("failures", "carol")
    await refused(limiter.reserve("failures", "carol"))
    # Never below zero: releasing more than was taken changes nothing.
    await limiter.release("failures", "dave")
    await limiter.release("failures", "dave")
    await limiter.reserve("failures", "dave")
    await limiter.reserve("failures", "dave")
    await refused(limiter.reserve("failures", "dave"))


async def test_concurrent_reservations_never_exceed_the_limit(limiter: RateLimiter) -> None:
    """Counted before the work, atomically: of 50 at once, exactly the limit go through."""

    async def attempt() -> bool:
        try:
            await limiter.reserve("failures", "erin", Limit(10, 60))
        except ApiError as exc:
            assert exc.code.value == "account_locked"
            return False
        return True

    results = await asyncio.gather(*(attempt() for _ in range(50)))
    assert results.count(True) == 10


async def test_keys_hold_no_ident_in_clear(limiter: RateLimiter, settings: Settings) -> None:
    await limiter.hit("login", "alice@example.com")
    keys = await limiter.redis.keys(f"{settings.redis_prefix}:svc:rl:login:*")
    assert len(keys) == 1 and b"alice" not in keys[0]


async def test_unknown_rules_are_a_programming_error(settings: Settings) -> None:
    redis = redis_client(settings)
    try:
        with pytest.raises(KeyError):
            await RateLimiter(redis, "x").hit("nothing", "a")
    finally:
        await redis.aclose()


async def test_a_bucket_spends_its_burst_then_refills(limiter: RateLimiter) -> None:
    for _ in range(3):
        await limiter.take("claims", "a->b", 3, 3600)
    err = await refused(limiter.take("claims", "a->b", 3, 3600, message="Slow down."))
    assert (err.code.value, err.message) == ("rate_limited", "Slow down.")
    assert 3000 < int(err.headers["Retry-After"]) <= 3600
    await limiter.take("claims", "a->c", 3, 3600)  # another bucket
    # A fast bucket is back within a fraction of a second.
    await limiter.take("fast", "x", 1, 0.2)
    await refused(limiter.take("fast", "x", 1, 0.2))

    async def again() -> bool:
        try:
            await limiter.take("fast", "x", 1, 0.2)
        except ApiError:
            return False
        return True

    await eventually(again, lambda ok: ok, timeout=5)


def test_the_in_process_bucket_spends_its_burst_then_refills() -> None:
    now = [100.0]
    bucket = TokenBucket(rate=2.0, burst=3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    now[0] += 0.25  # half a token back
    assert not bucket.take()
    now[0] += 0.25  # a whole one
    assert bucket.take()
    assert not bucket.take()
    now[0] += 3600  # never more than the burst
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]


async def test_refusals_and_lockouts_are_counted(settings: Settings) -> None:
    from prometheus_client import CollectorRegistry

    from services.common.ratelimit import RateLimitMetrics

    registry = CollectorRegistry()
    metrics = RateLimitMetrics(registry, "svc", ("login", "failures"))
    redis = redis_client(settings)
    limits = {"login": Limit(1, 60), "failures": Limit(2, 60)}
    limiter = RateLimiter(redis, f"{settings.redis_prefix}:m", limits.__getitem__, metrics)

    def value(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, {"service": "svc", **labels}) or 0.0

    try:
        # Created at zero, so that a dashboard shows 0 rather than nothing.
        assert (
            registry.get_sample_value(
                "parley_rate_limit_refusals_total",
                {"service": "svc", "rule": "failures", "code": "rate_limited"},
            )
            == 0.0
        )
        await limiter.hit("login", "ip")
        await refused(limiter.hit("login", "ip"))
        assert value("parley_rate_limit_refusals_total", rule="login", code="rate_limited") == 1
        await limiter.reserve("failures", "bob")
        assert value("parley_rate_limit_lockouts_total", rule="failures") == 0
        await limiter.reserve("failures", "bob")  # fills the window: may yet succeed
        assert value("parley_rate_limit_lockouts_total", rule="failures") == 0
        await refused(limiter.reserve("failures", "bob"))  # the lockout turns one away
        assert value("parley_rate_limit_lockouts_total", rule="failures") == 1
        await refused(limiter.reserve("failures", "bob"))  # the same lockout
        assert value("parley_rate_limit_lockouts_total", rule="failures") == 1
        assert (
            value("parley_rate_limit_refusals_total", rule="failures", code="account_locked") == 2
        )
        await limiter.take("bucket", "x", capacity=1, refill_s=60)
        await refused(limiter.take("bucket", "x", capacity=1, refill_s=60))
        assert value("parley_rate_limit_refusals_total", rule="bucket", code="rate_limited") == 1
    finally:
        await redis.aclose()
