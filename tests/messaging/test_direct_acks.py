"""Acks the gateway writes into the hot inbox itself, and those it leaves to delivery
(services/gateway/acks.py; docs/delivery.md, "Acks"), against the real embedded
Redis, Kafka and MongoDB servers."""

from __future__ import annotations

import time
from typing import Any

from parley_contract.envelopes import inbox_id
from pymongo import AsyncMongoClient

from services.common.inbox import counter_key, hot_key
from services.common.routing import pending_key
from services.common.state import REGISTRY
from services.delivery.state import WORKER
from services.gateway.acks import HOT_ACK_MAX
from tests.delivery.conftest import item
from tests.support.aio import eventually
from tests.support.users import uid
from tests.support.wsclient import WsClient

from .conftest import Messaging


def _gateway_acks(messaging: Messaging, pod: int) -> dict[str, float]:
    registry = messaging.gateways[pod].server.app[REGISTRY]
    return {
        path: registry.get_sample_value("parley_gateway_acks_total", {"path": path}) or 0.0
        for path in ("direct", "delivery")
    }


def _delivery_calls(messaging: Messaging) -> float:
    """Acks delivery's HTTP API was asked for (a gateway's batches), so far."""
    registry = messaging.delivery.server.app[REGISTRY]
    return registry.get_sample_value("parley_delivery_ack_batch_size_sum") or 0.0


async def _waiting(client: WsClient, sync_id: str) -> list[dict[str, Any]]:
    await client.send({"op": "sync", "id": sync_id, "after": 0, "limit": 1000})
    await client.expect("synced", id=sync_id)
    return [f for f in client.drain() if f["op"] == "message"]


async def _two(messaging: Messaging, n: int) -> tuple[WsClient, WsClient, list[int]]:
    """alice (pod 0) sent bob (pod 1) ``n`` messages, which bob's socket received (its
    device inbox: :func:`inbox_of`)."""
    alice_id, bob_id = uid(), uid()
    messaging.issuer.users.add(bob_id)
    alice = await messaging.connect(alice_id, pod=0)
    bob = await messaging.connect(bob_id, pod=1)
    await alice.send_stored(bob_id, [(f"m{i}", f"Ym9k{i}") for i in range(n)])
    seqs = [int((await bob.expect("message", body=f"Ym9k{i}"))["seq"]) for i in range(n)]
    INBOXES[id(bob)] = inbox_id(bob_id, 1)
    return alice, bob, seqs


INBOXES: dict[int, str] = {}


def inbox_of(client: WsClient) -> str:
    return INBOXES[id(client)]


async def test_an_ack_of_hot_items_is_written_by_the_gateway_and_earns_receipts(
    messaging: Messaging,
) -> None:
    alice, bob, seqs = await _two(messaging, 3)
    before, calls = _gateway_acks(messaging, 1), _delivery_calls(messaging)
    await bob.send({"op": "ack", "seq": max(seqs), "id": "a"})
    for i in range(3):
        await alice.expect("delivered", id=f"m{i}")
    assert await _waiting(bob, "after") == []
    after = _gateway_acks(messaging, 1)
    assert after["direct"] == before["direct"] + 1
    assert after["delivery"] == before["delivery"]
    assert _delivery_calls(messaging) == calls  # delivery was not asked
    # The waiting counts went down with the items (the caps and the depth read them).
    store = messaging.delivery.server.app[WORKER].store
    prefix = messaging.settings.redis_prefix
    assert await store.redis.hgetall(pending_key(prefix, inbox_of(bob))) == {}


