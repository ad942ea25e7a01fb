"""Refresh tokens: O(1) state per session, reuse detected for the session's whole life,
forgeries and tokens never issued change nothing, tokens issued before still work
(docs/auth.md, "Tokens and sessions").

Before, every refresh stored the new token's hash in ``refresh_tokens`` and kept it 30
days so that its reuse could be detected: ~2,880 documents per active device, and a
token the TTL index had reclaimed was no longer recognised as used.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import bson
import pytest

from services.auth.config import AuthSettings
from services.auth.state import AuthService
from services.auth.tokens import digest, new_token
from tests.auth.conftest import ROOMY
from tests.auth.helpers import AuthApi

REFRESHES = 1000


@pytest.fixture
def auth_config() -> AuthSettings:
    return AuthSettings.for_tests(**{**ROOMY, "limit_refresh_ip": f"{4 * REFRESHES}/60"})


def fields(token: str) -> tuple[str, int, bytes]:
    """(sid, generation, MAC) as a token carries them: base64url of version 1, the sid
    (16 bytes), the generation (8 bytes, big-endian) and HMAC-SHA256 (32 bytes)."""
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    assert len(raw) == 57 and raw[0] == 1, token
    return raw[1:17].hex(), int.from_bytes(raw[17:25], "big"), raw[25:]


def spell(sid: str, generation: int, mac: bytes) -> str:
    raw = bytes([1]) + bytes.fromhex(sid) + generation.to_bytes(8, "big") + mac
    return base64.urlsafe_b64encode(raw).decode()


def session_key(svc: AuthService, session: dict[str, Any]) -> bytes:
    return svc.box.open(session["refresh_key"], f"refresh:{session['_id']}")


def real_mac(key: bytes, sid: str, generation: int) -> bytes:
    msg = b"parley-auth refresh token v1\x00" + bytes.fromhex(sid) + generation.to_bytes(8, "big")
    return hmac.new(key, msg, hashlib.sha256).digest()


async def docs_of(auth: AuthApi, sid: str) -> dict[str, list[dict[str, Any]]]:
    return {
        "sessions": await auth.db["sessions"].find({"_id": sid}).to_list(),
        "refresh_tokens": await auth.db["refresh_tokens"].find({"sid": sid}).to_list(),
    }


async def revoked_key(auth: AuthApi, sid: str) -> bool:
    prefix = auth.service.settings.redis_prefix
    return bool(await auth.redis.exists(f"{prefix}:revoked:sid:{sid}"))


async def test_a_thousand_refreshes_keep_one_document(auth: AuthApi) -> None:
    user = await auth.signup()
    sid = user["session_id"]
    token = (await auth.refresh(user["refresh_token"]))["refresh_token"]
    (doc,) = (await docs_of(auth, sid))["sessions"]
    size = len(bson.encode(doc))
    for _ in range(REFRESHES - 1):
        body = await auth.refresh(token)
        assert body["session_id"] == sid
        token = body["refresh_token"]
    held = await docs_of(auth, sid)
    assert len(held["refresh_tokens"]) == 0, len(held["refresh_tokens"])
    assert len(held["sessions"]) == 1
    (doc,) = held["sessions"]
    assert doc["refresh_gen"] == REFRESHES
    # The size after the first refresh (give or take how a timestamp is spelt):
    # nothing grows with the refreshes.
    assert abs(len(bson.encode(doc)) - size) <= 32 and size < 1024
    assert fields(token)[:2] == (sid, REFRESHES)
    # The newest works, the first is a reuse a thousand generations later.
    token = (await auth.refresh(token))["refresh_token"]
    body = await auth.refresh(user["refresh_token"], status=401)
    assert body["error"]["code"] == "refresh_token_reused"
    assert (await auth.refresh(token, status=401))["error"]["code"] == "token_revoked"


async def reclaim_expired(auth: AuthApi, now: datetime) -> None:
    """What MongoDB's TTL monitor deletes at ``now`` (an index on ``expires_at``)."""
    for name in ("refresh_tokens", "sessions"):
        coll = auth.db[name]
        gone = []
        async for doc in coll.find({}, {"expires_at": 1}):
            at = doc["expires_at"]
            if isinstance(at, str):  # nx-27017 stores a $set datetime as a string
                at = datetime.fromisoformat(at)
            if at.replace(tzinfo=UTC) <= now:
                gone.append(doc["_id"])
        await coll.delete_many({"_id": {"$in": gone}})


