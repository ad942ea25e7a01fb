"""The provider's rules, one test each: PKCE, codes, redirect URIs, clients, alg tricks, blocks.

The provider runs in process on a real port (the embedded servers behind it),
with a clock the tests move; the relying party is Authlib's httpx client and
the browser a cookie jar, as in test_oidc_through_lb.py.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx2 as httpx
import jwt as pyjwt
import pytest
from aiohttp.test_utils import TestClient, TestServer
from authlib.integrations.base_client.errors import OAuthError
from joserfc.errors import JoseError

from services.auth import accounts, sessions
from services.auth.app import create_app
from services.auth.config import AuthSettings
from services.auth.models import BlockRequest, ClientCreate, ClientPatch
from services.auth.oidc import clients
from services.auth.state import AUTH_SERVICE, AuthService
from services.auth.tokens import digest
from services.common.auth import Claims
from services.common.config import Settings
from services.common.ratelimit import Limit
from services.common.state import STARTUP
from tests.auth.conftest import ROOMY
from tests.auth.helpers import PASSWORD, bearer, unique_name
from tests.auth.oidc_support import (
    Browser,
    RelyingParty,
    b64u,
    forge,
    hidden_fields,
    page_error,
)

REDIRECT = "https://rp.example.test/cb"


class Clock:
    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


@dataclass
class OP:
    base: str
    svc: AuthService
    clock: Clock
    admin: Claims

    async def user(self, roles: list[str] | None = None) -> dict[str, Any]:
        name = unique_name()
        return await accounts.create_user(
            self.svc, name, f"{name}@example.test", PASSWORD, roles or ["user"]
        )

    async def client(self, **overrides: Any) -> RelyingParty:
        body: dict[str, Any] = {
            "name": "Rules RP",
            "type": "public",
            "redirect_uris": [REDIRECT],
            "scopes": ["openid", "profile", "email", "roles", "parley.api"],
            "skip_consent": True,
        }
        body.update(overrides)
        made = await clients.create(
            self.svc, self.admin, _caller(), ClientCreate.model_validate(body)
        )
        rp = RelyingParty(
            self.base, made.client_id, body["redirect_uris"][0], "openid profile",
            secret=made.client_secret,
        )  # fmt: skip
        await rp.discover()
        return rp


def _caller() -> Any:
    from services.auth.state import Caller

    return Caller(ip="127.0.0.1")


@pytest.fixture
async def op(settings: Settings) -> AsyncIterator[OP]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    clock = Clock()
    app = await create_app(
        settings.model_copy(update={"public_url": base}), AuthSettings.for_tests(**ROOMY), clock
    )
    client = TestClient(TestServer(app, host="127.0.0.1", port=port))
    await client.start_server()
    await app[STARTUP].done.wait()
    svc = app[AUTH_SERVICE]
    admin = await accounts.create_user(
        svc, unique_name("a"), f"{unique_name()}@example.test", PASSWORD, ["user", "admin"]
    )
    yield OP(base, svc, clock, Claims(admin["_id"], "cli", ("user", "admin"), "j", 0))
    await svc.drain()
    await client.close()


async def code_for(
    op: OP, rp: RelyingParty, user: dict[str, Any], **extra: str
) -> tuple[Any, str, str, str]:
    """Sign in through the pages: (oauth client, callback URL, verifier, nonce)."""
    oauth, url, verifier, nonce = rp.start(**extra)
    browser = Browser(op.base)
    try:
        page = await browser.follow(await browser.get(url), rp.redirect_uri)
        back = await browser.sign_in(page, user["username"], PASSWORD, rp.redirect_uri)
    finally:
        await browser.close()
    assert back.status_code == 302, back.text[:400]
    return oauth, back.headers["location"], verifier, nonce


def code_of(callback: str) -> str:
    return parse_qs(urlsplit(callback).query)["code"][0]


async def token_call(rp: RelyingParty, data: dict[str, str], **kw: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.post(rp.meta["token_endpoint"], data=data, **kw)


def grant(rp: RelyingParty, callback: str, verifier: str | None) -> dict[str, str]:
    data = {
        "grant_type": "authorization_code",
        "code": code_of(callback),
        "redirect_uri": rp.redirect_uri,
        "client_id": rp.client_id,
    }
    if verifier is not None:
        data["code_verifier"] = verifier
    return data


async def test_missing_pkce_verifier_is_refused(op: OP) -> None:
    """Refused without using the code up: someone who intercepted a public client's
    code (what PKCE is for) could otherwise spend it, so the real exchange failed
    (or, sent after it, revoked the user's session as a reuse)."""
    rp = await op.client()
    _, callback, verifier, _ = await code_for(op, rp, await op.user())
    resp = await token_call(rp, grant(rp, callback, None))
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_request"
    assert (await token_call(rp, grant(rp, callback, verifier))).status_code == 200


async def test_missing_pkce_challenge_is_refused_at_authorize(op: OP) -> None:
    rp = await op.client()
    url = (
        f"{rp.meta['authorization_endpoint']}?response_type=code&client_id={rp.client_id}"
        f"&redirect_uri={REDIRECT}&scope=openid&state=s1"
    )
    async with httpx.AsyncClient() as http:
        resp = await http.get(url)
    assert resp.status_code == 302
    query = parse_qs(urlsplit(resp.headers["location"]).query)
    assert query["error"] == ["invalid_request"] and query["state"] == ["s1"]


async def test_plain_pkce_method_is_refused(op: OP) -> None:
    rp = await op.client()
    url = (
        f"{rp.meta['authorization_endpoint']}?response_type=code&client_id={rp.client_id}"
        f"&redirect_uri={REDIRECT}&scope=openid&code_challenge={'a' * 43}"
        "&code_challenge_method=plain"
    )
    async with httpx.AsyncClient() as http:
        resp = await http.get(url)
    assert parse_qs(urlsplit(resp.headers["location"]).query)["error"] == ["invalid_request"]


async def test_wrong_pkce_verifier_is_refused(op: OP) -> None:
    rp = await op.client()
    _, callback, verifier, _ = await code_for(op, rp, await op.user())
    resp = await token_call(rp, grant(rp, callback, "x" * 50))
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_grant"
    assert (await token_call(rp, grant(rp, callback, verifier))).status_code == 200


async def test_reused_code_is_refused_and_revokes_its_tokens(op: OP) -> None:
    rp = await op.client()
    oauth, callback, verifier, _ = await code_for(op, rp, await op.user())
    first = await token_call(rp, grant(rp, callback, verifier))
    assert first.status_code == 200
    again = await token_call(rp, grant(rp, callback, verifier))
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    async with httpx.AsyncClient() as http:
        info = await http.get(
            rp.meta["userinfo_endpoint"], headers=bearer(first.json()["access_token"])
        )
    assert info.status_code == 401 and info.json()["error"] == "invalid_token"
    refresh = await token_call(
        rp, {"grant_type": "refresh_token", "refresh_token": first.json()["refresh_token"],
             "client_id": rp.client_id},
    )  # fmt: skip
    assert refresh.status_code == 400 and refresh.json()["error"] == "invalid_grant"
    await oauth.aclose()


@pytest.mark.parametrize(
    "uri",
    [
        REDIRECT + "/",  # a longer path
        REDIRECT + "?x=1",  # extra query
        "https://rp.example.test/c",  # a prefix
        "https://RP.example.test/cb",  # not the same string
        "https://evil.example/cb",
    ],
)
async def test_unregistered_redirect_uri_gets_an_error_page_not_a_redirect(
    op: OP, uri: str
) -> None:
    rp = await op.client()
    rp.redirect_uri = uri
    _, url, _, _ = rp.start()
    async with httpx.AsyncClient() as http:
        resp = await http.get(url)
    assert resp.status_code == 400 and "location" not in resp.headers
    assert page_error(resp.text) == "invalid_request"


async def test_token_request_with_another_redirect_uri_is_refused(op: OP) -> None:
    rp = await op.client(redirect_uris=[REDIRECT, REDIRECT + "2"])
    _, callback, verifier, _ = await code_for(op, rp, await op.user())
    data = grant(rp, callback, verifier)
    data["redirect_uri"] = REDIRECT + "2"
    resp = await token_call(rp, data)
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_grant"
    assert (await token_call(rp, grant(rp, callback, verifier))).status_code == 200


async def test_wrong_client_secret_is_refused(op: OP) -> None:
    rp = await op.client(type="confidential", skip_consent=True)
    _, callback, verifier, _ = await code_for(op, rp, await op.user())
    data = grant(rp, callback, verifier)
    del data["client_id"]
    resp = await token_call(rp, data, auth=(rp.client_id, "not-the-secret"))
    assert resp.status_code == 401 and resp.json()["error"] == "invalid_client"
    # Without any secret, a confidential client is not authenticated either.
    resp = await token_call(rp, grant(rp, callback, verifier))
    assert resp.json()["error"] == "invalid_client"


async def test_expired_code_is_refused(op: OP) -> None:
    rp = await op.client()
    _, callback, verifier, _ = await code_for(op, rp, await op.user())
    op.clock.offset = timedelta(seconds=op.svc.config.oidc_code_ttl_s + 1)
    resp = await token_call(rp, grant(rp, callback, verifier))
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_grant"
    assert "expired" in resp.json()["error_description"]


async def test_code_of_another_client_is_refused(op: OP) -> None:
    rp = await op.client()
    other = await op.client()
    _, callback, verifier, _ = await code_for(op, rp, await op.user())
    data = grant(rp, callback, verifier)
    data["client_id"] = other.client_id
    resp = await token_call(other, data)
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_grant"


async def _forgeries(op: OP, user_id: str, client_id: str) -> list[str]:
    """Tokens with alg tricks: none, and HS256 keyed with the public key (every encoding)."""
    jwk = (await op.svc.keyring.jwks())["keys"][0]
    now = int(time.time())
    claims = {
        "iss": op.svc.settings.jwt_issuer, "sub": user_id, "aud": [
            f"{op.base}/auth/oauth2/userinfo", op.svc.settings.jwt_audience, client_id],
        "sid": "x" * 32, "jti": "j", "iat": now, "exp": now + 600, "roles": ["user", "admin"],
        "scope": "openid profile", "client_id": client_id,
    }  # fmt: skip
    out = [
        forge({"alg": "none", "typ": "JWT"}, claims),
        forge({"alg": "none", "kid": jwk["kid"]}, claims),
    ]
    raw = jwk["x"].encode()
    import base64

    secrets = [raw, base64.urlsafe_b64decode(jwk["x"] + "=="), str(jwk).encode()]
    for secret in secrets:
        header = {"alg": "HS256", "typ": "JWT", "kid": jwk["kid"]}
        unsigned = forge(header, claims).rsplit(".", 1)[0]
        sig = hmac.new(secret, unsigned.encode(), hashlib.sha256).digest()
        out.append(f"{unsigned}.{b64u(sig)}")
    return out


async def test_alg_tricks_are_refused_by_the_client_and_the_provider(op: OP) -> None:
    rp = await op.client()
    user = await op.user(["user", "admin"])
    for token in await _forgeries(op, user["_id"], rp.client_id):
        # Our relying party's validation (joserfc, EdDSA only) refuses it ...
        with pytest.raises(JoseError):
            await rp.validate_id_token(token, None)
        async with httpx.AsyncClient(base_url=op.base) as http:
            # ... and so does the provider: userinfo, the admin API, end-session.
            info = await http.get("/auth/oauth2/userinfo", headers=bearer(token))
            assert info.status_code == 401 and info.json()["error"] == "invalid_token"
            api = await http.get("/auth/v1/admin/users", headers=bearer(token))
            assert api.status_code == 401 and api.json()["error"]["code"] == "invalid_token"
            out = await http.get("/auth/oauth2/logout", params={"id_token_hint": token})
            assert out.status_code == 400 and page_error(out.text) == "invalid_request"


async def test_blocked_user_cannot_sign_in_refresh_or_use_tokens(op: OP) -> None:
    rp = await op.client()
    user = await op.user()
    oauth, callback, verifier, _ = await code_for(op, rp, user)
    tokens = (await token_call(rp, grant(rp, callback, verifier))).json()
    from services.auth import admin

    await admin.block_user(op.svc, op.admin, _caller(), user["_id"], BlockRequest(reason="spam"))
    refresh = await token_call(
        rp, {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
             "client_id": rp.client_id},
    )  # fmt: skip
    assert refresh.status_code == 400 and refresh.json()["error"] == "invalid_grant"
    async with httpx.AsyncClient() as http:
        info = await http.get(rp.meta["userinfo_endpoint"], headers=bearer(tokens["access_token"]))
    assert info.status_code == 401 and info.json()["error"] == "invalid_token"
    # The sign-in page refuses the password of a blocked account.
    _, url, _, _ = rp.start()
    browser = Browser(op.base)
    try:
        page = await browser.follow(await browser.get(url), REDIRECT)
        refused = await browser.sign_in(page, user["username"], PASSWORD, REDIRECT)
    finally:
        await browser.close()
    assert refused.status_code == 403 and page_error(refused.text) == "account_blocked"
    await oauth.aclose()


async def test_refresh_token_reuse_ends_the_session(op: OP) -> None:
    rp = await op.client()
    _, callback, verifier, _ = await code_for(op, rp, await op.user())
    tokens = (await token_call(rp, grant(rp, callback, verifier))).json()
    body = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
            "client_id": rp.client_id}  # fmt: skip
    fresh = await token_call(rp, body)
    assert fresh.status_code == 200
    reused = await token_call(rp, body)
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"
    again = await token_call(rp, {**body, "refresh_token": fresh.json()["refresh_token"]})
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


