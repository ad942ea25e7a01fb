"""What one client can make the broker hold in memory or spend on the event loop: the size
of a Fetch answer, answers a client does not read, the size of a request and its number
of items, names repeated in a request."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.protocol.admin import DescribeConfigsRequest_v2, DescribeGroupsRequest_v2
from aiokafka.protocol.commit import OffsetFetchRequest_v3
from aiokafka.protocol.fetch import FetchRequest_v11, FetchResponse_v11
from aiokafka.protocol.metadata import MetadataRequest_v4
from aiokafka.protocol.offset import OffsetRequest_v1
from aiokafka.protocol.produce import ProduceRequest_v7
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords

from embedded.kafka import log as log_module
from embedded.kafka import records as records_module
from embedded.kafka.config import BrokerConfig, parse_args
from embedded.kafka.records import MAX_PRODUCE_BATCHES, split_batches
from embedded.kafka.server import Broker
from tests.embedded.inproc import ask, batch, fill, frame, read_answer, running
from tests.support.aio import eventually
from tests.support.kafka_broker import consumer, producer

MiB = 1 << 20
ALL = 0x7FFFFFFF


def fetch(parts: list[tuple[str, list[int]]], max_bytes: int = ALL) -> FetchRequest_v11:
    """From offset 0 of each partition, each allowed ``ALL`` bytes; no wait."""
    topics = [(t, [(p, -1, 0, -1, ALL) for p in ps]) for t, ps in parts]
    return FetchRequest_v11(-1, 0, 1, max_bytes, 0, 0, 0, topics, [], "")


def records_of(resp: Any) -> dict[tuple[str, int], list[bytes]]:
    """Each partition's record bytes in the answer, one entry per time it is answered."""
    assert isinstance(resp, FetchResponse_v11)
    out: dict[tuple[str, int], list[bytes]] = {}
    for topic, partitions in resp.topics:
        for p in partitions:
            assert p[1] == 0, p[:2]
            out.setdefault((topic, p[0]), []).append(p[-1] or b"")
    return out


