"""Moderation of public rooms' messages: edits and removals by authors, room moderators
and admins, each a kept revision; what members see (markers, live frames); who may not
(docs/moderation.md)."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import replace
from typing import Any

import pytest

from services.common.ratelimit import Limit
from services.rooms.store import message_id, revision_id
from tests.rooms.conftest import TEST_CONFIG, EventLog, RoomsApi, RoomsFactory
from tests.support.messaging import Messaging


def admin(api: RoomsApi) -> str:
    """A user whose token carries the admin role."""
    user_id = api.user()
    api.tokens[user_id] = api.issuer.token(user_id, roles=("user", "admin"))
    return user_id


async def audit_of(api: RoomsApi, **query: Any) -> list[dict[str, Any]]:
    return await api.rooms.audit.coll.find(query).sort("_id", 1).to_list()


async def edit(api: RoomsApi, user: str, room: str, seq: int, text: str) -> tuple[int, Any]:
    return await api.call("PATCH", f"/v1/rooms/{room}/messages/{seq}", user, {"text": text})


async def delete(api: RoomsApi, user: str, room: str, seq: int) -> tuple[int, Any]:
    return await api.call("DELETE", f"/v1/rooms/{room}/messages/{seq}", user)


async def test_every_change_is_a_revision_and_members_see_the_marker(api: RoomsApi) -> None:
    owner, mod, alice, bob = (api.user() for _ in range(4))
    boss = admin(api)
    room = await api.room(owner, name="agora")
    for u in (mod, alice, bob):
        assert (await api.join(u, room))[0] == 200
    assert (await api.promote(owner, room, mod))[0] == 200
    _, m1 = await api.post(alice, room, "first draft")
    _, m2 = await api.post(alice, room, "rude words")
    _, m3 = await api.post(bob, room, "mine to delete")
    _, m4 = await api.post(owner, room, "the owner speaks")

    # The author edits: rev 2, "edited"; the same text again changes nothing.
    status, out = await edit(api, alice, room, m1["seq"], "second draft")
    assert status == 200, out
    assert (out["text"], out["rev"], out["marker"]) == ("second draft", 2, "edited")
    assert out["edited_at"] >= m1["sent_at"]
    assert (await edit(api, alice, room, m1["seq"], "second draft"))[1]["rev"] == 2

    # A moderator edits a member's message; then its author may not any more.
    status, out = await edit(api, mod, room, m1["seq"], "moderated draft")
    assert (status, out["marker"], out["rev"]) == (200, "edited_by_moderator", 3)
    status, err = await edit(api, alice, room, m1["seq"], "back to mine")
    assert (status, err["error"]["code"]) == (403, "forbidden")

    # An admin hides one (no membership needed): empty text, the marker.
    status, out = await api.call(
        "POST", f"/v1/admin/rooms/{room}/messages/{m2['seq']}/hide", boss, {"reason": "abuse"}
    )
    assert status == 200, out
    assert (out["text"], out["mentions"], out["marker"]) == ("", [], "removed_by_moderator")
    # The author deletes their own.
    status, out = await delete(api, bob, room, m3["seq"])
    assert (status, out["marker"], out["text"]) == (200, "deleted_by_author", "")

    # History pages show the current revision with its marker.
    _, page = await api.messages(bob, room)
    shown = {m["seq"]: (m["text"], m["marker"]) for m in page["messages"]}
    assert shown == {
        m1["seq"]: ("moderated draft", "edited_by_moderator"),
        m2["seq"]: ("", "removed_by_moderator"),
        m3["seq"]: ("", "deleted_by_author"),
        m4["seq"]: ("the owner speaks", None),
    }

    # Admins read every revision, the original first, with who and why.
    status, hist = await api.call(
        "GET", f"/v1/admin/rooms/{room}/messages/{m1['seq']}/revisions", boss
    )
    assert status == 200, hist
    assert [(r["rev"], r["text"], r["marker"], r["by"], r["role"]) for r in hist["revisions"]] == [
        (1, "first draft", None, alice, "author"),
        (2, "second draft", "edited", alice, "author"),
        (3, "moderated draft", "edited_by_moderator", mod, "moderator"),
    ]
    assert hist["current"]["rev"] == 3 and hist["sender"] == alice
    _, hist = await api.call("GET", f"/v1/admin/rooms/{room}/messages/{m2['seq']}/revisions", boss)
    assert [(r["text"], r["reason"], r["role"]) for r in hist["revisions"]] == [
        ("rude words", None, "author"), ("", "abuse", "admin"),
    ]  # fmt: skip
    # A message that never changed: its original alone.
    _, hist = await api.call("GET", f"/v1/admin/rooms/{room}/messages/{m4['seq']}/revisions", boss)
    assert [r["text"] for r in hist["revisions"]] == ["the owner speaks"]

    # Moderator and admin changes are audited once each; authors' are not.
    entries = await audit_of(api, target_type="message")
    assert [(e["action"], e["actor_id"], e["actor_role"]) for e in entries] == [
        ("message.edit", mod, "moderator"),
        ("message.remove", boss, "admin"),
        ("message.revisions", boss, "admin"),
        ("message.revisions", boss, "admin"),
        ("message.revisions", boss, "admin"),
    ]
    assert entries[0]["before"] == {"text": "second draft", "marker": "edited"}
    assert entries[0]["after"] == {"text": "moderated draft", "marker": "edited_by_moderator"}
    assert entries[1]["service"] == "rooms" and entries[1]["request_id"]


async def test_who_may_not_change_a_message_changes_nothing(api: RoomsApi) -> None:
    owner, mod, mod2, alice, bob, outsider = (api.user() for _ in range(6))
    room = await api.room(owner, name="rules")
    for u in (mod, mod2, alice, bob):
        assert (await api.join(u, room))[0] == 200
    for m in (mod, mod2):
        assert (await api.promote(owner, room, m))[0] == 200
    _, by_alice = await api.post(alice, room, "hello")
    _, by_owner = await api.post(owner, room, "owner's")
    _, by_mod2 = await api.post(mod2, room, "mod2's")
    _, removed = await api.post(alice, room, "bye")
    assert (await delete(api, alice, room, removed["seq"]))[0] == 200
    private = await api.room(owner, kind="private", name="secret")
    before = await api.snapshot()

    cases = [
        (edit(api, bob, room, by_alice["seq"], "hijack"), 403, "forbidden"),  # not author/mod
        (delete(api, bob, room, by_alice["seq"]), 403, "forbidden"),
        (edit(api, mod, room, by_owner["seq"], "x"), 403, "forbidden"),  # the owner's
        (edit(api, mod, room, by_mod2["seq"], "x"), 403, "forbidden"),  # another moderator's
        (edit(api, outsider, room, by_alice["seq"], "x"), 403, "not_a_member"),
        (edit(api, alice, room, 999, "x"), 404, "message_not_found"),
        (edit(api, alice, room, removed["seq"], "again"), 409, "message_removed"),
        (delete(api, owner, room, removed["seq"]), 409, "message_removed"),
        (edit(api, alice, room, by_alice["seq"], "  "), 422, "invalid_text"),
        (edit(api, alice, room, by_alice["seq"], "a\x00b"), 422, "invalid_text"),
        (edit(api, alice, "f" * 24, 1, "x"), 404, "room_not_found"),
        (edit(api, alice, private, 1, "x"), 404, "room_not_found"),
        (edit(api, owner, private, 1, "x"), 403, "forbidden"),
        (api.call("PATCH", f"/v1/rooms/{room}/messages/0", alice, {"text": "x"}), 422,
         "validation_failed"),
        (api.call("PATCH", f"/v1/rooms/{room}/messages/1", alice, {"text": "x", "y": 1}), 422,
         "validation_failed"),
    ]  # fmt: skip
    for call, status, code in cases:
        got, body = await call
        assert (got, body["error"]["code"]) == (status, code), body
    # Closed: the author may not edit, moderators still moderate.
    assert (await api.patch(owner, room, {"state": "closed"}))[0] == 200
    before = await api.snapshot()
    got, body = await edit(api, alice, room, by_alice["seq"], "late")
    assert (got, body["error"]["code"]) == (409, "room_closed")
    assert await api.snapshot() == before
    assert (await delete(api, mod, room, by_alice["seq"]))[1]["marker"] == "removed_by_moderator"
    assert await audit_of(api, action="message.edit") == []


async def test_admins_over_rooms(api: RoomsApi, events: EventLog) -> None:
    owner, alice = api.user(), api.user()
    boss = admin(api)
    pub = await api.room(owner, name="Harbour Town")
    priv = await api.room(owner, kind="private", name="harbour crew")
    assert (await api.join(alice, pub))[0] == 200
    assert (await api.post(alice, pub, "ahoy"))[0] == 201

    # List and search every room, private ones too (metadata only), paged.
    _, page = await api.call("GET", "/v1/admin/rooms?q=HARBOUR&limit=1", boss)
    assert len(page["rooms"]) == 1 and page["next_cursor"]
    _, rest = await api.call("GET", f"/v1/admin/rooms?q=harbour&cursor={page['next_cursor']}",
                             boss)  # fmt: skip
    found = {r["room_id"]: r for r in page["rooms"] + rest["rooms"]}
    assert set(found) == {pub, priv} and rest["next_cursor"] is None
    assert found[priv]["kind"] == "private" and found[pub]["messages"] == 1
    _, only = await api.call("GET", "/v1/admin/rooms?q=harbour&kind=private", boss)
    assert [r["room_id"] for r in only["rooms"]] == [priv]
    _, view = await api.call("GET", f"/v1/admin/rooms/{priv}", boss)
    assert view["owner"] == owner and view["members"] == 1 and view["deleted_at"] is None
    _, members = await api.call("GET", f"/v1/admin/rooms/{pub}/members", boss)
    assert [m["user_id"] for m in members["members"]] == [owner, alice]

    # Close and reopen; twice is a conflict that changes nothing.
    assert (await api.call("POST", f"/v1/admin/rooms/{pub}/close", boss))[1]["state"] == "closed"
    status, err = await api.post(alice, pub, "anyone?")
    assert (status, err["error"]["code"]) == (409, "room_closed")
    snap = await api.snapshot()
    status, err = await api.call("POST", f"/v1/admin/rooms/{pub}/close", boss)
    assert (status, err["error"]["code"]) == (409, "conflict")
    assert await api.snapshot() == snap
    assert (await api.call("POST", f"/v1/admin/rooms/{pub}/reopen", boss))[1]["state"] == "open"

    # Public -> private: out of the directory, no posts over HTTP, the old timeline
    # readable by members only.
    status, view = await api.call("PUT", f"/v1/admin/rooms/{pub}/kind", boss, {"kind": "private"})
    assert (status, view["kind"]) == (200, "private")
    _, directory = await api.directory(alice, "?q=harbour")
    assert directory["rooms"] == []
    status, err = await api.post(alice, pub, "plain text?")
    assert (status, err["error"]["code"]) == (403, "forbidden")
    assert (await api.messages(alice, pub))[1]["messages"][0]["text"] == "ahoy"
    assert (await api.messages(api.user(), pub))[0] == 404
    # ... and back: in the directory again, posts over HTTP again.
    assert (await api.call("PUT", f"/v1/admin/rooms/{pub}/kind", boss, {"kind": "public"}))[
        0
    ] == 200
    assert [r["room_id"] for r in (await api.directory(alice, "?q=harbour"))[1]["rooms"]] == [pub]
    assert (await api.post(alice, pub, "back in public"))[0] == 201

    # Remove a member, the owner too (the room then has none); delete the private room.
    assert (await api.call("DELETE", f"/v1/admin/rooms/{pub}/members/{owner}", boss))[0] == 204
    assert (await api.get(alice, pub))[1]["owner"] is None
    assert (await api.call("DELETE", f"/v1/admin/rooms/{priv}", boss))[0] == 204
    assert (await api.get(owner, priv))[0] == 404
    assert priv not in [r["room_id"] for r in (await api.mine(owner))[1]["rooms"]]
    _, view = await api.call("GET", f"/v1/admin/rooms/{priv}", boss)
    assert view["deleted_at"] is not None
    status, err = await api.call("DELETE", f"/v1/admin/rooms/{priv}", boss)
    assert (status, err["error"]["code"]) == (404, "room_not_found")

    # Every action in the audit log exactly once, by the admin, with before and after.
    entries = await audit_of(api, target_type="room")
    assert [e["action"] for e in entries] == [
        "room.view", "room.members", "room.close", "room.reopen", "room.kind", "room.kind",
        "room.remove_member", "room.delete", "room.view",
    ]  # fmt: skip
    assert all(e["actor_id"] == boss and e["actor_role"] == "admin" for e in entries)
    kinds = [(e["before"], e["after"]) for e in entries if e["action"] == "room.kind"]
    assert kinds == [({"kind": "public"}, {"kind": "private"}),
                     ({"kind": "private"}, {"kind": "public"})]  # fmt: skip
    assert len(await audit_of(api, action="room.list")) == 3

    # The events say it too.
    got = await events.settle(pub)
    assert [(e["type"], e.get("kind")) for e in got if e["type"] in (
        "room_kind_changed", "room_state_changed")] == [
        ("room_state_changed", "public"), ("room_state_changed", "public"),
        ("room_kind_changed", "private"), ("room_kind_changed", "public"),
    ]  # fmt: skip
    assert "room_deleted" in [e["type"] for e in await events.settle(priv)]


async def test_an_admin_posts_as_the_rooms_moderator(api: RoomsApi) -> None:
    owner, alice = api.user(), api.user()
    boss = admin(api)
    room = await api.room(owner, name="news")
    assert (await api.join(alice, room))[0] == 200
    body = {"client_id": "notice-1", "text": f"Be kind, @{api.username(alice)}"}
    status, out = await api.call("POST", f"/v1/admin/rooms/{room}/messages", boss, body)
    assert status == 201, out
    assert out["sender"] == "moderator" and out["mentions"] == [alice]
    again = await api.call("POST", f"/v1/admin/rooms/{room}/messages", boss, body)
    assert again[1]["duplicate"] is True and again[1]["seq"] == out["seq"]
    stored = await api.rooms.store.messages.find_one({"_id": message_id(room, out["seq"])})
    assert stored is not None and stored["posted_by"] == boss
    # The room's owner may not change what an admin posted as moderator.
    status, err = await edit(api, owner, room, out["seq"], "mine now")
    assert (status, err["error"]["code"]) == (403, "forbidden")
    # The owner (or a moderator) may post as the room's moderator too; members may not.
    url = f"/v1/rooms/{room}/moderator/messages"
    status, err = await api.call("POST", url, alice, {"client_id": "x", "text": "I rule"})
    assert (status, err["error"]["code"]) == (403, "forbidden")
    status, mine = await api.call("POST", url, owner, {"client_id": "rules", "text": "Rules."})
    assert (status, mine["sender"]) == (201, "moderator")
    _, hist = await api.call("GET", f"/v1/admin/rooms/{room}/messages/{mine['seq']}/revisions",
                             boss)  # fmt: skip
    assert [(r["by"], r["role"]) for r in hist["revisions"]] == [(owner, "owner")]
    posts = await audit_of(api, action="message.post")
    assert [(e["actor_id"], e["actor_role"]) for e in posts] == [(boss, "admin"), (owner, "owner")]


async def test_members_see_changes_live(api: RoomsApi, messaging: Messaging) -> None:
    owner, alice = api.user(), api.user()
    boss = admin(api)
    room = await api.room(owner, name="live")
    assert (await api.join(alice, room))[0] == 200
    sock = await messaging.connect(alice, pod=0)
    _, msg = await api.post(owner, room, "live text")
    await sock.expect("room_post", room_id=room)
    status, _ = await api.call("PATCH", f"/v1/admin/rooms/{room}/messages/{msg['seq']}", boss,
                               {"text": "cleaned", "reason": "spam link"})  # fmt: skip
    assert status == 200
    frame = await sock.expect("room_message_changed", room_id=room)
    assert frame == {
        "op": "room_message_changed", "room_id": room, "seq": msg["seq"], "rev": 2,
        "marker": "edited_by_moderator", "text": "cleaned", "mentions": [], "at": frame["at"],
    }  # fmt: skip
    assert (await api.call("PUT", f"/v1/admin/rooms/{room}/kind", boss, {"kind": "private"}))[
        0
    ] == 200
    changed = await sock.expect("room_changed", room_id=room)
    assert (changed["change"], changed["kind"], changed["state"]) == ("kind", "private", "open")
    assert (await api.call("DELETE", f"/v1/admin/rooms/{room}/members/{alice}", boss))[0] == 204
    removed = await sock.expect("room_changed", room_id=room)
    assert (removed["change"], removed["user_id"]) == ("member_removed", alice)


async def test_members_see_roles_removals_and_leaves_live(
    api: RoomsApi, messaging: Messaging
) -> None:
    """Role changes, a removal by the owner and a leave are told as an admin's removal is:
    ``room_changed`` to the members' sockets and to the member concerned (the one removed
    or gone learnt it at their next send otherwise)."""
    owner, alice, bob, carol = api.user(), api.user(), api.user(), api.user()
    room = await api.room(owner, name="removals")
    for u in (alice, bob, carol):
        assert (await api.join(u, room))[0] == 200
    gone, stays = await messaging.connect(alice, pod=0), await messaging.connect(bob, pod=1)
    left = await messaging.connect(carol, pod=0)

    async def told(socks: tuple[Any, ...], change: str, user: str, role: str | None) -> None:
        for sock in socks:
            frame = await sock.expect("room_changed", room_id=room)
            assert (frame["change"], frame["user_id"], frame["role"]) == (change, user, role)

    assert (await api.promote(owner, room, bob))[0] == 200
    await told((gone, stays, left), "role", bob, "moderator")
    assert (await api.remove(bob, room, alice))[0] == 204
    await told((gone, stays, left), "member_removed", alice, None)
    assert (await api.leave(carol, room))[0] == 204
    await told((stays, left), "member_left", carol, None)
    assert (await api.transfer(owner, room, bob))[0] == 200
    await told((stays,), "role", bob, "owner")
    # The same role again changes nothing and tells nothing: the next frame is another's.
    assert (await api.promote(bob, room, owner))[1]["role"] == "moderator"
    assert (await api.demote(bob, room, owner))[1]["role"] == "member"
    await told((stays,), "role", owner, "member")


async def test_members_see_a_rename_a_topic_and_a_close_live(
    api: RoomsApi, messaging: Messaging
) -> None:
    owner, alice = api.user(), api.user()
    room = await api.room(owner, name="old name")
    assert (await api.join(alice, room))[0] == 200
    sock = await messaging.connect(alice, pod=0)
    assert (await api.patch(owner, room, {"name": "new name", "topic": "be kind"}))[0] == 200
    changed = await sock.expect("room_changed", room_id=room)
    assert {k: changed[k] for k in ("change", "name", "topic", "user_id", "state")} == {
        "change": "settings", "name": "new name", "topic": "be kind", "user_id": owner,
        "state": "open",
    }  # fmt: skip
    # The same name again changes nothing and tells nothing: the next frame is the topic's.
    assert (await api.patch(owner, room, {"name": "new name"}))[0] == 200
    assert (await api.patch(owner, room, {"topic": ""}))[0] == 200
    cleared = await sock.expect("room_changed", room_id=room)
    assert (cleared["change"], cleared["name"], cleared["topic"]) == ("settings", "new name", "")
    assert (await api.patch(owner, room, {"state": "closed"}))[0] == 200
    closed = await sock.expect("room_changed", room_id=room)
    assert (closed["change"], closed["state"], closed["name"]) == ("state", "closed", None)


async def test_an_admin_s_reason_is_kept_in_the_audit_log_and_a_bad_one_changes_nothing(
    api: RoomsApi,
) -> None:
    owner, alice = api.user(), api.user()
    boss = admin(api)
    room = await api.room(owner, name="reasons")
    assert (await api.join(alice, room))[0] == 200
    base = f"/v1/admin/rooms/{room}"
    # Too long: refused before anything changes, nothing audited.
    long = "x" * 501
    for method, path, body in (
        ("POST", f"{base}/close", None), ("PUT", f"{base}/kind", {"kind": "private"}),
        ("DELETE", f"{base}/members/{alice}", None), ("DELETE", base, None),
    ):  # fmt: skip
        status, err = await api.call(method, f"{path}?reason={long}", boss, body)
        assert (status, err["error"]["code"]) == (422, "validation_failed"), (path, err)
        assert err["error"]["details"] == [{"field": "reason", "problem": "too long"}]
    _, now = await api.get(owner, room)
    assert (now["state"], now["kind"], now["members"]) == ("open", "public", 2)
    assert (
        await audit_of(api, target_id=room, action={"$regex": "^room\\.(close|kind|delete|remove)"})
        == []
    )
    # Given, it is in the entry; not given (or blank), the entry has none.
    why = "spam wave, closing for the night"
    status, _ = await api.call("POST", f"{base}/close?reason={why}", boss)
    assert status == 200
    status, _ = await api.call("POST", f"{base}/reopen?reason=%20", boss)
    assert status == 200
    assert (await api.call("DELETE", f"{base}/members/{alice}?reason=ban%20evasion", boss))[
        0
    ] == 204
    entries = {e["action"]: e for e in await audit_of(api, target_id=room)}
    assert entries["room.close"]["details"]["reason"] == why
    assert "reason" not in entries["room.reopen"]["details"]
    assert entries["room.remove_member"]["details"]["reason"] == "ban evasion"


def admin_routes(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, operation) of every route the document says needs the admin role."""
    return [
        (method.upper(), path, op)
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
        if op.get("x-required-role") == "admin"
    ]


