"""A digest at real size: 20,000 mentions of one user waiting, each in a message of
4,000 characters (the rooms service's limit). On the real embedded servers and SMTP
sink."""

from __future__ import annotations

import secrets
import time
import tracemalloc
from typing import Any

from services.common.clients import service_db
from services.common.state import MONGO
from services.notifier.store import pending_id
from services.rooms.store import message_id
from tests.notifier.conftest import Harness

N = 20_000
REMOVED = 5  # the first mentions' messages, removed since by a moderator
# Far above what building one digest needs now (a page of mentions at a time, the
# start of each message: under 5 MB measured), far below what it took before (every
# mention and every message's whole text: about 125 MB here, 6 KB a mention).
PEAK_MAX = 20_000_000


def _numbers() -> list[int]:
    """The user's pending numbers: 1..5000 with none missing (one run, forgotten by its
    ``_id`` range), then every tenth missing (mentions made while the user was
    connected: short runs, forgotten by ``$in``), N in all."""
    out = list(range(1, 5001))
    n = 5000
    while len(out) < N:
        n += 1
        if n % 10:
            out.append(n)
    return out


def _message(room: str, n: int, sender: str, user: str, text: str) -> dict[str, Any]:
    """As the rooms service holds it (the first ``REMOVED`` removed by a moderator)."""
    doc = {
        "_id": message_id(room, n), "room": room, "seq": n, "sender": sender,
        "text": text, "mentions": [user], "sent_at": 0,
    }  # fmt: skip
    return {**doc, "marker": "removed_by_moderator"} if n <= REMOVED else doc


def _pending(room: str, n: int, sender: str, user: str, text: str) -> dict[str, Any]:
    """As ``NotifierStore.add_many`` keeps it."""
    doc = {
        "_id": pending_id(user, n), "user": user, "n": n, "room_id": room,
        "room_name": "general", "kind": "public", "sender": sender,
        "excerpt": text[:140], "at": 0, "message_seq": n, "server_id": None,
    }  # fmt: skip
    return doc


async def test_a_digest_of_20000_mentions_reads_a_page_at_a_time(harness: Harness) -> None:
    """Audit finding: building one digest read every pending mention and every message's
    whole text (~6 KB a mention: 123 MB for 20,000; about 70,000 could kill the 512 MiB
    task before ``attempts`` was counted, so the notifier restarted into the same digest
    for ever). Now the e-mail's first 20 mentions are read (the start of their text),
    the rest counted, and every one of them forgotten once it is sent."""
    notifier = harness.notifier
    await notifier.stop()  # this test runs the round itself
    store = notifier.store
    bob, alice = await harness.user(), await harness.user()
    room = secrets.token_hex(12)
    rooms = service_db(harness.app[MONGO], harness.settings, "rooms")["messages"]
    text = f"@{bob['username']} " + "x" * 3990
    numbers = _numbers()
    for i in range(0, N, 2000):
        part = numbers[i : i + 2000]
        await rooms.insert_many([_message(room, n, alice["_id"], bob["_id"], text) for n in part])
        await store.pending.insert_many(
            [_pending(room, n, alice["_id"], bob["_id"], text) for n in part]
        )
    await store.digests.insert_one(
        {"_id": bob["_id"], "due": time.time() - 1, "lo": 1, "hi": numbers[-1], "v": 1}
    )

    tracing = tracemalloc.is_tracing()  # PARLEY_LEAK_TRACE (tests/conftest.py) may trace
    if tracing:
        tracemalloc.reset_peak()
    else:
        tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        assert await notifier.send_due() == 1
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        if not tracing:
            tracemalloc.stop()
    assert peak < PEAK_MAX, f"building one digest took {peak / 1e6:.0f} MB"

    [mail] = await harness.until_mails(bob["email"], 1)
    told = N - REMOVED
    assert mail["Subject"] == f"Parley: {told} new mentions"
    body = mail.get_content().replace("\r\n", "\n")
    assert body.count("mentioned you in general: ") == 20  # the first 20 still standing
    assert f"- and {told - 20} more\n" in body
    excerpt = " ".join(text.split())[:139] + "\u2026"  # cut from the start of the text
    assert f"- @{alice['username']} mentioned you in general: {excerpt}\n" in body
    assert harness.count("digests", "sent") == 1
    assert notifier.metrics.mentions._value.get() == told

    # Every mention the digest stands for is forgotten, listed or only counted.
    left = await store.db.command("count", "pending", query={"user": bob["_id"]})
    assert left["n"] == 0
    assert await store.digests.find_one({"_id": bob["_id"]}) is None


def test_held_mentions_are_runs_of_numbers() -> None:
    from services.notifier.store import Held

    held = Held([(1, 3), (5, 5), (9, 12)], 8)
    assert [n for n in range(0, 14) if n in held] == [1, 2, 3, 5, 9, 10, 11, 12]
    assert 4 not in Held([], 0)