async def test_a_partition_named_many_times_is_answered_once(tmp_path: Path) -> None:
    """A 5.6 KB Fetch naming one partition 200 times read it 200 times: a 2.1 GB answer
    from a 20 MB log."""
    async with running(tmp_path) as broker:
        topic = await broker.topics.create("t", 1)
        fill(topic.logs[0], 2 * MiB, batch_bytes=MiB // 4)
        size = topic.logs[0].size_bytes()
        resp = await ask(broker, fetch([("t", [0] * 100), ("t", [0] * 100)]))
        got = records_of(resp)
        assert list(got) == [("t", 0)]
        assert [len(r) for r in got[("t", 0)]] == [size]


async def test_an_answer_stays_within_fetch_max_bytes_whatever_the_request_asks(
    tmp_path: Path,
) -> None:
    """No cap of the broker's own: a request allowing 2 GiB got every partition's whole
    segment. Kafka's default fetch.max.bytes (55 MiB) applies; at real size."""
    async with running(tmp_path) as broker:
        topic = await broker.topics.create("t", 2)
        for plog in topic.logs:
            fill(plog, 40 * MiB)
        got = records_of(await ask(broker, fetch([("t", [0, 1])])))
        first, second = len(got[("t", 0)][0]), len(got[("t", 1)][0])
        assert first == topic.logs[0].size_bytes()  # the first partition: all it has
        assert 0 < second and first + second <= 55 * MiB  # the second: what still fits
    assert BrokerConfig().fetch_max_bytes == 55 * MiB


async def test_a_first_batch_larger_than_the_cap_is_still_answered(tmp_path: Path) -> None:
    """As Kafka: only the first batch of the answer may pass the cap, so a consumer
    behind a large batch still makes progress; nothing else comes with it."""
    assert parse_args(["--fetch-max-bytes", "10000"]).fetch_max_bytes == 10_000
    async with running(tmp_path, fetch_max_bytes=10_000) as broker:
        topic = await broker.topics.create("t", 2)
        for plog in topic.logs:
            fill(plog, 150_000, batch_bytes=50_000)
        one = len(topic.logs[0].read(0, 1, min_one=True))
        assert one > 10_000
        got = records_of(await ask(broker, fetch([("t", [0, 1])])))
        assert [len(got[("t", 0)][0]), len(got[("t", 1)][0])] == [one, 0]
        got = records_of(await ask(broker, fetch([("t", [1])])))
        assert len(got[("t", 1)][0]) == one


async def test_a_client_that_does_not_read_its_answers_is_not_answered_further(
    tmp_path: Path,
) -> None:
    """Frames kept being answered after pause_writing: a client pipelining fetches and
    never reading grew the broker's write buffer by an answer per request."""
    requests, answer_bytes = 64, MiB
    async with running(tmp_path) as broker:
        topic = await broker.topics.create("t", 1)
        fill(topic.logs[0], answer_bytes, batch_bytes=MiB // 4)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", broker.port))
        reader, writer = await asyncio.open_connection(sock=sock)
        try:
            body = fetch([("t", [0])]).encode()
            writer.write(b"".join(frame(1, 11, body, i) for i in range(requests)))
            [conn] = broker.connections
            await eventually(_now(lambda: conn.paused), bool)
            await asyncio.sleep(0.2)  # what the broker would answer meanwhile, it does
            transport = conn.transport
            assert transport is not None
            assert transport.get_write_buffer_size() < 4 * answer_bytes
            assert len(conn.buf) > 0  # the rest waits, unread
            # The client reads again: every answer comes, in order.
            for i in range(requests):
                correlation_id, answer = await read_answer(reader)
                assert correlation_id == i
                got = records_of(FetchResponse_v11.decode(answer))
                assert len(got[("t", 0)][0]) == topic.logs[0].size_bytes()
        finally:
            writer.close()


def _now(f: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return f()

    return probe


# Requests: their size, their number of items, repeated names ----------------------------
async def closed_without_answer(broker: Broker, data: bytes) -> bool:
    """Send ``data`` on a new connection: True if the broker closes it without a word
    (a reset, when it closes with bytes of ours still unread)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 20) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    finally:
        writer.close()


async def produce_and_fetch(broker: Broker, topic: str, value: bytes) -> None:
    """An aiokafka producer and consumer are served as usual."""
    bootstrap = f"127.0.0.1:{broker.port}"
    async with producer(bootstrap) as p:
        md = await p.send_and_wait(topic, value, partition=0)
    async with consumer(bootstrap) as c:
        tp = TopicPartition(topic, 0)
        c.assign([tp])
        c.seek(tp, md.offset)
        assert (await asyncio.wait_for(c.getone(), 20)).value == value


def header_only(api_key: int, version: int, length: int) -> bytes:
    """The start of a frame that says it is ``length`` bytes long: its header, a little body."""
    head = frame(api_key, version, b"\x00" * 64)
    return struct.pack(">i", length) + head[4:]


@pytest.mark.parametrize(
    "data",
    [
        # The audit's: a ListOffsets v1 of 8 million partitions (117 s of the loop, 5.7 GB).
        pytest.param(header_only(2, 1, 97 * MiB), id="list-offsets-97MiB-only-its-header-sent"),
        pytest.param(header_only(3, 4, 2 * MiB), id="metadata-2MiB-only-its-header-sent"),
        pytest.param(
            frame(3, 4, MetadataRequest_v4(["n" * 5000] * 220, False).encode()),
            id="metadata-1.05MiB-whole",
        ),
    ],
)
async def test_a_request_other_than_produce_over_its_limit_closes_its_connection_at_once(
    tmp_path: Path, data: bytes
) -> None:
    """The only bound was the 100 MiB frame: a 97 MiB ListOffsets was read, decoded and
    answered on the event loop, 117 s during which no connection was served (producers
    timed out, group sessions expired), and 5.7 GB. Only Produce carries bulk data:
    any other API is refused past --max-other-request-bytes (1 MiB), as soon as the
    frame's length and API key are in (the rest is never read); nothing else is
    affected."""
    assert BrokerConfig().max_other_request_bytes == MiB
    assert parse_args(["--max-other-request-bytes", "5"]).max_other_request_bytes == 5
    async with running(tmp_path) as broker:
        await broker.topics.create("t", 1)
        bystander_reader, bystander = await asyncio.open_connection("127.0.0.1", broker.port)
        try:
            assert await closed_without_answer(broker, data)
            # A connection opened before is untouched: it is answered as usual.
            bystander.write(frame(18, 0, b"", correlation_id=99))
            assert (await read_answer(bystander_reader))[0] == 99
        finally:
            bystander.close()
        await produce_and_fetch(broker, "t", b"alive")


async def test_a_produce_of_several_mib_is_still_accepted(tmp_path: Path) -> None:
    async with running(tmp_path) as broker:
        topic = await broker.topics.create("t", 1)
        records = batch(*[b"x" * 1000] * 900) * 4  # four batches of 0.9 MB, one partition
        request = ProduceRequest_v7(None, -1, 5000, [("t", [(0, records)])])
        assert len(request.encode()) > 3 * MiB
        resp = await ask(broker, request)
        [(_, [(partition, error, base, *_)])] = resp.topics
        assert (partition, error, base) == (0, 0, 0)
        assert topic.logs[0].next_offset == 3600
        await produce_and_fetch(broker, "t", b"after")


async def test_a_request_of_too_many_array_items_closes_its_connection(tmp_path: Path) -> None:
    """Within 1 MiB a request still named ~87,000 partitions (ListOffsets: 0.6 s of the
    loop) or ~116,000 group ids (DescribeGroups: 2 s), and a Produce within its 100 MiB
    13 million empty partition entries. A request holds at most --max-request-entries
    (20,000) array items in all, Produce included."""
    assert BrokerConfig().max_request_entries == 20_000
    assert parse_args(["--max-request-entries", "7"]).max_request_entries == 7
    async with running(tmp_path, max_request_entries=100) as broker:
        await broker.topics.create("t", 1)
        # One topic and 99 partitions: 100 items, answered.
        resp = await ask(broker, OffsetRequest_v1(-1, [("t", [(0, -1)] * 99)]))
        assert len(resp.topics[0][1]) == 99
        resp = await ask(broker, ProduceRequest_v7(None, -1, 5000, [("t", [(0, None)] * 99)]))
        assert len(resp.topics[0][1]) == 99
        # 101 items.
        for request in (
            OffsetRequest_v1(-1, [("t", [(0, -1)] * 100)]),
            MetadataRequest_v4(["t"] * 101, False),
            DescribeGroupsRequest_v2([f"g{i}" for i in range(101)]),
            ProduceRequest_v7(None, -1, 5000, [("t", [(0, None)] * 100)]),
            ProduceRequest_v7(None, -1, 5000, [("t", [])] * 101),
        ):
            data = frame(request.API_KEY, request.API_VERSION, request.encode())
            assert await closed_without_answer(broker, data), request
        await produce_and_fetch(broker, "t", b"alive")


async def test_a_name_repeated_in_a_request_is_answered_once(tmp_path: Path) -> None:
    """A 1 MiB Metadata naming one topic of 4 partitions 350,000 times took 31 s of the
    loop for a 38 MiB answer (the topic, each time); DescribeConfigs likewise (34 MiB),
    DescribeGroups (every member's metadata, each time) and OffsetFetch (the committed
    metadata, up to 4 KiB, each time). Each is answered once, as Fetch already was."""
    async with running(tmp_path) as broker:
        await broker.topics.create("t", 3)
        broker.offsets.commit("g", [("t", 0, 5, "m" * 4096)])
        resp = await ask(broker, MetadataRequest_v4(["t"] * 50 + ["u"] * 2, False))
        assert [(t[1], len(t[3])) for t in resp.topics] == [("t", 3), ("u", 0)]
        resp = await ask(broker, DescribeConfigsRequest_v2([(2, "t", None)] * 50, False))
        assert [r[3] for r in resp.resources] == ["t"]
        resp = await ask(broker, DescribeGroupsRequest_v2(["g"] * 50 + ["h"]))
        assert [g[1] for g in resp.groups] == ["g", "h"]
        resp = await ask(broker, OffsetFetchRequest_v3("g", [("t", [0] * 50), ("t", [0, 1])]))
        assert resp.topics == [("t", [(0, 5, "m" * 4096, 0), (1, -1, "", 0)])]


# The work of a ListOffsets by timestamp and of a Produce of many batches -------------------
T0 = 1_700_000_000_000
CORRUPT_MESSAGE = 2


def timed_batch(timestamps: list[int]) -> bytes:
    """A batch of one empty record at each of ``timestamps``, in that order."""
    builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 1 << 24)
    for i, timestamp in enumerate(timestamps):
        builder.append(i, timestamp=timestamp, key=None, value=None, headers=[])
    return bytes(builder.build())


def count_decoded(monkeypatch: pytest.MonkeyPatch, tick: Callable[[], int]) -> list[int]:
    """Each batch a lookup by timestamp decodes: the value of ``tick()`` then."""
    decoded: list[int] = []

    def memory_records(data: bytes) -> MemoryRecords:
        decoded.append(tick())
        return MemoryRecords(data)

    monkeypatch.setattr(log_module, "MemoryRecords", memory_records)
    return decoded


async def test_list_offsets_decodes_each_batch_once_however_often_it_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 240 KB ListOffsets naming one partition 19,990 times decoded its batch of 14,000
    records 19,990 times: 34 s during which no other client was served. Each entry is
    still answered, in order; each batch is decoded once."""
    decoded = count_decoded(monkeypatch, lambda: 0)
    async with running(tmp_path) as broker:
        topic = await broker.topics.create("t", 2)
        plog = topic.logs[0]
        # Timestamps need not grow: the first record at or after 3 is the one at 5.
        records = timed_batch([T0 + 5, T0 + 1] + [T0 + 10 + i for i in range(2_000)])
        plog.append(records, split_batches(records, 1 << 24))
        last = T0 + 2_009
        asked = [(0, last)] * 5_000 + [(0, T0 + 3), (0, T0 + 10 + 700), (0, T0 - 9)]
        asked += [(0, last + 1), (1, T0), (0, -1), (0, -2), (0, last)]
        resp = await ask(broker, OffsetRequest_v1(-1, [("t", asked), ("u", [(0, T0)])]))
        t, u = resp.topics
        assert [p[:4] for p in t[1]] == (
            [(0, 0, last, 2_001)] * 5_000
            + [(0, 0, T0 + 5, 0), (0, 0, T0 + 710, 702), (0, 0, T0 + 5, 0)]
            + [(0, 0, -1, -1), (1, 0, -1, -1), (0, 0, -1, 2_002), (0, 0, -1, 0)]
            + [(0, 0, last, 2_001)]
        )
        assert u == ("u", [(0, 3, -1, -1)])
        assert len(decoded) == 1


async def test_list_offsets_serves_other_clients_between_the_batches_it_decodes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lookups in many batches (each up to max.message.bytes: 20 ms for 1 MiB of tiny
    records) are not made in one go: the loop runs other callbacks between them."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    decoded = count_decoded(monkeypatch, lambda: ticks)
    async with running(tmp_path) as broker:
        topic = await broker.topics.create("t", 1)
        plog = topic.logs[0]
        for b in range(6):
            records = timed_batch([T0 + 100 * b + i for i in range(50)])
            plog.append(records, split_batches(records, 1 << 24))
        asked = [(0, T0 + 100 * b + i) for i in (40, 3, 17) for b in (5, 0, 3, 1, 4, 2)]
        running_ticker = asyncio.create_task(ticker())
        try:
            resp = await ask(broker, OffsetRequest_v1(-1, [("t", asked)]))
        finally:
            running_ticker.cancel()
        offsets = [p[3] for p in resp.topics[0][1]]
        assert offsets == [50 * b + i for i in (40, 3, 17) for b in (5, 0, 3, 1, 4, 2)]
        assert len(decoded) == 6  # each batch once
        assert decoded == sorted(set(decoded))  # the loop ran between any two


async def test_a_produce_of_too_many_batches_is_refused_after_reading_a_bounded_number(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Within --max-request-bytes a Produce held 1.5 million minimal batches, each read,
    checked and indexed: 6 s of the loop, and group members with 6 s sessions were
    evicted. A request carries at most MAX_PRODUCE_BATCHES batches, all partitions
    together (clients send one a partition); a record set that goes past it, and every
    later one, is refused with CORRUPT_MESSAGE, and nothing of it is stored."""
    parsed = 0
    real = records_module.parse_batch

    def parse_batch(buf: bytes | memoryview, start: int, **kw: bool) -> Any:
        nonlocal parsed
        parsed += 1
        return real(buf, start, **kw)

    monkeypatch.setattr(records_module, "parse_batch", parse_batch)
    one = batch(b"")
    assert MAX_PRODUCE_BATCHES >= 20_000  # what a request of one batch a partition may hold
    async with running(tmp_path) as broker:
        topic = await broker.topics.create("t", 4)
        resp = await ask(
            broker, ProduceRequest_v7(None, -1, 5000, [("t", [(0, one * MAX_PRODUCE_BATCHES)])])
        )
        assert [p[:3] for p in resp.topics[0][1]] == [(0, 0, 0)]
        assert topic.logs[0].next_offset == MAX_PRODUCE_BATCHES
        parsed = 0
        over = one * (MAX_PRODUCE_BATCHES + 1)
        parts = [(1, one * (MAX_PRODUCE_BATCHES - 10)), (2, over), (3, over), (0, one)]
        resp = await ask(broker, ProduceRequest_v7(None, -1, 5000, [("t", parts)]))
        assert [p[:3] for p in resp.topics[0][1]] == [
            (1, 0, 0),
            (2, CORRUPT_MESSAGE, -1),
            (3, CORRUPT_MESSAGE, -1),
            (0, CORRUPT_MESSAGE, -1),
        ]
        assert parsed == MAX_PRODUCE_BATCHES  # 10 of partition 2 read, the rest not
        assert [p.next_offset for p in topic.logs] == [MAX_PRODUCE_BATCHES, 19_990, 0, 0]
        await produce_and_fetch(broker, "t", b"alive")
