"""Links for new devices: post, read, approve once, expire; errors change nothing."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from services.common.ratelimit import Limit
from services.keys.config import KeysConfig
from tests.keys.conftest import KeysApi, KeysFactory
from tests.keys.keygen import DeviceKeys, b64, entry

ALICE = "alice"
NEW = 5  # the new device's id


def _link_id() -> str:
    return b64(os.urandom(8))


def _sealed(n: int = 120) -> str:
    return b64(os.urandom(n))


async def _setup(api: KeysApi) -> tuple[DeviceKeys, DeviceKeys]:
    """Alice has device 1 (listed); device NEW registered its keys and is pending."""
    old = await api.device(ALICE, 1)
    new = DeviceKeys()
    status, _ = await api.put_identity(ALICE, NEW, new.identity(), did=NEW)
    assert status == 200
    return old, new


async def _post(api: KeysApi, link_id: str, **body: Any) -> tuple[int, Any]:
    return await api.post_link(
        ALICE, {"link_id": link_id, "device_id": NEW, "name": "new phone", **body}, did=NEW
    )


async def test_a_link_from_post_to_approval(api: KeysApi) -> None:
    _, new = await _setup(api)
    link_id = _link_id()
    status, created = await _post(api, link_id)
    expected = {
        "link_id": link_id,
        "device_id": NEW,
        "name": "new phone",
        "identity": new.identity(),
        "approval": None,
        "e_pub": None,  # posted without one (an older client)
    }
    assert (status, created) == (201, expected)
    # The approver reads it (to show the name and fingerprint), lists the device, approves.
    assert await api.get_link(ALICE, link_id, did=1) == (200, expected)
    assert api.last_headers["Cache-Control"] == "no-store"
    await api.list_device(ALICE, NEW, new, "new phone")
    sealed = _sealed()
    assert await api.approve(ALICE, link_id, sealed, did=1) == (204, None)
    # The new device polls and finds the approval.
    status, state = await api.get_link(ALICE, link_id, did=NEW)
    assert (status, state) == (200, {**expected, "approval": {"sealed": sealed}})
    # Once only.
    status, reply = await api.approve(ALICE, link_id, _sealed(), did=1)
    assert (status, reply["error"]["code"]) == (409, "conflict")
    assert (await api.get_link(ALICE, link_id, did=NEW))[1]["approval"] == {"sealed": sealed}


async def test_bad_posts_are_refused_and_store_nothing(api: KeysApi) -> None:
    await _setup(api)
    link_id = _link_id()
    cases: list[tuple[dict[str, Any], int, int, str]] = [
        ({"device_id": 1}, NEW, 403, "forbidden"),  # another device's session
        ({"device_id": 9}, 9, 404, "device_not_found"),  # not registered
        ({"device_id": 1}, 1, 409, "conflict"),  # already listed
        ({"link_id": b64(os.urandom(7))}, NEW, 422, "validation_failed"),
        ({"link_id": link_id + "="}, NEW, 422, "validation_failed"),
        ({"link_id": "+" + link_id[1:]}, NEW, 422, "validation_failed"),
        ({"name": "a\u0000b"}, NEW, 422, "validation_failed"),
        ({"name": ""}, NEW, 422, "validation_failed"),
        ({"name": "n" * 65}, NEW, 422, "validation_failed"),
        ({"device_id": 0}, NEW, 422, "validation_failed"),
    ]
    for change, did, status, code in cases:
        body = {"link_id": link_id, "device_id": NEW, "name": "new phone", **change}
        got, reply = await api.post_link(ALICE, body, did=did)
        assert (got, reply["error"]["code"]) == (status, code), change
    status, reply = await api.get_link(ALICE, link_id)
    assert (status, reply["error"]["code"]) == (404, "not_found")
    # A taken link id is a conflict, and the first link stays as it was.
    assert (await _post(api, link_id))[0] == 201
    status, reply = await _post(api, link_id, name="other")
    assert (status, reply["error"]["code"]) == (409, "conflict")
    assert (await api.get_link(ALICE, link_id))[1]["name"] == "new phone"


async def test_links_are_private_to_their_account(api: KeysApi) -> None:
    await _setup(api)
    link_id = _link_id()
    assert (await _post(api, link_id))[0] == 201
    # Another user: the same answer as for an unknown link, for reading and approving.
    status, reply = await api.get_link("mallory", link_id)
    assert (status, reply["error"]["code"]) == (404, "not_found")
    status, reply = await api.approve("mallory", link_id, _sealed())
    assert (status, reply["error"]["code"]) == (404, "not_found")
    status, reply = await api.get_link(ALICE, _link_id())
    assert (status, reply["error"]["code"]) == (404, "not_found")
    status, reply = await api.get_link(ALICE, "not-a-link-id")
    assert (status, reply["error"]["code"]) == (422, "validation_failed")
    assert (await api.get_link(ALICE, link_id))[1]["approval"] is None


async def test_bad_approvals_are_refused_and_store_nothing(api: KeysApi) -> None:
    await _setup(api)
    pending = DeviceKeys()
    assert (await api.put_identity(ALICE, 6, pending.identity(), did=6))[0] == 200
    link_id = _link_id()
    assert (await _post(api, link_id))[0] == 201
    cases = [
        (NEW, _sealed(), 403, "forbidden"),  # its own link
        (6, _sealed(), 403, "forbidden"),  # a pending device is no approver
        (1, _sealed(59), 422, "invalid_key"),  # shorter than F_pub || nonce || tag
        (1, _sealed(8193), 422, "invalid_key"),
        (1, _sealed() + "=", 422, "invalid_key"),
        (1, "+" + _sealed()[1:], 422, "invalid_key"),
    ]
    for did, sealed, status, code in cases:
        got, reply = await api.approve(ALICE, link_id, sealed, did=did)
        assert (got, reply["error"]["code"]) == (status, code), (did, len(sealed))
    status, reply = await api.approve(ALICE, _link_id(), _sealed(), did=1)
    assert (status, reply["error"]["code"]) == (404, "not_found")
    status, reply = await api.call("PUT", f"/v1/links/{link_id}/approval", ALICE, {}, did=1)
    assert (status, reply["error"]["code"]) == (422, "validation_failed")
    assert (await api.get_link(ALICE, link_id))[1]["approval"] is None
    # A token without a device (admin tools, older clients) may approve.
    assert (await api.approve(ALICE, link_id, _sealed()))[0] == 204


async def test_concurrent_approvals_one_wins(api: KeysApi) -> None:
    await _setup(api)
    link_id = _link_id()
    assert (await _post(api, link_id))[0] == 201
    blobs = [_sealed() for _ in range(6)]
    replies = await asyncio.gather(*(api.approve(ALICE, link_id, b, did=1) for b in blobs))
    assert sorted(status for status, _ in replies) == [204] + [409] * 5
    winner = next(b for b, (status, _) in zip(blobs, replies, strict=True) if status == 204)
    assert (await api.get_link(ALICE, link_id))[1]["approval"] == {"sealed": winner}


async def test_links_expire(make_keys: KeysFactory) -> None:
    api = await make_keys(KeysConfig(link_ttl_s=1))
    await _setup(api)
    link_id = _link_id()
    assert (await _post(api, link_id))[0] == 201
    store = api.keys.store
    assert 0 < await store.redis.pttl(store._link_key(ALICE, link_id)) <= 1000
    deadline = time.monotonic() + 20
    while (await api.get_link(ALICE, link_id))[0] != 404:
        assert time.monotonic() < deadline, "the link did not expire"
        await asyncio.sleep(0.1)
    status, reply = await api.approve(ALICE, link_id, _sealed(), did=1)
    assert (status, reply["error"]["code"]) == (404, "not_found")
    # The refused approval did not bring the link back (without a TTL) either.
    assert await store.redis.exists(store._link_key(ALICE, link_id)) == 0
    # A new code for the same device works.
    assert (await _post(api, _link_id()))[0] == 201


async def test_a_link_to_a_vanished_device_is_gone(api: KeysApi) -> None:
    await _setup(api)
    link_id = _link_id()
    assert (await _post(api, link_id))[0] == 201
    assert (await api.delete(ALICE, NEW))[0] == 204
    status, reply = await api.get_link(ALICE, link_id, did=1)
    assert (status, reply["error"]["code"]) == (404, "not_found")


async def test_new_links_are_rate_limited_per_user(make_keys: KeysFactory) -> None:
    api = await make_keys(KeysConfig(link_limit=Limit(2, 3600)))
    await _setup(api)
    assert (await _post(api, _link_id()))[0] == 201
    assert (await _post(api, _link_id()))[0] == 201
    link_id = _link_id()
    status, reply = await _post(api, link_id)
    assert (status, reply["error"]["code"]) == (429, "rate_limited")
    assert int(api.last_headers["Retry-After"]) >= 1
    assert (await api.get_link(ALICE, link_id))[0] == 404
    # Another user has their own budget.
    bob = DeviceKeys()
    assert (await api.put_identity("bob", 2, bob.identity(), did=2))[0] == 200
    body = {"link_id": _link_id(), "device_id": 2, "name": "x"}
    assert (await api.post_link("bob", body, did=2))[0] == 201


async def test_a_taken_link_id_costs_no_link(make_keys: KeysFactory) -> None:
    """Audit finding: a post refused with ``conflict`` (the link id is live) still took
    a token of the user's link budget. Now it is refused before the budget."""
    api = await make_keys(KeysConfig(link_limit=Limit(2, 3600)))
    await _setup(api)
    link_id = _link_id()
    assert (await _post(api, link_id))[0] == 201
    for _ in range(3):
        status, reply = await _post(api, link_id)
        assert (status, reply["error"]["code"]) == (409, "conflict")
    assert (await _post(api, _link_id()))[0] == 201  # the second of two
    status, reply = await _post(api, _link_id())
    assert (status, reply["error"]["code"]) == (429, "rate_limited")


