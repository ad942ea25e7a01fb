"""Ed25519 signing keys: created, rotated, published as a JWKS, shared via MongoDB.

Every auth process reads the key set from the ``signing_keys`` collection
(re-read every ``signing_key_reload_s``) so that all of them sign with the
same key and publish the same JWKS. A key is a *generation*: a unique index on
``generation`` lets exactly one process create each new key, however many try
at once.

Rotation without downtime:
- a new key is published at once but signs only from ``activate_at``
  (``created_at`` + the activation delay, longer than the reload interval),
  so that by then every auth process serves it in its JWKS;
- the key it replaces stays in the JWKS until the last token it signed has
  expired (``next.activate_at`` + the longest lifetime of a token it signs, access
  token or ID token, + a margin), and is deleted from MongoDB some time after that:
  a day later, or once ``retain`` has passed since it stopped signing if that is
  later. Until then the provider still verifies with it what it accepts after the
  token expired (an ID token as ``id_token_hint``: :meth:`KeyRing.stored_jwks`).
Verifiers fetch the JWKS again when they meet an unknown ``kid``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.auth.secretbox import SecretBox, b64u
from services.auth.store import AuthStore, DuplicateError

log = logging.getLogger(__name__)

ALG = "EdDSA"
# Published a little beyond the last token's expiry (clock skew, verifier leeway).
RELOAD_WAIT_S = 1.0
"""The longest a request waits for a due re-read of the key set (see KeyRing.keys)."""
PUBLISH_MARGIN = timedelta(seconds=120)
# Deleted from MongoDB this long after it stops being published.
DELETE_AFTER = timedelta(days=1)

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


def thumbprint(public_jwk: Mapping[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url): the key id."""
    members = {k: public_jwk[k] for k in ("crv", "kty", "x")}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True)
    return b64u(hashlib.sha256(canonical.encode()).digest())


@dataclass(frozen=True)
class SigningKey:
    kid: str
    generation: int
    created_at: datetime
    activate_at: datetime
    public_jwk: dict[str, Any]
    private: Ed25519PrivateKey | None  # None when only published (or unreadable)


def new_key_doc(
    generation: int, box: SecretBox, now: datetime, activation_delay: timedelta
) -> dict[str, Any]:
    private = Ed25519PrivateKey.generate()
    public_jwk = jwt.algorithms.OKPAlgorithm.to_jwk(private.public_key(), as_dict=True)
    kid = thumbprint(public_jwk)
    public_jwk.update({"kid": kid, "alg": ALG, "use": "sig"})
    raw = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return {
        "_id": kid,
        "generation": generation,
        "alg": ALG,
        "created_at": now,
        "activate_at": now + activation_delay,
        "public_jwk": public_jwk,
        "private": box.seal(raw, f"signing-key:{kid}"),
    }


def published(
    keys: list[SigningKey],
    now: datetime,
    token_ttl: timedelta,
    retain: timedelta = timedelta(0),
) -> tuple[list[SigningKey], list[SigningKey]]:
    """Split keys (by generation) into (still published, safe to delete).

    ``token_ttl``: the longest lifetime of a token a key signs; ``retain``: how long
    a key stays stored after it stopped signing (what the service verifies itself
    after expiry). Those neither published nor to delete are retired: stored only.
    """
    keep: list[SigningKey] = []
    drop: list[SigningKey] = []
    ordered = sorted(keys, key=lambda k: k.generation)
    for i, key in enumerate(ordered):
        # A key is superseded once a later key has become active.
        later = [k.activate_at for k in ordered[i + 1 :] if k.activate_at <= now]
        if not later:
            keep.append(key)
            continue
        superseded = min(later)
        until = superseded + token_ttl + PUBLISH_MARGIN
        if now < until:
            keep.append(key)
        elif now >= max(until + DELETE_AFTER, superseded + retain + PUBLISH_MARGIN):
            drop.append(key)
    return keep, drop


def active(keys: list[SigningKey], now: datetime) -> SigningKey | None:
    """The key that signs now: the newest one already active and with a private half."""
    ready = [k for k in keys if k.activate_at <= now and k.private is not None]
    return max(ready, key=lambda k: k.generation) if ready else None


