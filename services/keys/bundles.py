"""Claiming a user's prekey bundles, and reading identities without claiming.

Only the devices of the target's current signed device list are served
(services.keys.accounts), and every answer carries that list, its signature
and the account key, so that the client checks each identity against the
list itself: pending devices (registered, not yet listed) are invisible.

A claim hands out, per listed device of the target user: the identity, the signed
prekey, one one-time X25519 prekey (or none when they ran out) and one
one-time ML-KEM prekey (or the last-resort one when they ran out). Each
one-time prekey is taken with a single ``find_one_and_delete``, so no two
claimers ever get the same one, however many claim at once.

Three budgets, token buckets in Redis (services.common.ratelimit), keep
claims from draining anyone's one-time prekeys (docs/security.md):

- per (claimer, target) pair: ``claim_burst`` tokens, one back every
  ``claim_refill_s`` (6, then 36 an hour): Signal's budget of 6 claims per 10
  minutes per pair without its fixed window (no double burst at its edge);
- per claimer, over all targets: ``claimer_burst`` / ``claimer_refill_s``
  (5,000, then 3,600 an hour: a private room's largest size); past either, 429
  ``rate_limited``;
- per target, the one-time prekeys it hands out to others: ``one_time_burst``
  / ``one_time_refill_s`` (30, then 60 an hour). Past it the claim still
  succeeds, without one-time material (the signed prekey and the last-resort
  ML-KEM prekey): many fresh accounts can neither empty a device's stock nor
  keep others from starting a session with it.

Claims of one's own user (the other devices of the claimer) are not limited:
draining one's own prekeys harms no one else.
"""

from __future__ import annotations

import logging
from typing import Any

from services.common.errors import ApiError, ErrorCode
from services.keys import accounts, events, models
from services.keys.state import Keys
from services.keys.store import Kind

log = logging.getLogger(__name__)


async def claim(
    keys: Keys, claimer: str, target: str, device_ids: set[int] | None = None
) -> models.Bundles:
    """One bundle per listed device of ``target`` (or per listed device in ``device_ids``)."""
    await _spend_claim(keys, claimer, target)
    one_time = claimer == target or await keys.limiter.try_take(
        "one-time", target, keys.config.one_time_burst, keys.config.one_time_refill_s
    )
    if not one_time:
        keys.metrics.withheld.inc()
        log.info("one-time prekeys withheld", extra={"user_id": target})
    account = await accounts.current(keys, target)
    listed = list(account.device_ids)
    if device_ids is not None:
        listed = [d for d in listed if d in device_ids]
        if not listed:
            raise ApiError(ErrorCode.DEVICE_NOT_FOUND, details={"device_ids": sorted(device_ids)})
    devices = await keys.store.get_devices(target, listed)
    bundles = []
    for device in devices:
        bundle = await _claim_device(keys, target, device, one_time)
        if bundle is not None:
            bundles.append(bundle)
    if not bundles:
        raise ApiError(
            ErrorCode.PREKEYS_EXHAUSTED,
            "No device of this user has a signed prekey and an ML-KEM prekey to offer.",
        )
    for claimed in bundles if one_time else ():
        await _notify_if_low(keys, target, claimed)
    return models.Bundles(**account.listed(), bundles=[b.bundle for b in bundles])


async def _spend_claim(keys: Keys, claimer: str, target: str) -> None:
    """Tokens for ``claimer`` claiming ``target``'s bundles, or 429 ``rate_limited``."""
    if claimer == target:
        return
    await keys.limiter.take(
        "claims-by", claimer, keys.config.claimer_burst, keys.config.claimer_refill_s,
        message="Too many bundle claims from this account; try again later.",
    )  # fmt: skip
    await keys.limiter.take(
        "claims",
        # Length-prefixed so that no pair of ids can produce another pair's key.
        f"{len(claimer)}:{claimer}:{target}",
        keys.config.claim_burst,
        keys.config.claim_refill_s,
        message="Too many bundle claims for this user; try again later.",
    )


