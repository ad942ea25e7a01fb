"""The worker's failure rules, with stand-ins for the store and the producer (no servers).

The same rules run against the real servers in tests/e2e/test_delivery_liveness.py.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

from aiokafka import ConsumerRecord
from prometheus_client import CollectorRegistry

from services.common.config import load_settings
from services.delivery.hot import HotInbox, Replicas
from services.delivery.worker import Worker


def record(value: bytes, offset: int = 1) -> Any:
    return ConsumerRecord("t", 0, offset, 0, 0, b"k", value, None, 0, len(value), ())


class FakeStore:
    def __init__(self) -> None:
        self.down: list[list[str]] = []
        self.db: dict[str, Any] = defaultdict(lambda: None)  # the room log's: not used here
        self.hot = HotInbox.__new__(HotInbox)  # where the worker counts unconfirmed writes
        self.hot.replicas = Replicas()

    async def ping(self) -> list[str]:
        return self.down.pop(0) if self.down else []


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, list[tuple[str, bytes]]]] = []

    async def wait_ready(self, timeout: float) -> FakeProducer:
        return self

    async def send_and_wait(
        self, topic: str, value: bytes, key: bytes, headers: list[tuple[str, bytes]]
    ) -> None:
        self.sent.append((topic, value, headers))


def make_worker(**settings: Any) -> tuple[Worker, FakeStore, FakeProducer]:
    store, producer = FakeStore(), FakeProducer()
    worker = Worker(load_settings(**settings), store, CollectorRegistry(), producer)  # type: ignore[arg-type]
    return worker, store, producer


async def test_a_poisoned_record_is_dead_lettered_and_the_rest_processed() -> None:
    worker, _, producer = make_worker(delivery_max_attempts=2)
    done: list[bytes] = []

    async def handler(records: list[Any]) -> None:
        if any(r.value == b"poison" for r in records):
            raise ValueError("cannot store this one")
        done.extend(r.value for r in records)

    batch = [record(b"m%d" % i, i) for i in range(10)]
    batch.insert(6, record(b"poison", 99))
    await asyncio.wait_for(worker._process(handler, batch), 30)
    assert sorted(done) == sorted(b"m%d" % i for i in range(10))
    assert len(producer.sent) == 1
    topic, value, headers = producer.sent[0]
    assert topic.endswith("dead-letters") and value == b"poison"
    assert dict(headers)["dlq_reason"] == b"failed"
    assert dict(headers)["dlq_error"] == b"ValueError"
    assert dict(headers)["dlq_source"] == b"t/0/99"
    assert worker.dead_letters.labels("t", "failed")._value.get() == 1


async def test_an_outage_waits_without_counting_attempts() -> None:
    worker, store, producer = make_worker(delivery_max_attempts=1)
    store.down = [["mongo"], ["mongo", "redis"], ["redis"]]
    calls = 0

    async def handler(records: list[Any]) -> None:
        nonlocal calls
        calls += 1
        if calls <= 3:
            raise ConnectionError("store unreachable")

    await asyncio.wait_for(worker._process(handler, [record(b"m")]), 30)
    assert calls == 4  # three failures during the outage, then success
    assert producer.sent == []  # nothing dead-lettered for an outage
    assert worker.retries._value.get() == 0
    assert worker.down == [] and worker.waiting._value.get() == 0


async def test_malformed_envelopes_are_dead_lettered_with_their_reason() -> None:
    worker, _, producer = make_worker()

    assert worker._parse(record(b"{not json")) is None
    assert worker._parse(record(b'{"kind": "teleport", "to": "u"}')) is None
    assert worker._parse(record(b'{"kind": "message", "to": "u"}')) is None
    ok = b'{"kind":"key_changed","server_id":"s","from":"a","to":"b","to_device":1,"client_id":"c"}'
    assert worker._parse(record(ok)) is not None
    assert worker.rejected._value.get() == 3

    await worker.handle_messages([record(b"{not json", 5)])
    assert [(v, dict(h)["dlq_reason"]) for _, v, h in producer.sent] == [
        (b"{not json", b"malformed")
    ]
