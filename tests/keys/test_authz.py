"""Only the owner changes a device's keys: every route with another user's token, and
with a token bound to another device of the same user."""

from __future__ import annotations

from typing import Any

import pytest

from tests.keys.conftest import KeysApi
from tests.keys.keygen import DeviceKeys, b64

ALICE, MALLORY = "alice", "mallory"


async def _alice(api: KeysApi, listed: bool = True) -> tuple[DeviceKeys, dict[str, Any] | None]:
    dev = await api.device(ALICE, 1, one_time=3, kem=3, listed=listed)
    return dev, await api.device_doc(ALICE)


async def _unchanged(api: KeysApi, before: dict[str, Any] | None) -> None:
    assert await api.device_doc(ALICE) == before
    assert await api.stored(ALICE) == (3, 3)


async def test_device_routes_act_on_the_callers_own_devices_only(api: KeysApi) -> None:
    dev, before = await _alice(api)
    # Mallory addresses "device 1": it means Mallory's device 1, which does not exist.
    for status, body in [
        await api.put_signed_prekey(MALLORY, 1, dev.signed_prekey(99)),
        await api.put_last_resort(MALLORY, 1, dev.last_resort(99)),
        await api.post_one_time(MALLORY, 1, dev.one_time(1)),
        await api.post_kem(MALLORY, 1, dev.kem(1)),
        await api.counts(MALLORY, 1),
        await api.check(MALLORY, 1, b64(b"\0" * 32)),
        await api.delete(MALLORY, 1),
    ]:
        assert (status, body["error"]["code"]) == (404, "device_not_found")
    await _unchanged(api, before)
    # Registering "device 1" creates Mallory's own device 1; Alice's is untouched,
    # and Mallory's uploads, even signed with Alice's keys, land on Mallory's device.
    mallory = DeviceKeys()
    assert (await api.put_identity(MALLORY, 1, mallory.identity()))[1]["created"] is True
    status, body = await api.put_signed_prekey(MALLORY, 1, dev.signed_prekey(99))
    assert (status, body["error"]["code"]) == (422, "invalid_signature")
    assert (await api.post_one_time(MALLORY, 1, dev.one_time(2)))[0] == 201
    assert (await api.delete(MALLORY, 1))[0] == 204
    await _unchanged(api, before)


async def test_removing_another_users_device_is_forbidden(api: KeysApi) -> None:
    _, before = await _alice(api, listed=False)
    status, body = await api.call("DELETE", f"/v1/users/{ALICE}/devices/1", MALLORY)
    assert (status, body["error"]["code"]) == (403, "forbidden")
    await _unchanged(api, before)
    # The user themself, or an admin, may (a pending device: see test_devices for listed ones).
    admin = api.headers("root", roles=("user", "admin"))
    status, _ = await api.call("DELETE", f"/v1/users/{ALICE}/devices/1", None, headers=admin)
    assert status == 204
    assert await api.device_doc(ALICE) is None
    status, body = await api.call("DELETE", f"/v1/users/{ALICE}/devices/1", ALICE)
    assert (status, body["error"]["code"]) == (404, "device_not_found")


ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("PUT", "/v1/devices/1/identity", {}),
    ("PUT", "/v1/devices/1/signed-prekey", {}),
    ("POST", "/v1/devices/1/one-time-prekeys", {}),
    ("POST", "/v1/devices/1/kem-prekeys", {}),
    ("PUT", "/v1/devices/1/kem-last-resort", {}),
    ("GET", "/v1/devices/1/counts", None),
    ("POST", "/v1/devices/1/check", {}),
    ("DELETE", "/v1/devices/1", None),
    ("DELETE", f"/v1/users/{ALICE}/devices/1", None),
    ("GET", f"/v1/users/{ALICE}/bundles", None),
    ("GET", f"/v1/users/{ALICE}/identity", None),
    ("GET", f"/v1/users/{ALICE}/devices", None),
    ("PUT", "/v1/account", {}),
    ("PUT", "/v1/device-list", {}),
    ("POST", "/v1/links", {}),
    ("GET", "/v1/links/AAAAAAAAAAA", None),
    ("PUT", "/v1/links/AAAAAAAAAAA/approval", {}),
]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
async def test_every_route_needs_a_valid_token(
    api: KeysApi, method: str, path: str, body: Any
) -> None:
    _, before = await _alice(api)
    # Checked before the body is even read: no validation detail leaks.
    status, reply = await api.call(method, path, None, body)
    assert (status, reply["error"]["code"]) == (401, "unauthenticated")
    bad = {"Authorization": "Bearer " + api.issuer.token(ALICE)[:-4] + "AAAA"}
    status, reply = await api.call(method, path, None, body, headers=bad)
    assert (status, reply["error"]["code"]) == (401, "invalid_token")
    expired = api.headers(ALICE, exp=1)
    status, reply = await api.call(method, path, None, body, headers=expired)
    assert (status, reply["error"]["code"]) == (401, "token_expired")
    await _unchanged(api, before)


def _valid_bodies(dev: DeviceKeys) -> list[tuple[str, str, Any]]:
    return [
        ("PUT", "/v1/devices/1/identity", DeviceKeys().identity()),
        ("PUT", "/v1/devices/1/signed-prekey", dev.signed_prekey(99)),
        ("POST", "/v1/devices/1/one-time-prekeys", {"prekeys": dev.one_time(1, 500)}),
        ("POST", "/v1/devices/1/kem-prekeys", {"prekeys": dev.kem(1, 500)}),
        ("PUT", "/v1/devices/1/kem-last-resort", dev.last_resort(99)),
        ("GET", "/v1/devices/1/counts", None),
        ("POST", "/v1/devices/1/check", {"digest": b64(b"\0" * 32)}),
        ("DELETE", "/v1/devices/1", None),
    ]


