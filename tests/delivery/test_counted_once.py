"""A persisted copy deleted from MongoDB lowers its inbox's waiting counts once, and earns
its `delivered` receipt once, whoever deletes it: an ack, a removal, the expiry and the
upkeep may find the same copy at once.

Audit finding: each of them found, deleted, and lowered the counts for what it had
*found*: an unsend racing an ack of the same persisted copy lowered them twice
({'*': 1, 'mal': 1} left for two waiting items), and caps were reached early for
good. Whoever claims a copy first now counts it (services/delivery/store.py
``_CLAIM_GONE``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from services.common.routing import Push
from services.delivery.hot import Removal
from services.delivery.store import DeliveryStore, item_id
from tests.delivery.conftest import counts, item, later


async def test_an_unsend_racing_an_ack_of_the_same_copy_counts_it_once(
    store: DeliveryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = await store.store_hot([item("rc", n, sender="mal") for n in range(3)])
    await store.persist_due(now=later(store))  # the recipient is offline: all in MongoDB
    assert await counts(store, "rc") == {"*": 3, "mal": 3}
    target = out[0]
    found_it, go_on = asyncio.Event(), asyncio.Event()
    cold_copies = store._cold_copies

    async def find_then_wait(wanted: Any) -> list[dict[str, Any]]:
        docs = await cold_copies(wanted)  # the removal has found the copy ...
        found_it.set()
        await go_on.wait()  # ... and deletes it after the ack did
        return docs

    monkeypatch.setattr(store, "_cold_copies", find_then_wait)
    removal = asyncio.create_task(
        store.remove_copies([Removal("rc", None, target["server_id"], "mal")])
    )
    await found_it.wait()
    acked = await store.acknowledge_many({"rc": 1})  # the recipient acks seq 1 meanwhile
    assert [d["seq"] for d in acked["rc"]] == [1]
    go_on.set()
    assert await removal == 0  # the ack deleted and counted it
    assert sorted([d["seq"] async for d in store.inbox.find({"inbox": "rc"})]) == [2, 3]
    assert await counts(store, "rc") == {"*": 2, "mal": 2}


async def test_an_ack_of_thirty_thousand_copies_racing_removals_and_the_upkeep(
    store: DeliveryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """30,000 persisted copies from three senders, written directly, and 1,000 more that
    wait past them: the device acknowledges the 30,000 while 300 of them are unsent
    and the upkeep sweeps below the watermark. Each copy is claimed once (counted
    once, one receipt at most), and the counts end at the 1,000 still waiting."""
    inbox, n, waiting = "big.1", 30_000, 1_000
    senders = ("s0", "s1", "s2")
    docs = [
        {**item(inbox, s, sender=senders[s % 3], cid=f"c{s}"), "_id": item_id(inbox, s),
         "seq": s, "acked": False}
        for s in range(1, n + waiting + 1)
    ]  # fmt: skip
    for i in range(0, len(docs), 5000):
        await store.inbox.insert_many(docs[i : i + 5000])
    await store.redis.hset(store.ctr.key(inbox), mapping={"n": n + waiting, "acked": 0})
    per = {s: sum(1 for d in docs if d["from"] == s) for s in senders}
    await store.redis.hset(f"{store.prefix}:pending:{{{inbox}}}", mapping={"*": n + waiting, **per})
    sent: list[str] = []
    publish = store.publish

    async def recorded(frames: list[Push], where: Any = None) -> int:
        sent.extend(str(getattr(frame, "id", "")) for _, _, frame in frames)
        return await publish(frames, where)

    monkeypatch.setattr(store, "publish", recorded)
    unsent = [Removal(inbox, d["seq"], d["server_id"], d["from"]) for d in docs[:n:100]]
    started = time.perf_counter()
    acked, removed, swept = await asyncio.gather(
        store.acknowledge_many({inbox: n}), store.remove_copies(unsent), store.sweep_acked()
    )
    took = time.perf_counter() - started
    claimed = [d["client_id"] for d in acked[inbox]]
    assert len(claimed) + removed + swept == n, (len(claimed), removed, swept, took)
    receipts = claimed + sent
    assert len(receipts) == len(set(receipts))  # none twice
    assert await store.inbox.count_documents({"inbox": inbox}) == waiting
    want = {"*": waiting, **{s: sum(1 for d in docs[n:] if d["from"] == s) for s in senders}}
    assert await counts(store, inbox) == want
