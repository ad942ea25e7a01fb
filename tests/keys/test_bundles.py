"""Claiming bundles: single use under concurrency, exhaustion, fallback, refill, events."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pymongo.errors import AutoReconnect

from services.keys.config import KeysConfig
from tests.keys.conftest import EventLog, KeysApi, KeysFactory
from tests.keys.keygen import DeviceKeys, entry, verify_bundle

BOB = "bob"


async def test_claim_hands_out_a_full_bundle_once(api: KeysApi) -> None:
    dev = DeviceKeys()
    one_time, kem = dev.one_time(2), dev.kem(2)
    await api.device(BOB, 5, keys=dev)
    await api.post_one_time(BOB, 5, one_time)
    await api.post_kem(BOB, 5, kem)
    status, body = await api.claim("alice", BOB)
    assert status == 200
    assert api.last_headers["Cache-Control"] == "no-store"
    [bundle] = body["bundles"]
    verify_bundle(bundle)
    assert bundle["user_id"] == BOB
    assert bundle["device_id"] == 5
    assert bundle["identity"] == dev.identity()
    assert bundle["signed_prekey"]["id"] == 7
    assert bundle["one_time_prekey"] in one_time
    assert {k: v for k, v in bundle["kem_prekey"].items() if k != "last_resort"} in kem
    assert bundle["kem_prekey"]["last_resort"] is False
    _, second = await api.claim("carol", BOB)
    [again] = second["bundles"]
    assert again["one_time_prekey"] != bundle["one_time_prekey"]
    assert again["kem_prekey"]["id"] != bundle["kem_prekey"]["id"]
    assert await api.stored(BOB, 5) == (0, 0)


async def test_a_refill_after_claims_that_found_none_is_handed_out(api: KeysApi) -> None:
    """Every claim counts an id out of the device's count, also when the device has none
    left, so while it was out of stock the count ran past ids it had not made yet. Its
    refill, numbered on from its own last id, was below the count: never handed out,
    yet counted as stock (so no ``prekeys_low`` and no refill again, for good). The
    upload now puts the count back below its first id."""
    dev = await api.device(BOB, one_time=1, kem=1)
    got = [(await api.claim(f"m{i}", BOB))[1]["bundles"][0] for i in range(6)]
    assert [b["one_time_prekey"] is not None for b in got] == [True] + [False] * 5
    assert [b["kem_prekey"]["last_resort"] for b in got] == [False] + [True] * 5
    assert (await api.post_one_time(BOB, 1, dev.one_time(3)))[0] == 201
    assert (await api.post_kem(BOB, 1, dev.kem(3)))[0] == 201
    refilled = [(await api.claim(f"r{i}", BOB))[1]["bundles"][0] for i in range(3)]
    assert all(b["one_time_prekey"] is not None for b in refilled)
    assert not any(b["kem_prekey"]["last_resort"] for b in refilled)
    assert len({b["one_time_prekey"]["id"] for b in refilled}) == 3
    assert await api.stored(BOB, 1) == (0, 0)


async def test_a_claim_whose_low_stock_check_fails_still_answers(
    api: KeysApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The prekeys are deleted before the (best-effort) low-stock bookkeeping: its
    failure answered 500, so the prekeys were spent for an answer nobody got."""
    await api.device(BOB, one_time=3, kem=3)

    async def down(*_: Any) -> Any:
        raise ConnectionError("Redis went away")

    monkeypatch.setattr(api.keys.store, "note_claims", down)
    status, body = await api.claim("carol", BOB)
    assert status == 200
    [bundle] = body["bundles"]
    assert bundle["one_time_prekey"] is not None and not bundle["kem_prekey"]["last_resort"]
    assert await api.stored(BOB, 1) == (2, 2)


async def test_exhaustion_falls_back_and_refill_restores(api: KeysApi) -> None:
    dev = await api.device(BOB, one_time=1, kem=2)
    got = [(await api.claim(f"c{i}", BOB))[1]["bundles"][0] for i in range(3)]
    for bundle in got:
        verify_bundle(bundle)
    assert [b["one_time_prekey"] is not None for b in got] == [True, False, False]
    assert [b["kem_prekey"]["last_resort"] for b in got] == [False, False, True]
    # The last-resort prekey is not consumed: everyone gets it once the rest are gone.
    assert got[2]["kem_prekey"]["id"] == 0
    again = (await api.claim("c9", BOB))[1]["bundles"][0]
    assert again["kem_prekey"] == got[2]["kem_prekey"]
    assert (await api.counts(BOB, 1))[1]["kem_last_resort_id"] == 0
    # Refill: one-time prekeys are handed out again.
    await api.post_one_time(BOB, 1, dev.one_time(3))
    await api.post_kem(BOB, 1, dev.kem(3))
    refilled = (await api.claim("c10", BOB))[1]["bundles"][0]
    assert refilled["one_time_prekey"] is not None
    assert refilled["kem_prekey"]["last_resort"] is False
    assert (await api.counts(BOB, 1))[1] == {
        "device_id": 1,
        "one_time": 2,
        "kem_one_time": 2,
        "signed_prekey_id": 7,
        "kem_last_resort_id": 0,
        "threshold": 10,
    }


