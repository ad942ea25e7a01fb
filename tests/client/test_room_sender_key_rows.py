"""A private room's sender keys in the client (parley/rooms.py; docs/client.md "Sender
keys in the store").

Audit (2026-12), two defects:

* a member offline while a sender rotated 6 times (6 members left) got the 6 new keys
  from its inbox before the room's log: 5 chains a sender were kept, so the first was
  dropped and its messages were kept waiting for ever, never shown;
* the room's whole sender-key state was one row, read, parsed, sealed and written
  again for every room message received: ~1 MB and ~100 ms a message in a room of
  1,000 member devices. It is one row per member device now (and one for this
  device's chain): a message reads and writes its sender's.

The room's log is the stand-in of tests/client/test_room_pending.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from parley import Client
from parley.crypto import GroupSession, RetiredSenderKey
from parley.crypto.session import CHAINS_KEPT_PER_SENDER
from parley.rooms import member_key, room_conversation

from tests.client.test_room_pending import (
    ROOM,
    _give_key,
    _RoomLog,
    _texts,
    _use_log,
    room_member,
)
from tests.client.test_room_pending_rows import _counted

ALICE, CAROL, DAVE, ERIN = "a" * 32, "c" * 32, "d" * 32, "e" * 32


@pytest.fixture
async def bob(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Client]:
    async with room_member(tmp_path, monkeypatch) as client:
        yield client


def _errors(client: Client) -> list[str]:
    history = client.history(room_conversation(ROOM))
    return [str(e["text"]) for e in history if e.get("kind") == "error"]


async def test_offline_through_six_rotations_every_message_is_shown(
    bob: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """6 members leave while bob is offline, alice writes after each (rotating); on
    reconnecting the inbox brings her 6 keys before the room's log is read."""
    chain = GroupSession.create(ROOM)
    log = _RoomLog()
    _use_log(bob, log, monkeypatch)
    await _give_key(bob, ALICE, 1, chain.distribution_message())
    log.add(ALICE, 1, chain, "m0")
    await bob.rooms.read_log(ROOM)
    assert _texts(bob) == ["m0"]
    log.add(ALICE, 1, chain, "m1")  # offline from here: still the first chain
    dists = []
    for i in range(2, 8):
        dists.append(chain.rotate())
        log.add(ALICE, 1, chain, f"m{i}")
    for d in dists:
        await _give_key(bob, ALICE, 1, d)
    await bob.rooms.read_log(ROOM)
    assert _texts(bob) == [f"m{i}" for i in range(8)]
    assert bob.rooms.pending(ROOM) == 0