@pytest.mark.parametrize("did", [None, 1])
async def test_the_approver_lists_the_device_with_the_identity_it_saw(
    api: KeysApi, did: int | None
) -> None:
    """The identity a link shows is the one the list must name: a list naming
    other keys for the new device is refused."""
    _, new = await _setup(api)
    link_id = _link_id()
    assert (await _post(api, link_id))[0] == 201
    _, state = await api.get_link(ALICE, link_id, did=did)
    assert state["identity"] == new.identity()
    acct = api.account(ALICE)
    wrong = {**acct.entries, NEW: entry(NEW, DeviceKeys())}
    status, reply = await api.put_device_list(ALICE, acct.next(ALICE, wrong), did=did)
    assert (status, reply["error"]["code"]) == (422, "invalid_key")
    assert reply["error"]["details"]["device_id"] == NEW


async def test_the_new_device_cancels_its_link_and_the_code_is_no_longer_approvable(
    api: KeysApi,
) -> None:
    await _setup(api)
    link_id = _link_id()
    assert (await _post(api, link_id))[0] == 201
    path = f"/v1/links/{link_id}"
    # Nobody else cancels it: another device of the account, another user, a bad id.
    for user, did, status, code in [
        (ALICE, 1, 403, "forbidden"),
        ("mallory", NEW, 404, "not_found"),
    ]:
        got, reply = await api.call("DELETE", path, user, did=did)
        assert (got, reply["error"]["code"]) == (status, code), (user, did)
    got, reply = await api.call("DELETE", "/v1/links/not-a-link-id", ALICE, did=NEW)
    assert (got, reply["error"]["code"]) == (422, "validation_failed")
    assert (await api.get_link(ALICE, link_id))[0] == 200  # all of that changed nothing
    # Its own device does; then it is gone for reading and approving.
    assert await api.call("DELETE", path, ALICE, did=NEW) == (204, None)
    status, reply = await api.get_link(ALICE, link_id, did=1)
    assert (status, reply["error"]["code"]) == (404, "not_found")
    status, reply = await api.approve(ALICE, link_id, _sealed(), did=1)
    assert (status, reply["error"]["code"]) == (404, "not_found")
    status, reply = await api.call("DELETE", path, ALICE, did=NEW)
    assert (status, reply["error"]["code"]) == (404, "not_found")
    # An approved link is not cancelled: its approval stays to be opened.
    approved = _link_id()
    assert (await _post(api, approved))[0] == 201
    sealed = _sealed()
    assert (await api.approve(ALICE, approved, sealed, did=1))[0] == 204
    status, reply = await api.call("DELETE", f"/v1/links/{approved}", ALICE, did=NEW)
    assert (status, reply["error"]["code"]) == (409, "conflict")
    assert (await api.get_link(ALICE, approved, did=NEW))[1]["approval"] == {"sealed": sealed}


