"""What the code relies on from MongoDB, Redis and Kafka, checked against the embedded servers.

docs/embedded.md lists these features and the ones we must not rely on; this
file keeps that page true. The same tests pass against real servers.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from pymongo import ReturnDocument, UpdateOne
from pymongo.errors import BulkWriteError, DuplicateKeyError

from services.common.clients import (
    ensure_topics,
    in_id_order,
    kafka_producer,
    mongo_client,
    redis_client,
)
from services.common.config import Settings


@pytest.fixture
async def db(settings: Settings):  # type: ignore[no-untyped-def]
    client = mongo_client(settings)
    yield client[f"{settings.db_prefix}probe"]
    await client.close()


async def test_mongo_unique_compound_index_refuses_duplicates(db) -> None:  # type: ignore[no-untyped-def]
    await db.c.create_index([("sender", 1), ("cmid", 1)], unique=True)
    await db.c.insert_one({"sender": "a", "cmid": "1"})
    await db.c.insert_one({"sender": "b", "cmid": "1"})
    with pytest.raises(DuplicateKeyError):
        await db.c.insert_one({"sender": "a", "cmid": "1"})
    with pytest.raises(BulkWriteError):
        await db.c.insert_many(
            [{"sender": "c", "cmid": "9"}, {"sender": "a", "cmid": "1"}], ordered=False
        )
    assert await db.c.count_documents({}) == 3


async def test_mongo_find_one_and_delete_is_atomic_under_concurrency(db) -> None:  # type: ignore[no-untyped-def]
    await db.k.insert_many([{"owner": "u", "n": i} for i in range(20)])
    got = await asyncio.gather(*(db.k.find_one_and_delete({"owner": "u"}) for _ in range(30)))
    taken = [d["n"] for d in got if d is not None]
    assert sorted(taken) == list(range(20))


async def test_mongo_counter_with_inc_upsert_is_atomic(db) -> None:  # type: ignore[no-untyped-def]
    async def bump() -> int:
        doc = await db.seq.find_one_and_update(
            {"_id": "inbox:u"},
            {"$inc": {"n": 1}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        return int(doc["n"])

    values = await asyncio.gather(*(bump() for _ in range(40)))
    assert sorted(values) == list(range(1, 41))


async def test_mongo_sort_limit_bulk_and_datetimes(db) -> None:  # type: ignore[no-untyped-def]
    now = datetime.now(UTC)
    await db.m.bulk_write(
        [UpdateOne({"_id": i}, {"$set": {"seq": i, "at": now}}, upsert=True) for i in range(10)]
    )
    page = [d["seq"] async for d in db.m.find({"seq": {"$gt": 3}}).sort("seq", 1).limit(3)]
    assert page == [4, 5, 6]
    doc = await db.m.find_one({"_id": 0})
    assert doc["at"].tzinfo is not None
    res = await db.m.delete_many({"seq": {"$lte": 5}})
    assert res.deleted_count == 6


async def test_pages_of_an_id_range_in_id_order_at_twenty_thousand(db) -> None:  # type: ignore[no-untyped-def]
    """``in_id_order`` (the directory, ban, report and device lists): an ``_id`` range
    with another condition, paged through 20,000 documents: every page in ``_id``
    order, nothing missed or repeated, the range's ends kept, and other conditions
    applied; the same answers as a ``find``."""
    coll = db.ranges
    await coll.drop()
    n = 20_000
    docs = [{"_id": f"k|{i:06d}", "odd": i % 2} for i in range(n)]
    for i in range(0, n, 2_000):
        await coll.insert_many(docs[i : i + 2_000])
    await coll.insert_one({"_id": "l|000000", "odd": 0})  # past the range's end
    seen: list[str] = []
    after = "k|"
    while page := await in_id_order(coll, {"_id": {"$gt": after, "$lt": "k}"}}, 1_000):
        seen += [d["_id"] for d in page]
        after = page[-1]["_id"]
    assert seen == [d["_id"] for d in docs]
    odd = await in_id_order(coll, {"_id": {"$gt": "k|019000"}, "odd": 1}, 3)
    assert [d["_id"] for d in odd] == ["k|019001", "k|019003", "k|019005"]
    found = await coll.find({"_id": {"$gt": "k|019000"}, "odd": 1}).sort("_id", 1).to_list(3)
    assert odd == found
    assert await in_id_order(coll, {"_id": {"$gt": "k|", "$lt": "k}"}}, None) == docs
    # A $regex condition (a directory search): read with the find, the same answer.
    pattern = {"_id": {"$gt": "k|019000"}, "_id_text": {"$regex": "x"}}
    assert await in_id_order(coll, pattern, 3) == []
    named = {"_id": {"$gt": "k|018990", "$regex": "99[0-9]$"}}
    assert [d["_id"] for d in await in_id_order(coll, named, 3)] == [
        "k|018991", "k|018992", "k|018993",
    ]  # fmt: skip


async def test_redis_pubsub_expiry_and_pipelines(settings: Settings) -> None:
    r = redis_client(settings)
    p = r.pubsub()
    await p.subscribe("probe-chan")
    await r.set("probe:k", "v", ex=30)
    assert 0 < await r.ttl("probe:k") <= 30
    assert await r.publish("probe-chan", b"hello") == 1
    msg = None
    while msg is None:
        msg = await p.get_message(ignore_subscribe_messages=True, timeout=5)
    assert msg["data"] == b"hello"
    async with r.pipeline(transaction=False) as pipe:
        pipe.incr("probe:n")
        pipe.expire("probe:n", 10)
        assert (await pipe.execute())[0] == 1
    await p.aclose()
    await r.aclose()


async def test_kafka_explicit_topics_keyed_order_and_headers(settings: Settings) -> None:
    topic = f"{settings.topic_prefix}probe"
    assert await ensure_topics(settings, [topic]) == [topic]
    assert await ensure_topics(settings, [topic]) == []
    producer = kafka_producer(settings)
    await producer.start()
    for i in range(10):
        await producer.send_and_wait(
            topic, str(i).encode(), key=b"conv-1", headers=[("request_id", b"r1")]
        )
    await producer.stop()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    parts = [TopicPartition(topic, p) for p in range(settings.kafka_partitions)]
    consumer.assign(parts)
    values: list[bytes] = []
    while len(values) < 10:
        batch = await consumer.getmany(timeout_ms=1000)
        for records in batch.values():
            values.extend(r.value for r in records)
            assert all(r.headers == (("request_id", b"r1"),) for r in records)
    await consumer.stop()
    # One key, one partition: order is kept.
    assert values == [str(i).encode() for i in range(10)]
