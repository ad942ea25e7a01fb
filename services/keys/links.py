"""Linking a new device: the directory's part (docs/devices.md, "Linking a new device").

1. The new device registers its keys (it is then *pending*) and posts a link:
   ``link_id`` (the first 8 bytes of its link code), its device id and name.
2. An existing device of the same account, given the code, reads the link
   (the pending device's identity, to show its fingerprint), publishes a
   device list that adds it, and posts its approval: a sealed blob that only
   the new device can open (docs/crypto.md). The directory stores it as is.
3. The new device reads the link again and finds the approval.

A link lives ``link_ttl_s`` (10 minutes) in Redis and is approved at most
once. Links belong to the caller's own account: another user's link id reads
as unknown, never as forbidden. New links are rate-limited per user.

A link **pins** its device's identity: it records the identity the device had
when the link was posted, and the session that posted it. While it is live and
not approved, no other session can give the device another identity
(:func:`services.keys.devices.register_identity`, ``conflict``): someone else
holding the account's password could otherwise swap in keys of their own for
the approver to sign into the list. And a link whose device no longer has the
pinned identity (taken some other way: deleted and registered again) reads as
unknown, so it can no longer be approved.

The new device may post ``e_pub``, the key part of its code: the approver
compares it with the code it was given to catch a typo. Only a check: the
approver seals to the code's key, so a server lying about it can only make the
approval fail.
"""

from __future__ import annotations

import logging
from typing import Any

from services.common.auth import Claims
from services.common.errors import ApiError, ErrorCode
from services.keys import accounts, devices, models, verify
from services.keys.state import Keys

log = logging.getLogger(__name__)


def _not_found() -> ApiError:
    return ApiError(ErrorCode.NOT_FOUND, "No such link (unknown, expired, or not yours).")


def _taken() -> ApiError:
    return ApiError(ErrorCode.CONFLICT, "This link id is taken; make a new link code.")


def _state(link: dict[str, Any], device: dict[str, Any]) -> models.LinkState:
    approval = link["approval"]
    return models.LinkState(
        link_id=link["link_id"],
        device_id=link["device_id"],
        name=link["name"],
        identity=models.Identity.model_validate(device["identity"]),
        approval=None if approval is None else models.LinkApproval(sealed=approval),
        e_pub=link.get("e_pub"),
    )


async def create(keys: Keys, claims: Claims, body: models.LinkCreate) -> models.LinkState:
    """A link for the caller's own pending device."""
    link_id = verify.link_id(body.link_id)
    verify.check_text(body.name, "name")
    e_pub = None if body.e_pub is None else verify.link_e_pub(body.e_pub)
    if claims.did is not None and claims.did != body.device_id:
        raise ApiError(ErrorCode.FORBIDDEN, "A device links itself only.")
    user_id = claims.user_id
    device = await devices.device_or_404(keys, user_id, body.device_id)
    account = await accounts.get(keys, user_id)
    if account is not None and body.device_id in account.device_ids:
        raise ApiError(
            ErrorCode.CONFLICT,
            "This device is already in the account's device list. If it never finished "
            "linking (closed after the approval), remove it from another device and link "
            "it again.",
            details={"device_id": body.device_id},
        )
    # A link id the user has live is refused before the limit: a refusal creates nothing
    # and should cost no new link (only two posts of one id at once can both pass here;
    # the create refuses the second, its token spent).
    if await keys.store.get_link(user_id, link_id) is not None:
        raise _taken()
    await keys.limiter.hit("links", user_id, keys.config.link_limit)
    ttl_s = keys.config.link_ttl_s
    created = await keys.store.create_link(
        user_id, link_id, body.device_id, body.name, ttl_s,
        sid=claims.sid, identity=device["identity"], e_pub=e_pub,
    )  # fmt: skip
    if not created:
        raise _taken()
    log.info("link created", extra={"user_id": user_id, "device_id": body.device_id})
    link = {
        "link_id": link_id, "device_id": body.device_id, "name": body.name,
        "approval": None, "e_pub": e_pub,
    }  # fmt: skip
    return _state(link, device)


async def read(keys: Keys, claims: Claims, link_id: str) -> models.LinkState:
    """A link of the caller's account (the new device polls it; the approver reads it)."""
    link = await keys.store.get_link(claims.user_id, verify.link_id(link_id))
    if link is None:
        raise _not_found()
    device = await keys.store.get_device(claims.user_id, link["device_id"])
    if device is None:
        raise _not_found()  # the pending device went away: the link is useless
    if not devices.link_pins(link, device["identity"]):
        # The device has keys other than those it posted the link with (deleted and
        # registered again by someone else): that is not the device the code is for.
        log.warning(
            "link read with another identity than pinned",
            extra={"user_id": claims.user_id, "device_id": link["device_id"]},
        )
        raise _not_found()
    return _state(link, device)


async def cancel(keys: Keys, claims: Claims, link_id: str) -> None:
    """Delete a link, by the device that posted it (its user cancelled linking): its
    code can no longer be approved. An approved link stays (open it, or remove the
    device from another one)."""
    link_id = verify.link_id(link_id)
    user_id = claims.user_id
    link = await keys.store.get_link(user_id, link_id)
    if link is None:
        raise _not_found()
    if claims.did is not None and claims.did != link["device_id"]:
        raise ApiError(ErrorCode.FORBIDDEN, "Only the device that posted a link cancels it.")
    account = await accounts.get(keys, user_id)
    if account is not None and int(link["device_id"]) in account.device_ids:
        # An approver has published the list naming the device and is about to post the
        # approval: withdrawn now, the device would stay listed without the account key
        # (and taking it off the list again is a removal: its id revoked). Kept, as an
        # approved link is: the device opens the approval a moment later.
        raise ApiError(
            ErrorCode.CONFLICT,
            "This device is being approved (the account lists it already): open the approval.",
        )
    done = await keys.store.cancel_link(user_id, link_id)
    if done < 0:
        raise _not_found()  # expired meanwhile
    if done == 0:
        raise ApiError(
            ErrorCode.CONFLICT,
            "This link was approved already: open the approval, or remove the device "
            "from another one.",
        )
    log.info("link cancelled", extra={"user_id": user_id, "device_id": link["device_id"]})


async def approve(keys: Keys, claims: Claims, link_id: str, body: models.LinkApproval) -> None:
    """Store the approval (opaque to the server), once, from another device."""
    link_id = verify.link_id(link_id)
    verify.sealed(body.sealed)
    user_id = claims.user_id
    link = await keys.store.get_link(user_id, link_id)
    if link is None:
        raise _not_found()
    if claims.did is not None:
        if claims.did == link["device_id"]:
            raise ApiError(ErrorCode.FORBIDDEN, "A device cannot approve its own link.")
        account = await accounts.get(keys, user_id)
        if account is None or claims.did not in account.device_ids:
            raise ApiError(
                ErrorCode.FORBIDDEN, "Only a device in the account's device list approves."
            )
    done = await keys.store.approve_link(user_id, link_id, body.sealed)
    if done < 0:
        raise _not_found()  # expired meanwhile
    if done == 0:
        raise ApiError(ErrorCode.CONFLICT, "This link was already approved.")
    log.info("link approved", extra={"user_id": user_id, "device_id": link["device_id"]})
