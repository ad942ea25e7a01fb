"""The Kafka consumers of the delivery service.

``messages``: each batch of envelopes is stored in the hot inbox in Redis
(exactly once per (recipient, sender, client id):
:meth:`DeliveryStore.store_hot`), pushed to the recipients' gateways and
``stored`` to the senders. Its offsets are committed only once every item of
the batch is acknowledged or persisted to MongoDB (the persister,
:meth:`Worker._persist_loop`, moves what waits longer than
``hot_persist_after_s``): Kafka is the log of record until then. A worker
that dies mid-batch, or a Redis that loses its data, leaves the batch
uncommitted: it is consumed again (from the committed offsets) and the
dedup records make a copy still known a no-op; a copy stored again after
Redis lost them carries the same ``server_id``, which clients drop
(docs/delivery.md, "The hot path"). After a loss nothing is stored before
what was lost is consumed again (each write checks the process's mark:
:data:`~services.delivery.hot.GUARD`), so inboxes keep the records' order.

No record can hold up a partition for ever (:meth:`Worker._process`): a
record that does not parse is dead-lettered once, before anything is tried; a
batch that fails because a server is unavailable (told by the error: a Redis
refusing writes, ``READONLY`` or ``OOM``, answers ``PING`` all the same:
services/delivery/outage.py) waits and retries without limit (nothing is lost,
counted in ``parley_delivery_store_waits_total``); a batch that keeps failing
otherwise is split until the records at fault are found, and those go to the
dead-letter topic with the reason, counted in
``parley_delivery_dead_letters_total``; the partition moves on.

``room-messages``: a private room's message (one record, keyed by the room)
is stored once, in its room's log in MongoDB, and pushed once to the room's
members (services/delivery/room_log.py); the record is committed once its
batch is stored. A worker that dies in between leaves it uncommitted; the
record consumed again finds its message stored (its ``server_id``) and pushes
it again, so every member has the message once. A room's records are stored in
order (one partition), and the log numbers them: one order for every member.

``events``: ``prekeys_low`` is pushed to the device's user; ``key_changed``
is stored as a notice in every contact's inbox and pushed.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Generic, TypeAlias, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError
from parley_contract import envelopes as e
from parley_contract import frames as f
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.common.clients import (
    KafkaProducerHandle,
    Restarts,
    Topics,
    ensure_topics,
    kafka_consumer,
    started,
    stop_consumer,
)
from services.common.config import Settings
from services.common.logging import kafka_headers, request_id_from_kafka, request_id_var
from services.common.routing import Push, queue_multicast
from services.common.tasks import cancel_all
from services.delivery.hot import GUARD, HotInboxLost, Removal
from services.delivery.moderation_keys import ModerationKeys, TaggedFields
from services.delivery.outage import from_mongo, unavailable
from services.delivery.room_log import RoomLog
from services.delivery.store import DeliveryStore, item_docs, item_frame

log = logging.getLogger(__name__)

KNOWN_PAIRS_MAX = 200_000
PAIRS_TODO_MAX = 100_000  # pairs waiting for MongoDB (a few MB at most)
CONTACTS_BATCH = 1_000
DEPTH_SAMPLE_S = 5.0
MARK_TTL_S = 86_400
"""How long a process's hot-inbox mark outlives its last persister run (a mark that
expired reads as a loss: a replay, which the dedup records make harmless)."""

Record: TypeAlias = ConsumerRecord[bytes, bytes]
Decoded: TypeAlias = tuple[Record, Any]
"""A record and what it decoded to."""
Handler: TypeAlias = Callable[[list[Decoded]], Awaitable[None]]
T = TypeVar("T")


@dataclass(frozen=True)
class Stage(Generic[T]):
    """How a topic's records are handled: each is decoded (``decode``: None when it is
    malformed, dead-lettered then, once), and the decoded batch is stored (``store``:
    tried again, split and dead-lettered by :meth:`Worker._process`). Decoding came
    inside the retried part: a malformed record was dead-lettered again on every
    try of its batch."""

    decode: Callable[[Record], T | None]
    store: Callable[[list[tuple[Record, T]]], Awaitable[None]]


REPLAYED: ContextVar[bool] = ContextVar("parley_delivery_replayed", default=False)
"""Set while a batch holds records consumed again after a rewind (:meth:`Worker._replayed`)."""


@dataclass
class Uncommitted:
    """Batches a consumer processed but may not commit yet: (when stored, offsets)."""

    batches: deque[tuple[float, dict[TopicPartition, int]]] = field(default_factory=deque)
    rewinds: int = 0


class Worker:
    def __init__(
        self,
        settings: Settings,
        store: DeliveryStore,
        registry: CollectorRegistry,
        producer: KafkaProducerHandle,
        keys: ModerationKeys | None = None,
        acked: Counter | None = None,
    ) -> None:
        self.settings = settings
        # The inbox's parley_delivery_acked_total (handlers.Inbox): acks that found
        # MongoDB down are counted when the persister finishes them.
        self.acked = acked
        self.store = store
        self.keys = keys or ModerationKeys(settings)
        self.producer = producer
        self.room_log = RoomLog(store, self.keys)
        self.topics = Topics(settings)
        self.group = f"{settings.topic_prefix}delivery"
        self._tasks: list[asyncio.Task[None]] = []
        # Set while every consumer task (messages, events, rooms) is consuming: the
        # ``consumer`` readiness check (services/common/consumer_lag.py).
        self.running = asyncio.Event()
        self._consuming: set[int] = set()
        self._consumers = 0
        self._known_pairs: set[tuple[str, str]] = set()
        # Pairs stored but not yet recorded in MongoDB (an ordered set), written
        # beside the batches, never in their way (_flush_contacts).
        self._pairs_todo: dict[tuple[str, str], None] = {}
        self._contacts_task: asyncio.Task[None] | None = None
        self._warm_task: asyncio.Task[None] | None = None
        # Every hot item stored before this moment is persisted or acknowledged
        # (the persister's last complete pass): batches older may be committed.
        self.persisted_until = 0.0
        # Bumped when Redis lost the hot inbox: consumers go back to their
        # committed offsets.
        self.rewinds = 0
        # Per partition, where this process had consumed to when it went back: the
        # records before are consumed again, and their copies may be in MongoDB
        # (moved before the loss, committed after it: :meth:`_moderate`).
        self._replay_to: dict[TopicPartition, int] = {}
        # ``persisted_until`` when Redis was found to have lost what was stored while
        # ``rewinds`` was the key: what a consumer still at that count may commit as it
        # goes back (passes after the loss prove nothing about what it stored before).
        self._safe_at_loss: dict[int, float] = {}
        self._beat = 0
        # This process's mark in Redis (hot.GUARD): ``rewinds`` while Redis keeps
        # what this process wrote; missing (or another number) once it lost it.
        self.mark = f"{settings.redis_prefix}:hotmark:{{{uuid.uuid4().hex}}}"
        self._armed = False
        self._mark_lock = asyncio.Lock()
        self._next_checkpoint = 0.0
        self.stored = Counter(
            "parley_delivery_stored_total", "Items stored in inboxes.", ["kind"], registry=registry
        )
        self.duplicates = Counter(
            "parley_delivery_duplicates_total", "Redelivered records recognised.", registry=registry
        )
        self.rejected = Counter(
            "parley_delivery_rejected_total", "Malformed records skipped.", registry=registry
        )
        self.dead_letters = Counter(
            "parley_delivery_dead_letters_total",
            "Records moved to the dead-letter topic, by source topic and reason.",
            ["topic", "reason"], registry=registry,
        )  # fmt: skip
        self.retries = Counter(
            "parley_delivery_retries_total",
            "Failed batch attempts retried while MongoDB and Redis answered.",
            registry=registry,
        )
        self.waiting = Gauge(
            "parley_delivery_waiting_for_store",
            "1 while a batch waits for an unreachable MongoDB or Redis.",
            registry=registry,
        )
        self.store_waits = Counter(
            "parley_delivery_store_waits_total",
            "Failed batch attempts tried again without limit because a server was "
            "unavailable (not counted toward PARLEY_DELIVERY_MAX_ATTEMPTS), by server.",
            ["server"], registry=registry,
        )  # fmt: skip
        self.expired = Counter(
            "parley_delivery_expired_total",
            "Unacknowledged inbox items deleted by the expiry job (inbox_expiry_s).",
            registry=registry,
        )
        self.persisted = Counter(
            "parley_delivery_persisted_total",
            "Hot inbox items moved to MongoDB (unacknowledged after hot_persist_after_s).",
            registry=registry,
        )
        self.persist_failures = Counter(
            "parley_delivery_persist_failures_total",
            "Persister runs that failed (MongoDB or Redis did not answer): what waits "
            "stays in Redis and Kafka until a run succeeds.",
            registry=registry,
        )
        self.hot_lost = Counter(
            "parley_delivery_hot_inbox_lost_total",
            "Times Redis was found to have lost the hot inbox (consumers rewound to Kafka).",
            registry=registry,
        )
        self.unconfirmed = Counter(
            "parley_delivery_hot_unconfirmed_total",
            "Hot inbox items written without the Redis replicas' confirmation "
            "(PARLEY_REDIS_WAIT_REPLICAS did not answer in time): a failover meanwhile "
            "can lose them.",
            registry=registry,
        )
        store.hot.replicas.on_short = self.unconfirmed.inc
        # Batches waiting for a server now (every consumer's): the gauge is 1 while any
        # does. One flag set and cleared by each batch made a private room's batch
        # waiting on MongoDB look like no wait as soon as any 1:1 batch succeeded.
        self._waiters = 0
        self.down: list[str] = []
        self.batch_size = Histogram(
            "parley_delivery_batch_size", "Records per processed batch.",
            buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000), registry=registry,
        )  # fmt: skip
        self.batch_seconds = Histogram(
            "parley_delivery_batch_seconds", "Time to store, route and commit one batch.",
            registry=registry,
        )  # fmt: skip
        self.pushed = Counter(
            "parley_delivery_pushed_total", "Frames published to the gateways' channels.",
            registry=registry,
        )  # fmt: skip
        self.e2e_latency = Histogram(
            "parley_delivery_e2e_latency_seconds",
            "From the gateway's accept (the envelope's sent_at) to delivery publishing the frame.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=registry,
        )
        self.inbox_depth = Histogram(
            "parley_delivery_inbox_depth",
            "Items waiting in an inbox (last seq - acked), sampled from the batch's recipients.",
            buckets=(0, 1, 5, 10, 50, 100, 500, 1000, 5000, 10000, 50000), registry=registry,
        )  # fmt: skip
        self._next_depth_sample = 0.0
        self.fanned_out = Counter(
            "parley_delivery_room_messages_total",
            "Private rooms' messages stored in their rooms' logs and pushed to their members.",
            registry=registry,
        )
        for topic in (self.topics.messages, self.topics.events, self.topics.room_messages):
            for reason in ("malformed", "failed"):
                self.dead_letters.labels(topic, reason)
        self.messages: Stage[e.Envelope] = Stage(self._parse, self._store_messages)
        self.events: Stage[Any] = Stage(self._decoder(e.decode_event), self._handle_events)
        self.rooms: Stage[e.RoomEnvelope] = Stage(
            self._decoder(e.decode_room_envelope), self._handle_room_messages
        )

    async def start(self) -> None:
        # Several consumers of the group in one process: each owns some
        # partitions, and their batches overlap (one computes while another
        # waits on MongoDB), where one consumer would leave both idle in turn.
        runs: list[tuple[str, Stage[Any], str]] = [(self.topics.messages, self.messages, "")]
        runs *= self.settings.delivery_consumers
        runs += [
            (self.topics.events, self.events, "-events"),
            (self.topics.room_messages, self.rooms, "-rooms"),
        ]
        self._consumers = len(runs)
        self._tasks = [
            asyncio.create_task(self._run(topic, stage, suffix, slot))
            for slot, (topic, stage, suffix) in enumerate(runs)
        ]
        self._tasks += [
            asyncio.create_task(self._purge_loop()),
            asyncio.create_task(self._persist_loop()),
        ]

    def groups(self) -> dict[str, list[str]]:
        """The consumer groups this worker runs and their topics (for the lag metric)."""
        return {
            self.group: [self.topics.messages],
            self.group + "-events": [self.topics.events],
            self.group + "-rooms": [self.topics.room_messages],
        }

    async def stop(self) -> None:
        await cancel_all([*self._tasks, *filter(None, [self._contacts_task, self._warm_task])])

    def _consuming_now(self, slot: int, up: bool) -> None:
        """Consumer ``slot`` is up or not: ``running`` is set while all of them are (one
        that fails and restarts for ever is not ready, whichever it is)."""
        if up:
            self._consuming.add(slot)
        else:
            self._consuming.discard(slot)
        if len(self._consuming) == self._consumers:
            self.running.set()
        else:
            self.running.clear()

    async def _run(self, topic: str, stage: Stage[Any], suffix: str, slot: int = 0) -> None:
        restarts = Restarts()
        while True:
            consumer: AIOKafkaConsumer | None = None
            try:
                await ensure_topics(self.settings, [topic, self.topics.dead_letters])
                consumer = kafka_consumer(
                    self.settings, [topic], self.group + suffix,
                    max_poll_records=self.settings.delivery_batch_max,
                )  # fmt: skip
                await started(consumer)
                self._consuming_now(slot, True)
                restarts.up()
                if topic == self.topics.messages:
                    await self._consume_messages(consumer, stage)
                else:
                    await self._consume(consumer, stage)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Whatever went wrong, the consumer comes back: nothing was
                # committed past what was processed, so nothing is lost.
                log.warning("consumer restarting", extra={"topic": topic, "error": repr(exc)})
            finally:
                # Not consuming until it has started again, the wait included (before
                # 2026-12-07 the flag was set by the first start and never cleared: a
                # consumer failing for ever was reported ready).
                self._consuming_now(slot, False)
                if consumer is not None:
                    await stop_consumer(consumer)
            await restarts.wait()

    async def _consume(self, consumer: AIOKafkaConsumer, stage: Stage[Any]) -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=500)
            records = [r for part in batches.values() for r in part]
            if not records:
                continue
            start = time.perf_counter()
            if batch := await self._decode(stage, records):
                await self._process(stage.store, batch)
            try:
                await consumer.commit()
            except CommitFailedError:
                # A rebalance took the partitions: their next owner redoes the batch.
                log.info("commit failed after rebalance; batch will be redelivered")
            self.batch_size.observe(len(records))
            self.batch_seconds.observe(time.perf_counter() - start)

    async def _consume_messages(self, consumer: AIOKafkaConsumer, stage: Stage[Any]) -> None:
        """As :meth:`_consume`, committing a batch only once its items are safe in
        MongoDB or acknowledged (``persisted_until`` passed the time it was stored);
        after Redis lost the hot inbox, back to the committed offsets."""
        pending = Uncommitted(rewinds=self.rewinds)
        await self._arm()
        while True:
            if pending.rewinds != self.rewinds:
                await self._rewind(consumer, pending)
            batches = await consumer.getmany(timeout_ms=200)
            records = [r for part in batches.values() for r in part]
            if records:
                start = time.perf_counter()
                GUARD.set((self.mark, str(pending.rewinds)))
                REPLAYED.set(self._replayed(records))
                try:
                    if batch := await self._decode(stage, records):
                        await self._process(stage.store, batch)
                except HotInboxLost as exc:
                    # Nothing of it stored since Redis lost its data: the batch goes
                    # again, after what was lost, from the committed offsets.
                    await self._mark_lost(exc)
                    await self._rewind(consumer, pending)
                    continue
                offsets: dict[TopicPartition, int] = {}
                for r in records:
                    tp = TopicPartition(r.topic, r.partition)
                    offsets[tp] = max(offsets.get(tp, 0), r.offset + 1)
                pending.batches.append((time.time(), offsets))
                self.batch_size.observe(len(records))
                self.batch_seconds.observe(time.perf_counter() - start)
            await self._commit_safe(consumer, pending)

    async def _commit_safe(self, consumer: AIOKafkaConsumer, pending: Uncommitted) -> None:
        if pending.rewinds != self.rewinds:
            return
        await self._commit(consumer, self._safe(pending))

    def _safe(self, pending: Uncommitted, until: float | None = None) -> dict[TopicPartition, int]:
        """Take the batches ``until`` (``persisted_until``) passed out of ``pending``:
        their offsets."""
        until = self.persisted_until if until is None else until
        # Oldest first: the ready ones are a prefix (no walk over all that wait).
        offsets: dict[TopicPartition, int] = {}
        while pending.batches and pending.batches[0][0] <= until:
            for tp, off in pending.batches.popleft()[1].items():
                offsets[tp] = max(offsets.get(tp, 0), off)
        return offsets

    async def _commit(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
        if not offsets:
            return
        mine = consumer.assignment()
        offsets = {tp: off for tp, off in offsets.items() if tp in mine}
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except CommitFailedError:
            # A rebalance took the partitions: their next owner redoes the batches.
            log.info("commit failed after rebalance; batches will be redelivered")

    def _replayed(self, records: list[Record]) -> bool:
        """Whether any of these records is consumed again after a rewind (before where
        this process had got to); a partition past its mark is forgotten."""
        if not self._replay_to:
            return False
        replayed = False
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            to = self._replay_to.get(tp)
            if to is None:
                continue
            if r.offset < to:
                replayed = True
            if r.offset + 1 >= to:
                del self._replay_to[tp]
        return replayed

    async def _rewind(self, consumer: AIOKafkaConsumer, pending: Uncommitted) -> None:
        """Consume again from the committed offsets: what the lost hot inbox held.

        The batches the persister had proved safe before the loss (``persisted_until``
        as it was when the loss was recorded, ``_safe_at_loss``: each item in MongoDB,
        at or below its inbox's checkpoint, or acknowledged) are committed first, so
        they are not consumed again (not the live value: passes on the new Redis raise
        it past batches whose items went with the old one); where this process had got
        to is kept (``_replay_to``), and the records before it look for their copies
        in MongoDB as they are stored again (:meth:`_moderate`)."""
        # What the persister had proved before the loss, not since (nothing, if unknown).
        safe = self._safe_at_loss.get(pending.rewinds, 0.0)
        await self._commit(consumer, self._safe(pending, safe))
        pending.batches.clear()
        pending.rewinds = self.rewinds
        for tp in consumer.assignment():
            self._replay_to[tp] = max(self._replay_to.get(tp, 0), await consumer.position(tp))
            committed = await consumer.committed(tp)
            if committed is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, committed)
        log.warning("hot inbox lost: consuming again from the committed offsets")

    async def _mark_lost(self, exc: HotInboxLost) -> None:
        """A write found the mark not as its consumer expected: unless another consumer
        has set it again since, Redis lost its data: record the loss, set the mark."""
        async with self._mark_lock:
            have = await self.store.redis.get(self.mark)
            if have is not None and int(have) == self.rewinds:
                return  # set again since this consumer's batch began: rewind alone
            log.warning("a write found the hot inbox lost", extra={"missing": exc.missing})
            await self._hot_inbox_lost()

    async def _arm(self) -> None:
        """Set this process's mark, once, before its first write (raises while Redis is
        unreachable: the consumer starts again)."""
        async with self._mark_lock:
            if not self._armed:
                await self.store.redis.set(self.mark, self.rewinds, ex=MARK_TTL_S)
                self._armed = True

    async def _hot_inbox_lost(self) -> None:
        """Redis lost what this process stored: consumers go back to their committed
        offsets, and the mark is set to the new count (under ``_mark_lock``)."""
        # What Kafka may replay must not bring removed messages back (first: if
        # MongoDB does not answer, the next write or run notices the loss again).
        retention_ms = self.settings.kafka_message_retention_ms
        await self.store.restore_gone(int(time.time() * 1000) - retention_ms)
        self._safe_at_loss[self.rewinds] = self.persisted_until
        for old in [r for r in self._safe_at_loss if r < self.rewinds - 8]:
            del self._safe_at_loss[old]
        self.rewinds += 1
        self.hot_lost.inc()
        self._beat = 0  # the new Redis's hotbeat starts again: not a second loss
        await self.store.redis.set(self.mark, self.rewinds, ex=MARK_TTL_S)

    async def _persist_loop(self) -> None:
        """Move what waits in the hot inbox to MongoDB; notice when Redis lost it."""
        while True:
            try:
                await self.persist_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.persist_failures.inc()
                log.info("persister waiting", extra={"error": repr(exc)})
            self._flush_contacts_soon()
            await asyncio.sleep(self.settings.hot_persist_interval_s)

    async def persist_once(self) -> None:
        beat = await self.store.hot.heartbeat(self.mark if self._armed else "", MARK_TTL_S)
        if beat <= self._beat:
            # The counter went back: Redis restarted empty or from an older
            # snapshot. Nothing stored since the last complete pass may be there.
            async with self._mark_lock:
                # Unless a write that found the mark lost recorded this loss while the
                # lock was awaited (it resets ``_beat``): counted twice, every consumer
                # went back to its committed offsets twice.
                if beat <= self._beat:
                    await self._hot_inbox_lost()
                self._armed = True
            self._beat = beat
            return
        self._beat = beat
        written, until = await self.store.persist_due()
        # Removals that found MongoDB down: their copies there deleted now.
        if removed := await self.store.drain_cold_removals():
            log.info("removals left for later are done", extra={"items": removed})
        # Acks that found MongoDB down: their items deleted and receipts sent now.
        if drained := await self.store.drain_cold_acks():
            log.info("acks left for later are done", extra={"items": len(drained)})
            if self.acked is not None:
                self.acked.inc(len(drained))
        if time.monotonic() >= self._next_checkpoint:
            # Not on every run: a room's message moves a thousand inboxes, each an
            # upsert (docs/BENCHMARKS.md, "Room fan-out"). The 10⁹ gap a counter
            # seeded after a Redis loss starts above covers any interval.
            await self.store.ctr.checkpoint()
            self._next_checkpoint = time.monotonic() + self.settings.counters_checkpoint_s
            self._warm_soon()
        self.persisted.inc(written)
        if until is not None:
            # Only if Redis kept its count through the pass: one that restarted empty
            # after the heartbeat above had nothing due, which proves nothing (the
            # next pass finds the loss and rewinds). Acknowledged items need not wait
            # for the persist delay: whatever the index no longer holds is safe, so a
            # batch whose items were all acknowledged is committed at this pass, not
            # hot_persist_after_s later (after a Redis loss, fewer come back).
            settled = await self.store.hot.settled_before(beat)
            if settled is not None:
                self.persisted_until = max(self.persisted_until, until, settled)

    async def _process(self, handler: Handler, batch: list[Decoded]) -> None:
        """Run a decoded batch to the end; never gives up the partition and never blocks
        it for ever.

        While a server it needs is unavailable the batch waits (unbounded, not
        counted): it is idempotent, so nothing is lost. A batch that fails
        ``delivery_max_attempts`` times otherwise is split in halves, each
        processed the same way, until the records at fault are alone; those are
        dead-lettered and the rest is stored.
        """
        error = await self._attempt(handler, batch)
        if error is None:
            return
        if len(batch) == 1:
            await self._dead_letter(batch[0][0], "failed", error)
            return
        mid = len(batch) // 2
        await self._process(handler, batch[:mid])
        await self._process(handler, batch[mid:])

    async def _attempt(self, handler: Handler, records: list[Decoded]) -> BaseException | None:
        """Try ``records`` until they succeed (None) or fail too often (the last error)."""
        delay, failures = 0.1, 0
        waiting = recovered = False
        try:
            while True:
                try:
                    await handler(records)
                except (asyncio.CancelledError, HotInboxLost):
                    raise
                except Exception as exc:
                    down = await self._unavailable(exc)
                    if not down:
                        failures += 1
                        self._failed(exc, records, failures)
                        if failures >= self.settings.delivery_max_attempts:
                            return exc
                    else:
                        if not waiting:
                            waiting = True
                            self._waiters += 1
                        self._waiting_for(down, exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                recovered = True
                return None
        finally:
            if waiting:
                self._waiters -= 1
                if not self._waiters:
                    if recovered:
                        log.info("store reachable again", extra={"was_down": self.down})
                    self.down = []
                    self.waiting.set(0)

    def _waiting_for(self, down: list[str], exc: BaseException) -> None:
        if down != self.down:
            log.warning("waiting for the store", extra={"down": down, "error": repr(exc)})
        self.down = down
        self.waiting.set(1)
        for server in down:
            self.store_waits.labels(server).inc()

    def _failed(self, exc: BaseException, records: list[Decoded], attempt: int) -> None:
        self.retries.inc()
        log.warning(
            "batch failed; retrying",
            extra={"error": repr(exc), "records": len(records), "attempt": attempt},
        )

    async def _unavailable(self, exc: BaseException) -> list[str]:
        """The servers a failed attempt waits for (none: it counts as a failure).

        The error says it first (services/delivery/outage.py): a Redis that
        refuses writes (``READONLY`` after a failover, ``OOM`` under
        ``noeviction``) answers ``PING``, and its batches were counted, split and
        every record dead-lettered. Otherwise the servers are pinged: Redis not
        answering holds every batch; MongoDB not answering holds only a batch that
        failed on one of its errors (a batch does no MongoDB work as a rule, and one
        that failed on its own must not wait for MongoDB for ever)."""
        named = unavailable(exc)
        if named is not None:
            return [named]
        down = await self.store.ping()
        if "redis" not in down and not from_mongo(exc):
            return []
        return down

    async def _dead_letter(self, record: Record, reason: str, error: BaseException | None) -> None:
        """Move one record to the dead-letter topic (waits while Kafka is unreachable)."""
        source = f"{record.topic}/{record.partition}/{record.offset}"
        detail = type(error).__name__ if error is not None else reason
        headers = [
            *[(k, v) for k, v in (record.headers or ()) if not k.startswith("dlq_")],
            ("dlq_reason", reason.encode()),
            ("dlq_error", detail.encode()),
            ("dlq_source", source.encode()),
        ]
        delay = 0.2
        while True:
            try:
                producer = await self.producer.wait_ready(30)
                await producer.send_and_wait(
                    self.topics.dead_letters, record.value, key=record.key, headers=headers
                )
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("dead-letter topic unreachable; retrying", extra={"error": repr(exc)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        self.dead_letters.labels(record.topic, reason).inc()
        try:
            message_id: str | None = e.decode_envelope(record.value or b"").server_id
        except e.DecodeError:
            message_id = None
        log.error(
            "record dead-lettered",
            extra={"source": source, "reason": reason, "error": detail, "message_id": message_id},
        )

    # Decoding ---------------------------------------------------------------
    async def _decode(self, stage: Stage[Any], records: list[Record]) -> list[Decoded]:
        """Decode a batch's records; the malformed ones go to the dead-letter topic
        (once: before the batch is tried, not on every try)."""
        out: list[Decoded] = []
        for record in records:
            value = stage.decode(record)
            if value is None:
                await self._dead_letter(record, "malformed", None)
            else:
                out.append((record, value))
        return out

    async def _handle(self, stage: Stage[Any], records: list[Record]) -> None:
        """Decode and store ``records`` once (no retries: outside the consumers)."""
        if batch := await self._decode(stage, records):
            await stage.store(batch)

    def _decoder(self, decode: Callable[[bytes], T]) -> Callable[[Record], T | None]:
        def one(record: Record) -> T | None:
            try:
                return decode(record.value or b"")
            except e.DecodeError:
                self.rejected.inc()
                log.warning("a malformed record", extra={"topic": record.topic,
                                                         "offset": record.offset})  # fmt: skip
                return None

        return one

    # Messages ---------------------------------------------------------------
    def _parse(self, record: Record) -> e.Envelope | None:
        try:
            return e.decode_envelope(record.value or b"")
        except e.DecodeError:
            self.rejected.inc()
            log.warning("a malformed envelope", extra={"offset": record.offset})
            return None

    async def handle_messages(self, records: list[Record]) -> None:
        await self._handle(self.messages, records)

    async def _store_messages(self, batch: list[tuple[Record, e.Envelope]]) -> None:
        request_id_var.set(request_id_from_kafka(batch[0][0].headers))
        envs = [env for _, env in batch]
        now = time.time()
        # Protocol 2's copies of a room's message (produced before an upgrade) go to the
        # room's log, the rest as below; consecutive runs of each, in the batch's order.
        for rooms, run in itertools.groupby(envs, key=lambda env: isinstance(env, e.RoomCopies)):
            if rooms:
                legacy = [e.room_envelope_of(c) for c in run if isinstance(c, e.RoomCopies)]
                await self._to_room_logs(legacy)
            else:
                await self._store_items(list(run), now)

    async def _store_items(self, envs: list[e.Envelope], now: float) -> None:
        items = [doc for env in envs for doc in item_docs(env, now)]
        items, claims, numbers = await self._moderate(items)
        # The users the frames below go to: their gateways are read in the pipeline
        # that stores the items (after them), not in a round trip of their own.
        route = [u for d in items for u in ((d["user"], d["from"]) if d.get("kind") == "message"
                                            and not d.get("room") else (d["user"],))]  # fmt: skip
        stored, where = await self.store.store_and_route(items, claims, numbers, route)
        # A room's copies add no contact: its members exchanged sender keys 1:1 first.
        self._remember_contacts([d for d in stored if d["kind"] == "message" and not d.get("room")])
        frames: list[Push] = []
        # The latency once per message, not per copy (a room's 1,000 copies share it).
        sent = {
            d["server_id"]: d.get("sent_at")
            for d in stored
            if d.get("kind") == "message" and not d.get("duplicate")
        }
        kinds: dict[str, int] = {}
        repeats = 0
        debug = log.isEnabledFor(logging.DEBUG)
        for doc in stored:
            if debug:
                log.debug("stored", extra={"message_id": doc.get("server_id"), "to": doc["user"]})
            if doc.pop("duplicate", False):
                repeats += 1
            else:
                kind = doc.get("kind", "message")
                kinds[kind] = kinds.get(kind, 0) + 1
            if not doc.get("acked"):
                frames.append((doc["user"], doc["device"], item_frame(doc)))
            if doc.get("kind") != "message" or doc.get("room"):
                continue  # room messages: `accepted` only (docs/rooms.md)
            receipt = f.Stored(
                id=doc["client_id"], server_id=doc["server_id"],
                conversation=doc.get("conversation"), to=doc["user"], device=doc["device"],
            )  # fmt: skip
            frames.append((doc["from"], doc.get("from_device"), receipt))
        if repeats:
            self.duplicates.inc(repeats)
        for kind, n in kinds.items():
            self.stored.labels(kind).inc(n)
        self.pushed.inc(await self.store.publish(frames, where))
        self._observe_latency(sent.values())
        await self._sample_depth([d["inbox"] for d in stored])

    async def _moderate(
        self, items: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], dict[str, tuple[int, str]], dict[str, int]]:
        """Before a batch is stored: tag each message copy with a commitment (its
        reporting tag), leave out copies of messages removed already (a room's fan-out
        still under way, a replay), and delete the copies tombstones in the batch
        remove (docs/delivery.md, "Reports and tombstones"). Returns the items to
        store, their dedup records (read with the removal marks) and their inboxes'
        first reserved numbers (taken in the same round trip)."""
        messages = [d for d in items if d.get("kind") == "message"]
        for d in messages:
            if d.get("commitment") and d.get("sent_at") is not None:
                d["franking_tag"] = self.keys.tag(TaggedFields(
                    commitment=d["commitment"], server_id=d["server_id"], sender=d["from"],
                    sender_device=int(d.get("from_device") or 1), recipient=d["user"],
                    sent_at=int(d["sent_at"]), conversation=d.get("conversation"),
                ))  # fmt: skip
        # The items' dedup records and numbers come in the same round trip.
        claims, gone, numbers = await self.store.claims_and_numbers(
            items, (d["server_id"] for d in messages)
        )
        if REPLAYED.get():
            # Consumed again after Redis lost the hot inbox, dedup records with it: a copy
            # moved to MongoDB before the loss is the item, stored already (its number
            # is at or below its inbox's checkpoint: paged). A number reserved above
            # for it is left unused.
            claims.update(await self.store.claims_in_mongo(items, claims))
        if gone:
            log.info("copies of removed messages left out", extra={"messages": len(gone)})
            items = [d for d in items if d.get("kind") != "message" or d["server_id"] not in gone]
        removals = [
            Removal(d["inbox"], int(d["target_seq"]) if d.get("target_seq") else None,
                    d["server_id"], d["from"])
            for d in items
            if d.get("kind") == "tombstone"
        ]  # fmt: skip
        if removals:
            await self.store.remove_copies(removals)
        return items, claims, numbers

    def _observe_latency(self, sent_at: Iterable[Any]) -> None:
        now_ms = time.time() * 1000
        for ms in sent_at:
            if ms is not None:
                self.e2e_latency.observe(max(now_ms - float(ms), 0.0) / 1000)

    async def _sample_depth(self, inboxes: list[str]) -> None:
        """Depths of this batch's device inboxes, at most every DEPTH_SAMPLE_S (PK reads)."""
        if time.monotonic() < self._next_depth_sample or not inboxes:
            return
        self._next_depth_sample = time.monotonic() + DEPTH_SAMPLE_S
        try:
            depths = await self.store.inbox_depths(inboxes)
        except Exception as exc:
            log.info("inbox depth not sampled", extra={"error": repr(exc)})
            return
        for depth in depths.values():
            self.inbox_depth.observe(depth)

    def _remember_contacts(self, docs: list[dict[str, Any]]) -> None:
        """Record who talks to whom (whom to tell of a key change), skipping pairs this
        worker recorded recently: in the background, so that a first message between
        two users is not held up by MongoDB (down, it would stall the partition)."""
        pairs = set()
        for d in docs:
            if d["user"] == d["from"]:
                continue  # a copy for the sender's own other device (or a note to self)
            pairs.add((d["inbox"], d["from"]))
            pairs.add((e.inbox_id(d["from"], int(d.get("from_device") or 1)), d["user"]))
        fresh = [p for p in pairs if p not in self._known_pairs and p not in self._pairs_todo]
        if not fresh:
            return
        room = PAIRS_TODO_MAX - len(self._pairs_todo)
        if room < len(fresh):
            # MongoDB has been down for long: these pairs are left for their next
            # message (neither known nor pending, they are taken again then).
            log.warning("contacts not recorded", extra={"pairs": len(fresh) - max(room, 0)})
        self._pairs_todo.update(dict.fromkeys(fresh[: max(room, 0)]))
        self._flush_contacts_soon()

    def _warm_soon(self) -> None:
        """Copy the counters' checkpoints into Redis after a loss, beside the persister
        (one read of a flag once done): a first item to an inbox then waits for
        MongoDB only while the copy is not complete (services/delivery/counters.py)."""
        if self._warm_task is None or self._warm_task.done():
            self._warm_task = asyncio.create_task(self._warm())

    async def _warm(self) -> None:
        try:
            copied = await self.store.ctr.warm()
        except Exception as exc:
            log.info("counters not copied into Redis yet", extra={"error": repr(exc)})
            return
        if copied:
            log.info("counters copied into Redis", extra={"count": copied})

    def _flush_contacts_soon(self) -> None:
        if self._pairs_todo and (self._contacts_task is None or self._contacts_task.done()):
            self._contacts_task = asyncio.create_task(self._flush_contacts())

    async def _flush_contacts(self) -> None:
        """Write the pending pairs, a bulk write at a time; on a failure they wait for
        the persister's next pass (:meth:`_persist_loop` calls again)."""
        while self._pairs_todo:
            batch = list(self._pairs_todo)[:CONTACTS_BATCH]
            try:
                await self.store.remember_contacts(batch)
            except Exception as exc:
                log.info("contacts waiting", extra={"error": repr(exc)})
                return
            for pair in batch:
                del self._pairs_todo[pair]
            if len(self._known_pairs) > KNOWN_PAIRS_MAX:
                self._known_pairs.clear()
            self._known_pairs.update(batch)

    # Rooms ------------------------------------------------------------------
    async def handle_room_messages(self, records: list[Record]) -> None:
        await self._handle(self.rooms, records)

    async def _handle_room_messages(self, batch: list[tuple[Record, e.RoomEnvelope]]) -> None:
        """Store each room message once in its room's log and push it to the room's
        members (services/delivery/room_log.py); returns once the batch is stored,
        so that its offsets may be committed."""
        await self._to_room_logs([env for _, env in batch])

    async def _to_room_logs(self, envs: list[e.RoomEnvelope]) -> None:
        if not envs:
            return
        done = await self.room_log.append(envs, time.time())
        if done.stored:
            self.stored.labels("message").inc(done.stored)
        if done.repeats:
            self.duplicates.inc(done.repeats)
        if done.removed:
            log.info("removed room messages left out", extra={"messages": done.removed})
        pushes = done.pushes
        prefix = self.settings.redis_prefix
        async with self.store.redis.pipeline(transaction=False) as pipe:
            for users, frame in pushes:
                queue_multicast(pipe, prefix, users, frame)
            await pipe.execute()
        self.pushed.inc(len(pushes))
        self.fanned_out.inc(len(pushes))
        self._observe_latency([env.sent_at for env in envs])

    # Events -----------------------------------------------------------------
    async def handle_events(self, records: list[Record]) -> None:
        await self._handle(self.events, records)

    async def _handle_events(self, batch: list[Decoded]) -> None:
        frames: list[Push] = []
        for record, event in batch:
            if isinstance(event, e.PrekeysLowEvent):
                frame = f.PrekeysLow(
                    user_id=event.user_id, device_id=event.device_id, one_time=event.one_time,
                    kem_one_time=event.kem_one_time, threshold=event.threshold,
                    event_id=event.event_id,
                )  # fmt: skip
                frames.append((event.user_id, event.device_id, frame))
            elif isinstance(event, e.DeviceRemovedEvent):
                dropped = await self.store.drop_inbox(e.inbox_id(event.user_id, event.device_id))
                log.info("device inbox dropped", extra={"items": dropped})
            else:
                await self._key_changed(event, record)
        self.pushed.inc(await self.store.publish(frames))

    async def _key_changed(self, event: e.KeyChangedEvent, record: Record) -> None:
        """Queue a notice for every device inbox that talked with the user, keyed by it.

        Only an inbox's own consumer writes to it (see handle_messages), so the
        notice takes its place in the contact's sequence like any message.
        Idempotent per Kafka record: a redelivered event makes the same client ids.
        """
        contacts = await self.store.contacts_of(event.user_id)
        if not contacts:
            return
        event_id = f"key_changed:{record.topic}:{record.partition}:{record.offset}"
        producer = await self.producer.wait_ready(30)
        acks = []
        for inbox in contacts:
            user, _, device = inbox.rpartition(".")
            if not device.isdigit():
                continue
            env = e.key_changed_notice(
                sender=event.user_id, recipient=user, recipient_device=int(device),
                client_id=f"{event_id}:{inbox}", account_key=event.account_key,
            )  # fmt: skip
            acks.append(
                await producer.send(
                    self.topics.messages, e.encode(env), key=env.inbox.encode(),
                    headers=kafka_headers(),
                )
            )  # fmt: skip
        await asyncio.gather(*acks)

    async def _purge_loop(self) -> None:
        """Every ``inbox_purge_interval_s``: drop old dedup collections, delete expired items."""
        while True:
            await self.purge_once()
            await asyncio.sleep(self.settings.inbox_purge_interval_s)

    async def purge_once(self) -> None:
        try:
            dropped = await self.store.drop_expired_dedup()
            if dropped:
                log.info("dropped expired dedup records", extra={"collections": dropped})
        except Exception as exc:
            log.warning("dedup purge failed", extra={"error": repr(exc)})
        try:
            expired = await self.store.purge_expired()
            self.expired.inc(expired)
            if expired:
                log.info("expired inbox items deleted", extra={"items": expired})
        except Exception as exc:
            log.warning("inbox expiry failed", extra={"error": repr(exc)})
        try:
            # Copies left in MongoDB below their watermark (acknowledged, or expired):
            # an ack cut short, a move cut short (docs/delivery.md, "What is deleted").
            swept = await self.store.sweep_acked()
            if swept:
                log.info("acknowledged copies left in MongoDB deleted", extra={"items": swept})
                if self.acked is not None:
                    self.acked.inc(swept)
        except Exception as exc:
            log.warning("inbox upkeep failed", extra={"error": repr(exc)})
        try:
            cutoff = time.time() - self.settings.inbox_expiry_s
            expired = await self.room_log.purge_expired(cutoff)
            if expired:
                log.info("expired room log entries deleted", extra={"items": expired})
        except Exception as exc:
            log.warning("room log expiry failed", extra={"error": repr(exc)})
