"""The account key and the signed device list: registration, reset, new versions,
removal of dropped devices, and what every other service hears of it."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from services.common.devices import list_copy_key
from services.keys import accounts, models, verify
from services.keys.config import KeysConfig
from tests.keys.conftest import Broadcasts, EventLog, KeysApi, KeysFactory
from tests.keys.keygen import AccountKeys, DeviceKeys, b64, entry

ALICE = "alice"


IDENTITY_POINT = bytes([1]) + bytes(31)


async def _nothing_stored(api: KeysApi, user: str = ALICE) -> None:
    status, body = await api.devices_of("bob", user)
    assert (status, body["error"]["code"]) == (404, "identity_not_found")
    assert await api.keys.store.get_account(user) is None


async def _two_devices(api: KeysApi) -> dict[int, dict[str, Any]]:
    one = await api.device(ALICE, 1, listed=False)
    two = await api.device(ALICE, 2, listed=False)
    return {1: entry(1, one, "laptop"), 2: entry(2, two, "phone")}


# --------------------------------------------------------------------------- PUT /account


async def test_first_registration(api: KeysApi, broadcasts: Broadcasts) -> None:
    entries = await _two_devices(api)
    key = AccountKeys()
    body = key.registration(ALICE, list(entries.values()))
    status, reply = await api.put_account(ALICE, body)
    assert (status, reply) == (200, {"version": 1, "created": True, "changed": False})
    status, listed = await api.devices_of("bob", ALICE)
    assert (status, listed) == (
        200,
        {
            "user_id": ALICE,
            "account_key": key.public,
            "device_list": body["device_list"],
            "signature": body["signature"],
            "devices": [{"device_id": 1, "name": "laptop"}, {"device_id": 2, "name": "phone"}],
        },
    )
    assert await broadcasts.settle() == [{"type": "devices_changed", "user_id": ALICE}]
    # The same key again changes nothing (a retry).
    status, reply = await api.put_account(ALICE, body)
    assert (status, reply) == (200, {"version": 1, "created": False, "changed": False})
    assert (await api.devices_of("bob", ALICE))[1] == listed


async def test_the_same_key_again_answers_the_current_version(api: KeysApi) -> None:
    dev = await api.device(ALICE, 1)
    await api.device(ALICE, 2)
    assert api.account(ALICE).version == 2
    again = api.account(ALICE).key.registration(ALICE, [entry(1, dev)])
    status, reply = await api.put_account(ALICE, again)
    assert (status, reply) == (200, {"version": 2, "created": False, "changed": False})
    assert [d["device_id"] for d in (await api.devices_of("bob", ALICE))[1]["devices"]] == [1, 2]


def _bad_registrations(entries: dict[int, dict[str, Any]]) -> dict[str, tuple[Any, int, str]]:
    key, other = AccountKeys(), AccountKeys()
    good = key.registration(ALICE, list(entries.values()))
    first, second = good["device_list"]["devices"]
    listed = good["device_list"]

    def signed(device_list: dict[str, Any]) -> dict[str, Any]:
        return {"account_key": key.public, **key.sign_list(device_list)}

    unregistered = entry(3, DeviceKeys())
    return {
        "signed by another key": ({**good, "account_key": other.public}, 422, "invalid_signature"),
        "list changed after signing": (
            {**good, "device_list": {**listed, "devices": [first]}},
            422,
            "invalid_signature",
        ),
        "account key not base64url": ({**good, "account_key": "+" * 43}, 422, "invalid_key"),
        "account key too short": ({**good, "account_key": b64(b"k" * 31)}, 422, "invalid_key"),
        "signature badly encoded": (
            {**good, "signature": good["signature"] + "="},
            422,
            "invalid_key",
        ),
        "another user's list": (signed({**listed, "user_id": "bob"}), 403, "forbidden"),
        "version 2": (signed({**listed, "version": 2}), 422, "validation_failed"),
        "an unregistered device": (
            signed({**listed, "devices": [first, second, unregistered]}),
            422,
            "invalid_key",
        ),
        "another identity for a device": (
            signed({**listed, "devices": [first, {**second, "dh_key": first["dh_key"]}]}),
            422,
            "invalid_key",
        ),
        "devices out of order": (
            signed({**listed, "devices": [second, first]}),
            422,
            "validation_failed",
        ),
        "a device twice": (signed({**listed, "devices": [first, first]}), 422, "validation_failed"),
        "control character in a name": (
            signed({**listed, "devices": [{**first, "name": "a\nb"}, second]}),
            422,
            "validation_failed",
        ),
        "name too long": (
            signed({**listed, "devices": [{**first, "name": "n" * 65}, second]}),
            422,
            "validation_failed",
        ),
        "unknown member in the list": (signed({**listed, "note": "x"}), 422, "validation_failed"),
        "unknown member in an entry": (
            signed({**listed, "devices": [{**first, "x": 1}, second]}),
            422,
            "validation_failed",
        ),
        "version as text": (signed({**listed, "version": "1"}), 422, "validation_failed"),
        "entry key badly encoded": (
            signed({**listed, "devices": [{**first, "signing_key": "AA"}, second]}),
            422,
            "invalid_key",
        ),
        "no list": (
            {"account_key": key.public, "signature": good["signature"]},
            422,
            "validation_failed",
        ),
        # The identity point: R = identity, S = 0 "verifies" any list under it in
        # OpenSSL's check, so the directory would take a list nobody signed.
        "a small-order account key": (
            {
                **good,
                "account_key": b64(IDENTITY_POINT),
                "signature": b64(IDENTITY_POINT + bytes(32)),
            },
            422,
            "invalid_signature",
        ),
    }


async def test_bad_registrations_are_refused_and_store_nothing(
    api: KeysApi, events: EventLog, broadcasts: Broadcasts
) -> None:
    entries = await _two_devices(api)
    for name, (body, status, code) in _bad_registrations(entries).items():
        got, reply = await api.put_account(ALICE, body)
        assert (got, (reply.get("error") or {}).get("code")) == (status, code), (name, reply)
        await _nothing_stored(api)
    assert await events.settle(ALICE) == []
    assert await broadcasts.settle() == []


async def test_the_registration_names_the_refused_device(api: KeysApi) -> None:
    entries = await _two_devices(api)
    bad = {**entries, 2: entry(2, DeviceKeys())}
    status, reply = await api.put_account(
        ALICE, AccountKeys().registration(ALICE, list(bad.values()))
    )
    assert (status, reply["error"]["code"]) == (422, "invalid_key")
    assert reply["error"]["details"] == {"field": "device_list.devices[1]", "device_id": 2}


async def test_too_many_devices(make_keys: KeysFactory) -> None:
    api = await make_keys(KeysConfig(max_devices=2))
    entries = [entry(d, await api.device(ALICE, d, listed=False)) for d in (1, 2, 3)]
    status, reply = await api.put_account(ALICE, AccountKeys().registration(ALICE, entries))
    assert (status, reply["error"]["code"]) == (409, "too_many_devices")
    await _nothing_stored(api)
    assert (await api.put_account(ALICE, AccountKeys().registration(ALICE, entries[:2])))[0] == 200


# --------------------------------------------------------------------------- reset


async def test_a_reset_removes_the_other_devices_and_announces_the_new_key(
    api: KeysApi, events: EventLog, broadcasts: Broadcasts
) -> None:
    await api.device(ALICE, 1, one_time=3, kem=3)
    await api.device(ALICE, 2, one_time=3, kem=3)
    await broadcasts.settle()
    # The owner lost both; the reinstall registers device 9 and a new account key.
    fresh = await api.device(ALICE, 9, listed=False)
    new = AccountKeys()
    status, reply = await api.put_account(ALICE, new.registration(ALICE, [entry(9, fresh)]), did=9)
    assert (status, reply) == (200, {"version": 1, "created": False, "changed": True})
    got = await events.settle(ALICE)
    assert got == [
        {"type": "key_changed", "user_id": ALICE, "account_key": new.public},
        {"type": "device_removed", "user_id": ALICE, "device_id": 1},
        {"type": "device_removed", "user_id": ALICE, "device_id": 2},
    ]
    assert await broadcasts.settle() == [
        {"type": "device_revoked", "user_id": ALICE, "device": 1},
        {"type": "device_revoked", "user_id": ALICE, "device": 2},
        {"type": "devices_changed", "user_id": ALICE},
    ]
    for device_id in (1, 2):
        await _removed(api, device_id)
    _, listed = await api.devices_of("bob", ALICE)
    assert (listed["account_key"], listed["device_list"]["version"]) == (new.public, 1)
    assert listed["devices"] == [{"device_id": 9, "name": "device 9"}]
    # The old key can no longer publish anything.
    stale = api.account(ALICE).key.signed(ALICE, 2, list(api.account(ALICE).entries.values()))
    status, reply = await api.put_device_list(ALICE, stale)
    assert (status, reply["error"]["code"]) == (422, "invalid_signature")


async def _removed(api: KeysApi, device_id: int, user: str = ALICE) -> None:
    """Keys gone, tokens refused (by this service too), revocation kept in MongoDB."""
    store = api.keys.store
    assert await api.device_doc(user, device_id) is None
    assert await api.stored(user, device_id) == (0, 0)
    key = store.revocation_key(user, device_id)
    ttl = await store.redis.ttl(key)
    assert 0 < ttl <= api.settings.refresh_token_ttl_s
    doc = await store.revocations.find_one({"_id": key})
    assert doc is not None and (doc["user_id"], doc["device_id"]) == (user, device_id)
    status, reply = await api.call("GET", f"/v1/devices/{device_id}/counts", user, did=device_id)
    assert (status, reply["error"]["code"]) == (401, "token_revoked")
    # A removed device's id cannot come back, with or without a device-bound token.
    status, reply = await api.put_identity(user, device_id, DeviceKeys().identity())
    assert (status, reply["error"]["code"]) == (409, "conflict")
    assert await api.device_doc(user, device_id) is None


# --------------------------------------------------------------------------- PUT /device-list


async def test_new_versions_add_and_remove_devices(
    api: KeysApi, events: EventLog, broadcasts: Broadcasts
) -> None:
    await api.device(ALICE, 1, one_time=2, kem=2)
    assert api.account(ALICE).version == 1
    await api.device(ALICE, 2, one_time=2, kem=2)
    await api.device(ALICE, 3, one_time=2, kem=2)
    assert [b["device_id"] for b in (await api.claim("bob", ALICE))[1]["bundles"]] == [1, 2, 3]
    await broadcasts.settle()
    # Device 1 removes device 2 (and could remove itself the same way).
    reply = await api.unlist(ALICE, 2)
    assert reply == {"version": 4, "removed": [2]}
    await _removed(api, 2)
    assert await broadcasts.settle() == [
        {"type": "device_revoked", "user_id": ALICE, "device": 2},
        {"type": "devices_changed", "user_id": ALICE},
    ]
    assert [e for e in await events.settle(ALICE) if e["type"] != "prekeys_low"] == [
        {"type": "device_removed", "user_id": ALICE, "device_id": 2}
    ]
    _, listed = await api.devices_of("bob", ALICE)
    assert [d["device_id"] for d in listed["devices"]] == [1, 3]
    assert listed["device_list"]["version"] == 4
    assert [b["device_id"] for b in (await api.claim("carol", ALICE))[1]["bundles"]] == [1, 3]
    # Other devices keep working; a rename is a new version that removes nobody.
    entries = dict(api.account(ALICE).entries)
    entries[3] = {**entries[3], "name": "renamed"}
    assert await api.publish(ALICE, entries) == {"version": 5, "removed": []}
    assert (await api.call("GET", "/v1/devices/3/counts", ALICE, did=3))[0] == 200


async def test_stale_and_skipped_versions_conflict(api: KeysApi, broadcasts: Broadcasts) -> None:
    dev = await api.device(ALICE, 1)
    await api.device(ALICE, 2)
    before = await api.keys.store.get_account(ALICE)
    await broadcasts.settle()
    acct = api.account(ALICE)
    for version in (1, 2, 4, 100):
        body = acct.key.signed(ALICE, version, [entry(1, dev)])
        status, reply = await api.put_device_list(ALICE, body)
        assert (status, reply["error"]["code"]) == (409, "conflict"), version
        assert reply["error"]["details"] == {"version": 2}
    assert await api.keys.store.get_account(ALICE) == before
    assert await api.device_doc(ALICE, 2) is not None
    assert await broadcasts.settle() == []


async def test_bad_lists_are_refused_and_change_nothing(
    api: KeysApi, events: EventLog, broadcasts: Broadcasts
) -> None:
    one = await api.device(ALICE, 1, one_time=1)
    await api.device(ALICE, 2, one_time=1)
    pending = await api.device(ALICE, 5, listed=False)
    before = await api.keys.store.get_account(ALICE)
    await broadcasts.settle()
    acct = api.account(ALICE)
    good = [entry(1, one), entry(5, pending)]
    cases = {
        "signed by another key": (AccountKeys().signed(ALICE, 3, good), 422, "invalid_signature"),
        "signature badly encoded": (
            {**acct.key.signed(ALICE, 3, good), "signature": "AAAA"},
            422,
            "invalid_key",
        ),
        "another user's list": (acct.key.signed("bob", 3, good), 403, "forbidden"),
        "an unregistered device": (
            acct.key.signed(ALICE, 3, [*good, entry(6, DeviceKeys())]),
            422,
            "invalid_key",
        ),
        "another identity": (
            acct.key.signed(ALICE, 3, [entry(1, one), entry(5, DeviceKeys())]),
            422,
            "invalid_key",
        ),
        "bad shape": (
            {"device_list": {"user_id": ALICE}, "signature": "x"},
            422,
            "validation_failed",
        ),
    }
    for name, (body, status, code) in cases.items():
        got, reply = await api.put_device_list(ALICE, body)
        assert (got, reply["error"]["code"]) == (status, code), name
    assert await api.keys.store.get_account(ALICE) == before
    assert await api.stored(ALICE, 2) == (1, 0)
    assert await broadcasts.settle() == []
    assert await events.settle(ALICE) == []
    # A user without an account key has no list to update.
    body = AccountKeys().signed("bob", 2, [])
    status, reply = await api.put_device_list("bob", body)
    assert (status, reply["error"]["code"]) == (404, "identity_not_found")


async def test_too_many_listed_devices(make_keys: KeysFactory) -> None:
    api = await make_keys(KeysConfig(max_devices=2, max_pending=2))
    for d in (1, 2):
        await api.device(ALICE, d)
    three = await api.device(ALICE, 3, listed=False)
    entries = {**api.account(ALICE).entries, 3: entry(3, three)}
    body = api.account(ALICE).next(ALICE, entries)
    status, reply = await api.put_device_list(ALICE, body)
    assert (status, reply["error"]["code"]) == (409, "too_many_devices")
    assert reply["error"]["details"] == {"max": 2, "got": 3}


async def _race(api: KeysApi, bodies: list[dict[str, Any]]) -> dict[str, Any]:
    """Send competing lists of the same version at once: exactly one wins."""
    acct = api.account(ALICE)
    replies = await asyncio.gather(*(api.put_device_list(ALICE, b) for b in bodies))
    assert sorted(status for status, _ in replies) == [200] + [409] * (len(bodies) - 1), replies
    version = acct.version + 1
    for status, reply in replies:
        if status == 409:
            assert reply["error"]["details"] == {"version": version}
    winner = next(b for b, (status, _) in zip(bodies, replies, strict=True) if status == 200)
    _, listed = await api.devices_of("bob", ALICE)
    assert (listed["device_list"], listed["signature"]) == (
        winner["device_list"],
        winner["signature"],
    )
    acct.version = version
    acct.entries = {e["device_id"]: e for e in winner["device_list"]["devices"]}
    return winner


async def test_concurrent_updates_exactly_one_wins(api: KeysApi) -> None:
    devs = {d: await api.device(ALICE, d) for d in range(1, 6)}
    acct = api.account(ALICE)
    # Renames: the same devices, different lists of the same version.
    for round_ in range(3):
        bodies = [
            acct.key.signed(
                ALICE, acct.version + 1, [entry(d, devs[d], f"r{round_}c{i}") for d in devs]
            )
            for i in range(4)
        ]
        await _race(api, bodies)
    # Each contender drops another device: only the winner's is removed.
    bodies = [
        acct.key.signed(ALICE, acct.version + 1, [e for d, e in acct.entries.items() if d != drop])
        for drop in (2, 3, 4, 5)
    ]
    winner = await _race(api, bodies)
    kept = {e["device_id"] for e in winner["device_list"]["devices"]}
    assert len(kept) == 4
    for d in devs:
        assert (await api.device_doc(ALICE, d) is not None) == (d in kept), d


async def test_an_interrupted_removal_is_finished_by_the_next_reader(
    api: KeysApi, events: EventLog, broadcasts: Broadcasts
) -> None:
    await api.device(ALICE, 1)
    await api.device(ALICE, 2, one_time=2)
    # As if the process died right after writing a list without device 2.
    store = api.keys.store
    acct = api.account(ALICE)
    body = acct.key.signed(ALICE, 3, [acct.entries[1]])
    doc = await store.get_account(ALICE)
    assert doc is not None
    canonical = verify.device_list(models.DeviceList.model_validate(body["device_list"])).text()
    fields = {
        "version": 3,
        "device_list": canonical,
        "signature": body["signature"],
        "removing": [2],
    }
    assert await store.replace_account(ALICE, doc["generation"], fields)
    await broadcasts.settle()
    # While its writer may still be at it, readers leave it alone...
    _, listed = await api.devices_of("bob", ALICE)
    assert [d["device_id"] for d in listed["devices"]] == [1]
    assert await api.device_doc(ALICE, 2) is not None
    assert await broadcasts.settle() == []
    # ... once it is overdue, a contact reading the list finishes it on the way.
    overdue = time.time() - accounts.REMOVAL_GRACE_S - 1
    await store.accounts.update_one({"_id": doc["_id"]}, {"$set": {"updated_at": overdue}})
    _, listed = await api.devices_of("bob", ALICE)
    assert [d["device_id"] for d in listed["devices"]] == [1]
    await _removed(api, 2)
    assert (await store.get_account(ALICE) or {})["removing"] == []
    assert await broadcasts.settle() == [
        {"type": "device_revoked", "user_id": ALICE, "device": 2},
        {"type": "devices_changed", "user_id": ALICE},
    ]
    assert await events.settle(ALICE) == [
        {"type": "device_removed", "user_id": ALICE, "device_id": 2}
    ]


async def test_a_removal_finished_twice_is_one_event_id(
    api: KeysApi, events: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Audit finding: a list that lands while the previous one's removal is under way
    carries that removal on and finishes it too; each published ``device_removed`` with
    an id of its own, so the delivery service could not tell the copies of one removal
    apart. Now the id is made of the removal (user, device, the generation of the write
    that dropped it): every copy has the same one. The next removal of another device
    has another."""
    one, two = await api.device(ALICE, 1), await api.device(ALICE, 2)
    await api.device(ALICE, 3)
    acct = api.account(ALICE)
    publisher = api.keys.events
    publish = publisher.publish
    second: list[Any] = []

    async def another_list_meanwhile(event: Any) -> None:
        if event.__class__.__name__ == "DeviceRemovedEvent" and not second:
            # Device 1 renames itself in the next list, while device 3's removal goes on.
            second.append(None)
            renamed = [entry(1, one, "renamed"), entry(2, two)]
            second[0] = await api.put_device_list(
                ALICE, acct.key.signed(ALICE, acct.version + 2, renamed)
            )
        await publish(event)

    monkeypatch.setattr(publisher, "publish", another_list_meanwhile)
    body = acct.key.signed(ALICE, acct.version + 1, [entry(1, one), entry(2, two)])
    status, reply = await api.put_device_list(ALICE, body)
    monkeypatch.undo()
    assert (status, reply) == (200, {"version": acct.version + 1, "removed": [3]})
    assert second == [(200, {"version": acct.version + 2, "removed": []})]
    acct.version += 2
    acct.entries = {1: entry(1, one, "renamed"), 2: entry(2, two)}
    await api.unlist(ALICE, 2)
    await events.settle(ALICE)
    removed = [v for _, v, _ in events.records if v["type"] == "device_removed"]
    ids = {d: {v["event_id"] for v in removed if v["device_id"] == d} for d in (2, 3)}
    assert [v["device_id"] for v in removed].count(3) >= 1
    assert len(ids[3]) == 1 and len(ids[2]) == 1 and ids[2] != ids[3]