async def test_fifty_concurrent_claimers_never_share_a_prekey(make_keys: KeysFactory) -> None:
    # The one-time budget per target is another test's (test_ratelimit.py).
    api = await make_keys(KeysConfig(one_time_burst=1000))
    dev = DeviceKeys()
    one_time, kem = dev.one_time(30), dev.kem(40)
    await api.device(BOB, keys=dev)
    await api.post_one_time(BOB, 1, one_time)
    await api.post_kem(BOB, 1, kem)
    replies = await asyncio.gather(*(api.claim(f"claimer{i}", BOB) for i in range(50)))
    assert {status for status, _ in replies} == {200}
    bundles = [body["bundles"][0] for _, body in replies]
    otp_ids = [b["one_time_prekey"]["id"] for b in bundles if b["one_time_prekey"]]
    kem_ids = [b["kem_prekey"]["id"] for b in bundles if not b["kem_prekey"]["last_resort"]]
    # Every one-time prekey handed out exactly once; the rest fell back cleanly.
    assert sorted(otp_ids) == [p["id"] for p in one_time]
    assert sorted(kem_ids) == [p["id"] for p in kem]
    assert sum(b["one_time_prekey"] is None for b in bundles) == 20
    assert sum(b["kem_prekey"]["last_resort"] for b in bundles) == 10
    assert await api.stored(BOB) == (0, 0)


async def test_every_device_of_the_user_gets_a_bundle(api: KeysApi) -> None:
    await api.device(BOB, 1, one_time=1, kem=1)
    await api.device(BOB, 2, one_time=1, kem=1)
    await api.device(BOB, 3, signed=False)  # not claimable yet: left out, nothing taken
    await api.post_one_time(BOB, 3, DeviceKeys().one_time(1))
    _, body = await api.claim("alice", BOB)
    assert [b["device_id"] for b in body["bundles"]] == [1, 2]
    assert await api.stored(BOB, 3) == (1, 0)
    # Only some devices.
    await api.post_one_time(BOB, 2, DeviceKeys().one_time(1, start=50))
    _, body = await api.claim("alice", BOB, "?device_id=2")
    assert [(b["device_id"], b["one_time_prekey"]["id"]) for b in body["bundles"]] == [(2, 50)]
    status, body = await api.claim("alice", BOB, "?device_id=4")
    assert (status, body["error"]["code"]) == (404, "device_not_found")
    status, body = await api.claim("alice", BOB, "?device_id=x")
    assert (status, body["error"]["code"]) == (422, "validation_failed")


async def test_unknown_users_and_unusable_devices(api: KeysApi) -> None:
    status, body = await api.claim("alice", "nobody")
    assert (status, body["error"]["code"]) == (404, "identity_not_found")
    status, body = await api.identity_of("alice", "nobody")
    assert (status, body["error"]["code"]) == (404, "identity_not_found")
    # A device without a signed prekey, or without any ML-KEM prekey, offers no bundle
    # and loses nothing.
    await api.device(BOB, 1, signed=False, one_time=2, kem=2)
    await api.device(BOB, 2, last_resort=False, one_time=2)
    status, body = await api.claim("alice", BOB)
    assert (status, body["error"]["code"]) == (409, "prekeys_exhausted")
    assert await api.stored(BOB, 1) == (2, 2)
    assert await api.stored(BOB, 2) == (2, 0)


async def test_identity_lookup_claims_nothing(api: KeysApi) -> None:
    dev = await api.device(BOB, 3, one_time=1, kem=1)
    status, body = await api.identity_of("alice", BOB)
    account = api.account(BOB)
    assert (status, body) == (
        200,
        {
            "user_id": BOB,
            "account_key": account.key.public,
            **account.key.signed(BOB, 1, list(account.entries.values())),
            "devices": [{"device_id": 3, "identity": dev.identity()}],
        },
    )
    assert await api.stored(BOB, 3) == (1, 1)


