"""The rule of services/common/stale.py: an entry answers for its TTL; once expired, it
still answers while its service is ``unavailable``, asked for again only after
``retry_s``; nothing else is served stale. Times are given, not read from a clock."""

from __future__ import annotations

from services.common.errors import ApiError, ErrorCode
from services.common.stale import StaleWhileDown

DOWN = ApiError(ErrorCode.UNAVAILABLE, "down")


def test_an_entry_answers_until_it_expires() -> None:
    cache = StaleWhileDown[str](ttl_s=60.0, retry_s=10.0)
    cache.put("a", 100.0, "alice")
    assert cache.get("a", 100.0) == "alice"
    assert cache.get("a", 159.9) == "alice"
    assert cache.get("a", 160.0) is None  # expired: ask the service
    assert cache.get("b", 100.0) is None


def test_an_expired_entry_answers_while_the_service_is_down_and_waits_to_ask_again() -> None:
    cache = StaleWhileDown[str](ttl_s=60.0, retry_s=10.0)
    cache.put("a", 100.0, "alice")
    assert cache.get("a", 200.0) is None
    assert cache.stale("a", 200.0, DOWN) == "alice"  # the ask failed: the old value
    # ... and it is not asked for again by every call until retry_s have passed.
    assert cache.get("a", 209.9) == "alice"
    assert cache.get("a", 210.0) is None
    cache.put("a", 210.0, "alice2")  # the service answers again
    assert cache.get("a", 269.9) == "alice2"


def test_nothing_is_served_stale_for_another_error_or_a_key_never_read() -> None:
    cache = StaleWhileDown[str](ttl_s=60.0, retry_s=10.0)
    cache.put("a", 100.0, "alice")
    assert cache.stale("a", 200.0, ApiError(ErrorCode.RECIPIENT_NOT_FOUND, "no")) is None
    assert cache.get("a", 205.0) is None  # and not postponed either
    assert cache.stale("b", 200.0, DOWN) is None
    cache.forget("a")
    assert cache.stale("a", 200.0, DOWN) is None  # forgotten (its list changed)


def test_an_entry_read_again_meanwhile_keeps_its_ttl() -> None:
    cache = StaleWhileDown[str](ttl_s=60.0, retry_s=10.0)
    cache.put("a", 100.0, "alice")
    cache.put("a", 201.0, "alice2")  # another call, started later, read it
    assert cache.stale("a", 200.0, DOWN) == "alice2"
    assert cache.get("a", 260.0) == "alice2"


def test_the_cache_is_bounded() -> None:
    cache = StaleWhileDown[int](ttl_s=60.0, retry_s=10.0, max_entries=3)
    for i in range(3):
        cache.put(str(i), 0.0, i)
    assert len(cache) == 3
    cache.put("3", 0.0, 3)  # full: everything else is forgotten
    assert len(cache) == 1
    assert cache.get("0", 0.0) is None
    assert cache.get("3", 0.0) == 3
    cache.clear()
    assert len(cache) == 0


def test_after_a_failed_ask_what_can_be_served_stale_is_not_asked_for_retry_s() -> None:
    """One failed ask says the service is down: every expired entry answers at once
    instead of each waiting out the service's timeout; what was never read is still
    asked, and the first answer ends it."""
    cache = StaleWhileDown[str](ttl_s=60.0, retry_s=10.0)
    cache.put("a", 100.0, "alice")
    cache.put("b", 100.0, "bob")
    assert cache.down(200.0, "b") is None  # nothing failed yet: ask
    assert cache.stale("a", 200.0, DOWN) == "alice"
    assert cache.down(200.0, "b") == "bob" and cache.down(209.9, "b") == "bob"
    assert cache.down(205.0, "c") is None  # never read: ask
    assert cache.down(210.0, "b") is None  # retry_s later: ask again
    assert cache.stale("c", 210.0, DOWN) is None and cache.down(215.0, "b") == "bob"
    cache.put("c", 216.0, "carol")  # it answered: up again
    assert cache.down(216.0, "b") is None


def test_another_error_does_not_say_the_service_is_down() -> None:
    cache = StaleWhileDown[str](ttl_s=60.0, retry_s=10.0)
    cache.put("a", 0.0, "alice")
    assert cache.stale("x", 100.0, ApiError(ErrorCode.RECIPIENT_NOT_FOUND, "no")) is None
    assert cache.down(100.0, "a") is None
