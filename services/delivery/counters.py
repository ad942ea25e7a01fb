"""Each device inbox's counters in Redis: the last sequence number handed out (``n``)
and the acknowledgement watermark (``acked``), with checkpoints in MongoDB.

Every stored item takes a number and every ack raises a watermark: kept in
MongoDB, that was one write per inbox per batch and per ack flush, the
largest cost left on the hot path (a room of 1,000 members: 1,000 updates per
message). In Redis they are one atomic command each (``HINCRBY``, and a
script that raises ``acked`` and returns the range it covered).

Keys (``<p>`` = the Redis prefix):

- ``<p>:ctr:{<inbox>}``: hash ``n``, ``acked``, ``c`` (the highest ``n`` known to be
  in the checkpoint) (and ``g`` after a loss: the
  ranges of numbers skipped, ``"f:t,..."`` for ``f + 1 .. t``, see below; a
  counter seeded by an earlier version has one range as ``sf``, ``st``);
- ``<p>:ctrdirty``: set of the inboxes changed since the last checkpoint;
- ``<p>:ctrbase``: what a counter missing from Redis starts above (see below);
- ``<p>:ctrfloor``: where an inbox with no checkpoint starts (see below);
- ``<p>:ctrall``: present once every counter MongoDB holds is in Redis too (a
  missing counter is then a new inbox: no MongoDB read, see below);
- ``<p>:ctrwarm``: the process copying the checkpoints into Redis (a lock).

**Checkpoints.** The persister copies the changed counters to MongoDB's
``counters`` collection (``$max``) every ``counters_checkpoint_s`` (5 s):
MongoDB is never further behind than that.

**Redis losing its data.** A counter missing from Redis is seeded from its
checkpoint. Numbers handed out after the last checkpoint could be reused
and a client that already saw them would drop the new items as repeats; so
when Redis lost its data (``ctrbase`` missing while MongoDB records that
counters were started before) every seeded counter starts ``GAP`` above its
checkpoint, past anything one inbox can be handed between two checkpoints.
Sequence numbers are not dense (docs/protocol.md); every walk over an
inbox's numbers (pages, acks, expiry, a dropped device) steps over the
skipped ones (:meth:`Counter.numbers`, :meth:`Counter.skip`). Every loss's
range is kept (with the checkpoint, written with the jump before a number
past it is handed out): after a second loss, a walk from a watermark below
the first range must still step over it. On a first start (nothing
recorded in MongoDB) counters start at 0; an upgrade from counters kept in
MongoDB starts from them exactly.

**No copy in MongoDB above its checkpoint.** A copy persisted under a number the
checkpoint had not reached would be inside the range skipped after a loss: never
paged, and its Kafka record committed past. The persister covers each page's
inboxes first (:meth:`InboxCounters.cover`; ``c`` in the counter's hash: the
highest ``n`` a checkpoint write is known to have stored).

**An inbox with no checkpoint** starts at ``ctrfloor``: 0 on a first start, and
after the L-th loss MongoDB records, ``L * GAP`` (the range below it skipped). Its
numbers may have been handed out before the loss without reaching a checkpoint;
a floor that grows with every loss is past them whether or not its jump reached
MongoDB (see the next paragraph).

**New inboxes without MongoDB.** Seeding a counter reads its checkpoint, so while
MongoDB is down the first item to an inbox Redis does not hold would hold up its
batch and its partition. So after a loss (or on an upgrade) the persister copies
every checkpoint into Redis (:meth:`InboxCounters.warm`, once per Redis lifetime,
one process at a time) and then sets ``ctrall`` (only once every checkpoint's
counter is in Redis: one another seeder held and did not write is copied at the
next try); from then on a counter missing
from Redis is an inbox that never had one: it starts at ``ctrfloor`` in Redis
alone, and its jump reaches MongoDB with the next checkpoint (which carries the
skipped ranges too). A first start with nothing in MongoDB sets ``ctrall`` at
once. This holds while Redis keeps every key it was given (no eviction:
``maxmemory-policy noeviction``) or loses them all (a restart); a counter's hash
costs ~100 bytes, so every inbox's is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterable
from typing import Any, NamedTuple

import redis.asyncio as aioredis
from pymongo import UpdateOne
from pymongo.asynchronous.collection import AsyncCollection

from services.common import scripts
from services.common.inbox import ACK_HOT, counter_key, dirty_key, queue_ack

GAP = 1_000_000_000
CHECKPOINT_BATCH = 2000
# Numbers an ack script takes at most past an inbox's watermark in one call.
ACK_SPAN = 2000
WARM_LOCK_S = 60
"""How long the lock of a process copying the checkpoints into Redis lasts without
news from it (it is renewed every page)."""
# One inbox's seeding (services/delivery/counters.py InboxCounters.seed): how long its
# lock lasts if its holder dies, how long another seeder waits for it, how often it looks.
SEED_LOCK_S = 30
SEED_WAIT_S = 10.0
SEED_POLL_S = 0.02


Gaps = tuple[tuple[int, int], ...]


class CountersUnseeded(RuntimeError):
    """Counters still missing from Redis after their seeding was waited for: another
    seeder holds their locks (stuck on MongoDB, or dead until its lock expires). Not a
    record's fault: the batch waits (services/delivery/outage.py)."""

    def __init__(self, inboxes: list[str]) -> None:
        super().__init__(f"inbox counters could not be seeded: {inboxes[:3]}")
        self.inboxes = inboxes


