"""A device managing its own keys: identity, signed prekey, prekey uploads, counts, check.

Every operation acts on the caller's own device (the user id comes from the
access token, never from the request; a device-bound session may only touch
its own device, checked by the routes), so no one can touch another user's
keys. A device must register its identity before anything else; everything
signed is verified against that identity, and writes are compare-and-set on
the device's ``generation`` so that a concurrent identity change can never
leave a key signed by the old identity next to the new one.

A registered device is **pending** until the account's signed device list
names it (services.keys.accounts): nobody can claim its bundle or see its
identity. A listed device's identity cannot change (the list names it) and
it cannot be deleted here: a new list without it removes it.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from pymongo.errors import DuplicateKeyError

from services.common.audit import Actor, Entry
from services.common.auth import Claims
from services.common.errors import ApiError, ErrorCode
from services.keys import accounts, models, verify
from services.keys.state import Keys
from services.keys.store import DuplicatePrekeyIds, Kind

log = logging.getLogger(__name__)

# Attempts at a compare-and-set before giving up with CONFLICT.
_CAS_ATTEMPTS = 5


def _conflict() -> ApiError:
    return ApiError(ErrorCode.CONFLICT, "This device's keys changed concurrently; try again.")


async def device_or_404(keys: Keys, user_id: str, device_id: int) -> dict[str, Any]:
    device = await keys.store.get_device(user_id, device_id)
    if device is None:
        raise ApiError(
            ErrorCode.DEVICE_NOT_FOUND,
            "No such device; register its identity first.",
            details={"device_id": device_id},
        )
    return device


async def register_identity(
    keys: Keys, user_id: str, device_id: int, body: models.Identity, sid: str | None = None
) -> models.IdentityRegistered:
    """Register a device's identity (a pending device until a signed list names it).

    The same identity again changes nothing. A different identity replaces a
    pending device's (a reinstall before it was linked: its old prekeys are
    wiped); a listed device's identity cannot change (``conflict``: remove it
    from the list, and link the reinstalled device under a new id). A removed
    device's id cannot be registered again while its revocation lasts. While a
    link the device posted is live and not approved, only the session ``sid``
    that posted it may give the device another identity (:func:`_guard_links`).
    """
    new = verify.identity(body).doc()
    store = keys.store
    if await store.device_revoked(user_id, device_id):
        raise _removed(device_id)
    for _ in range(_CAS_ATTEMPTS):
        device = await store.get_device(user_id, device_id)
        if device is None:
            own_links = await _guard_links(keys, user_id, device_id, new, sid)
            await _room_for_a_device(keys, user_id)
            await _claim_keys(keys, user_id, device_id, new)
            try:
                await store.insert_device(user_id, device_id, new)
            except DuplicateKeyError:
                # Registered concurrently: compare with that one. The records just made
                # go unless it holds these keys too.
                await store.release_identity(user_id, device_id, new)
                continue
            if await store.device_revoked(user_id, device_id):
                # Removed between the check above and the insert (a removal revokes
                # before it deletes, so one that deleted before this insert has revoked
                # already): this registration goes too.
                await store.delete_device(user_id, device_id)
                await store.forget_left(user_id, device_id)
                raise _removed(device_id)
            if (
                await store.count_devices(user_id)
                > keys.config.max_devices + keys.config.max_pending
            ):
                # Registrations at once each found room before the others inserted:
                # counted again after, one past the cap goes (each one over: none stays).
                await store.delete_device(user_id, device_id)
                raise _too_many_devices(keys)
            await _repin(keys, user_id, own_links, new)
            log.info("device registered", extra={"user_id": user_id, "device_id": device_id})
            return models.IdentityRegistered(device_id=device_id, created=True, changed=False)
        old = device["identity"]
        if old["signing_key"] == new["signing_key"] and old["dh_key"] == new["dh_key"]:
            # Recorded if it was not (a device an older replica registered): a holder
            # found here is left as it is (this device may be the one it copied).
            await store.claim_identity(user_id, device_id, new)
            return models.IdentityRegistered(device_id=device_id, created=False, changed=False)
        if device_id in await _listed(keys, user_id):
            raise ApiError(
                ErrorCode.CONFLICT,
                "This device is in the account's signed device list with another identity; "
                "remove it from the list and link the new install as a new device.",
                details={"device_id": device_id},
            )
        generation = int(device["generation"])
        own_links = await _guard_links(keys, user_id, device_id, new, sid)
        await _claim_keys(keys, user_id, device_id, new)
        if not await store.replace_identity(user_id, device_id, generation, new):
            # Changed concurrently: the records just made go unless it took these keys.
            await store.release_identity(user_id, device_id, new)
            continue
        # The old identity's keys are no longer this device's, nor are the old
        # generation's prekeys and claim counters.
        await store.release_identity(user_id, device_id, old, kept=new)
        await store.delete_prekeys(user_id, device_id, below_generation=generation + 1)
        await store.forget_left(user_id, device_id, generation)
        await _repin(keys, user_id, own_links, new)
        log.info("pending identity replaced", extra={"user_id": user_id, "device_id": device_id})
        return models.IdentityRegistered(device_id=device_id, created=False, changed=True)
    raise _conflict()


def link_pins(link: dict[str, Any], identity: dict[str, Any]) -> bool:
    """Whether ``identity`` is the one a link was posted for (services/keys/links.py;
    a link an older replica posted pins none: any)."""
    if link.get("signing_key") is None:
        return True
    return (link["signing_key"], link["dh_key"]) == (identity["signing_key"], identity["dh_key"])


async def _guard_links(
    keys: Keys, user_id: str, device_id: int, new: dict[str, str], sid: str | None
) -> list[str]:
    """``conflict`` if a live, unapproved link of the device pins another identity and
    was posted by another session than ``sid``; else the ids of the caller's own such
    links, whose pin moves to the new identity once it is stored (:func:`_repin`).

    Without this, anyone holding the account's password (any session of the user:
    a token's ``did`` is only what its login asked for) could replace the identity
    of a device waiting for approval, and the approver would sign a list naming
    their keys (audit, 2026-12: r2_swap_pending_identity). The device itself, run
    again with its store, registers the same identity, which is never refused; a
    device that really means to take other keys cancels its link first (it alone
    knows the link id) or waits for it to expire. The check also covers a device
    registered anew under the id (deleted, or forgotten as a stale pending
    device): the link's pin outlives the device document. A link posted between
    this check and the write pins the old identity, and then reads as unknown."""
    own: list[str] = []
    for link in await keys.store.device_links(user_id, device_id):
        if link["approval"] is not None or link_pins(link, new):
            continue
        if sid is not None and link.get("sid") == sid:
            own.append(str(link["link_id"]))
            continue
        raise ApiError(
            ErrorCode.CONFLICT,
            "This device is waiting for its link code to be approved: its identity keys "
            "cannot change until the link is approved, cancelled or expired.",
            details={"device_id": device_id, "field": "identity"},
        )
    return own


async def _repin(keys: Keys, user_id: str, link_ids: list[str], new: dict[str, str]) -> None:
    for link_id in link_ids:
        await keys.store.repin_link(user_id, link_id, new)


async def _claim_keys(keys: Keys, user_id: str, device_id: int, identity: dict[str, str]) -> None:
    """``conflict`` if another device (of any account) has registered these identity
    keys: a device's keys name one device of one account (docs/keys.md, "One holder
    per identity key")."""
    if await keys.store.claim_identity(user_id, device_id, identity) is not None:
        raise ApiError(
            ErrorCode.CONFLICT,
            "These identity keys are another device's; a device makes its own.",
            details={"field": "identity"},
        )


