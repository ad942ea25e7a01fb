"""At real size: 200,000 records over many partitions, read by a group, each exactly once."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer

from tests.support.aio import eventually
from tests.support.kafka_broker import KafkaBroker, consumer, create_topic, producer

RECORDS = 200_000
PARTITIONS = 12


async def test_two_hundred_thousand_records_are_each_consumed_exactly_once(
    broker: KafkaBroker, topic: str
) -> None:
    await create_topic(broker.bootstrap, topic, PARTITIONS)
    group = f"g-{topic}"
    seen: list[int] = []

    async def read(c: AIOKafkaConsumer) -> None:
        while True:
            batch = await c.getmany(timeout_ms=500, max_records=5000)
            for records in batch.values():
                seen.extend(int(r.value[:7]) for r in records)
            if batch:
                await c.commit()

    async with (
        consumer(broker.bootstrap, topic, group_id=group, session_timeout_ms=10_000) as c1,
        consumer(broker.bootstrap, topic, group_id=group, session_timeout_ms=10_000) as c2,
    ):
        readers = [asyncio.create_task(read(c)) for c in (c1, c2)]

        async def split() -> bool:
            a = {tp.partition for tp in c1.assignment()}
            b = {tp.partition for tp in c2.assignment()}
            return bool(a) and bool(b) and not a & b and len(a | b) == PARTITIONS

        # Both members own their share before anything is produced: no rebalance
        # (and so no redelivery) happens while the records flow.
        await eventually(split, bool, timeout=30)
        async with producer(broker.bootstrap, linger_ms=5) as p:
            pending = []
            for i in range(RECORDS):
                pending.append(await p.send(topic, b"%07d" % i + b"-" * 93, key=b"k%d" % (i % 997)))
                if len(pending) >= 20_000:
                    await asyncio.gather(*pending)
                    pending.clear()
            await asyncio.gather(*pending)

        async def count() -> int:
            return len(seen)

        await eventually(count, lambda n: n >= RECORDS, timeout=110)
        for t in readers:
            t.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    assert len(seen) == RECORDS
    assert sorted(seen) == list(range(RECORDS))