def example_body(doc: dict[str, Any], op: dict[str, Any]) -> Any:
    """A body of the right shape: the role is checked first, but be fair anyway."""
    ref = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
    if ref is None:
        return None
    schema = doc["components"]["schemas"][ref["$ref"].rsplit("/", 1)[1]]
    samples = {"text": "hello", "client_id": "c1", "kind": "private", "reason": "r"}
    return {k: samples.get(k, "x") for k in schema.get("required", [])}


async def test_every_admin_route_refuses_non_admins_and_404s_unknown_rooms(api: RoomsApi) -> None:
    """Table-driven from the OpenAPI document: a new admin route is covered at once."""
    owner, alice = api.user(), api.user()
    boss = admin(api)
    room = await api.room(owner, name="target")
    assert (await api.join(alice, room))[0] == 200
    _, msg = await api.post(alice, room, "text")
    status, doc = await api.call("GET", "/openapi.json", owner)
    assert status == 200
    routes = admin_routes(doc)
    assert len(routes) >= 11 and all(p.startswith("/rooms/v1/admin/") for _, p, _ in routes)
    before = await api.snapshot()
    audit_before = await audit_of(api)
    for method, path, op in routes:
        url = path.removeprefix("/rooms").format(room_id=room, user_id=alice, seq=msg["seq"])
        body = example_body(doc, op)
        for caller in (owner, alice):  # the room's owner is no admin either
            status, err = await api.call(method, url, caller, body)
            assert (status, err["error"]["code"]) == (403, "forbidden"), (method, path)
            assert "403" in op["responses"], (method, path)
        if "{room_id}" in path:
            url = path.removeprefix("/rooms").format(room_id="0" * 24, user_id=alice, seq=1)
            status, err = await api.call(method, url, boss, body)
            assert (status, err["error"]["code"]) == (404, "room_not_found"), (method, path)
    assert await api.snapshot() == before
    assert await audit_of(api) == audit_before


