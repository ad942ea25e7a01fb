"""A gateway pod: its local connections, its Redis channel, presence, and what
every socket asks of the pod.

The hub is the only part of a pod that knows which sockets it holds. It
listens on the pod's own channel (frames routed to its users by delivery
workers, forwarded still encoded) and on the revocation channel (logout,
block: close sockets at once), and it re-records presence periodically, which
also rebuilds presence after a Redis restart. Connections call the hub to
verify tokens, register, submit messages, sync and ack, and to count frames;
they never touch the store, the settings or the metrics themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec
from parley_contract import PROTOCOL_VERSION
from parley_contract import envelopes as e
from parley_contract import frames as f
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from redis.exceptions import RedisError

from services.common.auth import Claims, TokenVerifier, check_not_revoked, revocation_channel
from services.common.config import Settings
from services.common.errors import ApiError, ErrorCode
from services.gateway.directory import DeviceLists, Directory
from services.gateway.store import GatewayStore

if TYPE_CHECKING:
    from services.gateway.connection import Connection

log = logging.getLogger(__name__)


class DevicesChanged(ApiError):
    """A send's copies do not match the current device lists: nothing was produced."""

    def __init__(self, lists: list[f.DeviceList]) -> None:
        super().__init__(
            ErrorCode.DEVICES_CHANGED,
            "The device lists changed: encrypt for the current devices and send again.",
        )
        self.lists = lists

    def frame(self, answers: str | None = None) -> f.Error:
        return msgspec.structs.replace(super().frame(answers), devices=self.lists)


@dataclass(frozen=True)
class Limits:
    """What a socket may do (docs/protocol.md, "Limits")."""

    max_frame_bytes: int
    sends_per_s: float
    send_burst: int
    auth_timeout_s: float
    outbound_queue: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            max_frame_bytes=settings.ws_max_frame_bytes,
            sends_per_s=settings.ws_sends_per_s,
            send_burst=settings.ws_send_burst,
            auth_timeout_s=settings.ws_auth_timeout_s,
            outbound_queue=settings.ws_outbound_queue,
        )


