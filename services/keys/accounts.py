"""The account identity key and its signed device list (docs/devices.md, docs/keys.md).

An account registers its account key once with a first device list
(version 1), then publishes each new list signed by that key with the next
version. A different account key is a **reset** (the owner lost every device
and reinstalled): allowed for the account's owner (``reset_limit`` times a day),
it starts again at version 1 and publishes ``key_changed``. The devices new lists
remove are limited per user too (``removal_limit``: each is a revocation every
replica restores).

Every write is compare-and-set on the account document's ``generation``, so
that of two concurrent lists exactly one wins (the other gets ``conflict``
with the version that won). The server checks the signature with
``cryptography`` (services.keys.verify) and that every listed device has
registered exactly the identity its entry names; it never learns the account
key's private half.

Devices dropped from the list are **removed**: their keys deleted, their
tokens refused by every service (the revocation key of services.common.auth,
also kept in MongoDB to survive a Redis restart), their sockets closed
(``device_revoked`` on the revocation channel) and their inbox dropped
(``device_removed`` event). The write that drops them records them in
``removing`` together with the new list, so a removal interrupted by a crash
is finished by the next write of the account, or by the first read that finds
it still unfinished ``REMOVAL_GRACE_S`` after the write.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
from parley_contract import envelopes as e
from pymongo.errors import DuplicateKeyError

from services.common.errors import ApiError, ErrorCode
from services.keys import events, models, verify
from services.keys.state import Keys
from services.keys.store import user_key

log = logging.getLogger(__name__)

# Attempts at a compare-and-set before giving up with CONFLICT.
_CAS_ATTEMPTS = 5
# A removal still unfinished this long after its write was interrupted: readers finish it.
REMOVAL_GRACE_S = 30.0
# The limiter rule of devices removed per user (``removal_limit``).
_REMOVALS = "removals"


@dataclass(frozen=True, slots=True)
class Account:
    """A user's account document, as read."""

    user_id: str
    account_key: str
    version: int
    generation: int
    device_list: str
    """The list's canonical JSON, exactly the signed bytes after the label."""
    signature: str
    device_ids: tuple[int, ...]
    removing: tuple[int, ...]
    dropped: dict[int, int]
    """For each device of ``removing``, the generation of the write that dropped it."""
    updated_at: float

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Account:
        listed = orjson.loads(doc["device_list"])
        return cls(
            user_id=str(doc["user_id"]),
            account_key=str(doc["account_key"]),
            version=int(doc["version"]),
            generation=int(doc["generation"]),
            device_list=str(doc["device_list"]),
            signature=str(doc["signature"]),
            device_ids=tuple(int(d["device_id"]) for d in listed["devices"]),
            removing=tuple(int(d) for d in doc.get("removing") or ()),
            dropped={int(d): int(g) for d, g in (doc.get("dropped") or {}).items()},
            updated_at=float(doc.get("updated_at", 0)),
        )

    def dropped_at(self, device_id: int) -> int:
        """The generation of the write that dropped this device of ``removing`` (this
        one's, for a document written before the account kept it)."""
        return self.dropped.get(device_id, self.generation)

    def removals(self, dropped: Iterable[int] = ()) -> dict[int, int]:
        """The removals the next write carries: those not finished (each with the
        generation that dropped it) and ``dropped`` by that write (the generation it
        makes)."""
        return {
            **{d: self.dropped_at(d) for d in self.removing},
            **{d: self.generation + 1 for d in dropped},
        }

    def listed(self) -> dict[str, Any]:
        """The members every answer that carries the list has (models._Listed)."""
        return {
            "user_id": self.user_id,
            "account_key": self.account_key,
            "device_list": models.DeviceList.model_validate(orjson.loads(self.device_list)),
            "signature": self.signature,
        }


def identity_not_found(user_id: str) -> ApiError:
    return ApiError(
        ErrorCode.IDENTITY_NOT_FOUND,
        "This user has not registered an account key.",
        details={"user_id": user_id},
    )


async def get(keys: Keys, user_id: str) -> Account | None:
    doc = await keys.store.get_account(user_id)
    return None if doc is None else Account.from_doc(doc)