async def test_a_device_bound_session_writes_its_own_device_only(api: KeysApi) -> None:
    dev, before = await _alice(api, listed=False)
    assert {(m, p) for m, p, _ in _valid_bodies(dev)} == {
        (m, p) for m, p, _ in ROUTES if p.startswith("/v1/devices/")
    }
    # A session of Alice's device 2 addressing her device 1, with good bodies: refused.
    for method, path, body in _valid_bodies(dev):
        status, reply = await api.call(method, path, ALICE, body, did=2)
        assert (status, reply["error"]["code"]) == (403, "forbidden"), path
    await _unchanged(api, before)
    # The same requests from device 1's own session work.
    for method, path, body in _valid_bodies(dev)[1:-1]:
        status, reply = await api.call(method, path, ALICE, body, did=1)
        assert status in (200, 201, 204), reply


async def test_a_device_bound_session_cannot_remove_another_device_by_the_users_route(
    api: KeysApi,
) -> None:
    """Audit finding: ``DELETE /v1/users/{u}/devices/{d}`` checked the user only, so a
    session bound to device 2 removed the pending device 1 that ``DELETE
    /v1/devices/1`` refuses it. Now both refuse it the same way."""
    _, before = await _alice(api, listed=False)
    for path in ("/v1/devices/1", f"/v1/users/{ALICE}/devices/1"):
        status, reply = await api.call("DELETE", path, ALICE, did=2)
        assert (status, (reply or {}).get("error", {}).get("code")) == (403, "forbidden"), path
    await _unchanged(api, before)
    # Its own device, or a session bound to none, or an admin's, may.
    assert (await api.call("DELETE", f"/v1/users/{ALICE}/devices/1", ALICE, did=1))[0] == 204
    assert (await api.put_identity(ALICE, 1, DeviceKeys().identity()))[0] == 200
    assert (await api.call("DELETE", f"/v1/users/{ALICE}/devices/1", ALICE))[0] == 204
    assert (await api.put_identity(ALICE, 1, DeviceKeys().identity()))[0] == 200
    admin = api.headers("root", roles=("user", "admin"), did=5)
    status, _ = await api.call("DELETE", f"/v1/users/{ALICE}/devices/1", None, headers=admin)
    assert status == 204


async def test_a_device_bound_session_reaches_its_own_device(api: KeysApi) -> None:
    dev = DeviceKeys()
    status, body = await api.put_identity(ALICE, 7, dev.identity(), did=7)
    assert (status, body["created"]) == (200, True)
    assert (await api.call("GET", "/v1/devices/7/counts", ALICE, did=7))[0] == 200
    assert (await api.call("DELETE", "/v1/devices/7", ALICE, did=7))[0] == 204


async def test_an_admin_removing_another_users_device_is_audited(api: KeysApi) -> None:
    """Before: an admin removed another user's pending device and the shared audit log
    had no entry of it (docs/moderation.md: each admin route writes one). One entry
    now, after the removal; a refused one and the owner's own removal write none."""
    await _alice(api, listed=False)
    log = api.keys.audit
    admin = api.headers("root", roles=("user", "admin"))
    status, body = await api.call("DELETE", f"/v1/users/{ALICE}/devices/9", None, headers=admin)
    assert (status, body["error"]["code"]) == (404, "device_not_found")
    assert await log.coll.count_documents({}) == 0
    status, _ = await api.call("DELETE", f"/v1/users/{ALICE}/devices/1", None, headers=admin)
    assert status == 204 and await api.device_doc(ALICE) is None
    [entry] = await log.coll.find({}).to_list()
    assert {k: entry[k] for k in ("service", "actor_id", "actor_role", "action")} == {
        "service": "keys", "actor_id": "root", "actor_role": "admin",
        "action": "user.remove_device",
    }  # fmt: skip
    assert (entry["target_type"], entry["target_id"]) == ("user", ALICE)
    assert entry["details"] == {"device_id": 1} and entry["ip"]
    # The owner's own removal is not an admin action.
    assert (await api.put_identity(ALICE, 1, DeviceKeys().identity()))[0] == 200
    assert (await api.call("DELETE", f"/v1/users/{ALICE}/devices/1", ALICE))[0] == 204
    assert await log.coll.count_documents({}) == 1


async def test_an_admin_removal_whose_audit_failed_is_not_left_unaudited(
    api: KeysApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the device was deleted, then the audit entry failed (a MongoDB blip:
    503) and the retry answered 404 ``device_not_found``: a removal never audited. The
    entry is now written before the deletion: a failed one leaves the device, and the
    retry removes it with its entry."""
    await _alice(api, listed=False)
    log = api.keys.audit
    admin = api.headers("root", roles=("user", "admin"))

    async def blip(*_: object, **__: object) -> None:
        raise ConnectionError("mongo blip")

    with monkeypatch.context() as m:
        m.setattr(log, "record", blip)
        status, body = await api.call("DELETE", f"/v1/users/{ALICE}/devices/1", None, headers=admin)
        assert (status, body["error"]["code"]) == (503, "service_unavailable")
    status, _ = await api.call("DELETE", f"/v1/users/{ALICE}/devices/1", None, headers=admin)
    assert status == 204 and await api.device_doc(ALICE) is None
    [entry] = await log.coll.find({}).to_list()
    assert (entry["action"], entry["target_id"], entry["details"]) == (
        "user.remove_device", ALICE, {"device_id": 1},
    )  # fmt: skip