class Counter(NamedTuple):
    """An inbox's counters: ``n`` handed out, ``acked``, and the ranges of numbers
    skipped after Redis lost its data: ``(f, t)`` skips ``f + 1 .. t``, ascending,
    one per loss the inbox lived through with something still waiting below it."""

    n: int
    acked: int
    gaps: tuple[tuple[int, int], ...] = ()

    def skip(self, after: int) -> int:
        """Where a walk that has covered everything up to ``after`` goes on from."""
        for f, t in self.gaps:  # ascending: a jump never lands inside an earlier gap
            if f <= after < t:
                after = t
        return after

    def stop(self, after: int, limit: int) -> int:
        """The end of the next chunk of at most ``limit`` numbers after ``after``."""
        end = min(self.n, after + limit)
        for f, _ in self.gaps:
            if after < f < end:
                return f
        return end

    def width(self, first: int, last: int) -> int:
        """How many numbers ``first .. last`` holds, the skipped ones not counted (what
        :meth:`numbers` would list, without listing them)."""
        if last < first:
            return 0
        total = last - first + 1
        for f, t in self.gaps:
            total -= max(0, min(t, last) - max(f + 1, first) + 1)
        return max(total, 0)

    def segments(self, first: int, last: int) -> list[tuple[int, int]]:
        """``first .. last`` as the runs ``(lo, hi)`` (inclusive) between the skipped
        numbers: what a read by ``_id`` range covers (one read a run, never a copy
        numbered inside a skipped range)."""
        out: list[tuple[int, int]] = []
        at = first - 1
        while (at := self.skip(at)) < last:
            end = next((f for f, _ in self.gaps if at < f < last), last)
            out.append((at + 1, end))
            at = end
        return out

    def numbers(self, first: int, last: int) -> list[int]:
        """``first .. last`` without the skipped numbers."""
        out: list[int] = []
        at = first - 1
        while at < last:
            at = self.skip(at)
            if at >= last:
                break
            stop = self.stop(at, last - at) if at < self.n else last
            stop = min(max(stop, at + 1), last)
            out.extend(range(at + 1, stop + 1))
            at = stop
        return out


def parse_gaps(raw: Any, sf: Any = None, st: Any = None) -> tuple[tuple[int, int], ...]:
    """The skipped ranges as Redis keeps them: ``"f:t,f:t"`` (field ``g``), or the one
    range of a counter seeded before there could be several (fields ``sf``, ``st``)."""
    if raw:
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        pairs = (p.split(":") for p in text.split(",") if p)
        return tuple(sorted((int(f), int(t)) for f, t in pairs if int(t) > int(f)))
    if sf is not None and st is not None and int(st) > int(sf):
        return ((int(sf), int(st)),)
    return ()


def format_gaps(gaps: Iterable[tuple[int, int]]) -> str:
    return ",".join(f"{f}:{t}" for f, t in sorted(gaps))