@pytest.mark.parametrize("index", [0, 5])
async def test_an_old_generation_is_a_reuse_for_the_session_s_whole_life(
    auth: AuthApi, monkeypatch: pytest.MonkeyPatch, index: int
) -> None:
    """An attacker used a token first and refreshed every day since; the legitimate
    client presents that token 40 days later (the first one, or the sixth): the
    session ends. Before, the used token's record was reclaimed 30 days after it was
    issued, and the late token was merely ``invalid_token``: the attacker kept the
    session."""
    now = [datetime.now(UTC)]
    monkeypatch.setattr(auth.service, "clock", lambda: now[0])
    user = await auth.signup()
    sid = user["session_id"]
    tokens = [user["refresh_token"]]
    for _ in range(40):
        tokens.append((await auth.refresh(tokens[-1]))["refresh_token"])
        now[0] += timedelta(days=1)
    await reclaim_expired(auth, now[0])
    assert not await revoked_key(auth, sid)
    body = await auth.refresh(tokens[index], status=401)
    assert body["error"]["code"] == "refresh_token_reused"
    (session,) = (await docs_of(auth, sid))["sessions"]
    assert session["revoked_reason"] == "refresh_token_reused"
    assert await revoked_key(auth, sid)
    # The attacker's newest token is dead too.
    assert (await auth.refresh(tokens[-1], status=401))["error"]["code"] == "token_revoked"


async def test_forged_and_unissued_tokens_are_invalid_and_change_nothing(auth: AuthApi) -> None:
    """The sid and generation are in the clear: knowing them (a sid is in every access
    token) must not let anyone end the session, nor move it on."""
    user = await auth.signup()
    sid = user["session_id"]
    t1 = (await auth.refresh(user["refresh_token"]))["refresh_token"]
    t2 = (await auth.refresh(t1))["refresh_token"]
    assert fields(t2)[:2] == (sid, 2)
    (before,) = (await docs_of(auth, sid))["sessions"]
    key = session_key(auth.service, before)
    assert fields(t2)[2] == real_mac(key, sid, 2)

    forged = [
        spell(sid, 2, secrets.token_bytes(32)),  # the current generation, a guessed MAC
        spell(sid, 1, secrets.token_bytes(32)),  # a used generation: not a reuse
        spell(sid, 0, real_mac(secrets.token_bytes(32), sid, 0)),  # another key's MAC
        spell(sid, 2, fields(t1)[2]),  # a genuine MAC of another generation
        spell(sid, 3, real_mac(key, sid, 3)),  # above the current: never issued
        spell(sid, 3, secrets.token_bytes(32)),
        spell(secrets.token_hex(16), 0, fields(t2)[2]),  # no such session
        spell(sid, 2, fields(t2)[2])[:-1],  # cut short
        new_token(),  # a random legacy-looking token
    ]
    for token in forged:
        body = await auth.refresh(token, status=401)
        assert body["error"]["code"] == "invalid_token", token
    (after,) = (await docs_of(auth, sid))["sessions"]
    assert after == before
    assert not await revoked_key(auth, sid)
    assert (await docs_of(auth, sid))["refresh_tokens"] == []
    # The genuine current token still works.
    assert fields((await auth.refresh(t2))["refresh_token"])[:2] == (sid, 3)


async def insert_legacy_session(auth: AuthApi, user_id: str) -> tuple[str, str]:
    """A session and its refresh token as they were stored before tokens were derived
    (sessions.open_session and new_refresh_token as they were): (sid, token)."""
    now = datetime.now(UTC)
    sid = secrets.token_hex(16)
    await auth.db["sessions"].insert_one(
        {"_id": sid, "user_id": user_id, "created_at": now, "last_used_at": now,
         "expires_at": now + timedelta(days=30), "revoked_at": None, "amr": ["pwd"],
         "device": None, "device_id": None, "user_agent": "old", "ip": "127.0.0.1"}
    )  # fmt: skip
    token = secrets.token_urlsafe(32)
    await auth.db["refresh_tokens"].insert_one(
        {"_id": digest(token), "sid": sid, "user_id": user_id, "issued_at": now,
         "expires_at": now + timedelta(days=30), "used_at": None}
    )  # fmt: skip
    return sid, token


