"""A private room's messages waiting for their sender key are kept one row a message
(parley/store.py, the ``pending`` table; docs/client.md, "Rooms"), not one list row
per room read and rewritten whole for every message and every key.

Audit (2026-12): a member sending ~1,000 room messages of ~40 KB under a chain nobody
had a key for made every member's client read, parse, seal and write the room's ~40 MB
list for each of them (294 s, up to 586 ms a message with the frame loop blocked), and
every later keyless message and every sender key of the room read it again. The
semantics are the list's (tests/client/test_room_pending.py): the oldest MAX_PENDING a
room are kept, past them the lowest number per sender device is remembered; a message is
kept once; a key opens its device's messages, reading only those."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from parley import Client
from parley.crypto import GroupSession
from parley.crypto.encoding import b64encode
from parley.errors import StoreError
from parley.rooms import HELD_KEYS_KEPT, MAX_PENDING, held_key_max, room_conversation
from parley.store import SCHEMA_VERSION, KdfParams, Store
from parley_contract import frames as f

from tests.client.test_room_pending import (
    ROOM,
    _give_key,
    _RoomLog,
    _texts,
    _use_log,
    room_member,
)

ALICE, CAROL, HOSTILE = "a" * 32, "c" * 32, "h" * 32
OTHER_ROOM = "e" * 24


@pytest.fixture
async def bob(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Client]:
    async with room_member(tmp_path, monkeypatch) as client:
        yield client


@dataclass
class _Traffic:
    """What the store sealed and opened (plaintext bytes, values)."""

    sealed: int = 0
    opened: int = 0
    values_opened: int = 0


@contextlib.contextmanager
def _counted(store: Store, monkeypatch: pytest.MonkeyPatch) -> Iterator[_Traffic]:
    """Count every value the store seals (writes) and opens (reads) meanwhile."""
    traffic = _Traffic()
    seal, open_ = store._seal, store._open

    def counted_seal(plaintext: bytes, where: str) -> bytes:
        traffic.sealed += len(plaintext)
        return seal(plaintext, where)

    def counted_open(sealed: bytes, where: str) -> bytes:
        plaintext = open_(sealed, where)
        traffic.opened += len(plaintext)
        traffic.values_opened += 1
        return plaintext

    with monkeypatch.context() as m:
        m.setattr(store, "_seal", counted_seal)
        m.setattr(store, "_open", counted_open)
        yield traffic


async def test_keeping_the_thousandth_pending_message_reads_and_writes_only_its_own(
    bob: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """N = MAX_PENDING: keeping the N-th message of a room (and refusing the one after
    it) seals and opens about one message's worth, not the N-1 kept before it; a key
    for one chain reads only that chain's rows. The list row did ~N times that."""
    assert MAX_PENDING == 1000
    h_chain, a_chain = GroupSession.create(ROOM), GroupSession.create(ROOM)
    a_dist = a_chain.distribution_message()
    log = _RoomLog()
    text = "x" * 1000  # a message of ~1.4 KB kept, ~1.4 MB for the list row at N
    for i in range(1, MAX_PENDING - 1):
        log.add(HOSTILE, 1, h_chain, f"h{i} {text}")
    log.add(ALICE, 1, a_chain, "a1")
    _use_log(bob, log, monkeypatch)
    await bob.rooms.read_log(ROOM)
    assert bob.rooms.pending(ROOM) == MAX_PENDING - 1

    last = log.add(HOSTILE, 1, h_chain, f"h999 {text}")
    one = len(msgspec.json.encode(last))  # about what one kept message is
    with _counted(bob.store, monkeypatch) as keep:
        await bob.rooms.on_room_message(last)
    assert bob.rooms.pending(ROOM) == MAX_PENDING
    assert keep.sealed < 2 * one, keep
    assert keep.opened < one, keep  # its room's state, not the messages kept
    assert keep.values_opened < 10, keep

    with _counted(bob.store, monkeypatch) as past:  # past the cap: remembered, not kept
        await bob.rooms.on_room_message(log.add(HOSTILE, 1, h_chain, f"h1000 {text}"))
    assert (bob.rooms.pending(ROOM), bob.rooms.unkept(ROOM)) == (MAX_PENDING, MAX_PENDING + 1)
    assert past.sealed < 2 * one and past.opened < one and past.values_opened < 10, past

    with _counted(bob.store, monkeypatch) as key:  # alice's key: her one message only
        await _give_key(bob, ALICE, 1, a_dist)
    assert _texts(bob) == ["a1"]
    assert bob.rooms.pending(ROOM) == MAX_PENDING - 1
    assert key.opened < 2 * one and key.values_opened < 10, key


