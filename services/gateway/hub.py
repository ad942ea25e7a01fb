"""A gateway pod's local connections, its Redis channel and presence upkeep.

The hub is the only part of a pod that knows which sockets it holds. It
listens on the pod's own channel (frames routed to its users by delivery
workers) and on the revocation channel (logout, block: close sockets at once),
and it re-records presence periodically, which also rebuilds presence after a
Redis restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge
from redis.exceptions import RedisError

from services.common.auth import revocation_channel
from services.common.errors import ApiError, ErrorCode
from services.gateway.protocol import CLOSE_GOING_AWAY, CLOSE_REVOKED
from services.gateway.store import GatewayStore

if TYPE_CHECKING:
    from services.gateway.connection import Connection

log = logging.getLogger(__name__)


class Hub:
    def __init__(self, store: GatewayStore, registry: CollectorRegistry) -> None:
        self.store = store
        self.settings = store.settings
        self.by_user: dict[str, set[Connection]] = defaultdict(set)
        self.draining = False
        self._tasks: list[asyncio.Task[None]] = []
        self.subscribed = asyncio.Event()
        gw = self.settings.gateway_id
        self.connections = Gauge(
            "parley_gateway_connections", "Open authenticated WebSockets on this pod.",
            ["gateway"], registry=registry,
        )  # fmt: skip
        self.connections.labels(gw).set_function(lambda: sum(len(s) for s in self.by_user.values()))
        self.frames_in = Counter(
            "parley_gateway_frames_in_total", "Frames received, by op.", ["op"], registry=registry
        )
        self.frames_out = Counter(
            "parley_gateway_frames_out_total", "Frames sent, by op.", ["op"], registry=registry
        )
        self.errors = Counter(
            "parley_gateway_errors_total",
            "Error frames sent, by code.",
            ["code"],
            registry=registry,
        )
        self.routed = Counter(
            "parley_gateway_routed_total", "Frames received on the pod's Redis channel.",
            registry=registry,
        )  # fmt: skip

    # Lifecycle --------------------------------------------------------------
    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._listen(), name="hub-listen"),
            asyncio.create_task(self._refresh_loop(), name="hub-refresh"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def drain(self) -> None:
        """SIGTERM: tell every client to reconnect (to another pod) and close.

        Each socket's handler then ends and unregisters it (presence removed)
        before aiohttp runs the cleanup that closes Redis.
        """
        self.draining = True
        conns = [c for s in self.by_user.values() for c in s]
        reason = ErrorCode.SERVER_SHUTTING_DOWN.value
        for conn in conns:
            conn.push({"op": "reconnect", "reason": reason})
        await asyncio.gather(
            *(conn.close(CLOSE_GOING_AWAY, reason) for conn in conns), return_exceptions=True
        )

    # Connections ------------------------------------------------------------
    async def register(self, conn: Connection) -> None:
        assert conn.user_id is not None
        self.by_user[conn.user_id].add(conn)
        await self.store.add_presence(conn.user_id, conn.conn_id)

    async def unregister(self, conn: Connection) -> None:
        if conn.user_id is None:
            return
        conns = self.by_user.get(conn.user_id)
        if conns is not None:
            conns.discard(conn)
            if not conns:
                del self.by_user[conn.user_id]
        with contextlib.suppress(RedisError, OSError):
            await self.store.remove_presence(conn.user_id, conn.conn_id)

    def local(self, user_id: str) -> set[Connection]:
        return self.by_user.get(user_id, set())

    # Redis channel ----------------------------------------------------------
    async def _listen(self) -> None:
        channel = self.store.channel.encode()
        revocations = revocation_channel(self.settings.redis_prefix).encode()
        delay = 0.1
        lost = False
        while True:
            pubsub = self.store.redis.pubsub()
            try:
                await pubsub.subscribe(channel, revocations)
                # Re-record presence at once: after a Redis restart it is empty.
                await self._refresh()
                self.subscribed.set()
                if lost:
                    # Frames routed here while the channel was down are gone:
                    # every client pages through its inbox again.
                    lost = False
                    for conn in [c for s in self.by_user.values() for c in s]:
                        conn.push({"op": "resync", "reason": "routing_restored"})
                delay = 0.1
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if msg is None:
                        continue
                    if msg["channel"] == channel:
                        self._route(msg["data"])
                    elif msg["channel"] == revocations:
                        await self._revoke(msg["data"])
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                self.subscribed.clear()
                lost = True
                log.warning("redis channel lost; resubscribing", extra={"error": repr(exc)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _route(self, data: bytes) -> None:
        self.routed.inc()
        try:
            routed = orjson.loads(data)
            user_id, frame = routed["to"], routed["frame"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("dropping a malformed routed frame")
            return
        for conn in list(self.local(user_id)):
            conn.push(frame)

    async def _revoke(self, data: bytes) -> None:
        try:
            event: dict[str, Any] = orjson.loads(data)
            user_id = event["user_id"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return
        sid = event.get("sid")
        blocked = event.get("type") == "user_blocked"
        code = ErrorCode.ACCOUNT_BLOCKED if blocked else ErrorCode.TOKEN_REVOKED
        targets = [c for c in self.local(user_id) if blocked or sid is None or c.sid == sid]
        for conn in targets:
            conn.push(ApiError(code).frame())
        await asyncio.gather(
            *(conn.close(CLOSE_REVOKED, code.value) for conn in targets), return_exceptions=True
        )

    # Presence upkeep --------------------------------------------------------
    async def _refresh(self) -> None:
        conns = [(c.user_id, c.conn_id) for s in self.by_user.values() for c in s if c.user_id]
        await self.store.refresh_presence(conns)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.presence_refresh_s)
            try:
                await self._refresh()
            except (RedisError, OSError) as exc:
                log.warning("presence refresh failed", extra={"error": repr(exc)})
