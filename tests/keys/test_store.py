"""The store on the real servers: idempotent indexes, atomic claims."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pymongo.errors import DuplicateKeyError

from services.common.auth import MAX_USER_ID
from services.keys import store as store_mod
from services.keys.store import Doc, DuplicatePrekeyIds, KeyStore, Kind
from tests.keys.conftest import KeysApi


async def _claim_all(
    store: KeyStore, kind: Kind, devices: list[tuple[str, int, int]]
) -> list[Doc | None]:
    return await store.claim_slots([(kind, *d) for d in devices])


async def _claim(store: KeyStore, kind: Kind, user: str, device: int, gen: int) -> Doc | None:
    [doc] = await _claim_all(store, kind, [(user, device, gen)])
    return doc


async def test_indexes_are_created_idempotently(api: KeysApi) -> None:
    store = api.keys.store
    await store.ensure_indexes()
    await store.ensure_indexes()
    info = await store.outbox.coll.index_information()
    assert any([k for k, _ in v["key"]] == ["due"] for v in info.values())


def test_ids_sort_by_user_device_generation_and_prekey() -> None:
    assert store_mod.prekey_key("bob", 2, 1, 7) == "003bob000000000200000000010000000007"
    keys = [
        store_mod.prekey_key(u, d, g, i)
        for u, d, g, i in [("b", 1, 1, 2), ("b", 1, 1, 10), ("b", 1, 2, 0), ("b", 2, 1, 0)]
    ]
    assert keys == sorted(keys)
    with pytest.raises(ValueError):
        store_mod.user_key("")
    # Any user id a token may carry fits the three-digit length prefix; no longer one does.
    assert store_mod.user_key("u" * MAX_USER_ID).startswith(f"{MAX_USER_ID:03d}u")
    with pytest.raises(ValueError):
        store_mod.user_key("u" * (MAX_USER_ID + 1))


async def test_one_users_range_never_takes_in_anothers(api: KeysApi) -> None:
    store = api.keys.store
    users = ["u1", "u10", "u1:", "u", "u1\x00", "ü1"]
    for user in users:
        await store.insert_device(user, 1, {"signing_key": user})
        await store.insert_prekeys(Kind.ONE_TIME, user, 1, 1, [{"id": 1, "key": user}], "b")
    for user in users:
        assert [d["user_id"] for d in await store.list_devices(user)] == [user]
        assert await store.count_prekeys(Kind.ONE_TIME, user, 1, 1) == 1
    claimed = await _claim(store, Kind.ONE_TIME, "u1", 1, 1)
    assert claimed is not None and claimed["key"] == "u1"
    assert await _claim(store, Kind.ONE_TIME, "u1", 1, 1) is None
    for user in users[1:]:
        assert await store.count_prekeys(Kind.ONE_TIME, user, 1, 1) == 1


async def test_a_clashing_concurrent_batch_is_removed_whole(api: KeysApi) -> None:
    store = api.keys.store
    await store.insert_prekeys(Kind.ONE_TIME, "u", 1, 1, [{"id": 5, "key": "first"}], "first")
    docs = [{"id": i, "key": "second"} for i in (3, 4, 5, 6)]
    with pytest.raises(DuplicatePrekeyIds):
        await store.insert_prekeys(Kind.ONE_TIME, "u", 1, 1, docs, "second")
    # Only the clashing batch's own prekeys went; the first batch's id 5 stayed.
    assert await store.count_prekeys(Kind.ONE_TIME, "u", 1, 1) == 1
    claimed = await _claim(store, Kind.ONE_TIME, "u", 1, 1)
    assert claimed == {"id": 5, "key": "first"}


async def test_claims_are_single_use_under_concurrency(api: KeysApi) -> None:
    store = api.keys.store
    docs = [{"id": i, "key": f"k{i}"} for i in range(40)]
    await store.insert_prekeys(Kind.KEM, "u", 1, 1, docs, "b")
    await store.seed_count(Kind.KEM, "u", 1, 1, 0)  # as an upload does: id 0 first
    got = await asyncio.gather(*(_claim(store, Kind.KEM, "u", 1, 1) for _ in range(60)))
    ids = [d["id"] for d in got if d is not None]
    assert sorted(ids) == list(range(40))
    # Lowest id first; only the current generation is claimed or counted.
    await store.insert_prekeys(Kind.KEM, "u", 1, 1, docs[:3], "c")
    await store.insert_prekeys(Kind.KEM, "u", 1, 2, docs[5:7], "d")
    assert (await _claim(store, Kind.KEM, "u", 1, 2) or {})["id"] == 5
    assert await store.count_prekeys(Kind.KEM, "u", 1, 2) == 1
    assert await store.count_prekeys(Kind.KEM, "u", 1, 1) == 3
    assert await store.count_prekeys_upto(Kind.KEM, "u", 1, 1, 2) == 2
    await store.delete_prekeys("u", 1, below_generation=2)
    assert await store.count_prekeys(Kind.KEM, "u", 1, 1) == 0
    assert await store.count_prekeys(Kind.KEM, "u", 1, 2) == 1


async def test_bulk_claims_at_once_hand_each_prekey_out_once_and_all_of_them(
    api: KeysApi,
) -> None:
    """Eight bulk claims of the same 300 devices at once, beside single ones, on stocks
    with gaps (ids 1-3, 5, 9-11): every id handed out once, and every stored one handed
    out (none left behind while claims went without)."""
    store = api.keys.store
    stock = [1, 2, 3, 5, 9, 10, 11]
    devices = [(f"u{d}", 1, 1) for d in range(300)]
    for user, device, gen in devices:
        docs = [{"id": i, "key": f"{user}.{i}"} for i in stock]
        await store.insert_prekeys(Kind.ONE_TIME, user, device, gen, docs, "b")
    claims = asyncio.gather(*(_claim_all(store, Kind.ONE_TIME, devices) for _ in range(8)))
    singles = asyncio.gather(*(_claim(store, Kind.ONE_TIME, *d) for d in devices[:20]))
    bulk, alone = await asyncio.gather(claims, singles)
    taken = [d["key"] for d in [*(g for c in bulk for g in c), *alone] if d is not None]
    assert len(taken) == len(set(taken))  # each once
    assert sorted(taken) == sorted(f"{u}.{i}" for u, _, _ in devices for i in stock)
    for user, device, gen in devices:
        assert await store.count_prekeys(Kind.ONE_TIME, user, device, gen) == 0
    # None left: every device answers None, at once.
    assert await _claim_all(store, Kind.ONE_TIME, devices) == [None] * 300


async def test_a_count_lost_with_redis_starts_again_from_the_stock(api: KeysApi) -> None:
    """A count that is gone (Redis lost its data, or it expired) or behind the stock
    (ids below it were claimed before) finds the lowest stored id; an upload starts
    a new device's count just below its first id."""
    store = api.keys.store
    docs = [{"id": i, "key": f"k{i}"} for i in range(57, 61)]
    await store.insert_prekeys(Kind.KEM, "u", 1, 1, docs, "b")
    assert (await _claim(store, Kind.KEM, "u", 1, 1) or {})["id"] == 57
    await store.redis.delete(store._next_key(Kind.KEM, "u", 1, 1))
    got = await _claim_all(store, Kind.KEM, [("u", 1, 1)] * 1)
    assert [d and d["id"] for d in got] == [58]
    # An upload starts an absent count just below its lowest id, unless lower ones are
    # stored (then a claim finds them first).
    key = store._next_key(Kind.KEM, "u", 1, 1)
    await store.redis.delete(key)
    await store.seed_count(Kind.KEM, "u", 1, 1, 60)
    assert await store.redis.get(key) is None  # 59 is stored
    await store.seed_count(Kind.KEM, "u", 1, 1, 59)
    assert await store.redis.get(key) == b"58"
    assert (await _claim(store, Kind.KEM, "u", 1, 1) or {})["id"] == 59
    # A gap far past the ids looked at one by one: the range is read.
    far = [{"id": i, "key": f"k{i}"} for i in (1000, 1001)]
    await store.insert_prekeys(Kind.KEM, "u", 1, 1, far, "c")
    got = [await _claim(store, Kind.KEM, "u", 1, 1) for _ in range(4)]
    assert [d and d["id"] for d in got] == [60, 1000, 1001, None]


