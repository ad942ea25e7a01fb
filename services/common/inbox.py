"""The Redis keys of a device inbox that more than one service touches, and the script
that acknowledges one.

Delivery owns the inbox (services/delivery/hot.py, counters.py: what each key
holds); the gateway acknowledges hot items itself through the same script
(services/gateway/acks.py, docs/delivery.md "Acks"), so the names, the script
and the receipt it earns live here, once.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import redis.asyncio as aioredis
from parley_contract import frames as f
from redis.commands.core import AsyncScript

from services.common import scripts
from services.common.routing import Push, pending_key


def receipts(docs: Iterable[dict[str, Any]]) -> list[Push]:
    """The `delivered` receipts acknowledged items earn: a 1:1 message's, to its sending
    device. A room's copy earns none (a room's sender would get one per member)."""
    return [
        (d["from"], d.get("from_device"), receipt(d))
        for d in docs
        if d.get("kind") == "message"
        and not d.get("room")
        and not str(d.get("conversation") or "").startswith("room:")
    ]


def receipt(doc: dict[str, Any]) -> f.Delivered:
    """The `delivered` frame the sending device gets when a device acknowledges its copy."""
    return f.Delivered(
        id=doc["client_id"], server_id=doc["server_id"], to=doc["user"],
        device=int(doc["device"]), conversation=doc.get("conversation"),
    )  # fmt: skip


def counter_key(prefix: str, inbox: str) -> str:
    """The inbox's counters: hash ``n``, ``acked``, ``g`` (services/delivery/counters.py)."""
    return f"{prefix}:ctr:{{{inbox}}}"


def dirty_key(prefix: str) -> str:
    """The set of the inboxes whose counters changed since the last checkpoint."""
    return f"{prefix}:ctrdirty"


def hot_key(prefix: str, inbox: str) -> str:
    """The hot inbox: hash, sequence number -> the item (services/delivery/hot.py)."""
    return f"{prefix}:hot:{{{inbox}}}"


def hot_index(prefix: str) -> str:
    """The persister's index: sorted set of ``"<inbox>|<seq>"`` by when stored."""
    return f"{prefix}:hotidx"


async def queue_ack(
    pipe: aioredis.client.Pipeline, script: AsyncScript, prefix: str, inbox: str, top: int,
    *, strict: bool, hot_only_max: int | None = None, span: int | None = None,
) -> None:  # fmt: skip
    """Queue :data:`ACK_HOT` (registered as ``script``) for ``inbox`` up to ``top``:
    ``strict``, an ack past the last number issued changes nothing; ``hot_only_max``,
    only a range of at most that many numbers, all hot (the gateway's); ``span``, at
    most that many numbers past the watermark this call (the caller calls again)."""
    keys = [counter_key(prefix, inbox), hot_key(prefix, inbox), pending_key(prefix, inbox),
            hot_index(prefix), dirty_key(prefix)]  # fmt: skip
    args: list[object] = [top, "1" if strict else "0", inbox]
    if hot_only_max is not None:
        args += ["1", hot_only_max]
    elif span is not None:
        args += ["0", 0]
    if span is not None:
        args.append(span)
    await scripts.queue(pipe, script, keys, args)


