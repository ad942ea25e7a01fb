"""Acks the gateway writes into the hot inbox itself (docs/delivery.md, "Acks").

A socket's ack used to cross one more service: an HTTP call to delivery, which
verified the socket's token again, checked its revocations (three ``EXISTS``)
and ran the inbox's ack script. The gateway already holds the socket's
verified identity (a revoked session's sockets are closed: docs/gateway.md), so
for the common case, an ack of items still hot, it runs the same script
(services/common/inbox.py ``ACK_HOT``) against the same Redis and publishes the
`delivered` receipts itself: at a low rate, one wake-up of delivery and an HTTP
exchange fewer per message.

Anything else changes nothing here and goes to delivery as before: a range
holding a persisted item (MongoDB's copy is delivery's to delete), a range of
more than ``HOT_ACK_MAX`` numbers (a sync's ack of a large inbox: delivery walks
it in chunks), a counter missing from Redis (seeded from MongoDB by delivery),
and an ack past the last number issued (delivery refuses it with its code).

Acks are group-committed as delivery's are: those that arrive while a flush is
running go together in the next one (one pipeline of scripts, one publish of
all their receipts).
"""

from __future__ import annotations

import logging

import orjson
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Counter
from redis.commands.core import AsyncScript

from services.common import routing, scripts
from services.common.batching import GroupCommit
from services.common.inbox import ACK_HOT, queue_ack, receipts

log = logging.getLogger(__name__)

HOT_ACK_MAX = 256
"""The most numbers an ack taken here may cover; a larger one goes to delivery."""


class DirectAcks:
    def __init__(
        self, redis: aioredis.Redis, prefix: str, presence_ttl_s: float,
        registry: CollectorRegistry,
    ) -> None:  # fmt: skip
        self.redis = redis
        self.prefix = prefix
        self.presence_ttl_s = presence_ttl_s
        self._script: AsyncScript | None = None  # registered at the first ack
        self._acks: GroupCommit[str, int, bool] = GroupCommit(self._flush)
        self.acks = Counter(
            "parley_gateway_acks_total",
            "Socket acks, by who wrote them: the gateway (direct) or delivery.",
            ["path"], registry=registry,
        )  # fmt: skip
        self.direct = self.acks.labels("direct")
        self.by_delivery = self.acks.labels("delivery")
        self.acked = Counter(
            "parley_gateway_acked_total",
            "Inbox items acknowledged by a gateway's direct acks and deleted (delivery "
            "counts its own in parley_delivery_acked_total).",
            registry=registry,
        )

    async def ack(self, inbox: str, seq: int) -> bool:
        """Acknowledge ``inbox`` up to ``seq`` if its range is hot; False when nothing
        was changed and delivery must take the ack."""
        done = await self._acks.submit(inbox, seq)
        (self.direct if done else self.by_delivery).inc()
        return done

    async def _flush(self, batch: dict[str, list[int]]) -> dict[str, list[bool | BaseException]]:
        done: set[str] = set()
        try:
            done = await self._ack({inbox: max(seqs) for inbox, seqs in batch.items()})
        except Exception as exc:  # delivery takes them (and reports an outage)
            log.info("direct acks failed, delivery takes them: %r", exc)
        return {inbox: [inbox in done] * len(seqs) for inbox, seqs in batch.items()}

    async def _ack(self, tops: dict[str, int]) -> set[str]:
        """Run the ack script for each inbox (hot ranges only); publish the receipts.
        Returns the inboxes acknowledged."""
        p = self.prefix
        if self._script is None:
            self._script = scripts.register(self.redis, ACK_HOT)
        async with self.redis.pipeline(transaction=False) as pipe:
            for inbox, top in tops.items():
                await queue_ack(pipe, self._script, p, inbox, top, strict=True,
                                hot_only_max=HOT_ACK_MAX)  # fmt: skip
            results = await pipe.execute()
        done: set[str] = set()
        docs = []
        for inbox, res in zip(tops, results, strict=True):
            # -1: no counter in Redis; {-2, n}: past n; {-3}: not all hot or too many.
            if not isinstance(res, list) or int(res[0]) < 0:
                continue
            done.add(inbox)
            # An item's JSON; a private room's copy is its seq alone (no receipt).
            docs += [orjson.loads(r) for r in res[3:] if isinstance(r, bytes)]
            self.acked.inc(len(res) - 3)
        if docs:
            try:
                await routing.publish(self.redis, p, self.presence_ttl_s, receipts(docs))
            except Exception as exc:  # acknowledged all the same: receipts are best effort
                log.warning("delivered receipts not published: %r", exc)
        return done
