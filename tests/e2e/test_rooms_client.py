"""Rooms through the SDK, end to end through HAProxy (issue #14, docs/client.md "Rooms").

Real SDK clients (one per device, each with its own store) against every
service: a private room's messages encrypted with sender keys, distributed over
the pairwise sessions and rotated when a member is removed; and the clear
errors for what cannot be done.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from parley import ApiError, Client, ParleyError, messenger
from parley.crypto import GroupSession, UnknownSenderKey
from parley.crypto.encoding import b64decode, b64encode
from parley.events import DecryptFailed, Event, Message, RoomMessage, Typing
from parley.messenger import CONTROL_CONV, CONTROL_PREFIX, encode_control
from parley.rooms import member_key, room_conversation
from parley_contract import frames as f

from tests.client.conftest import CHEAP_KDF, PASSWORD
from tests.support.aio import eventually
from tests.support.stack import System

NewDevice = Callable[..., Awaitable[Client]]


@pytest.fixture
async def device(system: System, tmp_path: Path) -> AsyncIterator[NewDevice]:
    """``await device(username, first=True)`` signs up; otherwise links a new device of
    ``username``, approved by ``approver``."""
    clients: list[Client] = []

    async def make(username: str, *, first: bool = False, approver: Client | None = None) -> Client:
        client = Client(
            system.lb, data_dir=tmp_path / username / secrets.token_hex(4),
            passphrase="test passphrase", kdf=CHEAP_KDF, backoff_start=0.1, backoff_max=1.0,
        )  # fmt: skip
        await client.open()
        clients.append(client)
        if first:
            await client.signup(username, PASSWORD, f"{username}@example.test")
            return client
        assert approver is not None
        code = await client.link_device(username, PASSWORD)
        waiting = asyncio.create_task(client.wait_linked(60))
        await approver.approve_device(code)
        await waiting
        return client

    yield make
    for client in clients:
        await client.close()


def username(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(4)}"


def room_texts(client: Client, room_id: str) -> list[dict[str, Any]]:
    return client.history(room_conversation(room_id))


async def all_texts(client: Client, room_id: str, n: int, timeout: float = 60) -> list[str]:
    """The room's texts on this device once it has ``n`` messages (fails on more)."""

    async def probe() -> list[dict[str, Any]]:
        return room_texts(client, room_id)

    entries = await eventually(probe, lambda es: len(es) >= n, timeout=timeout)
    assert all(e.get("kind") == "message" for e in entries), entries
    return [str(e["text"]) for e in entries]


async def private_room(owner: Client, others: list[Client], name: str) -> str:
    """A private room of ``owner`` that ``others`` joined (invited and accepted), every
    client connected; its id."""
    rid = str((await owner.rooms.create(f"{name} {secrets.token_hex(3)}"))["room_id"])
    for c in [owner, *others]:
        await c.connect()
    for c in others:
        assert c.username
        await owner.rooms.invite(rid, c.username)
        await c.rooms.accept(rid)
    return rid


def received_order(client: Client, room_id: str) -> list[str]:
    """The texts this device got from the server (not the ones it sent), in order."""
    return [str(e["text"]) for e in room_texts(client, room_id) if e.get("server_id")]


def same_relative_order(a: list[str], b: list[str]) -> bool:
    common = set(a) & set(b)
    return [t for t in a if t in common] == [t for t in b if t in common]


class Tap:
    """Every event and every room frame a client sees (it goes on to the client)."""

    def __init__(self, client: Client) -> None:
        self.events: list[Event] = []
        self.frames: list[f.RoomMessage] = []
        client.add_listener(self.events.append)
        handler = client.rooms.on_room_message

        async def tap(frame: f.RoomMessage) -> None:
            self.frames.append(frame)
            await handler(frame)

        client.rooms.on_room_message = tap  # type: ignore[method-assign]


