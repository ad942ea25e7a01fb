"""The broker in the test's own event loop (to reach its state and patch its disk calls),
and raw requests to it: one frame out, one answer back."""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiokafka.record.default_records import DefaultRecordBatchBuilder

from embedded.kafka.config import BrokerConfig
from embedded.kafka.log import PartitionLog
from embedded.kafka.records import split_batches
from embedded.kafka.server import Broker


@asynccontextmanager
async def running(data_dir: Path, **config: Any) -> AsyncIterator[Broker]:
    broker = Broker(BrokerConfig(data_dir=data_dir, port=0, **config))
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


def frame(api_key: int, version: int, body: bytes, correlation_id: int = 1) -> bytes:
    head = struct.pack(">hhih", api_key, version, correlation_id, 4) + b"test"
    return struct.pack(">i", len(head) + len(body)) + head + body


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The next answer on the connection: its correlation id and its body."""
    (size,) = struct.unpack(">i", await asyncio.wait_for(reader.readexactly(4), 30))
    payload = await asyncio.wait_for(reader.readexactly(size), 30)
    return struct.unpack(">i", payload[:4])[0], payload[4:]


async def ask(broker: Broker, request: Any) -> Any:
    """Send one aiokafka request struct on a new connection; its decoded answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
    try:
        writer.write(frame(request.API_KEY, request.API_VERSION, request.encode()))
        _, body = await read_answer(reader)
    finally:
        writer.close()
    return request.RESPONSE_TYPE.decode(body)


def batch(*values: bytes) -> bytes:
    builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 1 << 24)
    now = int(time.time() * 1000)
    for i, value in enumerate(values):
        builder.append(i, timestamp=now, key=None, value=value, headers=[])
    return bytes(builder.build())


def fill(plog: PartitionLog, total_bytes: int, batch_bytes: int = 1 << 20) -> None:
    """Append batches of about ``batch_bytes`` until the partition holds ``total_bytes``."""
    records = batch(*[b"x" * 1000] * (batch_bytes // 1000))
    while plog.size_bytes() < total_bytes:
        plog.append(records, split_batches(records, 1 << 24))
