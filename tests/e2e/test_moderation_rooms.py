"""Moderation through HAProxy (docs/moderation.md): an admin censors a public room's
message, a connected member sees the marker live and on the timeline, the revision
history keeps the original, and every admin action is in the one audit log exactly
once; a non-admin gets 403 on every admin route of every service (read from their
OpenAPI documents, so a new route is covered at once)."""

from __future__ import annotations

import secrets
from collections import Counter
from typing import Any

import aiohttp

from tests.e2e.test_block import create_admin
from tests.support.aio import eventually
from tests.support.stack import System
from tests.support.users import signup
from tests.support.wsclient import WsClient

SERVICES = ("auth", "rooms", "delivery")


async def call(http: aiohttp.ClientSession, method: str, url: str, token: str,
               body: Any = None) -> tuple[int, Any]:  # fmt: skip
    async with http.request(
        method, url, json=body, headers={"Authorization": f"Bearer {token}"}
    ) as r:
        return r.status, (await r.json() if r.content_type == "application/json" else None)


async def test_an_admin_censors_a_public_message_and_it_is_audited_once(system: System) -> None:
    lb = system.lb
    owner, member = await signup(lb, "o"), await signup(lb, "m")
    name, password = f"mod{secrets.token_hex(5)}", "admin pass phrase " + secrets.token_hex(4)
    create_admin(system, name, password)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{lb}/auth/v1/login",
                             json={"username": name, "password": password}) as r:  # fmt: skip
            assert r.status == 200, await r.text()
            login = await r.json()
        admin, admin_id = login["access_token"], login["user"]["user_id"]

        status, room = await call(http, "POST", f"{lb}/rooms/v1/rooms", owner.token,
                                  {"name": f"plaza {secrets.token_hex(3)}", "kind": "public"})  # fmt: skip
        assert status == 201, room
        rid = room["room_id"]
        assert (await call(http, "POST", f"{lb}/rooms/v1/rooms/{rid}/join", member.token))[0] == 200
        sock = await WsClient.connect(system.ws_url, member.token)
        try:
            status, msg = await call(http, "POST", f"{lb}/rooms/v1/rooms/{rid}/messages",
                                     owner.token, {"client_id": "c1", "text": "buy pills here"})  # fmt: skip
            assert status == 201, msg
            await sock.expect("room_post", room_id=rid)

            # The admin censors it; the member's socket hears it at once.
            seq = msg["seq"]
            status, out = await call(http, "POST",
                                     f"{lb}/rooms/v1/admin/rooms/{rid}/messages/{seq}/hide",
                                     admin, {"reason": "spam"})  # fmt: skip
            assert (status, out["marker"], out["text"]) == (200, "removed_by_moderator", ""), out
            live = await sock.expect("room_message_changed", room_id=rid)
            assert (live["seq"], live["marker"], live["text"]) == (seq, "removed_by_moderator", "")
        finally:
            await sock.close()

        # ... and on the timeline, paging as a client does.
        status, page = await call(http, "GET", f"{lb}/rooms/v1/rooms/{rid}/messages?limit=1",
                                  member.token)  # fmt: skip
        assert status == 200
        assert [(m["seq"], m["marker"], m["text"]) for m in page["messages"]] == [
            (seq, "removed_by_moderator", "")
        ]
        # The revision history keeps the original.
        status, hist = await call(
            http, "GET", f"{lb}/rooms/v1/admin/rooms/{rid}/messages/{seq}/revisions", admin
        )
        assert status == 200, hist
        assert [(r["rev"], r["text"], r["marker"]) for r in hist["revisions"]] == [
            (1, "buy pills here", None), (2, "", "removed_by_moderator"),
        ]  # fmt: skip
        status, _ = await call(http, "POST", f"{lb}/rooms/v1/admin/rooms/{rid}/close", admin)
        assert status == 200

        # One audit log, every admin action in it once, read through the auth service.
        async def audit() -> list[dict[str, Any]]:
            status, body = await call(
                http, "GET", f"{lb}/auth/v1/admin/audit?actor_id={admin_id}&service=rooms", admin
            )
            assert status == 200, body
            return list(body["entries"])

        entries = await eventually(audit, lambda es: len(es) >= 3, timeout=5)
        assert Counter(e["action"] for e in entries) == Counter(
            {"message.remove": 1, "message.revisions": 1, "room.close": 1}
        )
        hide = next(e for e in entries if e["action"] == "message.remove")
        assert hide["target_id"] == f"{rid}/{seq}" and hide["actor_role"] == "admin"
        assert hide["before"]["text"] == "buy pills here" and hide["request_id"] and hide["ip"]
        status, only = await call(http, "GET",
                                  f"{lb}/auth/v1/admin/audit?action=room.&target_id={rid}",
                                  admin)  # fmt: skip
        assert [e["action"] for e in only["entries"]] == ["room.close"]


async def test_a_non_admin_gets_403_on_every_admin_route(system: System) -> None:
    lb = system.lb
    user = await signup(lb, "n")
    samples = {"room_id": "0" * 24, "user_id": user.user_id, "seq": "1", "sid": "x",
               "client_id": "c", "report_id": "0" * 28, "server_id": "0" * 32}  # fmt: skip
    checked = 0
    async with aiohttp.ClientSession() as http:
        for service in SERVICES:
            async with http.get(f"{lb}/{service}/openapi.json") as r:
                doc = await r.json()
            for path, ops in doc["paths"].items():
                for method, op in ops.items():
                    if op.get("x-required-role") != "admin":
                        continue
                    url = lb + path.format(**samples)
                    status, err = await call(http, method.upper(), url, user.token, {})
                    assert (status, err["error"]["code"]) == (403, "forbidden"), (method, path)
                    checked += 1
    assert checked >= 20  # auth's users, audit and clients; rooms' admin routes
