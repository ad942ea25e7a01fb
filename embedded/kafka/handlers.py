"""Which function answers which API (see protocol.VERSIONS for the versions)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from embedded.kafka import admin_api, data_api, group_api, sasl
from embedded.kafka import protocol as p

if TYPE_CHECKING:
    from embedded.kafka.server import Handler

HANDLERS: dict[int, Handler] = {
    p.PRODUCE: data_api.produce,
    p.FETCH: data_api.fetch,
    p.LIST_OFFSETS: data_api.list_offsets,
    p.METADATA: data_api.metadata,
    p.OFFSET_COMMIT: group_api.offset_commit,
    p.OFFSET_FETCH: group_api.offset_fetch,
    p.FIND_COORDINATOR: group_api.find_coordinator,
    p.JOIN_GROUP: group_api.join_group,
    p.HEARTBEAT: group_api.heartbeat,
    p.LEAVE_GROUP: group_api.leave_group,
    p.SYNC_GROUP: group_api.sync_group,
    p.DESCRIBE_GROUPS: group_api.describe_groups,
    p.LIST_GROUPS: group_api.list_groups,
    p.API_VERSIONS: admin_api.api_versions,
    p.CREATE_TOPICS: admin_api.create_topics,
    p.DELETE_TOPICS: admin_api.delete_topics,
    p.DELETE_RECORDS: admin_api.delete_records,
    p.DESCRIBE_CONFIGS: admin_api.describe_configs,
    p.SASL_HANDSHAKE: sasl.handshake_disabled,
    p.SASL_AUTHENTICATE: sasl.authenticate_disabled,
}
assert set(HANDLERS) == set(p.VERSIONS), "every advertised API has a handler"
