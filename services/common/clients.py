"""Factories for the backing-server clients, and their readiness checks.

One place builds every MongoDB, Redis and Kafka client so that timeouts,
codecs and retry behaviour are the same in all services. Nothing here runs
at import time; services call these from their ``create_app``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.helpers import create_ssl_context
from aiokafka.partitioner import murmur2
from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.common import scripts
from services.common.config import Settings
from services.common.fastredis import FastRedis
from services.common.retry import retry
from services.common.tasks import cancel_all

log = logging.getLogger(__name__)

# A consumer that ran this long before it failed starts again after the shortest wait
# (consume_forever here, and delivery's own consumers).
RAN_WELL_S = 30.0


class Restarts:
    """The wait before a failed consumer starts again: 0.2 s, doubling up to 5 s while it
    keeps failing, back to 0.2 s once it had been consuming for ``RAN_WELL_S`` (a
    consumer failing right after each start no longer restarts 5 times a second; one
    that failed once in a day waits the shortest)."""

    def __init__(self) -> None:
        self.delay = 0.2
        self._up_at: float | None = None

    def up(self) -> None:
        """The consumer is consuming."""
        self._up_at = time.monotonic()

    async def wait(self) -> None:
        """After a failure (the consumer stopped and reported not ready first)."""
        if self._up_at is not None and time.monotonic() - self._up_at > RAN_WELL_S:
            self.delay = 0.2
        self._up_at = None
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, 5.0)


@functools.lru_cache(maxsize=1 << 16)
def _key_hash(key: bytes) -> int:
    """murmur2 of a key, remembered: aiokafka's is pure Python (about 5 % of delivery's
    time in a room fan-out, 3 % of a gateway's at saturation, docs/BENCHMARKS.md), and
    the keys (inbox ids, rooms) repeat."""
    return int(murmur2(key)) & 0x7FFFFFFF


# MongoDB's error code for a duplicate key (in a bulk write's writeErrors).
DUPLICATE_KEY = 11000


async def insert_new(coll: AsyncCollection[Any], docs: list[dict[str, Any]]) -> set[int]:
    """Insert ``docs`` (unordered: one round trip), those whose ``_id`` is taken left
    as they are; returns the indexes in ``docs`` of those left (any other error is
    raised)."""
    if not docs:
        return set()
    try:
        await coll.insert_many(docs, ordered=False)
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        if any(e.get("code") != DUPLICATE_KEY for e in errors):
            raise
        return {int(e["index"]) for e in errors}
    return set()


def key_partition(key: bytes, ordered: Sequence[int]) -> int:
    """The partition Kafka's default partitioner (murmur2, as the Java client and
    aiokafka's ``DefaultPartitioner``) picks for ``key`` among ``ordered`` (a topic's
    partitions, sorted: sort them once for many keys): delivery's room fan-out
    produces to it explicitly, so that an inbox's room copies land where its 1:1
    copies do (one consumer writes each inbox)."""
    return int(ordered[_key_hash(key) % len(ordered)])


def partitioner(key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
    """aiokafka's ``DefaultPartitioner`` with the key's hash remembered (same choice)."""
    if key is None:
        return random.choice(available or all_partitions)
    return all_partitions[_key_hash(key) % len(all_partitions)]


class Topics:
    """Kafka topic names, under the configured prefix (tests use their own)."""

    def __init__(self, settings: Settings) -> None:
        p = settings.topic_prefix
        self.messages = f"{p}messages"
        self.events = f"{p}events"
        # Records a consumer could not process (docs/delivery.md, "Dead letters").
        self.dead_letters = f"{p}dead-letters"
        # Membership and state changes of rooms, keyed by room (docs/rooms.md, "Events").
        self.rooms = f"{p}rooms"
        # Private rooms' messages, one record each, keyed by room (docs/rooms.md).
        self.room_messages = f"{p}room-messages"
        # Mention notifications, keyed by user, for the notifier (docs/notifier.md).
        self.notifications = f"{p}notifications"

    def all(self) -> list[str]:
        return [
            self.messages, self.events, self.dead_letters, self.rooms, self.room_messages,
            self.notifications,
        ]  # fmt: skip

    def configs(self, settings: Settings, name: str) -> dict[str, str]:
        """A topic's configs at creation: the messages topic keeps ciphertext briefly."""
        if name in (self.messages, self.room_messages):
            return {"retention.ms": str(settings.kafka_message_retention_ms)}
        return {}