async def test_concurrent_changes_claim_one_revision_each_and_a_dead_writers_claim_is_applied(
    api: RoomsApi,
) -> None:
    owner = api.user()
    room = await api.room(owner, name="race")
    store = api.rooms.store
    # A message stored before revisions existed (no `rev`), as seeded timelines are.
    assert (await api.post(owner, room, "seed"))[0] == 201
    await store.messages.update_one({"_id": message_id(room, 1)}, {"$unset": {"rev": ""}})

    results = await asyncio.gather(*(edit(api, owner, room, 1, f"take {i}") for i in range(6)))
    won = [body for status, body in results if status == 200]
    assert won and all(s in (200, 409) for s, _ in results)
    assert all(b["error"]["code"] == "conflict" for s, b in results if s == 409)
    doc = await store.get_message(room, 1)
    assert doc is not None and doc["rev"] == 1 + len(won)
    revisions = await store.revisions_of(room, 1, 10)
    assert [r["rev"] for r in revisions] == list(range(1, len(won) + 2))
    assert revisions[0]["text"] == "seed" and revisions[-1]["text"] == doc["text"]

    # A writer that died after claiming its revision: the next change applies the claim
    # and answers conflict; the one after goes on from there.
    rev = int(doc["rev"])
    claim = {**revisions[-1], "_id": revision_id(room, 1, rev + 1), "rev": rev + 1,
             "text": "claimed", "at": doc["edited_at"] + 1}  # fmt: skip
    assert await store.insert_revision(claim)
    status, err = await edit(api, owner, room, 1, "next")
    assert (status, err["error"]["code"]) == (409, "conflict")
    assert (await api.messages(owner, room))[1]["messages"][0]["text"] == "claimed"
    status, out = await edit(api, owner, room, 1, "next")
    assert (status, out["rev"]) == (200, rev + 2)


