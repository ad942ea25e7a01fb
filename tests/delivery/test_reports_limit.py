"""Reports are limited per reporter and store the plaintext once (the delivery service
in-process on the real embedded MongoDB and Redis; docs/moderation-messages.md, "Reports").

Each report keeps a message's plaintext for the admins, and nothing limited them: one
user filed 300 reports of 30 KB in 2.3 s, all 201, 45 MB stored, each plaintext held
twice (``text`` and a base64url ``plaintext``). Now a reporter files at most
``PARLEY_LIMIT_REPORTS`` (30 an hour), counting only reports that are stored, and the
plaintext is stored once, as its bytes; the admins' API answers as before.

The reports' tags are made with the service's own keys, as its worker makes them for
each copy it stores (tests/messaging/test_moderation.py goes through the gateways).
"""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections.abc import AsyncIterator
from typing import Any

import bson
import pytest
from parley.crypto import franking
from parley_contract import envelopes as e

from services.common.auth import Claims
from services.common.state import REGISTRY
from services.delivery.app import create_app
from services.delivery.models import ReportIn
from services.delivery.moderation import Moderation
from services.delivery.moderation_keys import TaggedFields
from services.delivery.room_log import room_tag_fields
from services.delivery.state import MODERATION
from tests.support.tokens import TokenIssuer
from tests.support.users import uid

LIMIT = 30  # the default PARLEY_LIMIT_REPORTS: 30/3600
REPORT_FIELDS = {
    "id", "state", "server_id", "conversation", "room", "sender", "sender_device", "sent_at",
    "reporter", "reporter_device", "text", "created_at", "resolution",
}  # fmt: skip


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class Reports:
    def __init__(self, client: Any, issuer: TokenIssuer) -> None:
        self.client = client
        self.issuer = issuer
        self.moderation: Moderation = client.server.app[MODERATION]

    async def call(
        self, method: str, path: str, user: str, body: Any = None, admin: bool = False
    ) -> tuple[int, Any, Any]:
        roles = ("user", "admin") if admin else ("user",)
        token = self.issuer.token(user, did=1, roles=roles)
        resp = await self.client.request(
            method, "/delivery/v1" + path, json=body, headers={"Authorization": f"Bearer {token}"}
        )
        return resp.status, await resp.json(), resp.headers

    def body(
        self, sender: str, reporter: str, text: bytes, room: str | None = None
    ) -> dict[str, Any]:
        """The report fields of a message ``sender`` sent ``reporter`` (or a room), its
        tag made as the worker makes it."""
        fk = secrets.token_bytes(32)
        commitment = b64(franking.commit(text, fk))
        server_id, sent_at = secrets.token_hex(16), e.now_ms()
        conversation = f"room:{room}" if room else f"dm:{':'.join(sorted((sender, reporter)))}"
        fields = room_tag_fields(
            commitment=commitment, server_id=server_id, sender=sender, sender_device=1,
            sent_at=sent_at, room=room,
        ) if room else TaggedFields(
            commitment=commitment, server_id=server_id, sender=sender, sender_device=1,
            recipient=reporter, sent_at=sent_at, conversation=conversation,
        )  # fmt: skip
        return {
            "server_id": server_id, "sender": sender, "sender_device": 1, "sent_at": sent_at,
            "conversation": conversation, "commitment": commitment,
            "franking_tag": self.moderation.keys.tag(fields), "franking_key": b64(fk),
            "plaintext": b64(text),
        }  # fmt: skip

    async def stored(self, reporter: str) -> int:
        return await self.moderation.mstore.reports.count_documents({"reporter": reporter})


@pytest.fixture
async def reports(issuer: TokenIssuer, make_client: Any) -> AsyncIterator[Reports]:
    client = await make_client(await create_app(issuer.settings, run_worker=False))
    yield Reports(client, issuer)


def refusals(r: Reports) -> float:
    value = r.client.server.app[REGISTRY].get_sample_value(
        "parley_rate_limit_refusals_total",
        {"service": "delivery", "rule": "report", "code": "rate_limited"},
    )
    return value or 0.0


async def test_a_reporter_files_at_most_the_limit_and_only_stored_reports_count(
    reports: Reports,
) -> None:
    r = reports
    alice, bob, carol = uid(), uid(), uid()
    # Refused reports take no place: a changed plaintext, a made-up tag.
    for _ in range(LIMIT + 5):
        bad = {**r.body(alice, bob, b"said"), "plaintext": b64(b"never said")}
        status, out, _ = await r.call("POST", "/reports", bob, bad)
        assert (status, out["error"]["code"]) == (422, "franking_mismatch")
    bodies = [r.body(alice, bob, f"abuse {i}".encode()) for i in range(LIMIT + 1)]
    for body in bodies[:LIMIT]:
        status, out, _ = await r.call("POST", "/reports", bob, body)
        assert status == 201 and out["duplicate"] is False, out
    # A repeat is the report filed, also with the window full: nothing stored, no place.
    status, again, _ = await r.call("POST", "/reports", bob, bodies[0])
    assert status == 200 and again["duplicate"] is True
    before = refusals(r)
    status, out, headers = await r.call("POST", "/reports", bob, bodies[LIMIT])
    assert status == 429 and out["error"]["code"] == "rate_limited", out
    retry = int(headers["Retry-After"])
    assert 1 <= retry <= 3600 and out["error"]["details"]["retry_after"] == retry
    assert refusals(r) == before + 1
    assert await r.stored(bob) == LIMIT
    # Checks still come first: a bad report is refused for what it is.
    forged = {**bodies[LIMIT], "franking_tag": "1." + b64(secrets.token_bytes(32))}
    status, out, _ = await r.call("POST", "/reports", bob, forged)
    assert (status, out["error"]["code"]) == (422, "invalid_franking_tag")
    # The limit is the reporter's own.
    status, out, _ = await r.call("POST", "/reports", carol, r.body(alice, carol, b"hi"))
    assert status == 201, out


