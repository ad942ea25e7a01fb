"""All of the delivery service's I/O: the hot inbox in Redis (services/delivery/hot.py),
what waits in MongoDB, presence and routing in Redis.

An item is stored in the hot inbox first (:meth:`DeliveryStore.store_hot`);
only what is still unacknowledged after ``hot_persist_after_s`` is moved to
MongoDB (:meth:`DeliveryStore.persist_due`). Pages read Redis, then MongoDB
for the rest; acks delete from both.

Collections (database ``<prefix>delivery``):

- ``inbox``: one document per persisted item (a message, or a ``key_changed``
  notice) for one device inbox: ``_id`` = ``"<inbox>|<seq, 16 digits>"``,
  ``server_id``, ``user``, ``seq`` (increasing per recipient, not dense),
  ``kind``, ``from``, ``client_id``, ``conversation``, ``body``,
  ``commitment``, ``sent_at``, ``acked``. With that ``_id``, "this user's
  items after N" is a list of primary keys (the counter says how far to go):
  the embedded server answers ``$in`` on ``_id`` from its index but scans the
  table for ranges and secondary-index equality (docs/embedded.md); on real
  MongoDB it is as cheap. An acknowledged item is deleted.
- ``dedup_<day>``: the dedup records of versions before the hot inbox (now
  in Redis for ``hot_dedup_s``); left to expire, dropped whole after
  ``DEDUP_DAYS``.
- ``counters``: ``{_id: inbox, n, acked}``: checkpoints of the inbox counters,
  which live in Redis (services/delivery/counters.py): the last sequence
  number handed out, and the highest acknowledged one.
- ``contacts``: ``{_id: "<peer>|<user>", user, peer}``: who to warn when
  ``peer``'s identity key changes (upserted by ``_id``, read by ``peer``).

In Redis, ``pending:{<inbox>}`` counts what waits in each device inbox (field
``*``) and what each sender has waiting there (one field per sender): raised
when an item is stored, lowered when it is acknowledged or expires. The
gateways read it to refuse sends past the inbox caps (docs/security.md). The
counts are a guard, not the record: after a Redis restart they start again
from zero (MongoDB keeps every item), and they may run a batch behind. A copy
deleted from MongoDB lowers them once, by whoever claims it first
(:data:`_CLAIM_GONE`): an ack, a removal, the expiry and the upkeep can find the
same copy at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from typing import Any

import orjson
import redis.asyncio as aioredis
from parley_contract import envelopes as e
from parley_contract import frames as f
from pymongo import ASCENDING, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import OperationFailure, PyMongoError

from services.common import routing, scripts
from services.common.clients import insert_new
from services.common.config import Settings
from services.common.fastredis import idempotent_script, may_run_twice
from services.common.inbox import receipts
from services.common.routing import Push, pending_key
from services.delivery.counters import Counter as InboxCounter
from services.delivery.counters import InboxCounters
from services.delivery.hot import DEDUP_SKEW_S, HotInbox, Removal, Replicas

DEDUP_DAYS = 7
DAY_S = 86400
ID_CHUNK = 500
DELETE_CHUNK = 5000
"""Ids per ``delete_many`` (a few hundred KB of command; one delete of 30,000 ids took
a third of the time of sixty of 500 on the embedded server)."""
MOVED_KEPT = 100_000
"""The most moved items whose clean-up failed that a process keeps to try again."""
ORPHAN_GRACE_S = 60.0
"""How long past the persister's cutoff an index entry without its item is kept (a write
sent again after a connection error takes its retries' time, seconds, to land)."""
SECOND_LOOK_PAUSE_S = 30.0
"""How long removals found hot skip their look in MongoDB after it failed."""
CLAIM_SPAN_S = 600
"""The span of a claim hash (:data:`_CLAIM_GONE`): a claim is seen for 10 to 20 minutes,
far past the moment two deleters of one copy can overlap (their reads and deletes)."""
PAGE_STEPS = 16
"""The most reads (a chunk of numbers, or a look for the next item past a range that
holds nothing) one page makes: a gap of any length costs a page two."""
RANGE_READ_AT = 2000
"""Numbers in a range past which its persisted copies are found by an ``_id`` range
(one aggregation a thousand copies), not by listing every number (``$in``)."""
SHADOW_GRACE_S = DEDUP_SKEW_S + 60.0
"""How long after its move a MongoDB copy below the watermark is left to the persister's
own clean-up (:meth:`DeliveryStore._clean_moved`): until then it may be the shadow of a
hot copy an ack took (and counted) while it was being moved. ``moved_at`` is the moving
process's clock, compared with the deleter's: a minute, plus the clocks' skew tolerated
elsewhere (:data:`~services.delivery.hot.DEDUP_SKEW_S`; 60 s alone deleted a copy moved
moments ago by a process whose clock was a minute behind)."""
SWEEP_INBOXES = 20_000
"""The most inboxes one upkeep run looks at for copies below their watermark (the next
run goes on from there)."""
SWEEP_PER_INBOX = 5_000
"""The most copies below its watermark one upkeep run deletes from one inbox."""

log = logging.getLogger(__name__)


# Deleting persisted copies: which of them this call is the first to claim. Whoever
# claims a copy first lowers its inbox's waiting counts for it (in this script, once) and
# sends its `delivered` receipt: an ack, a removal, the expiry and the upkeep may find the
# same copy at once, and each lowered the counts for what it had found (an unsend racing
# an ack of the same copy counted it twice). KEYS[1] the inbox's waiting counts, KEYS[2]
# this span's claims (written), KEYS[3] and KEYS[4] the spans before and after (read: a
# clock a span off still sees them); ARGV[1] this call's token, ARGV[2] how long to keep
# KEYS[1], ARGV[3] how long to keep KEYS[2], then per copy its seq and what it counts in
# ('' nothing, '*' the inbox alone, else its sender too). Returns per copy 1 when it is
# this call's (claimed now, or by this call's earlier run: the token), else 0; so the
# script may run twice (a reply lost, the request sent again) and changes nothing more.
_CLAIM_GONE = """
local out, per, total = {}, {}, 0
for i = 4, #ARGV, 2 do
  local seq, field = ARGV[i], ARGV[i + 1]
  local owner = redis.call('HGET', KEYS[3], seq) or redis.call('HGET', KEYS[4], seq)
  if not owner then
    if redis.call('HSETNX', KEYS[2], seq, ARGV[1]) == 1 then
      owner = ARGV[1]
      if field ~= '' then
        total = total + 1
        if field ~= '*' then per[field] = (per[field] or 0) + 1 end
      end
    else
      owner = redis.call('HGET', KEYS[2], seq)
    end
  end
  out[#out + 1] = (owner == ARGV[1]) and 1 or 0
end
if #ARGV >= 4 then redis.call('EXPIRE', KEYS[2], ARGV[3]) end
if total > 0 then
  per['*'] = total
  for f, c in pairs(per) do
    if redis.call('HINCRBY', KEYS[1], f, -c) <= 0 then redis.call('HDEL', KEYS[1], f) end
  end
  if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
end
return out
"""

_GONE_FIELDS = {"inbox": 1, "user": 1, "device": 1, "from": 1, "from_device": 1,
                "client_id": 1, "kind": 1, "conversation": 1, "seq": 1, "server_id": 1,
                "room": 1, "uncounted": 1, "moved_at": 1, "stored_at": 1,
                "sent_at": 1}  # fmt: skip
"""What deleting a persisted copy needs of it: its counts and its `delivered` receipt
(``room`` too: a private room's copy earns no receipt)."""


class SequenceCollision(Exception):
    """Sequence numbers kept clashing: the batch is retried."""


