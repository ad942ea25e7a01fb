"""The wait before a failed consumer starts again (services/common/clients.py Restarts),
shared by consume_forever and delivery's consumers."""

from __future__ import annotations

from typing import Any

import pytest

from services.common import clients
from services.common.clients import RAN_WELL_S, Restarts


async def test_the_wait_doubles_while_failing_and_resets_after_a_good_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    waits: list[float] = []

    async def sleep(delay: float, *args: Any) -> None:
        waits.append(delay)

    monkeypatch.setattr(clients.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(clients.asyncio, "sleep", sleep)
    restarts = Restarts()
    for _ in range(7):  # fails right after each start
        restarts.up()
        now[0] += 1
        await restarts.wait()
    assert waits == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    restarts.up()
    now[0] += RAN_WELL_S + 1  # then consumed for a while before failing
    await restarts.wait()
    await restarts.wait()  # failed before it was up again: no reset
    assert waits[7:] == [0.2, 0.4]
