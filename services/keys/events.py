"""Events the key directory publishes on ``<topic_prefix>events`` (docs/keys.md, "Events").

Delivery is at least once: an event is written to the ``outbox`` collection
first, then produced to Kafka; the outbox entry is deleted only after Kafka's
ack. Entries that were not confirmed (broker down, process killed) are sent
again by :meth:`EventPublisher.run`, on any replica. Consumers treat both
events as idempotent notifications.

``prekeys_low``  {"type", "user_id", "device_id", "one_time", "kem_one_time", "threshold",
                 "event_id"}
``key_changed``  {"type", "user_id", "device_id", "identity": {...}, "event_id"}

``event_id`` is the same on every redelivery of one event, so a consumer
that must not act twice (storing a notice per contact) can deduplicate on it.

The record key is the user id (so one user's events keep their order within
a partition) and the ``request_id`` header carries the request that caused it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any

from services.common.logging import kafka_headers
from services.keys.config import KeysConfig
from services.keys.store import KeyStore, encode_event

log = logging.getLogger(__name__)

PREKEYS_LOW = "prekeys_low"
KEY_CHANGED = "key_changed"


def prekeys_low(
    user_id: str, device_id: int, one_time: int, kem_one_time: int, threshold: int
) -> dict[str, Any]:
    return {
        "type": PREKEYS_LOW,
        "user_id": user_id,
        "device_id": device_id,
        "one_time": one_time,
        "kem_one_time": kem_one_time,
        "threshold": threshold,
    }


def key_changed(user_id: str, device_id: int, identity: dict[str, str]) -> dict[str, Any]:
    return {"type": KEY_CHANGED, "user_id": user_id, "device_id": device_id, "identity": identity}


class EventPublisher:
    def __init__(self, store: KeyStore, config: KeysConfig) -> None:
        self.store = store
        self.config = config

    async def publish(self, event: dict[str, Any]) -> None:
        """Record the event, then try to send it now; the outbox retries if that fails."""
        key = str(event["user_id"])
        value = encode_event({**event, "event_id": secrets.token_hex(12)})
        headers = kafka_headers()
        # Leased from the start, so that the drain loop leaves it to us for now.
        entry = await self.store.outbox_add(
            key, value, headers, due=time.time() + self.config.outbox_lease_s
        )
        if await self.store.send_event(key, value, headers):
            await self.store.outbox_delete(entry)

    async def drain_once(self) -> int:
        """Send every due outbox entry once; returns how many were confirmed."""
        sent = 0
        while (entry := await self.store.outbox_lease(self.config.outbox_lease_s)) is not None:
            headers = [(str(k), str(v).encode()) for k, v in entry.get("headers", [])]
            if not await self.store.send_event(entry["key"], entry["value"].encode(), headers):
                break  # the broker is away: try again on the next round
            await self.store.outbox_delete(entry["_id"])
            sent += 1
        return sent

    async def run(self) -> None:
        """Drain the outbox for as long as the service runs."""
        while True:
            await asyncio.sleep(self.config.outbox_interval_s)
            try:
                sent = await self.drain_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("outbox drain failed", extra={"error": repr(exc)})
                continue
            if sent:
                log.info("outbox events sent", extra={"count": sent})