async def test_a_range_holding_a_persisted_item_goes_to_delivery_which_deletes_it(
    messaging: Messaging,
) -> None:
    worker = messaging.delivery.server.app[WORKER]
    worker.store.settings = worker.store.settings.model_copy(update={"hot_persist_after_s": 0})
    alice, bob, seqs = await _two(messaging, 2)
    await worker.persist_once()  # both now in MongoDB only
    inbox = inbox_of(bob)
    assert await worker.store.inbox.count_documents({"inbox": inbox}) == 2
    worker.store.settings = worker.store.settings.model_copy(update={"hot_persist_after_s": 3600})
    before, calls = _gateway_acks(messaging, 1), _delivery_calls(messaging)
    await bob.send({"op": "ack", "seq": max(seqs), "id": "a"})
    for i in range(2):
        await alice.expect("delivered", id=f"m{i}")
    assert await worker.store.inbox.count_documents({"inbox": inbox}) == 0
    assert _gateway_acks(messaging, 1)["delivery"] == before["delivery"] + 1
    assert _delivery_calls(messaging) == calls + 1
    assert await _waiting(bob, "after") == []


async def test_an_ack_over_persisted_items_while_mongodb_is_down_is_finished_and_counted(
    messaging: Messaging,
) -> None:
    """Bob acknowledges two items persisted to MongoDB while MongoDB is down: delivery
    leaves their ids in Redis (docs/delivery.md, "Acks"). The persister's next pass
    once MongoDB answers deletes them, sends alice the `delivered` receipts, and counts
    them in parley_delivery_acked_total like any other ack."""
    app = messaging.delivery.server.app
    worker = app[WORKER]
    worker.store.settings = worker.store.settings.model_copy(update={"hot_persist_after_s": 0})
    alice, bob, seqs = await _two(messaging, 2)
    await worker.persist_once()  # both now in MongoDB only
    worker.store.settings = worker.store.settings.model_copy(update={"hot_persist_after_s": 3600})
    acked = app[REGISTRY].get_sample_value("parley_delivery_acked_total") or 0.0
    up = worker.store.inbox
    down: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        "mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=300"
    )
    try:
        worker.store.inbox = down.x.inbox
        await bob.send({"op": "ack", "seq": max(seqs), "id": "a"})
        left = await eventually(
            lambda: worker.store.redis.scard(worker.store.cold_acks), lambda n: n == 2
        )
        assert left == 2
    finally:
        worker.store.inbox = up
        await down.close()
    await worker.persist_once()
    for i in range(2):
        await alice.expect("delivered", id=f"m{i}")
    assert await worker.store.inbox.count_documents({"inbox": inbox_of(bob)}) == 0
    assert app[REGISTRY].get_sample_value("parley_delivery_acked_total") == acked + 2


async def test_an_ack_past_the_last_number_issued_is_refused_by_delivery_unchanged(
    messaging: Messaging,
) -> None:
    alice, bob, seqs = await _two(messaging, 2)
    await bob.send({"op": "ack", "seq": max(seqs) + 5, "id": "bogus"})
    err = await bob.expect("error", id="bogus")
    assert err["code"] == "seq_not_issued"
    assert len(await _waiting(bob, "after")) == 2
    assert [f for f in alice.drain() if f["op"] == "delivered"] == []


async def test_a_counter_redis_lost_is_seeded_by_delivery(messaging: Messaging) -> None:
    """No counter in Redis: the gateway changes nothing and delivery seeds it from its
    checkpoint (services/delivery/counters.py), then acknowledges."""
    worker = messaging.delivery.server.app[WORKER]
    alice, bob, seqs = await _two(messaging, 2)
    inbox = inbox_of(bob)
    await worker.store.ctr.checkpoint()
    prefix = messaging.settings.redis_prefix
    # The counter gone, and the mark that every checkpoint is in Redis with it (else a
    # missing counter is a new inbox's): as after a loss, it is seeded from MongoDB.
    assert await worker.store.redis.delete(counter_key(prefix, inbox), f"{prefix}:ctrall") == 2
    before = _gateway_acks(messaging, 1)
    await bob.send({"op": "ack", "seq": max(seqs), "id": "a"})
    for i in range(2):
        await alice.expect("delivered", id=f"m{i}")
    assert _gateway_acks(messaging, 1)["delivery"] == before["delivery"] + 1
    assert await _waiting(bob, "after") == []


