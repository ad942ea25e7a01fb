"""Revocations survive a Redis restart (issue #20).

Logout, a revoked session and a block are Redis keys that every service
checks (services.common.auth.check_not_revoked). They lived only in Redis:
after a Redis restart, revoked access tokens worked again until they expired
(up to 15 minutes). Now the auth service also keeps them in MongoDB and puts
them back into Redis at start and as soon as it sees that Redis lost them.
"""

from __future__ import annotations

from typing import Any

import pytest

from services.auth.app import create_app
from services.auth.config import AuthSettings
from services.common import revocations
from services.common.config import Settings
from services.common.state import STARTUP
from tests.auth.conftest import ROOMY
from tests.auth.helpers import AuthApi
from tests.support.aio import eventually
from tests.support.stack import Stack


@pytest.fixture
def auth_config() -> AuthSettings:
    return AuthSettings.for_tests(**ROOMY, revocation_check_s=0.05)


async def admin_token(auth: AuthApi) -> str:
    admin = await auth.signup()
    await auth.db["users"].update_one(
        {"_id": admin["user"]["user_id"]}, {"$set": {"roles": ["user", "admin"]}}
    )
    return str((await auth.login(admin["user"]["username"]))["access_token"])


async def revoke_some(auth: AuthApi) -> dict[str, str]:
    """A logged-out session, a blocked user, and one blocked then unblocked."""
    admin = await admin_token(auth)
    out = await auth.signup()
    await auth.call("POST", "/auth/v1/logout", token=out["access_token"], status=204)
    blocked = await auth.signup()
    again = await auth.signup()
    for user in (blocked, again):
        uid = user["user"]["user_id"]
        await auth.call("POST", f"/auth/v1/admin/users/{uid}/block", {}, token=admin, status=200)
    await auth.call(
        "POST", f"/auth/v1/admin/users/{again['user']['user_id']}/unblock", token=admin, status=200
    )
    back = await auth.login(again["user"]["username"])
    tokens = {
        "logged_out": out["access_token"],
        "blocked": blocked["access_token"],
        "unblocked_again": back["access_token"],
    }
    assert await answers(auth, tokens) == EXPECTED
    return tokens


EXPECTED = {
    "logged_out": (401, "token_revoked"),
    "blocked": (401, "account_blocked"),
    "unblocked_again": (200, "ok"),
}


async def answers(auth: AuthApi, tokens: dict[str, str]) -> dict[str, tuple[int, str]]:
    out = {}
    for name, token in tokens.items():
        status, body = await auth.call("GET", "/auth/v1/me", token=token)
        out[name] = (status, "ok" if status == 200 else body["error"]["code"])
    return out


async def forget_everything_in_redis(auth: AuthApi) -> None:
    """What a Redis restart without persistence does to this test's keys."""
    prefix = auth.service.settings.redis_prefix
    keys = [k async for k in auth.redis.scan_iter(match=f"{prefix}:*")]
    assert keys
    await auth.redis.delete(*keys)


async def test_a_starting_service_puts_the_revocations_back(
    stack: Stack, settings: Settings, make_client: Any
) -> None:
    # This test's processes only restore at start (their periodic check is far off).
    config = AuthSettings.for_tests(**ROOMY, revocation_check_s=300)

    async def start() -> AuthApi:
        client = await make_client(await create_app(settings, config))
        await client.server.app[STARTUP].done.wait()
        return AuthApi(client, stack.maildir)

    auth = await start()
    tokens = await revoke_some(auth)
    # Kept in MongoDB too: one record per revoked session, one per blocked user.
    kinds = sorted([d["kind"] async for d in auth.db["revocations"].find({})])
    assert kinds.count("user") == 1  # the unblocked user's record is gone
    assert kinds.count("session") >= 3
    await forget_everything_in_redis(auth)
    assert (await answers(auth, tokens))["logged_out"] == (200, "ok")  # what #20 found
    # The next process to start restores them before it serves.
    restarted = await start()
    assert await answers(restarted, tokens) == EXPECTED
    assert await answers(auth, tokens) == EXPECTED  # every process reads the same Redis


@pytest.mark.kills_servers
async def test_a_running_service_restores_them_after_a_redis_restart(
    auth: AuthApi, stack: Stack
) -> None:
    assert stack.procs is not None
    tokens = await revoke_some(auth)
    stack.procs.kill("redis")
    stack.procs.start("redis")
    # Redis comes back empty; the service notices and restores, without a restart of its own.
    await eventually(lambda: answers(auth, tokens), lambda got: got == EXPECTED, timeout=20)