async def current(keys: Keys, user_id: str) -> Account:
    """The account, with any interrupted removal finished; 404 ``identity_not_found``.

    A removal in progress (its writer is finishing it now) is left to its writer.
    """
    account = await get(keys, user_id)
    if account is None:
        raise identity_not_found(user_id)
    if account.removing and time.time() - account.updated_at > REMOVAL_GRACE_S:
        await _finish_removals(keys, user_id, account.generation, account.removals())
        await keys.store.broadcast(e.DevicesChanged(user_id=user_id))
    return account


async def current_many(keys: Keys, user_ids: Sequence[str]) -> dict[str, Account]:
    """:func:`current` of many users, one query for all (those with no account are
    left out); the rare account with an interrupted removal goes through
    :func:`current` on its own."""
    found = {}
    for doc in await keys.store.get_accounts(user_ids):
        account = Account.from_doc(doc)
        if account.removing and time.time() - account.updated_at > REMOVAL_GRACE_S:
            account = await current(keys, account.user_id)
        found[account.user_id] = account
    return found


async def device_lists(keys: Keys, user_ids: Sequence[str]) -> models.DeviceLists:
    """Many users' account keys and signed lists; their Redis copies written as the
    one-user read writes them, in one round trip (the gateways read lists this way)."""
    found = await current_many(keys, user_ids)
    try:
        await keys.store.copies.write_many(
            (a.user_id, a.generation, a.device_ids) for a in found.values()
        )
    except aioredis.RedisError as exc:
        log.warning("device list copies not written", extra={"error": repr(exc)})
    return models.DeviceLists(
        lists=[models.ListedDevices(**found[u].listed()) for u in user_ids if u in found],
        missing=[u for u in user_ids if u not in found],
    )


async def user_devices(keys: Keys, user_id: str) -> models.UserDevices:
    account = await current(keys, user_id)
    await _copy(keys, user_id, account.generation, account.device_ids)
    listed = account.listed()
    return models.UserDevices(
        **listed,
        devices=[
            models.DeviceSummary(device_id=d.device_id, name=d.name)
            for d in listed["device_list"].devices
        ],
    )


def _check_signed(
    keys: Keys, user_id: str, body: models.SignedDeviceList
) -> verify.VerifiedDeviceList:
    """The checks that need no stored state: structure, owner, size."""
    listed = verify.device_list(body.device_list)
    if listed.user_id != user_id:
        raise ApiError(
            ErrorCode.FORBIDDEN,
            "A device list names the account it belongs to: yours.",
            details={"field": "device_list.user_id"},
        )
    if len(listed.devices) > keys.config.max_devices:
        raise ApiError(
            ErrorCode.TOO_MANY_DEVICES,
            f"An account has at most {keys.config.max_devices} devices.",
            details={"max": keys.config.max_devices, "got": len(listed.devices)},
        )
    return listed


async def _check_identities(
    keys: Keys, user_id: str, listed: verify.VerifiedDeviceList, removing: tuple[int, ...]
) -> None:
    """Every listed device registered exactly the identity its entry names."""
    docs = {
        int(d["device_id"]): d for d in await keys.store.get_devices(user_id, listed.device_ids)
    }
    for i, (device_id, (_, signing_key, dh_key)) in enumerate(listed.devices.items()):
        field = f"device_list.devices[{i}]"
        doc = docs.get(device_id)
        if doc is None or device_id in removing:
            raise ApiError(
                ErrorCode.INVALID_KEY,
                f"{field}: device {device_id} has no registered identity; it must register "
                "its keys before it is listed.",
                details={"field": field, "device_id": device_id},
            )
        identity = doc["identity"]
        if identity["signing_key"] != signing_key or identity["dh_key"] != dh_key:
            raise ApiError(
                ErrorCode.INVALID_KEY,
                f"{field}: not the identity device {device_id} registered.",
                details={"field": field, "device_id": device_id},
            )


async def _identities_hold(
    keys: Keys, user_id: str, listed: verify.VerifiedDeviceList, account: Account | None
) -> bool:
    """:func:`_check_identities` against the account as read; False (try again) if
    the account changed meanwhile, since a concurrent list may have removed a
    device: the caller then answers what that list's version implies."""
    try:
        await _check_identities(keys, user_id, listed, account.removing if account else ())
    except ApiError:
        latest = await get(keys, user_id)
        if (latest and latest.generation) != (account and account.generation):
            return False
        raise
    return True