async def test_private_room_every_device_decrypts_once_and_a_removed_member_reads_nothing_after(
    device: NewDevice,
) -> None:
    a_name, b_name, c_name = username("ra"), username("rb"), username("rc")
    a1 = await device(a_name, first=True)
    a2 = await device(a_name, approver=a1)
    bob = await device(b_name, first=True)
    carol = await device(c_name, first=True)
    everyone = [a1, a2, bob, carol]
    taps = {id(c): Tap(c) for c in everyone}
    for c in everyone:
        await c.connect()
    # HAProxy spreads the sockets over both gateway pods (leastconn); sockets other
    # tests left open may tilt it, so reconnect one until both pods have some.
    for _ in range(10):
        gateways = {c._conn.ready_frame.gateway for c in everyone}
        if len(gateways) == 2:
            break
        await everyone[-1].messenger.disconnect()
        await everyone[-1].connect()
    assert len(gateways) == 2, gateways

    room = await a1.rooms.create(f"team {secrets.token_hex(3)}")
    rid = room["room_id"]
    assert room["kind"] == "private"
    await a1.rooms.invite(rid, b_name)
    await a1.rooms.invite(f"#{room['name']}", c_name)
    await bob.rooms.accept(rid)
    await carol.rooms.accept(f"#{room['name']}")

    # Both ways, one after another, then all four devices at once.
    expected: list[str] = []
    senders = [("a1", a1), ("bob", bob), ("carol", carol), ("a2", a2)]
    for i in range(2):
        for tag, client in senders:
            text = f"{tag} says {i} to @{b_name if tag != 'bob' else c_name}"
            await client.rooms.send(rid, text)
            expected.append(text)

    async def burst(tag: str, client: Client) -> list[str]:
        out = []
        for i in range(3):
            text = f"{tag} burst {i}"
            await client.rooms.send(rid, text)
            out.append(text)
        return out

    for sent in await asyncio.gather(*(burst(t, c) for t, c in senders)):
        expected += sent
    n = len(expected)
    for c in everyone:
        got = await all_texts(c, rid, n)
        assert sorted(got) == sorted(expected), "a device lost or doubled a message"
        assert c.rooms.pending(rid) == 0
    # Exactly once: one RoomMessage event per message received, no decrypt failure.
    for c in everyone:
        events = taps[id(c)].events

        async def room_events(events: list[Event] = events) -> list[str]:
            # An entry's event is emitted once its transaction is committed: a turn
            # after a reader of the store can see the entry.
            return [e.server_id for e in events if isinstance(e, RoomMessage) and e.room_id == rid]

        got_ids = await eventually(
            room_events, lambda ids, c=c: len(ids) >= len(received_order(c, rid))
        )
        assert not [e for e in events if isinstance(e, DecryptFailed)]
        assert len(got_ids) == len(set(got_ids)), "a message's event twice"
        # Each message received has its event (the entries without one, if not).
        no_event = [(x["text"], x.get("dir"), x.get("sender"))
                    for x in room_texts(c, rid) if x.get("server_id") and x["server_id"] not in got_ids]  # fmt: skip
        assert len(got_ids) == len(received_order(c, rid)), no_event
    # One order: what the server delivered, every device got in the same order.
    orders = [received_order(c, rid) for c in everyone]
    for a in orders:
        for b in orders:
            assert same_relative_order(a, b)
    # Mentions travel as routing metadata: bob's user id on the messages naming him.
    mentioned = [x for x in room_texts(bob, rid) if f"@{b_name}" in str(x["text"])]
    assert mentioned and all(bob.user_id in x["mentions"] for x in mentioned)

    # Carol is removed. The others' next messages go under new sender keys.
    carol_frames = len(taps[id(carol)].frames)
    await a1.rooms.remove(rid, c_name)
    rotations = {id(c): c.rooms.rotations for c in (a1, a2, bob)}
    after = []
    for tag, client in (("bob", bob), ("a2", a2), ("a1", a1)):
        text = f"after removal from {tag} {secrets.token_hex(4)}"
        await client.rooms.send(rid, text)
        after.append(text)
    for c in (a1, a2, bob):
        assert c.rooms.rotations == rotations[id(c)] + 1, "no new sender key after the removal"
        assert set((await all_texts(c, rid, n + 3))[n:]) == set(after)
    # The server fans out to carol no more: a 1:1 message sent after the room's
    # messages reached everyone else lands in her inbox after any copy of them would.
    sentinel = f"sentinel {secrets.token_hex(4)}"
    await bob.send(c_name, sentinel, wait="stored")
    msg = await carol.next_event(Message, timeout=60)
    assert isinstance(msg, Message) and msg.text == sentinel
    assert len(taps[id(carol)].frames) == carol_frames, "carol still gets the room's messages"
    assert len(room_texts(carol, rid)) == n
    assert carol.rooms.pending(rid) == 0
    # And the ciphertexts themselves (as the others received them) do not open with
    # anything carol's client holds: the new chains were never given to her.
    late = [
        (fr, text)
        for c in (a1, a2, bob)
        for fr in taps[id(c)].frames
        if (text := _text_of(c, fr)) in after
    ]
    assert {text for _, text in late} == set(after)
    async with carol.store.transaction() as tx:
        session = carol.rooms.group(tx, rid)
        for fr, _ in late:
            with pytest.raises(UnknownSenderKey):
                session.decrypt_message(member_key(fr.from_, fr.from_device), b64decode(fr.body))
    # Carol can no longer send to it: the room does not exist for her.
    with pytest.raises(ApiError) as refused:
        await carol.rooms.send(rid, "still here?")
    assert refused.value.code == "room_not_found"


