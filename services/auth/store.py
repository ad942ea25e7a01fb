"""All of the auth service's MongoDB and Redis I/O.

MongoDB collections (database ``<db_prefix>auth``):

- ``users``: one document per account; unique ``username`` and ``email_lc``.
- ``sessions``: one per login (``_id`` = sid); a session is a refresh-token family,
  and keeps its whole refresh state: its key (sealed), the current generation.
- ``refresh_tokens``: refresh tokens issued before they were derived from the session
  (``_id`` = SHA-256 of the opaque token; single use): read until they expire, never
  written any more.
- ``recovery_codes``: ``_id`` = SHA-256 of user id and code; single use.
- ``password_resets``: ``_id`` = SHA-256 of the reset token; single use.
- ``signing_keys``: Ed25519 keys (``_id`` = kid), private half sealed at rest.
- (the audit log is the shared one of services.common.audit, database ``<db_prefix>audit``)
- ``oauth_clients``: OpenID Connect clients (``_id`` = client id), secret hashed.
- ``oauth_codes``: authorization codes (``_id`` = SHA-256 of the code); single use.
- ``oauth_consents``: what a user let a client have (``_id`` = user id + client id).
- ``revocations``: the Redis revocation keys this service set (``_id`` = the key),
  with their expiry, restored into Redis after a restart (services.common.revocations).

Redis keys (all under ``<redis_prefix>``): the revocation keys and channel
named by :mod:`services.common.auth`, plus ``:auth:eph:<kind>:<id>`` (login
challenges and e-mail codes, hashes with an expiry) and ``:auth:known:<hash>``
(addresses a user signed in from: services.auth.lockout). The rate-limit windows,
``:auth:rl:<rule>:<hash>``, are kept by :mod:`services.common.ratelimit`.

Expiry is always checked in code: TTL indexes only reclaim space (and the
embedded MongoDB purges them only when a collection is read).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, overload

import orjson
import redis.asyncio as aioredis
from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from services.common import scripts
from services.common.auth import (
    Claims,
    device_revocation_key,
    revocation_channel,
    revocation_keys,
)
from services.common.revocations import RevocationLog

Doc = dict[str, Any]


# Every time field we write. nx-27017 0.8.1 stores a datetime written by $set
# as a string ("2026-11-22 02:07:25.556000", UTC); reads turn it back, so the
# code above the store always sees tz-aware datetimes (docs/auth.md).
TIME_FIELDS = frozenset(
    {
        "created_at", "updated_at", "password_changed_at", "blocked_at", "last_used_at",
        "expires_at", "revoked_at", "issued_at", "used_at", "activate_at", "at",
        "refresh_used_at",
    }
)  # fmt: skip
ID_CHUNK = 1000
"""Sessions revoked per update (an ``$in`` list of their ids)."""


def _as_datetime(value: Any) -> Any:
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return value
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return value


@overload
def _times(doc: Doc) -> Doc: ...
@overload
def _times(doc: None) -> None: ...
def _times(doc: Doc | None) -> Doc | None:
    if doc is not None:
        for key in TIME_FIELDS.intersection(doc):
            doc[key] = _as_datetime(doc[key])
    return doc


class DuplicateError(Exception):
    """A unique index refused the write (username, e-mail, key generation)."""


def _revocation_keys(prefix: str, user_id: str, sid: str) -> tuple[str, str]:
    return revocation_keys(prefix, Claims(sub=user_id, sid=sid, roles=(), jti="", exp=0))


class AuthStore:
    def __init__(
        self,
        db: AsyncDatabase[Doc],
        redis: aioredis.Redis,
        redis_prefix: str,
        ended_session_s: int = 960,
    ) -> None:
        self.db = db
        self.redis = redis
        self.prefix = redis_prefix
        # How long an ended session is kept (its ``expires_at`` brought in, for the TTL
        # index): as long as its access tokens may live and :meth:`revoked_since` looks
        # back (AuthService.revocation_ttl_s). It kept its 30 days: the sessions the cap
        # ends piled up, and every login's read of the live ones grew with them.
        self.ended_session_s = ended_session_s
        self.users: AsyncCollection[Doc] = db["users"]
        self.sessions: AsyncCollection[Doc] = db["sessions"]
        self.refresh_tokens: AsyncCollection[Doc] = db["refresh_tokens"]
        self.recovery_codes: AsyncCollection[Doc] = db["recovery_codes"]
        self.password_resets: AsyncCollection[Doc] = db["password_resets"]
        self.signing_keys: AsyncCollection[Doc] = db["signing_keys"]
        self.clients: AsyncCollection[Doc] = db["oauth_clients"]
        self.codes: AsyncCollection[Doc] = db["oauth_codes"]
        self.consents: AsyncCollection[Doc] = db["oauth_consents"]
        self.revocations: AsyncCollection[Doc] = db["revocations"]
        # Revoked sessions and blocked users: Redis keys kept in MongoDB too,
        # restored into Redis after a restart (services.common.revocations).
        self.revocation_log = RevocationLog(
            self.revocations, redis, f"{redis_prefix}:auth:revocations-restored"
        )

    async def ensure_indexes(self) -> None:
        await self.users.create_index("username", unique=True)
        await self.users.create_index("email_lc", unique=True)
        # The live query's fields (on MongoDB; the embedded server scans for equality
        # anyway, docs/embedded.md: what bounds that read is ended sessions reclaimed).
        await self.sessions.create_index([("user_id", ASCENDING), ("revoked_at", ASCENDING)])
        await self.sessions.create_index("client_id", sparse=True)  # ending a client's
        await self.refresh_tokens.create_index("sid")
        await self.recovery_codes.create_index("user_id")
        await self.password_resets.create_index("user_id")
        await self.signing_keys.create_index("generation", unique=True)
        await self.revocation_log.ensure_indexes()
        # Space reclamation only: expiry is enforced in code.
        for coll in (self.refresh_tokens, self.password_resets, self.sessions, self.codes):
            await coll.create_index("expires_at", expireAfterSeconds=0)

    # -- users ------------------------------------------------------------

    async def insert_user(self, doc: Doc) -> None:
        """Raises DuplicateError on a taken username or e-mail."""
        try:
            await self.users.insert_one(doc)
        except DuplicateKeyError:
            raise DuplicateError from None

    async def user_by_id(self, user_id: str) -> Doc | None:
        return _times(await self.users.find_one({"_id": user_id}))

    async def users_by_ids(self, user_ids: list[str]) -> list[Doc]:
        """The users of these ids that exist (any order; ids and usernames only)."""
        cursor = self.users.find({"_id": {"$in": user_ids}}, {"username": 1})
        return [doc async for doc in cursor]

    async def user_by_username(self, username: str) -> Doc | None:
        return _times(await self.users.find_one({"username": username}))

    async def user_by_email(self, email_lc: str) -> Doc | None:
        return _times(await self.users.find_one({"email_lc": email_lc}))

    async def update_user(
        self,
        user_id: str,
        set_: Mapping[str, Any],
        unset: Sequence[str] = (),
        raise_stamp: bool = False,
    ) -> Doc | None:
        """The user after the change; DuplicateError on a taken username or e-mail.
        ``raise_stamp``: the account's ``security_stamp`` goes up in the same write
        (services.auth.sessions.security_stamp)."""
        update: Doc = {}
        if set_:
            update["$set"] = dict(set_)
        if unset:
            update["$unset"] = {k: "" for k in unset}
        if raise_stamp:
            update["$inc"] = {"security_stamp": 1}
        try:
            return _times(
                await self.users.find_one_and_update(
                    {"_id": user_id}, update, return_document=ReturnDocument.AFTER
                )
            )
        except DuplicateKeyError:
            raise DuplicateError from None

    async def raise_security_stamp(self, user_id: str) -> Doc | None:
        """Raise the account's ``security_stamp`` (absent: 0); the user after."""
        return await self.update_user(user_id, {}, raise_stamp=True)

    async def advance_totp_step(self, user_id: str, step: int) -> bool:
        """Record the TOTP time step just used; False if it (or a later one) was used."""
        doc = await self.users.find_one_and_update(
            {"_id": user_id, "totp_last_step": {"$lt": step}},
            {"$set": {"totp_last_step": step}},
        )
        return doc is not None

    async def enable_totp(self, user_id: str, pending: Mapping[str, Any], step: int) -> Doc | None:
        """Turn TOTP on with ``pending`` (the sealed secret ``totp_setup`` left) if it is
        still the pending one, in one write that also removes it: the user *before*, or
        None if another request turned it on first (or a new setup replaced it, or it was
        turned off). Read-then-write let two confirms both turn it on, each making its own
        recovery codes. (Matched by the sealed ciphertext, a string: the embedded server
        matches no sub-document by equality.)"""
        return _times(
            await self.users.find_one_and_update(
                {"_id": user_id, "totp_pending.data": str(pending["data"])},
                {
                    "$set": {
                        "totp_enabled": True,
                        "totp_secret": dict(pending),
                        "totp_last_step": step,
                    },
                    "$unset": {"totp_pending": ""},
                },
                return_document=ReturnDocument.BEFORE,
            )
        )

    async def enable_email_codes(self, user_id: str) -> Doc | None:
        """Turn e-mail codes on: the user *before* the write (None: no such user)."""
        return _times(
            await self.users.find_one_and_update(
                {"_id": user_id},
                {"$set": {"email_2fa": True}},
                return_document=ReturnDocument.BEFORE,
            )
        )

    async def list_users(self, query: str | None, after: str | None, limit: int) -> list[Doc]:
        """Users by username, ``limit`` after the cursor ``after``; ``query``
        is a case-insensitive prefix of the username or the e-mail address."""
        flt: Doc = {}
        if query:
            pattern = "^" + re.escape(query.lower())
            flt["$or"] = [
                {"username": {"$regex": pattern}},
                {"email_lc": {"$regex": pattern}},
            ]
        if after:
            flt["username"] = {"$gt": after}
        cursor = self.users.find(flt).sort("username", ASCENDING).limit(limit)
        return [_times(doc) async for doc in cursor]

    # -- sessions and refresh tokens -------------------------------------

    async def insert_session(self, doc: Doc) -> None:
        await self.sessions.insert_one(doc)

    async def session(self, sid: str) -> Doc | None:
        return _times(await self.sessions.find_one({"_id": sid}))

    async def touch_session(self, sid: str, last_used_at: datetime, expires_at: datetime) -> None:
        await self.sessions.update_one(
            {"_id": sid}, {"$set": {"last_used_at": last_used_at, "expires_at": expires_at}}
        )

    async def revoke_session(
        self, sid: str, now: datetime, reason: str, user_id: str | None = None
    ) -> Doc | None:
        """Mark a live session revoked; the session before the change, or None
        when it does not exist, belongs to someone else or was already revoked."""
        flt: Doc = {"_id": sid, "revoked_at": None}
        if user_id is not None:
            flt["user_id"] = user_id
        return _times(await self.sessions.find_one_and_update(flt, self._ended(now, reason)))

    def _ended(self, now: datetime, reason: str) -> Doc:
        """The update that ends a session: revoked, and reclaimed once nothing needs it."""
        until = now + timedelta(seconds=self.ended_session_s)
        return {"$set": {"revoked_at": now, "revoked_reason": reason, "expires_at": until}}

    async def live_sessions(self, user_id: str, now: datetime) -> list[Doc]:
        cursor = self.sessions.find({"user_id": user_id, "revoked_at": None}).sort(
            "created_at", DESCENDING
        )
        docs = [_times(doc) async for doc in cursor]
        return [doc for doc in docs if doc["expires_at"] > now]

    async def revoke_user_sessions(
        self, user_id: str, now: datetime, reason: str, keep: str | None = None
    ) -> list[str]:
        """Revoke every live session of a user (but ``keep``); the sids that were live
        (one another request revoked meanwhile among them: telling every service
        again is harmless). One read of their ids and one update per thousand,
        whatever their number (a session each was two round trips: a user with many
        sessions took minutes to block)."""
        flt: Doc = {"user_id": user_id, "revoked_at": None}
        if keep is not None:
            flt["_id"] = {"$ne": keep}
        sids = [str(d["_id"]) async for d in self.sessions.find(flt, {"_id": 1})]
        for i in range(0, len(sids), ID_CHUNK):
            chunk = sids[i : i + ID_CHUNK]
            await self.sessions.update_many(
                {"_id": {"$in": chunk}, "revoked_at": None}, self._ended(now, reason)
            )
        return sids

    async def revoked_since(self, user_id: str, since: datetime, keep: str | None) -> list[str]:
        """The user's sessions revoked after ``since`` (but ``keep``): whose tokens may
        still be unexpired, so that a retried revocation tells every service again."""
        flt: Doc = {"user_id": user_id, "revoked_at": {"$gt": since}}
        if keep is not None:
            flt["_id"] = {"$ne": keep}
        return [str(d["_id"]) async for d in self.sessions.find(flt, {"_id": 1})]

    async def advance_refresh_generation(
        self, sid: str, generation: int, now: datetime
    ) -> Doc | None:
        """Use the refresh token of ``generation``: atomically, if it is the session's
        current one, make the next one current (``refresh_used_at``: when). The session
        after, or None (another use came first)."""
        return _times(
            await self.sessions.find_one_and_update(
                {"_id": sid, "refresh_gen": generation},
                {"$set": {"refresh_gen": generation + 1, "refresh_used_at": now}},
                return_document=ReturnDocument.AFTER,
            )
        )

    async def release_refresh_generation(
        self, sid: str, generation: int, used_at: datetime
    ) -> None:
        """Undo :meth:`advance_refresh_generation` to ``generation``: only if the current
        generation is still the one that use set, and by that use (``used_at``)."""
        await self.sessions.update_one(
            {"_id": sid, "refresh_gen": generation + 1, "refresh_used_at": used_at},
            {"$set": {"refresh_gen": generation, "refresh_used_at": None}},
        )

    async def adopt_refresh_key(self, sid: str, sealed_key: Doc, now: datetime) -> Doc | None:
        """Move a session still on stored refresh tokens (no ``refresh_gen``) to derived
        ones: its key, generation 0. The session after, or None if it had moved already."""
        return _times(
            await self.sessions.find_one_and_update(
                {"_id": sid, "refresh_gen": None},
                {"$set": {"refresh_key": sealed_key, "refresh_gen": 0, "refresh_used_at": now}},
                return_document=ReturnDocument.AFTER,
            )
        )

    async def drop_refresh_key(self, sid: str, used_at: datetime) -> None:
        """Undo :meth:`adopt_refresh_key`, if no refresh came after the one at ``used_at``."""
        await self.sessions.update_one(
            {"_id": sid, "refresh_gen": 0, "refresh_used_at": used_at},
            {"$unset": {"refresh_key": "", "refresh_gen": "", "refresh_used_at": ""}},
        )

    async def insert_refresh_token(self, doc: Doc) -> None:
        """A stored refresh token (``PARLEY_REFRESH_TOKENS=stored``: sessions.new_refresh_token)."""
        await self.refresh_tokens.insert_one(doc)

    async def consume_refresh_token(self, token_hash: str, now: datetime) -> Doc | None:
        """Atomically mark an unused legacy refresh token used; None if used or unknown."""
        return _times(
            await self.refresh_tokens.find_one_and_update(
                {"_id": token_hash, "used_at": None}, {"$set": {"used_at": now}}
            )
        )

    async def release_refresh_token(self, token_hash: str, used_at: datetime) -> None:
        """Mark a refresh token unused again: the use that marked it (at ``used_at``)
        failed before it issued anything (see sessions.refresh)."""
        await self.refresh_tokens.update_one(
            {"_id": token_hash, "used_at": used_at}, {"$set": {"used_at": None}}
        )

    async def refresh_token(self, token_hash: str) -> Doc | None:
        return _times(await self.refresh_tokens.find_one({"_id": token_hash}))

    # -- recovery codes and password resets ------------------------------

    async def replace_recovery_codes(self, user_id: str, docs: list[Doc]) -> None:
        await self.recovery_codes.delete_many({"user_id": user_id})
        if docs:
            await self.recovery_codes.insert_many(docs)

    async def consume_recovery_code(self, code_hash: str, user_id: str, now: datetime) -> bool:
        doc = await self.recovery_codes.find_one_and_update(
            {"_id": code_hash, "user_id": user_id, "used_at": None}, {"$set": {"used_at": now}}
        )
        return doc is not None

    async def release_recovery_code(self, code_hash: str, user_id: str, used_at: datetime) -> None:
        """Unused again, if :meth:`consume_recovery_code` at ``used_at`` is what used it: the
        login it answered was refused after all (twofactor.complete_login)."""
        await self.recovery_codes.update_one(
            {"_id": code_hash, "user_id": user_id, "used_at": used_at},
            {"$set": {"used_at": None}},
        )

    async def count_recovery_codes(self, user_id: str) -> int:
        # Counted here rather than with count_documents: nx-27017 0.8.1 counts 0
        # for a null-equality filter that find() matches (docs/auth.md).
        cursor = self.recovery_codes.find({"user_id": user_id, "used_at": None}, {"_id": 1})
        return len([d async for d in cursor])

    async def delete_recovery_codes(self, user_id: str) -> None:
        await self.recovery_codes.delete_many({"user_id": user_id})

    async def insert_password_reset(self, doc: Doc) -> None:
        await self.password_resets.insert_one(doc)

    async def password_reset(self, token_hash: str) -> Doc | None:
        """A reset not used yet, or one whose confirmation began (``finishing``) and has
        not finished: its retry finishes it (accounts.confirm_reset)."""
        doc = _times(await self.password_resets.find_one({"_id": token_hash}))
        if doc is None or (doc["used_at"] is not None and not doc.get("finishing")):
            return None
        return doc

    async def consume_password_reset(
        self, token_hash: str, now: datetime, expires_at: datetime, two_factor: bool,
        new_hash: str,
    ) -> Doc | None:  # fmt: skip
        """Use the reset up (None if it was used already), ``finishing`` until
        :meth:`finish_password_reset`, until ``expires_at``; ``two_factor``: the account
        had a second factor, which the reset turns off; ``new_hash``: the password it
        sets (a retry must give the same one)."""
        return _times(
            await self.password_resets.find_one_and_update(
                {"_id": token_hash, "used_at": None},
                {
                    "$set": {
                        "used_at": now,
                        "finishing": True,
                        "two_factor": two_factor,
                        "expires_at": expires_at,
                        "new_hash": new_hash,
                    }
                },
                return_document=ReturnDocument.AFTER,
            )
        )

    async def finish_password_reset(self, token_hash: str) -> None:
        """The reset is done: its token opens nothing any more."""
        await self.password_resets.update_one(
            {"_id": token_hash}, {"$unset": {"finishing": "", "new_hash": ""}}
        )

    async def drop_password_resets(
        self, user_id: str, now: datetime, keep: str | None = None
    ) -> None:
        """Every pending reset of the user is used up, and one still ``finishing`` (a
        reset that failed part way) ends, but ``keep`` (the reset doing this): a
        password changed since must not be undone by that reset's retry."""
        await self.password_resets.update_many(
            {"user_id": user_id, "used_at": None}, {"$set": {"used_at": now}}
        )
        await self.password_resets.update_many(
            {"user_id": user_id, "finishing": True, "_id": {"$ne": keep or ""}},
            {"$unset": {"finishing": "", "new_hash": ""}},
        )

    # -- signing keys -----------------------------------------------------

    async def signing_key_docs(self) -> list[Doc]:
        cursor = self.signing_keys.find({}).sort("generation", ASCENDING)
        return [_times(doc) async for doc in cursor]

    async def insert_signing_key(self, doc: Doc) -> None:
        """Raises DuplicateError when another process took the generation."""
        try:
            await self.signing_keys.insert_one(doc)
        except DuplicateKeyError:
            raise DuplicateError from None

    async def delete_signing_keys(self, kids: Sequence[str]) -> None:
        if kids:
            await self.signing_keys.delete_many({"_id": {"$in": list(kids)}})

    # -- revocation (Redis keys read by every service, and the channel) ----

    async def publish_session_revoked(self, user_id: str, sid: str, ttl_s: int) -> None:
        await self.publish_many_revoked([(user_id, sid)], ttl_s)

    async def publish_sessions_revoked(self, user_id: str, sids: Sequence[str], ttl_s: int) -> None:
        """:meth:`publish_session_revoked` for many sessions: one write of their keys and
        one pipeline of their messages."""
        await self.publish_many_revoked([(user_id, sid) for sid in sids], ttl_s)

    async def publish_many_revoked(self, pairs: Sequence[tuple[str, str]], ttl_s: int) -> None:
        """The same for (user id, sid) pairs of any users, a thousand at a time."""
        channel = revocation_channel(self.prefix)
        for i in range(0, len(pairs), ID_CHUNK):
            chunk = pairs[i : i + ID_CHUNK]
            entries: dict[str, Doc] = {
                _revocation_keys(self.prefix, user_id, sid)[0]: {
                    "kind": "session", "user_id": user_id, "sid": sid
                }
                for user_id, sid in chunk
            }  # fmt: skip
            await self.revocation_log.add(entries, ttl_s)
            async with self.redis.pipeline(transaction=False) as pipe:
                for user_id, sid in chunk:
                    message = {"type": "session_revoked", "user_id": user_id, "sid": sid}
                    pipe.publish(channel, orjson.dumps(message))
                await pipe.execute()

    async def publish_user_blocked(self, user_id: str, sids: Sequence[str], ttl_s: int) -> None:
        _, user_key = _revocation_keys(self.prefix, user_id, "")
        entries: dict[str, Doc] = {user_key: {"kind": "user", "user_id": user_id}}
        for sid in sids:
            sid_key = _revocation_keys(self.prefix, user_id, sid)[0]
            entries[sid_key] = {"kind": "session", "user_id": user_id, "sid": sid}
        await self.revocation_log.add(entries, ttl_s)
        message = {"type": "user_blocked", "user_id": user_id}
        await self.redis.publish(revocation_channel(self.prefix), orjson.dumps(message))

    async def device_revoked(self, user_id: str, device_id: int) -> bool:
        """Was this device removed from its account (set by the key directory)?"""
        return bool(await self.redis.exists(device_revocation_key(self.prefix, user_id, device_id)))

    async def devices_revoked(self, user_id: str, device_ids: Iterable[int]) -> set[int]:
        """Which of these devices were removed from the account (one round trip)."""
        ids = sorted(device_ids)
        if not ids:
            return set()
        async with self.redis.pipeline(transaction=False) as pipe:
            for did in ids:
                pipe.exists(device_revocation_key(self.prefix, user_id, did))
            found = await pipe.execute()
        return {did for did, there in zip(ids, found, strict=True) if there}

    async def clear_user_blocked(self, user_id: str) -> None:
        _, user_key = _revocation_keys(self.prefix, user_id, "")
        await self.revocation_log.remove([user_key])

    # -- addresses a user signed in from (services.auth.lockout) -------------

    def _known_key(self, user_id: str, address: str) -> str:
        digest = hashlib.sha256(f"{user_id}|{address}".encode()).hexdigest()[:32]
        return f"{self.prefix}:auth:known:{digest}"

    async def remember_address(self, user_id: str, address: str, ttl_s: int) -> None:
        await self.redis.set(self._known_key(user_id, address), b"1", ex=ttl_s)

    async def address_known(self, user_id: str, address: str) -> bool:
        return bool(await self.redis.exists(self._known_key(user_id, address)))

    # -- ephemeral records (challenges, e-mail codes) ------------------------

    def _eph_key(self, kind: str, ident: str) -> str:
        return f"{self.prefix}:auth:eph:{kind}:{ident}"

    async def eph_put(self, kind: str, ident: str, fields: Mapping[str, str], ttl_s: int) -> None:
        key = self._eph_key(kind, ident)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.hset(key, mapping=dict(fields.items()))
            pipe.expire(key, ttl_s)
            await pipe.execute()

    async def eph_get(self, kind: str, ident: str) -> dict[str, str] | None:
        raw = await self.redis.hgetall(self._eph_key(kind, ident))
        if not raw:
            return None
        return {scripts.text(k): scripts.text(v) for k, v in raw.items()}

    async def eph_update(self, kind: str, ident: str, fields: Mapping[str, str]) -> bool:
        """Set fields of a record that still exists (keeps its expiry)."""
        key = self._eph_key(kind, ident)
        script = (
            "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end "
            "redis.call('HSET', KEYS[1], unpack(ARGV)) return 1"
        )
        args: list[str] = []
        for k, v in fields.items():
            args += [k, v]
        return bool(await self.redis.eval(script, 1, key, *args))

    async def eph_incr(self, kind: str, ident: str, field: str) -> int | None:
        """Increment a counter of a record that still exists; None if it expired."""
        key = self._eph_key(kind, ident)
        script = (
            "if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end "
            "return redis.call('HINCRBY', KEYS[1], ARGV[1], 1)"
        )
        value = int(await self.redis.eval(script, 1, key, field))
        return None if value < 0 else value

    async def eph_delete(self, kind: str, ident: str) -> bool:
        """Delete a record; True only for the caller that deleted it (single use)."""
        return bool(await self.redis.delete(self._eph_key(kind, ident)))

    # -- OpenID Connect: clients, codes, consents ------------------------------

    async def insert_client(self, doc: Doc) -> None:
        try:
            await self.clients.insert_one(doc)
        except DuplicateKeyError:
            raise DuplicateError from None

    async def put_client(self, doc: Doc) -> None:
        """Create or overwrite a client (the built-in ones, at every start)."""
        fields = {k: v for k, v in doc.items() if k != "_id"}
        await self.clients.update_one({"_id": doc["_id"]}, {"$set": fields}, upsert=True)

    async def client(self, client_id: str) -> Doc | None:
        return _times(await self.clients.find_one({"_id": client_id}))

    async def list_clients(self) -> list[Doc]:
        cursor = self.clients.find({}).sort("_id", ASCENDING)
        return [_times(doc) async for doc in cursor]

    async def update_client(self, client_id: str, set_: Mapping[str, Any]) -> Doc | None:
        return _times(
            await self.clients.find_one_and_update(
                {"_id": client_id}, {"$set": dict(set_)}, return_document=ReturnDocument.AFTER
            )
        )

    async def delete_client(self, client_id: str) -> bool:
        return (await self.clients.delete_one({"_id": client_id})).deleted_count == 1

    async def revoke_client_sessions(
        self, client_id: str, now: datetime, reason: str, since: datetime
    ) -> tuple[int, list[tuple[str, str]]]:
        """Revoke every live session of an OpenID client: (how many were live, the
        (user id, sid) of those and of the ones revoked after ``since``, whose tokens may
        still work: a retry after a failed publish tells every service again). One read
        (indexed by ``client_id``) and one update per thousand, whatever their number."""
        # ``client_id`` in each branch, and checked again: beside an ``$or`` at the top,
        # the embedded server's SQL read "this client's live ones, or anyone's revoked
        # since" (docs/embedded.md), and other clients' sessions were told again.
        flt: Doc = {
            "$or": [
                {"client_id": client_id, "revoked_at": None},
                {"client_id": client_id, "revoked_at": {"$gt": since}},
            ],
        }
        found = self.sessions.find(flt, {"user_id": 1, "revoked_at": 1, "client_id": 1})
        docs = [d async for d in found if d.get("client_id") == client_id]
        live = [str(d["_id"]) for d in docs if d.get("revoked_at") is None]
        for i in range(0, len(live), ID_CHUNK):
            await self.sessions.update_many(
                {"_id": {"$in": live[i : i + ID_CHUNK]}, "revoked_at": None},
                self._ended(now, reason),
            )
        return len(live), [(str(d["user_id"]), str(d["_id"])) for d in docs]

    async def insert_code(self, doc: Doc) -> None:
        await self.codes.insert_one(doc)

    async def consume_code(self, code_hash: str, now: datetime) -> Doc | None:
        """Atomically mark an unused code used: the code before, or None (unknown or used)."""
        return _times(
            await self.codes.find_one_and_update(
                {"_id": code_hash, "used_at": None}, {"$set": {"used_at": now}}
            )
        )

    async def code(self, code_hash: str) -> Doc | None:
        return _times(await self.codes.find_one({"_id": code_hash}))

    async def set_code_session(self, code_hash: str, sid: str) -> Doc | None:
        """Record the session a code opened; the code after (a reuse may have marked it)."""
        return _times(
            await self.codes.find_one_and_update(
                {"_id": code_hash}, {"$set": {"sid": sid}}, return_document=ReturnDocument.AFTER
            )
        )

    async def mark_code_reused(self, code_hash: str) -> Doc | None:
        """Flag a code presented again; the code after (its ``sid``, if a session was opened)."""
        return _times(
            await self.codes.find_one_and_update(
                {"_id": code_hash},
                {"$set": {"reused": True}},
                return_document=ReturnDocument.AFTER,
            )
        )

    async def consent(self, user_id: str, client_id: str) -> Doc | None:
        return _times(await self.consents.find_one({"_id": f"{user_id}|{client_id}"}))

    async def save_consent(
        self, user_id: str, client_id: str, scopes: Sequence[str], now: datetime
    ) -> None:
        await self.consents.update_one(
            {"_id": f"{user_id}|{client_id}"},
            {"$set": {"user_id": user_id, "client_id": client_id, "scopes": list(scopes),
                      "updated_at": now}},
            upsert=True,
        )  # fmt: skip

    # -- OpenID Connect: short-lived records in Redis ------------------------

    async def eph_json_put(self, kind: str, ident: str, value: Any, ttl_s: int) -> None:
        await self.redis.set(self._eph_key(kind, ident), orjson.dumps(value), ex=ttl_s)

    async def eph_json_get(self, kind: str, ident: str) -> Any:
        raw = await self.redis.get(self._eph_key(kind, ident))
        return None if raw is None else orjson.loads(raw)

    async def eph_once(self, kind: str, ident: str, ttl_s: int) -> bool:
        """Mark ``ident`` seen; True the first time only (within ``ttl_s``)."""
        return bool(await self.redis.set(self._eph_key(kind, ident), b"1", ex=ttl_s, nx=True))

    async def eph_exists(self, kind: str, ident: str) -> bool:
        return bool(await self.redis.exists(self._eph_key(kind, ident)))

    # -- an admin's edit and what is left to do after it (admin.edit_user) ----

    async def write_admin_edit(
        self, user_id: str, set_: Mapping[str, Any], expect: Mapping[str, Any]
    ) -> Doc | None:
        """Write an admin's change with its ``pending_admin_edit`` (in ``set_``) only if
        no other is pending and the changed fields are still ``expect``: None if not (or
        no such user); DuplicateError on a taken username or e-mail."""
        query: Doc = {"_id": user_id, "pending_admin_edit": {"$exists": False}}
        for key, value in expect.items():
            # Scalars only: a list (the roles) is left out. The embedded server matches no
            # whole array by equality, and ``$all`` made it read every user in Python
            # under its lock; two admins' role changes meet at the pending record.
            if not isinstance(value, list):
                query[key] = value
        try:
            return _times(
                await self.users.find_one_and_update(
                    query, {"$set": dict(set_)}, return_document=ReturnDocument.AFTER
                )
            )
        except DuplicateKeyError:
            raise DuplicateError from None

    async def claim_admin_edit(
        self, user_id: str, edit_id: str, now_ms: int, until_ms: int
    ) -> Doc | None:
        """Take the pending edit ``edit_id`` to finish it, until ``until_ms``: None if
        another request holds it (its lease not over) or it is no longer pending. (No
        ``$or`` beside ``_id``: the embedded server's SQL then matched other users'
        records, docs/embedded.md.)"""
        doc = await self.users.find_one_and_update(
            {
                "_id": user_id,
                "pending_admin_edit.id": edit_id,
                "pending_admin_edit.lease_until_ms": {"$lte": now_ms},
            },
            {"$set": {"pending_admin_edit.lease_until_ms": until_ms}},
            return_document=ReturnDocument.AFTER,
        )
        return _times(doc) if doc is not None and doc.get("_id") == user_id else None

    async def release_admin_edit(self, user_id: str, edit_id: str, lease_ms: int) -> None:
        """Give the pending edit ``edit_id`` up unfinished, if this request still holds it
        (its lease ``lease_ms``): the next request takes it at once."""
        await self.users.update_one(
            {
                "_id": user_id,
                "pending_admin_edit.id": edit_id,
                "pending_admin_edit.lease_until_ms": lease_ms,
            },
            {"$set": {"pending_admin_edit.lease_until_ms": 0}},
        )

    async def drop_admin_edit_without_id(self, user_id: str) -> None:
        await self.users.update_one(
            {"_id": user_id, "pending_admin_edit": {"$exists": True},
             "pending_admin_edit.id": {"$exists": False}},
            {"$unset": {"pending_admin_edit": ""}},
        )  # fmt: skip

    async def end_admin_edit(self, user_id: str, edit_id: str) -> Doc | None:
        """Remove the pending edit if it is still ``edit_id`` (not one written since);
        the user after, None if it was not."""
        return _times(
            await self.users.find_one_and_update(
                {
                    "_id": user_id,
                    "pending_admin_edit": {"$exists": True},
                    "pending_admin_edit.id": edit_id,
                },
                {"$unset": {"pending_admin_edit": ""}},
                return_document=ReturnDocument.AFTER,
            )
        )
