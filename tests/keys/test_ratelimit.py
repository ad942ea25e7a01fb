"""The claim rate limits, the account reset limit and the device removal limit, in the
real Redis (services.common.ratelimit)."""

from __future__ import annotations

from typing import Any

import pytest

from services.common.ratelimit import Limit
from services.keys.config import KeysConfig
from services.rooms.config import RoomsConfig
from tests.keys.conftest import EventLog, KeysApi, KeysFactory
from tests.keys.keygen import AccountKeys, entry
from tests.support.aio import eventually

BOB = "bob"


async def test_claims_over_the_limit_are_refused_and_take_nothing(api: KeysApi) -> None:
    await api.device(BOB, one_time=20, kem=20)
    for _ in range(6):
        assert (await api.claim("mallory", BOB))[0] == 200
    status, body = await api.claim("mallory", BOB)
    assert (status, body["error"]["code"]) == (429, "rate_limited")
    retry_after = int(api.last_headers["Retry-After"])
    assert 1 <= retry_after <= 100
    assert body["error"]["details"] == {"retry_after": retry_after}
    assert await api.stored(BOB) == (14, 14)
    # Other pairs have their own budget.
    assert (await api.claim("alice", BOB))[0] == 200
    await api.device("carol", one_time=1, kem=1)
    assert (await api.claim("mallory", "carol"))[0] == 200


async def test_own_devices_are_not_limited(api: KeysApi) -> None:
    await api.device(BOB, 1, one_time=10, kem=10)
    for _ in range(10):
        assert (await api.claim(BOB, BOB))[0] == 200


async def test_unknown_targets_count_too(api: KeysApi) -> None:
    for _ in range(6):
        assert (await api.claim("mallory", "nobody"))[1]["error"]["code"] == "identity_not_found"
    assert (await api.claim("mallory", "nobody"))[1]["error"]["code"] == "rate_limited"


async def test_the_bucket_refills(make_keys: KeysFactory) -> None:
    # A token every 2 s: long enough that three claims in a row never see a
    # refill, even on a slow machine.
    api = await make_keys(KeysConfig(claim_burst=2, claim_refill_s=2.0))
    await api.device(BOB, one_time=5, kem=5)
    assert (await api.claim("alice", BOB))[0] == 200
    assert (await api.claim("alice", BOB))[0] == 200
    assert (await api.claim("alice", BOB))[0] == 429
    await eventually(lambda: api.claim("alice", BOB), lambda r: r[0] == 200, timeout=10)


async def test_pairs_never_share_a_bucket_whatever_the_ids_contain(api: KeysApi) -> None:
    # ("a:b" claims "c") and ("a" claims "b:c") would collide in a naive "a:b:c" key.
    for _ in range(6):
        await api.claim("a:b", "c")
    assert (await api.claim("a:b", "c"))[0] == 429
    # A user id in a path is one of the contract's (letters, digits, '_', '-'): "b:c"
    # is refused before any bucket is touched, never rate-limited with "a:b"'s.
    assert (await api.claim("a", "b:c"))[1]["error"]["code"] == "validation_failed"


async def test_many_fresh_accounts_cannot_drain_a_device(api: KeysApi) -> None:
    """Before: only the pair was limited, so 100 accounts took 100 one-time prekeys
    each of both kinds. Now a user hands out ``one_time_burst`` (30) one-time prekeys
    to others, then serves bundles without one-time material: sessions can still
    start, the stock is not drained (#20)."""
    await api.device(BOB, one_time=100, kem=100)
    one_time = []
    for n in range(40):
        status, body = await api.claim(f"fresh{n}", BOB)
        assert status == 200
        bundle = body["bundles"][0]
        one_time.append(bundle["one_time_prekey"] is not None)
        if bundle["one_time_prekey"] is None:
            assert bundle["kem_prekey"]["last_resort"] is True
            assert bundle["signed_prekey"]["key"]
    assert one_time == [True] * 30 + [False] * 10
    assert await api.stored(BOB) == (70, 70)
    # The owner's own other devices are not held back.
    await api.device(BOB, 2, one_time=5, kem=5)
    status, body = await api.claim(BOB, BOB, "?device_ids=1")
    assert status == 200 and body["bundles"][0]["one_time_prekey"] is not None


async def test_one_claimer_cannot_scrape_many_users(make_keys: KeysFactory) -> None:
    """``claimer_burst`` claims by one account over all targets, then 429 (#20); 60
    here (the default is a room's largest size, below)."""
    api = await make_keys(KeysConfig(claimer_burst=60, claimer_refill_s=10.0))
    for n in range(60):
        assert (await api.claim("scraper", f"user{n}"))[1]["error"]["code"] == "identity_not_found"
    status, body = await api.claim("scraper", "user60")
    assert (status, body["error"]["code"]) == (429, "rate_limited")
    assert "from this account" in body["error"]["message"]


def test_a_claimer_may_start_a_session_with_every_member_of_the_largest_room() -> None:
    """A device's first message to a private room claims every other member's bundles
    at once (its sender key goes to each over a new session): the per-claimer burst
    covers a room of the most members the rooms service admits. At 60 a room of
    1,000 could not be written to for hours (docs/keys.md, "Rate limits on claims")."""
    assert KeysConfig().claimer_burst >= RoomsConfig().max_members - 1


