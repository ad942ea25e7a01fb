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
  ignored (and acknowledged). One signed with a key this client does not have, even
  after reading the keys again (a rolling deploy: the task that answered
  ``/moderation/keys`` did not have the new key yet), is acknowledged and **kept** in
  the store, and tried again with the keys read again (:meth:`Moderation.keep`), within
  bounds: ``TOMBSTONE_TRIES`` tries (at most one per item per wait of
  ``TOMBSTONE_RETRY``, however often the client connects), ``TOMBSTONE_KEEP_MS``,
  ``TOMBSTONES_KEPT`` kept.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import urlencode

import msgspec
from parley_contract import frames as f
from parley_contract.envelopes import conversation_id, message_server_id, room_server_id

from parley.account import Account
from parley.api import Api
from parley.crypto.encoding import b64decode, b64encode
from parley.crypto.errors import CryptoError
from parley.crypto.primitives import ed25519_verify
from parley.errors import ApiError, ParleyError, ServerUnavailable
from parley.events import Event, EventBus, MessageRemoved
from parley.store import Store, Transaction

log = logging.getLogger(__name__)

KEPT_KEY = "tombstones_kept"
"""The tombstones kept for a key not known yet (:meth:`Moderation.keep`), in arrival
order: ``{"frame", "first" (ms), "tries", "last" (ms of the last try counted)}``."""
TOMBSTONE_RETRY = (30.0, 600.0)
"""First and longest wait (s) between the counted tries of a kept tombstone: its first
try is due this long after it came, each next one after twice the wait before, up to
the longest (:func:`tombstone_due`)."""
TOMBSTONE_TRIES = 12
"""Tries of a kept tombstone before it is dropped: with the waits above, ~1.4 h (30 s,
1, 2, 4, 8 min, then 10 min) whether the client stays connected or connects every
minute (a round before an item is due reads the keys, but counts it no try)."""
TOMBSTONE_KEEP_MS = 24 * 3600 * 1000
"""Nor is one tried again this long after it came (a device offline meanwhile)."""
TOMBSTONES_KEPT = 500
"""Kept at most (the oldest go): what a flood of them can cost is bounded."""

Spawn = Callable[[Coroutine[Any, Any, Any]], "asyncio.Task[Any]"]
Take = Callable[[Transaction, f.Tombstone], Event | None]
"""Apply a verified tombstone in a transaction (``Messenger._take_tombstone``)."""


def _now_ms() -> int:
    """The wall clock in ms (kept tombstones' times are stored: they outlive a process)."""
    return int(time.time() * 1000)