# The pending device's identity while its link is live (audit, 2026-12:
# /tmp/audit/devices/repro/r2_swap_pending_identity.py). Any session of the account
# (the password is enough; a token's ``did`` is only what its login asked for) could
# give the waiting device keys of its own, and the approver signed a list naming them.


def _session(api: KeysApi, sid: str, did: int | None = NEW) -> dict[str, str]:
    """The headers of one session (a fixed ``sid``), bound to ``did`` or to none."""
    extra: dict[str, Any] = {} if did is None else {"did": did}
    return {"Authorization": f"Bearer {api.issuer.token(ALICE, sid=sid, **extra)}"}


async def _put_signed_prekey(
    api: KeysApi, body: dict[str, Any], headers: dict[str, str]
) -> tuple[int, Any]:
    return await api.call("PUT", f"/v1/devices/{NEW}/signed-prekey", ALICE, body, headers=headers)


async def _linked_by_its_device(api: KeysApi) -> tuple[DeviceKeys, str, dict[str, Any]]:
    """Device NEW (pending) posts a link from its session "device"; returns its keys,
    the link id and the device document."""
    _, new = await _setup(api)
    headers = _session(api, "device")
    assert (await _put_signed_prekey(api, new.signed_prekey(), headers))[0] == 204
    link_id = _link_id()
    body = {"link_id": link_id, "device_id": NEW, "name": "new phone"}
    assert (await api.post_link(ALICE, body, headers=headers))[0] == 201
    doc = await api.device_doc(ALICE, NEW)
    assert doc is not None
    return new, link_id, doc


