"""Room member lists cached by what says they are current (docs/rooms.md, "Member lists").

A room's document carries ``version`` (raised by every change of membership
or state) and ``members`` (the count). A change is several writes: a leave
raises ``version``, then deletes the membership, then lowers ``members``; a
join raises ``version`` and ``members`` together, then writes the roster slot
and the membership. So a list read in the middle of a change can be stale
under the new ``version`` (a leaver still in it, a joiner not yet), and
caching it by ``version`` alone would keep sending to a member who left, or
keep a new member from getting anything, until the next change.

The rule here: a list is cached under ``(version, members)`` of the room
document read *before* it, and only when it has exactly ``members`` entries.
A joiner not yet in the list, or a leaver still counted after leaving,
makes the count disagree (nothing is cached: the next send reads again); a
leaver still listed while the count still includes it is cached under a
count that the leave's last write changes, so the next send misses the cache.
If a change never finishes (a process killed between its writes) the count
stays wrong and the list is read every time: slower, never stale.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

MAX_CACHED_ROOMS = 10_000
# Member ids kept in all (10,000 rooms of 5,000 members would be gigabytes).
MAX_CACHED_MEMBERS = 1_000_000
ROSTER_TTL_S = 300.0


@dataclass(frozen=True, slots=True)
class _Roster:
    version: int
    count: int
    members: tuple[str, ...]
    at: float


class RosterCache:
    """Member lists of up to ``max_rooms`` rooms, each for ``ttl_s`` at most."""

    def __init__(
        self, max_rooms: int = MAX_CACHED_ROOMS, ttl_s: float = ROSTER_TTL_S,
        max_members: int = MAX_CACHED_MEMBERS,
    ) -> None:  # fmt: skip
        self.max_rooms = max_rooms
        self.max_members = max_members
        self.ttl_s = ttl_s
        self._rosters: dict[str, _Roster] = {}
        self._entries = 0  # member ids held, all rooms

    def get(self, room_id: str, version: int, count: int) -> tuple[str, ...] | None:
        """The cached list of the room as its document says it is, or None."""
        hit = self._rosters.get(room_id)
        if (
            hit is not None
            and hit.version == version
            and hit.count == count
            and time.monotonic() - hit.at < self.ttl_s
        ):
            return hit.members
        return None

    def put(
        self, room_id: str, version: int, count: int, members: Sequence[str]
    ) -> tuple[str, ...]:
        """Keep ``members``, read after a room document of ``version`` and ``count``,
        if it is whole (``count`` entries); returns it as a tuple either way."""
        kept = tuple(members)
        old = self._rosters.pop(room_id, None)
        if old is not None:
            self._entries -= len(old.members)
        if len(kept) != count or len(kept) > self.max_members:
            return kept
        if len(self._rosters) >= self.max_rooms or self._entries + len(kept) > self.max_members:
            self._rosters.clear()
            self._entries = 0
        self._rosters[room_id] = _Roster(version, count, kept, time.monotonic())
        self._entries += len(kept)
        return kept