# Returns the new n, or -1 when the counter is not in Redis (seed it first).
_RESERVE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
return redis.call('HINCRBY', KEYS[1], 'n', ARGV[1])
"""

# Raises n to ARGV[1] (a number an item was written under); -1 when the counter is
# not in Redis (seed it first).
_RAISE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if tonumber(ARGV[1]) > tonumber(redis.call('HGET', KEYS[1], 'n') or '0') then
  redis.call('HSET', KEYS[1], 'n', ARGV[1])
end
return 0
"""

# Sets n, acked and the skipped range when the counter is missing (the first
# seeding wins).
_SEED = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'n', ARGV[1], 'acked', ARGV[2], 'g', ARGV[3])
return 1
"""

# Raises ``c`` (the highest ``n`` known to be in the inbox's MongoDB checkpoint) to
# ARGV[1], only while the counter is there: a hash holding ``c`` alone would pass for a
# counter, and its numbers would start again from 1.
_COVERED = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if tonumber(ARGV[1]) > tonumber(redis.call('HGET', KEYS[1], 'c') or '0') then
  redis.call('HSET', KEYS[1], 'c', ARGV[1])
end
return 1
"""

# Releases the seeding locks KEYS that still hold this seeder's token ARGV[1].
_UNLOCK = """
for _, k in ipairs(KEYS) do
  if redis.call('GET', k) == ARGV[1] then redis.call('DEL', k) end
end
return 0
"""

# Raises acked to min(ARGV[1], n); returns {acked before, n, gaps}, or -1 when missing.
_ACK = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local v = redis.call('HMGET', KEYS[1], 'n', 'acked', 'g', 'sf', 'st')
local n, acked = tonumber(v[1] or '0'), tonumber(v[2] or '0')
local top = math.min(tonumber(ARGV[1]), n)
if top > acked then redis.call('HSET', KEYS[1], 'acked', top) end
local g = v[3] or ''
if g == '' and v[4] and v[5] then g = v[4] .. ':' .. v[5] end
return {acked, n, g}
"""


# A first start or a loss: sets ctrbase, ctrfloor (and ctrall) unless another process
# decided first; returns what was decided. KEYS: ctrbase, ctrfloor, ctrall.
_DECIDE = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('SET', KEYS[2], ARGV[2])
  if ARGV[3] == '1' then redis.call('SET', KEYS[3], '1') end
end
return redis.call('MGET', KEYS[1], KEYS[2], KEYS[3])
"""

