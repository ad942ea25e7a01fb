"""A gateway's acks go to delivery together (`POST /delivery/v1/inbox/acks`), each
authenticated by its own token and answered on its own (docs/delivery.md, "Acks").
The acks a gateway writes itself are in test_direct_acks.py."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from services.common.auth import Claims, revocation_keys
from services.common.state import REDIS, REGISTRY
from tests.support.users import uid
from tests.support.wsclient import WsClient, send_frame

from .conftest import Messaging


async def _page(messaging: Messaging, token: str) -> list[dict[str, Any]]:
    resp = await messaging.delivery.get(
        "/delivery/v1/inbox", headers={"Authorization": f"Bearer {token}"}
    )
    assert resp.status == 200
    return list((await resp.json())["messages"])


async def _acks(messaging: Messaging, body: object) -> Any:
    return await messaging.delivery.post("/delivery/v1/inbox/acks", json=body)


def _calls(messaging: Messaging) -> tuple[float, float]:
    """(calls, acks) of POST /v1/inbox/acks so far, from delivery's histogram."""
    registry = messaging.delivery.server.app[REGISTRY]
    count = registry.get_sample_value("parley_delivery_ack_batch_size_count") or 0.0
    total = registry.get_sample_value("parley_delivery_ack_batch_size_sum") or 0.0
    return count, total


async def _one_waiting(messaging: Messaging) -> tuple[WsClient, str]:
    """A sender's socket and a recipient (bob) with one message ("m") waiting for him."""
    alice, bob = uid(), uid()
    messaging.issuer.users.add(bob)
    sender = await messaging.connect(alice)
    await sender.send(send_frame("m", bob, "Ym9keQ"))
    await sender.expect("stored", id="m")
    return sender, bob


async def test_each_ack_of_a_batch_is_authenticated_and_answered_on_its_own(
    messaging: Messaging,
) -> None:
    alice, bob, carol, dave = uid(), uid(), uid(), uid()
    for user in (bob, carol, dave):
        messaging.issuer.users.add(user)
    sender = await messaging.connect(alice)
    for i, to in enumerate((bob, bob, carol)):
        await sender.send(send_frame(f"m{i}", to, f"Ym9keQ{i}"))
        await sender.expect("stored", id=f"m{i}")
    tokens = {u: messaging.issuer.token(u, did=1, sid=f"s-{u}") for u in (bob, carol, dave)}
    bob_last = max(int(m["seq"]) for m in await _page(messaging, tokens[bob]))
    # dave's session was ended: his ack is refused as a request with his token would be.
    redis = messaging.delivery.server.app[REDIS]
    sid_key, _ = revocation_keys(
        messaging.settings.redis_prefix,
        Claims(sub=dave, sid=f"s-{dave}", roles=(), jti="", exp=0, did=1),
    )
    await redis.set(sid_key, "1", ex=60)

    resp = await _acks(messaging, {"acks": [
        {"token": tokens[bob], "seq": bob_last},
        {"token": tokens[carol], "seq": 10_000},
        {"token": "not.a.token", "seq": 1},
        {"token": tokens[dave], "seq": 0},
    ]})  # fmt: skip

    assert resp.status == 200
    results = (await resp.json())["results"]
    assert results[0] == {"acked": 2}
    assert [r["error"]["code"] for r in results[1:]] == [
        "seq_not_issued", "invalid_token", "token_revoked",
    ]  # fmt: skip
    # bob's items are gone and alice hears of both; carol's still waits.
    assert await _page(messaging, tokens[bob]) == []
    await sender.expect("delivered", id="m0")
    await sender.expect("delivered", id="m1")
    assert [m["body"] for m in await _page(messaging, tokens[carol])] == ["Ym9keQ2"]


async def test_a_bad_batch_is_refused_whole_and_changes_nothing(messaging: Messaging) -> None:
    sender, bob = await _one_waiting(messaging)
    token = messaging.issuer.token(bob, did=1)
    seq = (await _page(messaging, token))[0]["seq"]
    for body in (
        {"acks": []},
        {"acks": [{"token": token, "seq": -1}]},
        {"acks": [{"token": token, "seq": "1"}]},
        {"acks": [{"token": token, "seq": seq, "extra": 1}]},
        {"acks": [{"token": "", "seq": seq}]},
        {"acks": [{"token": "x", "seq": seq}] * 25},
        {"acks": [{"token": "x" * 2049, "seq": seq}]},
        {"ack": [{"token": token, "seq": seq}]},
        [{"token": token, "seq": seq}],
    ):
        resp = await _acks(messaging, body)
        assert resp.status == 422, body
        assert (await resp.json())["error"]["code"] == "validation_failed"
    assert [m["seq"] for m in await _page(messaging, token)] == [seq]
    assert [f for f in sender.drain() if f["op"] == "delivered"] == []