async def test_a_report_refused_by_the_rooms_check_or_filed_twice_at_once_gives_its_place_back(
    reports: Reports, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The place is taken before the rooms service is asked (a full window refuses
    without asking it) and given back when the reporter was no member when the message
    was sent, or when a concurrent request filed the same report first."""
    r = reports
    alice, bob, room = uid(), uid(), secrets.token_hex(12)
    asked: list[str] = []

    async def member_since(room_id: str, token: str) -> int | None:
        asked.append(room_id)
        return None  # not a member

    monkeypatch.setattr(r.moderation.parties, "member_since", member_since)
    for i in range(LIMIT + 5):
        body = r.body(alice, bob, f"room {i}".encode(), room=room)
        status, out, _ = await r.call("POST", "/reports", bob, body)
        assert (status, out["error"]["code"]) == (403, "not_recipient")
    assert len(asked) == LIMIT + 5 and await r.stored(bob) == 0
    twice = r.body(alice, bob, b"once")
    answers = await asyncio.gather(*(r.call("POST", "/reports", bob, twice) for _ in range(2)))
    assert sorted((s, out["duplicate"]) for s, out, _ in answers) == [(200, True), (201, False)]
    for i in range(LIMIT - 1):
        status, out, _ = await r.call("POST", "/reports", bob, r.body(alice, bob, b"%d" % i))
        assert status == 201, (i, out)
    asked.clear()
    status, out, _ = await r.call("POST", "/reports", bob, r.body(alice, bob, b"x", room=room))
    assert (status, out["error"]["code"]) == (429, "rate_limited") and asked == []
    assert await r.stored(bob) == LIMIT


async def test_a_report_cancelled_while_it_is_filed_gives_its_place_back(
    reports: Reports, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the place was given back on ``Exception`` only, so a report cancelled
    while the rooms service was asked (a graceful shutdown cancels the request) kept
    its place: enough of them and the reporter could file none for an hour."""
    r = reports
    alice, bob, room = uid(), uid(), secrets.token_hex(12)

    async def cancelled(room_id: str, token: str) -> int | None:
        raise asyncio.CancelledError

    monkeypatch.setattr(r.moderation.parties, "member_since", cancelled)
    claims = Claims(sub=bob, sid="s", roles=("user",), jti="j", exp=0, did=1)
    for i in range(LIMIT):
        body = ReportIn.model_validate(r.body(alice, bob, b"%d" % i, room=room), strict=False)
        with pytest.raises(asyncio.CancelledError):
            await r.moderation.report(claims, body, "token")
    status, out, _ = await r.call("POST", "/reports", bob, r.body(alice, bob, b"after"))
    assert status == 201, out
    assert await r.stored(bob) == 1


async def test_a_report_stores_its_plaintext_once_and_admins_read_it_as_before(
    reports: Reports,
) -> None:
    r = reports
    alice, bob, admin = uid(), uid(), uid()
    # ~30 KB, not all of it valid UTF-8 (shown with U+FFFD, stored exactly).
    text = "abuse ✓ ".encode() * 3000 + b"\xff\xfe end"
    status, filed, _ = await r.call("POST", "/reports", bob, r.body(alice, bob, text))
    assert status == 201, filed
    doc = await r.moderation.mstore.reports.find_one({"_id": filed["id"]})
    assert doc is not None and doc["plaintext"] == text and "text" not in doc
    assert len(bson.encode(doc)) < len(text) + 1024  # was ~2.3 times the plaintext
    shown = text.decode("utf-8", errors="replace")
    status, one, _ = await r.call("GET", f"/admin/reports/{filed['id']}", admin, admin=True)
    assert status == 200 and set(one) == REPORT_FIELDS and one["text"] == shown
    status, page, _ = await r.call("GET", "/admin/reports?state=open&limit=100", admin, admin=True)
    mine = [rep for rep in page["reports"] if rep["id"] == filed["id"]]
    assert status == 200 and mine == [one]
    # A report filed before (``text`` beside a base64url copy) reads as it did.
    legacy = {**doc, "_id": e.new_server_id(), "key": secrets.token_hex(32),
              "text": "filed before", "plaintext": b64(b"filed before")}  # fmt: skip
    await r.moderation.mstore.reports.insert_one(legacy)
    status, old, _ = await r.call("GET", f"/admin/reports/{legacy['_id']}", admin, admin=True)
    assert status == 200 and set(old) == REPORT_FIELDS and old["text"] == "filed before"
    body = {"state": "dismissed", "note": "ok"}
    resolved = f"/admin/reports/{filed['id']}/resolve"
    status, done, _ = await r.call("POST", resolved, admin, body, admin=True)
    assert status == 200 and done["text"] == shown and done["state"] == "dismissed"
