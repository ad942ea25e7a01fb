"""The Kafka consumers of the delivery service.

``messages``: each batch of envelopes is stored with one counter update per
recipient and one ``insert_many``, pushed to the recipients' gateways and
``stored`` to the senders with one Redis pipeline, and only then committed.
A worker that dies mid-batch leaves the batch uncommitted: the next owner of
the partitions processes it again and the unique index turns the second copy
into a no-op (the frames are pushed again; clients drop a ``seq`` they have).

``events``: ``prekeys_low`` is pushed to the device's user; ``key_changed``
is stored as a notice in every contact's inbox and pushed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter as Tally
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka.errors import CommitFailedError, KafkaError
from prometheus_client import CollectorRegistry, Counter, Histogram
from pymongo.errors import PyMongoError
from redis.exceptions import RedisError

from services.common.clients import KafkaProducerHandle, Topics, ensure_topics, kafka_consumer
from services.common.config import Settings
from services.common.logging import kafka_headers, request_id_from_kafka, request_id_var
from services.common.routing import notice_envelope
from services.delivery.store import DeliveryStore, SequenceCollision, inbox_id, item_frame

log = logging.getLogger(__name__)

REQUIRED = {
    "message": ("server_id", "from", "to", "client_id", "body", "conversation"),
    "key_changed": ("server_id", "from", "to", "client_id"),
}
KNOWN_PAIRS_MAX = 200_000


class Worker:
    def __init__(
        self,
        settings: Settings,
        store: DeliveryStore,
        registry: CollectorRegistry,
        producer: KafkaProducerHandle,
    ) -> None:
        self.settings = settings
        self.store = store
        self.producer = producer
        self.topics = Topics(settings)
        self.group = f"{settings.topic_prefix}delivery"
        self._tasks: list[asyncio.Task[None]] = []
        self.running = asyncio.Event()
        self._known_pairs: set[tuple[str, str]] = set()
        self.stored = Counter(
            "parley_delivery_stored_total", "Items stored in inboxes.", ["kind"], registry=registry
        )
        self.duplicates = Counter(
            "parley_delivery_duplicates_total", "Redelivered records recognised.", registry=registry
        )
        self.rejected = Counter(
            "parley_delivery_rejected_total", "Malformed records skipped.", registry=registry
        )
        self.batch_size = Histogram(
            "parley_delivery_batch_size", "Records per processed batch.",
            buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000), registry=registry,
        )  # fmt: skip
        self.batch_seconds = Histogram(
            "parley_delivery_batch_seconds", "Time to store, route and commit one batch.",
            registry=registry,
        )  # fmt: skip

    async def start(self) -> None:
        # Several consumers of the group in one process: each owns some
        # partitions, and their batches overlap (one computes while another
        # waits on MongoDB), where one consumer would leave both idle in turn.
        self._tasks = [
            asyncio.create_task(self._run(self.topics.messages, self.handle_messages, ""))
            for _ in range(self.settings.delivery_consumers)
        ]
        self._tasks += [
            asyncio.create_task(self._run(self.topics.events, self.handle_events, "-events")),
            asyncio.create_task(self._purge_loop()),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self, topic: str, handler: Any, suffix: str) -> None:
        delay = 0.2
        while True:
            consumer: AIOKafkaConsumer | None = None
            try:
                await ensure_topics(self.settings, [topic])
                consumer = kafka_consumer(
                    self.settings, [topic], self.group + suffix,
                    max_poll_records=self.settings.delivery_batch_max,
                )  # fmt: skip
                await consumer.start()
                if topic == self.topics.messages:
                    self.running.set()
                delay = 0.2
                await self._consume(consumer, handler)
            except asyncio.CancelledError:
                raise
            except (KafkaError, PyMongoError, RedisError, OSError) as exc:
                log.warning("consumer restarting", extra={"topic": topic, "error": repr(exc)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            finally:
                if consumer is not None:
                    await consumer.stop()

    async def _consume(self, consumer: AIOKafkaConsumer, handler: Any) -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=500)
            records = [r for part in batches.values() for r in part]
            if not records:
                continue
            start = time.perf_counter()
            await self._process(handler, records)
            try:
                await consumer.commit()
            except CommitFailedError:
                # A rebalance took the partitions: their next owner redoes the batch.
                log.info("commit failed after rebalance; batch will be redelivered")
            self.batch_size.observe(len(records))
            self.batch_seconds.observe(time.perf_counter() - start)

    async def _process(self, handler: Any, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        """Run a batch until it succeeds: it is idempotent, so a MongoDB or Redis
        outage only delays it, and the partitions are neither committed nor given up."""
        delay = 0.1
        atomic = False
        while True:
            try:
                await handler(records, atomic_reserve=atomic)
                return
            except SequenceCollision as exc:
                # Another worker reserved for the same user at the same moment:
                # retry at once with per-user atomic reservations.
                log.info("sequence numbers clashed; retrying the batch", extra={"id": str(exc)})
                atomic = True
            except (PyMongoError, RedisError, OSError) as exc:
                log.warning("batch failed; retrying", extra={"error": repr(exc)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    # Messages ---------------------------------------------------------------
    def _parse(self, record: ConsumerRecord[bytes, bytes]) -> dict[str, Any] | None:
        try:
            env: Any = orjson.loads(record.value or b"")
        except orjson.JSONDecodeError:
            env = None
        required = REQUIRED.get(env.get("kind", "message")) if isinstance(env, dict) else None
        if required is None or not all(isinstance(env.get(k), str) for k in required):
            self.rejected.inc()
            log.warning("skipping a malformed envelope", extra={"offset": record.offset})
            return None
        parsed: dict[str, Any] = env
        return parsed

    async def handle_messages(
        self, records: list[ConsumerRecord[bytes, bytes]], *, atomic_reserve: bool = False
    ) -> None:
        request_id_var.set(request_id_from_kafka(records[0].headers))
        envs = [e for e in map(self._parse, records) if e is not None]
        if not envs:
            return
        per_user = dict(Tally(e["to"] for e in envs))
        if atomic_reserve:
            users = list(per_user)
            firsts = await asyncio.gather(*(self.store.reserve(u, per_user[u]) for u in users))
            next_seq = dict(zip(users, firsts, strict=True))
        else:
            next_seq = await self.store.reserve_many(per_user)
        docs = []
        now = time.time()
        for env in envs:
            seq = next_seq[env["to"]]
            next_seq[env["to"]] = seq + 1
            doc = {
                "_id": inbox_id(env["to"], seq),
                "server_id": env["server_id"],
                "user": env["to"],
                "seq": seq,
                "kind": env.get("kind", "message"),
                "from": env["from"],
                "client_id": env["client_id"],
                "conversation": env.get("conversation"),
                "sent_at": env.get("sent_at"),
                "stored_at": now,
                "acked": False,
            }
            if doc["kind"] == "message":
                doc["body"] = env["body"]
                doc["commitment"] = env.get("commitment")
            else:
                doc["device_id"] = env.get("device_id")
                doc["identity"] = env.get("identity")
            docs.append(doc)
        stored = await self.store.insert(docs)
        await self._remember_contacts([d for d in docs if d["kind"] == "message"])
        frames: list[tuple[str, dict[str, Any]]] = []
        for doc in stored:
            if doc.pop("duplicate", False):
                self.duplicates.inc()
            else:
                self.stored.labels(doc.get("kind", "message")).inc()
            if not doc.get("acked"):
                frames.append((doc["user"], item_frame(doc)))
            if doc.get("kind") != "message":
                continue
            frames.append(
                (
                    doc["from"],
                    {
                        "op": "stored",
                        "id": doc["client_id"],
                        "server_id": doc["server_id"],
                        "conversation": doc["conversation"],
                        "to": doc["user"],
                    },
                )
            )
        await self.store.publish(frames)

    async def _remember_contacts(self, docs: list[dict[str, Any]]) -> None:
        """Record who talks to whom, skipping pairs this worker recorded recently."""
        pairs = {p for d in docs for p in ((d["user"], d["from"]), (d["from"], d["user"]))}
        fresh = [p for p in pairs if p not in self._known_pairs]
        if not fresh:
            return
        await self.store.remember_contacts(fresh)
        if len(self._known_pairs) > KNOWN_PAIRS_MAX:
            self._known_pairs.clear()
        self._known_pairs.update(fresh)

    # Events -----------------------------------------------------------------
    async def handle_events(
        self, records: list[ConsumerRecord[bytes, bytes]], *, atomic_reserve: bool = True
    ) -> None:
        frames: list[tuple[str, dict[str, Any]]] = []
        for record in records:
            try:
                event = orjson.loads(record.value or b"")
                kind, user = event["type"], event["user_id"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                self.rejected.inc()
                continue
            if kind == "prekeys_low":
                frame = {k: v for k, v in event.items() if k != "type"}
                frames.append((user, {"op": "prekeys_low", **frame}))
            elif kind == "key_changed":
                await self._key_changed(event, record)
        await self.store.publish(frames)

    async def _key_changed(
        self, event: dict[str, Any], record: ConsumerRecord[bytes, bytes]
    ) -> None:
        """Queue a notice for every contact's inbox, keyed by that contact.

        Only an inbox's own consumer writes to it (see handle_messages), so the
        notice takes its place in the contact's sequence like any message.
        Idempotent per Kafka record: a redelivered event makes the same client ids.
        """
        user = event["user_id"]
        contacts = await self.store.contacts_of(user)
        if not contacts:
            return
        event_id = f"key_changed:{record.topic}:{record.partition}:{record.offset}"
        producer = await self.producer.wait_ready(30)
        acks = []
        for contact in contacts:
            env = notice_envelope(
                sender=user,
                recipient=contact,
                client_id=f"{event_id}:{contact}",
                device_id=event.get("device_id"),
                identity=event.get("identity"),
            )
            acks.append(
                await producer.send(
                    self.topics.messages, orjson.dumps(env), key=contact.encode(),
                    headers=kafka_headers(),
                )
            )  # fmt: skip
        await asyncio.gather(*acks)

    async def _purge_loop(self) -> None:
        while True:
            await asyncio.sleep(3600)
            try:
                await self.store.purge_tombstones()
            except PyMongoError as exc:
                log.warning("tombstone purge failed", extra={"error": repr(exc)})