def _removed(device_id: int) -> ApiError:
    return ApiError(
        ErrorCode.CONFLICT,
        "This device was removed from the account; register under a new device id.",
        details={"device_id": device_id},
    )


def _too_many_prekeys(cap: int, held: int) -> ApiError:
    return ApiError(
        ErrorCode.TOO_MANY_PREKEYS,
        f"A device may hold at most {cap} unclaimed prekeys of each kind.",
        details={"held": held, "max": cap},
    )


async def _listed(keys: Keys, user_id: str) -> tuple[int, ...]:
    account = await accounts.get(keys, user_id)
    return () if account is None else account.device_ids


async def _room_for_a_device(keys: Keys, user_id: str) -> None:
    """At most ``max_devices + max_pending`` registered devices (listed or pending).

    When full, pending devices registered more than ``pending_ttl_s`` ago (an
    abandoned link) are forgotten first.
    """
    store, config = keys.store, keys.config
    cap = config.max_devices + config.max_pending
    if await store.count_devices(user_id) < cap:
        return
    listed = set(await _listed(keys, user_id))
    stale_before = time.time() - config.pending_ttl_s
    for device in await store.list_devices(user_id):
        device_id = int(device["device_id"])
        if device_id not in listed and float(device.get("created_at", 0)) < stale_before:
            await store.delete_device(user_id, device_id)
            await store.forget_left(user_id, device_id)
            log.info("stale pending device forgotten", extra={"device_id": device_id})
    if await store.count_devices(user_id) >= cap:
        raise _too_many_devices(keys)