async def test_a_refresh_asking_for_more_scope_is_refused_and_keeps_the_token(
    op: OP, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the token was used up, then Authlib refused the scope (invalid_scope):
    the client's next refresh was a reuse, which ended the session. And a failure of
    ours after the token was used did the same."""
    rp = await op.client()
    _, callback, verifier, _ = await code_for(op, rp, await op.user())
    tokens = (await token_call(rp, grant(rp, callback, verifier))).json()
    body = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
            "client_id": rp.client_id}  # fmt: skip
    wider = await token_call(rp, {**body, "scope": "openid profile email"})
    assert wider.status_code == 400 and wider.json()["error"] == "invalid_scope"
    # A failure of ours once the token is used (issuing the new refresh token).
    new_refresh_token = sessions.new_refresh_token

    async def store_down(*_: object) -> str:
        raise ConnectionError("MongoDB away")

    monkeypatch.setattr(sessions, "new_refresh_token", store_down)
    failed = await token_call(rp, body)
    assert failed.status_code >= 500
    monkeypatch.setattr(sessions, "new_refresh_token", new_refresh_token)
    fresh = await token_call(rp, body)  # the same token: not used up by either
    assert fresh.status_code == 200, fresh.text
    assert set(fresh.json()["scope"].split()) == {"openid", "profile"}


@pytest.mark.parametrize("how", ["disable", "delete"])
async def test_ending_a_client_ends_thousands_of_its_sessions_at_once(
    op: OP, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """Before: a session each, four round trips each, after a scan of every session
    (no index): a client with 50,000 sessions timed out half-way, and its retry found
    the client already disabled (or deleted) and ended nothing more."""
    rp = await op.client()
    _, callback, verifier, _ = await code_for(op, rp, await op.user())
    tokens = (await token_call(rp, grant(rp, callback, verifier))).json()
    now = op.svc.now()
    await op.svc.store.sessions.insert_many([
        {"_id": f"bulk{i:05d}{rp.client_id[:8]}", "user_id": f"u{i % 50}",
         "client_id": rp.client_id, "revoked_at": None, "created_at": now,
         "last_used_at": now, "expires_at": now + timedelta(days=1)}
        for i in range(3000)
    ])  # fmt: skip

    async def one_by_one(*_: object, **__: object) -> bool:
        raise AssertionError("a round trip per session")

    monkeypatch.setattr(sessions, "revoke", one_by_one)
    publish = op.svc.store.publish_many_revoked
    calls = {"n": 0}

    async def fails_once(pairs: Any, ttl_s: int) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("redis away")  # after the sessions were marked
        await publish(pairs, ttl_s)

    monkeypatch.setattr(op.svc.store, "publish_many_revoked", fails_once)

    async def end() -> None:
        if how == "disable":
            await clients.update(
                op.svc, op.admin, _caller(), rp.client_id, ClientPatch(disabled=True)
            )
        else:
            await clients.delete(op.svc, op.admin, _caller(), rp.client_id)

    with pytest.raises(ConnectionError):
        await end()
    await end()  # the retry: tells every service about what the first try ended
    live = await op.svc.store.sessions.find(
        {"client_id": rp.client_id, "revoked_at": None}, {"_id": 1}
    ).to_list()
    assert live == []
    async with httpx.AsyncClient() as http:
        info = await http.get(rp.meta["userinfo_endpoint"], headers=bearer(tokens["access_token"]))
    assert info.status_code == 401
    assert await op.svc.store.redis.exists(
        f"{op.svc.settings.redis_prefix}:revoked:sid:bulk02999{rp.client_id[:8]}"
    )


async def test_oidc_refresh_token_is_not_a_parley_refresh_token(op: OP) -> None:
    rp = await op.client()
    _, callback, verifier, _ = await code_for(op, rp, await op.user())
    tokens = (await token_call(rp, grant(rp, callback, verifier))).json()
    async with httpx.AsyncClient(base_url=op.base) as http:
        resp = await http.post(
            "/auth/v1/token/refresh", json={"refresh_token": tokens["refresh_token"]}
        )
    assert resp.status_code == 401 and resp.json()["error"]["code"] == "invalid_token"


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({}, "unsupported_grant_type"),
        ({"grant_type": "password", "username": "a", "password": "b"}, "unsupported_grant_type"),
        ({"grant_type": "authorization_code"}, "invalid_request"),
        (
            {"grant_type": "authorization_code", "code": "nope", "code_verifier": "v" * 43},
            "invalid_grant",
        ),
        ({"grant_type": "refresh_token"}, "invalid_request"),
        ({"grant_type": "refresh_token", "refresh_token": "nope"}, "invalid_grant"),
        ({"grant_type": "client_credentials"}, "unsupported_grant_type"),
    ],
)
async def test_bad_token_requests_get_rfc6749_errors(
    op: OP, data: dict[str, str], error: str
) -> None:
    rp = await op.client()
    resp = await token_call(rp, {"client_id": rp.client_id, **data})
    assert resp.status_code == 400 and resp.json()["error"] == error
    assert resp.headers["cache-control"] == "no-store"


async def test_token_endpoint_wants_a_form_and_no_repeats(op: OP) -> None:
    rp = await op.client()
    async with httpx.AsyncClient() as http:
        resp = await http.post(rp.meta["token_endpoint"], json={"grant_type": "refresh_token"})
        assert resp.status_code == 400 and resp.json()["error"] == "invalid_request"
        resp = await http.post(
            rp.meta["token_endpoint"],
            content=f"grant_type=refresh_token&refresh_token=a&refresh_token=b&client_id={rp.client_id}",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert resp.status_code == 400 and resp.json()["error"] == "invalid_request"
        resp = await http.post(rp.meta["token_endpoint"], data={"grant_type": "refresh_token",
                               "refresh_token": "x", "client_id": "nobody"})  # fmt: skip
        assert resp.json()["error"] == "invalid_client"


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"scope": "openid admin"}, "invalid_scope"),
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"prompt": "none"}, "login_required"),
    ],
)
async def test_bad_authorization_requests_redirect_with_an_error(
    op: OP, params: dict[str, str], error: str
) -> None:
    rp = await op.client()
    _, url, _, _ = rp.start(**params)
    async with httpx.AsyncClient() as http:
        resp = await http.get(url)
    assert resp.status_code == 302, resp.text[:300]
    assert parse_qs(urlsplit(resp.headers["location"]).query)["error"] == [error]


async def test_unknown_client_gets_an_error_page(op: OP) -> None:
    async with httpx.AsyncClient(base_url=op.base) as http:
        resp = await http.get(
            "/auth/oauth2/authorize",
            params={"response_type": "code", "client_id": "nobody", "redirect_uri": REDIRECT},
        )
    assert resp.status_code == 400 and page_error(resp.text) == "invalid_client"


async def test_a_stored_refresh_token_of_a_reclaimed_session_is_revoked_quietly(
    op: OP,
) -> None:
    """Review: an ended session is reclaimed once its access tokens' life is over; a
    stored refresh token (issued before 2026-12-07, or with PARLEY_REFRESH_TOKENS=stored)
    of it then made a grant without a client, and its revocation answered 400
    ``invalid_grant``. RFC 7009 2.2: nothing left to revoke is 200."""
    rp = await op.client()
    token = secrets.token_urlsafe(32)
    await op.svc.store.refresh_tokens.insert_one(
        {"_id": digest(token), "user_id": "gone-user", "sid": "reclaimed-session"}
    )
    async with httpx.AsyncClient() as http:
        resp = await http.post(
            rp.meta["revocation_endpoint"], data={"token": token, "client_id": rp.client_id}
        )
    assert resp.status_code == 200, resp.text[:300]


async def test_revocation_needs_the_owning_client(op: OP) -> None:
    rp = await op.client()
    other = await op.client()
    _, callback, verifier, _ = await code_for(op, rp, await op.user())
    tokens = (await token_call(rp, grant(rp, callback, verifier))).json()
    async with httpx.AsyncClient() as http:
        resp = await http.post(
            rp.meta["revocation_endpoint"],
            data={"token": tokens["refresh_token"], "client_id": other.client_id},
        )
        assert resp.status_code == 400 and resp.json()["error"] == "invalid_grant"
        resp = await http.post(rp.meta["revocation_endpoint"], data={"client_id": rp.client_id})
        assert resp.status_code == 400 and resp.json()["error"] == "invalid_request"
        # An unknown token is "revoked" (RFC 7009 2.2).
        resp = await http.post(
            rp.meta["revocation_endpoint"], data={"token": "nope", "client_id": rp.client_id}
        )
        assert resp.status_code == 200
        # The access token revokes its session too.
        resp = await http.post(
            rp.meta["revocation_endpoint"],
            data={"token": tokens["access_token"], "client_id": rp.client_id},
        )
        assert resp.status_code == 200
        info = await http.get(rp.meta["userinfo_endpoint"], headers=bearer(tokens["access_token"]))
        assert info.status_code == 401


async def test_any_refresh_token_of_a_session_revokes_it_and_a_forged_one_nothing(
    op: OP,
) -> None:
    """RFC 7009 at /revoke: a used refresh token of the session (an earlier generation)
    still names it and ends it; a token with a wrong MAC names nothing (200, nothing
    ended). A refresh token is derived from its session: no record of it is looked up."""
    rp = await op.client()
    _, callback, verifier, _ = await code_for(op, rp, await op.user())
    tokens = (await token_call(rp, grant(rp, callback, verifier))).json()
    body = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
            "client_id": rp.client_id}  # fmt: skip
    fresh = (await token_call(rp, body)).json()["refresh_token"]
    last = fresh[-1]
    forged = fresh[:-1] + ("A" if last != "A" else "B")
    async with httpx.AsyncClient() as http:
        revoke = rp.meta["revocation_endpoint"]
        resp = await http.post(revoke, data={"token": forged, "client_id": rp.client_id})
        assert resp.status_code == 200
        fresher = await token_call(rp, {**body, "refresh_token": fresh})
        assert fresher.status_code == 200, fresher.text
        # The first token, two generations back, ends the session.
        resp = await http.post(
            revoke, data={"token": tokens["refresh_token"], "client_id": rp.client_id}
        )
        assert resp.status_code == 200
    newest = fresher.json()["refresh_token"]
    gone = await token_call(rp, {**body, "refresh_token": newest})
    assert gone.status_code == 400 and gone.json()["error"] == "invalid_grant"
    assert await op.svc.store.refresh_tokens.count_documents({}) == 0


async def test_authlib_client_sees_the_errors(op: OP) -> None:
    """The independent client raises on an OAuth error answer (wrong verifier)."""
    rp = await op.client()
    oauth, callback, _, _ = await code_for(op, rp, await op.user())
    with pytest.raises(OAuthError) as caught:
        await oauth.fetch_token(
            rp.meta["token_endpoint"], authorization_response=callback, code_verifier="y" * 60
        )
    assert caught.value.error == "invalid_grant"
    await oauth.aclose()


NEW_PASSWORD = "a brand new passphrase"


async def parley_login(op: OP, user: dict[str, Any]) -> dict[str, Any]:
    """A Parley session of ``user`` (``/auth/v1/login``), as the web app opens one."""
    async with httpx.AsyncClient(base_url=op.base) as http:
        resp = await http.post(
            "/auth/v1/login", json={"username": user["username"], "password": PASSWORD}
        )
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def end_sessions(op: OP, user: dict[str, Any], how: str) -> None:
    """The owner (or an admin) ends the account's sessions, each way there is."""
    from services.auth import admin
    from services.auth.models import AdminUserPatch, PasswordResetConfirm
    from services.auth.tokens import digest

    if how == "reset":
        token, now = f"reset-{unique_name()}", op.svc.now()
        await op.svc.store.insert_password_reset(
            {"_id": digest(token), "user_id": user["_id"], "email_lc": user["email_lc"],
             "created_at": now, "expires_at": now + timedelta(minutes=5), "used_at": None}
        )  # fmt: skip
        confirm = PasswordResetConfirm(token=token, new_password=NEW_PASSWORD)
        await accounts.confirm_reset(op.svc, confirm, _caller())
        return
    if how == "roles":
        patch = AdminUserPatch.model_validate({"roles": ["user", "admin"]})
        await admin.edit_user(op.svc, op.admin, _caller(), user["_id"], patch)
        return
    tokens = await parley_login(op, user)
    async with httpx.AsyncClient(base_url=op.base, headers=bearer(tokens["access_token"])) as http:
        if how == "change":
            resp = await http.post(
                "/auth/v1/password",
                json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
            )
            assert resp.status_code == 204, resp.text
        elif how == "end_others":
            resp = await http.delete("/auth/v1/sessions")
            assert resp.status_code == 200, resp.text
        else:
            assert how == "admin_revoke"
            await admin.revoke_user_session(
                op.svc, op.admin, _caller(), user["_id"], tokens["session_id"]
            )


@pytest.mark.parametrize("how", ["reset", "change", "end_others"])
async def test_a_code_issued_before_the_sessions_were_ended_opens_nothing(op: OP, how: str) -> None:
    """Before: a code kept no trace of the sign-in that gave it, and its exchange read
    the account again and compared that read with itself. Whoever had the password
    or the provider's cookie could ask for a code every 50 s (``prompt=none``), and
    after the owner's reset (every session ended, the cookie dead) exchange the last
    one for a new session and refresh token. The code keeps the password stamp and
    the security stamp now, and is refused (``invalid_grant``) once either changed."""
    rp = await op.client()
    user = await op.user()
    _, callback, verifier, _ = await code_for(op, rp, user)
    await end_sessions(op, user, how)
    resp = await token_call(rp, grant(rp, callback, verifier))
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_grant", resp.text
    live = await op.svc.store.live_sessions(user["_id"], op.svc.now())
    assert [s for s in live if s.get("client_id") == rp.client_id] == []


async def test_a_code_exchange_raced_with_a_password_reset_opens_nothing(
    op: OP, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exchange read the account (old password), then the reset wrote the new one
    and ended every session it found, then the exchange's session went in: refused
    and ended as a sign-in's is, answered as an OAuth error (it was the service's
    error model, 401 ``invalid_credentials``, which no OAuth client understands)."""
    rp = await op.client()
    user = await op.user()
    _, callback, verifier, _ = await code_for(op, rp, user)
    store = op.svc.store
    insert_session = store.insert_session
    reached, gate = asyncio.Event(), asyncio.Event()

    async def held(doc: dict[str, Any]) -> None:
        reached.set()
        await gate.wait()  # the code checked; the session not in yet
        await insert_session(doc)

    monkeypatch.setattr(store, "insert_session", held)
    exchange = asyncio.create_task(token_call(rp, grant(rp, callback, verifier)))
    await reached.wait()
    monkeypatch.setattr(store, "insert_session", insert_session)
    await end_sessions(op, user, "reset")
    gate.set()
    resp = await exchange
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_grant", resp.text
    assert await op.svc.store.live_sessions(user["_id"], op.svc.now()) == []


async def signed_in_browser(op: OP, rp: RelyingParty, user: dict[str, Any]) -> Browser:
    """A browser that signed in at the provider (its cookie kept)."""
    _, url, _, _ = rp.start()
    browser = Browser(op.base)
    page = await browser.follow(await browser.get(url), rp.redirect_uri)
    back = await browser.sign_in(page, user["username"], PASSWORD, rp.redirect_uri)
    assert back.status_code == 302 and "code" in parse_qs(urlsplit(back.headers["location"]).query)
    return browser


async def silent_authorization(browser: Browser, rp: RelyingParty) -> dict[str, list[str]]:
    """``prompt=none`` with the browser's cookie: the callback's query."""
    _, url, _, _ = rp.start(prompt="none")
    resp = await browser.follow(await browser.get(url), rp.redirect_uri)
    assert resp.status_code == 302, resp.text[:300]
    return parse_qs(urlsplit(resp.headers["location"]).query)


@pytest.mark.parametrize("how", ["end_others", "admin_revoke", "roles"])
async def test_ending_the_sessions_ends_the_providers_sign_in(op: OP, how: str) -> None:
    """Before: "end my other sessions", an admin's revoke and a role change ended the
    sessions but not the provider's sign-in cookie (it checked the block and the
    password only): whoever held it opened a new session at once with
    ``prompt=none``, for the rest of its 30 minutes. Now: ``login_required``."""
    rp = await op.client()
    user = await op.user()
    browser = await signed_in_browser(op, rp, user)
    try:
        assert "code" in await silent_authorization(browser, rp)
        await end_sessions(op, user, how)
        after = await silent_authorization(browser, rp)
        assert after.get("error") == ["login_required"], after
    finally:
        await browser.close()


async def test_a_scope_taken_from_a_client_is_gone_from_its_sessions_tokens(op: OP) -> None:
    """Before: a refresh gave the scope granted at the start, whatever the client may
    have now: an admin who took ``email`` (or ``parley.api``) from a client left
    every session of it with that scope, for as long as it was refreshed. Now the
    next refresh gives only what the client may still have; asking for the rest is
    ``invalid_scope`` (the token kept); with nothing left, the session ends."""
    rp = await op.client()
    rp.scope = "openid profile email"
    user = await op.user()
    _, callback, verifier, _ = await code_for(op, rp, user)
    tokens = (await token_call(rp, grant(rp, callback, verifier))).json()
    assert set(tokens["scope"].split()) == {"openid", "profile", "email"}
    patch = ClientPatch.model_validate({"scopes": ["openid", "profile"]})
    await clients.update(op.svc, op.admin, _caller(), rp.client_id, patch)
    body = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
            "client_id": rp.client_id}  # fmt: skip
    asked = await token_call(rp, {**body, "scope": "openid email"})
    assert asked.status_code == 400 and asked.json()["error"] == "invalid_scope", asked.text
    fresh = await token_call(rp, body)  # the same token: kept by the refusal
    assert fresh.status_code == 200, fresh.text
    assert set(fresh.json()["scope"].split()) == {"openid", "profile"}
    async with httpx.AsyncClient() as http:
        info = await http.get(
            rp.meta["userinfo_endpoint"], headers=bearer(fresh.json()["access_token"])
        )
    assert info.status_code == 200 and "email" not in info.json()
    assert info.json()["preferred_username"] == user["username"]
    # Nothing left of what was granted: the session ends.
    patch = ClientPatch.model_validate({"scopes": ["roles"]})
    await clients.update(op.svc, op.admin, _caller(), rp.client_id, patch)
    gone = await token_call(rp, {**body, "refresh_token": fresh.json()["refresh_token"]})
    assert gone.status_code == 400 and gone.json()["error"] == "invalid_grant"
    assert await op.svc.store.live_sessions(user["_id"], op.svc.now()) == []


# -- the audit of 2026: consent, end-session, revocation, hints, token limits --------------


async def consented_browser(
    op: OP, rp: RelyingParty, user: dict[str, Any], ago_s: int = 0
) -> tuple[Browser, dict[str, Any]]:
    """A browser signed in (``ago_s`` seconds ago) that consented to ``rp``; the tokens."""
    op.clock.offset = timedelta(seconds=-ago_s)
    _, url, verifier, _ = rp.start()
    browser = Browser(op.base)
    page = await browser.follow(await browser.get(url), rp.redirect_uri)
    back = await browser.sign_in(page, user["username"], PASSWORD, rp.redirect_uri)
    if back.status_code == 200:
        back = await browser.consent(back, "allow", rp.redirect_uri)
    op.clock.offset = timedelta(0)
    assert back.status_code == 302, back.text[:300]
    tokens = (await token_call(rp, grant(rp, back.headers["location"], verifier))).json()
    return browser, tokens


@pytest.mark.parametrize("extra", [{"prompt": "login"}, {"max_age": "5"}])
async def test_the_consent_form_does_not_skip_a_sign_in_asked_for(
    op: OP, extra: dict[str, str]
) -> None:
    """Before: a request stopped for a sign-in (``prompt=login``, ``max_age`` passed)
    waited under the id the sign-in page holds, and posting that id to the consent
    form gave a code with the old ``auth_time``, no password asked. Now the consent
    form takes only a request waiting for this user's consent."""
    rp = await op.client(skip_consent=False)
    user = await op.user()
    browser, _ = await consented_browser(op, rp, user, ago_s=60)
    try:
        _, url, verifier, _ = rp.start(**extra)
        resp = await browser.get(url)
        assert resp.status_code == 302 and resp.headers["location"].startswith("/auth/login?")
        login_page = await browser.get(resp.headers["location"])
        fields = hidden_fields(login_page.text)
        assert "request" in fields and "csrf" in fields
        out = await browser.post("/auth/oauth2/consent", {**fields, "decision": "allow"})
        assert out.status_code == 400 and page_error(out.text) == "invalid_request"
        # The sign-in it waits for still works, and gives a fresh auth_time.
        back = await browser.sign_in(login_page, user["username"], PASSWORD, rp.redirect_uri)
        assert back.status_code == 302, back.text[:300]
        tokens = (await token_call(rp, grant(rp, back.headers["location"], verifier))).json()
        claims = await rp.validate_id_token(tokens["id_token"], None)
        assert claims["auth_time"] >= int(time.time()) - 30
    finally:
        await browser.close()


