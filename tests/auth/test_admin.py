"""Admins: made by the CLI only; the users API; block closes everything at once; audit."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest

from scripts.stack import PYTHONPATH
from services.common.audit import Actor, AuditLog, Entry
from services.common.auth import (
    TokenVerifier,
    check_not_revoked,
    revocation_channel,
    revocation_keys,
)
from services.common.config import Settings
from services.common.errors import ApiError
from tests.auth.helpers import PASSWORD, AuthApi, code_in, unique_name
from tests.support.aio import eventually


async def cli(settings: Settings, *args: str, stdin: str = "") -> tuple[int, str]:
    """Run ``python -m services.auth.cli`` as an operator would, against the test's stack."""
    env = {
        **os.environ,
        "PARLEY_MONGO_URL": settings.mongo_url,
        "PARLEY_REDIS_URL": settings.redis_url,
        "PARLEY_DB_PREFIX": settings.db_prefix,
        "PARLEY_REDIS_PREFIX": settings.redis_prefix,
        "PARLEY_ARGON2_TIME_COST": "1",
        "PARLEY_ARGON2_MEMORY_KIB": "8",
        "PARLEY_ARGON2_PARALLELISM": "1",
        "PARLEY_LOG_FORMAT": "console",
        # This checkout's code and contract, as the service under test runs them.
        "PYTHONPATH": PYTHONPATH,
    }
    if settings.key_encryption_secret is not None:
        # The service's own: the CLI opens the same sealed keys.
        env["PARLEY_KEY_ENCRYPTION_SECRET"] = settings.key_encryption_secret.get_secret_value()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.auth.cli", *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env=env,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(stdin.encode()), 60)
    return proc.returncode or 0, out.decode()


