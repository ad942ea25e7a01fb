"""Signing keys: JWKS, encryption at rest, agreement between processes, rotation."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from pydantic import SecretStr
from pymongo import AsyncMongoClient

from services.auth.app import create_app
from services.auth.config import AuthSettings
from services.auth.secretbox import SecretBox, SecretBoxError
from services.auth.signing import KeyRing, SigningKey, published
from services.auth.state import AUTH_SERVICE, AuthService
from services.auth.store import AuthStore
from services.common.auth import TokenVerifier
from services.common.clients import mongo_client, redis_client, service_db
from services.common.config import Settings
from services.common.state import DB, STARTUP
from tests.auth.helpers import AuthApi


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def kid_of(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


async def test_jwks_is_public_keys_only(auth: AuthApi) -> None:
    _, root = await auth.call("GET", "/.well-known/jwks.json", status=200)
    _, alias = await auth.call("GET", "/auth/v1/jwks", status=200)
    assert root == alias
    [key] = root["keys"]
    assert {k: key[k] for k in ("kty", "crv", "alg", "use")} == {
        "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig",
    }  # fmt: skip
    assert "d" not in key and set(key) == {"kty", "crv", "x", "kid", "alg", "use"}
    user = await auth.signup()
    assert kid_of(user["access_token"]) == key["kid"]
    resp = await auth.client.get("/.well-known/jwks.json")
    assert "max-age" in resp.headers["Cache-Control"]


async def test_private_keys_are_encrypted_at_rest(
    settings: Settings, make_client: Any, auth_config: AuthSettings
) -> None:
    secret = settings.model_copy(update={"key_encryption_secret": SecretStr("s" * 32)})
    client = await make_client(await create_app(secret, auth_config))
    await client.server.app[STARTUP].done.wait()
    [doc] = [d async for d in client.server.app[DB]["signing_keys"].find({})]
    assert doc["private"]["enc"] == "A256GCM"
    ring = client.server.app[AUTH_SERVICE].keyring
    [key] = await ring.keys()
    raw = key.private.private_bytes_raw()  # type: ignore[union-attr]
    assert raw.hex() not in str(doc) and SecretBox(None).seal(raw, "x")["data"] not in str(doc)
    # Without the secret, or with another, the key cannot be loaded: a loud failure.
    for wrong in (None, SecretStr("t" * 32)):
        box = SecretBox(wrong)
        with pytest.raises(SecretBoxError):
            box.open(doc["private"], f"signing-key:{doc['_id']}")
    # Bound to its record: a sealed value moved to another kid does not open.
    with pytest.raises(SecretBoxError):
        SecretBox(SecretStr("s" * 32)).open(doc["private"], "signing-key:other")


async def test_two_processes_share_keys_and_accept_each_others_tokens(
    settings: Settings, make_client: Any, auth_config: AuthSettings
) -> None:
    # Both start on an empty database at once: exactly one first key is made.
    a, b = await asyncio.gather(
        create_app(settings, auth_config), create_app(settings, auth_config)
    )
    ca, cb = await asyncio.gather(make_client(a), make_client(b))
    ja = await (await ca.get("/.well-known/jwks.json")).json()
    jb = await (await cb.get("/.well-known/jwks.json")).json()
    assert ja == jb and len(ja["keys"]) == 1
    body = {"username": "shared1", "email": "shared1@example.test", "password": "a fine passphrase"}
    resp = await ca.post("/auth/v1/signup", json=body)
    tokens = await resp.json()
    resp = await cb.get(
        "/auth/v1/me", headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )
    assert resp.status == 200
    # A refresh token from one process is spent on the other.
    resp = await cb.post("/auth/v1/token/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert resp.status == 200
    resp = await ca.post("/auth/v1/token/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert (await resp.json())["error"]["code"] == "refresh_token_reused"


async def test_rotation_without_downtime(
    auth: AuthApi, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("services.common.auth.MIN_REFRESH_INTERVAL_S", 0.0)
    verifier = TokenVerifier(settings, str(auth.client.make_url("/.well-known/jwks.json")))
    try:
        old = await auth.signup()
        await verifier.verify(old["access_token"])  # caches the JWKS with the first key
        new_kid = await auth.service.keyring.rotate(immediate=True)
        new = await auth.signup()
        assert kid_of(new["access_token"]) == new_kid != kid_of(old["access_token"])
        # The cached verifier meets an unknown kid, re-fetches, and accepts it...
        assert (await verifier.verify(new["access_token"])).sub == new["user"]["user_id"]
        # ...and tokens signed before the rotation still pass until they expire.
        assert (await verifier.verify(old["access_token"])).sub == old["user"]["user_id"]
    finally:
        await verifier.close()


async def test_publication_window_and_rotation_by_age(stack: Any, settings: Settings) -> None:
    clock = FakeClock()
    mongo, redis = mongo_client(settings), redis_client(settings)
    try:
        store = AuthStore(service_db(mongo, settings, "auth"), redis, settings.redis_prefix)
        await store.ensure_indexes()
        ring = KeyRing(
            store, SecretBox(None), token_ttl_s=900, max_age_s=2 * 86400, reload_s=0,
            activation_delay_s=60, clock=clock,
        )  # fmt: skip
        await ring.reload()
        first = (await ring.signer()).kid
        second = await ring.rotate()
        # Published at once, signing only after the activation delay.
        assert {k["kid"] for k in (await ring.jwks())["keys"]} == {first, second}
        assert (await ring.signer()).kid == first
        clock.advance(61)
        assert (await ring.signer()).kid == second
        # The old key stays published until its last token has expired (+ margin)...
        clock.advance(900)
        assert len((await ring.jwks())["keys"]) == 2
        clock.advance(121)
        assert [k["kid"] for k in (await ring.jwks())["keys"]] == [second]
        assert len(await store.signing_key_docs()) == 2
        # ...and is deleted a day later.
        clock.advance(86400)
        await ring.jwks()
        assert [d["_id"] for d in await store.signing_key_docs()] == [second]
        # Rotation by age: the newest key is older than max_age_s.
        clock.advance(86400)
        await ring.keys()
        assert len(await store.signing_key_docs()) == 2
        gens = [d["generation"] for d in await store.signing_key_docs()]
        assert gens == [2, 3]
    finally:
        await redis.aclose()
        await mongo.close()


def test_published_keys_follow_the_token_lifetime() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)

    def key(gen: int, activate: datetime) -> SigningKey:
        return SigningKey(f"k{gen}", gen, activate, activate, {"kid": f"k{gen}"}, None)

    keys = [key(1, t0), key(2, t0 + timedelta(hours=1)), key(3, t0 + timedelta(hours=2))]
    ttl = timedelta(minutes=15)
    keep, drop = published(keys, t0 + timedelta(minutes=30), ttl)
    assert [k.kid for k in keep] == ["k1", "k2", "k3"] and drop == []  # k2, k3 pre-published
    keep, drop = published(keys, t0 + timedelta(hours=1, minutes=10), ttl)
    assert [k.kid for k in keep] == ["k1", "k2", "k3"]
    keep, drop = published(keys, t0 + timedelta(hours=1, minutes=18), ttl)
    assert [k.kid for k in keep] == ["k2", "k3"] and drop == []
    keep, drop = published(keys, t0 + timedelta(days=2), ttl)
    assert [k.kid for k in keep] == ["k3"] and [k.kid for k in drop] == ["k1", "k2"]


async def test_requests_wait_for_start_and_readiness_says_so(
    settings: Settings, make_client: Any, auth_config: AuthSettings
) -> None:
    # A MongoDB that is not there (yet): health answers, readiness and the API do not.
    down = settings.model_copy(
        update={"mongo_url": "mongodb://127.0.0.1:9", "dependency_timeout_ms": 300}
    )
    client = await make_client(await create_app(down, auth_config))
    assert (await client.get("/auth/healthz")).status == 200
    resp = await client.get("/auth/readyz")
    assert resp.status == 503 and "startup" in (await resp.json())["failed"]
    resp = await client.post("/auth/v1/login", json={"username": "abc", "password": "x"})
    assert resp.status == 503
    assert (await resp.json())["error"]["code"] == "service_unavailable"


async def test_while_mongodb_is_down_the_known_keys_answer_at_once(
    stack: Any, settings: Settings
) -> None:
    """A request waits for a due re-read of the key set at most RELOAD_WAIT_S, even the
    first one after MongoDB stopped answering (a gateway's JWKS fetch gives up after
    5 s: a re-read that waited out the server-selection timeout lost it); then the
    known keys answer at once, and the re-reads go on beside the requests."""
    mongo, redis = mongo_client(settings), redis_client(settings)
    slow = AsyncMongoClient("mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=60000")
    try:
        store = AuthStore(service_db(mongo, settings, "auth"), redis, settings.redis_prefix)
        ring = KeyRing(
            store, SecretBox(None), token_ttl_s=900, max_age_s=2 * 86400, reload_s=0,
            activation_delay_s=60,
        )  # fmt: skip
        await ring.reload()
        known = [k.kid for k in await ring.keys()]
        # A re-read would wait a minute: the first request waits 1 s for it (RELOAD_WAIT_S).
        ring.store = AuthStore(service_db(slow, settings, "auth"), redis, settings.redis_prefix)
        assert [k.kid for k in await asyncio.wait_for(ring.keys(), 10)] == known
        # The next ones (and the JWKS) do not wait for it.
        assert [k.kid for k in await asyncio.wait_for(ring.keys(), 10)] == known
        jwks = await asyncio.wait_for(ring.jwks(), 10)
        assert [k["kid"] for k in jwks["keys"]] == known
        retry = ring._retry
        assert retry is not None and not retry.done()
        retry.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await retry
    finally:
        await slow.close()
        await redis.aclose()
        await mongo.close()


async def test_a_key_is_published_while_its_id_tokens_live_and_kept_for_their_hints(
    stack: Any, settings: Settings
) -> None:
    """Before: a superseded key left the JWKS an access token's lifetime (+2 min) after
    it stopped signing, though an ID token (``PARLEY_OIDC_ID_TOKEN_TTL_S``, up to a
    day) may live longer; and it was deleted a day later, though its ID tokens are
    taken as ``id_token_hint`` up to a refresh token's lifetime past their expiry."""
    clock = FakeClock()
    # No rotation by age meanwhile: the two keys only.
    config = AuthSettings.for_tests(oidc_id_token_ttl_s=86400, signing_key_max_age_s=10**9)
    mongo, redis = mongo_client(settings), redis_client(settings)
    try:
        svc = AuthService.build(settings, config, service_db(mongo, settings, "auth"), redis, clock)
        await svc.store.ensure_indexes()
        ring = svc.keyring
        await ring.reload()
        first = (await ring.signer()).kid
        t0 = clock.now
        second = await ring.rotate(immediate=True)  # first stops signing at t0

        def at(seconds: float) -> None:
            clock.now = t0 + timedelta(seconds=seconds)

        async def kids() -> tuple[set[str], set[str], set[str]]:
            published = {k["kid"] for k in (await ring.jwks())["keys"]}
            stored = {k["kid"] for k in (await ring.stored_jwks())["keys"]}
            return published, stored, {d["_id"] for d in await svc.store.signing_key_docs()}

        both = {first, second}
        at(settings.access_token_ttl_s + 180)  # its ID tokens still live: published
        assert {k["kid"] for k in (await ring.jwks())["keys"]} == both
        assert await kids() == (both, both, both)
        at(86400 + 180)  # the ID tokens it signed have expired: retired
        assert await kids() == ({second}, both, both)
        hints_until = 86400 + settings.refresh_token_ttl_s
        at(hints_until - 60)
        assert await kids() == ({second}, both, both)
        at(hints_until + 180)
        assert await kids() == ({second}, {second}, {second})
    finally:
        await redis.aclose()
        await mongo.close()
