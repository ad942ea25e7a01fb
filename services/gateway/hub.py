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
import time
from collections import OrderedDict, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from parley_contract import PROTOCOL_VERSION
from parley_contract import envelopes as e
from parley_contract import frames as f
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from services.common import routing
from services.common.auth import (
    Claims,
    TokenVerifier,
    check_not_revoked,
    revocation_channel,
    revocation_errors,
    token_kid,
)
from services.common.config import Settings
from services.common.devices import DeviceLists
from services.common.errors import ApiError, DevicesChanged, ErrorCode
from services.common.ratelimit import TokenBucket
from services.common.tasks import cancel_all
from services.gateway.acks import DirectAcks
from services.gateway.connection import TypingTooSoon
from services.gateway.deadlines import Deadlines
from services.gateway.directory import Directory
from services.gateway.heartbeat import Heartbeat
from services.gateway.rooms import RoomMembers
from services.gateway.store import GatewayStore

if TYPE_CHECKING:
    from services.gateway.connection import Connection

log = logging.getLogger(__name__)

ROOMY_MAX = 100_000
# Users whose last revocation the pod remembers (Hub.revoked_since), and how many times
# a token is checked while its user's revocations keep coming before ``unavailable``.
REVOKED_KEPT = 10_000
VERIFY_TRIES = 3
# Typing devices remembered before the stale ones are dropped.
TYPING_KEPT = 100_000
TYPING_PER_S, TYPING_BURST = 2.0, 20
"""A user's ``typing`` frames on a pod, over all rooms (refused: ``rate_limited``, a
violation toward close 4009): each notice goes to every member's sockets, and one
to a room id that does not exist costs the rooms service a read."""


ROOM_BUSY_S = 1.0
"""Big rooms are busy on a pod while their frames come less than this apart: then
each waits ``ws_room_write_delay_ms`` on a socket for the next ones (a delivery batch
of room messages comes at once, and the next a batch's time later)."""


@dataclass(frozen=True)
class Limits:
    """What a socket may do (docs/protocol.md, "Limits")."""

    max_frame_bytes: int
    max_message_bytes: int
    """What aiohttp reads of one message before it closes the socket (1009): 4x the
    frame limit, up to which a socket is answered ``frame_too_large``. One int for
    the pod, not one made per socket."""
    sends_per_s: float
    send_burst: int
    auth_timeout_s: float
    outbound_queue: int
    outbound_queue_bytes: int
    sockets_per_user: int
    sockets_per_address: int
    room_write_delay_s: float
    room_coalesce_users: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            max_frame_bytes=settings.ws_max_frame_bytes,
            max_message_bytes=4 * settings.ws_max_frame_bytes,
            sends_per_s=settings.ws_sends_per_s,
            send_burst=settings.ws_send_burst,
            auth_timeout_s=settings.ws_auth_timeout_s,
            outbound_queue=settings.ws_outbound_queue,
            outbound_queue_bytes=settings.ws_outbound_queue_bytes,
            sockets_per_user=settings.ws_max_sockets_per_user,
            sockets_per_address=settings.ws_max_sockets_per_address,
            room_write_delay_s=settings.ws_room_write_delay_ms / 1000,
            room_coalesce_users=settings.ws_room_coalesce_users,
        )


