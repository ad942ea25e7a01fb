"""Delivery never stalls (issue #10), on the real servers at real size.

A large inbox (tens of thousands of waiting items) plus a burst of resends of
stored ids; a ``kill -9`` of delivery in the middle of storing into that
inbox; poisoned records. Unrelated users keep chatting through HAProxy the
whole time, and every message is stored exactly once.

Records are produced straight onto ``parley.messages`` as a gateway would
(the same envelope), so the inbox can be filled in seconds instead of at a
client's send rate.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from parley_contract import envelopes as e
from pymongo import AsyncMongoClient

from services.delivery.hot import HotInbox
from services.delivery.store import dedup_key
from tests.support.aio import eventually
from tests.support.stack import System, http_status
from tests.support.users import signup
from tests.support.wsclient import WsClient, send_frame

SEED = 20_000  # items waiting in one inbox before the burst

# Real sizes take real time (minutes on a loaded 2-core machine): the per-test
# limit is raised for this module; the waits inside stay bounded.
pytestmark = pytest.mark.timeout(900)


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


@pytest.fixture(scope="module")
async def kafka(system: System) -> AsyncIterator[AIOKafkaProducer]:
    producer = AIOKafkaProducer(
        bootstrap_servers=system.stack.cfg.url("kafka"), enable_idempotence=False, linger_ms=5
    )
    await producer.start()
    yield producer
    await producer.stop()


@pytest.fixture(scope="module")
async def db(system: System) -> AsyncIterator[Any]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(system.stack.cfg.url("mongo"))
    yield client[f"{system.prefix}_delivery"]
    await client.close()


def topic(system: System, name: str) -> str:
    return f"{system.prefix}.{name}"


def env_for(to: str, sender: str, cid: str) -> e.MessageEnvelope:
    return e.message_envelope(
        sender=sender,
        sender_device=1,
        sender_sid="sid",
        peer=to,
        user=to,
        device=1,
        client_id=cid,
        body=_b64(cid),
        commitment=None,
    )


async def produce(kafka: AIOKafkaProducer, system: System, envs: list[e.MessageEnvelope]) -> None:
    acks = [
        await kafka.send(topic(system, "messages"), e.encode(env), key=env.inbox.encode())
        for env in envs
    ]
    await asyncio.gather(*acks)


async def inbox_size(db: Any, user: str) -> int:
    return int(await db["inbox"].count_documents({"user": user}))


async def chat(system: System, n: int) -> list[str]:
    """Two unrelated users exchange ``n`` messages through HAProxy; returns what arrived."""
    alice, bob = await signup(system.lb), await signup(system.lb)
    ca = await WsClient.connect(system.ws_url, alice.token)
    cb = await WsClient.connect(system.ws_url, bob.token)
    got: list[str] = []
    try:
        for i in range(n):
            await ca.send(send_frame(f"c{i}", bob.user_id, _b64(f"c{i}")))
            await asyncio.sleep(0.02)
        while len(got) < n:
            frame = await cb.next(timeout=60)
            if frame["op"] == "message" and frame["body"] not in got:
                got.append(frame["body"])
                await cb.send({"op": "ack", "seq": frame["seq"]})
    finally:
        await ca.close()
        await cb.close()
    return got


async def test_a_resend_burst_into_a_large_inbox_does_not_stall_anyone(
    system: System, kafka: AIOKafkaProducer, db: Any
) -> None:
    big = await signup(system.lb, "big")
    seed = [env_for(big.user_id, f"s{i % 50}", f"m{i}") for i in range(SEED)]
    await produce(kafka, system, seed)
    # Generous: the embedded store fills ~1,500 items/s alone, far fewer on a busy machine.
    await eventually(lambda: inbox_size(db, big.user_id), lambda n: n >= SEED, timeout=420)

    # Every 25th stored id comes back (a client resending after a reconnect),
    # twice, while two other users chat: they must not wait on the burst.
    resends = [env_for(big.user_id, f"s{i % 50}", f"m{i}") for i in range(0, SEED, 25)] * 2
    burst = asyncio.create_task(produce(kafka, system, resends))
    got = await asyncio.wait_for(chat(system, 40), 120)
    await burst
    assert sorted(got) == sorted(_b64(f"c{i}") for i in range(40))

    # The burst was consumed (the worker's duplicate counter says so) and
    # nothing was stored twice.
    async def duplicates() -> float:
        url = system.cfg.url("delivery") + "/delivery/metrics"
        async with aiohttp.ClientSession() as http, http.get(url) as resp:
            text = await resp.text()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("parley_delivery_duplicates_total")
        )

    await eventually(duplicates, lambda d: d >= len(resends), timeout=120)
    assert await inbox_size(db, big.user_id) == SEED
    ids = await db["inbox"].distinct("client_id", {"user": big.user_id})
    assert len(ids) == SEED


async def test_kill_9_delivery_while_it_fills_a_large_inbox(
    system: System, kafka: AIOKafkaProducer, db: Any
) -> None:
    big = await signup(system.lb, "big")
    n = 12_000
    await produce(kafka, system, [env_for(big.user_id, "s", f"k{i}") for i in range(n)])
    await eventually(lambda: inbox_size(db, big.user_id), lambda k: k >= 1_000, timeout=120)
    system.procs.kill("delivery")
    stored_at_kill = await inbox_size(db, big.user_id)
    system.restart("delivery")
    try:
        # Recovery: ready again within seconds, then the rest of the stream.
        await eventually(
            lambda: asyncio.sleep(0, http_status(system.cfg.url("delivery") + "/delivery/readyz")),
            lambda s: s == 200,
            timeout=30,
        )
        await eventually(lambda: inbox_size(db, big.user_id), lambda k: k >= n, timeout=420)
    finally:
        system.wait_ready()
    assert stored_at_kill < n, "the kill came after the whole stream was stored"
    assert await inbox_size(db, big.user_id) == n
    assert len(await db["inbox"].distinct("client_id", {"user": big.user_id})) == n
    got = await asyncio.wait_for(chat(system, 10), 60)
    assert len(got) == 10


async def test_poisoned_records_are_dead_lettered_and_the_rest_delivered(
    system: System, kafka: AIOKafkaProducer, db: Any
) -> None:
    rcpt = await signup(system.lb)
    good = [env_for(rcpt.user_id, "s", f"g{i}") for i in range(20)]
    # A record that passes the contract but that the store cannot take (its
    # dedup record in the hot inbox is corrupt: a seq that is not a number), so
    # that the bisecting retry must isolate it among good ones; and one that is
    # not even JSON.
    poison = env_for(rcpt.user_id, "s", "poison")
    redis = aioredis.Redis.from_url(system.cfg.url("redis"))
    hot = HotInbox(redis, system.prefix, 3600)
    try:
        dedup = dedup_key(e.inbox_id(rcpt.user_id, 1), "s", "poison")
        await redis.set(hot.dup_key(dedup), "corrupt|x", ex=3600)
    finally:
        await redis.aclose()
    name = topic(system, "messages")
    key = e.inbox_id(rcpt.user_id, 1).encode()
    acks = [await kafka.send(name, e.encode(env), key=key) for env in good[:10]]
    acks.append(await kafka.send(name, e.encode(poison), key=key))
    acks.append(await kafka.send(name, b'{"kind": "message", "to": "truncated', key=key))
    acks += [await kafka.send(name, e.encode(env), key=key) for env in good[10:]]
    await asyncio.gather(*acks)

    await eventually(lambda: inbox_size(db, rcpt.user_id), lambda k: k >= 20, timeout=90)
    stored = await db["inbox"].distinct("client_id", {"user": rcpt.user_id})
    assert sorted(stored) == sorted(f"g{i}" for i in range(20))

    consumer = AIOKafkaConsumer(
        topic(system, "dead-letters"), bootstrap_servers=system.stack.cfg.url("kafka"),
        auto_offset_reset="earliest", enable_auto_commit=False, group_id=None,
    )  # fmt: skip
    await consumer.start()
    try:
        dead: list[Any] = []

        async def read() -> int:
            batch = await consumer.getmany(timeout_ms=500)
            dead.extend(r for part in batch.values() for r in part if r.key == key)
            return len(dead)

        await eventually(read, lambda k: k >= 2, timeout=60)
    finally:
        await consumer.stop()
    reasons = {dict(r.headers)["dlq_reason"]: r for r in dead}
    assert set(reasons) == {b"failed", b"malformed"}
    assert orjson.loads(reasons[b"failed"].value)["client_id"] == "poison"
    assert dict(reasons[b"failed"].headers)["dlq_error"] == b"ValueError"
    assert dict(reasons[b"failed"].headers)["dlq_source"].startswith(name.encode() + b"/")


async def test_an_ack_of_thousands_keeps_the_senders_socket_and_brings_every_receipt(
    system: System, kafka: AIOKafkaProducer
) -> None:
    """One ack that covers thousands of one sender's messages (a device back from a
    long absence acks what it read) releases that many `delivered` receipts to the
    sender's socket in one burst. The gateway once counted such a burst against a
    slow reader's frame limit (1,000) and closed the sender (4008); a burst is
    bounded by bytes only (docs/gateway.md, "Backpressure")."""
    n = 3_000
    alice, bob = await signup(system.lb), await signup(system.lb)
    ca = await WsClient.connect(system.ws_url, alice.token)
    cb: WsClient | None = None
    try:
        await produce(
            kafka, system, [env_for(bob.user_id, alice.user_id, f"a{i}") for i in range(n)]
        )
        stored = 0
        while stored < n:
            frame = await ca.next(timeout=120)
            stored += frame["op"] == "stored"
        cb = await WsClient.connect(system.ws_url, bob.token)
        seqs: list[int] = []
        after, page = 0, 0
        while True:  # read everything without acknowledging any of it
            await cb.send({"op": "sync", "id": f"p{page}", "after": after, "limit": 200})
            done = await cb.expect("synced", id=f"p{page}", timeout=30)
            after, page = int(done["last"]), page + 1
            if not done["more"]:
                break
        seqs = [m["seq"] for m in cb.drain() if m["op"] == "message"]
        assert len(set(seqs)) == n
        await cb.send({"op": "ack", "seq": max(seqs)})
        delivered: set[str] = set()
        while len(delivered) < n:
            try:
                frame = await ca.next(timeout=60)
            except TimeoutError:
                raise AssertionError(
                    f"{len(delivered)} receipts of {n}; the sender's socket closed with "
                    f"{ca.close_code}"
                ) from None
            assert frame["op"] == "delivered", frame
            delivered.add(frame["id"])
        assert delivered == {f"a{i}" for i in range(n)}
        # The sender's socket is still open and in use.
        assert not ca.closed.is_set()
        await ca.send(send_frame("after", bob.user_id, _b64("after")))
        await ca.expect("accepted", id="after")
    finally:
        await ca.close()
        if cb is not None:
            await cb.close()