def _too_many_devices(keys: Keys) -> ApiError:
    config = keys.config
    return ApiError(
        ErrorCode.TOO_MANY_DEVICES,
        f"An account has at most {config.max_devices} devices and {config.max_pending} "
        "waiting to be linked; remove one first.",
        details={"max_devices": config.max_devices, "max_pending": config.max_pending},
    )


async def _set_signed_key(
    keys: Keys,
    user_id: str,
    device_id: int,
    field: str,
    check: Callable[[bytes], verify.VerifiedPrekey],
) -> None:
    """Verify with the registered identity, then store if that identity is still current."""
    for _ in range(_CAS_ATTEMPTS):
        device = await device_or_404(keys, user_id, device_id)
        verified = check(verify.signing_key_of(device["identity"]))
        if await keys.store.set_device_key(
            user_id, device_id, int(device["generation"]), field, verified.doc()
        ):
            return
    raise _conflict()


async def set_signed_prekey(
    keys: Keys, user_id: str, device_id: int, body: models.SignedPrekey
) -> None:
    await _set_signed_key(
        keys,
        user_id,
        device_id,
        "signed_prekey",
        lambda signing_key: verify.signed_prekey(body, signing_key),
    )


async def set_last_resort(keys: Keys, user_id: str, device_id: int, body: models.KemPrekey) -> None:
    await _set_signed_key(
        keys,
        user_id,
        device_id,
        "last_resort",
        lambda signing_key: verify.kem_prekey(
            body, signing_key, last_resort=True, field="kem_last_resort"
        ),
    )


async def upload_one_time(
    keys: Keys, user_id: str, device_id: int, items: list[models.OneTimePrekey]
) -> models.Stored:
    def check(_: dict[str, Any]) -> list[verify.VerifiedPrekey]:
        return verify.one_time_prekeys(items)

    return await _upload(keys, Kind.ONE_TIME, user_id, device_id, len(items), check)


async def upload_kem(
    keys: Keys, user_id: str, device_id: int, items: list[models.KemPrekey]
) -> models.Stored:
    return await _upload(
        keys,
        Kind.KEM,
        user_id,
        device_id,
        len(items),
        lambda device: verify.kem_prekeys(items, verify.signing_key_of(device["identity"])),
    )


async def _upload(
    keys: Keys,
    kind: Kind,
    user_id: str,
    device_id: int,
    size: int,
    check: Callable[[dict[str, Any]], list[verify.VerifiedPrekey]],
) -> models.Stored:
    """Store a batch of one-time prekeys: every item valid and new, or nothing stored.

    The same batch again, every prekey of it still stored as sent, is a retry (of an
    upload that stored it and failed after, or whose answer was lost): it succeeds,
    storing nothing, and finishes what the first one may not have (the claim count,
    the estimates)."""
    store, config = keys.store, keys.config
    if size > config.max_batch:
        raise ApiError(
            ErrorCode.BATCH_TOO_LARGE,
            f"At most {config.max_batch} prekeys per request.",
            details={"max": config.max_batch, "got": size},
        )
    device = await device_or_404(keys, user_id, device_id)
    generation = int(device["generation"])
    verified = check(device)
    ids = [p.id for p in verified]
    dups = verify.duplicate_ids(verified)
    if dups:
        raise _duplicates(dups)
    stored = await store.existing_prekeys(kind, user_id, device_id, generation, ids)
    if not stored:
        await _insert(keys, kind, user_id, device_id, generation, verified)
    elif not _same_batch(verified, stored):
        raise _duplicates([int(doc["id"]) for doc in stored])
    await store.seed_count(kind, user_id, device_id, generation, min(ids))
    one_time = await store.count_prekeys(Kind.ONE_TIME, user_id, device_id, generation)
    kem = await store.count_prekeys(Kind.KEM, user_id, device_id, generation)
    # A new low spell starts from here (the flag goes even if still low).
    await store.reset_left(user_id, device_id, one_time, kem, clear_low=True)
    return models.Stored(
        device_id=device_id, stored=len(verified), one_time=one_time, kem_one_time=kem
    )


def _same_batch(verified: list[verify.VerifiedPrekey], stored: list[dict[str, Any]]) -> bool:
    """Every prekey of the batch is stored exactly as sent (a retry of the same batch)."""
    sent = sorted((p.doc() for p in verified), key=lambda doc: int(doc["id"]))
    fields = ("id", "key", "sig")
    return len(sent) == len(stored) and all(
        [a.get(f) for f in fields] == [b.get(f) for f in fields]
        for a, b in zip(sent, stored, strict=True)
    )


