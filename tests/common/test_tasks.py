"""``cancel_all``: a stop ends even when a task loses its cancellation (Python 3.11's
``wait_for``, gh-86296), as a delivery app's teardown once waited for ever after
Redis came back."""

from __future__ import annotations

import asyncio

import pytest

from services.common import tasks
from services.common.tasks import cancel_all


async def test_a_task_that_lost_its_cancellation_is_cancelled_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tasks, "CANCEL_AGAIN_S", 0.05)
    cancels = 0

    async def loop_that_loses_one() -> None:
        nonlocal cancels
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancels += 1
                if cancels == 1:
                    continue  # what wait_for does when its inner call completes meanwhile
                raise

    async def fails() -> None:
        raise RuntimeError("failed before the stop")

    stubborn = asyncio.create_task(loop_that_loses_one())
    failed = asyncio.create_task(fails())
    plain = asyncio.create_task(asyncio.sleep(3600))
    await asyncio.sleep(0)
    # With cancel() and gather() this would wait for ever: the first cancel is lost.
    await asyncio.wait_for(cancel_all([stubborn, failed, plain]), 5)
    assert cancels == 2
    assert stubborn.cancelled() and plain.cancelled()
    assert isinstance(failed.exception(), RuntimeError)


async def test_a_task_that_never_ends_is_left_after_the_tries(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(tasks, "CANCEL_AGAIN_S", 0.01)
    monkeypatch.setattr(tasks, "CANCEL_TRIES", 3)
    release = asyncio.Event()

    async def deaf() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue

    task = asyncio.create_task(deaf(), name="deaf")
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_all([task]), 5)
    assert not task.done()
    assert any("still running" in r.getMessage() for r in caplog.records)
    release.set()
    task.cancel()  # wakes it: it sees the event and ends
    await asyncio.wait_for(task, 5)