async def test_admins_page_through_thousands_of_rooms(api: RoomsApi) -> None:
    boss = admin(api)
    tag = secrets.token_hex(4)
    seeded = [
        {"_id": f"{tag}{i:016x}", "name": f"{tag} room {i}", "name_key": f"{tag} room {i}",
         "topic": "", "kind": "private" if i % 3 else "public", "state": "open",
         "owner": None, "members": 0, "version": 1, "slots": 0, "seq": 0, "created_at": 1}
        for i in range(3000)
    ]  # fmt: skip
    for i in range(0, len(seeded), 500):
        await api.rooms.store.rooms.insert_many(seeded[i : i + 500])
    seen: list[str] = []
    cursor = ""
    pages = 0
    while True:
        status, page = await api.call(
            "GET", f"/v1/admin/rooms?q={tag}&kind=private&limit=200&cursor={cursor}", boss
        )
        assert status == 200, page
        seen += [r["room_id"] for r in page["rooms"]]
        pages += 1
        if page["next_cursor"] is None:
            break
        cursor = page["next_cursor"]
    assert seen == sorted(d["_id"] for d in seeded if d["kind"] == "private")
    assert pages == 10
    assert len(await audit_of(api, action="room.list")) == pages


async def test_an_admin_names_an_owner_for_a_room_left_without_one(
    api: RoomsApi, messaging: Messaging
) -> None:
    """An admin removed the owner (the room has none), then names a member the owner:
    audited, told live, and the new owner manages the room; naming another then makes
    the first one a moderator. A non-member, the same owner again, or a non-admin
    change nothing."""
    owner, alice, bob = api.user(), api.user(), api.user()
    boss = admin(api)
    room = await api.room(owner, name="orphan")
    for u in (alice, bob):
        assert (await api.join(u, room))[0] == 200
    base = f"/v1/admin/rooms/{room}"
    assert (await api.call("DELETE", f"{base}/members/{owner}", boss))[0] == 204
    sock = await messaging.connect(bob, pod=0)
    refusals = (
        (await api.call("PUT", f"{base}/owner", alice, {"user_id": alice}), 403, "forbidden"),
        (await api.call("PUT", f"{base}/owner", boss, {"user_id": owner}), 404, "user_not_found"),
        (await api.call("PUT", f"{base}/owner", boss, {"user_id": "x y"}), 422,
         "validation_failed"),
    )  # fmt: skip
    for (status, body), want_status, code in refusals:
        assert (status, body["error"]["code"]) == (want_status, code), body
    status, view = await api.call(
        "PUT", f"{base}/owner?reason=owner+left", boss, {"user_id": alice}
    )
    assert (status, view["owner"]) == (200, alice)
    frame = await sock.expect("room_changed", room_id=room)
    assert (frame["change"], frame["user_id"], frame["role"]) == ("role", alice, "owner")
    assert (await api.promote(alice, room, bob))[1]["role"] == "moderator"  # she manages it
    status, body = await api.call("PUT", f"{base}/owner", boss, {"user_id": alice})
    assert (status, body["error"]["code"]) == (409, "conflict")
    assert (await api.call("PUT", f"{base}/owner", boss, {"user_id": bob}))[0] == 200
    _, page = await api.members(bob, room)
    assert {m["user_id"]: m["role"] for m in page["members"]} == {alice: "moderator", bob: "owner"}
    audited = await audit_of(api, action="room.owner")
    assert [(e["before"], e["after"]) for e in audited] == [
        ({"owner": None}, {"owner": alice}), ({"owner": alice}, {"owner": bob}),
    ]  # fmt: skip
    assert audited[0]["details"] == {"reason": "owner left"}


