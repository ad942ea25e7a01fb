"""Moderation of end-to-end encrypted messages: verifiable reports and tombstones.

docs/moderation-messages.md has the rules; docs/crypto.md the cryptography.

**Reports.** A recipient reveals one message: its plaintext and franking key,
with the metadata and the reporting tag its ``message`` frame carried. The
tag must verify for those fields *and the reporter as the recipient*, and the
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
next sync.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
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
"""Unsends per user per minute. Nothing records which messages exist (a server id is a
hash of the sender and a client id), so a user could name made-up ones of a conversation
they are in without end: each sends a server-signed tombstone into every inbox of the
other party, which counts toward the inbox's waiting items."""


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
        self.limiter = RateLimiter(store.redis, f"{settings.redis_prefix}:delivery")

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
    async def report(self, claims: Claims, body: Any) -> dict[str, Any]:
        """Verify and file a report (``body``: models.ReportIn); returns ``{id, state,
        duplicate}``. A second report of one message by one reporter is the first one
        (``duplicate`` true, nothing new stored)."""
        me = claims.sub
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
        now = e.now_ms()
        doc = {
            "_id": e.new_server_id(),
            "key": hashlib.sha256(f"{me}|{body.server_id}".encode()).hexdigest(),
            "state": "open",
            "server_id": body.server_id,
            "conversation": conversation,
            "room": room,
            "sender": body.sender,
            "sender_device": body.sender_device,
            "sent_at": body.sent_at,
            "reporter": me,
            "reporter_device": claims.did,
            "commitment": body.commitment,
            "kid": kid,
            "text": plaintext.decode("utf-8", errors="replace"),
            "plaintext": body.plaintext,
            "created_at": now,
            "resolution": None,
        }
        filed, duplicate = await self.mstore.file_report(doc)
        log.info("report filed", extra={"report": filed["_id"], "duplicate": duplicate})
        return {"id": filed["_id"], "state": filed["state"], "duplicate": duplicate}

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
        it; the conversation must be one of the caller's (a room they can still see)."""
        await self.limiter.hit("unsend", claims.sub, UNSEND_LIMIT)
        _, room = parties_of(conversation)
        if server_id != (
            e.room_server_id(room, claims.sub, client_id)
            if room
            else e.message_server_id(claims.sub, client_id)
        ):
            raise ApiError(ErrorCode.NOT_SENDER, "Only the sender (or an admin) can remove it.")
        users = await self.parties.users(conversation, token, admin=False)
        if claims.sub not in users:
            raise ApiError(ErrorCode.NOT_RECIPIENT, "That conversation is not one of yours.")
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
        users = await self.parties.users(conversation, token, admin=True)
        return await self._remove(claims, token, server_id, sender, conversation, users,
                                  "admin", body.reason, ip)  # fmt: skip

    async def _remove(
        self, claims: Claims, token: str, server_id: str, sender: str, conversation: str,
        users: list[str], by: Remover, reason: str = "", ip: str | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Record the removal once, mark the message gone (a copy that arrives later is
        not stored), and send one signed tombstone per device inbox of the
        conversation's users (see the module's docstring). Idempotent: removing it again
        sends the same tombstones again."""
        at = e.now_ms()
        kid, signature = self.keys.sign_tombstone(
            server_id=server_id, sender=sender, conversation=conversation, by=by, at=at
        )
        inboxes = await self.parties.inboxes(list(dict.fromkeys([sender, *users])), token)
        record, existed = await self.mstore.record_tombstone({
            "_id": server_id, "by": by, "actor": claims.sub, "sender": sender,
            "conversation": conversation, "at": at, "kid": kid, "signature": signature,
            "reason": reason, "inboxes": len(inboxes),
        })  # fmt: skip
        if by == "admin":
            # Audited before anything can fail: a failure after the record (Kafka,
            # Redis) answered 500 and the admin's retry found it recorded, so nothing
            # was audited; nor when the sender had unsent it first. A retry audits
            # again, marked ``already``.
            after = {"by": by, "reason": reason, "inboxes": len(inboxes), "already": existed}
            await self._audit(claims, ip, "message.remove", "message", server_id, after=after)
        if existed:  # the same tombstone again (same signature: the dedup knows it)
            by, at, sender = record["by"], int(record["at"]), record["sender"]
            conversation = record["conversation"]
            kid, signature = record["kid"], record["signature"]
        await self.store.hot.mark_gone(server_id, self.settings.inbox_expiry_s + DAY_S)
        if conversation.startswith("room:"):
            await self.room_log.blank([server_id])  # after the mark (room_log.py, "Removal")
        producer = await self.producer.wait_ready(30)
        acks = []
        for inbox in inboxes:
            user, _, device = inbox.rpartition(".")
            env = e.TombstoneNotice(
                server_id=server_id, to=user, to_device=int(device), from_=sender,
                client_id=f"tombstone:{server_id}", conversation=conversation, sent_at=at,
                by=by, kid=kid, signature=signature, target_seq=None,
            )  # fmt: skip
            acks.append(
                await producer.send(
                    self.topics.messages, e.encode(env), key=inbox.encode(),
                    headers=kafka_headers(),
                )
            )  # fmt: skip
        await asyncio.gather(*acks)
        log.info("message removed", extra={"message_id": server_id, "by": by})
        return {"server_id": server_id, "by": by, "at": at, "inboxes": len(inboxes)}


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
        "text": doc["text"],
        "created_at": int(doc["created_at"]),
        "resolution": doc.get("resolution"),
    }
