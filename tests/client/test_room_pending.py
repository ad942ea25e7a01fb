"""A private room's messages that wait for their sender key (parley/rooms.py,
``MAX_PENDING``; docs/client.md, "Rooms"): past the cap nothing is dropped: the
messages not kept are read again from the room's log when a sender key comes.

The room's log is a stand-in here (``GET /delivery/v1/rooms/{id}/log`` as delivery
pages it: after a number, oldest first, ``next`` and ``more``); the keys and messages
are real sender-key ciphertexts. The same through the real system is in
tests/e2e/test_rooms_client.py."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from parley import ApiError, Client
from parley.crypto import GroupSession
from parley.crypto.encoding import b64encode
from parley.rooms import MAX_PENDING, room_conversation
from parley_contract import frames as f

from tests.client.conftest import CHEAP_KDF

ROOM = "d" * 24
ME = "b" * 32


class _RoomLog:
    """One private room's log, as delivery pages it."""

    def __init__(self) -> None:
        self.frames: list[f.RoomMessage] = []
        self.reads: list[int] = []

    def add(self, sender: str, device: int, session: GroupSession, text: str) -> f.RoomMessage:
        seq = len(self.frames) + 1
        frame = f.RoomMessage(
            room=ROOM, seq=seq, server_id=f"{seq:024x}", from_=sender, from_device=device,
            body=b64encode(session.encrypt(text.encode())), sent_at=1_700_000_000_000 + seq,
        )  # fmt: skip
        self.frames.append(frame)
        return frame

    async def room_log(
        self, room_id: str, after: int, since: int = 0, limit: int = 200
    ) -> dict[str, Any]:
        assert room_id == ROOM
        self.reads.append(after)
        page = [m for m in self.frames if m.seq > after][:limit]
        return {
            "room": room_id,
            "messages": [msgspec.to_builtins(m) for m in page],
            "next": page[-1].seq if page else after,
            "more": bool(page) and page[-1].seq < self.frames[-1].seq,
        }


@contextlib.asynccontextmanager
async def room_member(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Client]:
    """A member's client on ``data_dir``, signed in as far as a room's receiving side
    needs (opened again on the same directory: the same store)."""
    async with Client(
        "http://127.0.0.1:9", data_dir=data_dir, passphrase="test passphrase", kdf=CHEAP_KDF
    ) as client:
        client.account.user_id = ME
        async with client.store.transaction() as tx:
            tx.put("device_id", 1)

        async def no_token() -> None:
            return None

        async def name_of(user_id: str) -> str:
            return user_id[:5]

        monkeypatch.setattr(client.rooms, "_token", no_token)
        monkeypatch.setattr(client.messenger, "name_of", name_of)
        yield client


@pytest.fixture
async def bob(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Client]:
    async with room_member(tmp_path, monkeypatch) as client:
        yield client


def _use_log(client: Client, log: _RoomLog, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client.rooms.api, "room_log", log.room_log)


async def _give_key(client: Client, sender: str, device: int, dist: bytes) -> None:
    """``sender``'s sender key for the room arrives (as a pairwise control payload is
    handled: inside the transaction that reads it), then whatever read it started."""
    async with client.store.transaction() as tx:
        client.rooms.on_control(
            tx, sender, device, {"t": "skd", "room": ROOM, "d": b64encode(dist)}
        )
    await asyncio.sleep(0)
    while (running := client.rooms._reading.get(ROOM)) is not None and not running.done():
        await running


def _texts(client: Client) -> list[str]:
    return [str(e["text"]) for e in client.history(room_conversation(ROOM))]


