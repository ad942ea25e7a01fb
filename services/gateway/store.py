"""All of a gateway's I/O with Redis, Kafka and the delivery service."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import msgspec
import orjson
import redis.asyncio as aioredis
from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from parley_contract import envelopes as e
from parley_contract import frames as f

from services.common.clients import KafkaProducerHandle, Topics
from services.common.config import Settings
from services.common.errors import ApiError, ErrorCode
from services.common.http import ACK_TOKEN_MAX, ACKS_PER_CALL
from services.common.logging import kafka_headers, outgoing_headers
from services.common.routing import (
    PENDING_ALL,
    gateway_channel,
    pending_key,
    presence_key,
    presence_value,
    room_channel,
)


class GatewayStore:
    def __init__(
        self,
        settings: Settings,
        redis: aioredis.Redis,
        kafka: KafkaProducerHandle,
        http: aiohttp.ClientSession,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.kafka = kafka
        self.http = http
        self.prefix = settings.redis_prefix
        self.topic = Topics(settings).messages
        self.room_topic = Topics(settings).room_messages
        self.delivery = settings.delivery_url.rstrip("/")
        self.channel = gateway_channel(self.prefix, settings.gateway_id)
        self.room_channel = room_channel(self.prefix)
        self._acks: list[tuple[str, int, asyncio.Future[None]]] = []
        self._ack_calls: set[asyncio.Task[None]] = set()

    # Presence ---------------------------------------------------------------
    async def add_presence(self, user_id: str, conn_id: str) -> None:
        key = presence_key(self.prefix, user_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(key, conn_id, presence_value(self.settings.gateway_id))
            pipe.expire(key, self.settings.presence_ttl_s)
            await pipe.execute()

    async def remove_presence(self, user_id: str, conn_id: str) -> None:
        await self.redis.hdel(presence_key(self.prefix, user_id), conn_id)

    async def refresh_presence(self, conns: list[tuple[str, str]]) -> None:
        """Re-record every local connection (also rebuilds presence after a Redis restart)."""
        if not conns:
            return
        value = presence_value(self.settings.gateway_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            for user_id, conn_id in conns:
                key = presence_key(self.prefix, user_id)
                pipe.hset(key, conn_id, value)
                pipe.expire(key, self.settings.presence_ttl_s)
            await pipe.execute()

    async def pending_counts(self, inboxes: list[str], sender: str) -> list[tuple[int, int]]:
        """(all waiting items, items from ``sender``) in each device inbox, one round trip
        (the counts delivery keeps: services/delivery/store.py)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for inbox in inboxes:
                pipe.hmget(pending_key(self.prefix, inbox), [PENDING_ALL, sender])
            rows = await pipe.execute()
        return [(int(a or 0), int(b or 0)) for a, b in rows]

    # Kafka ------------------------------------------------------------------
    async def enqueue(self, envelope: e.MessageEnvelope) -> asyncio.Future[object]:
        """Hand an envelope to the producer, keyed by its recipient (the inbox owner).

        One partition per inbox means one delivery consumer writes each inbox,
        in order: a sender's messages to a recipient keep their order, and an
        inbox's sequence numbers are stored and pushed in increasing order,
        which cumulative acks rely on (docs/delivery.md).

        Returns the broker-ack future: callers await it off the frame loop, so
        the next frame is read while this one is in flight.
        """
        producer = self.kafka.get()
        if producer is None:
            raise ApiError(ErrorCode.UNAVAILABLE, "Messaging is temporarily unavailable.")
        try:
            ack: asyncio.Future[object] = await producer.send(
                self.topic,
                e.encode(envelope),
                key=envelope.inbox.encode(),
                headers=kafka_headers(),
            )
            return ack
        except KafkaError:
            raise ApiError(ErrorCode.UNAVAILABLE, "Messaging is temporarily unavailable.") from None

    async def enqueue_room(self, envelope: e.RoomEnvelope) -> asyncio.Future[object]:
        """Hand a private room's message to the producer: one record on
        ``room-messages``, keyed by the room (its messages keep one order)."""
        producer = self.kafka.get()
        if producer is None:
            raise ApiError(ErrorCode.UNAVAILABLE, "Messaging is temporarily unavailable.")
        try:
            ack: asyncio.Future[object] = await producer.send(
                self.room_topic, e.encode(envelope), key=envelope.room.encode(),
                headers=kafka_headers(),
            )  # fmt: skip
            return ack
        except MessageSizeTooLargeError:
            # Never a passing condition: answered as one (`service_unavailable` had
            # clients resend it for ever). The record carries every member device's
            # inbox: a room of thousands of members with many devices each, and a large
            # body, can pass the broker's largest record (docs/rooms.md, "Limits").
            too_large = (
                f"This message with its {len(envelope.targets)} device copies is larger "
                "than one record may be: send a shorter one."
            )
            raise ApiError(ErrorCode.PAYLOAD_TOO_LARGE, too_large) from None
        except KafkaError:
            raise ApiError(ErrorCode.UNAVAILABLE, "Messaging is temporarily unavailable.") from None

    # Delivery service (the inbox's owner) -----------------------------------
    async def _delivery(self, method: str, path: str, token: str | None, **kw: Any) -> bytes:
        headers = outgoing_headers()
        if token is not None:
            headers = {"Authorization": f"Bearer {token}", **headers}
        try:
            async with self.http.request(
                method, f"{self.delivery}{path}", headers=headers, **kw
            ) as resp:
                raw = await resp.read()
                if resp.status >= 400:
                    body = orjson.loads(raw)
                    err = body.get("error", {}) if isinstance(body, dict) else {}
                    raise _answered(str(err.get("code")), err.get("message"))
                return raw
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError):
            raise ApiError(ErrorCode.UNAVAILABLE, "The inbox is temporarily unavailable.") from None

    async def sync(self, token: str, after: int, limit: int) -> f.InboxPage:
        raw = await self._delivery(
            "GET", "/delivery/v1/inbox", token, params={"after": str(after), "limit": str(limit)}
        )
        try:
            return _page_decoder.decode(raw)
        except (msgspec.ValidationError, msgspec.DecodeError):
            raise ApiError(ErrorCode.UNAVAILABLE, "The inbox answered nonsense.") from None

    async def ack(self, token: str, seq: int) -> None:
        """Acknowledge the token's device inbox up to ``seq``; raises the ApiError delivery
        answered for it.

        Taken together with the pod's other sockets' acks: one ``POST
        /delivery/v1/inbox/acks`` carries every ack that came while the one
        before was in flight (each with its own token), instead of one call
        per socket (docs/delivery.md, "Acks").
        """
        if len(token) > ACK_TOKEN_MAX:
            await self._delivery("POST", "/delivery/v1/inbox/ack", token, json={"seq": seq})
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._acks.append((token, seq, done))
        self._send_acks()
        await done

    def _send_acks(self) -> None:
        """Start calls for the acks that wait, up to ``ACK_CALLS`` in flight."""
        while self._acks and len(self._ack_calls) < ACK_CALLS:
            call = asyncio.create_task(self._ack_call(self._next_acks()))
            self._ack_calls.add(call)
            call.add_done_callback(self._ack_call_done)

    def _ack_call_done(self, call: asyncio.Task[None]) -> None:
        self._ack_calls.discard(call)
        self._send_acks()

    def _next_acks(self) -> list[tuple[str, int, asyncio.Future[None]]]:
        """The acks of the next call: as many as fit well inside delivery's body limit
        (each carries its token, about 700 bytes), at least one."""
        budget, size = self.settings.max_body_bytes * 3 // 4, 0
        for n, (token, _, _) in enumerate(self._acks):
            size += len(token) + 40
            if n and (size > budget or n >= ACKS_PER_CALL):
                break
        else:
            n = len(self._acks)
        batch, self._acks = self._acks[:n], self._acks[n:]
        return batch

    async def _ack_call(self, batch: list[tuple[str, int, asyncio.Future[None]]]) -> None:
        try:
            acks = [{"token": token, "seq": seq} for token, seq, _ in batch]
            raw = await self._delivery("POST", "/delivery/v1/inbox/acks", None,
                                       json={"acks": acks})  # fmt: skip
            results = _acks_decoder.decode(raw).results
            if len(results) != len(batch):
                raise ApiError(ErrorCode.UNAVAILABLE, "The inbox answered nonsense.")
        except BaseException as exc:
            # Whatever went wrong, no socket waits for ever for its ack's answer.
            err = exc if isinstance(exc, ApiError) else ApiError(ErrorCode.UNAVAILABLE)
            for _, _, done in batch:
                if not done.done():
                    done.set_exception(err)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for (_, _, done), result in zip(batch, results, strict=True):
            if done.done():
                continue  # its socket stopped waiting
            if result.error is None:
                done.set_result(None)
            else:
                done.set_exception(_answered(result.error.code, result.error.message))


ACK_CALLS = 8
"""Ack calls a pod keeps in flight: a pod of 500 sockets acknowledging every 0.25 s
needs about 80 calls a second, which one call at a time would queue."""


class _AckError(msgspec.Struct):
    code: str
    message: str


class _AckResult(msgspec.Struct):
    acked: int | None = None
    error: _AckError | None = None


class _AcksOut(msgspec.Struct):
    results: list[_AckResult]


def _answered(code: str, message: str | None) -> ApiError:
    """The ApiError for an error delivery answered (an unknown code: ``unavailable``)."""
    try:
        return ApiError(ErrorCode(code), message)
    except ValueError:
        return ApiError(ErrorCode.UNAVAILABLE, message)


_acks_decoder = msgspec.json.Decoder(_AcksOut)


_page_decoder = msgspec.json.Decoder(f.InboxPage)
