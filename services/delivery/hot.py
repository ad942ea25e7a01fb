"""The hot inbox: new items live in Redis; MongoDB gets only what waits.

Signal-Server's message cache, adapted (docs/delivery.md, "The hot path"):
a stored item is written to its device inbox in Redis and pushed at once;
most are acknowledged within milliseconds and never reach MongoDB. The
persister moves what is still unacknowledged after ``hot_persist_after_s``
to MongoDB in large batches. Kafka is the log of record in between: the
delivery consumer commits a partition's offset only past records whose
items are persisted or acknowledged, so losing Redis loses nothing that
Kafka cannot give back (the persister's ``hotbeat`` and each writer's mark,
:data:`GUARD`, notice the loss).

Keys (``<p>`` = the Redis prefix; ``{...}`` is a Redis Cluster hash tag):

- ``<p>:hot:{<inbox>}``: hash, sequence number -> the item (JSON);
- ``<p>:hotidx``: sorted set, ``"<inbox>|<seq>"`` scored by when it was
  stored: what the persister has to look at, oldest first;
- ``<p>:dup:{<inbox>}:<span length>:<span>``: hash, ``"<from>|<client id>"`` -> ``"<seq>"``
  (``"<seq>|<server id>"`` when the server id is not the one
  :func:`~parley_contract.envelopes.message_server_id` derives): the dedup
  records of what the inbox took in one span of ``hot_dedup_s / 2``, the key
  kept ``hot_dedup_s`` past the span's end (:class:`DedupSpans`): a resent or
  redelivered message is recognised without MongoDB;
- ``<p>:hotdup:{<inbox>}|<inbox>|<from>|<client id>``: a dedup record of
  versions before 2026-12-07 (one key each, about 2.5 times the memory), read
  for ``hot_dedup_s`` after ``<p>:hotdupv2`` (when this version first started);
- ``<p>:hotbeat``: a counter every persister run increments; a value lower
  than one seen before means Redis lost its data (restarted empty, or from
  an older snapshot);
- ``<p>:hotmark:{<process>}``: a delivery process's mark, the number of
  losses it has noticed; every write of an item checks it first
  (:data:`GUARD`);
- ``<p>:gone:{<server id>}``: set when a message is removed: a copy that
  arrives later (a room's fan-out under way, a replay) is not stored;
- ``<p>:rm:{<inbox>}``: hash, seq -> server id of the copies removed from the
  inbox: the persister deletes again any it moved to MongoDB meanwhile.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, NoReturn

import orjson
import redis.asyncio as aioredis
from parley_contract import envelopes as e

from services.common import scripts
from services.common.fastredis import idempotent_script
from services.common.inbox import counter_key, dirty_key, hot_index, hot_key

log = logging.getLogger(__name__)

Doc = dict[str, Any]

REMOVE_SEARCH_MAX = 2000
"""The most hot items of one inbox a removal without a seq searches (see _REMOVE)."""

GUARD: ContextVar[tuple[str, str] | None] = ContextVar("parley_hot_guard", default=None)
"""(the key of the writing process's mark, the value this writer expects in it), set
by a delivery consumer around each batch (services/delivery/worker.py), or None: no
check.

Kafka gives back what Redis lost only if nothing is stored after the loss
before the records that were lost: a batch stored into an empty Redis first
would take numbers ahead of the replayed ones, and a member would see the
room's messages (a conversation's) out of order. The persister's ``hotbeat``
notices a loss within a pass (half a second); a consumer may store a batch
meanwhile. So every script that writes items checks the mark in the same
atomic step (:data:`GUARD_LUA`): when it is not what the consumer expects,
nothing is written and :class:`HotInboxLost` is raised; the consumer then
goes back to its committed offsets (and the first to see the mark gone
records the loss and sets it again)."""

GUARD_LUA = """
local function guard(key, want)
  if key == '' then return 0 end
  local have = redis.call('GET', key)
  if have == want then return 0 end
  if have then return 1 end
  return 2
end
"""
"""``guard(mark key, expected value)``: 0 when a write may go on (or no key), 1 when
the mark holds another value, 2 when it is missing. A script's text starts with it."""


class HotInboxLost(Exception):
    """A write refused: the process's mark is not what the writer expected (Redis
    lost its data, or another consumer of the process noticed a loss first)."""

    def __init__(self, missing: bool) -> None:
        super().__init__("the hot inbox's mark is missing" if missing else "the mark moved on")
        self.missing = missing


def guard_args() -> list[str]:
    """The two script arguments of :data:`GUARD` ('' and '' for none)."""
    g = GUARD.get()
    return [g[0], g[1]] if g is not None else ["", ""]