@pytest.mark.parametrize("devices", [1, 5])  # one by one, and the bulk take
async def test_one_claim_of_both_kinds_gives_each_slot_its_own_kind(
    api: KeysApi, devices: int
) -> None:
    """Audit finding: an X25519 and an ML-KEM prekey of one device with the same id
    (clients number each kind from 1; both counts lost with Redis, or expired after
    30 days unclaimed) share an ``_id``; the claim's results were merged into one dict,
    so the ML-KEM slot got the X25519 prekey (no ``sig``: a 500 after deleting both,
    and every later claim the same, the counts then in step)."""
    store = api.keys.store
    for d in range(1, devices + 1):
        x25519 = [{"id": i, "key": f"x{i}"} for i in range(1, 11)]
        kem = [{"id": i, "key": f"k{i}", "sig": f"s{i}"} for i in range(2, 12)]
        await store.insert_prekeys(Kind.ONE_TIME, "u", d, 1, x25519, "x")
        await store.insert_prekeys(Kind.KEM, "u", d, 1, kem, "k")
        for kind in (Kind.ONE_TIME, Kind.KEM):
            await store.redis.delete(store._next_key(kind, "u", d, 1))
    slots = [(kind, "u", d, 1) for d in range(1, devices + 1) for kind in (Kind.KEM, Kind.ONE_TIME)]
    got = await store.claim_slots(slots)
    for (kind, *_), doc in zip(slots, got, strict=True):
        assert doc is not None
        if kind is Kind.KEM:
            assert (doc["id"], doc["key"], doc.get("sig")) == (2, "k2", "s2")
        else:
            assert (doc["id"], doc["key"], doc.get("sig")) == (1, "x1", None)