async def restore(api: RoomsApi, user: str, room: str, seq: int) -> tuple[int, Any]:
    return await api.call("POST", f"/v1/rooms/{room}/messages/{seq}/restore", user)


async def test_a_removal_is_undone_by_a_restore_and_stays_in_the_history(
    api: RoomsApi,
) -> None:
    owner, mod, alice, bob = (api.user() for _ in range(4))
    boss = admin(api)
    room = await api.room(owner, name="forum")
    for u in (mod, alice, bob):
        assert (await api.join(u, room))[0] == 200
    assert (await api.promote(owner, room, mod))[0] == 200
    _, m1 = await api.post(alice, room, "hello @" + "x" * 3)
    _, m2 = await api.post(alice, room, "edited then removed")
    _, m3 = await api.post(bob, room, "removed by an admin")
    assert (await edit(api, alice, room, m2["seq"], "edited once"))[0] == 200

    # A moderator removes two of alice's, then restores them: each as it was before
    # the removal (text, mentions, marker), a new revision, the removal kept.
    for m in (m1, m2):
        assert (await delete(api, mod, room, m["seq"]))[1]["marker"] == "removed_by_moderator"
    status, out = await restore(api, mod, room, m1["seq"])
    assert status == 200, out
    assert (out["text"], out["marker"], out["rev"]) == (m1["text"], None, 3)
    assert out["mentions"] == m1["mentions"]
    status, out = await restore(api, owner, room, m2["seq"])
    assert (status, out["text"], out["marker"], out["rev"]) == (200, "edited once", "edited", 4)
    _, hist = await api.call("GET", f"/v1/admin/rooms/{room}/messages/{m2['seq']}/revisions", boss)
    assert [(r["text"], r["marker"], r["role"]) for r in hist["revisions"]] == [
        ("edited then removed", None, "author"),
        ("edited once", "edited", "author"),
        ("", "removed_by_moderator", "moderator"),
        ("edited once", "edited", "owner"),
    ]
    _, page = await api.messages(bob, room)
    shown = {m["seq"]: m["text"] for m in page["messages"]}
    assert shown[m1["seq"]] == m1["text"] and shown[m2["seq"]] == "edited once"

    # An admin's removal is an admin's to undo; the admin does, with a reason.
    hide = f"/v1/admin/rooms/{room}/messages/{m3['seq']}"
    assert (await api.call("POST", hide + "/hide", boss, {"reason": "spam?"}))[0] == 200
    status, err = await restore(api, owner, room, m3["seq"])
    assert (status, err["error"]["code"]) == (403, "forbidden"), err
    status, out = await api.call("POST", hide + "/restore", boss, {"reason": "not spam"})
    assert (status, out["text"], out["marker"]) == (200, "removed by an admin", None), out
    entries = await audit_of(api, action="message.restore")
    assert [(e["actor_id"], e["details"]["reason"]) for e in entries] == [
        (mod, None), (owner, None), (boss, "not spam"),
    ]  # fmt: skip


