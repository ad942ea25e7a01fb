"""The SDK's reports, unsend and tombstones against the real system (docs/client.md,
docs/moderation-messages.md): a private room's message is reported and unsent from the
SDK; a tombstone that does not verify hides nothing; what may not be reported or
unsent is refused before anything is sent; the CLI shows a removed message."""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
from pathlib import Path
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from parley import Client, moderation
from parley.cli import _print_entry
from parley.cli_support import console
from parley.client import Message, MessageRemoved, RoomMessage
from parley.crypto.encoding import b64encode
from parley.errors import ParleyError, ServerUnavailable
from parley.events import Event
from parley.moderation import KEPT_KEY
from parley.store import Store
from parley_contract import frames as f
from parley_contract.envelopes import message_server_id, room_server_id

from .conftest import CHEAP_KDF, MakeClient


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
    # A bad signature under a key it knows: dropped. One under a key not published: kept
    # to be tried again (test_a_tombstone_under_a_key_not_published_yet_...).
    assert [k["frame"]["kid"] for k in bob.store.read().get(KEPT_KEY)] == ["no-such-key"]


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


async def test_a_private_room_message_is_reported_and_unsent_by_its_id_alone(
    make_client: MakeClient,
) -> None:
    """Before: without ``peer_id`` only the 1:1 conversations (and notes to self) were
    searched, never a room's (``room:<id>``): ``client.report(id)`` and
    ``client.unsend(id)`` said "No message" for a private room's message, though
    docs/moderation-messages.md says the id is all they need."""
    alice, bob = await make_client(), await make_client()
    assert bob.username
    await alice.connect()
    await bob.connect()
    room = await alice.rooms.create(f"ids {secrets.token_hex(3)}")
    await alice.rooms.invite(room["room_id"], bob.username)
    await bob.rooms.accept(room["room_id"])
    await alice.send(bob.username, "a 1:1 message too")  # another conversation to search
    await bob.next_event(Message)
    text = f"room abuse {secrets.token_hex(4)}"
    await alice.rooms.send(room["room_id"], text)
    got = await bob.next_event(RoomMessage)
    assert isinstance(got, RoomMessage) and got.text == text and got.server_id

    filed = await bob.report(got.server_id[:8])  # as `parley history '#room' --ids` shows
    assert filed["state"] == "open" and filed["duplicate"] is False
    assert (await bob.report(got.server_id))["duplicate"] is True
    with pytest.raises(ParleyError, match="sent"):
        await bob.unsend(got.server_id[:8])  # not his

    await alice.unsend(got.server_id[:8])
    removed = await bob.next_event(MessageRemoved)
    assert isinstance(removed, MessageRemoved) and removed.server_id == got.server_id
    assert removed.peer_id == f"room:{room['room_id']}"


ME = "a1" * 16


def _offline(tmp_path: Path) -> Client:
    client = Client("http://127.0.0.1:9", data_dir=tmp_path, passphrase="p", kdf=CHEAP_KDF)
    client.account.user_id = ME
    return client


def _seed(store: Store, conversations: int, each: int) -> None:
    """``conversations`` contacts and as many private rooms, ``each`` entries in each
    (received and sent, as the messenger and the rooms write them)."""
    with store.transaction_sync() as tx:
        for c in range(conversations):
            peer, room = f"{c:032x}", f"{c:024x}"
            for _ in range(each):
                sid = secrets.token_hex(16)
                tx.add_message(peer, {"dir": "in", "kind": "message", "peer": peer,
                                      "server_id": sid, "text": "x"}, ref=sid)  # fmt: skip
                cid = secrets.token_hex(16)
                tx.add_message(f"room:{room}", {
                    "dir": "out", "kind": "message", "peer": f"room:{room}", "room": room,
                    "client_id": cid, "text": "y",
                }, ref=cid, ids=(room_server_id(room, ME, cid),))  # fmt: skip


async def test_a_message_is_found_by_its_id_reading_only_the_rows_that_share_its_start(
    tmp_path: Path,
) -> None:
    """At size (20,000 entries in 20 conversations): finding one by an 8-character id
    opens a handful of rows (the ids index), not every conversation's history."""
    client = await _offline(tmp_path).open()
    _seed(client.store, 10, 1000)
    room = "f" * 24
    entry = {"dir": "in", "kind": "message", "peer": f"room:{room}", "room": room,
             "server_id": "c0ffee" + "0" * 26, "text": "find me"}  # fmt: skip
    async with client.store.transaction() as tx:
        tx.add_message(f"room:{room}", entry, ref=entry["server_id"])
    opened: list[str] = []
    real = client.store._open

    def counting(sealed: bytes, where: str) -> bytes:
        opened.append(where)
        return real(sealed, where)

    client.store._open = counting  # type: ignore[method-assign]
    assert await client.moderation.find("C0FFEE00") == (entry["server_id"], entry)
    assert (await client.moderation.find("c0ffee00", f"room:{room}"))[1] == entry
    with pytest.raises(ParleyError, match="No message"):
        await client.moderation.find("c0ffee00", "someone else")
    assert len(opened) < 50  # ~3 rows share 4 hex characters among 20,000 ids
    await client.close()