class _Claimed:
    __slots__ = ("bundle", "device_id", "generation", "kem", "one_time")

    def __init__(self, bundle: models.Bundle, generation: int) -> None:
        self.bundle = bundle
        self.device_id = bundle.device_id
        self.generation = generation
        self.one_time = bundle.one_time_prekey is not None
        self.kem = not bundle.kem_prekey.last_resort


async def _claim_device(
    keys: Keys, user_id: str, device: dict[str, Any], one_time_ok: bool = True
) -> _Claimed | None:
    """Claim from one device; None (and nothing taken) if it cannot make a bundle.

    Without ``one_time_ok`` no one-time prekey of either kind is taken: the
    bundle has the last-resort ML-KEM prekey and no one-time X25519 prekey.
    """
    signed = device.get("signed_prekey")
    if signed is None:
        return None
    device_id = int(device["device_id"])
    generation = int(device["generation"])
    # The KEM prekey first: without one (and no last resort) there is no
    # bundle, and a one-time X25519 prekey must not be wasted.
    kem = None
    if one_time_ok:
        kem = await keys.store.claim_prekey(Kind.KEM, user_id, device_id, generation)
    last_resort = kem is None
    if kem is None:
        kem = device.get("last_resort")
        if kem is None:
            return None
    one_time = None
    if one_time_ok:
        one_time = await keys.store.claim_prekey(Kind.ONE_TIME, user_id, device_id, generation)
    bundle = models.Bundle(
        user_id=user_id,
        device_id=device_id,
        identity=models.Identity.model_validate(device["identity"]),
        signed_prekey=models.SignedPrekey.model_validate(signed),
        one_time_prekey=None if one_time is None else models.OneTimePrekey.model_validate(one_time),
        kem_prekey=models.ClaimedKemPrekey.model_validate({**kem, "last_resort": last_resort}),
    )
    return _Claimed(bundle, generation)


async def _notify_if_low(keys: Keys, user_id: str, claimed: _Claimed) -> None:
    """Publish ``prekeys_low`` once per low spell (until the device uploads or the flag expires).

    Redis estimates spare the common case any counting; only when they say
    "low" is MongoDB counted, and only the real count decides.
    """
    store, t = keys.store, keys.config.low_threshold
    device_id, generation = claimed.device_id, claimed.generation
    keys.metrics.claim(claimed.one_time, claimed.kem)
    one_time, kem, flagged = await store.note_claim(
        user_id, device_id, claimed.one_time, claimed.kem
    )
    if flagged or (one_time >= t and kem >= t):
        keys.metrics.observe_stock(one_time, kem)
        return
    one_time = await _count(keys, Kind.ONE_TIME, user_id, device_id, generation)
    kem = await _count(keys, Kind.KEM, user_id, device_id, generation)
    keys.metrics.observe_stock(one_time, kem)
    await store.reset_left(user_id, device_id, one_time, kem)
    if one_time >= t and kem >= t:
        return  # the estimate had drifted
    if not await store.flag_low(user_id, device_id, keys.config.low_notify_interval_s):
        return  # another claim got there first
    log.info(
        "prekeys low",
        extra={"user_id": user_id, "device_id": device_id, "one_time": one_time, "kem": kem},
    )
    await keys.events.publish(events.prekeys_low(user_id, device_id, one_time, kem, t))
    keys.metrics.low.inc()


async def _count(keys: Keys, kind: Kind, user_id: str, device_id: int, generation: int) -> int:
    """The exact count, cheaply when it is small (as it is when prekeys run low)."""
    t = keys.config.low_threshold
    n = await keys.store.count_prekeys_upto(kind, user_id, device_id, generation, t)
    if n < t:
        return n
    return await keys.store.count_prekeys(kind, user_id, device_id, generation)


async def identities(keys: Keys, user_id: str) -> models.UserIdentities:
    """Every listed device's identity and the signed list, claiming nothing."""
    account = await accounts.current(keys, user_id)
    devices = await keys.store.get_devices(user_id, account.device_ids)
    return models.UserIdentities(
        **account.listed(),
        devices=[
            models.DeviceIdentity(
                device_id=int(d["device_id"]),
                identity=models.Identity.model_validate(d["identity"]),
            )
            for d in devices
        ],
    )
