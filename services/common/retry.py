"""Retry with back-off: the one way a service waits for a dependency.

``make run`` starts every process at once, and in production a service may
come up before MongoDB, Redis or Kafka answer, or lose one for a while. Code
that must wait calls :func:`retry` (one piece of work, tried until it
succeeds) or, for a loop that reconnects after running for a while, uses a
:class:`Backoff` and calls ``reset()`` once connected.

The delay starts at ``first`` seconds and doubles after every failure up to
``cap``: 0.2, 0.4, 0.8, 1.6, 3.2, 5, 5, ... by default. Cancellation always
goes through at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

FIRST_DELAY_S = 0.2
MAX_DELAY_S = 5.0

_log = logging.getLogger(__name__)


class Backoff:
    """Exponential back-off delays: ``await backoff.sleep()`` after each failure."""

    def __init__(self, first: float = FIRST_DELAY_S, cap: float = MAX_DELAY_S) -> None:
        if not 0 < first <= cap:
            raise ValueError("back-off needs 0 < first <= cap")
        self.first = first
        self.cap = cap
        self.delay = first

    async def sleep(self) -> None:
        """Wait the current delay, then double it (up to the cap)."""
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, self.cap)

    def reset(self) -> None:
        """Start again from the first delay (after a success)."""
        self.delay = self.first


async def retry(
    work: Callable[[], Awaitable[T]],
    *,
    what: str,
    first: float = FIRST_DELAY_S,
    cap: float = MAX_DELAY_S,
    log: logging.Logger | None = None,
) -> T:
    """Await ``work()`` until it returns; log each failure as a warning and back off.

    ``what`` names the work in the log line ("mongodb indexes", "kafka producer").
    Any ``Exception`` is retried; cancellation is not caught.
    """
    backoff = Backoff(first, cap)
    logger = log or _log
    while True:
        try:
            return await work()
        except Exception as exc:
            logger.warning(
                "%s not ready, retrying",
                what,
                extra={"what": what, "error": repr(exc), "retry_in_s": backoff.delay},
            )
            await backoff.sleep()
