"""The admin console end to end in Chromium (tests/web/admin_*.mjs), through HAProxy.

An admin signs in through the provider's pages, blocks a user and sees it in
the audit log; a non-admin is refused by the console, and the admin API
answers 403 to their token. An admin moderates a public room (makes a member its
owner, and a stale tab doing it again is refused; hides a message and restores it,
closes the room, removes a member) and works a real report (verified plaintext, removal of the
message, by the admin's name, resolution with a note); the API's state and the audit log say it
happened. A user's Edit form sends only what its admin changed, so another admin's change
made meanwhile stays; the audit log shows what a rooms action changed and who did it by name.
Screenshots land in the test's temporary directory; with
``PARLEY_UPDATE_SCREENSHOTS=1`` they replace docs/admin/*.png (docs/admin.md).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from parley.client import Message, MessageRemoved
from pymongo import AsyncMongoClient

from scripts.stack import ROOT
from services.common import audit
from services.common.audit import AuditLog
from tests.auth.helpers import bearer
from tests.auth.test_oidc_through_lb import admin_token, make_admin
from tests.e2e.test_moderation_messages import user as sdk_user
from tests.support.stack import System
from tests.support.users import User, signup

WEB = ROOT / "web"
DOC_SHOTS = ROOT / "docs" / "admin"

needs_browser = pytest.mark.skipif(
    not Path("/usr/bin/chromium").exists() or shutil.which("node") is None,
    reason="needs Debian's chromium and node (scripts/install.sh installs them)",
)


def screenshots(tmp_path: Path) -> Path:
    """docs/admin/ with PARLEY_UPDATE_SCREENSHOTS=1, else the test's own directory."""
    assert (WEB / "admin" / "dist" / "index.html").exists(), "make install builds web/admin"
    update = os.environ.get("PARLEY_UPDATE_SCREENSHOTS") == "1"
    shots = DOC_SHOTS if update else tmp_path / "shots"
    shots.mkdir(parents=True, exist_ok=True)
    return shots


def console_env(system: System, shots: Path, admin: User, **extra: str) -> dict[str, str]:
    """What every console script reads (the load balancer, the built console, where its
    screenshots go, the admin it signs in as), and a test's own variables."""
    return {
        "LB": system.lb, "WEB_DIR": str(WEB), "SHOTS": str(shots),
        "ADMIN_USER": admin.username, "ADMIN_PASSWORD": admin.password, **extra,
    }  # fmt: skip