@pytest.mark.parametrize("direct", [False, True], ids=["through-delivery", "direct"])
async def test_sockets_acking_together_share_calls_and_each_hears_its_own_outcome(
    messaging: Messaging, direct: bool
) -> None:
    """250 sockets on one pod ack at once; the last acks a number never issued, which
    is refused alone. Through delivery (the gateway's direct acks off): taken together
    in few calls. Direct (services/gateway/acks.py): every good one written by the
    gateway, only the refused one sent to delivery."""
    if not direct:
        messaging.hub(1).acks = None
    # More than 8 calls of 24 carry at once.
    sender, sockets, seqs = await messaging.many_waiting(250)
    calls_before, acks_before = _calls(messaging)
    paths_before = _paths(messaging)

    bad = len(sockets) - 1
    for i, sock in enumerate(sockets):
        await sock.send({"op": "ack", "id": f"a{i}", "seq": seqs[i] + (1000 if i == bad else 0)})
    for i in range(bad):
        await sender.expect("delivered", id=f"m{i}")
    err = await sockets[bad].expect("error", id=f"a{bad}")
    assert err["code"] == "seq_not_issued"

    calls, acks = _calls(messaging)
    paths = _paths(messaging)
    if direct:
        assert acks - acks_before == 1  # the refused one alone
        assert paths["direct"] - paths_before["direct"] == bad
        assert paths["delivery"] - paths_before["delivery"] == 1
    else:
        assert acks - acks_before == len(sockets)
        assert calls - calls_before < len(sockets)  # taken together, not one call each
    # Only the refused one still waits.
    for i, sock in enumerate(sockets):
        await sock.send({"op": "sync", "id": f"t{i}", "after": 0})
        await sock.expect("synced", id=f"t{i}")
        waiting = [f for f in sock.drain() if f["op"] == "message"]
        assert len(waiting) == (1 if i == bad else 0)


def _paths(messaging: Messaging) -> dict[str, float]:
    """Pod 1's acks so far by path (``parley_gateway_acks_total``)."""
    registry = messaging.gateways[1].server.app[REGISTRY]
    return {
        path: registry.get_sample_value("parley_gateway_acks_total", {"path": path}) or 0.0
        for path in ("direct", "delivery")
    }


async def test_a_gateway_splits_its_acks_to_fit_deliverys_body_limit(messaging: Messaging) -> None:
    store = messaging.hub(0).store
    loop = asyncio.get_running_loop()
    token = "t" * 2048
    store._acks = [(token, i, loop.create_future()) for i in range(300)]
    sizes = []
    while store._acks:
        sizes.append(len(store._next_acks()))
    assert sum(sizes) == 300
    limit = messaging.settings.max_body_bytes
    assert all(n * (len(token) + 40) <= limit for n in sizes)
    assert len(sizes) <= 300 // 20 + 1  # and not needlessly small


async def test_a_socket_with_a_token_too_long_for_a_batch_acks_alone(messaging: Messaging) -> None:
    sender, bob = await _one_waiting(messaging)
    long_token = messaging.issuer.token(bob, did=1, padding="p" * 2100)
    assert len(long_token) > 2048
    sock = await WsClient.connect(messaging.ws_url(1), long_token)
    messaging.clients.append(sock)
    await sock.send({"op": "sync", "id": "s", "after": 0})
    seq = (await sock.expect("message"))["seq"]
    calls_before, _ = _calls(messaging)
    await sock.send({"op": "ack", "id": "a", "seq": seq})
    await sender.expect("delivered", id="m")
    assert _calls(messaging)[0] == calls_before  # not through the batch call


async def test_acks_while_delivery_is_unreachable_are_answered_unavailable(
    messaging: Messaging,
) -> None:
    users = [uid() for _ in range(3)]
    sockets = [await messaging.connect(u, pod=1) for u in users]
    store = messaging.hub(1).store
    reachable, store.delivery = store.delivery, "http://127.0.0.1:9"  # nothing listens there
    try:
        for i, sock in enumerate(sockets):
            await sock.send({"op": "ack", "id": f"a{i}", "seq": 1})
        for i, sock in enumerate(sockets):
            err = await sock.expect("error", id=f"a{i}")
            assert err["code"] == "service_unavailable"
    finally:
        store.delivery = reachable
