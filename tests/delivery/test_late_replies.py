"""Delivery's Redis work when a reply comes late (after the client's socket timeout):
nothing is lost, nothing is done twice.

Audit finding: FastRedis sent a request again on a fresh connection after a late
reply, and Redis ran it twice: ``SPOP`` in the drains of acks and removals left for
later and in the counters' checkpoint took a first set of members whose reply was
lost (those acks' copies stayed in MongoDB, those checkpoints were never written),
and the script that lowered waiting counts applied them twice. A request that may
have run is now sent again only if running it twice changes nothing; the sets are
read (``SRANDMEMBER``) and emptied once done; counts are lowered by a script that
remembers its call (``_CLAIM_GONE``).
"""

from __future__ import annotations

import orjson

from services.delivery.store import DeliveryStore, item_id
from tests.common.test_fastredis import late_reply
from tests.delivery.conftest import counts, in_mongo, item, later


async def _six_persisted(store: DeliveryStore, inbox: str) -> None:
    await store.store_hot([item(inbox, n, cid=f"c{n}") for n in range(6)])
    await store.persist_due(now=later(store))
    assert await counts(store, inbox) == {"*": 6, "s": 6}


async def test_acks_left_for_later_are_drained_once_after_a_late_reply(
    impatient: DeliveryStore,
) -> None:
    store = impatient
    await _six_persisted(store, "lda")
    await store.ctr.ack_hot({"lda": 3})  # acknowledged; MongoDB was down: left for later
    await store.redis.sadd(store.cold_acks, *[item_id("lda", s) for s in (1, 2, 3)])
    with late_reply(store.cold_acks.encode()):
        drained = await store.drain_cold_acks()
    assert sorted(d["client_id"] for d in drained) == ["c0", "c1", "c2"]
    assert await in_mongo(store, "lda") == [4, 5, 6]
    assert await store.redis.scard(store.cold_acks) == 0


async def test_counts_are_lowered_once_after_a_late_reply(impatient: DeliveryStore) -> None:
    store = impatient
    await _six_persisted(store, "ldc")
    await store.ctr.ack_hot({"ldc": 3})
    await store.redis.sadd(store.cold_acks, *[item_id("ldc", s) for s in (1, 2, 3)])
    pending = f"{store.prefix}:pending:{{ldc}}".encode()
    with late_reply(pending) as state:
        drained = await store.drain_cold_acks()
    assert state["sent"] >= 1
    assert len(drained) == 3
    assert await counts(store, "ldc") == {"*": 3, "s": 3}  # not {} (lowered twice)


async def test_removals_left_for_later_are_drained_after_a_late_reply(
    impatient: DeliveryStore,
) -> None:
    store = impatient
    await _six_persisted(store, "ldr")
    doc = await store.inbox.find_one({"_id": item_id("ldr", 2)})
    assert doc is not None
    await store.redis.sadd(store.cold_removals, orjson.dumps(["ldr", doc["server_id"], "s"]))
    with late_reply(store.cold_removals.encode()):
        assert await store.drain_cold_removals() == 1
    assert await in_mongo(store, "ldr") == [1, 3, 4, 5, 6]
    assert await counts(store, "ldr") == {"*": 5, "s": 5}


async def test_checkpoints_are_written_after_a_late_reply(impatient: DeliveryStore) -> None:
    store = impatient
    await store.store_hot([item("ldk", n) for n in range(2)])
    assert await store.redis.sismember(store.ctr.dirty, "ldk")
    with late_reply(store.ctr.dirty.encode()):
        await store.ctr.checkpoint()
    saved = await store.counters.find_one({"_id": "ldk"})
    assert saved is not None and saved["n"] == 2