def mongo_client(settings: Settings) -> AsyncMongoClient[dict[str, Any]]:
    ms = settings.dependency_timeout_ms
    return AsyncMongoClient(
        settings.mongo_url,
        tz_aware=True,
        serverSelectionTimeoutMS=ms,
        connectTimeoutMS=ms,
        socketTimeoutMS=max(ms, 10_000),
        retryWrites=False,  # the embedded server has no replica-set sessions
        appname="parley",
    )


def service_db(
    client: AsyncMongoClient[dict[str, Any]], settings: Settings, service: str
) -> AsyncDatabase[dict[str, Any]]:
    """Each service owns one database: ``<db_prefix><service>``."""
    return client[f"{settings.db_prefix}{service}"]


async def in_id_order(
    coll: AsyncCollection[dict[str, Any]],
    match: dict[str, Any],
    limit: int | None,
) -> list[dict[str, Any]]:
    """The first ``limit`` (None: all) documents matching ``match`` (an ``_id`` range,
    and other conditions) in ``_id`` order.

    An aggregation (``$match``, ``$sort``, ``$limit``), not a ``find``: MongoDB answers
    both from the ``_id`` index, but the embedded server (nx-27017) answers a ``find``
    of an ``_id`` range by reading every document of the collection, and this in SQL
    (a page of 50 of 20,000 directory entries: 140 ms as a find, 7 ms as this;
    docs/embedded.md). A ``$regex`` condition makes that aggregation slower than the
    find (a scan either way): a match with one is read with the find."""
    if any(isinstance(v, dict) and "$regex" in v for v in match.values()):
        cursor = coll.find(match).sort("_id", 1)
        return await (cursor if limit is None else cursor.limit(limit)).to_list()
    pipeline: list[dict[str, Any]] = [{"$match": match}, {"$sort": {"_id": 1}}]
    if limit is not None:
        pipeline.append({"$limit": limit})
    return await (await coll.aggregate(pipeline)).to_list()


def redis_client(settings: Settings) -> aioredis.Redis:
    """A Redis client whose plain commands and non-transactional pipelines share one
    pipelined connection (services/common/fastredis.py)."""
    timeout = settings.dependency_timeout_ms / 1000
    return FastRedis.from_url(
        settings.redis_url,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        health_check_interval=15,
        decode_responses=False,
        # A pooled connection to a Redis that restarted fails once: retry on a
        # fresh connection instead of failing the request.
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.02), retries=3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        # Lua scripts loaded on every new connection (services/common/scripts.py).
        redis_connect_func=scripts.on_connect,
    )


