"""The notifier's two loops (docs/notifier.md).

**Notices** (consumer group ``<prefix>notifier`` on ``<prefix>notifications``,
keyed by user): a mention of a user with no live presence entry (no
connected device on any gateway, read from Redis in one pipeline per batch)
is kept for the user's digest; a mention of a connected user is not (the
``notification`` frame reached them). Offsets are committed after the batch
is stored; a redelivered notice is recognised by its ``(user, n)``.

**Digests** (every ``notifier_tick_s``): a user's first kept mention makes a digest
due ``notifier_digest_interval_s`` later; when it is due, one e-mail lists every
mention kept until then, to the address and under the preference the auth service
holds for the user (read at sending time: an unsubscribe takes effect for digests not
yet sent), each public room's mention with its message as the rooms service holds it
then (one removed since is left out, one edited shows its new text). Mentions arriving
later start the next interval, so a user gets at most one digest per interval. A user
with a device connected when the digest is due gets none (``online``: the in-app list
holds the mentions). A digest is leased while it is sent, the lease extended right
before the e-mail goes to cover the whole send (up to ten minutes for the SMTP
server's answer to DATA, RFC 5321 4.5.3.2.6: ``mail.send``); a stop lets the digest
being sent finish (``stop_grace_s`` at most) and starts no other. It reads at most a
page of its mentions at a time, however many there are: the first ``LISTED_MAX`` whose
messages still stand are listed, the rest counted (:meth:`NotifierStore.held`), and
all of them forgotten once it is sent. Refused for good (a 5xx answer: to ``RCPT``,
the address; at ``DATA``, the message) it is dropped with its mentions only if the
SMTP server took another digest since it last refused this one: the first refusal, or
refusals with nothing taken in between (the server or the account refusing every
message), put it off like the failures below. Not sent for now (the SMTP server
unreachable, a 4xx answer, a 5xx at ``MAIL``, a refusal held back as above, or an
unexpected error while sending it) it is tried again after ``retry_s``, doubling each
time up to ``retry_max_s``, and dropped after ``attempts_max`` attempts. Each digest
of a round is sent on its own: one that fails does not stop the others.
"""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec
import redis.asyncio as aioredis
from aiokafka import ConsumerRecord
from parley_contract.envelopes import MentionNotice, decode_notice

from services.common.clients import Topics, consume_forever
from services.common.config import Settings
from services.common.routing import gateways_of
from services.common.tasks import cancel_all
from services.notifier import mail
from services.notifier.metrics import NotifierMetrics
from services.notifier.store import ID_CHUNK, Doc, Held, NotifierStore

log = logging.getLogger(__name__)

BATCH_MAX = 500
# How long a digest is held, from when it is taken, before another attempt (or replica)
# may take it; right before its e-mail goes the lease is made to cover the whole send
# (``mail.send_bound``: up to ten minutes for the answer to DATA) and LEASE_MARGIN_S
# more, for the clean-up after it.
DIGEST_LEASE_S = 60.0
LEASE_MARGIN_S = 60.0
# How long a stop waits for the digest being sent (its send and clean-up) before
# cancelling it: under the 20 s the orchestrator gives a stopping task
# (deploy/terraform/stack/components.tf, stop_timeout), with time left to leave the
# consumer group and close the clients.
STOP_GRACE_S = 12.0
# A digest not sent for now is tried again after RETRY_S, doubling each time up to
# RETRY_MAX_S; after ATTEMPTS_MAX attempts (about six hours) it is dropped.
RETRY_S = 60.0
RETRY_MAX_S = 3600.0
ATTEMPTS_MAX = 12


