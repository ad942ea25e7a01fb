"""Reports, unsend and tombstones (docs/moderation-messages.md, docs/client.md).

- **Report** a message you received: the SDK kept, with the history entry,
  what the server needs to verify it (the message's metadata, its commitment
  and reporting tag, and the franking key decryption gave); :meth:`report`
  sends them with the plaintext. Only that one message is revealed.
- **Unsend** a message you sent: :meth:`unsend` asks the server to remove it
  everywhere; every device of the conversation gets a tombstone.
- **Tombstones**: a ``tombstone`` frame is checked against the delivery
  service's published Ed25519 key (``kid``); a valid one turns the history
  entry into a "removed" marker (its text is dropped from this device) and
  emits :class:`parley.events.MessageRemoved`. One that does not verify is
  ignored (and acknowledged).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from parley_contract import frames as f
from parley_contract.envelopes import conversation_id, message_server_id, room_server_id

from parley.account import Account
from parley.api import Api
from parley.crypto.encoding import b64decode, b64encode
from parley.crypto.errors import CryptoError
from parley.crypto.primitives import ed25519_verify
from parley.errors import ApiError, ParleyError, ServerUnavailable
from parley.events import EventBus, MessageRemoved
from parley.store import Store, Transaction

log = logging.getLogger(__name__)


def alias_key(server_id: str) -> str:
    """Where the history ref (client id) of a message this device sent is kept, by its
    server id (tombstones name messages by server id)."""
    return f"sid:{server_id}"


def report_fields(
    frame: f.Message, franking_key: bytes, plaintext: bytes, text: str
) -> dict[str, Any] | None:
    """What a report of this received message needs, kept in its history entry (None:
    the server gave no tag, the message cannot be reported)."""
    if not frame.franking_tag or not frame.commitment or frame.sent_at is None:
        return None
    out: dict[str, Any] = {
        "sender": frame.from_, "sender_device": frame.from_device, "sent_at": frame.sent_at,
        "conversation": frame.conversation, "commitment": frame.commitment,
        "franking_tag": frame.franking_tag, "franking_key": b64encode(franking_key),
    }  # fmt: skip
    if text.encode() != plaintext:  # not valid UTF-8: keep the exact bytes
        out["plaintext"] = b64encode(plaintext)
    return out


class Moderation:
    def __init__(
        self, api: Api, store: Callable[[], Store], account: Account, events: EventBus
    ) -> None:
        self.api = api
        self._store = store
        self.account = account
        self.events = events
        self._keys: dict[str, bytes] = {}

    # -- finding a message ----------------------------------------------------------------
    def find(self, ref: str, peer_id: str | None = None) -> tuple[str, dict[str, Any]]:
        """The history entry whose server id (or, for what this device sent, client id)
        starts with ``ref`` (``last`` / ``last-in`` / ``last-out`` with ``peer_id``);
        returns (its server id, the entry)."""
        me = self.account.user_id
        assert me is not None
        ref = ref.strip().lower()
        tx = self._store().read()
        peers = [peer_id] if peer_id is not None else [str(p["user_id"]) for p in tx.peers()]
        if peer_id is None and tx.history(me, 1):
            peers.append(me)  # notes to self
        entries = [{"peer": peer, **e} for peer in peers for e in tx.history(peer)]
        found: list[tuple[str, dict[str, Any]]] = []
        for entry in entries:
            if entry.get("kind") not in ("message", "removed"):
                continue
            sid = entry_server_id(entry, me)
            if sid is None:
                continue
            if ref in ("last", "last-in", "last-out"):
                wanted = {"last": ("in", "out"), "last-in": ("in",), "last-out": ("out",)}[ref]
                if entry.get("dir") in wanted:
                    found = [(sid, entry)]
                continue
            client_id = str(entry.get("client_id", ""))
            if len(ref) >= 4 and (sid.startswith(ref) or client_id.startswith(ref)):
                found.append((sid, entry))
        if not found:
            raise ParleyError(f"No message {ref!r} in your history (see `parley history --ids`).")
        if len(found) > 1:
            raise ParleyError(f"{ref!r} names {len(found)} messages: give more characters.")
        return found[0]

    # -- reporting --------------------------------------------------------------------------
    async def report(self, ref: str, peer_id: str | None = None) -> dict[str, Any]:
        """Report a message you received to the server's admins (its plaintext is revealed
        to them, nothing else); returns ``{id, state, duplicate}``."""
        server_id, entry = self.find(ref, peer_id)
        if entry.get("dir") != "in":
            raise ParleyError("Only a message you received can be reported.")
        fields = entry.get("report")
        if entry.get("kind") == "removed":
            raise ParleyError("That message was removed; it can no longer be reported.")
        if not isinstance(fields, dict):
            raise ParleyError("That message cannot be reported (the server gave it no tag).")
        body = {k: v for k, v in fields.items() if k != "plaintext"}
        plaintext = fields.get("plaintext") or b64encode(str(entry.get("text", "")).encode())
        body.update(server_id=server_id, plaintext=plaintext)
        answer: dict[str, Any] = await self.api.request("POST", "/delivery/v1/reports", json=body)
        async with self._store().transaction() as tx:
            tx.update_message(server_id, reported=answer.get("id"))
        return answer

    # -- unsending --------------------------------------------------------------------------
    async def unsend(self, ref: str, peer_id: str | None = None) -> dict[str, Any]:
        """Remove a message you sent, from every inbox and device (tombstones)."""
        server_id, entry = self.find(ref, peer_id)
        if entry.get("dir") != "out":
            raise ParleyError("Only a message you sent can be unsent.")
        me = self.account.user_id
        assert me is not None
        client_id = entry.get("client_id")
        if not client_id or entry_server_id({**entry, "server_id": None}, me) != server_id:
            raise ParleyError("This device does not know that message's client id.")
        room, peer = entry.get("room"), str(entry["peer"])
        conversation = (
            f"room:{room}"
            if room
            else peer
            if peer.startswith("room:")
            else conversation_id(me, peer)
        )
        query = urlencode({"client_id": str(client_id), "conversation": conversation})
        answer: dict[str, Any] = await self.api.request(
            "DELETE", f"/delivery/v1/messages/{server_id}?{query}"
        )
        return answer

    # -- tombstones -------------------------------------------------------------------------
    async def _public_key(self, kid: str) -> bytes | None:
        if kid not in self._keys:
            answer = await self.api.request("GET", "/delivery/v1/moderation/keys", auth=False)
            for key in (answer or {}).get("keys", []):
                self._keys[str(key["kid"])] = b64decode(str(key["public_key"]))
        return self._keys.get(kid)

    async def verify(self, frame: f.Tombstone) -> bool:
        try:
            key = await self._public_key(frame.kid)
            if key is None:
                return False
            signed = f.tombstone_signed_bytes(
                kid=frame.kid, server_id=frame.server_id, sender=frame.from_,
                conversation=frame.conversation, by=frame.by, at=frame.at,
            )  # fmt: skip
            ed25519_verify(key, b64decode(frame.signature), signed)
        except ServerUnavailable:
            # The keys could not be read now: the tombstone is not processed (nor
            # acknowledged): the connection drops and the sync brings it again.
            raise
        except ApiError as exc:
            if exc.status == 429 or exc.status >= 500:  # as the web client: for now
                raise ServerUnavailable(f"The moderation keys: {exc}") from exc
            log.warning("ignoring a tombstone that does not verify: %s", exc)
            return False
        except (CryptoError, ValueError, ParleyError) as exc:
            log.warning("ignoring a tombstone that does not verify: %s", exc)
            return False
        return True

    def apply(self, tx: Transaction, frame: f.Tombstone) -> MessageRemoved | None:
        """Turn the message's history entry into a "removed" marker (inside the
        transaction that records the tombstone); a marker is added when this device
        never had the message."""
        me = self.account.user_id
        ref = frame.server_id
        if not tx.has_message(ref):
            alias = tx.get(alias_key(frame.server_id))
            ref = str(alias) if alias else ref
        changes: dict[str, Any] = {
            "kind": "removed", "text": "", "removed_by": frame.by, "removed_at": frame.at,
            "report": None,
        }  # fmt: skip
        if tx.has_message(ref):
            tx.update_message(ref, **changes)
        else:
            peer = _peer_of(frame, me)
            if peer is None:
                return None
            entry = {
                "dir": "out" if frame.from_ == me else "in", "peer": peer,
                "at": frame.at, "server_id": frame.server_id, **changes,
            }  # fmt: skip
            tx.add_message(peer, entry, ref=frame.server_id)
        return MessageRemoved(_peer_of(frame, me) or "", frame.server_id, frame.by)


def entry_server_id(entry: dict[str, Any], me: str) -> str | None:
    """A history entry's server id (what this device sent: derived from its client id)."""
    if entry.get("server_id"):
        return str(entry["server_id"])
    if entry.get("dir") == "out" and entry.get("client_id"):
        if entry.get("room"):
            return room_server_id(str(entry["room"]), me, str(entry["client_id"]))
        return message_server_id(me, str(entry["client_id"]))
    return None


def _peer_of(frame: f.Tombstone, me: str | None) -> str | None:
    conv = frame.conversation or ""
    if conv.startswith("room:"):
        return conv
    if conv.startswith("dm:"):
        others = [p for p in conv[3:].split(":") if p != me]
        return others[0] if others else me  # ``dm:<me>:<me>``: a note to self
    return None
