"""An ack for a sequence number the inbox never issued is refused and changes nothing (#20)."""

from __future__ import annotations

import pytest
from parley_contract import envelopes as e

from services.delivery import counters
from services.delivery.state import WORKER
from tests.support.users import uid
from tests.support.wsclient import WsClient

from .conftest import Messaging


async def _waiting(client: WsClient, sync_id: str) -> list[dict[str, object]]:
    await client.send({"op": "sync", "id": sync_id, "after": 0})
    await client.expect("synced", id=sync_id)
    return [f for f in client.drain() if f["op"] == "message"]


async def test_an_ack_past_the_last_issued_seq_is_refused_and_nothing_is_acknowledged(
    messaging: Messaging,
) -> None:
    alice_id, bob_id = uid(), uid()
    messaging.issuer.users.add(bob_id)
    alice = await messaging.connect(alice_id, pod=0)
    await alice.send_stored(bob_id, [(f"a{i}", f"bXNn{i}") for i in range(2)])
    bob = await messaging.connect(bob_id, pod=1)
    waiting = await _waiting(bob, "before")
    last = max(int(str(m["seq"])) for m in waiting)

    await bob.send({"op": "ack", "seq": last + 1000, "id": "bogus"})
    err = await bob.expect("error", id="bogus")
    assert err["code"] == "seq_not_issued"
    # Nothing changed: both items still wait, no `delivered` went out.
    assert [m["body"] for m in await _waiting(bob, "after")] == ["bXNn0", "bXNn1"]
    assert [f for f in alice.drain() if f["op"] == "delivered"] == []

    # A real ack after the refused one still works on the same socket.
    await bob.send({"op": "ack", "seq": last, "id": "good"})
    await alice.expect("delivered", id="a1")
    assert await _waiting(bob, "done") == []
    # Repeating an ack (at or below the watermark) is harmless and silent.
    await bob.send({"op": "ack", "seq": last, "id": "again"})
    await bob.send({"op": "ping", "id": "p"})
    await bob.expect("pong", id="p")
    assert [f for f in bob.drain() if f["op"] == "error"] == []


async def test_an_ack_on_an_empty_inbox_is_refused_over_http(messaging: Messaging) -> None:
    user = uid()
    token = messaging.issuer.token(user, did=1)
    resp = await messaging.delivery.post(
        "/delivery/v1/inbox/ack", json={"seq": 5}, headers={"Authorization": f"Bearer {token}"}
    )
    assert resp.status == 409
    assert (await resp.json())["error"]["code"] == "seq_not_issued"
    resp = await messaging.delivery.post(
        "/delivery/v1/inbox/ack", json={"seq": 0}, headers={"Authorization": f"Bearer {token}"}
    )
    assert resp.status == 200
    assert (await resp.json())["acked"] == 0


async def test_a_page_whose_counter_another_seeder_holds_is_service_unavailable(
    messaging: Messaging, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Audit finding: a page of an inbox whose counter another process was seeding (stuck
    on MongoDB after a Redis loss) raised KeyError: 500 ``internal``. It is a
    dependency away: 503 ``service_unavailable``, and the device asks again."""
    monkeypatch.setattr(counters, "SEED_WAIT_S", 0.2)
    user = uid()
    token = messaging.issuer.token(user, did=1)
    store = messaging.delivery.server.app[WORKER].store
    await store.redis.set(store.ctr.seed_lock_key(e.inbox_id(user, 1)), "another", ex=30)
    resp = await messaging.delivery.get(
        "/delivery/v1/inbox", headers={"Authorization": f"Bearer {token}"}
    )
    assert resp.status == 503
    assert (await resp.json())["error"]["code"] == "service_unavailable"
