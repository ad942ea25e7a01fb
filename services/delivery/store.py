"""All of the delivery service's I/O: the inbox in MongoDB, presence and routing in Redis.

Collections (database ``<prefix>delivery``):

- ``inbox``: one document per stored item (a message, or a ``key_changed``
  notice) for one recipient: ``_id`` = ``"<user>|<seq, 16 digits>"``,
  ``server_id``, ``user``, ``seq`` (increasing per recipient, not dense),
  ``kind``, ``from``, ``client_id``, ``conversation``, ``body``,
  ``commitment``, ``sent_at``, ``acked``. With that ``_id``, "this user's
  items after N" is a list of primary keys (the counter says how far to go):
  the embedded server answers ``$in`` on ``_id`` from its index but scans the
  table for ranges and secondary-index equality (docs/embedded.md); on real
  MongoDB it is as cheap. Unique on
  (``from``, ``client_id``): a redelivered Kafka record never makes a second
  copy. An acknowledged item keeps its (``from``, ``client_id``) as a tombstone
  (body removed) for ``TOMBSTONE_RETENTION``, so that even a record redelivered
  after the ack is not stored again; tombstones are purged in code.
- ``counters``: ``{_id: user, n, acked}``: the last sequence number handed
  out, and the highest acknowledged one (acks start their range there).
- ``contacts``: ``{_id: "<peer>|<user>", user, peer}``: who to warn when
  ``peer``'s identity key changes (upserted by ``_id``, read by ``peer``).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

import orjson
import redis.asyncio as aioredis
from pymongo import ASCENDING, ReturnDocument, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError

from services.common.config import Settings
from services.common.routing import gateway_channel, live_gateways, presence_key

DUPLICATE_KEY = 11000
TOMBSTONE_RETENTION_S = 7 * 86400
ID_CHUNK = 500
ITEM_FIELDS = ("seq", "server_id", "kind", "from", "conversation", "body", "commitment", "sent_at")


class SequenceCollision(Exception):
    """An inbox ``_id`` (user, seq) was taken although the message is new."""


class DeliveryStore:
    def __init__(
        self, settings: Settings, db: AsyncDatabase[dict[str, Any]], redis: aioredis.Redis
    ) -> None:
        self.settings = settings
        self.inbox = db["inbox"]
        self.counters = db["counters"]
        self.contacts = db["contacts"]
        self.redis = redis
        self.prefix = settings.redis_prefix

    async def ensure_indexes(self) -> None:
        await self.inbox.create_index([("from", ASCENDING), ("client_id", ASCENDING)], unique=True)
        # No index on acked/acked_at: it would cost every insert ~20% on the
        # embedded server, for an hourly purge that can afford a scan.
        await self.contacts.create_index([("peer", ASCENDING)])

    # Sequence numbers -------------------------------------------------------
    async def reserve(self, user: str, count: int) -> int:
        """Reserve ``count`` sequence numbers for ``user``; returns the first."""
        doc = await self.counters.find_one_and_update(
            {"_id": user}, {"$inc": {"n": count}}, upsert=True, return_document=ReturnDocument.AFTER
        )
        assert doc is not None
        return int(doc["n"]) - count + 1

    async def reserve_many(self, counts: dict[str, int]) -> dict[str, int]:
        """Reserve numbers for many users in two round trips; returns each user's first.

        Optimistic: a concurrent reservation for the same user between the
        increment and the read makes two batches compute overlapping numbers.
        That cannot go unnoticed: the second insert clashes on the inbox
        ``_id`` and raises :class:`SequenceCollision`, and the worker retries
        that batch with :meth:`reserve` (atomic per user).
        """
        await self.counters.bulk_write(
            [UpdateOne({"_id": u}, {"$inc": {"n": n}}, upsert=True) for u, n in counts.items()],
            ordered=False,
        )
        now = {d["_id"]: int(d["n"]) async for d in self.counters.find(
            {"_id": {"$in": list(counts)}}, {"n": 1}
        )}  # fmt: skip
        return {u: now[u] - n + 1 for u, n in counts.items()}

    # Storing ----------------------------------------------------------------
    async def insert(self, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Insert items; returns the stored version of each (the earlier copy for a duplicate)."""
        if not docs:
            return []
        duplicates: set[int] = set()
        try:
            await self.inbox.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            for err in exc.details.get("writeErrors", []):
                if err.get("code") != DUPLICATE_KEY:
                    raise
                duplicates.add(int(err["index"]))
        if not duplicates:
            return docs
        keys = [{"from": docs[i]["from"], "client_id": docs[i]["client_id"]} for i in duplicates]
        earlier = {(d["from"], d["client_id"]): d async for d in self.inbox.find({"$or": keys})}
        stored = []
        for i, doc in enumerate(docs):
            if i in duplicates:
                prior = earlier.get((doc["from"], doc["client_id"]))
                if prior is None:
                    # The clash was on `_id` (a sequence number already used),
                    # not on (from, client_id): never drop the message — fail
                    # the batch, which is retried with fresh sequence numbers.
                    raise SequenceCollision(doc["_id"])
                prior["duplicate"] = True
                stored.append(prior)
            else:
                stored.append(doc)
        return stored

    async def remember_contacts(self, pairs: Iterable[tuple[str, str]]) -> None:
        ops = [
            UpdateOne({"_id": f"{p}|{u}"}, {"$set": {"user": u, "peer": p}}, upsert=True)
            for u, p in set(pairs)
        ]
        if ops:
            await self.contacts.bulk_write(ops, ordered=False)

    async def contacts_of(self, user: str) -> list[str]:
        return [d["user"] async for d in self.contacts.find({"peer": user}, {"user": 1})]

    # Reading and acknowledging ----------------------------------------------
    async def page(self, user: str, after: int, limit: int) -> tuple[list[dict[str, Any]], bool]:
        """Waiting items with ``seq > after``, in order, and whether more may wait.

        Reads by ``_id`` lists (``$in``), not ranges: sequence numbers are known
        from the user's counter, and the embedded server serves ``$in`` on the
        primary key from its index but scans the table for a range.
        """
        counter = await self.counters.find_one({"_id": user}, {"n": 1, "acked": 1})
        if counter is None:
            return [], False
        last = int(counter.get("n", 0))
        start = max(after, int(counter.get("acked", 0)))
        found: list[dict[str, Any]] = []
        while start < last and len(found) < limit:
            stop = min(last, start + limit)
            docs = await self._by_seq(user, start + 1, stop, {"acked": False})
            found.extend(docs)
            start = stop
        found.sort(key=lambda d: d["seq"])
        more = len(found) > limit or start < last
        return found[:limit], more

    async def _by_seq(
        self, user: str, first: int, last: int, extra: dict[str, Any], fields: Any = None
    ) -> list[dict[str, Any]]:
        ids = [inbox_id(user, s) for s in range(first, last + 1)]
        out: list[dict[str, Any]] = []
        for i in range(0, len(ids), ID_CHUNK):
            query = {"_id": {"$in": ids[i : i + ID_CHUNK]}, **extra}
            out.extend([d async for d in self.inbox.find(query, fields)])
        return out

    async def acknowledge_many(self, targets: dict[str, int]) -> dict[str, list[dict[str, Any]]]:
        """Acknowledge for many users at once, in four round trips whatever their number.

        Each user's range starts at its ``acked`` watermark, so old tombstones
        are never read again; bodies and commitments are deleted.
        """
        users = list(targets)
        counters = {
            d["_id"]: d
            async for d in self.counters.find({"_id": {"$in": users}}, {"acked": 1, "n": 1})
        }
        ids: list[str] = []
        tops: dict[str, int] = {}
        for user, seq in targets.items():
            counter = counters.get(user, {})
            floor = int(counter.get("acked", 0))
            top = min(seq, int(counter.get("n", 0)))
            if top > floor:
                tops[user] = top
                ids.extend(inbox_id(user, s) for s in range(floor + 1, top + 1))
        acked: dict[str, list[dict[str, Any]]] = {u: [] for u in users}
        if not tops:
            return acked
        fields = {"user": 1, "from": 1, "client_id": 1, "kind": 1, "conversation": 1,
                  "server_id": 1}  # fmt: skip
        found: list[dict[str, Any]] = []
        for i in range(0, len(ids), ID_CHUNK):
            query = {"_id": {"$in": ids[i : i + ID_CHUNK]}, "acked": False}
            found.extend([d async for d in self.inbox.find(query, fields)])
        for doc in sorted(found, key=lambda d: str(d["_id"])):
            acked[doc["user"]].append(doc)
        if found:
            await self.inbox.update_many(
                {"_id": {"$in": [d["_id"] for d in found]}},
                {
                    "$set": {"acked": True, "acked_at": time.time()},
                    "$unset": {"body": "", "commitment": ""},
                },
            )
        # Raise each watermark, never lower it (acks may race): $max is atomic.
        # (Not a filter with $or: the embedded server drops the _id beside it.)
        await self.counters.bulk_write(
            [UpdateOne({"_id": u}, {"$max": {"acked": top}}) for u, top in tops.items()],
            ordered=False,
        )
        return acked

    async def purge_tombstones(self, older_than_s: float = TOMBSTONE_RETENTION_S) -> int:
        res = await self.inbox.delete_many(
            {"acked": True, "acked_at": {"$lt": time.time() - older_than_s}}
        )
        return int(res.deleted_count)

    # Routing ----------------------------------------------------------------
    async def gateways_of(self, users: Iterable[str]) -> dict[str, set[str]]:
        users = list(dict.fromkeys(users))
        if not users:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for user in users:
                pipe.hgetall(presence_key(self.prefix, user))
            results = await pipe.execute()
        ttl = self.settings.presence_ttl_s
        return {u: live_gateways(r, ttl) for u, r in zip(users, results, strict=True) if r}

    async def publish(self, frames: list[tuple[str, dict[str, Any]]]) -> int:
        """Push (user, frame) pairs to every gateway hosting the user; one round trip."""
        if not frames:
            return 0
        where = await self.gateways_of(u for u, _ in frames)
        count = Counter[str]()
        async with self.redis.pipeline(transaction=False) as pipe:
            for user, frame in frames:
                data = orjson.dumps({"to": user, "frame": frame})
                for gw in where.get(user, ()):
                    pipe.publish(gateway_channel(self.prefix, gw), data)
                    count[gw] += 1
            if count:
                await pipe.execute()
        return sum(count.values())


def inbox_id(user: str, seq: int) -> str:
    """An inbox item's primary key; sorts by user, then seq (user ids have no ``|``)."""
    return f"{user}|{seq:016d}"


def item_frame(doc: dict[str, Any]) -> dict[str, Any]:
    """What a recipient sees of a stored item (pushed, or in a sync page)."""
    frame = {k: doc.get(k) for k in ITEM_FIELDS}
    kind = doc.get("kind", "message")
    frame["op"] = kind
    if kind == "key_changed":
        frame["user_id"] = doc["from"]
        frame["device_id"] = doc.get("device_id")
        frame["identity"] = doc.get("identity")
    return frame
