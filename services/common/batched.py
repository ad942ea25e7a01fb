"""Look-ups of many keys asked in one request (the gateway's recipients and device
lists: docs/gateway.md, "What a pod does": send).

A private room's first message from a device is a pairwise send to every other member
(a thousand in a room of 1,000), each to a recipient the gateway has not seen: one
request to the auth service and one to the key directory per send, two thousand in
all, took most of those services' CPU (docs/BENCHMARKS.md). :class:`Batched` asks for
the keys that callers wait on together: the first caller's key is asked at the next
turn of the event loop with every key asked until then; keys asked while a request is
on its way wait for it and go together in the next one (so a request holds what came
while the one before was answered: the faster they come, the more a request holds),
at most ``most`` keys a request. Only full requests go beside one on its way, up to
``parallel`` at a time. A key already waiting or on its way is not asked twice.
A key is off its way as soon as its request is answered, a turn or two before its
callers run again: a fetch whose answers are cached caches them itself, before it
returns (the gateway's look-ups do), or a caller in between asks again.

A request's size is the rate the keys come at times the time a request takes: the
4,999 sends of a 5,000-member room's key distribution on one socket, read one frame
at a time, against the gateway tests' in-process stand-in (a request answered in about
a millisecond) go in ~780 requests of ~6 ids; a slower service gets fuller ones.

A request's answer or error is every one of its callers'; a caller that gives up
(its socket closed) cancels nothing for the others. A request goes with one of its
callers' tokens (the latest's); refused (:class:`TokenRefused`: that user logged out,
was blocked, or the token ran out while the send was on its way), it is asked again
with another caller's, so one user's token never fails the others' look-ups.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from services.common.errors import ApiError, ErrorCode

V = TypeVar("V")

TOKENS_TRIED = 3
"""The most callers' tokens one request tries (each refused: the next caller's)."""


class TokenRefused(ApiError):
    """The other service refused the token a request was made with (401): that
    caller's own trouble, not the service's (not "down": services/common/stale.py).
    Its caller is answered ``service_unavailable`` all the same: the send is kept and
    goes again with a fresh token (a token that ran out meanwhile is no reason to fail
    a message)."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.UNAVAILABLE, message)


Fetch = Callable[[Sequence[str], str], Awaitable[dict[str, V]]]
"""Answers for keys, asked with a caller's bearer token: every key asked is in the
answer (or it raises for all of them)."""


class Batched(Generic[V]):
    __slots__ = (
        "_fetch", "_on_way", "_sending", "_tasks", "_tokens", "_waiting", "_workers", "most",
        "parallel",
    )  # fmt: skip

    def __init__(self, fetch: Fetch[V], most: int, parallel: int = 4) -> None:
        self._fetch = fetch
        self.most = most
        self.parallel = parallel
        self._waiting: dict[str, asyncio.Future[V]] = {}  # asked, not yet sent
        self._on_way: dict[str, asyncio.Future[V]] = {}  # sent, not yet answered
        self._tokens: dict[str, str] = {}  # each waiting key's caller's token
        self._tasks: set[asyncio.Task[None]] = set()  # (the loop keeps only weak references)
        self._workers = 0  # tasks asking (counted down as each ends, not after)
        self._sending = 0  # requests on their way

    async def ask(self, key: str, token: str, *, fresh: bool = False) -> V:
        """``key``'s answer; ``fresh``: from a request sent after this call (one already
        on its way may have been answered before a change the caller knows of)."""
        answer = self._waiting.get(key) or (None if fresh else self._on_way.get(key))
        if answer is None:
            answer = asyncio.get_running_loop().create_future()
            self._waiting[key] = answer
            self._tokens[key] = token
            if not self._workers or (
                len(self._waiting) >= self.most and self._workers < self.parallel
            ):
                self._workers += 1
                task = asyncio.create_task(self._work())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        return await asyncio.shield(answer)

    async def _work(self) -> None:
        try:
            await asyncio.sleep(0)  # this turn's callers join the first request
            # A partial request only when none is on its way (that one's worker asks
            # again when it is answered).
            while self._waiting and (not self._sending or len(self._waiting) >= self.most):
                await self._request()
        finally:
            self._workers -= 1

    async def _request(self) -> None:
        keys = list(self._waiting)[: self.most]
        answers = {k: self._waiting.pop(k) for k in keys}
        # The latest callers' tokens first (the freshest), each once.
        tokens = list(dict.fromkeys(reversed([self._tokens.pop(k) for k in keys])))
        self._on_way.update(answers)
        self._sending += 1
        try:
            found = await self._fetch_with(keys, tokens[:TOKENS_TRIED])
        except asyncio.CancelledError:  # the pod is stopping
            for answer in answers.values():
                answer.cancel()
            raise
        except Exception as exc:  # every caller's error
            for answer in answers.values():
                if not answer.done():
                    answer.set_exception(exc)
                    answer.exception()  # retrieved: its callers raise it, if any is left
        else:
            for key, answer in answers.items():
                if not answer.done():
                    answer.set_result(found[key])
        finally:
            self._sending -= 1
            for key, answer in answers.items():
                if self._on_way.get(key) is answer:
                    del self._on_way[key]

    async def _fetch_with(self, keys: list[str], tokens: list[str]) -> dict[str, V]:
        """The answers, asked with the first token the service takes."""
        for token in tokens[:-1]:
            try:
                return await self._fetch(keys, token)
            except TokenRefused:
                continue  # that caller's token: another caller's may do
        return await self._fetch(keys, tokens[-1])

    def forget(self, key: str) -> None:
        """Calls from now on ask again (what is on its way may be out of date; what is
        still waiting is asked after this)."""
        self._on_way.pop(key, None)

    def forget_all(self) -> None:
        """:meth:`forget` of every key on its way."""
        self._on_way.clear()
