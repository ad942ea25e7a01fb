"""The pod's one timer for every socket's token expiry (services/gateway/deadlines.py)."""

from __future__ import annotations

import asyncio
import time

from services.gateway.deadlines import Deadlines


class Clock:
    """Wall-clock seconds that the test moves; the event loop's timers still run."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


async def _until(fired: list[str], n: int) -> None:
    deadline = time.monotonic() + 5
    while len(fired) < n:
        assert time.monotonic() < deadline, fired
        await asyncio.sleep(0.01)


async def test_items_fire_at_their_second_in_order_and_a_discarded_one_never() -> None:
    clock = Clock()
    fired: list[str] = []
    deadlines: Deadlines[str] = Deadlines(fired.append, clock)
    deadlines.add("late", 1_000.2)  # rounded up: due at 1,001
    deadlines.add("early", 999.0)  # already due
    deadlines.add("gone", 1_000.5)
    deadlines.discard("gone", 1_000.5)
    await _until(fired, 1)
    assert fired == ["early"]
    clock.now = 1_001.0
    deadlines.add("sooner", 1_000.9)  # the same second as "late": no new timer needed
    await asyncio.sleep(1.2)  # the timer armed for 1,001 (a second of loop time away)
    assert sorted(fired) == ["early", "late", "sooner"]
    assert len(deadlines) == 0
    deadlines.close()


async def test_an_item_added_again_when_due_fires_at_its_new_second() -> None:
    clock = Clock()
    fired: list[str] = []

    def due(item: str) -> None:
        fired.append(item)
        if len(fired) == 1:
            deadlines.add(item, clock.now + 0.5)  # renewed meanwhile: due again later

    deadlines: Deadlines[str] = Deadlines(due, clock)
    deadlines.add("a", 1_000.0)
    deadlines.add("b", 1_003.0)  # the earliest after "a" comes back is still "a"'s
    await _until(fired, 1)
    clock.now = 1_001.0
    await _until(fired, 2)
    assert fired == ["a", "a"]
    assert len(deadlines) == 1
    deadlines.close()
    assert len(deadlines) == 0
