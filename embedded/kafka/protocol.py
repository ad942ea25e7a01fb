"""The wire: which API versions the broker speaks, request headers, response frames.

Requests are decoded and responses encoded with aiokafka's own protocol
structs, so the broker speaks exactly the schemas of the client the project
uses. Only non-flexible versions are implemented (request header v1,
response header v0); ApiVersions advertises exactly the versions below, and
aiokafka picks, per API, its highest version inside that range.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from aiokafka.protocol import admin, commit, coordination, fetch, group, metadata, offset, produce
from aiokafka.protocol.types import Array, Schema

PRODUCE = 0
FETCH = 1
LIST_OFFSETS = 2
METADATA = 3
OFFSET_COMMIT = 8
OFFSET_FETCH = 9
FIND_COORDINATOR = 10
JOIN_GROUP = 11
HEARTBEAT = 12
LEAVE_GROUP = 13
SYNC_GROUP = 14
DESCRIBE_GROUPS = 15
LIST_GROUPS = 16
SASL_HANDSHAKE = 17
API_VERSIONS = 18
CREATE_TOPICS = 19
DELETE_TOPICS = 20
DELETE_RECORDS = 21
DESCRIBE_CONFIGS = 32
SASL_AUTHENTICATE = 36

UNSUPPORTED_VERSION = 35


def _pair(module: ModuleType, name: str, version: int) -> tuple[type[Any], type[Any]]:
    request = getattr(module, f"{name}Request_v{version}")
    return request, request.RESPONSE_TYPE


def _range(
    module: ModuleType, name: str, versions: range
) -> dict[int, tuple[type[Any], type[Any]]]:
    return {v: _pair(module, name, v) for v in versions}


_G, _A = group, admin
# api key -> version -> (request struct, response struct). Where aiokafka has no
# class for a version whose schema equals an earlier one's (JoinGroup v3-v4 = v2,
# SyncGroup v2 = v1, ListGroups v2 = v1), the earlier class serves.
VERSIONS: dict[int, dict[int, tuple[type[Any], type[Any]]]] = {
    PRODUCE: _range(produce, "Produce", range(3, 8)),
    FETCH: _range(fetch, "Fetch", range(4, 12)),
    LIST_OFFSETS: _range(offset, "Offset", range(0, 4)),
    METADATA: _range(metadata, "Metadata", range(0, 6)),
    OFFSET_COMMIT: _range(commit, "OffsetCommit", range(2, 4)),
    OFFSET_FETCH: _range(commit, "OffsetFetch", range(1, 4)),
    FIND_COORDINATOR: _range(coordination, "FindCoordinator", range(0, 2)),
    JOIN_GROUP: {
        0: (_G.JoinGroupRequest_v0, _G.JoinGroupResponse_v0),
        1: (_G.JoinGroupRequest_v1, _G.JoinGroupResponse_v1),
        2: (_G.JoinGroupRequest_v2, _G.JoinGroupResponse_v2),
        3: (_G.JoinGroupRequest_v2, _G.JoinGroupResponse_v2),
        4: (_G.JoinGroupRequest_v2, _G.JoinGroupResponse_v2),
        5: (_G.JoinGroupRequest_v5, _G.JoinGroupResponse_v5),
    },
    HEARTBEAT: _range(group, "Heartbeat", range(0, 2)),
    LEAVE_GROUP: _range(group, "LeaveGroup", range(0, 2)),
    SYNC_GROUP: {
        0: (_G.SyncGroupRequest_v0, _G.SyncGroupResponse_v0),
        1: (_G.SyncGroupRequest_v1, _G.SyncGroupResponse_v1),
        2: (_G.SyncGroupRequest_v1, _G.SyncGroupResponse_v1),
        3: (_G.SyncGroupRequest_v3, _G.SyncGroupResponse_v3),
    },
    # Not v3: aiokafka decodes a v3 response with the v2 schema.
    DESCRIBE_GROUPS: _range(admin, "DescribeGroups", range(0, 3)),
    LIST_GROUPS: {
        0: (_A.ListGroupsRequest_v0, _A.ListGroupsResponse_v0),
        1: (_A.ListGroupsRequest_v1, _A.ListGroupsResponse_v1),
        2: (_A.ListGroupsRequest_v1, _A.ListGroupsResponse_v2),
    },
    API_VERSIONS: {
        0: (_A.ApiVersionRequest_v0, _A.ApiVersionResponse_v0),
        1: (_A.ApiVersionRequest_v1, _A.ApiVersionResponse_v1),
        2: (_A.ApiVersionRequest_v2, _A.ApiVersionResponse_v2),
    },
    CREATE_TOPICS: _range(admin, "CreateTopics", range(0, 4)),
    DELETE_TOPICS: _range(admin, "DeleteTopics", range(0, 4)),
    DELETE_RECORDS: _range(admin, "DeleteRecords", range(0, 2)),
    DESCRIBE_CONFIGS: _range(admin, "DescribeConfigs", range(0, 3)),
    # v1 only: after a v0 handshake the tokens go without Kafka headers (sasl.py).
    SASL_HANDSHAKE: _range(admin, "SaslHandShake", range(1, 2)),
    SASL_AUTHENTICATE: _range(admin, "SaslAuthenticate", range(0, 2)),
}

# What ApiVersions advertises: (api key, min version, max version).
API_RANGES: list[tuple[int, int, int]] = [
    (key, min(versions), max(versions)) for key, versions in sorted(VERSIONS.items())
]

# Request header v1: api_key, api_version, correlation_id, client_id (nullable string).
_HEADER = struct.Struct(">hhih")
_SIZE_CORRELATION = struct.Struct(">ii")


class ProtocolError(Exception):
    """A request the broker cannot read: the connection that sent it is closed."""


def parse_header(frame: bytes) -> tuple[int, int, int, str | None, int]:
    """(api_key, api_version, correlation_id, client_id, offset of the body)."""
    if len(frame) < _HEADER.size:
        raise ProtocolError(f"request of {len(frame)} bytes is shorter than a header")
    api_key, version, correlation_id, length = _HEADER.unpack_from(frame)
    body = _HEADER.size + max(length, 0)
    if body > len(frame):
        raise ProtocolError("client id runs past the end of the request")
    client_id = frame[_HEADER.size : body].decode("utf-8", "replace") if length >= 0 else None
    return api_key, version, correlation_id, client_id, body


def count_entries(request: Any, limit: int) -> int:
    """The array items of a decoded request (aiokafka struct), nested ones included:
    what its answer costs grows with them. Counting stops once past ``limit``."""
    count = 0
    stack: list[Any] = [getattr(request, name) for name in request.SCHEMA.names]
    while stack:
        value = stack.pop()
        if isinstance(value, list):
            count += len(value)
            if count > limit:
                break
            if value and isinstance(value[0], (list, tuple)):  # arrays are of one type
                stack.extend(value)
        elif isinstance(value, tuple):  # a struct in an array
            stack.extend(value)
    return count


def frame_response(correlation_id: int, payload: bytes) -> bytes:
    return _SIZE_CORRELATION.pack(len(payload) + 4, correlation_id) + payload


# Encoding from names ---------------------------------------------------------------
# Handlers describe a response as (nested) dicts with the field names of the
# newest version they serve; ``encode`` keeps the fields of the version asked
# for, in its order. Fields some versions lack get these values.
DEFAULTS: dict[str, Any] = {"throttle_time_ms": 0, "error_message": None}
_PLANS: dict[int, list[tuple[str, Schema | None]]] = {}


def _plan(schema: Schema) -> list[tuple[str, Schema | None]]:
    plan = _PLANS.get(id(schema))
    if plan is None:
        plan = []
        for name, ftype in zip(schema.names, schema.fields, strict=True):
            sub = ftype.array_of if isinstance(ftype, Array) else None
            plan.append((name, sub if isinstance(sub, Schema) else None))
        _PLANS[id(schema)] = plan
    return plan


def shape(schema: Schema, values: Mapping[str, Any]) -> list[Any]:
    out: list[Any] = []
    for name, sub in _plan(schema):
        value = values[name] if name in values else DEFAULTS[name]
        if sub is not None and value is not None:
            value = [shape(sub, item) for item in value]
        out.append(value)
    return out


def encode(response_class: type[Any], values: Mapping[str, Any]) -> bytes:
    schema: Schema = response_class.SCHEMA
    return bytes(schema.encode(shape(schema, values)))