async def test_a_consent_request_is_for_its_own_user_only(op: OP) -> None:
    """The consent page's request id, posted by a browser signed in as someone else."""
    rp = await op.client(skip_consent=False)
    alice, bob = await op.user(), await op.user()
    _, url, _, _ = rp.start()
    a = Browser(op.base)
    b = await signed_in_browser(op, await op.client(), bob)
    try:
        page = await a.follow(await a.get(url), rp.redirect_uri)
        page = await a.sign_in(page, alice["username"], PASSWORD, rp.redirect_uri)
        rid = hidden_fields(page.text)["request"]
        csrf_page = await b.get("/auth/reset-password")
        out = await b.post(
            "/auth/oauth2/consent",
            {**hidden_fields(csrf_page.text), "request": rid, "decision": "allow"},
        )
        assert out.status_code == 400 and page_error(out.text) == "invalid_request"
    finally:
        await a.close()
        await b.close()


async def test_max_age_of_other_digits_is_invalid_request(op: OP) -> None:
    """Before: ``max_age=²`` passed ``str.isdigit()`` and ``int()`` raised: a 500."""
    rp = await op.client()
    browser = await signed_in_browser(op, rp, await op.user())
    try:
        for value in ("²", "-1", "1e3"):
            _, url, _, _ = rp.start(max_age=value)
            resp = await browser.get(url)
            assert resp.status_code == 302, (value, resp.status_code)
            assert parse_qs(urlsplit(resp.headers["location"]).query)["error"] == [
                "invalid_request"
            ]
    finally:
        await browser.close()


