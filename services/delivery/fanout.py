"""A private room's copies stored, and pushed, by one Redis script per record.

A :class:`~parley_contract.envelopes.RoomCopies` record holds one room message
for up to ``ROOM_COPIES_MAX`` member device inboxes. Through the path every
other item takes (:meth:`DeliveryStore.store_and_route`), each of those
inboxes cost Python a dict, a JSON item, a dedup key, a frame and half a dozen
Redis commands to pack: that per-member work was most of delivery's time in a
room's fan-out (docs/BENCHMARKS.md, "Room fan-out"). Here Python sends the
message's common part once and four short strings per inbox (the inbox, its
user, its device and the copy's reporting tag, the one thing that must be
computed per copy), and one script (:data:`_ROOM_PUT`) does, per inbox, what the
general path does, with the same keys and values but for the dedup records
(services/delivery/hot.py, services/delivery/counters.py):

- a copy already recorded for (inbox, sender, client id) (in the message's
  dedup hash, :func:`room_dedup_key`: one key per message) is a repeat: it is
  pushed again while it is still hot (not yet acknowledged nor persisted), and
  otherwise left alone;
- otherwise the copy takes the inbox's next number (``HINCRBY``, then the next
  again while a number holds another item: a counter seeded again after Redis
  lost its data), is written with its dedup record and its persister index
  entry, and its counter joins the next checkpoint. It is not counted in the
  inbox's waiting counts (the 1:1 caps': a room's copies do not fill a
  member's inbox for direct messages) and says so (``"uncounted": true``), so
  that whatever takes it out (an ack, a removal, expiry) does not lower them;
- an inbox whose counter is not in Redis is returned: it is seeded from its
  MongoDB checkpoint (:class:`~services.delivery.counters.InboxCounters`) and
  the script runs again for those inboxes alone;
- a message removed already (its ``gone`` mark) stores nothing, and so does a
  record whose writer's mark is not what it expects (Redis lost its data:
  :data:`~services.delivery.hot.GUARD`).

Then the same script returns one :class:`parley_contract.envelopes.RoomPush`
for the record: the ``message`` frame once, cut where the copies differ, and
each copy's user, device, seq and tag. It reads no presence: every gateway pod
gets the push (on the room channel they all subscribe to) and splices the
frames of the members it holds a socket of, a dictionary look-up per copy;
reading each member's presence hash in the script was a fifth of its time,
spent in the one Redis every pod shares (docs/BENCHMARKS.md, "Room
fan-out"), where the pods' look-ups scale out with them. The worker
publishes the pushes of all the records of a batch together, one message
(:meth:`RoomFanout.publish`), so that a member's copies of several messages
reach its socket in one write (one publish per record made one write per
member per message: HAProxy and the gateways paid for each). A record costs
one round trip.
The script is atomic: a worker that dies mid fan-out leaves each record stored
for all its inboxes or for none, and the record, uncommitted, comes again.

The script builds names from the prefix and writes keys it was not passed:
one Redis, not a Cluster, as docs/deployment.md says the services need.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from parley_contract import envelopes as e
from parley_contract import frames as f

from services.common import scripts
from services.common.routing import room_channel
from services.delivery.hot import GUARD_LUA, guard_args, refused
from services.delivery.moderation_keys import ModerationKeys, TaggedFields
from services.delivery.store import DeliveryStore

# ARGV: 1 prefix, 2 now (the index's score), 3 dedup TTL, 4 the message's dedup hash
# (inbox -> "<seq>|<server id>"), 5 server id, 6 the item's common fields (JSON from
# its first comma), 7 what the room push starts with (up to its list of copies), 8 and
# 9 the writer's mark and the value it expects (hot.GUARD), then per inbox: inbox,
# user, device, reporting tag ('' for none).
# Returns {-2, the guard's answer} when the mark refused the write, {-1} when the
# message was removed (nothing written in both cases), else {stored, repeats, copies
# to push, the number of inboxes whose counter is missing, those inboxes..., then the
# room push (JSON) when there are copies to push}.
_ROOM_PUT = scripts.define(
    GUARD_LUA
    + """
