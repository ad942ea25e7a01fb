"""Look-ups of many keys asked in one request (the gateway's recipients and device
lists: docs/gateway.md, "What a pod does": send).

A private room's first message from a device is a pairwise send to every other member
(a thousand in a room of 1,000), each to a recipient the gateway has not seen: one
request to the auth service and one to the key directory per send, two thousand in
all, took most of those services' CPU (docs/BENCHMARKS.md). :class:`Batched` asks for
the keys that callers wait on together: the first caller's key is asked at the next
turn of the event loop with every key asked until then; keys asked while requests are
on their way go in the next one, at most ``most`` keys a request and ``parallel``
requests at a time. A key already waiting or on its way is not asked twice.

A request's answer or error is every one of its callers'; a caller that gives up
(its socket closed) cancels nothing for the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

V = TypeVar("V")

Fetch = Callable[[Sequence[str], str], Awaitable[dict[str, V]]]
"""Answers for keys, asked with a caller's bearer token: every key asked is in the
answer (or it raises for all of them)."""


class Batched(Generic[V]):
    __slots__ = ("_fetch", "_on_way", "_tasks", "_token", "_waiting", "most", "parallel")

    def __init__(self, fetch: Fetch[V], most: int, parallel: int = 4) -> None:
        self._fetch = fetch
        self.most = most
        self.parallel = parallel
        self._waiting: dict[str, asyncio.Future[V]] = {}  # asked, not yet sent
        self._on_way: dict[str, asyncio.Future[V]] = {}  # sent, not yet answered
        self._token = ""
        self._tasks: set[asyncio.Task[None]] = set()  # (the loop keeps only weak references)

    async def ask(self, key: str, token: str, *, fresh: bool = False) -> V:
        """``key``'s answer; ``fresh``: from a request sent after this call (one already
        on its way may have been answered before a change the caller knows of)."""
        answer = self._waiting.get(key) or (None if fresh else self._on_way.get(key))
        if answer is None:
            answer = asyncio.get_running_loop().create_future()
            self._waiting[key] = answer
            self._token = token  # the latest caller's: the freshest
            if len(self._tasks) < self.parallel:
                task = asyncio.create_task(self._work())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        return await asyncio.shield(answer)

    async def _work(self) -> None:
        await asyncio.sleep(0)  # this turn's callers join the first request
        while self._waiting:
            keys = list(self._waiting)[: self.most]
            answers = {k: self._waiting.pop(k) for k in keys}
            self._on_way.update(answers)
            try:
                found = await self._fetch(keys, self._token)
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
                for key, answer in answers.items():
                    if self._on_way.get(key) is answer:
                        del self._on_way[key]

    def forget(self, key: str) -> None:
        """Calls from now on ask again (what is on its way may be out of date; what is
        still waiting is asked after this)."""
        self._on_way.pop(key, None)

    def forget_all(self) -> None:
        """:meth:`forget` of every key on its way."""
        self._on_way.clear()
