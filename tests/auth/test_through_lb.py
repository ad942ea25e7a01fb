"""The auth service as deployed: its own process (production argon2), behind HAProxy."""

from __future__ import annotations

import aiohttp

from services.common.auth import TokenVerifier
from tests.auth.helpers import PASSWORD, bearer, unique_name
from tests.support.stack import System


async def test_signup_login_and_jwks_through_the_load_balancer(system: System) -> None:
    name = unique_name()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{system.lb}/.well-known/jwks.json") as resp:
            assert resp.status == 200
            jwks = await resp.json()
        assert jwks["keys"] and all(k["alg"] == "EdDSA" and "d" not in k for k in jwks["keys"])
        body = {"username": name, "email": f"{name}@example.test", "password": PASSWORD}
        async with http.post(f"{system.lb}/auth/v1/signup", json=body) as resp:
            assert resp.status == 201, await resp.text()
            user = await resp.json()
        # A client's own X-Forwarded-For is not believed: HAProxy's hop is.
        login = {"username": name, "password": PASSWORD, "device": "laptop"}
        async with http.post(
            f"{system.lb}/auth/v1/login", json=login, headers={"X-Forwarded-For": "6.6.6.6"}
        ) as resp:
            assert resp.status == 200
            tokens = await resp.json()
        async with http.get(
            f"{system.lb}/auth/v1/sessions", headers=bearer(tokens["access_token"])
        ) as resp:
            sessions = {s["session_id"]: s for s in (await resp.json())["sessions"]}
        this = sessions[tokens["session_id"]]
        assert this["device"] == "laptop" and this["ip"] == "127.0.0.1"
        async with http.get(
            f"{system.lb}/auth/v1/users/{user['user']['user_id']}",
            headers=bearer(tokens["access_token"]),
        ) as resp:
            assert await resp.json() == {"user_id": user["user"]["user_id"], "username": name}
    verifier = TokenVerifier(system.stack.settings(), f"{system.lb}/.well-known/jwks.json")
    try:
        claims = await verifier.verify(tokens["access_token"])
    finally:
        await verifier.close()
    assert claims.sub == user["user"]["user_id"] and claims.roles == ("user",)
