"""All of the key directory's MongoDB, Redis and Kafka I/O.

Collections (database ``<db_prefix>keys``), see docs/keys.md "Storage":

``devices``           one document per (user_id, device_id): identity, signed
                      prekey, last-resort ML-KEM prekey and ``generation``
                      (bumped when the identity changes).
``one_time_prekeys``  one document per one-time X25519 prekey.
``kem_prekeys``       one document per one-time ML-KEM-768 prekey.
``outbox``            events not yet confirmed by Kafka.
``accounts``          one document per user: the account key and the current
                      signed device list (``generation`` moves on with every
                      write; ``removing`` lists dropped devices whose removal
                      is not finished yet).
``revocations``       removed devices, so that their Redis revocation keys can
                      be restored after a Redis restart.

Redis, besides the estimates below: links (``<prefix>:keys:link:...``, a hash
with a TTL), and the device revocation keys of services.common.auth, announced
on the revocation channel.

Correctness never rests on a multi-document transaction (the embedded server
has none that isolate): single-use claims take ids counted out in Redis, and hand
out only what their own mark (or ``find_one_and_delete``) took
(:meth:`KeyStore.claim_slots`);
writes that must match the identity they were checked against are
compare-and-set on ``generation``; prekeys carry the generation they were
signed under, and only the current generation is counted or claimed.
Keys are stored as base64url strings (the embedded server cannot match bytes)
and times as Unix seconds (it turns datetimes set by an update into strings).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Sequence
from enum import StrEnum
from typing import Any

import redis.asyncio as aioredis
from aiokafka.errors import KafkaError
from parley_contract import envelopes as e
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError

from services.common import scripts
from services.common.auth import MAX_USER_ID, device_revocation_key, revocation_channel
from services.common.clients import (
    DUPLICATE_KEY,
    KafkaProducerHandle,
    Topics,
    in_id_order,
    insert_new,
)
from services.common.config import Settings
from services.common.devices import ListCopies
from services.common.outbox import Outbox
from services.common.revocations import RevocationLog

log = logging.getLogger(__name__)

Doc = dict[str, Any]

# Prekey estimates of devices that see no claim nor upload for this long go.
LEFT_TTL_S = 30 * 86400

# Document ids. Devices and prekeys are found by ``_id`` alone: a string that
# sorts by (user, device, generation, prekey id), so that "a device's
# prekeys of one generation" is an ``_id`` range. The ``_id`` index is then
# the only one needed, uniqueness of prekey ids comes with it, and the
# embedded server, which uses no other index for equality (it also matches
# array members), answers from its index too. The user id is length-prefixed
# and the numbers are fixed-width decimals, so one user's range can never
# take in another's ids. Three digits of length hold any user id
# (services.common.auth.MAX_USER_ID).
assert MAX_USER_ID <= 999


_IDENTITY_KEYS_DONE = "recorded-2026-12-07"
# A record pass reads back this far before the last one began (clocks of replicas).
_RECORD_MARGIN_S = 600.0


def identity_key_ids(identity: Doc) -> tuple[str, str]:
    """The ``identity_keys`` ids of a device identity's two public keys."""
    return f"s:{identity['signing_key']}", f"d:{identity['dh_key']}"


def user_key(user_id: str) -> str:
    if not 0 < len(user_id) <= MAX_USER_ID:
        raise ValueError("user id length out of range")
    return f"{len(user_id):03d}{user_id}"


def device_key(user_id: str, device_id: int) -> str:
    return user_key(user_id) + _u(device_id)


def generation_key(user_id: str, device_id: int, generation: int) -> str:
    return device_key(user_id, device_id) + _u(generation)


def prekey_key(user_id: str, device_id: int, generation: int, prekey_id: int) -> str:
    return generation_key(user_id, device_id, generation) + _u(prekey_id)


def _u(n: int) -> str:
    """A u32 as 10 decimal digits (fixed width, so that order is numeric order)."""
    return f"{n:010d}"


def _prefixed(prefix: str) -> Doc:
    """Every ``_id`` that extends ``prefix`` with digits (':' sorts right after '9')."""
    return {"$gte": prefix, "$lt": prefix + ":"}


class Kind(StrEnum):
    """The two kinds of one-time prekey."""

    ONE_TIME = "one_time"
    KEM = "kem_one_time"


class DuplicatePrekeyIds(Exception):
    """A concurrent upload stored one of these ids first; this batch was removed."""


# A link: a hash {device_id, name, sid, signing_key, dh_key[, e_pub][, approval]} that
# expires: ``sid`` is the session that posted it, ``signing_key`` and ``dh_key`` the
# identity its device had then (the link's *pin*, services/keys/links.py), ``e_pub``
# the key the new device says its code carries (a typo check for the approver).
# Created only if absent; approved only while it exists, and only once (HSETNX).
_LINK_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'device_id', ARGV[1], 'name', ARGV[2], 'sid', ARGV[4],
           'signing_key', ARGV[5], 'dh_key', ARGV[6])
