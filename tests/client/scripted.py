"""A real :class:`Client` (store, messenger, :class:`Connection`'s reader) on a scripted
gateway: no server runs. The scripted socket's frames queued together are read one
after the other without a suspension between them, as aiohttp reads frames already in
its buffer; it answers ``sync`` from its inbox and deletes what an ``ack`` covers, as
the gateway does."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from parley import Client
from parley.connection import Connection
from parley.crypto import (
    AccountKey,
    Binding,
    Device,
    DeviceEntry,
    DeviceList,
    PrekeyBundle,
    Session,
)
from parley.crypto.encoding import b64encode
from parley.peers import PeerState
from parley_contract import frames as f
from parley_contract.envelopes import conversation_id

from tests.client.conftest import CHEAP_KDF
from tests.crypto.helpers import claimed_bundle
from tests.support.aio import eventually

ME, BOB = "a" * 32, "b" * 32


@dataclass
class _Text:
    type: aiohttp.WSMsgType
    data: str


class ScriptedGateway:
    """The socket as the client sees it: an inbox, pushes, sync pages and acks."""

    def __init__(self) -> None:
        self.frames: asyncio.Queue[_Text] = asyncio.Queue()
        self.inbox: dict[int, f.Message] = {}
        self.syncs: list[int] = []
        self.acks: list[int] = []
        self.fail_syncs = False
        self.closed = False

    def push(self, frame: f.ServerFrames) -> None:
        self.frames.put_nowait(_Text(aiohttp.WSMsgType.TEXT, f.encode(frame).decode()))

    def __aiter__(self) -> ScriptedGateway:
        return self

    async def __anext__(self) -> _Text:
        if self.closed and self.frames.empty():
            raise StopAsyncIteration
        return await self.frames.get()

    async def send_str(self, data: str) -> None:
        sent = json.loads(data)
        if sent["op"] == "sync":
            after = int(sent.get("after", 0))
            self.syncs.append(after)
            if self.fail_syncs:
                self.push(f.Error(code="service_unavailable", message="down", id=sent["id"]))
                return
            items = [m for seq, m in sorted(self.inbox.items()) if seq > after]
            for item in items:
                self.push(item)
            last = items[-1].seq if items else after
            self.push(f.Synced(id=sent["id"], last=last, more=False))
        elif sent["op"] == "ack":
            seq = int(sent["seq"])
            self.acks.append(seq)
            for gone in [s for s in self.inbox if s <= seq]:
                del self.inbox[gone]

    async def close(self, **_: object) -> None:
        self.closed = True
        self.frames.put_nowait(_Text(aiohttp.WSMsgType.CLOSE, ""))

    @property
    def close_code(self) -> int | None:
        return 4000 if self.closed else None


@dataclass
class Rig:
    client: Client
    gateway: ScriptedGateway
    bob: Session
    """Bob's session with our device (he started it: its first message is item 100)."""
    bob_device: Device

    def message(self, seq: int, text: str, wire: bytes | None = None) -> f.Message:
        """Bob's message ``seq`` (``text`` in his session, or ``wire``), stored in our
        inbox (not pushed)."""
        body = wire if wire is not None else self.bob.encrypt(text.encode())
        frame = f.Message(
            seq=seq, server_id=f"{seq:032x}", from_=BOB, from_device=1, body=b64encode(body),
            conversation=conversation_id(ME, BOB), sent_at=1_700_000_000_000 + seq,
        )  # fmt: skip
        self.gateway.inbox[seq] = frame
        return frame

    def texts(self) -> list[str]:
        return [str(e.get("text")) for e in self.client.messenger.history(BOB)]

    def last_seq(self) -> int:
        return int(self.client.store.read().get("last_seq") or 0)

    def device(self) -> Device:
        """Our device's private state, as stored."""
        raw = self.client.store.read().get_bytes("device")
        assert raw is not None
        return Device.from_bytes(raw)

    async def bundle(self) -> PrekeyBundle:
        """A bundle of our device with a fresh one-time prekey of each kind, as the key
        directory would hand it out (their private halves stored first)."""
        device = self.device()
        bundle = PrekeyBundle.from_json(claimed_bundle(device, user_id=ME, device_id=1))
        async with self.client.store.transaction() as tx:
            tx.put_bytes("device", device.to_bytes())
        return bundle


def probe(value: Callable[[], Any]) -> Callable[[], Awaitable[Any]]:
    """``value`` as :func:`eventually`'s probe."""

    async def read() -> Any:
        return value()

    return read


@contextlib.asynccontextmanager
async def scripted_client(tmp_path: Path) -> AsyncIterator[Rig]:
    """Alice's client on a scripted socket whose first sync is done, Bob (device 1) a
    contact; Bob's first message (PQXDH, item 100) is pushed and read."""
    client = Client(
        "http://127.0.0.1:9", data_dir=tmp_path, passphrase="test passphrase", kdf=CHEAP_KDF
    )
    await client.open()
    mine, bobs = Device.generate(), Device.generate()
    bundle = PrekeyBundle.from_json(claimed_bundle(mine, user_id=ME, device_id=1))
    bob_key = AccountKey.generate()
    listed = bob_key.sign(DeviceList(BOB, 1, [DeviceEntry.of(1, "phone", bobs.identity)]))
    bob = PeerState(BOB, username="bob")
    bob.trust(b64encode(bob_key.public), listed, AccountKey.generate().public, ME)
    async with client.store.transaction() as tx:
        tx.put("account", {"user_id": ME, "username": "alice", "access_token": "t",
                           "refresh_token": "r"})  # fmt: skip
        tx.put("device_id", 1)
        tx.put_bytes("device", mine.to_bytes())
        tx.put_peer(BOB, bob.to_json())
    client.account.load()
    session, first = Session.initiate(bobs, bundle, b"hello 100", binding=Binding(BOB, 1, ME, 1))

    messenger = client.messenger
    messenger.room_hook = None  # no rooms (and no server to read their logs from)
    messenger.remember_names({BOB: "bob"})
    gateway = ScriptedGateway()

    async def token(_refresh: bool) -> str:
        return "t"

    conn = Connection("ws://scripted/ws", token, messenger._on_frame, on_state=messenger._on_state)
    conn._ws = gateway  # type: ignore[assignment]
    conn._ready.set()
    messenger.conn = conn
    messenger._synced.set()  # this socket's first sync is done
    reader = asyncio.create_task(conn._read(gateway))  # type: ignore[arg-type]
    rig = Rig(client, gateway, session, bobs)
    try:
        gateway.push(rig.message(100, "", first))
        await eventually(probe(rig.texts), lambda texts: texts == ["hello 100"])
        await eventually(probe(lambda: gateway.acks), lambda acks: acks == [100])
        yield rig
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        messenger.conn = None
        await conn.close()
        await client.close()
