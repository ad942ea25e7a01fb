"""The member-list cache's rule (services/common/rosters.py): a list is kept under the
(version, count) of the room read before it, and only when it has ``count`` entries."""

from __future__ import annotations

import pytest

from services.common import rosters
from services.common.rosters import RosterCache


def test_a_whole_list_is_kept_under_its_version_and_count() -> None:
    cache = RosterCache()
    assert cache.put("r", 3, 2, ["a", "b"]) == ("a", "b")
    assert cache.get("r", 3, 2) == ("a", "b")
    assert cache.get("r", 4, 2) is None  # a change of membership or state
    assert cache.get("r", 3, 1) is None  # a leave's last write
    assert cache.get("other", 3, 2) is None


@pytest.mark.parametrize(
    ("count", "members", "why"),
    [
        (3, ["a", "b"], "a join counted, its membership not yet written"),
        (2, ["a"], "a leave written, its count not yet lowered"),
        (1, ["a", "b"], "a list read after a newer join than the room"),
    ],
)
def test_a_list_read_in_the_middle_of_a_change_is_not_kept(
    count: int, members: list[str], why: str
) -> None:
    cache = RosterCache()
    cache.put("r", 3, len(members), members)
    assert cache.put("r", 3, count, members) == tuple(members), why
    assert cache.get("r", 3, count) is None, why
    # ... and what was kept before it is gone: the room is changing.
    assert cache.get("r", 3, len(members)) is None, why


def test_lists_expire_and_the_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(rosters.time, "monotonic", lambda: now[0])
    cache = RosterCache(max_rooms=2, ttl_s=10)
    cache.put("r1", 1, 1, ["a"])
    now[0] += 9.9
    assert cache.get("r1", 1, 1) == ("a",)
    now[0] += 0.2
    assert cache.get("r1", 1, 1) is None
    cache.put("r1", 1, 1, ["a"])
    cache.put("r2", 1, 1, ["b"])
    cache.put("r3", 1, 1, ["c"])  # past the bound: the others are dropped
    assert cache.get("r3", 1, 1) == ("c",)
    assert cache.get("r1", 1, 1) is None and cache.get("r2", 1, 1) is None


def test_the_cache_is_bounded_by_member_ids_not_only_rooms() -> None:
    """Before: 10,000 rooms of up to 5,000 members each could be held (gigabytes)."""
    cache = RosterCache(max_rooms=100, max_members=10)
    cache.put("a", 1, 6, [f"u{i}" for i in range(6)])
    cache.put("b", 1, 3, ["x", "y", "z"])
    assert cache.get("a", 1, 6) is not None and cache.get("b", 1, 3) is not None
    cache.put("c", 1, 4, ["p", "q", "r", "s"])  # 13 ids: the cache starts over
    assert cache.get("a", 1, 6) is None and cache.get("c", 1, 4) is not None
    cache.put("c", 2, 4, ["p", "q", "r", "s"])  # a newer list replaces, not adds
    cache.put("d", 1, 6, [f"d{i}" for i in range(6)])
    assert cache.get("c", 2, 4) is not None and cache.get("d", 1, 6) is not None
    assert (
        cache.put("huge", 1, 11, [f"h{i}" for i in range(11)]) and cache.get("huge", 1, 11) is None
    )  # over the bound alone: never kept
