"""The work a service finishes before it serves requests, done the same way everywhere.

A service that must prepare something in its dependencies before answering
(MongoDB indexes, the auth service's signing keys) registers that work with
:func:`services.common.deps.use_startup`. The process starts listening at
once; the work runs in the background and is retried with back-off
(:mod:`services.common.retry`) until MongoDB and the rest answer. Meanwhile:

- ``/readyz`` reports the ``startup`` check as failed (503);
- ``/healthz``, ``/startedz``, ``/readyz``, ``/metrics``, ``/openapi.json`` and ``/docs``
  answer as usual;
- every other request waits for the work, up to the dependency timeout
  (``PARLEY_DEPENDENCY_TIMEOUT_MS``), then gets 503 ``service_unavailable``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from services.common.errors import ApiError, ErrorCode
from services.common.retry import retry

log = logging.getLogger(__name__)

CHECK_NAME = "startup"


class Startup:
    """One service's start-up work, retried until done; ``done`` is set once it is."""

    def __init__(self, service: str, work: Callable[[], Awaitable[None]]) -> None:
        self.service = service
        self.work = work
        self.done = asyncio.Event()

    async def run(self) -> None:
        await retry(self.work, what=f"{self.service} start-up", log=log)
        self.done.set()
        log.info("start-up work done")

    async def check(self) -> None:
        """Readiness: fails until the work is done."""
        if not self.done.is_set():
            raise ConnectionError("start-up work not done yet")

    async def wait(self, timeout_s: float) -> None:
        """Wait for the work (a request arriving early); 503 if it takes too long."""
        if self.done.is_set():
            return
        try:
            await asyncio.wait_for(self.done.wait(), timeout_s)
        except TimeoutError:
            raise ApiError(ErrorCode.UNAVAILABLE, "Starting up; retry shortly.") from None
