"""Moderation of end-to-end encrypted messages: verifiable reports and tombstones.

docs/moderation-messages.md has the rules; docs/crypto.md the cryptography.

**Reports.** A recipient reveals one message: its plaintext and franking key,
with the metadata and the reporting tag its ``message`` frame carried. The
tag must verify for those fields *and the reporter as the recipient* (a private
room's message has one tag for the room: the reporter must be a member of it who had
joined when it was sent, asked of the rooms service), and the
plaintext and key must open the sender's commitment; then the report is
filed, with the verified plaintext, for admins. Anything else is refused with
its code and nothing is stored.

**Tombstones.** The sender of a message (proved by its client id: the server
id hashes the two), or an admin (from a report of it), removes it by its server
id. No record of where its copies went is kept (a per-message record would cost
Redis memory for every message ever sent): the conversation names its users, the
key directory their devices now (services/delivery/parties.py). The removal is
recorded once, the message marked gone (a copy arriving later is not stored),
and one signed ``tombstone`` envelope per device inbox is produced on the
``messages`` topic, keyed by the inbox, like any item: that inbox's consumer
deletes the copy if one waits (the hot inbox is searched, MongoDB queried by
``server_id``) and stores the tombstone, which the devices get live or on their
next sync. A removal is noted as under way before it is recorded: one whose request
died part-way is finished by :meth:`Moderation.upkeep`. A public room's messages never
pass through delivery: removing one here is ``forbidden``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Any, Literal

from parley_contract import envelopes as e

from services.common.audit import Actor, AuditLog, Entry
from services.common.auth import Claims
from services.common.clients import KafkaProducerHandle, Topics
from services.common.config import Settings
from services.common.errors import ApiError, ErrorCode
from services.common.logging import kafka_headers
from services.common.ratelimit import Limit, RateLimiter
from services.delivery.moderation_keys import (
    CommitmentMismatch,
    ModerationKeys,
    TaggedFields,
    TagInvalid,
    open_commitment,
    unb64url,
)
from services.delivery.moderation_store import ModerationStore
from services.delivery.parties import Parties, parties_of
from services.delivery.room_log import RoomLog, room_tag_fields
from services.delivery.store import DAY_S, DeliveryStore

log = logging.getLogger(__name__)

Remover = Literal["sender", "admin"]

UNSEND_LIMIT = Limit(120, 60)
"""Unsends per user per minute, counting only those that pass the checks (the sender's
own id, a conversation of theirs). Nothing records which messages exist (a server id is
a hash of the sender and a client id), so a user could name made-up ones of a
conversation they are in without end: each sends a server-signed tombstone into every
device inbox of the conversation (the other party's, a private room's members'), which
counts toward the inbox's waiting items, and leaves a gone mark and a removal record."""

REMOVAL_GRACE_S = 120
"""A removal noted as under way for longer than this had its request die part-way (a
request gives up well before: device lists 10 s, Kafka 30 s)."""

REMOVAL_CHECK_S = 60.0
"""How often each delivery process looks for removals left part-way."""


class Moderation:
    def __init__(
        self,
        settings: Settings,
        store: DeliveryStore,
        mstore: ModerationStore,
        keys: ModerationKeys,
        producer: KafkaProducerHandle,
        audit: AuditLog,
        parties: Parties,
        limiter: RateLimiter,
    ) -> None:
        self.audit = audit
        self.parties = parties
        self.settings = settings
        self.store = store
        self.mstore = mstore
        self.keys = keys
        self.producer = producer
        self.topics = Topics(settings)
        self.room_log = RoomLog(store, keys)
        self.limiter = limiter
        self.report_limit = Limit.parse(settings.limit_reports)

    async def _audit(
        self, claims: Claims, ip: str | None, action: str, target_type: str, target_id: str,
        *, before: dict[str, Any] | None = None, after: dict[str, Any] | None = None,
        **details: Any,
    ) -> None:  # fmt: skip
        """One entry in the shared audit log (services/common/audit.py) per admin action,
        reads included; never a message's plaintext (a report's text stays out)."""
        await self.audit.record(
            Entry(
                actor=Actor(claims.sub, "admin"), action=action, target_type=target_type,
                target_id=target_id, details=details, before=before, after=after, ip=ip,
            )
        )  # fmt: skip

    # Reports ------------------------------------------------------------------
    async def report(self, claims: Claims, body: Any, token: str) -> dict[str, Any]:
        """Verify and file a report (``body``: models.ReportIn); returns ``{id, state,
        duplicate}``. A second report of one message by one reporter is the first one
        (``duplicate`` true, nothing new stored). A room's message is reported only by a
        member of the room who had joined when it was sent (read from the rooms service
        with the caller's ``token``: :meth:`_room_recipient`).

        The plaintext is at most what a frame carries (its base64url no longer than
        ``PARLEY_WS_MAX_FRAME_BYTES``): any message a client could send can be reported.

        At most ``PARLEY_LIMIT_REPORTS`` (30 an hour) are stored per reporter: each keeps
        a message's plaintext (up to about 47 KB) for the admins, and one user filed
        300 of 30 KB in 2 s. A place is taken once the tag and the commitment verified
        and the report is not a repeat, before the rooms service is asked, and given
        back if the report is refused or turns out a repeat after all: only stored
        reports count."""
        me = claims.sub
        if len(body.plaintext) > self.settings.ws_max_frame_bytes:
            raise ApiError(
                ErrorCode.VALIDATION_FAILED, "No message that long was sent.",
                details=[{
                    "field": "plaintext",
                    "problem": f"at most {self.settings.ws_max_frame_bytes} characters "
                    "(what a frame carries)",
                }],
            )  # fmt: skip
        if body.sender == me:
            raise ApiError(ErrorCode.CANNOT_TARGET_SELF, "You cannot report your own message.")
        conversation = body.conversation
        parties = conversation[3:].split(":") if conversation else []
        if conversation and conversation.startswith("dm:") and me not in parties:
            raise ApiError(
                ErrorCode.NOT_RECIPIENT,
                "You are not a party to that conversation: only a recipient can report it.",
            )
        room = conversation[5:] if conversation and conversation.startswith("room:") else None
        # A private room's message has one tag for the room, not one per member (its log
        # holds it once: services/delivery/room_log.py).
        fields = room_tag_fields(
            commitment=body.commitment, server_id=body.server_id, sender=body.sender,
            sender_device=body.sender_device, sent_at=body.sent_at, room=room,
        ) if room else TaggedFields(
            commitment=body.commitment, server_id=body.server_id, sender=body.sender,
            sender_device=body.sender_device, recipient=me, sent_at=body.sent_at,
            conversation=conversation,
        )  # fmt: skip
        try:
            kid = self.keys.check_tag(body.franking_tag, fields)
        except TagInvalid:
            raise ApiError(
                ErrorCode.INVALID_FRANKING_TAG,
                "The reporting tag does not match this message as delivered to you.",
            ) from None
        try:
            plaintext = unb64url(body.plaintext)
            open_commitment(plaintext, unb64url(body.franking_key), unb64url(body.commitment))
        except (ValueError, CommitmentMismatch):
            raise ApiError(
                ErrorCode.FRANKING_MISMATCH,
                "The plaintext and franking key do not open the message's commitment.",
            ) from None
        key = hashlib.sha256(f"{me}|{body.server_id}".encode()).hexdigest()
        # A repeat answers the report filed (its reporter passed every check then).
        existing = await self.mstore.report_by_key(key)
        if existing is not None:
            return {"id": existing["_id"], "state": existing["state"], "duplicate": True}
        await self.limiter.take_places(
            "report", me, 1, self.report_limit, message="Too many reports; try again later."
        )
        try:
            if room:
                await self._room_recipient(room, int(body.sent_at), token)
            filed, duplicate = await self.mstore.file_report(
                self._report_doc(claims, body, key, kid, plaintext, room)
            )
        except BaseException:  # a refusal, a failure, or a cancellation (a shutdown)
            await self.limiter.release("report", me)
            raise
        if duplicate:  # filed by a concurrent request of the same reporter
            await self.limiter.release("report", me)
        log.info("report filed", extra={"report": filed["_id"], "duplicate": duplicate})
        return {"id": filed["_id"], "state": filed["state"], "duplicate": duplicate}

    @staticmethod
    def _report_doc(
        claims: Claims, body: Any, key: str, kid: str, plaintext: bytes, room: str | None
    ) -> dict[str, Any]:
        """A report as stored: the verified plaintext once, as its bytes (``text`` is
        decoded from them where it is read: :func:`report_view`)."""
        return {
            "_id": e.new_server_id(),
            "key": key,
            "state": "open",
            "server_id": body.server_id,
            "conversation": body.conversation,
            "room": room,
            "sender": body.sender,
            "sender_device": body.sender_device,
            "sent_at": body.sent_at,
            "reporter": claims.sub,
            "reporter_device": claims.did,
            "commitment": body.commitment,
            "kid": kid,
            "plaintext": plaintext,
            "created_at": e.now_ms(),
            "resolution": None,
        }

    async def _room_recipient(self, room: str, sent_at: int, token: str) -> None:
        """``not_recipient`` unless the caller is a member of ``room`` who joined at or
        before ``sent_at`` (the time the tag binds). A room message's tag names no
        recipient (one tag for every member: room_log.room_tag_fields), so it verified
        for anyone a member handed the report fields to: one member filed "independent"
        reports of a message through any number of accounts that were never in the room.
        Asked after the tag and the commitment verified (those cost no other service's
        time); a member who has left since is refused too, as nothing records past
        memberships (docs/moderation-messages.md, "Reports")."""
        joined = await self.parties.member_since(room, token)
        # Two clocks: ``sent_at`` is the gateway's, ``joined_at`` the rooms service's;
        # a member who joined just before the message must not be refused for their skew.
        if joined is None or joined > sent_at + JOIN_SKEW_MS:
            raise ApiError(
                ErrorCode.NOT_RECIPIENT,
                "Only a member of the room when the message was sent can report it.",
            )

    async def reports(
        self, claims: Claims, ip: str | None, state: str | None, after: str | None, limit: int
    ) -> dict[str, Any]:
        docs, more = await self.mstore.reports_page(state, after, limit)
        await self._audit(
            claims, ip, "report.list", "reports", state or "all",
            state=state, cursor=after, returned=len(docs),
        )  # fmt: skip
        return {
            "reports": [report_view(d) for d in docs],
            "next": docs[-1]["_id"] if more and docs else None,
        }

    async def get_report(self, claims: Claims, ip: str | None, report_id: str) -> dict[str, Any]:
        doc = await self.mstore.report(report_id)
        if doc is None:
            raise ApiError(ErrorCode.REPORT_NOT_FOUND, "No such report.")
        await self._audit(
            claims, ip, "report.view", "report", report_id,
            server_id=doc["server_id"], sender=doc["sender"], reporter=doc["reporter"],
        )  # fmt: skip
        return report_view(doc)

    async def resolve(
        self, claims: Claims, ip: str | None, report_id: str, state: str, note: str
    ) -> dict[str, Any]:
        before = await self.mstore.report(report_id)
        if before is None:
            raise ApiError(ErrorCode.REPORT_NOT_FOUND, "No such report.")
        doc = await self.mstore.resolve(report_id, state, note, claims.sub, e.now_ms())
        if doc is None:
            raise ApiError(ErrorCode.REPORT_RESOLVED, "The report was resolved already.")
        await self._audit(
            claims, ip, "report.resolve", "report", report_id,
            before={"state": before["state"]}, after={"state": state, "note": note},
        )  # fmt: skip
        return report_view(doc)

    # Tombstones ---------------------------------------------------------------
    async def unsend(
        self, claims: Claims, token: str, server_id: str, client_id: str, conversation: str
    ) -> dict[str, Any]:
        """The sender removes their message. The server id is a hash of (sender, client
        id) (and the room, for a room's message), so giving the client id proves who sent
        it; the conversation must be one of the caller's (a private room they can still
        see). Only a request that passes these checks counts toward ``UNSEND_LIMIT``."""
        _, room = parties_of(conversation)
        if server_id != (
            e.room_server_id(room, claims.sub, client_id)
            if room
            else e.message_server_id(claims.sub, client_id)
        ):
            raise ApiError(ErrorCode.NOT_SENDER, "Only the sender (or an admin) can remove it.")
        # A full window refuses before the checks below, which ask the rooms service
        # (a room's members, page by page): counted only once they pass.
        await self.limiter.check("unsend", claims.sub, UNSEND_LIMIT)
        if room:
            await self._private_room(room, server_id, token, admin=False)
        users = await self.parties.users(conversation, token, admin=False)
        if claims.sub not in users:
            raise ApiError(ErrorCode.NOT_RECIPIENT, "That conversation is not one of yours.")
        # Counted once the request is known to be the sender's own, in a conversation of
        # theirs: refusals used the limit up too (120 wrong client ids blocked the
        # sender's real unsend for a minute).
        await self.limiter.hit("unsend", claims.sub, UNSEND_LIMIT)
        return await self._remove(claims, token, server_id, claims.sub, conversation, users,
                                  "sender")  # fmt: skip

    async def admin_remove(
        self, claims: Claims, token: str, server_id: str, body: Any, ip: str | None
    ) -> dict[str, Any]:
        """An admin removes a message (``body``: models.RemoveIn): its sender and
        conversation come from a report of it, or from the body when none was filed."""
        report = await self.mstore.report_of(server_id)
        sender = report["sender"] if report else body.sender
        conversation = report.get("conversation") if report else body.conversation
        if not sender or not conversation:
            raise ApiError(
                ErrorCode.MESSAGE_NOT_FOUND,
                "No report names that message: give its sender and conversation.",
            )
        _, room = parties_of(conversation)
        if room:
            await self._private_room(room, server_id, token, admin=True)
        users = await self.parties.users(conversation, token, admin=True)
        return await self._remove(claims, token, server_id, sender, conversation, users,
                                  "admin", body.reason, ip)  # fmt: skip

    async def _private_room(self, room: str, server_id: str, token: str, *, admin: bool) -> None:
        """``forbidden`` for a public room's message. Public rooms are not end-to-end
        encrypted: their messages are the rooms service's timeline (removed there, with
        revisions: docs/moderation.md) and never pass through delivery, so a removal
        here only sent a signed tombstone of a made-up id into every member's inbox
        (anyone can join a public room: 120 a minute, each counted toward the inbox's
        waiting items). A room made public since keeps its private days' log, whose
        messages may still be removed (:meth:`RoomLog.holds`)."""
        if await self.parties.room_kind(room, token, admin=admin) == "private":
            return
        if await self.room_log.holds(room, server_id):
            return
        raise ApiError(
            ErrorCode.FORBIDDEN,
            "A public room's messages are removed in the room: "
            "DELETE /rooms/v1/rooms/{room_id}/messages/{seq}.",
        )

    async def _remove(
        self, claims: Claims, token: str, server_id: str, sender: str, conversation: str,
        users: list[str], by: Remover, reason: str = "", ip: str | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Record the removal once, mark the message gone (a copy that arrives later is
        not stored), and send one signed tombstone per device inbox of the
        conversation's users (see the module's docstring). Idempotent: removing it again
        sends the same tombstones again.

        Crash-safe: the removal is noted as under way (with its device inboxes) before
        it is recorded, and the note is deleted once its tombstones are produced. A
        request that dies in between (MongoDB, Redis or Kafka failing, the process
        killed) leaves the note, and :meth:`finish_removals` carries the recorded
        removal out; a repeat of the request does the same at once."""
        at = e.now_ms()
        kid, signature = self.keys.sign_tombstone(
            server_id=server_id, sender=sender, conversation=conversation, by=by, at=at
        )
        inboxes = await self.parties.inboxes(list(dict.fromkeys([sender, *users])), token)
        await self.mstore.begin_removal(server_id, inboxes, at)
        record, already = await self.mstore.record_tombstone({
            "_id": server_id, "by": by, "actor": claims.sub, "sender": sender,
            "conversation": conversation, "at": at, "kid": kid, "signature": signature,
            "reason": reason, "inboxes": len(inboxes),
            **({"audited": False, "ip": ip} if by == "admin" else {}),
        })  # fmt: skip
        if by == "admin":
            # Audited once the removal is recorded (from then on it is carried out,
            # by this request or the upkeep), before it is: a removal that failed before
            # its record has no entry (it was audited first until 2026-12-08, and the
            # admin console showed a removal that never happened). Every request that
            # gets here is audited: a retry, or a removal the sender made first, is
            # marked ``already``. A request that dies before its entry leaves the record
            # unaudited: the upkeep that finishes the removal writes it
            # (:meth:`finish_removals`).
            after = {"by": by, "reason": reason, "inboxes": len(inboxes), "already": already}
            await self._audit(claims, ip, "message.remove", "message", server_id, after=after)
            await self.mstore.mark_audited(server_id)
        # A removal recorded before: the same tombstone again (same signature: the
        # inboxes' dedup knows it).
        await self._carry_out(record, inboxes)
        await self.mstore.end_removal(server_id, at)
        return {"server_id": server_id, "by": record["by"], "at": int(record["at"]),
                "inboxes": len(inboxes)}  # fmt: skip

    async def _carry_out(self, record: dict[str, Any], inboxes: list[str]) -> None:
        """What a recorded removal does, each step idempotent: mark the message gone,
        blank its room log entry, and produce its tombstone (as recorded) to each of
        ``inboxes``."""
        server_id, conversation = str(record["_id"]), str(record["conversation"])
        await self.store.hot.mark_gone(server_id, self.settings.inbox_expiry_s + DAY_S)
        if conversation.startswith("room:"):
            await self.room_log.blank([server_id])  # after the mark (room_log.py, "Removal")
        producer = await self.producer.wait_ready(30)
        acks = []
        for inbox in inboxes:
            user, _, device = inbox.rpartition(".")
            env = e.TombstoneNotice(
                server_id=server_id, to=user, to_device=int(device), from_=record["sender"],
                client_id=f"tombstone:{server_id}", conversation=conversation,
                sent_at=int(record["at"]), by=record["by"], kid=record["kid"],
                signature=record["signature"], target_seq=None,
            )  # fmt: skip
            acks.append(
                await producer.send(
                    self.topics.messages, e.encode(env), key=inbox.encode(),
                    headers=kafka_headers(),
                )
            )  # fmt: skip
        await asyncio.gather(*acks)
        log.info("message removed", extra={"message_id": server_id, "by": record["by"]})

    # Upkeep -------------------------------------------------------------------
    async def finish_removals(self, now_ms: int | None = None) -> int:
        """Carry out the removals whose requests died part-way (noted as under way for
        more than ``REMOVAL_GRACE_S``): recorded ones get their gone mark, blanked log
        entry and tombstones, to the inboxes the request found; one never recorded
        (its request died first, and answered no success) is dropped. Each is taken
        up by one process at a time; returns how many were carried out."""
        now = e.now_ms() if now_ms is None else now_ms
        done = 0
        for doc in await self.mstore.removals_due(now - REMOVAL_GRACE_S * 1000, 100):
            server_id, since = str(doc["_id"]), int(doc["since"])
            if not await self.mstore.take_removal(server_id, since, now):
                continue
            record = await self.mstore.tombstone(server_id)
            if record is not None:
                # Its request died before its entry ("audited" false: 0 on the embedded
                # server; absent for removals not made by an admin).
                if "audited" in record and not record["audited"]:
                    targets = doc.get("targets") or []
                    await self.audit.record(Entry(
                        actor=Actor(str(record["actor"]), "admin"), action="message.remove",
                        target_type="message", target_id=server_id, details={},
                        after={"by": record["by"], "reason": record.get("reason"),
                               "inboxes": len(targets), "already": False,
                               "finished_by": "upkeep"},
                        ip=record.get("ip"),
                    ))  # fmt: skip
                    await self.mstore.mark_audited(server_id)
                await self._carry_out(record, [str(t) for t in doc.get("targets") or []])
                done += 1
            await self.mstore.end_removal(server_id, now)
        return done

    def tombstone_keep_s(self) -> int:
        """How long a removal's record is kept: as long as its gone mark, the longest a
        copy of the message may wait in an inbox (so that removing it again within that
        time sends the same tombstone), and at least Kafka's retention (a Redis loss
        marks again what was removed within it: DeliveryStore.restore_gone)."""
        retention_s = self.settings.kafka_message_retention_ms // 1000
        return max(self.settings.inbox_expiry_s, retention_s) + DAY_S

    async def purge_tombstones(self, now_ms: int | None = None) -> int:
        """Delete the records of removals older than :meth:`tombstone_keep_s`."""
        now = e.now_ms() if now_ms is None else now_ms
        return await self.mstore.purge_tombstones(now - self.tombstone_keep_s() * 1000)

    async def upkeep(self) -> None:
        """Every ``REMOVAL_CHECK_S``: :meth:`finish_removals`; every
        ``inbox_purge_interval_s``: :meth:`purge_tombstones` (a TTL index would need
        dates, and the embedded server purges only on read: docs/embedded.md)."""
        purged_at: float | None = None
        while True:
            try:
                finished = await self.finish_removals()
                if finished:
                    log.warning("removals left part-way finished", extra={"removals": finished})
            except Exception as exc:
                log.warning("finishing removals failed", extra={"error": repr(exc)})
            now = time.monotonic()
            if purged_at is None or now - purged_at >= self.settings.inbox_purge_interval_s:
                purged_at = now
                try:
                    purged = await self.purge_tombstones()
                    if purged:
                        log.info("old removal records deleted", extra={"records": purged})
                except Exception as exc:
                    log.warning("removal records purge failed", extra={"error": repr(exc)})
            await asyncio.sleep(REMOVAL_CHECK_S)


JOIN_SKEW_MS = 5_000
"""How far apart the gateway's clock (a message's ``sent_at``) and the rooms service's
(a member's ``joined_at``) may be when a room report's membership is checked."""


def report_view(doc: dict[str, Any]) -> dict[str, Any]:
    """A report as admins see it (the verified plaintext included)."""
    return {
        "id": doc["_id"],
        "state": doc["state"],
        "server_id": doc["server_id"],
        "conversation": doc.get("conversation"),
        "room": doc.get("room"),
        "sender": doc["sender"],
        "sender_device": int(doc["sender_device"]),
        "sent_at": int(doc["sent_at"]),
        "reporter": doc["reporter"],
        "reporter_device": doc.get("reporter_device"),
        "text": report_text(doc),
        "created_at": int(doc["created_at"]),
        "resolution": doc.get("resolution"),
    }


def report_text(doc: dict[str, Any]) -> str:
    """A report's plaintext for display: its stored bytes as UTF-8 (an invalid sequence
    shown as U+FFFD). A report filed before the plaintext was stored once has it as
    ``text`` beside a base64url copy."""
    raw = doc.get("plaintext")
    if isinstance(raw, bytes):
        return raw.decode("utf-8", errors="replace")
    return str(doc.get("text", ""))
