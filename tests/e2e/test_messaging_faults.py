"""Messaging end to end through HAProxy, with faults: kill -9 a gateway or the
delivery worker mid-flight, restart Redis, kill MongoDB (after a Redis loss too),
kill the Kafka broker.
Nothing accepted is lost or duplicated."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from pymongo import AsyncMongoClient

from tests.support.aio import eventually
from tests.support.chat import (
    Receiver,
    Sender,
    assert_exactly_once_in_order,
    b64,
    inbox_items,
    receive_all,
    unb64,
)
from tests.support.stack import System, http_status
from tests.support.users import User, signup
from tests.support.wsclient import WsClient, send_frame


async def test_real_time_across_pods_through_the_load_balancer(system: System) -> None:
    alice, bob = await signup(system.lb), await signup(system.lb)
    ca = await WsClient.connect(system.ws_url, alice.token)
    # leastconn spreads sockets, but other tests' sockets may still be open on
    # one pod: open bob's sockets until one lands on the other pod.
    extra: list[WsClient] = []
    cb = await WsClient.connect(system.ws_url, bob.token)
    while cb.ready["gateway"] == ca.ready["gateway"] and len(extra) < 8:
        extra.append(cb)
        cb = await WsClient.connect(system.ws_url, bob.token)
    for other in extra:
        await other.close()
    try:
        assert ca.ready["gateway"] != cb.ready["gateway"], "HAProxy never used the other pod"
        await ca.send(send_frame("hello", bob.user_id, b64("hello")))
        await ca.expect("accepted", id="hello")
        msg = await cb.expect("message")
        assert unb64(msg["body"]) == "hello"
        assert msg["from"] == alice.user_id
        await ca.expect("stored", id="hello")
        await cb.send({"op": "ack", "seq": msg["seq"]})
        await ca.expect("delivered", id="hello")
    finally:
        await ca.close()
        await cb.close()


async def test_kill_9_a_gateway_mid_flight_loses_and_duplicates_nothing(system: System) -> None:
    alice, bob = await signup(system.lb), await signup(system.lb)
    receiver = Receiver(system, bob)
    await receiver.sync()
    sender = Sender(system, alice, bob.user_id, "gwkill")
    n = 300
    send = asyncio.create_task(sender.run(n))
    await eventually(lambda: asyncio.sleep(0, len(sender.accepted)), lambda k: k >= 50)
    assert receiver.client is not None
    victim = receiver.client.ready["gateway"]  # the receiver's pod; the sender may share it
    system.procs.kill(victim)
    try:
        await asyncio.wait_for(send, 90)
        await receiver.listen_until(n, timeout=90)
    finally:
        system.restart(victim)
        await sender.close()
        await receiver.close()
    assert len(sender.accepted) == n
    assert_exactly_once_in_order(receiver.bodies, "gwkill", n)
    await eventually(
        lambda: asyncio.sleep(0, http_status(system.cfg.url(victim) + "/gateway/readyz")),
        lambda s: s == 200,
    )


async def test_kill_9_the_senders_gateway_with_hundreds_of_first_contacts_pending(
    system: System,
) -> None:
    """One socket sends to 200 users it never wrote to, one message each, then a second
    round: each first send waits on the gateway's look-ups of the recipient (auth and
    key directory) while the sends behind it are checked beside it and produced in
    order (docs/gateway.md, "What a pod does": send). The sender's gateway is killed as soon as
    the sends are written, with the look-ups pending (once it was killed at the first
    answer, but the look-ups in bulk answer them all at nearly the same moment, and
    the kill came after the last: nothing was tested); the sender resends
    what was not accepted on a new socket, through HAProxy to the other pod, which has
    seen none of the recipients either. Every recipient's inbox holds its own two
    messages, each once."""
    alice = await signup(system.lb)
    gate = asyncio.Semaphore(16)

    async def one() -> User:
        async with gate:
            return await signup(system.lb)

    recipients = await asyncio.gather(*(one() for _ in range(200)))
    sender = Sender(system, alice, [r.user_id for r in recipients], "first")
    n = 2 * len(recipients)
    send = asyncio.create_task(sender.run(n, pace=0))
    await asyncio.wait_for(sender.written.wait(), 60)
    assert sender.client is not None
    victim = sender.client.ready["gateway"]
    system.procs.kill(victim)
    try:
        await asyncio.wait_for(send, 120)
    finally:
        system.restart(victim)
        await sender.close()
    assert sender.reconnects >= 1, "every send was answered before the kill: nothing was tested"
    assert len(sender.accepted) == n
    bodies: list[str] = []
    async with aiohttp.ClientSession() as http:
        for j, r in enumerate(recipients):
            items = await inbox_items(http, system.lb, r.token)
            assert items is not None
            mine = [unb64(item["body"]) for item in items]
            assert sorted(mine) == sorted([f"first-{j}", f"first-{j + len(recipients)}"]), mine
            bodies += mine
    assert_exactly_once_in_order(bodies, "first", n)
    await eventually(
        lambda: asyncio.sleep(0, http_status(system.cfg.url(victim) + "/gateway/readyz")),
        lambda s: s == 200,
    )


async def test_kill_9_the_delivery_worker_mid_batch_loses_and_duplicates_nothing(
    system: System,
) -> None:
    alice, bob = await signup(system.lb), await signup(system.lb)
    sender = Sender(system, alice, bob.user_id, "dkill")
    n = 400
    send = asyncio.create_task(sender.run(n, pace=0.0005))
    # Kill as soon as the worker has stored part of the stream.
    await eventually(lambda: asyncio.sleep(0, len(sender.accepted)), lambda k: k >= 100)
    system.procs.kill("delivery")
    try:
        await asyncio.wait_for(send, 90)
    finally:
        system.restart("delivery")
        await sender.close()
    receiver = await receive_all(system, bob, n, timeout=90)
    assert_exactly_once_in_order(receiver.bodies, "dkill", n)


@pytest.mark.kills_servers
async def test_redis_losing_everything_mid_run_loses_and_duplicates_nothing(
    system: System,
) -> None:
    """kill -9 of Redis (no persistence: the hot inbox, presence, dedup records all
    gone) while a sender streams to an offline recipient (#13). Kafka still holds
    every record not yet persisted or acknowledged; delivery notices the loss,
    consumes again from its committed offsets, and the recipient gets every
    accepted message once."""
    alice, bob = await signup(system.lb), await signup(system.lb)
    sender = Sender(system, alice, bob.user_id, "rkill")
    n = 400
    send = asyncio.create_task(sender.run(n, pace=0.005))
    procs = system.stack.procs
    assert procs is not None
    await eventually(lambda: asyncio.sleep(0, len(sender.accepted)), lambda k: k >= 150)
    procs.kill("redis")
    procs.start("redis")
    try:
        await asyncio.wait_for(send, 120)
    finally:
        await sender.close()
        system.wait_ready()
    receiver = await receive_all(system, bob, n, timeout=120)
    assert len(sender.accepted) == n
    assert_exactly_once_in_order(receiver.bodies, "rkill", n)
    print(f"\nredis loss: {receiver.restored} copies stored again (same server_id), dropped")


@pytest.mark.kills_servers
async def test_a_redis_restart_tells_every_socket_to_sync_and_routes_at_once(
    system: System,
) -> None:
    """Redis restarted empty: frames routed to a pod while its channel was down are gone,
    and so is presence. Every pod must notice (redis-py's pub/sub reconnects and
    re-subscribes by itself, silently), tell each socket to `sync` (`resync`) and record
    presence again at once, so a message sent once, right after, is pushed; the same
    client id sent again is stored once."""
    alice, bob = await signup(system.lb), await signup(system.lb)
    ca = await WsClient.connect(system.ws_url, alice.token)
    cb = await WsClient.connect(system.ws_url, bob.token)
    procs = system.stack.procs
    assert procs is not None
    try:
        procs.kill("redis")
        procs.start("redis")
        for c in (ca, cb):
            frame = await c.expect("resync", timeout=30)
            assert frame["reason"] == "routing_restored"
        await exchange(ca, cb, bob, "once-after-restart", timeout=10)
        # The same id again (a client that did not see `accepted`): nothing new is left
        # once the ack is applied (it goes to delivery asynchronously: sync until so).
        await ca.send(send_frame("once-after-restart", bob.user_id, b64("text once-after-restart")))
        await ca.expect("accepted", id="once-after-restart")
        syncs = iter(range(1000))

        async def left() -> list[dict[str, object]]:
            sid = f"s{next(syncs)}"
            await cb.send({"op": "sync", "id": sid, "after": 0})
            await cb.expect("synced", id=sid)
            return [f for f in cb.drain() if f["op"] == "message"]

        assert await eventually(left, lambda frames: not frames, timeout=10) == []
    finally:
        await ca.close()
        await cb.close()
        system.wait_ready()


async def delivery_metric(system: System, name: str) -> float:
    """A counter of the delivery process, read from its own /metrics."""
    url = system.cfg.url("delivery") + "/delivery/metrics"
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        text = await resp.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + " "))  # fmt: skip


async def exchange(ws: WsClient, rx: WsClient, to: User, cid: str, timeout: float = 20) -> None:
    """``cid`` from ``ws`` to ``to`` (connected as ``rx``): pushed, acknowledged, and
    ``delivered`` back to the sender."""
    await ws.send(send_frame(cid, to.user_id, b64(f"text {cid}")))
    got = await rx.expect("message", timeout=timeout)
    assert unb64(got["body"]) == f"text {cid}"
    await rx.send({"op": "ack", "seq": got["seq"]})
    await ws.expect("delivered", id=cid, timeout=timeout)


@pytest.mark.kills_servers
async def test_mongodb_killed_mid_run_loses_and_duplicates_nothing(system: System) -> None:
    """kill -9 of MongoDB, the store of what waits (#13), while a sender streams to an
    offline recipient, and kept down until the persister has failed to move what
    waited past ``hot_persist_after_s``: sends go on being accepted (the hot path is
    Redis and Kafka), nothing is dropped from the hot inbox nor committed past in
    Kafka, and connected users go on chatting (a first message between two users
    too); once MongoDB is back the persister moves it all, the recipient gets every
    accepted message once, in order, from MongoDB and Redis together, and the new
    pair of contacts is recorded."""
    alice, bob = await signup(system.lb), await signup(system.lb)
    carol, dave = await signup(system.lb), await signup(system.lb)
    cc = await WsClient.connect(system.ws_url, carol.token)
    cd = await WsClient.connect(system.ws_url, dave.token)
    erin = await signup(system.lb)
    ce = await WsClient.connect(system.ws_url, erin.token)
    await cc.send(send_frame("to-erin", erin.user_id, b64("hi erin")))
    await ce.send({"op": "ack", "seq": (await ce.expect("message"))["seq"]})
    # dave's pod looks erin up (a send refused for its copies: nothing stored, and
    # delivery has never seen the two talk).
    await cd.send(send_frame("look", erin.user_id, b64("x"), devices=(1, 2)))
    assert (await cd.expect("error", id="look"))["code"] == "devices_changed"
    await cc.send(send_frame("before", dave.user_id, b64("hi")))
    await cd.send({"op": "ack", "seq": (await cd.expect("message"))["seq"]})
    await cc.expect("delivered", id="before")
    sender = Sender(system, alice, bob.user_id, "mkill")
    n = 300
    persisted = await delivery_metric(system, "parley_delivery_persisted_total")
    failed = await delivery_metric(system, "parley_delivery_persist_failures_total")
    send = asyncio.create_task(sender.run(n, pace=0.025))  # under the send limit
    procs = system.stack.procs
    assert procs is not None
    await eventually(lambda: asyncio.sleep(0, len(sender.accepted)), lambda k: k >= 100)
    procs.kill("mongo")
    try:
        # MongoDB is down: every message is still accepted, and the persister, once
        # the first ones waited long enough, fails (and keeps them).
        await asyncio.wait_for(send, 120)
        await eventually(
            lambda: delivery_metric(system, "parley_delivery_persist_failures_total"),
            lambda k: k > failed,
            timeout=60,
        )
        ready = system.cfg.url("ops") + "/delivery/readyz"
        # Unready while MongoDB is away (awaited: under load one answer can take past the
        # probe's 3 s, a 0 here, as the readiness check waits on MongoDB's timeout).
        await eventually(lambda: asyncio.to_thread(http_status, ready), lambda s: s == 503)
        # Two connected users chat on meanwhile: pushed, acknowledged, `delivered`.
        await cc.send(send_frame("during", dave.user_id, b64("still here")))
        got = await cd.expect("message", timeout=20)
        assert unb64(got["body"]) == "still here"
        await cd.send({"op": "ack", "seq": got["seq"]})
        await cc.expect("delivered", id="during", timeout=20)
        # A first message between two users too: whom to tell of a key change is
        # recorded once MongoDB is back, not in the message's way.
        await cd.send(send_frame("first", erin.user_id, b64("hello erin")))
        got = await ce.expect("message", timeout=20)
        assert unb64(got["body"]) == "hello erin"
    finally:
        procs.start("mongo")
        for c in (cc, cd, ce):
            await c.close()
        await sender.close()
        system.wait_ready()
    assert len(sender.accepted) == n
    # Back: what waited is moved to MongoDB (bob has been offline for seconds).
    await eventually(
        lambda: delivery_metric(system, "parley_delivery_persisted_total"),
        lambda k: k >= persisted + 100,
        timeout=60,
    )
    receiver = await receive_all(system, bob, n, timeout=120)
    assert_exactly_once_in_order(receiver.bodies, "mkill", n)
    # dave and erin are recorded as contacts (whom to tell of a key change), late.
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(system.stack.cfg.url("mongo"))
    try:
        contacts = mongo[f"{system.prefix}_delivery"]["contacts"]
        wanted = {f"{dave.user_id}|{erin.user_id}.1", f"{erin.user_id}|{dave.user_id}.1"}

        async def recorded() -> int:
            return await contacts.count_documents({"_id": {"$in": sorted(wanted)}})

        await eventually(recorded, lambda k: k == 2, timeout=30)
    finally:
        await mongo.close()


@pytest.mark.kills_servers
async def test_after_redis_lost_everything_a_mongodb_outage_holds_up_no_first_item(
    system: System,
) -> None:
    """Redis restarted empty, then MongoDB killed. The first item to an inbox Redis no
    longer held (gina's, numbered before the loss) or never held (fred's, a device
    that never had one) was numbered from MongoDB's checkpoints, so it waited, and
    its whole partition with it, for MongoDB. Once delivery has copied the
    checkpoints back into Redis (``ctrall`` says so), both arrive while MongoDB is
    down, and fred's new counter reaches MongoDB once it is back."""
    carol, gina, fred = [await signup(system.lb) for _ in range(3)]
    procs = system.stack.procs
    assert procs is not None
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(system.stack.cfg.url("mongo"))
    redis = aioredis.Redis.from_url(system.stack.cfg.url("redis"))
    counters = mongo[f"{system.prefix}_delivery"]["counters"]
    clients: list[WsClient] = []
    try:
        cc = await WsClient.connect(system.ws_url, carol.token)
        cg = await WsClient.connect(system.ws_url, gina.token)
        clients += [cc, cg]
        await cc.send(send_frame("before", gina.user_id, b64("hi")))
        await cg.send({"op": "ack", "seq": (await cg.expect("message"))["seq"]})
        await eventually(
            lambda: counters.find_one({"_id": f"{gina.user_id}.1"}), lambda d: d is not None
        )
        procs.kill("redis")
        procs.start("redis")
        system.wait_ready()
        await eventually(
            lambda: redis.exists(f"{system.prefix}:ctrall"), lambda k: k == 1, timeout=60
        )
        for c in clients:
            await c.close()
        cc = await WsClient.connect(system.ws_url, carol.token)
        cg = await WsClient.connect(system.ws_url, gina.token)
        cf = await WsClient.connect(system.ws_url, fred.token)
        clients = [cc, cg, cf]
        # carol's pod reads both recipients (sends refused for their copies: nothing
        # stored), so it can route to them while the auth service cannot answer.
        for who, cid in ((gina, "look-g"), (fred, "look-f")):
            await cc.send(send_frame(cid, who.user_id, b64("x"), devices=(1, 2)))
            assert (await cc.expect("error", id=cid))["code"] == "devices_changed"
        procs.kill("mongo")
        try:
            await exchange(cc, cg, gina, "to-gina")
            await exchange(cc, cf, fred, "to-fred")
        finally:
            procs.start("mongo")
            system.wait_ready()
        # fred's counter, started in Redis alone, reaches MongoDB with its skipped range.
        saved = await eventually(
            lambda: counters.find_one({"_id": f"{fred.user_id}.1"}), lambda d: d is not None
        )
        assert saved is not None and saved["acked"] == saved["n"] and saved.get("g")
    finally:
        for c in clients:
            await c.close()
        await redis.aclose()
        await mongo.close()


@pytest.mark.kills_servers
async def test_gateways_restarted_while_mongodb_is_down_route_between_users_they_never_saw(
    system: System,
) -> None:
    """Both gateway pods restarted (kill -9) while MongoDB is down: they hold nothing in
    their caches, and the auth service and the key directory cannot answer. What
    other pods noted in Redis (a user id the auth service vouched for) and the key
    directory's copies of the device lists route alice's and bob's messages:
    pushed, acknowledged, ``delivered``, both ways."""
    alice, bob = await signup(system.lb), await signup(system.lb)
    procs, infra = system.procs, system.stack.procs
    assert infra is not None
    clients: list[WsClient] = []
    try:
        for sender, to, cid in ((alice, bob, "a1"), (bob, alice, "b1")):
            ws = await WsClient.connect(system.ws_url, sender.token)
            rx = await WsClient.connect(system.ws_url, to.token)
            clients += [ws, rx]
            await exchange(ws, rx, to, cid)
        for c in clients:
            await c.close()
        infra.kill("mongo")
        try:
            for gw in ("gateway1", "gateway2"):
                procs.kill(gw)
                system.restart(gw)
                ready = system.cfg.url(gw) + "/gateway/readyz"
                await eventually(
                    lambda u=ready: asyncio.to_thread(http_status, u), lambda s: s == 200
                )
            ca = await WsClient.connect(system.ws_url, alice.token)
            cb = await WsClient.connect(system.ws_url, bob.token)
            clients = [ca, cb]
            await exchange(ca, cb, bob, "a2")
            await exchange(cb, ca, alice, "b2")
        finally:
            infra.start("mongo")
            system.wait_ready()
    finally:
        for c in clients:
            await c.close()


@pytest.mark.kills_servers
async def test_kafka_killed_mid_run_loses_and_duplicates_nothing(system: System) -> None:
    """kill -9 of the broker, the log of record, while a sender streams to a connected
    recipient that acknowledges as it goes: sends the broker did not acknowledge are
    refused or time out and the sender resends them (same ids); once it is back the
    producers and consumers reconnect by themselves, and the recipient gets every
    accepted message once, in order."""
    alice, bob = await signup(system.lb), await signup(system.lb)
    receiver = Receiver(system, bob)
    await receiver.sync()
    listening = asyncio.create_task(receiver.listen_until(300, timeout=240))
    sender = Sender(system, alice, bob.user_id, "kkill")
    n = 300
    send = asyncio.create_task(sender.run(n, pace=0.025))  # under the send limit
    procs = system.stack.procs
    assert procs is not None
    try:
        await eventually(lambda: asyncio.sleep(0, len(sender.accepted)), lambda k: k >= 100)
        procs.kill("kafka")
        ready = system.cfg.url("ops") + "/delivery/readyz"
        await eventually(
            lambda: asyncio.to_thread(http_status, ready), lambda s: s == 503, timeout=60
        )
        # Down: nothing sent now is accepted. The gateway answers with an error (at
        # the latest when the producer's request times out). (Counting the stream's
        # acceptances after the kill was not a test of it: under load its `accepted`
        # frames for messages the broker had acknowledged still came in after it.)
        probe = await WsClient.connect(system.ws_url, alice.token)
        try:
            await probe.send(send_frame("kkill-probe", bob.user_id, "cHJvYmU"))
            answer = await probe.expect_any(("accepted", "error"), timeout=60)
        finally:
            await probe.close()
        assert (answer["op"], answer.get("code")) == ("error", "service_unavailable"), answer
        procs.start("kafka")
        await asyncio.wait_for(send, 240)
        await listening
    finally:
        send.cancel()
        listening.cancel()
        await sender.close()
        await receiver.close()
        system.wait_ready()
    assert len(sender.accepted) == n
    assert_exactly_once_in_order(receiver.bodies, "kkill", n)
