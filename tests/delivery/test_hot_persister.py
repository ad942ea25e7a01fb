"""The persister's walk over the hot index (services/delivery/store.py, ``persist_due``)
at real size: index entries kept without their items, entries that leave or arrive
during a pass, and a page all of one time (docs/delivery.md, "The persister")."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from services.delivery.store import ORPHAN_GRACE_S, DeliveryStore
from tests.delivery.conftest import item, later

Due = Callable[..., Awaitable[list[tuple[str, int, float]]]]


def counting(store: DeliveryStore, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the index entries the persister reads (each call of ``hot.due``)."""
    reads: list[int] = []
    due: Due = store.hot.due

    async def counted(*args: Any, **kwargs: Any) -> list[tuple[str, int, float]]:
        got = await due(*args, **kwargs)
        reads.append(len(got))
        return got

    monkeypatch.setattr(store.hot, "due", counted)
    return reads


async def mongo_ids(store: DeliveryStore, tag: str) -> list[str]:
    query = {"inbox": {"$regex": f"^{tag}"}}
    return [d["_id"] async for d in store.inbox.find(query, {"_id": 1})]


async def test_twenty_thousand_kept_entries_are_read_past_once_per_pass(
    store: DeliveryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """20,000 index entries due whose items are missing but young (kept: a write may
    still land), half a refused batch's (one time), half left by a Redis that lost
    items and not the index (each its own time, among the real items), and 3,000
    real items due. Each page asked for the next ``batch`` plus every entry kept so
    far and filtered those out by name: the pass read 526,000 entries
    (quadratic; 25,300 now). It now reads each at most three times, moves every real item
    once and keeps the orphans."""
    store.settings = store.settings.model_copy(update={"hot_persist_batch": 500})
    tag = f"k{uuid.uuid4().hex[:6]}"
    inboxes = [f"{tag}{n}.1" for n in range(50)]
    refused = time.time() - ORPHAN_GRACE_S / 2
    await store.redis.zadd(
        store.hot.index, {f"{tag}r{n % 7}.1|{n}": refused for n in range(10_000)}
    )
    stored: list[dict[str, Any]] = []
    for r in range(10):
        at = time.time()
        spread = {f"{inboxes[n % 50]}|{10**6 + r * 1000 + n}": at + n * 1e-7 for n in range(1000)}
        await store.redis.zadd(store.hot.index, spread)
        stored += await store.store_hot([item(inboxes[n % 50], r * 300 + n) for n in range(300)])
    assert len({d["_id"] for d in stored}) == 3000
    reads = counting(store, monkeypatch)

    written, _ = await store.persist_due(now=later(store))

    assert written == 3000
    ids = await mongo_ids(store, tag)
    assert sorted(ids) == sorted(d["_id"] for d in stored)  # each once (and _id is unique)
    assert [await store.redis.hlen(store.hot.key(i)) for i in inboxes] == [0] * 50
    assert await store.redis.zcard(store.hot.index) == 20_000  # the orphans are kept
    due = 23_000
    assert sum(reads) <= 3 * due + 500, f"read {sum(reads)} index entries for {due} due"

    # Another pass reads them once more and moves nothing; past the grace they go.
    reads.clear()
    assert (await store.persist_due(now=later(store)))[0] == 0
    assert sum(reads) <= 3 * 20_000 + 500
    await store.persist_due(now=later(store) + ORPHAN_GRACE_S + 1)
    assert await store.redis.zcard(store.hot.index) == 0


async def test_entries_leaving_or_arriving_during_a_pass_leave_no_item_due_unread(
    store: DeliveryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cursor is a time, not a count: entries acknowledged (out of the index)
    between two pages, behind the walk, move no entry due past it unread; an entry
    that arrives behind the walk (its write still under way when the pass began)
    is left for the next pass, which moves it."""
    store.settings = store.settings.model_copy(update={"hot_persist_batch": 10})
    tag = f"l{uuid.uuid4().hex[:6]}"
    kept = time.time() - 5  # young orphans first, then the real items
    await store.redis.zadd(store.hot.index, {f"{tag}o.1|{n}": kept + n * 1e-3 for n in range(25)})
    stored = []
    for n in range(40):
        stored += await store.store_hot([item(f"{tag}a.1", n)])
    seqs = [d["seq"] for d in stored]
    due: Due = store.hot.due
    calls = 0
    late: list[dict[str, Any]] = []

    async def meanwhile(*args: Any, **kwargs: Any) -> list[tuple[str, int, float]]:
        nonlocal calls
        calls += 1
        if calls == 4:
            # An ack of the first 12 (some moved already, some not yet read) and of the
            # orphans: every entry behind the walk leaves.
            await store.acknowledge_many({f"{tag}a.1": seqs[11]})
            await store.redis.zrem(store.hot.index, *[f"{tag}o.1|{n}" for n in range(25)])
            # A write stored before the cutoff lands behind the walk.
            [doc] = await store.store_hot([item(f"{tag}b.1", 0)])
            await store.redis.zadd(store.hot.index, {f"{tag}b.1|{doc['seq']}": kept})
            late.append(doc)
        return await due(*args, **kwargs)

    monkeypatch.setattr(store.hot, "due", meanwhile)
    await store.persist_due(now=later(store))
    moved = sorted(int(i.rsplit("|", 1)[1]) for i in await mongo_ids(store, f"{tag}a"))
    assert [s for s in seqs if s > seqs[11]] == [s for s in moved if s > seqs[11]]
    assert await store.redis.hlen(store.hot.key(f"{tag}a.1")) == 0
    assert await store.redis.hlen(store.hot.key(f"{tag}b.1")) == 1  # the next pass's
    await store.persist_due(now=later(store))
    assert await mongo_ids(store, f"{tag}b") == [f"{tag}b.1|{late[0]['seq']:016d}"]


async def test_a_time_shared_by_more_entries_than_a_page_is_read_whole(
    store: DeliveryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One batch's entries share its time: 2,500 entries of one time, pages of 100,
    with kept entries of the same time among them; all are moved in a few reads."""
    store.settings = store.settings.model_copy(update={"hot_persist_batch": 100})
    tag = f"t{uuid.uuid4().hex[:6]}"
    stored = await store.store_hot([item(f"{tag}{n % 5}.1", n) for n in range(2500)])
    [at] = {s for _, s in await store.redis.zrange(store.hot.index, 0, -1, withscores=True)}
    await store.redis.zadd(store.hot.index, {f"{tag}0.1|{10**6 + n}": at for n in range(300)})
    reads = counting(store, monkeypatch)
    written, _ = await store.persist_due(now=later(store))
    assert written == 2500
    assert sorted(await mongo_ids(store, tag)) == sorted(d["_id"] for d in stored)
    assert await store.redis.zcard(store.hot.index) == 300
    assert len(reads) <= 3 and sum(reads) <= 2 * 2800 + 100
