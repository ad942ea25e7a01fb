"""A private room's messages in one log per room (docs/rooms.md, "The room log").

A private room's message is one sender-key ciphertext, the same for every
member device. It is stored once, in the room's log (MongoDB collection
``room_log``), numbered in the room (``seq`` 1, 2, 3, ... with no gaps), and
pushed once to every pod on the room channel with the member list
(:func:`~services.common.routing.multicast`): each pod writes the frame to the
members' sockets it holds. Nothing is written per member device: a device
keeps its own place in each room's log (the last ``seq`` it has) and reads
what it missed with :meth:`RoomLog.page` (``GET /delivery/v1/rooms/{room}/log``).
Before this log every member device's copy was an inbox item, numbered,
indexed, acknowledged and deleted one by one: 35 to 62 µs of server CPU per
member-message (docs/BENCHMARKS.md, "Overlapping sends").

Every read is by primary key (the embedded MongoDB server scans the table for
ranges and for secondary indexes, docs/embedded.md): an entry's ``_id`` is
``"<room>|<seq, 16 digits>"``, and since numbers have no gaps a page is the
ids after the reader's number, read with ``$in``.

Order and visibility. A message's number is the room's last number plus one,
and the insert of that ``_id`` is what claims it: two writers that found the
same last number cannot both insert it (the loser looks again). The last
number is the one this process last wrote (or, for a room it has not written
to, ``room_heads.n``, saved every ``_PROBE`` numbers) plus the ids after it
that exist, looked at ``_PROBE`` at a time. So a number is written only after
the one before it exists, and becomes visible only after it: a device that
read up to ``seq`` n and goes on from n misses nothing, whatever writer was
slow.

Once per message, in three round trips. ``room_log_ids`` (``_id`` the
message's ``server_id``, a hash of the room, the sender and the client id) is
inserted first, naming the number the writer plans; then the entries, in
order. A record consumed again (a worker killed before its commit) or a resend
finds its id record taken and its entry where the record says: it takes no
second number and is pushed again (a push may have been lost with the worker;
a device that gets a frame twice keeps it once). A record whose entry is not
there (the worker died between the two writes) is written now, and its record
made to say where. Only two writers handling the same record at the same
moment (a consumer that lost its partition mid-batch, and the one that took
it) can both store it: the same ``server_id`` under two numbers, which clients
drop as they drop any ``server_id`` they have (docs/protocol.md).

Removal. A removed message (``<p>:gone:{<server id>}``, set before its
tombstones are sent, services/delivery/moderation.py) keeps its number with
no body (``gone``): the writer checks the mark after its insert, and the
removal blanks the entry after setting the mark, so whichever comes second
blanks it. Pages leave blanked entries out.

Who reads what. The log route asks the rooms service, with the caller's
token, whether the caller is a member of the room (a private room they are not
in is ``room_not_found``, as everywhere) and since when: a page holds only
messages stored since the member joined (``joined_at``), and since the
``since`` the device gives (a device linked later asks from its link); the
first number stored since then is found by bisection over the ids.
Entries older than ``inbox_expiry_s`` are deleted by the expiry job, as
unacknowledged inbox items are, from each room's oldest (``low``) up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from parley_contract import envelopes as e
from parley_contract import frames as f
from pymongo import UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError

from services.delivery.moderation_keys import ModerationKeys, TaggedFields
from services.delivery.store import DeliveryStore, fit

log = logging.getLogger(__name__)

Doc = dict[str, Any]

# Ids looked at per read when the last number is looked for, and per expiry step.
_PROBE = 32
_PURGE = 500
# Rooms with news a batched read (``pages``) pages at once.
_PAGES_AT_ONCE = 8
ROOMS_AT_ONCE = 16  # rooms of one batch appended at once
_HEADS_KEPT = 100_000
# Entry ids per read when looking for messages another writer stored (``_stored_in``).
_READ_CHUNK = 1000


def entry_id(room: str, seq: int) -> str:
    return f"{room}|{seq:016d}"


@dataclass(slots=True)
class Appended:
    """What one batch of room records did."""

    stored: int = 0
    repeats: int = 0
    removed: int = 0
    pushes: list[tuple[list[str], f.RoomMessage]] = field(default_factory=list)
    """(member users, frame) to push: the new messages and the repeats still there."""


class RoomLog:
    def __init__(self, store: DeliveryStore, keys: ModerationKeys) -> None:
        self.store = store
        self.keys = keys
        self.log: AsyncCollection[Doc] = store.db["room_log"]
        self.ids: AsyncCollection[Doc] = store.db["room_log_ids"]
        self.heads: AsyncCollection[Doc] = store.db["room_heads"]
        # The last number this process knows of each room it wrote to, and the last one
        # it saved in ``room_heads`` (insertion order: the oldest rooms are dropped).
        self._heads: dict[str, int] = {}
        self._saved: dict[str, int] = {}

    # Writing ----------------------------------------------------------------
    async def append(self, envs: Sequence[e.RoomEnvelope], now: float) -> Appended:
        """Store ``envs`` (in order: a room's records come from one partition) in their
        rooms' logs; what to push for them."""
        out = Appended()
        if not envs:
            return out
        by_room: dict[str, dict[str, e.RoomEnvelope]] = {}
        for env in envs:
            by_room.setdefault(env.room, {}).setdefault(env.server_id, env)  # once a batch
        docs: dict[str, Doc] = {}
        # Rooms side by side (a few at a time): each is three or four round trips, and a
        # batch across 500 rooms one after another held its partition for seconds.
        gate = asyncio.Semaphore(ROOMS_AT_ONCE)

        async def one(room: str, todo: dict[str, e.RoomEnvelope]) -> tuple[list[Doc], list[Doc]]:
            async with gate:
                return await self._append_room(room, list(todo.values()), now)

        # A task group: when one room fails, the others are cancelled and awaited before
        # the error goes up (the batch is retried whole: a writer of the try before
        # still at work on a room would race the retry's, and could store a message
        # twice).
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(one(room, todo)) for room, todo in by_room.items()]
        except BaseExceptionGroup as failed:
            # (A shutdown's cancel that comes meanwhile is then retried once and cancelled
            # again; Python 3.11's task group leaves cancelling() raised here, so it cannot
            # be told apart.)
            raise failed.exceptions[0] from None
        for stored, repeats in (t.result() for t in tasks):
            out.stored += len(stored)
            out.repeats += len(repeats)
            docs.update((d["server_id"], d) for d in (*stored, *repeats))
        _, gone = await self.store.hot.claims_and_gone([], list(docs))
        if gone:
            await self.blank(sorted(gone))
            out.removed = len(gone)
        for todo in by_room.values():
            for sid, env in todo.items():
                entry = docs.get(sid)
                if entry is None or sid in gone or entry.get("gone"):
                    continue
                out.pushes.append((_members(env), frame_of(entry)))
        return out

    async def _append_room(
        self, room: str, envs: list[e.RoomEnvelope], now: float
    ) -> tuple[list[Doc], list[Doc]]:
        """Number and store one room's messages; returns (the entries stored now, those
        of messages stored before). Three round trips when nothing is in the way: the
        ids after the last number this process knows (:meth:`_tail`), the id records
        with their planned numbers, the entries."""
        last = await self._tail(room)
        planned = {env.server_id: last + i + 1 for i, env in enumerate(envs)}
        taken = await self._claim(room, planned)
        repeats: list[Doc] = []
        todo = envs
        stale: set[str] = set()  # records that name no entry of theirs
        if taken:
            # Records there already (a record consumed again, a resend): stored when the
            # entry they name holds their message; otherwise its writer died in between.
            found = await self._entries_of(taken)
            repeats = list(found.values())
            todo = [env for env in envs if env.server_id not in found]
            stale = set(taken) - set(found)
        stored: list[Doc] = []
        while todo:
            batch = [self._doc(env, last + i + 1, now) for i, env in enumerate(todo)]
            first = len(batch)
            try:
                await self.log.insert_many(batch, ordered=True)
            except BulkWriteError as exc:
                errors = exc.details.get("writeErrors") or []
                if not errors or any(int(err.get("code", 0)) != 11000 for err in errors):
                    raise
                first = int(errors[0]["index"])  # the entries before it are in
            done, todo = batch[:first], todo[first:]
            stored += done
            moved = [
                UpdateOne({"_id": d["server_id"]}, {"$set": {"seq": d["seq"]}})
                for d in done
                if d["server_id"] in stale or planned.get(d["server_id"]) != d["seq"]
            ]
            if moved:  # not where their records said: say where they are
                await self.ids.bulk_write(moved, ordered=False)
            if done:
                self._advance(room, int(done[-1]["seq"]))
            if todo:
                # Another writer took the number: look for the last one again and go on.
                # Every lost number is one another writer stored, so the loop ends when
                # they stop; a last number that did not move past the one taken is not
                # a race but a log this process cannot read right.
                taken_at = last + first + 1
                self._heads.pop(room, None)
                last = await self._tail(room)
                if last < taken_at:
                    raise RuntimeError(f"room {room}: number {taken_at} taken, last {last}")
                # The other writer may have stored some of these very messages (two owners
                # of one record in a rebalance, each past the other's id record): those
                # are repeats. Stored again under a second number, a removal (which
                # blanks the entry the id record names) left the other copy's body.
                theirs = await self._stored_in(room, taken_at, last, todo)
                if theirs:
                    repeats += theirs
                    gone = {d["server_id"] for d in theirs}
                    todo = [env for env in todo if env.server_id not in gone]
        await self._save_head(room)
        return stored, repeats

    async def _claim(self, room: str, planned: dict[str, int]) -> list[str]:
        """Insert the id records (server id -> planned number); the server ids that had
        one already."""
        try:
            await self.ids.insert_many(
                [{"_id": sid, "room": room, "seq": seq} for sid, seq in planned.items()],
                ordered=False,
            )
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors") or []
            if any(int(err.get("code", 0)) != 11000 for err in errors):
                raise
            ids = list(planned)
            return [ids[int(err["index"])] for err in errors]
        return []

    async def _entries_of(self, server_ids: list[str]) -> dict[str, Doc]:
        """The entries the id records of ``server_ids`` name, when they hold them."""
        records = await self._records(server_ids)
        wanted = [entry_id(r["room"], int(r["seq"])) for r in records.values() if r.get("seq")]
        if not wanted:
            return {}
        found: dict[str, Doc] = {}
        async for doc in self.log.find({"_id": {"$in": wanted}}):
            record = records.get(doc["server_id"])
            if record is not None and int(record["seq"]) == int(doc["seq"]):
                found[doc["server_id"]] = doc
        return found

    async def _stored_in(
        self, room: str, first: int, last: int, envs: list[e.RoomEnvelope]
    ) -> list[Doc]:
        """The entries numbered ``first`` to ``last`` of ``room`` that hold one of
        ``envs``' messages (what another writer stored while this one lost numbers)."""
        ids = [env.server_id for env in envs]
        found: list[Doc] = []
        for low in range(first, last + 1, _READ_CHUNK):
            wanted = [entry_id(room, n) for n in range(low, min(last, low + _READ_CHUNK - 1) + 1)]
            found += [d async for d in self.log.find({"_id": {"$in": wanted},
                                                      "server_id": {"$in": ids}})]  # fmt: skip
        return found

    async def _records(self, server_ids: list[str]) -> dict[str, Doc]:
        return {r["_id"]: r async for r in self.ids.find({"_id": {"$in": server_ids}})}

    def _advance(self, room: str, n: int) -> None:
        if n > self._heads.get(room, 0):
            self._heads[room] = n
            if len(self._heads) > _HEADS_KEPT:
                self._heads.pop(next(iter(self._heads)))

    async def _save_head(self, room: str) -> None:
        """Raise the room's ``room_heads.n`` when this process's head is ``_PROBE`` or
        more past what it last saved (the head only spares a reader ids to look at)."""
        n = self._heads.get(room, 0)
        if room not in self._saved or n - self._saved[room] >= _PROBE:
            await self.heads.update_one({"_id": room}, {"$max": {"n": n}}, upsert=True)
            self._saved[room] = n
            if len(self._saved) > _HEADS_KEPT:
                self._saved.pop(next(iter(self._saved)))

    async def head(self, room: str) -> int:
        """The room's last number (0: an empty log)."""
        return await self._tail(room)

    async def _tail(self, room: str) -> int:
        """The room's last number: from the last one this process wrote (or the room's
        ``room_heads``), the ids after it that exist, ``_PROBE`` at a time.

        ``room_heads.n`` is saved every ``_PROBE`` numbers, and expiry deletes a quiet
        room's whole log: from ``n`` alone, the ids after it were all gone and new
        messages took numbers below ``low`` that readers never look at (and that
        members' cursors had passed): lost for every member. So the start is never
        below ``low - 1``, and a number this process remembers whose entry is gone
        (expired since) sends it back to ``room_heads`` (looked at in the same read)."""
        cached = self._heads.get(room)
        last = cached if cached is not None else await self._saved_tail(room)
        while True:
            ids = [entry_id(room, last + i) for i in range(1, _PROBE + 1)]
            mine = entry_id(room, last) if cached is not None and last > 0 else None
            wanted = [mine, *ids] if mine is not None else ids
            have = {d["_id"] async for d in self.log.find({"_id": {"$in": wanted}}, {"_id": 1})}
            if mine is not None and mine not in have and ids[0] not in have:
                cached = None  # expired since this process wrote it
                last = max(last, await self._saved_tail(room))
                continue
            cached = None
            k = 0
            while k < _PROBE and ids[k] in have:
                k += 1
            last += k
            if k < _PROBE:
                self._advance(room, last)
                return last

    async def _saved_tail(self, room: str) -> int:
        """Where the room's log goes on from, as ``room_heads`` says: its saved head,
        and never below the first number expiry left (``low``)."""
        doc = await self.heads.find_one({"_id": room})
        if not doc:
            return 0
        return max(int(doc.get("n", 0)), int(doc.get("low") or 1) - 1)

    def _doc(self, env: e.RoomEnvelope, seq: int, now: float) -> Doc:
        doc: Doc = {
            "_id": entry_id(env.room, seq), "room": env.room, "seq": seq,
            "server_id": env.server_id, "from": env.from_, "from_device": env.from_device,
            "body": env.body, "sent_at": env.sent_at, "stored_at": now,
            "mentions": list(env.mentions),
        }  # fmt: skip
        if env.commitment is not None:
            doc["commitment"] = env.commitment
            doc["franking_tag"] = self.keys.tag(room_tag_fields(
                commitment=env.commitment, server_id=env.server_id, sender=env.from_,
                sender_device=env.from_device, sent_at=env.sent_at, room=env.room,
            ))  # fmt: skip
        return doc

    async def blank(self, server_ids: Sequence[str]) -> int:
        """Take the bodies of removed messages out of their rooms' logs (their numbers
        stay); how many entries there were. Only an entry that holds the message: a
        record still names its planned number while its writer moves it (another
        writer took the number), and that number holds another message, which a
        removal used to blank (the writer blanks the moved entry itself once it sees
        the removal's mark: :meth:`append`)."""
        records = await self._records(list(server_ids))
        ids = [entry_id(r["room"], int(r["seq"])) for r in records.values() if r.get("seq")]
        if not ids:
            return 0
        res = await self.log.update_many(
            {"_id": {"$in": ids}, "server_id": {"$in": list(records)}},
            {"$set": {"gone": True, "body": "", "mentions": []},
             "$unset": {"commitment": "", "franking_tag": ""}},
        )  # fmt: skip
        return int(res.matched_count)

    async def holds(self, room: str, server_id: str) -> bool:
        """Whether ``server_id`` is a message of ``room``'s log (not expired): one read
        by ``_id``. A room made public keeps the log of its private days, and their
        senders may still remove them (services/delivery/moderation.py)."""
        doc = await self.ids.find_one({"_id": server_id}, {"room": 1})
        return doc is not None and doc.get("room") == room

    async def purge_expired(self, cutoff: float) -> int:
        """Delete the entries stored before ``cutoff`` (seconds), each room's oldest
        (``room_heads.low``) first, up to the first one that is not expired or not
        there (the end of the log: numbers have no gaps); how many.

        A chunk's deletion is announced in the room's head first: ``low`` moves past
        it (readers start there) with ``purging`` naming it, then its entries and id
        records go, then ``purging`` does. A run that fails or is killed in between
        leaves ``low`` right (it used to be written after the room's last chunk, so
        a run cut short left it on deleted entries: readers from the start of the
        log got nothing for good, and later runs stopped there) and the next run
        finishes the chunk ``purging`` names."""
        deleted = 0
        async for head in self.heads.find({}):
            room = head["_id"]
            if unfinished := head.get("purging"):
                deleted += await self._delete_range(room, int(unfinished[0]), int(unfinished[1]))
                await self.heads.update_one({"_id": room}, {"$unset": {"purging": ""}})
            start = int(head.get("low") or 1)
            while True:
                ids = [entry_id(room, s) for s in range(start, start + _PURGE)]
                docs = {d["_id"]: d async for d in self.log.find(
                    {"_id": {"$in": ids}}, {"stored_at": 1, "server_id": 1})}  # fmt: skip
                expired: list[Doc] = []
                for i in ids:
                    d = docs.get(i)
                    if d is None or float(d["stored_at"]) >= cutoff:
                        break
                    expired.append(d)
                if expired:
                    end = start + len(expired)
                    await self.heads.update_one(
                        {"_id": room},
                        {"$max": {"low": end, "n": end - 1}, "$set": {"purging": [start, end]}},
                    )
                    deleted += await self._delete(expired)
                    await self.heads.update_one({"_id": room}, {"$unset": {"purging": ""}})
                    start = end
                if len(expired) < len(ids):
                    break
        return deleted

    async def _delete_range(self, room: str, first: int, end: int) -> int:
        """Delete ``room``'s entries ``first`` .. ``end - 1`` and their id records (again,
        for a chunk a run did not finish: what is gone already is skipped)."""
        ids = [entry_id(room, s) for s in range(first, end)]
        return await self._delete(
            [d async for d in self.log.find({"_id": {"$in": ids}}, {"server_id": 1})]
        )

    async def _delete(self, docs: list[Doc]) -> int:
        """Delete these entries (read with their ``server_id``) and their id records."""
        if not docs:
            return 0
        # The id records first: they are found through the entries.
        await self.ids.delete_many({"_id": {"$in": [d["server_id"] for d in docs]}})
        await self.log.delete_many({"_id": {"$in": [d["_id"] for d in docs]}})
        return len(docs)

    # Reading ----------------------------------------------------------------
    async def page(
        self, room: str, after: int, since_ms: int, limit: int
    ) -> tuple[list[f.RoomMessage], int, bool]:
        """Up to ``limit`` messages of ``room`` after ``after``, stored at or after
        ``since_ms``, oldest first; returns them, the number to read after next (the
        last one this page looked at) and whether there may be more. The page stops
        at ``sync_page_bytes`` of bodies too (``fit``)."""
        return self._cut([await self._page(room, after, since_ms, limit)], [after])[0]

    async def _page(
        self, room: str, after: int, since_ms: int, limit: int
    ) -> tuple[list[f.RoomMessage], int, bool]:
        low = await self._low(room)
        start = max(after, low - 1)
        if since_ms > 0:
            start = await self._first_since(room, start, since_ms / 1000) - 1
        return await self._page_from(room, start, after, limit)

    async def _page_from(
        self, room: str, start: int, after: int, limit: int
    ) -> tuple[list[f.RoomMessage], int, bool]:
        """:meth:`page` once its first number (``start`` + 1) is known: one ``$in``."""
        ids = [entry_id(room, start + i) for i in range(1, limit + 2)]
        docs = {d["_id"]: d async for d in self.log.find({"_id": {"$in": ids}})}
        got: list[Doc] = []
        for i in ids[:limit]:
            d = docs.get(i)
            if d is None:
                break  # the end of the log (numbers have no gaps)
            got.append(d)
        more = len(got) == limit and ids[limit] in docs
        last = int(got[-1]["seq"]) if got else start
        return [frame_of(d) for d in got if not d.get("gone")], max(last, after), more

    async def pages(
        self, asks: list[tuple[str, int, int]], limit: int
    ) -> list[tuple[list[f.RoomMessage], int, bool]]:
        """:meth:`page` for many rooms at once (``(room, after, since_ms)`` each), in the
        order asked. A device that connects reads every private room it is in, and
        most have nothing new: one ``$in`` of each room's next id and one of their
        heads answer those; only the rooms with news are paged one by one
        (``_PAGES_AT_ONCE`` at a time)."""
        nexts = [entry_id(room, after + 1) for room, after, _ in asks]
        found = {
            d["_id"]: d
            async for d in self.log.find({"_id": {"$in": nexts}}, {"_id": 1, "stored_at": 1})
        }
        quiet = [i for i, next_id in enumerate(nexts) if next_id not in found]
        heads = {
            d["_id"]: d
            async for d in self.heads.find({"_id": {"$in": [asks[i][0] for i in quiet]}})
        } if quiet else {}  # fmt: skip
        out: list[tuple[list[f.RoomMessage], int, bool] | None] = [None] * len(asks)
        for i in quiet:
            room, after, _ = asks[i]
            # No entry after ``after``: the log ends there (numbers have no gaps), unless
            # it was expired (``low`` is past it): that room is paged as usual.
            if int(heads.get(room, {}).get("low") or 1) <= after + 1:
                out[i] = ([], after, False)
        gate = asyncio.Semaphore(_PAGES_AT_ONCE)
        budget, read = self.store.settings.sync_page_bytes, 0

        async def one(i: int) -> None:
            nonlocal read
            room, after, since_ms = asks[i]
            # The next entry exists and was stored since ``since``: the page starts
            # there (one read); else the page finds its start (expiry, bisection).
            first = found.get(nexts[i])
            async with gate:
                if read >= budget:
                    # The answer is full (``_cut``): not read at all, read on later.
                    out[i] = ([], after, True)
                    return
                if first is not None and float(first["stored_at"]) * 1000 >= since_ms:
                    page = await self._page_from(room, after, after, limit)
                else:
                    page = await self._page(room, after, since_ms, limit)
                out[i] = page
                _, read = fit((m.body for m in page[0]), 1 << 62, read)  # its bytes

        await asyncio.gather(*(one(i) for i, page in enumerate(out) if page is None))
        pages = [page for page in out if page is not None]
        assert len(pages) == len(asks)
        return self._cut(pages, [after for _, after, _ in asks])

    def _cut(
        self, pages: list[tuple[list[f.RoomMessage], int, bool]], afters: list[int]
    ) -> list[tuple[list[f.RoomMessage], int, bool]]:
        """Pages, in order, cut where their bodies together pass ``sync_page_bytes``
        (the first message always stays): a cut page says ``more`` and is read on
        after its last message (after ``after`` when none stayed)."""
        budget, used = self.store.settings.sync_page_bytes, 0
        out: list[tuple[list[f.RoomMessage], int, bool]] = []
        for (messages, last, more), after in zip(pages, afters, strict=True):
            n, used = fit((m.body for m in messages), budget, used)
            if n < len(messages):
                messages = messages[:n]
                last, more = (messages[-1].seq if messages else after), True
            out.append((messages, last, more))
        return out

    async def _low(self, room: str) -> int:
        doc = await self.heads.find_one({"_id": room})
        return int(doc.get("low") or 1) if doc else 1

    async def _first_since(self, room: str, after: int, since: float) -> int:
        """The first number after ``after`` stored at or after ``since`` (seconds), by
        bisection over the ids (a missing entry: expired, older; or past the end).

        ``after`` is never below the log's ``low - 1`` (:meth:`_page`): from a number
        that expired, the missing first entry was taken for the end of the log, and a
        member who joined after the log's first entries expired was served every
        message from ``low`` on, stored before they joined."""

        async def stored_at(seq: int) -> float | None:
            doc = await self.log.find_one({"_id": entry_id(room, seq)}, {"stored_at": 1})
            return None if doc is None else float(doc["stored_at"])

        first = await stored_at(after + 1)
        if first is None or first >= since:
            return after + 1
        lo, hi = after + 1, await self.head(room) + 1  # lo is before since; hi is not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            at = await stored_at(mid)
            if at is not None and at >= since:
                hi = mid
            else:
                lo = mid
        return hi


