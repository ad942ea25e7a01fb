"""What :meth:`parley.Client.events` yields, and the buffer that delivers it.

Every part of the client (account, keys, messenger) reports through one
:class:`EventBus`: listeners are called as events happen, and the last
10,000 events wait in a buffer for :meth:`EventBus.next_event`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

__all__ = [
    "ConnectionEvent",
    "DecryptFailed",
    "ErrorEvent",
    "Event",
    "EventBus",
    "KeyChanged",
    "Message",
    "MessageRemoved",
    "Receipt",
    "RoomChanged",
    "RoomMessage",
    "RoomMessageChanged",
    "RoomNotification",
    "SentElsewhere",
    "Typing",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    """Base class of what :meth:`Client.events` yields."""


@dataclass(frozen=True)
class Message(Event):
    peer_id: str
    username: str
    text: str
    sent_at: int
    server_id: str
    seq: int


@dataclass(frozen=True)
class SentElsewhere(Event):
    """A message this account sent from another of its devices, as it reaches this one:
    ``peer_id`` is the conversation's other party (our own id for a note to self),
    ``device`` the device it was written on."""

    peer_id: str
    text: str
    sent_at: int
    server_id: str
    device: int


@dataclass(frozen=True)
class MessageRemoved(Event):
    """A message was removed by its sender or an admin (a verified tombstone): show
    "removed" instead (``peer_id`` is the contact, or ``room:<id>``)."""

    peer_id: str
    server_id: str
    by: str


@dataclass(frozen=True)
class RoomMessage(Event):
    """A message in a room: a private room's (decrypted; ``server_id`` set) or a public
    room's live post (``seq`` is its timeline number).  ``own``: sent by this account
    (a private room's: from another of its devices); ``here``: a public post made by this
    very client (its text is what was typed: show its number)."""

    room_id: str
    sender_id: str
    username: str
    text: str
    sent_at: int
    server_id: str | None
    seq: int | None
    mentions: tuple[str, ...] = ()
    public: bool = False
    own: bool = False
    here: bool = False


@dataclass(frozen=True)
class RoomMessageChanged(Event):
    """A public room's message was edited, removed or restored (docs/moderation.md):
    show ``text`` (empty once removed or deleted) with ``marker`` (``edited``,
    ``edited_by_moderator``, ``removed_by_moderator``, ``deleted_by_author``; None: a
    restored message never edited)."""

    room_id: str
    seq: int
    rev: int
    marker: str | None
    text: str
    at: int


@dataclass(frozen=True)
class RoomChanged(Event):
    """A room changed: ``change`` is ``kind`` (an admin made it ``kind``: new messages
    go end-to-end encrypted to a private room, to the timeline of a public one; past
    messages stay as they were), ``state``, ``member_removed`` (``user_id``),
    ``member_left`` (``user_id``), ``role`` (``user_id`` is ``role`` now; after a
    hand-over, ``owner``, the old owner a moderator), ``deleted``, or ``settings``
    (``user_id`` renamed it or set its topic: ``name`` and ``topic`` are what it has
    now). ``username``: ``user_id``'s."""

    room_id: str
    change: str
    kind: str
    state: str
    user_id: str | None = None
    name: str | None = None
    topic: str | None = None
    role: str | None = None
    username: str | None = None


@dataclass(frozen=True)
class Typing(Event):
    """A member's device is typing in a room (``typing``), or stopped: show it until
    ``TYPING_TTL_S`` (6 s) after the last such event (``parley_contract.frames``)."""

    room_id: str
    user_id: str
    username: str
    device: int
    typing: bool


@dataclass(frozen=True)
class RoomNotification(Event):
    """A mention of you in a room (the list is ``Client.notifications``)."""

    seq: int
    room_id: str
    room_name: str
    sender: str
    excerpt: str
    at: int
    message_seq: int | None = None
    server_id: str | None = None


@dataclass(frozen=True)
class KeyChanged(Event):
    """A contact's identity key changed: warn, show the new safety number."""

    peer_id: str
    username: str
    safety_number: str
    old_safety_number: str | None


@dataclass(frozen=True)
class Receipt(Event):
    """``accepted`` (durable on the server), ``stored`` (in the recipient's inbox),
    ``delivered`` (the recipient's device acknowledged it) or ``failed``."""

    client_id: str
    peer_id: str
    status: str
    detail: str = ""


@dataclass(frozen=True)
class DecryptFailed(Event):
    peer_id: str
    username: str
    reason: str


@dataclass(frozen=True)
class ErrorEvent(Event):
    code: str
    message: str


@dataclass(frozen=True)
class ConnectionEvent(Event):
    state: str  # connected | disconnected | reconnecting | failed
    detail: str = ""


class EventBus:
    def __init__(self, keep: int = 10_000) -> None:
        self._backlog: collections.deque[Event] = collections.deque(maxlen=keep)
        self._arrived = asyncio.Event()
        self._listeners: list[Callable[[Event], None]] = []

    def emit(self, event: Event) -> None:
        self._backlog.append(event)
        self._arrived.set()
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                log.exception("event listener failed")

    def add_listener(self, listener: Callable[[Event], None]) -> None:
        self._listeners.append(listener)

    async def events(self) -> AsyncIterator[Event]:
        while True:
            yield await self.next_event()

    async def next_event(self, kind: type[Event] = Event, timeout: float = 30.0) -> Event:
        async def wait() -> Event:
            while True:
                for event in self._backlog:
                    if isinstance(event, kind):
                        self._backlog.remove(event)
                        return event
                self._arrived.clear()
                await self._arrived.wait()

        return await asyncio.wait_for(wait(), timeout)