local refused = guard(ARGV[8], ARGV[9])
if refused ~= 0 then return {-2, refused} end
local p, now, dedup_s = ARGV[1], ARGV[2], ARGV[3]
local dups, server_id, common, push = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
if redis.call('EXISTS', p .. ':gone:{' .. server_id .. '}') == 1 then return {-1} end
local index, dirty = p .. ':hotidx', p .. ':ctrdirty'
local stored, repeats, missing, entries, changed, claims = 0, 0, {}, {}, {}, {}
local inboxes = {}
for a = 10, #ARGV, 4 do inboxes[#inboxes + 1] = ARGV[a] end
local helds = redis.call('HMGET', dups, unpack(inboxes))
local copies = {}
for a = 10, #ARGV, 4 do
  local inbox, user, device, tag = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local hot = p .. ':hot:{' .. inbox .. '}'
  local seq = nil
  local held = helds[(a - 6) / 4]
  if held then
    repeats = repeats + 1
    local s, sid = string.match(held, '^(%d+)|(.*)$')
    if s then
      local raw = redis.call('HGET', hot, s)
      if raw and string.find(raw, '"server_id":"' .. sid .. '"', 1, true) then seq = s end
    end
  else
    local ctr = p .. ':ctr:{' .. inbox .. '}'
    local n = redis.call('HINCRBY', ctr, 'n', 1)
    -- A counter is never without 'acked' (seeded with it): 1 and none is a counter
    -- that was missing, which this call just made: undone, to be seeded.
    if n == 1 and redis.call('HEXISTS', ctr, 'acked') == 0 then
      redis.call('DEL', ctr)
      missing[#missing + 1] = inbox
    else
      local tagged = tag == '' and '' or (',"franking_tag":"' .. tag .. '"')
      local head = '{"inbox":"' .. inbox .. '","user":"' .. user .. '","device":' .. device
      while redis.call('HSETNX', hot, n, head .. ',"seq":' .. n .. ',"_id":"' .. inbox
          .. '|' .. string.format('%016d', n) .. '"' .. tagged .. common) == 0 do
        n = redis.call('HINCRBY', ctr, 'n', 1)
      end
      claims[#claims + 1] = inbox
      claims[#claims + 1] = n .. '|' .. server_id
      entries[#entries + 1] = now
      entries[#entries + 1] = inbox .. '|' .. n
      changed[#changed + 1] = inbox
      stored = stored + 1
      seq = n
    end
  end
  if seq then
    copies[#copies + 1] = '["' .. user .. '",' .. device .. ',' .. seq .. ',"' .. tag .. '"]'
  end
end
if #changed > 0 then
  redis.call('HSET', dups, unpack(claims))
  redis.call('EXPIRE', dups, dedup_s)
  redis.call('ZADD', index, unpack(entries))
  redis.call('SADD', dirty, unpack(changed))
end
local out = {stored, repeats, #copies, #missing}
for i = 1, #missing do out[#out + 1] = missing[i] end
if #copies > 0 then out[#out + 1] = push .. table.concat(copies, ',') .. ']}' end
return out
"""
)


def room_dedup_key(prefix: str, sender: str, client_id: str) -> str:
    """A room message's dedup records: hash, member device inbox -> ``<seq>|<server id>``
    of its copy there (one key per message, not one per copy)."""
    return f"{prefix}:roomdup:{{{sender}|{client_id}}}"


_INBOX = re.compile(r"([A-Za-z0-9_-]{1,64})\.([1-9][0-9]{0,9})")
"""A device inbox id whose parts need no escaping in JSON nor in a Redis key."""
_SEQ, _TAG = -7_777_777_772, "@@t@@"


@dataclass(frozen=True, slots=True)
class RoomStored:
    """What one record's fan-out did."""

    stored: int = 0
    repeats: int = 0
    pushed: int = 0
    """Copies in its push (stored now, or repeats still hot), whether or not a pod
    holds a socket of their member."""
    removed: bool = False
    """The message was removed already: nothing stored."""
    pushes: tuple[bytes, ...] = ()
    """RoomPushes to publish (:meth:`RoomFanout.publish`)."""
    odd: tuple[str, ...] = ()
    """Inbox ids the script does not take as they are (characters JSON or a key name
    would need escaped, or no device): not stored here (the caller stores them)."""


class RoomFanout:
    def __init__(self, store: DeliveryStore, keys: ModerationKeys) -> None:
        self.store = store
        self.keys = keys

    async def put(self, env: e.RoomCopies, now: float) -> RoomStored:
        """Store and push ``env``'s copies (at most three round trips when counters
        have to be seeded, one otherwise)."""
        tag = self._tagger(env)
        members: list[tuple[str, str, str, str]] = []
        odd: list[str] = []
        for inbox in env.inboxes:
            m = _INBOX.fullmatch(inbox)
            if m is None:
                odd.append(inbox)
            else:
                user = m.group(1)
                members.append((inbox, user, m.group(2), tag(user) if tag else ""))
        total = RoomStored(odd=tuple(odd))
        if not members:
            return total
        head = self._head(env, now, tag is not None)
        for _ in range(3):
            args: list[Any] = [*head]
            for member in members:
                args += member
            out = await scripts.call(self.store.redis, _ROOM_PUT, [], args)
            if int(out[0]) == -2:
                refused(out[1])
            if int(out[0]) == -1:
                return RoomStored(removed=True, odd=tuple(odd))
            n = int(out[3])
            missing = {scripts.text(m) for m in out[4 : 4 + n]}
            pushes = tuple(bytes(body) for body in out[4 + n :])
            total = RoomStored(
                stored=total.stored + int(out[0]), repeats=total.repeats + int(out[1]),
                pushed=total.pushed + int(out[2]), odd=tuple(odd),
                pushes=total.pushes + pushes,
            )  # fmt: skip
            if not missing:
                return total
            await self.store.ctr.seed(sorted(missing))
            members = [m for m in members if m[0] in missing]
        raise RuntimeError(f"inbox counters could not be seeded: {sorted(missing)[:3]}")

    async def publish(self, pushes: Sequence[bytes]) -> None:
        """One ``PUBLISH`` of every push (a JSON list of RoomPush) to every gateway pod:
        the copies of several room messages for one member reach its socket in one
        write."""
        if pushes:
            channel = room_channel(self.store.settings.redis_prefix)
            await self.store.redis.publish(channel, b"[" + b",".join(pushes) + b"]")

    def _head(self, env: e.RoomCopies, now: float, tagged: bool) -> list[Any]:
        """The script's arguments before the inboxes."""
        common = {
            "server_id": env.server_id, "from": env.from_, "client_id": env.client_id,
            "conversation": env.conversation, "sent_at": env.sent_at, "stored_at": now,
            "kind": "message", "from_device": env.from_device, "body": env.body,
            "commitment": env.commitment, "room": env.room, "mentions": list(env.mentions),
            "acked": False, "uncounted": True,
        }  # fmt: skip
        frame = f.Message(
            seq=_SEQ, server_id=env.server_id, from_=env.from_, from_device=env.from_device,
            body=env.body, conversation=env.conversation, commitment=env.commitment,
            sent_at=env.sent_at, room=env.room, mentions=list(env.mentions) or None,
            franking_tag=_TAG if tagged else None,
        )  # fmt: skip
        encoded = e.encode(frame).decode()
        head, _, rest = encoded.partition(str(_SEQ))
        mid, _, tail = rest.partition(_TAG) if tagged else (rest, "", "")
        assert _TAG not in tail and str(_SEQ) not in tail, encoded
        push = b'{"frame":' + orjson.dumps((head, mid, tail)) + b',"to":['
        settings = self.store.settings
        return [
            settings.redis_prefix,
            now,
            settings.hot_dedup_s,
            room_dedup_key(settings.redis_prefix, env.from_, env.client_id),
            env.server_id,
            "," + orjson.dumps(common).decode()[1:],
            push,
            *guard_args(),
        ]

    def _tagger(self, env: e.RoomCopies) -> Callable[[str], str] | None:
        """Each member's reporting tag (as the general path tags a copy), or None when
        the message carries no commitment."""
        if env.commitment is None or env.sent_at is None:
            return None
        return self.keys.tagger(TaggedFields(
            commitment=env.commitment, server_id=env.server_id, sender=env.from_,
            sender_device=int(env.from_device or 1), recipient="", sent_at=int(env.sent_at),
            conversation=env.conversation,
        ))  # fmt: skip


__all__ = ["RoomFanout", "RoomStored"]
