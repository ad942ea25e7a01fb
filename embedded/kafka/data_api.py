"""Produce, Fetch, ListOffsets and Metadata: the APIs of producers and consumers' data path."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from embedded.kafka.codec import encode_fetch_response, encode_produce_response
from embedded.kafka.log import OffsetOutOfRange, PartitionLog
from embedded.kafka.protocol import encode
from embedded.kafka.records import MAX_PRODUCE_BATCHES, BatchError, split_batches
from embedded.kafka.topics import TOPIC_ALREADY_EXISTS, TopicError

if TYPE_CHECKING:
    from embedded.kafka.server import Broker, Request

log = logging.getLogger(__name__)

NONE = 0
OFFSET_OUT_OF_RANGE = 1
CORRUPT_MESSAGE = 2
UNKNOWN_TOPIC_OR_PARTITION = 3
LEADER_NOT_AVAILABLE = 5
NOT_LEADER_FOR_PARTITION = 6
INVALID_REQUIRED_ACKS = 21
KAFKA_STORAGE_ERROR = 56
FETCH_SESSION_ID_NOT_FOUND = 70
LATEST, EARLIEST = -1, -2


# Produce ----------------------------------------------------------------------------
def produce(broker: Broker, req: Request) -> bytes | Awaitable[bytes | None] | None:
    body = req.body
    acks = body.required_acks
    storage_error = KAFKA_STORAGE_ERROR if req.version >= 4 else NOT_LEADER_FOR_PARTITION
    wrote = False
    # Batches left to check, all partitions together: the work of a request is bounded
    # by their number (each is read, checked, indexed), not only by its bytes. A record
    # set refused part-way has used up what it read.
    budget = MAX_PRODUCE_BATCHES
    topics_out: list[tuple[str, list[tuple[int, int, int, int, int]]]] = []
    for name, partitions in body.topics:
        topic = broker.topics.get(name)
        parts_out = []
        for partition, records in partitions:
            plog = topic.log(partition) if topic is not None else None
            error, base = NONE, -1
            if plog is None:
                error = UNKNOWN_TOPIC_OR_PARTITION
            elif acks not in (-1, 0, 1):
                error = INVALID_REQUIRED_ACKS
            elif not records:
                error = CORRUPT_MESSAGE
            else:
                assert topic is not None
                try:
                    batches = split_batches(records, topic.config.max_message_bytes, budget)
                    budget -= len(batches)
                    base = plog.append(records, batches)
                    wrote = True
                except BatchError as exc:
                    budget -= exc.parsed
                    error = exc.code
                except OSError as exc:
                    log.error("%s-%d: write failed: %r", name, partition, exc)
                    error = storage_error
            start = plog.log_start if plog is not None else -1
            parts_out.append((partition, error, base, -1, start))
        topics_out.append((name, parts_out))
    if wrote and broker.syncer.every_write:
        if acks == 0:
            return _no_answer(broker)
        return broker.syncer.after_sync(
            encode_produce_response(req.version, topics_out),
            lambda: encode_produce_response(req.version, _unsynced(topics_out, storage_error)),
        )
    if acks == 0:
        return None  # Kafka sends no response at all to acks=0
    return encode_produce_response(req.version, topics_out)


def _unsynced(
    topics_out: list[tuple[str, list[tuple[int, int, int, int, int]]]], storage_error: int
) -> list[tuple[str, list[tuple[int, int, int, int, int]]]]:
    """The answer when the fsync failed: what was written is not acknowledged."""
    return [
        (name, [part if part[1] else (part[0], storage_error, -1, -1, part[4]) for part in parts])
        for name, parts in topics_out
    ]


async def _no_answer(broker: Broker) -> None:
    # acks=0 has no answer to carry an error: an OSError closes the connection, as Kafka
    # closes it when an acks=0 produce fails, so the producer learns of it.
    await broker.syncer.sync()


# Fetch ------------------------------------------------------------------------------
def fetch(broker: Broker, req: Request) -> bytes | Awaitable[bytes]:
    body, version = req.body, req.version
    if version >= 7 and (body.session_id != 0 or body.session_epoch not in (-1, 0)):
        # No fetch sessions here: every fetch is a full one (session id 0).
        return encode_fetch_response(version, FETCH_SESSION_ID_NOT_FOUND, [])
    offset_at = 1 if version < 9 else 2
    # A partition named twice is answered once (as Kafka, the last position asked wins):
    # else each copy is read again, and a small request builds a huge answer.
    asked: dict[str, dict[int, tuple[int, int]]] = {}
    for name, partitions in body.topics:
        parts = asked.setdefault(name, {})
        for p in partitions:
            parts[p[0]] = (p[offset_at], p[-1])
    wanted = [(name, [(p, *at) for p, at in parts.items()]) for name, parts in asked.items()]
    # The whole answer within the broker's --fetch-max-bytes (Kafka's fetch.max.bytes).
    max_bytes = min(body.max_bytes, broker.config.fetch_max_bytes)
    topics_out, total, failed = _collect(broker, wanted, max_bytes)
    if total >= body.min_bytes or failed or body.max_wait_time <= 0:
        return encode_fetch_response(version, NONE, topics_out)
    return _long_poll(broker, req, wanted, max_bytes)


async def _long_poll(
    broker: Broker,
    req: Request,
    wanted: list[tuple[str, list[tuple[int, int, int]]]],
    max_bytes: int,
) -> bytes:
    """Wait until ``min_bytes`` are there or ``max_wait`` is over (woken by appends)."""
    body = req.body
    loop = asyncio.get_running_loop()
    deadline = loop.time() + body.max_wait_time / 1000
    while True:
        remaining = deadline - loop.time()
        if remaining > 0:
            await _wait_for_data(broker, wanted, remaining)
        topics_out, total, failed = _collect(broker, wanted, max_bytes)
        if total >= body.min_bytes or failed or deadline - loop.time() <= 0:
            break
    return encode_fetch_response(req.version, NONE, topics_out)


def _collect(
    broker: Broker,
    wanted: list[tuple[str, list[tuple[int, int, int]]]],
    max_bytes: int,
) -> tuple[list[tuple[str, list[tuple[int, int, int, int, bytes]]]], int, bool]:
    total, failed = 0, False
    topics_out = []
    for name, partitions in wanted:
        topic = broker.topics.get(name)
        parts_out = []
        for partition, offset, partition_max in partitions:
            plog = topic.log(partition) if topic is not None else None
            data = b""
            if plog is None:
                error, hw, start = UNKNOWN_TOPIC_OR_PARTITION, -1, -1
                failed = True
            else:
                error, hw, start = NONE, plog.next_offset, plog.log_start
                budget = max_bytes - total
                try:
                    # Always a whole batch for the partition (so a batch larger than
                    # the partition limit cannot stall it), within the response's
                    # limit except for the first data of the response (so progress is
                    # made); once the limit is reached, nothing is read.
                    data = plog.read(
                        offset, max(min(partition_max, budget), 0), min_one=not total or budget > 0
                    )
                    if total and len(data) > budget:
                        data = b""
                except OffsetOutOfRange:
                    error, failed = OFFSET_OUT_OF_RANGE, True
            total += len(data)
            parts_out.append((partition, error, hw, start, data))
        topics_out.append((name, parts_out))
    return topics_out, total, failed


async def _wait_for_data(
    broker: Broker, wanted: list[tuple[str, list[tuple[int, int, int]]]], timeout: float
) -> None:
    """Sleep until one of the partitions gets a batch (or is deleted), or the timeout."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    logs: list[PartitionLog] = []
    for name, partitions in wanted:
        topic = broker.topics.get(name)
        if topic is None:
            continue
        for partition, _, _ in partitions:
            plog = topic.log(partition)
            if plog is not None:
                plog.waiters.add(fut)
                logs.append(plog)
    timer = loop.call_later(timeout, _resolve, fut)
    try:
        await fut
    finally:
        timer.cancel()
        for plog in logs:
            plog.waiters.discard(fut)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


