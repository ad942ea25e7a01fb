"""One timer per pod for many deadlines: what would otherwise be a timer per socket.

A timer handle costs an idle socket about 540 bytes (the handle, the event
loop's timer and its C struct, the bound callback); a place in a set costs it
a few dozen (docs/BENCHMARKS.md, "Idle connections"). Deadlines are rounded
up to whole ticks (a second by default: a token's ``exp`` is whole seconds),
so sockets due in the same tick share one set, and the pod arms a single
timer for the earliest tick.
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
    """Calls ``due(item)`` once ``clock`` (the wall clock by default) reaches the
    deadline given for it, rounded up to a whole ``tick`` (seconds)."""

    def __init__(
        self, due: Callable[[T], None], clock: Callable[[], float] = time.time, tick: float = 1.0
    ) -> None:
        self._due = due
        self._clock = clock
        self._tick = tick
        self._at: dict[int, set[T]] = {}  # items by tick (the deadline // tick, rounded up)
        self._ticks: list[int] = []  # a heap of the keys of ``_at``
        self._timer: asyncio.TimerHandle | None = None
        self._armed_for: int | None = None

    def __len__(self) -> int:
        return sum(len(items) for items in self._at.values())

    def add(self, item: T, when: float) -> None:
        """Call ``due(item)`` at ``when`` (``clock`` seconds, rounded up to a whole tick)."""
        tick = math.ceil(when / self._tick)
        items = self._at.get(tick)
        if items is None:
            items = self._at[tick] = set()
            heapq.heappush(self._ticks, tick)
            if self._armed_for is None or tick < self._armed_for:
                self._arm(tick)
        items.add(item)

    def discard(self, item: T, when: float) -> None:
        """Forget ``item``'s deadline ``when`` (as given to :meth:`add`), if it is still set."""
        items = self._at.get(math.ceil(when / self._tick))
        if items is not None:
            items.discard(item)  # an emptied tick is dropped when it comes

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._armed_for = None
        self._at.clear()
        self._ticks.clear()

    def _arm(self, tick: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        delay = max(0.0, tick * self._tick - self._clock())
        self._timer = asyncio.get_running_loop().call_later(delay, self._fire)
        self._armed_for = tick

    def _fire(self) -> None:
        self._timer = self._armed_for = None
        now = self._clock()
        while self._ticks and self._ticks[0] * self._tick <= now:
            for item in self._at.pop(heapq.heappop(self._ticks), ()):
                self._due(item)  # may add the item again, for a later tick
        if self._ticks and self._armed_for != self._ticks[0]:
            self._arm(self._ticks[0])
