"""The worker's failure rules against the real servers (the rules themselves, with
stand-ins: test_worker.py): a Redis that answers PING but refuses writes holds a batch
instead of dead-lettering it, and a malformed record is dead-lettered once however
often its batch is tried."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from parley_contract import envelopes as e
from prometheus_client import CollectorRegistry

from scripts.stack import _free_ports, redis_command
from services.common.clients import (
    KafkaProducerHandle,
    Topics,
    mongo_client,
    redis_client,
    service_db,
)
from services.common.config import Settings
from services.delivery.store import DeliveryStore
from services.delivery.worker import Worker
from tests.delivery.test_worker import FakeProducer, record
from tests.support.aio import eventually

NOTICE = b'{"kind":"key_changed","server_id":"s1","from":"ann","to":"bob","to_device":1,"client_id":"k1"}'


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[int]:
    """A redis-server of this test's own (the shared one must keep taking writes)."""
    if shutil.which("redis-server") is None:
        pytest.skip("needs redis-server")
    [port] = _free_ports(1)
    proc = await asyncio.create_subprocess_exec(*redis_command("127.0.0.1", port, tmp_path))
    probe = aioredis.Redis(port=port)

    async def up() -> bool:
        try:
            return bool(await probe.ping())
        except Exception:
            return False

    try:
        await eventually(up, bool)
        yield port
    finally:
        await probe.aclose()
        proc.terminate()
        await proc.wait()


@pytest.mark.parametrize("refusal", ["oom", "readonly"])
async def test_a_redis_refusing_writes_holds_the_batch_instead_of_dead_lettering_it(
    settings: Settings, own_redis: int, refusal: str
) -> None:
    """After a failover the shared connection may sit on a demoted primary (READONLY),
    or Redis reached maxmemory under noeviction (OOM): PING answers, every write is
    refused. Each failure counted toward the attempts, and the batch was split and
    every record dead-lettered as failed. It waits now, and is stored once Redis
    takes writes again."""
    s = settings.model_copy(
        update={"redis_url": f"redis://127.0.0.1:{own_redis}/0", "delivery_max_attempts": 2}
    )
    mongo, redis = mongo_client(s), redis_client(s)
    store = DeliveryStore(s, service_db(mongo, s, "delivery"), redis)
    worker = Worker(s, store, CollectorRegistry(), FakeProducer())  # type: ignore[arg-type]
    try:
        assert await redis.ping()
        if refusal == "oom":  # the default policy is noeviction
            await redis.config_set("maxmemory", 1)
        else:  # a replica of a primary that is gone: read-only, answering PING
            await redis.execute_command("REPLICAOF", "127.0.0.1", str(_free_ports(1)[0]))
        env = e.decode_envelope(NOTICE)

        async def handler(_: Any) -> None:
            await worker._store_items([env], time.time())

        attempt = asyncio.create_task(worker._attempt(handler, [record(NOTICE)]))

        async def waits() -> float:
            return float(worker.store_waits.labels("redis")._value.get())

        # Three failures waited out (two counted ended it in 0.3 s, before the fix).
        await eventually(waits, lambda n: n >= 3, timeout=30)
        assert not attempt.done(), attempt.result()
        assert await redis.ping() and worker.down == ["redis"]
        assert worker.store_waits.labels("redis")._value.get() >= 3
        assert worker.retries._value.get() == 0
        if refusal == "oom":
            await redis.config_set("maxmemory", 0)
        else:
            await redis.execute_command("REPLICAOF", "NO", "ONE")
        assert await asyncio.wait_for(attempt, 30) is None
        page, _ = await store.page("bob.1", 0, 10)
        assert [d["server_id"] for d in page] == ["s1"]
        assert worker.down == [] and worker.waiting._value.get() == 0
    finally:
        await redis.aclose()
        await mongo.close()


async def test_a_malformed_record_is_dead_lettered_once_however_often_its_batch_is_tried(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A malformed record and a good one in one batch, whose first try fails (a failure
    a record may cause: tried again). The malformed one was dead-lettered inside the
    tried part: once per try. It is dead-lettered once now, before the batch is
    tried. Through Kafka, the worker's consumers as they run."""
    s = settings.model_copy(update={"delivery_consumers": 1})
    mongo, redis = mongo_client(s), redis_client(s)
    store = DeliveryStore(s, service_db(mongo, s, "delivery"), redis)
    topics = Topics(s)
    producer = KafkaProducerHandle(s, topics.all())
    await producer.start()
    worker = Worker(s, store, CollectorRegistry(), producer)
    claims = store.claims_and_numbers
    tries = 0

    async def fails_once(*args: Any, **kwargs: Any) -> Any:
        nonlocal tries
        tries += 1
        if tries == 1:
            raise ValueError("a failure a record may cause")
        return await claims(*args, **kwargs)

    monkeypatch.setattr(store, "claims_and_numbers", fails_once)
    try:
        kafka = await producer.wait_ready(30)
        for value in (b"{not json", NOTICE):  # one partition (the key), one batch
            await kafka.send_and_wait(topics.messages, value, key=b"bob.1")
        await worker.start()
        await eventually(lambda: store.page("bob.1", 0, 10), lambda p: len(p[0]) == 1, 60)
        assert tries == 2
        malformed = worker.dead_letters.labels(topics.messages, "malformed")
        assert malformed._value.get() == 1
        assert worker.dead_letters.labels(topics.messages, "failed")._value.get() == 0
    finally:
        await worker.stop()
        await producer.stop()
        await redis.aclose()
        await mongo.close()