# ListOffsets ------------------------------------------------------------------------
Lookup = tuple[str, int, int]  # topic, partition, timestamp
Found = tuple[int, int, int]  # error code, timestamp, offset


def list_offsets(broker: Broker, req: Request) -> bytes | Awaitable[bytes]:
    """Every entry is answered, in order, but each distinct (topic, partition, timestamp)
    is looked up once: a 240 KB request naming one partition 20,000 times decoded the
    same batch 20,000 times, 34 s during which no other client was served. (Kafka
    answers a partition named twice with INVALID_REQUEST from v1 on; answering each
    copy is what a client that sends one would expect, and costs a lookup only.)"""
    asked = [(name, p[0], p[1]) for name, partitions in req.body.topics for p in partitions]
    found: dict[Lookup, Found] = {}
    by_time: dict[tuple[str, int], set[int]] = {}
    for entry in asked:
        name, partition, timestamp = entry
        plog = _log(broker, name, partition)
        if plog is None:
            found[entry] = (UNKNOWN_TOPIC_OR_PARTITION, -1, -1)
        elif timestamp == LATEST:
            found[entry] = (NONE, -1, plog.next_offset)
        elif timestamp == EARLIEST:
            found[entry] = (NONE, -1, plog.log_start)
        else:
            by_time.setdefault((name, partition), set()).add(timestamp)
    if by_time:
        return _by_timestamp(broker, req, found, by_time)
    return _list_offsets_answer(req, found)