def _text_of(client: Client, frame: f.RoomMessage) -> str:
    """The text a received frame became in its receiver's history."""
    for e in client.history(room_conversation(str(frame.room))):
        if e.get("server_id") == frame.server_id:
            return str(e.get("text"))
    return ""


async def test_a_member_away_reads_the_rooms_log_once_and_a_gap_is_read_again(
    device: NewDevice,
) -> None:
    """Bob is offline while 40 messages are sent: on connect his device reads them from
    the room's log, once each, in order, and keeps its place (a reconnect reads
    nothing again). A push that skips numbers (one lost on the way) makes it read
    the log for what it missed. A device linked later reads only from its link."""
    alice = await device(username("la"), first=True)
    b_name = username("lb")
    bob = await device(b_name, first=True)
    await alice.connect()
    room = await alice.rooms.create(f"log {secrets.token_hex(3)}")
    rid = room["room_id"]
    await alice.rooms.invite(rid, b_name)
    await bob.rooms.accept(rid)
    texts = [f"while away {i}" for i in range(40)]
    for text in texts:
        await alice.rooms.send(rid, text)
    assert bob.rooms.cursor(rid) == 0
    tap = Tap(bob)
    await bob.connect()
    assert await all_texts(bob, rid, 40) == texts
    assert tap.frames == [] or all(fr.seq <= 40 for fr in tap.frames)
    await eventually(lambda: asyncio.sleep(0, bob.rooms.cursor(rid)), lambda c: c == 40)
    got = [e for e in tap.events if isinstance(e, RoomMessage) and e.room_id == rid]
    assert [e.text for e in got] == texts  # once each, in the room's order
    # Reconnecting reads nothing again.
    await bob.messenger.disconnect()
    assert await bob.rooms.sync_rooms() == 0
    await bob.connect()
    assert len(room_texts(bob, rid)) == 40

    # A lost push: bob's device is told of message 43 alone; it reads 41 and 42 too.
    await bob.messenger.disconnect()
    for i in range(3):
        await alice.rooms.send(rid, f"gap {i}")
    page = await bob.api.room_log(rid, 42, 0, 10)
    await bob.rooms.on_room_message(msgspec.convert(page["messages"][0], f.RoomMessage))
    assert (await all_texts(bob, rid, 43))[40:] == ["gap 0", "gap 1", "gap 2"]
    await eventually(lambda: asyncio.sleep(0, bob.rooms.cursor(rid)), lambda c: c == 43)

    # Bob links a second device: it reads nothing sent before it was set up, and it
    # reads the next message at once. Alice looked at bob's devices seconds ago, so
    # her first try names only bob's first device: the gateway refuses it
    # (devices_changed), her device gives the new one its key and sends the message
    # again, encrypted anew, with the same id.
    await bob.connect()
    bob2 = await device(b_name, approver=bob)
    await bob2.connect()
    given = alice.rooms.distributions
    await alice.rooms.send(rid, "for both devices")
    assert alice.rooms.distributions == given + 1
    assert (await all_texts(bob, rid, 44))[-1] == "for both devices"
    assert await all_texts(bob2, rid, 1) == ["for both devices"]
    assert bob2.rooms.pending(rid) == 0 and bob2.rooms.cursor(rid) == 44
    assert [t["text"] for t in room_texts(alice, rid)][-1] == "for both devices"
    assert len(room_texts(alice, rid)) == 44  # one history entry for the message sent twice