# Acknowledges up to ARGV[1] in one device inbox: raises acked (as counters.py's _ACK),
# then takes every hot item of the range out of the inbox's hash and lowers its waiting
# counts (one HINCRBY per field: all items, and each sender's messages).
# KEYS[1] counter, KEYS[2] hot hash, KEYS[3] waiting counts, KEYS[4] the persister's
# index, whose "<ARGV[3]>|<seq>" entries of the items taken go too, KEYS[5] the set of
# counters changed since the last checkpoint (ARGV[3] joins it when acked moves).
# ARGV[2] '1': an ack past n changes nothing and returns {-2, n} (the caller refuses
# it: never issued). ARGV[4] '1' (the gateway's direct ack, services/gateway/acks.py):
# only when the range holds at most ARGV[5] numbers and every one is hot, else it
# changes nothing and returns {-3} (delivery acks it: a persisted item is in MongoDB).
# ARGV[6], when given (delivery's acks): when the hot hash holds at most that many
# items, the whole range in this call, its items found by the hash's fields (HKEYS), not
# by trying every number of the range: a range over a gap of a million numbers (a
# resent message took a number per repeat until 2026-12-07) was 500 calls of 2,000
# numbers each; else at most that many numbers past the watermark in this call (one
# cumulative ack over a backlog kept hot by a MongoDB outage, up to 100,000 items, held
# Redis for seconds and built a reply of gigabytes; the caller calls again).
# Returns -1 when the counter is missing, else {acked before, n, gaps, item...}, with
# ARGV[6] {acked before, n, gaps, where this call stopped, item...}: an item's JSON, or
# the seq alone of a private room's copy, in seq order.
ACK_HOT = """
-- A string field of an item's JSON by plain search, not cjson.decode nor a pattern
-- (both cost more than the rest of the ack: docs/BENCHMARKS.md, "Room fan-out").
-- Every quote inside a JSON string is escaped (preceded by a backslash), so
-- '"kind":"' (a quote right after 'd') can only be a key: its first match is it.
-- The items hold no nested objects.
local function field(s, key)
  local i = string.find(s, key, 1, true)
  if not i then return nil end
  local from = i + #key
  return string.sub(s, from, string.find(s, '"', from, true) - 1)
end
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local v = redis.call('HMGET', KEYS[1], 'n', 'acked', 'g', 'sf', 'st')
local n, acked = tonumber(v[1] or '0'), tonumber(v[2] or '0')
local g = v[3] or ''
if g == '' and v[4] and v[5] then g = v[4] .. ':' .. v[5] end
-- The skipped ranges, ascending: (f, t) skips f + 1 .. t.
local gaps = {}
for f, t in string.gmatch(g, '(%d+):(%d+)') do gaps[#gaps + 1] = {tonumber(f), tonumber(t)} end
if ARGV[2] == '1' and tonumber(ARGV[1]) > n then return {-2, n} end
local top = math.min(tonumber(ARGV[1]), n)
local few = false
if ARGV[6] then
  local hot = redis.call('HLEN', KEYS[2])
  if hot <= tonumber(ARGV[6]) and hot < top - acked then
    few = true  -- fewer items than numbers: the hash's fields are read, any width
  else
    -- ARGV[6] numbers issued past acked, the skipped ranges stepped over (a loss skips
    -- a billion: counted as numbers, each call would end inside it).
    local pos, budget = acked, tonumber(ARGV[6])
    for _, gap in ipairs(gaps) do
      if gap[2] > pos then
        local avail = math.max(0, gap[1] - pos)
        if avail >= budget then break end
        budget = budget - avail
        pos = gap[2]
      end
    end
    top = math.min(top, pos + budget)
  end
end
local out, per, uncount = {acked, n, g}, {}, 0
if ARGV[6] then out[4] = math.max(top, acked) end
if top <= acked then return out end
if ARGV[4] == '1' then
  local want, s = {}, acked + 1
  while s <= top do
    for _, gap in ipairs(gaps) do
      if s > gap[1] and s <= gap[2] then s = gap[2] + 1 end
    end
    if s > top then break end
    want[#want + 1] = tostring(s)
    if #want > tonumber(ARGV[5]) then return {-3} end
    s = s + 1
  end
  if #want > 0 then
    local got = redis.call('HMGET', KEYS[2], unpack(want))
    for i = 1, #want do
      if not got[i] then return {-3} end
    end
  end
end
redis.call('HSET', KEYS[1], 'acked', top)
redis.call('SADD', KEYS[5], ARGV[3])
-- Takes these fields' items (those there) out of the hash and the index.
local function take(fields)
  local got = redis.call('HMGET', KEYS[2], unpack(fields))
  local gone = {}
  for i = 1, #fields do
    if got[i] then
      local counted = true
      -- A private room's copy earns no receipt: its seq alone (no JSON to copy back);
      -- one the room script stored was not counted (older ones were).
      if string.find(got[i], '"room":"', 1, true) then
        out[#out + 1] = tonumber(fields[i])
        counted = not string.find(got[i], '"uncounted":true', 1, true)
      else
        out[#out + 1] = got[i]
      end
      gone[#gone + 1] = fields[i]
      if counted then
        uncount = uncount + 1
        local kind = field(got[i], '"kind":"')
        if (kind or 'message') == 'message' then
          local from = field(got[i], '"from":"')
          if from then per[from] = (per[from] or 0) + 1 end
        end
      end
    end
  end
  if #gone > 0 then
    redis.call('HDEL', KEYS[2], unpack(gone))
    local members = {}
    for i = 1, #gone do members[i] = ARGV[3] .. '|' .. gone[i] end
    redis.call('ZREM', KEYS[4], unpack(members))
  end
end
if few then
  local want = {}
  for _, f in ipairs(redis.call('HKEYS', KEYS[2])) do
    local k = tonumber(f)
    if k and k > acked and k <= top then want[#want + 1] = {k, f} end
  end
  table.sort(want, function(a, b) return a[1] < b[1] end)
  for i = 1, #want, 500 do
    local fields = {}
    for j = i, math.min(i + 499, #want) do fields[#fields + 1] = want[j][2] end
    take(fields)
  end
else
  local s = acked + 1
  while s <= top do
    for _, gap in ipairs(gaps) do
      if s > gap[1] and s <= gap[2] then s = gap[2] + 1 end
    end
    if s > top then break end
    local stop = math.min(top, s + 499)
    for _, gap in ipairs(gaps) do
      if gap[1] >= s and gap[1] < stop then stop = gap[1] break end
    end
    local fields = {}
    for k = s, stop do fields[#fields + 1] = tostring(k) end
    take(fields)
    s = stop + 1
  end
end
if uncount > 0 then
  per['*'] = uncount
  for field, count in pairs(per) do
    if redis.call('HINCRBY', KEYS[3], field, -count) <= 0 then
      redis.call('HDEL', KEYS[3], field)
    end
  end
end
return out
"""