async def _insert(
    keys: Keys,
    kind: Kind,
    user_id: str,
    device_id: int,
    generation: int,
    verified: list[verify.VerifiedPrekey],
) -> None:
    """Insert a checked batch whose ids are all new, within the cap; or nothing."""
    store, config = keys.store, keys.config
    ids = [p.id for p in verified]
    held = await store.count_prekeys(kind, user_id, device_id, generation)
    if held + len(verified) > config.max_stored:
        raise _too_many_prekeys(config.max_stored, held)
    batch = secrets.token_hex(12)
    try:
        inserted = await store.insert_prekeys(
            kind, user_id, device_id, generation, [p.doc() for p in verified], batch
        )
    except DuplicatePrekeyIds:
        stored = await store.existing_prekeys(kind, user_id, device_id, generation, ids)
        raise _duplicates([int(doc["id"]) for doc in stored]) from None
    current = await store.get_device(user_id, device_id)
    if current is None or int(current["generation"]) != generation:
        # The identity changed (or the device went) while this batch was checked.
        await store.delete_batch(kind, inserted, batch)
        raise _conflict()
    held = await store.count_prekeys(kind, user_id, device_id, generation)
    if held > config.max_stored:
        # Uploads at once each counted before the others inserted: counted again after,
        # a batch that took the stock past the cap goes (each one over: none stays),
        # so concurrent requests cannot pile prekeys up past it.
        await store.delete_batch(kind, inserted, batch)
        raise _too_many_prekeys(config.max_stored, held - len(inserted))


def _duplicates(ids: list[int]) -> ApiError:
    return ApiError(
        ErrorCode.DUPLICATE_PREKEY,
        "Prekey ids must be unique per device; nothing from this batch was stored.",
        details={"ids": ids[:100]},
    )


async def counts(keys: Keys, user_id: str, device_id: int) -> models.Counts:
    device = await device_or_404(keys, user_id, device_id)
    generation = int(device["generation"])
    store = keys.store
    one_time = await store.count_prekeys(Kind.ONE_TIME, user_id, device_id, generation)
    kem = await store.count_prekeys(Kind.KEM, user_id, device_id, generation)
    await store.reset_left(user_id, device_id, one_time, kem)
    return models.Counts(
        device_id=device_id,
        one_time=one_time,
        kem_one_time=kem,
        signed_prekey_id=(device.get("signed_prekey") or {}).get("id"),
        kem_last_resort_id=(device.get("last_resort") or {}).get("id"),
        threshold=keys.config.low_threshold,
    )


async def check(
    keys: Keys, user_id: str, device_id: int, body: models.KeysCheck
) -> models.KeysCheckResult:
    claimed = verify.b64decode(body.digest, "digest", verify.DIGEST_LEN)
    device = await device_or_404(keys, user_id, device_id)
    held = verify.keys_digest(device)
    return models.KeysCheckResult(match=held is not None and hmac.compare_digest(held, claimed))


async def delete(keys: Keys, user_id: str, device_id: int) -> None:
    """Delete a pending device and its keys (a listed one leaves through a new list)."""
    await _refuse_listed(keys, user_id, device_id)
    if not await keys.store.delete_device(user_id, device_id):
        raise ApiError(ErrorCode.DEVICE_NOT_FOUND, details={"device_id": device_id})
    await keys.store.forget_left(user_id, device_id)
    log.info("device removed", extra={"user_id": user_id, "device_id": device_id})


async def _refuse_listed(keys: Keys, user_id: str, device_id: int) -> None:
    if device_id in await _listed(keys, user_id):
        raise ApiError(
            ErrorCode.CONFLICT,
            "This device is in the account's signed device list: publish a list without it.",
            details={"device_id": device_id},
        )


async def remove_as_admin(
    keys: Keys, claims: Claims, ip: str, user_id: str, device_id: int
) -> None:
    """An admin removes another user's pending device (:func:`delete`), and the shared
    audit log says so: ``user.remove_device``, the user as its target, the device in
    ``details``, as the auth service's ``user.revoke_session`` names a session.

    The entry is written once the removal's checks passed (a refused one writes none)
    and before the device is deleted: written after, an audit that failed (a 503) left
    a removal never audited, whose retry answered 404 ``device_not_found``. Now a
    deletion that fails after its entry (a 503) has its entry all the same, and the
    retry writes another (docs/keys.md)."""
    await _refuse_listed(keys, user_id, device_id)
    await device_or_404(keys, user_id, device_id)
    await keys.audit.record(
        Entry(
            actor=Actor(claims.user_id, "admin"), action="user.remove_device",
            target_type="user", target_id=user_id, details={"device_id": device_id}, ip=ip,
        )
    )  # fmt: skip
    await delete(keys, user_id, device_id)