async def test_past_the_cap_no_message_waiting_for_its_key_is_lost(
    bob: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review finding: 1,005 messages of one chain before its key: the pending list
    kept the newest 1,000 and the cursor went past all of them, so m1-m5 were gone
    for good, with nothing shown."""
    alice = "a" * 32
    chain = GroupSession.create(ROOM)
    dist = chain.distribution_message()
    log = _RoomLog()
    total = MAX_PENDING + 5
    for i in range(1, total + 1):
        log.add(alice, 1, chain, f"m{i}")
    _use_log(bob, log, monkeypatch)

    assert await bob.rooms.read_log(ROOM) == total
    assert bob.rooms.pending(ROOM) == MAX_PENDING
    assert bob.rooms.cursor(ROOM) == total  # later messages of other chains flow on
    assert _texts(bob) == []

    await _give_key(bob, alice, 1, dist)
    texts = _texts(bob)
    missing = [f"m{i}" for i in range(1, total + 1) if f"m{i}" not in texts]
    assert missing == []
    assert texts == [f"m{i}" for i in range(1, total + 1)]  # once each, in the room's order
    assert bob.rooms.pending(ROOM) == 0
    assert bob.rooms.unkept(ROOM) is None
    assert bob.rooms.cursor(ROOM) == total


async def test_messages_not_kept_come_back_whichever_key_comes_first(
    bob: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small cap, two senders: alice's messages fill it, carol's are not kept. Carol's
    key brings hers back from the log (alice's still wait); alice's key opens hers;
    pushes that come meanwhile are not lost either."""
    import parley.rooms

    monkeypatch.setattr(parley.rooms, "MAX_PENDING", 3)
    alice, carol = "a" * 32, "c" * 32
    a_chain, c_chain = GroupSession.create(ROOM), GroupSession.create(ROOM)
    a_dist, c_dist = a_chain.distribution_message(), c_chain.distribution_message()
    log = _RoomLog()
    for i in range(1, 4):
        log.add(alice, 1, a_chain, f"a{i}")
    for i in range(1, 4):
        log.add(carol, 7, c_chain, f"c{i}")
    _use_log(bob, log, monkeypatch)

    await bob.rooms.read_log(ROOM)
    assert (bob.rooms.pending(ROOM), bob.rooms.unkept(ROOM), bob.rooms.cursor(ROOM)) == (3, 4, 6)

    await _give_key(bob, carol, 7, c_dist)
    assert _texts(bob) == ["c1", "c2", "c3"]
    assert log.reads[-1] == 3  # read again from before the first not kept
    assert (bob.rooms.pending(ROOM), bob.rooms.unkept(ROOM), bob.rooms.cursor(ROOM)) == (3, None, 6)

    # A push of alice's, past the cap again; then one of carol's, which opens.
    await bob.rooms.on_room_message(log.add(alice, 1, a_chain, "a4"))
    await bob.rooms.on_room_message(log.add(carol, 7, c_chain, "c4"))
    assert (bob.rooms.unkept(ROOM), bob.rooms.cursor(ROOM)) == (7, 8)

    await _give_key(bob, alice, 1, a_dist)
    assert _texts(bob) == ["a1", "a2", "a3", "c1", "c2", "c3", "a4", "c4"]
    assert (bob.rooms.pending(ROOM), bob.rooms.unkept(ROOM), bob.rooms.cursor(ROOM)) == (0, None, 8)


async def test_a_page_read_from_before_the_cursor_was_put_back_does_not_move_it_on(
    bob: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A log read under way when a key puts the cursor back ends with a page that
    started after the new cursor: taking it must not move the cursor past the messages
    to read again (they would be skipped); the read that follows brings them."""
    import parley.rooms

    monkeypatch.setattr(parley.rooms, "MAX_PENDING", 2)
    alice = "a" * 32
    chain = GroupSession.create(ROOM)
    dist = chain.distribution_message()
    log = _RoomLog()
    for i in range(1, 5):
        log.add(alice, 1, chain, f"m{i}")
    _use_log(bob, log, monkeypatch)
    await bob.rooms.read_log(ROOM)
    assert (bob.rooms.pending(ROOM), bob.rooms.unkept(ROOM), bob.rooms.cursor(ROOM)) == (2, 3, 4)

    # The next page is on its way (after 4) when the key comes and puts the cursor at 2.
    log.add(alice, 1, chain, "m5")
    release, entered = asyncio.Event(), asyncio.Event()

    async def slow(room_id: str, after: int, since: int = 0, limit: int = 200) -> dict[str, Any]:
        page = await log.room_log(room_id, after, since, limit)
        if after == 4:
            entered.set()
            await release.wait()
        return page

    monkeypatch.setattr(bob.rooms.api, "room_log", slow)
    reading = asyncio.create_task(bob.rooms.read_log(ROOM))
    await asyncio.wait_for(entered.wait(), 5)
    async with bob.store.transaction() as tx:
        bob.rooms.on_control(tx, alice, 1, {"t": "skd", "room": ROOM, "d": b64encode(dist)})
    assert bob.rooms.cursor(ROOM) == 2
    release.set()
    await reading
    while (running := bob.rooms._reading.get(ROOM)) is not None and not running.done():
        await running
    assert _texts(bob) == [f"m{i}" for i in range(1, 6)]
    assert bob.rooms.cursor(ROOM) == 5


async def test_only_the_key_of_a_device_with_messages_left_out_reads_the_log_again(
    bob: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review finding: the room kept one "not kept" number for every chain, so once a
    chain whose key never comes (a broken or hostile member's) was past the cap, every
    later sender key of the room, even the same one sent again, put the cursor back
    and read the log again from there to its end, and marked it again, for as long as
    the log keeps it. Now only the key of the device whose messages were left out
    does, once."""
    monkeypatch.setattr("parley.rooms.MAX_PENDING", 3)
    hostile, alice = "h" * 32, "a" * 32
    h_chain, a_chain = GroupSession.create(ROOM), GroupSession.create(ROOM)
    h_dist, a_dist = h_chain.distribution_message(), a_chain.distribution_message()
    log = _RoomLog()
    for i in range(5):  # two past the cap
        log.add(hostile, 1, h_chain, f"h{i}")
    _use_log(bob, log, monkeypatch)
    await bob.rooms.read_log(ROOM)
    assert bob.rooms.unkept(ROOM) == 4
    await _give_key(bob, alice, 1, a_dist)
    for i in range(600):  # the room's traffic after that point, keyed
        log.add(alice, 1, a_chain, f"a{i}")
    await bob.rooms.read_log(ROOM)
    for _ in range(3):  # alice's key again (a repeat is taken silently), or a rotation
        before = len(log.reads)
        await _give_key(bob, alice, 1, a_dist)
        assert log.reads[before:] == []  # no read at all
    assert bob.rooms.cursor(ROOM) == 605 and bob.rooms.unkept(ROOM) == 4
    # The left-out device's key reads the log again, once, from its first message.
    before = len(log.reads)
    await _give_key(bob, hostile, 1, h_dist)
    assert log.reads[before] == 3 and bob.rooms.unkept(ROOM) is None
    assert _texts(bob) == [*(f"h{i}" for i in range(5)), *(f"a{i}" for i in range(600))]


async def test_a_held_key_is_taken_when_the_room_s_log_comes(
    bob: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key for a room this device does not know yet waits for the rooms service to
    say we are in it; when it cannot answer (away for a moment), the room's first log
    page (only a member gets one) takes it, not the next reconnect."""
    alice = "a" * 32
    chain = GroupSession.create(ROOM)
    dist = chain.distribution_message()

    async def away(room_id: str) -> dict[str, Any]:
        raise ApiError("service_unavailable", "away", 503)

    monkeypatch.setattr(bob.rooms.api, "room", away)
    await _give_key(bob, alice, 1, dist)
    if bob.rooms._checking is not None:
        await bob.rooms._checking
    assert len(bob.store.read().get("room_keys_held") or []) == 1
    log = _RoomLog()
    for i in range(3):
        log.add(alice, 1, chain, f"m{i}")
    _use_log(bob, log, monkeypatch)
    await bob.rooms.read_log(ROOM)
    assert _texts(bob) == ["m0", "m1", "m2"] and bob.rooms.pending(ROOM) == 0
    assert bob.store.read().get("room_keys_held") == []


async def test_a_message_removed_while_it_waited_for_its_key_is_not_shown_when_it_comes(
    bob: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An audit's finding: a private room's message waiting for its sender key was
    removed (an unsend or an admin's tombstone: the history holds the removal's mark),
    then its key came: the history kept the mark, but the message's event went out with
    the text the removal took down (``parley chat`` printed it). Now nothing is shown and
    the waiting copy is dropped."""
    from parley.events import RoomMessage

    sender = "a" * 32
    chain = GroupSession.create(ROOM)
    dist = chain.distribution_message()  # the key as it was before the message
    log = _RoomLog()
    msg = log.add(sender, 1, chain, "TEXT THE ADMIN REMOVED")
    _use_log(bob, log, monkeypatch)
    await bob.rooms.read_log(ROOM)
    assert bob.rooms.pending(ROOM) == 1
    tomb = f.Tombstone(
        seq=5, server_id=msg.server_id, from_=sender, conversation=f"room:{ROOM}",
        by="admin", at=1_700_000_001_000, kid="1", signature="x",
    )  # fmt: skip
    async with bob.store.transaction() as tx:
        bob.messenger._take_tombstone(tx, tomb)
    async with bob.store.transaction() as tx:
        seen = bob.rooms.on_control(tx, sender, 1, {"t": "skd", "room": ROOM, "d": b64encode(dist)})
    assert not [e for e in seen if isinstance(e, RoomMessage)]
    texts = [e.get("text") or "" for e in bob.history(room_conversation(ROOM))]
    assert not [t for t in texts if "REMOVED" in t]
    assert bob.rooms.pending(ROOM) == 0
