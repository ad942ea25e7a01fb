"""Group commit: the calls that arrive while a flush is running go together in the next.

Delivery's acks (services/delivery/handlers.py) and a gateway's direct acks
(services/gateway/acks.py) both cost one Redis pipeline per flush, whatever the
number of acks in it; this is the part they share.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")
R = TypeVar("R")

Flush = Callable[[dict[K, list[V]]], Awaitable[dict[K, list["R | BaseException"]]]]


class GroupCommit(Generic[K, V, R]):
    """``await submit(key, value)`` waits for the flush that takes it. ``flush`` gets
    every value waiting, by key, and answers each in the same order: a result, or an
    exception to raise to its caller. If ``flush`` raises, every caller of that
    flush gets the exception."""

    def __init__(self, flush: Flush[K, V, R]) -> None:
        self._flush_fn = flush
        self._pending: dict[K, list[tuple[V, asyncio.Future[R]]]] = {}
        self._flusher: asyncio.Task[None] | None = None

    async def submit(self, key: K, value: V) -> R:
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(key, []).append((value, fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await fut

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, {}
            try:
                answers = await self._flush_fn({k: [v for v, _ in vs] for k, vs in batch.items()})
            except Exception as exc:
                for waiting in batch.values():
                    for _, fut in waiting:
                        if not fut.done():
                            fut.set_exception(exc)
                continue
            for key, waiting in batch.items():
                for (_, fut), answer in zip(waiting, answers[key], strict=True):
                    if fut.done():
                        continue  # its caller stopped waiting
                    if isinstance(answer, BaseException):
                        fut.set_exception(answer)
                    else:
                        fut.set_result(answer)