async def test_a_legacy_token_refreshes_once_and_its_reuse_is_detected(auth: AuthApi) -> None:
    user = await auth.signup()
    sid, legacy = await insert_legacy_session(auth, user["user"]["user_id"])
    body = await auth.refresh(legacy)
    assert body["session_id"] == sid
    await auth.call("GET", "/auth/v1/me", token=body["access_token"], status=200)
    # The session is on derived tokens now; nothing new was stored for it.
    assert fields(body["refresh_token"])[:2] == (sid, 0)
    held = await docs_of(auth, sid)
    assert len(held["refresh_tokens"]) == 1 and held["refresh_tokens"][0]["used_at"]
    newer = (await auth.refresh(body["refresh_token"]))["refresh_token"]
    assert fields(newer)[:2] == (sid, 1)
    # The legacy token again: a reuse, the session ends.
    reused = await auth.refresh(legacy, status=401)
    assert reused["error"]["code"] == "refresh_token_reused"
    assert await revoked_key(auth, sid)
    assert (await auth.refresh(newer, status=401))["error"]["code"] == "token_revoked"


async def test_a_legacy_refresh_that_failed_on_the_server_can_be_tried_again(
    auth: AuthApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The legacy token is given back and its session left on stored tokens: the retry
    is not taken for a reuse, nor refused because the session had moved on."""
    user = await auth.signup()
    sid, legacy = await insert_legacy_session(auth, user["user"]["user_id"])
    issue = auth.service.tokens.issue
    failures: list[str] = []

    async def fails_once(*args: object, **kw: object) -> str:
        if not failures:
            failures.append("signing")
            raise ConnectionError("the key store did not answer")
        return await issue(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(auth.service.tokens, "issue", fails_once)
    status, _ = await auth.call("POST", "/auth/v1/token/refresh", {"refresh_token": legacy})
    assert status >= 500 and failures
    (session,) = (await docs_of(auth, sid))["sessions"]
    assert "refresh_gen" not in session and "refresh_key" not in session
    again = await auth.refresh(legacy)
    assert fields(again["refresh_token"])[:2] == (sid, 0)
    assert (await auth.refresh(legacy, status=401))["error"]["code"] == "refresh_token_reused"


async def test_a_generation_is_given_back_only_by_the_use_that_took_it(auth: AuthApi) -> None:
    user = await auth.signup()
    sid = user["session_id"]
    store = auth.service.store
    first = datetime.now(UTC).replace(microsecond=0)
    assert await store.advance_refresh_generation(sid, 0, first) is not None
    assert await store.advance_refresh_generation(sid, 0, first) is None  # used already
    # Another use's release (another time), or one for a generation since moved on: no-op.
    await store.release_refresh_generation(sid, 0, first + timedelta(seconds=1))
    second = first + timedelta(seconds=2)
    assert await store.advance_refresh_generation(sid, 1, second) is not None
    await store.release_refresh_generation(sid, 0, first)
    assert (await store.session(sid) or {})["refresh_gen"] == 2
    # The use that set the current generation gives it back.
    await store.release_refresh_generation(sid, 1, second)
    assert (await store.session(sid) or {})["refresh_gen"] == 1


async def test_stored_tokens_for_a_rolling_upgrade_then_derived_again(auth: AuthApi) -> None:
    """Review finding: versions before read only stored tokens, so during a rolling
    upgrade (old and new auth processes behind one balancer) a derived token refreshed
    at an old process was refused: signed out. ``PARLEY_REFRESH_TOKENS=stored`` makes
    this version issue stored tokens while reading both; set back, a session on stored
    tokens goes on with derived ones, and every used token of it is still a reuse."""
    svc = auth.service
    derived = svc.config
    user = await auth.signup()
    sid, first = user["session_id"], user["refresh_token"]
    svc.config = derived.model_copy(update={"refresh_tokens": "stored"})
    stored = (await auth.refresh(first))["refresh_token"]
    assert len(stored) == 43  # an old version's (a hash of it in refresh_tokens)
    assert await auth.db["refresh_tokens"].find_one({"_id": digest(stored), "sid": sid})
    second = (await auth.refresh(stored))["refresh_token"]
    assert len(second) == 43
    svc.config = derived
    back = (await auth.refresh(second))["refresh_token"]
    assert fields(back)[0] == sid and fields(back)[1] == 2  # the session's next generation
    again = (await auth.refresh(back))["refresh_token"]
    assert not await revoked_key(auth, sid)
    status, body = await auth.call("POST", "/auth/v1/token/refresh", {"refresh_token": stored})
    assert (status, body["error"]["code"]) == (401, "refresh_token_reused")
    assert await revoked_key(auth, sid)
    status, _ = await auth.call("POST", "/auth/v1/token/refresh", {"refresh_token": again})
    assert status == 401
