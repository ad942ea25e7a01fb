"""`delivered` receipts on acknowledgement (real MongoDB and Redis).

A 1:1 message's sender hears when each copy is acknowledged; a private room's
sender does not (docs/rooms.md: room messages get `accepted` only). The room
copy must be recognised whether it was still hot or already persisted to
MongoDB: a persisted room copy once came back without its ``room`` field and
looked like a 1:1 message, so a room's sender got a receipt per member, a flood
that closed its socket as a slow consumer (the fan-out benchmark's 4008).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from services.delivery.handlers import Inbox
from services.delivery.store import DeliveryStore
from tests.delivery.conftest import item


@pytest.mark.parametrize("persisted", [False, True], ids=["hot", "persisted"])
async def test_only_direct_messages_earn_a_delivered_receipt(
    store: DeliveryStore, persisted: bool
) -> None:
    direct = item("bob.1", 1, sender="alice", cid="d1")
    room = {**item("bob.1", 2, sender="alice", cid="room:r1:g1"), "room": "r1",
            "conversation": "room:" + "a" * 24}  # fmt: skip
    await store.store_hot([direct, room])
    if persisted:
        await store.persist_due(now=time.time() + store.settings.hot_persist_after_s + 1)
        assert await store.inbox.count_documents({"inbox": "bob.1"}) == 2
    published: list[Any] = []

    async def capture(frames: list[Any]) -> int:
        published.extend(frames)
        return len(frames)

    store.publish = capture  # type: ignore[method-assign]
    inbox = Inbox(store)
    assert await inbox.ack("bob.1", 2) == 2
    assert [(user, frame.id) for user, _, frame in published] == [("alice", "d1")]
