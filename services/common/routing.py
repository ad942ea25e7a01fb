"""What gateways and delivery workers share: Redis names for presence and routing,
and the envelope that travels on Kafka.

Redis (every key carries the user id or gateway id inside ``{}`` so that Redis
Cluster keeps one user's keys on one shard):

- ``<p>:presence:{<user>}``: hash, connection id -> ``<gateway id>|<unix ms>``,
  refreshed by the hosting gateway; entries older than the presence TTL are stale.
- ``<p>:gw:{<gateway id>}``: the pub/sub channel of one gateway pod; messages
  are ``{"to": user_id, "frame": {...}}`` (or ``"conn"`` for one connection).

Kafka topic ``<topic prefix>messages``, keyed by the recipient (the inbox
owner), value: the envelope (JSON) made by :func:`envelope` — or, for a
``key_changed`` notice, by :func:`notice_envelope`.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

ENVELOPE_VERSION = 1


def presence_key(prefix: str, user_id: str) -> str:
    return f"{prefix}:presence:{{{user_id}}}"


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


def conversation_id(a: str, b: str) -> str:
    """A 1:1 conversation's id: the same for both sides."""
    lo, hi = sorted((a, b))
    return f"dm:{lo}:{hi}"


def new_server_id() -> str:
    """Time-ordered unique id: 12 hex digits of ms since epoch + 16 random hex digits."""
    return f"{int(time.time() * 1000):012x}{secrets.token_hex(8)}"


def envelope(
    *,
    server_id: str,
    sender: str,
    sender_sid: str,
    recipient: str,
    client_id: str,
    body: str,
    commitment: str | None,
) -> dict[str, Any]:
    return {
        "v": ENVELOPE_VERSION,
        "kind": "message",
        "server_id": server_id,
        "conversation": conversation_id(sender, recipient),
        "from": sender,
        "from_sid": sender_sid,
        "to": recipient,
        "client_id": client_id,
        "body": body,
        "commitment": commitment,
        "sent_at": int(time.time() * 1000),
    }


def notice_envelope(
    *, sender: str, recipient: str, client_id: str, device_id: Any, identity: Any
) -> dict[str, Any]:
    """A ``key_changed`` notice for one contact's inbox, written by that inbox's consumer."""
    return {
        "v": ENVELOPE_VERSION,
        "kind": "key_changed",
        "server_id": new_server_id(),
        "conversation": None,
        "from": sender,
        "to": recipient,
        "client_id": client_id,
        "device_id": device_id,
        "identity": identity,
        "sent_at": int(time.time() * 1000),
    }