# The end of a copy of every checkpoint into Redis: ctrall, if the lock is still this
# copy's (a Redis that restarted since holds neither). KEYS: ctrwarm, ctrall.
_WARMED = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], '1')
redis.call('DEL', KEYS[1])
return 1
"""


class Base(NamedTuple):
    """What this Redis lifetime's seeds start from: ``base`` above a checkpoint,
    ``floor`` for an inbox with none, ``complete`` once every checkpoint is in Redis."""

    base: int
    floor: int
    complete: bool


class InboxCounters:
    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str,
        checkpoints: AsyncCollection[dict[str, Any]],
        meta: AsyncCollection[dict[str, Any]],
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.checkpoints = checkpoints
        self.meta = meta
        self.dirty = dirty_key(prefix)
        self.base_key = f"{prefix}:ctrbase"
        self.floor_key = f"{prefix}:ctrfloor"
        self.all_key = f"{prefix}:ctrall"
        self.warm_key = f"{prefix}:ctrwarm"
        self._decide = scripts.register(redis, _DECIDE)
        self._warmed = scripts.register(redis, _WARMED)
        self._reserve = scripts.register(redis, _RESERVE)
        self._seed_one = scripts.register(redis, _SEED)
        self._unlock = scripts.register(redis, _UNLOCK)
        self._ack = scripts.register(redis, _ACK)
        self._ack_hot = scripts.register(redis, ACK_HOT)
        self._raise = scripts.register(redis, _RAISE)
        self._covered = scripts.register(redis, _COVERED)
        self._base_lock = asyncio.Lock()
        self._token = uuid.uuid4().hex  # this process's, on the seeding locks it holds

    def key(self, inbox: str) -> str:
        return counter_key(self.prefix, inbox)

    # Numbers ------------------------------------------------------------------
    async def reserve_many(self, counts: dict[str, int]) -> dict[str, int]:
        """Reserve ``count`` numbers for each inbox (atomic); returns each one's first."""
        if not counts:
            return {}
        first: dict[str, int] = {}
        todo = dict(counts)
        for _ in range(3):
            async with self.redis.pipeline(transaction=False) as pipe:
                inboxes = await self.queue_reserve(pipe, todo)
                results = await pipe.execute()
            missing = self.read_reserve(inboxes, todo, results, first)
            if not missing:
                return first
            await self.seed(missing)
            todo = {i: todo[i] for i in missing}
        raise CountersUnseeded(sorted(todo))

    async def raise_to(self, tops: dict[str, int]) -> None:
        """Raise each inbox's ``n`` to the number an item was written under, seeding the
        counters Redis lacks first (services/delivery/hot.py ``_PUT``: a write that
        reached a promoted replica without the counter its numbers came from); marks
        them for the next checkpoint."""
        todo = dict(tops)
        for _ in range(3):
            async with self.redis.pipeline(transaction=False) as pipe:
                for inbox, top in todo.items():
                    await scripts.queue(pipe, self._raise, [self.key(inbox)], [top])
                pipe.sadd(self.dirty, *todo)
                results = await pipe.execute()
            missing = [i for i, r in zip(todo, results, strict=False) if int(r) < 0]
            if not missing:
                return
            await self.seed(missing)
            todo = {i: todo[i] for i in missing}
        raise CountersUnseeded(sorted(todo))

    async def queue_reserve(
        self, pipe: aioredis.client.Pipeline, counts: dict[str, int]
    ) -> list[str]:
        """Queue :meth:`reserve_many`'s commands on ``pipe`` (``len(counts) + 1`` of them);
        returns the inboxes in the order queued."""
        inboxes = list(counts)
        for inbox in inboxes:
            await scripts.queue(pipe, self._reserve, [self.key(inbox)], [counts[inbox]])
        if inboxes:
            pipe.sadd(self.dirty, *inboxes)
        return inboxes

    @staticmethod
    def read_reserve(
        inboxes: list[str], counts: dict[str, int], results: list[Any], first: dict[str, int]
    ) -> list[str]:
        """Each inbox's first reserved number into ``first``, from the results of
        :meth:`queue_reserve`; returns the inboxes whose counter is missing (to seed)."""
        missing = []
        for inbox, top in zip(inboxes, results, strict=False):
            if int(top) < 0:
                missing.append(inbox)
            else:
                first[inbox] = int(top) - counts[inbox] + 1
        return missing

    async def reserve(self, inbox: str, count: int) -> int:
        return (await self.reserve_many({inbox: count}))[inbox]

    async def get(self, inboxes: Iterable[str]) -> dict[str, Counter]:
        """Each inbox's counters (seeded from its checkpoint when missing)."""
        inboxes = list(dict.fromkeys(inboxes))
        out: dict[str, Counter] = {}
        for _ in range(2):
            async with self.redis.pipeline(transaction=False) as pipe:
                for inbox in inboxes:
                    pipe.hmget(self.key(inbox), ["n", "acked", "g", "sf", "st"])
                rows = await pipe.execute()
            missing = []
            for inbox, (n, acked, g, sf, st) in zip(inboxes, rows, strict=True):
                if n is None:
                    missing.append(inbox)
                else:
                    out[inbox] = Counter(int(n), int(acked or 0), parse_gaps(g, sf, st))
            if not missing:
                break
            await self.seed(missing)
            inboxes = missing
        return out

    async def require(self, inbox: str) -> Counter:
        """:meth:`get` of one inbox; raises :class:`CountersUnseeded` when its counter is
        still missing after the seeding was waited for (another seeder holds it: a
        dependency away, not a missing key: a page answered 500 ``internal``)."""
        got = await self.get([inbox])
        if inbox not in got:
            raise CountersUnseeded([inbox])
        return got[inbox]

    async def raise_acked(self, tops: dict[str, int]) -> dict[str, Counter]:
        """Raise each inbox's ``acked`` to its top (never past ``n``, never down);
        returns the counters as they were: ``acked + 1 .. min(top, n)`` is this
        call's to delete (concurrent acks never cover a number twice)."""
        out: dict[str, Counter] = {}
        todo = dict(tops)
        for _ in range(2):
            inboxes = list(todo)
            if not inboxes:
                break
            async with self.redis.pipeline(transaction=False) as pipe:
                for inbox in inboxes:
                    await scripts.queue(pipe, self._ack, [self.key(inbox)], [todo[inbox]])
                pipe.sadd(self.dirty, *inboxes)
                results = await pipe.execute()
            missing = []
            for inbox, res in zip(inboxes, results, strict=False):
                if isinstance(res, list):
                    out[inbox] = Counter(int(res[1]), int(res[0]), parse_gaps(res[2]))
                else:
                    missing.append(inbox)
            await self.seed(missing)
            todo = {i: todo[i] for i in missing}
        return out

    async def ack_hot(
        self,
        tops: dict[str, int],
        over: dict[str, int] | None = None,
        unseeded: set[str] | None = None,
    ) -> dict[str, tuple[Counter, list[bytes | int]]]:
        """:meth:`raise_acked`, and in the same script per inbox take the range's hot
        items out of the inbox (services/common/inbox.py) and out of the persister's
        index and lower its waiting counts: one command per inbox (which
        marks the counter for the next checkpoint only if its watermark moved).
        Returns the counters as they were and the hot items taken: each one's JSON,
        or for a private room's copy (which earns no receipt) its seq alone.

        ``over``: when given, an inbox whose top is past the last number it
        issued is left as it is and put in ``over`` with that number (the
        caller refuses those acks) instead of being acknowledged up to it.

        An inbox whose counter is still missing after one seeding (another seeder
        holds its lock: stuck on MongoDB after a Redis loss, or dead until the lock
        expires) is acknowledged not at all and put in ``unseeded`` (the caller
        answers those acks ``service_unavailable``, as a page of that inbox is);
        without ``unseeded``, :class:`CountersUnseeded` is raised for them. Until
        2026-12-07 such an inbox was left out silently: its ack was answered 200
        with nothing acknowledged (an unissued number too), and never sent again."""
        out: dict[str, tuple[Counter, list[bytes | int]]] = {}
        todo = dict(tops)
        seeded = False
        left: set[str] = set()
        # A range whose hot hash holds at most ACK_SPAN items is taken in one call
        # whatever its width (the script reads the hash's fields, not every number: a
        # range over a gap of a million numbers was 500 calls); a larger hash (a
        # backlog kept hot by a MongoDB outage) at most ACK_SPAN numbers a call, again
        # while the range goes on: one long range held Redis for every service. The
        # script says where it stopped.
        while todo:
            inboxes = list(todo)
            async with self.redis.pipeline(transaction=False) as pipe:
                for inbox in inboxes:
                    await queue_ack(pipe, self._ack_hot, self.prefix, inbox, todo[inbox],
                                    strict=over is not None, span=ACK_SPAN)  # fmt: skip
                results = await pipe.execute()
            missing, again = [], {}
            for inbox, res in zip(inboxes, results, strict=False):
                if isinstance(res, list) and int(res[0]) == -2:
                    assert over is not None
                    over[inbox] = int(res[1])
                elif isinstance(res, list):
                    counter = Counter(int(res[1]), int(res[0]), parse_gaps(res[2]))
                    reached = int(res[3]) if len(res) > 3 else counter.acked
                    if inbox in out:
                        out[inbox][1].extend(res[4:])  # the counter as it was at first
                    else:
                        out[inbox] = (counter, list(res[4:]))
                    if reached < min(todo[inbox], counter.n):
                        again[inbox] = todo[inbox]
                else:
                    missing.append(inbox)
            if missing and not seeded:
                await self.seed(missing)
                seeded = True
                again |= {i: todo[i] for i in missing}
            elif missing:
                left.update(missing)
            todo = again
        if left:
            if unseeded is None:
                raise CountersUnseeded(sorted(left))
            unseeded.update(left)
        return out

    # Seeding and checkpoints ---------------------------------------------------
    async def _base(self) -> Base:
        values = await self.redis.mget([self.base_key, self.floor_key, self.all_key])
        if values[0] is None:
            # One decision at a time in this process: a second seeder that read the
            # marker missing would find the first one's record in MongoDB before its
            # marker reached Redis, take that for a loss and start every counter past
            # GAP. (Two processes racing on a first start can still do that: numbers
            # are not dense, so that costs nothing but the jump.)
            async with self._base_lock:
                values = await self.redis.mget([self.base_key, self.floor_key, self.all_key])
                if values[0] is None:
                    values = await self._decide_base()
        base = int(values[0] or 0)
        # A marker set before there was a floor: its base is past everything.
        floor = base if values[1] is None else int(values[1])
        return Base(base, floor, values[2] is not None)

    async def _decide_base(self) -> list[Any]:
        # No marker in Redis: a first start, or Redis lost its data.
        started = await self.meta.find_one({"_id": "counters"})
        if started is None:
            base = floor = 0
            # Nothing to read back (unless counters kept in MongoDB by an older version).
            complete = await self.checkpoints.find_one({}, {"_id": 1}) is None
            await self.meta.update_one(
                {"_id": "counters"}, {"$setOnInsert": {"since": time.time()}}, upsert=True
            )
        else:
            losses = await self.meta.find_one_and_update(
                {"_id": "counters"}, {"$inc": {"losses": 1}}, return_document=True
            )
            base, floor, complete = GAP, GAP * int((losses or {}).get("losses", 1)), False
        keys = [self.base_key, self.floor_key, self.all_key]
        return list(await self._decide(keys, [base, floor, "1" if complete else "0"]))

    def seed_lock_key(self, inbox: str) -> str:
        return f"{self.prefix}:ctrseed:{{{inbox}}}"

    async def seed(self, inboxes: list[str]) -> None:
        """Put the missing counters of ``inboxes`` in Redis, each by one seeder at a time.

        Two seeders of one inbox at once (a consumer's first item and the
        warm-up's copy, or two processes) must not both write its checkpoint:
        the one that loses the race in Redis would have raised the
        checkpoint's ``n`` past a range it marked as skipped, while the
        winner hands out numbers inside that range; the next checkpoint then
        keeps the higher ``n`` with the winner's ranges, and after the next
        loss a walk from ``acked`` would step through a billion numbers no
        range covers (a page that never ends: found by the soak with Redis
        killed twice). So each inbox is seeded under its lock
        (``<p>:ctrseed:{<inbox>}``): the holder checks the counter is still
        missing, reads the checkpoint, writes it, seeds Redis, releases. An
        inbox another seeder holds is waited for (it appears in Redis).
        """
        todo = list(dict.fromkeys(inboxes))
        deadline = time.monotonic() + SEED_WAIT_S
        while todo:
            mine = await self._lock(todo)
            if mine:
                try:
                    await self._seed_locked(mine)
                finally:
                    await self._release(mine)
            todo = await self._missing([i for i in todo if i not in mine])
            if todo:
                if time.monotonic() > deadline:
                    return  # the caller finds them missing and says so
                await asyncio.sleep(SEED_POLL_S)  # another seeder holds them

    async def _lock(self, inboxes: list[str]) -> list[str]:
        """Take the seeding locks that are free; returns their inboxes."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for inbox in inboxes:
                pipe.set(self.seed_lock_key(inbox), self._token, nx=True, ex=SEED_LOCK_S)
            got = await pipe.execute()
        return [i for i, ok in zip(inboxes, got, strict=True) if ok]

    async def _release(self, inboxes: list[str]) -> None:
        with contextlib.suppress(Exception):  # else they expire
            for i in range(0, len(inboxes), 500):
                keys = [self.seed_lock_key(x) for x in inboxes[i : i + 500]]
                await self._unlock(keys, [self._token])

    async def _missing(self, inboxes: list[str]) -> list[str]:
        if not inboxes:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for inbox in inboxes:
                pipe.exists(self.key(inbox))
            there = await pipe.execute()
        return [i for i, e in zip(inboxes, there, strict=True) if not e]

    async def _seed_locked(self, inboxes: list[str]) -> None:
        """Seed those of ``inboxes`` still missing, their locks held."""
        inboxes = await self._missing(inboxes)
        if not inboxes:
            return
        at = await self._base()
        if at.complete:
            # Every counter MongoDB holds is in Redis: these inboxes are new. Their
            # floor and its range reach MongoDB with the next checkpoint.
            await self._seed(inboxes, {}, at)
            return
        saved = {
            d["_id"]: (int(d.get("n", 0)), int(d.get("acked", 0)), parse_gaps(d.get("g")))
            async for d in self.checkpoints.find(
                {"_id": {"$in": inboxes}}, {"n": 1, "acked": 1, "g": 1}
            )
        }
        await self._seed(inboxes, saved, at)

    async def _seed(
        self, inboxes: list[str], saved: dict[str, tuple[int, int, Gaps]], at: Base
    ) -> None:
        """Put ``inboxes``' counters in Redis (where missing), from their checkpoints
        (``saved``) past this lifetime's base, or at its floor when they have none."""
        seeded: dict[str, tuple[int, int, str]] = {}
        for inbox in inboxes:
            if inbox not in saved:
                seeded[inbox] = (at.floor, 0, format_gaps([(0, at.floor)] if at.floor else []))
                continue
            n, acked, gaps = saved[inbox]
            floor = max(n, acked)
            # Every skipped range a walk from ``acked`` could meet: the ones kept with
            # the checkpoint (earlier losses) and this loss's; those wholly below
            # ``acked`` are behind every walk.
            kept = [(f, t) for f, t in gaps if t > acked and f < floor]
            if at.base:
                kept.append((floor, floor + at.base))
            seeded[inbox] = (floor + at.base, acked, format_gaps(kept))
        # The ranges and the jump are in MongoDB before a number past them is handed
        # out: a second loss must not forget them (a walk would then step through a
        # billion numbers, and numbers handed out since the jump could be reused).
        # A new inbox's wait for the next checkpoint: the next loss's floor is past it.
        ranged = [
            UpdateOne({"_id": inbox}, {"$set": {"g": seeded[inbox][2]},
                                       "$max": {"n": seeded[inbox][0]}}, upsert=True)
            for inbox in inboxes if seeded[inbox][2] and (inbox in saved or not at.complete)
        ]  # fmt: skip
        if ranged:
            await self.checkpoints.bulk_write(ranged, ordered=False)
        async with self.redis.pipeline(transaction=False) as pipe:
            for inbox in inboxes:
                await scripts.queue(pipe, self._seed_one, [self.key(inbox)], seeded[inbox])
            if at.complete and at.floor:
                # Their jump reaches MongoDB with the next checkpoint (from 0: nothing to
                # record until a number is handed out, which marks it then).
                pipe.sadd(self.dirty, *inboxes)
            await pipe.execute()

    async def warm(self, page: int = CHECKPOINT_BATCH) -> int:
        """Copy every checkpoint whose counter Redis lacks into Redis, then set
        ``ctrall`` (see the module's doc); returns how many were copied. Does nothing
        once ``ctrall`` is set or while another process copies."""
        if await self.redis.exists(self.all_key):
            return 0
        token = uuid.uuid4().hex
        if not await self.redis.set(self.warm_key, token, nx=True, ex=WARM_LOCK_S):
            return 0
        copied = 0
        left: list[str] = []  # counters another seeder held: in Redis by now?
        try:
            # One cursor over the collection, not pages by ``_id`` range: the embedded
            # server answers a range by reading every document, so pages of 2,000
            # read n²/2,000 of them (30,000 checkpoints: 15 pages of 30,000); a
            # cursor reads them once, and getMore hands out the rest in batches.
            fields = {"n": 1, "acked": 1, "g": 1}
            async with self.checkpoints.find({}, fields, batch_size=page) as cursor:
                while docs := await cursor.to_list(page):
                    done, held = await self._warm_page(docs)
                    copied += done
                    left += held
            # ``ctrall`` says every checkpoint is in Redis: not while one a seeder held
            # is missing (a seeder killed or failing: set, its inbox would be seeded
            # as a new one at the floor, its backlog in MongoDB skipped for good).
            if await self._missing(left):
                await self.redis.delete(self.warm_key)  # the next checkpoint tries again
            else:
                await self._warmed([self.warm_key, self.all_key], [token])
        except BaseException:
            with contextlib.suppress(Exception):  # else it expires
                await self.redis.delete(self.warm_key)
            raise
        return copied

    async def _warm_page(self, docs: list[dict[str, Any]]) -> tuple[int, list[str]]:
        """Seed the counters of these checkpoints that Redis lacks; returns how many, and
        the inboxes whose seeding lock another process held (it seeds them)."""
        at = await self._base()
        async with self.redis.pipeline(transaction=False) as pipe:
            for d in docs:
                pipe.exists(self.key(d["_id"]))
            pipe.expire(self.warm_key, WARM_LOCK_S)
            found = await pipe.execute()
        saved = {
            d["_id"]: (int(d.get("n", 0)), int(d.get("acked", 0)), parse_gaps(d.get("g")))
            for d, there in zip(docs, found, strict=False) if not there
        }  # fmt: skip
        if not saved:
            return 0, []
        # Under their locks (see :meth:`seed`); one a consumer seeds now is its, and
        # in Redis when it lets go.
        mine = await self._lock(list(saved))
        try:
            missing = await self._missing(mine)
            if missing:
                await self._seed(missing, {i: saved[i] for i in missing},
                                 at._replace(complete=False))  # fmt: skip
        finally:
            await self._release(mine)
        held = set(mine)
        return len(missing), [i for i in saved if i not in held]

    async def _copy(self, rows: dict[str, list[Any]]) -> None:
        """Write these counters (``n``, ``acked``, ``g`` as read from Redis; those not
        there left out) to their MongoDB checkpoints, then mark each as covered up to
        the ``n`` written (``c``: :meth:`cover`)."""
        # The skipped ranges too: a counter seeded without MongoDB (a new inbox once
        # every checkpoint is in Redis) has its range nowhere else.
        ops = [
            UpdateOne({"_id": inbox},
                      {"$max": {"n": int(n), "acked": int(acked or 0)},
                       **({"$set": {"g": scripts.text(g)}} if g else {})}, upsert=True)
            for inbox, (n, acked, g, *_) in rows.items() if n is not None
        ]  # fmt: skip
        if not ops:
            return
        await self.checkpoints.bulk_write(ops, ordered=False)
        async with self.redis.pipeline(transaction=False) as pipe:
            for inbox, (n, *_) in rows.items():
                if n is not None:
                    await scripts.queue(pipe, self._covered, [self.key(inbox)], [int(n)])
            await pipe.execute()

    async def cover(self, tops: dict[str, int]) -> None:
        """Make sure each inbox's MongoDB checkpoint holds an ``n`` of at least
        ``tops[inbox]``: before the persister writes copies numbered up to there to
        MongoDB.

        A Redis that loses its data seeds a counter above its checkpoint, and every
        walk over the inbox's numbers steps over the range in between (a number
        there may have reached a client). A copy persisted under a number past the
        checkpoint was inside that range: never paged again, and Kafka, committed
        past its record once it was persisted, had nothing to give back (lost; the
        periodic checkpoint left up to ``counters_checkpoint_s`` for it). Counters
        the periodic checkpoint covered already (``c``, set once a write of theirs
        succeeded) cost a Redis read; the others are written here first. Raises
        :class:`CountersUnseeded` for a counter Redis no longer holds (it lost its
        data since the items were read: the pass writes nothing, and the next one
        finds the loss)."""
        if not tops:
            return
        inboxes = list(tops)
        async with self.redis.pipeline(transaction=False) as pipe:
            for inbox in inboxes:
                pipe.hmget(self.key(inbox), ["n", "acked", "g", "c"])
            rows = await pipe.execute()
        todo = {
            inbox: row for inbox, row in zip(inboxes, rows, strict=True)
            if int(row[3] or 0) < tops[inbox]
        }  # fmt: skip
        if missing := [inbox for inbox, row in todo.items() if row[0] is None]:
            raise CountersUnseeded(missing)
        await self._copy(todo)

    async def checkpoint(self) -> int:
        """Copy the counters changed since the last run to MongoDB; returns how many.

        The inboxes are read from the set first (``SRANDMEMBER``: a read, safe to send
        again), then taken out of it in the pipeline that reads their counters (a
        change after that read marks the inbox again), and put back if anything
        fails. ``SPOP`` took them out and handed them over in one reply: a reply lost
        (a connection error after the command ran) lost the inboxes, and sent again,
        the command took a second set."""
        written = 0
        while True:
            raw = await self.redis.srandmember(self.dirty, CHECKPOINT_BATCH)
            inboxes = [scripts.text(r) for r in raw or []]
            if not inboxes:
                return written
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.srem(self.dirty, *inboxes)
                    for inbox in inboxes:
                        pipe.hmget(self.key(inbox), ["n", "acked", "g"])
                    rows = (await pipe.execute())[1:]
                await self._copy(dict(zip(inboxes, rows, strict=True)))
            except BaseException:
                await self.redis.sadd(self.dirty, *inboxes)  # the next run tries again
                raise
            written += len(inboxes)
            if len(inboxes) < CHECKPOINT_BATCH:
                return written
