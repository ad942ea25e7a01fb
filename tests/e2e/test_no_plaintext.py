"""The server stores nothing readable.

After a conversation through the real system (real-time messages, and
messages still waiting, unacknowledged, in an offline user's inbox), and a
private room's (sender-key messages, their keys distributed pairwise, some
waiting in an offline member's inbox), scan
every document of every MongoDB database with the system's prefix, every
record of every Kafka topic with the prefix and every Redis key with the
prefix, and find none of the plaintexts sent, nor any base64 form of them, with one
exception on purpose: the message a recipient reported, in the reports collection
(docs/moderation-messages.md).
A positive control (the users' ids, which the server must know) proves
that the scan does reach the data.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterable
from pathlib import Path

import bson
import redis
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from parley import Client
from parley.client import Message, RoomMessage
from parley.store import KdfParams
from pymongo import MongoClient

from tests.support.secrets import forms
from tests.support.stack import System

PASSWORD = "correct horse battery staple"


def mongo_blobs(system: System) -> Iterable[tuple[str, bytes]]:
    client: MongoClient[dict[str, object]] = MongoClient(system.stack.cfg.url("mongo"))
    try:
        names = [n for n in client.list_database_names() if n.startswith(system.prefix)]
        assert names, "the system's databases exist"
        for name in names:
            db = client[name]
            for coll in db.list_collection_names():
                for doc in db[coll].find():
                    yield f"mongo {name}.{coll}", bson.encode(doc) + repr(doc).encode()
    finally:
        client.close()


async def kafka_blobs(system: System) -> list[tuple[str, bytes]]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=system.stack.cfg.url("kafka"), auto_offset_reset="earliest"
    )
    await consumer.start()
    out: list[tuple[str, bytes]] = []
    try:
        topics = sorted(t for t in await consumer.topics() if t.startswith(system.prefix))
        assert topics, "the system's topics exist"
        # Every partition up front, asked for by name: a metadata request for no topics
        # in particular answers none (Kafka's rule for v1+), so the consumer's own
        # metadata knows none of them yet.
        admin = AIOKafkaAdminClient(bootstrap_servers=system.stack.cfg.url("kafka"))
        await admin.start()
        try:
            described = await admin.describe_topics(topics)
        finally:
            await admin.close()
        parts = [
            TopicPartition(t["topic"], p["partition"]) for t in described for p in t["partitions"]
        ]
        assert {tp.topic for tp in parts} == set(topics)
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        while [tp for tp in parts if await consumer.position(tp) < ends[tp]]:
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                for r in records:
                    blob = (r.key or b"") + (r.value or b"")
                    blob += b"".join(k.encode() + v for k, v in r.headers)
                    out.append((f"kafka {r.topic}", blob))
    finally:
        await consumer.stop()
    return out


def redis_blobs(system: System) -> Iterable[tuple[str, bytes]]:
    r = redis.Redis.from_url(system.stack.cfg.url("redis"))
    try:
        for key in r.scan_iter(match=f"{system.prefix}*", count=1000):
            kind = r.type(key).decode()
            parts: list[bytes] = [key]
            if kind == "string":
                parts.append(r.get(key) or b"")
            elif kind == "hash":
                for k, v in r.hgetall(key).items():
                    parts += [k, v]
            elif kind == "list":
                parts += r.lrange(key, 0, -1)
            elif kind == "set":
                parts += list(r.smembers(key))
            elif kind == "zset":
                parts += [m for m, _ in r.zrange(key, 0, -1, withscores=True)]
            elif kind == "stream":
                for _, fields in r.xrange(key):
                    for k, v in fields.items():
                        parts += [k, v]
            yield f"redis {key.decode(errors='replace')}", b"".join(parts)
    finally:
        r.close()


async def test_no_plaintext_in_mongo_kafka_or_redis(system: System, tmp_path: Path) -> None:
    plaintexts: list[str] = []

    def secret() -> str:
        text = f"plain-{secrets.token_hex(12)} the eagle lands at {secrets.token_hex(6)}"
        plaintexts.append(text)
        return text

    clients = []
    for name in ("alice", "bob", "carol"):
        c = Client(
            system.lb,
            data_dir=tmp_path / name,
            passphrase="p",
            kdf=KdfParams(n=2**10),
            backoff_start=0.1,
        )
        await c.open()
        username = f"np{name}{secrets.token_hex(3)}"
        await c.signup(username, PASSWORD, f"{username}@example.test")
        clients.append(c)
    alice, bob, carol = clients
    room_id = ""
    try:
        assert alice.username and bob.username and carol.username
        await alice.connect()
        await bob.connect()
        for _ in range(3):  # real time, both ways (acknowledged: bodies deleted)
            await alice.send(bob.username, secret())
            got = await bob.next_event(Message)
            assert isinstance(got, Message)
            await bob.send(alice.username, secret())
            assert isinstance(await alice.next_event(Message), Message)
        # Bob reports alice's last message: its plaintext is stored on purpose, for the
        # admins, in the reports collection and nowhere else.
        await bob.report(got.server_id)
        reported = got.text
        for _ in range(3):  # carol is offline: these wait in her inbox
            await alice.send(carol.username, secret(), wait="stored")
        await bob.send(carol.username, secret(), wait="stored")
        # A private room of the three: carol (offline) reads its messages later.
        room = await alice.rooms.create(f"np room {secrets.token_hex(3)}")
        room_id = room["room_id"]
        for member in (bob, carol):
            await alice.rooms.invite(room["room_id"], member.username)
            await member.rooms.accept(room["room_id"])
        for sender, receiver in ((alice, bob), (bob, alice), (alice, bob)):
            await sender.rooms.send(room["room_id"], secret())
            assert isinstance(await receiver.next_event(RoomMessage), RoomMessage)
    finally:
        for c in clients:
            await c.close()

    blobs = list(mongo_blobs(system)) + await kafka_blobs(system) + list(redis_blobs(system))
    needles = {p: forms(p) for p in plaintexts}
    reports = f"mongo {system.prefix}_delivery.reports"
    for where, blob in blobs:
        for plaintext, variants in needles.items():
            if plaintext == reported and where == reports:
                continue  # reported: stored on purpose (docs/moderation-messages.md)
            for v in variants:
                assert v not in blob, f"{plaintext!r} readable in {where} (as {v!r})"
    # ... and the reported one is there (the scan reaches the reports).
    assert any(w == reports and reported.encode() in b for w, b in blobs)

    # Positive control: the scan reaches the data the server must hold.
    ids = [c.user_id for c in clients]
    assert all(i for i in ids)
    for store in ("mongo", "kafka", "redis"):
        seen = [w for w, b in blobs if w.startswith(store) and str(ids[2]).encode() in b]
        assert seen, f"the scan of {store} found no trace of carol at all"
    # ... the room's messages included: their records on Kafka, and the room's log that
    # carol reads when she comes back (MongoDB).
    room_seen = {w for w, b in blobs if room_id.encode() in b}
    assert any(w.startswith("kafka") for w in room_seen), room_seen
    assert f"mongo {system.prefix}_delivery.room_log" in room_seen, room_seen
    assert len(plaintexts) == 13


def test_the_needles_find_a_plaintext_hidden_in_base64_at_any_offset() -> None:
    text = "plain-" + secrets.token_hex(12)
    for pad in range(6):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            blob = b"{" + encode(secrets.token_bytes(pad) + text.encode() + b"tail") + b"}"
            assert any(v in blob for v in forms(text)), (pad, encode)
    assert any(v in b"x" + text.encode() for v in forms(text))
