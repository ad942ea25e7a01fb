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
A ``device_removed`` event's is derived from the removal (:func:`device_removed`),
so that two processes finishing the same removal publish the same id.

The record key is the user id (so one user's events keep their order within
a partition) and the ``request_id`` header carries the request that caused it.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any

import msgspec
from bson import ObjectId
from parley_contract import envelopes as e

from services.common.logging import kafka_headers
from services.common.outbox import drain_forever, entry_headers
from services.keys.config import KeysConfig
from services.keys.store import KeyStore

Doc = dict[str, Any]


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


def device_removed(user_id: str, device_id: int, generation: int) -> e.DeviceRemovedEvent:
    """The removal of ``device_id`` dropped by the account write that made ``generation``.

    Its ``event_id`` comes from the removal itself (user, device, that generation), not
    from chance: every process that finishes the same removal (its writer, a later
    write that carried it on, a reader finishing it) publishes the same id, so
    consumers can drop the copies; another removal of the same id (registered again
    once its revocation ran out) is a later write, so another id."""
    digest = hashlib.sha256(
        f"device_removed\0{len(user_id)}:{user_id}\0{device_id}\0{generation}".encode()
    )
    return e.DeviceRemovedEvent(
        user_id=user_id, device_id=device_id, event_id=digest.hexdigest()[:24]
    )


@dataclass(frozen=True, slots=True)
class Held:
    """An event recorded before its change (:meth:`EventPublisher.hold`)."""

    entry: ObjectId
    key: str
    value: bytes
    headers: list[tuple[str, bytes]]


class EventPublisher:
    def __init__(self, store: KeyStore, config: KeysConfig) -> None:
        self.store = store
        self.config = config

    async def publish(self, event: e.Event) -> None:
        """Record the event (with a fresh ``event_id`` unless it has its own), then try
        to send it now."""
        with_id = event
        if event.event_id is None:
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

    async def hold(self, event: e.Event, check: Doc) -> Held:
        """Record the event *before* the change it announces, leased (see
        :meth:`publish`), with ``check``: a query on ``accounts`` that matches once the
        change is made. If the process dies before :meth:`release`, the drain sends
        it only if the check holds (else the change never committed, or a later one,
        which has its own event, replaced it: the entry is dropped)."""
        with_id = msgspec.structs.replace(event, event_id=secrets.token_hex(12))
        value = e.encode(with_id)
        headers = kafka_headers()
        entry = await self.store.outbox.add(
            event.user_id, value, headers, due=time.time() + self.config.outbox_lease_s,
            check=check,
        )  # fmt: skip
        return Held(entry, event.user_id, value, headers)

    async def release(self, held: Held) -> None:
        """The change is made: send now (the outbox retries if this fails)."""
        if await self.store.send_event(held.key, held.value, held.headers):
            await self.store.outbox.delete(held.entry)

    async def drop(self, held: Held) -> None:
        """The change was not made after all: forget the event."""
        await self.store.outbox.delete(held.entry)

    async def drain_once(self) -> int:
        """Send every due outbox entry once; returns how many were confirmed."""
        sent = 0
        while (entry := await self.store.outbox.lease(self.config.outbox_lease_s)) is not None:
            check = entry.get("check")
            if check and await self.store.accounts.find_one(check, {"_id": 1}) is None:
                await self.store.outbox.delete(entry["_id"])  # the change never committed
                continue
            headers = entry_headers(entry)
            if not await self.store.send_event(entry["key"], entry["value"].encode(), headers):
                break  # the broker is away: try again on the next round
            await self.store.outbox.delete(entry["_id"])
            sent += 1
        return sent

    async def run(self) -> None:
        """Drain the outbox for as long as the service runs."""
        await drain_forever(self.drain_once, self.config.outbox_interval_s)
