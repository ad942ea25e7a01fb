"""Moderation of end-to-end encrypted messages, on the real embedded servers (delivery
and two gateway pods in-process): verifiable reports (franking tags) and tombstones.

docs/moderation-messages.md; docs/crypto.md, "Message franking" and "Tombstones".
"""

from __future__ import annotations

import base64
import secrets
import time
import uuid
from typing import Any
from urllib.parse import urlencode

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from parley.crypto import franking
from parley_contract import envelopes
from parley_contract.envelopes import conversation_id
from parley_contract.frames import tombstone_signed_bytes

from services.delivery.state import MODERATION, WORKER
from services.delivery.store import item_id
from tests.support.aio import eventually
from tests.support.room_world import RoomWorld
from tests.support.users import uid
from tests.support.wsclient import WsClient, send_frame

from .conftest import Messaging
from .test_rooms import room_send


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Api:
    def __init__(self, m: Messaging) -> None:
        self.m = m

    async def call(
        self, method: str, path: str, user: str, body: Any = None, admin: bool = False
    ) -> tuple[int, Any]:
        roles = ("user", "admin") if admin else ("user",)
        token = self.m.issuer.token(user, did=1, roles=roles)
        resp = await self.m.delivery.request(
            method, "/delivery/v1" + path, json=body, headers={"Authorization": f"Bearer {token}"}
        )
        return resp.status, await resp.json() if resp.content_type == "application/json" else None


async def send_franked(
    alice: WsClient, bob_id: str, client_id: str, text: bytes
) -> tuple[bytes, str]:
    """Send a message whose copies carry a real commitment; returns (fk, server id)."""
    fk = secrets.token_bytes(32)
    commit = franking.commit(text, fk)  # where every ciphertext holds it: bytes [2:34]
    body = b64(b"\x01\x01" + commit + text)
    await alice.send(send_frame(client_id, bob_id, body, commitment=b64(commit)))
    accepted = await alice.expect("accepted", id=client_id)
    return fk, str(accepted["server_id"])


def unsend_path(server_id: str, client_id: str, conversation: str) -> str:
    return f"/messages/{server_id}?" + urlencode(
        {"client_id": client_id, "conversation": conversation}
    )


def report_of(msg: dict[str, Any], text: bytes, fk: bytes, **changes: Any) -> dict[str, Any]:
    body = {
        "server_id": msg["server_id"], "sender": msg["from"], "sender_device": msg["from_device"],
        "sent_at": msg["sent_at"], "conversation": msg.get("conversation"),
        "commitment": msg["commitment"], "franking_tag": msg["franking_tag"],
        "franking_key": b64(fk), "plaintext": b64(text),
    }  # fmt: skip
    body.update(changes)
    return body


async def test_a_message_sent_without_its_commitment_can_still_be_reported(
    messaging: Messaging,
) -> None:
    """The server tagged only the commitment sent beside a body, and a sender could
    leave it out (or send another, refused now by the contract): a message shown to
    its recipient could not be reported. The gateway takes the body's own."""
    api = Api(messaging)
    alice_id, bob_id = uid(), uid()
    alice = await messaging.connect(alice_id)
    bob = await messaging.connect(bob_id, pod=1)
    text, fk = b"no commitment beside it", secrets.token_bytes(32)
    commit = franking.commit(text, fk)
    await alice.send(send_frame("bare-1", bob_id, b64(b"\x01\x01" + commit + text)))
    server_id = (await alice.expect("accepted", id="bare-1"))["server_id"]
    msg = await bob.expect("message", server_id=server_id)
    assert msg["commitment"] == b64(commit) and msg["franking_tag"]
    status, filed = await api.call("POST", "/reports", bob_id, report_of(msg, text, fk))
    assert status == 201, filed


async def test_a_report_is_verified_queued_and_resolved_and_bad_ones_store_nothing(
    messaging: Messaging,
) -> None:
    api = Api(messaging)
    alice_id, bob_id, carol_id, admin_id = uid(), uid(), uid(), uid()
    alice = await messaging.connect(alice_id)
    bob = await messaging.connect(bob_id, pod=1)
    text = b"you will regret this, " + secrets.token_hex(4).encode()
    fk, server_id = await send_franked(alice, bob_id, "abuse-1", text)
    msg = await bob.expect("message", server_id=server_id)
    kid, _, mac = str(msg["franking_tag"]).partition(".")
    assert kid == "1" and len(unb64(mac)) == 32

    async def open_count() -> int:
        status, page = await api.call("GET", "/admin/reports?limit=100", admin_id, admin=True)
        assert status == 200, page
        return sum(1 for r in page["reports"] if r["server_id"] == server_id)

    # Refused, with a stable code each, and nothing stored.
    bad = [
        (bob_id, report_of(msg, text + b"!", fk), 422, "franking_mismatch"),
        (bob_id, report_of(msg, text, secrets.token_bytes(32)), 422, "franking_mismatch"),
        (bob_id, report_of(msg, text, fk, sent_at=msg["sent_at"] + 1), 422, "invalid_franking_tag"),
        (bob_id, report_of(msg, text, fk, franking_tag="1." + b64(secrets.token_bytes(32))), 422,
         "invalid_franking_tag"),
        (bob_id, report_of(msg, text, fk, franking_tag="9." + mac), 422, "invalid_franking_tag"),
        (carol_id, report_of(msg, text, fk), 403, "not_recipient"),
        (alice_id, report_of(msg, text, fk), 422, "cannot_target_self"),
    ]  # fmt: skip
    for who, body, status, code in bad:
        got, answer = await api.call("POST", "/reports", who, body)
        assert (got, answer["error"]["code"]) == (status, code), body
    assert await open_count() == 0

    status, filed = await api.call("POST", "/reports", bob_id, report_of(msg, text, fk))
    assert status == 201 and filed["state"] == "open" and filed["duplicate"] is False
    status, again = await api.call("POST", "/reports", bob_id, report_of(msg, text, fk))
    assert status == 200 and again == {**filed, "duplicate": True}
    assert await open_count() == 1

    status, report = await api.call("GET", f"/admin/reports/{filed['id']}", admin_id, admin=True)
    assert status == 200
    assert report["text"] == text.decode() and report["sender"] == alice_id
    assert report["reporter"] == bob_id and report["state"] == "open"
    status, page = await api.call("GET", "/admin/reports?state=open", admin_id, admin=True)
    assert filed["id"] in [r["id"] for r in page["reports"]]

    # Admins only; the queue moves once.
    status, answer = await api.call("GET", "/admin/reports", bob_id)
    assert (status, answer["error"]["code"]) == (403, "forbidden")
    path = f"/admin/reports/{filed['id']}/resolve"
    status, answer = await api.call("POST", path, bob_id, {"state": "dismissed"})
    assert (status, answer["error"]["code"]) == (403, "forbidden")
    status, done = await api.call(
        "POST", path, admin_id, {"state": "actioned", "note": "warned"}, admin=True
    )
    assert status == 200 and done["state"] == "actioned"
    assert done["resolution"]["note"] == "warned" and done["resolution"]["by"] == admin_id
    status, answer = await api.call("POST", path, admin_id, {"state": "dismissed"}, admin=True)
    assert (status, answer["error"]["code"]) == (409, "report_resolved")
    status, page = await api.call("GET", "/admin/reports?state=open", admin_id, admin=True)
    assert filed["id"] not in [r["id"] for r in page["reports"]]
    status, answer = await api.call("GET", "/admin/reports/" + "0" * 28, admin_id, admin=True)
    assert (status, answer["error"]["code"]) == (404, "report_not_found")