def refused(code: Any) -> NoReturn:
    """Raise :class:`HotInboxLost` for :data:`GUARD_LUA`'s non-zero answer."""
    raise HotInboxLost(missing=int(code) == 2)


# KEYS[1] the inbox's hash, KEYS[2] its waiting counts, KEYS[3] its counter, KEYS[4]
# its dedup records of this span (DedupSpans); ARGV[1] how long to keep KEYS[4], ARGV[2]
# how long to keep the counts, ARGV[3] 1 to count, ARGV[4] and ARGV[5] the writer's mark
# and the value it expects (GUARD), then per item: seq, the item (JSON), its dedup
# record's field and value, the sender's count field ('' for a notice). Returns the
# (1-based) items whose number held another item or is at or below the inbox's ack
# watermark, preceded by a 0 when the inbox has no counter, or {-1, the guard's answer}
# when the mark refused the write (nothing written).
#
# The watermark: two consumers overlap during a rebalance (the old owner's batch still
# under way); the new one stores later messages, the device acknowledges them, and then
# the old one writes numbers it reserved before, below the watermark: pages start past
# it, so those items were never read (and their removal after persisting left the
# waiting counts too high for good). They take fresh numbers instead, as a clash does.
#
# A number written is a number handed out: the counter's ``n`` is raised to the
# highest one written. The numbers were reserved a round trip earlier; a client that
# sends this script again on a fresh connection after a failover (redis-py's retry)
# reaches a primary that may not have that reservation, and pages stop at ``n``. (The
# counter is not marked for the next checkpoint: that waits for its next reservation
# or ack, and a Redis loss re-seeds counters far past any checkpoint anyway.) A
# counter missing altogether (its first seeding was lost too) cannot be seeded here
# (that may read MongoDB): the 0 tells :meth:`HotInbox.put`, which has it seeded and
# raised before the items are pushed or confirmed. It says so when nothing was written
# too: a batch tried again after that seeding failed finds its items there already.
_PUT = (
    GUARD_LUA
    + """
local refused = guard(ARGV[4], ARGV[5])
if refused ~= 0 then return {-1, refused} end
local ctr = redis.call('HMGET', KEYS[3], 'n', 'acked')
local acked = tonumber(ctr[2] or '0')
local clashed = {}
local wrote = 0
local top = 0
local recorded = 0
for i = 1, (#ARGV - 5) / 5 do
  local a = 5 + (i - 1) * 5
  if tonumber(ARGV[a + 1]) > acked
      and redis.call('HSETNX', KEYS[1], ARGV[a + 1], ARGV[a + 2]) == 1 then
    redis.call('HSET', KEYS[4], ARGV[a + 3], ARGV[a + 4])
    recorded = 1
    top = math.max(top, tonumber(ARGV[a + 1]))
    if ARGV[3] == '1' then
      redis.call('HINCRBY', KEYS[2], '*', 1)
      if ARGV[a + 5] ~= '' then redis.call('HINCRBY', KEYS[2], ARGV[a + 5], 1) end
      wrote = wrote + 1
    end
  else
    clashed[#clashed + 1] = i
  end
end
if recorded == 1 then redis.call('EXPIRE', KEYS[4], ARGV[1]) end
if wrote > 0 then redis.call('EXPIRE', KEYS[2], ARGV[2]) end
local n = ctr[1]
if not n then table.insert(clashed, 1, 0)
elseif top > tonumber(n) then redis.call('HSET', KEYS[3], 'n', top) end
return clashed
"""
)

# The dedup records of a batch, and (a batch's first round trip, services/delivery/store.py
# ``claims_and_numbers``) numbers for the records not found only. KEYS[1]
# ``<p>:hotdupv2`` (the time this version's records began), KEYS[2] the set of counters
# changed since the last checkpoint, then per record its spans' keys (ARGV[2] of them,
# newest first) and its key of the versions before, then per inbox its counter; ARGV[1]
# now, ARGV[2] spans per record, ARGV[3] how long after KEYS[1] the keys of before are
# read, ARGV[4] how many inboxes (0: number nothing), then their names, then per record
# its field and its inbox (1-based, among those names; 0: none). Returns each record's
# value (the newest span's, or nil), then per inbox the first of the numbers reserved
# for its records not found (one each, in order), 0 when it needs none, -1 when its
# counter is missing.
#
# Until 2026-12-07 a batch reserved a number for every item, a repeat's left unused: a
# sender resending one message (no waiting count is raised for a repeat, so no cap
# refuses it) grew a gap in the recipient's inbox without limit, and pages walked it.
_CLAIMS_NUMBERS = """
local per = tonumber(ARGV[2])
local since = redis.call('GET', KEYS[1])
local old = since and tonumber(ARGV[1]) < tonumber(since) + tonumber(ARGV[3])
local inboxes = tonumber(ARGV[4])
local records = (#ARGV - 4 - inboxes) / 2
local out, fresh = {}, {}
for i = 1, inboxes do fresh[i] = 0 end
for j = 1, records do
  local base = 2 + (j - 1) * (per + 1)
  local a = 4 + inboxes + (j - 1) * 2
  local v = false
  for i = 1, per do
    v = redis.call('HGET', KEYS[base + i], ARGV[a + 1])
    if v then break end
  end
  if not v and old then v = redis.call('GET', KEYS[base + per + 1]) end
  out[j] = v
  local k = tonumber(ARGV[a + 2])
  if not v and k > 0 then fresh[k] = fresh[k] + 1 end
end
local counters = 2 + records * (per + 1)
for i = 1, inboxes do
  local key = KEYS[counters + i]
  if fresh[i] == 0 then
    out[records + i] = 0
  elseif redis.call('EXISTS', key) == 0 then
    out[records + i] = -1
  else
    out[records + i] = redis.call('HINCRBY', key, 'n', fresh[i]) - fresh[i] + 1
    redis.call('SADD', KEYS[2], ARGV[4 + i])
  end
end
return out
"""

