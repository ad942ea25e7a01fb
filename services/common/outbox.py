"""A transactional outbox in a MongoDB collection (the keys and rooms services' events).

An event is recorded here before (or with) the change it announces, then
produced to Kafka, and its entry is deleted only after the broker's ack. An
entry is written leased (``due`` in the future), so that the drain loop
leaves it to its writer for now; one that was not confirmed (the broker
away, the process killed) becomes due when its lease ends and any replica's
drain loop (:func:`drain_forever`) sends it again, leasing it first so that
one replica does. Consumers get each event at least once
(docs/keys.md and docs/rooms.md, "Events").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection

log = logging.getLogger(__name__)

Doc = dict[str, Any]


class Outbox:
    def __init__(self, coll: AsyncCollection[Doc]) -> None:
        self.coll = coll

    async def ensure_indexes(self) -> None:
        await self.coll.create_index([("due", ASCENDING)])

    async def add(
        self, key: str, value: bytes, headers: Sequence[tuple[str, bytes]], due: float,
        **fields: Any,
    ) -> ObjectId:  # fmt: skip
        """Record an event (Kafka key, value and headers), leased until ``due``; ``fields``
        are kept with it for the service's drain (a check, a topic)."""
        result = await self.coll.insert_one({
            "key": key, "value": value.decode(),
            "headers": [[k, v.decode()] for k, v in headers],
            "due": due, "attempts": 0, "created_at": time.time(), **fields,
        })  # fmt: skip
        return ObjectId(result.inserted_id)

    async def lease(self, lease_s: float) -> Doc | None:
        """Take the next due entry for ``lease_s`` seconds (so one replica sends it)."""
        now = time.time()
        return await self.coll.find_one_and_update(
            {"due": {"$lte": now}},
            {"$set": {"due": now + lease_s}, "$inc": {"attempts": 1}},
            return_document=ReturnDocument.AFTER,
        )

    async def delete(self, entry_id: ObjectId) -> None:
        await self.coll.delete_one({"_id": entry_id})

    async def size(self) -> int:
        # The ``count`` command, not count_documents: the latter is an aggregation
        # that the embedded server runs about 25 times slower.
        reply = await self.coll.database.command("count", self.coll.name, query={})
        return int(reply["n"])


def entry_headers(entry: Doc) -> list[tuple[str, bytes]]:
    """A leased entry's Kafka headers, as :meth:`Outbox.add` took them."""
    return [(str(k), str(v).encode()) for k, v in entry.get("headers", [])]


async def drain_forever(
    drain_once: Callable[[], Awaitable[int]], interval_s: float, what: str = "outbox events"
) -> None:
    """Every ``interval_s``: ``drain_once`` (sends what is due; returns how many), for as
    long as the task runs; a failed round is logged and the next one tries again.
    ``what``: what a round deals with, for the logs."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            sent = await drain_once()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("drain failed", extra={"what": what, "error": repr(exc)})
            continue
        if sent:
            log.info("drained", extra={"what": what, "count": sent})


__all__ = ["Outbox", "drain_forever", "entry_headers"]
