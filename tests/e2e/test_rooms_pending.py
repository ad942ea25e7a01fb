"""A private room's messages waiting for their sender key past ``MAX_PENDING``, end to
end through HAProxy (docs/client.md, "Rooms"): none is lost; those not kept are read
again from the room's log when the key comes. The logic with a stand-in log is in
tests/client/test_room_pending.py."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from parley import Client
from parley.crypto.encoding import b64encode
from parley.messenger import encode_control
from parley.rooms import MAX_PENDING, member_key, room_conversation

from tests.client.conftest import CHEAP_KDF, PASSWORD
from tests.support.aio import eventually
from tests.support.stack import System


@pytest.fixture
async def two(system: System, tmp_path: Path) -> AsyncIterator[tuple[Client, Client]]:
    clients: list[Client] = []
    for who in ("pa", "pb"):
        name = f"{who}{secrets.token_hex(4)}"
        client = Client(
            system.lb, data_dir=tmp_path / name, passphrase="test passphrase", kdf=CHEAP_KDF,
            backoff_start=0.1, backoff_max=1.0,
        )  # fmt: skip
        await client.open()
        clients.append(client)
        await client.signup(name, PASSWORD, f"{name}@example.test")
    yield clients[0], clients[1]
    for client in clients:
        await client.close()


async def test_more_messages_than_are_kept_before_their_key_all_open_when_it_comes(
    two: tuple[Client, Client],
) -> None:
    """Review finding: 1,005 messages of one chain before its key reached bob: his
    client kept the newest 1,000 and moved its cursor past them all, so the first
    five were lost for good, with nothing shown. (alice's client is made to send the
    key after the messages, as in test_rooms_client's late-key test.)"""
    alice, bob = two
    for c in (alice, bob):
        await c.connect()
    rid = (await alice.rooms.create(f"flood {secrets.token_hex(3)}"))["room_id"]
    assert bob.username and bob.user_id
    await alice.rooms.invite(rid, bob.username)
    await bob.rooms.accept(rid)

    keyed = {member_key(bob.user_id, bob.messenger.keys.known_device_id())}
    async with alice.store.transaction() as tx:
        session = alice.rooms.group(tx, rid)
        dist = session.distribution_message()  # the chain before its first message
        alice.rooms._put_group(tx, session)
    total = MAX_PENDING + 5
    texts = [f"m{i}" for i in range(1, total + 1)]
    for text in texts:
        frame = await alice.rooms._encrypt(rid, text, [], keyed)
        await alice.messenger.submit(frame, room_conversation(rid), wait=None)

    async def state() -> tuple[int, int]:
        return bob.rooms.cursor(rid), bob.rooms.pending(rid)

    # Bob has them all as far as the room's log goes, sealed: no key yet.
    assert await eventually(state, lambda s: s[0] == total, timeout=90) == (total, MAX_PENDING)
    assert bob.history(room_conversation(rid)) == []

    key = encode_control({"t": "skd", "room": rid, "d": b64encode(dist)})
    await alice.messenger.send_control(bob.user_id, key)

    async def missing() -> list[str]:
        await asyncio.sleep(0)
        shown = {e["text"] for e in bob.history(room_conversation(rid))}
        return [t for t in texts if t not in shown]

    assert await eventually(missing, lambda m: m == [], timeout=60) == []
    entries = bob.history(room_conversation(rid))
    assert [e["text"] for e in entries] == texts  # once each, in the room's order
    assert all(e["kind"] == "message" for e in entries)
    assert (bob.rooms.pending(rid), bob.rooms.unkept(rid), bob.rooms.cursor(rid)) == (
        0, None, total,
    )  # fmt: skip
