"""Many users at once: ``POST /keys/v1/users/bundles`` and ``/users/device-lists``
(docs/keys.md, "Many users at once"), against the one-user routes they stand for."""

from __future__ import annotations

import asyncio
from typing import Any

from services.keys.config import MAX_CLAIM_USERS, MAX_LIST_USERS, KeysConfig
from tests.keys.conftest import KeysApi, KeysFactory
from tests.keys.keygen import verify_bundle


def _listed(body: dict[str, Any]) -> dict[str, Any]:
    return {k: body[k] for k in ("user_id", "account_key", "device_list", "signature")}


async def test_a_bulk_claim_is_each_users_claim(api: KeysApi) -> None:
    await api.device("u1", 1, one_time=2, kem=2)
    await api.device("u1", 2, one_time=2, kem=2)
    await api.device("u2", 1, one_time=1, kem=1)
    await api.device("u3", 1, signed=False, one_time=2, kem=2)  # no bundle to make
    status, body = await api.claim_many(
        "alice",
        {"u2": {}, "nobody": {}, "u1": {"device_ids": [2]}, "u3": {}, "u1x": {"device_ids": [9]}},
    )
    assert status == 200
    assert api.last_headers["Cache-Control"] == "no-store"
    # In the order asked; each with its signed list, as the one-user claim answers.
    assert [c["user_id"] for c in body["claimed"]] == ["u2", "u1"]
    for claimed in body["claimed"]:
        _, alone = await api.devices_of("alice", claimed["user_id"])
        assert _listed(claimed) == _listed(alone)
        for bundle in claimed["bundles"]:
            verify_bundle(bundle)
            assert bundle["one_time_prekey"] is not None
            assert bundle["kem_prekey"]["last_resort"] is False
    assert [b["device_id"] for b in body["claimed"][1]["bundles"]] == [2]
    assert [(f["user_id"], f["code"]) for f in body["failed"]] == [
        ("nobody", "identity_not_found"),
        ("u3", "prekeys_exhausted"),
        ("u1x", "identity_not_found"),
    ]
    # Taken once each, from exactly the devices claimed; nothing from u3 or u1's 1.
    assert await api.stored("u2", 1) == (0, 0)
    assert await api.stored("u1", 2) == (1, 1)
    assert await api.stored("u1", 1) == (2, 2)
    assert await api.stored("u3", 1) == (2, 2)
    # A device the list does not name is that user's device_not_found.
    _, body = await api.claim_many("alice", {"u1": {"device_ids": [7]}})
    assert body == {
        "claimed": [],
        "failed": [{"user_id": "u1", "code": "device_not_found", "message": "Device not found"}],
    }


async def test_concurrent_bulk_claims_never_share_a_prekey(make_keys: KeysFactory) -> None:
    api = await make_keys(KeysConfig(one_time_burst=1000))
    targets = [f"t{i}" for i in range(10)]
    for t in targets:
        await api.device(t, one_time=5, kem=5)
    replies = await asyncio.gather(
        *(api.claim_many(f"c{i}", {t: {} for t in targets}) for i in range(8))
    )
    assert {status for status, _ in replies} == {200}
    for t in targets:
        bundles = [c["bundles"][0] for _, b in replies for c in b["claimed"] if c["user_id"] == t]
        ids = [b["one_time_prekey"]["id"] for b in bundles if b["one_time_prekey"]]
        kem = [b["kem_prekey"]["id"] for b in bundles if not b["kem_prekey"]["last_resort"]]
        assert len(bundles) == 8
        assert len(ids) == len(set(ids)) == 5 and len(kem) == len(set(kem)) == 5
        assert await api.stored(t) == (0, 0)


