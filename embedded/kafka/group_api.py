"""FindCoordinator, the group membership APIs, offset commits and fetches, group listings."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from embedded.kafka.groups import INVALID_GROUP_ID, NONE, State
from embedded.kafka.protocol import encode

if TYPE_CHECKING:
    from embedded.kafka.server import Broker, Request

log = logging.getLogger(__name__)

UNKNOWN_TOPIC_OR_PARTITION = 3
OFFSET_METADATA_TOO_LARGE = 12
COORDINATOR_NOT_AVAILABLE = 15
GROUP_COORDINATOR = 0


def find_coordinator(broker: Broker, req: Request) -> bytes:
    kind = req.body.coordinator_type if req.version >= 1 else GROUP_COORDINATOR
    if kind != GROUP_COORDINATOR:  # no transactions here
        return encode(
            req.response_class,
            {
                "error_code": COORDINATOR_NOT_AVAILABLE,
                "error_message": "transactions are not supported",
                "coordinator_id": -1,
                "host": "",
                "port": -1,
            },
        )
    return encode(
        req.response_class,
        {
            "error_code": NONE,
            "coordinator_id": broker.config.node_id,
            "host": broker.config.advertised,
            "port": broker.port,
        },
    )


async def join_group(broker: Broker, req: Request) -> bytes:
    body = req.body
    session = body.session_timeout
    result = await broker.groups.join(
        body.group,
        body.member_id or "",
        client_id=req.client_id or "",
        client_host=req.client_host,
        session_timeout_ms=session,
        rebalance_timeout_ms=body.rebalance_timeout if req.version >= 1 else session,
        protocol_type=body.protocol_type or "",
        protocols=[(name or "", meta or b"") for name, meta in body.group_protocols or []],
        require_member_id=req.version >= 4,
    )
    return encode(
        req.response_class,
        {
            "error_code": result.error,
            "generation_id": result.generation,
            "group_protocol": result.protocol or "",
            "leader_id": result.leader,
            "member_id": result.member_id,
            "members": [
                {"member_id": mid, "group_instance_id": None, "member_metadata": meta}
                for mid, meta in result.members
            ],
        },
    )


async def sync_group(broker: Broker, req: Request) -> bytes:
    body = req.body
    result = await broker.groups.sync(
        body.group,
        body.generation_id,
        body.member_id or "",
        [(mid, meta or b"") for mid, meta in body.group_assignment or []],
    )
    return encode(
        req.response_class, {"error_code": result.error, "member_assignment": result.assignment}
    )


def heartbeat(broker: Broker, req: Request) -> bytes:
    body = req.body
    error = broker.groups.heartbeat(body.group, body.generation_id, body.member_id or "")
    return encode(req.response_class, {"error_code": error})


def leave_group(broker: Broker, req: Request) -> bytes:
    error = broker.groups.leave(req.body.group, req.body.member_id or "")
    return encode(req.response_class, {"error_code": error})


# Offsets ------------------------------------------------------------------------------
def offset_commit(broker: Broker, req: Request) -> bytes | Awaitable[bytes]:
    body = req.body
    group_id: str = body.consumer_group or ""
    error = (
        INVALID_GROUP_ID
        if not group_id
        else broker.groups.check_commit(
            group_id, body.consumer_group_generation_id, body.consumer_id or ""
        )
    )
    limit = broker.config.offset_metadata_max_bytes
    accepted: list[tuple[str, int, int, str]] = []
    topics_out = []
    for name, partitions in body.topics:
        topic = broker.topics.get(name)
        parts_out = []
        for partition, offset, meta in partitions:
            code = error
            if not code:
                if topic is None or topic.log(partition) is None:
                    code = UNKNOWN_TOPIC_OR_PARTITION
                elif meta is not None and len(meta.encode()) > limit:
                    code = OFFSET_METADATA_TOO_LARGE
                else:
                    accepted.append((name, partition, offset, meta or ""))
            parts_out.append({"partition": partition, "error_code": code})
        topics_out.append({"topic": name, "partitions": parts_out})
    if accepted:
        try:
            broker.offsets.commit(group_id, accepted)
        except OSError as exc:
            log.error("offset commit of group %s failed: %r", group_id, exc)
            return _failed(req, topics_out)
        if broker.syncer.every_write:
            return broker.syncer.after_sync(
                encode(req.response_class, {"topics": topics_out}),
                lambda: _failed(req, topics_out),  # not known to be on disk: not acknowledged
            )
    return encode(req.response_class, {"topics": topics_out})


def _failed(req: Request, topics_out: list[dict[str, Any]]) -> bytes:
    for t in topics_out:
        for p in t["partitions"]:
            p["error_code"] = p["error_code"] or COORDINATOR_NOT_AVAILABLE
    return encode(req.response_class, {"topics": topics_out})


def offset_fetch(broker: Broker, req: Request) -> bytes:
    body = req.body
    group_id: str = body.consumer_group or ""
    committed = broker.offsets.of_group(group_id)
    wanted: list[tuple[str, list[int]]]
    if body.topics is None:  # v2+: everything the group committed
        by_topic: dict[str, list[int]] = {}
        for topic, partition in committed:
            by_topic.setdefault(topic, []).append(partition)
        wanted = sorted(by_topic.items())
    else:
        # Each partition once: else a small request naming one partition again and again
        # is answered with its committed metadata (up to 4 KiB) each time.
        asked: dict[str, dict[int, None]] = {}
        for name, partitions in body.topics:
            asked.setdefault(name, {}).update(dict.fromkeys(partitions or []))
        wanted = [(name, list(partitions)) for name, partitions in asked.items()]
    topics_out = []
    for name, partitions in wanted:
        parts_out = []
        for partition in partitions:
            offset, meta = committed.get((name, partition), (-1, ""))
            parts_out.append(
                {"partition": partition, "offset": offset, "metadata": meta, "error_code": NONE}
            )
        topics_out.append({"topic": name, "partitions": parts_out})
    return encode(req.response_class, {"topics": topics_out, "error_code": NONE})


# Listings -----------------------------------------------------------------------------
def list_groups(broker: Broker, req: Request) -> bytes:
    names = {g for g, offs in broker.offsets.groups.items() if offs}
    live = broker.groups.groups
    names |= {g for g, group in live.items() if group.members}
    groups = [
        {"group": g, "protocol_type": (live[g].protocol_type if g in live else None) or ""}
        for g in sorted(names)
    ]
    return encode(req.response_class, {"error_code": NONE, "groups": groups})


def describe_groups(broker: Broker, req: Request) -> bytes:
    out: list[dict[str, Any]] = []
    # Each group once: else a small request naming a group again and again is answered
    # with all its members' metadata and assignments each time.
    for group_id in dict.fromkeys(req.body.groups or []):
        group = broker.groups.groups.get(group_id)
        if group is None:
            state = State.EMPTY.value if broker.offsets.of_group(group_id) else "Dead"
            out.append(
                {
                    "error_code": NONE,
                    "group": group_id,
                    "state": state,
                    "protocol_type": "",
                    "protocol": "",
                    "members": [],
                }
            )
            continue
        members = [
            {
                "member_id": m.member_id,
                "client_id": m.client_id,
                "client_host": m.client_host,
                "member_metadata": m.metadata(group.protocol),
                "member_assignment": m.assignment,
            }
            for m in group.members.values()
        ]
        out.append(
            {
                "error_code": NONE,
                "group": group_id,
                "state": group.state.value,
                "protocol_type": group.protocol_type or "",
                "protocol": group.protocol or "",
                "members": members,
            }
        )
    return encode(req.response_class, {"groups": out})