async def test_a_message_is_kept_once_and_a_key_opens_its_device_s_oldest_first(
    bob: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The room's log read again from its start (a cursor put back) keeps nothing twice;
    each device's key opens its own messages, in the room's order, and leaves the other
    device's; two rooms' messages are apart."""
    a_chain, c_chain = GroupSession.create(ROOM), GroupSession.create(ROOM)
    a_dist, c_dist = a_chain.distribution_message(), c_chain.distribution_message()
    log = _RoomLog()
    for i in range(1, 4):
        log.add(ALICE, 1, a_chain, f"a{i}")
        log.add(CAROL, 7, c_chain, f"c{i}")
    _use_log(bob, log, monkeypatch)
    await bob.rooms.read_log(ROOM)
    assert bob.rooms.pending(ROOM) == 6
    async with bob.store.transaction() as tx:
        tx.put(bob.rooms._key("room_cursor", ROOM), 0)
    await bob.rooms.read_log(ROOM)
    assert bob.rooms.pending(ROOM) == 6 and bob.rooms.pending(OTHER_ROOM) == 0
    read = bob.store.read()
    assert [p["seq"] for p in read.pending(ROOM)] == [1, 2, 3, 4, 5, 6]
    assert [p["seq"] for p in read.pending(ROOM, CAROL, 7)] == [2, 4, 6]
    assert read.pending(ROOM, CAROL, 1) == [] and read.pending(OTHER_ROOM) == []

    await _give_key(bob, CAROL, 7, c_dist)
    assert _texts(bob) == ["c1", "c2", "c3"]
    assert [p["seq"] for p in bob.store.read().pending(ROOM)] == [1, 3, 5]
    await _give_key(bob, ALICE, 1, a_dist)
    assert _texts(bob) == ["a1", "c1", "a2", "c2", "a3", "c3"]
    assert bob.rooms.pending(ROOM) == 0


def test_the_store_keeps_pending_messages_one_row_each(tmp_path: Path) -> None:
    """``keep_pending`` is an insert (False when kept already), ``pending`` reads a
    room's or one device's rows oldest first, ``take_pending`` deletes one; a row's
    value is bound to its room, device and message."""
    store = Store.open(tmp_path / "store.db", "pass phrase", kdf=KdfParams(n=2**10))
    with store.transaction_sync() as tx:
        for seq, (sender, device) in enumerate([(ALICE, 1), (CAROL, 7), (ALICE, 2)], 1):
            item = {"server_id": f"s{seq}", "seq": seq, "from": sender, "device": device}
            assert tx.keep_pending(ROOM, sender, device, f"s{seq}", item)
        assert not tx.keep_pending(ROOM, ALICE, 1, "s1", {"server_id": "s1", "seq": 99})
        assert tx.keep_pending(OTHER_ROOM, ALICE, 1, "s1", {"server_id": "s1", "seq": 1})
    read = store.read()
    assert (read.pending_count(ROOM), read.pending_count(OTHER_ROOM)) == (3, 1)
    assert [p["seq"] for p in read.pending(ROOM)] == [1, 2, 3]
    assert [p["seq"] for p in read.pending(ROOM, ALICE, 1)] == [1]
    assert read.is_pending(ROOM, "s2") and not read.is_pending(ROOM, "s9")
    with store.transaction_sync() as tx:
        tx.take_pending(ROOM, "s1")
    assert [p["seq"] for p in store.read().pending(ROOM)] == [2, 3]
    assert store.read().is_pending(OTHER_ROOM, "s1")
    # A value moved to another row does not open there.
    db = store._db
    values = [v for (v,) in db.execute("SELECT value FROM pending ORDER BY n")]
    db.execute("UPDATE pending SET value = ? WHERE n = (SELECT MIN(n) FROM pending)", (values[1],))
    with pytest.raises(StoreError):
        store.read().pending(ROOM)
    store.close()


def _legacy_items(log: _RoomLog, room_id: str) -> list[dict[str, Any]]:
    """The room's messages as the list row held them (``Rooms._take``'s item and name)."""
    items = []
    for m in log.frames:
        item = {
            "server_id": m.server_id, "seq": m.seq, "from": m.from_, "device": m.from_device,
            "body": m.body, "sent_at": m.sent_at, "mentions": [],
            "conversation": room_conversation(room_id), "commitment": None,
            "franking_tag": None, "name": m.from_[:5],
        }  # fmt: skip
        items.append(item)
    return items


async def test_a_store_with_the_old_list_rows_moves_them_when_it_opens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store written before the ``pending`` table (a room's pending messages in one
    ``kv`` row, ``room_pending:...``) has them moved when it opens: in their order, the
    row gone, each opening when its key comes as before; opening again changes
    nothing, and messages kept after the move come after them."""
    a_chain, c_chain = GroupSession.create(ROOM), GroupSession.create(ROOM)
    a_dist, c_dist = a_chain.distribution_message(), c_chain.distribution_message()
    log = _RoomLog()
    for i in range(1, 4):
        log.add(ALICE, 1, a_chain, f"a{i}")
        if i < 3:
            log.add(CAROL, 7, c_chain, f"c{i}")
    other = GroupSession.create(OTHER_ROOM)
    other_frame = f.RoomMessage(
        room=OTHER_ROOM, seq=1, server_id="f" * 24, from_=CAROL, from_device=7,
        body=b64encode(other.encrypt(b"elsewhere")), sent_at=1_700_000_000_001,
    )  # fmt: skip
    async with room_member(tmp_path, monkeypatch) as bob:
        rooms = bob.rooms
        async with bob.store.transaction() as tx:  # what the list-row client left
            tx.put(rooms._key("room_pending", ROOM), _legacy_items(log, ROOM))
            tx.put(rooms._key("room_cursor", ROOM), len(log.frames))
            other_log = _RoomLog()
            other_log.frames.append(other_frame)
            tx.put(rooms._key("room_pending", OTHER_ROOM), _legacy_items(other_log, OTHER_ROOM))
            tx.put("room_pending:damaged", [])
        # A row that does not open: left where it is (the store still opens).
        bob.store._db.execute(
            "UPDATE kv SET value = x'00112233445566778899aabbccddeeff00' "
            "WHERE key = 'room_pending:damaged'"
        )

    async with room_member(tmp_path, monkeypatch) as bob:
        db = bob.store._db
        left = [k for (k,) in db.execute("SELECT key FROM kv WHERE key LIKE 'room_pending:%'")]
        assert left == ["room_pending:damaged"]
        assert bob.rooms.pending(ROOM) == 5 and bob.rooms.pending(OTHER_ROOM) == 1
        assert [p["seq"] for p in bob.store.read().pending(ROOM)] == [1, 2, 3, 4, 5]
        _use_log(bob, log, monkeypatch)
        await _give_key(bob, CAROL, 7, c_dist)
        assert _texts(bob) == ["c1", "c2"]
        assert bob.rooms.pending(ROOM) == 3
        log.add(ALICE, 1, a_chain, "a4")  # kept after those moved
        await bob.rooms.read_log(ROOM)
        assert [p["seq"] for p in bob.store.read().pending(ROOM)] == [1, 3, 5, 6]

    async with room_member(tmp_path, monkeypatch) as bob:  # opened again: the same
        assert [p["seq"] for p in bob.store.read().pending(ROOM)] == [1, 3, 5, 6]
        assert bob.rooms.pending(OTHER_ROOM) == 1
        _use_log(bob, log, monkeypatch)
        await _give_key(bob, ALICE, 1, a_dist)
        assert _texts(bob) == ["a1", "c1", "a2", "c2", "a3", "a4"]
        assert bob.rooms.pending(ROOM) == 0 and bob.rooms.unkept(ROOM) is None


