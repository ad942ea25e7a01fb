"""Every kind of bad input: a clear, stable error code, and nothing stored or announced."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import pytest

from services.common.ratelimit import Limit
from services.rooms.config import RoomsConfig
from tests.rooms.conftest import TEST_CONFIG, EventLog, RoomsApi, RoomsFactory


async def refused(api: RoomsApi, call: Awaitable[tuple[int, Any]], status: int, code: str) -> Any:
    """The call is refused with ``status`` and ``code``, and the database is unchanged."""
    before = await api.snapshot()
    got, body = await call
    assert (got, body["error"]["code"]) == (status, code), body
    assert body["error"]["message"]
    assert await api.snapshot() == before, f"{code}: something was stored"
    return body


BAD_CREATE: list[tuple[Any, int, str, str | None]] = [
    ({"name": "", "kind": "public"}, 422, "validation_failed", "name"),
    ({"name": "x" * 101, "kind": "public"}, 422, "validation_failed", "name"),
    ({"name": "   ", "kind": "public"}, 422, "invalid_text", "name"),
    ({"name": "\u3000\t", "kind": "public"}, 422, "invalid_text", "name"),
    ({"name": "bell\x07", "kind": "public"}, 422, "invalid_text", "name"),
    ({"name": "esc\x1b[2J", "kind": "public"}, 422, "invalid_text", "name"),
    ({"name": "c1\x85", "kind": "public"}, 422, "invalid_text", "name"),
    ({"name": "ok", "kind": "public", "topic": "t" * 501}, 422, "validation_failed", "topic"),
    ({"name": "ok", "kind": "public", "topic": "a\nb"}, 422, "invalid_text", "topic"),
    ({"name": "ok", "kind": "secret"}, 422, "validation_failed", "kind"),
    ({"name": "ok"}, 422, "validation_failed", "kind"),
    ({"name": 7, "kind": "public"}, 422, "validation_failed", "name"),
    ({"name": "ok", "kind": "public", "owner": "me"}, 422, "validation_failed", "owner"),
    ([], 422, "validation_failed", None),
]


@pytest.mark.parametrize(("body", "status", "code", "field"), BAD_CREATE)
async def test_bad_rooms_are_refused(
    api: RoomsApi, body: Any, status: int, code: str, field: str | None
) -> None:
    user = api.user()
    err = await refused(api, api.call("POST", "/v1/rooms", user, body), status, code)
    if field is not None:
        details = err["error"]["details"]
        fields = [d["field"] for d in details] if isinstance(details, list) else [details["field"]]
        assert any(f.startswith(field) for f in fields), details


async def test_not_json_and_bad_parameters(api: RoomsApi) -> None:
    user = api.user()
    room = await api.room(user)
    raw = api.call("POST", "/v1/rooms", user, headers={**api.headers(user),
                   "Content-Type": "application/json"}, data=b"{nope")  # fmt: skip
    await refused(api, raw, 400, "invalid_json")
    for path in (
        "/v1/rooms/not-a-room", f"/v1/rooms/{room.upper()}", f"/v1/rooms/{room}0",
        f"/v1/rooms/{room}/messages?limit=0", f"/v1/rooms/{room}/messages?limit=201",
        f"/v1/rooms/{room}/messages?before=abc", f"/v1/rooms/{room}/messages?before=0",
        f"/v1/rooms/{room}/members?after=-1", f"/v1/rooms/{room}/members?limit=501",
        "/v1/rooms?limit=x", "/v1/notifications?before=1.5",
        "/v1/directory?limit=0", "/v1/directory?q=" + "x" * 101,
    ):  # fmt: skip
        await refused(api, api.call("GET", path, user), 422, "validation_failed")
    await refused(api, api.remove(user, room, "bad id!"), 422, "validation_failed")
    await refused(api, api.call("GET", "/v1/rooms", None), 401, "unauthenticated")


async def test_membership_mistakes(api: RoomsApi, events: EventLog) -> None:
    owner, mod, bob, carol, eve = (api.user() for _ in range(5))
    public = await api.room(owner)
    private = await api.room(owner, "private")
    for u in (mod, bob):
        assert (await api.join(u, public))[0] == 200
    assert (await api.promote(owner, public, mod))[0] == 200
    await api.invite(owner, private, mod)
    await api.accept(mod, private)

    # Joining a private room uninvited: it does not exist for eve.
    await refused(api, api.join(eve, private), 404, "room_not_found")
    # Invitations.
    await refused(api, api.invite(owner, private, owner), 422, "cannot_target_self")
    await refused(api, api.invite(owner, private, "nobody-at-all"), 404, "user_not_found")
    await refused(api, api.invite(owner, public, bob), 409, "already_member")
    await refused(api, api.invite(eve, public, carol), 403, "not_a_member")
    await refused(api, api.accept(eve, public), 404, "invitation_not_found")
    await refused(api, api.decline(eve, public), 404, "invitation_not_found")
    await refused(api, api.accept(eve, private), 404, "room_not_found")
    # Removing and roles.
    await refused(api, api.remove(mod, public, owner), 403, "cannot_remove_owner")
    await refused(api, api.remove(bob, public, mod), 403, "forbidden")
    await refused(api, api.remove(owner, public, carol), 404, "user_not_found")
    await refused(api, api.remove(owner, public, owner), 422, "cannot_target_self")
    await refused(api, api.remove(eve, public, bob), 403, "not_a_member")
    await refused(api, api.promote(mod, public, bob), 403, "forbidden")
    await refused(api, api.promote(owner, public, owner), 422, "cannot_target_self")
    await refused(api, api.promote(owner, public, eve), 404, "user_not_found")
    await refused(api, api.demote(bob, public, mod), 403, "forbidden")
    await refused(api, api.transfer(mod, public, bob), 403, "forbidden")
    await refused(api, api.transfer(owner, public, eve), 404, "user_not_found")
    bad_transfer = api.call("PUT", f"/v1/rooms/{public}/owner", owner, {"user_id": "a b"})
    await refused(api, bad_transfer, 422, "validation_failed")
    # Moderators remove plain members, not each other.
    await api.join(carol, public)
    await api.promote(owner, public, carol)
    await refused(api, api.remove(mod, public, carol), 403, "forbidden")
    # Leaving.
    await refused(api, api.leave(owner, public), 409, "owner_must_transfer")
    await refused(api, api.leave(eve, public), 403, "not_a_member")
    await refused(api, api.leave(eve, private), 404, "room_not_found")
    # Topic and state: owner and moderators only; and only known states.
    await refused(api, api.patch(bob, public, {"state": "closed"}), 403, "forbidden")
    await refused(api, api.patch(owner, public, {"state": "gone"}), 422, "validation_failed")
    await refused(api, api.patch(owner, public, {"topic": "\x00"}), 422, "invalid_text")
    # Renaming: the same rules as a new room's name; owner and moderators only.
    await refused(api, api.patch(bob, public, {"name": "mine now"}), 403, "forbidden")
    await refused(api, api.patch(eve, private, {"name": "peek"}), 404, "room_not_found")
    for bad, status, code in (("", 422, "validation_failed"), ("x" * 101, 422, "validation_failed"),
                              ("   ", 422, "invalid_text"), ("bell\x07", 422, "invalid_text")):  # fmt: skip
        await refused(api, api.patch(owner, public, {"name": bad}), status, code)
    bad_both = api.patch(owner, public, {"name": "fine", "topic": "\x00"})
    await refused(api, bad_both, 422, "invalid_text")  # nothing of it stored

    seen = await events.settle(public)
    assert [e["type"] for e in seen] == [
        "room_created", "member_joined", "member_joined", "role_changed",
        "member_joined", "role_changed",
    ]  # fmt: skip
    assert await api.rooms.store.outbox.size() == 0


async def test_message_mistakes(api: RoomsApi) -> None:
    owner, bob = api.user(), api.user()
    room = await api.room(owner)
    await api.join(bob, room)
    await api.post(bob, room, "first")
    bad = [
        ({"client_id": "c1", "text": ""}, 422, "validation_failed"),
        ({"client_id": "c1", "text": "x" * 4001}, 422, "validation_failed"),
        ({"client_id": "c1", "text": " \n\t "}, 422, "invalid_text"),
        ({"client_id": "c1", "text": "ding\x07"}, 422, "invalid_text"),
        ({"client_id": "has space", "text": "hi"}, 422, "validation_failed"),
        ({"client_id": "", "text": "hi"}, 422, "validation_failed"),
        ({"client_id": "x" * 65, "text": "hi"}, 422, "validation_failed"),
        ({"text": "hi"}, 422, "validation_failed"),
        ({"client_id": "c1", "text": "hi", "mentions": []}, 422, "validation_failed"),
    ]
    for body, status, code in bad:
        call = api.call("POST", f"/v1/rooms/{room}/messages", bob, body)
        await refused(api, call, status, code)
    # Sending to a room you left.
    await api.leave(bob, room)
    await refused(api, api.post(bob, room, "still here?"), 403, "not_a_member")
    # ... or to a closed room.
    await api.patch(owner, room, {"state": "closed"})
    await refused(api, api.post(owner, room, "closed?"), 409, "room_closed")
    # Notifications: only those issued can be marked read.
    await refused(api, api.read(bob, 1), 409, "seq_not_issued")
    await refused(api, api.read(bob, -1), 422, "validation_failed")
    await refused(api, api.read(bob, "1"), 422, "validation_failed")
    await refused(api, api.read(bob, 1.0), 422, "validation_failed")


async def test_text_too_long_once_normalised_is_refused(api: RoomsApi) -> None:
    """Audit finding (2026-12-07): the schema counts characters as sent, and NFC came
    after it: ``"\u0958" * 4000`` (a Devanagari letter that NFC writes as two) was stored
    as a message of 8,000 characters. The limit holds once normalised, for names,
    topics, posts and edits alike; nothing is stored."""
    owner = api.user()
    room = await api.room(owner)
    long = "\u0958"
    for body, field in (
        ({"name": long * 51, "kind": "public"}, "name"),
        ({"name": "ok", "kind": "public", "topic": long * 251}, "topic"),
    ):
        err = await refused(api, api.create(owner, **body), 422, "invalid_text")
        assert err["error"]["details"] == {"field": field, "problem": "too long"}
    err = await refused(api, api.patch(owner, room, {"name": long * 51}), 422, "invalid_text")
    assert err["error"]["details"] == {"field": "name", "problem": "too long"}
    err = await refused(api, api.post(owner, room, long * 4000), 422, "invalid_text")
    assert err["error"]["details"] == {"field": "text", "problem": "too long"}
    status, msg = await api.post(owner, room, long * 2000)
    assert status == 201 and len(msg["text"]) == 4000
    edit = api.call("PATCH", f"/v1/rooms/{room}/messages/{msg['seq']}", owner,
                    {"text": long * 2001})  # fmt: skip
    await refused(api, edit, 422, "invalid_text")


async def test_unknown_mentions_are_text(api: RoomsApi) -> None:
    """A name nobody has is not an error (a sentence may say "@home"): it stays text,
    notifies no one, and the answer's ``mentions`` shows that."""
    owner = api.user()
    room = await api.room(owner)
    status, msg = await api.post(owner, room, "ping @nobody-here and @" + "f" * 32)
    assert status == 201 and msg["mentions"] == []
    assert await api.rooms.store.notifications.count_documents({}) == 0


async def test_limits(make_rooms: RoomsFactory) -> None:
    config = RoomsConfig(
        max_members=2, create_limit=Limit(2, 3600), post_limit=TEST_CONFIG.post_limit
    )
    api = await make_rooms(config)
    owner, bob, carol = api.user(), api.user(), api.user()
    room = await api.room(owner)
    await api.join(bob, room)
    await refused(api, api.join(carol, room), 409, "room_full")
    await api.room(owner)
    body = await refused(api, api.create(owner, "third"), 429, "rate_limited")
    assert body["error"]["details"]["retry_after"] > 0
