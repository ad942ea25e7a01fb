"""Records consumed again after Redis lost its data find the copies the persister moved
before the loss (``DeliveryStore.claims_in_mongo``), but only copies pages reach.

Review of 4e67bdb: a persister page can straddle the loss (its items read from the old
Redis, the counter seeded again from the old checkpoint before the page's checkpoint
write lands): its copies land in MongoDB inside the range the seeded counter skips,
never paged. Taken for "stored already" by the replay, their messages were lost."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from services.delivery.counters import GAP
from services.delivery.store import DeliveryStore
from tests.delivery.conftest import in_mongo, item, later
from tests.support.losses import lose_redis


async def _replay(store: DeliveryStore, items: list[dict[str, Any]]) -> None:
    """What the worker does with records consumed again (``_moderate``, REPLAYED set)."""
    claims, _, numbers = await store.claims_and_numbers(items, [d["server_id"] for d in items])
    claims.update(await store.claims_in_mongo(items, claims))
    await store.store_and_route(items, claims, numbers, [])


async def _straddle(
    store: DeliveryStore, monkeypatch: pytest.MonkeyPatch, target: Any, name: str
) -> tuple[str, list[dict[str, Any]]]:
    """Three items checkpointed, two not; a persister pass during which, at
    ``target.name``, Redis loses everything and the counter is seeded again."""
    inbox = f"s{uuid.uuid4().hex[:8]}.1"
    await store.store_hot([item(inbox, i) for i in range(3)])
    await store.ctr.checkpoint()  # n = 3
    rest = [item(inbox, i) for i in range(3, 5)]
    assert [d["seq"] for d in await store.store_hot(rest)] == [4, 5]
    real: Callable[..., Awaitable[Any]] = getattr(target, name)
    fired: list[int] = []

    async def lose(*args: Any) -> Any:
        # get_many: the items read from the old Redis, then the loss; _copy: the loss
        # while the checkpoint write is on its way.
        got = await real(*args) if name == "get_many" else None
        if not fired:
            fired.append(1)
            await lose_redis(store.redis, store.prefix)
            await store.ctr.get([inbox])  # a consumer's next item seeds it
        return got if name == "get_many" else await real(*args)

    monkeypatch.setattr(target, name, lose)
    await store.persist_due(now=later(store))
    monkeypatch.setattr(target, name, real)
    assert fired
    return inbox, rest


@pytest.mark.parametrize("where", ["counters read", "checkpoint write in flight"])
async def test_a_copy_moved_into_a_skipped_range_is_stored_again_by_the_replay(
    store: DeliveryStore, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    target, name = (store.hot, "get_many") if where == "counters read" else (store.ctr, "_copy")
    inbox, rest = await _straddle(store, monkeypatch, target, name)
    counter = (await store.ctr.get([inbox]))[inbox]
    assert counter.gaps == ((3, 3 + GAP),)
    assert 4 in await in_mongo(store, inbox)  # inside the skipped range: never paged
    await _replay(store, [dict(d) for d in rest])
    page, more = await store.page(inbox, 0, 200)
    assert not more
    assert [d["client_id"] for d in page] == [f"c{i}" for i in range(5)]


async def test_a_copy_moved_before_the_loss_below_its_checkpoint_is_a_repeat(
    store: DeliveryStore,
) -> None:
    """The case the look-up is for: moved (its counter checkpointed first), then Redis
    lost: the replay stores nothing twice."""
    inbox = f"r{uuid.uuid4().hex[:8]}.1"
    items = [item(inbox, i) for i in range(3)]
    await store.store_hot(items)
    assert await store.persist_due(now=later(store)) != (0, None)
    await lose_redis(store.redis, store.prefix)
    await _replay(store, [dict(d) for d in items])
    page, _ = await store.page(inbox, 0, 200)
    assert [d["seq"] for d in page] == [1, 2, 3]
    assert await in_mongo(store, inbox) == [1, 2, 3]
