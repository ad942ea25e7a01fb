"""What one client can make the broker hold in memory: the size of a Fetch answer, and
answers a client does not read."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiokafka.protocol.fetch import FetchRequest_v11, FetchResponse_v11

from embedded.kafka.config import BrokerConfig, parse_args
from tests.embedded.inproc import ask, fill, frame, read_answer, running
from tests.support.aio import eventually

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