if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'e_pub', ARGV[7]) end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""
# The pin of a live, unapproved link moves to its device's new identity (the session
# that posted it replaced the identity): 1 if moved, 0 otherwise.
_LINK_REPIN = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HEXISTS', KEYS[1], 'approval') == 1 then return 0 end
redis.call('HSET', KEYS[1], 'signing_key', ARGV[1], 'dh_key', ARGV[2])
return 1
"""
_LINK_APPROVE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
return redis.call('HSETNX', KEYS[1], 'approval', ARGV[1])
"""

# The next prekey id a claim may take from a device (KEYS[1], the last one given; none
# yet: 1 comes first, as a client's ids start): raised first to ARGV[1] when it is
# lower (ids below it are gone), so that claims are not given the same id; with
# ARGV[3] = 1, set to ARGV[1] even when that is lower (a repair: nothing is stored
# above the count, prekeys are below it, see KeyStore._next_stored); kept ARGV[2]
# seconds after the last. An id given twice hands nothing out twice: a prekey is a
# claim's only once its mark took it (KeyStore._take).
_COUNT_OUT = """
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
local floor = tonumber(ARGV[1])
if n < floor or ARGV[3] == '1' then n = floor end
n = n + 1
redis.call('SET', KEYS[1], n, 'EX', ARGV[2])
return n
"""
# An upload's lowest id (ARGV[1]) at or below a device's count (KEYS[1]): the count goes
# back to just below it, its time to live kept. Claims that missed while the device had
# none left (each counted an id out) put the count past ids the device had not made yet;
# its next ids, numbered on from its own last, were then never handed out, and counted
# as stock they kept ``prekeys_low`` quiet for good. Lowering it is safe: a prekey is
# handed out only by the claim whose mark took it (KeyStore._take), whatever ids the
# count gives.
# Returns -1 when there is no count (seed_count's first case), else 1 when lowered.
_LOWER_COUNT = """
local n = redis.call('GET', KEYS[1])
if not n then return -1 end
if tonumber(n) >= tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], tonumber(ARGV[1]) - 1, 'KEEPTTL')
  return 1
end
return 0
"""
# How many times a claim tries a device whose id given was not stored (a gap, a
# counter behind) before it gives that device none.
CLAIM_TRIES = 4
# Ids looked at above one given that was not stored, before the range is read.
_PROBE = 16
# Up to this many prekeys a claim takes one ``find_one_and_delete`` each (one round trip
# where a mark, a read and a delete are three); more, in bulk.
_ONE_BY_ONE = 4
# The field a bulk claim marks the prekeys it takes with (its own random nonce), before
# it reads and deletes them: a prekey is taken by the one claim whose mark set it.
# Unmarked prekeys have no such field (a filter ``{CLAIM: None}`` matches them).
CLAIM = "claim"


def _end(device: tuple[str, int, int]) -> str:
    """Just past every prekey ``_id`` of a device's generation."""
    return generation_key(*device) + ":"


