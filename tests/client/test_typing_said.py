"""The CLI's ``TypingSaid``: when a room chat says ``typing`` (docs/protocol.md)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from parley import cli_rooms


class _Rooms:
    def __init__(self, clock: list[float]) -> None:
        self.clock = clock
        self.said: list[tuple[float, bool]] = []

    async def typing(self, room_id: str, typing: bool) -> None:
        self.said.append((self.clock[0] - 100.0, typing))


async def test_no_start_within_two_seconds_of_the_last_even_after_a_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The gateway refuses a start less than ``TYPING_EVERY_S`` after the last start,
    a stop between or not (an error the chat would show); the CLI waits for it."""
    clock = [100.0]
    monkeypatch.setattr(cli_rooms.time, "monotonic", lambda: clock[0])
    rooms = _Rooms(clock)
    said = cli_rooms.TypingSaid(SimpleNamespace(rooms=rooms), "r" * 24)  # type: ignore[arg-type]

    async def at(t: float, action: Any) -> None:
        clock[0] = 100.0 + t
        action()
        await asyncio.sleep(0)

    await at(0.0, lambda: said.changed("h"))  # start
    await at(0.5, said.sent)  # stop
    await at(1.0, lambda: said.changed("n"))  # too soon after the start: nothing
    await at(2.0, lambda: said.changed("ne"))  # 2 s: the server's least, no margin yet
    await at(2.5, lambda: said.changed("nex"))  # start (2 s + the half second's margin)
    await at(3.0, lambda: said.changed("next"))  # still typing, said 0.5 s ago: nothing
    await at(5.5, lambda: said.changed("next "))  # start again (every 3 s)
    await at(6.0, said.sent)  # stop
    await asyncio.gather(*said.tasks)
    assert rooms.said == [(0.0, True), (0.5, False), (2.5, True), (5.5, True), (6.0, False)]
