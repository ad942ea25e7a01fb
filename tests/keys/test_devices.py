"""A device managing its own keys, through the real MongoDB, Redis and Kafka."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.exceptions

from services.keys.config import KeysConfig
from services.keys.store import identity_key_ids
from tests.keys.conftest import EventLog, KeysApi, KeysFactory
from tests.keys.keygen import (
    AccountKeys,
    DeviceKeys,
    b64,
    entry,
    keys_digest,
    mlkem_pub,
    unb64,
    x25519_pub,
)

ALICE = "alice"


async def test_register_upload_and_count(api: KeysApi) -> None:
    dev = DeviceKeys()
    status, body = await api.put_identity(ALICE, 1, dev.identity())
    assert (status, body) == (200, {"device_id": 1, "created": True, "changed": False})
    assert (await api.put_signed_prekey(ALICE, 1, dev.signed_prekey(3)))[0] == 204
    assert (await api.put_last_resort(ALICE, 1, dev.last_resort(9)))[0] == 204
    status, body = await api.post_one_time(ALICE, 1, dev.one_time(100))
    assert status == 201
    assert body == {"device_id": 1, "stored": 100, "one_time": 100, "kem_one_time": 0}
    status, body = await api.post_kem(ALICE, 1, dev.kem(40))
    assert (status, body["stored"], body["kem_one_time"]) == (201, 40, 40)
    status, body = await api.counts(ALICE, 1)
    assert status == 200
    assert body == {
        "device_id": 1,
        "one_time": 100,
        "kem_one_time": 40,
        "signed_prekey_id": 3,
        "kem_last_resort_id": 9,
        "threshold": 10,
    }


async def test_same_identity_again_changes_nothing(api: KeysApi, events: EventLog) -> None:
    dev = await api.device(ALICE, one_time=5, kem=5)
    before = await api.device_doc(ALICE)
    status, body = await api.put_identity(ALICE, 1, dev.identity())
    assert (status, body) == (200, {"device_id": 1, "created": False, "changed": False})
    assert await api.device_doc(ALICE) == before
    assert await api.stored(ALICE) == (5, 5)
    assert await events.settle(ALICE) == []


async def test_a_pending_device_may_register_a_new_identity(api: KeysApi, events: EventLog) -> None:
    """A reinstall before the device was linked: nobody knows it yet, no event."""
    old = await api.device(ALICE, one_time=5, kem=5, listed=False)
    new = DeviceKeys()
    status, body = await api.put_identity(ALICE, 1, new.identity())
    assert (status, body) == (200, {"device_id": 1, "created": False, "changed": True})
    # The old install's prekeys were signed by (or belong to) the old identity: gone.
    assert await api.stored(ALICE) == (0, 0)
    status, body = await api.counts(ALICE, 1)
    assert body["signed_prekey_id"] is None and body["kem_last_resort_id"] is None
    assert await events.settle(ALICE) == []
    # Keys signed by the old identity are refused now.
    status, body = await api.put_signed_prekey(ALICE, 1, old.signed_prekey(1))
    assert (status, body["error"]["code"]) == (422, "invalid_signature")


async def test_a_listed_devices_identity_cannot_change(api: KeysApi, events: EventLog) -> None:
    """The signed list names its identity: a reinstall is a new device, linked anew."""
    await api.device(ALICE, one_time=5, kem=5)
    before = await api.device_doc(ALICE)
    status, body = await api.put_identity(ALICE, 1, DeviceKeys().identity())
    assert (status, body["error"]["code"]) == (409, "conflict")
    assert body["error"]["details"] == {"device_id": 1}
    assert await api.device_doc(ALICE) == before
    assert await api.stored(ALICE) == (5, 5)
    assert await events.settle(ALICE) == []


async def test_signed_prekey_can_be_replaced(api: KeysApi) -> None:
    dev = await api.device(ALICE)
    assert (await api.put_signed_prekey(ALICE, 1, dev.signed_prekey(8)))[0] == 204
    assert (await api.counts(ALICE, 1))[1]["signed_prekey_id"] == 8


def _tamper(value: str) -> str:
    raw = bytearray(unb64(value))
    raw[0] ^= 1
    return b64(bytes(raw))


def _noncanonical(value: str) -> str:
    """The same bytes with a non-zero unused trailing bit (43 characters carry 258 bits)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return value[:-1] + alphabet[alphabet.index(value[-1]) ^ 1]