_LINK_CANCEL = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('HEXISTS', KEYS[1], 'approval') == 1 then return 0 end
return redis.call('DEL', KEYS[1])
"""


class KeyStore:
    def __init__(
        self,
        db: AsyncDatabase[Doc],
        redis: aioredis.Redis,
        kafka: KafkaProducerHandle,
        settings: Settings,
    ) -> None:
        self.db = db
        self.devices: AsyncCollection[Doc] = db["devices"]
        self.prekeys: dict[Kind, AsyncCollection[Doc]] = {
            Kind.ONE_TIME: db["one_time_prekeys"],
            Kind.KEM: db["kem_prekeys"],
        }
        self.outbox = Outbox(db["outbox"])
        self.accounts: AsyncCollection[Doc] = db["accounts"]
        # Which device holds each identity key (``_id``: "s:" + signing key, "d:" + DH
        # key): one device, of one account (:meth:`claim_identity`).
        self.identity_keys: AsyncCollection[Doc] = db["identity_keys"]
        self.revocations: AsyncCollection[Doc] = db["revocations"]
        self.redis = redis
        self.kafka = kafka
        self.topic = Topics(settings).events
        self.send_timeout_s = max(settings.dependency_timeout_ms, 5000) / 1000
        self.redis_prefix = settings.redis_prefix
        self.prefix = f"{settings.redis_prefix}:keys"
        # A removed device's tokens are refused for as long as a refresh token lives.
        self.revocation_ttl_s = settings.refresh_token_ttl_s
        self.revocation_log = RevocationLog(self.revocations, redis, self._restored_key())
        # The device lists' copies the gateways read while MongoDB is down.
        self.copies = ListCopies(redis, settings.redis_prefix)
        self._link_create = redis.register_script(_LINK_CREATE)
        self._link_approve = redis.register_script(_LINK_APPROVE)
        self._link_cancel = redis.register_script(_LINK_CANCEL)
        self._link_repin = redis.register_script(_LINK_REPIN)
        self._count_out = scripts.register(redis, _COUNT_OUT)
        self._lower_count = scripts.register(redis, _LOWER_COUNT)

    # Indexes.

    async def ensure_indexes(self) -> None:
        """Create the indexes (idempotent; every replica runs it at start-up).

        Devices and prekeys need none beyond ``_id``: see :func:`device_key`.
        """
        await self.outbox.ensure_indexes()
        await self.revocation_log.ensure_indexes()
        # The identity-key record pass reads the devices changed since its last one.
        await self.devices.create_index("updated_at")

    async def record_identity_keys(self) -> int:
        """Record the holder of the identity keys of every device registered or changed
        since the last pass began (all of them the first time: devices registered before
        2026-12-07 have none), in the background, at start-up and every
        ``identity_record_s`` (``keep_identity_keys``): so that devices an older replica
        registered during a rolling upgrade are recorded too. A key already held stays
        with its holder (the first registered, but for an upgrade's window); two live
        devices with one key are logged. Returns how many devices were read."""
        began = time.time()
        marker = await self.identity_keys.find_one({"_id": _IDENTITY_KEYS_DONE})
        query: Doc = {}
        if marker is not None and marker.get("through") is not None:
            query = {"updated_at": {"$gte": float(marker["through"]) - _RECORD_MARGIN_S}}
        fields = {"user_id": 1, "device_id": 1, "identity": 1}
        batch: list[Doc] = []
        read = 0
        async for device in self.devices.find(query, fields):
            read += 1
            owner = {"user_id": device["user_id"], "device_id": int(device["device_id"])}
            batch += [{"_id": key, **owner} for key in identity_key_ids(device["identity"])]
            if len(batch) >= 1000:
                await self._insert_new(batch)
                batch = []
        await self._insert_new(batch)
        await self.identity_keys.update_one(
            {"_id": _IDENTITY_KEYS_DONE}, {"$set": {"through": began}}, upsert=True
        )
        return read

    async def _insert_new(self, docs: list[Doc]) -> None:
        """Insert the records that are not there yet; one there already naming another
        device is left as it is, and logged if both devices hold the key."""
        refused = await insert_new(self.identity_keys, docs)
        if refused:
            wanted = {docs[i]["_id"]: docs[i] for i in refused}
            held = await self.identity_keys.find({"_id": {"$in": list(wanted)}}).to_list()
            for record in held:
                mine = wanted[record["_id"]]
                if (record["user_id"], record["device_id"]) == (mine["user_id"], mine["device_id"]):
                    continue
                holder = await self.get_device(str(record["user_id"]), int(record["device_id"]))
                if holder is not None and record["_id"] in identity_key_ids(holder["identity"]):
                    log.warning(
                        "two devices registered one identity key",
                        extra={"user_id": mine["user_id"], "device_id": mine["device_id"],
                               "holder": record["user_id"], "holder_device": record["device_id"]},
                    )  # fmt: skip

    async def claim_identity(self, user_id: str, device_id: int, identity: Doc) -> Doc | None:
        """Record this device as the holder of ``identity``'s keys; the holder (its
        ``user_id`` and ``device_id``) if another device, of this account or another,
        holds one of them (a device the directory has with those keys). A holder whose
        device went, or took other keys, is stale: this device takes its place.

        An account that lists another's device keys as its own would have messages for
        that device shown as its own (an unknown key-share, docs/crypto.md): refused."""
        mine = {"user_id": user_id, "device_id": device_id}
        for key in identity_key_ids(identity):
            for _ in range(4):
                try:
                    await self.identity_keys.insert_one({"_id": key, **mine})
                    break
                except DuplicateKeyError:
                    held = await self.identity_keys.find_one({"_id": key})
                if held is None:
                    continue  # let go meanwhile: insert again
                holder = {"user_id": held["user_id"], "device_id": int(held["device_id"])}
                if holder == mine:
                    break
                device = await self.get_device(holder["user_id"], holder["device_id"])
                if device is not None and key in identity_key_ids(device["identity"]):
                    return holder
                taken = await self.identity_keys.replace_one({"_id": key, **holder}, {**mine})
                if taken.matched_count:
                    break
            else:
                raise DuplicateKeyError("identity key claimed concurrently")
        return None

    async def release_identity(
        self, user_id: str, device_id: int, identity: Doc, kept: Doc | None = None
    ) -> None:
        """Delete the records naming this device as the holder of ``identity``'s keys
        (but those of ``kept``, the identity it holds now): it was deleted, or took other
        keys. Only records naming this device: one another device took (this one's were
        stale) is never touched. Such records were kept for good, two more with every
        reinstall of a pending device, and :meth:`claim_identity` took them for stale
        anyway.

        Read again after the delete: a key this device holds once more (the same identity
        registered again meanwhile, or its id registered anew with it) is recorded again.
        A registration of it that checked its record before this delete and installs it
        after that read leaves it unrecorded until the next record pass
        (:meth:`record_identity_keys` reads the devices changed since the last one)."""
        mine = {"user_id": user_id, "device_id": device_id}
        held = set(identity_key_ids(kept)) if kept is not None else set()
        gone = [key for key in identity_key_ids(identity) if key not in held]
        if not gone:
            return
        await self.identity_keys.delete_many({"_id": {"$in": gone}, **mine})
        device = await self.get_device(user_id, device_id)
        if device is not None:
            again = [key for key in gone if key in identity_key_ids(device["identity"])]
            if again:
                await self._insert_new([{"_id": key, **mine} for key in again])

    # Accounts: the account key and its signed device list.

    async def get_account(self, user_id: str) -> Doc | None:
        return await self.accounts.find_one({"_id": user_key(user_id)})

    async def get_accounts(self, user_ids: Sequence[str]) -> list[Doc]:
        """The accounts of these users that exist (one query), in no order."""
        return await self.accounts.find({"_id": {"$in": [user_key(u) for u in user_ids]}}).to_list()

    async def insert_account(self, user_id: str, fields: Doc) -> None:
        """The first account key and list; DuplicateKeyError if the user has one."""
        now = time.time()
        await self.accounts.insert_one(
            {
                "_id": user_key(user_id),
                "user_id": user_id,
                "generation": 1,
                **fields,
                "created_at": now,
                "updated_at": now,
            }
        )

    async def replace_account(self, user_id: str, generation: int, fields: Doc) -> bool:
        """Write a new list (and key) if nobody wrote since ``generation`` was read."""
        result = await self.accounts.update_one(
            {"_id": user_key(user_id), "generation": generation},
            {"$set": {**fields, "updated_at": time.time()}, "$inc": {"generation": 1}},
        )
        return result.matched_count == 1

    async def removals_done(self, user_id: str, generation: int) -> bool:
        """Clear ``removing`` (and ``dropped``) unless someone wrote since (they carried
        it on)."""
        result = await self.accounts.update_one(
            {"_id": user_key(user_id), "generation": generation},
            {"$set": {"removing": [], "dropped": {}}},
        )
        return result.matched_count == 1

    # Devices.

    async def get_device(self, user_id: str, device_id: int) -> Doc | None:
        return await self.devices.find_one({"_id": device_key(user_id, device_id)})

    async def list_devices(self, user_id: str) -> list[Doc]:
        query = {"_id": _prefixed(user_key(user_id))}
        return await in_id_order(self.devices, query, None)

    async def get_devices(self, user_id: str, device_ids: Sequence[int]) -> list[Doc]:
        """These devices of the user (those that exist), in ascending id order."""
        if not device_ids:
            return []
        keys = [device_key(user_id, d) for d in device_ids]
        docs = await self.devices.find({"_id": {"$in": keys}}).to_list()
        return sorted(docs, key=lambda d: int(d["device_id"]))

    async def get_devices_of(self, wanted: Sequence[tuple[str, int]]) -> list[Doc]:
        """These (user, device) pairs' devices that exist (one query), in no order."""
        if not wanted:
            return []
        keys = [device_key(u, d) for u, d in wanted]
        return await self.devices.find({"_id": {"$in": keys}}).to_list()

    async def count_devices(self, user_id: str) -> int:
        return await self._count(self.devices, {"_id": _prefixed(user_key(user_id))})

    async def insert_device(self, user_id: str, device_id: int, identity: Doc) -> None:
        """Raises DuplicateKeyError if the device exists (a concurrent registration)."""
        now = time.time()
        await self.devices.insert_one(
            {
                "_id": device_key(user_id, device_id),
                "user_id": user_id,
                "device_id": device_id,
                "generation": 1,
                "identity": identity,
                "created_at": now,
                "updated_at": now,
            }
        )

    async def replace_identity(
        self, user_id: str, device_id: int, generation: int, identity: Doc
    ) -> bool:
        """Install a new identity if the device is still at ``generation``.

        The signed and last-resort prekeys were signed by the old identity, so
        they go too; the generation moves on so that old one-time prekeys are
        never counted or claimed again.
        """
        result = await self.devices.update_one(
            {"_id": device_key(user_id, device_id), "generation": generation},
            {
                "$set": {"identity": identity, "updated_at": time.time()},
                "$inc": {"generation": 1},
                "$unset": {"signed_prekey": "", "last_resort": ""},
            },
        )
        return result.matched_count == 1

    async def set_device_key(
        self, user_id: str, device_id: int, generation: int, field: str, value: Doc
    ) -> bool:
        """Set ``signed_prekey`` or ``last_resort`` if the identity is still the one checked."""
        result = await self.devices.update_one(
            {"_id": device_key(user_id, device_id), "generation": generation},
            {"$set": {field: value, "updated_at": time.time()}},
        )
        return result.matched_count == 1

    async def delete_device(self, user_id: str, device_id: int) -> bool:
        """Delete a device with its prekeys, its records as the holder of its identity
        keys and its claim counters; False if there was none."""
        device = await self.devices.find_one_and_delete({"_id": device_key(user_id, device_id)})
        await self.delete_prekeys(user_id, device_id)
        if device is None:
            return False
        await self.release_identity(user_id, device_id, device["identity"])
        await self.forget_counts(user_id, device_id, int(device["generation"]))
        return True

    # Prekeys.

    async def delete_prekeys(
        self, user_id: str, device_id: int, below_generation: int | None = None
    ) -> None:
        """All of a device's prekeys, or those of generations before ``below_generation``."""
        device = device_key(user_id, device_id)
        if below_generation is None:
            query = {"_id": _prefixed(device)}
        else:
            query = {"_id": {"$gte": device, "$lt": device + _u(below_generation)}}
        for coll in self.prekeys.values():
            await coll.delete_many(query)

    async def existing_prekeys(
        self, kind: Kind, user_id: str, device_id: int, generation: int, ids: Sequence[int]
    ) -> list[Doc]:
        """The stored prekeys of these ids (``id``, ``key``, ``sig``), in id order."""
        keys = [prekey_key(user_id, device_id, generation, i) for i in ids]
        fields = {"id": 1, "key": 1, "sig": 1, "_id": 0}
        docs = await self.prekeys[kind].find({"_id": {"$in": keys}}, fields).to_list()
        return sorted(docs, key=lambda doc: int(doc["id"]))

    async def count_prekeys(self, kind: Kind, user_id: str, device_id: int, generation: int) -> int:
        query = {"_id": _prefixed(generation_key(user_id, device_id, generation))}
        return await self._count(self.prekeys[kind], query)

    async def count_prekeys_upto(
        self, kind: Kind, user_id: str, device_id: int, generation: int, limit: int
    ) -> int:
        """min(count, limit) (for the low-prekeys check).

        The ``count`` command without a limit: a ``find`` of an ``_id`` range, or a
        ``count`` with a limit, makes the embedded server read every document of the
        collection (every device's prekeys); the plain count of a range uses its index.
        """
        return min(limit, await self.count_prekeys(kind, user_id, device_id, generation))

    async def insert_prekeys(
        self,
        kind: Kind,
        user_id: str,
        device_id: int,
        generation: int,
        prekeys: Sequence[Doc],
        batch: str,
    ) -> list[str]:
        """Insert a batch tagged ``batch``; all or (after a clash with a concurrent upload) none.

        A concurrent upload of the same id is the only way to clash (the
        caller checked the stored ids first); the part of the batch that got
        in is removed again and DuplicatePrekeyIds raised. Returns the ``_id``s.
        """
        docs = [
            {
                "_id": prekey_key(user_id, device_id, generation, p["id"]),
                **p,
                "user_id": user_id,
                "device_id": device_id,
                "generation": generation,
                "batch": batch,
            }
            for p in prekeys
        ]
        keys = [d["_id"] for d in docs]
        try:
            await self.prekeys[kind].insert_many(docs, ordered=True)
        except BulkWriteError as exc:
            await self.delete_batch(kind, keys, batch)
            errors = exc.details.get("writeErrors", [])
            if errors and all(e.get("code") == DUPLICATE_KEY for e in errors):
                raise DuplicatePrekeyIds from None
            raise
        return keys

    async def delete_batch(self, kind: Kind, keys: Sequence[str], batch: str) -> None:
        """Remove what this batch inserted (and not a clashing batch's prekey of the same id)."""
        await self.prekeys[kind].delete_many({"_id": {"$in": list(keys)}, "batch": batch})

    async def claim_slots(self, slots: Sequence[tuple[Kind, str, int, int]]) -> list[Doc | None]:
        """One prekey from each slot ((kind, user, device, generation), each once; None
        for a slot with none to give), each handed out at most once, in a few round
        trips for any number of slots (docs/keys.md, "Claims: ids counted out"): one
        Redis pipeline for all, then per kind one ``update_many`` (the mark), one
        ``find`` and one ``delete_many``.

        Each device's prekey ids are counted out in Redis (:data:`_COUNT_OUT`: a counter
        that goes up, so that claims are given different ids), and the prekeys of the
        ids given taken by :meth:`_take`: marked with this claim's nonce where no claim
        marked them yet, read by that mark, deleted by it. What a claim hands out is what
        its own mark took, so an id given twice (a counter lost with Redis, or put back
        by a repair) hands nothing out twice, and a prekey deleted or uploaded again
        meanwhile costs no other prekey of the claim.

        An id given that is not stored (a gap in the device's ids, a counter behind:
        new, or lost with Redis, or one run past ids uploaded later) is followed by a
        look for the device's next stored id (:meth:`_next_stored`); the counter is
        raised to just below that one, or put back below the lowest one when nothing is
        stored above it, and the device tries again. Nothing left: none to give. A
        claim that died between its mark and its delete leaves the prekeys it marked
        stored and never handed out: at most one a device and kind, counted until the
        device's prekeys of that generation go (the count still falls to the low mark
        and asks the device for more).
        """
        got: list[Doc | None] = [None] * len(slots)
        devices = [(user, device, gen) for _, user, device, gen in slots]
        # Each slot's floor for its counter, and whether to set it there even if lower.
        floors: dict[int, tuple[int, bool]] = dict.fromkeys(range(len(slots)), (-1, False))
        for _ in range(CLAIM_TRIES):
            if not floors:
                break
            trying = list(floors)
            async with self.redis.pipeline(transaction=False) as pipe:
                for i in trying:
                    key = self._next_key(*slots[i])
                    floor, reset = floors[i]
                    args = [floor, LEFT_TTL_S, int(reset)]
                    await scripts.queue(pipe, self._count_out, [key], args)
                counted = dict(zip(trying, map(int, await pipe.execute()), strict=True))
            kinds = sorted({slots[i][0] for i in trying})
            given = {i: prekey_key(*devices[i], n) for i, n in counted.items()}
            taken = await asyncio.gather(
                *(
                    self._take(self.prekeys[k], [given[i] for i in trying if slots[i][0] is k])
                    for k in kinds
                )
            )
            # By kind: an X25519 and an ML-KEM prekey of one device can share an id (so
            # an ``_id``), and each slot takes its own kind's (one dict let a one-time
            # X25519 prekey fill the ML-KEM slot: a claim that failed validation after
            # deleting, and every later one with it, the counters then in step).
            mine = dict(zip(kinds, taken, strict=True))
            for i, key in given.items():
                got[i] = mine[slots[i][0]].get(key)
            floors = {}
            for k in kinds:
                missed = {i: n for i, n in counted.items() if slots[i][0] is k and not got[i]}
                stored = await self._next_stored(k, devices, missed) if missed else {}
                # Above the id given: raise the counter to it. At or below (nothing above,
                # prekeys left below the counter): put the counter back to it.
                floors |= {i: (at - 1, at <= missed[i]) for i, at in stored.items()}
        return got

    async def _take(self, coll: AsyncCollection[Doc], keys: list[str]) -> dict[str, Doc]:
        """The prekeys of ``keys`` this claim took (deleted, never to be handed out by
        another), by ``_id``. A few: one ``find_one_and_delete`` each (what it deletes is
        this claim's). More: one ``update_many`` marks those no claim marked yet with
        this claim's nonce, one ``find`` reads what carries it, one ``delete_many``
        deletes that: a mark is set once, so each prekey is taken by one claim, and what
        one claim reads is exactly what it took (a prekey another claim, a removal or an
        upload deleted or replaced meanwhile is not this claim's, and costs it none of
        the others: it used to hand out none of them when one had gone, and the one it
        read when the same id had been uploaded again in between)."""
        fields = {"_id": 1, "id": 1, "key": 1, "sig": 1}
        if len(keys) <= _ONE_BY_ONE:
            taken = await asyncio.gather(
                *(
                    coll.find_one_and_delete({"_id": key, CLAIM: None}, projection=fields)
                    for key in keys
                )
            )
            return {doc.pop("_id"): doc for doc in taken if doc is not None}
        nonce = secrets.token_hex(12)
        marked = await coll.update_many(
            {"_id": {"$in": keys}, CLAIM: None}, {"$set": {CLAIM: nonce}}
        )
        if not marked.modified_count:
            return {}
        found = await coll.find({"_id": {"$in": keys}, CLAIM: nonce}, fields).to_list()
        mine = {doc.pop("_id"): doc for doc in found}
        if mine:
            await coll.delete_many({"_id": {"$in": list(mine)}, CLAIM: nonce})
        return mine

    async def _next_stored(
        self, kind: Kind, devices: Sequence[tuple[str, int, int]], after: dict[int, int]
    ) -> dict[int, int]:
        """For each device ``i`` of ``after``, the id its counter should go to (none: not
        in the answer): its lowest unclaimed stored id above ``after[i]`` or, when there
        is none above, its lowest unclaimed stored id at all (ids left below the counter:
        an upload whose lowest id the counter had passed and that failed before it put
        the counter back, or a claim that died after its count). The ``count`` command
        first (none: the common miss, a device whose prekeys ran out or are all being
        taken by claims under way), then one ``find`` of the next ``_PROBE`` ids of all of
        them (a gap), and only then ``find``s of the range, in SQL
        (``clients.in_id_order``; a count lost with Redis, far behind, or past them)."""
        coll = self.prekeys[kind]

        def held(i: int) -> Doc:
            return {"_id": _prefixed(generation_key(*devices[i])), CLAIM: None}

        def above(i: int) -> Doc:
            return {
                "_id": {"$gt": prekey_key(*devices[i], after[i]), "$lt": _end(devices[i])},
                CLAIM: None,
            }

        counts = await asyncio.gather(*(self._count(coll, held(i)) for i in after))
        left = [i for i, n in zip(after, counts, strict=True) if n]
        if not left:
            return {}
        probe = {
            prekey_key(*devices[i], after[i] + k): i for i in left for k in range(1, _PROBE + 1)
        }
        found: dict[int, int] = {}
        query = {"_id": {"$in": list(probe)}, CLAIM: None}
        for doc in await coll.find(query, {"_id": 1, "id": 1}).to_list():
            i = probe[doc["_id"]]
            found[i] = min(found.get(i, doc["id"]), doc["id"])

        async def first(i: int) -> list[Doc]:
            return await in_id_order(coll, above(i), 1) or await in_id_order(coll, held(i), 1)

        rest = [i for i in left if i not in found]
        for i, docs in zip(rest, await asyncio.gather(*(first(i) for i in rest)), strict=True):
            if docs:
                found[i] = int(docs[0]["id"])
        return found

    async def seed_count(
        self, kind: Kind, user_id: str, device_id: int, generation: int, lowest: int
    ) -> None:
        """Start a device's count (:meth:`claim_slots`) just below ``lowest``, the lowest
        id an upload stored, when it has none and no lower id is stored: its first
        claim then takes that id at once. A count at or past ``lowest`` goes back to just
        below it (:data:`_LOWER_COUNT`)."""
        key = self._next_key(kind, user_id, device_id, generation)
        if int(await self._lower_count(keys=[key], args=[lowest])) >= 0:
            return
        start = generation_key(user_id, device_id, generation)
        below = {"$gte": start, "$lt": start + _u(lowest)}
        if await self._count(self.prekeys[kind], {"_id": below}) == 0:
            await self.redis.set(key, lowest - 1, ex=LEFT_TTL_S, nx=True)

    def _next_key(self, kind: Kind, user_id: str, device_id: int, generation: int) -> str:
        """The last prekey id of ``kind`` counted out of a device's (:data:`_COUNT_OUT`)."""
        return f"{self.prefix}:next:{kind.value}:{generation}:{device_id}:{user_id}"

    async def _count(self, coll: AsyncCollection[Doc], query: Doc) -> int:
        # The ``count`` command, not count_documents: the latter is an
        # aggregation that the embedded server runs about 25 times slower.
        reply = await self.db.command("count", coll.name, query=query)
        return int(reply["n"])

    # Estimates of the prekeys left, so that a claim need not count in MongoDB.
    # A hash per device {one_time, kem_one_time}: set to exact counts on every
    # upload and counts read, decremented by claims. It is only a hint: below
    # the threshold the claim path counts in MongoDB before acting, and a lost
    # hash (Redis restart, expiry) reads as negative, which triggers that count.

    def _left_key(self, user_id: str, device_id: int) -> str:
        return f"{self.prefix}:left:{device_id}:{user_id}"

    def _low_key(self, user_id: str, device_id: int) -> str:
        return f"{self.prefix}:low:{device_id}:{user_id}"

    async def note_claims(
        self, claims: Sequence[tuple[str, int, bool, bool]]
    ) -> list[tuple[int, int, bool]]:
        """Count down what claims took, for each (user, device, one-time taken, KEM
        taken), in one round trip: (one-time left, KEM left, low flag already set)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for user_id, device_id, one_time, kem in claims:
                left = self._left_key(user_id, device_id)
                pipe.hincrby(left, Kind.ONE_TIME.value, -1 if one_time else 0)
                pipe.hincrby(left, Kind.KEM.value, -1 if kem else 0)
                pipe.expire(left, LEFT_TTL_S)
                pipe.exists(self._low_key(user_id, device_id))
            rows = await pipe.execute()
        return [(int(rows[i]), int(rows[i + 1]), bool(rows[i + 3])) for i in range(0, len(rows), 4)]

    async def reset_left(
        self, user_id: str, device_id: int, one_time: int, kem: int, *, clear_low: bool = False
    ) -> None:
        left = self._left_key(user_id, device_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(left, mapping={Kind.ONE_TIME.value: one_time, Kind.KEM.value: kem})
            pipe.expire(left, LEFT_TTL_S)
            if clear_low:
                pipe.delete(self._low_key(user_id, device_id))
            await pipe.execute()

    async def forget_left(
        self, user_id: str, device_id: int, generation: int | None = None
    ) -> None:
        """Forget a device's estimates and low flag, and, with ``generation``, the claim
        counters of that generation (one that went: see :meth:`forget_counts`)."""
        await self.redis.delete(
            self._left_key(user_id, device_id), self._low_key(user_id, device_id)
        )
        if generation is not None:
            await self.forget_counts(user_id, device_id, generation)

    async def forget_counts(self, user_id: str, device_id: int, generation: int) -> None:
        """Delete the claim counters (:meth:`_next_key`) of a generation of a device whose
        prekeys went (its identity replaced, or the device deleted). They are keyed by
        generation, so a new one never reads them: they lived on for 30 days, one pair
        for every identity a pending device ever had."""
        await self.redis.delete(
            *(self._next_key(kind, user_id, device_id, generation) for kind in Kind)
        )

    async def flag_low(self, user_id: str, device_id: int, ttl_s: int) -> bool:
        """Set the flag unless set; True if this call set it (and should notify)."""
        key = self._low_key(user_id, device_id)
        return bool(await self.redis.set(key, b"1", nx=True, ex=ttl_s))

    async def unflag_low(self, user_id: str, device_id: int) -> None:
        """Clear the flag :meth:`flag_low` set (its event could not be recorded)."""
        await self.redis.delete(self._low_key(user_id, device_id))

    # Removed devices: revocation (Redis, restored from MongoDB) and broadcasts.

    def revocation_key(self, user_id: str, device_id: int) -> str:
        return device_revocation_key(self.redis_prefix, user_id, device_id)

    def _restored_key(self) -> str:
        return f"{self.prefix}:revocations-restored"

    async def revoke_device(self, user_id: str, device_id: int) -> None:
        """Refuse the device's tokens everywhere, for as long as a refresh token lives.

        Recorded in MongoDB first, so that a Redis restart cannot forget it
        (:meth:`restore_revocations`; services.common.revocations).
        """
        await self.revocation_log.add(
            {self.revocation_key(user_id, device_id): {"user_id": user_id, "device_id": device_id}},
            self.revocation_ttl_s,
        )

    async def device_revoked(self, user_id: str, device_id: int) -> bool:
        return bool(await self.redis.exists(self.revocation_key(user_id, device_id)))

    async def restore_revocations(self) -> int:
        """Put every live revocation back into Redis (after a restart); returns how many.

        Drops the expired ones, then marks Redis as restored (:meth:`revocations_present`).
        """
        return await self.revocation_log.restore()

    async def revocations_present(self) -> bool:
        """False once Redis lost the restored marker (it restarted): restore again."""
        return await self.revocation_log.present()

    async def broadcast(self, message: e.Revocation) -> None:
        """Tell every gateway (revocation channel): close a device's sockets, forget a list."""
        await self.redis.publish(revocation_channel(self.redis_prefix), e.encode(message))

    # Links: a pending device waiting for an existing device's approval.

    def _link_key(self, user_id: str, link_id: str) -> str:
        return f"{self.prefix}:link:{user_key(user_id)}:{link_id}"

    def _device_links_key(self, user_id: str, device_id: int) -> str:
        """The ids of the links a device posted (a set; its members outlive their links,
        and are skipped once these have expired or were cancelled)."""
        return f"{self.prefix}:links-of:{user_key(user_id)}:{device_id}"

    async def create_link(
        self,
        user_id: str,
        link_id: str,
        device_id: int,
        name: str,
        ttl_s: int,
        *,
        sid: str,
        identity: Doc,
        e_pub: str | None = None,
    ) -> bool:
        """False if the user already has a live link with this id.

        The link id is added to its device's set first (and the set kept as long as its
        newest link): a link is never live without being found from its device, the
        identity check of :func:`services.keys.devices.register_identity` needs that."""
        ttl_ms = int(ttl_s * 1000)
        device_links = self._device_links_key(user_id, device_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.sadd(device_links, link_id)
            pipe.pexpire(device_links, ttl_ms)
            await pipe.execute()
        created = await self._link_create(
            keys=[self._link_key(user_id, link_id)],
            args=[
                device_id,
                name.encode(),
                ttl_ms,
                sid,
                identity["signing_key"],
                identity["dh_key"],
                e_pub or "",
            ],
        )
        return bool(created)

    async def get_link(self, user_id: str, link_id: str) -> Doc | None:
        reply = await self.redis.hgetall(self._link_key(user_id, link_id))
        # The client answers bytes (decode_responses=False).
        raw = {scripts.text(k): scripts.text(v) for k, v in reply.items()}
        if "device_id" not in raw:
            return None
        return {
            "link_id": link_id,
            "device_id": int(raw["device_id"]),
            "name": raw.get("name", ""),
            "approval": raw.get("approval"),
            "e_pub": raw.get("e_pub"),
            # Absent from links an older replica posted (no pin, no session).
            "sid": raw.get("sid"),
            "signing_key": raw.get("signing_key"),
            "dh_key": raw.get("dh_key"),
        }

    async def device_links(self, user_id: str, device_id: int) -> list[Doc]:
        """The live links a device posted (approved ones included)."""
        ids = sorted(
            scripts.text(m)
            for m in await self.redis.smembers(self._device_links_key(user_id, device_id))
        )
        found = [await self.get_link(user_id, link_id) for link_id in ids]
        return [link for link in found if link is not None and link["device_id"] == device_id]

    async def repin_link(self, user_id: str, link_id: str, identity: Doc) -> bool:
        """Move a live, unapproved link's pin to ``identity``."""
        moved = await self._link_repin(
            keys=[self._link_key(user_id, link_id)],
            args=[identity["signing_key"], identity["dh_key"]],
        )
        return bool(moved)

    async def approve_link(self, user_id: str, link_id: str, sealed: str) -> int:
        """1: approved; 0: it already was; -1: no such live link."""
        return int(await self._link_approve(keys=[self._link_key(user_id, link_id)], args=[sealed]))

    async def cancel_link(self, user_id: str, link_id: str) -> int:
        """1: deleted; 0: it was approved meanwhile (kept); -1: no such live link."""
        return int(await self._link_cancel(keys=[self._link_key(user_id, link_id)]))

    # Events: the outbox and Kafka.

    async def send_event(
        self, key: str, value: bytes, headers: Sequence[tuple[str, bytes]]
    ) -> bool:
        """Produce one event and wait for Kafka's ack; False if it did not happen."""
        producer = self.kafka.get()
        if producer is None:
            return False
        try:
            await asyncio.wait_for(
                producer.send_and_wait(
                    self.topic, value=value, key=key.encode(), headers=list(headers)
                ),
                self.send_timeout_s,
            )
        except (KafkaError, TimeoutError) as exc:
            log.warning("event not sent", extra={"error": repr(exc), "topic": self.topic})
            return False
        return True