async def test_account_writes_are_compare_and_set(api: KeysApi) -> None:
    store = api.keys.store
    fields = {"account_key": "k1", "version": 1, "device_list": "{}", "signature": "s"}
    await store.insert_account("u", {**fields, "removing": []})
    with pytest.raises(DuplicateKeyError):
        await store.insert_account("u", {**fields, "removing": []})
    doc = await store.get_account("u")
    assert doc is not None and doc["generation"] == 1
    assert await store.replace_account("u", 1, {"version": 2, "removing": [3, 12]})
    assert not await store.replace_account("u", 1, {"version": 3, "removing": []})
    doc = await store.get_account("u")
    assert doc is not None
    assert (doc["version"], doc["generation"], doc["removing"]) == (2, 2, [3, 12])
    # Clearing ``removing`` needs the generation it was read at, and moves nothing on.
    assert not await store.removals_done("u", 1)
    assert await store.removals_done("u", 2)
    doc = await store.get_account("u")
    assert doc is not None and (doc["generation"], doc["removing"]) == (2, [])
    assert await store.get_account("u2") is None


async def test_links_are_created_once_and_approved_once(api: KeysApi) -> None:
    store = api.keys.store
    assert await store.approve_link("u", "L1", "sealed") == -1
    assert await store.redis.exists(store._link_key("u", "L1")) == 0
    assert await store.create_link("u", "L1", 5, "phone é", 60)
    assert not await store.create_link("u", "L1", 6, "other", 60)
    assert await store.get_link("u", "L1") == {
        "link_id": "L1",
        "device_id": 5,
        "name": "phone é",
        "approval": None,
    }
    assert await store.get_link("u2", "L1") is None
    assert await store.approve_link("u", "L1", "first") == 1
    assert await store.approve_link("u", "L1", "second") == 0
    link = await store.get_link("u", "L1")
    assert link is not None and link["approval"] == "first"
    assert 0 < await store.redis.ttl(store._link_key("u", "L1")) <= 60


class _Counted:
    """A collection whose reads and deletes are counted by name."""

    def __init__(self, coll: Any, calls: list[str]) -> None:
        self._coll, self._calls = coll, calls

    def __getattr__(self, name: str) -> Any:
        if name in ("find", "find_one", "delete_many", "find_one_and_delete"):
            self._calls.append(name)
        return getattr(self._coll, name)


async def test_a_bulk_claim_is_one_read_and_one_delete_whatever_its_size(
    api: KeysApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A private room's first message claims from every member device: 500 devices
    whose counts an upload started are one ``find`` and one ``delete_many`` (it was a
    ``find_one_and_delete`` each)."""
    store = api.keys.store
    devices = [(f"u{d}", 1, 1) for d in range(500)]
    for user, device, gen in devices:
        docs = [{"id": i, "key": f"{user}.{i}"} for i in (1, 2)]
        await store.insert_prekeys(Kind.KEM, user, device, gen, docs, "b")
        await store.seed_count(Kind.KEM, user, device, gen, 1)
    calls: list[str] = []
    monkeypatch.setitem(store.prekeys, Kind.KEM, _Counted(store.prekeys[Kind.KEM], calls))
    got = await _claim_all(store, Kind.KEM, devices)
    assert [d and d["key"] for d in got] == [f"{u}.1" for u, _, _ in devices]
    assert calls == ["find", "delete_many"]


async def test_a_count_lost_between_a_claims_read_and_its_delete_hands_nothing_out_twice(
    api: KeysApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one way two claims can be given the same id: Redis loses the counters while
    a claim has read its prekeys and not yet deleted them. Another claim then takes
    the same ids; the first one's delete removes none of them, so it hands none out,
    and its devices take the next ids."""
    store = api.keys.store
    devices = [(f"u{d}", 1, 1) for d in range(10)]
    for user, device, gen in devices:
        docs = [{"id": i, "key": f"{user}.{i}"} for i in range(1, 6)]
        await store.insert_prekeys(Kind.KEM, user, device, gen, docs, "b")
        await store.seed_count(Kind.KEM, user, device, gen, 1)
    real = store.prekeys[Kind.KEM]
    other: list[Doc | None] = []

    class LostMeanwhile:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        async def delete_many(self, *args: Any, **kwargs: Any) -> Any:
            if not other:  # the first claim's delete: Redis restarts, another claims
                monkeypatch.setitem(store.prekeys, Kind.KEM, real)
                for d in devices:
                    await store.redis.delete(store._next_key(Kind.KEM, *d))
                other.extend(await _claim_all(store, Kind.KEM, devices))
                monkeypatch.setitem(store.prekeys, Kind.KEM, self)
            return await real.delete_many(*args, **kwargs)

    monkeypatch.setitem(store.prekeys, Kind.KEM, LostMeanwhile())
    mine = await _claim_all(store, Kind.KEM, devices)
    assert [d and d["id"] for d in other] == [1] * 10  # the ids the first claim had read
    assert [d and d["id"] for d in mine] == [2] * 10  # not those: the next ones
    for user, device, gen in devices:
        assert await store.count_prekeys(Kind.KEM, user, device, gen) == 3
