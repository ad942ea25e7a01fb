"""The dedup records of the hot inbox (services/delivery/hot.py, ``DedupSpans``): a message
resent with the same client id is stored once within ``hot_dedup_s``, whatever span it
falls in, after a delivery restart, after an upgrade from the one-key-per-record
records, and after a restart of a Redis that keeps its data; and what a record costs
in Redis memory (docs/delivery.md, "Dedup records")."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from scripts.stack import _free_ports, redis_command
from services.common.clients import mongo_client, redis_client, service_db
from services.common.config import Settings
from services.common.inbox import counter_key
from services.delivery import hot as hot_module
from services.delivery.hot import DEDUP_SKEW_S, DedupSpans
from services.delivery.store import DeliveryStore, dedup_key
from tests.delivery.conftest import item
from tests.support.aio import eventually


class OwnRedis:
    """A redis-server of the test's own, with an append-only file when ``durable``
    (a Redis that keeps its data through a restart)."""

    def __init__(self, data_dir: Path, durable: bool) -> None:
        [self.port] = _free_ports(1)
        self.argv = redis_command("127.0.0.1", self.port, data_dir)
        if durable:
            self.argv += ["--appendonly", "yes", "--appendfsync", "always"]
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(*self.argv)
        probe = aioredis.Redis(port=self.port)

        async def up() -> bool:
            try:
                return bool(await probe.ping())
            except Exception:
                return False

        try:
            await eventually(up, bool)
        finally:
            await probe.aclose()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()  # SIGTERM: an append-only Redis flushes its file first
            await self.proc.wait()


@contextlib.asynccontextmanager
async def _running(tmp_path: Path, durable: bool) -> AsyncIterator[OwnRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("needs redis-server")
    r = OwnRedis(tmp_path, durable=durable)
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


@pytest.fixture
async def durable_redis(tmp_path: Path) -> AsyncIterator[OwnRedis]:
    async with _running(tmp_path, durable=True) as r:
        yield r


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[OwnRedis]:
    async with _running(tmp_path, durable=False) as r:
        yield r


def store_on(settings: Settings, url: str) -> DeliveryStore:
    s = settings.model_copy(update={"redis_url": url})
    return DeliveryStore(s, service_db(mongo_client(s), s, "delivery"), redis_client(s))


async def close(store: DeliveryStore) -> None:
    await store.db.client.close()
    await store.redis.aclose()


def test_a_record_is_found_for_its_whole_window_wherever_it_falls_in_its_span() -> None:
    """Where a record goes (its span's key, kept long enough) and what a look-up reads
    (the spans it covers): every look-up within the window after the write, by a
    process whose clock is up to DEDUP_SKEW_S off, reads the key, and the key is
    kept past it."""
    for window in (60, 3600, 86400):
        spans = DedupSpans("p", window)
        step = spans.span_s / 7
        for i in range(40):
            written = 1_800_000_000 + i * step
            key, keep = spans.write("a.1", written)
            assert keep >= window + DEDUP_SKEW_S
            for skew in (-DEDUP_SKEW_S, 0, DEDUP_SKEW_S):
                for later_s in (0, 1, window / 2, window - 1, window):
                    looked = written + later_s + skew
                    assert key in [spans.key("a.1", n) for n in spans.spans(looked)]
                    assert later_s <= keep  # the key (Redis's clock) outlives the look
        assert len(spans.spans(1_800_000_000)) <= 2 + (window + 2 * DEDUP_SKEW_S) // spans.span_s


async def test_a_resend_is_stored_once_across_spans_restarts_and_acks(
    store: DeliveryStore, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first copy written one second before its span ends; resent in the next span,
    then just before the window ends (after the first copy was acknowledged, so no
    longer hot), then by another delivery process: always the first copy, never a
    second item."""
    spans = store.hot.dedup
    start = (int(time.time() // spans.span_s) + 1) * spans.span_s - 1
    clock = [float(start)]
    monkeypatch.setattr(hot_module.time, "time", lambda: clock[0])
    inbox = f"d{uuid.uuid4().hex[:6]}.1"
    [first] = await store.store_hot([item(inbox, 0, cid="resent")])
    clock[0] = start + 2  # the next span
    [again] = await store.store_hot([item(inbox, 0, cid="resent")])
    assert again["duplicate"] and again["seq"] == first["seq"]
    assert again["server_id"] == first["server_id"]
    await store.acknowledge_many({inbox: first["seq"]})
    clock[0] = start + store.settings.hot_dedup_s - 1
    other = store_on(settings, settings.redis_url)  # a restarted delivery process
    try:
        [late] = await other.store_hot([item(inbox, 0, cid="resent")])
    finally:
        await close(other)
    assert late["duplicate"] and late.get("acked") and late["seq"] == first["seq"]
    assert late["server_id"] == first["server_id"]
    n = int(await store.redis.hget(counter_key(store.prefix, inbox), "n") or 0)
    fresh = await store.store_hot([item(inbox, 0, cid="new")])
    assert fresh[0]["seq"] > n and "duplicate" not in fresh[0]


async def test_a_record_of_the_version_before_is_honoured_after_the_upgrade(
    store: DeliveryStore,
) -> None:
    """An upgrade keeps the records written before it (one key each) for their window:
    a resend after the upgrade comes back as the copy stored before."""
    inbox = f"u{uuid.uuid4().hex[:6]}.1"
    [first] = await store.store_hot([item(inbox, 0, cid="old")])
    key = dedup_key(inbox, "s", "old")
    spans = store.hot.dedup.spans(time.time())
    await store.redis.delete(*[store.hot.dedup.key(inbox, n) for n in spans])
    await store.redis.set(store.hot.dup_key(key), f"{first['seq']}|{first['server_id']}", ex=60)
    [again] = await store.store_hot([item(inbox, 0, cid="old")])
    assert again["duplicate"] and again["seq"] == first["seq"]
    # Once the window after the upgrade is over, those keys are no longer read.
    since = int(time.time()) - store.settings.hot_dedup_s - DEDUP_SKEW_S - 1
    await store.redis.set(store.hot.dedup_since, since)
    assert await store.hot.claims([key]) == {}


async def test_a_redis_that_keeps_its_data_keeps_the_records_through_a_restart(
    settings: Settings, durable_redis: OwnRedis
) -> None:
    inbox = f"r{uuid.uuid4().hex[:6]}.1"
    store = store_on(settings, durable_redis.url)
    try:
        [first] = await store.store_hot([item(inbox, 0, cid="kept")])
        await durable_redis.stop()
        await durable_redis.start()
        ttl = await store.redis.ttl(store.hot.dedup.write(inbox, time.time())[0])
        assert ttl >= store.settings.hot_dedup_s
        [again] = await store.store_hot([item(inbox, 0, cid="kept")])
        assert again["duplicate"] and again["seq"] == first["seq"]
    finally:
        await close(store)


async def used_memory(redis: aioredis.Redis) -> int:
    return int((await redis.info("memory"))["used_memory"])


@pytest.mark.parametrize(("inboxes", "bound"), [(20, 170), (200, 120), (2000, 140)])
async def test_what_a_dedup_record_costs_in_redis_memory(
    settings: Settings, own_redis: OwnRedis, inboxes: int, bound: int
) -> None:
    """20,000 messages (32-hex client ids, as the clients make them) through the real
    path into ``inboxes`` device inboxes of a Redis of the test's own: its memory
    before, and after everything but the dedup records is deleted again. One key
    per record took 268 bytes a record whatever the inboxes; the span hashes take
    155 (20 inboxes), 103 (200) and 126 (2,000) (printed: docs/delivery.md, "Dedup
    records")."""
    store = store_on(settings, own_redis.url)
    total = 20_000
    try:
        users = [f"user{n:05d}.1" for n in range(inboxes)]
        before = await used_memory(store.redis)
        for b in range(0, total, 500):
            batch: list[dict[str, Any]] = [
                item(users[n % inboxes], n, sender=f"user{n * 7919 % 99999:05d}",
                     cid=uuid.uuid4().hex)
                for n in range(b, b + 500)
            ]  # fmt: skip
            await store.store_hot(batch)
        names = [k async for k in store.redis.scan_iter(match=f"{store.prefix}:*", count=1000)]
        dedup = [k for k in names if b":hotdup:" in k or b":dup:{" in k]
        others = [k for k in names if k not in set(dedup)]
        for i in range(0, len(others), 500):
            await store.redis.delete(*others[i : i + 500])
        per_record = (await used_memory(store.redis) - before) / total
        print(f"\ndedup records: {inboxes} inboxes, {per_record:.0f} bytes a record")
        assert per_record <= bound
    finally:
        await close(store)


def notice(inbox: str, kind: str, sender: str, client_id: str, server_id: str) -> dict[str, Any]:
    """A notice as the worker hands it to ``store_hot``: a tombstone or a key change."""
    doc = {**item(inbox, 0, sender=sender, cid=client_id), "kind": kind, "server_id": server_id}
    for field in ("from_device", "body", "commitment"):
        doc.pop(field)
    if kind == "tombstone":
        doc.update(by="admin", kid="1", signature="sig", target_seq=None)
    else:
        doc.update(account_key=None)
    return doc


async def test_no_message_takes_the_dedup_record_of_a_notice(store: DeliveryStore) -> None:
    """A sender chose the client id of the tombstone its message's removal would get
    (``tombstone:<server id>``, moderation.py), or of a key change's notice
    (``key_changed:<topic>:<partition>:<offset>:<inbox>``, worker.py): keyed on
    inbox, sender and client id alone, the notice was then a "repeat" of that
    message, never stored nor pushed (the removal never reached the recipient). A
    notice's record is kept apart (``dedup_key``: its kind, and a space no client id
    holds); a notice consumed again is still one item."""
    inbox = f"n{uuid.uuid4().hex[:6]}.1"
    removed = uuid.uuid4().hex
    cases = [
        ("tombstone", f"tombstone:{removed}", removed),
        ("key_changed", f"key_changed:p.events:0:7:{inbox}", uuid.uuid4().hex),
    ]
    # The traps, stored as messages before (records of the version before this one are
    # the same: a message's key did not change).
    traps = await store.store_hot([item(inbox, 0, sender="ann", cid=c) for _, c, _ in cases])
    assert [t["kind"] for t in traps] == ["message", "message"]
    assert not any(t.get("duplicate") for t in traps)
    for kind, client_id, server_id in cases:
        first = notice(inbox, kind, "ann", client_id, server_id)
        claims, _, _ = await store.claims_and_numbers([first], [])
        assert claims == {}, kind
        [stored] = await store.store_hot([first])
        assert "duplicate" not in stored and stored["kind"] == kind
        assert stored["server_id"] == server_id
        # The same notice again (a redelivery, a removal made twice): the one stored.
        [again] = await store.store_hot([notice(inbox, kind, "ann", client_id, server_id)])
        assert again["duplicate"] and again["seq"] == stored["seq"] and again["kind"] == kind
    hot = await store.hot.get(inbox, list(range(1, 10)))
    assert sorted(d["kind"] for d in hot.values()) == [
        "key_changed", "message", "message", "tombstone"
    ]  # fmt: skip
    # And the other way round: a message resent with a notice's client id is still a
    # repeat of itself, not of the notice.
    [resent] = await store.store_hot([item(inbox, 0, sender="ann", cid=cases[0][1])])
    assert resent["duplicate"] and resent["seq"] == traps[0]["seq"]
    assert resent["kind"] == "message"
