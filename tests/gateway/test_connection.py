"""A client that does not read is disconnected (4008) instead of growing the pod's memory.

A unit test with a stand-in for the socket whose sends never complete (a
client that stopped reading, once the kernel buffers are full): loopback TCP
buffers hold megabytes, which would make a real-socket version slow and flaky.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from parley_contract.frames import CLOSE_SLOW_CONSUMER, Message
from prometheus_client import CollectorRegistry

from services.common.config import load_settings
from services.gateway.connection import CLOSE_ROUNDS, Connection
from services.gateway.hub import Hub
from services.gateway.store import GatewayStore
from tests.support.aio import eventually


class StuckSocket:
    def __init__(self) -> None:
        self.sent = 0
        self.closed_with: int | None = None
        self.never = asyncio.Event()

    async def send_frame(self, data: bytes, opcode: Any) -> None:
        self.sent += 1
        await self.never.wait()

    async def close(self, code: int, message: bytes = b"") -> None:
        self.closed_with = code


async def test_full_outbound_queue_closes_the_socket_with_4008() -> None:
    settings = load_settings(ws_outbound_queue=8)
    store = GatewayStore(settings, None, None, None)  # type: ignore[arg-type]
    hub = Hub(store, CollectorRegistry(), None, None, None, None)  # type: ignore[arg-type]
    ws = StuckSocket()
    conn = Connection(ws, hub)  # type: ignore[arg-type]
    try:
        for i in range(100):
            conn.push(Message(seq=i, server_id="s", from_="u", from_device=1, body="x" * 1000))
            await asyncio.sleep(0)
        await eventually(lambda: _value(ws.closed_with), lambda code: code is not None, timeout=5)
        assert ws.closed_with == CLOSE_SLOW_CONSUMER
        # Memory stayed bounded: one frame in the socket, at most the queue's size waiting.
        assert ws.sent == 1
        assert len(conn.queue) <= settings.ws_outbound_queue
        assert hub.errors.labels("slow_consumer")._value.get() == 1
    finally:
        if conn._writer is not None:  # the writer a push started
            conn._writer.cancel()


async def _value(v: Any) -> Any:
    return v


class ReadingSocket(StuckSocket):
    async def send_frame(self, data: bytes, opcode: Any) -> None:
        self.sent += 1


async def test_an_idle_socket_keeps_no_queue_once_its_frames_are_sent() -> None:
    settings = load_settings()
    store = GatewayStore(settings, None, None, None)  # type: ignore[arg-type]
    hub = Hub(store, CollectorRegistry(), None, None, None, None)  # type: ignore[arg-type]
    ws = ReadingSocket()
    conn = Connection(ws, hub)  # type: ignore[arg-type]
    assert conn.queue is None and conn._pending is None
    for i in range(3):
        conn.push(Message(seq=i, server_id="s", from_="u", from_device=1, body="x"))
    assert conn.queue is not None and len(conn.queue) == 3
    await eventually(lambda: _value(conn._writer), lambda w: w is None, timeout=5)
    assert ws.sent == 3
    assert conn.queue is None and conn.queued_bytes == 0
    assert not hasattr(conn, "__dict__")


class StuckTransport:
    """A connection whose peer stopped reading: everything written stays buffered."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.writes = 0

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.buffer += data

    def get_write_buffer_size(self) -> int:
        return len(self.buffer)


def _frames(buffer: bytes) -> list[bytes]:
    """The payloads of back-to-back unmasked text frames."""
    out, i = [], 0
    while i < len(buffer):
        assert buffer[i] == 0x81
        n, i = buffer[i + 1], i + 2
        if n == 126:
            n, i = int.from_bytes(buffer[i : i + 2], "big"), i + 2
        elif n == 127:
            n, i = int.from_bytes(buffer[i : i + 8], "big"), i + 8
        out.append(bytes(buffer[i : i + n]))
        i += n
    return out


async def test_frames_that_wait_together_go_out_in_one_write_and_stay_bounded() -> None:
    settings = load_settings(ws_outbound_queue_bytes=64 * 1024)
    store = GatewayStore(settings, None, None, None)  # type: ignore[arg-type]
    hub = Hub(store, CollectorRegistry(), None, None, None, None)  # type: ignore[arg-type]
    ws = StuckSocket()
    ws.closed = False  # type: ignore[attr-defined]
    transport = StuckTransport()
    conn = Connection(ws, hub, transport)  # type: ignore[arg-type]
    try:
        pushed = []
        for burst in range(100):
            for i in range(10):  # ten frames wait together: one write
                frame = Message(seq=burst * 10 + i, server_id="s", from_="u", from_device=1,
                                body="x" * 1000)  # fmt: skip
                conn.push(frame)
                pushed.append(frame)
            await asyncio.sleep(0)
            if ws.closed_with is not None:
                break
        await eventually(lambda: _value(ws.closed_with), lambda code: code is not None, timeout=5)
        assert ws.closed_with == CLOSE_SLOW_CONSUMER
        # Bounded: what waits in the transport passed the limit by at most one burst.
        assert len(transport.buffer) <= 64 * 1024 + 10 * 1200
        written = _frames(bytes(transport.buffer))
        assert [orjson.loads(p)["seq"] for p in written] == [f.seq for f in pushed[: len(written)]]
        assert transport.writes < len(written)  # several frames per write
        assert ws.sent == 0
    finally:
        if conn._writer is not None:
            conn._writer.cancel()