async def register(
    keys: Keys, user_id: str, body: models.AccountRegistration
) -> models.AccountRegistered:
    """The first account key and list, a reset to another key, or the same key again."""
    listed = _check_signed(keys, user_id, body)
    if listed.version != 1:
        raise ApiError(
            ErrorCode.VALIDATION_FAILED,
            "An account key's first device list has version 1.",
            details=[{"field": "device_list.version", "problem": "must be 1"}],
        )
    public = verify.account_key(body.account_key)
    verify.list_signature(listed, public, body.signature)
    store = keys.store
    limited = False
    for _ in range(_CAS_ATTEMPTS):
        old = await get(keys, user_id)
        if old is not None and old.account_key == body.account_key:
            return models.AccountRegistered(version=old.version, created=False, changed=False)
        if not await _identities_hold(keys, user_id, listed, old):
            continue
        if old is not None and not limited:
            # A reset, about to be made: limited per user (``reset_limit``), since each
            # tells every contact of a new key. The first key and a retry are not.
            await keys.limiter.hit("resets", user_id, keys.config.reset_limit)
            limited = True
        fields: dict[str, Any] = {
            "account_key": body.account_key,
            "version": 1,
            "device_list": listed.text(),
            "signature": body.signature,
        }
        if old is None:
            try:
                await store.insert_account(user_id, {**fields, **_kept({})})
            except DuplicateKeyError:
                continue  # registered concurrently: compare with that one
            log.info("account key registered", extra={"user_id": user_id})
            await _copy(keys, user_id, 1, listed.device_ids)
            await store.broadcast(e.DevicesChanged(user_id=user_id))
            return models.AccountRegistered(version=1, created=True, changed=False)
        dropped = {d for d in old.device_ids if d not in listed.devices}
        removing = old.removals(dropped)
        # Recorded before the change: a process dying after it would otherwise lose the
        # event for good (a retry finds the key registered and changes nothing), and
        # contacts would never be warned. Sent only once the change is there.
        held = await keys.events.hold(
            events.key_changed(user_id, body.account_key),
            {"_id": user_key(user_id), "account_key": body.account_key},
        )
        if not await store.replace_account(user_id, old.generation, {**fields, **_kept(removing)}):
            await keys.events.drop(held)
            continue
        log.info("account key reset", extra={"user_id": user_id, "removed": sorted(dropped)})
        await keys.events.release(held)
        await _finish_removals(keys, user_id, old.generation + 1, removing)
        await _copy(keys, user_id, old.generation + 1, listed.device_ids)
        await store.broadcast(e.DevicesChanged(user_id=user_id))
        return models.AccountRegistered(version=1, created=False, changed=True)
    raise _conflict()


async def update_list(
    keys: Keys, user_id: str, body: models.SignedDeviceList
) -> models.DeviceListUpdated:
    """The next version of the list, signed by the registered account key."""
    listed = _check_signed(keys, user_id, body)
    store = keys.store
    for _ in range(_CAS_ATTEMPTS):
        account = await get(keys, user_id)
        if account is None:
            raise identity_not_found(user_id)
        if listed.version != account.version + 1:
            raise ApiError(
                ErrorCode.CONFLICT,
                f"The device list is at version {account.version}; publish version "
                f"{account.version + 1}, built on it.",
                details={"version": account.version},
            )
        public = verify.account_key(account.account_key)
        verify.list_signature(listed, public, body.signature)
        if not await _identities_hold(keys, user_id, listed, account):
            continue
        dropped = {d for d in account.device_ids if d not in listed.devices}
        removing = account.removals(dropped)
        fields = {
            "version": listed.version,
            "device_list": listed.text(),
            "signature": body.signature,
            **_kept(removing),
        }
        # Counted before the write (refused: nothing written), given back if it loses.
        counted = await _count_removals(keys, user_id, len(dropped))
        if not await store.replace_account(user_id, account.generation, fields):
            if counted:
                await keys.limiter.release(_REMOVALS, user_id, counted)
            continue  # another write won: its version decides on the next round
        log.info(
            "device list updated",
            extra={"user_id": user_id, "version": listed.version, "removed": sorted(dropped)},
        )
        await _finish_removals(keys, user_id, account.generation + 1, removing)
        await _copy(keys, user_id, account.generation + 1, listed.device_ids)
        await store.broadcast(e.DevicesChanged(user_id=user_id))
        return models.DeviceListUpdated(version=listed.version, removed=sorted(dropped))
    raise _conflict()