# The lowest seq in KEYS[1] (an inbox's hot hash) above ARGV[1] and at most ARGV[2], or
# 0: where a page goes on after a range that holds nothing (services/delivery/store.py
# ``page``). Reads the hash's fields (seconds of items), unless it holds more than
# ARGV[3] (up to 100,000 while MongoDB is down: every page's empty chunk read them all,
# as the ack script did before its bound): then it looks number by number at the next
# ARGV[3] numbers alone, and returns the first found, or -(the last number looked at).
_NEXT_HOT = """
local low, high, best = tonumber(ARGV[1]), tonumber(ARGV[2]), 0
if redis.call('HLEN', KEYS[1]) > tonumber(ARGV[3]) then
  local to = math.min(high, low + tonumber(ARGV[3]))
  for k = low + 1, to do
    if redis.call('HEXISTS', KEYS[1], k) == 1 then return k end
  end
  return -to
end
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  local k = tonumber(f)
  if k and k > low and k <= high and (best == 0 or k < best) then best = k end
end
return best
"""

NEXT_HOT_MOST = 2000
"""The most items an inbox's hot hash may hold for :meth:`HotInbox.next_hot` to read its
fields (the ack script's bound, ``ACK_SPAN``); past it, the numbers it looks at one by one
in a call (a page walks on a chunk of that many numbers a look)."""

DEDUP_SKEW_S = 300
"""How far apart the clocks of delivery processes may be for the dedup records' spans
(:class:`DedupSpans`): a record written by one is found by another that far off."""