async def test_bad_restores_are_refused_and_change_nothing(api: RoomsApi) -> None:
    owner, mod, alice, bob = (api.user() for _ in range(4))
    boss = admin(api)
    room = await api.room(owner, name="forum")
    for u in (mod, alice, bob):
        assert (await api.join(u, room))[0] == 200
    assert (await api.promote(owner, room, mod))[0] == 200
    _, kept = await api.post(alice, room, "never removed")
    _, own = await api.post(alice, room, "deleted by its author")
    _, removed = await api.post(alice, room, "removed by the owner")
    _, mods = await api.post(mod, room, "a moderator's, removed by the owner")
    assert (await delete(api, alice, room, own["seq"]))[0] == 200
    assert (await delete(api, owner, room, removed["seq"]))[0] == 200
    assert (await delete(api, owner, room, mods["seq"]))[0] == 200
    before = await api.snapshot()
    for call, status, code in (
        (restore(api, mod, room, kept["seq"]), 409, "conflict"),  # nothing to restore
        (restore(api, owner, room, own["seq"]), 409, "conflict"),  # the author's deletion
        (restore(api, alice, room, own["seq"]), 409, "conflict"),
        (restore(api, alice, room, removed["seq"]), 403, "forbidden"),  # a plain member
        (restore(api, mod, room, mods["seq"]), 403, "forbidden"),  # a moderator's message
        (restore(api, bob, room, 999), 404, "message_not_found"),
        (restore(api, api.user(), room, removed["seq"]), 403, "not_a_member"),
        (
            api.call("POST", f"/v1/admin/rooms/{room}/messages/{own['seq']}/restore", boss, {}),
            409,
            "conflict",
        ),
        (
            api.call("POST", f"/v1/admin/rooms/{room}/messages/{removed['seq']}/restore", bob, {}),
            403,
            "forbidden",
        ),
    ):
        got, body = await call
        assert (got, body["error"]["code"]) == (status, code), body
    assert await api.snapshot() == before