async def still_signed_in(op: OP, rp: RelyingParty, browser: Browser) -> bool:
    return "code" in await silent_authorization(browser, rp)


async def refresh_works(rp: RelyingParty, tokens: dict[str, Any]) -> bool:
    body = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
            "client_id": rp.client_id}  # fmt: skip
    resp = await token_call(rp, body)
    if resp.status_code == 200:
        tokens["refresh_token"] = resp.json()["refresh_token"]
    return resp.status_code == 200


BYE = "https://rp.example.test/bye"


async def test_logout_with_another_users_hint_asks_first_and_ends_nothing(op: OP) -> None:
    """Before: any ID token ever issued, as ``id_token_hint``, signed the browser out
    whoever it belonged to, revoked the hint's session and redirected, unasked."""
    rp = await op.client(post_logout_redirect_uris=[BYE])
    victim, other = await op.user(), await op.user()
    vb, _ = await consented_browser(op, rp, victim)
    ob, other_tokens = await consented_browser(op, rp, other)
    try:
        query = {"id_token_hint": other_tokens["id_token"], "post_logout_redirect_uri": BYE}
        page = await vb.get("/auth/oauth2/logout?" + urlencode(query))
        assert page.status_code == 200 and 'name="confirm" value="yes"' in page.text
        # Chromium applies form-action to the redirect after the POST: the
        # post-logout redirect URI's origin (another than the issuer's) is allowed.
        csp = page.headers["content-security-policy"]
        assert "form-action 'self' https://rp.example.test;" in csp, csp
        assert await still_signed_in(op, rp, vb)
        assert await refresh_works(rp, other_tokens)
        # Confirmed (the page's form): signed out, and redirected.
        out = await vb.post("/auth/oauth2/logout", hidden_fields(page.text))
        assert out.status_code == 302 and out.headers["location"].startswith(BYE)
        assert (await silent_authorization(vb, rp)).get("error") == ["login_required"]
    finally:
        await vb.close()
        await ob.close()