def tombstone_due(item: dict[str, Any], retry_wait: tuple[float, float]) -> tuple[int, int]:
    """When the next try of a kept tombstone counts (ms), and how much earlier a round
    still counts it (a timer firing a few ms before, another clock): ``retry_wait``'s
    first wait after it came, then twice the wait before, up to the longest, from its
    last counted try."""
    first, longest = retry_wait
    wait_ms = int(min(first * 2 ** min(int(item.get("tries") or 0), 32), longest) * 1000)
    since = int(item.get("last") or item.get("first") or 0)
    return since + wait_ms, min(wait_ms // 10, 1000)


class UnknownTombstoneKey(ParleyError):
    """A tombstone names a key (``kid``) the delivery service does not publish, even
    when its keys are read again: kept and tried later (:meth:`Moderation.keep`)."""

    def __init__(self, kid: str) -> None:
        super().__init__(f"a tombstone signed with key {kid!r}, not published (yet)")
        self.kid = kid


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
        self.retry_wait = TOMBSTONE_RETRY
        """First and longest wait between tries of the kept tombstones."""
        self._retry_task: asyncio.Task[Any] | None = None
        self._retry_wake = asyncio.Event()
        self._retry_now = False

    # -- finding a message ----------------------------------------------------------------
    async def find(self, ref: str, peer_id: str | None = None) -> tuple[str, dict[str, Any]]:
        """The history entry whose server id (or, for what this device sent, client id)
        starts with ``ref`` (``last`` / ``last-in`` / ``last-out`` with ``peer_id``);
        returns (its server id, the entry).

        Without ``peer_id`` every conversation is searched, private rooms' (``room:<id>``)
        too: an id is looked up in the store's index of ids (``Transaction.find_messages``:
        the few rows sharing its first characters), never by reading each conversation.
        A store written before that index has it built here, once."""
        me = self.account.user_id
        assert me is not None
        ref = ref.strip().lower()
        store = self._store()
        if ref in ("last", "last-in", "last-out"):
            return self._find_last(ref, peer_id)
        if store.read().ids_pending():
            async with store.transaction() as tx:
                n = tx.index_ids(lambda entry: [entry_server_id(entry, me) or ""])
            log.info("indexed the ids of %d history entries", n)
        found: list[tuple[str, dict[str, Any]]] = []
        for entry in store.read().find_messages(ref, peer_id):
            if entry.get("kind") not in ("message", "removed"):
                continue
            if peer_id is not None:
                entry = {"peer": peer_id, **entry}
            sid = entry_server_id(entry, me)
            if sid is None:
                continue
            client_id = str(entry.get("client_id", ""))
            if sid.startswith(ref) or client_id.startswith(ref):
                found.append((sid, entry))
        return _one(ref, found)

    def _find_last(self, ref: str, peer_id: str | None) -> tuple[str, dict[str, Any]]:
        """``last``, ``last-in``, ``last-out``: of ``peer_id``'s conversation (without it,
        of the contacts' and the notes to self, as before rooms)."""
        me = self.account.user_id
        assert me is not None
        tx = self._store().read()
        peers = [peer_id] if peer_id is not None else [str(p["user_id"]) for p in tx.peers()]
        if peer_id is None and tx.history(me, 1):
            peers.append(me)  # notes to self
        wanted = {"last": ("in", "out"), "last-in": ("in",), "last-out": ("out",)}[ref]
        found: list[tuple[str, dict[str, Any]]] = []
        for peer in peers:
            for entry in tx.history(peer):
                if entry.get("kind") not in ("message", "removed"):
                    continue
                sid = entry_server_id(entry, me)
                if sid is not None and entry.get("dir") in wanted:
                    found = [(sid, {"peer": peer, **entry})]
        return _one(ref, found)

    # -- reporting --------------------------------------------------------------------------
    async def report(self, ref: str, peer_id: str | None = None) -> dict[str, Any]:
        """Report a message you received to the server's admins (its plaintext is revealed
        to them, nothing else); returns ``{id, state, duplicate}``."""
        server_id, entry = await self.find(ref, peer_id)
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
        server_id, entry = await self.find(ref, peer_id)
        if entry.get("dir") != "out":
            raise ParleyError("Only a message you sent can be unsent.")
        me = self.account.user_id
        assert me is not None
        client_id = entry.get("client_id")
        if not client_id or entry_server_id({**entry, "server_id": None}, me) != server_id:
            raise ParleyError("This device does not know that message's client id.")
        room, peer = entry.get("room"), str(entry.get("peer") or "")
        if not room and not peer:
            raise ParleyError("This device does not know that message's conversation.")
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
    async def _read_keys(self) -> None:
        """Read the published keys again (a key already known is kept: a rolling deploy
        may answer from a task that does not have every key yet)."""
        answer = await self.api.request("GET", "/delivery/v1/moderation/keys", auth=False)
        for key in (answer or {}).get("keys", []):
            self._keys[str(key["kid"])] = b64decode(str(key["public_key"]))

    async def _public_key(self, kid: str) -> bytes | None:
        if kid not in self._keys:
            await self._read_keys()
        return self._keys.get(kid)

    async def verify(self, frame: f.Tombstone) -> bool:
        """Whether the tombstone's signature verifies (False: it is ignored). Raises
        :class:`UnknownTombstoneKey` if it names a key the delivery service does not
        publish, even read again (:meth:`keep` it), and :class:`ServerUnavailable` if the
        keys cannot be read now (it is not processed: the sync brings it again)."""
        try:
            key = await self._public_key(frame.kid)
        except ServerUnavailable:
            # The keys could not be read now: the tombstone is not processed (nor
            # acknowledged): the connection drops and the sync brings it again.
            raise
        except ApiError as exc:
            if exc.status == 429 or exc.status >= 500:  # as the web client: for now
                raise ServerUnavailable(f"The moderation keys: {exc}") from exc
            log.warning("ignoring a tombstone that does not verify: %s", exc)
            return False
        except (CryptoError, ValueError, ParleyError) as exc:  # an answer that is no list
            log.warning("ignoring a tombstone that does not verify: %s", exc)
            return False
        if key is None:
            raise UnknownTombstoneKey(frame.kid)
        return _signed_by(frame, key)

    # A key not known yet: kept, tried again, within bounds --------------------------------
    def keep(self, tx: Transaction, frame: f.Tombstone) -> None:
        """Keep a tombstone whose key this client does not have (:class:`UnknownTombstoneKey`)
        to try again later (:meth:`retry_soon`), in the transaction that acknowledges it:
        a key published since (a rolling deploy of delivery: a task without the new key
        answered ``/moderation/keys``) still removes the message. Once each (the same
        one delivered again is not kept twice); the oldest go past ``TOMBSTONES_KEPT``."""
        kept: list[dict[str, Any]] = tx.get(KEPT_KEY) or []
        raw = msgspec.to_builtins(frame)
        if any(item.get("frame") == raw for item in kept):
            return
        kept.append({"frame": raw, "first": _now_ms(), "tries": 0})
        for item in kept[:-TOMBSTONES_KEPT]:
            log.warning("dropping a tombstone kept for key %r: too many kept",
                        item["frame"].get("kid"))  # fmt: skip
        tx.put(KEPT_KEY, kept[-TOMBSTONES_KEPT:])

    def kept(self) -> int:
        """How many tombstones are kept for a key not known yet (:meth:`keep`)."""
        return len(self._store().read().get(KEPT_KEY) or [])

    def retry_soon(self, spawn: Spawn, take: Take, now: bool = False) -> None:
        """Try the kept tombstones when the first of them is due (:func:`tombstone_due`;
        ``now``: a round at once, which counts a try only for those due), and again while
        some are kept (:meth:`_retry`). One task at a time: a call while it runs wakes it."""
        if now:
            self._retry_now = True
        self._retry_wake.set()
        if self._retry_task is None or self._retry_task.done():
            self._retry_task = spawn(self._retry(take))

    def _next_due(self) -> float:
        """Seconds until the first kept tombstone is due (0: one is)."""
        kept: list[dict[str, Any]] = self._store().read().get(KEPT_KEY) or []
        dues = [tombstone_due(item, self.retry_wait) for item in kept if isinstance(item, dict)]
        if not dues:
            return 0.0
        return max(0.0, (min(at - early for at, early in dues) - _now_ms()) / 1000)

    async def _retry(self, take: Take) -> None:
        """Rounds of :meth:`retry_kept` while some are kept: when the first is due, at
        once when asked (``retry_soon(now=True)``: a connect); while the keys cannot be
        read, after ``retry_wait``'s first wait, doubling to its longest."""
        first, longest = self.retry_wait
        loop = asyncio.get_running_loop()
        backoff = first
        deadline = loop.time() + self._next_due()
        while self.kept():
            try:
                await asyncio.wait_for(self._retry_wake.wait(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                pass
            else:
                self._retry_wake.clear()
                if not self._retry_now:  # one more kept: it may be due before the deadline
                    deadline = min(deadline, loop.time() + self._next_due())
                    continue
            self._retry_wake.clear()
            self._retry_now = False
            try:
                read = await self.retry_kept(take)
            except Exception:
                log.exception("trying the kept tombstones again failed")
                read = False
            if read:
                backoff = first
                deadline = loop.time() + self._next_due()
            else:
                deadline = loop.time() + backoff
                backoff = min(backoff * 2, longest)

    async def retry_kept(self, take: Take) -> bool:
        """Read the keys again (once), then go through the kept tombstones: one that
        verifies is taken (``take``: the history changed, in one transaction with the kept
        list), one whose signature fails under its (now known) key is dropped, as at its
        arrival; one whose key is still unknown counts a try if it is due
        (:func:`tombstone_due`: at most one try per wait, however often this runs), and is
        dropped past ``TOMBSTONE_TRIES`` tries; one ``TOMBSTONE_KEEP_MS`` after it came is
        dropped in any round (a tombstone no key will ever verify must not be kept for
        ever). Keys that cannot be read now (no answer, 429, 5xx): no try counted; a
        refusal or an answer that does not read: the keys known are used, tries counted.
        Returns whether the keys were read (or refused for good)."""
        if not self.kept():
            return True
        read = True
        try:
            await self._read_keys()
        except ServerUnavailable:
            read = False
        except ApiError as exc:
            if exc.status == 429 or exc.status >= 500:
                read = False
            else:
                log.warning("the moderation keys were refused: %s", exc)
        except Exception as exc:  # a 200 that is no list of keys ({"keys": null}, ...)
            log.warning("the moderation keys could not be read: %r", exc)
        events: list[Event] = []
        now = _now_ms()
        async with self._store().transaction() as tx:
            left: list[dict[str, Any]] = []
            for item in tx.get(KEPT_KEY) or []:
                try:
                    frame = msgspec.convert(item["frame"], f.Tombstone)
                    first = int(item["first"])
                except (msgspec.ValidationError, KeyError, TypeError, ValueError):
                    log.warning("dropping a kept tombstone that no longer reads")
                    continue
                key = self._keys.get(frame.kid)
                if key is None:
                    due, early = tombstone_due(item, self.retry_wait)
                    if read and now >= due - early:
                        item = {**item, "tries": int(item.get("tries") or 0) + 1, "last": now}
                    if now - first >= TOMBSTONE_KEEP_MS or item.get("tries", 0) >= (
                        TOMBSTONE_TRIES
                    ):
                        log.warning("dropping a tombstone for %s: its key %r is still "
                                    "unknown after %d tries", frame.server_id, frame.kid,
                                    item.get("tries", 0))  # fmt: skip
                    else:
                        left.append(item)
                elif _signed_by(frame, key):
                    event = take(tx, frame)
                    if event is not None:
                        events.append(event)
            if left:
                tx.put(KEPT_KEY, left)
            else:
                tx.delete(KEPT_KEY)
        for event in events:
            self.events.emit(event)
        return read

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


def _signed_by(frame: f.Tombstone, key: bytes) -> bool:
    """Whether ``key`` signed the tombstone (False, logged: it is ignored)."""
    try:
        signed = f.tombstone_signed_bytes(
            kid=frame.kid, server_id=frame.server_id, sender=frame.from_,
            conversation=frame.conversation, by=frame.by, at=frame.at,
        )  # fmt: skip
        ed25519_verify(key, b64decode(frame.signature), signed)
    except (CryptoError, ValueError, ParleyError) as exc:
        log.warning("ignoring a tombstone that does not verify: %s", exc)
        return False
    return True


def _one(ref: str, found: list[tuple[str, dict[str, Any]]]) -> tuple[str, dict[str, Any]]:
    if not found:
        raise ParleyError(f"No message {ref!r} in your history (see `parley history --ids`).")
    if len(found) > 1:
        raise ParleyError(f"{ref!r} names {len(found)} messages: give more characters.")
    return found[0]


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
