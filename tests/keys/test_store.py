"""The store on the real servers: idempotent indexes, atomic claims."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
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
    pin = {"signing_key": "S", "dh_key": "D"}
    assert await store.create_link("u", "L1", 5, "phone é", 60, sid="s1", identity=pin)
    assert not await store.create_link("u", "L1", 6, "other", 60, sid="s2", identity=pin)
    assert await store.get_link("u", "L1") == {
        "link_id": "L1",
        "device_id": 5,
        "name": "phone é",
        "approval": None,
        "e_pub": None,
        "sid": "s1",
        "signing_key": "S",
        "dh_key": "D",
    }
    assert await store.get_link("u2", "L1") is None
    # Found from its device (and only from it), with an e_pub when one is given.
    assert await store.create_link("u", "L2", 5, "x", 60, sid="s1", identity=pin, e_pub="E")
    assert [(d["link_id"], d["e_pub"]) for d in await store.device_links("u", 5)] == [
        ("L1", None),
        ("L2", "E"),
    ]
    assert await store.device_links("u", 6) == []
    assert 0 < await store.redis.ttl(store._device_links_key("u", 5)) <= 60
    # The pin moves while the link is unapproved, not after.
    assert await store.repin_link("u", "L2", {"signing_key": "S2", "dh_key": "D2"})
    link = await store.get_link("u", "L2")
    assert link is not None and (link["signing_key"], link["dh_key"]) == ("S2", "D2")
    assert not await store.repin_link("u", "L9", pin)  # none: nothing created
    assert await store.redis.exists(store._link_key("u", "L9")) == 0
    assert await store.approve_link("u", "L1", "first") == 1
    assert await store.approve_link("u", "L1", "second") == 0
    link = await store.get_link("u", "L1")
    assert link is not None and link["approval"] == "first"
    assert not await store.repin_link("u", "L1", {"signing_key": "S2", "dh_key": "D2"})
    assert (await store.get_link("u", "L1") or {})["signing_key"] == "S"
    assert 0 < await store.redis.ttl(store._link_key("u", "L1")) <= 60


class _Counted:
    """A collection whose reads, marks and deletes are counted by name."""

    def __init__(self, coll: Any, calls: list[str]) -> None:
        self._coll, self._calls = coll, calls

    def __getattr__(self, name: str) -> Any:
        if name in ("find", "find_one", "update_many", "delete_many", "find_one_and_delete"):
            self._calls.append(name)
        return getattr(self._coll, name)


async def test_a_bulk_claim_is_one_mark_one_read_and_one_delete_whatever_its_size(
    api: KeysApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A private room's first message claims from every member device: 500 devices
    whose counts an upload started are one ``update_many`` (the claim's mark), one
    ``find`` and one ``delete_many`` (it was a ``find_one_and_delete`` each)."""
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
    assert calls == ["update_many", "find", "delete_many"]


async def test_a_count_lost_between_a_claims_count_and_its_mark_hands_nothing_out_twice(
    api: KeysApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One way two claims can be given the same id: Redis loses the counters while
    a claim has been given its ids and not yet marked its prekeys. Another claim then
    takes the same ids; the first one's mark takes none of them, so it hands none out,
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

        async def update_many(self, *args: Any, **kwargs: Any) -> Any:
            if not other:  # the first claim's mark: Redis restarts, another claims
                monkeypatch.setitem(store.prekeys, Kind.KEM, real)
                for d in devices:
                    await store.redis.delete(store._next_key(Kind.KEM, *d))
                other.extend(await _claim_all(store, Kind.KEM, devices))
                monkeypatch.setitem(store.prekeys, Kind.KEM, self)
            return await real.update_many(*args, **kwargs)

    monkeypatch.setitem(store.prekeys, Kind.KEM, LostMeanwhile())
    mine = await _claim_all(store, Kind.KEM, devices)
    assert [d and d["id"] for d in other] == [1] * 10  # the ids the first claim was given
    assert [d and d["id"] for d in mine] == [2] * 10  # not those: the next ones
    for user, device, gen in devices:
        assert await store.count_prekeys(Kind.KEM, user, device, gen) == 3


class _BeforeBulkDelete:
    """A prekey collection that runs ``meanwhile`` once, just before a bulk claim's
    ``delete_many`` (one of more than four ``_id``s): what other requests may do while a
    claim is between its read and its delete."""

    def __init__(self, coll: Any, meanwhile: Callable[[], Awaitable[None]]) -> None:
        self._coll, self._meanwhile, self.fired = coll, meanwhile, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._coll, name)

    async def delete_many(self, query: Doc, *args: Any, **kwargs: Any) -> Any:
        ids = query["_id"].get("$in") if isinstance(query.get("_id"), dict) else None
        if ids and len(ids) > 4 and not self.fired:
            self.fired = True
            await self._meanwhile()
        return await self._coll.delete_many(query, *args, **kwargs)


