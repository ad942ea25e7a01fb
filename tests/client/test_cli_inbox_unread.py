"""`parley inbox` shows every reply that came after the conversation was last read,
whatever the device's clock says, and reads only the new rows of a long conversation.

Before, "read" was the ``at`` of the conversation's last entry: this device's clock
for what it sent, the server's for what it received. A clock two minutes ahead made
the user's own last message "later" than the reply that came after it, and the reply
was never shown as unread. Read is now a place in the store's order of arrival.
"""

from __future__ import annotations

import time
import types
from typing import Any

import parley.messenger as messenger_module
import pytest
from parley.client import Message
from parley.store import Store

from tests.client.conftest import MakeClient


class _Ahead(types.SimpleNamespace):
    """The ``time`` module of a device whose clock runs two minutes ahead of the server."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def time(self) -> float:
        return time.time() + 120


async def test_a_reply_after_a_message_sent_with_a_clock_ahead_is_unread(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = await make_client()
    bob = await make_client()
    assert alice.username and bob.username and alice.user_id
    await alice.connect()
    await bob.connect()
    await alice.send(bob.username, "hi bob", wait="stored")
    await bob.next_event(Message)

    monkeypatch.setattr(messenger_module, "time", _Ahead())  # bob's clock: 2 min ahead
    await bob.send(alice.username, "bye, talk later", wait="accepted")
    monkeypatch.setattr(messenger_module, "time", time)
    await bob.mark_read(alice.user_id)  # as `parley chat` on leaving, `parley inbox`
    conv = next(c for c in bob.conversations() if c["user_id"] == alice.user_id)
    assert conv["unread"] == []

    await alice.send(bob.username, "see you at 5!", wait="stored")
    await bob.next_event(Message)
    conv = next(c for c in bob.conversations() if c["user_id"] == alice.user_id)
    assert [e["text"] for e in conv["unread"]] == ["see you at 5!"]
    assert conv["last"]["text"] == "see you at 5!"
    await bob.mark_read(alice.user_id)
    conv = next(c for c in bob.conversations() if c["user_id"] == alice.user_id)
    assert conv["unread"] == []


async def test_unread_in_a_long_conversation_opens_only_the_new_rows(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tens of thousands of entries: listing the conversations opens the newest entry and
    what came after the read marker, not the whole history (as it did before)."""
    bob = await make_client()
    peer = "f" * 32
    async with bob.store.transaction() as tx:
        tx.put_peer(peer, {"user_id": peer, "username": "alice"})
        for n in range(30_000):
            entry = {"dir": "in" if n % 2 else "out", "text": f"m{n}", "at": n}
            tx.add_message(peer, entry, ref=f"m{n}")
    await bob.mark_read(peer)
    async with bob.store.transaction() as tx:
        # Later, by arrival, though its time is the earliest of all (another clock).
        tx.add_message(peer, {"dir": "in", "text": "late", "at": 1}, ref="late")

    opened = 0
    real = Store._open

    def counted(self: Store, sealed: bytes, where: str) -> bytes:
        nonlocal opened
        if where.startswith("messages:"):
            opened += 1
        return real(self, sealed, where)

    monkeypatch.setattr(Store, "_open", counted)
    conv = next(c for c in bob.conversations() if c["user_id"] == peer)
    assert [e["text"] for e in conv["unread"]] == ["late"]
    assert conv["last"]["text"] == "late"
    assert opened <= 3, opened