def kafka_security(settings: Settings) -> dict[str, Any]:
    """aiokafka's options for how to reach the brokers (every producer, consumer and
    admin client of the services): nothing for PLAINTEXT; TLS (the system's CAs, or
    ``kafka_ssl_cafile``) for SSL and SASL_SSL; the SASL mechanism and credentials
    for SASL_* (MSK: SASL_SSL, SCRAM-SHA-512)."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return {}
    opts: dict[str, Any] = {"security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        opts["ssl_context"] = create_ssl_context(cafile=settings.kafka_ssl_cafile)
    if protocol.startswith("SASL"):
        password = settings.kafka_sasl_password
        opts.update(
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_plain_username=settings.kafka_sasl_username,
            sasl_plain_password=password.get_secret_value() if password else None,
        )
    return opts


def kafka_producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    opts: dict[str, Any] = {
        **kafka_security(settings),
        "bootstrap_servers": settings.kafka_bootstrap,
        "acks": "all",
        # The embedded broker has no idempotent producers (no InitProducerId); our
        # idempotency keys make a redelivered record harmless (docs/embedded.md).
        "enable_idempotence": False,
        "linger_ms": settings.kafka_linger_ms,
        "partitioner": partitioner,
        "request_timeout_ms": max(settings.dependency_timeout_ms, 5000),
        "client_id": "parley",
    }
    opts.update(overrides)
    return AIOKafkaProducer(**opts)


def kafka_consumer(
    settings: Settings, topics: Iterable[str], group_id: str, **overrides: Any
) -> AIOKafkaConsumer:
    opts: dict[str, Any] = {
        **kafka_security(settings),
        "bootstrap_servers": settings.kafka_bootstrap,
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": settings.kafka_session_timeout_ms,
        "heartbeat_interval_ms": max(settings.kafka_session_timeout_ms // 3, 300),
        "fetch_max_wait_ms": settings.kafka_fetch_max_wait_ms,
        "fetch_min_bytes": settings.kafka_fetch_min_bytes,
        "client_id": "parley",
    }
    opts.update(overrides)
    return AIOKafkaConsumer(*topics, **opts)


# How long a group consumer may take to leave its group on shutdown. aiokafka's
# stop() waits for a JoinGroup in flight, which a broker holds until the group's
# rebalance ends (up to the rebalance timeout, minutes): a service that stops, or a
# consumer that restarts, must not hang on that. The broker notices the member
# gone when its session times out.
CONSUMER_STOP_S = 10.0


async def stop_consumer(consumer: AIOKafkaConsumer, timeout: float = CONSUMER_STOP_S) -> None:
    """Stop a group consumer, giving up after ``timeout`` seconds (logged)."""
    try:
        await asyncio.wait_for(consumer.stop(), timeout)
    except TimeoutError:
        log.warning("kafka consumer did not stop in time", extra={"timeout_s": timeout})


KafkaClient = TypeVar("KafkaClient", AIOKafkaProducer, AIOKafkaConsumer, AIOKafkaAdminClient)

# How long a cancelled start may go on to finish its bootstrap (milliseconds against
# a broker that answers). Past it, the start is cancelled where it is: a consumer's
# start also waits for its group's assignment, which can take a rebalance.
START_GRACE_S = 2.0


async def _close_kafka(client: AIOKafkaProducer | AIOKafkaConsumer | AIOKafkaAdminClient) -> None:
    try:
        close = client.close() if isinstance(client, AIOKafkaAdminClient) else client.stop()
        await asyncio.wait_for(close, CONSUMER_STOP_S)
    except TimeoutError:
        log.warning("kafka client did not close in time", extra={"timeout": CONSUMER_STOP_S})


async def started(client: KafkaClient) -> KafkaClient:
    """``client.start()``, leaving nothing open when the start fails or is cancelled.

    aiokafka's bootstrap holds its first connection in a local variable while the
    metadata request is in flight, and closes it on a timeout or broker error but
    not on a cancellation: a task cancelled there (a service stopping, a consumer
    restarting) leaks a live connection that only the garbage collector closes,
    with a ``ResourceWarning`` (tests/common/test_kafka_start.py shows it). So the
    start runs shielded: a cancellation lets it go on for up to ``START_GRACE_S``,
    closes the client, and then propagates. A start that fails closes the client
    too, so the caller never holds a half-started one.
    """
    start = asyncio.ensure_future(client.start())
    try:
        await asyncio.shield(start)
    except asyncio.CancelledError:
        await asyncio.wait([start], timeout=START_GRACE_S)
        start.cancel()
        await asyncio.gather(start, return_exceptions=True)
        await _close_kafka(client)
        raise
    except BaseException:
        await _close_kafka(client)
        raise
    return client


async def ensure_topics(settings: Settings, names: Iterable[str]) -> list[str]:
    """Create the topics that are missing (explicitly: auto-create is not relied on).

    Returns the names it created. Safe to call from several processes at once.
    """
    admin = AIOKafkaAdminClient(
        **kafka_security(settings),
        bootstrap_servers=settings.kafka_bootstrap,
        request_timeout_ms=max(settings.dependency_timeout_ms, 5000),
    )
    await started(admin)
    try:
        existing = set(await admin.list_topics())
        missing = [n for n in names if n not in existing]
        if missing:
            try:
                topics = Topics(settings)
                await admin.create_topics(
                    [
                        NewTopic(n, settings.kafka_partitions, 1,
                                 topic_configs=topics.configs(settings, n))
                        for n in missing
                    ]
                )  # fmt: skip
            except TopicAlreadyExistsError:
                pass
            log.info("created kafka topics", extra={"topics": missing})
        return missing
    finally:
        await admin.close()


class KafkaProducerHandle:
    """A producer that connects in the background and reconnects after a broker restart.

    Services start even when the broker is not up yet (``make run`` starts all
    processes at once); readiness reports ``kafka`` until the producer runs.
    """

    def __init__(self, settings: Settings, topics: Iterable[str] = ()) -> None:
        self.settings = settings
        self.topics = list(topics)
        self.producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._connect_loop())

    async def _connect_loop(self) -> None:
        self.producer = await retry(self._connect, what="kafka producer", log=log)
        self._ready.set()

    async def _connect(self) -> AIOKafkaProducer:
        """One attempt: create our topics if missing, start a producer."""
        if self.topics:
            await ensure_topics(self.settings, self.topics)
        return await started(kafka_producer(self.settings))

    async def wait_ready(self, timeout: float | None = None) -> AIOKafkaProducer:
        await asyncio.wait_for(self._ready.wait(), timeout)
        assert self.producer is not None
        return self.producer

    def get(self) -> AIOKafkaProducer | None:
        return self.producer

    async def check(self) -> None:
        """Readiness: the broker answers a metadata request and our topics exist."""
        if self.producer is None:
            raise ConnectionError("not connected")
        client = self.producer.client
        metadata = await client.fetch_all_metadata()
        missing = [t for t in self.topics if t not in metadata.topics()]
        if missing:
            # A broker that lost our topics (deleted, or a fresh data dir): recreate.
            await ensure_topics(self.settings, missing)

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_all([self._task])
        if self.producer is not None:
            # Bounded like a consumer's stop: a broker that does not answer must not
            # hold a stopping service (what was not acked was never `accepted`).
            try:
                await asyncio.wait_for(self.producer.stop(), CONSUMER_STOP_S)
            except TimeoutError:
                log.warning("kafka producer did not stop in time")


async def consume_forever(
    settings: Settings,
    topic: str,
    group: str,
    process: Callable[[list[Any]], Awaitable[None]],
    running: asyncio.Event,
    max_poll_records: int,
) -> None:
    """Consume ``topic`` in ``group`` for as long as the task runs, committing each
    batch after ``process`` returned. Any failure restarts the consumer (with
    backoff) from the committed offsets: nothing unprocessed is ever committed.
    ``running`` is set while a consumer is up."""
    from aiokafka.errors import CommitFailedError

    restarts = Restarts()
    while True:
        consumer: AIOKafkaConsumer | None = None
        try:
            await ensure_topics(settings, [topic])
            consumer = kafka_consumer(settings, [topic], group, max_poll_records=max_poll_records)
            await started(consumer)
            running.set()
            restarts.up()
            while True:
                batches = await consumer.getmany(timeout_ms=500)
                records = [r for part in batches.values() for r in part]
                if not records:
                    continue
                await process(records)
                try:
                    await consumer.commit()
                except CommitFailedError:
                    log.info("commit failed after rebalance; batch will be redelivered")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("consumer restarting", extra={"topic": topic, "error": repr(exc)})
        finally:
            # Not running while it waits to start again (cleared only after the wait,
            # the check read ready all but a few ms of a consumer failing right after
            # each start); stopped before the wait, not holding its partitions.
            running.clear()
            if consumer is not None:
                await stop_consumer(consumer)
        await restarts.wait()