DEV = DeviceKeys()
GOOD = DEV.identity()
BAD_IDENTITIES = {
    "dh_sig tampered": ({**GOOD, "dh_sig": _tamper(GOOD["dh_sig"])}, "invalid_signature"),
    "signed by another key": (
        {**GOOD, "signing_key": DeviceKeys().identity()["signing_key"]},
        "invalid_signature",
    ),
    "dh_key swapped": ({**GOOD, "dh_key": b64(x25519_pub())}, "invalid_signature"),
    "short signing key": ({**GOOD, "signing_key": b64(DEV.signing_pub[:31])}, "invalid_key"),
    "long dh key": ({**GOOD, "dh_key": b64(DEV.dh_pub + b"\0")}, "invalid_key"),
    "padded": ({**GOOD, "dh_key": GOOD["dh_key"] + "="}, "invalid_key"),
    "standard alphabet": ({**GOOD, "dh_sig": GOOD["dh_sig"][:-1] + "+"}, "invalid_key"),
    "whitespace": ({**GOOD, "dh_key": " " + GOOD["dh_key"]}, "invalid_key"),
    "non-canonical": ({**GOOD, "dh_key": _noncanonical(GOOD["dh_key"])}, "invalid_key"),
    "small-order dh key": ({**GOOD, "dh_key": b64(b"\0" * 32)}, "invalid_key"),
    "missing field": ({k: v for k, v in GOOD.items() if k != "dh_sig"}, "validation_failed"),
    "not a string": ({**GOOD, "dh_key": 5}, "validation_failed"),
}


@pytest.mark.parametrize("case", BAD_IDENTITIES)
async def test_bad_identity_is_refused_and_nothing_stored(
    api: KeysApi, events: EventLog, case: str
) -> None:
    body, code = BAD_IDENTITIES[case]
    status, reply = await api.put_identity(ALICE, 1, body)
    assert (status, reply["error"]["code"]) == (422, code)
    assert await api.device_doc(ALICE) is None
    # ... and an existing device keeps its identity and its prekeys.
    await api.device(ALICE, 2, keys=DeviceKeys(signing=DEV.signing, dh=DEV.dh), one_time=1)
    before = await api.device_doc(ALICE, 2)
    status, reply = await api.put_identity(ALICE, 2, body)
    assert (status, reply["error"]["code"]) == (422, code)
    assert await api.device_doc(ALICE, 2) == before
    assert await api.stored(ALICE, 2) == (1, 0)
    assert await events.settle(ALICE) == []


async def test_bad_signed_prekeys_are_refused(api: KeysApi) -> None:
    dev = await api.device(ALICE, signed=False)
    good = dev.signed_prekey(5)
    cases = [
        ({**good, "sig": _tamper(good["sig"])}, "invalid_signature"),
        ({**good, "id": 6}, "invalid_signature"),  # the id is signed too
        (DeviceKeys().signed_prekey(5), "invalid_signature"),
        ({**good, "key": b64(unb64(good["key"])[:16])}, "invalid_key"),
        ({**good, "sig": good["sig"][:-2]}, "invalid_key"),
        ({**good, "id": -1}, "validation_failed"),
        ({**good, "id": 2**32}, "validation_failed"),
        ({**good, "id": "5"}, "validation_failed"),
    ]
    for body, code in cases:
        status, reply = await api.put_signed_prekey(ALICE, 1, body)
        assert reply["error"]["code"] == code, body
        assert status == 422
    assert (await api.counts(ALICE, 1))[1]["signed_prekey_id"] is None


async def test_bad_last_resort_is_refused(api: KeysApi) -> None:
    dev = await api.device(ALICE, last_resort=False)
    one_time_signed = dev.kem(1, 4)[0]  # signed with the one-time label
    lr = dev.last_resort(4)
    cases = [
        (one_time_signed, "invalid_signature"),
        ({**lr, "sig": _tamper(lr["sig"])}, "invalid_signature"),
        ({**lr, "key": b64(mlkem_pub()[:1000])}, "invalid_key"),
        ({**lr, "key": b64(b"\xff" * 1184)}, "invalid_key"),  # coefficients >= q
    ]
    for body, code in cases:
        status, reply = await api.put_last_resort(ALICE, 1, body)
        assert (status, reply["error"]["code"]) == (422, code), body
    assert (await api.counts(ALICE, 1))[1]["kem_last_resort_id"] is None
    assert (await api.put_last_resort(ALICE, 1, lr))[0] == 204


