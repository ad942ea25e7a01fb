"""The shared verifier refuses every token the auth service did not sign, as it was signed."""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import time
import uuid
from hashlib import sha256
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.common.app import base_app
from services.common.auth import (
    MAX_USER_ID,
    Claims,
    TokenVerifier,
    revocation_keys,
    use_token_verifier,
)
from services.common.config import Settings
from services.common.deps import use_redis
from services.common.errors import ApiError
from services.common.openapi import Api
from services.common.state import VERIFIER
from tests.support.tokens import TokenIssuer


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def signed(issuer: TokenIssuer, **override: Any) -> str:
    """A token signed by the real key, with any claims (``None`` drops one)."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": issuer.settings.jwt_issuer, "aud": issuer.settings.jwt_audience,
        "sub": "u", "sid": "s", "jti": uuid.uuid4().hex, "roles": ["user"],
        "iat": now, "exp": now + 60,
    }  # fmt: skip
    claims.update(override)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, issuer.key, algorithm="EdDSA", headers={"kid": issuer.kid})


async def rejected(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(ApiError) as exc:
        await verifier.verify(token)
    assert exc.value.status in (401, 503)
    return exc.value.code.value


@pytest.fixture
async def verifier(issuer: TokenIssuer) -> Any:
    v = TokenVerifier(issuer.settings)
    yield v
    await v.close()


async def test_a_good_token_gives_its_claims(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    token = issuer.token("u1", sid="s1", roles=("user", "admin"))
    claims = await verifier.verify(token)
    assert (claims.sub, claims.sid, claims.roles, claims.is_admin) == (
        "u1", "s1", ("user", "admin"), True,
    )  # fmt: skip


async def test_the_longest_user_id_is_accepted(
    issuer: TokenIssuer, verifier: TokenVerifier
) -> None:
    claims = await verifier.verify(signed(issuer, sub="u" * MAX_USER_ID))
    assert len(claims.sub) == MAX_USER_ID


async def test_tampered_tokens_are_rejected(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    header, payload, sig = issuer.token("victim").split(".")
    claims = json.loads(unb64(payload))
    claims["sub"] = "attacker"
    claims["roles"] = ["user", "admin"]
    forged_payload = b64(json.dumps(claims).encode())
    assert await rejected(verifier, f"{header}.{forged_payload}.{sig}") == "invalid_token"
    flipped = bytearray(unb64(sig))
    flipped[0] ^= 1
    assert await rejected(verifier, f"{header}.{payload}.{b64(bytes(flipped))}") == "invalid_token"
    assert await rejected(verifier, f"{header}.{payload}.") == "invalid_token"
    assert await rejected(verifier, f"{header}.{payload}") == "invalid_token"


async def test_expired_tokens_are_rejected(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    now = int(time.time())
    token = signed(issuer, iat=now - 1000, exp=now - 60)
    assert await rejected(verifier, token) == "token_expired"


@pytest.mark.parametrize(
    "override",
    [
        {"aud": "another-service"},
        {"aud": ["another-service"]},
        {"iss": "https://evil.example"},
        {"nbf": int(time.time()) + 3600},
        {"roles": "admin"},
        {"roles": [1, 2]},
        {"sub": None, "iat": int(time.time()) + 3600},
        {"sub": ""},
        {"sub": "u" * (MAX_USER_ID + 1)},
    ],
)
async def test_wrong_audience_issuer_or_claims_are_rejected(
    issuer: TokenIssuer, verifier: TokenVerifier, override: dict[str, Any]
) -> None:
    assert await rejected(verifier, signed(issuer, **override)) == "invalid_token"


@pytest.mark.parametrize("missing", ["sub", "sid", "jti", "exp", "iat", "aud", "iss"])
async def test_missing_claims_are_rejected(
    issuer: TokenIssuer, verifier: TokenVerifier, missing: str
) -> None:
    assert await rejected(verifier, signed(issuer, **{missing: None})) == "invalid_token"


async def test_alg_none_and_algorithm_confusion_are_rejected(
    issuer: TokenIssuer, verifier: TokenVerifier
) -> None:
    good = issuer.token("u")
    _, payload, _ = good.split(".")
    for alg in ("none", "None", "NONE"):
        header = b64(json.dumps({"alg": alg, "typ": "JWT", "kid": issuer.kid}).encode())
        assert await rejected(verifier, f"{header}.{payload}.") == "invalid_token"
    # HS256 keyed with the public key (the classic confusion attack).
    public = issuer.key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": issuer.kid}).encode())
    sig = hmac.new(public, f"{header}.{payload}".encode(), sha256).digest()
    assert await rejected(verifier, f"{header}.{payload}.{b64(sig)}") == "invalid_token"
    # Signed by another Ed25519 key under the real kid.
    other = jwt.encode(
        jwt.decode(good, options={"verify_signature": False}),
        Ed25519PrivateKey.generate(),
        algorithm="EdDSA",
        headers={"kid": issuer.kid},
    )
    assert await rejected(verifier, other) == "invalid_token"
    # No kid, a non-string kid, garbage.
    no_kid = jwt.encode({"sub": "u"}, issuer.key, algorithm="EdDSA")
    assert await rejected(verifier, no_kid) == "invalid_token"
    for junk in ("", "abc", "a.b.c", "....", "\u00e9.\u00e9.\u00e9"):
        assert await rejected(verifier, junk) == "invalid_token"


async def test_unknown_kids_refetch_but_cannot_flood(settings: Settings) -> None:
    key = Ed25519PrivateKey.generate()
    jwk = jwt.algorithms.OKPAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwks: dict[str, Any] = {"keys": [{**jwk, "kid": "k1", "alg": "EdDSA"}, {"kty": "junk"}, "x"]}
    calls = 0

    async def loader() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return jwks

    verifier = TokenVerifier(settings, jwks_loader=loader)

    def token(kid: str) -> str:
        now = int(time.time())
        claims = {
            "iss": settings.jwt_issuer, "aud": settings.jwt_audience, "sub": "u", "sid": "s",
            "jti": uuid.uuid4().hex, "roles": [], "iat": now, "exp": now + 60,
        }  # fmt: skip
        return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": kid})

    await verifier.verify(token("k1"))
    assert calls == 1
    for i in range(50):
        assert await rejected(verifier, token(f"forged-{i}")) == "invalid_token"
    assert calls == 1  # within MIN_REFRESH_INTERVAL_S: no fetch at all


async def test_unreachable_jwks_is_503_not_401(settings: Settings) -> None:
    verifier = TokenVerifier(settings, "http://127.0.0.1:9/.well-known/jwks.json")
    try:
        token = jwt.encode(
            {"sub": "u"}, Ed25519PrivateKey.generate(), algorithm="EdDSA", headers={"kid": "k"}
        )
        with pytest.raises(ApiError) as exc:
            await verifier.verify(token)
        assert (exc.value.status, exc.value.code) == (503, "service_unavailable")
    finally:
        await verifier.close()


async def test_authenticated_routes_check_the_header_and_revocation(
    issuer: TokenIssuer, make_client: Any
) -> None:
    settings = issuer.settings
    api = Api("Test", "1.0")

    @api.get("/whoami", summary="Who is asking", auth=True)
    async def whoami(request: web.Request, claims: Claims) -> dict[str, str]:
        return {"sub": claims.sub}

    app = base_app("test", settings, prefix="/test", api=api)
    use_token_verifier(app, settings)
    redis = use_redis(app, settings)
    client = await make_client(app)

    async def call(headers: dict[str, str]) -> tuple[int, Any]:
        resp = await client.get("/test/whoami", headers=headers)
        return resp.status, await resp.json()

    status, body = await call({})
    assert (status, body["error"]["code"]) == (401, "unauthenticated")
    status, body = await call({"Authorization": "Basic dXNlcjpwYXNz"})
    assert (status, body["error"]["code"]) == (401, "unauthenticated")
    status, body = await call({"Authorization": "Bearer "})
    assert (status, body["error"]["code"]) == (401, "unauthenticated")

    token = issuer.token("u9", sid="s9")
    assert await call({"Authorization": f"Bearer {token}"}) == (200, {"sub": "u9"})
    claims = await app[VERIFIER].verify(token)
    sid_key, user_key = revocation_keys(settings.redis_prefix, claims)
    await redis.set(sid_key, b"1", ex=60)
    status, body = await call({"Authorization": f"Bearer {token}"})
    assert (status, body["error"]["code"]) == (401, "token_revoked")
    await redis.delete(sid_key)
    await redis.set(user_key, b"1", ex=60)
    status, body = await call({"Authorization": f"Bearer {token}"})
    assert (status, body["error"]["code"]) == (401, "account_blocked")
    await redis.delete(user_key)
    assert (await call({"Authorization": f"Bearer {token}"}))[0] == 200


async def test_verified_tokens_are_cached_only_until_they_expire(issuer: Any) -> None:
    from services.common import auth as auth_mod

    verifier = auth_mod.TokenVerifier(issuer.settings)
    try:
        token = issuer.token("cached-user", ttl=60)
        first = await verifier.verify(token)
        assert await verifier.verify(token) is first  # served from the cache
        # A cache entry past its expiry is never served: the token is verified again.
        stale = auth_mod.Claims(first.sub, first.sid, first.roles, first.jti, int(time.time()) - 60)
        verifier._verified[token] = stale
        again = await verifier.verify(token)
        assert again is not stale
        assert again.exp == first.exp
        # A token that expired is refused, whether or not it was seen before.
        with pytest.raises(ApiError) as info:
            await verifier.verify(issuer.token("cached-user", ttl=-60))
        assert info.value.code == "token_expired"
        # remember=False (a gateway's sockets): verified, not kept; a cached one is served.
        once = issuer.token("socket-user", ttl=60)
        assert (await verifier.verify(once, remember=False)).sub == "socket-user"
        assert once not in verifier._verified
        assert await verifier.verify(token, remember=False) is verifier._verified[token]
    finally:
        await verifier.close()


async def test_a_stale_jwks_is_refreshed_behind_while_known_keys_verify(
    settings: Settings,
) -> None:
    """Before: once the JWKS cache was stale, every request waited for the fetch (up to
    its 5 s timeout against a hung auth service), round after round. Now a known kid
    verifies at once and the fetch runs behind."""
    key = Ed25519PrivateKey.generate()
    jwk = jwt.algorithms.OKPAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwks: dict[str, Any] = {"keys": [{**jwk, "kid": "k1", "alg": "EdDSA"}]}
    hung = asyncio.Event()
    fetches = 0

    async def loader() -> dict[str, Any]:
        nonlocal fetches
        fetches += 1
        if fetches > 1:
            await hung.wait()  # the auth service stopped answering
        return jwks

    verifier = TokenVerifier(settings.model_copy(update={"jwks_cache_s": 1}), jwks_loader=loader)
    now = int(time.time())
    claims = {
        "iss": settings.jwt_issuer, "aud": settings.jwt_audience, "sub": "u", "sid": "s",
        "jti": "j", "roles": [], "iat": now, "exp": now + 60,
    }  # fmt: skip
    await verifier.verify(jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": "k1"}))
    verifier._fetched_at -= 10  # stale now, and the last attempt long ago
    verifier._attempted_at -= 10
    again = jwt.encode({**claims, "jti": "j2"}, key, algorithm="EdDSA", headers={"kid": "k1"})
    got = await asyncio.wait_for(verifier.verify(again), 1.0)
    assert got.sub == "u"
    await asyncio.sleep(0)
    assert fetches == 2  # the refresh started, and hangs behind
    hung.set()
    await verifier.close()


async def test_a_dropped_signing_key_ends_the_tokens_already_verified(
    settings: Settings,
) -> None:
    """Audit finding: a token verified once stayed in the cache until its own expiry,
    whatever the key ring said: after ``rotate-keys --drop-previous`` (a key stolen) a
    token signed with the stolen key, with an expiry years out, kept working in every
    process that had seen it. The cache is cleared when a key goes, and a lifetime
    longer than any access token's is refused."""
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()

    def jwk(key: Ed25519PrivateKey, kid: str) -> dict[str, Any]:
        public = jwt.algorithms.OKPAlgorithm.to_jwk(key.public_key(), as_dict=True)
        return {**public, "kid": kid, "alg": "EdDSA"}

    jwks: dict[str, Any] = {"keys": [jwk(old, "old"), jwk(new, "new")]}

    async def loader() -> dict[str, Any]:
        return jwks

    verifier = TokenVerifier(settings, jwks_loader=loader)
    now = int(time.time())
    claims = {
        "iss": settings.jwt_issuer, "aud": settings.jwt_audience, "sub": "u", "sid": "s",
        "jti": "j", "roles": ["admin"], "iat": now, "exp": now + 600,
    }  # fmt: skip
    stolen = jwt.encode(claims, old, algorithm="EdDSA", headers={"kid": "old"})
    fresh = jwt.encode({**claims, "jti": "j2"}, new, algorithm="EdDSA", headers={"kid": "new"})
    assert (await verifier.verify(stolen)).roles == ("admin",)
    assert (await verifier.verify(fresh)).sub == "u"

    jwks["keys"] = [jwk(new, "new")]  # the old key dropped
    verifier.load_jwks(jwks)
    assert await rejected(verifier, stolen) == "invalid_token"
    assert (await verifier.verify(fresh)).sub == "u"  # the kept key's tokens still work

    # A key merely added keeps what was verified.
    assert await verifier.verify(fresh) is verifier._verified[fresh]
    cached = verifier._verified[fresh]
    jwks["keys"].append(jwk(Ed25519PrivateKey.generate(), "newer"))
    verifier.load_jwks(jwks)
    assert verifier._verified.get(fresh) is cached

    # Never issued: a lifetime past the longest access token (a day).
    forever = {**claims, "jti": "j3", "exp": now + 10 * 365 * 86400}
    assert await rejected(verifier, jwt.encode(forever, new, algorithm="EdDSA",
                                               headers={"kid": "new"})) == "invalid_token"  # fmt: skip
    await verifier.close()
