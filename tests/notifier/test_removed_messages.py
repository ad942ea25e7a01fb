"""A public room's message removed (or edited) after it mentioned a user is not mailed as
it was: the digest reads the messages as the rooms service holds them when it is sent.
The real rooms service (in process) makes the mentions, their notices and the changes."""

from __future__ import annotations

from typing import Any, TypeVar

from services.common.clients import service_db
from services.common.state import MONGO
from services.rooms.store import message_id
from tests.notifier.conftest import Harness, notice
from tests.rooms.conftest import RoomsApi, RoomsFactory, make_rooms
from tests.support.aio import eventually

__all__ = ["make_rooms"]  # the rooms service's fixture, used here

T = TypeVar("T")


async def _value(x: T) -> T:
    return x


async def _post(api: RoomsApi, user: str, room: str, text: str) -> int:
    status, body = await api.post(user, room, text)
    assert status == 201, body
    return int(body["seq"])


async def _change(api: RoomsApi, method: str, user: str, room: str, seq: int, **body: Any) -> str:
    status, out = await api.call(method, f"/v1/rooms/{room}/messages/{seq}", user, body or None)
    assert status == 200, out
    return str(out["marker"])


async def test_a_mention_whose_message_was_removed_is_not_mailed(
    harness: Harness, make_rooms: RoomsFactory
) -> None:
    """Audit finding: the digest listed the excerpt taken when the mention was made, up
    to an interval (hours while retrying) later, so text a moderator had removed was
    e-mailed. Now a removed (or author-deleted) message's mention is left out, an edited
    one shows its new text, and a digest with nothing left is not sent (``removed``)."""
    notifier = harness.notifier
    notifier.interval_s = 60.0  # the digests wait for the changes; made due below
    api = await make_rooms()
    owner, carol, bob, dave = (api.user() for _ in range(4))
    # The auth service's users, as the notifier reads them.
    auth = {
        uid: await harness.user(_id=uid, username=api.username(uid))
        for uid in (owner, carol, bob, dave)
    }
    room = await api.room(owner, name="lobby")
    for uid in (carol, bob, dave):
        assert (await api.join(uid, room))[0] == 200
    at_bob, at_dave = f"@{api.username(bob)}", f"@{api.username(dave)}"
    removed = await _post(api, carol, room, f"{at_bob} the secret plan is on the wiki")
    edited = await _post(api, carol, room, f"{at_bob} you are a rude word")
    await _post(api, carol, room, f"{at_bob} lunch at noon?")
    deleted = await _post(api, carol, room, f"{at_dave} my phone number is 555-0100")

    # The notices came through Kafka and are kept for the users' digests.
    pending = notifier.store.pending
    await eventually(
        lambda: pending.count_documents({"user": {"$in": [bob, dave]}}), lambda n: n == 4
    )
    # Then the room's owner removes one and edits one, and carol deletes hers.
    assert await _change(api, "DELETE", owner, room, removed) == "removed_by_moderator"
    assert (
        await _change(api, "PATCH", owner, room, edited, text=f"{at_bob} [tidied by a moderator]")
        == "edited_by_moderator"
    )
    assert await _change(api, "DELETE", carol, room, deleted) == "deleted_by_author"
    await notifier.store.digests.update_many({"_id": {"$in": [bob, dave]}}, {"$set": {"due": 0}})

    [mail] = await harness.until_mails(auth[bob]["email"], 1)
    body = mail.get_content()
    assert mail["Subject"] == "Parley: 2 new mentions"
    assert body.count("mentioned you in lobby") == 2
    assert f"mentioned you in lobby: {at_bob} [tidied by a moderator]" in body
    assert f"mentioned you in lobby: {at_bob} lunch at noon?" in body
    assert "secret plan" not in body and "rude word" not in body

    # Dave's only mention is gone: no e-mail; his digest and mention are forgotten.
    digests = notifier.store.digests
    await eventually(lambda: _value(harness.count("digests", "removed")), lambda n: n == 1)
    await eventually(lambda: digests.find_one({"_id": dave}), lambda d: d is None)
    assert harness.mails(auth[dave]["email"]) == []
    await eventually(
        lambda: pending.count_documents({"user": {"$in": [bob, dave]}}), lambda n: n == 0
    )
    assert harness.count("digests", "sent") == 1


async def test_a_mention_whose_message_cannot_be_read_is_mailed_without_its_text(
    harness: Harness,
) -> None:
    """What the notifier cannot check is not mailed: a public room's mention whose
    message is not where the rooms service keeps it (``<prefix>rooms.messages``, by
    ``message_id``) is listed without its text."""
    bob, alice = await harness.user(), await harness.user()
    gone = notice(bob["_id"], 1, alice["_id"], excerpt="kept by the notice only")
    await harness.notifier.store.add_many([gone], 0)  # its message never written
    [mail] = await harness.until_mails(bob["email"], 1)
    body = mail.get_content().replace("\r\n", "\n")
    assert f"- @{alice['username']} mentioned you in general\n" in body
    assert "kept by the notice only" not in body
    # Written where the rooms service keeps it, it is listed with its text.
    carol = await harness.user()
    there = notice(carol["_id"], 1, alice["_id"], excerpt="kept by the rooms service")
    rooms = service_db(harness.app[MONGO], harness.settings, "rooms")
    await rooms["messages"].insert_one(
        {"_id": message_id(there.room_id, 1), "room": there.room_id, "seq": 1,
         "text": "kept by the rooms service", "marker": None}
    )  # fmt: skip
    await harness.notifier.store.add_many([there], 0)
    [mail] = await harness.until_mails(carol["email"], 1)
    assert "in general: kept by the rooms service\n" in mail.get_content().replace("\r\n", "\n")


async def test_a_mention_in_a_room_an_admin_deleted_is_not_mailed(harness: Harness) -> None:
    """An audit's finding: a deleted room exists for nobody but admins, yet its mentions
    were mailed with their text. They are left out as removed messages are; a digest
    left with nothing is not sent (``removed``)."""
    bob, alice = await harness.user(), await harness.user()
    kept = notice(bob["_id"], 1, alice["_id"], excerpt="in a room that stays")
    doomed = notice(bob["_id"], 2, alice["_id"], excerpt="words in a room taken down")
    rooms = service_db(harness.app[MONGO], harness.settings, "rooms")
    await rooms["rooms"].insert_one({"_id": doomed.room_id, "name": "general", "deleted_at": 1})
    await harness.produce(kept, doomed)
    [mail] = await harness.until_mails(bob["email"], 1)
    body = mail.get_content()
    assert "in a room that stays" in body and "taken down" not in body
    assert mail["Subject"] == f"Parley: @{alice['username']} mentioned you in general"
