"""Events the rooms service publishes on ``<topic_prefix>rooms`` (docs/rooms.md, "Events"),
and mention notices on ``<topic_prefix>notifications`` (the same outbox).

Each is a contract model (``parley_contract.envelopes.RoomEvent``), keyed by
the room id so that one room's events keep their order in a partition, with
the room's ``version`` after the change and an ``event_id`` that every
redelivery repeats.

Produced at least once, and never for a change that did not happen:

1. :meth:`EventPublisher.hold` writes the event to the ``outbox`` collection
   *before* the write that makes the change (held: due only after the lease),
   with a ``check``: a query that matches (or must not match) once the change
   is made;
2. the change is written;
3. :meth:`EventPublisher.release` produces it to Kafka and deletes the entry
   after the broker's ack (:meth:`EventPublisher.drop` deletes it if the
   change turned out not to be needed, e.g. a join that raced another).

If the process dies between 1 and 3, or Kafka is away, the outbox loop of any
replica finds the entry once its lease ends, runs its ``check``, and sends it
if the change is there, or deletes it if the change never committed. A
check that no longer holds because a later change undid this one (a member
who left and joined again) drops the stale event: the later event, with a
higher ``version``, says how things are.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

import msgspec
from bson import ObjectId
from parley_contract import envelopes as e
from parley_contract.envelopes import MentionNotice
from parley_contract.envelopes import encode as encode_notice
from redis.exceptions import RedisError

from services.common.logging import kafka_headers
from services.common.outbox import drain_forever, entry_headers
from services.common.room_gate import RoomGate
from services.rooms.config import RoomsConfig
from services.rooms.metrics import RoomsMetrics
from services.rooms.store import RoomStore

log = logging.getLogger(__name__)

# The type of a held mention notice (``<prefix>notifications``), beside the room events'.
NOTICE = "mention_notice"


@dataclass(frozen=True, slots=True)
class Check:
    """Holds once the change is made: a document of ``coll`` matches ``query`` (or,
    with ``exists=False``, none does)."""

    coll: str
    query: dict[str, Any]
    exists: bool = True

    def doc(self) -> dict[str, Any]:
        return {"coll": self.coll, "query": self.query, "exists": self.exists}


@dataclass(frozen=True, slots=True)
class Held:
    entry: ObjectId
    key: str
    value: bytes
    headers: list[tuple[str, bytes]]
    type: str
    topic: str | None = None  # <prefix>rooms


class EventPublisher:
    def __init__(
        self, store: RoomStore, config: RoomsConfig, metrics: RoomsMetrics,
        gate: RoomGate | None = None,
    ) -> None:  # fmt: skip
        self.store = store
        self.config = config
        self.metrics = metrics
        self.gate = gate

    async def _bump(self, room_id: str) -> None:
        """The room's send gate moves on (services/common/room_gate.py): after the change,
        before its answer and its event. Redis away: logged; the gateways' kept copies
        then last at most their own time limit (``ROOM_KEPT_S``)."""
        if self.gate is None:
            return
        try:
            await self.gate.bump(room_id)
        except (RedisError, OSError) as exc:
            log.warning("room gate not moved", extra={"room_id": room_id, "error": repr(exc)})

    async def hold(self, event: e.RoomEvent, check: Check) -> Held:
        """Record the event before the change it announces (see the module doc)."""
        with_id = msgspec.structs.replace(event, event_id=secrets.token_hex(12))
        value = e.encode(with_id)
        headers = kafka_headers()
        entry = await self.store.outbox.add(
            event.room_id, value, headers, due=time.time() + self.config.outbox_lease_s,
            check=check.doc(), topic=self.store.topic,
        )  # fmt: skip
        kind = str(type(event).__struct_config__.tag)
        return Held(entry, event.room_id, value, headers, kind)

    async def hold_notice(self, notice: MentionNotice, check: Check) -> Held:
        """The same for a mention notice on ``<prefix>notifications`` (key: the user),
        held before the notification it announces is written."""
        value = encode_notice(notice)
        headers = kafka_headers()
        entry = await self.store.outbox.add(
            notice.user, value, headers, due=time.time() + self.config.outbox_lease_s,
            check=check.doc(), topic=self.store.notices_topic,
        )  # fmt: skip
        return Held(entry, notice.user, value, headers, NOTICE, self.store.notices_topic)

    async def release(self, held: Held) -> None:
        """The change is made: send now (the outbox retries if this fails)."""
        if held.type != NOTICE:
            self.metrics.changes.labels(held.type).inc()
            await self._bump(held.key)
        if await self.store.send_event(held.key, held.value, held.headers, held.topic):
            await self.store.outbox.delete(held.entry)
            self.metrics.outbox.labels("direct").inc()

    async def drop(self, held: Held) -> None:
        """The change was not made after all: forget the event."""
        await self.store.outbox.delete(held.entry)

    async def drain_once(self) -> int:
        """Send (or drop) every due outbox entry once; returns how many were sent."""
        sent = 0
        while (entry := await self.store.outbox.lease(self.config.outbox_lease_s)) is not None:
            check = entry.get("check") or {}
            if check and not await self.store.check(
                str(check["coll"]), dict(check["query"]), bool(check["exists"])
            ):
                await self.store.outbox.delete(entry["_id"])
                self.metrics.outbox.labels("dropped").inc()
                continue
            headers = entry_headers(entry)
            topic = entry.get("topic")
            if topic != self.store.notices_topic:
                await self._bump(str(entry["key"]))  # a change made, its answer maybe not
            if not await self.store.send_event(
                entry["key"], entry["value"].encode(), headers, topic
            ):
                break  # the broker is away: try again on the next round
            await self.store.outbox.delete(entry["_id"])
            self.metrics.outbox.labels("retry").inc()
            sent += 1
        return sent

    async def run(self) -> None:
        """Drain the outbox for as long as the service runs."""
        await drain_forever(self.drain_once, self.config.outbox_interval_s)