@pytest.mark.parametrize("did", [None, NEW])
async def test_another_session_cannot_swap_the_identity_of_a_device_being_linked(
    api: KeysApi, did: int | None
) -> None:
    """The attack: a session with the password (without a device, or bound to the new
    device's id, which a login may simply ask for) registers its own identity and
    prekeys for the waiting device. Refused, nothing changed: the approver sees and
    lists the device's own keys."""
    new, link_id, before = await _linked_by_its_device(api)
    mallory = DeviceKeys()
    attacker = _session(api, "mallory", did)
    status, reply = await api.put_identity(ALICE, NEW, mallory.identity(), headers=attacker)
    assert (status, reply["error"]["code"]) == (409, "conflict")
    assert reply["error"]["details"] == {"device_id": NEW, "field": "identity"}
    assert "link" in reply["error"]["message"]
    # Its prekeys, signed by the attacker's identity, do not verify against the device's.
    for path, body in (
        ("signed-prekey", mallory.signed_prekey(9)),
        ("kem-last-resort", mallory.last_resort(9)),
    ):
        status, reply = await api.call(
            "PUT", f"/v1/devices/{NEW}/{path}", ALICE, body, headers=attacker
        )
        assert (status, reply["error"]["code"]) == (422, "invalid_signature"), path
    assert await api.device_doc(ALICE, NEW) == before  # nothing changed
    status, state = await api.get_link(ALICE, link_id, did=1)
    assert (status, state["identity"]) == (200, new.identity())
    # Nor by deleting the device and registering it again: the link keeps its pin.
    assert (await api.call("DELETE", f"/v1/devices/{NEW}", ALICE, headers=attacker))[0] == 204
    status, reply = await api.put_identity(ALICE, NEW, mallory.identity(), headers=attacker)
    assert (status, reply["error"]["code"]) == (409, "conflict")
    assert await api.device_doc(ALICE, NEW) is None
    assert (await api.get_link(ALICE, link_id, did=1))[0] == 404  # no device: no link
    # The device itself registers again (its own keys, any session of it): the link is
    # back, naming its keys.
    status, reply = await api.put_identity(ALICE, NEW, new.identity(), did=NEW)
    assert (status, reply["created"]) == (200, True)
    status, state = await api.get_link(ALICE, link_id, did=1)
    assert (status, state["identity"]) == (200, new.identity())


async def test_the_device_itself_starting_again_still_works(api: KeysApi) -> None:
    new, link_id, _ = await _linked_by_its_device(api)
    # Run again (a new login, so a new session): the same keys again change nothing;
    # keys signed by its identity are taken; it takes up its link.
    again = _session(api, "device, run again")
    assert await api.put_identity(ALICE, NEW, new.identity(), headers=again) == (
        200,
        {"device_id": NEW, "created": False, "changed": False},
    )
    assert (await _put_signed_prekey(api, new.signed_prekey(2), again))[0] == 204
    status, reply = await api.call(
        "PUT", f"/v1/devices/{NEW}/kem-last-resort", ALICE, new.last_resort(3), headers=again
    )
    assert status == 204
    status, state = await api.get_link(ALICE, link_id, headers=again)
    assert (status, state["identity"]) == (200, new.identity())
    # The session that posted the link may still give the device other keys: the link
    # then names them (its pin follows).
    other = DeviceKeys()
    status, reply = await api.put_identity(
        ALICE, NEW, other.identity(), headers=_session(api, "device")
    )
    assert (status, reply["changed"]) == (200, True)
    status, state = await api.get_link(ALICE, link_id, did=1)
    assert (status, state["identity"]) == (200, other.identity())
    # And the old keys are now another session's to refuse.
    status, reply = await api.put_identity(ALICE, NEW, new.identity(), headers=again)
    assert (status, reply["error"]["code"]) == (409, "conflict")


