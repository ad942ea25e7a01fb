"""Retention keeps disk (and cost) flat: old segments go, the log start advances."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from aiokafka import TopicPartition
from aiokafka.admin import RecordsToDelete

from tests.embedded.conftest import BrokerFactory
from tests.support.aio import eventually
from tests.support.kafka_broker import KafkaBroker, admin_client, consumer, create_topic, producer

FAST = ("--retention-check-ms", "50")


async def log_start(b: KafkaBroker, tp: TopicPartition) -> int:
    async with consumer(b.bootstrap) as c:
        return int((await c.beginning_offsets([tp]))[tp])


async def test_expired_segments_are_deleted_and_a_consumer_below_the_start_resets(
    make_broker: BrokerFactory, topic: str
) -> None:
    b = make_broker(*FAST)
    # segment.bytes=1: one batch per segment, so that old and new never share one.
    await create_topic(b.bootstrap, topic, 1, {"retention.ms": "60000", "segment.bytes": "1"})
    tp = TopicPartition(topic, 0)
    two_hours_ago = int(time.time() * 1000) - 7_200_000
    async with producer(b.bootstrap) as p:
        for i in range(40):
            await p.send_and_wait(topic, b"old-%02d" % i, partition=0, timestamp_ms=two_hours_ago)
        for i in range(10):
            await p.send_and_wait(topic, b"new-%02d" % i, partition=0)

    start = await eventually(lambda: log_start(b, tp), lambda s: s >= 40)
    assert start == 40  # every old segment went; the new records stay
    assert len(b.segments(topic, 0)) == 10
    # A consumer positioned below the log start gets OFFSET_OUT_OF_RANGE and resets
    # to the earliest offset (auto_offset_reset).
    async with consumer(b.bootstrap, auto_offset_reset="earliest") as c:
        c.assign([tp])
        c.seek(tp, 3)
        records = []
        while len(records) < 10:
            for rs in (await asyncio.wait_for(c.getmany(timeout_ms=1000), 20)).values():
                records.extend(rs)
    assert [(r.offset, r.value) for r in records] == [(40 + i, b"new-%02d" % i) for i in range(10)]


async def test_an_idle_partition_whose_records_all_expired_empties_but_keeps_its_offsets(
    make_broker: BrokerFactory, topic: str
) -> None:
    b = make_broker(*FAST)
    await create_topic(b.bootstrap, topic, 1, {"retention.ms": "1000"})
    tp = TopicPartition(topic, 0)
    old = int(time.time() * 1000) - 60_000
    async with producer(b.bootstrap) as p:
        for i in range(5):
            await p.send_and_wait(topic, b"%d" % i, partition=0, timestamp_ms=old)
    assert await eventually(lambda: log_start(b, tp), lambda s: s == 5) == 5
    b.kill()
    b.start()  # the empty active segment's name keeps the log end offset
    async with producer(b.bootstrap) as p:
        md = await p.send_and_wait(topic, b"next", partition=0)
    assert md.offset == 5
    assert await log_start(b, tp) == 5


async def test_retention_bytes_bounds_the_size_of_a_partition(
    make_broker: BrokerFactory, topic: str
) -> None:
    b = make_broker(*FAST)
    await create_topic(b.bootstrap, topic, 1, {"retention.bytes": "20000", "segment.bytes": "4000"})
    tp = TopicPartition(topic, 0)
    async with producer(b.bootstrap, linger_ms=0) as p:
        for i in range(400):
            await p.send_and_wait(topic, b"%04d" % i + b"x" * 200, partition=0)

    def size(segment: Path) -> int:
        try:
            return segment.stat().st_size
        except FileNotFoundError:  # retention deleted it between the listing and the stat
            return 0

    def small() -> bool:
        return sum(size(s) for s in b.segments(topic, 0)) <= 20000 + 4000 + 400

    async def probe() -> bool:
        return small()

    await eventually(probe, bool)
    start = await log_start(b, tp)
    assert 0 < start < 400
    async with consumer(b.bootstrap) as c:
        c.assign([tp])
        c.seek(tp, start)
        first = await asyncio.wait_for(c.getone(), 20)
    assert (first.offset, first.value[:4]) == (start, b"%04d" % start)


async def test_delete_records_moves_the_log_start_durably(
    make_broker: BrokerFactory, topic: str
) -> None:
    b = make_broker()
    await create_topic(b.bootstrap, topic, 1)
    tp = TopicPartition(topic, 0)
    async with producer(b.bootstrap) as p:
        for i in range(10):
            await p.send_and_wait(topic, b"%d" % i, partition=0)
    async with admin_client(b.bootstrap) as admin:
        low = await admin.delete_records({tp: RecordsToDelete(before_offset=6)})
    assert low == {tp: 6}
    b.kill()
    b.start()
    assert await log_start(b, tp) == 6
    async with consumer(b.bootstrap) as c:
        c.assign([tp])
        await c.seek_to_beginning(tp)
        first = await asyncio.wait_for(c.getone(), 20)
    assert (first.offset, first.value) == (6, b"6")