async def test_expired_revocations_are_not_restored(auth: AuthApi) -> None:
    store = auth.service.store
    await store.revocations.insert_one(
        {"_id": f"{auth.service.settings.redis_prefix}:revoked:sid:old", "kind": "session",
         "user_id": "u", "expires_at": 1.0}
    )  # fmt: skip
    await store.revocation_log.restore()
    assert await store.revocations.find_one({"_id": {"$regex": ":old$"}}) is None
    assert not await auth.redis.exists(f"{auth.service.settings.redis_prefix}:revoked:sid:old")


async def test_an_unblock_is_not_undone_by_a_restore_that_read_the_block_before(
    auth: AuthApi,
) -> None:
    """Audit finding: a restore (every 30 s) that had read a block's record before an
    unblock removed it set its key again: the unblocked user was refused for the key's
    whole life, and no record was left to repair it. The restore reads the records
    again after its writes and deletes the keys of those gone."""
    import time

    store = auth.service.store
    key = f"{auth.service.settings.redis_prefix}:blocked:u-unblocked"
    await store.revocation_log.add({key: {"kind": "user", "user_id": "u-unblocked"}}, 600)
    read = [d async for d in store.revocations.find({"_id": key})]  # the restore's read
    await store.revocation_log.remove([key])  # the unblock, in between
    assert await store.revocation_log._put(read, time.time()) == 1  # the restore's write
    assert not await auth.redis.exists(key)
    # A record still there keeps its key.
    await store.revocation_log.add({key: {"kind": "user", "user_id": "u-unblocked"}}, 600)
    read = [d async for d in store.revocations.find({"_id": key})]
    await store.revocation_log._put(read, time.time())
    assert await auth.redis.exists(key)


