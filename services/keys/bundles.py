"""Claiming a user's prekey bundles, and reading identities without claiming.

Only the devices of the target's current signed device list are served
(services.keys.accounts), and every answer carries that list, its signature
and the account key, so that the client checks each identity against the
list itself: pending devices (registered, not yet listed) are invisible.

A claim hands out, per listed device of the target user: the identity, the signed
prekey, one one-time X25519 prekey (or none when they ran out) and one
one-time ML-KEM prekey (or the last-resort one when they ran out). The one-time
prekeys of every device claimed are taken together
(:meth:`~services.keys.store.KeyStore.claim_slots`): no two claimers ever get
the same one, however many claim at once.

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

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from services.common.errors import ApiError, ErrorCode
from services.common.ratelimit import too_many
from services.keys import accounts, events, models
from services.keys.state import Keys
from services.keys.store import Kind

log = logging.getLogger(__name__)

# Users of one bulk claim worked on at once (each a few MongoDB and Redis round trips).
CLAIMS_AT_ONCE = 16


async def claim(
    keys: Keys, claimer: str, target: str, device_ids: set[int] | None = None
) -> models.Bundles:
    """One bundle per listed device of ``target`` (or per listed device in ``device_ids``)."""
    if claimer != target:
        await _spend_claimer(keys, claimer, 1)
    # Before the look-up: a claim of an unknown user counts too.
    for refused in (await _spend_pairs(keys, claimer, [target])).values():
        raise refused
    account = await accounts.current(keys, target)
    devices = await keys.store.get_devices(target, _wanted(account, device_ids))
    [one_time] = (await _one_time_allowed(keys, claimer, [target])).values()
    [result] = await _claim(keys, [(account, devices, one_time)])
    if isinstance(result, ApiError):
        raise result
    return result


async def claim_many(
    keys: Keys, claimer: str, targets: Mapping[str, models.ClaimWanted]
) -> models.ClaimedBundles:
    """:func:`claim` for each of many users (``models.ClaimsQuery``: at most
    ``MAX_CLAIM_USERS``, by user id), with the accounts and devices read in one
    query each. The claimer's budget is spent for all of them at once (429 for the
    request, nothing claimed, when it lacks that many); every other refusal (no
    account, no such device, no prekeys, the pair's budget) is that user's alone,
    in ``failed``."""
    others = sum(1 for user in targets if user != claimer)
    if others:
        await _spend_claimer(keys, claimer, others)
    found = await accounts.current_many(keys, list(targets))
    failed: dict[str, ApiError] = {}
    wanted: dict[str, list[int]] = {}
    for user, want in targets.items():
        account = found.get(user)
        try:
            if account is None:
                raise accounts.identity_not_found(user)
            only = None if want.device_ids is None else set(want.device_ids)
            wanted[user] = _wanted(account, only)
        except ApiError as exc:
            failed[user] = exc
    docs: dict[str, list[dict[str, Any]]] = {u: [] for u in wanted}
    pairs = [(u, d) for u, ds in wanted.items() for d in ds]
    for doc in await keys.store.get_devices_of(pairs):
        docs[str(doc["user_id"])].append(doc)
    # Two Redis round trips for all of them (they were two a user).
    results: dict[str, models.Bundles | ApiError] = dict(
        await _spend_pairs(keys, claimer, list(wanted))
    )
    going = [u for u in wanted if u not in results]
    allowed = await _one_time_allowed(keys, claimer, going)
    claims = [
        (found[u], sorted(docs[u], key=lambda d: int(d["device_id"])), allowed[u]) for u in going
    ]
    results.update(zip(going, await _claim(keys, claims), strict=True))
    claimed = []
    for user in targets:
        result = results.get(user) or failed[user]
        if isinstance(result, ApiError):
            failed[user] = result
        else:
            claimed.append(result)
    return models.ClaimedBundles(
        claimed=claimed,
        failed=[
            models.ClaimFailure(user_id=user, code=e.code.value, message=e.message)
            for user in targets
            if (e := failed.get(user)) is not None
        ],
    )


def _wanted(account: accounts.Account, device_ids: set[int] | None) -> list[int]:
    """The listed devices a claim is for: all, or those of ``device_ids`` (404
    ``device_not_found`` when it names none of them)."""
    listed = list(account.device_ids)
    if device_ids is not None:
        listed = [d for d in listed if d in device_ids]
        if not listed:
            raise ApiError(ErrorCode.DEVICE_NOT_FOUND, details={"device_ids": sorted(device_ids)})
    return listed


Claim = tuple[accounts.Account, list[dict[str, Any]], bool]
"""A user's claim: the account, the devices claimed from (ascending id) and whether
one-time prekeys may be taken."""


async def _claim(keys: Keys, claims: Sequence[Claim]) -> list[models.Bundles | ApiError]:
    """A bundle from each device of each claim (``prekeys_exhausted`` for a user none of
    whose devices can make one), the one-time prekeys of all of them taken in bulk
    (:meth:`KeyStore.claim_slots`: each still at most once).

    A device with a last-resort ML-KEM prekey makes a bundle in any case: both kinds
    are taken at once. One without: its ML-KEM prekey first, its one-time X25519 one
    only if that came (with neither it has no bundle, and the X25519 prekey must not be
    wasted on it). Without one-time prekeys
    allowed, a bundle has the last-resort ML-KEM prekey and no one-time X25519 prekey.
    """
    slots = [
        (c, device)
        for c, (_, devices, _) in enumerate(claims)
        for device in devices
        if device.get("signed_prekey") is not None
    ]

    def where(i: int) -> tuple[str, int, int]:
        c, device = slots[i]
        return claims[c][0].user_id, int(device["device_id"]), int(device["generation"])

    async def take(wanted: list[tuple[Kind, int]]) -> list[dict[str, Any] | None]:
        return await keys.store.claim_slots([(kind, *where(i)) for kind, i in wanted])

    kems: dict[int, dict[str, Any] | None] = dict.fromkeys(range(len(slots)))
    one_time: dict[int, dict[str, Any] | None] = dict.fromkeys(range(len(slots)))
    taking = [i for i, (c, _) in enumerate(slots) if claims[c][2]]
    # A device with a last-resort prekey makes a bundle whatever its one-time ML-KEM
    # prekeys: both kinds are taken at once (one Redis round trip for a one-user claim).
    sure = [i for i in taking if slots[i][1].get("last_resort") is not None]
    unsure = [i for i in taking if slots[i][1].get("last_resort") is None]
    wanted = [(Kind.KEM, i) for i in sure + unsure] + [(Kind.ONE_TIME, i) for i in sure]
    for (kind, i), doc in zip(wanted, await take(wanted), strict=True):
        (kems if kind is Kind.KEM else one_time)[i] = doc
    last_resort = {i for i, kem in kems.items() if kem is None}
    for i in last_resort:
        kems[i] = slots[i][1].get("last_resort")
    if after := [(Kind.ONE_TIME, i) for i in unsure if kems[i] is not None]:
        for (_, i), doc in zip(after, await take(after), strict=True):
            one_time[i] = doc
    bundles: list[list[_Claimed]] = [[] for _ in claims]
    for i, (c, device) in enumerate(slots):
        kem = kems[i]
        if kem is None:
            continue
        user_id, device_id, generation = where(i)
        otp = one_time[i]
        bundle = models.Bundle(
            user_id=user_id,
            device_id=device_id,
            identity=models.Identity.model_validate(device["identity"]),
            signed_prekey=models.SignedPrekey.model_validate(device["signed_prekey"]),
            one_time_prekey=None if otp is None else models.OneTimePrekey.model_validate(otp),
            kem_prekey=models.ClaimedKemPrekey.model_validate(
                {**kem, "last_resort": i in last_resort}
            ),
        )
        bundles[c].append(_Claimed(bundle, generation))
    try:
        await _note_claims(
            keys,
            [(claims[c][0].user_id, b) for c, mine in enumerate(bundles) if claims[c][2]
             for b in mine],
        )  # fmt: skip
    except Exception:
        # The prekeys are taken (deleted) already: a failure of the low-stock notice,
        # which is best effort, must not turn the claim into an error (its prekeys
        # would be spent for an answer nobody gets, and the retry would take more).
        log.exception("prekeys_low not checked after a claim")
    return [
        models.Bundles(**account.listed(), bundles=[b.bundle for b in mine])
        if mine
        else ApiError(
            ErrorCode.PREKEYS_EXHAUSTED,
            "No device of this user has a signed prekey and an ML-KEM prekey to offer.",
        )
        for (account, _, _), mine in zip(claims, bundles, strict=True)
    ]


async def _spend_claimer(keys: Keys, claimer: str, n: int) -> None:
    """``n`` tokens of ``claimer``'s budget over all targets, or 429 ``rate_limited``."""
    await keys.limiter.take(
        "claims-by", claimer, keys.config.claimer_burst, keys.config.claimer_refill_s,
        message="Too many bundle claims from this account; try again later.", n=n,
    )  # fmt: skip


PAIR_REFUSED = "Too many bundle claims for this user; try again later."


def _pair(claimer: str, target: str) -> str:
    """The (claimer, target) budget's id: length-prefixed so that no pair of ids can
    produce another pair's."""
    return f"{len(claimer)}:{claimer}:{target}"


async def _spend_pairs(keys: Keys, claimer: str, users: list[str]) -> dict[str, ApiError]:
    """A token of each (``claimer``, user) budget, in one Redis round trip; returns the
    429s of the users whose budget is spent (nothing taken for them). The claimer's
    own devices are not limited."""
    others = [u for u in users if u != claimer]
    cfg = keys.config
    waits = await keys.limiter.take_each(
        "claims", [_pair(claimer, u) for u in others], cfg.claim_burst, cfg.claim_refill_s
    )
    return {
        u: too_many(wait, message=PAIR_REFUSED)
        for u, wait in zip(others, waits, strict=True)
        if wait is not None
    }


async def _one_time_allowed(keys: Keys, claimer: str, users: list[str]) -> dict[str, bool]:
    """Whether each user's one-time budget lets this claim take its one-time prekeys
    (a token of it taken if so), in one Redis round trip."""
    others = [u for u in users if u != claimer]
    cfg = keys.config
    waits = await keys.limiter.take_each(
        "one-time", others, cfg.one_time_burst, cfg.one_time_refill_s, count_refused=False
    )
    out = dict.fromkeys(users, True)
    for u, wait in zip(others, waits, strict=True):
        if wait is not None:
            out[u] = False
            keys.metrics.withheld.inc()
            log.info("one-time prekeys withheld", extra={"user_id": u})
    return out


class _Claimed:
    __slots__ = ("bundle", "device_id", "generation", "kem", "one_time")

    def __init__(self, bundle: models.Bundle, generation: int) -> None:
        self.bundle = bundle
        self.device_id = bundle.device_id
        self.generation = generation
        self.one_time = bundle.one_time_prekey is not None
        self.kem = not bundle.kem_prekey.last_resort


async def _note_claims(keys: Keys, claimed: list[tuple[str, _Claimed]]) -> None:
    """Publish ``prekeys_low`` once per low spell (until the device uploads or the flag
    expires) for the devices these claims (user, bundle) took from.

    Redis estimates, read for all of them in one round trip, spare the common case
    any counting; only a device they say is low is counted in MongoDB, and only the
    real count decides.
    """
    if not claimed:
        return
    t = keys.config.low_threshold
    notes = await keys.store.note_claims(
        [(user, c.device_id, c.one_time, c.kem) for user, c in claimed]
    )
    low = []
    for (user, c), (one_time, kem, flagged) in zip(claimed, notes, strict=True):
        keys.metrics.claim(c.one_time, c.kem)
        if flagged or (one_time >= t and kem >= t):
            keys.metrics.observe_stock(one_time, kem)
        else:
            low.append((user, c))
    gate = asyncio.Semaphore(CLAIMS_AT_ONCE)

    async def check(user_id: str, claimed: _Claimed) -> None:
        async with gate:
            await _check_low(keys, user_id, claimed)

    await asyncio.gather(*(check(user, c) for user, c in low))


async def _check_low(keys: Keys, user_id: str, claimed: _Claimed) -> None:
    """A device the estimates say is low: counted, and told if it is."""
    store, t = keys.store, keys.config.low_threshold
    device_id, generation = claimed.device_id, claimed.generation
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
    try:
        await keys.events.publish(events.prekeys_low(user_id, device_id, one_time, kem, t))
    except Exception:
        # Not recorded (the outbox write failed): the flag goes too, so that the next
        # claim tells the device (it kept the event from being sent for the whole spell).
        await store.unflag_low(user_id, device_id)
        raise
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