async def test_a_message_of_a_dropped_chain_is_shown_as_such_not_kept_for_ever(
    bob: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past CHAINS_KEPT_PER_SENDER rotations the first chain is dropped: its unread
    message cannot open, and says so in the history; a message whose key has not come
    yet is still kept (the key may come), and opens when it does."""
    chain = GroupSession.create(ROOM)
    late = GroupSession.create(ROOM)  # carol's: her key comes last
    late_key = late.distribution_message()
    log = _RoomLog()
    _use_log(bob, log, monkeypatch)
    await _give_key(bob, ALICE, 1, chain.distribution_message())
    log.add(ALICE, 1, chain, "first chain")
    dists = []
    for _ in range(CHAINS_KEPT_PER_SENDER):
        dists.append(chain.rotate())
    log.add(ALICE, 1, chain, "newest chain")
    log.add(CAROL, 1, late, "carol's")
    for d in dists:
        await _give_key(bob, ALICE, 1, d)
    await bob.rooms.read_log(ROOM)
    assert _texts(bob) == ["[could not decrypt: its sender key was dropped]", "newest chain"]
    assert bob.rooms.pending(ROOM) == 1  # carol's: waits for her key
    await _give_key(bob, CAROL, 1, late_key)
    assert _texts(bob)[-1] == "carol's" and bob.rooms.pending(ROOM) == 0
    assert len(_errors(bob)) == 1


async def test_a_message_left_waiting_under_a_dropped_chain_is_shown_at_the_next_key(
    bob: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the previous version left behind: a message kept waiting although its chain
    had been dropped (kept for ever, never shown). The sender's next key shows it."""
    dave = GroupSession.create(ROOM)
    first = dave.distribution_message()
    log = _RoomLog()
    _use_log(bob, log, monkeypatch)
    await _give_key(bob, DAVE, 1, first)
    await bob.rooms.read_log(ROOM)  # the room is known: its held key is taken
    frame = log.add(DAVE, 1, dave, "stuck")
    async with bob.store.transaction() as tx:  # the old state: dropped, the message kept
        session = bob.rooms.group(tx, ROOM)
        for _ in range(CHAINS_KEPT_PER_SENDER):
            session.process_distribution(member_key(DAVE, 1), GroupSession.create(ROOM).rotate())
        with pytest.raises(RetiredSenderKey):
            session.process_distribution(member_key(DAVE, 1), first)
        bob.rooms._put_group(tx, session)
        item = {
            "server_id": frame.server_id, "seq": frame.seq, "from": DAVE, "device": 1,
            "body": frame.body, "sent_at": frame.sent_at, "mentions": [],
            "conversation": room_conversation(ROOM), "name": "dave",
        }  # fmt: skip
        tx.keep_pending(ROOM, DAVE, 1, frame.server_id, item)
        tx.put(bob.rooms._key("room_cursor", ROOM), frame.seq)
    assert bob.rooms.pending(ROOM) == 1
    await _give_key(bob, DAVE, 1, dave.rotate())
    assert _errors(bob) == ["[could not decrypt: its sender key was dropped]"]
    assert bob.rooms.pending(ROOM) == 0


async def test_at_size_a_received_message_reads_and_writes_its_sender_s_row_only(
    bob: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """999 member devices, each rotated 5 times (6 chains): the whole state is about
    1 MB. A pushed message, a key, a new member's first key and this device's send
    each seal and open a few KB (the audit: ~1 MB each, the whole state)."""
    senders = [GroupSession.create(ROOM) for _ in range(999)]
    names = [member_key(f"u{i:031d}", 1) for i in range(999)]
    async with bob.store.transaction() as tx:
        session = bob.rooms.group(tx, ROOM)
        for name, s in zip(names, senders, strict=True):
            session.process_distribution(name, s.distribution_message())
            for _ in range(5):
                session.process_distribution(name, s.rotate())
        bob.rooms._put_group(tx, session)
        whole = len(session.to_bytes())
    assert whole > 900_000
    log = _RoomLog()
    _use_log(bob, log, monkeypatch)
    frames = [log.add(f"u{i:031d}", 1, senders[i], f"m{i}") for i in (0, 500, 998)]
    await bob.rooms.on_room_message(frames[0])

    with _counted(bob.store, monkeypatch) as push:
        await bob.rooms.on_room_message(frames[1])
    assert _texts(bob) == ["m0", "m500"]
    assert push.sealed < 6_000 and push.opened < 6_000, push  # 6 chains' row: ~2 KB
    assert push.values_opened < 12, push

    with _counted(bob.store, monkeypatch) as key:  # a member's next key (a rotation)
        await _give_key(bob, "u" + "0" * 30 + "7", 1, senders[7].rotate())
    assert key.sealed < 6_000 and key.opened < 6_000, key

    with _counted(bob.store, monkeypatch) as newcomer:  # a member device new to the room
        await _give_key(bob, ERIN, 1, GroupSession.create(ROOM).distribution_message())
    # its row and one of the 32 index rows (~1.3 KB of names), not the 999 names
    assert newcomer.sealed < 6_000 and newcomer.opened < 6_000, newcomer

    with _counted(bob.store, monkeypatch) as send:  # this device's chain only
        async with bob.store.transaction() as tx:
            mine = bob.rooms._group(tx, ROOM, ())
            mine.encrypt(b"hello")
            bob.rooms._put_group(tx, mine)
    assert send.sealed < 1_000 and send.opened < 1_000, send

    await bob.rooms.on_room_message(frames[2])
    assert _texts(bob) == ["m0", "m500", "m998"]
    async with bob.store.transaction() as tx:  # and the whole state is all there
        again = json.loads(bob.rooms.group(tx, ROOM).to_bytes())
    assert len(again["receivers"]) == 1000
    assert [len(again["receivers"][n]) for n in names] == [6] * 7 + [7] + [6] * 991


def _old_whole_state(
    bob_state: GroupSession, alice: GroupSession, carol: GroupSession, dave: GroupSession
) -> bytes:
    """Bob's state as the previous version kept it (one whole row, ``to_bytes``):
    alice's chain, carol's, dave's retired (removed); returns dave's old key."""
    bob_state.process_distribution(member_key(ALICE, 1), alice.distribution_message())
    bob_state.process_distribution(member_key(CAROL, 1), carol.distribution_message())
    bob_state.process_distribution(member_key(DAVE, 1), dave.distribution_message())
    dave_key = dave.distribution_message()
    bob_state.remove_member(member_key(DAVE, 1))
    bob_state.encrypt(b"bob sent one")
    return dave_key


async def test_a_store_with_the_whole_state_in_one_row_is_split_and_nothing_is_lost(
    bob: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, carol, dave, erin = (GroupSession.create(ROOM) for _ in range(4))
    erin_key = erin.distribution_message()
    old = GroupSession.create(ROOM)
    dave_key = _old_whole_state(old, alice, carol, dave)
    log = _RoomLog()
    log.add(ALICE, 1, alice, "a1")
    log.add(CAROL, 1, carol, "c1 (her first chain)")
    old.process_distribution(member_key(CAROL, 1), carol.rotate())
    blob = old.to_bytes()
    log.add(CAROL, 1, carol, "c2 (her second)")
    log.add(ERIN, 1, erin, "e1 (no key yet)")
    log.add(ALICE, 1, alice, "a2")
    async with bob.store.transaction() as tx:  # as the previous version wrote it
        tx.put_bytes(bob.rooms._key("group", ROOM), blob)
    key = bob.rooms._key("group", ROOM)

    # The split is in the transaction that first uses the state: one that fails
    # leaves the old row as it was.
    with pytest.raises(RuntimeError):
        async with bob.store.transaction() as tx:
            bob.rooms._group(tx, ROOM, (member_key(ALICE, 1),))
            raise RuntimeError("the caller failed")
    assert bob.store.read().get_bytes(key) == blob

    _use_log(bob, log, monkeypatch)
    await bob.rooms.read_log(ROOM)
    assert _texts(bob) == ["a1", "c1 (her first chain)", "c2 (her second)", "a2"]
    assert bob.rooms.pending(ROOM) == 1
    raw = bob.store.read().get_bytes(key)
    assert raw is not None and not GroupSession.is_whole(raw) and len(raw) < 1_000
    await _give_key(bob, ERIN, 1, erin_key)
    assert _texts(bob) == ["a1", "c1 (her first chain)", "c2 (her second)", "e1 (no key yet)", "a2"]
    assert bob.rooms.pending(ROOM) == 0

    async with bob.store.transaction() as tx:
        state = bob.rooms.group(tx, ROOM)
        # This device's chain goes on where it was (same id, next iteration).
        assert state.distribution_message() == old.distribution_message()
        # Dave's retired chain stays refused; carol's two chains are both there.
        with pytest.raises(RetiredSenderKey):
            state.process_distribution(member_key(DAVE, 1), dave_key)
        whole = json.loads(state.to_bytes())
    before = json.loads(blob)
    assert whole["own"] == before["own"]
    assert whole["retired"] == before["retired"]
    assert sorted(whole["receivers"]) == sorted([*before["receivers"], member_key(ERIN, 1)])
    assert len(whole["receivers"][member_key(CAROL, 1)]) == 2
    # Written by the next version, the state reads the same when opened again.
    assert bob.rooms._known(bob.store.read(), ROOM)
