"""Producing and consuming through the embedded broker with real aiokafka clients."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

import pytest
from aiokafka import TopicPartition
from aiokafka.codec import has_gzip, has_lz4, has_snappy, has_zstd
from aiokafka.errors import MessageSizeTooLargeError

from tests.support.kafka_broker import (
    KafkaBroker,
    consumer,
    create_topic,
    keyed_partition,
    producer,
    read_all,
)

CODECS = [
    name
    for name, ok in (
        ("gzip", has_gzip()),
        ("snappy", has_snappy()),
        ("lz4", has_lz4()),
        ("zstd", has_zstd()),
    )
    if ok
]


async def test_keyed_records_keep_their_order_on_the_partition_of_their_key(
    broker: KafkaBroker, topic: str
) -> None:
    await create_topic(broker.bootstrap, topic, 6)
    keys = [f"conversation-{i}".encode() for i in range(12)]
    sent: dict[bytes, list[tuple[int, int, bytes]]] = defaultdict(list)
    async with producer(broker.bootstrap) as p:
        futures = []
        for n in range(600):
            key = keys[n % len(keys)]
            value = f"{key.decode()}:{n}".encode()
            futures.append((key, value, await p.send(topic, value, key=key)))
        for key, value, fut in futures:
            md = await fut
            sent[key].append((md.partition, md.offset, value))

    records = await read_all(broker.bootstrap, topic, range(6), 600)
    assert len(records) == 600
    got: dict[bytes, list[tuple[int, int, bytes]]] = defaultdict(list)
    for r in records:
        got[r.key].append((r.partition, r.offset, r.value))
    for key in keys:
        # The partition aiokafka's default partitioner picks, the order sent, the offsets acked.
        assert {p for p, _, _ in got[key]} == {keyed_partition(key, range(6))}
        assert got[key] == sent[key]
    # Offsets on each partition are dense, from 0.
    by_partition: dict[int, list[int]] = defaultdict(list)
    for r in records:
        by_partition[r.partition].append(r.offset)
    for offsets in by_partition.values():
        assert offsets == list(range(len(offsets)))


async def test_headers_and_empty_or_missing_keys_and_values(
    broker: KafkaBroker, topic: str
) -> None:
    await create_topic(broker.bootstrap, topic, 1)
    cases = [
        (None, b"no key", [("request_id", b"r1")]),
        (b"", b"empty key", []),
        (b"k", None, [("a", b"1"), ("b", b""), ("a", b"2")]),
        (b"k", b"", [("unicode-\u00e9", b"\x00\xff")]),
        (None, b"", [("only", b"headers")]),
    ]
    async with producer(broker.bootstrap) as p:
        for key, value, headers in cases:
            await p.send_and_wait(topic, value, key=key, partition=0, headers=headers)
    records = await read_all(broker.bootstrap, topic, [0], len(cases))
    assert [(r.key, r.value, list(r.headers)) for r in records] == cases


async def test_big_records_and_big_batches(broker: KafkaBroker, topic: str) -> None:
    await create_topic(broker.bootstrap, topic, 2)
    big = bytes(range(256)) * 3900  # ~1 MB, under the default max.message.bytes
    async with producer(
        broker.bootstrap, max_request_size=2_000_000, linger_ms=50, max_batch_size=900_000
    ) as p:
        await p.send_and_wait(topic, big, partition=0)
        # Many records in few batches (linger): each batch is one write of the broker.
        futures = [await p.send(topic, b"%06d" % i + b"x" * 200, partition=1) for i in range(4000)]
        offsets = [(await f).offset for f in futures]
    assert offsets == list(range(4000))
    records = await read_all(broker.bootstrap, topic, [0, 1], 4001)
    assert records[0].value == big
    assert [r.value[:6] for r in records[1:]] == [b"%06d" % i for i in range(4000)]


async def test_a_batch_above_max_message_bytes_is_refused_and_not_stored(
    broker: KafkaBroker, topic: str
) -> None:
    await create_topic(broker.bootstrap, topic, 1, {"max.message.bytes": "1000"})
    async with producer(broker.bootstrap) as p:
        with pytest.raises(MessageSizeTooLargeError):
            await p.send_and_wait(topic, b"x" * 2000, partition=0)
        md = await p.send_and_wait(topic, b"small", partition=0)
    assert md.offset == 0
    assert [r.value for r in await read_all(broker.bootstrap, topic, [0], 1)] == [b"small"]


@pytest.mark.parametrize("codec", CODECS)
async def test_compressed_batches_and_a_seek_into_the_middle_of_one(
    broker: KafkaBroker, topic: str, codec: str
) -> None:
    await create_topic(broker.bootstrap, topic, 1)
    async with producer(broker.bootstrap, compression_type=codec, linger_ms=100) as p:
        futures = [
            await p.send(topic, b"compressible " * 20 + b"%05d" % i, partition=0)
            for i in range(1000)
        ]
        await asyncio.gather(*futures)
    records = await read_all(broker.bootstrap, topic, [0], 1000)
    assert [r.offset for r in records] == list(range(1000))
    assert [r.value[-5:] for r in records] == [b"%05d" % i for i in range(1000)]
    # The broker answers a fetch at 537 with the batch that holds it; the client skips ahead.
    tp = TopicPartition(topic, 0)
    async with consumer(broker.bootstrap) as c:
        c.assign([tp])
        c.seek(tp, 537)
        first = await asyncio.wait_for(c.getone(), 20)
    assert first.offset == 537
    assert first.value.endswith(b"00537")


async def test_many_partitions_through_a_consumer_group(broker: KafkaBroker, topic: str) -> None:
    await create_topic(broker.bootstrap, topic, 64)
    async with producer(broker.bootstrap) as p:
        futures = [await p.send(topic, b"%d" % i, partition=i % 64) for i in range(64 * 20)]
        await asyncio.gather(*futures)
    seen: list[bytes] = []
    async with consumer(
        broker.bootstrap, topic, group_id=f"g-{topic}", session_timeout_ms=6000
    ) as c:

        async def drain() -> None:
            while len(seen) < 64 * 20:
                for records in (await c.getmany(timeout_ms=1000)).values():
                    seen.extend(r.value for r in records)

        await asyncio.wait_for(drain(), 60)
        assert {tp.partition for tp in c.assignment()} == set(range(64))
    assert sorted(seen) == sorted(b"%d" % i for i in range(64 * 20))


async def test_a_waiting_consumer_gets_a_record_produced_later(
    broker: KafkaBroker, topic: str
) -> None:
    await create_topic(broker.bootstrap, topic, 1)
    tp = TopicPartition(topic, 0)
    # The fetch waits up to a minute on the broker: only a wake-up on the produce
    # can deliver the record within the test's 20 s.
    async with consumer(broker.bootstrap, fetch_max_wait_ms=60_000) as c:
        c.assign([tp])
        await c.seek_to_end(tp)
        assert await c.position(tp) == 0
        waiting = asyncio.create_task(c.getone())
        async with producer(broker.bootstrap) as p:
            await p.send_and_wait(topic, b"later", partition=0)
        record = await asyncio.wait_for(waiting, 20)
    assert (record.offset, record.value) == (0, b"later")


async def test_list_offsets_earliest_latest_and_by_timestamp(
    broker: KafkaBroker, topic: str
) -> None:
    await create_topic(broker.bootstrap, topic, 1)
    tp = TopicPartition(topic, 0)
    base = int(time.time() * 1000) - 60_000
    async with producer(broker.bootstrap) as p:
        for i in range(10):
            await p.send_and_wait(topic, b"%d" % i, partition=0, timestamp_ms=base + i * 1000)
    async with consumer(broker.bootstrap) as c:
        assert await c.beginning_offsets([tp]) == {tp: 0}
        assert await c.end_offsets([tp]) == {tp: 10}
        found = await c.offsets_for_times({tp: base + 4500})
        assert (found[tp].offset, found[tp].timestamp) == (5, base + 5000)
        assert (await c.offsets_for_times({tp: base}))[tp].offset == 0
        assert (await c.offsets_for_times({tp: base + 10**7}))[tp] is None


async def test_acks_1_and_acks_0(broker: KafkaBroker, topic: str) -> None:
    await create_topic(broker.bootstrap, topic, 1)
    async with producer(broker.bootstrap, acks=1) as p:
        md = await p.send_and_wait(topic, b"one", partition=0)
    assert md.offset == 0
    async with producer(broker.bootstrap, acks=0) as p:
        # No answer comes back for acks=0: the record is still written.
        await p.send_and_wait(topic, b"zero", partition=0)
    records = await read_all(broker.bootstrap, topic, [0], 2)
    assert [r.value for r in records] == [b"one", b"zero"]
