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
from aiohttp.test_utils import TestClient
from parley_contract.envelopes import MentionNotice
from parley_contract.envelopes import encode as encode_notice

from services.common.clients import Topics, kafka_producer, service_db
from services.common.config import Settings
from services.common.state import MONGO, STARTUP
from services.notifier.app import create_app
from services.notifier.state import NOTIFIER
from services.notifier.worker import Notifier
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
    def notifier(self) -> Notifier:
        return self.client.server.app[NOTIFIER]

    async def user(self, **fields: Any) -> dict[str, Any]:
        """A user document as the auth service writes it (the fields the notifier reads)."""
        uid = uuid.uuid4().hex
        doc = {
            "_id": uid, "username": f"u{secrets.token_hex(4)}",
            "email": f"{uid[:12]}@example.test", "blocked": False, **fields,
        }  # fmt: skip
        db = service_db(self.client.server.app[MONGO], self.settings, "auth")
        await db["users"].insert_one(doc)
        return doc

    async def produce(self, *notices: MentionNotice | bytes) -> None:
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
    fields: dict[str, Any] = {
        "room_id": "a" * 24, "room_name": "general", "kind": "public",
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
    await client.server.app[STARTUP].done.wait()
    h = Harness(client, s, stack.maildir)
    await eventually(lambda: _now(h.notifier.consuming.is_set()), bool, timeout=30)
    return h