async def _by_timestamp(
    broker: Broker,
    req: Request,
    found: dict[Lookup, Found],
    by_time: dict[tuple[str, int], set[int]],
) -> bytes:
    """The lookups by timestamp. Each reads and decodes at most one batch (a batch holds
    up to ``max.message.bytes``: about 20 ms for 1 MiB of tiny records), a partition's
    timestamps go in ascending order so each of its batches is decoded at most once, and
    the loop serves the other connections after every batch decoded (and every 256
    lookups): a request naming many batches takes long for its own client only."""
    done = 0
    for (name, partition), timestamps in by_time.items():
        known = None
        for timestamp in sorted(timestamps):
            plog = _log(broker, name, partition)  # looked up again: the loop ran meanwhile
            if plog is None:
                found[name, partition, timestamp] = (UNKNOWN_TOPIC_OR_PARTITION, -1, -1)
                continue
            hit, times = plog.offset_for_timestamp(timestamp, known)
            offset, at = hit if hit is not None else (-1, -1)
            found[name, partition, timestamp] = (NONE, at, offset)
            done += 1
            decoded, known = times is not known, times
            if decoded or done % 256 == 0:
                await asyncio.sleep(0)
    return _list_offsets_answer(req, found)


def _log(broker: Broker, name: str, partition: int) -> PartitionLog | None:
    topic = broker.topics.get(name)
    return topic.log(partition) if topic is not None else None


def _list_offsets_answer(req: Request, found: dict[Lookup, Found]) -> bytes:
    """Every entry of the request, in its order, from the lookups made."""
    topics_out = []
    for name, partitions in req.body.topics:
        parts_out: list[dict[str, Any]] = []
        topics_out.append({"topic": name, "partitions": parts_out})
        for p in partitions:
            error, at, offset = found[name, p[0], p[1]]
            parts_out.append(
                {
                    "partition": p[0],
                    "error_code": error,
                    "timestamp": at,
                    "offset": offset,
                    "offsets": [offset] if offset >= 0 else [],
                }
            )
    return encode(req.response_class, {"topics": topics_out})


# Metadata ---------------------------------------------------------------------------
def metadata(broker: Broker, req: Request) -> bytes | Awaitable[bytes]:
    body, version = req.body, req.version
    requested: list[str] | None = body.topics
    if version == 0 and not requested:
        requested = None  # v0: an empty list means every topic
    elif requested is not None:
        # Each topic once (as Kafka): else a small request naming a topic of many
        # partitions again and again asks for an answer many times the broker's state.
        requested = list(dict.fromkeys(requested))
    allow_create = broker.config.auto_create_topics and (
        version < 4 or bool(body.allow_auto_topic_creation)
    )
    missing = [n for n in requested or [] if broker.topics.get(n) is None]
    if allow_create and missing:
        return _create_then_describe(broker, req, requested, missing)
    return _describe(broker, req, requested, {})


async def _create_then_describe(
    broker: Broker, req: Request, requested: list[str] | None, missing: list[str]
) -> bytes:
    errors: dict[str, int] = {}
    for name in missing:  # de-duplicated with ``requested``
        try:
            await broker.topics.create(name, broker.config.partitions)
            log.info("auto-created topic %s", name)
        except TopicError as exc:
            # Another request is creating it: Kafka's retriable answer meanwhile.
            errors[name] = LEADER_NOT_AVAILABLE if exc.code == TOPIC_ALREADY_EXISTS else exc.code
    return _describe(broker, req, requested, errors)


def _describe(
    broker: Broker, req: Request, requested: list[str] | None, errors: dict[str, int]
) -> bytes:
    names = sorted(broker.topics.topics) if requested is None else requested
    node = broker.config.node_id
    topics_out = []
    for name in names:
        topic = broker.topics.get(name)
        error = NONE
        if topic is None:
            error = errors.get(name) or UNKNOWN_TOPIC_OR_PARTITION
            partitions: list[dict[str, Any]] = []
        else:
            partitions = [
                {
                    "error_code": NONE,
                    "partition": p,
                    "leader": node,
                    "replicas": [node],
                    "isr": [node],
                    "offline_replicas": [],
                }
                for p in range(len(topic.logs))
            ]
        topics_out.append(
            {"error_code": error, "topic": name, "is_internal": False, "partitions": partitions}
        )
    return encode(
        req.response_class,
        {
            "brokers": [
                {
                    "node_id": node,
                    "host": broker.config.advertised,
                    "port": broker.port,
                    "rack": None,
                }
            ],
            "cluster_id": broker.cluster_id,
            "controller_id": node,
            "topics": topics_out,
        },
    )