async def test_prekeys_low_is_published_once_per_spell(api: KeysApi, events: EventLog) -> None:
    dev = await api.device(BOB, one_time=12, kem=30)
    for i in range(2):  # 10 one-time left: not below the threshold yet
        await api.claim(f"a{i}", BOB)
    assert await events.settle(BOB) == []
    for i in range(4):
        await api.claim(f"b{i}", BOB)
    low = {
        "type": "prekeys_low",
        "user_id": BOB,
        "device_id": 1,
        "one_time": 9,
        "kem_one_time": 27,
        "threshold": 10,
    }
    assert await events.settle(BOB) == [low]
    # Uploading ends the spell; the next time it runs low, it is told again.
    await api.post_one_time(BOB, 1, dev.one_time(1))
    await api.claim("c", BOB)
    assert await events.settle(BOB) == [low, low | {"one_time": 6, "kem_one_time": 23}]


async def test_prekeys_low_whose_event_was_not_recorded_is_told_by_the_next_claim(
    api: KeysApi, events: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Audit finding: the low flag was set before the event's outbox write; a write that
    failed (a MongoDB hiccup) left the flag up and the event lost for the whole spell
    (an hour, or until the device uploaded: it never learnt it should). Now the flag
    goes when the event could not be recorded, and the next claim tells the device."""
    await api.device(BOB, one_time=11, kem=11)
    outbox = api.keys.store.outbox
    add = outbox.add

    async def hiccup(*_: object, **__: object) -> Any:
        raise AutoReconnect("primary stepped down")

    assert (await api.claim("a", BOB))[0] == 200  # 10 of each left: not low yet
    with monkeypatch.context() as m:
        m.setattr(outbox, "add", hiccup)
        assert (await api.claim("b", BOB))[0] == 200  # 9 left: low, the event not recorded
    assert outbox.add == add
    assert await events.settle(BOB) == []
    assert (await api.claim("c", BOB))[0] == 200
    assert await events.settle(BOB) == [
        {
            "type": "prekeys_low",
            "user_id": BOB,
            "device_id": 1,
            "one_time": 8,
            "kem_one_time": 8,
            "threshold": 10,
        }
    ]


async def test_lost_estimates_are_recounted(api: KeysApi, events: EventLog) -> None:
    dev = await api.device(BOB, one_time=30, kem=3)
    store = api.keys.store
    await store.redis.delete(store._left_key(BOB, 1))  # as after a Redis restart
    await api.claim("a", BOB)
    assert await store.redis.hgetall(store._left_key(BOB, 1)) == {
        b"one_time": b"29",
        b"kem_one_time": b"2",
    }
    assert await events.settle(BOB) == [
        {
            "type": "prekeys_low",
            "user_id": BOB,
            "device_id": 1,
            "one_time": 29,
            "kem_one_time": 2,
            "threshold": 10,
        }
    ]
    # A drifted estimate that says "low" is checked before anyone is told.
    assert (await api.post_kem(BOB, 1, dev.kem(20)))[0] == 201
    await store.reset_left(BOB, 1, 0, 0)
    await api.claim("b", BOB)
    assert len(await events.settle(BOB)) == 1
    assert await store.redis.hgetall(store._left_key(BOB, 1)) == {
        b"one_time": b"28",
        b"kem_one_time": b"21",
    }


async def test_only_listed_devices_are_served(api: KeysApi) -> None:
    """A pending device (registered, not in the signed list) is invisible: no bundle,
    no identity, nothing claimed from it."""
    listed = await api.device(BOB, 1, one_time=2, kem=2)
    pending = await api.device(BOB, 2, one_time=2, kem=2, listed=False)
    status, body = await api.claim("alice", BOB)
    assert status == 200
    assert [b["device_id"] for b in body["bundles"]] == [1]
    account = api.account(BOB)
    assert body["account_key"] == account.key.public
    assert body["device_list"]["devices"] == [entry(1, listed)]
    assert body["signature"] == account.key.signed(BOB, 1, [entry(1, listed)])["signature"]
    status, body = await api.claim("alice", BOB, "?device_id=2")
    assert (status, body["error"]["code"]) == (404, "device_not_found")
    _, body = await api.identity_of("alice", BOB)
    assert [d["device_id"] for d in body["devices"]] == [1]
    assert await api.stored(BOB, 2) == (2, 2)
    _, body = await api.devices_of("alice", BOB)
    assert body["devices"] == [{"device_id": 1, "name": "device 1"}]
    # Once listed, it is served.
    await api.list_device(BOB, 2, pending)
    _, body = await api.claim("carol", BOB)
    assert [b["device_id"] for b in body["bundles"]] == [1, 2]


async def test_a_user_with_pending_devices_only_has_no_bundles(api: KeysApi) -> None:
    await api.device(BOB, 1, one_time=1, kem=1, listed=False)
    status, body = await api.claim("alice", BOB)
    assert (status, body["error"]["code"]) == (404, "identity_not_found")
    assert await api.stored(BOB, 1) == (1, 1)