@pytest.fixture
async def admin(auth: AuthApi, settings: Settings) -> dict[str, Any]:
    name = unique_name("adm")
    code, out = await cli(
        settings, "create-admin", "--username", name, "--email", f"{name}@example.test",
        "--password-stdin", stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert code == 0, out
    assert f"created admin {name}" in out
    tokens = await auth.login(name)
    assert tokens["user"]["roles"] == ["user", "admin"]
    return dict(tokens)


async def test_no_open_endpoint_makes_an_admin(auth: AuthApi, settings: Settings) -> None:
    name = unique_name()
    body = {"username": name, "email": f"{name}@example.test", "password": PASSWORD}
    status, err = await auth.call("POST", "/auth/v1/signup", {**body, "roles": ["admin"]})
    assert (status, err["error"]["code"]) == (422, "validation_failed")
    user = await auth.signup()
    for method, path in [
        ("GET", "/auth/v1/admin/users"),
        ("GET", f"/auth/v1/admin/users/{user['user']['user_id']}"),
        ("PATCH", f"/auth/v1/admin/users/{user['user']['user_id']}"),
        ("POST", f"/auth/v1/admin/users/{user['user']['user_id']}/block"),
        ("POST", f"/auth/v1/admin/users/{user['user']['user_id']}/unblock"),
        ("GET", "/auth/v1/admin/audit"),
    ]:
        payload = {"roles": ["user", "admin"]} if method == "PATCH" else {}
        status, err = await auth.call(method, path, payload, token=user["access_token"])
        assert (status, err["error"]["code"]) == (403, "forbidden"), path
    _, me = await auth.call("GET", "/auth/v1/me", token=user["access_token"])
    assert me["roles"] == ["user"]
    assert await auth.audit.count_documents({}) == 0


async def test_cli_refuses_bad_or_duplicate_admins(auth: AuthApi, settings: Settings) -> None:
    code, out = await cli(
        settings, "create-admin", "--username", "x", "--email", "x@example.test",
        "--password-stdin", stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert code == 1 and "invalid_username" in out
    name = unique_name("adm")
    args = ["create-admin", "--username", name, "--email", f"{name}@example.test"]
    code, out = await cli(settings, *args, "--password-stdin", stdin="password123\n")
    assert code == 1 and "weak_password" in out
    code, out = await cli(settings, *args, "--password-stdin", stdin=PASSWORD + "\n")
    assert code == 0, out
    code, out = await cli(settings, *args, "--password-stdin", stdin=PASSWORD + "\n")
    assert code == 1 and "username_taken" in out


async def test_list_search_paginate_view_and_edit(auth: AuthApi, admin: dict[str, Any]) -> None:
    token = admin["access_token"]
    tag = unique_name("pg")
    made = [await auth.signup(f"{tag}{i}") for i in range(5)]
    seen: list[str] = []
    cursor = None
    while True:
        path = f"/auth/v1/admin/users?q={tag}&limit=2" + (f"&cursor={cursor}" if cursor else "")
        _, page = await auth.call("GET", path, token=token, status=200)
        seen += [u["username"] for u in page["users"]]
        assert len(page["users"]) <= 2
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(u["user"]["username"] for u in made)
    # Search by e-mail prefix too, case-insensitively.
    _, page = await auth.call(
        "GET", f"/auth/v1/admin/users?q={tag.upper()}3@EXAMPLE", token=token, status=200
    )
    assert [u["username"] for u in page["users"]] == [f"{tag}3"]
    status, err = await auth.call("GET", "/auth/v1/admin/users?limit=1000", token=token)
    assert (status, err["error"]["code"]) == (422, "validation_failed")

    target = made[0]
    uid = target["user"]["user_id"]
    _, view = await auth.call("GET", f"/auth/v1/admin/users/{uid}", token=token, status=200)
    assert view["email"] == target["email"] and view["live_sessions"] == 1
    assert view["blocked"] is False
    status, err = await auth.call("GET", "/auth/v1/admin/users/nobody", token=token)
    assert (status, err["error"]["code"]) == (404, "user_not_found")

    status, err = await auth.call(
        "PATCH", f"/auth/v1/admin/users/{uid}", {"username": made[1]["user"]["username"]},
        token=token,
    )  # fmt: skip
    assert (status, err["error"]["code"]) == (409, "username_taken")
    new_name = unique_name("ren")
    _, view = await auth.call(
        "PATCH", f"/auth/v1/admin/users/{uid}",
        {"username": new_name, "email": f"{new_name}@example.test"}, token=token, status=200,
    )  # fmt: skip
    assert view["username"] == new_name
    # A role change ends the target's sessions: no token keeps old rights.
    _, view = await auth.call(
        "PATCH", f"/auth/v1/admin/users/{uid}", {"roles": ["admin"]}, token=token, status=200
    )
    assert view["roles"] == ["user", "admin"] and view["live_sessions"] == 0
    status, _ = await auth.call("GET", "/auth/v1/me", token=target["access_token"])
    assert status == 401
    relogged = await auth.login(new_name)
    assert relogged["user"]["roles"] == ["user", "admin"]

    # An admin cannot lock themselves out.
    own = admin["user"]["user_id"]
    status, err = await auth.call(
        "PATCH", f"/auth/v1/admin/users/{own}", {"roles": ["user"]}, token=token
    )
    assert (status, err["error"]["code"]) == (409, "conflict")
    status, err = await auth.call("POST", f"/auth/v1/admin/users/{own}/block", {}, token=token)
    assert (status, err["error"]["code"]) == (409, "conflict")

    _, log = await auth.call(
        "GET", f"/auth/v1/admin/audit?target_id={uid}", token=token, status=200
    )
    actions = [e["action"] for e in log["entries"]]
    assert actions == ["user.update", "user.update", "user.view"]
    entry = log["entries"][1]
    assert entry["actor_id"] == own and entry["actor"] == admin["user"]["username"]
    assert entry["details"]["before"]["username"] == target["user"]["username"]
    assert entry["details"]["after"]["username"] == new_name
    assert entry["at"] and entry["request_id"] and entry["ip"]


async def test_block_revokes_everything_and_is_heard_on_redis(
    auth: AuthApi, admin: dict[str, Any], settings: Settings
) -> None:
    token = admin["access_token"]
    victim = await auth.signup()
    second = await auth.login(victim["user"]["username"])
    uid = victim["user"]["user_id"]

    pubsub = auth.redis.pubsub()
    await pubsub.subscribe(revocation_channel(settings.redis_prefix))
    await pubsub.get_message(timeout=1)
    try:
        _, view = await auth.call(
            "POST", f"/auth/v1/admin/users/{uid}/block", {"reason": "spam"}, token=token,
            status=200,
        )  # fmt: skip
        assert view["blocked"] is True and view["blocked_reason"] == "spam"
        assert view["live_sessions"] == 0
        msg = await eventually(
            lambda: pubsub.get_message(ignore_subscribe_messages=True, timeout=1),
            lambda m: m is not None,
        )
        assert orjson.loads(msg["data"]) == {"type": "user_blocked", "user_id": uid}
    finally:
        await pubsub.aclose()

    # Every service's check refuses the tokens: the shared verifier + revocation check.
    verifier = TokenVerifier(settings, str(auth.client.make_url("/.well-known/jwks.json")))
    for tokens in (victim, second):
        claims = await verifier.verify(tokens["access_token"])
        with pytest.raises(ApiError) as exc:
            await check_not_revoked(auth.redis, settings.redis_prefix, claims)
        assert exc.value.code == "account_blocked"
        status, err = await auth.call("GET", "/auth/v1/me", token=tokens["access_token"])
        assert (status, err["error"]["code"]) == (401, "account_blocked")
        body = await auth.refresh(tokens["refresh_token"], status=401)
        assert body["error"]["code"] == "token_revoked"
    await verifier.close()
    sid_key, user_key = revocation_keys(settings.redis_prefix, claims)
    ttl = await auth.redis.ttl(user_key)
    assert ttl >= settings.access_token_ttl_s
    assert await auth.redis.ttl(sid_key) >= settings.access_token_ttl_s
    # The password still works, but the account does not.
    body = await auth.login(victim["user"]["username"], status=403)
    assert body["error"]["code"] == "account_blocked"

    await auth.call("POST", f"/auth/v1/admin/users/{uid}/unblock", token=token, status=200)
    assert not await auth.redis.exists(user_key)
    fresh = await auth.login(victim["user"]["username"])
    await auth.call("GET", "/auth/v1/me", token=fresh["access_token"], status=200)

    entries = [d async for d in auth.audit.find({"target_id": uid})]
    assert sorted(e["action"] for e in entries) == ["user.block", "user.unblock"]
    block = next(e for e in entries if e["action"] == "user.block")
    assert block["actor_id"] == admin["user"]["user_id"]
    assert block["details"] == {"reason": "spam", "sessions_revoked": 2}


async def test_grant_admin_and_rotate_keys_from_the_cli(auth: AuthApi, settings: Settings) -> None:
    user = await auth.signup()
    name = user["user"]["username"]
    code, out = await cli(settings, "grant-admin", name)
    assert code == 0, out
    status, _ = await auth.call("GET", "/auth/v1/me", token=user["access_token"])
    assert status == 401  # the old token carried the old roles
    assert (await auth.login(name))["user"]["roles"] == ["user", "admin"]

    _, before = await auth.call("GET", "/.well-known/jwks.json", status=200)
    code, out = await cli(settings, "rotate-keys", "--immediate")
    assert code == 0, out
    _, after = await auth.call("GET", "/.well-known/jwks.json", status=200)
    assert len(after["keys"]) == 2
    assert before["keys"][0]["kid"] in {k["kid"] for k in after["keys"]}
    code, out = await cli(settings, "keys")
    assert code == 0 and "signing" in out and "published" in out


async def test_the_audit_route_filters_and_pages_the_shared_log(
    auth: AuthApi, admin: dict[str, Any]
) -> None:
    token, own = admin["access_token"], admin["user"]["user_id"]
    victim = (await auth.signup())["user"]["user_id"]
    for _ in range(3):
        await auth.call("GET", f"/auth/v1/admin/users/{victim}", token=token, status=200)
    await auth.call("POST", f"/auth/v1/admin/users/{victim}/block", {"reason": "x"}, token=token,
                    status=200)  # fmt: skip
    # Another service's entry, in the same log.
    await AuditLog(auth.service.audit.coll.database, "rooms").record(
        Entry(Actor(own, "admin"), "room.close", "room", "0" * 24)
    )
    seen: list[str] = []
    cursor = ""
    while True:
        _, page = await auth.call(
            "GET", f"/auth/v1/admin/audit?target_id={victim}&limit=2{cursor}", token=token,
            status=200,
        )  # fmt: skip
        seen += [e["action"] for e in page["entries"]]
        if page["next_cursor"] is None:
            break
        cursor = f"&cursor={page['next_cursor']}"
    assert seen == ["user.block", "user.view", "user.view", "user.view"]

    _, page = await auth.call("GET", "/auth/v1/admin/audit?action=user.block", token=token,
                              status=200)  # fmt: skip
    assert [(e["target_id"], e["target_type"], e["service"], e["actor_role"])
            for e in page["entries"]] == [(victim, "user", "auth", "admin")]  # fmt: skip
    _, page = await auth.call("GET", f"/auth/v1/admin/audit?service=rooms&actor_id={own}",
                              token=token, status=200)  # fmt: skip
    assert [e["action"] for e in page["entries"]] == ["room.close"]
    before = await auth.audit.count_documents({})
    for query, field in (("cursor=nope", "cursor"), ("action=Room!", "action"),
                         ("before=yesterday", "before"), ("service=" + "x" * 40, "service")):  # fmt: skip
        status, err = await auth.call("GET", f"/auth/v1/admin/audit?{query}", token=token)
        assert (status, err["error"]["code"]) == (422, "validation_failed"), query
        assert err["error"]["details"][0]["field"] == field
    assert await auth.audit.count_documents({}) == before


async def test_an_address_change_ends_what_was_mailed_to_the_old_address(
    auth: AuthApi, admin: dict[str, Any]
) -> None:
    """Before: a reset link (and an e-mail-code enrolment) mailed to the old address
    kept working after an admin changed the account's address: whoever read the old
    mailbox (the reason for the change, often) could reset the password."""
    user = await auth.signup()
    uid, old = user["user"]["user_id"], user["email"]
    await auth.call("POST", "/auth/v1/password/reset", {"email": old}, status=202)
    await auth.service.drain()
    [reset_mail] = await auth.mail_to(old)
    reset_token = reset_mail.split("reset token: ")[1].split()[0]
    await auth.call(
        "POST", "/auth/v1/2fa/email/setup", {"password": PASSWORD},
        token=user["access_token"], status=202,
    )  # fmt: skip
    [_, setup_mail] = await auth.mail_to(old, after=1)
    new = f"{unique_name('moved')}@example.test"
    await auth.call(
        "PATCH", f"/auth/v1/admin/users/{uid}", {"email": new},
        token=admin["access_token"], status=200,
    )  # fmt: skip
    status, err = await auth.call(
        "POST", "/auth/v1/2fa/email/confirm", {"code": code_in(setup_mail)},
        token=user["access_token"],
    )  # fmt: skip
    assert status == 401 and err["error"]["code"] == "challenge_expired", (status, err)
    body = {"token": reset_token, "new_password": "a brand new passphrase"}
    status, err = await auth.call("POST", "/auth/v1/password/reset/confirm", body)
    assert status == 401 and err["error"]["code"] == "invalid_token", (status, err)
    assert "access_token" in await auth.login(user["user"]["username"])  # the password stays


async def test_a_reset_mailed_while_the_address_changed_does_not_work(
    auth: AuthApi, admin: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reset read the account (its old address) before an admin changed it, and
    was stored after the change dropped the pending ones: it went to the old
    address and worked. A reset keeps the address it is mailed to now, and works
    only while the account has it."""
    user = await auth.signup()
    uid, old = user["user"]["user_id"], user["email"]
    store = auth.service.store
    insert_password_reset = store.insert_password_reset
    reached, gate = asyncio.Event(), asyncio.Event()

    async def held(doc: dict[str, Any]) -> None:
        reached.set()
        await gate.wait()  # the account read (old address); the reset not stored yet
        await insert_password_reset(doc)

    monkeypatch.setattr(store, "insert_password_reset", held)
    await auth.call("POST", "/auth/v1/password/reset", {"email": old}, status=202)
    await reached.wait()
    new = f"{unique_name('moved')}@example.test"
    await auth.call(
        "PATCH", f"/auth/v1/admin/users/{uid}", {"email": new},
        token=admin["access_token"], status=200,
    )  # fmt: skip
    gate.set()
    await auth.service.drain()
    # The old address has the reset and the notice of the change (in either order).
    mails = await auth.mail_to(old, after=1)
    [reset_mail] = [m for m in mails if "reset token: " in m]
    body = {
        "token": reset_mail.split("reset token: ")[1].split()[0],
        "new_password": "a brand new passphrase",
    }
    status, err = await auth.call("POST", "/auth/v1/password/reset/confirm", body)
    assert status == 401 and err["error"]["code"] == "invalid_token", (status, err)


def mails_to(auth: AuthApi, addr: str) -> int:
    """Mails the sink holds for ``addr`` (written before it acknowledges them: a
    request's mail is there once the request has answered)."""
    return len(list(auth.maildir.glob(f"*-{addr}.eml")))


async def test_an_edit_that_changes_nothing_is_audited_and_ends_no_session(
    auth: AuthApi, admin: dict[str, Any]
) -> None:
    """Before: a PATCH that changed nothing answered 200 and wrote no entry, although
    every admin call, reads included, is audited. The console sends the roles with
    every save: roles as they are end no session."""
    user = await auth.signup()
    uid = user["user"]["user_id"]
    same = {"username": user["user"]["username"], "email": user["email"], "roles": ["user"]}
    _, view = await auth.call(
        "PATCH", f"/auth/v1/admin/users/{uid}", same, token=admin["access_token"], status=200
    )
    assert view["live_sessions"] == 1
    await auth.call("GET", "/auth/v1/me", token=user["access_token"], status=200)
    [entry] = [e async for e in auth.audit.find({"target_id": uid})]
    assert (entry["action"], entry["actor_id"]) == ("user.update", admin["user"]["user_id"])
    assert (entry["before"], entry["after"]) == ({}, {})
    assert mails_to(auth, user["email"]) == 0  # nothing changed, nothing to tell


async def test_an_admin_change_of_username_or_address_is_mailed_to_the_old_address(
    auth: AuthApi, admin: dict[str, Any]
) -> None:
    """Before: an admin changed the account's address (or username) and the owner was
    not told, though notices.py promises a mail for every change to how the account
    signs in. The old address is told now (without the new one: the old mailbox may
    be why it changed), under the account's cap of notices like any other."""
    user = await auth.signup()
    uid, old = user["user"]["user_id"], user["email"]
    name, new = unique_name("ren"), f"{unique_name('moved')}@example.test"
    await auth.call(
        "PATCH", f"/auth/v1/admin/users/{uid}", {"username": name, "email": new},
        token=admin["access_token"], status=200,
    )  # fmt: skip
    [notice] = await auth.mail_to(old)
    assert "an administrator changed how your account signs in" in notice
    assert f"Its username is now {name}" in notice and "e-mail address was changed" in notice
    assert new not in notice and "By: an administrator" in notice
    assert "From address" not in notice  # not the admin's address
    assert mails_to(auth, new) == 0
    # The cap of notices per account holds for these too (PARLEY_LIMIT_SECURITY_NOTICES).
    cap = auth.service.limiter.limits("security_notices").count
    for i in range(cap + 1):
        await auth.call(
            "PATCH", f"/auth/v1/admin/users/{uid}", {"username": f"{name}x{i}"},
            token=admin["access_token"], status=200,
        )  # fmt: skip
    assert mails_to(auth, new) == cap  # the first was the old address's; then one past it
    mails = await auth.mail_to(new, after=cap - 1)
    assert "This is the last notice until" in mails[-1]


@pytest.mark.parametrize("by", ["before", "cursor"])
async def test_paging_the_audit_log_skips_no_entry_of_a_millisecond(
    auth: AuthApi, admin: dict[str, Any], by: str
) -> None:
    """Before: a page of ``limit`` entries cut a millisecond in two, and ``before`` =
    ``next_before`` (that millisecond) skipped the rest of it: four entries of one
    millisecond paged two at a time showed two. A page now ends where a millisecond
    ends (or holds the whole millisecond), for both ways of paging."""
    actor = Actor("y" * 32, "admin")
    at = int(time.time() * 1000) - 60_000
    made = []
    for ms, count in ((at, 4), (at + 1, 3), (at + 5, 1)):
        for _ in range(count):
            doc = await auth.service.audit.record(
                Entry(actor, "room.view", "room", f"r{len(made)}"), now_ms=ms
            )
            made.append(doc["_id"])
    seen: list[str] = []
    more = ""
    for _ in range(len(made) + 1):
        _, page = await auth.call(
            "GET", f"/auth/v1/admin/audit?actor_id={'y' * 32}&limit=2{more}",
            token=admin["access_token"], status=200,
        )  # fmt: skip
        assert page["entries"]
        seen += [e["id"] for e in page["entries"]]
        if page["next_cursor"] is None:
            assert page["next_before"] is None
            break
        more = "&" + urlencode({by: page[f"next_{by}"]})
    assert seen == sorted(made, reverse=True)