def room_tag_fields(
    *, commitment: str, server_id: str, sender: str, sender_device: int, sent_at: int, room: str
) -> TaggedFields:
    """What a private room message's reporting tag binds: the message as the server
    accepted it for the room (``recipient`` empty: one tag for every member,
    docs/crypto.md "Message franking")."""
    return TaggedFields(
        commitment=commitment, server_id=server_id, sender=sender,
        sender_device=int(sender_device), recipient="", sent_at=int(sent_at),
        conversation=e.room_conversation(room),
    )  # fmt: skip


def frame_of(doc: Doc) -> f.RoomMessage:
    return f.RoomMessage(
        room=doc["room"], seq=int(doc["seq"]), server_id=doc["server_id"], from_=doc["from"],
        from_device=int(doc["from_device"]), body=doc["body"], sent_at=int(doc["sent_at"]),
        commitment=doc.get("commitment"), mentions=list(doc.get("mentions") or []) or None,
        franking_tag=doc.get("franking_tag"),
    )  # fmt: skip


def _members(env: e.RoomEnvelope) -> list[str]:
    """The users a message is pushed to: the members whose devices it was sent to
    (the gateway's targets), and the sender (their other sockets)."""
    users = dict.fromkeys([env.from_])
    for inbox in e.room_targets(env):
        users[inbox.rpartition(".")[0]] = None
    return list(users)


__all__ = ["Appended", "RoomLog", "entry_id", "frame_of", "room_tag_fields"]
