"""Produce, Fetch, ListOffsets and Metadata: the APIs of producers and consumers' data path."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from embedded.kafka.log import OffsetOutOfRange, PartitionLog
from embedded.kafka.protocol import encode
from embedded.kafka.records import BatchError, split_batches
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
async def produce(broker: Broker, req: Request) -> bytes | None:
    body = req.body
    acks = body.required_acks
    storage_error = KAFKA_STORAGE_ERROR if req.version >= 4 else NOT_LEADER_FOR_PARTITION
    wrote = False
    topics_out = []
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
                    base = plog.append(
                        records, split_batches(records, topic.config.max_message_bytes)
                    )
                    wrote = True
                except BatchError as exc:
                    error = exc.code
                except OSError as exc:
                    log.error("%s-%d: write failed: %r", name, partition, exc)
                    error = storage_error
            parts_out.append(
                {
                    "partition": partition,
                    "error_code": error,
                    "offset": base,
                    "timestamp": -1,
                    "log_start_offset": plog.log_start if plog is not None else -1,
                }
            )
        topics_out.append({"topic": name, "partitions": parts_out})
    if wrote and broker.syncer.every_write:
        await broker.syncer.sync()
    if acks == 0:
        return None  # Kafka sends no response at all to acks=0
    return encode(req.response_class, {"topics": topics_out})


# Fetch ------------------------------------------------------------------------------
async def fetch(broker: Broker, req: Request) -> bytes:
    body, version = req.body, req.version
    top: dict[str, Any] = {"throttle_time_ms": 0, "error_code": NONE, "session_id": 0}
    if version >= 7 and (body.session_id != 0 or body.session_epoch not in (-1, 0)):
        # No fetch sessions here: every fetch is a full one (session id 0).
        top.update(error_code=FETCH_SESSION_ID_NOT_FOUND, topics=[])
        return encode(req.response_class, top)
    offset_at = 1 if version < 9 else 2
    wanted = [
        (name, [(p[0], p[offset_at], p[-1]) for p in partitions])
        for name, partitions in body.topics
    ]
    max_bytes = body.max_bytes
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(body.max_wait_time, 0) / 1000
    while True:
        topics_out, total, failed = _collect(broker, wanted, max_bytes, version)
        remaining = deadline - loop.time()
        if total >= body.min_bytes or failed or remaining <= 0:
            break
        await _wait_for_data(broker, wanted, remaining)
    top["topics"] = topics_out
    return encode(req.response_class, top)


def _collect(
    broker: Broker,
    wanted: list[tuple[str, list[tuple[int, int, int]]]],
    max_bytes: int,
    version: int,
) -> tuple[list[dict[str, Any]], int, bool]:
    total, failed = 0, False
    topics_out: list[dict[str, Any]] = []
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
                    # limit except for the first data of the response.
                    data = plog.read(offset, max(min(partition_max, budget), 0), min_one=True)
                    if total and len(data) > budget:
                        data = b""
                except OffsetOutOfRange:
                    error, failed = OFFSET_OUT_OF_RANGE, True
            total += len(data)
            parts_out.append(
                {
                    "partition": partition,
                    "error_code": error,
                    "highwater_offset": hw,
                    "last_stable_offset": hw,
                    "log_start_offset": start,
                    "aborted_transactions": None,
                    "preferred_read_replica": -1,
                    "message_set": data,
                }
            )
        topics_out.append({"topics": name, "partitions": parts_out})
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
async def list_offsets(broker: Broker, req: Request) -> bytes:
    topics_out = []
    for name, partitions in req.body.topics:
        topic = broker.topics.get(name)
        parts_out = []
        for p in partitions:
            partition, timestamp = p[0], p[1]
            plog = topic.log(partition) if topic is not None else None
            error, found_ts, found = NONE, -1, -1
            if plog is None:
                error = UNKNOWN_TOPIC_OR_PARTITION
            elif timestamp == LATEST:
                found = plog.next_offset
            elif timestamp == EARLIEST:
                found = plog.log_start
            else:
                hit = plog.offset_for_timestamp(timestamp)
                if hit is not None:
                    found, found_ts = hit
            parts_out.append(
                {
                    "partition": partition,
                    "error_code": error,
                    "timestamp": found_ts,
                    "offset": found,
                    "offsets": [found] if found >= 0 else [],
                }
            )
        topics_out.append({"topic": name, "partitions": parts_out})
    return encode(req.response_class, {"topics": topics_out})


# Metadata ---------------------------------------------------------------------------
async def metadata(broker: Broker, req: Request) -> bytes:
    body, version = req.body, req.version
    requested: list[str] | None = body.topics
    if version == 0 and not requested:
        requested = None  # v0: an empty list means every topic
    allow_create = broker.config.auto_create_topics and (
        version < 4 or bool(body.allow_auto_topic_creation)
    )
    names = sorted(broker.topics.topics) if requested is None else requested
    node = broker.config.node_id
    topics_out = []
    for name in names:
        topic = broker.topics.get(name)
        error = NONE
        if topic is None and allow_create and requested is not None:
            try:
                topic = await broker.topics.create(name, broker.config.partitions)
                log.info("auto-created topic %s", name)
            except TopicError as exc:
                # Another request is creating it: Kafka's retriable answer meanwhile.
                error = LEADER_NOT_AVAILABLE if exc.code == TOPIC_ALREADY_EXISTS else exc.code
        if topic is None:
            error = error or UNKNOWN_TOPIC_OR_PARTITION
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
