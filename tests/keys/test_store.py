"""The store on the real servers: idempotent indexes, atomic claims, the token bucket."""

from __future__ import annotations

import asyncio

from services.keys.store import DuplicatePrekeyIds, Kind
from tests.keys.conftest import KeysApi


async def test_indexes_are_created_idempotently(api: KeysApi) -> None:
    store = api.keys.store
    await store.ensure_indexes()
    await store.ensure_indexes()
    info = await store.devices.index_information()
    assert any(v.get("unique") and [k for k, _ in v["key"]] == ["user_id", "device_id"]
               for v in info.values())  # fmt: skip
    for coll in store.prekeys.values():
        info = await coll.index_information()
        keys = [[k for k, _ in v["key"]] for v in info.values() if v.get("unique")]
        assert ["user_id", "device_id", "generation", "id"] in keys


async def test_a_clashing_concurrent_batch_is_removed_whole(api: KeysApi) -> None:
    store = api.keys.store
    await store.insert_prekeys(Kind.ONE_TIME, "u", 1, 1, [{"id": 5, "key": "k"}], "first")
    docs = [{"id": i, "key": "k"} for i in (3, 4, 5, 6)]
    try:
        await store.insert_prekeys(Kind.ONE_TIME, "u", 1, 1, docs, "second")
    except DuplicatePrekeyIds:
        pass
    else:
        raise AssertionError("the clash was not reported")
    assert await store.count_prekeys(Kind.ONE_TIME, "u", 1, 1) == 1


async def test_claims_are_single_use_under_concurrency(api: KeysApi) -> None:
    store = api.keys.store
    docs = [{"id": i, "key": f"k{i}"} for i in range(40)]
    await store.insert_prekeys(Kind.KEM, "u", 1, 1, docs, "b")
    got = await asyncio.gather(*(store.claim_prekey(Kind.KEM, "u", 1, 1) for _ in range(60)))
    ids = [d["id"] for d in got if d is not None]
    assert sorted(ids) == list(range(40))
    # Only the current generation is claimed or counted.
    await store.insert_prekeys(Kind.KEM, "u", 1, 1, docs[:3], "c")
    assert await store.claim_prekey(Kind.KEM, "u", 1, 2) is None
    assert await store.count_prekeys(Kind.KEM, "u", 1, 2) == 0
    assert await store.count_prekeys_upto(Kind.KEM, "u", 1, 1, 2) == 2


async def test_token_bucket(api: KeysApi) -> None:
    store = api.keys.store
    key = store.claims_key("a", "b")
    results = [await store.take_token(key, 3, 3600) for _ in range(4)]
    assert [ok for ok, _ in results] == [True, True, True, False]
    assert 3000 < results[-1][1] <= 3600
    # Keys of different pairs never collide, whatever the ids contain.
    assert store.claims_key("a:b", "c") != store.claims_key("a", "b:c")