@dataclass(frozen=True, slots=True)
class DedupSpans:
    """Where the dedup records of ``window_s`` live: one hash per device inbox per span
    of ``window_s / 2`` (its number: the writer's time // span), field
    ``"<from>|<client id>"``, kept ``window_s`` past the span's end. A record lives
    between ``window_s`` and 1.5 ``window_s``, and its inbox's span keys are dropped
    whole: no key, expiry entry and object per record (a record took 268 bytes
    of Redis memory, now 100 to 155; docs/delivery.md, "Dedup records").

    A look-up reads every span from ``window_s`` (plus :data:`DEDUP_SKEW_S`) before
    now to :data:`DEDUP_SKEW_S` after it, newest first: three spans, four near a
    span's end."""

    prefix: str
    window_s: int

    @property
    def span_s(self) -> int:
        return max(1, self.window_s // 2)

    def key(self, inbox: str, span: int) -> str:
        # The span's length in the name: a number alone names another time once
        # PARLEY_HOT_DEDUP_S changes (every record then missed, and between processes
        # whose settings differ during a rollout); with it, a look-up of another length
        # misses only the records of the other setting, as a shorter window would.
        return f"{self.prefix}:dup:{{{inbox}}}:{self.span_s}:{span}"

    def write(self, inbox: str, now: float) -> tuple[str, int]:
        """The key a record written at ``now`` goes to, and how long to keep that key."""
        span = int(now // self.span_s)
        keep = (span + 1) * self.span_s - now + self.window_s + DEDUP_SKEW_S
        return self.key(inbox, span), math.ceil(keep)

    def spans(self, now: float) -> list[int]:
        """The spans a look-up at ``now`` reads, newest first."""
        low = int((now - self.window_s - DEDUP_SKEW_S) // self.span_s)
        return list(range(int((now + DEDUP_SKEW_S) // self.span_s), low - 1, -1))


def dedup_value(doc: Doc) -> str:
    """A dedup record's value: the item's seq, and its server id unless it is the one
    the sender and client id give (:func:`e.message_server_id`: every message's; a
    notice's record always names it, its key's client id being ``"<kind> <id>"``)."""
    seq, server_id = int(doc["seq"]), str(doc["server_id"])
    message = (doc.get("kind") or "message") == "message"
    if message and server_id == e.message_server_id(doc["from"], doc["client_id"]):
        return str(seq)
    return f"{seq}|{server_id}"


def _identity(doc: Doc) -> tuple[Any, Any, Any]:
    """What makes two items the same one: sender, client id and kind (a notice's client
    id is not a message's: services/delivery/store.py ``dedup_key``)."""
    return doc.get("from"), doc.get("client_id"), doc.get("kind") or "message"


# Remove a tombstoned message's copy from one inbox: KEYS[1] the inbox's hash, KEYS[2]
# its waiting counts, KEYS[3] its removal markers; ARGV[1] the copy's seq ('' when not
# known: the hash is searched for it), ARGV[2] the message's server id, ARGV[3] how long
# to keep the marker, ARGV[4] its sender (a copy from anyone else is left alone). The
# marker is written first (the persister reads it after it inserted), then the item
# goes. Returns the seq of the item taken out, 0 when there was none.
#
# The search reads the whole hash, which holds seconds of items, except while MongoDB
# is down: then everything waits there, up to 100,000 items of up to 64 KiB, and one
# search held Redis (every service) for seconds and built a reply of gigabytes. An
# inbox of more than ARGV[5] hot items is not searched: the copy stays until the device
# acknowledges it (it reads the tombstone after it, and hides it).
_REMOVE = """
local seq = ARGV[1]
local raw = nil
if seq == '' then
  if redis.call('HLEN', KEYS[1]) > tonumber(ARGV[5]) then return 0 end
  local all = redis.call('HGETALL', KEYS[1])
  for i = 1, #all, 2 do
    if string.find(all[i + 1], ARGV[2], 1, true) then
      local d = cjson.decode(all[i + 1])
      if d['server_id'] == ARGV[2] and (d['kind'] or 'message') == 'message' then
        seq, raw = all[i], all[i + 1]
        break
      end
    end
  end
  if not raw then return 0 end
else
  raw = redis.call('HGET', KEYS[1], seq)
end
redis.call('HSET', KEYS[3], seq, ARGV[2])
redis.call('EXPIRE', KEYS[3], ARGV[3])
if not raw then return 0 end
local doc = cjson.decode(raw)
if doc['server_id'] ~= ARGV[2] or doc['from'] ~= ARGV[4] then return 0 end
redis.call('HDEL', KEYS[1], seq)
if doc['uncounted'] then return tonumber(seq) end
if redis.call('HINCRBY', KEYS[2], '*', -1) <= 0 then redis.call('HDEL', KEYS[2], '*') end
if (doc['kind'] or 'message') == 'message' then
  if redis.call('HINCRBY', KEYS[2], doc['from'], -1) <= 0 then
    redis.call('HDEL', KEYS[2], doc['from'])
  end
end
return tonumber(seq)
"""


@dataclass(frozen=True, slots=True)
class Removal:
    """A removed message's copy to delete from one device inbox: its seq when known."""

    inbox: str
    seq: int | None
    server_id: str
    sender: str


PendingCounts = Callable[[str], tuple[str, int]]
"""An inbox -> (the key of its waiting counts, how long to keep it in seconds)."""


WAIT_PAUSE_S = 30.0
"""How long writes do not wait for replicas after they did not answer in time."""


@dataclass
class Replicas:
    """The Redis replicas a write of items waits for (``WAIT`` at the end of its
    pipeline), so that a failover cannot promote a replica without them
    (docs/delivery.md, "Redis failover")."""

    wanted: int = 0
    timeout_ms: int = 500
    on_short: Callable[[int], None] = lambda items: None
    """Told how many items were written without the replicas' confirmation."""
    _pause_until: float = 0.0

    def due(self) -> bool:
        """Whether writes wait now: some are wanted and replicas were not slow of late."""
        return bool(self.wanted) and time.monotonic() >= self._pause_until

    def pipeline(self, redis: aioredis.Redis, wait: bool) -> aioredis.client.Pipeline:
        """A pipeline for writes: ``WAIT`` blocks its connection, so a waiting one is
        redis-py's own (a pooled connection), never the one every caller shares
        (services/common/fastredis.py)."""
        if wait:
            return aioredis.Redis.pipeline(redis, transaction=False)
        return redis.pipeline(transaction=False)

    def check(self, acked: Any, items: int) -> None:
        """After a write of ``items``: the wait's answer (how many replicas hold the
        writes), or None when it did not wait. Every item not confirmed is counted."""
        if not self.wanted:
            return
        if acked is None:
            self.on_short(items)  # a pause: written unconfirmed
            return
        if int(acked) >= self.wanted:
            return
        self._pause_until = time.monotonic() + WAIT_PAUSE_S
        self.on_short(items)
        log.warning(
            "Redis replicas did not confirm hot items: writes go on unconfirmed",
            extra={"replicas": int(acked), "wanted": self.wanted, "pause_s": WAIT_PAUSE_S},
        )


class HotInbox:
    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str,
        dedup_s: int,
        replicas: Replicas | None = None,
        recount: Callable[[dict[str, int]], Awaitable[None]] | None = None,
    ) -> None:
        self.redis = redis
        self.replicas = replicas or Replicas()
        self.recount = recount
        """Seeds missing counters and raises them (InboxCounters.raise_to): see _PUT."""
        self._put = scripts.register(redis, _PUT)
        self.dedup = DedupSpans(prefix, dedup_s)
        self.dedup_since = f"{prefix}:hotdupv2"
        """When this version's dedup records began (before: :meth:`dup_key`)."""
        self._remove = scripts.register(redis, _REMOVE)
        self._claims_numbers = scripts.register(redis, _CLAIMS_NUMBERS)
        self._next_hot = scripts.register(redis, _NEXT_HOT)
        idempotent_script(self._next_hot.sha)  # reads only
        self.prefix = prefix
        self.dedup_s = dedup_s
        self.index = hot_index(prefix)
        self.beat = f"{prefix}:hotbeat"

    def key(self, inbox: str) -> str:
        return hot_key(self.prefix, inbox)

    def gone_key(self, server_id: str) -> str:
        return f"{self.prefix}:gone:{{{server_id}}}"

    def rm_key(self, inbox: str) -> str:
        return f"{self.prefix}:rm:{{{inbox}}}"

    def dup_key(self, dedup_key: str) -> str:
        """A dedup record's key in versions before 2026-12-07 (still read, see _CLAIMS_NUMBERS)."""
        return f"{self.prefix}:hotdup:{{{dedup_key.split('|', 1)[0]}}}|{dedup_key}"

    async def begin_dedup_spans(self) -> None:
        """Record when this version first wrote dedup records (kept once set): the
        records of the versions before are read for ``hot_dedup_s`` after it."""
        await self.redis.set(self.dedup_since, int(time.time()), nx=True)

    # Dedup -------------------------------------------------------------------
    async def claims(self, keys: list[str]) -> dict[str, tuple[int, str]]:
        """The (seq, server id) recorded for each dedup key seen within the window."""
        return (await self.claims_and_gone(keys, ()))[0]

    async def claims_and_gone(
        self, keys: list[str], server_ids: Iterable[str]
    ) -> tuple[dict[str, tuple[int, str]], set[str]]:
        """:meth:`claims` and :meth:`gone` in one round trip."""
        ids = list(dict.fromkeys(server_ids))
        if not keys and not ids:
            return {}, set()
        async with self.redis.pipeline(transaction=False) as pipe:
            await self.queue_claims(pipe, keys, ids)
            return self.read_claims(keys, ids, await pipe.execute())

    async def queue_claims(
        self, pipe: aioredis.client.Pipeline, keys: list[str], ids: list[str]
    ) -> int:
        """Queue what :meth:`claims_and_gone` reads: one script for the dedup records of
        ``keys`` (if any), then an ``MGET`` of the removal marks of the (distinct)
        ``ids`` (if any). Returns how many commands were queued."""
        if keys:
            await self._queue_records(pipe, keys, numbered=False)
        if ids:
            pipe.mget([self.gone_key(s) for s in ids])
        return bool(keys) + bool(ids)

    async def queue_claims_numbers(
        self, pipe: aioredis.client.Pipeline, keys: list[str], ids: list[str]
    ) -> tuple[int, list[str]]:
        """:meth:`queue_claims`, the dedup records read by a script that also reserves a
        sequence number for each of ``keys`` (distinct dedup keys) it finds no record
        of, and none for a repeat (:data:`_CLAIMS_NUMBERS`). Returns how many commands
        were queued and the inboxes in the order the script answers for them."""
        order = await self._queue_records(pipe, keys, numbered=True) if keys else []
        if ids:
            pipe.mget([self.gone_key(s) for s in ids])
        return bool(keys) + bool(ids), order

    async def _queue_records(
        self, pipe: aioredis.client.Pipeline, keys: list[str], *, numbered: bool
    ) -> list[str]:
        """Queue :data:`_CLAIMS_NUMBERS` for the dedup records of ``keys``, reserving
        numbers when ``numbered``; the inboxes in the order the script answers for them."""
        now = time.time()
        spans = self.dedup.spans(now)
        inboxes: dict[str, int] = {}
        names: list[str] = [self.dedup_since, dirty_key(self.prefix)]
        records: list[str | int] = []
        for key in keys:
            inbox, _, field = key.partition("|")
            names += [self.dedup.key(inbox, s) for s in spans]
            names.append(self.dup_key(key))
            records += [field, inboxes.setdefault(inbox, len(inboxes) + 1) if numbered else 0]
        order = list(inboxes)
        names += [counter_key(self.prefix, inbox) for inbox in order]
        args = [int(now), len(spans), self.dedup_s + DEDUP_SKEW_S, len(order), *order, *records]
        await scripts.queue(pipe, self._claims_numbers, names, args)
        return order

    def read_claims_numbers(
        self, keys: list[str], ids: list[str], inboxes: list[str], results: list[Any]
    ) -> tuple[dict[str, tuple[int, str]], set[str], dict[str, int]]:
        """:meth:`queue_claims_numbers`' answer: the claims, the removed messages, and
        each inbox's first number (those that needed some and have a counter)."""
        if not keys:
            claims, gone = self.read_claims([], ids, results)
            return claims, gone, {}
        reply = list(results[0])
        claims, gone = self.read_claims(keys, ids, [reply[: len(keys)], *results[1:]])
        numbers = {
            inbox: int(first)
            for inbox, first in zip(inboxes, reply[len(keys) :], strict=True)
            if int(first) > 0
        }
        return claims, gone, numbers

    async def next_hot(self, inbox: str, after: int, last: int) -> tuple[int | None, int]:
        """The lowest seq of ``inbox`` that is hot, above ``after`` and at most ``last``
        (or None), and how far that holds: ``last``, or when the hot hash holds more than
        :data:`NEXT_HOT_MOST` items (not all read) the end of the next ``NEXT_HOT_MOST``
        numbers, looked at one by one (the caller walks on from there)."""
        found = int(await scripts.call(self.redis, self._next_hot.sha, [self.key(inbox)],
                                       [after, last, NEXT_HOT_MOST]))  # fmt: skip
        if found < 0:
            return None, -found
        return found or None, last

    def read_claims(
        self, keys: list[str], ids: list[str], results: list[Any]
    ) -> tuple[dict[str, tuple[int, str]], set[str]]:
        """:meth:`claims_and_gone`'s answer from the results of :meth:`queue_claims`."""
        claims = {}
        if keys:
            for key, value in zip(keys, results[0], strict=True):
                if value is not None:
                    seq, _, server_id = scripts.text(value).partition("|")
                    if not server_id:
                        _, sender, client_id = key.split("|", 2)
                        server_id = e.message_server_id(sender, client_id)
                    claims[key] = (int(seq), server_id)
        marks = results[1 if keys else 0] if ids else []
        gone = {s for s, v in zip(ids, marks, strict=True) if v is not None}
        return claims, gone

    # Items -------------------------------------------------------------------
    async def put(
        self,
        docs: list[tuple[str, Doc]],
        now: float,
        pending: PendingCounts | None = None,
        after: Callable[[aioredis.client.Pipeline], None] | None = None,
    ) -> tuple[set[str], list[Any]]:
        """Write items (with their dedup records and index entries): one command for
        the index, then one script per device inbox whatever its number of items.

        The script writes each item whose number is free (``HSETNX``), then its
        dedup record, and raises the inbox's waiting counts (``pending``: the
        key of each inbox and how long to keep it) for what it wrote. Returns
        the dedup keys whose sequence number already held *another* message
        (overlapping reservations): those were not written, and the caller
        stores them again under fresh numbers (whose dedup record then replaces
        the one written here). Also returns the results of what ``after``
        queued at the end of the same pipeline: Redis runs a pipeline's
        commands in order, so those read what the scripts wrote.
        """
        if not docs:
            return set(), []
        by_inbox: dict[str, list[tuple[str, Doc]]] = {}
        for dedup, doc in docs:
            by_inbox.setdefault(doc["inbox"], []).append((dedup, doc))
        # In this order, so that a pipeline cut short (the process dies while
        # sending it) never leaves an item the persister cannot see, nor a dedup
        # record without its item: index entries, then each inbox's items with
        # their records (the script writes a record after its item).
        guarded = guard_args()
        waited = self.replicas.due()
        async with self.replicas.pipeline(self.redis, waited) as pipe:
            pipe.zadd(self.index, {f"{d['inbox']}|{int(d['seq'])}": now for _, d in docs})
            inboxes = list(by_inbox)
            for inbox in inboxes:
                items = by_inbox[inbox]
                count_key, keep = pending(inbox) if pending else ("", 0)
                dup, dup_keep = self.dedup.write(inbox, now)
                keys = [self.key(inbox), count_key or self.key(inbox),
                        counter_key(self.prefix, inbox), dup]  # fmt: skip
                args: list[str | int | bytes] = [
                    dup_keep, keep, 1 if count_key else 0, *guarded
                ]  # fmt: skip
                for dedup, doc in items:
                    field = doc["from"] if doc.get("kind", "message") == "message" else ""
                    args += [int(doc["seq"]), orjson.dumps(doc), dedup.partition("|")[2],
                             dedup_value(doc), field]  # fmt: skip
                await scripts.queue(pipe, self._put, keys, args)
            if waited:  # after the writes, before any push
                pipe.wait(self.replicas.wanted, self.replicas.timeout_ms)
            if after is not None:
                after(pipe)
            results = await pipe.execute()
        self.replicas.check(results[1 + len(inboxes)] if waited else None, len(docs))
        tail = results[1 + len(inboxes) + waited :]
        taken: list[tuple[str, Doc]] = []
        uncounted: dict[str, int] = {}
        for inbox, clashed in zip(inboxes, results[1 : 1 + len(inboxes)], strict=True):
            if clashed and int(clashed[0]) == -1:
                # The batch goes again, from the committed offsets. The index entries
                # the pipeline wrote first point at nothing: the persister drops them.
                refused(clashed[1])
            items = by_inbox[inbox]
            if clashed and int(clashed[0]) == 0:
                # Every number these items name is handed out, a clash's (another
                # message holds it) and a repeat's (this write's earlier try, whose
                # seeding failed) too.
                clashed = clashed[1:]
                uncounted[inbox] = max(int(d["seq"]) for _, d in items)
            taken += [items[int(i) - 1] for i in clashed or []]
        if uncounted:
            if self.recount is None:
                raise RuntimeError(f"items written to inboxes without a counter: {uncounted}")
            await self.recount(uncounted)
        if not taken:
            return set(), tail
        async with self.redis.pipeline(transaction=False) as pipe:
            for _, doc in taken:
                pipe.hget(self.key(doc["inbox"]), str(int(doc["seq"])))
            held = await pipe.execute()
        clashes = set()
        for (dedup, doc), raw in zip(taken, held, strict=True):
            other = orjson.loads(raw) if raw else {}
            if _identity(other) != _identity(doc):
                clashes.add(dedup)
        return clashes, tail

    async def get(self, inbox: str, seqs: list[int]) -> dict[int, Doc]:
        """The items of ``inbox`` among ``seqs`` that are hot."""
        if not seqs:
            return {}
        values = await self.redis.hmget(self.key(inbox), [str(s) for s in seqs])
        return {s: orjson.loads(v) for s, v in zip(seqs, values, strict=True) if v is not None}

    async def get_many(self, wanted: dict[str, list[int]]) -> dict[str, dict[int, Doc]]:
        """:meth:`get` for several inboxes in one round trip."""
        inboxes = [i for i, seqs in wanted.items() if seqs]
        if not inboxes:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for inbox in inboxes:
                pipe.hmget(self.key(inbox), [str(s) for s in wanted[inbox]])
            rows = await pipe.execute()
        return {
            inbox: {s: orjson.loads(v) for s, v in zip(wanted[inbox], row, strict=True) if v}
            for inbox, row in zip(inboxes, rows, strict=True)
        }

    async def remove(self, items: Iterable[tuple[str, int]]) -> list[bool]:
        """Take items out of the hot inbox and the index (persisted), one round trip;
        returns, for each, whether this call took it (False: it was gone already,
        acknowledged or removed, or moved by another process)."""
        members = []
        async with self.redis.pipeline(transaction=False) as pipe:
            for inbox, seq in items:
                pipe.hdel(self.key(inbox), str(seq))
                members.append(f"{inbox}|{seq}")
            if not members:
                return []
            pipe.zrem(self.index, *members)
            results = await pipe.execute()
        return [bool(int(r)) for r in results[:-1]]

    async def unindex(self, items: Iterable[tuple[str, int]]) -> None:
        """Take items out of the persister's index (their inbox no longer holds them)."""
        members = [f"{inbox}|{seq}" for inbox, seq in items]
        for i in range(0, len(members), 1000):
            await self.redis.zrem(self.index, *members[i : i + 1000])

    async def drop(self, inbox: str) -> None:
        """Drop an inbox's hot items and their persister index entries (by the hash's
        fields: what is hot, not every number issued, which a gap makes millions)."""
        seqs = [int(f) for f in await self.redis.hkeys(self.key(inbox))]
        members = [f"{inbox}|{s}" for s in seqs]
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.delete(self.key(inbox))
            if members:
                pipe.zrem(self.index, *members)
            await pipe.execute()

    # Tombstones ----------------------------------------------------------------
    async def mark_gone(self, server_id: str, keep_s: int) -> None:
        await self.mark_gone_many([server_id], keep_s)

    async def mark_gone_many(self, server_ids: Iterable[str], keep_s: int) -> None:
        """Mark messages removed, a pipeline a thousand (a Redis loss marks every removal
        of the last hours again: restore_gone)."""
        ids = list(server_ids)
        for i in range(0, len(ids), 1000):
            async with self.redis.pipeline(transaction=False) as pipe:
                for server_id in ids[i : i + 1000]:
                    pipe.set(self.gone_key(server_id), 1, ex=keep_s)
                await pipe.execute()

    async def gone(self, server_ids: Iterable[str]) -> set[str]:
        """Which of these messages were removed (one round trip)."""
        ids = list(dict.fromkeys(server_ids))
        if not ids:
            return set()
        values = await self.redis.mget([self.gone_key(s) for s in ids])
        return {s for s, v in zip(ids, values, strict=True) if v is not None}

    async def remove_messages(
        self, items: list[Removal], counts: PendingCounts, marker_s: int
    ) -> list[tuple[Removal, int]]:
        """Take removed messages' copies out of the hot inbox (and lower the waiting
        counts), leaving a marker for the persister; returns those that were hot, each
        with the seq of the copy taken. A removal without a seq searches its inbox's
        hash, which holds only what arrived in the last ``hot_persist_after_s``."""
        if not items:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for r in items:
                keys = [self.key(r.inbox), counts(r.inbox)[0], self.rm_key(r.inbox)]
                args = ["" if r.seq is None else r.seq, r.server_id, marker_s, r.sender,
                        REMOVE_SEARCH_MAX]  # fmt: skip
                await scripts.queue(pipe, self._remove, keys, args)
            results = await pipe.execute()
        taken = [(r, int(n)) for r, n in zip(items, results, strict=True) if int(n)]
        await self.unindex((r.inbox, n) for r, n in taken)
        return taken

    async def removed(self, docs: list[Doc]) -> list[Doc]:
        """Of these items (read from MongoDB), those whose message was removed since."""
        if not docs:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for d in docs:
                pipe.hget(self.rm_key(d["inbox"]), str(int(d["seq"])))
            marks = await pipe.execute()
        return [d for d, m in zip(docs, marks, strict=True)
                if m is not None and scripts.text(m) == d.get("server_id")]  # fmt: skip

    # The persister's view ------------------------------------------------------
    async def due(
        self, cutoff: float, limit: int | None, low: float = -math.inf, past: bool = False
    ) -> list[tuple[str, int, float]]:
        """The oldest items stored at or before ``cutoff`` and at or after ``low`` (after
        it, with ``past``), at most ``limit`` (None: all), with when their index
        entries say they were stored. Oldest first; entries stored at the same time
        in the order of their names (the sorted set's)."""
        bound = f"({low!r}" if past else repr(low)
        start, num = (None, None) if limit is None else (0, limit)
        members = await self.redis.zrangebyscore(
            self.index, bound, repr(cutoff), start=start, num=num, withscores=True
        )
        out = []
        for pair in members:
            inbox, _, seq = scripts.text(pair[0]).rpartition("|")
            out.append((inbox, int(seq), float(pair[1])))
        return out

    async def settled_before(self, beat: int) -> float | None:
        """A time before which every item stored is acknowledged or persisted: now, or
        the oldest index entry's if one is older. ``None`` if Redis may have lost
        data since the persister counted ``beat`` (the index read then proves
        nothing).

        An entry leaves the index only with its item (acknowledged, moved to
        MongoDB, or taken out of its inbox), and :meth:`put` writes the entry
        before the item: so a batch whose ``put`` ended before this read, at a
        time before the oldest entry, has all its items acknowledged or
        persisted. Read in one transaction with the heartbeat counter: a Redis
        that lost everything or went back to an older snapshot holds a lower
        count, and its empty index says nothing.
        """
        started = time.time()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrange(self.index, 0, 0, withscores=True)
            pipe.get(self.beat)
            oldest, now_beat = await pipe.execute()
        if now_beat is None or int(now_beat) < beat:
            return None
        if not oldest:
            return started
        # Strictly before the entry: a batch stored in the same clock tick waits.
        return min(started, math.nextafter(float(oldest[0][1]), -math.inf))

    async def heartbeat(self, mark: str = "", mark_ttl_s: int = 0) -> int:
        """Count a persister run; keeps ``mark`` (a writer's, :data:`GUARD`) from expiring
        while it exists (never makes it: a missing mark is a loss)."""
        if not mark:
            return int(await self.redis.incr(self.beat))
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.incr(self.beat)
            pipe.expire(mark, mark_ttl_s)
            beat, _ = await pipe.execute()
        return int(beat)
