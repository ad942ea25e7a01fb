"""One timer per pod for many deadlines: what would otherwise be a timer per socket.

A timer handle costs an idle socket about 540 bytes (the handle, the event
loop's timer and its C struct, the bound callback); a place in a set costs it
a few dozen (docs/BENCHMARKS.md, "Idle connections"). Deadlines are whole
seconds (a token's ``exp`` is one), so sockets that expire in the same second
share one set, and the pod arms a single timer for the earliest second.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T", bound=Hashable)


class Deadlines(Generic[T]):
    """Calls ``due(item)`` once the wall clock reaches the deadline given for it."""

    def __init__(self, due: Callable[[T], None], clock: Callable[[], float] = time.time) -> None:
        self._due = due
        self._clock = clock
        self._at: dict[int, set[T]] = {}
        self._seconds: list[int] = []  # a heap of the keys of ``_at``
        self._timer: asyncio.TimerHandle | None = None
        self._armed_for: int | None = None

    def __len__(self) -> int:
        return sum(len(items) for items in self._at.values())

    def add(self, item: T, when: float) -> None:
        """Call ``due(item)`` at ``when`` (epoch seconds, rounded up to a whole second)."""
        second = math.ceil(when)
        items = self._at.get(second)
        if items is None:
            items = self._at[second] = set()
            heapq.heappush(self._seconds, second)
            if self._armed_for is None or second < self._armed_for:
                self._arm(second)
        items.add(item)

    def discard(self, item: T, when: float) -> None:
        """Forget ``item``'s deadline ``when`` (as given to :meth:`add`), if it is still set."""
        items = self._at.get(math.ceil(when))
        if items is not None:
            items.discard(item)  # an emptied second is dropped when it comes

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._armed_for = None
        self._at.clear()
        self._seconds.clear()

    def _arm(self, second: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        delay = max(0.0, second - self._clock())
        self._timer = asyncio.get_running_loop().call_later(delay, self._fire)
        self._armed_for = second

    def _fire(self) -> None:
        self._timer = self._armed_for = None
        now = self._clock()
        while self._seconds and self._seconds[0] <= now:
            for item in self._at.pop(heapq.heappop(self._seconds), ()):
                self._due(item)  # may add the item again, for a later second
        if self._seconds and self._armed_for != self._seconds[0]:
            self._arm(self._seconds[0])