@pytest.mark.parametrize("end", ["cancelled", "approved", "expired"])
async def test_once_the_link_ends_a_pending_identity_may_be_replaced_again(
    make_keys: KeysFactory, end: str
) -> None:
    api = await make_keys(KeysConfig(link_ttl_s=1 if end == "expired" else 600))
    _, link_id, _ = await _linked_by_its_device(api)
    if end == "cancelled":
        path = f"/v1/links/{link_id}"
        assert (await api.call("DELETE", path, ALICE, headers=_session(api, "device")))[0] == 204
    elif end == "approved":
        assert (await api.approve(ALICE, link_id, _sealed(), did=1))[0] == 204
    else:
        deadline = time.monotonic() + 20
        while (await api.get_link(ALICE, link_id))[0] != 404:
            assert time.monotonic() < deadline, "the link did not expire"
            await asyncio.sleep(0.1)
    other = DeviceKeys()
    status, reply = await api.put_identity(ALICE, NEW, other.identity())
    assert (status, reply) == (200, {"device_id": NEW, "created": False, "changed": True})
    doc = await api.device_doc(ALICE, NEW)
    assert doc is not None and doc["identity"]["signing_key"] == other.identity()["signing_key"]


async def test_a_link_whose_device_took_other_keys_reads_as_unknown(api: KeysApi) -> None:
    """A swap the identity check cannot see (one racing the link's post, or written
    past this service): the link pinned the keys it was posted with and is void."""
    _, link_id, doc = await _linked_by_its_device(api)
    other = DeviceKeys().identity()
    assert await api.keys.store.replace_identity(ALICE, NEW, int(doc["generation"]), other)
    for did in (1, NEW):
        status, reply = await api.get_link(ALICE, link_id, did=did)
        assert (status, reply["error"]["code"]) == (404, "not_found")


# E_pub with the link: the approver's check for a mistyped code.


def _e_pub() -> str:
    return b64(X25519PrivateKey.generate().public_key().public_bytes_raw())


async def test_the_link_carries_the_e_pub_its_device_posted(api: KeysApi) -> None:
    _, new = await _setup(api)
    link_id, e_pub = _link_id(), _e_pub()
    status, created = await _post(api, link_id, e_pub=e_pub)
    assert (status, created["e_pub"]) == (201, e_pub)
    for did in (1, NEW):
        status, state = await api.get_link(ALICE, link_id, did=did)
        assert (status, state["e_pub"], state["identity"]) == (200, e_pub, new.identity())
    # Approved, it still says so.
    assert (await api.approve(ALICE, link_id, _sealed(), did=1))[0] == 204
    assert (await api.get_link(ALICE, link_id, did=NEW))[1]["e_pub"] == e_pub
    # Without one (an older client), it is null.
    plain = _link_id()
    assert (await _post(api, plain))[1]["e_pub"] is None
    assert (await api.get_link(ALICE, plain, did=1))[1]["e_pub"] is None


async def test_a_malformed_e_pub_is_refused_and_nothing_is_stored(api: KeysApi) -> None:
    await _setup(api)
    good = _e_pub()
    cases: list[Any] = [
        b64(os.urandom(31)),
        b64(os.urandom(33)),
        good + "=",  # padded
        "+" + good[1:],  # not the URL-safe alphabet
        good[:-1] + "B",  # non-canonical: unused trailing bits set
        b64(bytes(32)),  # of small order (the shared secret would be zero)
        "",
        32,
        [good],
    ]
    for e_pub in cases:
        link_id = _link_id()
        status, reply = await _post(api, link_id, e_pub=e_pub)
        assert (status, reply["error"]["code"]) == (422, "validation_failed"), e_pub
        assert (await api.get_link(ALICE, link_id))[0] == 404
    assert await api.keys.store.device_links(ALICE, NEW) == []
    # Explicitly null is as absent.
    assert (await _post(api, _link_id(), e_pub=None))[0] == 201
