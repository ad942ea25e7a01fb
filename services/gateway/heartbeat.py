"""The pod's heartbeat: one schedule for every socket, not aiohttp's timer per socket.

aiohttp's own heartbeat (``WebSocketResponse(heartbeat=...)``) keeps a timer
handle per socket, a second one while a ping waits for its pong, and a
callback on every chunk received: about 0.6 to 0.9 KB of every idle socket
(docs/BENCHMARKS.md, "Idle connections"). This keeps aiohttp's timing with
two :class:`~services.gateway.deadlines.Deadlines` for the whole pod:

- a socket that has sent nothing for ``interval`` seconds gets a ping;
- if nothing at all (its pong or any other frame) comes back within
  ``interval / 2`` seconds, its connection is dropped as aiohttp drops it: the
  transport is closed without a close frame, close code 1006;
- anything received moves the next ping to ``interval`` after it;
- a socket whose frame loop is handling a frame (``busy``: a sync waiting for
  delivery) is not dropped for an unread pong: it is looked at again after
  another ``interval / 2``.

A socket only records when it last heard from its client (``heard``); the
schedule looks at that when the socket's deadline comes, and files it again
for later if it has heard from it meanwhile, instead of moving it on every
frame. Deadlines are rounded up to whole seconds, as aiohttp rounds its own
(timeouts of 5 s and more), or to a twentieth of the interval if it is shorter
than 20 s.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Generic, Protocol, TypeVar

from services.gateway.deadlines import Deadlines


class Beating(Hashable, Protocol):
    """What the heartbeat needs of a socket."""

    heard: float
    """When the socket last received anything (``clock`` seconds); 0.0 from a ping
    on, until the next frame."""
    beat: float
    """The deadline the socket is filed under (set by the heartbeat)."""
    busy: bool
    """Its frame loop is handling a frame: the pong may wait unread behind it."""

    def ping(self) -> None:
        """Send a ping (nothing if the socket is closing)."""

    def abort(self) -> None:
        """Drop the connection: no answer to the ping (nothing if it is closing)."""


S = TypeVar("S", bound=Beating)


class Heartbeat(Generic[S]):
    """``visit(sock)``, if given, is called each time the schedule looks at a socket:
    at least once every :attr:`longest_gap` seconds while it is beating."""

    def __init__(
        self,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
        visit: Callable[[S], None] | None = None,
    ) -> None:
        self.interval = interval
        self.timeout = interval / 2  # as aiohttp's: an unanswered ping closes after this
        self._clock = clock
        self._visit = visit
        tick = min(1.0, interval / 20)
        self.longest_gap = interval + tick
        self._silent: Deadlines[S] = Deadlines(self._silent_for_long, clock, tick)
        self._pinged: Deadlines[S] = Deadlines(self._ping_unanswered, clock, tick)

    def add(self, sock: S) -> None:
        """Start beating for a socket that has just opened."""
        sock.heard = self._clock()
        sock.beat = sock.heard + self.interval
        self._silent.add(sock, sock.beat)

    def discard(self, sock: S) -> None:
        """Stop beating for a socket (it is closed)."""
        self._silent.discard(sock, sock.beat)
        self._pinged.discard(sock, sock.beat)

    def close(self) -> None:
        self._silent.close()
        self._pinged.close()

    def _silent_for_long(self, sock: S) -> None:
        if self._visit is not None:
            self._visit(sock)
        due = sock.heard + self.interval
        now = self._clock()
        if due > now:  # heard from since it was filed: the ping moves
            sock.beat = due
            self._silent.add(sock, due)
            return
        sock.heard = 0.0
        sock.beat = now + self.timeout
        self._pinged.add(sock, sock.beat)
        sock.ping()

    def _ping_unanswered(self, sock: S) -> None:
        if self._visit is not None:
            self._visit(sock)
        if sock.heard:  # a pong, or any frame, since the ping
            sock.beat = sock.heard + self.interval
            self._silent.add(sock, sock.beat)
            return
        if sock.busy:
            # Its frame loop waits on a handler (a sync behind a slow delivery): the
            # pong is unread, not missing. Looked at again after another timeout.
            sock.beat = self._clock() + self.timeout
            self._pinged.add(sock, sock.beat)
            return
        sock.abort()
