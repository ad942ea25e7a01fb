"""The hot inbox's write guard (services/delivery/hot.py, ``GUARD``): after Redis lost
its data, nothing is stored until the consumer has gone back to its committed offsets,
so that what was lost comes first (docs/delivery.md, "Nothing is stored after a loss
before what was lost")."""

from __future__ import annotations

import asyncio
import contextvars
import uuid
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from services.common.config import Settings
from services.delivery.hot import GUARD, HotInboxLost
from services.delivery.store import DeliveryStore
from services.delivery.worker import Worker
from tests.delivery.conftest import item


async def as_consumer(generation: int, worker: Worker, work: Any) -> Any:
    """Run ``work()`` as a consumer that began its batch at ``generation`` (its own
    context, as each consumer task has)."""
    ctx = contextvars.copy_context()
    ctx.run(GUARD.set, (worker.mark, str(generation)))
    return await asyncio.create_task(work(), context=ctx)


async def test_a_lost_mark_refuses_every_write_until_the_loss_is_recorded(
    store: DeliveryStore, settings: Settings
) -> None:
    worker = Worker(settings, store, CollectorRegistry(), None)  # type: ignore[arg-type]
    await worker._arm()
    inbox = f"g{uuid.uuid4().hex[:8]}.1"
    await as_consumer(0, worker, lambda: store.store_hot([item(inbox, 0, cid="a")]))
    assert await store.redis.hlen(store.hot.key(inbox)) == 1

    await store.redis.delete(worker.mark)  # Redis lost its data (this key at least)
    with pytest.raises(HotInboxLost) as lost:
        await as_consumer(0, worker, lambda: store.store_hot([item(inbox, 1, cid="b")]))
    assert lost.value.missing
    assert await store.redis.hlen(store.hot.key(inbox)) == 1  # not written

    await worker._mark_lost(lost.value)
    assert (worker.rewinds, worker.hot_lost._value.get()) == (1, 1.0)
    assert await store.redis.get(worker.mark) == b"1"
    # A second consumer still on the old generation is refused too, and finds the mark
    # set again since: not a second loss.
    with pytest.raises(HotInboxLost) as stale:
        await as_consumer(0, worker, lambda: store.store_hot([item(inbox, 2, cid="c")]))
    assert not stale.value.missing
    await worker._mark_lost(stale.value)
    assert (worker.rewinds, worker.hot_lost._value.get()) == (1, 1.0)
    # Consumers that went back to their offsets (generation 1) write again.
    await as_consumer(1, worker, lambda: store.store_hot([item(inbox, 1, cid="b")]))
    assert await store.redis.hlen(store.hot.key(inbox)) == 2


async def test_without_a_guard_writes_go_on(store: DeliveryStore) -> None:
    """Outside a consumer (tests, tools) nothing is checked."""
    inbox = f"g{uuid.uuid4().hex[:8]}.1"
    assert GUARD.get() is None
    await store.store_hot([item(inbox, 0)])
    assert await store.redis.hlen(store.hot.key(inbox)) == 1