class KeyRing:
    def __init__(
        self,
        store: AuthStore,
        box: SecretBox,
        *,
        token_ttl_s: int,
        max_age_s: int,
        reload_s: float,
        activation_delay_s: float,
        retain_s: int = 0,
        clock: Clock = utcnow,
    ) -> None:
        """``token_ttl_s``: the longest lifetime of a token signed (access or ID token);
        ``retain_s``: how long a key stays stored once it stopped signing (``published``)."""
        self.store = store
        self.box = box
        self.token_ttl = timedelta(seconds=token_ttl_s)
        self.retain = timedelta(seconds=retain_s)
        self.max_age = timedelta(seconds=max_age_s)
        self.reload_s = reload_s
        self.activation_delay = timedelta(seconds=activation_delay_s)
        self.clock = clock
        self._keys: list[SigningKey] = []
        self._loaded_at = float("-inf")
        self._lock = asyncio.Lock()
        self._failed_at: float | None = None  # the last re-read MongoDB did not answer
        self._retry: asyncio.Task[None] | None = None
        self._retry_at = 0.0  # when the last re-read began

    def _parse(self, doc: Mapping[str, Any]) -> SigningKey:
        private: Ed25519PrivateKey | None = None
        raw = self.box.open(doc["private"], f"signing-key:{doc['_id']}")
        private = Ed25519PrivateKey.from_private_bytes(raw)
        return SigningKey(
            kid=doc["_id"],
            generation=int(doc["generation"]),
            created_at=doc["created_at"],
            activate_at=doc["activate_at"],
            public_jwk=dict(doc["public_jwk"]),
            private=private,
        )

    async def reload(self, *, rotate_if_old: bool = True) -> None:
        """Read the key set; create the first key, or a new one when the newest is too old."""
        async with self._lock:
            docs = await self.store.signing_key_docs()
            keys = [self._parse(d) for d in docs]
            now = self.clock()
            newest = max(keys, key=lambda k: k.generation) if keys else None
            if newest is None:
                await self._create(1, now, timedelta(0))
            elif rotate_if_old and now - newest.created_at >= self.max_age:
                log.info("signing key too old, rotating", extra={"kid": newest.kid})
                await self._create(newest.generation + 1, now, self.activation_delay)
            else:
                self._keys = keys
                self._loaded_at = time.monotonic()
                return
            keys = [self._parse(d) for d in await self.store.signing_key_docs()]
            self._keys = keys
            self._loaded_at = time.monotonic()

    async def _create(self, generation: int, now: datetime, delay: timedelta) -> bool:
        doc = new_key_doc(generation, self.box, now, delay)
        try:
            await self.store.insert_signing_key(doc)
        except DuplicateError:
            return False  # another process created this generation first
        log.info("signing key created", extra={"kid": doc["_id"], "generation": generation})
        return True

    async def rotate(self, *, immediate: bool = False, drop_previous: bool = False) -> str:
        """Create the next key; returns its kid.

        ``immediate`` signs with it at once (tokens from processes that have not
        re-read the key set yet are still accepted: the old key stays published).
        ``drop_previous`` deletes every older key, invalidating every token they
        signed: for a key compromise.
        """
        await self.reload(rotate_if_old=False)
        now = self.clock()
        generation = max((k.generation for k in self._keys), default=0) + 1
        delay = timedelta(0) if immediate or drop_previous else self.activation_delay
        if not await self._create(generation, now, delay):
            raise RuntimeError("another process rotated the key at the same moment; retry")
        if drop_previous:
            await self.store.delete_signing_keys([k.kid for k in self._keys])
        await self.reload(rotate_if_old=False)
        return next(k.kid for k in self._keys if k.generation == generation)

    async def keys(self) -> list[SigningKey]:
        """The key set, re-read every ``reload_s``. A due re-read runs beside the
        requests (one at a time); they wait for it at most ``RELOAD_WAIT_S`` after it
        began (MongoDB answers in milliseconds), then answer with the set known:
        a request that waited out the server-selection timeout of a MongoDB that
        is down (5 s) would lose a gateway's JWKS fetch (5 s too), and a pod
        started during the outage could verify no token. While MongoDB does not
        answer, re-reads are ``reload_s`` apart. Only a process that knows no key
        yet waits for MongoDB (and fails without it)."""
        now = time.monotonic()
        if now - self._loaded_at < self.reload_s:
            return self._keys
        if not self._keys:
            await self.reload()
            return self._keys
        idle = self._retry is None or self._retry.done()
        if idle and (self._failed_at is None or now - self._failed_at >= self.reload_s):
            self._retry_at = now
            self._retry = asyncio.create_task(self._reload_beside())
        wait = self._retry_at + RELOAD_WAIT_S - now
        if self._retry is not None and not self._retry.done() and wait > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._retry), wait)
        return self._keys

    async def _reload_beside(self) -> None:
        try:
            await self.reload()
        except Exception as exc:
            self._failed_at = time.monotonic()
            log.warning("cannot re-read signing keys yet", extra={"error": repr(exc)})
        else:
            self._failed_at = None

    async def signer(self) -> SigningKey:
        key = active(await self.keys(), self.clock())
        if key is None:
            raise RuntimeError("no active signing key")
        return key

    async def sign(self, claims: Mapping[str, Any], typ: str | None = None) -> str:
        """A JWS (EdDSA) of ``claims`` with the signing key's ``kid`` (and ``typ``, if given)."""
        key = await self.signer()
        assert key.private is not None
        headers = {"kid": key.kid, **({"typ": typ} if typ else {})}
        return jwt.encode(dict(claims), key.private, algorithm=ALG, headers=headers)

    async def stored_jwks(self) -> dict[str, Any]:
        """The public keys of every key still stored, published or retired: for what
        the service verifies itself after it expired (an ID token as ``id_token_hint``,
        accepted up to a refresh token's lifetime past its ``exp``), which outlives
        the key's publication."""
        keys = await self.keys()
        _, drop = published(keys, self.clock(), self.token_ttl, self.retain)
        gone = {k.kid for k in drop}
        return {"keys": [k.public_jwk for k in keys if k.kid not in gone]}

    async def jwks(self) -> dict[str, Any]:
        keys = await self.keys()
        keep, drop = published(keys, self.clock(), self.token_ttl, self.retain)
        if drop:
            try:
                await self.store.delete_signing_keys([k.kid for k in drop])
            except Exception as exc:  # MongoDB down: deleted by a later request
                log.warning("expired signing keys not deleted yet", extra={"error": repr(exc)})
        return {"keys": [k.public_jwk for k in keep]}
