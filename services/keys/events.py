"""Events the key directory publishes on ``<topic_prefix>events`` (docs/keys.md, "Events").

Each is a contract model (``parley_contract.envelopes``: ``Event``):

``prekeys_low``     {"type", "user_id", "device_id", "one_time", "kem_one_time", "threshold",
                    "event_id"}: a device should upload prekeys.
``key_changed``     {"type", "user_id", "account_key", "event_id"}: the user registered
                    a different account identity key (a reset: every device was lost).
``device_removed``  {"type", "user_id", "device_id", "event_id"}: a device left the
                    account's device list (delivery drops its inbox).

Delivery is at least once: an event is written to the ``outbox`` collection
first, then produced to Kafka; the outbox entry is deleted only after Kafka's
ack. Entries that were not confirmed (broker down, process killed) are sent
again by :meth:`EventPublisher.run`, on any replica. Consumers treat every
event as an idempotent notification.

``event_id`` is the same on every redelivery of one event, so a consumer
that must not act twice (storing a notice per contact) can deduplicate on it.

The record key is the user id (so one user's events keep their order within
a partition) and the ``request_id`` header carries the request that caused it.
"""

from __future__ import annotations

import secrets
import time

import msgspec
from parley_contract import envelopes as e

from services.common.logging import kafka_headers
from services.common.outbox import drain_forever, entry_headers
from services.keys.config import KeysConfig
from services.keys.store import KeyStore


def prekeys_low(
    user_id: str, device_id: int, one_time: int, kem_one_time: int, threshold: int
) -> e.PrekeysLowEvent:
    return e.PrekeysLowEvent(
        user_id=user_id,
        device_id=device_id,
        one_time=one_time,
        kem_one_time=kem_one_time,
        threshold=threshold,
    )


def key_changed(user_id: str, account_key: str) -> e.KeyChangedEvent:
    return e.KeyChangedEvent(user_id=user_id, account_key=account_key)


def device_removed(user_id: str, device_id: int) -> e.DeviceRemovedEvent:
    return e.DeviceRemovedEvent(user_id=user_id, device_id=device_id)


class EventPublisher:
    def __init__(self, store: KeyStore, config: KeysConfig) -> None:
        self.store = store
        self.config = config

    async def publish(self, event: e.Event) -> None:
        """Record the event (with a fresh ``event_id``), then try to send it now."""
        with_id = msgspec.structs.replace(event, event_id=secrets.token_hex(12))
        await self.publish_encoded(event.user_id, e.encode(with_id))

    async def publish_encoded(self, key: str, value: bytes) -> None:
        """Record an encoded event, then try to send it now; the outbox retries if that fails."""
        headers = kafka_headers()
        # Leased from the start, so that the drain loop leaves it to us for now.
        entry = await self.store.outbox.add(
            key, value, headers, due=time.time() + self.config.outbox_lease_s
        )
        if await self.store.send_event(key, value, headers):
            await self.store.outbox.delete(entry)

    async def drain_once(self) -> int:
        """Send every due outbox entry once; returns how many were confirmed."""
        sent = 0
        while (entry := await self.store.outbox.lease(self.config.outbox_lease_s)) is not None:
            headers = entry_headers(entry)
            if not await self.store.send_event(entry["key"], entry["value"].encode(), headers):
                break  # the broker is away: try again on the next round
            await self.store.outbox.delete(entry["_id"])
            sent += 1
        return sent

    async def run(self) -> None:
        """Drain the outbox for as long as the service runs."""
        await drain_forever(self.drain_once, self.config.outbox_interval_s)
