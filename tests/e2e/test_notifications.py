"""Mentions end to end, through HAProxy with real accounts: a public room's post reaches a
connected member's socket as ``room_post``; a mention reaches a connected user as a
``notification`` frame and a list entry; users with no connected device get ONE e-mail
digest (the notifier, over SMTP to the sink) for several mentions within the interval
(``PARLEY_NOTIFIER_DIGEST_INTERVAL_S``, 4 s in the test stack); a user who turned mention
e-mails off (``PATCH /auth/v1/me/preferences``) gets none."""

from __future__ import annotations

import email
import email.policy
import re
import urllib.request
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pymongo import AsyncMongoClient

from tests.support.aio import eventually
from tests.support.stack import System
from tests.support.users import User, signup
from tests.support.wsclient import WsClient


def mails(maildir: Path, to: str) -> list[EmailMessage]:
    out = []
    for path in sorted(maildir.glob(f"*-{to}.eml")):
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        out.append(msg)
    return out


def notifier_count(system: System, result: str) -> float:
    url = system.cfg.url("notifier") + "/notifier/metrics"
    with urllib.request.urlopen(url, timeout=3) as resp:
        text = resp.read().decode()
    m = re.search(rf'^parley_notifier_notices_total{{result="{result}"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


async def call(http: aiohttp.ClientSession, system: System, method: str, path: str,
               user: User, body: Any = None, expect: int = 200) -> Any:  # fmt: skip
    headers = {"Authorization": f"Bearer {user.token}"}
    async with http.request(method, system.lb + path, json=body, headers=headers) as resp:
        data = await resp.json()
        assert resp.status == expect, (method, path, resp.status, data)
        return data


async def _value(x: Any) -> Any:
    return x


@pytest.mark.timeout(120)
async def test_mentions_reach_sockets_lists_and_one_email_digest(system: System) -> None:
    alice, bob, carol, dave = [await signup(system.lb, p) for p in ("al", "bo", "ca", "da")]
    maildir = system.stack.maildir
    async with aiohttp.ClientSession() as http:
        # Dave unsubscribes; the preference is the auth service's.
        prefs = await call(http, system, "GET", "/auth/v1/me/preferences", dave)
        assert prefs["mention_emails"] is True
        off = await call(http, system, "PATCH", "/auth/v1/me/preferences", dave,
                         {"mention_emails": False})  # fmt: skip
        assert off["mention_emails"] is False
        room = await call(http, system, "POST", "/rooms/v1/rooms", alice,
                          {"name": "e2e mentions", "kind": "public"}, expect=201)  # fmt: skip
        rid = room["room_id"]
        for u in (bob, carol, dave):
            await call(http, system, "POST", f"/rooms/v1/rooms/{rid}/join", u)

        ws = await WsClient.connect(system.ws_url, bob.token)
        try:
            online_before = notifier_count(system, "online")
            texts = [
                f"hello @{bob.username} @{carol.username} @{dave.username}",
                f"still there @{carol.username}? cc @{dave.username}",
                f"third time @{carol.username}",
            ]
            posted = []
            for i, text in enumerate(texts):
                posted.append(await call(http, system, "POST", f"/rooms/v1/rooms/{rid}/messages",
                                         alice, {"client_id": f"m{i}", "text": text},
                                         expect=201))  # fmt: skip

            # Bob is connected: every post as room_post, his mention as a notification.
            for msg in posted:
                frame = await ws.expect("room_post", room_id=rid, seq=msg["seq"])
                assert frame["text"] == msg["text"] and frame["sender"] == alice.user_id
            note = await ws.expect("notification", room_id=rid)
            assert note["message_seq"] == posted[0]["seq"] and note["sender"] == alice.user_id
            page = await call(http, system, "GET", "/rooms/v1/notifications", bob)
            assert [n["seq"] for n in page["notifications"]] == [note["seq"]]
            assert page["notifications"][0]["message_seq"] == posted[0]["seq"]

            # Carol has no device connected: one digest lists her three mentions.
            [digest] = await eventually(
                lambda: _value(mails(maildir, f"{carol.username}@example.test")),
                lambda ms: len(ms) >= 1, timeout=30,
            )  # fmt: skip
            assert digest["Subject"] == "Parley: 3 new mentions"
            body = digest.get_content().replace("\r\n", "\n")
            assert body.count(f"- @{alice.username} mentioned you in e2e mentions") == 3
            assert "third time" in body

            # Dave's digest is dropped (unsubscribed) once due, and bob's notice was seen
            # while he was connected: neither gets an e-mail.
            client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(system.cfg.url("mongo"))
            try:
                digests = client[f"{system.prefix}_notifier"]["digests"]
                await eventually(
                    lambda: digests.count_documents({"_id": {"$in": [dave.user_id]}}),
                    lambda n: n == 0, timeout=30,
                )  # fmt: skip
                assert await digests.count_documents({"_id": bob.user_id}) == 0
            finally:
                await client.close()
            await eventually(
                lambda: _value(notifier_count(system, "online")), lambda n: n > online_before
            )
            assert mails(maildir, f"{dave.username}@example.test") == []
            assert mails(maildir, f"{bob.username}@example.test") == []
            # Still one e-mail for carol: the three mentions were one digest.
            assert len(mails(maildir, f"{carol.username}@example.test")) == 1
        finally:
            await ws.close()


@pytest.mark.timeout(120)
async def test_a_private_room_mention_through_the_gateway(system: System) -> None:
    """``room_send`` with ``mentions``: the gateway's one record per message, delivery's
    fan-out and the rooms service's consumer. The connected member gets the message and a
    notification pointing at the same ``server_id``; an offline member gets a digest
    without the message's text; a non-member named in ``mentions`` gets nothing."""
    alice, bob, carol, eve = [await signup(system.lb, p) for p in ("pa", "pb", "pc", "pe")]
    maildir = system.stack.maildir
    async with aiohttp.ClientSession() as http:
        room = await call(http, system, "POST", "/rooms/v1/rooms", alice,
                          {"name": "e2e secret", "kind": "private"}, expect=201)  # fmt: skip
        rid = room["room_id"]
        for u in (bob, carol):
            await call(http, system, "POST", f"/rooms/v1/rooms/{rid}/invitations", alice,
                       {"user": u.user_id}, expect=201)  # fmt: skip
            await call(http, system, "POST", f"/rooms/v1/rooms/{rid}/invitation/accept", u)
        a = await WsClient.connect(system.ws_url, alice.token)
        b = await WsClient.connect(system.ws_url, bob.token)
        try:
            # A non-member named in `mentions` is refused by the gateway: nothing is sent.
            await a.send({"op": "room_send", "id": "p0", "room": rid, "body": "c2VjcmV0",
                          "mentions": [bob.user_id, eve.user_id]})  # fmt: skip
            refused = await a.expect_any(("accepted", "error"), timeout=20)
            assert refused["op"] == "error" and refused["code"] == "validation_failed", refused
            await a.send({"op": "room_send", "id": "p1", "room": rid, "body": "c2VjcmV0",
                          "mentions": [bob.user_id, carol.user_id]})  # fmt: skip
            reply = await a.expect_any(("accepted", "error"), timeout=20)
            assert reply["op"] == "accepted", reply
            msg = await b.expect("room_message", room=rid, timeout=20)
            assert msg["mentions"] == [bob.user_id, carol.user_id]
            note = await b.expect("notification", room_id=rid, timeout=20)
            assert note["server_id"] == msg["server_id"] and note["message_seq"] is None
            assert note["excerpt"] == "mentioned you" and note["room_name"] == "e2e secret"
            page = await call(http, system, "GET", "/rooms/v1/notifications", bob)
            assert page["notifications"][0]["server_id"] == msg["server_id"]

            [digest] = await eventually(
                lambda: _value(mails(maildir, f"{carol.username}@example.test")),
                lambda ms: len(ms) >= 1, timeout=30,
            )  # fmt: skip
            body = digest.get_content().replace("\r\n", "\n")
            assert f"- @{alice.username} mentioned you in e2e secret (private)\n" in body
            assert "c2VjcmV0" not in body
            # Eve is not a member: no notification (carol's digest came after her record).
            page = await call(http, system, "GET", "/rooms/v1/notifications", eve)
            assert page["notifications"] == [] and page["unread"] == 0
        finally:
            await a.close()
            await b.close()