async def test_an_id_uploaded_again_during_a_bulk_claim_is_never_handed_out_twice(
    api: KeysApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Audit finding: a bulk claim read device 1's prekey 1 (K1); before its
    ``delete_many``, another claim took K1 and the device uploaded id 1 again (ids of
    claimed prekeys may be uploaded again); the bulk claim's delete removed the new
    prekey, its count matched, and it handed out K1, which the other claim had too.
    Now a claim takes what its own mark took: K1 goes to one claim only."""
    store = api.keys.store
    devices = [("u", d, 1) for d in range(1, 6)]
    for user, device, gen in devices:
        docs = [{"id": i, "key": f"{device}.{i}", "sig": "s"} for i in (1, 2, 3)]
        await store.insert_prekeys(Kind.KEM, user, device, gen, docs, "b")
        await store.seed_count(Kind.KEM, user, device, gen, 1)
    others: list[Doc | None] = []

    async def meanwhile() -> None:
        monkeypatch.setitem(store.prekeys, Kind.KEM, slow._coll)
        # Another claim of device 1 (its counter put back by an upload of id 0 first).
        await store.insert_prekeys(Kind.KEM, "u", 1, 1, [{"id": 0, "key": "1.0"}], "c")
        await store.seed_count(Kind.KEM, "u", 1, 1, 0)
        others.append(await _claim(store, Kind.KEM, "u", 1, 1))  # id 0
        others.append(await _claim(store, Kind.KEM, "u", 1, 1))  # id 1, unless taken
        with contextlib.suppress(DuplicatePrekeyIds):  # id 1 again, if it is gone
            await store.insert_prekeys(Kind.KEM, "u", 1, 1, [{"id": 1, "key": "1.1b"}], "d")
        monkeypatch.setitem(store.prekeys, Kind.KEM, slow)

    slow = _BeforeBulkDelete(store.prekeys[Kind.KEM], meanwhile)
    monkeypatch.setitem(store.prekeys, Kind.KEM, slow)
    mine = await _claim_all(store, Kind.KEM, devices)
    assert slow.fired
    keys = [d["key"] for d in [*mine, *others] if d is not None]
    assert len(keys) == len(set(keys)), keys  # each prekey to one claim
    assert [d and d["key"] for d in mine] == [f"{d}.1" for d in range(1, 6)]


async def test_a_prekey_gone_during_a_bulk_claim_costs_the_others_nothing(
    api: KeysApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Audit finding: one prekey of a bulk claim deleted between its read and its
    delete (its device removed) made the claim hand out none of those it read, all
    deleted already: a prekey of every other device wasted. Now each device loses the
    one prekey it hands out."""
    store = api.keys.store
    devices = [("u", d, 1) for d in range(1, 7)]
    for user, device, gen in devices:
        docs = [{"id": i, "key": f"{device}.{i}"} for i in (1, 2, 3)]
        await store.insert_prekeys(Kind.ONE_TIME, user, device, gen, docs, "b")
        await store.seed_count(Kind.ONE_TIME, user, device, gen, 1)

    async def meanwhile() -> None:
        await store.delete_device("u", 6)  # its prekeys go with it

    slow = _BeforeBulkDelete(store.prekeys[Kind.ONE_TIME], meanwhile)
    monkeypatch.setitem(store.prekeys, Kind.ONE_TIME, slow)
    got = await _claim_all(store, Kind.ONE_TIME, devices)
    assert slow.fired
    assert [d and d["key"] for d in got[:5]] == [f"{d}.1" for d in range(1, 6)]
    for user, device, gen in devices[:5]:
        assert await store.count_prekeys(Kind.ONE_TIME, user, device, gen) == 2


async def test_prekeys_left_below_the_count_are_found_again(api: KeysApi) -> None:
    """Audit finding: claims that missed (a device with none left) count ids out; an
    upload whose ids the count had passed and that failed before it put the count back
    (Redis away, the process killed) left them below it: never handed out, counted as
    stock, so ``prekeys_low`` never came. Now a claim that finds nothing above the
    count but prekeys below it puts the count back and takes them, lowest first; what
    claims under way have marked is left to them."""
    store = api.keys.store
    for _ in range(30):  # none stored: each miss counts an id out
        assert await _claim(store, Kind.KEM, "u", 1, 1) is None
    docs = [{"id": i, "key": f"k{i}"} for i in range(2, 102)]
    await store.insert_prekeys(Kind.KEM, "u", 1, 1, docs, "b")  # no seed_count: it failed
    assert int(await store.redis.get(store._next_key(Kind.KEM, "u", 1, 1)) or 0) > 2
    # A claim under way has marked id 2 (not yet deleted): nobody else hands it out.
    coll = store.prekeys[Kind.KEM]
    await coll.update_one({"_id": store_mod.prekey_key("u", 1, 1, 2)}, {"$set": {"claim": "x"}})
    got = [await _claim(store, Kind.KEM, "u", 1, 1) for _ in range(101)]
    ids = [d["id"] for d in got if d is not None]
    assert sorted(ids) == list(range(3, 102)) and len(ids) == len(set(ids))
    assert await store.count_prekeys(Kind.KEM, "u", 1, 1) == 1  # the marked one
    # In bulk as well.
    devices = [(f"b{d}", 1, 1) for d in range(5)]
    for user, device, gen in devices:
        await store.insert_prekeys(Kind.ONE_TIME, user, device, gen, [{"id": 3, "key": user}], "b")
        await store.redis.set(store._next_key(Kind.ONE_TIME, user, device, gen), 40)
    got = await _claim_all(store, Kind.ONE_TIME, devices)
    assert [d and d["key"] for d in got] == [u for u, _, _ in devices]