class Notifier:
    def __init__(
        self, settings: Settings, store: NotifierStore, redis: aioredis.Redis,
        metrics: NotifierMetrics,
    ) -> None:  # fmt: skip
        self.settings = settings
        self.store = store
        self.redis = redis
        self.metrics = metrics
        self.topic = Topics(settings).notifications
        self.group = f"{settings.topic_prefix}notifier"
        self.interval_s = settings.notifier_digest_interval_s
        self.consuming = asyncio.Event()
        self.lease_s = DIGEST_LEASE_S
        self.retry_s = RETRY_S
        self.retry_max_s = RETRY_MAX_S
        self.attempts_max = ATTEMPTS_MAX
        self.data_timeout_s = settings.smtp_data_timeout_s
        self.stop_grace_s = STOP_GRACE_S
        # The digest being sent (its send and clean-up), shielded from the loop's
        # cancellation: a stop lets it finish (:meth:`stop`).
        self._current: asyncio.Task[int] | None = None
        # When a digest last got through (Unix s; this process's): a digest refused for
        # good is dropped only if one got through after it was last refused.
        self._last_sent = float("-inf")
        self._tasks: list[asyncio.Task[None]] = []

    def groups(self) -> dict[str, list[str]]:
        return {self.group: [self.topic]}

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._consume_loop()),
            asyncio.create_task(self._digest_loop()),
        ]

    async def stop(self) -> None:
        """Stop both loops, no new digest started; the digest being sent, if any, is
        sent and finished first (cancelled after ``stop_grace_s``): cancelled while it
        waits for the SMTP server's answer, the server would keep the message and the
        next process send it again once its lease ends. The grace runs from the call,
        alongside the loops' ends (the consumer leaving its group: up to 10 s)."""
        deadline = time.monotonic() + self.stop_grace_s
        await cancel_all(self._tasks)  # the digest loop ends: it starts no other
        current = self._current
        if current is None or current.done():
            return
        await asyncio.wait([current], timeout=max(deadline - time.monotonic(), 0))
        if not current.done():
            log.warning(
                "digest still being sent at stop: cancelled", extra={"after_s": self.stop_grace_s}
            )
            await cancel_all([current])

    # -- notices -----------------------------------------------------------------------

    async def handle(self, notices: list[MentionNotice]) -> None:
        online = await gateways_of(
            self.redis, self.settings.redis_prefix, self.settings.presence_ttl_s,
            (n.user for n in notices),
        )  # fmt: skip
        # Connected now, or when the notice was made (``live``: a notice read late, by a
        # notifier catching up, of a mention the user saw in the app).
        offline = [n for n in notices if not n.live and not online.get(n.user)]
        self.metrics.notices.labels("online").inc(len(notices) - len(offline))
        # Two round trips for the batch (a burst of mentions: two a notice before).
        for new in await self.store.add_many(offline, self.interval_s):
            self.metrics.notices.labels("queued" if new else "duplicate").inc()

    async def process(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        notices = []
        for r in records:
            try:
                notices.append(decode_notice(r.value or b""))
            except (msgspec.DecodeError, msgspec.ValidationError):
                log.warning("malformed notice skipped", extra={"offset": r.offset})
                self.metrics.notices.labels("malformed").inc()
        if notices:
            await self.handle(notices)

    async def _consume_loop(self) -> None:
        await consume_forever(
            self.settings, self.topic, self.group, self.process, self.consuming, BATCH_MAX
        )

    # -- digests -----------------------------------------------------------------------

    async def send_due(self) -> int:
        """Send every digest that is due; how many were sent. Each on its own: one
        that raises is counted (``error``) and tried again later, and the round goes
        on (before, it ended the round and left that digest to its lease, for ever)."""
        sent = 0
        while (digest := await self.store.lease_due(self.lease_s)) is not None:
            # Shielded: a stop cancels the loop, not the digest it is sending (``stop``).
            self._current = asyncio.create_task(self._send_one(digest))
            sent += await asyncio.shield(self._current)
        return sent

    async def _send_one(self, digest: Doc) -> int:
        try:
            return await self.send_digest(digest)
        except Exception as exc:
            log.exception(
                "digest failed", extra={"user_id": str(digest["_id"]), "error": repr(exc)}
            )
            try:
                await self._not_sent(digest, "error")
            except Exception as again:  # its lease ends, then it is tried again
                log.warning("digest not rescheduled", extra={"error": repr(again)})
            return 0

    async def send_digest(self, digest: Doc) -> int:
        user_id = str(digest["_id"])
        held = await self.store.held(user_id, int(digest["lo"]), int(digest["hi"]))
        user = await self.store.user(user_id)
        if user is None or user.get("blocked"):
            self.metrics.digests.labels("gone").inc()
        elif not user.get("mention_emails", True):  # 0/1 on the embedded server
            self.metrics.digests.labels("unsubscribed").inc()
        elif await self._connected(user_id):
            # A device of the user's is connected now: the e-mail is only for users away
            # (it says so), and the in-app notification list holds these mentions.
            self.metrics.digests.labels("online").inc()
        elif held.count:
            listed, told = await self._listing(user_id, held)
            if listed:
                return await self._mail(digest, user, held, listed, told)
            # Every mention's message was removed since: nothing to tell.
            self.metrics.digests.labels("removed").inc()
        await self.store.finish(digest, held, self.interval_s)
        return 0

    async def _mail(self, digest: Doc, user: Doc, held: Held, listed: list[Doc], told: int) -> int:
        """E-mail the digest of ``held`` (``listed``, and ``told`` mentions in all) to
        ``user``; 1 if the SMTP server took it."""
        senders = await self.store.usernames(i["sender"] for i in listed)
        subject, text = mail.digest(
            str(user["username"]),
            listed,
            senders,
            self.settings.public_url,
            self.settings.web_url,
            total=told,
        )
        # The lease made to cover the whole send, if it is still this one's.
        if not await self.store.hold(digest, self.send_lease_s()):
            log.warning("digest lease lost before sending", extra={"user_id": str(digest["_id"])})
            return 0
        try:
            await mail.send(self.settings, str(user["email"]), subject, text, self.data_timeout_s)
        except (mail.MailRefused, mail.MailRejected) as exc:
            # Refused for good: the address (RCPT) or this message (DATA). Sent again it
            # would be refused again, and hold every later mention of the user: dropped,
            # but only if the server took another digest since it last refused this
            # one. Else the server (or the account: paused, over quota, this host no
            # longer allowed to relay) may be refusing every message, and dropping would
            # lose every user's digest in one round: tried again later, as a failure.
            before = digest.get("refused_at")
            if before is None or self._last_sent <= float(before):
                await self._not_sent(digest, "failed", held, refused_at=time.time())
                return 0
            result = "refused" if isinstance(exc, mail.MailRefused) else "rejected"
            self.metrics.digests.labels(result).inc()
            await self.store.finish(digest, held, self.interval_s)
            return 0
        except mail.MailError:
            await self._not_sent(digest, "failed", held)
            return 0
        self._last_sent = time.time()
        self.metrics.digests.labels("sent").inc()
        self.metrics.mentions.inc(told)
        log.info("digest sent", extra={"user_id": str(digest["_id"]), "mentions": told})
        await self.store.finish(digest, held, self.interval_s)
        return 1

    def send_lease_s(self) -> float:
        """How long a digest is held from right before its e-mail goes: the longest the
        send takes, and ``LEASE_MARGIN_S`` for the clean-up after it."""
        return mail.send_bound(self.settings, self.data_timeout_s) + LEASE_MARGIN_S

    async def _connected(self, user_id: str) -> bool:
        online = await gateways_of(
            self.redis, self.settings.redis_prefix, self.settings.presence_ttl_s, [user_id]
        )
        return bool(online.get(user_id))

    async def _listing(self, user_id: str, held: Held) -> tuple[list[Doc], int]:
        """What a digest of ``held`` lists: its first ``mail.LISTED_MAX`` mentions whose
        messages still stand, as they are now (``mail.as_now``), and how many it tells
        of (``held.count`` less those found removed; the ones not read are counted as
        they are). Read a page at a time: ``LISTED_MAX``, then ``ID_CHUNK`` while
        removed messages leave the list short."""
        lo, hi = held.runs[0][0], held.runs[-1][1]
        listed: list[Doc] = []
        removed = 0
        after: int | None = None
        limit = mail.LISTED_MAX
        while len(listed) < mail.LISTED_MAX:
            page = await self.store.pending_page(user_id, lo, hi, after, limit)
            if not page:
                break
            after = int(page[-1]["n"])
            mine = [p for p in page if int(p["n"]) in held]  # not one written since
            # A deleted room's mentions are left out as removed messages are: the room
            # exists for nobody but admins (its text was mailed until 2026-12-08).
            gone = await self.store.deleted_rooms(mine)
            standing = [p for p in mine if str(p["room_id"]) not in gone]
            now = mail.as_now(standing, await self.store.messages_now(standing, mail.TEXT_READ))
            removed += len(mine) - len(now)
            listed += now
            if len(page) < limit:
                break
            limit = ID_CHUNK
        return listed[: mail.LISTED_MAX], held.count - removed

    async def _not_sent(
        self, digest: Doc, result: str, held: Held | None = None, refused_at: float | None = None
    ) -> None:
        """The leased ``digest`` was not sent for now (``result``: ``failed`` or
        ``error``; ``refused_at``: a refusal for good, held back): tried again after a
        delay that doubles with each attempt, or dropped with its mentions
        (``abandoned``) after ``attempts_max`` attempts."""
        self.metrics.digests.labels(result).inc()
        attempts = int(digest.get("attempts", 0)) + 1
        if attempts < self.attempts_max:
            delay = min(self.retry_s * 2 ** (attempts - 1), self.retry_max_s)
            await self.store.retry_later(digest, attempts, delay, refused_at)
            return
        log.warning("digest abandoned", extra={"user_id": str(digest["_id"]), "attempts": attempts})
        self.metrics.digests.labels("abandoned").inc()
        if held is None:
            held = await self.store.held(str(digest["_id"]), int(digest["lo"]), int(digest["hi"]))
        await self.store.finish(digest, held, self.interval_s)

    async def _digest_loop(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.send_due()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("digest round failed", extra={"error": repr(exc)})
            await asyncio.sleep(
                max(self.settings.notifier_tick_s - (time.monotonic() - started), 0.05)
            )