async def test_alone_in_a_private_room_my_other_device_reads_what_i_write(
    device: NewDevice,
) -> None:
    """Nobody else in the room yet: the sender key goes to the writer's other devices
    in a note to self (docs/rooms.md), so they read the room from its first message,
    and the member who joins next reads what follows."""
    a_name = username("sa")
    a1 = await device(a_name, first=True)
    a2 = await device(a_name, approver=a1)
    await a1.connect()
    await a2.connect()
    rid = (await a1.rooms.create(f"alone {secrets.token_hex(3)}"))["room_id"]
    await a1.rooms.send(rid, "first, alone")
    assert a1.rooms.distributions == 1  # one note to self, to a2
    assert await all_texts(a2, rid, 1) == ["first, alone"]
    assert a2.rooms.pending(rid) == 0
    await a1.rooms.send(rid, "second, alone")
    assert a1.rooms.distributions == 1  # a2 has the key: nothing more to give
    assert await all_texts(a2, rid, 2) == ["first, alone", "second, alone"]
    b_name = username("sb")
    bob = await device(b_name, first=True)
    await bob.connect()
    await a2.rooms.invite(rid, b_name)
    await bob.rooms.accept(rid)
    await a2.rooms.send(rid, "bob is here")
    assert await all_texts(bob, rid, 1) == ["bob is here"]
    assert (await all_texts(a1, rid, 3))[-1] == "bob is here"