async def test_an_ack_of_more_numbers_than_the_gateway_takes_goes_to_delivery(
    messaging: Messaging,
) -> None:
    n = HOT_ACK_MAX + 4
    alice, bob, seqs = await _two(messaging, n)
    before = _gateway_acks(messaging, 1)
    await bob.send({"op": "ack", "seq": max(seqs), "id": "a"})
    for i in range(n):
        await alice.expect("delivered", id=f"m{i}")
    assert _gateway_acks(messaging, 1)["delivery"] == before["delivery"] + 1
    assert await _waiting(bob, "after") == []


async def test_an_inbox_of_twenty_thousand_hot_items_is_synced_and_acked_by_the_gateway(
    messaging: Messaging,
) -> None:
    """Real size: 20,000 items wait hot for bob (one sender, alice, connected). His
    device syncs them page by page (200) and acks each page: every ack is the
    gateway's own (a range of 200 hot numbers), alice gets all 20,000 receipts, and
    nothing is left in Redis or MongoDB. Then a page persisted meanwhile goes to
    delivery, and the rest goes on directly."""
    n = 20_000
    worker = messaging.delivery.server.app[WORKER]
    store = worker.store
    store.settings = store.settings.model_copy(update={"hot_persist_after_s": 3600})
    alice_id, bob_id = uid(), uid()
    messaging.issuer.users.add(bob_id)
    inbox = inbox_id(bob_id, 1)
    alice = await messaging.connect(alice_id, pod=0)
    items = [
        {**item(inbox, i, sender=alice_id, cid=f"m{i}"), "user": bob_id} for i in range(n + 400)
    ]
    await store.store_hot(items[:n])
    bob = await messaging.connect(bob_id, pod=1)
    before, calls = _gateway_acks(messaging, 1), _delivery_calls(messaging)
    after, pages = 0, 0
    while True:
        await bob.send({"op": "sync", "id": f"p{pages}", "after": after, "limit": 200})
        done = await bob.expect("synced", id=f"p{pages}", timeout=30)
        got = [f for f in bob.drain() if f["op"] == "message"]
        if not got:
            assert not done["more"]
            break
        after, pages = int(done["last"]), pages + 1
        await bob.send({"op": "ack", "seq": after})
    assert pages == n // 200
    delivered = set()
    while len(delivered) < n:
        frame = await alice.expect("delivered", timeout=30)
        delivered.add(frame["id"])
    assert delivered == {f"m{i}" for i in range(n)}
    assert _gateway_acks(messaging, 1)["direct"] - before["direct"] == pages
    assert _gateway_acks(messaging, 1)["delivery"] == before["delivery"]
    assert _delivery_calls(messaging) == calls
    prefix = messaging.settings.redis_prefix
    assert await store.redis.hlen(hot_key(prefix, inbox)) == 0
    assert await store.redis.hgetall(pending_key(prefix, inbox)) == {}
    assert await store.inbox.count_documents({"inbox": inbox}) == 0

    # Two more pages; the first is persisted before it is acked: delivery takes that
    # ack (and deletes MongoDB's copies), the gateway the next.
    await store.store_hot(items[n : n + 200])
    await store.persist_due(now=time.time() + 3601)
    await store.store_hot(items[n + 200 :])
    for page in range(2):
        await bob.send({"op": "sync", "id": f"q{page}", "after": after, "limit": 200})
        done = await bob.expect("synced", id=f"q{page}", timeout=30)
        assert len([f for f in bob.drain() if f["op"] == "message"]) == 200
        after = int(done["last"])
        await bob.send({"op": "ack", "seq": after})
        for _ in range(200):
            await alice.expect("delivered", timeout=30)
    assert _gateway_acks(messaging, 1)["delivery"] == before["delivery"] + 1
    assert _gateway_acks(messaging, 1)["direct"] - before["direct"] == pages + 1
    assert await store.inbox.count_documents({"inbox": inbox}) == 0
    assert await store.redis.hlen(hot_key(prefix, inbox)) == 0
