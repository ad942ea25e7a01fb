"""Stopping a service's background tasks so that a stop always ends.

Python 3.11's ``asyncio.wait_for`` returns the inner result when the task
awaiting it is cancelled at the moment the inner awaitable completes
(gh-86296, fixed in 3.12): the cancellation is lost, and a ``while True``
loop that was in such a call (a Redis reconnect, an aiokafka request) goes
on as if it had never been cancelled. ``task.cancel()`` then ``gather`` waits
for it for ever: a stopping service hangs. :func:`cancel_all` cancels again,
every ``CANCEL_AGAIN_S``, until the tasks end.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)

CANCEL_AGAIN_S = 1.0
CANCEL_TRIES = 30


async def cancel_all(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until every one has ended, cancelling again those that
    go on (a lost cancellation); after ``CANCEL_TRIES`` rounds the rest are left
    running, logged. Their exceptions are retrieved (not raised)."""
    every = list(tasks)
    pending = {t for t in every if not t.done()}
    for _ in range(CANCEL_TRIES):
        if not pending:
            break
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=CANCEL_AGAIN_S)
    if pending:
        log.warning(
            "tasks still running after being cancelled",
            extra={"tasks": sorted(t.get_name() for t in pending)},
        )
    for task in every:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: a failed task's error was logged where it failed
