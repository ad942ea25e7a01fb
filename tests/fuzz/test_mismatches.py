"""The mismatches the schema fuzzer found, one test each (they failed before the fixes)."""

from __future__ import annotations

import aiohttp

from tests.fuzz.conftest import Admin
from tests.support.stack import System
from tests.support.users import User


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_a_405_lists_the_allowed_methods(system: System, user: User) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.request(
            "TRACE", f"{system.lb}/keys/v1/account", headers=bearer(user.token)
        ) as resp:
            assert resp.status == 405
            assert resp.headers["Allow"] == "PUT"
            assert (await resp.json())["error"]["code"] == "method_not_allowed"


async def test_an_ack_is_strict(system: System, user: User) -> None:
    url = f"{system.lb}/delivery/v1/inbox/ack"
    async with aiohttp.ClientSession(headers=bearer(user.token)) as http:
        for body in ({"seq": True}, {"seq": 0, "extra": 1}, {"seq": "0"}, {"seq": -1}):
            async with http.post(url, json=body) as resp:
                assert resp.status == 422, body
                assert (await resp.json())["error"]["code"] == "validation_failed"
        async with http.post(url, json={"seq": 0}) as resp:
            assert resp.status == 200
            assert await resp.json() == {"acked": 0}


async def test_integer_parameters_are_ascii_digits_in_range(
    system: System, user: User, admin: Admin
) -> None:
    """'²' is a digit to str.isdigit() but not to int(): it was a 500."""
    async with aiohttp.ClientSession() as http:
        for url, token in [
            (f"{system.lb}/delivery/v1/inbox?limit=%C2%B2", user.token),
            (f"{system.lb}/delivery/v1/inbox?after=%C2%B2", user.token),
            (f"{system.lb}/delivery/v1/inbox?limit=0", user.token),
            (f"{system.lb}/auth/v1/admin/users?limit=%C2%B2", admin.token),
            (f"{system.lb}/auth/v1/admin/audit?limit=%C2%B2", admin.token),
            (f"{system.lb}/keys/v1/devices/%C2%B2/counts", user.token),
            (f"{system.lb}/keys/v1/users/{user.user_id}/bundles?device_id=%201", user.token),
            (f"{system.lb}/keys/v1/users/a%3Cb/devices", user.token),
        ]:
            async with http.get(url, headers=bearer(token)) as resp:
                assert resp.status == 422, url
                assert (await resp.json())["error"]["code"] == "validation_failed", url
        # The largest page a client may ask for is capped, not refused.
        url = f"{system.lb}/delivery/v1/inbox?limit=1000&after={2**63 - 1}"
        async with http.get(url, headers=bearer(user.token)) as resp:
            assert resp.status == 200


async def test_an_authorization_request_with_control_characters_is_a_400(system: System) -> None:
    """Authlib refused to quote the response_type in its own error: it was a 500."""
    url = f"{system.lb}/auth/oauth2/authorize?response_type=%1C%C2%80&client_id=x"
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 400
        assert resp.content_type == "text/html"


async def test_the_gateway_documents_its_socket(system: System) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{system.lb}/gateway/openapi.json") as resp:
            doc = await resp.json()
        op = doc["paths"]["/gateway/ws"]["get"]
        assert "docs/protocol.md" in op["description"]
        assert set(op["responses"]) == {"101", "400", "503"}
        async with http.get(f"{system.lb}/gateway/docs") as resp:
            page = await resp.text()
        assert "`" not in page
        assert '<a href="docs/protocol.md">' in page
        async with http.get(f"{system.lb}/gateway/ws") as resp:
            assert resp.status == 400  # not an upgrade
        async with http.ws_connect(system.lb.replace("http", "ws") + "/gateway/ws") as ws:
            await ws.send_str('{"op": "ping"}')
            msg = await ws.receive_json()
            assert msg["code"] == "auth_required"
