"""Revocation keys that survive a Redis restart.

Every service refuses a token whose revocation key is in Redis
(:func:`services.common.auth.check_not_revoked`). Redis may lose its data (a
restart without persistence, a failover to an empty replica), and a lost key
would let a revoked token pass again until it expires. So the service that
sets such keys first records each one, with its expiry, in a MongoDB
collection it owns (:meth:`RevocationLog.add`), then sets it in Redis; and it
puts every live one back into Redis:

- at start, before it serves (:meth:`RevocationLog.restore`, start-up work);
- whenever Redis lost them: a marker key, set after each restore, is gone
  (:meth:`RevocationLog.keep`, checked every ``interval_s`` by every replica;
  restoring is idempotent, so replicas that race do no harm);
- when Redis lost only some: a failover to a replica that lags (replication is
  asynchronous) keeps the old marker but not the newest keys, and a Redis
  restored from an older snapshot lacks every key set since it. So every
  ``RECENT_EVERY_S`` the records of the last ``RECENT_WINDOW_S`` are set again,
  and every ``FULL_EVERY_S`` all of them (both idempotent).

Between a Redis restart and the next check (``interval_s``), revoked tokens
are not refused; the check is one ``EXISTS``, so the interval can be short.
Expired records are dropped at each restore and every few minutes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
from pymongo import ASCENDING, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection

log = logging.getLogger(__name__)

Doc = dict[str, Any]

# Records are read back in batches of this many.
BATCH = 500
# Expired records are deleted at least this often (besides at every restore).
PURGE_EVERY_S = 300.0
# The records added in the last RECENT_WINDOW_S are set again this often (what a
# failover to a lagging replica lost), and all of them every FULL_EVERY_S (what a
# Redis restored from an older snapshot lost).
RECENT_EVERY_S = 30.0
RECENT_WINDOW_S = 600.0
FULL_EVERY_S = 3600.0


class RevocationLog:
    """Redis revocation keys with their MongoDB record; ``marker_key`` says Redis has them."""

    def __init__(
        self, collection: AsyncCollection[Doc], redis: aioredis.Redis, marker_key: str
    ) -> None:
        self.collection = collection
        self.redis = redis
        self.marker_key = marker_key
        self._purged_at = float("-inf")
        self._recent_at = self._full_at = time.monotonic()

    async def ensure_indexes(self) -> None:
        await self.collection.create_index([("expires_at", ASCENDING)])
        await self.collection.create_index([("added_at", ASCENDING)])

    async def add(self, entries: Mapping[str, Mapping[str, Any]], ttl_s: int) -> None:
        """Set each key (with its record's fields) for ``ttl_s``: MongoDB first, then Redis."""
        if not entries:
            return
        now = time.time()
        expires_at = now + ttl_s
        await self.collection.bulk_write(
            [
                UpdateOne(
                    {"_id": key},
                    {"$set": {**fields, "expires_at": expires_at, "added_at": now}},
                    upsert=True,
                )
                for key, fields in entries.items()
            ],
            ordered=False,
        )
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in entries:
                pipe.set(key, b"1", ex=ttl_s)
            await pipe.execute()

    async def remove(self, keys: Sequence[str]) -> None:
        """Lift revocations (an unblock): from MongoDB first, so no restore brings them back."""
        if not keys:
            return
        await self.collection.delete_many({"_id": {"$in": list(keys)}})
        await self.redis.delete(*keys)

    async def restore(self) -> int:
        """Put every live key back into Redis; then set the marker. Returns how many."""
        now = time.time()
        await self.purge(now)
        restored = await self._put_all({"expires_at": {"$gt": now}}, now)
        await self.redis.set(self.marker_key, b"1")
        self._full_at = self._recent_at = time.monotonic()
        return restored

    async def restore_recent(self, window_s: float = RECENT_WINDOW_S) -> int:
        """Set again the live keys added in the last ``window_s`` seconds."""
        now = time.time()
        self._recent_at = time.monotonic()
        return await self._put_all(
            {"added_at": {"$gt": now - window_s}, "expires_at": {"$gt": now}}, now
        )

    async def _put_all(self, query: Doc, now: float) -> int:
        restored = 0
        batch: list[Doc] = []
        async for doc in self.collection.find(query, batch_size=BATCH):
            batch.append(doc)
            if len(batch) >= BATCH:
                restored += await self._put(batch, now)
                batch = []
        return restored + await self._put(batch, now)

    async def _put(self, docs: Sequence[Doc], now: float) -> int:
        """Set the keys of ``docs``, then delete again those whose record went meanwhile.

        A revocation lifted (:meth:`remove`: the record, then the key) after this read
        its record was set again here: an unblocked user refused for the key's whole
        life, with no record left to repair it. Read again after the sets, a record
        gone was removed either before that read (its key is deleted here) or after
        it, so after these sets (its own delete of the key comes last)."""
        if not docs:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for doc in docs:
                pipe.set(str(doc["_id"]), b"1", ex=max(1, int(doc["expires_at"] - now)))
            await pipe.execute()
        ids = [doc["_id"] for doc in docs]
        kept = {doc["_id"] async for doc in self.collection.find({"_id": {"$in": ids}}, {"_id": 1})}
        if gone := [str(i) for i in ids if i not in kept]:
            await self.redis.delete(*gone)
        return len(docs)

    async def present(self) -> bool:
        """False once Redis lost the marker (it restarted): time to restore."""
        return bool(await self.redis.exists(self.marker_key))

    async def purge(self, now: float | None = None) -> None:
        """Delete the records that have expired."""
        now = time.time() if now is None else now
        await self.collection.delete_many({"expires_at": {"$lte": now}})
        self._purged_at = time.monotonic()

    async def keep(self, interval_s: float, what: str) -> None:
        """For as long as the service runs: restore whenever Redis lost the keys."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                since = time.monotonic()
                if not await self.present():
                    restored = await self.restore()
                    log.warning("revocations restored", extra={"what": what, "count": restored})
                elif since - self._full_at > FULL_EVERY_S:
                    await self.restore()
                elif since - self._recent_at > RECENT_EVERY_S:
                    await self.restore_recent()
                elif since - self._purged_at > PURGE_EVERY_S:
                    await self.purge()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis or MongoDB away: try again next round
                log.warning("revocation check failed", extra={"what": what, "error": repr(exc)})
