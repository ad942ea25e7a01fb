"""The worker's failure rules, with stand-ins for the store and the producer (no servers).

The same rules run against the real servers in tests/e2e/test_delivery_liveness.py.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import ConsumerRecord
from prometheus_client import CollectorRegistry
from pymongo.errors import AutoReconnect, OperationFailure
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError

from services.common.config import load_settings
from services.delivery.counters import CountersUnseeded
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


def stub_kafka(
    monkeypatch: Any,
    started: Callable[[str], Awaitable[None]],
    consume: Callable[[Worker, Any, Any], Awaitable[None]],
) -> None:
    """The worker's consumers without Kafka: each consumer is its group's name, started
    by ``started``, consumed by ``consume``; the purge and persist loops idle."""
    import services.delivery.worker as worker_module

    async def nothing(*_: Any) -> None:
        return None

    def consumer(settings: Any, topics: list[str], group: str, **_: Any) -> str:
        return group

    async def forever(self: Worker) -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(worker_module, "ensure_topics", nothing)
    monkeypatch.setattr(worker_module, "kafka_consumer", consumer)
    monkeypatch.setattr(worker_module, "started", started)
    monkeypatch.setattr(worker_module, "stop_consumer", nothing)
    monkeypatch.setattr(Worker, "_consume", consume)
    monkeypatch.setattr(Worker, "_consume_messages", consume)
    monkeypatch.setattr(Worker, "_purge_loop", forever)
    monkeypatch.setattr(Worker, "_persist_loop", forever)


async def test_a_poisoned_record_is_dead_lettered_and_the_rest_processed() -> None:
    worker, _, producer = make_worker(delivery_max_attempts=2)
    done: list[bytes] = []

    async def handler(batch: list[Any]) -> None:
        if any(r.value == b"poison" for r, _ in batch):
            raise ValueError("cannot store this one")
        done.extend(r.value for r, _ in batch)

    records = [record(b"m%d" % i, i) for i in range(10)]
    records.insert(6, record(b"poison", 99))
    await asyncio.wait_for(worker._process(handler, [(r, r.value) for r in records]), 30)
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

    await asyncio.wait_for(worker._process(handler, [(record(b"m"), None)]), 30)
    assert calls == 4  # three failures during the outage, then success
    assert producer.sent == []  # nothing dead-lettered for an outage
    assert worker.retries._value.get() == 0
    assert worker.down == [] and worker.waiting._value.get() == 0


async def test_the_gauge_stays_up_while_any_batch_waits() -> None:
    """A private room's batch waiting on MongoDB while 1:1 batches succeed: the gauge
    (ParleyDeliveryWaitingForStore) stays 1 until the waiting batch is through. One
    flag set by each batch's success read 0 within a second of the outage."""
    worker, store, _ = make_worker(delivery_max_attempts=1)
    mongo_back, failed_once = asyncio.Event(), asyncio.Event()
    store.down = [["mongo"]] * 100

    async def room_batch(records: list[Any]) -> None:
        if not mongo_back.is_set():
            failed_once.set()
            raise AutoReconnect("mongo down")

    async def one_to_one(records: list[Any]) -> None:
        return None

    waiting = asyncio.create_task(worker._process(room_batch, [(record(b"r"), None)]))
    await asyncio.wait_for(failed_once.wait(), 30)
    await asyncio.sleep(0)  # the failure handled: waiting, its sleep begun
    assert worker.waiting._value.get() == 1
    for i in range(5):
        await worker._process(one_to_one, [(record(b"m%d" % i), None)])
        assert worker.waiting._value.get() == 1, "a 1:1 batch's success hid the wait"
    mongo_back.set()
    await asyncio.wait_for(waiting, 30)
    assert worker.waiting._value.get() == 0 and worker.down == []


async def test_ready_only_while_every_consumer_consumes(monkeypatch: Any) -> None:
    """``running`` (the ``consumer`` readiness check) is set while every consumer task is
    consuming and cleared while any fails and restarts. It was set by the messages
    consumer's first start and never cleared: a consumer failing for ever was ready."""
    worker, _, _ = make_worker(delivery_consumers=2)
    started_slots: list[str] = []
    failing = {"-rooms"}
    retried = asyncio.Event()

    async def started(group: str) -> None:
        started_slots.append(group)
        if sum(g.endswith("-rooms") for g in started_slots) >= 3:  # failed, retried twice
            retried.set()
        if any(group.endswith(s) for s in failing):
            raise ConnectionError("coordinator unavailable")

    async def consume(self: Worker, group: Any, stage: Any) -> None:
        await asyncio.Event().wait()

    stub_kafka(monkeypatch, started, consume)
    await worker.start()
    try:
        await asyncio.wait_for(retried.wait(), 30)
        assert not worker.running.is_set()
        failing.clear()  # the coordinator is back: the next retry starts it
        await asyncio.wait_for(worker.running.wait(), 30)
    finally:
        await worker.stop()


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


