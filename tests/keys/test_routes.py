"""The service's own pages: OpenAPI document and docs, health and readiness."""

from __future__ import annotations

from tests.keys.conftest import KeysApi


async def test_openapi_lists_every_route(api: KeysApi) -> None:
    status, doc = await api.call("GET", "/openapi.json", None)
    assert status == 200
    ops = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    assert ops == {
        ("PUT", "/keys/v1/devices/{device_id}/identity"),
        ("PUT", "/keys/v1/devices/{device_id}/signed-prekey"),
        ("POST", "/keys/v1/devices/{device_id}/one-time-prekeys"),
        ("POST", "/keys/v1/devices/{device_id}/kem-prekeys"),
        ("PUT", "/keys/v1/devices/{device_id}/kem-last-resort"),
        ("GET", "/keys/v1/devices/{device_id}/counts"),
        ("POST", "/keys/v1/devices/{device_id}/check"),
        ("DELETE", "/keys/v1/devices/{device_id}"),
        ("DELETE", "/keys/v1/users/{user_id}/devices/{device_id}"),
        ("GET", "/keys/v1/users/{user_id}/bundles"),
        ("GET", "/keys/v1/users/{user_id}/identity"),
        ("GET", "/keys/v1/users/{user_id}/devices"),
        ("POST", "/keys/v1/users/bundles"),
        ("POST", "/keys/v1/users/device-lists"),
        ("PUT", "/keys/v1/account"),
        ("PUT", "/keys/v1/device-list"),
        ("POST", "/keys/v1/links"),
        ("GET", "/keys/v1/links/{link_id}"),
        ("DELETE", "/keys/v1/links/{link_id}"),
        ("PUT", "/keys/v1/links/{link_id}/approval"),
    }
    claim = doc["paths"]["/keys/v1/users/{user_id}/bundles"]["get"]
    assert "rate_limited" in claim["responses"]["429"]["description"]
    assert "Bundle" in doc["components"]["schemas"]
    assert "DeviceList" in doc["components"]["schemas"]
    update = doc["paths"]["/keys/v1/device-list"]["put"]
    assert "conflict" in update["responses"]["409"]["description"]
    assert "invalid_signature" in update["responses"]["422"]["description"]
    resp = await api.client.get("/keys/docs")
    assert resp.status == 200
    assert "/keys/v1/users/{user_id}/bundles" in await resp.text()


async def test_ready_once_dependencies_and_indexes_are(api: KeysApi) -> None:
    status, body = await api.call("GET", "/readyz", None)
    assert (status, body["checks"]) == (
        200,
        {"mongodb": "ok", "redis": "ok", "kafka": "ok", "startup": "ok"},
    )