class DeliveryStore:
    def __init__(
        self, settings: Settings, db: AsyncDatabase[dict[str, Any]], redis: aioredis.Redis
    ) -> None:
        self.settings = settings
        self.db = db
        self.inbox = db["inbox"]
        self.counters = db["counters"]
        self.contacts = db["contacts"]
        self.redis = redis
        self.prefix = settings.redis_prefix
        self._claim_gone = scripts.register(redis, _CLAIM_GONE)
        idempotent_script(self._claim_gone.sha)  # a second run changes nothing (its token)
        self.ctr = InboxCounters(redis, self.prefix, self.counters, db["meta"])
        self.hot = HotInbox(
            redis, self.prefix, settings.hot_dedup_s,
            Replicas(settings.redis_wait_replicas, settings.redis_wait_timeout_ms),
            self.ctr.raise_to,
        )  # fmt: skip
        self.cold_acks = f"{self.prefix}:ackcold"
        """Acknowledged items still in MongoDB, left for later while it was down."""
        self.cold_removals = f"{self.prefix}:rmcold"
        """Removals whose copies may wait in MongoDB, left for later while it was down
        (JSON ``[inbox, server id, sender]``)."""
        self._moved: list[dict[str, Any]] = []
        """Items the persister moved whose clean-up (:meth:`_clean_moved`) failed: their
        MongoDB copies are looked at again at the start of the next pass."""
        # Until then removals found hot do not look for second copies in MongoDB (it
        # failed to answer: each look would hold a tombstone's batch for the server
        # selection timeout, seconds, while a removal of hot copies needs no MongoDB).
        self._second_look_at = 0.0
        self._again_look_at = 0.0
        """Until then an ack found acknowledged already does not look in MongoDB for what
        its range left there (it failed to answer: :meth:`acknowledge_many`)."""
        self._sweep_at = ""
        """Where the upkeep's walk over the persisted copies goes on (:meth:`sweep_acked`)."""

    async def ensure_indexes(self) -> None:
        # The unique (from, client_id) index of 0.1 made every duplicate a table
        # scan on the embedded server (a resend burst stalled delivery for
        # everyone); the dedup collections replace it with primary-key look-ups.
        with contextlib.suppress(OperationFailure):
            await self.inbox.drop_index("from_1_client_id_1")
        await self.contacts.create_index([("peer", ASCENDING)])
        await self.hot.begin_dedup_spans()
        # A tombstone finds the copies that wait in MongoDB by their message's id.
        await self.inbox.create_index([("server_id", ASCENDING)])

    async def ping(self) -> list[str]:
        """Which of this store's servers do not answer now (empty when both do)."""

        async def mongo() -> None:
            await self.db.command("ping")

        async def redis() -> None:
            await self.redis.ping()

        names = ("mongo", "redis")
        results = await asyncio.gather(
            *(asyncio.wait_for(f(), self.settings.readiness_timeout_s) for f in (mongo, redis)),
            return_exceptions=True,
        )
        return [n for n, r in zip(names, results, strict=True) if isinstance(r, BaseException)]

    # Sequence numbers (in Redis: services/delivery/counters.py) -------------
    async def reserve(self, user: str, count: int) -> int:
        """Reserve ``count`` sequence numbers for the inbox ``user``; returns the first."""
        return await self.ctr.reserve(user, count)

    async def reserve_many(self, counts: dict[str, int]) -> dict[str, int]:
        """Reserve numbers for many inboxes in one round trip; returns each one's first.

        Atomic (``HINCRBY``): two consumers overlapping during a rebalance get
        different numbers. :meth:`store_hot` still checks that a number holds
        no other message (a counter seeded again after Redis lost its data).
        """
        return await self.ctr.reserve_many(counts)

    # Storing ----------------------------------------------------------------
    async def claims_and_numbers(
        self, items: list[dict[str, Any]], server_ids: Iterable[str]
    ) -> tuple[dict[str, tuple[int, str]], set[str], dict[str, int]]:
        """A batch's first round trip: the items' dedup records
        (:meth:`HotInbox.claims_and_gone`, with the removal marks of
        ``server_ids``) and, in the same script, numbers for the items that have
        no record (each inbox's first; :meth:`store_and_route` gives them to its
        new items in order). A repeat takes none: until 2026-12-07 every item
        took one and a repeat's went unused, so a sender resending one message (a
        repeat raises no waiting count: no cap refuses it) left a gap that grew
        without limit, and pages walked it (``hot._CLAIMS_NUMBERS``). An inbox
        whose counter is missing gets none here (:meth:`store_hot` seeds it and
        reserves then).
        """
        keys = list(dict.fromkeys(item_dedup_key(d) for d in items))
        ids = list(dict.fromkeys(server_ids))
        async with self.redis.pipeline(transaction=False) as pipe:
            _, inboxes = await self.hot.queue_claims_numbers(pipe, keys, ids)
            results = await pipe.execute()
        return self.hot.read_claims_numbers(keys, ids, inboxes, results)

    async def claims_in_mongo(
        self, items: list[dict[str, Any]], claims: dict[str, tuple[int, str]]
    ) -> dict[str, tuple[int, str]]:
        """The copies in MongoDB of the items ``claims`` has no record of (by dedup
        key: (seq, server id)) that pages reach: after Redis lost the dedup records,
        what the persister moved before the loss (services/delivery/worker.py
        ``_moderate``). One query by the ``server_id`` index, and the counters of the
        inboxes it found copies in."""
        fresh = {k: d for d in items if (k := item_dedup_key(d)) not in claims}
        if not fresh:
            return {}
        ids = list({str(d["server_id"]) for d in fresh.values()})
        inboxes = list({str(d["inbox"]) for d in fresh.values()})
        found: dict[str, tuple[int, str, str]] = {}
        fields = {"inbox": 1, "seq": 1, "server_id": 1, "from": 1, "client_id": 1, "kind": 1}
        flt = {"server_id": {"$in": ids}, "inbox": {"$in": inboxes}}
        async for doc in self.inbox.find(flt, fields):
            if (key := item_dedup_key(doc)) in fresh:
                found[key] = (int(doc["seq"]), str(doc["server_id"]), str(doc["inbox"]))
        if not found:
            return {}
        # Only a copy pages reach: one numbered inside a range a loss skipped (a persister
        # page that straddled the loss, inserting after the counter was seeded again
        # below its numbers) is never paged, so its message is stored again.
        counters = await self.ctr.get({inbox for _, _, inbox in found.values()})
        return {
            key: (seq, server_id)
            for key, (seq, server_id, inbox) in found.items()
            if inbox in counters and counters[inbox].skip(seq - 1) == seq - 1
        }

    async def store_hot(
        self, items: list[dict[str, Any]], claims: dict[str, tuple[int, str]] | None = None
    ) -> list[dict[str, Any]]:
        """:meth:`store_and_route` without numbers taken before or presence read."""
        return (await self.store_and_route(items, claims))[0]

    async def store_and_route(
        self,
        items: list[dict[str, Any]],
        claims: dict[str, tuple[int, str]] | None = None,
        numbers: dict[str, int] | None = None,
        route: Iterable[str] = (),
    ) -> tuple[list[dict[str, Any]], dict[str, set[str]] | None]:
        """Store inbox items exactly once, in the hot inbox (Redis); returns the stored
        version of each, in order, as :meth:`store` does.

        Redis only, three round trips whatever the batch's size (one when the
        caller read the first two's answers already: :meth:`claims_and_numbers`):
        the dedup records, the sequence numbers (one ``HINCRBY`` per inbox),
        then one pipeline with the persister's index and one script per device inbox
        that writes its items, their dedup records and its waiting counts
        (raised for what was written). A repeat of a
        message seen within ``hot_dedup_s`` comes back with ``duplicate`` set
        (and ``acked`` when it is no longer hot: acknowledged, or persisted and
        left for sync). Kafka keeps the records until the items are persisted
        or acknowledged (services/delivery/worker.py), so Redis may lose them.
        ``claims``: the dedup records of these items' keys (:func:`dedup_key`),
        when the caller read them already (:meth:`HotInbox.claims_and_gone`);
        ``numbers``: each inbox's first number reserved for all of its items
        (:meth:`claims_and_numbers`), which saves the second round trip.
        ``route``: users whose gateways are read at the end of the pipeline that
        writes the items, after them (what :func:`routing.publish` takes as
        ``where``; None when the items took a second write, after a clash).
        """
        if not items:
            return [], None
        users = list(dict.fromkeys(route))
        keys = [item_dedup_key(it) for it in items]
        first: dict[str, int] = {}
        for i, key in enumerate(keys):
            first.setdefault(key, i)
        if claims is None:
            claims = await self.hot.claims(list(first))
        else:
            claims = {k: claims[k] for k in first if k in claims}
        result: dict[str, dict[str, Any]] = {}
        if claims:
            wanted: dict[str, list[int]] = {}
            for key, (seq, _) in claims.items():
                wanted.setdefault(items[first[key]]["inbox"], []).append(seq)
            hot = await self.hot.get_many(wanted)
            repeated: dict[str, int] = {}
            for key, (seq, server_id) in claims.items():
                item = items[first[key]]
                doc = hot.get(item["inbox"], {}).get(seq)
                if doc is not None and _same_message(doc, item):
                    result[key] = {**doc, "duplicate": True}
                    repeated[item["inbox"]] = max(repeated.get(item["inbox"], 0), seq)
                else:
                    claim = {"inbox": item["inbox"], "seq": seq, "server_id": server_id}
                    result[key] = {**_inbox_doc(item, claim), "duplicate": True, "acked": True}
            if repeated:
                # A batch consumed again finds its items written: make sure their counters
                # hold them (the first try may have died, or failed to seed a counter a
                # failover lost, after writing them: services/delivery/hot.py ``_PUT``).
                # Rare (a redelivery); one round trip.
                await self.ctr.raise_to(repeated)
        fresh = [k for k in first if k not in claims]
        where: dict[str, set[str]] | None = None
        if fresh:
            per_inbox = Counter(items[first[k]]["inbox"] for k in fresh)
            next_seq = {i: numbers[i] for i in per_inbox if numbers and i in numbers}
            missing = {i: c for i, c in per_inbox.items() if i not in next_seq}
            if missing:
                next_seq.update(await self.reserve_many(missing))
            docs: list[tuple[str, dict[str, Any]]] = []
            for key in fresh:
                item = items[first[key]]
                seq = next_seq[item["inbox"]]
                next_seq[item["inbox"]] = seq + 1
                claim = {"inbox": item["inbox"], "seq": seq, "server_id": item["server_id"]}
                docs.append((key, _inbox_doc(item, claim)))

            def read_presence(pipe: aioredis.client.Pipeline) -> None:
                routing.queue_presence(pipe, self.prefix, users)

            for attempt in range(8):
                clashes, tail = await self.hot.put(
                    docs, time.time(), self._pending_of, read_presence if users else None
                )
                if attempt == 0 and users:
                    where = routing.presence_of(users, tail, self.settings.presence_ttl_s)
                if clashes:
                    where = None  # read before the items stored again below
                for key, doc in docs:
                    if key not in clashes:
                        result[key] = doc
                if not clashes:
                    break
                # Overlapping reservations (two consumers during a rebalance): the
                # number is another message's; take fresh ones atomically.
                docs = [
                    (key, {**doc, "seq": (s := await self.reserve(doc["inbox"], 1)),
                           "_id": item_id(doc["inbox"], s)})
                    for key, doc in docs if key in clashes
                ]  # fmt: skip
            else:
                raise SequenceCollision(f"sequence numbers kept clashing for {sorted(clashes)[:3]}")
        out = []
        for i, key in enumerate(keys):
            doc = dict(result[key])
            if first[key] != i:
                doc["duplicate"] = True
            out.append(doc)
        return out, where

    async def persist_due(self, now: float | None = None) -> tuple[int, float | None]:
        """Move hot items older than ``hot_persist_after_s`` to MongoDB.

        Returns how many were written and the cutoff: every item stored before it
        is now in MongoDB or acknowledged (what lets Kafka offsets be committed).
        Index entries due that are kept without their items (a write that may
        still land, ``ORPHAN_GRACE_S``: its batch is not done, so not committed)
        are read past: a first page made only of them (after a Redis loss, a
        refused batch's entries) ended the pass there, which still reported the
        cutoff, and batches were committed past items that were only in Redis.

        One walk over the index entries due, oldest first, with a cursor on
        their time (:meth:`_due_pages`): each entry is read at most three times,
        however many are kept. (Each page asked again for every entry kept so
        far and passed them by name: a pass over 20,000 kept entries and 3,000
        items, pages of 500, read 526,000 entries; it now reads 25,300.)

        Each item is inserted before it leaves Redis (so a reader always finds it
        in one of the two), and after it left, any copy at or below its inbox's
        ``acked`` watermark is deleted again: an ack that raced the move (the ack
        path raises the watermark first, then deletes wherever it finds the item)
        leaves nothing behind. Several delivery processes may move the same
        items: inserts are idempotent (the ``_id``).
        """
        cutoff = (time.time() if now is None else now) - self.settings.hot_persist_after_s
        batch = self.settings.hot_persist_batch
        written = 0
        if self._moved:
            await self._clean_moved()
        async for page in self._due_pages(cutoff, batch):
            for i in range(0, len(page), batch):
                written += await self._persist_page(page[i : i + batch], cutoff)
        return written, cutoff

    async def _due_pages(
        self, cutoff: float, batch: int
    ) -> AsyncIterator[list[tuple[str, int, float]]]:
        """The index entries due at the start of a pass, in pages, oldest first.

        The cursor is the time (the entry's score) below which every entry was
        handed out, not a count nor the names of entries passed: an entry that
        leaves meanwhile (acknowledged, moved by another process) or stays
        (kept without its item) moves nothing, so no entry due goes unread and
        none is read again. A page of ``batch`` entries hands out those older
        than its last one's time and starts the next page at that time (the
        entries stored at that time, a batch's ``put``, may go on past the
        page); a page all of one time reads that time's entries whole (one
        ``put``'s, which wrote them in one command) and the next starts after
        it. So an entry is read at most three times: at the end of a page,
        in the next page, and in its time's whole read.

        An entry that arrives behind the cursor (stored at a time the walk has
        passed) is left for the next pass. That keeps the cutoff's promise: its
        ``put`` was still under way after the pass began, so its batch ends, and
        is recorded, after the cutoff (services/delivery/worker.py commits a
        batch once the cutoff passes when it ended); and the entry is in the
        index (it goes before its item, and leaves only with it), so
        :meth:`HotInbox.settled_before` stays below it.
        """
        low, past = -math.inf, False
        while True:
            got = await self.hot.due(cutoff, batch, low, past)
            if len(got) < batch:
                if got:
                    yield got
                return
            last = got[-1][2]
            if got[0][2] == last:
                yield await self.hot.due(last, None, last)
                low, past = last, True
            else:
                yield [d for d in got if d[2] < last]
                low, past = last, False

    async def _persist_page(self, due: list[tuple[str, int, float]], cutoff: float) -> int:
        """Move one page of index entries due (:meth:`persist_due`); returns how many items
        were written to MongoDB."""
        wanted: dict[str, list[int]] = {}
        for inbox, seq, _ in due:
            wanted.setdefault(inbox, []).append(seq)
        hot = await self.hot.get_many(wanted)
        # An entry whose item is not there: an item acknowledged or removed (their
        # scripts take the entry too), a write cut short (the entry goes first), or
        # a write still under way, sent again by redis-py after a connection error
        # with the time taken before its first try. Dropped only once no write can
        # still be under way: dropped at once, the last left its item unindexed,
        # never persisted, and its Kafka record committed past. The others are
        # kept, and the walk goes on past them.
        moved = [(inbox, seq) for inbox, seq, _ in due if seq in hot.get(inbox, {})]
        orphans = [
            (inbox, seq) for inbox, seq, at in due
            if seq not in hot.get(inbox, {}) and at < cutoff - ORPHAN_GRACE_S
        ]  # fmt: skip
        now = time.time()
        docs = [{**hot[inbox][seq], "moved_at": now} for inbox, seq in moved]
        tops: dict[str, int] = {}
        for inbox, seq in moved:
            tops[inbox] = max(tops.get(inbox, 0), seq)
        # No copy reaches MongoDB above its inbox's checkpoint (InboxCounters.cover).
        await self.ctr.cover(tops)
        await insert_new(self.inbox, docs)
        # Kept from here until the clean-up is done: a pass that failed taking the items
        # out of Redis (after the insert) left copies an ack of the hot items never
        # looked for, below the watermark for good.
        self._keep_moved([_slim(d) for d in docs])
        taken = await self.hot.remove(moved)
        for d, out in zip(self._moved[len(self._moved) - len(docs) :], taken, strict=True):
            d["out"] = out
        await self.hot.unindex(orphans)  # the entry alone: an item landing now stays
        if docs:
            await self._clean_moved()
        return len(docs)

    def _keep_moved(self, docs: list[dict[str, Any]]) -> None:
        self._moved += docs
        if len(self._moved) > MOVED_KEPT:
            extra = {"items": len(self._moved) - MOVED_KEPT}
            log.warning("moved items left uncleaned", extra=extra)
            self._moved = self._moved[-MOVED_KEPT:]

    async def _clean_moved(self) -> None:
        """Finish the moves of ``_moved``: take out of Redis the items not taken yet, then
        delete the MongoDB copies of those acknowledged (at or below their inbox's
        watermark) or removed (a tombstone that raced the move: it marks the copy
        before deleting it anywhere) while they moved.

        A copy whose item this process took out of Redis (``out``) was the item's
        live copy: it is deleted as any deleter does (:meth:`_delete_copies`: the ack
        or removal that finds it too may claim it first, and only the first lowers
        the waiting counts and sends the receipt). One whose item was gone already
        is a shadow (the ack or removal took the hot item, and counted it, while it
        moved; or another process moved it, and cleans it): deleted, counted by
        no one here.

        The items may have left Redis: no later pass would find them. So until this
        succeeds they are kept (``_moved``) and looked at again first thing in the
        next pass. (They were not: after a failure here an acknowledged copy stayed
        in MongoDB for good, and a removed one came back in pages once its removal
        marker expired; after a failure taking them out of Redis, the copies of
        those acknowledged while still hot stayed too.) What a process killed in
        between leaves is deleted by the upkeep (:meth:`sweep_acked`).
        """
        docs = self._moved
        if not docs:
            return
        pending = [d for d in docs if d.get("out") is None]
        if pending:
            taken = await self.hot.remove([(d["inbox"], int(d["seq"])) for d in pending])
            for d, out in zip(pending, taken, strict=True):
                d["out"] = out
        inboxes = list({d["inbox"] for d in docs})
        acked = {i: c.acked for i, c in (await self.ctr.get(inboxes)).items()}
        stale = [d for d in docs if int(d["seq"]) <= acked.get(d["inbox"], 0)]
        gone = await self.hot.removed(docs)
        removed_ids = {d["_id"] for d in gone}
        targets = list({d["_id"]: d for d in stale + gone}.values())
        shadows = [d["_id"] for d in targets if not d["out"]]
        for i in range(0, len(shadows), ID_CHUNK):
            await self.inbox.delete_many({"_id": {"$in": shadows[i : i + ID_CHUNK]}})
        mine = await self._delete_copies([d for d in targets if d["out"]])
        self._moved = []
        # The live copies of items acknowledged while they moved: their receipts are due
        # (the ack found them not hot, and it claims no copy this process claimed).
        due = await self._unread([d for d in mine if d["_id"] not in removed_ids])
        if due:
            with contextlib.suppress(Exception):  # best effort, as every receipt
                await self.publish(receipts(due))

    def _dedup_collections(self, now: float) -> list[AsyncCollection[dict[str, Any]]]:
        """Today's dedup collection first, then the previous days still kept."""
        day = int(now // DAY_S)
        return [self.db[f"dedup_{d}"] for d in range(day, day - DEDUP_DAYS, -1)]

    async def drop_expired_dedup(self, now: float | None = None) -> list[str]:
        """Drop dedup collections older than ``DEDUP_DAYS`` (whole: no scan)."""
        keep = {c.name for c in self._dedup_collections(time.time() if now is None else now)}
        names = await self.db.list_collection_names()
        old = [n for n in names if n.startswith("dedup_") and n not in keep]
        for name in old:
            await self.db.drop_collection(name)
        return old

    async def remember_contacts(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Record (device inbox, peer user) pairs: who to tell when ``peer``'s keys change."""
        ops = [
            UpdateOne({"_id": f"{p}|{i}"}, {"$set": {"inbox": i, "peer": p}}, upsert=True)
            for i, p in set(pairs)
        ]
        if ops:
            await self.contacts.bulk_write(ops, ordered=False)

    async def contacts_of(self, user: str) -> list[str]:
        """The device inboxes that exchanged messages with ``user``."""
        return [d["inbox"] async for d in self.contacts.find({"peer": user}, {"inbox": 1})
                if d.get("inbox")]  # fmt: skip

    async def drop_inbox(self, inbox: str) -> int:
        """Delete every waiting item of a device inbox (the device left its account).
        Raises :class:`CountersUnseeded` while another seeder holds its counter (the
        event waits, as a batch does: services/delivery/outage.py)."""
        counter = await self.ctr.require(inbox)
        if counter.n <= counter.acked:
            return 0
        last = counter.n
        # First: a persister pass may insert a copy after the deletes below (it read
        # the item hot before), which the upkeep or its own clean-up then deletes
        # below the watermark; no `delivered` receipt goes out for it (:meth:`_unread`).
        # The range, not only its top: copies acknowledged before the drop (left below
        # the watermark by an ack cut short) were read, and earn their receipts.
        await self.redis.set(
            self.dropped_key(inbox), f"{counter.acked}:{last}",
            ex=self.settings.inbox_expiry_s + DAY_S,
        )  # fmt: skip
        # Found by ``_id`` range, run by run between the skipped ranges (every number
        # listed was a million ids and 2,000 deletes over a gap a resent message left).
        deleted = 0
        for lo, hi in counter.segments(counter.acked + 1, last):
            after = item_id(inbox, lo - 1)
            while docs := await self._in_range(inbox, after, item_id(inbox, hi), ID_CHUNK):
                after = docs[-1]["_id"]
                res = await self.inbox.delete_many({"_id": {"$in": [d["_id"] for d in docs]}})
                deleted += int(res.deleted_count)
        await self.ctr.raise_acked({inbox: last})
        await self.redis.delete(pending_key(self.prefix, inbox))
        await self.hot.drop(inbox)
        return deleted

    def dropped_key(self, inbox: str) -> str:
        """Which numbers of ``inbox`` were dropped unread (:meth:`drop_inbox`):
        ``"<watermark then>:<last number then>"``."""
        return f"{self.prefix}:dropped:{{{inbox}}}"

    async def _unread(self, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Those of these deleted copies that earn a `delivered` receipt: not those an
        inbox's drop found unread (:meth:`drop_inbox`: its device read none of them; a
        copy a persister pass wrote while the inbox was dropped ended up below the
        watermark, and the upkeep sent one for it)."""
        inboxes = list({d["inbox"] for d in docs})
        if not inboxes:
            return docs
        async with self.redis.pipeline(transaction=False) as pipe:
            for inbox in inboxes:
                pipe.get(self.dropped_key(inbox))
            tops = await pipe.execute()
        dropped: dict[str, tuple[int, int]] = {}
        for inbox, raw in zip(inboxes, tops, strict=True):
            if raw:
                low, _, high = (raw.decode() if isinstance(raw, bytes) else str(raw)).partition(":")
                dropped[inbox] = (int(low), int(high)) if high else (0, int(low))
        return [
            d for d in docs
            if not (dropped.get(d["inbox"], (0, 0))[0] < int(d["seq"])
                    <= dropped.get(d["inbox"], (0, 0))[1])
        ]  # fmt: skip

    async def remove_copies(self, items: list[Removal]) -> int:
        """Delete removed messages' copies wherever they are: the hot inbox (marked
        first, for the persister), then MongoDB (one query, by ``server_id``; only a
        copy still unacknowledged, from the message's sender). Returns how many copies
        were deleted; their waiting counts are lowered.

        MongoDB is asked for the removals found hot too: after a Redis loss a message
        can wait twice in one inbox (the copy persisted before the loss under its old
        seq, and the one the replay stored again), and the hot one is not the only
        one (the other came back in pages). For those alone, MongoDB not answering
        is let go (logged), and for ``SECOND_LOOK_PAUSE_S`` after that they do not ask
        it: a removal of hot copies needs no MongoDB, and each look would hold the
        batch for the server selection timeout. A second copy missed then stays until
        it expires (it needs a Redis loss and a MongoDB outage together).

        A removal not found hot when MongoDB does not answer (or failed moments
        ago: the pause) is left for the persister (:meth:`drain_cold_removals`, in
        ``cold_removals``), as an ack's persisted items are: it raised, and the
        batch, every inbox of the partition with it, waited for MongoDB."""
        keep = self.settings.hot_dedup_s
        taken = await self.hot.remove_messages(items, self._pending_of, keep)
        hot = {r for r, _ in taken}
        cold = [r for r in items if r not in hot]
        if time.monotonic() < self._second_look_at:
            await self._defer_removals(cold)
            return len(taken)
        wanted = {(r.inbox, r.server_id): r.sender for r in items}
        skip = {item_id(r.inbox, n) for r, n in taken}  # counted already
        try:
            found = [d for d in await self._cold_copies(wanted) if d["_id"] not in skip]
            self._second_look_at = 0.0  # MongoDB answers: no pause
        except PyMongoError as exc:
            self._second_look_at = time.monotonic() + SECOND_LOOK_PAUSE_S
            what = "removals left for later" if cold else "second copies not looked for"
            log.info(what, extra={"removals": len(cold), "error": repr(exc)})
            await self._defer_removals(cold)
            found = []
        if not found:
            return len(taken)
        # Counted by whoever claims each copy first: an ack of the same copy may be
        # deleting it now (each lowered the counts for what it had found: twice).
        return len(taken) + len(await self._delete_copies(found))

    async def _defer_removals(self, removals: list[Removal]) -> None:
        if removals:
            await self.redis.sadd(
                self.cold_removals,
                *[orjson.dumps([r.inbox, r.server_id, r.sender]) for r in removals],
            )

    async def drain_cold_removals(self) -> int:
        """What removals left for later while MongoDB was down (:meth:`remove_copies`):
        their copies in MongoDB deleted now (their waiting counts lowered, once:
        :meth:`_delete_copies`); returns how many. Raises while MongoDB is still down
        (they stay for the next run).

        Entries are read (``SRANDMEMBER``, safe to send again) and taken out of the
        set once done: ``SPOP`` handed them over in its reply, and a reply lost (a
        connection error after the command ran) lost them; sent again, it took a
        second set."""
        deleted = 0
        while True:
            raw = await self.redis.srandmember(self.cold_removals, ID_CHUNK)
            if not raw:
                return deleted
            wanted: dict[tuple[str, str], str] = {}
            for r in raw:
                with contextlib.suppress(ValueError, TypeError):
                    inbox, server_id, sender = orjson.loads(scripts.text(r))
                    wanted[(str(inbox), str(server_id))] = str(sender)
            found = await self._cold_copies(wanted) if wanted else []
            deleted += len(await self._delete_copies(found))
            await self.redis.srem(self.cold_removals, *raw)
            if len(raw) < ID_CHUNK:
                return deleted

    async def _cold_copies(self, wanted: dict[tuple[str, str], str]) -> list[dict[str, Any]]:
        """The unacknowledged MongoDB copies of these (inbox, server id) messages from
        their senders."""
        query = {
            "server_id": {"$in": sorted({sid for _, sid in wanted})},
            "inbox": {"$in": sorted({inbox for inbox, _ in wanted})},
            "acked": False,
        }
        return [
            d async for d in self.inbox.find(query, _GONE_FIELDS)
            if wanted.get((d["inbox"], d["server_id"])) == d.get("from")
            and d.get("kind", "message") == "message"
        ]  # fmt: skip

    async def restore_gone(self, since_ms: int) -> int:
        """Mark again the messages removed since ``since_ms`` (Redis lost the marks: a
        replay from Kafka must not store their copies again); returns how many."""
        tombstones = self.db["tombstones"]
        ids = [str(d["_id"]) async for d in tombstones.find({"at": {"$gte": since_ms}}, {"_id": 1})]
        await self.hot.mark_gone_many(ids, self.settings.inbox_expiry_s + DAY_S)
        return len(ids)

    # Caps and expiry ----------------------------------------------------------
    def _pending_of(self, inbox: str) -> tuple[str, int]:
        """Where an inbox's waiting counts live and how long they are kept."""
        return pending_key(self.prefix, inbox), self.settings.inbox_expiry_s + DAY_S

    def claim_key(self, inbox: str, span: int) -> str:
        """Where the copies of ``inbox`` deleted in ``span`` are claimed (:data:`_CLAIM_GONE`)."""
        return f"{self.prefix}:rmd:{{{inbox}}}:{span}"

    async def _delete_copies(self, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Delete these persisted copies (found in MongoDB: ``_GONE_FIELDS`` at least) and
        lower their waiting counts once; returns those this call was the first to claim
        (their counts were lowered here: they are its to report and to send receipts
        for).

        An ack, a removal, the expiry and the upkeep may find one copy at once, and
        each lowered the counts for what it had found (an unsend racing an ack of
        the same copy: counted twice, a cap reached early for good). Whoever claims
        a copy first in Redis now counts it (:data:`_CLAIM_GONE`, one script per
        inbox, after the delete: one that fails leaves no claim behind). Counting by
        ``deleted_count`` instead is exact only per delete, and a delete holds
        copies of many senders: it needs one delete per sender or per copy, or a
        marking update (which rewrites every body) before it.
        """
        if not docs:
            return []
        ids = [d["_id"] for d in docs]
        for i in range(0, len(ids), DELETE_CHUNK):
            await self.inbox.delete_many({"_id": {"$in": ids[i : i + DELETE_CHUNK]}})
        return await self._claim(docs)

    async def _claim(self, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Claim these copies (deleted) for this call (:data:`_CLAIM_GONE`); returns those
        it was the first to claim, their waiting counts lowered."""
        by_inbox: dict[str, list[dict[str, Any]]] = {}
        for d in {d["_id"]: d for d in docs}.values():
            by_inbox.setdefault(d["inbox"], []).append(d)
        token = uuid.uuid4().hex
        span = int(time.time() // CLAIM_SPAN_S)
        keep = self.settings.inbox_expiry_s + DAY_S
        order: list[list[dict[str, Any]]] = []
        async with self.redis.pipeline(transaction=False) as pipe:
            may_run_twice(pipe)  # the token: a second run changes nothing
            for inbox, group in by_inbox.items():
                claims = [self.claim_key(inbox, s) for s in (span, span - 1, span + 1)]
                keys = [pending_key(self.prefix, inbox), *claims]
                for i in range(0, len(group), 1000):
                    chunk = group[i : i + 1000]
                    args: list[str | int] = [token, keep, 3 * CLAIM_SPAN_S]
                    for d in chunk:
                        args += [int(d["seq"]), _count_field(d)]
                    await scripts.queue(pipe, self._claim_gone, keys, args)
                    order.append(chunk)
            results = await pipe.execute()
        return [d for chunk, got in zip(order, results, strict=True)
                for d, mine in zip(chunk, got, strict=True) if int(mine)]  # fmt: skip

    async def purge_expired(self, now: float | None = None, concurrency: int = 8) -> int:
        """Delete unacknowledged items stored more than ``inbox_expiry_s`` ago; returns
        how many.

        Sequence numbers grow with time, so an inbox's expired items are the
        oldest ones: walk each inbox from its ``acked`` watermark, delete
        while items are expired (or missing), stop at the first one that is
        not, and raise the watermark past what was deleted (a later resend of
        an expired message is then a recognised duplicate, not a new item).
        Every read is by primary key; the inboxes to look at are one pass over
        the counters' checkpoints (one document per device inbox), read again
        from Redis.
        """
        cutoff = (time.time() if now is None else now) - self.settings.inbox_expiry_s
        await self.ctr.checkpoint()  # every inbox changed since the last run is listed
        saved = [
            d["_id"] async for d in self.counters.find({}, {"n": 1, "acked": 1})
            if int(d.get("n", 0)) > int(d.get("acked", 0))
        ]  # fmt: skip
        current = await self.ctr.get(saved) if saved else {}
        waiting = [(i, c) for i, c in current.items() if c.n > c.acked]
        gate = asyncio.Semaphore(concurrency)

        async def one(inbox: str, counter: InboxCounter) -> int:
            async with gate:
                return await self._purge_inbox(inbox, counter, cutoff)

        return sum(await asyncio.gather(*(one(*w) for w in waiting)))

    async def _purge_inbox(self, inbox: str, counter: InboxCounter, cutoff: float) -> int:
        # The persisted copies above the watermark in order, by ``_id`` range run by run
        # between the skipped ranges (number by number, a gap a resent message left cost
        # a read per 500 numbers of it, every hour), up to the first not yet expired.
        expired: list[dict[str, Any]] = []
        top, done = counter.acked, False
        for lo, hi in counter.segments(counter.acked + 1, counter.n):
            after = item_id(inbox, lo - 1)
            while not done and (
                docs := await self._in_range(inbox, after, item_id(inbox, hi), ID_CHUNK)
            ):
                after = docs[-1]["_id"]
                for doc in docs:
                    if _stored_at(doc) >= cutoff:
                        done = True
                        break
                    expired.append(doc)
                    top = int(doc["seq"])
            if done:
                break
        if not expired:
            return 0
        mine = await self._delete_copies(expired)
        await self.ctr.raise_acked({inbox: top})
        return len(mine)

    async def sweep_acked(self, inboxes: int = SWEEP_INBOXES) -> int:
        """Delete the persisted copies at or below their inbox's watermark (acknowledged,
        or expired) that are still in MongoDB; returns how many this call deleted
        (their waiting counts lowered once, their `delivered` receipts sent).

        Nothing else looks below a watermark, and copies end up there: an ack whose
        script ran and whose process died (or whose reply was lost) before the
        MongoDB delete; a persister pass that inserted its items and failed to
        take them out of Redis, and the items acknowledged hot meanwhile; a process
        killed between a move and its clean-up. The expiry job walks only from each
        watermark up, so those copies stayed for good, counted as waiting.

        One walk over the ``inbox`` collection in ``_id`` order (the ids sort by
        inbox, then seq), at most ``inboxes`` inboxes a run, the next run going on
        from there (a cycle starts again at the end): the first copies of the next
        inboxes (one aggregation reads a hundred, from the index), each inbox's
        watermark (Redis), and for one whose first copy is at or below it, its
        copies up to the watermark by ``_id`` range, then on past its ids. An inbox
        costs a read; its waiting copies are not read. A copy moved in the last
        ``SHADOW_GRACE_S`` is left to its persister's clean-up (it may be a shadow
        of a hot copy an ack took: counted already).
        """
        seen = 0
        swept: list[dict[str, Any]] = []
        cursor = self._sweep_at
        while seen < inboxes:
            pipeline: list[dict[str, Any]] = [
                {"$match": {"_id": {"$gt": cursor}} if cursor else {}},
                {"$sort": {"_id": 1}}, {"$limit": 100}, {"$project": {"_id": 1}},
            ]  # fmt: skip
            page = await (await self.inbox.aggregate(pipeline)).to_list()
            if not page:
                cursor = ""  # the end: the next run starts again
                break
            firsts: dict[str, int] = {}
            for d in page:
                inbox, _, seq = str(d["_id"]).rpartition("|")
                if inbox and seq.isdigit():
                    firsts.setdefault(inbox, int(seq))
            if not firsts:
                cursor = str(page[-1]["_id"])
                continue
            counters = await self.ctr.get(list(firsts))
            for inbox, first in firsts.items():
                c = counters.get(inbox)
                if c is not None and first <= c.acked:
                    swept += await self._below(inbox, c.acked, SWEEP_PER_INBOX, c)
                    await self._drop_unpaged(inbox, c)
            # Past every id of the page's last inbox: "<inbox>|:" follows its 16 digits,
            # and no other inbox's ids sort between (inbox ids hold no "|").
            cursor = f"{list(firsts)[-1]}|:"
            seen += len(firsts)
        self._sweep_at = cursor
        if due := await self._unread(swept):
            await self.publish(receipts(due))
        return len(swept)

    async def _below(
        self, inbox: str, top: int, most: int | None, counter: InboxCounter,
        moved_by: float | None = None,
    ) -> list[dict[str, Any]]:  # fmt: skip
        """Delete up to ``most`` (None: all) copies of ``inbox`` at or below ``top``
        (acknowledged) found by ``_id`` range, run by run between ``counter``'s skipped
        ranges (a copy numbered inside one was never paged: no receipt is due), those
        moved in the last ``SHADOW_GRACE_S`` left out; returns those this call claimed
        (:meth:`_delete_copies`). ``moved_by``: the latest move time a copy may have
        to be deleted, instead of ``SHADOW_GRACE_S`` ago."""
        out: list[dict[str, Any]] = []
        young = time.time() - SHADOW_GRACE_S if moved_by is None else moved_by
        for lo, hi in counter.segments(1, top):
            after = item_id(inbox, lo - 1)
            while most is None or len(out) < most:
                docs = await self._in_range(inbox, after, item_id(inbox, hi), 1000)
                if not docs:
                    break
                after = docs[-1]["_id"]
                old = [d for d in docs if float(d.get("moved_at") or 0) <= young]
                out += await self._delete_copies(old)
                if len(docs) < 1000:
                    break
        return out

    async def _drop_unpaged(self, inbox: str, counter: InboxCounter) -> int:
        """Delete ``inbox``'s copies numbered inside a skipped range wholly at or below
        its watermark once past the inbox's expiry (``inbox_expiry_s`` after they were
        stored), as every copy is: persisted just before Redis lost the counter, they
        were never paged and earn no receipt (counted by no seeding: counts left as
        they are), and nothing else reaches them, so they stayed for good."""
        cutoff = time.time() - self.settings.inbox_expiry_s
        deleted = 0
        for low, high in counter.gaps:
            if high > counter.acked:
                break
            after = item_id(inbox, low)
            while docs := await self._in_range(inbox, after, item_id(inbox, high), 1000):
                after = docs[-1]["_id"]
                ids = [d["_id"] for d in docs if float(d.get("stored_at") or 0) <= cutoff]
                if ids:
                    res = await self.inbox.delete_many({"_id": {"$in": ids}})
                    deleted += int(res.deleted_count)
                if len(docs) < 1000:
                    break
        return deleted

    async def _in_range(
        self, inbox: str, after: str, last: str, limit: int
    ) -> list[dict[str, Any]]:
        """The first ``limit`` unacknowledged copies with ``after < _id <= last`` (ids of
        ``inbox``), in ``_id`` order, what deleting them needs of each: an aggregation,
        which the embedded server answers from the ``_id`` index (a ``find`` of a
        range reads the whole collection: docs/embedded.md)."""
        pipeline: list[dict[str, Any]] = [
            {"$match": {"_id": {"$gt": after, "$lte": last}, "acked": False}},
            {"$sort": {"_id": 1}}, {"$limit": limit}, {"$project": _GONE_FIELDS},
        ]  # fmt: skip
        return [d for d in await (await self.inbox.aggregate(pipeline)).to_list()
                if d.get("inbox") == inbox]  # fmt: skip

    # Reading and acknowledging ----------------------------------------------
    async def inbox_depths(self, inboxes: Iterable[str]) -> dict[str, int]:
        """Items waiting per device inbox, from the counters (last seq - acked):
        primary-key reads.

        An upper bound (sequence numbers are not dense), for the metrics.
        """
        ids = list(dict.fromkeys(inboxes))[:ID_CHUNK]
        return {i: max(c.n - c.acked, 0) for i, c in (await self.ctr.get(ids)).items()}

    async def page(self, user: str, after: int, limit: int) -> tuple[list[dict[str, Any]], bool]:
        """Waiting items with ``seq > after``, in order, and whether more may wait.

        Reads by ``_id`` lists (``$in``), not ranges: sequence numbers are known
        from the user's counter, and the embedded server serves ``$in`` on the
        primary key from its index but scans the table for a range.

        At most ``PAGE_STEPS`` reads: a chunk of numbers that holds nothing at all
        (numbers reserved and never used: a batch refused or cut short, a clash; and,
        until 2026-12-07, one per repeat of a resent message) is followed by a look
        for the next item wherever it is (:meth:`_next_seq`), so a gap of any length
        costs two reads, not one per chunk of it (a gap of 200,000 numbers: 1,000
        MongoDB and 1,000 Redis round trips for a page of one item; a million: past
        the gateway's timeout, and the device never synced). A page that runs out
        of reads returns what it found with ``more``; one that found nothing goes on
        until it finds an item or the end (a hot hash past ``NEXT_HOT_MOST`` items
        makes each look cover that many numbers: a gap of a million, 500 looks). Raises
        :class:`~services.delivery.counters.CountersUnseeded` while another seeder
        holds the inbox's counter (``service_unavailable``, as any dependency away).
        """
        counter = await self.ctr.require(user)
        last = counter.n
        start = max(after, counter.acked)
        found: list[dict[str, Any]] = []
        steps = 0
        # Past PAGE_STEPS only while nothing is found: a page that says ``more`` holds an
        # item to go on from (the client asks again from its last one; an empty page
        # with ``more`` was asked again from the same place, for ever, when the next-
        # item look was bounded: a hot hash past NEXT_HOT_MOST and a wide gap).
        while (
            (start := counter.skip(start)) < last
            and len(found) < limit
            and (steps < PAGE_STEPS or not found)
        ):
            steps += 1
            stop = counter.stop(start, limit)
            seqs = list(range(start + 1, stop + 1))
            # Hot first; what is not hot was persisted (it is inserted into
            # MongoDB before it leaves Redis, so it is always in one of them).
            hot = await self.hot.get(user, seqs)
            found.extend(hot.values())
            cold = [s for s in seqs if s not in hot]
            docs: list[dict[str, Any]] = []
            if cold:
                docs = await self._by_ids(user, cold, {"acked": False})
                # A copy the persister wrote while its message was being removed
                # lives in MongoDB until the persister deletes it again: the
                # removal's marker keeps it out of pages meanwhile.
                gone = {d["_id"] for d in await self.hot.removed(docs)}
                found.extend(d for d in docs if d["_id"] not in gone)
            start = stop
            if not hot and not docs and start < last and (steps < PAGE_STEPS or not found):
                steps += 1
                nxt = await self._next_seq(user, start, last)
                start = last if nxt is None else max(start, nxt - 1)
        found.sort(key=lambda d: d["seq"])
        more = len(found) > limit or start < last
        found = found[:limit]
        n, _ = fit((d.get("body") or "" for d in found), self.settings.sync_page_bytes)
        return found[:n], more or n < len(found)

    async def _next_seq(self, user: str, after: int, last: int) -> int | None:
        """The lowest seq above ``after`` and at most ``last`` of an item of ``user``'s,
        hot or persisted (one Redis script over the hot hash's fields, one
        aggregation over the ``_id`` index), or None. When the hot hash is too large
        to read whole (:data:`~services.delivery.hot.NEXT_HOT_MOST`), the look covers
        that many numbers: with nothing in them, the number past them."""
        hot, to = await self.hot.next_hot(user, after, last)
        if hot == after + 1:  # none lower
            return hot
        cold = await self._in_range(user, item_id(user, after), item_id(user, to), 1)
        found = [s for s in (hot, *(int(d["seq"]) for d in cold)) if s is not None]
        if found:
            return min(found)
        return None if to >= last else to + 1

    async def _by_ids(
        self, user: str, seqs: list[int], extra: dict[str, Any], fields: Any = None
    ) -> list[dict[str, Any]]:
        ids = [item_id(user, s) for s in seqs]
        out: list[dict[str, Any]] = []
        for i in range(0, len(ids), ID_CHUNK):
            query = {"_id": {"$in": ids[i : i + ID_CHUNK]}, **extra}
            out.extend([d async for d in self.inbox.find(query, fields)])
        return out

    async def acknowledge_many(
        self,
        targets: dict[str, int],
        over: dict[str, int] | None = None,
        unseeded: set[str] | None = None,
    ) -> dict[str, list[dict[str, Any]]]:
        """Acknowledge for many device inboxes at once: a few round trips whatever
        their number (Redis: the watermarks, the items, their deletion; MongoDB,
        only for items no longer hot: a find and a delete).

        Each inbox's watermark is raised first (atomically, never lowered, never
        past the last number issued: services/delivery/counters.py), in the same
        script as its hot items are taken out and its waiting counts lowered;
        from then no page returns these items, and the persister deletes any
        copy it writes at or below it (persist_due). The range from the old
        watermark to the new one is this call's alone to acknowledge; its copies
        in MongoDB are deleted and counted by whoever claims them first
        (:meth:`_delete_copies`: a removal may be deleting one of them), found by
        their ids, or by an ``_id`` range for a wide one (a gap: not every number
        listed). The same script takes the hot items out of the persister's index.

        An ack the script finds acknowledged already (a repeat, or one sent again
        after its first try's reply was lost: the first run took the range) still
        deletes what MongoDB holds of it (:meth:`_below`): until 2026-12-07 those
        copies stayed below the watermark for good, counted as waiting, their
        receipts never sent.

        ``over``: when given, an inbox whose target is past the last number it
        issued is not acknowledged at all and lands in ``over`` with that
        number (:class:`services.delivery.handlers.Inbox` refuses those acks
        with ``seq_not_issued``): the check costs no round trip of its own.
        ``unseeded``: an inbox whose counter another process is still seeding is
        not acknowledged and lands there (:meth:`InboxCounters.ack_hot`).
        """
        users = list(targets)
        acked: dict[str, list[dict[str, Any]]] = {u: [] for u in users}
        before = await self.ctr.ack_hot(targets, over, unseeded)
        ranges: list[tuple[str, InboxCounter, int, set[int]]] = []
        again: dict[str, tuple[int, InboxCounter]] = {}
        for u, (c, raw) in before.items():
            top = min(targets[u], c.n)
            if top <= c.acked:
                if top > 0:
                    again[u] = (top, c)
                continue
            # In seq order (the script's); a room copy as its seq alone.
            docs = [orjson.loads(r) if isinstance(r, bytes) else _room_copy(u, r) for r in raw]
            acked[u] = docs
            if len(docs) < c.width(c.acked + 1, top):  # some were persisted: in MongoDB
                ranges.append((u, c, top, {int(d["seq"]) for d in docs}))
        stored: list[dict[str, Any]] = []
        try:
            stored = await self._acked_cold(ranges)
        except PyMongoError as exc:
            # MongoDB is down, or failed otherwise (only a lost connection was caught:
            # any other error of MongoDB's lost the ids, their copies kept below the
            # watermark and their receipts never sent; a programming error still
            # raises). The watermarks are raised already (no page returns
            # these items again): their deletion and their receipts wait for the
            # persister (drain_cold_acks); the hot items' receipts go out now.
            extra = {"ranges": len(ranges), "error": repr(exc)}
            log.info("acked items in MongoDB left for later", extra=extra)
            await self._defer_acks(ranges)
        if again and time.monotonic() >= self._again_look_at:
            try:
                for u, (top, c) in again.items():
                    stored += await self._below(u, top, ID_CHUNK, c)
            except PyMongoError as exc:  # left to the upkeep (sweep_acked), as any below
                # Not asked again for a while: each look would hold the flush for the
                # server selection timeout while MongoDB is down.
                self._again_look_at = time.monotonic() + SECOND_LOOK_PAUSE_S
                log.info("acked items left below the watermark", extra={"error": repr(exc)})
        for doc in stored:
            acked[doc["inbox"]].append(doc)
        for inbox in {d["inbox"] for d in stored}:
            acked[inbox].sort(key=lambda d: int(d["seq"]))
        return acked

    async def _acked_cold(
        self, ranges: list[tuple[str, InboxCounter, int, set[int]]]
    ) -> list[dict[str, Any]]:
        """Delete the MongoDB copies of these acknowledged ranges (inbox, its counter
        before, top, the seqs taken hot); returns those this call claimed."""
        found: list[dict[str, Any]] = []
        for u, c, top, have in ranges:
            if c.width(c.acked + 1, top) <= RANGE_READ_AT:
                seqs = [s for s in c.numbers(c.acked + 1, top) if s not in have]
                found += await self._by_ids(u, seqs, {"acked": False}, _GONE_FIELDS)
                continue
            # Run by run between the skipped ranges: a copy numbered inside one (persisted
            # before Redis lost the counter) was never paged, and earns no receipt.
            for lo, hi in c.segments(c.acked + 1, top):
                after = item_id(u, lo - 1)
                while docs := await self._in_range(u, after, item_id(u, hi), 1000):
                    found += [d for d in docs if int(d["seq"]) not in have]
                    after = docs[-1]["_id"]
        return await self._delete_copies(found)

    async def _defer_acks(self, ranges: list[tuple[str, InboxCounter, int, set[int]]]) -> None:
        """Leave these ranges' MongoDB copies to the persister (``cold_acks``): their ids,
        or for a wide range ``~<inbox>|<top>`` (its copies up to ``top``)."""
        entries: list[str] = []
        for u, c, top, have in ranges:
            if c.width(c.acked + 1, top) <= RANGE_READ_AT:
                entries += [item_id(u, s) for s in c.numbers(c.acked + 1, top) if s not in have]
            else:  # with the ack's time: only a copy moved since may be a shadow
                entries.append(f"~{u}|{top}|{time.time():.3f}")
        for i in range(0, len(entries), 1000):
            await self.redis.sadd(self.cold_acks, *entries[i : i + 1000])

    async def delete_acked(self, ids: list[str]) -> list[dict[str, Any]]:
        """Delete these acknowledged items (``_id`` s) from MongoDB and lower their
        waiting counts; returns those this call claimed (for their receipts:
        :meth:`_delete_copies`)."""
        found: list[dict[str, Any]] = []
        for i in range(0, len(ids), ID_CHUNK):
            query = {"_id": {"$in": ids[i : i + ID_CHUNK]}, "acked": False}
            found.extend([d async for d in self.inbox.find(query, _GONE_FIELDS)])
        return await self._delete_copies(found)

    async def drain_cold_acks(self) -> list[dict[str, Any]]:
        """What acks left for later while MongoDB was down (:meth:`acknowledge_many`):
        deleted now, their `delivered` receipts published; returns those items.
        Raises while MongoDB is still down (the ids stay for the next run).

        Entries are read (``SRANDMEMBER``, safe to send again) and taken out of the
        set once done: ``SPOP`` handed them over in its reply, and a reply lost (a
        connection error after the command ran) lost them; sent again, it took a
        second set."""
        done: list[dict[str, Any]] = []
        while True:
            raw = await self.redis.srandmember(self.cold_acks, ID_CHUNK)
            entries = [scripts.text(r) for r in raw or []]
            if not entries:
                return done
            stored = await self.delete_acked([e for e in entries if not e.startswith("~")])
            finished: list[str] = []
            for entry in entries:
                if entry.startswith("~"):
                    inbox, top, *at = entry[1:].split("|")
                    counter = (await self.ctr.get([inbox])).get(inbox)
                    if counter is None:
                        continue  # another seeder holds it: the next run
                    # Every copy up to there (the ack's range), the skipped ranges
                    # stepped over; one moved after the ack (less the clocks' skew)
                    # may be a shadow another process is still moving: left to it
                    # (or the upkeep). Not every copy of the last SHADOW_GRACE_S: a
                    # drain soon after a MongoDB blip left the whole acknowledged
                    # backlog, counted as waiting, for the hourly upkeep.
                    moved_by = float(at[0]) - DEDUP_SKEW_S if at else None
                    stored += await self._below(inbox, int(top), None, counter, moved_by)
                finished.append(entry)
            if finished:
                await self.redis.srem(self.cold_acks, *finished)
            await self.publish(receipts(stored))
            done += stored
            if len(entries) < ID_CHUNK or len(finished) < len(entries):
                return done

    # Routing ----------------------------------------------------------------
    async def publish(self, frames: list[Push], where: dict[str, set[str]] | None = None) -> int:
        """Push frames to their users' sockets (services.common.routing.publish)."""
        return await routing.publish(
            self.redis, self.prefix, self.settings.presence_ttl_s, frames, where
        )


def item_id(inbox: str, seq: int) -> str:
    """An inbox item's primary key; sorts by inbox, then seq (inbox ids have no ``|``)."""
    return f"{inbox}|{seq:016d}"


def dedup_key(inbox: str, sender: str, client_id: str, kind: str = "message") -> str:
    """The dedup record's ``_id`` of one item in one device inbox.

    Inbox and user ids never contain ``|``; the client id comes last, so the key
    is unambiguous. A message's client id is its sender's choice (printable ASCII
    without spaces: ``is_client_id``, checked by the gateway); a notice the server
    makes (``tombstone``, ``key_changed``) is keyed as ``"<kind> <client id>"``,
    with a space no message's client id holds, so that no message a client sends
    takes a notice's record: a message sent with the client id
    ``tombstone:<server id>`` made the removal's tombstone a "repeat", never
    stored nor pushed (docs/delivery.md, "Dedup records").
    """
    if kind != "message":
        client_id = f"{kind} {client_id}"
    return f"{inbox}|{sender}|{client_id}"


def item_dedup_key(item: dict[str, Any]) -> str:
    """:func:`dedup_key` of an inbox item (an item without ``kind`` is a message)."""
    kind = str(item.get("kind") or "message")
    return dedup_key(item["inbox"], item["from"], item["client_id"], kind)


def _count_field(doc: dict[str, Any]) -> str:
    """What a copy counts in (:data:`_CLAIM_GONE`): '' nothing (a private room's copy),
    ``*`` its inbox alone (a notice), else its sender too."""
    if doc.get("uncounted"):
        return ""
    if doc.get("kind", "message") != "message":
        return "*"
    return str(doc["from"])


def _slim(doc: dict[str, Any]) -> dict[str, Any]:
    """What is kept of a moved item until its move is cleaned up (not its body)."""
    return {k: doc[k] for k in ("_id", *_GONE_FIELDS) if k in doc}


def _room_copy(inbox: str, seq: int) -> dict[str, Any]:
    """What an ack needs of a private room's hot copy (the ack script returns its seq
    alone): it counts as acknowledged, and earns no receipt."""
    return {"inbox": inbox, "seq": seq, "kind": "message", "room": True}


def _same_message(doc: dict[str, Any], item: dict[str, Any]) -> bool:
    return bool(
        doc.get("from") == item["from"]
        and doc.get("client_id") == item["client_id"]
        and (doc.get("kind") or "message") == (item.get("kind") or "message")
    )


def _inbox_doc(item: dict[str, Any], claim: dict[str, Any]) -> dict[str, Any]:
    seq = int(claim["seq"])
    return {**item, "_id": item_id(claim["inbox"], seq), "seq": seq,
            "server_id": claim["server_id"], "acked": False}  # fmt: skip


def item_docs(env: e.Envelope, stored_at: float) -> list[dict[str, Any]]:
    """The inbox documents of an envelope, one per device inbox it is for (without
    ``_id``/``seq``: :meth:`DeliveryStore.store_hot` adds them)."""
    assert not isinstance(env, e.RoomCopies), "a room's message goes to its room's log"
    doc: dict[str, Any] = {
        "inbox": env.inbox,
        "user": env.to,
        "device": env.to_device,
        "server_id": env.server_id,
        "from": env.from_,
        "client_id": env.client_id,
        "conversation": env.conversation,
        "sent_at": env.sent_at,
        "stored_at": stored_at,
    }
    if isinstance(env, e.MessageEnvelope):
        doc.update(
            kind="message", from_device=env.from_device, body=env.body, commitment=env.commitment
        )
    elif isinstance(env, e.TombstoneNotice):
        doc.update(
            kind="tombstone", by=env.by, kid=env.kid, signature=env.signature,
            target_seq=env.target_seq,
        )  # fmt: skip
    else:
        doc.update(kind="key_changed", account_key=env.account_key)
    return [doc]


PAGE_ITEM_BYTES = 512
"""What a page's item takes beyond its body (ids, numbers, tags, JSON), for ``fit``."""


def fit(bodies: Iterable[str], budget: int, used: int = 0) -> tuple[int, int]:
    """How many of ``bodies``, from the first, a page holds within ``budget`` bytes when
    ``used`` are taken already, and the bytes used then. The answer's first item
    always goes (``used`` 0), however large: a reader always moves on.

    ``sync_page_bytes``: a page of 200 items of 64 KiB (12.8 MiB) would be more
    than the gateway lets wait for one socket, which then closed the socket as a
    slow consumer on every sync (docs/protocol.md, "Limits").
    """
    n = 0
    for body in bodies:
        size = len(body) + PAGE_ITEM_BYTES
        if used and used + size > budget:
            break
        used += size
        n += 1
    return n, used


def item_frame(doc: dict[str, Any]) -> f.InboxItem:
    """What a recipient sees of a stored item (pushed, or in a sync page)."""
    if doc.get("kind", "message") == "key_changed":
        return f.KeyChanged(
            seq=int(doc["seq"]), server_id=doc["server_id"], user_id=doc["from"],
            account_key=doc.get("account_key"), sent_at=_int(doc.get("sent_at")),
            from_=doc["from"],
        )  # fmt: skip
    if doc.get("kind") == "tombstone":
        return f.Tombstone(
            seq=int(doc["seq"]), server_id=doc["server_id"], from_=doc["from"],
            conversation=doc.get("conversation"), by=doc["by"], at=int(doc.get("sent_at") or 0),
            kid=doc["kid"], signature=doc["signature"],
        )  # fmt: skip
    return f.Message(
        seq=int(doc["seq"]), server_id=doc["server_id"], from_=doc["from"],
        from_device=int(doc.get("from_device") or 1), body=doc.get("body") or "",
        conversation=doc.get("conversation"), commitment=doc.get("commitment"),
        sent_at=_int(doc.get("sent_at")), room=doc.get("room"),
        mentions=list(doc["mentions"]) if doc.get("mentions") else None,
        franking_tag=doc.get("franking_tag"),
    )  # fmt: skip


def _stored_at(doc: dict[str, Any]) -> float:
    """When an item was stored (items from before ``stored_at`` existed: when sent)."""
    if doc.get("stored_at") is not None:
        return float(doc["stored_at"])
    if doc.get("sent_at") is not None:
        return float(doc["sent_at"]) / 1000
    return float("inf")  # unknown: never expired by guesswork


def _int(value: Any) -> int | None:
    """A stored number as a plain int (MongoDB hands back ``bson.Int64`` for some)."""
    return None if value is None else int(value)