async def test_a_removed_message_leaves_no_excerpt_in_the_mentioned_users_list(
    api: RoomsApi,
) -> None:
    """Audit finding: a notification kept the excerpt of the message it points to, so
    an abusive post mentioning its target, removed by a moderator (or deleted by its
    author), stayed readable in the target's notifications. Shown as the message is
    now: removed or deleted, no excerpt; edited, the new text."""
    owner, mod, alice, bob = api.user(), api.user(), api.user(), api.user("victim")
    room = await api.room(owner, name="forum")
    for u in (mod, alice, bob):
        assert (await api.join(u, room))[0] == 200
    assert (await api.promote(owner, room, mod))[0] == 200
    _, abuse = await api.post(alice, room, "@victim something abusive")
    _, regret = await api.post(alice, room, "@victim something regretted")
    _, typo = await api.post(alice, room, "@victim helo")
    assert (await delete(api, mod, room, abuse["seq"]))[1]["marker"] == "removed_by_moderator"
    assert (await delete(api, alice, room, regret["seq"]))[1]["marker"] == "deleted_by_author"
    assert (await edit(api, alice, room, typo["seq"], "@victim hello"))[0] == 200
    _, notes = await api.notifications(bob)
    shown = {n["message_seq"]: n["excerpt"] for n in notes["notifications"]}
    assert shown == {abuse["seq"]: "", regret["seq"]: "", typo["seq"]: "@victim hello"}


async def test_a_deleted_room_s_mentions_show_no_excerpt_and_admins_still_hide_its_messages(
    api: RoomsApi,
) -> None:
    """Audit finding: an admin deleted a public room (``room_not_found`` to everyone
    from then on), yet the mentioned users' notifications kept showing its messages'
    text, read from the message as it is now (a deleted room's messages are kept), and
    the admin could no longer hide one there (``room_not_found``): the notifier's digest
    mailed it too. A deleted room's mentions show no excerpt, and an admin hides its
    messages (audited once); edits and restores of a deleted room's messages are still
    ``room_not_found``."""
    owner, alice, bob = api.user(), api.user(), api.user("victim")
    boss = admin(api)
    room = await api.room(owner, name="hate")
    other = await api.room(owner, name="fine")
    for u in (alice, bob):
        assert (await api.join(u, room))[0] == 200
        assert (await api.join(u, other))[0] == 200
    _, abuse = await api.post(alice, room, "@victim you are worthless, go away")
    _, kept = await api.post(alice, other, "@victim hello there")
    assert (await api.call("DELETE", f"/v1/admin/rooms/{room}", boss))[0] == 204
    assert (await api.messages(bob, room))[0] == 404
    _, notes = await api.notifications(bob)
    shown = {(n["room_id"], n["message_seq"]): n["excerpt"] for n in notes["notifications"]}
    assert shown == {(room, abuse["seq"]): "", (other, kept["seq"]): "@victim hello there"}

    url = f"/v1/admin/rooms/{room}/messages/{abuse['seq']}"
    audit_before = await audit_of(api, actor_id=boss)
    for method, path, body in (
        ("PATCH", url, {"text": "something else"}),
        ("POST", url + "/restore", {}),
    ):
        status, err = await api.call(method, path, boss, body)
        assert (status, err["error"]["code"]) == (404, "room_not_found"), (method, path)
    assert await audit_of(api, actor_id=boss) == audit_before
    status, hidden = await api.call("POST", url + "/hide", boss, {"reason": "abuse"})
    assert status == 200, hidden
    assert (hidden["marker"], hidden["text"]) == ("removed_by_moderator", "")
    entries = await audit_of(api, actor_id=boss, action="message.remove")
    assert [(e["target_id"], e["before"]["text"]) for e in entries] == [
        (f"{room}/{abuse['seq']}", "@victim you are worthless, go away")
    ]
    status, history = await api.call("GET", url + "/revisions", boss)
    assert status == 200 and history["revisions"][0]["text"].startswith("@victim you"), history
    # Still deleted for everyone else.
    assert (await api.messages(bob, room))[0] == 404


