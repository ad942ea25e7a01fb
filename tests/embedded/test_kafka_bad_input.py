"""Bad input closes (or is answered on) the connection that sent it; the broker keeps serving.

Each case asserts what the offending connection gets, that nothing was stored,
and that a normal produce and consume still work afterwards.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiokafka import TopicPartition
from aiokafka.protocol.admin import ApiVersionResponse_v0
from aiokafka.protocol.produce import ProduceRequest_v7, ProduceResponse_v7
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from tests.support.kafka_broker import KafkaBroker, consumer, create_topic, producer, read_all

CORRUPT_MESSAGE, UNKNOWN_TOPIC, INVALID_REQUIRED_ACKS, UNSUPPORTED_VERSION = 2, 3, 21, 35
UNSUPPORTED_FOR_MESSAGE_FORMAT = 43


def request(api_key: int, version: int, body: bytes, correlation_id: int = 7) -> bytes:
    head = struct.pack(">hhih", api_key, version, correlation_id, 4) + b"test"
    return struct.pack(">i", len(head) + len(body)) + head + body


@asynccontextmanager
async def connection(
    broker: KafkaBroker,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
    try:
        yield reader, writer
    finally:
        writer.close()


async def closed_by_broker(reader: asyncio.StreamReader) -> bool:
    """True if the broker closes the connection without answering."""
    return await asyncio.wait_for(reader.read(), 20) == b""


async def answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    (size,) = struct.unpack(">i", await asyncio.wait_for(reader.readexactly(4), 20))
    payload = await reader.readexactly(size)
    return struct.unpack(">i", payload[:4])[0], payload[4:]


async def still_serves(broker: KafkaBroker, topic: str) -> None:
    async with producer(broker.bootstrap) as p:
        md = await p.send_and_wait(topic, b"alive", partition=0)
    async with consumer(broker.bootstrap) as c:
        tp = TopicPartition(topic, 0)
        c.assign([tp])
        c.seek(tp, md.offset)
        assert (await asyncio.wait_for(c.getone(), 20)).value == b"alive"


@pytest.fixture
async def alive_topic(broker: KafkaBroker, topic: str) -> str:
    await create_topic(broker.bootstrap, topic, 1)
    return topic


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(struct.pack(">i", 40) + b"\xde\xad\xbe\xef" * 10, id="garbage-frame"),
        pytest.param(request(9999, 0, b""), id="unknown-api-key"),
        pytest.param(request(0, 8, b""), id="produce-v8-unsupported"),
        pytest.param(request(1, 12, b""), id="fetch-v12-unsupported"),
        pytest.param(struct.pack(">i", 0x7FFFFFFF), id="oversized-length"),
        pytest.param(struct.pack(">i", -5), id="negative-length"),
        pytest.param(struct.pack(">i", 0), id="zero-length"),
        pytest.param(struct.pack(">i", 3) + b"abc", id="shorter-than-a-header"),
        pytest.param(request(3, 1, struct.pack(">i", 5) + b"\x00\x02a"), id="truncated-body"),
        pytest.param(request(3, 1, struct.pack(">i", 1) + b"\x00\x02\xff\xfe"), id="bad-utf8"),
    ],
)
async def test_unreadable_requests_close_only_their_connection(
    broker: KafkaBroker, alive_topic: str, payload: bytes
) -> None:
    async with connection(broker) as (bystander_reader, bystander):
        async with connection(broker) as (reader, writer):
            writer.write(payload)
            await writer.drain()
            assert await closed_by_broker(reader)
        # Another connection opened before is untouched: it is answered as usual.
        bystander.write(request(18, 0, b"", correlation_id=99))
        correlation_id, _ = await answer(bystander_reader)
        assert correlation_id == 99
    await still_serves(broker, alive_topic)
    assert "Traceback" not in broker.output()


async def test_an_unsupported_api_versions_request_gets_the_supported_ranges(
    broker: KafkaBroker, alive_topic: str
) -> None:
    async with connection(broker) as (reader, writer):
        # ApiVersions v3 is flexible (a header with tagged fields): Kafka's rule is to
        # answer in v0 with UNSUPPORTED_VERSION so the client can pick a version.
        writer.write(request(18, 3, b"\x00\x00\x00"))
        correlation_id, body = await answer(reader)
        resp = ApiVersionResponse_v0.decode(body)
        assert correlation_id == 7
        assert resp.error_code == UNSUPPORTED_VERSION
        assert (18, 0, 2) in resp.api_versions and (0, 3, 7) in resp.api_versions
        writer.write(request(18, 2, b""))  # and the connection goes on
        assert (await answer(reader))[0] == 7
    await still_serves(broker, alive_topic)


def batch(*values: bytes) -> bytearray:
    # Stamped now: a batch stamped in the past is older than the broker's retention
    # (24 h) and its check (every 5 s) drops it, maybe before the test reads it back.
    now_ms = int(time.time() * 1000)
    builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 1 << 20)
    for i, value in enumerate(values):
        builder.append(i, timestamp=now_ms, key=None, value=value, headers=[])
    return builder.build()


async def produce_raw(
    broker: KafkaBroker, topic: str, records: bytes | None, acks: int = -1
) -> int:
    body = ProduceRequest_v7(None, acks, 5000, [(topic, [(0, records)])]).encode()
    async with connection(broker) as (reader, writer):
        writer.write(request(0, 7, body))
        _, payload = await answer(reader)
    resp = ProduceResponse_v7.decode(payload)
    return int(resp.topics[0][1][0][1])


def flipped_crc(data: bytearray) -> bytes:
    data[17] ^= 0xFF
    return bytes(data)


def magic_one(data: bytearray) -> bytes:
    data[16] = 1
    return bytes(data)


def lying_length(data: bytearray) -> bytes:
    struct.pack_into(">i", data, 8, len(data) + 100)
    return bytes(data)


@pytest.mark.parametrize(
    ("records", "acks", "code"),
    [
        pytest.param(flipped_crc(batch(b"a", b"b")), -1, CORRUPT_MESSAGE, id="bad-crc"),
        pytest.param(magic_one(batch(b"a")), -1, UNSUPPORTED_FOR_MESSAGE_FORMAT, id="magic-1"),
        pytest.param(lying_length(batch(b"a")), -1, CORRUPT_MESSAGE, id="length-past-end"),
        pytest.param(bytes(batch(b"a"))[:30], -1, CORRUPT_MESSAGE, id="half-a-header"),
        pytest.param(bytes(batch(b"a")) + b"\x00" * 9, -1, CORRUPT_MESSAGE, id="trailing-junk"),
        pytest.param(None, -1, CORRUPT_MESSAGE, id="null-records"),
        pytest.param(bytes(batch(b"a")), 5, INVALID_REQUIRED_ACKS, id="acks-5"),
    ],
)
async def test_a_bad_record_set_is_refused_with_its_code_and_nothing_is_stored(
    broker: KafkaBroker, alive_topic: str, records: bytes | None, acks: int, code: int
) -> None:
    assert await produce_raw(broker, alive_topic, records, acks) == code
    tp = TopicPartition(alive_topic, 0)
    async with consumer(broker.bootstrap) as c:
        assert await c.end_offsets([tp]) == {tp: 0}
    await still_serves(broker, alive_topic)
    assert [r.value for r in await read_all(broker.bootstrap, alive_topic, [0], 1)] == [b"alive"]


async def test_a_good_raw_batch_is_stored_with_the_offsets_the_broker_assigns(
    broker: KafkaBroker, alive_topic: str
) -> None:
    assert await produce_raw(broker, alive_topic, bytes(batch(b"x", b"y", b"z"))) == 0
    assert await produce_raw(broker, alive_topic, bytes(batch(b"w"))) == 0
    records = await read_all(broker.bootstrap, alive_topic, [0], 4)
    assert [(r.offset, r.value) for r in records] == [(0, b"x"), (1, b"y"), (2, b"z"), (3, b"w")]


async def test_producing_to_an_unknown_topic_is_refused(broker: KafkaBroker, topic: str) -> None:
    assert await produce_raw(broker, topic + "-missing", bytes(batch(b"a"))) == UNKNOWN_TOPIC