# --------------------------------------------------------------------------- revocations


async def test_revocations_come_back_after_redis_loses_them(make_keys: KeysFactory) -> None:
    api = await make_keys(KeysConfig(revocation_check_s=0.1))
    await api.device(ALICE, 1)
    await api.device(ALICE, 2)
    await api.unlist(ALICE, 2)
    store = api.keys.store
    key = store.revocation_key(ALICE, 2)
    # A Redis restart: the revocation and the restored marker are gone.
    await store.redis.delete(key, store._restored_key())
    deadline = time.monotonic() + 20
    while not await store.redis.exists(key):
        assert time.monotonic() < deadline, "the revocation was not restored"
        await asyncio.sleep(0.05)
    assert 0 < await store.redis.ttl(key) <= api.settings.refresh_token_ttl_s
    status, reply = await api.call("GET", "/v1/devices/2/counts", ALICE, did=2)
    assert (status, reply["error"]["code"]) == (401, "token_revoked")


async def test_restore_at_size_keeps_live_revocations_only(api: KeysApi) -> None:
    store = api.keys.store
    now = time.time()
    docs = [
        {
            "_id": store.revocation_key(f"user{i}", 1),
            "user_id": f"user{i}",
            "device_id": 1,
            "expires_at": now + 3600 if i % 2 else now - 1,
        }
        for i in range(2000)
    ]
    await store.revocations.insert_many(docs)
    assert await store.restore_revocations() == 1000
    assert await store.revocations.count_documents({}) == 1000
    assert await store.redis.exists(store.revocation_key("user1", 1)) == 1
    assert await store.redis.exists(store.revocation_key("user2", 1)) == 0
    assert await store.revocations_present()