async def test_a_password_change_ends_thousands_of_sessions_at_once(
    auth: AuthApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sessions per user have no cap (each sign-in opens one), and ending them was two
    round trips each: a user with hundreds of thousands took minutes to block, their
    tokens working meanwhile. Now one read, one update per thousand, one Redis write
    of their keys and one pipeline of their messages."""
    from datetime import UTC, datetime, timedelta

    user = await auth.signup()
    uid = user["user"]["user_id"]
    now = datetime.now(UTC)
    others = [f"s{i:05d}{uid[:8]}" for i in range(3000)]
    await auth.db["sessions"].insert_many([
        {"_id": sid, "user_id": uid, "created_at": now, "last_used_at": now,
         "expires_at": now + timedelta(days=30), "revoked_at": None, "amr": ["pwd"]}
        for sid in others
    ])  # fmt: skip
    one_by_one: list[str] = []
    revoke_session = auth.service.store.revoke_session

    async def counted(sid: str, *args: Any, **kw: Any) -> Any:
        one_by_one.append(sid)
        return await revoke_session(sid, *args, **kw)

    monkeypatch.setattr(auth.service.store, "revoke_session", counted)
    await auth.call(
        "POST", "/auth/v1/password",
        {"current_password": user["password"], "new_password": "a brand new passphrase"},
        token=user["access_token"], status=204,
    )  # fmt: skip
    assert one_by_one == []
    live = [d["_id"] async for d in auth.db["sessions"].find({"user_id": uid, "revoked_at": None})]
    assert live == [user["session_id"]]  # the one that changed it
    prefix = auth.service.settings.redis_prefix
    for sid in (others[0], others[1500], others[-1]):
        assert await auth.redis.exists(f"{prefix}:revoked:sid:{sid}")
    await auth.call("GET", "/auth/v1/me", token=user["access_token"], status=200)


async def test_keys_lost_by_a_failover_that_kept_the_marker_are_set_again(
    auth: AuthApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: keys were put back only when the marker was gone. A failover to a
    replica that lagged (asynchronous replication) keeps the old marker but loses
    the newest keys, and a removed device or a logged-out session worked again
    (for weeks, for a device). Now the recent records are set again every
    ``RECENT_EVERY_S`` whatever the marker says."""
    monkeypatch.setattr(revocations, "RECENT_EVERY_S", 0.0)
    tokens = await revoke_some(auth)
    log = auth.service.store.revocation_log
    assert await log.present()
    lost = [d["_id"] async for d in auth.service.store.revocations.find({})]
    assert lost
    await auth.redis.delete(*lost)  # the newest keys, not the marker
    assert await log.present()
    await eventually(lambda: answers(auth, tokens), lambda got: got == EXPECTED, timeout=10)


@pytest.mark.parametrize("which", ["one", "all_others"])
async def test_a_revocation_retried_after_a_failed_publish_is_told_to_every_service(
    auth: AuthApi, monkeypatch: pytest.MonkeyPatch, which: str
) -> None:
    """Before: the session was marked revoked, then the publish to Redis failed (a
    500); the retry found nothing live (404 for one session, no sid for all) and
    never published, so the ended session's access token worked until it expired."""
    user = await auth.signup()
    other = await auth.login(user["user"]["username"])
    store = auth.service.store
    publish_one, publish_many = store.publish_session_revoked, store.publish_sessions_revoked

    async def redis_away(*_: object) -> None:
        raise ConnectionError("redis away")

    with monkeypatch.context() as m:
        m.setattr(store, "publish_session_revoked", redis_away)
        m.setattr(store, "publish_sessions_revoked", redis_away)
        if which == "one":
            path = f"/auth/v1/sessions/{other['session_id']}"
        else:
            path = "/auth/v1/sessions"
        status, _ = await auth.call("DELETE", path, token=user["access_token"])
        assert status == 503  # Redis away: try again
    assert (store.publish_session_revoked, store.publish_sessions_revoked) == (
        publish_one,
        publish_many,
    )
    status, _ = await auth.call("GET", "/auth/v1/me", token=other["access_token"])
    assert status == 200  # what the failed first try left
    status, _ = await auth.call("DELETE", path, token=user["access_token"])
    assert status in (200, 204)
    status, body = await auth.call("GET", "/auth/v1/me", token=other["access_token"])
    assert (status, body["error"]["code"]) == (401, "token_revoked")


@pytest.mark.parametrize("which", ["admin_one", "demote", "password", "reset"])
async def test_an_admin_or_password_revocation_whose_publish_failed_is_finished_by_its_retry(
    auth: AuthApi, monkeypatch: pytest.MonkeyPatch, which: str
) -> None:
    """Before: the first try wrote its change and the revocation to MongoDB, then the
    publish to Redis failed (503), and its retry told no service: an admin ending one
    session got 404 ``session_not_found`` (the session was ended already); a demotion
    found the roles equal (200); a password change found the current password changed
    (401 ``invalid_credentials``); a reset found its token used (401 ``invalid_token``).
    The ended sessions' access tokens (a demoted admin's with its admin rights) kept
    working until they expired. The retry of the same request now finishes it."""
    admin = await admin_token(auth)
    user = await auth.signup()
    uid = user["user"]["user_id"]
    if which == "demote":
        await auth.call(
            "PATCH", f"/auth/v1/admin/users/{uid}", {"roles": ["user", "admin"]}, token=admin,
            status=200,
        )  # fmt: skip
    other = await auth.login(user["user"]["username"])  # the session that must end
    new_password = "a brand new passphrase"
    if which == "admin_one":
        request = ("DELETE", f"/auth/v1/admin/users/{uid}/sessions/{other['session_id']}",
                   None, admin)  # fmt: skip
    elif which == "demote":
        request = ("PATCH", f"/auth/v1/admin/users/{uid}", {"roles": ["user"]}, admin)
    elif which == "password":
        body = {"current_password": user["password"], "new_password": new_password}
        request = ("POST", "/auth/v1/password", body, user["access_token"])
    else:
        await auth.call("POST", "/auth/v1/password/reset", {"email": user["email"]}, status=202)
        [mail] = await auth.mail_to(user["email"])
        token = mail.split("reset token: ")[1].split()[0]
        request = ("POST", "/auth/v1/password/reset/confirm",
                   {"token": token, "new_password": new_password}, None)  # fmt: skip
    method, path, json, bearer_token = request
    store = auth.service.store

    async def redis_away(*_: object) -> None:
        raise ConnectionError("redis away")

    with monkeypatch.context() as m:
        m.setattr(store, "publish_session_revoked", redis_away)
        m.setattr(store, "publish_sessions_revoked", redis_away)
        status, _ = await auth.call(method, path, json, token=bearer_token)
        assert status == 503  # Redis away: try again
    status, body = await auth.call(method, path, json, token=bearer_token)
    assert status in (200, 204), body
    probe = "/auth/v1/admin/users?limit=1" if which == "demote" else "/auth/v1/me"
    status, body = await auth.call("GET", probe, token=other["access_token"])
    assert (status, body["error"]["code"]) == (401, "token_revoked")
    if which in ("password", "reset"):
        await auth.login(user["user"]["username"], new_password)
    if which == "password":  # the session that changed it goes on
        await auth.call("GET", "/auth/v1/me", token=user["access_token"], status=200)
    if which in ("admin_one", "demote"):
        # One entry: the first try's change was audited only if it was made.
        action = "user.revoke_session" if which == "admin_one" else "user.update"
        entries = [e async for e in auth.audit.find({"target_id": uid, "action": action})]
        assert len(entries) == (1 if which == "admin_one" else 2)  # demote: promote too
