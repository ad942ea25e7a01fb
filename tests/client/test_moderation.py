"""The SDK's reports, unsend and tombstones against the real system (docs/client.md,
docs/moderation-messages.md): a private room's message is reported and unsent from the
SDK; a tombstone that does not verify hides nothing; what may not be reported or
unsent is refused before anything is sent; the CLI shows a removed message."""

from __future__ import annotations

import secrets

import pytest
from parley import Client
from parley.cli import _print_entry
from parley.cli_support import console
from parley.client import Message, MessageRemoved, RoomMessage
from parley.errors import ParleyError, ServerUnavailable
from parley_contract import frames as f

from .conftest import MakeClient


async def test_a_room_message_is_reported_and_unsent_from_the_sdk(make_client: MakeClient) -> None:
    alice, bob = await make_client(), await make_client()
    assert bob.username
    await alice.connect()
    await bob.connect()
    room = await alice.rooms.create(f"mod {secrets.token_hex(3)}")
    conv = f"room:{room['room_id']}"
    await alice.rooms.invite(room["room_id"], bob.username)
    await bob.rooms.accept(room["room_id"])
    text = f"room abuse {secrets.token_hex(4)}"
    await alice.rooms.send(room["room_id"], text)
    got = await bob.next_event(RoomMessage)
    assert isinstance(got, RoomMessage) and got.text == text and got.server_id

    filed = await bob.report("last-in", conv)
    assert filed["state"] == "open" and filed["duplicate"] is False
    assert (await bob.report(got.server_id[:6], conv))["duplicate"] is True
    with pytest.raises(ParleyError, match="received"):
        await alice.report("last", conv)  # her own
    with pytest.raises(ParleyError, match="sent"):
        await bob.unsend(got.server_id, conv)  # not his

    await alice.unsend("last-out", conv)
    removed = await bob.next_event(MessageRemoved)
    assert isinstance(removed, MessageRemoved) and removed.peer_id == conv
    entry = next(e for e in bob.history(conv) if e.get("server_id") == got.server_id)
    assert (entry["kind"], entry["text"], entry["removed_by"]) == ("removed", "", "sender")
    # Alice's own device gets its tombstone too (from another inbox: in no set order).
    mine = await alice.next_event(MessageRemoved)
    assert isinstance(mine, MessageRemoved) and mine.server_id == got.server_id
    assert [e["kind"] for e in alice.history(conv)] == ["removed"]
    with pytest.raises(ParleyError, match="removed"):
        await bob.report(got.server_id, conv)


async def _one_message(make_client: MakeClient, text: str) -> tuple[Client, Client, Message]:
    """Alice and bob connected, and the message ``text`` alice sent bob, as he got it."""
    alice, bob = await make_client(), await make_client()
    assert bob.username and alice.user_id
    await alice.connect()
    await bob.connect()
    await alice.send(bob.username, text)
    got = await bob.next_event(Message)
    assert isinstance(got, Message)
    return alice, bob, got


async def test_a_tombstone_that_does_not_verify_hides_nothing(make_client: MakeClient) -> None:
    alice, bob, got = await _one_message(make_client, "keep me")
    assert alice.user_id
    conv = f"dm:{min(alice.user_id, str(bob.user_id))}:{max(alice.user_id, str(bob.user_id))}"
    forged = [
        f.Tombstone(seq=got.seq, server_id=got.server_id, from_=alice.user_id,
                    conversation=conv, by="admin", at=1, kid="1",
                    signature="A" * 86),
        f.Tombstone(seq=got.seq, server_id=got.server_id, from_=alice.user_id,
                    conversation=conv, by="admin", at=1, kid="no-such-key",
                    signature="A" * 86),
    ]  # fmt: skip
    for frame in forged:
        await bob.messenger._on_tombstone(frame)
    entry = next(e for e in bob.history(alice.user_id) if e.get("server_id") == got.server_id)
    assert entry["kind"] == "message" and entry["text"] == "keep me"


def test_the_cli_shows_a_removed_message() -> None:
    with console.capture() as out:
        _print_entry({"dir": "in", "kind": "removed", "text": "", "removed_by": "admin",
                      "at": 0, "server_id": "ab" * 16}, "bob", "alice", "me")  # fmt: skip
        _print_entry({"dir": "out", "kind": "removed", "text": "", "removed_by": "sender",
                      "at": 0, "client_id": "c1"}, "bob", "alice")  # fmt: skip
    lines = out.get().splitlines()
    assert "abababab" in lines[0] and "bob: message removed by an admin" in lines[0]
    assert "alice: message removed by its sender" in lines[1]


async def test_a_tombstone_whose_keys_cannot_be_read_now_comes_again(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the moderation keys unavailable for a moment (delivery down) made the
    tombstone count as forged: it was dropped and acknowledged, and the removed
    message stayed on this device for good. Now it is not processed: the socket
    drops and the sync brings the tombstone again."""
    alice, bob, got = await _one_message(make_client, "take this back")
    assert bob.messenger.moderation is not None
    keys = bob.messenger.moderation._public_key
    outages: list[str] = []

    async def down_once(kid: str) -> bytes | None:
        if not outages:
            outages.append(kid)
            raise ServerUnavailable("The server is unavailable: delivery")
        return await keys(kid)

    monkeypatch.setattr(bob.messenger.moderation, "_public_key", down_once)
    await alice.unsend("last-out", str(bob.user_id))
    removed = await bob.next_event(MessageRemoved, timeout=30)
    assert isinstance(removed, MessageRemoved) and removed.server_id == got.server_id
    assert outages
    entry = next(e for e in bob.history(alice.user_id) if e.get("server_id") == got.server_id)
    assert entry["kind"] == "removed"
