"""What gateways and delivery workers share: Redis names for presence and routing.

The shapes of what travels (Kafka envelopes, routed frames) are the
contract's: ``parley_contract.envelopes``.

Redis (every key carries the user id or gateway id inside ``{}`` so that Redis
Cluster keeps one user's keys on one shard):

- ``<p>:presence:{<user>}``: hash, connection id -> ``<gateway id>|<unix ms>``,
  refreshed by the hosting gateway; entries older than the presence TTL are stale.
- ``<p>:gw:{<gateway id>}``: the pub/sub channel of one gateway pod; messages
  are ``parley_contract.envelopes.Routed``.
"""

from __future__ import annotations

import time


def presence_key(prefix: str, user_id: str) -> str:
    return f"{prefix}:presence:{{{user_id}}}"


def pending_key(prefix: str, inbox: str) -> str:
    """A device inbox's waiting-item counts: field ``*`` (all), one field per sender."""
    return f"{prefix}:pending:{{{inbox}}}"


PENDING_ALL = "*"


def gateway_channel(prefix: str, gateway_id: str) -> str:
    return f"{prefix}:gw:{{{gateway_id}}}"


def presence_value(gateway_id: str, now_ms: int | None = None) -> str:
    return f"{gateway_id}|{now_ms if now_ms is not None else int(time.time() * 1000)}"


def live_gateways(entries: dict[bytes, bytes], ttl_s: float, now_ms: int | None = None) -> set[str]:
    """Gateways that host a live connection, from a presence hash."""
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    live = set()
    for value in entries.values():
        gw, _, ts = value.decode().partition("|")
        if ts.isdigit() and now - int(ts) <= ttl_s * 1000:
            live.add(gw)
    return live