async def _count_removals(keys: Keys, user_id: str, n: int) -> int:
    """Count ``n`` devices a new list removes in the user's window (``removal_limit``),
    or refuse the list with 429 ``rate_limited`` (nothing counted). Returns how many
    were counted (to give back if the list is not written).

    Each removal is a revocation kept 30 days (MongoDB and Redis) that every replica
    reads back at start-up and hourly, an event and a broadcast: a user adding and
    dropping devices in a loop made every replica's start-up take minutes. A list that
    drops more devices than the limit's count is counted as that many (the limit is at
    least ``max_devices``, so a full list can always be dropped at once)."""
    if n <= 0:
        return 0
    limit = keys.config.removal_limit
    n = min(n, limit.count)
    message = "Too many devices removed from the list; try again later."
    await keys.limiter.take_places(_REMOVALS, user_id, n, limit, message)
    return n


async def _copy(keys: Keys, user_id: str, generation: int, devices: Iterable[int]) -> None:
    """The list's copy in Redis, which the gateways read while this service cannot answer
    (:class:`~services.common.devices.ListCopies`; never over a newer generation's).
    Best effort: a Redis that does not answer costs the copy, not the request."""
    try:
        await keys.store.copies.write(user_id, generation, devices)
    except aioredis.RedisError as exc:
        log.warning("device list copy not written", extra={"user_id": user_id, "error": repr(exc)})


def _kept(removing: dict[int, int]) -> dict[str, Any]:
    """The account fields that record the removals a write leaves to finish."""
    return {
        "removing": sorted(removing),
        "dropped": {str(d): g for d, g in sorted(removing.items())},
    }


async def _finish_removals(
    keys: Keys, user_id: str, generation: int, removing: dict[int, int]
) -> None:
    """Remove each dropped device (every step idempotent), then clear ``removing``.

    ``removing``: each device and the generation of the write that dropped it, which
    its ``device_removed`` event's id is made of, so that every process finishing the
    same removal (a write lands while another finishes it) announces it with the same
    id (they used to make two events of one removal, each with an id of its own)."""
    store = keys.store
    for device_id, dropped_at in sorted(removing.items()):
        await store.revoke_device(user_id, device_id)
        await store.delete_device(user_id, device_id)
        await store.forget_left(user_id, device_id)
        await store.broadcast(e.DeviceRevoked(user_id=user_id, device=device_id))
        await keys.events.publish(events.device_removed(user_id, device_id, dropped_at))
        log.info("device removed", extra={"user_id": user_id, "device_id": device_id})
    if removing:
        # If someone wrote meanwhile, they carried these on and finish them too.
        await store.removals_done(user_id, generation)


def _conflict() -> ApiError:
    return ApiError(ErrorCode.CONFLICT, "The device list changed concurrently; try again.")


async def restore_revocations(keys: Keys) -> None:
    """Start-up work: removed devices' revocation keys back into Redis (idempotent)."""
    restored = await keys.store.restore_revocations()
    if restored:
        log.info("device revocations restored", extra={"count": restored})


async def keep_identity_keys(keys: Keys) -> None:
    """For as long as the service runs: record the holders of identity keys, at once
    and every ``identity_record_s`` (KeyStore.record_identity_keys). In the
    background: the first pass reads every device, which must not hold start-up."""
    while True:
        try:
            read = await keys.store.record_identity_keys()
            log.info("identity keys recorded", extra={"devices": read})
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("recording identity keys failed; trying again later")
        await asyncio.sleep(keys.config.identity_record_s)


async def keep_revocations(keys: Keys) -> None:
    """For as long as the service runs: restore the revocations whenever Redis lost
    them (a restart of Redis empties it; the restored marker goes with it)."""
    await keys.store.revocation_log.keep(keys.config.revocation_check_s, "keys")