async def run_script(script: str, env: dict[str, str], ok: str) -> None:
    run = await asyncio.to_thread(
        subprocess.run,
        ["node", str(ROOT / "tests" / "web" / script)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert ok in run.stdout, run.stdout


@needs_browser
async def test_admin_blocks_a_user_in_the_console_and_a_non_admin_is_refused(
    system: System, tmp_path: Path
) -> None:
    shots = screenshots(tmp_path)
    admin = await signup(system.lb, "adm")
    make_admin(system, admin.username)
    target = await signup(system.lb, "tgt")
    plain = await signup(system.lb, "usr")
    env = console_env(
        system,
        shots,
        admin,
        TARGET=target.username,
        PLAIN_USER=plain.username,
        PLAIN_PASSWORD=plain.password,
    )
    await run_script("admin_console.mjs", env, "admin console: ok")

    token = await admin_token(system, admin)
    async with httpx.AsyncClient(base_url=system.lb) as http:
        user = (
            await http.get(f"/auth/v1/admin/users/{target.user_id}", headers=bearer(token))
        ).json()
        assert user["blocked"] and user["blocked_reason"] == "spam (browser test)"
        audit = await http.get(
            "/auth/v1/admin/audit", params={"target_id": target.user_id}, headers=bearer(token)
        )
        block = [e for e in audit.json()["entries"] if e["action"] == "user.block"]
        assert block and block[0]["actor"] == admin.username
        # The API refuses a non-admin whatever the console shows.
        refused = await http.get("/auth/v1/admin/users", headers=bearer(plain.token))
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    for name in ("sign-in", "users", "user", "audit", "refused"):
        assert (shots / f"{name}.png").stat().st_size > 5000


async def _post(http: httpx.AsyncClient, room_id: str, who: User, text: str) -> httpx.Response:
    body = {"client_id": secrets.token_hex(6), "text": text}
    return await http.post(
        f"/rooms/v1/rooms/{room_id}/messages", json=body, headers=bearer(who.token)
    )


@needs_browser
@pytest.mark.timeout(180)
async def test_admin_moderates_a_room_and_works_a_report_in_the_console(
    system: System, tmp_path: Path
) -> None:
    shots = screenshots(tmp_path)
    admin = await signup(system.lb, "adm")
    make_admin(system, admin.username)
    owner, member = await signup(system.lb, "own"), await signup(system.lb, "mem")
    heir = await signup(system.lb, "hei")  # made the plaza's owner in the console
    tag = secrets.token_hex(3)
    spam = f"cheap pills at pills{tag}.example"
    async with httpx.AsyncClient(base_url=system.lb) as http:
        # Three rooms named with the tag (one private); the plaza has a member and posts.
        made = {}
        for name, kind in ((f"plaza {tag}", "public"), (f"help desk {tag}", "public"),
                           (f"team {tag}", "private")):  # fmt: skip
            resp = await http.post("/rooms/v1/rooms", json={"name": name, "kind": kind},
                                   headers=bearer(owner.token))  # fmt: skip
            assert resp.status_code == 201, resp.text
            made[name] = resp.json()["room_id"]
        room_id = made[f"plaza {tag}"]
        for joiner in (member, heir):
            resp = await http.post(f"/rooms/v1/rooms/{room_id}/join", headers=bearer(joiner.token))
            assert resp.status_code == 200, resp.text
        assert (await _post(http, room_id, owner, "welcome to the plaza")).status_code == 201
        resp = await _post(http, room_id, member, spam)
        assert resp.status_code == 201, resp.text
        spam_seq = resp.json()["seq"]
        # A message its author deleted: the console offers no restore for it.
        resp = await _post(http, room_id, member, f"oops, wrong room {tag}")
        assert resp.status_code == 201, resp.text
        deleted_seq = resp.json()["seq"]
        resp = await http.delete(
            f"/rooms/v1/rooms/{room_id}/messages/{deleted_seq}", headers=bearer(member.token)
        )
        assert resp.status_code == 200 and resp.json()["marker"] == "deleted_by_author", resp.text
        assert (await _post(http, room_id, owner, "please keep it friendly")).status_code == 201

    # A real report: alice's message to bob, reported by bob's client (franking).
    alice = await sdk_user(system, tmp_path, "alice")
    bob = await sdk_user(system, tmp_path, "bob")
    try:
        assert alice.user_id and alice.username and bob.user_id and bob.username
        await alice.connect()
        await bob.connect()
        said = f"send me your password or else {tag}"
        await alice.send(bob.username, said)
        got = await bob.next_event(Message)
        assert isinstance(got, Message) and got.text == said
        filed = await bob.report(got.server_id[:8])
        assert filed["state"] == "open"

        note = f"warned the sender ({tag})"
        env = console_env(
            system,
            shots,
            admin,
            TAG=tag,
            ROOM_NAME=f"plaza {tag}",
            ROOM_ID=room_id,
            PRIVATE_ROOM_ID=made[f"team {tag}"],
            DOOMED_ROOM_ID=made[f"help desk {tag}"],
            NOTICE=f"closed for a clean-up ({tag})",
            OWNER_NAME=owner.username,
            OWNER_ID=owner.user_id,
            HEIR_ID=heir.user_id,
            HEIR_NAME=heir.username,
            OWNER_REASON="the owner left the project (browser test)",
            MEMBER_ID=member.user_id,
            MEMBER_NAME=member.username,
            SPAM_SEQ=str(spam_seq),
            SPAM_TEXT=spam,
            HIDE_REASON="spam (browser test)",
            RESTORE_REASON="not spam after all (browser test)",
            DELETED_SEQ=str(deleted_seq),
            REPORT_ID=filed["id"],
            REPORT_TEXT=said,
            SENDER_NAME=alice.username,
            REPORTER_NAME=bob.username,
            REMOVE_REASON="threats (browser test)",
            NOTE=note,
        )
        await run_script("admin_moderation.mjs", env, "admin moderation: ok")

        # Bob's device is told the message is gone, by an admin.
        removed = await bob.next_event(MessageRemoved)
        assert isinstance(removed, MessageRemoved)
        assert (removed.server_id, removed.by) == (got.server_id, "admin")
    finally:
        for c in (alice, bob):
            await c.close()

    token = await admin_token(system, admin)
    async with httpx.AsyncClient(base_url=system.lb, headers=bearer(token)) as http:
        room = (await http.get(f"/rooms/v1/admin/rooms/{room_id}")).json()
        assert (room["state"], room["members"], room["owner"]) == ("closed", 2, heir.user_id)
        # The room takes no post now.
        refused = await _post(http, room_id, owner, "anyone here?")
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "room_closed"
        # The moderator's post is the newest message.
        newest = (
            await http.get(f"/rooms/v1/rooms/{room_id}/messages", params={"limit": "1"})
        ).json()
        assert [(m["sender"], m["text"]) for m in newest["messages"]] == [
            ("moderator", f"closed for a clean-up ({tag})")
        ]
        # The deleted room is gone for its owner, and kept for admins.
        doomed = made[f"help desk {tag}"]
        gone = await http.get(f"/rooms/v1/rooms/{doomed}", headers=bearer(owner.token))
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "room_not_found"
        assert (await http.get(f"/rooms/v1/admin/rooms/{doomed}")).json()["deleted_at"]
        # The heir owns the plaza; its former owner is a moderator; the member is gone.
        members = (await http.get(f"/rooms/v1/admin/rooms/{room_id}/members")).json()
        assert {m["user_id"]: m["role"] for m in members["members"]} == {
            owner.user_id: "moderator",
            heir.user_id: "owner",
        }
        history = (
            await http.get(f"/rooms/v1/admin/rooms/{room_id}/messages/{spam_seq}/revisions")
        ).json()
        assert [(r["rev"], r["text"], r["marker"], r["reason"], r["by"])
                for r in history["revisions"]] == [
            (1, spam, None, None, member.user_id),
            (2, "", "removed_by_moderator", "spam (browser test)", admin.user_id),
            (3, spam, None, "not spam after all (browser test)", admin.user_id),
        ]  # fmt: skip
        # Restored: members read its text again.
        shown = (
            await http.get(
                f"/rooms/v1/rooms/{room_id}/messages",
                params={"before": str(spam_seq + 1), "limit": "1"},
            )
        ).json()["messages"]
        assert [(m["seq"], m["text"], m["marker"]) for m in shown] == [(spam_seq, spam, None)]
        report = (await http.get(f"/delivery/v1/admin/reports/{filed['id']}")).json()
        assert report["state"] == "actioned"
        assert (report["resolution"]["note"], report["resolution"]["by"]) == (note, admin.user_id)

        # Each change is in the audit log once, by this admin (the stale tabs' refused
        # hand-over and dismissal wrote nothing).
        resp = await http.get(
            "/auth/v1/admin/audit", params={"actor_id": admin.user_id, "limit": "100"}
        )
        assert resp.status_code == 200, resp.text
        entries = resp.json()["entries"]
        changes = Counter(
            (e["service"], e["action"], e["target_id"])
            for e in entries
            if not e["action"].endswith((".list", ".view", ".members", ".revisions", ".read"))
        )
        assert changes == Counter({
            ("rooms", "message.remove", f"{room_id}/{spam_seq}"): 1,
            ("rooms", "message.restore", f"{room_id}/{spam_seq}"): 1,
            ("rooms", "room.owner", room_id): 1,
            ("rooms", "room.close", room_id): 1,
            ("rooms", "room.remove_member", room_id): 1,
            ("rooms", "message.post", f"{room_id}/{newest['messages'][0]['seq']}"): 1,
            ("rooms", "room.delete", doomed): 1,
            ("delivery", "message.remove", got.server_id): 1,
            ("delivery", "report.resolve", filed["id"]): 1,
        }), changes  # fmt: skip
        by_action = {e["action"]: e for e in entries if e["service"] != "auth"}
        assert by_action["room.remove_member"]["before"]["user_id"] == member.user_id
        restored = by_action["message.restore"]
        assert restored["details"]["reason"] == "not spam after all (browser test)"
        assert (restored["before"], restored["after"]) == (
            {"text": "", "marker": "removed_by_moderator"},
            {"text": spam, "marker": None},
        )
        made_owner = by_action["room.owner"]
        assert (made_owner["before"], made_owner["after"]) == (
            {"owner": owner.user_id},
            {"owner": heir.user_id},
        )
        assert made_owner["details"]["reason"] == "the owner left the project (browser test)"
        # The reason typed on the room's page went with its actions (close, then removal).
        why = "raid, closed for the night (browser test)"
        assert by_action["room.close"]["details"]["reason"] == why
        assert by_action["room.remove_member"]["details"]["reason"] == why
        assert by_action["report.resolve"]["after"] == {"state": "actioned", "note": note}
        # Reading the report's plaintext is audited too.
        assert any(e["action"] == "report.view" and e["target_id"] == filed["id"] for e in entries)
    for name in ("rooms", "room", "reports", "report"):
        assert (shots / f"{name}.png").stat().st_size > 5000


@needs_browser
async def test_the_audit_log_pages_past_entries_of_one_millisecond(
    system: System, tmp_path: Path
) -> None:
    """Before: "Older" asked for entries before the last one's *millisecond*, so the
    rest of that millisecond (75 entries here, 25 past the first page) never showed."""
    admin = await signup(system.lb, "adm")
    make_admin(system, admin.username)
    action = f"test.same_ms_{secrets.token_hex(3)}"
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        f"mongodb://{system.cfg.host}:{system.cfg.mongo_port}"
    )
    log = AuditLog(client[f"{system.prefix}_{audit.DATABASE}"], "auth")
    at_ms = int(time.time() * 1000) + 10**9  # on top of the log: the first pages
    try:
        for _ in range(75):
            await log.record(
                audit.Entry(audit.Actor(admin.user_id, "admin", admin.username), action),
                now_ms=at_ms,
            )
        env = console_env(
            system,
            tmp_path,
            admin,
            ACTION=action,
            COUNT="75",
        )
        await run_script("admin_audit.mjs", env, "admin audit: ok")
    finally:
        await log.coll.delete_many({"action": action})  # other tests read the top pages
        await client.close()


@needs_browser
async def test_a_user_edit_keeps_another_admins_change_made_meanwhile(
    system: System, tmp_path: Path
) -> None:
    """Before: Save sent username, e-mail and roles as the page loaded them, and the API
    writes every field that differs: an e-mail fix gave back the admin role another admin
    had just revoked, and ticking Admin put back the address the other had just changed."""
    admin, other = await signup(system.lb, "adm"), await signup(system.lb, "adm")
    target = await signup(system.lb, "tgt")
    for who in (admin, other, target):
        make_admin(system, who.username)
    tag = secrets.token_hex(3)
    mine, theirs = f"fixed-{tag}@example.test", f"other-{tag}@example.test"
    env = console_env(
        system,
        tmp_path,
        admin,
        OTHER_TOKEN=await admin_token(system, other),
        TARGET_ID=target.user_id,
        EMAIL_MINE=mine,
        EMAIL_OTHER=theirs,
    )
    await run_script("admin_user_edit.mjs", env, "admin user edit: ok")

    token = await admin_token(system, admin)
    async with httpx.AsyncClient(base_url=system.lb, headers=bearer(token)) as http:
        user = (await http.get(f"/auth/v1/admin/users/{target.user_id}")).json()
        assert (user["email"], user["roles"]) == (theirs, ["user", "admin"])
        # The audit log says what each admin changed: the console's admin only their own.
        resp = await http.get(
            "/auth/v1/admin/audit",
            params={"target_id": target.user_id, "action": "user.update", "limit": "10"},
        )
        assert resp.status_code == 200, resp.text
        changed = [
            (e["actor_id"], e["after"])
            for e in reversed(resp.json()["entries"])
            if e["actor_id"] in (admin.user_id, other.user_id)
        ]
        assert changed == [
            (other.user_id, {"roles": ["user"]}),
            (admin.user_id, {"email": mine}),
            (other.user_id, {"email": theirs}),
            (admin.user_id, {"roles": ["user", "admin"]}),
        ]


@needs_browser
async def test_the_audit_log_shows_what_a_rooms_action_changed_and_who_by_name(
    system: System, tmp_path: Path
) -> None:
    """Before: the rooms service's entries (before/after in their own fields, the actor
    by id) showed no change for room.kind or room.close, only the reason for
    room.remove_member, and the admin's id in the Who column."""
    admin = await signup(system.lb, "adm")
    make_admin(system, admin.username)
    owner, member = await signup(system.lb, "own"), await signup(system.lb, "mem")
    reason = f"audit log test {secrets.token_hex(3)}"
    token = await admin_token(system, admin)
    async with httpx.AsyncClient(base_url=system.lb) as http:
        resp = await http.post(
            "/rooms/v1/rooms",
            json={"name": f"audited {secrets.token_hex(3)}", "kind": "public"},
            headers=bearer(owner.token),
        )
        assert resp.status_code == 201, resp.text
        room_id = resp.json()["room_id"]
        resp = await http.post(f"/rooms/v1/rooms/{room_id}/join", headers=bearer(member.token))
        assert resp.status_code == 200, resp.text
        room = f"/rooms/v1/admin/rooms/{room_id}"
        why = {"reason": reason}
        for resp in (
            await http.put(f"{room}/kind", json={"kind": "private"}, params=why,
                           headers=bearer(token)),
            await http.delete(f"{room}/members/{member.user_id}", params=why,
                              headers=bearer(token)),
            await http.post(f"{room}/close", params=why, headers=bearer(token)),
        ):  # fmt: skip
            assert resp.status_code in (200, 204), resp.text
    env = console_env(
        system,
        tmp_path,
        admin,
        ADMIN_ID=admin.user_id,
        ROOM_ID=room_id,
        MEMBER_ID=member.user_id,
        REASON=reason,
    )
    await run_script("admin_audit_rooms.mjs", env, "admin audit rooms: ok")
