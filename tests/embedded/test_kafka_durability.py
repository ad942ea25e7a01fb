"""Durability: what the broker acknowledged survives ``kill -9``; a torn tail is cut cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from pathlib import Path

from aiokafka import TopicPartition
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tests.embedded.conftest import BrokerFactory
from tests.support.kafka_broker import (
    KafkaBroker,
    admin_client,
    consumer,
    create_topic,
    producer,
    read_all,
)


async def test_kill_9_loses_nothing_acknowledged_and_keeps_every_offset(
    make_broker: BrokerFactory, topic: str
) -> None:
    b = make_broker()  # fsync once a second: the kill comes well before
    await create_topic(b.bootstrap, topic, 4)
    acked: dict[tuple[int, int], bytes] = {}
    async with producer(b.bootstrap) as p:
        futures = [
            (v, await p.send(topic, v, key=b"k%d" % (i % 50)))
            for i in range(3000)
            for v in [b"value-%05d" % i]
        ]
        for value, fut in futures:
            md = await fut
            acked[(md.partition, md.offset)] = value
    b.kill(signal.SIGKILL)
    b.start()

    records = await read_all(b.bootstrap, topic, range(4), len(acked))
    assert {(r.partition, r.offset): r.value for r in records} == acked
    assert len(records) == len(acked) == 3000
    # The log goes on from where it was.
    async with producer(b.bootstrap) as p:
        md = await p.send_and_wait(topic, b"after", partition=0)
    assert md.offset == sum(1 for part, _ in acked if part == 0)


async def test_committed_offsets_and_topic_configs_survive_kill_9(
    make_broker: BrokerFactory, topic: str
) -> None:
    b = make_broker()
    await create_topic(b.bootstrap, topic, 2, {"retention.ms": "123456789"})
    async with producer(b.bootstrap) as p:
        for i in range(20):
            await p.send_and_wait(topic, b"%d" % i, partition=i % 2)
    group = f"g-{topic}"
    async with consumer(b.bootstrap, topic, group_id=group, session_timeout_ms=6000) as c:
        got = 0
        while got < 20:
            got += sum(len(v) for v in (await c.getmany(timeout_ms=1000)).values())
        tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
        await c.commit({tp0: 7, tp1: 3})
    b.kill(signal.SIGKILL)
    b.start()

    async with admin_client(b.bootstrap) as admin:
        offsets = await admin.list_consumer_group_offsets(group, partitions=[tp0, tp1])
        assert {tp: o.offset for tp, o in offsets.items()} == {tp0: 7, tp1: 3}
        [resp] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        entries = {e[0]: e[1] for e in resp.resources[0][4]}
        assert entries["retention.ms"] == "123456789"
    # A member of the group starts where the group committed.
    async with consumer(b.bootstrap, topic, group_id=group, session_timeout_ms=6000) as c:
        values: list[bytes] = []
        while len(values) < (10 - 7) + (10 - 3):
            for records in (await c.getmany(timeout_ms=1000)).values():
                values.extend(r.value for r in records)
    assert sorted(values) == sorted(
        [b"%d" % i for i in range(14, 20, 2)] + [b"%d" % i for i in range(7, 20, 2)]
    )


async def test_a_torn_tail_is_cut_at_the_last_whole_batch(
    make_broker: BrokerFactory, topic: str
) -> None:
    b = make_broker()
    await create_topic(b.bootstrap, topic, 1)
    async with producer(b.bootstrap) as p:
        for i in range(10):  # one batch each: send_and_wait waits for the answer
            await p.send_and_wait(topic, b"batch-%d" % i, partition=0)
    b.kill(signal.SIGKILL)
    [segment] = b.segments(topic, 0)
    size = segment.stat().st_size
    os.truncate(segment, size - 7)  # the last batch loses its end, as in a crash mid-write

    b.start()
    assert "torn or corrupt tail" in b.output()
    records = await read_all(b.bootstrap, topic, [0], 9)
    assert [r.value for r in records] == [b"batch-%d" % i for i in range(9)]
    async with producer(b.bootstrap) as p:
        md = await p.send_and_wait(topic, b"next", partition=0)
    assert md.offset == 9  # the torn batch's offset is reused: it was never whole


async def test_a_corrupt_byte_in_the_last_batch_is_caught_by_its_crc(
    make_broker: BrokerFactory, topic: str
) -> None:
    b = make_broker()
    await create_topic(b.bootstrap, topic, 1)
    async with producer(b.bootstrap) as p:
        for i in range(5):
            await p.send_and_wait(topic, b"batch-%d" % i, partition=0)
    b.kill(signal.SIGKILL)
    [segment] = b.segments(topic, 0)
    data = bytearray(segment.read_bytes())
    data[-3] ^= 0xFF  # inside the last record's value
    segment.write_bytes(bytes(data))

    b.start()
    records = await read_all(b.bootstrap, topic, [0], 4)
    assert [r.value for r in records] == [b"batch-%d" % i for i in range(4)]


async def test_fsync_before_every_answer_mode_serves_and_restarts(
    make_broker: BrokerFactory, topic: str, tmp_path: os.PathLike[str]
) -> None:
    b = make_broker("--fsync-interval-ms", "0")
    await create_topic(b.bootstrap, topic, 2)
    async with producer(b.bootstrap) as p:
        futures = [await p.send(topic, b"%d" % i, partition=i % 2) for i in range(200)]
        await asyncio.gather(*futures)
    b.kill(signal.SIGKILL)
    b.start()
    records = await read_all(b.bootstrap, topic, [0, 1], 200)
    assert sorted(r.value for r in records) == sorted(b"%d" % i for i in range(200))


async def test_a_second_broker_cannot_open_the_same_data_dir(make_broker: BrokerFactory) -> None:
    first = make_broker()
    second = type(first)(first.data_dir)
    try:
        second.start()
    except RuntimeError as exc:
        assert "in use by another broker" in str(exc)
    else:  # pragma: no cover - the assertion below reports it
        second.stop()
        raise AssertionError("two brokers opened one data directory")


async def test_a_port_another_server_took_is_not_taken_for_the_broker(
    make_broker: BrokerFactory, tmp_path: Path
) -> None:
    """The test helper waits for its own broker, not for any listener on the port."""
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    with squatter:
        b = KafkaBroker(tmp_path / "data")
        b.port = squatter.getsockname()[1]  # free when picked, taken before the bind
        b.start()
        try:
            assert b.port != squatter.getsockname()[1]
            assert "address already in use" in b.output()
            await create_topic(b.bootstrap, "here", 1)  # answered by our broker
        finally:
            b.stop()
