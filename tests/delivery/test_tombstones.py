"""A tombstone's copies deleted at the sizes real inboxes reach (real MongoDB and Redis).

Delivery keeps no record of where a message's copies went (docs/delivery.md,
"Tombstones"): the inbox consumer finds the copy in the hot inbox (a search of
that inbox's hash) or in MongoDB (by ``server_id``). A phone left in a drawer
has tens of thousands of items waiting; removing one must delete exactly that
one, leave everything else, and be a no-op when the Kafka record is consumed
again (delivery killed after the deletion, before its offset was committed).
"""

from __future__ import annotations

import time

import orjson

from services.common.routing import pending_key
from services.delivery.hot import Removal
from services.delivery.store import DeliveryStore
from tests.delivery.conftest import item

COLD, HOT = 20_000, 2_000


async def pending(store: DeliveryStore, inbox: str) -> dict[str, int]:
    raw = await store.redis.hgetall(pending_key(store.prefix, inbox))
    return {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}


async def hot_ids(store: DeliveryStore, inbox: str) -> set[str]:
    raw = await store.redis.hvals(store.hot.key(inbox))
    return {str(orjson.loads(v)["server_id"]) for v in raw}


async def test_removing_copies_from_an_inbox_of_twenty_thousand_deletes_exactly_those(
    store: DeliveryStore,
) -> None:
    inbox = "drawer"
    now = time.time()
    for start in range(0, COLD, 1000):
        batch = [item(inbox, n, sender="ann", cid=f"m{n}") for n in range(start, start + 1000)]
        for it in batch:
            it["stored_at"] = now - 3600
        await store.store_hot(batch)
    # The persister's index scores an item by when it was stored (now, not its
    # ``stored_at``): everything stored so far is due a moment after the last store.
    await store.persist_due(now=time.time() + store.settings.hot_persist_after_s + 0.001)
    fresh = [item(inbox, n, sender="ann", cid=f"h{n}") for n in range(HOT)]
    await store.store_hot(fresh)
    cold_docs = {d["client_id"]: d async for d in store.inbox.find({"inbox": inbox})}
    assert len(cold_docs) == COLD and len(await hot_ids(store, inbox)) == HOT
    assert await pending(store, inbox) == {"*": COLD + HOT, "ann": COLD + HOT}

    middle = cold_docs["m12345"]["server_id"]
    newest_hot = fresh[-1]["server_id"]
    removals = [
        Removal(inbox, None, middle, "ann"),  # waits in MongoDB: found by server id
        Removal(inbox, None, newest_hot, "ann"),  # waits in Redis: found by a search
        Removal(inbox, None, cold_docs["m7"]["server_id"], "bob"),  # not bob's: left
        Removal(inbox, None, "0" * 32, "ann"),  # nothing of that id
        Removal("elsewhere", None, middle, "ann"),  # another inbox: nothing there
    ]
    started = time.perf_counter()
    assert await store.remove_copies(removals) == 2
    took = time.perf_counter() - started

    left = {d["server_id"] async for d in store.inbox.find({"inbox": inbox}, {"server_id": 1})}
    assert len(left) == COLD - 1 and middle not in left
    assert cold_docs["m7"]["server_id"] in left
    hot = await hot_ids(store, inbox)
    assert len(hot) == HOT - 1 and newest_hot not in hot
    assert await pending(store, inbox) == {"*": COLD + HOT - 2, "ann": COLD + HOT - 2}
    # The persister's index no longer lists the removed hot copy.
    due = await store.hot.due(time.time() + 3600, HOT + 10)
    assert len(due) == HOT - 1

    # The Kafka record consumed again (delivery was killed before it committed):
    # nothing more is deleted, no count is lowered twice.
    assert await store.remove_copies(removals) == 0
    assert await store.inbox.count_documents({"inbox": inbox}) == COLD - 1
    assert len(await hot_ids(store, inbox)) == HOT - 1
    assert await pending(store, inbox) == {"*": COLD + HOT - 2, "ann": COLD + HOT - 2}
    # The page a device syncs skips the removed copy and keeps the order.
    page, _ = await store.page(inbox, int(cold_docs["m12344"]["seq"]) - 1, 3)
    assert [d["client_id"] for d in page] == ["m12344", "m12346", "m12347"]
    print(f"\nremove_copies over {COLD:,} cold + {HOT:,} hot items: {took * 1000:.1f} ms")


async def test_a_removal_does_not_search_an_inbox_holding_too_much(
    store: DeliveryStore,
) -> None:
    """While MongoDB is down every item waits in Redis (up to 100,000 of up to 64 KiB):
    one search of such an inbox held Redis, every service with it, for seconds. An
    inbox past REMOVE_SEARCH_MAX is not searched: the copy stays until the device,
    having read the tombstone after it, acknowledges it."""
    from services.delivery.hot import REMOVE_SEARCH_MAX

    inbox = "piled-up"
    many = [item(inbox, n, sender="ann", cid=f"p{n}") for n in range(REMOVE_SEARCH_MAX + 1)]
    for start in range(0, len(many), 1000):
        await store.store_hot(many[start : start + 1000])
    target = many[-1]["server_id"]
    assert await store.remove_copies([Removal(inbox, None, target, "ann")]) == 0
    assert target in await hot_ids(store, inbox)  # left for the ack
    await store.acknowledge_many({inbox: REMOVE_SEARCH_MAX + 1})
    assert await hot_ids(store, inbox) == set()
