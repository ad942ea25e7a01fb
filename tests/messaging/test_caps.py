"""Inbox caps: nobody can fill a device's inbox, or the disk, by sending to it (#20).

Before: no cap at all; any account could queue messages for an offline
device until the disk filled. Now a send is refused once the recipient's
device inbox holds ``inbox_max_pending`` items (``inbox_full``) or
``inbox_max_pending_per_sender`` from this sender (``too_many_pending``);
nothing is stored, and room comes back as the device acknowledges.
"""

from __future__ import annotations

from tests.support.users import uid
from tests.support.wsclient import WsClient, send_frame

from .conftest import Messaging


async def _send(client: WsClient, cid: str, to: str) -> dict[str, object]:
    """Send one message; returns the `stored` receipt, or the `error` answering it."""
    await client.send(send_frame(cid, to, "Y2lwaGVy"))
    return await client.expect_any(("stored", "error"), id=cid)


async def test_a_full_inbox_refuses_new_sends_until_the_device_acknowledges(
    messaging: Messaging,
) -> None:
    for pod in (0, 1):
        hub = messaging.hub(pod)
        hub.settings = hub.settings.model_copy(
            update={"inbox_max_pending": 5, "inbox_max_pending_per_sender": 3,
                    "inbox_room_cache_s": 0.0}
        )  # fmt: skip
    alice_id, carol_id, bob_id = uid(), uid(), uid()
    messaging.issuer.users.add(bob_id)
    alice = await messaging.connect(alice_id, pod=0)
    carol = await messaging.connect(carol_id, pod=1)

    for n in range(3):
        assert (await _send(alice, f"a{n}", bob_id))["op"] == "stored"
    refused = await _send(alice, "a3", bob_id)
    assert refused["op"] == "error" and refused["code"] == "too_many_pending"
    assert "limit is 3" in str(refused["message"])
    for n in range(2):
        assert (await _send(carol, f"c{n}", bob_id))["op"] == "stored"
    full = await _send(carol, "c2", bob_id)
    assert full["op"] == "error" and full["code"] == "inbox_full"

    # Nothing refused was stored.
    bob = await messaging.connect(bob_id, pod=1)
    await bob.send({"op": "sync", "id": "s", "after": 0})
    await bob.expect("synced", id="s")
    seqs = [f["seq"] for f in bob.drain() if f["op"] == "message"]
    assert len(seqs) == 5
    # Acknowledging makes room again (the `delivered` receipts come after the counts drop).
    await bob.send({"op": "ack", "seq": max(seqs)})
    for n in range(3):
        await alice.expect("delivered", id=f"a{n}")
    assert (await _send(alice, "a3", bob_id))["op"] == "stored"
    assert (await _send(carol, "c2", bob_id))["op"] == "stored"


async def test_the_expiry_job_deletes_what_waited_too_long(messaging: Messaging) -> None:
    """Delivery's purge job (not a read) deletes items older than inbox_expiry_s."""
    import time

    from services.delivery.state import WORKER

    worker = messaging.delivery.server.app[WORKER]
    alice_id, bob_id = uid(), uid()
    messaging.issuer.users.add(bob_id)
    alice = await messaging.connect(alice_id, pod=0)
    for n in range(3):
        assert (await _send(alice, f"x{n}", bob_id))["op"] == "stored"
    inbox = f"{bob_id}.1"
    # Unacknowledged, they move from the hot inbox to MongoDB (seconds later)...
    await worker.store.persist_due(now=time.time() + worker.settings.hot_persist_after_s + 1)
    # ... where the first two were stored 31 days ago.
    old = time.time() - 31 * 86400
    await worker.store.inbox.update_many(
        {"_id": {"$in": [f"{inbox}|{s:016d}" for s in (1, 2)]}}, {"$set": {"stored_at": old}}
    )
    before = worker.expired._value.get()
    await worker.purge_once()
    assert worker.expired._value.get() - before == 2
    bob = await messaging.connect(bob_id, pod=1)
    await bob.send({"op": "sync", "id": "s", "after": 0})
    await bob.expect("synced", id="s")
    assert [f["seq"] for f in bob.drain() if f["op"] == "message"] == [3]