async def test_logout_with_own_hint_ends_sign_in_and_session_at_once(op: OP) -> None:
    rp = await op.client(post_logout_redirect_uris=[BYE])
    browser, tokens = await consented_browser(op, rp, await op.user())
    try:
        query = {"id_token_hint": tokens["id_token"], "post_logout_redirect_uri": BYE}
        out = await browser.get("/auth/oauth2/logout?" + urlencode({**query, "state": "s"}))
        assert out.status_code == 302 and out.headers["location"] == f"{BYE}?state=s"
        assert (await silent_authorization(browser, rp)).get("error") == ["login_required"]
        assert not await refresh_works(rp, tokens)
    finally:
        await browser.close()


async def test_logout_refuses_a_hint_expired_longer_than_a_refresh_token_lives(op: OP) -> None:
    """Before: an ID token of any age was taken (expiry not checked at all)."""
    rp = await op.client(post_logout_redirect_uris=[BYE])
    user = await op.user()
    browser, tokens = await consented_browser(op, rp, user)
    try:
        claims = pyjwt.decode(tokens["id_token"], options={"verify_signature": False})
        age = op.svc.settings.refresh_token_ttl_s + 3600
        old = dict(claims, iat=claims["iat"] - age, exp=claims["exp"] - age)
        hint = await op.svc.keyring.sign(old)
        out = await browser.get("/auth/oauth2/logout?" + urlencode({"id_token_hint": hint}))
        assert out.status_code == 400 and page_error(out.text) == "invalid_request"
        assert await still_signed_in(op, rp, browser)
        assert await refresh_works(rp, tokens)
    finally:
        await browser.close()