def test_a_list_row_of_an_old_store_moves_without_the_client(tmp_path: Path) -> None:
    """The move at the store level: an item it cannot key (no sender or number) is
    dropped, one listed twice is kept once, a row that is not a list is removed."""
    path = tmp_path / "store.db"
    store = Store.open(path, "pass phrase", kdf=KdfParams(n=2**10))
    room_ref = store.ref("room_pending", ROOM)
    good = [{"server_id": f"s{i}", "seq": i, "from": ALICE, "device": 1} for i in (1, 2)]
    with store.transaction_sync() as tx:
        tx.put(f"room_pending:{room_ref}", [good[0], {"seq": 9}, good[1], good[0], "odd"])
        tx.put(f"room_pending:{store.ref('room_pending', OTHER_ROOM)}", {"not": "a list"})
        tx.put("room_pendingness", [1])  # another name: not touched
    store.close()
    store = Store.open(path, "pass phrase", kdf=KdfParams(n=2**10))
    read = store.read()
    assert read.pending(ROOM) == good and read.pending(ROOM, ALICE, 1) == good
    assert read.pending_count(OTHER_ROOM) == 0
    keys = [k for (k,) in store._db.execute("SELECT key FROM kv ORDER BY key")]
    assert keys == ["room_pendingness"]
    store.close()
    db = sqlite3.connect(path)
    schema = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0]
    assert schema == str(SCHEMA_VERSION).encode()
    db.close()


async def test_only_a_real_distribution_message_is_held_for_a_room_not_known(
    bob: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key for a room this device does not know is held in one row of at most
    HELD_KEYS_KEPT items: each ``d`` must be a distribution message for that room (at
    most ``held_key_max`` characters), so the row, rewritten for each, stays small."""

    async def later() -> int:
        return 0

    monkeypatch.setattr(bob.rooms, "check_held_keys", later)  # the rooms service away
    unknown = "9" * 24
    real = b64encode(GroupSession.create(unknown).distribution_message())
    assert len(real) == held_key_max(unknown) == 134
    refused = [
        real + "A" * 40_000,  # too long
        "A" * len(real),  # the length, not a distribution message
        b64encode(GroupSession.create(OTHER_ROOM).distribution_message()),  # another room's
        12345,
    ]
    async with bob.store.transaction() as tx:
        for d in refused:
            bob.rooms.on_control(tx, ALICE, 1, {"t": "skd", "room": unknown, "d": d})
        assert tx.get("room_keys_held") is None
        for _ in range(HELD_KEYS_KEPT + 10):
            bob.rooms.on_control(tx, ALICE, 1, {"t": "skd", "room": unknown, "d": real})
    held = bob.store.read().get("room_keys_held")
    assert len(held) == HELD_KEYS_KEPT and {h["d"] for h in held} == {real}
    row = bob.store._db.execute("SELECT value FROM kv WHERE key = 'room_keys_held'").fetchone()
    assert len(row[0]) < 70_000