@pytest.mark.parametrize("reader", ["devices", "identity", "bundles"])
async def test_unknown_users_have_no_list(api: KeysApi, reader: str) -> None:
    await api.device("dave", 1, listed=False)  # pending devices do not make an account
    status, reply = await api.call("GET", f"/v1/users/dave/{reader}", "bob")
    assert (status, reply["error"]["code"]) == (404, "identity_not_found")


# --------------------------------------------------------------------------- the copy in Redis


async def test_every_list_is_copied_to_redis_for_the_gateways_and_never_put_back_older(
    api: KeysApi,
) -> None:
    """The gateways read a user's device ids from Redis while this service cannot answer
    (docs/gateway.md, "When MongoDB is down"): each write leaves its list there, and a
    read that raced a write cannot put the older list back (the generation decides)."""
    copies = api.keys.store.copies
    assert await copies.read(ALICE) is None
    await api.device(ALICE, 1)
    assert await copies.read(ALICE) == frozenset({1})
    await api.device(ALICE, 2)
    assert await copies.read(ALICE) == frozenset({1, 2})
    assert await api.unlist(ALICE, 1) == {"version": 3, "removed": [1]}
    assert await copies.read(ALICE) == frozenset({2})
    account = await accounts.get(api.keys, ALICE)
    assert account is not None
    # A read that began before the last write finishes after it: its older list stays out.
    await copies.write(ALICE, account.generation - 1, [1, 2])
    assert await copies.read(ALICE) == frozenset({2})
    # A copy lost (Redis restarted) comes back with the next read of the list.
    await api.keys.store.redis.delete(list_copy_key(api.settings.redis_prefix, ALICE))
    assert (await api.devices_of("bob", ALICE))[0] == 200
    assert await copies.read(ALICE) == frozenset({2})
    # A reset to a new account key (the generation goes on) replaces it too.
    fresh = await api.device(ALICE, 9, listed=False)
    new = AccountKeys()
    status, _ = await api.put_account(ALICE, new.registration(ALICE, [entry(9, fresh)]), did=9)
    assert status == 200
    assert await copies.read(ALICE) == frozenset({9})