async def test_bulk_claims_spend_the_same_budgets(make_keys: KeysFactory) -> None:
    api = await make_keys(KeysConfig(claimer_burst=12, claimer_refill_s=100.0, claim_burst=2))
    for t in ("a", "b", "c"):
        await api.device(t, one_time=10, kem=10)
    # The pair's budget (2 here) is each user's own: a third claim of "a" fails alone.
    for _ in range(2):
        assert (await api.claim("mallory", "a"))[0] == 200
    status, body = await api.claim_many("mallory", {"a": {}, "b": {}})
    assert status == 200
    assert [c["user_id"] for c in body["claimed"]] == ["b"]
    assert [(f["user_id"], f["code"]) for f in body["failed"]] == [("a", "rate_limited")]
    assert await api.stored("a") == (8, 8)
    # The claimer's budget is one token per other user, all or none: 12 - 2 - 2 = 8 left.
    many: dict[str, Any] = {f"x{i}": {} for i in range(9)}
    status, body = await api.claim_many("mallory", many)
    assert (status, body["error"]["code"]) == (429, "rate_limited")
    assert "from this account" in body["error"]["message"]
    status, body = await api.claim_many("mallory", {"c": {}, **dict(list(many.items())[:7])})
    assert status == 200 and [c["user_id"] for c in body["claimed"]] == ["c"]
    assert (await api.claim("mallory", "c"))[0] == 429
    # One's own devices cost nothing.
    await api.device("mallory", one_time=3, kem=3)
    assert (await api.claim_many("mallory", {"mallory": {}}))[0] == 200


async def test_a_bulk_claim_withholds_one_time_prekeys_of_a_target_past_its_budget(
    make_keys: KeysFactory,
) -> None:
    """The target's one-time budget is each user's own in a bulk claim too: past it,
    that user's bundle comes without one-time material and its stock is untouched;
    the others' bundles come with theirs."""
    api = await make_keys(KeysConfig(one_time_burst=1))
    for t in ("d", "e"):
        await api.device(t, one_time=5, kem=5)
    assert (await api.claim("first", "d"))[0] == 200  # d's one token
    status, body = await api.claim_many("second", {"d": {}, "e": {}})
    assert status == 200 and body["failed"] == []
    got = {c["user_id"]: c["bundles"][0] for c in body["claimed"]}
    assert got["d"]["one_time_prekey"] is None and got["d"]["kem_prekey"]["last_resort"]
    assert got["e"]["one_time_prekey"] is not None
    assert await api.stored("d") == (4, 4) and await api.stored("e") == (4, 4)


async def test_bad_bulk_requests_are_refused_and_change_nothing(api: KeysApi) -> None:
    await api.device("u1", one_time=3, kem=3)
    too_many: dict[str, Any] = {f"u{i}": {} for i in range(MAX_CLAIM_USERS + 1)}
    cases: list[Any] = [
        {},
        too_many,
        {"a:b": {}},
        {"": {}},
        {"u" * 65: {}},
        {"u1": {"device_ids": []}},
        {"u1": {"device_ids": [0]}},
        {"u1": {"device_ids": ["1"]}},
        {"u1": {"device_ids": list(range(1, 102))}},
        {"u1": []},
        [{"user_id": "u1"}],
        "u1",
        None,
    ]
    for users in cases:
        status, body = await api.claim_many("alice", users)
        assert (status, body["error"]["code"]) == (422, "validation_failed"), users
    status, body = await api.call("POST", "/v1/users/bundles", "alice", {"user": ["u1"]})
    assert (status, body["error"]["code"]) == (422, "validation_failed")
    anonymous: dict[str, Any] = {"users": {"u1": {}}}
    status, body = await api.call("POST", "/v1/users/bundles", None, anonymous)
    assert (status, body["error"]["code"]) == (401, "unauthenticated")
    assert await api.stored("u1") == (3, 3)
    for ids in ([], [f"u{i}" for i in range(MAX_LIST_USERS + 1)], ["u1", "u1"], ["a b"], [5]):
        status, body = await api.device_lists("alice", ids)
        assert (status, body["error"]["code"]) == (422, "validation_failed"), ids


async def test_device_lists_are_each_users_list_and_claim_nothing(api: KeysApi) -> None:
    for i in range(30):
        await api.device(f"m{i}", 1, one_time=1, kem=1)
    await api.device("m0", 2, one_time=1, kem=1)
    asked = ["m3", "ghost", "m0", *[f"m{i}" for i in range(4, 30)]]
    status, body = await api.device_lists("alice", asked)
    assert status == 200
    assert body["missing"] == ["ghost"]
    assert [x["user_id"] for x in body["lists"]] == [u for u in asked if u != "ghost"]
    for listed in body["lists"]:
        _, alone = await api.devices_of("alice", listed["user_id"])
        assert listed == _listed(alone)
    assert [d["device_id"] for d in body["lists"][1]["device_list"]["devices"]] == [1, 2]
    assert await api.stored("m0", 1) == (1, 1) and await api.stored("m0", 2) == (1, 1)
