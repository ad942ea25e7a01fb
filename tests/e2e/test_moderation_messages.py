"""Moderation of end-to-end encrypted messages through HAProxy, with the SDK as users
run it (docs/moderation-messages.md): a report of a real message is verified and
lands in the admins' queue with the right plaintext; a changed plaintext, a wrong
franking key and someone else's message are refused with their codes; the sender
unsends a message waiting in an offline inbox (gone from Redis and MongoDB, hidden
on the recipient's device), and an admin removes a message already read (hidden
live)."""

from __future__ import annotations

import base64
import json
import secrets
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import orjson
import pytest
import redis.asyncio as aioredis
from parley import Client
from parley.client import Message, MessageRemoved
from parley.errors import ApiError
from parley.store import KdfParams
from parley_contract.envelopes import message_server_id
from pymongo import AsyncMongoClient

from tests.e2e.test_block import create_admin
from tests.support.aio import eventually
from tests.support.stack import System

PASSWORD = "correct horse battery staple"


async def user(system: System, tmp_path: Path, name: str) -> Client:
    c = Client(system.lb, data_dir=tmp_path / name, passphrase="p", kdf=KdfParams(n=2**10),
               backoff_start=0.1)  # fmt: skip
    await c.open()
    username = f"mm{name}{secrets.token_hex(3)}"
    await c.signup(username, PASSWORD, f"{username}@example.test")
    return c


async def admin_token(system: System) -> str:
    username, password = f"admmm{secrets.token_hex(3)}", "admin pass phrase 9x"
    create_admin(system, username, password)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{system.lb}/auth/v1/login",
                             json={"username": username, "password": password}) as resp:  # fmt: skip
            assert resp.status == 200
            return str((await resp.json())["access_token"])


async def copies_of(system: System, server_id: str) -> tuple[int, int]:
    """How many copies of a message the store holds: (Redis hot inbox, MongoDB); its
    tombstones (which name it too) aside."""
    r = aioredis.Redis.from_url(system.stack.cfg.url("redis"))
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(system.stack.cfg.url("mongo"))
    try:
        hot = 0
        async for key in r.scan_iter(match=f"{system.prefix}:hot:*", count=1000):
            items = [json.loads(v) for v in (await r.hgetall(key)).values()]
            hot += sum(i["server_id"] == server_id and i["kind"] == "message" for i in items)
        cold = await mongo[f"{system.prefix}_delivery"]["inbox"].count_documents(
            {"server_id": server_id, "kind": "message"}
        )
        return hot, cold
    finally:
        await r.aclose()
        await mongo.close()


@pytest.mark.timeout(60)
async def test_reports_are_verified_and_removals_reach_every_device(
    system: System, tmp_path: Path
) -> None:
    admin = {"Authorization": f"Bearer {await admin_token(system)}"}
    alice, bob, carol = [await user(system, tmp_path, n) for n in ("alice", "bob", "carol")]
    try:
        assert alice.user_id and bob.user_id and carol.username and bob.username
        await alice.connect()
        await bob.connect()
        said = f"meet me behind the gym {secrets.token_hex(4)}"
        await alice.send(bob.username, said)
        got = await bob.next_event(Message)
        assert isinstance(got, Message) and got.text == said

        # Refusals first (nothing is stored): a changed plaintext, a wrong franking
        # key, and carol reporting a message that was not sent to her.
        entry = next(e for e in bob.history(alice.user_id) if e.get("server_id") == got.server_id)
        body = {**entry["report"], "server_id": got.server_id}

        def b64(raw: bytes) -> str:
            return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

        refused = [
            (bob, {**body, "plaintext": b64(b"meet me at the library")}, "franking_mismatch"),
            (bob, {**body, "plaintext": b64(said.encode()),
                   "franking_key": b64(secrets.token_bytes(32))}, "franking_mismatch"),
            (carol, {**body, "plaintext": b64(said.encode())}, "not_recipient"),
        ]  # fmt: skip
        for who, bad, code in refused:
            with pytest.raises(ApiError) as info:
                await who.api.request("POST", "/delivery/v1/reports", json=bad)
            assert info.value.code == code

        filed = await bob.report(got.server_id[:8])
        assert filed["state"] == "open" and filed["duplicate"] is False
        async with aiohttp.ClientSession(headers=admin) as http:
            url = f"{system.lb}/delivery/v1/admin/reports?state=open&limit=100"
            async with http.get(url) as resp:
                assert resp.status == 200
                queue = (await resp.json())["reports"]
        mine = [r for r in queue if r["server_id"] == got.server_id]
        assert [(r["id"], r["text"], r["sender"], r["reporter"]) for r in mine] == [
            (filed["id"], said, alice.user_id, bob.user_id)
        ]

        # The sender unsends a message still waiting in carol's inbox (she is offline).
        client_id = await alice.send(carol.username, "sent to the wrong person", wait="stored")
        oops = message_server_id(alice.user_id, client_id)
        assert sum(await copies_of(system, oops)) == 1
        await alice.unsend(client_id[:8])
        assert await eventually(lambda: copies_of(system, oops), lambda c: c == (0, 0))
        await carol.connect()
        removed = await carol.next_event(MessageRemoved)
        assert isinstance(removed, MessageRemoved) and removed.server_id == oops
        assert [(e["kind"], e["text"], e["removed_by"]) for e in carol.history(alice.user_id)] == [
            ("removed", "", "sender")
        ]

        # An admin removes the message bob read (the admin sees no plaintext): it is
        # hidden on bob's device at once; alice's sending device marks it too.
        async with aiohttp.ClientSession(headers=admin) as http:
            url = f"{system.lb}/delivery/v1/admin/messages/{got.server_id}/remove"
            async with http.post(url, json={"reason": "reported"}) as resp:
                assert resp.status == 200, await resp.text()
                assert said not in await resp.text()
        gone = await bob.next_event(MessageRemoved)
        assert isinstance(gone, MessageRemoved) and gone.by == "admin"
        entry = next(e for e in bob.history(alice.user_id) if e.get("server_id") == got.server_id)
        assert entry["kind"] == "removed" and entry["text"] == "" and entry["report"] is None
        # Alice's own unsend above may have told her first: wait for this message's.
        while True:
            mine = await alice.next_event(MessageRemoved)
            assert isinstance(mine, MessageRemoved)
            if mine.server_id == got.server_id:
                break
        assert [e["kind"] for e in alice.history(bob.user_id)] == ["removed"]

        # Each admin action is in the one audit log once (read through auth), and no
        # entry holds the reported plaintext.
        async with aiohttp.ClientSession(headers=admin) as http:
            token = admin["Authorization"].removeprefix("Bearer ")
            admin_id = jwt.decode(token, options={"verify_signature": False})["sub"]
            url = f"{system.lb}/auth/v1/admin/audit?service=delivery&actor_id={admin_id}"
            async with http.get(url) as resp:
                assert resp.status == 200
                text = await resp.text()
        mine = sorted((x["action"], x["target_id"]) for x in orjson.loads(text)["entries"])
        assert mine == [("message.remove", got.server_id), ("report.list", "open")]
        assert said not in text
    finally:
        for c in (alice, bob, carol):
            await c.close()