async def test_account_resets_are_limited_per_user(
    make_keys: KeysFactory, events: EventLog
) -> None:
    """Audit finding: ``PUT /v1/account`` with a new key each time reset the account
    without limit, and each reset sent ``key_changed`` to every contact (30 resets, 30
    new safety numbers). Now a user has ``reset_limit`` resets (5 a day); past it,
    ``rate_limited`` and nothing changes. The first key, and the same key again (a
    retry), cost nothing."""
    api = await make_keys(KeysConfig(reset_limit=Limit(3, 86400)))
    dev = await api.device(BOB, 1)
    key = api.account(BOB).key
    for _ in range(3):
        assert (await api.put_account(BOB, key.registration(BOB, [entry(1, dev)])))[0] == 200
    keys = [AccountKeys() for _ in range(4)]
    for new in keys[:3]:
        status, body = await api.put_account(BOB, new.registration(BOB, [entry(1, dev)]))
        assert (status, body["changed"]) == (200, True)
        # A retry of the same reset changes nothing and costs nothing.
        status, body = await api.put_account(BOB, new.registration(BOB, [entry(1, dev)]))
        assert (status, body["changed"]) == (200, False)
    status, body = await api.put_account(BOB, keys[3].registration(BOB, [entry(1, dev)]))
    assert (status, body["error"]["code"]) == (429, "rate_limited")
    retry_after = int(api.last_headers["Retry-After"])
    assert 1 <= retry_after <= 86400 and body["error"]["details"] == {"retry_after": retry_after}
    account = await api.keys.store.get_account(BOB)
    assert account is not None and account["account_key"] == keys[2].public
    announced = [e["account_key"] for e in await events.settle(BOB) if e["type"] == "key_changed"]
    assert announced == [k.public for k in keys[:3]]
    # Another user has a budget of their own.
    other = await api.device("carol", 1)
    reset = AccountKeys().registration("carol", [entry(1, other)])
    assert (await api.put_account("carol", reset))[0] == 200


def test_a_user_may_reset_a_few_times_a_day() -> None:
    assert KeysConfig().reset_limit == Limit(5, 86400)


async def test_device_removals_are_limited_per_user(
    make_keys: KeysFactory, events: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Audit finding: a user adding a new device to its list and dropping it again, in a
    loop, made one device revocation a round (a MongoDB record and a Redis key kept 30
    days, an event, a broadcast), and every keys replica reads every live record back
    at start-up and hourly (50,000 in 2.4-2.9 s). Now a user removes at most
    ``removal_limit`` devices (counted per device) in its window: past it the list is
    ``rate_limited`` and nothing changes; below it every list passes."""
    api = await make_keys(KeysConfig(removal_limit=Limit(3, 86400)))
    store = api.keys.store
    await api.device(BOB, 1, signed=False, last_resort=False)
    for device_id in (10, 11, 12, 13):
        await api.device(BOB, device_id, signed=False, last_resort=False)

    # A write that loses its compare-and-set gives its count back: two removals, tried
    # twice, count two.
    replace = store.replace_account
    lost: list[int] = []

    async def lose_once(user_id: str, generation: int, fields: dict[str, Any]) -> bool:
        if not lost:
            lost.append(generation)
            return False
        return await replace(user_id, generation, fields)

    monkeypatch.setattr(store, "replace_account", lose_once)
    assert (await api.unlist(BOB, 10, 11))["removed"] == [10, 11]
    monkeypatch.undo()
    assert lost

    async def refused(*device_ids: int) -> None:
        account = await store.get_account(BOB)
        revocations = await store.revocations.find({"user_id": BOB}).to_list()
        devices = await store.list_devices(BOB)
        acct = api.account(BOB)
        entries = {d: e for d, e in acct.entries.items() if d not in device_ids}
        status, body = await api.put_device_list(BOB, acct.next(BOB, entries))
        assert (status, body["error"]["code"]) == (429, "rate_limited")
        retry_after = int(api.last_headers["Retry-After"])
        assert 1 <= retry_after <= 86400
        assert body["error"]["details"] == {"retry_after": retry_after}
        assert await store.get_account(BOB) == account
        assert await store.revocations.find({"user_id": BOB}).to_list() == revocations
        assert await store.list_devices(BOB) == devices
        for device_id in device_ids:
            assert not await store.device_revoked(BOB, device_id)

    # Two more would be four: refused, though one more passes.
    await refused(12, 13)
    assert (await api.unlist(BOB, 12))["removed"] == [12]
    await refused(13)
    removed = [e["device_id"] for e in await events.settle(BOB) if e["type"] == "device_removed"]
    assert sorted(removed) == [10, 11, 12]
    assert await store.revocations.count_documents({"user_id": BOB}) == 3
    # Lists that remove nothing are not limited.
    version = api.account(BOB).version
    await api.device(BOB, 14, signed=False, last_resort=False)
    assert api.account(BOB).version == version + 1
    # Another user has a budget of their own.
    await api.device("carol", 1, signed=False, last_resort=False)
    await api.device("carol", 2, signed=False, last_resort=False)
    assert (await api.unlist("carol", 2))["removed"] == [2]


def test_a_user_may_remove_a_few_dozen_devices_a_day() -> None:
    """Whatever a legitimate user does (a full list dropped at once included) passes."""
    config = KeysConfig()
    assert config.removal_limit == Limit(30, 86400)
    assert config.removal_limit.count >= config.max_devices