class FakeTransport:
    """A socket's transport: what was written, and what the kernel has not taken."""

    def __init__(self) -> None:
        self.written = 0
        self.buffered = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return False


async def test_a_burst_in_one_turn_of_the_loop_is_no_slow_reader() -> None:
    """5,000 frames pushed before the loop turns (the receipts of one large ack) all go
    out in one write: the frame limit (1,000) bounds a queue that waits on a slow
    reader, not what the client has not been offered yet. Bytes the client has not
    read (the transport's buffer) still close it."""
    settings = load_settings()
    store = GatewayStore(settings, None, None, None)  # type: ignore[arg-type]
    hub = Hub(store, CollectorRegistry(), None, None, None, None)  # type: ignore[arg-type]
    ws, transport = ReadingSocket(), FakeTransport()
    ws.closed = False  # type: ignore[attr-defined]
    conn = Connection(ws, hub, transport)  # type: ignore[arg-type]
    frame = Message(seq=1, server_id="s", from_="u", from_device=1, body="x" * 100)
    for _ in range(5 * settings.ws_outbound_queue):
        conn.push(frame)
    assert ws.closed_with is None and conn.queue is not None
    await eventually(lambda: _value(conn.queue), lambda q: q is None, timeout=5)
    assert transport.written > 5 * settings.ws_outbound_queue * 100
    assert hub.errors.labels("slow_consumer")._value.get() == 0

    transport.buffered = settings.ws_outbound_queue_bytes  # the client stopped reading
    conn.push(frame)
    await eventually(lambda: _value(ws.closed_with), lambda code: code is not None, timeout=5)
    assert ws.closed_with == CLOSE_SLOW_CONSUMER
    assert hub.errors.labels("slow_consumer")._value.get() == 1


class DrainingTransport(FakeTransport):
    """A transport whose client takes ``per_look`` bytes between two looks of the close
    watch, and (``answers``) answers the close once it has everything; aborted or not."""

    def __init__(self, buffered: int, per_look: int, closing: asyncio.Future[bool],
                 answers: bool) -> None:  # fmt: skip
        super().__init__()
        self.buffered, self.per_look, self.aborted = buffered, per_look, False
        self.closing, self.answers, self.looks = closing, answers, 0

    def get_write_buffer_size(self) -> int:
        self.looks += 1
        size = self.buffered
        self.buffered = max(self.buffered - self.per_look, 0)
        if self.buffered == 0 and self.answers and not self.closing.done():
            self.closing.set_result(True)
        return size

    def abort(self) -> None:
        self.aborted = True


@pytest.mark.parametrize(
    ("buffered", "per_look", "answers", "dropped"),
    [
        (3_000_000, 400_000, True, False),  # a slow link still reading: its close ends
        (3_000_000, 0, False, True),  # stopped reading: dropped at the first look
        (0, 0, False, True),  # took everything, never answers the close: dropped
        (3_000_000, 1, False, True),  # a trickle: dropped after CLOSE_ROUNDS looks
    ],
)
async def test_a_close_is_watched_until_the_client_stops_reading(
    monkeypatch: pytest.MonkeyPatch, buffered: int, per_look: int, answers: bool, dropped: bool
) -> None:
    monkeypatch.setattr("services.gateway.connection.CLOSE_TIMEOUT_S", 0.001)
    settings = load_settings()
    store = GatewayStore(settings, None, None, None)  # type: ignore[arg-type]
    hub = Hub(store, CollectorRegistry(), None, None, None, None)  # type: ignore[arg-type]
    closing: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    transport = DrainingTransport(buffered, per_look, closing, answers)
    conn = Connection(ReadingSocket(), hub, transport)  # type: ignore[arg-type]
    conn.watch_close(closing)
    if answers:
        await asyncio.wait_for(closing, 5)
        looks = transport.looks
        await asyncio.sleep(0.02)  # twenty intervals: the watch looks no more
        assert transport.looks == looks
    else:
        await eventually(lambda: _value(transport.aborted), lambda a: a, timeout=5)
    assert transport.aborted is dropped
    if per_look == 1:
        assert transport.looks == 1 + CLOSE_ROUNDS  # the first size, then every look