async def test_the_error_tells_an_unavailable_server_from_a_records_fault() -> None:
    """A Redis refusing writes answers PING: its batch waits all the same (it was
    counted, split and every record dead-lettered). Against a real Redis refusing
    writes: test_worker_faults.py."""
    worker, _, producer = make_worker(delivery_max_attempts=1)
    for error in (
        ReadOnlyError("You can't write against a read only replica."),
        OutOfMemoryError("command not allowed when used memory > 'maxmemory'."),
        ResponseError("Command # 2 (EVALSHA x) of pipeline caused error: ('BUSY Redis is busy',)"),
        RedisConnectionError("Connection to Redis lost"),
        AutoReconnect("connection closed"),
        OperationFailure("interrupted at shutdown", code=11600),
        CountersUnseeded(["ann.1"]),
    ):
        failed: list[Exception] = []

        async def handler(
            batch: list[Any], error: Exception = error, failed: list[Exception] = failed
        ) -> None:
            if not failed:
                failed.append(error)
                raise error

        done = await asyncio.wait_for(worker._attempt(handler, [(record(b"m"), None)]), 10)
        assert done is None and failed == [error]  # tried again, though max attempts is 1
    assert producer.sent == [] and worker.waiting._value.get() == 0
    assert worker.retries._value.get() == 0
    assert worker.store_waits.labels("redis")._value.get() == 4
    assert worker.store_waits.labels("mongo")._value.get() == 2
    assert worker.store_waits.labels("counters")._value.get() == 1


async def test_mongodb_down_holds_only_a_batch_that_failed_on_one_of_its_errors() -> None:
    """A batch does no MongoDB work as a rule: one that failed on its own while MongoDB
    did not answer waited for MongoDB for ever (its partition with it)."""
    worker, store, _ = make_worker(delivery_max_attempts=1)
    calls = 0

    async def records_fault(batch: list[Any]) -> None:
        raise KeyError("a field this record lacks")

    async def mongo_refused(batch: list[Any]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OperationFailure("not authorized", code=13)

    store.down = [["mongo"]] * 100  # MongoDB does not answer: not this batch's cause
    err = await asyncio.wait_for(worker._attempt(records_fault, [(record(b"m"), None)]), 10)
    assert isinstance(err, KeyError) and worker.retries._value.get() == 1
    store.down, calls = [["mongo"]] * 100, 0  # ... but it is this one's
    assert (
        await asyncio.wait_for(worker._attempt(mongo_refused, [(record(b"m"), None)]), 10) is None
    )
    assert worker.retries._value.get() == 1


async def test_a_consumer_failing_after_each_start_is_not_ready_and_backs_off(
    monkeypatch: Any,
) -> None:
    """Review of the readiness fix: a consumer that starts and then fails at once (Redis
    refusing writes, a commit error) was ready all but a few ms of every round (the flag
    was cleared after the back-off's sleep), and its wait never grew (reset at each
    start). Now the flag is down while it waits, and the wait doubles."""
    import services.delivery.worker as worker_module

    worker, _, _ = make_worker(delivery_consumers=1)
    waits: list[tuple[float, bool]] = []
    enough = asyncio.Event()
    real_sleep = asyncio.sleep

    async def started(group: str) -> None:
        return None

    async def consume(self: Worker, group: Any, stage: Any) -> None:
        if str(group).endswith("-rooms"):
            raise ConnectionError("READONLY You can't write against a read only replica.")
        await asyncio.Event().wait()

    async def backoff(delay: float, *args: Any) -> Any:
        waits.append((delay, worker.running.is_set()))
        if len(waits) >= 4:
            enough.set()
        return await real_sleep(0)

    stub_kafka(monkeypatch, started, consume)
    await worker.start()
    monkeypatch.setattr(worker_module.asyncio, "sleep", backoff)
    try:
        await asyncio.wait_for(enough.wait(), 30)
    finally:
        monkeypatch.setattr(worker_module.asyncio, "sleep", real_sleep)
        await worker.stop()
    assert [ready for _, ready in waits[:4]] == [False] * 4, waits
    assert [delay for delay, _ in waits[:4]] == [0.2, 0.4, 0.8, 1.6], waits