class Hub:
    def __init__(
        self,
        store: GatewayStore,
        registry: CollectorRegistry,
        verifier: TokenVerifier,
        directory: Directory,
        devices: DeviceLists,
        rooms: RoomMembers,
    ) -> None:
        self.store = store
        self.rooms = rooms
        self.settings = store.settings
        self.verifier = verifier
        self.directory = directory
        self.devices = devices
        self.limits = Limits.from_settings(self.settings)
        self.acks = (
            DirectAcks(store.redis, store.prefix, self.settings.presence_ttl_s, registry)
            if self.settings.ws_direct_acks
            else None
        )
        # A tuple per user, not a set: most users have one socket on a pod (a tuple of
        # one is 48 bytes, an empty set 216), and a user has few (``sockets_per_user``).
        self.by_user: dict[str, tuple[Connection, ...]] = {}
        self.by_address: dict[str, int] = defaultdict(int)
        # One send bucket per user on this pod, shared by all their sockets
        # (dropped with the user's last socket).
        self.buckets: dict[str, TokenBucket] = {}
        self.typing_buckets: dict[str, TokenBucket] = {}
        self.draining = False
        self.revocations = 0
        """Revocations (and dropped keys) this pod acted on: a socket whose token was
        checked before one of its user's and listed after it checks again
        (:meth:`revoked_since`), since the revocation looked for it while unlisted."""
        # User -> ``revocations`` at their last revocation, the latest REVOKED_KEPT;
        # and ``revocations`` when a signing key was last dropped (every user's).
        self._revoked_at: OrderedDict[str, int] = OrderedDict()
        self._keys_dropped_at = 0
        # (inbox, sender) -> until when it is known to be far from the caps.
        self._roomy: dict[tuple[str, str], float] = {}
        # (user, device, room) -> when it last said it is typing there (monotonic).
        self._typing: dict[tuple[str, int, str], tuple[float, bool]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        # When each socket's token expires: one timer for the pod, not one per socket.
        self._expiries: Deadlines[Connection] = Deadlines(lambda conn: conn.expired())
        # Pings for silent sockets, on one schedule for the pod (not aiohttp's per socket).
        # It looks at every socket at least once per interval: a socket joins the expiry
        # schedule only once its token ends before the next look (``track_expiry``).
        self.heartbeat: Heartbeat[Connection] = Heartbeat(
            self.settings.ws_heartbeat_s, visit=self.track_expiry
        )
        self._expiry_horizon = self.heartbeat.longest_gap + 2.0
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
        self._in_by_op: dict[str, Counter] = {}
        self._out_by_op: dict[str, Counter] = {}
        self.errors = Counter(
            "parley_gateway_errors_total",
            "Error frames sent, by code.",
            ["code"],
            registry=registry,
        )
        self.routed = Counter(
            "parley_gateway_routed_total", "Messages received on the pod's Redis channels.",
            registry=registry,
        )  # fmt: skip
        self.capacity = Gauge(
            "parley_gateway_connection_capacity", "Open sockets this pod is sized for.",
            ["gateway"], registry=registry,
        )  # fmt: skip
        self.capacity.labels(gw).set(self.settings.ws_capacity)
        # No load balancer acts on readiness (docs/gateway.md, "HTTP endpoints"): a pod
        # off its Redis channel stays in rotation and pushes nothing routed to it. This
        # is what the alert on it reads (ParleyGatewayChannelLost).
        self.channel_up = Gauge(
            "parley_gateway_channel_subscribed",
            "1 while the pod is subscribed to its Redis channels (what is routed to it "
            "arrives), else 0.",
            ["gateway"], registry=registry,
        )  # fmt: skip
        self.channel_up.labels(gw).set_function(lambda: 1.0 if self.subscribed.is_set() else 0.0)
        self.connects = Counter(
            "parley_gateway_connects_total", "WebSocket upgrades accepted.", registry=registry
        )
        self.disconnects = Counter(
            "parley_gateway_disconnects_total", "WebSockets closed, by close code.",
            ["code"], registry=registry,
        )  # fmt: skip
        # Socket writes and the frames they carried (plain ints: a counter's lock per
        # write showed up), exported by :class:`_Writes`.
        self.socket_writes = 0
        self.frames_written = 0
        self._last_room_push = 0.0  # when a big room's frame last came (time.monotonic)
        registry.register(_Writes(self))
        self.connection_seconds = Histogram(
            "parley_gateway_connection_seconds", "How long WebSockets stayed open.",
            buckets=(1, 10, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 24 * 3600),
            registry=registry,
        )  # fmt: skip

    # Lifecycle --------------------------------------------------------------
    async def start(self) -> None:
        self.verifier.on_dropped.append(self._close_signed_by)
        self._tasks = [
            asyncio.create_task(self._listen(), name="hub-listen"),
            asyncio.create_task(self._refresh_loop(), name="hub-refresh"),
        ]

    async def stop(self) -> None:
        with contextlib.suppress(ValueError):
            self.verifier.on_dropped.remove(self._close_signed_by)
        await cancel_all(self._tasks)
        self._expiries.close()
        self.heartbeat.close()

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
    async def verify(self, token: str, since: int | None = None) -> Claims:
        """A token's claims, checked against the JWKS and the revocations, and checked
        again while a revocation (or a dropped key) came during the check: it looked
        for the socket by its session, which was not this token's yet (a re-``auth``)
        or not listed (``since``: the count of revocations when the caller began, for
        :meth:`register`)."""
        seen = self.revocations if since is None else since
        for _ in range(VERIFY_TRIES):
            claims = await self.verifier.verify(token, remember=False)
            await check_not_revoked(self.store.redis, self.settings.redis_prefix, claims)
            if not self.revoked_since(claims.sub, seen):
                return claims
            seen = self.revocations
        # The user's sessions keep being revoked (a logout of every device, a block):
        # asked again, not let in on a check a revocation may have passed by.
        raise ApiError(ErrorCode.UNAVAILABLE, "Sessions are being revoked; try again.")

    def revoked_since(self, user_id: str, seen: int) -> bool:
        """Whether a revocation of ``user_id`` (or a dropped signing key) reached this
        pod since :attr:`revocations` was ``seen``. Per user: a burst of revocations of
        others (an OpenID client's deletion revokes thousands) would otherwise make every
        socket authenticating meanwhile check again, and again."""
        now = self.revocations
        if now == seen:
            return False
        if now - seen > REVOKED_KEPT or self._keys_dropped_at > seen:
            return True  # some revoked since may be forgotten, or a key went
        return self._revoked_at.get(user_id, 0) > seen

    def _note_revoked(self, user_id: str) -> None:
        self.revocations += 1
        self._revoked_at[user_id] = self.revocations
        self._revoked_at.move_to_end(user_id)
        if len(self._revoked_at) > REVOKED_KEPT:
            self._revoked_at.popitem(last=False)

    def ready_frame(self, user_id: str, sid: str, answers: str | None, *, limits: bool) -> f.Ready:
        lim = self.limits
        return f.Ready(
            protocol=PROTOCOL_VERSION, user_id=user_id, session_id=sid,
            gateway=self.settings.gateway_id, id=answers,
            limits=f.Limits(max_frame_bytes=lim.max_frame_bytes, sends_per_s=lim.sends_per_s,
                            send_burst=lim.send_burst) if limits else None,
        )  # fmt: skip

    async def prepare_send(
        self, user_id: str, device: int, sid: str, token: str, frame: f.Send
    ) -> list[e.MessageEnvelope]:
        """A client's message as envelopes, one per device copy, checked (nothing is
        produced: :meth:`produce` does that, in the order the socket's frames came).

        The recipient is routed by the id the directory returns (a username or
        another spelling of an id is never used as an inbox key). The copies
        must cover exactly the recipient's devices and the sender's other
        devices (docs/devices.md), or nothing is produced: ``devices_changed``
        with the current lists.
        """
        recipient = await self.directory.require_user(frame.to, token)
        owners = await self._check_copies(user_id, device, recipient, token, frame)
        sent_at = e.now_ms()
        envs = [
            e.message_envelope(
                sender=user_id,
                sender_device=device,
                sender_sid=sid,
                peer=recipient,
                user=owner,
                device=copy.device,
                client_id=frame.id,
                body=copy.body,
                # The body's own, also when the sender left it out (the frame checked
                # that one sent is that one): every message it shows can be reported.
                commitment=copy.commitment or f.body_commitment(copy.body),
                sent_at=sent_at,
            )
            for copy, owner in zip(frame.copies, owners, strict=True)
        ]
        await self._check_room(user_id, [env.inbox for env in envs if env.to == recipient])
        return envs

    async def produce(
        self, envs: list[e.MessageEnvelope]
    ) -> tuple[str, str, list[asyncio.Future[object]]]:
        """Hand a prepared message's envelopes to the producer; returns the server id,
        the conversation and the broker's ack futures."""
        log.debug("message submitted", extra={"message_id": envs[0].server_id, "to": envs[0].to})
        acks = [await self.store.enqueue(env) for env in envs]
        return envs[0].server_id, envs[0].conversation or "", acks

    async def prepare_room(
        self, user_id: str, device: int, sid: str, token: str, frame: f.RoomSend
    ) -> e.RoomEnvelope:
        """A private room's message as one record for the whole room, keyed by the
        room (delivery fans it out, docs/rooms.md), checked; :meth:`produce_room`
        produces it."""
        targets = await self.rooms.targets(
            frame.room, user_id, device, token, frame.mentions, frame.device_digest
        )
        env = e.RoomEnvelope(
            server_id=e.room_server_id(frame.room, user_id, frame.id), room=frame.room,
            from_=user_id, from_device=device, from_sid=sid, client_id=frame.id,
            body=frame.body, commitment=frame.commitment or f.body_commitment(frame.body),
            mentions=list(frame.mentions),
            sent_at=e.now_ms(), targets=targets,
        )  # fmt: skip
        return env

    async def produce_room(
        self, env: e.RoomEnvelope
    ) -> tuple[str, str, list[asyncio.Future[object]]]:
        """As :meth:`produce`, for a room's record."""
        ack = await self.store.enqueue_room(env)
        return env.server_id, e.room_conversation(env.room), [ack]

    async def typing(self, user_id: str, device: int, token: str, frame: f.Typing) -> None:
        """Tell a room's members that ``user_id``'s ``device`` is typing there, or
        stopped (docs/rooms.md, "Typing"): one multicast on the room channel, the
        members read as for a ``room_send`` (a member now, the room open). At most
        one ``typing`` per ``TYPING_EVERY_S`` per device and room (``rate_limited``);
        a stop with no start in the last ``TYPING_TTL_S`` has nothing to stop."""
        bucket = self.typing_buckets.get(user_id)
        if bucket is None:
            bucket = self.typing_buckets[user_id] = TokenBucket(TYPING_PER_S, TYPING_BURST)
        if not bucket.take():
            raise ApiError(ErrorCode.RATE_LIMITED, "Too many typing notices; slow down.")
        key = (user_id, device, frame.room)
        now = time.monotonic()
        # (when the last start was published, whether no stop has been since): a stop
        # keeps the start's time, so start, stop, start within TYPING_EVERY_S is refused
        # (forgetting it let alternating frames publish without limit).
        started, active = self._typing.get(key, (None, False))
        if frame.typing and started is not None and now - started < f.TYPING_EVERY_S:
            raise TypingTooSoon(
                ErrorCode.RATE_LIMITED,
                f"Say you are typing at most every {f.TYPING_EVERY_S} s in a room.",
            )
        if not frame.typing and (not active or started is None or now - started > f.TYPING_TTL_S):
            return  # nothing to stop
        members = await self.rooms.members(frame.room, user_id, token)
        if len(self._typing) >= TYPING_KEPT:
            self._typing = {k: v for k, v in self._typing.items() if now - v[0] <= f.TYPING_TTL_S}
        if frame.typing:
            self._typing[key] = (now, True)
        elif started is not None:  # (checked above: a stop of a start)
            # Another socket of this device may have stopped it meanwhile, or a prune.
            self._typing[key] = (started, False)
        notice = f.TypingNotice(
            room_id=frame.room, user=user_id, device=device, typing=frame.typing
        )
        try:
            await routing.multicast(self.store.redis, self.store.prefix, list(members), notice)
        except (RedisError, OSError) as exc:
            log.warning("typing notice not published", extra={"error": repr(exc)})
            raise ApiError(ErrorCode.UNAVAILABLE, "Temporarily unavailable.") from exc

    async def _check_room(self, sender: str, inboxes: list[str]) -> None:
        """Refuse a send that would pass an inbox cap: ``inbox_full`` when a recipient
        device's inbox holds ``inbox_max_pending`` items, ``too_many_pending`` when it
        holds ``inbox_max_pending_per_sender`` of the sender's (docs/security.md).

        Reads delivery's counts in Redis (one round trip), or remembers for
        ``inbox_room_cache_s`` that an inbox was under half of both caps. If
        Redis does not answer the send goes on: the caps guard the disk,
        Kafka and MongoDB keep the message.
        """
        now = time.monotonic()
        todo = [i for i in inboxes if self._roomy.get((i, sender), 0.0) <= now]
        if not todo:
            return
        try:
            counts = await self.store.pending_counts(todo, sender)
        except RedisError as exc:
            log.info("inbox caps not checked", extra={"error": repr(exc)})
            return
        s = self.settings
        if len(self._roomy) > ROOMY_MAX:
            self._roomy.clear()
        for inbox, (total, mine) in zip(todo, counts, strict=True):
            device = inbox.rpartition(".")[2]
            if total >= s.inbox_max_pending:
                raise ApiError(
                    ErrorCode.INBOX_FULL,
                    f"The recipient's device {device} has {total} messages waiting (the limit is "
                    f"{s.inbox_max_pending}); try again once it has synced.",
                )
            if mine >= s.inbox_max_pending_per_sender:
                raise ApiError(
                    ErrorCode.TOO_MANY_PENDING,
                    f"{mine} of your messages wait for the recipient's device {device} (the "
                    f"limit is {s.inbox_max_pending_per_sender}); try again once it has synced.",
                )
            if 2 * total < s.inbox_max_pending and 2 * mine < s.inbox_max_pending_per_sender:
                self._roomy[(inbox, sender)] = now + s.inbox_room_cache_s

    async def _check_copies(
        self, user_id: str, device: int, recipient: str, token: str, frame: f.Send
    ) -> list[str]:
        """Each copy's canonical owner, once the copies match the current device lists."""
        wanted: dict[str, set[int]] = {recipient: set(), user_id: set()}
        owners: list[str] = []
        for copy in frame.copies:
            user = _owner(copy.user, frame.to, recipient, user_id)
            if user is None:
                raise ApiError(
                    ErrorCode.VALIDATION_FAILED, "A copy is for the recipient or for yourself.",
                    details=[{"field": "copies.user", "problem": "not the recipient or you"}],
                )  # fmt: skip
            if copy.device in wanted[user]:
                raise ApiError(
                    ErrorCode.VALIDATION_FAILED, "One copy per device.",
                    details=[{"field": "copies.device", "problem": "two copies for one device"}],
                )  # fmt: skip
            wanted[user].add(copy.device)
            owners.append(user)
        for fresh in (False, True):
            lists = {recipient: await self.devices.get(recipient, token, fresh=fresh)}
            # A note to yourself (``to`` is the sender) goes to the other devices only.
            lists[user_id] = await self.devices.get(user_id, token, fresh=fresh) - {device}
            if wanted[recipient] == lists[recipient] and wanted[user_id] == lists[user_id]:
                return owners
        if not lists[recipient]:
            if recipient == user_id:
                raise ApiError(
                    ErrorCode.RECIPIENT_NOT_FOUND,
                    "A note to yourself goes to your other devices, and you have none.",
                )
            raise ApiError(ErrorCode.RECIPIENT_NOT_FOUND, "That user has no device yet.")
        raise DevicesChanged([f.DeviceList(user=u, devices=sorted(d)) for u, d in lists.items()])

    async def sync(self, token: str, after: int, limit: int) -> f.InboxPage:
        return await self.store.sync(token, after, min(limit, self.settings.sync_page_max))

    async def ack(self, token: str, user: str, device: int, seq: int) -> None:
        """Acknowledge the socket's device inbox up to ``seq``: here when its range is
        hot (services/gateway/acks.py), else through delivery (with the token)."""
        if self.acks is not None and await self.acks.ack(e.inbox_id(user, device), seq):
            return
        await self.store.ack(token, seq)

    def count_in(self, op: str) -> None:
        _by_op(self._in_by_op, self.frames_in, op).inc()

    def count_out(self, op: str, n: int = 1) -> None:
        if n:
            _by_op(self._out_by_op, self.frames_out, op).inc(n)

    def count_error(self, code: ErrorCode) -> None:
        self.errors.labels(code.value).inc()

    def count_disconnect(self, close_code: int | None, seconds: float) -> None:
        # A client may close with any code from 3000 to 4999 (aiohttp takes them): as a
        # label each would be a series for ever, thousands per pod for a loop of
        # anonymous sockets. The codes of the protocol and the pod keep their own.
        code = close_code if close_code in _CLOSE_CODES else "other" if close_code else "none"
        self.disconnects.labels(str(code)).inc()
        self.connection_seconds.observe(seconds)

    # Connections ------------------------------------------------------------
    def open_address(self, address: str) -> None:
        """Count a new socket from ``address``; ``too_many_connections`` past the cap."""
        if self.by_address[address] >= self.limits.sockets_per_address:
            raise ApiError(ErrorCode.TOO_MANY_CONNECTIONS,
                           "Too many connections from this address.")  # fmt: skip
        self.by_address[address] += 1

    def close_address(self, address: str) -> None:
        left = self.by_address.get(address, 0) - 1
        if left > 0:
            self.by_address[address] = left
        else:
            self.by_address.pop(address, None)

    def bucket(self, user_id: str) -> TokenBucket:
        """The user's send bucket on this pod (shared by all their sockets here)."""
        bucket = self.buckets.get(user_id)
        if bucket is None:
            bucket = self.buckets[user_id] = TokenBucket(
                self.limits.sends_per_s, self.limits.send_burst
            )
        return bucket

    async def register(self, conn: Connection, token: str, checked: int) -> None:
        """Record the socket's presence, then list it on this pod. Listed last, with
        nothing awaited between that and the caller's ``ready``: a push listed
        sockets get (a room's multicast, a receipt, ``resync``) never reaches the
        client before its ``ready`` (clients take the first frame after ``auth`` to
        be it). What the pod gets for the user meanwhile is not pushed to this
        socket: the sync the client starts after ``ready`` reads it.

        ``checked``: :attr:`revocations` when ``token`` was checked: if one came since,
        it looked for this socket before it was listed, so the token is checked again
        (before 2026-12-07 a session revoked then kept a working socket)."""
        assert conn.user_id is not None
        self._check_sockets(conn.user_id)
        try:
            await self.store.add_presence(conn.user_id, conn.conn_id)
            if self.revoked_since(conn.user_id, checked):
                await self.verify(token, since=checked)
            self._check_sockets(conn.user_id)  # another socket of the user came meanwhile
        except BaseException:
            # Not registered after all (Redis did not answer, or another socket of the
            # user took the last place meanwhile): the socket's caller closes it
            # without the unregister a registered socket gets, so its presence is
            # taken back here (else refreshed until the pod ended).
            await self.unregister(conn)
            raise
        self.by_user[conn.user_id] = (*self.local(conn.user_id), conn)

    def _check_sockets(self, user_id: str) -> None:
        if len(self.local(user_id)) >= self.limits.sockets_per_user:
            raise ApiError(
                ErrorCode.TOO_MANY_CONNECTIONS,
                "Too many open connections for this account; close one first.",
            )

    async def unregister(self, conn: Connection) -> None:
        if conn.user_id is None:
            return
        conns = self.by_user.get(conn.user_id)
        if conns is not None:
            rest = tuple(c for c in conns if c is not conn)
            if rest:
                self.by_user[conn.user_id] = rest
            else:
                del self.by_user[conn.user_id]
                # A bucket not refilled yet stays (swept once it is: _refresh): dropped
                # here, a reconnect would start with a full burst again.
                if (bucket := self.buckets.get(conn.user_id)) is not None and bucket.full():
                    del self.buckets[conn.user_id]
        with contextlib.suppress(RedisError, OSError):
            await self.store.remove_presence(conn.user_id, conn.conn_id)

    def local(self, user_id: str) -> tuple[Connection, ...]:
        return self.by_user.get(user_id, ())

    def track_expiry(self, conn: Connection, was: float | None = None) -> None:
        """Call ``conn.expired()`` at ``conn.expires_at`` (moved from ``was`` if set).

        Only a token that ends before the heartbeat's next look at the socket is
        filed now (the heartbeat calls this on every look): most sockets are in
        one pod schedule at a time, not two (docs/BENCHMARKS.md, "Idle connections").
        """
        if was is not None:
            self._expiries.discard(conn, was)
        if conn.expires_at and conn.expires_at - time.time() <= self._expiry_horizon:
            self._expiries.add(conn, conn.expires_at)

    def untrack_expiry(self, conn: Connection) -> None:
        self._expiries.discard(conn, conn.expires_at)

    # Redis channel ----------------------------------------------------------
    async def _listen(self) -> None:
        channel = self.store.channel.encode()
        rooms = self.store.room_channel.encode()
        revocations = revocation_channel(self.settings.redis_prefix).encode()
        delay = 0.1
        lost = False
        while True:
            pubsub = self.store.redis.pubsub()
            try:
                await pubsub.subscribe(channel, rooms, revocations)
                # redis-py's pub/sub reconnects and re-subscribes by itself after an
                # error, silently: a Redis restart went unnoticed here (no `resync`,
                # presence back only with the next refresh, frames routed meanwhile
                # lost). No retries on this connection: the error comes to this loop.
                if pubsub.connection is not None:
                    pubsub.connection.retry = Retry(NoBackoff(), 0)
                # Re-record presence at once: after a Redis restart it is empty.
                await self._refresh()
                self.subscribed.set()
                if lost:
                    # Frames routed here while the channel was down are gone:
                    # every client pages through its inbox again; so are
                    # `devices_changed` notices: forget every cached device list.
                    lost = False
                    self.devices.clear()
                    for conn in [c for s in self.by_user.values() for c in s]:
                        conn.push(f.Resync(reason="routing_restored"))
                    # So are revocations: look each socket's up in Redis (the keys
                    # outlive the sessions they end).
                    await self._close_revoked()
                delay = 0.1
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if msg is None:
                        continue
                    if msg["channel"] == channel:
                        self._route(msg["data"])
                    elif msg["channel"] == rooms:
                        self._route_room(msg["data"])
                    elif msg["channel"] == revocations:
                        self._revoke(msg["data"])
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                self.subscribed.clear()
                lost = True
                log.warning("redis channel lost; resubscribing", extra={"error": repr(exc)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            except Exception:
                # Anything else (a client library's state after a reconnect, a frame
                # this code did not expect) must not end the loop: the pod would stay
                # up, ready, and deaf to everything routed to it.
                self.subscribed.clear()
                lost = True
                log.exception("redis channel failed; resubscribing")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _route(self, data: bytes) -> None:
        self.routed.inc()
        try:
            decoded = e.decode_routed(data)
        except e.DecodeError:
            log.warning("dropping a malformed routed frame")
            return
        for routed in decoded if isinstance(decoded, list) else (decoded,):
            if routed.to in self.by_user:
                pushed = self._push_to(routed.to, routed.device, bytes(routed.frame))
                self.count_out(routed.op, pushed)

    def _route_room(self, data: bytes) -> None:
        """What the channel every pod gets carries: a room-wide frame for a list of users
        (:class:`~parley_contract.envelopes.Multicast`: a private room's message, a
        public room's post, a room's change): every socket of each of them here gets
        it as it is."""
        self.routed.inc()
        try:
            push = e.decode_room_push(data)
        except e.DecodeError:
            log.warning("dropping a malformed room push")
            return
        pushed = 0
        frame, by_user = bytes(push.frame), self.by_user
        # While big rooms are busy (a big room's frame came less than BUSY_S ago), a big
        # room's frame waits a little on each socket for the next ones: one write, one
        # HAProxy relay and one client read for several frames. After a quiet second,
        # the first frame goes at once.
        limits, now = self.limits, time.monotonic()
        delay = 0.0
        if len(push.to) >= limits.room_coalesce_users:
            if now - self._last_room_push < ROOM_BUSY_S:
                delay = limits.room_write_delay_s
            self._last_room_push = now
        for user in push.to:
            if user in by_user:
                pushed += self._push_to(user, None, frame, delay)
        self.count_out(push.op, pushed)

    def _push_to(self, user: str, device: int | None, frame: bytes, delay: float = 0.0) -> int:
        """Push an encoded frame to ``user``'s sockets on this pod: the one of
        ``device``, or all of them when it is None; returns how many took it.
        ``delay``: it may wait that long for more (:meth:`Connection.push_encoded`)."""
        pushed = 0
        # A tuple: a push that closes a socket does not change it.
        for conn in self.by_user.get(user, ()):
            if (device is None or conn.device_id == device) and conn.push_encoded(frame, delay):
                pushed += 1
        return pushed

    def _revoke(self, data: bytes) -> None:
        """Close the sockets a revocation names. Not awaited by the listener: a close
        can take seconds (a client that stopped reading: ``CLOSE_TIMEOUT_S``), and until
        2026-12-06 the pod routed nothing to any socket meanwhile."""
        try:
            event = e.decode_revocation(data)
        except e.DecodeError:
            return
        self.devices.forget(event.user_id)  # whatever happened to the user, ask again
        if isinstance(event, e.DevicesChanged):
            return
        self._note_revoked(event.user_id)
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
            conn.close_soon(f.CLOSE_REVOKED, code.value)  # not awaited here

    def _close_signed_by(self, kids: frozenset[str]) -> None:
        """Close the sockets whose token a dropped signing key signed (``rotate-keys
        --drop-previous``, a key stolen): a token forged with it kept its socket open
        until its ``exp``. A user's client gets ``reauth_required``, as at expiry, and
        comes back with a token of the current key."""
        self.revocations += 1
        self._keys_dropped_at = self.revocations
        heads: dict[str, bool] = {}  # a packed token's head is shared by its key's tokens
        for conn in [c for s in self.by_user.values() for c in s]:
            head = conn.token_head
            if head is None:
                continue
            dropped = heads.get(head)
            if dropped is None:
                dropped = heads[head] = token_kid(head) in kids
            if dropped:
                withdrawn = "The key that signed this token was withdrawn: sign in again."
                conn.error(ApiError(ErrorCode.REAUTH_REQUIRED, withdrawn))
                conn.close_soon(f.CLOSE_REAUTH, ErrorCode.REAUTH_REQUIRED.value)

    async def _close_revoked(self) -> None:
        """Close every socket here whose session was revoked, whose device was removed
        or whose user was blocked: one round trip for them all."""
        conns = [c for s in self.by_user.values() for c in s if c.user_id and c.sid]
        claims = [
            Claims(sub=str(c.user_id), sid=str(c.sid), roles=(), jti="", exp=0, did=c.device_id)
            for c in conns
        ]
        for conn, error in zip(
            conns, await revocation_errors(self.store.redis, self.settings.redis_prefix, claims),
            strict=True,
        ):  # fmt: skip
            if error is not None:
                conn.push(error.frame())
                conn.close_soon(f.CLOSE_REVOKED, error.code.value)

    # Presence upkeep --------------------------------------------------------
    async def _refresh(self) -> None:
        conns = [(c.user_id, c.conn_id) for s in self.by_user.values() for c in s if c.user_id]
        self._sweep_buckets()
        await self.store.refresh_presence(conns)

    def _sweep_buckets(self) -> None:
        """Forget the send and typing buckets of users with no socket here once they
        are full (a typing bucket once full, socket or not: most users type rarely)."""
        for user_id in [u for u, b in self.buckets.items() if u not in self.by_user and b.full()]:
            del self.buckets[user_id]
        for user_id in [u for u, b in self.typing_buckets.items() if b.full()]:
            del self.typing_buckets[user_id]

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.presence_refresh_s)
            # Tokens are checked once per socket here: the JWKS is re-read on its own
            # schedule too, so a dropped key closes its sockets (:meth:`_close_signed_by`);
            # not waited for (presence must not wait out a slow auth service).
            self.verifier.refresh_behind()
            try:
                await self._refresh()
            except (RedisError, OSError) as exc:
                log.warning("presence refresh failed", extra={"error": repr(exc)})
            except Exception:
                # Never the end of the loop: presence would expire and nothing would
                # be routed here any more.
                log.exception("presence refresh failed")


class _Writes(Collector):
    """``parley_gateway_socket_writes_total`` and ``parley_gateway_frames_written_total``:
    frames per write is how much the sockets' writes are batched."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def collect(self) -> Iterable[Metric]:
        writes = CounterMetricFamily(
            "parley_gateway_socket_writes", "Writes to client sockets (each one system call)."
        )
        writes.add_metric([], self.hub.socket_writes)
        frames = CounterMetricFamily(
            "parley_gateway_frames_written", "Frames those writes carried."
        )
        frames.add_metric([], self.hub.frames_written)
        return [writes, frames]


_CLOSE_CODES = frozenset(range(1000, 1016)) | {
    f.CLOSE_AUTH_FAILED, f.CLOSE_AUTH_TIMEOUT, f.CLOSE_REVOKED, f.CLOSE_REAUTH,
    f.CLOSE_SLOW_CONSUMER, f.CLOSE_FLOOD, f.CLOSE_TOO_MANY,
}  # fmt: skip
"""Close codes counted by their number (RFC 6455's, the protocol's); any other is "other"."""


def _by_op(children: dict[str, Counter], metric: Counter, op: str) -> Counter:
    """``metric.labels(op)``, looked up once per op: ``labels()`` on every frame was 3 %
    of a gateway's time at saturation (docs/BENCHMARKS.md)."""
    child = children.get(op)
    if child is None:
        child = children[op] = metric.labels(op)
    return child


def _owner(written: str, to: str, recipient: str, sender: str) -> str | None:
    """The canonical owner of a copy addressed to ``written``, or None if it is neither
    the recipient nor the sender.

    A copy for the recipient may name it as the client wrote ``to`` (a username,
    another case of the id) or by the canonical id the directory returned; a
    copy for one of the sender's other devices names the sender's own id. The
    inbox key is always the canonical id (#20: a spelling that was accepted by
    the look-up but used as an inbox key left the message where nobody reads).
    """
    if written in (to, recipient):
        return recipient
    if written == sender:
        return sender
    return None
