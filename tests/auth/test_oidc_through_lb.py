"""The whole code flow with PKCE against the running provider, through HAProxy.

The relying party is Authlib's httpx client; the user's browser is a cookie jar
posting the provider's forms; the ID token is checked with joserfc against
discovery and the JWKS.
"""

from __future__ import annotations

import os
import subprocess
import sys

import httpx2 as httpx
from authlib.oidc.discovery import OpenIDProviderMetadata

from scripts.stack import ROOT
from tests.auth.helpers import bearer
from tests.auth.oidc_support import Browser, RelyingParty
from tests.support.stack import System
from tests.support.users import User, signup


class Metadata(OpenIDProviderMetadata):  # type: ignore[misc]
    """Discovery's rules, but one: we sign with EdDSA only, not RS256 (docs/auth.md)."""

    def validate_id_token_signing_alg_values_supported(self) -> None:
        assert self["id_token_signing_alg_values_supported"] == ["EdDSA"]


def make_admin(system: System, username: str) -> None:
    env = {**os.environ, **system.auth_env(), "PYTHONPATH": str(ROOT)}
    subprocess.run(
        [sys.executable, "-m", "services.auth.cli", "grant-admin", username],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=60,
    )


async def admin_token(system: System, user: User) -> str:
    async with httpx.AsyncClient(base_url=system.lb) as http:
        resp = await http.post(
            "/auth/v1/login", json={"username": user.username, "password": user.password}
        )
        assert resp.status_code == 200, resp.text
        return str(resp.json()["access_token"])


async def register(system: System, token: str, **body: object) -> dict[str, object]:
    async with httpx.AsyncClient(base_url=system.lb) as http:
        resp = await http.post("/auth/v1/admin/clients", json=body, headers=bearer(token))
        assert resp.status_code == 201, resp.text
        return dict(resp.json())


async def test_code_flow_with_pkce_through_the_load_balancer(system: System) -> None:
    admin = await signup(system.lb, "adm")
    make_admin(system, admin.username)
    token = await admin_token(system, admin)
    redirect = "https://rp.example.test/cb"
    client = await register(
        system, token, name="Example RP", type="confidential", redirect_uris=[redirect],
        scopes=["openid", "profile", "email", "parley.api"],
    )  # fmt: skip
    rp = RelyingParty(
        system.lb, str(client["client_id"]), redirect, "openid profile email parley.api",
        secret=str(client["client_secret"]),
    )  # fmt: skip
    meta = await rp.discover()
    Metadata(meta).validate()
    assert meta["issuer"] == system.lb
    assert meta["code_challenge_methods_supported"] == ["S256"]

    user = await signup(system.lb, "rp")
    browser = Browser(system.lb)
    oauth, url, verifier, nonce = rp.start()
    try:
        page = await browser.follow(await browser.get(url), redirect)
        page = await browser.sign_in(page, user.username, user.password, redirect)
        assert "Example RP" in page.text  # the consent page names the client
        back = await browser.consent(page, "allow", redirect)
        assert back.status_code == 302
        callback = back.headers["location"]
        assert callback.startswith(redirect + "?code=")

        tokens = await oauth.fetch_token(
            meta["token_endpoint"], authorization_response=callback, code_verifier=verifier
        )
        assert tokens["token_type"] == "Bearer" and tokens["refresh_token"]
        claims = await rp.validate_id_token(tokens["id_token"], nonce)
        assert claims["sub"] == user.user_id
        assert claims["preferred_username"] == user.username
        assert claims["amr"] == ["pwd"] and "auth_time" in claims and "at_hash" in claims

        async with httpx.AsyncClient() as http:
            info = await http.get(meta["userinfo_endpoint"], headers=bearer(tokens["access_token"]))
            assert info.status_code == 200
            assert info.json()["sub"] == user.user_id
            assert info.json()["email"] == f"{user.username}@example.test"
            # parley.api: the same token is a Parley access token for every service.
            me = await http.get(f"{system.lb}/auth/v1/me", headers=bearer(tokens["access_token"]))
            assert me.status_code == 200 and me.json()["username"] == user.username

        # A second authorization: the sign-in session and the consent are remembered.
        oauth2, url2, _, _ = rp.start()
        again = await browser.follow(await browser.get(url2), redirect)
        assert again.status_code == 302 and again.headers["location"].startswith(redirect)

        refreshed = await oauth.refresh_token(
            meta["token_endpoint"], refresh_token=tokens["refresh_token"]
        )
        assert refreshed["refresh_token"] != tokens["refresh_token"]
        async with httpx.AsyncClient() as http:
            info = await http.get(
                meta["userinfo_endpoint"], headers=bearer(refreshed["access_token"])
            )
            assert info.status_code == 200

        revoked = await oauth.revoke_token(
            meta["revocation_endpoint"],
            token=refreshed["refresh_token"],
            token_type_hint="refresh_token",
        )
        assert revoked.status_code == 200
        async with httpx.AsyncClient() as http:
            gone = await http.get(
                meta["userinfo_endpoint"], headers=bearer(refreshed["access_token"])
            )
            assert gone.status_code == 401 and gone.json()["error"] == "invalid_token"
            me = await http.get(
                f"{system.lb}/auth/v1/me", headers=bearer(refreshed["access_token"])
            )
            assert me.status_code == 401 and me.json()["error"]["code"] == "token_revoked"
        await oauth2.aclose()
    finally:
        await oauth.aclose()
        await browser.close()