async def test_one_bad_prekey_refuses_the_whole_batch(api: KeysApi) -> None:
    dev = await api.device(ALICE)
    one_time = dev.one_time(50)
    one_time[30]["key"] = b64(unb64(one_time[30]["key"]) + b"\0")
    status, body = await api.post_one_time(ALICE, 1, one_time)
    assert (status, body["error"]["code"]) == (422, "invalid_key")
    assert body["error"]["details"] == {"field": "prekeys[30].key"}
    kem = dev.kem(20)
    kem[7]["sig"] = _tamper(kem[7]["sig"])
    status, body = await api.post_kem(ALICE, 1, kem)
    assert (status, body["error"]["code"]) == (422, "invalid_signature")
    assert body["error"]["details"] == {"field": "prekeys[7].sig"}
    kem = dev.kem(3)
    kem[2]["key"] = b64(unb64(kem[2]["key"])[:-1])
    status, body = await api.post_kem(ALICE, 1, kem)
    assert (status, body["error"]["code"]) == (422, "invalid_key")
    assert await api.stored(ALICE) == (0, 0)


async def test_oversize_batches_are_refused(api: KeysApi) -> None:
    dev = await api.device(ALICE)
    status, body = await api.post_one_time(ALICE, 1, dev.one_time(101))
    assert (status, body["error"]["code"]) == (413, "batch_too_large")
    assert body["error"]["details"] == {"max": 100, "got": 101}
    # 101 ML-KEM prekeys are ~170 KB: the body limit lets them reach the check.
    status, body = await api.post_kem(ALICE, 1, dev.kem(101))
    assert (status, body["error"]["code"]) == (413, "batch_too_large")
    status, body = await api.post_one_time(ALICE, 1, [])
    assert (status, body["error"]["code"]) == (422, "validation_failed")
    assert await api.stored(ALICE) == (0, 0)
    # A full batch of the largest kind fits.
    status, body = await api.post_kem(ALICE, 1, dev.kem(100))
    assert (status, body["kem_one_time"]) == (201, 100)


async def test_duplicate_prekey_ids_refuse_the_whole_batch(api: KeysApi) -> None:
    dev = await api.device(ALICE, one_time=10, kem=10)
    assert await api.stored(ALICE) == (10, 10)
    # Within one batch.
    batch = dev.one_time(5, start=100) + dev.one_time(1, start=102)
    status, body = await api.post_one_time(ALICE, 1, batch)
    assert (status, body["error"]["code"]) == (409, "duplicate_prekey")
    assert body["error"]["details"] == {"ids": [102]}
    # Against what is stored (ids 1..10 were uploaded): new ones around it are not stored either.
    status, body = await api.post_one_time(ALICE, 1, dev.one_time(5, start=8))
    assert (status, body["error"]["details"]) == (409, {"ids": [8, 9, 10]})
    status, body = await api.post_kem(ALICE, 1, dev.kem(3, start=10))
    assert (status, body["error"]["code"]) == (409, "duplicate_prekey")
    assert await api.stored(ALICE) == (10, 10)