async def test_unsend_deletes_the_copies_from_redis_and_mongodb_and_leaves_tombstones(
    messaging: Messaging, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = Api(messaging)
    store = messaging.delivery.server.app[WORKER].store
    # Only this test moves items to MongoDB: a background pass that moved the third
    # while it is unsent (on a loaded machine the test outlasts the 5 s delay) leaves
    # a copy in MongoDB for a moment before deleting it, which this test's reads of
    # MongoDB would see (pages do not: docs/delivery.md, "Races").
    monkeypatch.setattr(
        store, "settings", store.settings.model_copy(update={"hot_persist_after_s": 3600})
    )
    alice_id, bob_id, eve_id = uid(), uid(), uid()
    alice = await messaging.connect(alice_id)
    messaging.issuer.users.add(bob_id)
    ids = []
    for i in range(3):
        _, server_id = await send_franked(alice, bob_id, f"u{i}", f"text {i}".encode())
        await alice.expect("stored", id=f"u{i}")
        ids.append(server_id)
        if i == 1:
            # The first two move to MongoDB; the third stays in the hot inbox (Redis).
            await store.persist_due(now=time.time() + 3600)
    inbox = f"{bob_id}.1"
    cold = [d async for d in store.inbox.find({"user": bob_id})]
    assert {d["server_id"] for d in cold} == set(ids[:2])
    seq_of = {d["server_id"]: int(d["seq"]) for d in cold}
    hot = await store.hot.get(inbox, list(range(1, 10)))
    seq_of.update({d["server_id"]: s for s, d in hot.items()})

    conv = conversation_id(alice_id, bob_id)
    refused = [
        (eve_id, unsend_path(ids[0], "u0", conv), 403, "not_sender"),
        (alice_id, unsend_path("f" * 32, "u0", conv), 403, "not_sender"),
        (alice_id, unsend_path(ids[0], "u1", conv), 403, "not_sender"),
        (alice_id, unsend_path(ids[0], "u0", conversation_id(bob_id, eve_id)), 403,
         "not_recipient"),
        (alice_id, f"/messages/{ids[0]}?conversation={conv}", 422, "validation_failed"),
        (alice_id, f"/messages/{ids[0]}?client_id=u0", 422, "validation_failed"),
        (alice_id, unsend_path(ids[0], "u0", f"dm:{bob_id}:{alice_id}"[::-1]), 422,
         "validation_failed"),
        (alice_id, unsend_path(ids[0], "u 0", conv), 422, "validation_failed"),
        (alice_id, unsend_path(ids[0], "u0", "room:nope"), 422, "validation_failed"),
    ]  # fmt: skip
    for who, path, code, error in refused:
        status, answer = await api.call("DELETE", path, who)
        assert (status, answer["error"]["code"]) == (code, error), path
    # Nothing changed: every copy still waits.
    assert {d["server_id"] async for d in store.inbox.find({"user": bob_id})} == set(ids[:2])
    assert len(await store.hot.get(inbox, list(range(1, 10)))) == 1
    for server_id, client_id in ((ids[0], "u0"), (ids[2], "u2")):
        status, removed = await api.call(
            "DELETE", unsend_path(server_id, client_id, conv), alice_id
        )
        assert status == 200 and removed["by"] == "sender", removed
        assert removed["inboxes"] == 2  # every device of the two: alice.1, bob.1

    async def copies() -> tuple[set[str], set[str], set[str]]:
        in_mongo = {d["server_id"] async for d in store.inbox.find({"user": bob_id})}
        hot = (await store.hot.get(inbox, list(range(1, 20)))).values()
        in_redis = {d["server_id"] for d in hot if d.get("kind") == "message"}
        tombs = {d["server_id"] for d in hot if d.get("kind") == "tombstone"}
        return in_mongo, in_redis, tombs

    # The copies go first, then the tombstones are stored (in the same batch): Bob
    # connects once both are, so that the sync below is what carries them.
    await eventually(copies, lambda c: c == ({ids[1]}, set(), {ids[0], ids[2]}))
    assert await store.inbox.find_one({"_id": item_id(inbox, seq_of[ids[0]])}) is None

    # Bob syncs: the message that stayed, and a signed tombstone for each removed one.
    status, keys = await api.call("GET", "/moderation/keys", bob_id)
    public = {k["kid"]: Ed25519PublicKey.from_public_bytes(unb64(k["public_key"]))
              for k in keys["keys"]}  # fmt: skip
    bob = await messaging.connect(bob_id, pod=1)
    await bob.send({"op": "sync", "id": "s", "after": 0})
    # By sequence number, as a client keeps them: an item stored as Bob connected may come
    # both live and in the page (docs/protocol.md, "Server → client": seq dedup).
    by_seq = {}
    while (frame := await bob.next())["op"] != "synced":
        by_seq[frame["seq"]] = frame
    frames = [by_seq[s] for s in sorted(by_seq)]
    assert [f["server_id"] for f in frames if f["op"] == "message"] == [ids[1]]
    tombs = [f for f in frames if f["op"] == "tombstone"]
    assert sorted(t["server_id"] for t in tombs) == sorted([ids[0], ids[2]])
    for t in tombs:
        assert t["by"] == "sender" and t["from"] == alice_id
        public[t["kid"]].verify(unb64(t["signature"]), tombstone_signed_bytes(
            kid=t["kid"], server_id=t["server_id"], sender=t["from"],
            conversation=t["conversation"], by=t["by"], at=t["at"],
        ))  # fmt: skip
    # The sending device gets the tombstone too (live), as the record of the removal.
    live = await alice.expect("tombstone", server_id=ids[0])
    assert live["by"] == "sender"


async def test_unsends_of_made_up_messages_are_limited(messaging: Messaging) -> None:
    """Nothing records which messages exist, so a user could name made-up ones of a
    conversation they are in, without end: each sent a server-signed tombstone into
    every inbox of the other party. Unsends are limited per user (UNSEND_LIMIT)."""
    from parley_contract import envelopes as envelopes

    from services.delivery.moderation import UNSEND_LIMIT

    api = Api(messaging)
    alice_id, bob_id = uid(), uid()
    await messaging.connect(bob_id)
    conv = conversation_id(alice_id, bob_id)
    for i in range(UNSEND_LIMIT.count):
        made_up = envelopes.message_server_id(alice_id, f"never-{i}")
        status, _ = await api.call("DELETE", unsend_path(made_up, f"never-{i}", conv), alice_id)
        assert status == 200
    made_up = envelopes.message_server_id(alice_id, "one-more")
    status, answer = await api.call("DELETE", unsend_path(made_up, "one-more", conv), alice_id)
    assert (status, answer["error"]["code"]) == (429, "rate_limited")


async def test_an_admin_removes_a_read_message_and_the_reader_is_told_live(
    messaging: Messaging,
) -> None:
    api = Api(messaging)
    alice_id, bob_id, admin_id = uid(), uid(), uid()
    alice = await messaging.connect(alice_id)
    bob = await messaging.connect(bob_id, pod=1)
    _, server_id = await send_franked(alice, bob_id, "a1", b"spam spam")
    msg = await bob.expect("message", server_id=server_id)
    await bob.send({"op": "ack", "seq": msg["seq"]})
    await alice.expect("delivered", id="a1")
    status, answer = await api.call("POST", f"/admin/messages/{server_id}/remove", bob_id, {})
    assert (status, answer["error"]["code"]) == (403, "forbidden")
    path = f"/admin/messages/{server_id}/remove"
    # No report names it: the admin gives its sender and conversation.
    status, answer = await api.call("POST", path, admin_id, {"reason": "spam"}, admin=True)
    assert (status, answer["error"]["code"]) == (404, "message_not_found")
    conv = conversation_id(alice_id, bob_id)
    body = {"reason": "spam", "sender": alice_id, "conversation": conv}
    status, answer = await api.call("POST", path, admin_id, {**body, "conversation": "dm:x"},
                                    admin=True)  # fmt: skip
    assert (status, answer["error"]["code"]) == (422, "validation_failed")
    status, removed = await api.call("POST", path, admin_id, body, admin=True)
    assert status == 200 and removed["by"] == "admin"
    tomb = await bob.expect("tombstone", server_id=server_id)
    assert tomb["by"] == "admin" and tomb["from"] == alice_id
    # Removing again is the same tombstone (stored once per inbox).
    status, again = await api.call("POST", path, admin_id, body, admin=True)
    assert status == 200 and again["at"] == removed["at"]
    # Each request is audited, before anything it does can fail (a failure after the
    # removal was recorded left the admin's retry unaudited, as did a sender's unsend
    # first); the retry says the removal was there already.
    audit = messaging.delivery.server.app[MODERATION].audit.coll
    entries = [d async for d in audit.find({"action": "message.remove", "target_id": server_id})]
    assert [d["after"]["already"] for d in entries] == [False, True]


async def test_a_removed_message_is_not_stored_again_nor_resurrected_by_the_persister(
    messaging: Messaging,
) -> None:
    api = Api(messaging)
    store = messaging.delivery.server.app[WORKER].store
    alice_id, bob_id = uid(), uid()
    alice = await messaging.connect(alice_id)
    messaging.issuer.users.add(bob_id)
    _, server_id = await send_franked(alice, bob_id, "r1", b"oops")
    await alice.expect("stored", id="r1")
    inbox = f"{bob_id}.1"
    (seq, doc), *_ = (await store.hot.get(inbox, list(range(1, 5)))).items()
    path = unsend_path(server_id, "r1", conversation_id(alice_id, bob_id))
    status, _ = await api.call("DELETE", path, alice_id)
    assert status == 200
    # The tombstone's mark (written with the copy's removal, in one script): the copy
    # being gone from Redis alone could also mean the persister moved it, which a
    # busy machine can do before the tombstone arrives.
    await eventually(lambda: store.hot.removed([doc]), lambda got: got != [])
    assert await store.hot.get(inbox, [seq]) == {}
    # The persister read the copy before the tombstone took it out of Redis, and
    # writes it now: it deletes it again (the tombstone marked it first).
    await store.hot.put([("race", doc)], time.time() - 3600)
    await store.persist_due()
    assert await store.inbox.find_one({"_id": item_id(inbox, seq)}) is None
    # A copy that arrives after the removal (a replay) is not stored.
    worker = messaging.delivery.server.app[WORKER]
    kept, _, _ = await worker._moderate([{**doc, "_id": None}])
    assert kept == []


async def test_a_room_message_is_franked_for_the_room_reportable_and_removable(
    world: RoomWorld,
) -> None:
    """A private room's message is stored once (its room's log): its reporting tag is the
    room's, not a member's, and unsending blanks its entry and sends a tombstone to every
    member device's inbox."""
    api = Api(world.m)
    store = world.m.delivery.server.app[WORKER].store
    alice, bob, carol = uid(), uid(), uid()
    room = await world.private_room(alice, [bob, carol])
    a1 = await world.connect(alice)
    b1 = await world.connect(bob, pod=1)
    text, fk = b"room abuse", secrets.token_bytes(32)
    commit = franking.commit(text, fk)
    await a1.send(room_send("g1", room, b64(b"\x01\x03" + commit + text), commitment=b64(commit)))
    server_id = (await a1.expect("accepted", id="g1"))["server_id"]
    msg = await b1.expect("room_message", server_id=server_id)
    assert msg["room"] == room and msg["franking_tag"]
    conv = {"conversation": f"room:{room}"}
    # The tag binds the message as delivered to the room: another sender device, time or
    # room does not verify; any member holding it (and the plaintext) can report.
    for bad in ({"sender_device": 2}, {"sent_at": msg["sent_at"] + 1},
                {"conversation": f"room:{'ab' * 12}"}):  # fmt: skip
        status, answer = await api.call(
            "POST", "/reports", bob, report_of(msg, text, fk, **{**conv, **bad})
        )
        assert (status, answer["error"]["code"]) == (422, "invalid_franking_tag"), bad
    status, filed = await api.call("POST", "/reports", bob, report_of(msg, text, fk, **conv))
    assert status == 201, filed
    status, again = await api.call("POST", "/reports", carol, report_of(msg, text, fk, **conv))
    assert status == 201 and again["id"] != filed["id"]
    status, report = await api.call("GET", f"/admin/reports/{filed['id']}", uid(), admin=True)
    assert report["room"] == room and report["text"] == text.decode()

    # Carol is offline: the log holds the message for her; unsending takes it out.
    status, page = await world.log(room, carol)
    assert [m["server_id"] for m in page["messages"]] == [server_id]
    status, removed = await api.call("DELETE", unsend_path(server_id, "g1", f"room:{room}"), alice)
    assert status == 200 and removed["inboxes"] == 3  # every member device: alice, bob, carol
    tomb = await b1.expect("tombstone", server_id=server_id)
    assert tomb["conversation"] == f"room:{room}"
    status, page = await world.log(room, carol)
    assert page["messages"] == [] and page["next"] == 1
    inbox = f"{carol}.1"

    async def carols() -> list[str]:
        return [d["kind"] for d in (await store.hot.get(inbox, list(range(1, 9)))).values()]

    await eventually(carols, lambda kinds: kinds == ["tombstone"])
    # Redis lost its marks: they come back from MongoDB's record of the removal.
    await store.redis.delete(store.hot.gone_key(server_id))
    assert await store.restore_gone(0) >= 1
    assert await store.hot.gone([server_id]) == {server_id}


async def test_only_a_member_of_the_room_when_it_was_sent_reports_its_message(
    world: RoomWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A room message's tag names no recipient (one tag for every member), so it
    verified for anyone: bob handed a message's report fields to carol and dave, who
    were never in the room, and each filed a report (201), "independent" reports of
    one member through throwaway accounts. Now the reporter must be a member who had
    joined when it was sent: others are ``not_recipient`` (as a stranger to a 1:1
    conversation is), a member who joined after it too, and one who has left since
    (nothing records past memberships); nothing is stored for any of them."""
    api = Api(world.m)
    reports = world.m.delivery.server.app[MODERATION].mstore.reports
    alice, bob, frank, carol, dave, erin = (uid() for _ in range(6))
    room = await world.private_room(alice, [bob, frank])
    a1 = await world.connect(alice)
    b1 = await world.connect(bob, pod=1)
    text, fk = b"a member's message", secrets.token_bytes(32)
    commit = franking.commit(text, fk)
    await a1.send(room_send("m1", room, b64(b"\x01\x03" + commit + text), commitment=b64(commit)))
    server_id = (await a1.expect("accepted", id="m1"))["server_id"]
    msg = await b1.expect("room_message", server_id=server_id)
    fields = report_of(msg, text, fk, conversation=f"room:{room}")
    await world.add(room, alice, erin)  # joined after it was sent
    # ... by milliseconds here: no allowance for the two services' clocks in this test.
    monkeypatch.setattr("services.delivery.moderation.JOIN_SKEW_MS", 0)
    assert (await world.call("POST", f"/rooms/{room}/leave", frank))[0] == 204

    async def stored() -> list[dict[str, Any]]:
        return await reports.find({}).sort("_id", 1).to_list()

    before = await stored()
    for who in (carol, dave, erin, frank):
        status, answer = await api.call("POST", "/reports", who, fields)
        assert (status, answer["error"]["code"]) == (403, "not_recipient"), who
    assert await stored() == before
    status, filed = await api.call("POST", "/reports", bob, fields)
    assert status == 201 and filed["duplicate"] is False, filed
    assert [(r["reporter"], r["server_id"]) for r in await stored()] == [
        *[(r["reporter"], r["server_id"]) for r in before],
        (bob, server_id),
    ]
    # The check comes after the tag's: a made-up tag is still that, from anyone.
    forged = {**fields, "franking_tag": "1." + b64(secrets.token_bytes(32))}
    status, answer = await api.call("POST", "/reports", carol, forged)
    assert (status, answer["error"]["code"]) == (422, "invalid_franking_tag")


async def test_a_message_sent_with_its_tombstone_s_client_id_does_not_stop_the_removal(
    messaging: Messaging,
) -> None:
    """The tombstone of a removal took the dedup record of (inbox, sender, client id
    ``tombstone:<server id>``): a sender who first sent a message with that client id
    made the admin's tombstone a "repeat", never stored nor pushed, and the recipient
    kept the removed message. A notice's record is its own (store.py ``dedup_key``)."""
    api = Api(messaging)
    alice_id, bob_id, admin_id = uid(), uid(), uid()
    alice = await messaging.connect(alice_id)
    bob = await messaging.connect(bob_id, pod=1)
    text = b"abuse " + secrets.token_hex(4).encode()
    fk, server_id = await send_franked(alice, bob_id, "abuse-1", text)
    msg = await bob.expect("message", server_id=server_id)
    await bob.send({"op": "ack", "seq": msg["seq"]})
    # The trap: a harmless message whose client id is the tombstone's.
    await alice.send(send_frame(f"tombstone:{server_id}", bob_id, "aGVsbG8"))
    await alice.expect("stored", id=f"tombstone:{server_id}")
    trap = await bob.expect("message")
    await bob.send({"op": "ack", "seq": trap["seq"]})
    status, filed = await api.call("POST", "/reports", bob_id, report_of(msg, text, fk))
    assert status == 201, filed
    path = f"/admin/messages/{server_id}/remove"
    status, removed = await api.call("POST", path, admin_id, {"reason": "abuse"}, admin=True)
    assert status == 200 and removed["inboxes"] == 2, removed
    tomb = await bob.expect("tombstone", server_id=server_id)
    assert tomb["by"] == "admin" and tomb["from"] == alice_id
    # Removed again: the same tombstone, stored once in Bob's inbox. A message sent
    # after it (the same inbox, so the same partition, in order) shows it was consumed.
    status, _ = await api.call("POST", path, admin_id, {"reason": "abuse"}, admin=True)
    assert status == 200
    await alice.send(send_frame("after", bob_id, "aGVsbG8"))
    await bob.expect("message", server_id=envelopes.message_server_id(alice_id, "after"))
    status, page = await api.call("GET", "/inbox?after=0", bob_id)
    assert status == 200, page
    assert [m["seq"] for m in page["messages"] if m["op"] == "tombstone"] == [tomb["seq"]]


async def test_refused_unsends_do_not_use_up_the_limit(messaging: Messaging) -> None:
    """Unsends were counted before they were checked: a client retrying a wrong client
    id 120 times (or anyone naming conversations not theirs) blocked the sender's real
    unsends for a minute. Only a request that passes the checks counts."""
    from services.delivery.moderation import UNSEND_LIMIT

    api = Api(messaging)
    alice_id, bob_id, eve_id = uid(), uid(), uid()
    alice = await messaging.connect(alice_id)
    await messaging.connect(bob_id, pod=1)
    _, server_id = await send_franked(alice, bob_id, "real-1", b"hello")
    await alice.expect("stored", id="real-1")
    conv = conversation_id(alice_id, bob_id)
    made_up = envelopes.message_server_id(alice_id, "never")
    refusals = [
        (unsend_path(server_id, "wrong", conv), 403, "not_sender"),
        (unsend_path(made_up, "never", conversation_id(bob_id, eve_id)), 403, "not_recipient"),
        (unsend_path(made_up, "never", "dm:x"), 422, "validation_failed"),
    ]
    for i in range(UNSEND_LIMIT.count + 1):
        path, status, code = refusals[i % len(refusals)]
        got, answer = await api.call("DELETE", path, alice_id)
        assert (got, answer["error"]["code"]) == (status, code), path
    status, removed = await api.call("DELETE", unsend_path(server_id, "real-1", conv), alice_id)
    assert status == 200 and removed["by"] == "sender", removed


async def test_a_conversation_whose_parties_are_not_user_ids_is_refused(
    messaging: Messaging,
) -> None:
    """Only the order of ``dm:<a>:<b>`` was checked: ``dm:<me>:~not.a/user?id`` was
    taken, and recorded as the removal's conversation (which a later removal of the
    message, an admin's too, reuses). Both parties must be user ids."""
    api = Api(messaging)
    alice_id = "a" + uid()
    await messaging.connect(alice_id)
    mstore = messaging.delivery.server.app[MODERATION].mstore
    server_id = envelopes.message_server_id(alice_id, "real-2")
    for other in ("~not.a/user?id", "", "b" * 65, "b:c"):
        weird = f"dm:{alice_id}:{other}"
        if other and ":" not in other:
            assert envelopes.conversation_id(alice_id, other) == weird  # sorted: only the ids
        status, answer = await api.call("DELETE", unsend_path(server_id, "real-2", weird), alice_id)
        assert (status, answer["error"]["code"]) == (422, "validation_failed"), other
        assert answer["error"]["details"][0]["field"] == "conversation"
    assert await mstore.tombstone(server_id) is None


async def test_a_removal_cut_short_is_finished_by_the_upkeep(
    messaging: Messaging, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A removal is recorded, then carried out (gone mark, room log, tombstones): a
    request that died in between (Kafka down, the process killed) left it recorded
    and never carried out unless someone asked again. It is noted as under way
    before it is recorded, and the upkeep finishes what was left."""
    from services.delivery.moderation import REMOVAL_GRACE_S

    api = Api(messaging)
    moderation = messaging.delivery.server.app[MODERATION]
    alice_id, bob_id = uid(), uid()
    alice = await messaging.connect(alice_id)
    bob = await messaging.connect(bob_id, pod=1)
    _, server_id = await send_franked(alice, bob_id, "cut-1", b"take it back")
    msg = await bob.expect("message", server_id=server_id)
    await bob.send({"op": "ack", "seq": msg["seq"]})

    class NoKafka:
        async def wait_ready(self, timeout: float) -> None:
            raise ConnectionError("Kafka is down")

    producer = moderation.producer
    monkeypatch.setattr(moderation, "producer", NoKafka())
    conv = conversation_id(alice_id, bob_id)
    status, _ = await api.call("DELETE", unsend_path(server_id, "cut-1", conv), alice_id)
    assert status >= 500
    assert await moderation.mstore.tombstone(server_id) is not None  # recorded, not done
    monkeypatch.setattr(moderation, "producer", producer)
    # A removal noted but never recorded (its request died before): dropped, no tombstone.
    never = envelopes.message_server_id(alice_id, "never-recorded")
    await moderation.mstore.begin_removal(never, [f"{bob_id}.1"], envelopes.now_ms())
    # Not before its request had time to finish on its own.
    assert await moderation.finish_removals() == 0
    later = envelopes.now_ms() + (REMOVAL_GRACE_S + 1) * 1000
    assert await moderation.finish_removals(now_ms=later) == 1
    tomb = await bob.expect("tombstone", server_id=server_id)
    assert tomb["by"] == "sender" and tomb["from"] == alice_id
    await alice.expect("tombstone", server_id=server_id)
    assert await moderation.mstore.pending.count_documents({}) == 0
    assert await moderation.finish_removals(now_ms=later) == 0
    assert await moderation.mstore.tombstone(never) is None


async def test_removal_records_are_deleted_once_no_longer_needed(messaging: Messaging) -> None:
    """Nothing deleted the ``tombstones`` records. They are kept as long as the gone
    mark (a repeat sends the same tombstone), and at least Kafka's retention (a Redis
    loss marks again what was removed within it: ``restore_gone``)."""
    moderation = messaging.delivery.server.app[MODERATION]
    settings = messaging.settings
    keep_s = moderation.tombstone_keep_s()
    assert keep_s >= settings.inbox_expiry_s + 86400
    assert keep_s * 1000 >= settings.kafka_message_retention_ms
    now = envelopes.now_ms()
    old, recent = uuid.uuid4().hex, uuid.uuid4().hex
    for server_id, at in ((old, now - keep_s * 1000 - 1), (recent, now - keep_s * 1000 + 60_000)):
        await moderation.mstore.record_tombstone({
            "_id": server_id, "by": "sender", "actor": "a", "sender": "a",
            "conversation": "dm:a:b", "at": at, "kid": "1", "signature": "s", "reason": "",
            "inboxes": 2,
        })  # fmt: skip
    assert await moderation.purge_tombstones(now_ms=now) >= 1
    assert await moderation.mstore.tombstone(old) is None
    assert await moderation.mstore.tombstone(recent) is not None


async def test_a_public_room_s_messages_cannot_be_removed_here(world: RoomWorld) -> None:
    """A public room's messages never pass through delivery (not end-to-end encrypted:
    the rooms service keeps and moderates them). Anyone who joined one could
    "unsend" made-up ids of it, 120 a minute: each put a signed tombstone in every
    member's inbox (counted toward its cap), a gone mark and a record. Refused
    (``forbidden``), an admin's removal too, nothing stored; a room made public keeps
    its private days' log, whose messages can still be removed."""
    api = Api(world.m)
    moderation = world.m.delivery.server.app[MODERATION]
    store = world.m.delivery.server.app[WORKER].store
    owner, joiner, victim = uid(), uid(), uid()
    for u in (owner, joiner, victim):
        world.m.issuer.users.add(u)
    status, room = await world.call("POST", "/rooms", owner, {"name": "town", "kind": "public"})
    assert status == 201, room
    rid = room["room_id"]
    for u in (joiner, victim):
        status, body = await world.call("POST", f"/rooms/{rid}/join", u)
        assert status == 200, body
    made_up = envelopes.room_server_id(rid, joiner, "never-1")
    path = unsend_path(made_up, "never-1", f"room:{rid}")
    status, answer = await api.call("DELETE", path, joiner)
    assert (status, answer["error"]["code"]) == (403, "forbidden"), answer
    body = {"reason": "spam", "sender": joiner, "conversation": f"room:{rid}"}
    status, answer = await api.call(
        "POST", f"/admin/messages/{made_up}/remove", uid(), body, admin=True
    )
    assert (status, answer["error"]["code"]) == (403, "forbidden"), answer
    assert await moderation.mstore.tombstone(made_up) is None
    assert await store.hot.gone([made_up]) == set()
    assert await store.hot.get(f"{victim}.1", list(range(1, 5))) == {}

    # A private room made public: its private days' messages can still be unsent.
    alice, bob = uid(), uid()
    private = await world.private_room(alice, [bob])
    a1 = await world.connect(alice)
    b1 = await world.connect(bob, pod=1)
    await a1.send(room_send("p1", private, "c2VjcmV0"))
    server_id = (await a1.expect("accepted", id="p1"))["server_id"]
    await b1.expect("room_message", server_id=server_id)
    admin = world.m.issuer.token(uid(), roles=("user", "admin"))
    resp = await world.rooms.request(
        "PUT", f"/rooms/v1/admin/rooms/{private}/kind", json={"kind": "public"},
        headers={"Authorization": f"Bearer {admin}"},
    )  # fmt: skip
    assert resp.status == 200, await resp.text()
    status, removed = await api.call(
        "DELETE", unsend_path(server_id, "p1", f"room:{private}"), alice
    )
    assert status == 200 and removed["by"] == "sender", removed
    await b1.expect("tombstone", server_id=server_id)
    made_up = envelopes.room_server_id(private, alice, "never-2")
    status, answer = await api.call(
        "DELETE", unsend_path(made_up, "never-2", f"room:{private}"), alice
    )
    assert (status, answer["error"]["code"]) == (403, "forbidden"), answer


async def test_an_unsend_past_the_limit_is_refused_before_its_checks(
    messaging: Messaging,
) -> None:
    """Review finding: counted only after its checks, a request past the limit still
    cost them (a private room's members read from the rooms service, page by page)
    before its 429. A full window refuses first now, counting nothing."""
    from services.delivery.moderation import UNSEND_LIMIT

    api = Api(messaging)
    alice_id, bob_id, eve_id = uid(), uid(), uid()
    await messaging.connect(alice_id)
    limiter = messaging.delivery.server.app[MODERATION].limiter
    key = limiter.key("unsend", alice_id)
    await limiter.redis.set(key, UNSEND_LIMIT.count, ex=60)
    made_up = envelopes.message_server_id(alice_id, "never")
    path = unsend_path(made_up, "never", conversation_id(bob_id, eve_id))
    status, answer = await api.call("DELETE", path, alice_id)
    assert (status, answer["error"]["code"]) == (429, "rate_limited")
    assert int(await limiter.redis.get(key)) == UNSEND_LIMIT.count  # nothing counted


async def test_a_message_as_large_as_a_frame_carries_can_be_reported(
    messaging: Messaging, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Audit finding: a report's plaintext was capped at 48 * 1024 base64url characters
    (36 KiB) while a message of up to about 47 KB fits in a frame (64 KiB, the SDK's cap
    ``limit * 3 // 4 - 2000``): such a message was delivered and could never be reported
    (422). A plaintext is refused only when no frame could have carried it (its base64url
    longer than ``PARLEY_WS_MAX_FRAME_BYTES``), with nothing stored and no place taken."""
    from parley.messenger import DEFAULT_MAX_FRAME_BYTES

    api = Api(messaging)
    moderation = messaging.delivery.server.app[MODERATION]
    assert messaging.settings.ws_max_frame_bytes == DEFAULT_MAX_FRAME_BYTES
    alice_id, bob_id = uid(), uid()
    alice = await messaging.connect(alice_id)
    bob = await messaging.connect(bob_id, pod=1)
    largest = DEFAULT_MAX_FRAME_BYTES * 3 // 4 - 2000  # the SDK's MessageTooLarge bound
    for size in (40_000, largest):
        text = (b"abuse " * (size // 6 + 1))[:size]
        fk, server_id = await send_franked(alice, bob_id, f"long-{size}", text)
        msg = await bob.expect("message", server_id=server_id)
        status, filed = await api.call("POST", "/reports", bob_id, report_of(msg, text, fk))
        assert status == 201, (size, filed)
        stored = await moderation.mstore.report(filed["id"])
        assert stored is not None and stored["plaintext"] == text

    # With a smaller frame limit, a plaintext no frame could carry is refused.
    small = messaging.settings.model_copy(update={"ws_max_frame_bytes": 16 * 1024})
    monkeypatch.setattr(moderation, "settings", small)
    text = b"x" * (12 * 1024 + 1)  # 16,386 base64url characters
    fk, server_id = await send_franked(alice, bob_id, "too-long", text)
    msg = await bob.expect("message", server_id=server_id)
    status, answer = await api.call("POST", "/reports", bob_id, report_of(msg, text, fk))
    assert (status, answer["error"]["code"]) == (422, "validation_failed"), answer
    assert answer["error"]["details"][0]["field"] == "plaintext"
    assert await moderation.mstore.report_of(server_id) is None
    status, page = await api.call("GET", "/admin/reports?limit=100", uid(), admin=True)
    assert status == 200 and len(page["reports"]) == 2, page


async def test_an_admin_s_removal_is_audited_once_and_a_refused_one_not_at_all(
    world: RoomWorld,
) -> None:
    """Audit finding: delivery read the room and its members through the rooms
    service's admin routes with the admin's token, and those audit every read: a
    refused removal (a public room's message) left a rooms ``room.view`` entry, and a
    private room's removal wrote ``room.view``, ``room.members`` per page and
    ``message.remove``. Delivery's look-ups are its own, not the admin's reads: one
    entry per removal, none for a refusal."""
    api = Api(world.m)
    audit = world.m.delivery.server.app[MODERATION].audit.coll
    owner, joiner = uid(), uid()
    for u in (owner, joiner):
        world.m.issuer.users.add(u)
    status, room = await world.call("POST", "/rooms", owner, {"name": "town", "kind": "public"})
    assert status == 201, room
    rid = room["room_id"]
    assert (await world.call("POST", f"/rooms/{rid}/join", joiner))[0] == 200
    made_up = envelopes.room_server_id(rid, joiner, "never-1")
    boss = uid()
    body = {"reason": "spam", "sender": joiner, "conversation": f"room:{rid}"}
    status, answer = await api.call(
        "POST", f"/admin/messages/{made_up}/remove", boss, body, admin=True
    )
    assert (status, answer["error"]["code"]) == (403, "forbidden"), answer
    # Nor an unknown room's.
    body = {"reason": "spam", "sender": joiner, "conversation": f"room:{'0' * 24}"}
    status, answer = await api.call(
        "POST", f"/admin/messages/{made_up}/remove", boss, body, admin=True
    )
    assert (status, answer["error"]["code"]) == (404, "room_not_found"), answer
    assert await audit.find({"actor_id": boss}).to_list() == []

    # A private room of five members, removed by an admin who is not one of them.
    alice, bob = uid(), uid()
    private = await world.private_room(alice, [bob])
    others = [uid() for _ in range(3)]
    for u in others:
        await world.add(private, alice, u)
    a1 = await world.connect(alice)
    b1 = await world.connect(bob, pod=1)
    await a1.send(room_send("p1", private, "c2VjcmV0"))
    server_id = (await a1.expect("accepted", id="p1"))["server_id"]
    await b1.expect("room_message", server_id=server_id)
    boss2 = uid()
    body = {"reason": "abuse", "sender": alice, "conversation": f"room:{private}"}
    status, removed = await api.call(
        "POST", f"/admin/messages/{server_id}/remove", boss2, body, admin=True
    )
    assert status == 200, removed
    await b1.expect("tombstone", server_id=server_id)
    entries = await audit.find({"actor_id": boss2}).to_list()
    assert [(e["service"], e["action"], e["target_id"]) for e in entries] == [
        ("delivery", "message.remove", server_id)
    ]


async def test_a_removal_that_fails_before_it_is_recorded_is_not_audited_as_made(
    messaging: Messaging, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Audit finding: an admin's ``message.remove`` entry was written before the first
    write of the removal; one whose writes then failed (500: no record, no note, no
    gone mark) was in the audit log as made, and the admin console showed the report's
    message as removed. The entry is written once the removal is recorded: a removal
    that failed before has none; asked again, it is made and audited once."""
    api = Api(messaging)
    moderation = messaging.delivery.server.app[MODERATION]
    store = messaging.delivery.server.app[WORKER].store
    alice_id, bob_id, admin_id = uid(), uid(), uid()
    alice = await messaging.connect(alice_id)
    bob = await messaging.connect(bob_id, pod=1)
    fk, server_id = await send_franked(alice, bob_id, "x-1", b"abuse abuse")
    msg = await bob.expect("message", server_id=server_id)
    status, _ = await api.call("POST", "/reports", bob_id, report_of(msg, b"abuse abuse", fk))
    assert status == 201

    async def entries() -> list[dict[str, Any]]:
        query = {"target_id": server_id, "action": "message.remove", "service": "delivery"}
        return list(await moderation.audit.coll.find(query).to_list())

    async def down(*_: Any, **__: Any) -> Any:
        raise RuntimeError("MongoDB not answering (simulated)")

    for step in ("begin_removal", "record_tombstone"):
        with monkeypatch.context() as patch:
            patch.setattr(moderation.mstore, step, down)
            status, answer = await api.call(
                "POST", f"/admin/messages/{server_id}/remove", admin_id, {"reason": "abuse"},
                admin=True,
            )  # fmt: skip
        assert status == 500, (step, answer)
        assert await entries() == [], step
        assert await moderation.mstore.tombstone(server_id) is None
        assert await store.hot.gone([server_id]) == set()
    await moderation.mstore.pending.delete_many({"_id": server_id})  # the upkeep's job

    status, removed = await api.call(
        "POST", f"/admin/messages/{server_id}/remove", admin_id, {"reason": "abuse"}, admin=True
    )
    assert status == 200, removed
    await bob.expect("tombstone", server_id=server_id)
    made = await entries()
    assert [(e["actor_id"], e["after"]["already"]) for e in made] == [(admin_id, False)]
    # Asked again: the same removal, audited as such.
    status, _ = await api.call(
        "POST", f"/admin/messages/{server_id}/remove", admin_id, {"reason": "again"}, admin=True
    )
    assert status == 200
    assert [e["after"]["already"] for e in await entries()] == [False, True]


async def test_a_removal_whose_request_died_before_its_entry_is_audited_by_the_upkeep(
    messaging: Messaging, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A review's finding: with the entry written after the record, a request that died
    in between (its audit write failing, the process killed) left a removal the upkeep
    carried out with no entry at all. The record says it is not audited yet, and the
    upkeep that finishes the removal writes the entry (as the admin, once)."""
    api = Api(messaging)
    moderation = messaging.delivery.server.app[MODERATION]
    alice_id, bob_id, admin_id = uid(), uid(), uid()
    alice = await messaging.connect(alice_id)
    bob = await messaging.connect(bob_id, pod=1)
    fk, server_id = await send_franked(alice, bob_id, "x-2", b"more abuse")
    msg = await bob.expect("message", server_id=server_id)
    status, _ = await api.call("POST", "/reports", bob_id, report_of(msg, b"more abuse", fk))
    assert status == 201

    async def entries() -> list[dict[str, Any]]:
        query = {"target_id": server_id, "action": "message.remove", "service": "delivery"}
        return list(await moderation.audit.coll.find(query).to_list())

    async def down(*_: Any, **__: Any) -> Any:
        raise RuntimeError("the audit log not answering (simulated)")

    with monkeypatch.context() as patch:
        patch.setattr(moderation.audit, "record", down)
        status, _ = await api.call(
            "POST", f"/admin/messages/{server_id}/remove", admin_id, {"reason": "abuse"},
            admin=True,
        )  # fmt: skip
    assert status == 500
    assert not (await moderation.mstore.tombstone(server_id) or {"audited": 1})["audited"]
    assert await entries() == []
    # The upkeep takes it up once its grace is over.
    assert await moderation.finish_removals(now_ms=envelopes.now_ms() + 3_600_000) == 1
    await bob.expect("tombstone", server_id=server_id)
    made = await entries()
    assert [(x["actor_id"], x["after"]["finished_by"]) for x in made] == [(admin_id, "upkeep")]
    assert (await moderation.mstore.tombstone(server_id) or {}).get("audited")