async def test_revoking_a_refresh_token_hinted_as_an_access_token(op: OP) -> None:
    """RFC 7009 2.1: the hint is a hint. Before: with ``token_type_hint=access_token``
    a refresh token was never looked up, and the revocation did nothing."""
    rp = await op.client()
    _, callback, verifier, _ = await code_for(op, rp, await op.user())
    tokens = (await token_call(rp, grant(rp, callback, verifier))).json()
    async with httpx.AsyncClient() as http:
        resp = await http.post(
            rp.meta["revocation_endpoint"],
            data={"token": tokens["refresh_token"], "token_type_hint": "access_token",
                  "client_id": rp.client_id},
        )  # fmt: skip
    assert resp.status_code == 200
    assert not await refresh_works(rp, tokens)


async def test_prompt_none_with_another_users_hint_is_login_required(op: OP) -> None:
    """OpenID Connect Core 3.1.2.1. Before: the hint was ignored and the code was for
    whoever was signed in."""
    rp = await op.client()
    alice, bob = await op.user(), await op.user()
    browser, _ = await consented_browser(op, rp, alice)
    bob_browser, bob_tokens = await consented_browser(op, rp, bob)
    await bob_browser.close()
    _, alice_callback, alice_verifier, _ = await code_for(op, rp, alice)
    alice_tokens = (await token_call(rp, grant(rp, alice_callback, alice_verifier))).json()
    try:
        for hint, expected in ((bob_tokens["id_token"], "error"), ("not.a.token", "error"),
                               (alice_tokens["id_token"], "code")):  # fmt: skip
            _, url, _, _ = rp.start(prompt="none", id_token_hint=hint)
            resp = await browser.get(url)
            query = parse_qs(urlsplit(resp.headers["location"]).query)
            assert expected in query, query
            if expected == "error":
                assert query["error"] == ["login_required"]
    finally:
        await browser.close()