async def test_an_owner_stepped_down_for_a_promotion_that_fails_is_the_owner_again(
    api: RoomsApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review finding (2026-12-07): an admin naming a new owner steps the owner down
    first; when the promotion then fails (the member left meanwhile) the owner is put
    back, but on the membership read before the step-down, whose role_v it had
    changed: refused, silently, and the room was left with no owner."""
    from services.rooms import members

    owner, alice = api.user(), api.user()
    boss = admin(api)
    room = await api.room(owner, name="handover")
    assert (await api.join(alice, room))[0] == 200
    set_role = members.set_role

    async def alice_leaves_first(rooms: Any, room_doc: Any, member: Any, role: str,
                                 *args: Any, **kw: Any) -> Any:  # fmt: skip
        if role == "owner" and member["user"] == alice:
            assert (await api.leave(alice, room))[0] == 204
        return await set_role(rooms, room_doc, member, role, *args, **kw)

    monkeypatch.setattr(members, "set_role", alice_leaves_first)
    status, _ = await api.call("PUT", f"/v1/admin/rooms/{room}/owner", boss, {"user_id": alice})
    assert status >= 400
    status, view = await api.get(owner, room)
    assert (status, view["owner"]) == (200, owner)
    status, page = await api.members(owner, room)
    assert {m["user_id"]: m["role"] for m in page["members"]} == {owner: "owner"}


async def test_changes_are_limited_per_user_and_edits_per_message(
    make_rooms: RoomsFactory,
) -> None:
    """Audit finding (2026-12-07): nothing limited edits: 1,500 edits of one message in 14
    s, each a revision kept for good and a push to every connected member, and an admin's
    history of it 6 MB. Changes count against ``edit_limit`` (per user, all rooms);
    past ``max_edits`` revisions a message's edits are refused (``forbidden``) and
    change nothing, while removing it stays possible."""
    config = replace(TEST_CONFIG, edit_limit=Limit(7, 60), max_edits=4)
    api = await make_rooms(config)
    owner, bob = api.user(), api.user()
    room = await api.room(owner)
    await api.join(bob, room)
    _, msg = await api.post(bob, room, "v1")
    seq = msg["seq"]
    for i in (2, 3, 4):
        status, body = await edit(api, bob, room, seq, f"v{i}")
        assert status == 200 and body["text"] == f"v{i}"
    status, body = await edit(api, bob, room, seq, "v5")
    assert (status, body["error"]["code"]) == (403, "forbidden")
    status, body = await edit(api, bob, room, seq, "v4")  # a retry of the last: no change
    assert (status, body["text"]) == (200, "v4")
    stored = await api.rooms.store.get_message(room, seq)
    assert stored is not None and (stored["text"], stored["rev"]) == ("v4", 4)
    assert (await delete(api, bob, room, seq))[0] == 200  # removal still possible
    # bob has made 6 changes of his 7: one more, then refused, counting nothing.
    _, other = await api.post(bob, room, "w1")
    assert (await edit(api, bob, room, other["seq"], "w2"))[0] == 200
    status, body = await edit(api, bob, room, other["seq"], "w3")
    assert (status, body["error"]["code"]) == (429, "rate_limited")
    stored = await api.rooms.store.get_message(room, other["seq"])
    assert stored is not None and stored["text"] == "w2"
    # Another user's changes are counted apart; removing and restoring a message (as the
    # room's owner) stops at the cap too: a cycle of them bypassed a cap on edits.
    _, third = await api.post(bob, room, "x1")
    at = f"/v1/rooms/{room}/messages/{third['seq']}"
    assert (await api.call("DELETE", at, owner))[0] == 200  # rev 2
    assert (await api.call("POST", at + "/restore", owner))[0] == 200  # rev 3
    assert (await api.call("DELETE", at, owner))[0] == 200  # rev 4: a removal is made
    status, body = await api.call("POST", at + "/restore", owner)
    assert (status, body["error"]["code"]) == (403, "forbidden")
    stored = await api.rooms.store.get_message(room, third["seq"])
    assert stored is not None and int(stored["rev"]) == config.max_edits
    _, mine = await api.post(owner, room, "o1")
    assert (await edit(api, owner, room, mine["seq"], "o2"))[0] == 200
