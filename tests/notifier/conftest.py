"""The notifier in-process on the real embedded servers (MongoDB, Kafka, Redis, the
SMTP sink), users in the auth service's layout, notices produced as the rooms service
produces them."""

from __future__ import annotations

import email
import email.policy
import secrets
import time
import uuid
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from parley_contract.envelopes import MentionNotice
from parley_contract.envelopes import encode as encode_notice

from services.common.clients import Topics, kafka_producer, service_db
from services.common.config import Settings
from services.common.state import MONGO, STARTUP
from services.notifier.app import create_app
from services.notifier.state import NOTIFIER
from services.notifier.worker import Notifier
from services.rooms.store import message_id
from tests.support.aio import eventually
from tests.support.messaging import Messaging, messaging
from tests.support.stack import Stack

__all__ = ["Messaging", "messaging"]

# Short enough for a test, long enough that several notices land in one interval.
INTERVAL_S = 2.0


@dataclass
class Harness:
    client: TestClient[web.Request, web.Application]
    settings: Settings
    maildir: Path

    @property
    def app(self) -> web.Application:
        server = self.client.server
        assert isinstance(server, TestServer)
        return server.app

    @property
    def notifier(self) -> Notifier:
        return self.app[NOTIFIER]

    async def user(self, **fields: Any) -> dict[str, Any]:
        """A user document as the auth service writes it (the fields the notifier reads)."""
        uid = uuid.uuid4().hex
        doc = {
            "_id": uid, "username": f"u{secrets.token_hex(4)}",
            "email": f"{uid[:12]}@example.test", "blocked": False, **fields,
        }  # fmt: skip
        db = service_db(self.app[MONGO], self.settings, "auth")
        await db["users"].insert_one(doc)
        return doc

    async def message(self, *notices: MentionNotice) -> None:
        """Write each public room's mention's message into the rooms service's
        ``messages``, as that service holds it (its text: the notice's excerpt): the
        rooms service writes a message before its notice, and the notifier reads it
        again when the digest is sent (a removed one is not mailed)."""
        db = service_db(self.app[MONGO], self.settings, "rooms")
        for n in notices:
            if n.message_seq is None:
                continue
            doc = {
                "_id": message_id(n.room_id, n.message_seq), "room": n.room_id,
                "seq": n.message_seq, "sender": n.sender, "text": n.excerpt,
                "mentions": [n.user], "sent_at": n.at,
            }  # fmt: skip
            await db["messages"].replace_one({"_id": doc["_id"]}, doc, upsert=True)

    async def keep(self, notices: list[MentionNotice], interval_s: float) -> list[bool]:
        """Keep ``notices`` as the consumer does (``add_many``), their messages written."""
        await self.message(*notices)
        return await self.notifier.store.add_many(notices, interval_s)

    async def produce(self, *notices: MentionNotice | bytes) -> None:
        await self.message(*(n for n in notices if isinstance(n, MentionNotice)))
        producer = kafka_producer(self.settings)
        await producer.start()
        try:
            for n in notices:
                value = n if isinstance(n, bytes) else encode_notice(n)
                key = b"x" if isinstance(n, bytes) else n.user.encode()
                await producer.send_and_wait(Topics(self.settings).notifications, value, key=key)
        finally:
            await producer.stop()

    def mails(self, to: str) -> list[EmailMessage]:
        out = []
        for path in sorted(self.maildir.glob(f"*-{to}.eml")):
            msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            assert isinstance(msg, EmailMessage)
            out.append(msg)
        return out

    async def until_mails(self, to: str, count: int, timeout: float = 20) -> list[EmailMessage]:
        return await eventually(
            lambda: _now(self.mails(to)), lambda ms: len(ms) >= count, timeout=timeout
        )

    def count(self, metric: str, label: str) -> float:
        counter = getattr(self.notifier.metrics, metric)
        return float(counter.labels(label)._value.get())


async def _now(value: Any) -> Any:
    return value


def notice(user: str, n: int, sender: str, **kw: Any) -> MentionNotice:
    """A public room's mention (unless ``kw`` says otherwise), in a room of its own: its
    message (``Harness.message``) is no other notice's."""
    fields: dict[str, Any] = {
        "room_id": secrets.token_hex(12), "room_name": "general", "kind": "public",
        "excerpt": f"message {n} for you", "at": int(time.time() * 1000), "message_seq": n,
    }  # fmt: skip
    fields.update(kw)
    return MentionNotice(user=user, n=n, sender=sender, **fields)


@pytest.fixture
async def harness(stack: Stack, settings: Settings, make_client: Any) -> Harness:
    s = settings.model_copy(
        update={"notifier_digest_interval_s": INTERVAL_S, "notifier_tick_s": 0.1}
    )
    client = await make_client(await create_app(s))
    h = Harness(client, s, stack.maildir)
    await h.app[STARTUP].done.wait()
    await eventually(lambda: _now(h.notifier.consuming.is_set()), bool, timeout=30)
    return h