async def test_the_token_endpoint_limits_code_exchanges_and_failed_client_auth(
    op: OP, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: only refreshes were limited (refresh_ip); code guesses and client secret
    guesses from one address were not. Now limit_token_ip counts both."""
    limiter = op.svc.limiter
    rules = limiter.limits
    monkeypatch.setattr(
        limiter, "limits", lambda rule: Limit.parse("3/300") if rule == "token_ip" else rules(rule)
    )
    rp = await op.client(type="confidential", skip_consent=True)
    ip = {"X-Forwarded-For": f"198.51.100.{secrets.randbelow(250) + 1}"}
    refresh = {"grant_type": "refresh_token", "refresh_token": "x" * 40}
    # Requests that are neither keep no place: many refreshes with a bad token.
    for _ in range(5):
        resp = await token_call(rp, refresh, auth=(rp.client_id, rp.secret), headers=ip)
        assert resp.status_code == 400 and resp.json()["error"] == "invalid_grant"
    code = {"grant_type": "authorization_code", "code": "y" * 43, "redirect_uri": REDIRECT,
            "code_verifier": "z" * 43}  # fmt: skip
    resp = await token_call(rp, code, auth=(rp.client_id, rp.secret), headers=ip)
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_grant"
    for _ in range(2):
        resp = await token_call(rp, refresh, auth=(rp.client_id, "wrong"), headers=ip)
        assert resp.status_code == 401 and resp.json()["error"] == "invalid_client"
    resp = await token_call(rp, refresh, auth=(rp.client_id, rp.secret), headers=ip)
    assert resp.status_code == 429 and resp.json()["error"] == "invalid_request"
    assert int(resp.headers["retry-after"]) > 0


@pytest.mark.parametrize(("which", "error"), [("other", "login_required"),
                                              ("forged", "invalid_request")])  # fmt: skip
async def test_a_hint_not_met_after_a_fresh_sign_in_is_an_error_redirect(
    op: OP, which: str, error: str
) -> None:
    """Before: a hint naming another account, or one we cannot verify (a rotated key,
    another deployment), sent the browser sign-in, resume, sign-in page for ever. One
    we cannot verify is refused before the sign-in now (it could never succeed)."""
    rp = await op.client()
    alice, bob = await op.user(), await op.user()
    bob_browser, bob_tokens = await consented_browser(op, rp, bob)
    await bob_browser.close()
    hint = bob_tokens["id_token"] if which == "other" else "not.a.token"
    _, url, _, _ = rp.start(id_token_hint=hint, state="st")
    browser = Browser(op.base)
    try:
        first = await browser.get(url)
        if which == "forged":
            back = first
        else:
            page = await browser.follow(first, rp.redirect_uri)
            back = await browser.sign_in(page, alice["username"], PASSWORD, rp.redirect_uri)
        assert back.status_code == 302, back.text[:300]
        query = parse_qs(urlsplit(back.headers["location"]).query)
        assert back.headers["location"].startswith(rp.redirect_uri)
        assert query["error"] == [error] and query["state"] == ["st"] and "code" not in query
    finally:
        await browser.close()


async def test_successful_code_exchanges_are_not_limited_failures_are(
    op: OP, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: every successful code exchange took a place for the minute, so a
    server-side client with more than 120 sign-ins a minute from one address got 429
    for everyone (refreshes included) and raised the token_ip lockout metric."""
    limiter = op.svc.limiter
    rules = limiter.limits
    default = Limit.parse(AuthSettings.model_fields["limit_token_ip"].default)
    monkeypatch.setattr(
        limiter, "limits", lambda rule: default if rule == "token_ip" else rules(rule)
    )
    locked: list[str] = []
    assert limiter.metrics is not None
    monkeypatch.setattr(limiter.metrics, "locked", locked.append)
    rp = await op.client(type="confidential")
    ip = {"X-Forwarded-For": f"203.0.113.{secrets.randbelow(250) + 1}"}
    browser = await signed_in_browser(op, rp, await op.user())
    try:
        for _ in range(200):
            _, url, verifier, _ = rp.start()
            back = await browser.follow(await browser.get(url), rp.redirect_uri)
            body = grant(rp, back.headers["location"], verifier)
            resp = await token_call(rp, body, auth=(rp.client_id, rp.secret), headers=ip)
            assert resp.status_code == 200, resp.text
    finally:
        await browser.close()
    assert locked == []
    code = {"grant_type": "authorization_code", "code": "y" * 43, "redirect_uri": REDIRECT,
            "code_verifier": "z" * 43}  # fmt: skip
    for i in range(default.count):
        secret = rp.secret if i % 2 else "wrong"
        resp = await token_call(rp, code, auth=(rp.client_id, secret), headers=ip)
        assert resp.status_code in (400, 401), resp.text
        assert resp.json()["error"] == ("invalid_grant" if i % 2 else "invalid_client")
    resp = await token_call(rp, code, auth=(rp.client_id, rp.secret), headers=ip)
    assert resp.status_code == 429 and int(resp.headers["retry-after"]) > 0
    assert locked == ["token_ip"]


async def test_logout_without_a_hint_asks_then_shows_signed_out(op: OP) -> None:
    """Without a hint (or a redirect) the confirmed sign-out answers its page. Before:
    that page (``message.html`` without ``signed_in_as``) was a 500 (StrictUndefined),
    as were "Check your mail" and "Password changed"."""
    rp = await op.client()
    browser = await signed_in_browser(op, rp, await op.user())
    try:
        page = await browser.get("/auth/oauth2/logout")
        assert page.status_code == 200 and 'name="confirm" value="yes"' in page.text
        assert await still_signed_in(op, rp, browser)
        out = await browser.post("/auth/oauth2/logout", hidden_fields(page.text))
        assert out.status_code == 200 and "You are signed out." in out.text
        assert (await silent_authorization(browser, rp)).get("error") == ["login_required"]
        mail = await browser.get("/auth/reset-password")
        sent = await browser.post(
            "/auth/reset-password", {**hidden_fields(mail.text), "email": "x@example.test"}
        )
        assert sent.status_code == 200, sent.text[:200]
    finally:
        await browser.close()


async def test_only_the_built_in_console_gets_an_admins_rights(op: OP) -> None:
    """Before: a ``parley.api`` access token carried the user's roles whatever the
    client, so an admin who signed in to any registered client granted ``parley.api``
    (a bot dashboard, a third-party app: its consent page says "use Parley as you")
    gave it the admin API. Now only the built-in admin console's tokens carry the
    admin role; any other client's act as a user, refreshed ones too."""
    rp = await op.client(scopes=["openid", "parley.api"], skip_consent=False, name="Bot board")
    rp.scope = "openid parley.api"
    someone = await op.user(["user", "admin"])
    oauth, url, verifier, _ = rp.start()
    browser = Browser(op.base)
    try:
        page = await browser.follow(await browser.get(url), rp.redirect_uri)
        page = await browser.sign_in(page, someone["username"], PASSWORD, rp.redirect_uri)
        back = await browser.consent(page, "allow", rp.redirect_uri)
    finally:
        await browser.close()
    resp = await token_call(rp, grant(rp, back.headers["location"], verifier))
    assert resp.status_code == 200, resp.text
    tokens = resp.json()
    refreshed = await token_call(
        rp, {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
             "client_id": rp.client_id},
    )  # fmt: skip
    assert refreshed.status_code == 200, refreshed.text
    await oauth.aclose()
    console = RelyingParty(
        op.base, clients.ADMIN_CONSOLE_ID, f"{op.base}/admin/callback", "openid parley.api"
    )
    await console.discover()
    oauth, callback, verifier, _ = await code_for(op, console, someone)
    resp = await token_call(console, grant(console, callback, verifier))
    assert resp.status_code == 200, resp.text
    await oauth.aclose()
    async with httpx.AsyncClient(base_url=op.base) as http:
        for token, rights in (
            (tokens["access_token"], ["user"]),
            (refreshed.json()["access_token"], ["user"]),
            (resp.json()["access_token"], ["user", "admin"]),
        ):
            claims = pyjwt.decode(token, options={"verify_signature": False})
            assert claims["roles"] == rights
            me = await http.get("/auth/v1/me", headers=bearer(token))
            assert me.status_code == 200  # a Parley access token either way
            users = await http.get("/auth/v1/admin/users?limit=1", headers=bearer(token))
            want = (200, None) if "admin" in rights else (403, "forbidden")
            code = None if users.status_code == 200 else users.json()["error"]["code"]
            assert (users.status_code, code) == want


# -- the audit of 2026-12: pending requests, unreadable forms and credentials, rotated keys


async def pending_keys(op: OP) -> list[str]:
    """The pending authorization requests held in Redis (this test's prefix)."""
    match = f"{op.svc.settings.redis_prefix}:auth:eph:oidc-request:*"
    return [k async for k in op.svc.store.redis.scan_iter(match=match, count=1000)]


def console_request(op: OP, **extra: str) -> dict[str, str]:
    """An anonymous authorization request of the built-in public client."""
    return {
        "response_type": "code", "client_id": clients.ADMIN_CONSOLE_ID,
        "redirect_uri": f"{op.base}/admin/callback", "scope": "openid",
        "code_challenge": b64u(hashlib.sha256(b"v" * 43).digest()),
        "code_challenge_method": "S256", **extra,
    }  # fmt: skip


async def test_a_pending_request_keeps_only_what_the_provider_reads_bounded(op: OP) -> None:
    """Before: the whole request (up to the 64 KB body) waited in Redis for 15 minutes,
    for anyone: 200 anonymous requests held 13 MB of the shared Redis."""
    state, nonce = "s" * 4096, "n" * 1024
    junk = {f"junk{i}": "j" * 1000 for i in range(40)}
    data = {**console_request(op, state=state, nonce=nonce), **junk}
    async with httpx.AsyncClient(base_url=op.base) as http:
        resp = await http.post("/auth/oauth2/authorize", data=data)
    assert resp.status_code == 302 and resp.headers["location"].startswith("/auth/login?")
    [key] = await pending_keys(op)
    raw = await op.svc.store.redis.get(key)
    # Every parameter the provider reads at its longest (provider.AUTHORIZE_PARAMS)
    # is under 14 KB.
    assert len(raw) < 16 * 1024, len(raw)
    params = dict(json.loads(raw)["params"])
    assert set(params) == set(console_request(op)) | {"state", "nonce"}
    assert params["state"] == state and params["nonce"] == nonce


async def test_an_anonymous_request_with_a_hint_not_ours_is_refused_not_kept(op: OP) -> None:
    """Review: such a request can never succeed (after the sign-in its hint is
    refused), yet it waited in Redis for 15 minutes, its 8 KB hint with it. It is
    refused at once now, to the client, with its state."""
    data = console_request(op, state="st", id_token_hint="h" * 8192)
    async with httpx.AsyncClient(base_url=op.base) as http:
        resp = await http.post("/auth/oauth2/authorize", data=data)
    assert resp.status_code == 302, resp.text[:300]
    query = parse_qs(urlsplit(resp.headers["location"]).query)
    assert query["error"] == ["invalid_request"] and query["state"] == ["st"]
    assert await pending_keys(op) == []


@pytest.mark.parametrize(
    ("extra", "to_client"),
    [
        ({"state": "s" * 4097}, True),
        ({"nonce": "n" * 1025, "state": "st"}, True),
        ({"code_challenge": "c" * 129, "state": "st"}, True),
        ({"id_token_hint": "h" * 8193, "state": "st"}, True),
        ({"redirect_uri": "https://rp.example.test/" + "x" * 2000}, False),
    ],
)
async def test_a_parameter_too_long_is_invalid_request_and_keeps_nothing(
    op: OP, extra: dict[str, str], to_client: bool
) -> None:
    """OAuth 2.0's answer to a bad request: to the client's redirect URI when it is
    registered for it (without the unfit value), else on the error page."""
    async with httpx.AsyncClient(base_url=op.base) as http:
        resp = await http.post("/auth/oauth2/authorize", data=console_request(op, **extra))
        repeated = await http.get(
            "/auth/oauth2/authorize?" + urlencode(console_request(op)) + "&nonce=a&nonce=b"
        )
    if to_client:
        assert resp.status_code == 302, resp.text[:300]
        location = resp.headers["location"]
        assert location.startswith(f"{op.base}/admin/callback?")
        query = parse_qs(urlsplit(location).query)
        assert query["error"] == ["invalid_request"]
        assert query.get("state") == (["st"] if extra.get("state") == "st" else None)
    else:
        assert resp.status_code == 400 and page_error(resp.text) == "invalid_request"
    assert repeated.status_code == 302
    assert parse_qs(urlsplit(repeated.headers["location"]).query)["error"] == ["invalid_request"]
    assert await pending_keys(op) == []


async def test_pending_requests_are_limited_per_client_address(
    op: OP, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: no limit: a loop of anonymous requests filled Redis (noeviction), and
    every service with it."""
    limiter = op.svc.limiter
    rules = limiter.limits
    limit = Limit.parse("3/900")
    monkeypatch.setattr(
        limiter, "limits", lambda rule: limit if rule == "authorize_ip" else rules(rule)
    )
    ip = {"X-Forwarded-For": f"192.0.2.{secrets.randbelow(250) + 1}"}
    async with httpx.AsyncClient(base_url=op.base, headers=ip) as http:
        for _ in range(limit.count):
            resp = await http.post("/auth/oauth2/authorize", data=console_request(op))
            assert resp.status_code == 302 and resp.headers["location"].startswith("/auth/login?")
        assert len(await pending_keys(op)) == limit.count
        resp = await http.post("/auth/oauth2/authorize", data=console_request(op))
        assert resp.status_code == 429 and page_error(resp.text) == "rate_limited"
        assert int(resp.headers["retry-after"]) > 0
        resp = await http.get("/auth/oauth2/authorize?" + urlencode(console_request(op)))
        assert resp.status_code == 429 and page_error(resp.text) == "rate_limited"
        assert len(await pending_keys(op)) == limit.count
        # Another address is not affected.
        other = {"X-Forwarded-For": "198.18.0.1"}
        resp = await http.post("/auth/oauth2/authorize", data=console_request(op), headers=other)
        assert resp.status_code == 302 and resp.headers["location"].startswith("/auth/login?")


FORM = "application/x-www-form-urlencoded"
UNREADABLE = [
    pytest.param(f"{FORM}; charset=utf-16", "a=b".encode("utf-16"), id="utf-16"),
    pytest.param(FORM, b"a=\xff\xfe", id="bytes-not-utf-8"),
    pytest.param(FORM, b"a=%ff%fe", id="escapes-not-utf-8"),
]


@pytest.mark.parametrize(("ctype", "body"), UNREADABLE)
async def test_an_unreadable_form_is_400_and_changes_nothing(
    op: OP, ctype: str, body: bytes
) -> None:
    """Before: a form in another charset, or not UTF-8, raised in ``request.post()``:
    500 ``internal_error`` on every endpoint and page with a form."""
    rp = await op.client()
    user = await op.user()
    browser, tokens = await consented_browser(op, rp, user)
    await browser.close()
    credentials = urlencode({"username": user["username"], "password": PASSWORD})
    refresh = urlencode({"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
                         "client_id": rp.client_id, "token": tokens["refresh_token"]})  # fmt: skip
    async with httpx.AsyncClient(base_url=op.base) as http:
        for path in ("/auth/oauth2/token", "/auth/oauth2/revoke"):
            resp = await http.post(
                path, content=refresh.encode() + b"&" + body, headers={"Content-Type": ctype}
            )
            assert resp.status_code == 400, (path, resp.text[:200])
            assert resp.json()["error"] == "invalid_request"
        for path in ("/auth/oauth2/authorize", "/auth/oauth2/logout", "/auth/oauth2/consent",
                     "/auth/login", "/auth/login/2fa", "/auth/reset-password",
                     "/auth/reset-password/confirm"):  # fmt: skip
            resp = await http.post(
                path, content=credentials.encode() + b"&" + body, headers={"Content-Type": ctype}
            )
            assert resp.status_code == 400, (path, resp.text[:200])
            assert page_error(resp.text) == "invalid_request", path
            assert "parley_login" not in resp.cookies
    # The refresh token was neither used nor revoked.
    assert await refresh_works(rp, tokens)
    assert await pending_keys(op) == []


@pytest.mark.parametrize("charset", ["ISO-8859-1", "us-ascii", "nope"])
async def test_a_form_labelled_another_charset_is_read_as_utf_8(op: OP, charset: str) -> None:
    """RFC 6749 appendix B: the form is UTF-8, whatever the label (review: the first
    fix refused a refresh labelled ISO-8859-1, as Apache HttpClient 4 sends plain
    ASCII, which request.post() had taken)."""
    rp = await op.client()
    user = await op.user()
    browser, tokens = await consented_browser(op, rp, user)
    await browser.close()
    refresh = urlencode({"grant_type": "refresh_token", "client_id": rp.client_id,
                         "refresh_token": tokens["refresh_token"]})  # fmt: skip
    async with httpx.AsyncClient(timeout=30) as http:
        resp = await http.post(
            rp.meta["token_endpoint"], content=refresh.encode(),
            headers={"Content-Type": f"{FORM}; charset={charset}"},
        )  # fmt: skip
    assert resp.status_code == 200, resp.text[:300]
    assert resp.json()["refresh_token"] != tokens["refresh_token"]


BAD_BASIC = [
    pytest.param(base64.b64encode(b"\xff\xfe:\xff").decode(), id="not-utf-8"),
    pytest.param("!!!", id="not-base64"),
    pytest.param(base64.b64encode(b"no-colon").decode(), id="no-password"),
]


@pytest.mark.parametrize("credentials", BAD_BASIC)
async def test_unreadable_basic_credentials_are_invalid_client_and_count(
    op: OP, monkeypatch: pytest.MonkeyPatch, credentials: str
) -> None:
    """RFC 6749 5.2. Before: Basic credentials that are not UTF-8 raised in Authlib (a
    500, the token limit's place given back); bad base64 was skipped, and the form's
    client_id authenticated the request instead."""
    limiter = op.svc.limiter
    rules = limiter.limits
    monkeypatch.setattr(
        limiter, "limits", lambda rule: Limit.parse("2/300") if rule == "token_ip" else rules(rule)
    )
    rp = await op.client()
    browser, tokens = await consented_browser(op, rp, await op.user())
    await browser.close()
    ip = {"X-Forwarded-For": f"198.51.100.{secrets.randbelow(250) + 1}"}
    bad = {"Authorization": f"Basic {credentials}", **ip}
    body = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
            "client_id": rp.client_id}  # fmt: skip
    async with httpx.AsyncClient(base_url=op.base) as http:
        resp = await http.post("/auth/oauth2/revoke", data={"token": tokens["refresh_token"],
                                                             "client_id": rp.client_id},
                               headers=bad)  # fmt: skip
        assert resp.status_code == 401 and resp.json()["error"] == "invalid_client"
        assert resp.headers["www-authenticate"].startswith("Basic ")
        for _ in range(2):
            resp = await http.post("/auth/oauth2/token", data=body, headers=bad)
            assert resp.status_code == 401 and resp.json()["error"] == "invalid_client"
            assert resp.headers["www-authenticate"].startswith("Basic ")
        # Both counted as failed client authentications: the address's window is full.
        resp = await http.post("/auth/oauth2/token", data=body, headers=ip)
        assert resp.status_code == 429 and resp.json()["error"] == "invalid_request"
    # Nothing was revoked or used: the token still refreshes (from another address).
    assert await refresh_works(rp, tokens)


async def test_logout_takes_an_id_token_signed_before_a_key_rotation(op: OP) -> None:
    """Before: the hint was verified with the published keys only, and a superseded
    key leaves the JWKS 17 minutes after the rotation (every 30 days, or rotate-keys):
    after it, every ID token signed before was refused (400, nothing ended), though an
    expired hint is taken up to 30 days past its expiry."""
    rp = await op.client(post_logout_redirect_uris=[BYE])
    browser, tokens = await consented_browser(op, rp, await op.user())
    try:
        old_kid = pyjwt.get_unverified_header(tokens["id_token"])["kid"]
        await op.svc.keyring.rotate()
        op.clock.offset = timedelta(days=1)
        assert old_kid not in {k["kid"] for k in (await op.svc.keyring.jwks())["keys"]}
        assert await refresh_works(rp, tokens)
        query = {"id_token_hint": tokens["id_token"], "post_logout_redirect_uri": BYE,
                 "state": "s"}  # fmt: skip
        out = await browser.get("/auth/oauth2/logout?" + urlencode(query))
        assert out.status_code == 302, page_error(out.text)
        assert out.headers["location"] == f"{BYE}?state=s"
        assert (await silent_authorization(browser, rp)).get("error") == ["login_required"]
        assert not await refresh_works(rp, tokens)
    finally:
        op.clock.offset = timedelta(0)
        await browser.close()
