"""Retry with back-off: the delays, the reset, and what is (not) retried."""

from __future__ import annotations

import asyncio
import logging

import pytest

from services.common import retry as retry_mod
from services.common.retry import Backoff, retry


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the delays instead of sleeping them."""
    slept: list[float] = []

    async def fake_sleep(delay: float) -> None:
        slept.append(delay)

    monkeypatch.setattr(retry_mod.asyncio, "sleep", fake_sleep)
    return slept


async def test_delays_double_up_to_the_cap_and_reset(sleeps: list[float]) -> None:
    backoff = Backoff(0.2, 1.0)
    for _ in range(5):
        await backoff.sleep()
    assert sleeps == [0.2, 0.4, 0.8, 1.0, 1.0]
    backoff.reset()
    await backoff.sleep()
    assert sleeps[-1] == 0.2
    with pytest.raises(ValueError):
        Backoff(0, 1)
    with pytest.raises(ValueError):
        Backoff(2, 1)


async def test_work_is_retried_until_it_succeeds(
    sleeps: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 4:
            raise ConnectionError("not yet")
        return "done"

    with caplog.at_level(logging.WARNING):
        assert await retry(flaky, what="the thing") == "done"
    assert calls == 4
    assert sleeps == [0.2, 0.4, 0.8]
    assert [r.getMessage() for r in caplog.records] == ["the thing not ready, retrying"] * 3
    assert caplog.records[0].error == "ConnectionError('not yet')"  # type: ignore[attr-defined]


async def test_cancellation_goes_through() -> None:
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(retry(forever, what="x"))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