async def test_a_store_written_before_the_ids_index_is_indexed_by_the_first_look_up(
    tmp_path: Path,
) -> None:
    """A schema 2 store (no ``ids``): opened, it is schema 3; the first look-up indexes
    what it held, a sent message by the server id its client id gives too."""
    client = await _offline(tmp_path).open()
    room, cid = "e" * 24, "b7" * 16
    sent = {"dir": "out", "kind": "message", "peer": "bob", "client_id": cid, "text": "hi"}
    got = {"dir": "in", "kind": "message", "peer": f"room:{room}", "room": room,
           "server_id": "d00d" + "1" * 28, "text": "yo"}  # fmt: skip
    async with client.store.transaction() as tx:
        tx.add_message("bob", sent, ref=cid)
        tx.add_message(f"room:{room}", got, ref=str(got["server_id"]))
    await client.close()
    db = sqlite3.connect(tmp_path / "store.db")  # what schema 2 looked like
    db.executescript("DROP TABLE ids; UPDATE meta SET value = CAST('2' AS BLOB) "
                     "WHERE key = 'schema';")  # fmt: skip
    db.close()
    client = await _offline(tmp_path).open()
    assert client.store.read().ids_pending()
    sid = message_server_id(ME, cid)
    found: dict[str, Any] = dict((await client.moderation.find(sid[:8]))[1])
    assert found == sent
    assert not client.store.read().ids_pending()
    assert (await client.moderation.find("d00d11"))[0] == got["server_id"]
    assert (await client.moderation.find(cid[:6]))[0] == sid  # its client id
    await client.close()