async def test_a_device_linked_while_its_key_send_was_accepted_still_gets_the_key(
    device: NewDevice, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: a key send recorded as keyed every device its recipient had *when the
    accepted came*, not the ones it was encrypted for. A device linked in between (and
    learned of meanwhile) was recorded without the key, and no later send gave it:
    it could not read this sender until the next rotation."""
    alice = await device(username("ka"), first=True)
    b_name = username("kb")
    bob = await device(b_name, first=True)
    rid = await private_room(alice, [bob], "late link")
    assert bob.user_id
    send_control = alice.messenger.send_control
    linked: list[Client] = []

    async def then_link(user: str, payload: bytes, **kw: Any) -> Any:
        got = await send_control(user, payload, **kw)
        if user == bob.user_id and not linked:  # accepted; recorded just after this
            linked.append(await device(b_name, approver=bob))
            await alice.messenger.refresh_peers([user])  # alice learns of it meanwhile
        return got

    monkeypatch.setattr(alice.messenger, "send_control", then_link)
    await alice.rooms.send(rid, "before the new device")
    [bob2] = linked
    await bob2.connect()
    await alice.rooms.send(rid, "after the new device")
    # Sent once the device was there (the gateway asks for it): it reads both.
    assert await all_texts(bob2, rid, 2, timeout=30) == [
        "before the new device",
        "after the new device",
    ]
    assert (await all_texts(bob, rid, 2))[-1] == "after the new device"


async def test_a_gap_during_a_batched_log_read_waits_for_it(device: NewDevice) -> None:
    """On connect a device reads its rooms' logs 100 rooms a call; a room in that call is
    being read until its page is taken, so a push that shows a gap meanwhile does not
    start a read beside it: one read follows the call, from the new cursor."""
    alice = await device(username("ga"), first=True)
    b_name = username("gb")
    bob = await device(b_name, first=True)
    await alice.connect()
    rid = (await alice.rooms.create(f"gap {secrets.token_hex(3)}"))["room_id"]
    await alice.rooms.invite(rid, b_name)
    await bob.rooms.accept(rid)
    for i in range(3):
        await alice.rooms.send(rid, f"batched {i}")
    pushed = msgspec.convert((await bob.api.room_log(rid, 2, 0, 10))["messages"][0], f.RoomMessage)
    assert pushed.seq == 3

    release, entered = asyncio.Event(), asyncio.Event()
    batch, one_room = bob.api.room_logs, bob.api.room_log
    singles: list[int] = []

    async def slow_batch(*args: Any, **kw: Any) -> dict[str, Any]:
        entered.set()
        await release.wait()
        return await batch(*args, **kw)

    async def counted(room_id: str, after: int, *args: Any, **kw: Any) -> dict[str, Any]:
        singles.append(after)
        return await one_room(room_id, after, *args, **kw)

    bob.api.room_logs = slow_batch  # type: ignore[method-assign]
    bob.api.room_log = counted  # type: ignore[method-assign]
    syncing = asyncio.create_task(bob.rooms.sync_rooms())
    await asyncio.wait_for(entered.wait(), 30)
    await bob.rooms.on_room_message(pushed)  # seq 3 with the cursor at 0: a gap
    # Marked to read again after the call; no read of its own was started beside it.
    assert rid in bob.rooms._again and singles == []
    release.set()
    assert await asyncio.wait_for(syncing, 30) == 3
    assert singles == [3]  # once, after the call, from the cursor the call left
    assert bob.rooms.cursor(rid) == 3 and bob.rooms.pending(rid) == 3  # sealed: no key yet
    await bob.connect()  # the inbox brings alice's key: the three open, once each
    assert await all_texts(bob, rid, 3) == [f"batched {i}" for i in range(3)]


async def test_room_errors_are_clear(device: NewDevice) -> None:
    a = await device(username("ea"), first=True)
    b = await device(username("eb"), first=True)
    await a.connect()
    await b.connect()
    room = await a.rooms.create(f"errs {secrets.token_hex(3)}")
    rid = room["room_id"]
    # Inviting yourself.
    with pytest.raises(ApiError) as self_invite:
        await a.rooms.invite(rid, str(a.username))
    assert self_invite.value.code == "cannot_target_self"
    # Sending to a room you left: by name it is not among your rooms any more, by id
    # the server does not show it to you; nothing is stored or queued.
    assert b.username
    await a.rooms.invite(rid, b.username)
    await b.rooms.accept(rid)
    await b.rooms.send(rid, "hello before leaving")
    await b.rooms.leave(rid)
    for ref in (rid, f"#{room['name']}"):
        with pytest.raises(ApiError) as left:
            await b.rooms.send(ref, "am I still here?")
        assert left.value.code == "room_not_found"
    assert b.outbox() == []
    assert [e["text"] for e in b.history(room_conversation(rid))] == ["hello before leaving"]
    # What this device stored of the room it left stays readable by the room's id.
    page = await b.rooms.history(rid)
    assert [e["text"] for e in page["messages"]] == ["hello before leaving"]
    # An empty message and an unknown room.
    with pytest.raises(ParleyError):
        await a.rooms.send(rid, "   ")
    with pytest.raises(ApiError) as unknown:
        await a.rooms.send("#no-such-room-" + secrets.token_hex(3), "hi")
    assert unknown.value.code == "room_not_found"


async def test_a_room_message_before_its_sender_key_is_kept_and_opened_when_the_key_comes(
    device: NewDevice,
) -> None:
    """The normal order (key pairwise first, accepted, then the room message) makes this
    rare; here alice's client is made to send them the other way round."""
    alice = await device(username("pa"), first=True)
    bob = await device(username("pb"), first=True)
    for c in (alice, bob):
        await c.connect()
    room = await alice.rooms.create(f"late {secrets.token_hex(3)}")
    rid = room["room_id"]
    assert bob.username and bob.user_id
    await alice.rooms.invite(rid, bob.username)
    await bob.rooms.accept(rid)
    # Alice's messages name bob's device (device_digest) but go before his key.
    keyed = {member_key(bob.user_id, bob.messenger.keys.known_device_id())}
    too_early = await alice.rooms._encrypt(rid, "older than the key bob will get", [], keyed)
    async with alice.store.transaction() as tx:
        session = alice.rooms.group(tx, rid)
        dist = session.distribution_message()  # the chain at iteration 1
        alice.rooms._put_group(tx, session)
    frame = await alice.rooms._encrypt(rid, "sent before its key", [], keyed)
    for sent in (too_early, frame):
        await alice.messenger.submit(sent, room_conversation(rid))
    await eventually(lambda: asyncio.sleep(0, bob.rooms.pending(rid)), lambda k: k == 2)
    assert bob.history(room_conversation(rid)) == []
    # Bob answers meanwhile: his message is the room's third, after the two he cannot
    # read yet, and his history shows it there once the log numbered it.
    await bob.rooms.send(rid, "bob's answer")
    await eventually(lambda: asyncio.sleep(0, bob.rooms.cursor(rid)), lambda k: k == 3)
    key = encode_control({"t": "skd", "room": rid, "d": b64encode(dist)})
    await alice.messenger.send_control(bob.user_id, key)
    event = await bob.next_event(RoomMessage, timeout=30)
    assert isinstance(event, RoomMessage) and event.text == "sent before its key"
    assert bob.rooms.pending(rid) == 0
    # The one from before the key's point in the chain cannot open: it says so.
    assert [e["text"] for e in bob.history(room_conversation(rid))] == [
        "[sent before this device had the sender's key]",
        "sent before its key",
        "bob's answer",
    ]
    # The key travelled as a control payload: never a chat line in the 1:1 history.
    assert bob.history(alice.user_id or "") == []


async def test_a_peers_deeply_nested_control_payload_is_an_invalid_control(
    device: NewDevice, caplog: pytest.LogCaptureFixture
) -> None:
    """A control payload nested 5,000 deep (past ``json``'s recursion limit) is an
    invalid control: handled, recorded as a control, and the messages after it
    arrive.  With ``json.loads`` the receiver's frame handler raised RecursionError on
    it: the frame's transaction (its ratchet step) was thrown away with an error in
    the log."""
    alice = await device(username("na"), first=True)
    bob = await device(username("nb"), first=True)
    await alice.connect()
    await bob.connect()
    caplog.set_level(logging.WARNING, logger="parley")
    nested = CONTROL_PREFIX + b"[" * 5000 + b"]" * 5000
    await alice.messenger.send_control(bob.user_id or "", nested)
    after = f"after the nested payload {secrets.token_hex(4)}"
    await alice.send(bob.username or "", after, wait="stored")
    msg = await bob.next_event(Message, timeout=30)
    assert isinstance(msg, Message) and msg.text == after
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    # The payload was handled as a control: never a chat line.
    assert [e["text"] for e in bob.history(alice.user_id or "")] == [after]
    assert len(bob.history(CONTROL_CONV)) == 1


async def test_sender_keys_for_rooms_we_are_not_in_are_not_kept(device: NewDevice) -> None:
    """Audit finding: any user with a pairwise session could name made-up room ids in
    sender-key payloads, and each became a group row of its own in the receiver's store,
    for good. Now a key for a room this device does not know is held until the rooms
    service says we are in it: one of a room bob joined is taken (its message reads),
    the made-up ones and one of a real room bob is not in are dropped."""
    alice = await device(username("ua"), first=True)
    bob = await device(username("ub"), first=True)
    for c in (alice, bob):
        await c.connect()
    assert bob.user_id and bob.username
    theirs = (await alice.rooms.create(f"not bob's {secrets.token_hex(3)}"))["room_id"]
    made_up = [secrets.token_hex(12) for _ in range(40)]
    for rid in [*made_up, theirs]:
        dist = GroupSession.create(rid).distribution_message()
        payload = encode_control({"t": "skd", "room": rid, "d": b64encode(dist)})
        await alice.messenger.send_control(bob.user_id, payload)
    # A real room, joined by bob, whose key reaches him before anything else of it.
    room = (await alice.rooms.create(f"bob's {secrets.token_hex(3)}"))["room_id"]
    await alice.rooms.invite(room, bob.username)
    await bob.rooms.accept(room)
    await alice.rooms.send(room, "for the members")
    event = await bob.next_event(RoomMessage, timeout=30)
    assert isinstance(event, RoomMessage) and event.text == "for the members"

    def held() -> list[object]:
        return list(bob.store.read().get("room_keys_held") or [])

    await eventually(lambda: asyncio.sleep(0, held()), lambda h: h == [])
    read = bob.store.read()
    kept = [rid for rid in [*made_up, theirs] if read.get_bytes(bob.rooms._key("group", rid))]
    assert kept == []
    assert read.get_bytes(bob.rooms._key("group", room)) is not None
    assert len(bob.history(CONTROL_CONV)) >= 41  # each handled once, never a chat line


async def test_private_room_at_size_prints_what_keys_and_fan_out_cost(device: NewDevice) -> None:
    """A room of 12 members: the first send (11 pairwise keys), 20 sends on the chain,
    a removal and the rotated send.  Figures are printed (`pytest -s`), not asserted."""
    size, burst = 12, 20
    owner = await device(username("so"), first=True)
    others = [await device(username(f"s{i}-"), first=True) for i in range(size - 1)]
    rid = await private_room(owner, others, "size")

    async def everyone_has(n: int, clients: list[Client]) -> None:
        for c in clients:
            await eventually(
                lambda c=c: asyncio.sleep(0, len(room_texts(c, rid))), lambda k: k >= n, 120
            )

    # The owner's calls to the key directory and the auth service, counted on their
    # way to the real servers: the first send reads every member's list and claims
    # every member's bundles in one request each (docs/keys.md, "Many users at once"),
    # never one per member, and asks no member's username (the member list names them).
    calls: Counter[str] = Counter()
    for name in ("claim_many", "claim_bundles", "device_lists", "user_devices", "user"):
        real = getattr(owner.api, name)

        async def counted(*args: Any, _real: Any = real, _name: str = name, **kw: Any) -> Any:
            calls[_name] += 1
            return await _real(*args, **kw)

        setattr(owner.api, name, counted)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await owner.rooms.send(rid, "first")
    t1 = loop.time()
    assert calls == {"device_lists": 1, "claim_many": 1}
    await everyone_has(1, others)
    t2 = loop.time()
    assert owner.rooms.distributions == size - 1
    for i in range(burst):
        await owner.rooms.send(rid, f"m{i}")
    t3 = loop.time()
    await everyone_has(1 + burst, others)
    t4 = loop.time()
    assert owner.rooms.distributions == size - 1, "keys sent again without a change"
    gone = others.pop()
    assert gone.username
    await owner.rooms.remove(rid, gone.username)
    calls.clear()
    t5 = loop.time()
    await owner.rooms.send(rid, "after")
    t6 = loop.time()
    await everyone_has(2 + burst, others)
    t7 = loop.time()
    assert owner.rooms.rotations == 1
    assert owner.rooms.distributions == (size - 1) + (size - 2)
    # The removal changed the room's version: the lists were read again, in one
    # request; the sessions existed, so nothing was claimed.
    assert calls == {"device_lists": 1}
    assert len(room_texts(gone, rid)) == 1 + burst
    for c in others:
        texts = [e["text"] for e in room_texts(c, rid)]
        assert texts == ["first", *[f"m{i}" for i in range(burst)], "after"]
    print(
        f"\nprivate room of {size} members (one device each), through HAProxy:\n"
        f"  first send with {size - 1} pairwise sender keys: {(t1 - t0) * 1000:.0f} ms; "
        f"decrypted by all {size - 1} others {(t2 - t1) * 1000:.0f} ms later\n"
        f"  {burst} sends on the chain: {(t3 - t2) * 1000 / burst:.0f} ms each "
        f"(to accepted); the last decrypted by all {(t4 - t3) * 1000:.0f} ms later\n"
        f"  after a removal: rotated send with {size - 2} keys {(t6 - t5) * 1000:.0f} ms; "
        f"decrypted by all {(t7 - t6) * 1000:.0f} ms later"
    )


async def test_key_sends_go_as_their_claims_answer_not_when_all_have(
    device: NewDevice, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A private room's first message claims its members' bundles a hundred users a
    request: each member's key send goes as soon as its own request is answered. Here
    three users a request, six members, and the second request held on its way to the
    key directory: the first three members' keys are sent (and accepted) meanwhile;
    once it is let go, the room message follows and all six read it."""
    monkeypatch.setattr(messenger, "CLAIMS_PER_REQUEST", 3)
    owner = await device(username("po"), first=True)
    others = [await device(username(f"p{i}-"), first=True) for i in range(6)]
    rid = await private_room(owner, others, "pipe")
    real, held, requests = owner.api.claim_many, asyncio.Event(), []

    async def claim_many(users: dict[str, Any]) -> Any:
        requests.append(sorted(users))
        if len(requests) == 2:
            await held.wait()
        return await real(users)

    owner.api.claim_many = claim_many  # type: ignore[method-assign]
    send = asyncio.create_task(owner.rooms.send(rid, "piped"))
    await eventually(lambda: asyncio.sleep(0, owner.rooms.distributions), lambda n: n >= 3, 60)
    assert owner.rooms.distributions == 3 and not send.done()
    assert len(requests) == 2, requests  # both asked at once; the second still held
    held.set()
    await asyncio.wait_for(send, 60)
    assert owner.rooms.distributions == 6
    for c in others:
        await eventually(
            lambda c=c: asyncio.sleep(0, [e["text"] for e in room_texts(c, rid)]),
            lambda texts: texts == ["piped"],
            60,
        )


async def test_typing_reaches_the_other_members_through_haproxy(device: NewDevice) -> None:
    a = await device(username("ta"), first=True)
    b = await device(username("tb"), first=True)
    await a.connect()
    await b.connect()
    room = await a.rooms.create(f"typing {secrets.token_hex(3)}")
    rid = room["room_id"]
    assert b.username
    await a.rooms.invite(rid, b.username)
    await b.rooms.accept(rid)
    await a.rooms.typing(f"#{room['name']}")
    started = await b.next_event(Typing, timeout=10)
    assert isinstance(started, Typing)
    assert (started.room_id, started.user_id, started.username, started.typing) == (
        rid, a.user_id, a.username, True,
    )  # fmt: skip
    await a.rooms.typing(rid, False)
    stopped = await b.next_event(Typing, timeout=10)
    assert isinstance(stopped, Typing) and not stopped.typing


async def test_a_private_rooms_mentions_ask_no_server_about_the_text(
    device: NewDevice, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Audit findings: every @word of a private room's message that was not a member's id
    was looked up at the auth service (``GET /auth/v1/users/<word>``): the server learnt
    words of an encrypted message. And a stray "@..." ended the scan: the mentions after
    it were dropped. Now names are matched here against the room's members."""
    alice = await device(username("ma"), first=True)
    bob = await device(username("mb"), first=True)
    rid = await private_room(alice, [bob], "mentions")
    assert bob.username and bob.user_id
    asked: list[str] = []
    resolve = alice.messenger.resolve

    async def counted(name: str) -> tuple[str, str]:
        asked.append(name)
        return await resolve(name)

    monkeypatch.setattr(alice.messenger, "resolve", counted)
    alice.messenger._names.clear()  # names as a fresh process has them: none
    text = f"meet @home at @midnight @... then @{bob.username.upper()}, ok?"
    await alice.rooms.send(rid, text)
    [entry] = await eventually(
        lambda: _async(room_texts(bob, rid)), lambda es: len(es) >= 1, timeout=30
    )
    assert entry["text"] == text and entry["mentions"] == [bob.user_id]
    assert asked == []


async def _async(value: Any) -> Any:
    return value


async def test_a_members_new_safety_number_is_accepted_for_a_room_only_when_asked(
    device: NewDevice, tmp_path: Path, system: System
) -> None:
    """Audit finding: ``parley send '#room' --accept-new-identity`` dropped the flag, so a
    member who reinstalled (a new safety number, never verified) stopped every send to
    the room. Without it the send is refused and nothing is sent; with it, the member's
    new device gets the key and reads the message."""
    from parley import SafetyNumberChanged

    alice = await device(username("ia"), first=True)
    b_name = username("ib")
    bob = await device(b_name, first=True)
    rid = await private_room(alice, [bob], "identity")
    await alice.rooms.send(rid, "before")
    assert await all_texts(bob, rid, 1) == ["before"]
    await bob.close()
    again = Client(
        system.lb, data_dir=tmp_path / "reinstalled", passphrase="test passphrase",
        kdf=CHEAP_KDF, backoff_start=0.1, backoff_max=1.0,
    )  # fmt: skip
    await again.open()
    try:
        await again.login(b_name, PASSWORD, new_identity=True)
        await again.connect()
        with pytest.raises(SafetyNumberChanged):
            await alice.rooms.send(rid, "refused")
        await alice.rooms.send(rid, "accepted", accept_new_identity=True)
        assert await all_texts(again, rid, 1) == ["accepted"]
    finally:
        await again.close()


async def test_a_public_post_whose_answer_was_lost_is_asked_again_and_posted_once(
    device: NewDevice, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A post stored whose answer was lost (a 502 from the proxy, a dropped connection)
    raised, and the caller's retry posted it again with a new id: twice in the
    timeline. Now the SDK asks again with the same client id, which the rooms service
    takes once."""
    from parley import rooms
    from parley.errors import ServerUnavailable

    monkeypatch.setattr(rooms, "POST_RETRY", (0.05, 0.1))
    alice = await device(username("pa"), first=True)
    rid = str((await alice.rooms.create(f"town {secrets.token_hex(3)}", public=True))["room_id"])
    post = alice.api.post_room_message
    calls: list[str] = []

    async def answer_lost(room_id: str, client_id: str, text: str) -> dict[str, Any]:
        calls.append(client_id)
        result = await post(room_id, client_id, text)
        if len(calls) == 1:
            raise ServerUnavailable("the answer was lost")
        return result

    monkeypatch.setattr(alice.api, "post_room_message", answer_lost)
    await alice.rooms.send(rid, "once")
    assert len(calls) == 2 and calls[0] == calls[1]
    page = await alice.rooms.history(rid)
    assert [m["text"] for m in page["messages"]] == ["once"]
