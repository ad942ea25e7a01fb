"""Mentions in private rooms: the consumer of ``<prefix>room-messages`` (docs/rooms.md).

A private room's message is sender-key ciphertext; its sender's client names
the users it mentions (``mentions`` of ``room_send``), and the gateway
produces one ``RoomEnvelope`` per message, keyed by the room. This consumer
(group ``<prefix>rooms-mentions``, apart from delivery's fan-out) makes a
notification for each mentioned user who is a member of the room and not the
sender, pointing at the room and the message's ``server_id``, with no text
(the server cannot read it). Unknown users and non-members are ignored, as a
public room's "@home" is.

Offsets are committed after a batch is processed; a batch that fails is
tried again (with back-off) from the same records, and a record that comes
back makes no second notification: the (user, server id) claim names the
notification it made (:func:`services.rooms.notifications.mentioned_private`).
A record that cannot be decoded is skipped (counted as ``malformed``).
"""

from __future__ import annotations

import asyncio
import logging

import msgspec
from aiokafka import ConsumerRecord
from parley_contract import envelopes as e

from services.common.clients import Topics, consume_forever
from services.common.config import Settings
from services.common.logging import request_id_from_kafka, request_id_var
from services.rooms import notifications
from services.rooms.rooms import PRIVATE, deleted
from services.rooms.state import Rooms

log = logging.getLogger(__name__)

BATCH_MAX = 200


class RoomMessages:
    def __init__(self, rooms: Rooms, settings: Settings) -> None:
        self.rooms = rooms
        self.settings = settings
        self.topic = Topics(settings).room_messages
        self.group = f"{settings.topic_prefix}rooms-mentions"
        self.running = asyncio.Event()

    def groups(self) -> dict[str, list[str]]:
        """The consumer group and its topic (its lag is sampled: services.common.consumer_lag)."""
        return {self.group: [self.topic]}

    async def handle(self, env: e.RoomEnvelope) -> int:
        """The notifications one message makes; how many were made now."""
        wanted = [u for u in dict.fromkeys(env.mentions) if u != env.from_]
        if not wanted:
            return 0
        store = self.rooms.store
        room = await store.get_room(env.room)
        if room is None or room["kind"] != PRIVATE or deleted(room):
            return 0
        members = await store.get_members(env.room, wanted)
        made = 0
        for user_id in wanted:
            if user_id in members:
                made += await notifications.mentioned_private(
                    self.rooms, room, env.server_id, env.from_, int(env.sent_at), user_id
                )
        return made

    async def process(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        metric = self.rooms.metrics.room_messages
        for r in records:
            try:
                env = e.decode_room_envelope(r.value or b"")
            except (msgspec.DecodeError, msgspec.ValidationError):
                log.warning("malformed room message skipped", extra={"offset": r.offset})
                metric.labels("malformed").inc()
                continue
            token = request_id_var.set(request_id_from_kafka(r.headers))
            try:
                made = await self.handle(env)
            finally:
                request_id_var.reset(token)
            metric.labels("notified" if made else "ignored").inc()

    async def run(self) -> None:
        """Consume for as long as the service runs; a failure restarts the consumer from
        the committed offsets (nothing is committed that was not processed)."""
        await consume_forever(
            self.settings, self.topic, self.group, self.process, self.running, BATCH_MAX
        )