async def test_a_tombstone_under_a_key_not_published_yet_is_kept_and_applied_later(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rolling deploy of delivery: the tombstone is signed with the new key, and the
    task that answers ``/moderation/keys`` (twice: once more for the unknown kid) is an
    old one without it. Before: the tombstone counted as forged, was acknowledged and
    dropped, and the removed message stayed on the device for good. Now it is kept,
    the inbox reads on, and it is applied once the keys list the new key."""
    alice, bob, got = await _one_message(make_client, "take this back")
    request = bob.api.request
    old_task = [True]  # the keys come from a task without any key yet

    async def rolling(method: str, path: str, **kwargs: Any) -> Any:
        answer = await request(method, path, **kwargs)
        if path == "/delivery/v1/moderation/keys" and old_task[0]:
            return {"keys": []}
        return answer

    monkeypatch.setattr(bob.api, "request", rolling)
    monkeypatch.setattr(bob.moderation, "retry_wait", (0.2, 0.5))
    monkeypatch.setattr(moderation, "TOMBSTONE_TRIES", 1000)  # as long as the test needs
    seen: list[Event] = []
    bob.add_listener(lambda e: seen.append(e) if isinstance(e, MessageRemoved) else None)
    await alice.unsend("last-out", str(bob.user_id))
    await alice.send(str(bob.username), "after the tombstone")  # the inbox reads on
    after = await bob.next_event(Message, timeout=30)
    assert isinstance(after, Message) and after.text == "after the tombstone"
    assert not seen and bob.moderation.kept() == 1
    entry = next(e for e in bob.history(alice.user_id) if e.get("server_id") == got.server_id)
    assert entry["kind"] == "message"
    old_task[0] = False  # the deploy is done
    removed = await bob.next_event(MessageRemoved, timeout=30)
    assert isinstance(removed, MessageRemoved) and removed.server_id == got.server_id
    entry = next(e for e in bob.history(alice.user_id) if e.get("server_id") == got.server_id)
    assert (entry["kind"], entry["text"]) == ("removed", "")
    assert bob.moderation.kept() == 0


async def test_a_tombstone_no_published_key_verifies_is_dropped_after_its_tries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kept for a key never published, a tombstone is tried ``TOMBSTONE_TRIES`` times
    (each after reading the keys, each when due), or until ``TOMBSTONE_KEEP_MS`` after
    it came, then dropped: a garbage one does not stay for ever. Keys that cannot be
    read count no try. A bad signature under a known key is dropped at once."""
    client = await _offline(tmp_path).open()
    clock = _Clock(monkeypatch)
    reads: list[str] = []

    async def keys(method: str, path: str, **kwargs: Any) -> Any:
        reads.append(path)
        if len(reads) == 1:
            raise ServerUnavailable("delivery")
        return {"keys": [{"kid": "k1", "public_key": "A" * 43}]}

    monkeypatch.setattr(client.api, "request", keys)
    monkeypatch.setattr(moderation, "TOMBSTONE_TRIES", 3)
    frame = _garbage()
    async with client.store.transaction() as tx:
        client.moderation.keep(tx, frame)
        client.moderation.keep(tx, frame)  # delivered again: kept once
        client.moderation.keep(tx, msgspec.convert(
            {**msgspec.to_builtins(frame), "kid": "k1"}, f.Tombstone))  # fmt: skip
    assert client.moderation.kept() == 2

    def take(tx: Any, frame: f.Tombstone) -> None:
        raise AssertionError("nothing verifies")

    clock.at(30)
    assert not await client.moderation.retry_kept(take)  # the keys cannot be read
    assert [k["tries"] for k in client.store.read().get(KEPT_KEY)] == [0, 0]
    await client.moderation.retry_kept(take)  # k1 is known: its bad signature drops it
    assert [(k["frame"]["kid"], k["tries"]) for k in client.store.read().get(KEPT_KEY)] == [
        ("garbage", 1)
    ]
    clock.at(90)
    await client.moderation.retry_kept(take)
    clock.at(210)
    await client.moderation.retry_kept(take)
    assert client.moderation.kept() == 0 and client.store.read().get(KEPT_KEY) is None
    # Too old: dropped at its first round, due or not, the keys read or not.
    for answer in (ServerUnavailable("delivery"), {"keys": []}):
        async with client.store.transaction() as tx:
            client.moderation.keep(tx, frame)
            tx.put(KEPT_KEY, [{**tx.get(KEPT_KEY)[0], "first": 0}])

        async def old_keys(method: str, path: str, answer: Any = answer, **kwargs: Any) -> Any:
            if isinstance(answer, Exception):
                raise answer
            return answer

        monkeypatch.setattr(client.api, "request", old_keys)
        await client.moderation.retry_kept(take)
        assert client.moderation.kept() == 0
    await client.close()


class _Clock:
    """``moderation._now_ms``, moved by the test (seconds after its start)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.ms = 1_800_000_000_000
        self.start = self.ms
        monkeypatch.setattr(moderation, "_now_ms", lambda: self.ms)

    def at(self, seconds: float) -> None:
        self.ms = self.start + int(seconds * 1000)


def _garbage(kid: str = "garbage", signature: str = "A" * 86) -> f.Tombstone:
    return f.Tombstone(seq=1, server_id="ab" * 16, from_="x", conversation="dm:x:y",
                       by="admin", at=1, kid=kid, signature=signature)  # fmt: skip


async def test_a_kept_tombstone_counts_one_try_per_wait_however_often_the_client_connects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every connect (and sync) tries the kept tombstones at once. Before: each of
    those rounds counted a try, so `parley inbox` run each minute (or a flaky
    connection) used the 12 tries up in ~12 minutes and the removal was lost if the
    rolling deploy lasted longer. Now a round counts a try only for a tombstone that is
    due (30 s after it came, then the wait doubling to 10 min): the 12 tries take
    ~1.4 h of waits however often the client connects. A round before it is due still
    reads the keys and takes the tombstone once its key is published."""
    client = await _offline(tmp_path).open()
    clock = _Clock(monkeypatch)
    published: list[dict[str, str]] = []
    reads: list[str] = []

    async def keys(method: str, path: str, **kwargs: Any) -> Any:
        reads.append(path)
        return {"keys": list(published)}

    monkeypatch.setattr(client.api, "request", keys)
    taken: list[str] = []

    def take(tx: Any, frame: f.Tombstone) -> None:
        taken.append(frame.server_id)

    async with client.store.transaction() as tx:
        client.moderation.keep(tx, _garbage())
    tries = lambda: [k["tries"] for k in client.store.read().get(KEPT_KEY) or []]  # noqa: E731
    for _ in range(20):  # twenty connects at once: nothing due yet
        await client.moderation.retry_kept(take)
    assert tries() == [0] and len(reads) == 20
    minute = 0
    while client.moderation.kept():  # a connect every minute
        minute += 1
        clock.at(minute * 60)
        for _ in range(3):  # and a reconnect or two right after it
            await client.moderation.retry_kept(take)
        if minute == 12:
            assert tries() == [4]  # at 1, 2, 4 and 8 minutes (before: 12, dropped)
        assert minute < 200
    # Its 12 waits: 30 s, 1, 2, 4, 8 min, then 10 min seven times (85.5 min), each
    # counted at the first connect past it.
    assert 86 <= minute <= 100
    # A key published between two due times: the next round (a connect) takes it.
    signing = Ed25519PrivateKey.generate()
    public = signing.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    unsigned = _garbage(kid="k2")
    signature = signing.sign(f.tombstone_signed_bytes(
        kid="k2", server_id=unsigned.server_id, sender=unsigned.from_,
        conversation=unsigned.conversation, by=unsigned.by, at=unsigned.at))  # fmt: skip
    async with client.store.transaction() as tx:
        client.moderation.keep(tx, _garbage(kid="k2", signature=b64encode(signature)))
    clock.at(minute * 60 + 35)
    await client.moderation.retry_kept(take)
    assert tries() == [1] and not taken
    published.append({"kid": "k2", "public_key": b64encode(public)})
    clock.at(minute * 60 + 40)  # not due (35 + 60 s)
    await client.moderation.retry_kept(take)
    assert taken == [unsigned.server_id] and client.moderation.kept() == 0
    await client.close()


@pytest.mark.parametrize(
    "answer",
    [{"keys": None}, [{"kid": "k1"}], {"keys": [{"public_key": "A" * 43}]}, {"keys": [7]}],
    ids=["keys-null", "a-json-array", "a-key-without-kid", "a-key-no-object"],
)
async def test_a_keys_answer_that_does_not_read_still_counts_the_tries_and_the_age(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answer: Any
) -> None:
    """A 200 whose body is not a list of keys. Before: reading it raised TypeError,
    KeyError or AttributeError out of the round, no try was counted and the age check
    never ran: the tombstone was kept (and every round read the keys) for ever. Now
    the round goes on with the keys already known: the try counts, and one past its
    age is dropped."""
    client = await _offline(tmp_path).open()
    clock = _Clock(monkeypatch)

    async def keys(method: str, path: str, **kwargs: Any) -> Any:
        return answer

    monkeypatch.setattr(client.api, "request", keys)

    def take(tx: Any, frame: f.Tombstone) -> None:
        raise AssertionError("nothing verifies")

    async with client.store.transaction() as tx:
        client.moderation.keep(tx, _garbage())
    clock.at(31)
    assert await client.moderation.retry_kept(take)
    assert [k["tries"] for k in client.store.read().get(KEPT_KEY)] == [1]
    clock.at(moderation.TOMBSTONE_KEEP_MS / 1000)  # a day after it came
    await client.moderation.retry_kept(take)
    assert client.moderation.kept() == 0 and client.store.read().get(KEPT_KEY) is None
    await client.close()


async def test_the_retry_task_counts_tries_when_due_not_per_wake(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The task that tries the kept tombstones (``retry_soon``): woken at once by each
    connect, it reads the keys but counts no try before one is due; its own timer
    follows the tombstones' due times, so they are still tried and dropped."""
    client = await _offline(tmp_path).open()
    reads: list[str] = []
    read = asyncio.Event()

    async def keys(method: str, path: str, **kwargs: Any) -> Any:
        reads.append(path)
        read.set()
        return {"keys": []}

    monkeypatch.setattr(client.api, "request", keys)
    monkeypatch.setattr(client.moderation, "retry_wait", (1.0, 1.0))
    monkeypatch.setattr(moderation, "TOMBSTONE_TRIES", 2)

    def take(tx: Any, frame: f.Tombstone) -> None:
        raise AssertionError("nothing verifies")

    tasks: list[asyncio.Task[Any]] = []

    def spawn(coro: Any) -> asyncio.Task[Any]:
        tasks.append(asyncio.ensure_future(coro))
        return tasks[-1]

    async with client.store.transaction() as tx:
        client.moderation.keep(tx, _garbage())
    for _ in range(5):  # five connects in a row
        read.clear()
        client.moderation.retry_soon(spawn, take, now=True)
        await asyncio.wait_for(read.wait(), 10)
    assert len(tasks) == 1 and len(reads) == 5
    assert [k["tries"] for k in client.store.read().get(KEPT_KEY)] == [0]
    await asyncio.wait_for(tasks[0], 20)  # it ends once none is kept
    assert client.moderation.kept() == 0
    assert len(reads) == 5 + 2  # then its two tries, by the timer
    await client.close()
