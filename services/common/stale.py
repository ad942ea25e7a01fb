"""A cache of what another service said, that still answers while that service cannot
(docs/gateway.md, "When MongoDB is down").

The rule, for the gateway's recipients (auth service) and device lists (key
directory): an entry answers for ``ttl_s`` after it was read; once expired it is
read again, and if the service is unavailable (``ErrorCode.UNAVAILABLE``) the
expired value still answers and the entry is asked for again only ``retry_s``
later, not by every call (each ask waits out the service's timeout). What was
never read, or was forgotten, cannot be served stale.

While the service is down, what can be served stale is not asked for at all: after
an ask failed, :meth:`StaleWhileDown.down` holds for ``retry_s`` (per cache, so per
pod and service) and every expired entry answers at once, instead of each waiting
out the service's timeout (seconds while MongoDB does not answer) once per
``retry_s``. What cannot be served stale (a key never read and without a shared
copy, below; a ``fresh`` read) is still asked: nothing is lost by trying, and the
first answer (:meth:`put`) ends ``down`` at once.

**A shared copy.** What a pod never read has nothing to be served stale from, so a
pod started (or a socket moved to a pod) during the outage could not route to
anyone. So the callers also keep a copy in Redis that every pod can read
(:meth:`StaleWhileDown.from_copy`): read only while the service is down, and then
kept as an expired entry (served while it stays down, asked for after).

The callers read the clock once per look-up and pass it (``now``, from
``time.monotonic()``), so an entry read or served stale counts from before its ask.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from services.common.batched import TokenRefused
from services.common.errors import ApiError, ErrorCode

V = TypeVar("V")

MAX_ENTRIES = 100_000
STALE_RETRY_S = 10.0
"""An expired entry served while its service cannot answer is asked for again after this."""


class StaleWhileDown(Generic[V]):
    """Values by key, each fresh for ``ttl_s``, served expired while their service is
    down; at most ``max_entries`` of them (all forgotten when full). A value is never
    None: None means "not here"."""

    __slots__ = ("_down_until", "_entries", "max_entries", "retry_s", "ttl_s")

    def __init__(self, ttl_s: float, retry_s: float, max_entries: int = MAX_ENTRIES) -> None:
        self.ttl_s = ttl_s
        self.retry_s = retry_s
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, V]] = {}  # key: (expires at, value)
        self._down_until = float("-inf")

    def get(self, key: str, now: float) -> V | None:
        """The value of ``key`` if it has not expired at ``now`` (no I/O)."""
        hit = self._entries.get(key)
        if hit is not None and now < hit[0]:
            return hit[1]
        return None

    def down(self, now: float, key: str) -> V | None:
        """For ``retry_s`` after an ask failed with ``unavailable``, until one succeeds:
        the last value of ``key`` read, expired or not, to answer without asking; None
        otherwise (ask)."""
        if now >= self._down_until:
            return None
        hit = self._entries.get(key)
        return None if hit is None else hit[1]

    def is_down(self, now: float) -> bool:
        """Whether an ask failed with ``unavailable`` less than ``retry_s`` ago (and none
        succeeded since)."""
        return now < self._down_until

    async def from_copy(
        self, key: str, now: float, read: Callable[[str], Awaitable[V | None]]
    ) -> V | None:
        """While the service is down: ``key``'s shared copy (``read``), kept as an
        expired entry (served by :meth:`down` while the service stays down)."""
        value = await read(key)
        if value is not None:
            self._keep(key, now, value)
        return value

    def put(self, key: str, now: float, value: V) -> None:
        """Keep ``value``, read at ``now``, for ``ttl_s`` (the service answers: not down)."""
        self.answered()
        self._keep(key, now + self.ttl_s, value)

    def answered(self) -> None:
        """The service answered (what it said may not be kept): not down."""
        self._down_until = float("-inf")

    def _keep(self, key: str, expires: float, value: V) -> None:
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[key] = (expires, value)

    def stale(self, key: str, now: float, error: ApiError) -> V | None:
        """What to answer for ``key`` when asking its service at ``now`` failed with
        ``error``: the last value read, expired or not, if the service is
        ``unavailable`` (then asked for again ``retry_s`` after ``now``, unless another
        call read it meanwhile); None for another error or a key never read."""
        if error.code is not ErrorCode.UNAVAILABLE or isinstance(error, TokenRefused):
            return None  # (a token refused: the caller's, not the service down)
        self._down_until = now + self.retry_s
        hit = self._entries.get(key)
        if hit is None:
            return None
        if hit[0] <= now:
            self._entries[key] = (now + self.retry_s, hit[1])
        return hit[1]

    def forget(self, key: str) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
