"""Only the owner changes a device's keys: every route with another user's token."""

from __future__ import annotations

from typing import Any

import pytest

from tests.keys.conftest import KeysApi
from tests.keys.keygen import DeviceKeys, b64

ALICE, MALLORY = "alice", "mallory"


async def _alice(api: KeysApi) -> tuple[DeviceKeys, dict[str, Any] | None]:
    dev = await api.device(ALICE, 1, one_time=3, kem=3)
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
    _, before = await _alice(api)
    status, body = await api.call("DELETE", f"/v1/users/{ALICE}/devices/1", MALLORY)
    assert (status, body["error"]["code"]) == (403, "forbidden")
    await _unchanged(api, before)
    # The user themself, or an admin, may.
    admin = api.headers("root", roles=("user", "admin"))
    status, _ = await api.call("DELETE", f"/v1/users/{ALICE}/devices/1", None, headers=admin)
    assert status == 204
    assert await api.device_doc(ALICE) is None
    status, body = await api.call("DELETE", f"/v1/users/{ALICE}/devices/1", ALICE)
    assert (status, body["error"]["code"]) == (404, "device_not_found")


ROUTES = [
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
