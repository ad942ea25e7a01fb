"""ApiVersions and the admin APIs: CreateTopics, DeleteTopics, DeleteRecords, DescribeConfigs."""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import TYPE_CHECKING, Any

from embedded.kafka import protocol
from embedded.kafka.log import OffsetOutOfRange
from embedded.kafka.protocol import encode
from embedded.kafka.topics import TopicError

if TYPE_CHECKING:
    from embedded.kafka.server import Broker, Request

log = logging.getLogger(__name__)

NONE = 0
OFFSET_OUT_OF_RANGE = 1
UNKNOWN_TOPIC_OR_PARTITION = 3
INVALID_REPLICA_ASSIGNMENT = 39
INVALID_REQUEST = 42
KAFKA_STORAGE_ERROR = 56
TOPIC_RESOURCE, BROKER_RESOURCE = 2, 4
# DescribeConfigs config_source values.
DYNAMIC_TOPIC_CONFIG, STATIC_BROKER_CONFIG, DEFAULT_CONFIG = 1, 4, 5


def api_versions(broker: Broker, req: Request) -> bytes:
    entries = [
        {"api_key": k, "min_version": lo, "max_version": hi} for k, lo, hi in protocol.API_RANGES
    ]
    return encode(req.response_class, {"error_code": NONE, "api_versions": entries})


async def create_topics(broker: Broker, req: Request) -> bytes:
    body = req.body
    validate_only = bool(body.validate_only) if req.version >= 1 else False
    items = body.create_topic_requests or []
    seen: dict[str, int] = {}
    for item in items:
        seen[item[0]] = seen.get(item[0], 0) + 1
    out = []
    for name, partitions, replication, assignment, configs in items:
        error, message = NONE, None
        try:
            if seen[name] > 1:
                raise TopicError(INVALID_REQUEST, f"topic {name!r} is named twice")
            if assignment:
                if partitions != -1 or any(
                    list(r) != [broker.config.node_id] for _, r in assignment
                ):
                    raise TopicError(
                        INVALID_REPLICA_ASSIGNMENT,
                        f"every partition lives on node {broker.config.node_id}",
                    )
                partitions, replication = len(assignment), 1
            if partitions == -1:
                partitions = broker.config.partitions
            given = {k: v for k, v in configs or [] if v is not None}
            if validate_only:
                broker.topics.validate(name, partitions, replication, given)
            else:
                await broker.topics.create(name, partitions, replication, given)
        except TopicError as exc:
            error, message = exc.code, str(exc)
        except OSError as exc:
            log.error("creating topic %s failed: %r", name, exc)
            error, message = KAFKA_STORAGE_ERROR, "the broker could not write the topic"
        out.append({"topic": name, "error_code": error, "error_message": message})
    return encode(req.response_class, {"topic_errors": out})


async def delete_topics(broker: Broker, req: Request) -> bytes:
    out = []
    for name in req.body.topics or []:
        error = NONE
        try:
            await broker.topics.delete(name, functools.partial(broker.offsets.forget_topic, name))
        except TopicError as exc:
            error = exc.code
        except OSError as exc:
            log.error("deleting topic %s failed: %r", name, exc)
            error = KAFKA_STORAGE_ERROR
        out.append({"topic": name, "error_code": error})
    return encode(req.response_class, {"topic_error_codes": out})


async def delete_records(broker: Broker, req: Request) -> bytes:
    topics_out = []
    for name, partitions in req.body.topics or []:
        topic = broker.topics.get(name)
        parts_out = []
        for partition, before in partitions:
            plog = topic.log(partition) if topic is not None else None
            error, low = NONE, -1
            if plog is None or plog.closed:
                error = UNKNOWN_TOPIC_OR_PARTITION
            else:
                # Its file and its segments change together even if the client goes.
                move = asyncio.ensure_future(plog.delete_records(before))
                move.add_done_callback(_retrieved)
                try:
                    low = await asyncio.shield(move)
                except OffsetOutOfRange:
                    error = OFFSET_OUT_OF_RANGE
                except OSError as exc:
                    if plog.closed:  # deleted meanwhile
                        error = UNKNOWN_TOPIC_OR_PARTITION
                    else:
                        log.error("%s-%d: delete records failed: %r", name, partition, exc)
                        error = KAFKA_STORAGE_ERROR
            parts_out.append(
                {"partition_index": partition, "low_watermark": low, "error_code": error}
            )
        topics_out.append({"name": name, "partitions": parts_out})
    return encode(req.response_class, {"topics": topics_out})


def _retrieved(task: asyncio.Future[Any]) -> None:
    """A shielded task whose caller went away: its error was the caller's to answer."""
    if not task.cancelled():
        task.exception()


def describe_configs(broker: Broker, req: Request) -> bytes:
    # A resource asked twice (with the same names) is answered once: else a small request
    # naming one topic again and again asks for all its configs each time.
    resources = dict.fromkeys(
        (kind, name, None if names is None else tuple(names))
        for kind, name, names in req.body.resources or []
    )
    out = []
    for resource_type, resource_name, names in resources:
        error, message, entries = NONE, None, []
        if resource_type == TOPIC_RESOURCE:
            topic = broker.topics.get(resource_name)
            if topic is None:
                error, message = UNKNOWN_TOPIC_OR_PARTITION, f"unknown topic {resource_name!r}"
            else:
                for key, (value, is_set) in sorted(topic.config.describe().items()):
                    source = DYNAMIC_TOPIC_CONFIG if is_set else DEFAULT_CONFIG
                    entries.append(_entry(key, value, source))
        elif resource_type == BROKER_RESOURCE:
            for key, value in sorted(_broker_configs(broker).items()):
                entries.append(_entry(key, value, STATIC_BROKER_CONFIG))
        else:
            error, message = INVALID_REQUEST, f"resource type {resource_type} is not supported"
        if names is not None:
            entries = [e for e in entries if e["config_names"] in names]
        out.append(
            {
                "error_code": error,
                "error_message": message,
                "resource_type": resource_type,
                "resource_name": resource_name,
                "config_entries": entries,
            }
        )
    return encode(req.response_class, {"resources": out})


def _entry(key: str, value: str, source: int) -> dict[str, Any]:
    return {
        "config_names": key,
        "config_value": value,
        "read_only": False,
        "is_default": source == DEFAULT_CONFIG,
        "config_source": source,
        "is_sensitive": False,
        "config_synonyms": [],
    }


def _broker_configs(broker: Broker) -> dict[str, str]:
    c = broker.config
    return {
        "log.retention.ms": str(c.retention_ms),
        "log.retention.bytes": str(c.retention_bytes),
        "log.segment.bytes": str(c.segment_bytes),
        "log.roll.ms": str(c.segment_ms),
        "log.retention.check.interval.ms": str(c.retention_check_ms),
        "log.flush.interval.ms": str(c.fsync_interval_ms),
        "num.partitions": str(c.partitions),
        "auto.create.topics.enable": str(c.auto_create_topics).lower(),
        "message.max.bytes": str(c.max_message_bytes),
        "socket.request.max.bytes": str(c.max_request_bytes),
        "fetch.max.bytes": str(c.fetch_max_bytes),
        "group.initial.rebalance.delay.ms": str(c.group_initial_rebalance_delay_ms),
        "group.min.session.timeout.ms": str(c.group_min_session_timeout_ms),
        "group.max.session.timeout.ms": str(c.group_max_session_timeout_ms),
    }