class Hub:
    def __init__(
        self,
        store: GatewayStore,
        registry: CollectorRegistry,
        verifier: TokenVerifier,
        directory: Directory,
        devices: DeviceLists,
    ) -> None:
        self.store = store
        self.settings = store.settings
        self.verifier = verifier
        self.directory = directory
        self.devices = devices
        self.limits = Limits.from_settings(self.settings)
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
        self.capacity = Gauge(
            "parley_gateway_connection_capacity", "Open sockets this pod is sized for.",
            ["gateway"], registry=registry,
        )  # fmt: skip
        self.capacity.labels(gw).set(self.settings.ws_capacity)
        self.connects = Counter(
            "parley_gateway_connects_total", "WebSocket upgrades accepted.", registry=registry
        )
        self.disconnects = Counter(
            "parley_gateway_disconnects_total", "WebSockets closed, by close code.",
            ["code"], registry=registry,
        )  # fmt: skip
        self.connection_seconds = Histogram(
            "parley_gateway_connection_seconds", "How long WebSockets stayed open.",
            buckets=(1, 10, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 24 * 3600),
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
            conn.push(f.Reconnect(reason=reason))
        await asyncio.gather(
            *(conn.close(f.CLOSE_GOING_AWAY, reason) for conn in conns), return_exceptions=True
        )

    # What a socket asks of the pod ------------------------------------------
    async def verify(self, token: str) -> Claims:
        """A token's claims, checked against the JWKS and the revocations."""
        claims = await self.verifier.verify(token)
        await check_not_revoked(self.store.redis, self.settings.redis_prefix, claims)
        return claims

    def ready_frame(self, user_id: str, sid: str, answers: str | None, *, limits: bool) -> f.Ready:
        lim = self.limits
        return f.Ready(
            protocol=PROTOCOL_VERSION, user_id=user_id, session_id=sid,
            gateway=self.settings.gateway_id, id=answers,
            limits=f.Limits(max_frame_bytes=lim.max_frame_bytes, sends_per_s=lim.sends_per_s,
                            send_burst=lim.send_burst) if limits else None,
        )  # fmt: skip

    async def submit(
        self, user_id: str, device: int, sid: str, token: str, frame: f.Send
    ) -> tuple[str, str, list[asyncio.Future[object]]]:
        """Produce a client's message, one envelope per device copy; returns the server
        id, the conversation and the broker's ack futures.

        The recipient is routed by the id the directory returns (a username or
        another spelling of an id is never used as an inbox key). The copies
        must cover exactly the recipient's devices and the sender's other
        devices (docs/devices.md), or nothing is produced: ``devices_changed``
        with the current lists.
        """
        recipient = await self.directory.require_user(frame.to, token)
        if recipient == user_id:
            raise ApiError(ErrorCode.BAD_REQUEST, "Send to another user; your other devices "
                           "get their copies with every message you send.")  # fmt: skip
        await self._check_copies(user_id, device, recipient, token, frame)
        sent_at = e.now_ms()
        envs = [
            e.message_envelope(
                sender=user_id,
                sender_device=device,
                sender_sid=sid,
                peer=recipient,
                user=recipient if copy.user == frame.to else user_id,
                device=copy.device,
                client_id=frame.id,
                body=copy.body,
                commitment=copy.commitment,
                sent_at=sent_at,
            )
            for copy in frame.copies
        ]
        log.debug("message submitted", extra={"message_id": envs[0].server_id, "to": recipient})
        acks = [await self.store.enqueue(env) for env in envs]
        return envs[0].server_id, envs[0].conversation or "", acks

    async def _check_copies(
        self, user_id: str, device: int, recipient: str, token: str, frame: f.Send
    ) -> None:
        wanted: dict[str, set[int]] = {recipient: set(), user_id: set()}
        for copy in frame.copies:
            user = recipient if copy.user in (frame.to, recipient) else copy.user
            if user not in wanted:
                raise ApiError(
                    ErrorCode.VALIDATION_FAILED, "A copy is for the recipient or for yourself.",
                    details=[{"field": "copies.user", "problem": "not the recipient or you"}],
                )  # fmt: skip
            wanted[user].add(copy.device)
        for fresh in (False, True):
            lists = {
                recipient: await self.devices.get(recipient, token, fresh=fresh),
                user_id: await self.devices.get(user_id, token, fresh=fresh) - {device},
            }
            if wanted[recipient] == lists[recipient] and wanted[user_id] == lists[user_id]:
                return
        if not lists[recipient]:
            raise ApiError(ErrorCode.RECIPIENT_NOT_FOUND, "That user has no device yet.")
        raise DevicesChanged([f.DeviceList(user=u, devices=sorted(d)) for u, d in lists.items()])

    async def sync(self, token: str, after: int, limit: int) -> f.InboxPage:
        return await self.store.sync(token, after, min(limit, self.settings.sync_page_max))

    async def ack(self, token: str, seq: int) -> None:
        await self.store.ack(token, seq)

    def count_in(self, op: str) -> None:
        self.frames_in.labels(op).inc()

    def count_out(self, op: str) -> None:
        self.frames_out.labels(op).inc()

    def count_error(self, code: ErrorCode) -> None:
        self.errors.labels(code.value).inc()

    def count_disconnect(self, close_code: int | None, seconds: float) -> None:
        self.disconnects.labels(str(close_code or "none")).inc()
        self.connection_seconds.observe(seconds)

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
                        conn.push(f.Resync(reason="routing_restored"))
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
            routed = e.decode_routed(data)
        except e.DecodeError:
            log.warning("dropping a malformed routed frame")
            return
        frame = bytes(routed.frame)
        for conn in list(self.local(routed.to)):
            if routed.device is None or conn.device_id == routed.device:
                conn.push_encoded(routed.op, frame)

    async def _revoke(self, data: bytes) -> None:
        try:
            event = e.decode_revocation(data)
        except e.DecodeError:
            return
        if isinstance(event, e.DevicesChanged):
            self.devices.forget(event.user_id)
            return
        blocked = isinstance(event, e.UserBlocked)
        code = ErrorCode.ACCOUNT_BLOCKED if blocked else ErrorCode.TOKEN_REVOKED
        conns = self.local(event.user_id)
        if isinstance(event, e.SessionRevoked):
            targets = [c for c in conns if c.sid == event.sid]
        elif isinstance(event, e.DeviceRevoked):
            targets = [c for c in conns if c.device_id == event.device]
        else:
            targets = list(conns)
        for conn in targets:
            conn.push(ApiError(code).frame())
        await asyncio.gather(
            *(conn.close(f.CLOSE_REVOKED, code.value) for conn in targets), return_exceptions=True
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