async def test_an_upload_that_failed_after_its_insert_is_retried_and_handed_out(
    make_keys: KeysFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Audit finding: claims that missed (no one-time ML-KEM prekey left) had counted ids
    past the ones the device uploads next; an upload that stored them and then failed
    to put the count back (Redis away, the process killed) left them below it for good:
    never handed out, counted as stock (``prekeys_low`` never came again), and the
    client's retry of the same batch was refused as ``duplicate_prekey``. Now the
    retry is the success it missed, and every prekey of the batch goes out."""
    api = await make_keys(KeysConfig(one_time_burst=10_000, claim_burst=10_000))
    dev = await api.device(ALICE, kem=1, one_time=300)
    for i in range(31):  # the one ML-KEM prekey (id 1), then 30 misses
        assert (await api.claim(f"c{i}", ALICE))[0] == 200
    store = api.keys.store
    batch = dev.kem(100)  # numbered on from the device's own last id
    ids = [p["id"] for p in batch]

    async def redis_away(*_: object) -> None:
        raise redis.exceptions.ConnectionError("failover")

    with monkeypatch.context() as m:
        m.setattr(store, "seed_count", redis_away)
        status, body = await api.post_kem(ALICE, 1, batch)
        assert (status, body["error"]["code"]) == (503, "service_unavailable")
    assert await api.stored(ALICE) == (269, 100)  # stored before it failed
    status, body = await api.post_kem(ALICE, 1, batch)  # the client's retry
    assert (status, body.get("stored"), body.get("kem_one_time")) == (201, 100, 100)
    assert await api.stored(ALICE) == (269, 100)  # nothing stored twice
    # A different batch on the same ids is still refused.
    status, body = await api.post_kem(ALICE, 1, dev.kem(2, start=ids[0]))
    assert (status, body["error"]["details"]) == (409, {"ids": ids[:2]})
    handed = []
    for i in range(101):
        status, body = await api.claim(f"d{i}", ALICE)
        kem = body["bundles"][0]["kem_prekey"]
        if not kem["last_resort"]:
            handed.append(kem["id"])
    assert handed == ids
    assert await store.redis.exists(store._low_key(ALICE, 1))  # prekeys_low was published


async def test_a_device_holds_a_bounded_number_of_prekeys(make_keys: KeysFactory) -> None:
    api = await make_keys(KeysConfig(max_stored=150))
    dev = await api.device(ALICE, one_time=100)
    status, body = await api.post_one_time(ALICE, 1, dev.one_time(51))
    assert (status, body["error"]["code"]) == (409, "too_many_prekeys")
    assert await api.stored(ALICE) == (100, 0)
    assert (await api.post_one_time(ALICE, 1, dev.one_time(50)))[0] == 201


async def test_uploads_at_once_cannot_pile_prekeys_past_the_cap(
    make_keys: KeysFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Audit finding: each upload counted the stock, then inserted; twenty at once all
    counted 100 and all inserted (1,100 held against a cap of 150). Counted again after
    the insert, a batch that took the stock past the cap goes."""
    api = await make_keys(KeysConfig(max_stored=150))
    dev = await api.device(ALICE, one_time=100)
    batches = [dev.one_time(50) for _ in range(20)]
    store = api.keys.store
    count, counted, all_counted = store.count_prekeys, [0], asyncio.Event()

    async def count_together(*args: Any) -> int:
        held = await count(*args)
        counted[0] += 1
        if counted[0] == len(batches):
            all_counted.set()
        if counted[0] <= len(batches):
            await all_counted.wait()  # every request's check counted before any insert
        return held

    monkeypatch.setattr(store, "count_prekeys", count_together)
    answers = await asyncio.gather(*(api.post_one_time(ALICE, 1, b) for b in batches))
    monkeypatch.undo()
    assert {status for status, _ in answers} <= {201, 409}
    assert all(b["error"]["code"] == "too_many_prekeys" for s, b in answers if s == 409)
    held, _ = await api.stored(ALICE)
    assert held <= 150
    assert held == 100 + 50 * sum(1 for status, _ in answers if status == 201)


async def test_registrations_at_once_cannot_pass_the_device_cap(make_keys: KeysFactory) -> None:
    api = await make_keys(KeysConfig(max_devices=2, max_pending=1))
    await api.device(ALICE, 1, signed=False, last_resort=False)
    answers = await asyncio.gather(
        *(api.put_identity(ALICE, d, DeviceKeys().identity()) for d in range(2, 12))
    )
    created = [d for d, (status, _) in zip(range(2, 12), answers, strict=True) if status == 200]
    refused = [b["error"]["code"] for status, b in answers if status != 200]
    assert set(refused) <= {"too_many_devices"}
    assert len(created) <= 2
    assert len(await api.keys.store.list_devices(ALICE)) == 1 + len(created)


async def test_a_user_has_a_bounded_number_of_devices(make_keys: KeysFactory) -> None:
    """At most max_devices listed plus max_pending waiting to be linked."""
    api = await make_keys(KeysConfig(max_devices=2, max_pending=1))
    await api.device(ALICE, 1, signed=False, last_resort=False)
    await api.device(ALICE, 2, signed=False, last_resort=False)
    await api.device(ALICE, 3, signed=False, last_resort=False, listed=False)
    status, body = await api.put_identity(ALICE, 4, DeviceKeys().identity())
    assert (status, body["error"]["code"]) == (409, "too_many_devices")
    assert body["error"]["details"] == {"max_devices": 2, "max_pending": 1}
    assert await api.device_doc(ALICE, 4) is None
    assert (await api.delete(ALICE, 3))[0] == 204
    assert (await api.put_identity(ALICE, 4, DeviceKeys().identity()))[0] == 200


async def test_stale_pending_devices_make_room(make_keys: KeysFactory) -> None:
    """An abandoned link does not block the account: old pending devices are forgotten
    once the cap is reached (listed devices never are)."""
    api = await make_keys(KeysConfig(max_devices=1, max_pending=1, pending_ttl_s=0))
    await api.device(ALICE, 1, one_time=2)
    await api.device(ALICE, 2, one_time=2, listed=False)
    status, _ = await api.put_identity(ALICE, 3, DeviceKeys().identity())
    assert status == 200
    assert await api.device_doc(ALICE, 2) is None
    assert await api.stored(ALICE, 2) == (0, 0)
    assert await api.device_doc(ALICE, 1) is not None
    assert await api.stored(ALICE, 1) == (2, 0)


async def test_keys_need_a_registered_device(api: KeysApi) -> None:
    dev = DeviceKeys()
    for status, body in [
        await api.put_signed_prekey(ALICE, 1, dev.signed_prekey()),
        await api.put_last_resort(ALICE, 1, dev.last_resort()),
        await api.post_one_time(ALICE, 1, dev.one_time(1)),
        await api.post_kem(ALICE, 1, dev.kem(1)),
        await api.counts(ALICE, 1),
        await api.check(ALICE, 1, b64(b"\0" * 32)),
        await api.delete(ALICE, 1),
    ]:
        assert (status, body["error"]["code"]) == (404, "device_not_found")
    assert await api.stored(ALICE) == (0, 0)


@pytest.mark.parametrize("device_id", ["0", "-1", "2147483648", "x", "1.5", "%EF%BC%91"])
async def test_device_ids_are_checked(api: KeysApi, device_id: str) -> None:
    status, body = await api.call("GET", f"/v1/devices/{device_id}/counts", ALICE)
    assert (status, body["error"]["code"]) == (422, "validation_failed")


async def test_keys_check_detects_drift(api: KeysApi) -> None:
    dev = DeviceKeys()
    await api.put_identity(ALICE, 1, dev.identity())
    spk, lr = dev.signed_prekey(3), dev.last_resort(4)
    digest = keys_digest(dev.identity(), spk, lr)
    # Nothing but the identity yet: drifted.
    assert await api.check(ALICE, 1, digest) == (200, {"match": False})
    await api.put_signed_prekey(ALICE, 1, spk)
    await api.put_last_resort(ALICE, 1, lr)
    assert await api.check(ALICE, 1, digest) == (200, {"match": True})
    # The server holds a newer signed prekey than the client believes.
    await api.put_signed_prekey(ALICE, 1, dev.signed_prekey(5))
    assert await api.check(ALICE, 1, digest) == (200, {"match": False})
    status, body = await api.check(ALICE, 1, digest[:-2])
    assert (status, body["error"]["code"]) == (422, "invalid_key")


async def test_delete_pending_device_removes_everything(api: KeysApi) -> None:
    await api.device(ALICE, 1, one_time=3, kem=3, listed=False)
    await api.device(ALICE, 2, one_time=2, kem=2)
    assert await api.delete(ALICE, 1) == (204, None)
    assert await api.device_doc(ALICE, 1) is None
    assert await api.stored(ALICE, 1) == (0, 0)
    assert await api.stored(ALICE, 2) == (2, 2)
    _, body = await api.identity_of("bob", ALICE)
    assert [d["device_id"] for d in body["devices"]] == [2]


async def test_a_listed_device_leaves_through_a_new_list_only(api: KeysApi) -> None:
    await api.device(ALICE, 1, one_time=3, kem=3)
    before = await api.device_doc(ALICE, 1)
    for status, body in [
        await api.delete(ALICE, 1),
        await api.call("DELETE", f"/v1/users/{ALICE}/devices/1", ALICE),
        await api.call(
            "DELETE",
            f"/v1/users/{ALICE}/devices/1",
            None,
            headers=api.headers("root", roles=("user", "admin")),
        ),
    ]:
        assert (status, body["error"]["code"]) == (409, "conflict")
    assert await api.device_doc(ALICE, 1) == before
    assert await api.stored(ALICE, 1) == (3, 3)


async def test_deleting_and_re_registering_never_installs_an_identity_silently(
    api: KeysApi, events: EventLog
) -> None:
    """Issue #20: "deleting and re-registering a device installs a new identity without
    a key_changed event". With signed device lists (docs/devices.md) no way of
    deleting and re-registering gets a new identity in front of a contact
    unannounced: a listed device can be neither deleted nor re-registered; one
    removed by a signed list keeps its id revoked; a new install is a pending
    device that nobody sees until a list signed by the account key (the key the
    safety number is made of) names it; and only a new account key, which
    contacts cannot check against anything, brings a different identity in
    without that signature, and it is announced with ``key_changed``."""
    first = await api.device(ALICE, 1, one_time=2, kem=2)
    _, seen = await api.identity_of("bob", ALICE)
    [listed] = seen["devices"]
    assert listed["identity"]["signing_key"] == b64(first.signing_pub)

    # Delete the listed device, by every route, then register a new identity under its id.
    thief = DeviceKeys()
    for status, body in [
        await api.delete(ALICE, 1),
        await api.call("DELETE", f"/v1/users/{ALICE}/devices/1", ALICE),
        await api.put_identity(ALICE, 1, thief.identity()),
    ]:
        assert (status, body["error"]["code"]) == (409, "conflict")
    assert (await api.identity_of("bob", ALICE))[1] == seen
    assert await events.settle(ALICE) == []

    # Removed through a signed list: the id stays revoked, and nothing new appears.
    second = await api.device(ALICE, 2)
    await api.unlist(ALICE, 1)
    status, body = await api.put_identity(ALICE, 1, thief.identity())
    assert (status, body["error"]["code"]) == (409, "conflict")
    _, seen = await api.identity_of("bob", ALICE)
    assert [(d["device_id"], d["identity"]["signing_key"]) for d in seen["devices"]] == [
        (2, b64(second.signing_pub))
    ]

    # A new install under a new id is pending: invisible, so no one encrypts to it...
    fresh = DeviceKeys()
    status, _ = await api.put_identity(ALICE, 3, fresh.identity())
    assert status == 200
    assert (await api.identity_of("bob", ALICE))[1] == seen
    status, body = await api.claim("bob", ALICE)
    assert [b["device_id"] for b in body["bundles"]] == [2]
    # ...until a list signed by the unchanged account key names it (the safety
    # number does not change: no key_changed; contacts check the signature).
    await api.list_device(ALICE, 3, fresh)
    _, seen = await api.identity_of("bob", ALICE)
    assert [d["device_id"] for d in seen["devices"]] == [2, 3]
    assert seen["account_key"] == api.account(ALICE).key.public
    kinds = [e["type"] for e in await events.settle(ALICE)]
    assert "device_removed" in kinds and "key_changed" not in kinds

    # The one way around the account key's signature is a new account key:
    # announced to every contact.
    reinstall = DeviceKeys()
    await api.put_identity(ALICE, 9, reinstall.identity())
    new = AccountKeys()
    status, _ = await api.put_account(ALICE, new.registration(ALICE, [entry(9, reinstall)]), did=9)
    assert status == 200
    got = await events.settle(ALICE)
    assert {"type": "key_changed", "user_id": ALICE, "account_key": new.public} in got


async def test_a_registration_racing_the_removal_of_its_id_does_not_stay(
    api: KeysApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Audit finding: a registration checked the revocation once, before its insert; a
    removal landing in between (device 2 re-uploading its identity, as at every
    start-up, while device 1 removes it) let the removed id be registered again, and a
    later list could name it. Now the registration checks again after its insert and
    takes it back."""
    await api.device(ALICE, 1)
    second = await api.device(ALICE, 2)
    store = api.keys.store
    revoked = store.device_revoked

    async def removed_meanwhile(user_id: str, device_id: int) -> bool:
        answer = await revoked(user_id, device_id)
        if device_id == 2 and not answer:
            assert await api.unlist(ALICE, 2) == {"version": 3, "removed": [2]}
        return answer

    monkeypatch.setattr(store, "device_revoked", removed_meanwhile)
    status, body = await api.put_identity(ALICE, 2, second.identity())
    monkeypatch.undo()
    assert (status, body["error"]["code"]) == (409, "conflict")
    assert await api.device_doc(ALICE, 2) is None
    assert await store.device_revoked(ALICE, 2)


async def test_another_devices_identity_keys_are_refused(api: KeysApi) -> None:
    """Audit finding (an unknown key-share, docs/crypto.md): the directory took any
    identity that signed itself, so an account could register another account's
    device keys (they are public) as its own device, list it, and have messages
    written to it read by the other account's device and shown there as its own."""
    alice = await api.device(ALICE, one_time=5, kem=5)
    for user, device_id in (("mallory", 99), (ALICE, 2)):
        status, body = await api.put_identity(user, device_id, alice.identity())
        assert (status, body["error"]["code"]) == (409, "conflict")
        assert body["error"]["details"] == {"field": "identity"}
        assert await api.keys.store.get_device(user, device_id) is None
    # Its own identity again is still no change.
    assert (await api.put_identity(ALICE, 1, alice.identity()))[1]["created"] is False


async def test_identity_keys_a_device_gave_up_may_be_registered_again(api: KeysApi) -> None:
    """A holder whose device took other keys (a reinstall before it was linked) holds
    nothing: the keys it had may be another device's."""
    old = await api.device("bob", one_time=1, kem=1, listed=False)
    assert (await api.put_identity("bob", 1, DeviceKeys().identity()))[1]["changed"] is True
    status, body = await api.put_identity("bob", 2, old.identity())
    assert (status, body["created"]) == (200, True)


async def test_devices_registered_before_the_record_hold_their_keys(api: KeysApi) -> None:
    """Devices registered before identity keys were recorded, or by an older replica
    during a rolling upgrade (a review finding: the first pass wrote a marker and
    none came after), are recorded by the background passes, each reading the devices
    changed since the last began; or when they register their identity again."""
    store = api.keys.store
    early, during, again = DeviceKeys(), DeviceKeys(), DeviceKeys()
    assert (await api.put_identity("carol", 1, early.identity()))[0] == 200
    await store.identity_keys.delete_many({})  # as before the record existed
    assert await store.record_identity_keys() >= 1
    status, body = await api.put_identity("mallory", 7, early.identity())
    assert (status, body["error"]["code"]) == (409, "conflict")

    # Registered by an older replica after that pass: no record.
    for user, keys in (("dave", during), ("erin", again)):
        assert (await api.put_identity(user, 1, keys.identity()))[0] == 200
        ids = identity_key_ids((await store.get_device(user, 1))["identity"])
        await store.identity_keys.delete_many({"_id": {"$in": list(ids)}})
    # Erin's device sends its identity again (as a client does at start-up).
    assert (await api.put_identity("erin", 1, again.identity()))[1]["created"] is False
    status, body = await api.put_identity("mallory", 8, again.identity())
    assert (status, body["error"]["code"]) == (409, "conflict")
    # Dave's is recorded by the next pass, which reads only what changed since the last
    # (less its margin): carol's, made to look changed long ago, is not read again.
    await store.devices.update_one({"user_id": "carol"}, {"$set": {"updated_at": 1.0}})
    assert await store.record_identity_keys() == 2  # dave's and erin's
    status, body = await api.put_identity("mallory", 9, during.identity())
    assert (status, body["error"]["code"]) == (409, "conflict")


async def _records(api: KeysApi, user: str) -> set[str]:
    """The ``identity_keys`` records naming a device of ``user``."""
    found = await api.keys.store.identity_keys.find({"user_id": user}).to_list()
    return {str(r["_id"]) for r in found}


async def _counters(api: KeysApi, user: str, device_id: int) -> list[str]:
    """A device's claim counters in Redis, of every generation and kind."""
    store = api.keys.store
    match = f"{store.prefix}:next:*:*:{device_id}:{user}"
    return sorted([k.decode() async for k in store.redis.scan_iter(match=match)])


async def test_a_reinstalled_pending_device_keeps_one_identity_record(api: KeysApi) -> None:
    """Audit finding: the ``identity_keys`` records of a pending device's identity stayed
    when it registered another (and each new generation's claim counters in Redis lived
    30 days), so a user registering fresh keys for device 1 in a loop grew both without
    bound. Now the old identity's records and counters go with it."""
    devs = [DeviceKeys() for _ in range(5)]
    for dev in devs:
        assert (await api.put_identity("grace", 1, dev.identity()))[0] == 200
        assert (await api.post_one_time("grace", 1, dev.one_time(2)))[0] == 201
        assert (await api.post_kem("grace", 1, dev.kem(2)))[0] == 201
    assert await _records(api, "grace") == set(identity_key_ids(devs[-1].identity()))
    generation = (await api.device_doc("grace", 1) or {})["generation"]
    assert await _counters(api, "grace", 1) == sorted(
        f"{api.keys.store.prefix}:next:{kind}:{generation}:1:grace"
        for kind in ("kem_one_time", "one_time")
    )
    # The keys it gave up may be another device's; those it holds are still its own.
    assert (await api.put_identity("mallory", 5, devs[0].identity()))[0] == 200
    status, body = await api.put_identity("mallory", 6, devs[-1].identity())
    assert (status, body["error"]["code"]) == (409, "conflict")


async def test_a_key_kept_through_a_reinstall_stays_recorded(api: KeysApi) -> None:
    """A new identity sharing a key with the old one (the same signing key, a new DH
    key) keeps that key's record: only what the device no longer holds goes."""
    old = await api.device("grace", listed=False)
    new = DeviceKeys(signing=old.signing)
    assert (await api.put_identity("grace", 1, new.identity()))[1]["changed"] is True
    assert await _records(api, "grace") == set(identity_key_ids(new.identity()))
    other = DeviceKeys(signing=old.signing)
    status, body = await api.put_identity("mallory", 5, other.identity())
    assert (status, body["error"]["code"]) == (409, "conflict")


async def test_deleted_and_removed_devices_leave_no_identity_record(api: KeysApi) -> None:
    """Audit finding: deleting a pending device, forgetting a stale one and removing a
    listed one left their ``identity_keys`` records (and claim counters) for good."""
    await api.device("grace", 1, one_time=2, kem=2)
    await api.device("grace", 2, one_time=2, kem=2, listed=False)
    await api.device("grace", 3, one_time=2, kem=2)
    await api.claim("bob", "grace")  # counts ids out of devices 1 and 3
    assert await api.delete("grace", 2) == (204, None)
    assert (await api.unlist("grace", 3))["removed"] == [3]
    kept = set(identity_key_ids((await api.device_doc("grace", 1) or {})["identity"]))
    assert await _records(api, "grace") == kept
    assert await _counters(api, "grace", 2) == []
    assert await _counters(api, "grace", 3) == []
    assert len(await _counters(api, "grace", 1)) == 2


async def test_stale_pending_devices_forgotten_leave_no_identity_record(
    make_keys: KeysFactory,
) -> None:
    api = await make_keys(KeysConfig(max_devices=1, max_pending=1, pending_ttl_s=0))
    await api.device("grace", 1)
    await api.device("grace", 2, listed=False)
    await api.device("grace", 3, listed=False)  # device 2 is forgotten to make room
    assert await api.device_doc("grace", 2) is None
    kept: set[str] = set()
    for device_id in (1, 3):
        kept |= set(identity_key_ids((await api.device_doc("grace", device_id) or {})["identity"]))
    assert await _records(api, "grace") == kept


async def test_releasing_an_identity_touches_no_other_holder(api: KeysApi) -> None:
    """The records go by ``_id`` *and* device: a record another device took is never
    deleted. Here a key two devices registered (one before the record existed, as an
    older replica could), the record naming the second: the first going leaves it, and
    the key stays the second's."""
    store = api.keys.store
    shared = DeviceKeys()
    assert (await api.put_identity("grace", 1, shared.identity()))[0] == 200
    ids = list(identity_key_ids(shared.identity()))
    await store.identity_keys.delete_many({"_id": {"$in": ids}})
    assert (await api.put_identity("mallory", 7, shared.identity()))[0] == 200
    assert await api.delete("grace", 1) == (204, None)
    assert await _records(api, "mallory") == set(ids)
    status, body = await api.put_identity("eve", 1, shared.identity())
    assert (status, body["error"]["code"]) == (409, "conflict")


async def test_a_key_the_device_holds_again_is_recorded_again(api: KeysApi) -> None:
    """A release that finds the device holding the key again after its delete (the
    same identity registered again meanwhile) records it again."""
    store = api.keys.store
    dev = await api.device("grace", listed=False)
    await store.release_identity("grace", 1, dev.identity())
    assert await _records(api, "grace") == set(identity_key_ids(dev.identity()))
    status, body = await api.put_identity("mallory", 5, dev.identity())
    assert (status, body["error"]["code"]) == (409, "conflict")
