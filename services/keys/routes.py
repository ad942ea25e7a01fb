"""HTTP routes of the key directory (thin: parse, call the handler, answer).

Every route needs a token: the route decorator (services.common.openapi)
checks it before the body and hands the handler ``claims=``.

``/keys/v1/devices/{device_id}/...`` always means a device of the caller
(the user id comes from the access token; a session bound to a device, with
``did``, may only address that device); ``/keys/v1/users/{user_id}/...``
reads (and claims) another user's keys; ``/keys/v1/account``,
``/keys/v1/device-list`` and ``/keys/v1/links`` are the caller's account.
docs/keys.md describes every route.
"""

from __future__ import annotations

from aiohttp import web
from parley_contract.frames import is_b64url

from services.common.auth import MAX_USER_ID, Claims
from services.common.errors import ApiError, ErrorCode
from services.common.http import client_ip, int_schema, json_response, parse_int
from services.common.openapi import Api
from services.keys import accounts, bundles, devices, links, models
from services.keys.config import MAX_CLAIM_USERS, MAX_LIST_USERS
from services.keys.state import KEYS

api = Api(
    "Parley keys",
    "0.1.0",
    "The key directory: account keys and signed device lists, device identity keys, "
    "signed prekeys, one-time X25519 and ML-KEM-768 prekeys, single-use prekey bundles, "
    "and links for new devices. Binary values are base64url without padding. "
    "See docs/keys.md.",
)

DEVICE = "/v1/devices/{device_id}"
USER = "/v1/users/{user_id}"
LINKS = "/v1/links"

_E = ErrorCode
_KEY_ERRORS = [_E.INVALID_KEY, _E.INVALID_SIGNATURE, _E.DEVICE_NOT_FOUND, _E.CONFLICT, _E.FORBIDDEN]
_BATCH_ERRORS = [*_KEY_ERRORS, _E.BATCH_TOO_LARGE, _E.DUPLICATE_PREKEY, _E.TOO_MANY_PREKEYS]


# The path and query parameters, as documented and as checked (422 validation_failed).
DEVICE_ID = int_schema(1, models.DEVICE_ID_MAX)
USER_ID = {
    "type": "string", "minLength": 1, "maxLength": MAX_USER_ID, "pattern": models.USER_ID_PATTERN,
}  # fmt: skip
LINK_ID = {"type": "string", "pattern": models.LINK_ID_PATTERN}
_DEVICE = {"device_id": DEVICE_ID}
_USER = {"user_id": USER_ID}
_LINK = {"link_id": LINK_ID}


def _device_id(text: str, name: str = "device_id") -> int:
    return parse_int(text, name, 1, models.DEVICE_ID_MAX)


def device_id_of(request: web.Request) -> int:
    return _device_id(request.match_info["device_id"])


def own_device(request: web.Request, claims: Claims) -> int:
    """The ``{device_id}`` of a device route: any of the caller's devices, or, for a
    session bound to a device (``did``), that device only (403 ``forbidden``)."""
    device_id = device_id_of(request)
    if claims.did is not None and claims.did != device_id:
        raise ApiError(
            _E.FORBIDDEN,
            "This session belongs to another device of the account.",
            details={"device_id": device_id},
        )
    return device_id


def user_id_of(request: web.Request) -> str:
    user_id = request.match_info["user_id"]
    if not 0 < len(user_id) <= MAX_USER_ID or not is_b64url(user_id):
        raise ApiError(
            _E.VALIDATION_FAILED,
            "Not a user id.",
            details=[{"field": "user_id", "problem": "not a user id"}],
        )
    return user_id


@api.put(
    DEVICE + "/identity",
    summary="Register this device's identity (a different one is a key change)",
    body=models.Identity,
    response=models.IdentityRegistered,
    auth=True,
    params={**_DEVICE},
    guard=own_device,
    errors=[_E.INVALID_KEY, _E.INVALID_SIGNATURE, _E.TOO_MANY_DEVICES, _E.CONFLICT, _E.FORBIDDEN],
    tags=["devices"],
)
async def put_identity(
    request: web.Request, claims: Claims, body: models.Identity
) -> models.IdentityRegistered:
    device_id = own_device(request, claims)
    return await devices.register_identity(
        request.app[KEYS], claims.user_id, device_id, body, claims.sid
    )


@api.put(
    DEVICE + "/signed-prekey",
    summary="Set this device's signed prekey (signed by its identity)",
    body=models.SignedPrekey,
    status=204,
    auth=True,
    params={**_DEVICE},
    guard=own_device,
    errors=_KEY_ERRORS,
    tags=["devices"],
)
async def put_signed_prekey(
    request: web.Request, claims: Claims, body: models.SignedPrekey
) -> None:
    device_id = own_device(request, claims)
    await devices.set_signed_prekey(request.app[KEYS], claims.user_id, device_id, body)


@api.post(
    DEVICE + "/one-time-prekeys",
    summary="Upload one-time X25519 prekeys (at most 100; all stored or none)",
    body=models.OneTimePrekeyBatch,
    response=models.Stored,
    status=201,
    auth=True,
    params={**_DEVICE},
    guard=own_device,
    errors=_BATCH_ERRORS,
    tags=["devices"],
)
async def post_one_time(
    request: web.Request, claims: Claims, body: models.OneTimePrekeyBatch
) -> models.Stored:
    device_id = own_device(request, claims)
    return await devices.upload_one_time(request.app[KEYS], claims.user_id, device_id, body.prekeys)


@api.post(
    DEVICE + "/kem-prekeys",
    summary="Upload signed one-time ML-KEM-768 prekeys (at most 100; all stored or none)",
    body=models.KemPrekeyBatch,
    response=models.Stored,
    status=201,
    auth=True,
    params={**_DEVICE},
    guard=own_device,
    errors=_BATCH_ERRORS,
    tags=["devices"],
)
async def post_kem(
    request: web.Request, claims: Claims, body: models.KemPrekeyBatch
) -> models.Stored:
    device_id = own_device(request, claims)
    return await devices.upload_kem(request.app[KEYS], claims.user_id, device_id, body.prekeys)


@api.put(
    DEVICE + "/kem-last-resort",
    summary="Set this device's last-resort ML-KEM-768 prekey (signed by its identity)",
    body=models.KemPrekey,
    status=204,
    auth=True,
    params={**_DEVICE},
    guard=own_device,
    errors=_KEY_ERRORS,
    tags=["devices"],
)
async def put_last_resort(request: web.Request, claims: Claims, body: models.KemPrekey) -> None:
    device_id = own_device(request, claims)
    await devices.set_last_resort(request.app[KEYS], claims.user_id, device_id, body)


@api.get(
    DEVICE + "/counts",
    summary="How many one-time prekeys of each kind this device still has",
    response=models.Counts,
    auth=True,
    params={**_DEVICE},
    guard=own_device,
    errors=[_E.DEVICE_NOT_FOUND, _E.FORBIDDEN],
    tags=["devices"],
)
async def get_counts(request: web.Request, claims: Claims) -> models.Counts:
    return await devices.counts(request.app[KEYS], claims.user_id, own_device(request, claims))


@api.post(
    DEVICE + "/check",
    summary="Compare a digest of what the device believes the server holds",
    body=models.KeysCheck,
    response=models.KeysCheckResult,
    auth=True,
    params={**_DEVICE},
    guard=own_device,
    errors=[_E.INVALID_KEY, _E.DEVICE_NOT_FOUND, _E.FORBIDDEN],
    tags=["devices"],
)
async def post_check(
    request: web.Request, claims: Claims, body: models.KeysCheck
) -> models.KeysCheckResult:
    device_id = own_device(request, claims)
    return await devices.check(request.app[KEYS], claims.user_id, device_id, body)


@api.delete(
    DEVICE,
    summary="Remove this pending device and all its keys (a listed one: publish a new list)",
    status=204,
    auth=True,
    params={**_DEVICE},
    guard=own_device,
    errors=[_E.DEVICE_NOT_FOUND, _E.FORBIDDEN, _E.CONFLICT],
    tags=["devices"],
)
async def delete_device(request: web.Request, claims: Claims) -> None:
    await devices.delete(request.app[KEYS], claims.user_id, own_device(request, claims))


@api.delete(
    USER + "/devices/{device_id}",
    summary="Remove a pending device of a user (the user themself, or an admin: audited)",
    status=204,
    auth=True,
    params={**_USER, **_DEVICE},
    errors=[_E.FORBIDDEN, _E.DEVICE_NOT_FOUND, _E.CONFLICT],
    tags=["users"],
)
async def delete_user_device(request: web.Request, claims: Claims) -> None:
    user_id = user_id_of(request)
    if claims.is_admin and user_id != claims.user_id:
        # Another user's device: an admin action, audited.
        await devices.remove_as_admin(
            request.app[KEYS], claims, client_ip(request, True), user_id, device_id_of(request)
        )
        return
    if claims.is_admin:
        device_id = device_id_of(request)
    elif user_id != claims.user_id:
        raise ApiError(_E.FORBIDDEN, "Only the user or an admin may remove a user's device.")
    else:
        # The user's own device: a session bound to a device reaches that one only, as
        # on ``DELETE /v1/devices/{device_id}`` (this route bypassed the binding).
        device_id = own_device(request, claims)
    await devices.delete(request.app[KEYS], user_id, device_id)


@api.get(
    USER + "/devices",
    summary="A user's account key and signed device list",
    response=models.UserDevices,
    auth=True,
    params={**_USER},
    errors=[_E.IDENTITY_NOT_FOUND],
    tags=["users"],
)
async def get_devices(request: web.Request, claims: Claims) -> models.UserDevices:
    return await accounts.user_devices(request.app[KEYS], user_id_of(request))


@api.get(
    USER + "/bundles",
    summary="Claim a prekey bundle for each listed device of a user (rate-limited per pair)",
    response=models.Bundles,
    auth=True,
    errors=[
        _E.IDENTITY_NOT_FOUND,
        _E.DEVICE_NOT_FOUND,
        _E.PREKEYS_EXHAUSTED,
        _E.RATE_LIMITED,
    ],
    tags=["users"],
    query={"device_id": "Only these devices (comma-separated device ids)."},
    params={
        **_USER,
        "device_id": {
            "type": "array",
            "items": DEVICE_ID,
            "minItems": 1,
            "maxItems": models.MAX_WANTED,
        },
    },
)
async def get_bundles(request: web.Request, claims: Claims) -> web.Response:
    target = user_id_of(request)
    wanted: set[int] | None = None
    if "device_id" in request.query:
        raw = request.query["device_id"].split(",")
        if len(raw) > models.MAX_WANTED:
            raise ApiError(_E.VALIDATION_FAILED, "Too many device ids.")
        wanted = {_device_id(part) for part in raw}
    result = await bundles.claim(request.app[KEYS], claims.user_id, target, wanted)
    # A claim consumes prekeys: nothing on the way may cache or replay it.
    return json_response(result, headers={"Cache-Control": "no-store"})


@api.post(
    "/v1/users/device-lists",
    summary=f"Many users' account keys and signed device lists (at most {MAX_LIST_USERS})",
    body=models.DeviceListsQuery,
    response=models.DeviceLists,
    auth=True,
    tags=["users"],
)
async def post_device_lists(
    request: web.Request, claims: Claims, body: models.DeviceListsQuery
) -> models.DeviceLists:
    return await accounts.device_lists(request.app[KEYS], body.user_ids)


@api.post(
    "/v1/users/bundles",
    summary=f"Claim the bundles of many users at once (at most {MAX_CLAIM_USERS})",
    body=models.ClaimsQuery,
    response=models.ClaimedBundles,
    auth=True,
    errors=[_E.RATE_LIMITED],
    tags=["users"],
)
async def post_bundles(
    request: web.Request, claims: Claims, body: models.ClaimsQuery
) -> web.Response:
    result = await bundles.claim_many(request.app[KEYS], claims.user_id, body.users)
    return json_response(result, headers={"Cache-Control": "no-store"})


@api.get(
    USER + "/identity",
    summary="Read a user's listed device identities without claiming anything",
    response=models.UserIdentities,
    auth=True,
    params={**_USER},
    errors=[_E.IDENTITY_NOT_FOUND],
    tags=["users"],
)
async def get_identity(request: web.Request, claims: Claims) -> models.UserIdentities:
    return await bundles.identities(request.app[KEYS], user_id_of(request))


# The caller's account: account key, device list, links.


@api.put(
    "/v1/account",
    summary="Register the account key with a first device list, or reset it (another key)",
    body=models.AccountRegistration,
    response=models.AccountRegistered,
    auth=True,
    errors=[
        _E.INVALID_KEY,
        _E.INVALID_SIGNATURE,
        _E.TOO_MANY_DEVICES,
        _E.FORBIDDEN,
        _E.CONFLICT,
        _E.RATE_LIMITED,
    ],
    tags=["account"],
)
async def put_account(
    request: web.Request, claims: Claims, body: models.AccountRegistration
) -> models.AccountRegistered:
    return await accounts.register(request.app[KEYS], claims.user_id, body)


@api.put(
    "/v1/device-list",
    summary="Publish the next version of the device list (dropped devices are removed)",
    body=models.SignedDeviceList,
    response=models.DeviceListUpdated,
    auth=True,
    errors=[
        _E.INVALID_KEY,
        _E.INVALID_SIGNATURE,
        _E.TOO_MANY_DEVICES,
        _E.IDENTITY_NOT_FOUND,
        _E.FORBIDDEN,
        _E.CONFLICT,
        _E.RATE_LIMITED,
    ],
    tags=["account"],
)
async def put_device_list(
    request: web.Request, claims: Claims, body: models.SignedDeviceList
) -> models.DeviceListUpdated:
    return await accounts.update_list(request.app[KEYS], claims.user_id, body)


@api.post(
    LINKS,
    summary="Post a link for this (pending) device, to be approved by another device",
    body=models.LinkCreate,
    response=models.LinkState,
    status=201,
    auth=True,
    errors=[_E.DEVICE_NOT_FOUND, _E.FORBIDDEN, _E.CONFLICT, _E.RATE_LIMITED],
    tags=["links"],
)
async def post_link(
    request: web.Request, claims: Claims, body: models.LinkCreate
) -> models.LinkState:
    return await links.create(request.app[KEYS], claims, body)


@api.get(
    LINKS + "/{link_id}",
    summary="Read a link of this account (and its approval, once there is one)",
    response=models.LinkState,
    auth=True,
    params={**_LINK},
    errors=[_E.NOT_FOUND],
    tags=["links"],
)
async def get_link(request: web.Request, claims: Claims) -> web.Response:
    state = await links.read(request.app[KEYS], claims, request.match_info["link_id"])
    return json_response(state, headers={"Cache-Control": "no-store"})


@api.delete(
    LINKS + "/{link_id}",
    summary="Cancel a link (the device that posted it): its code can no longer be approved",
    status=204,
    auth=True,
    params={**_LINK},
    errors=[_E.NOT_FOUND, _E.FORBIDDEN, _E.CONFLICT],
    tags=["links"],
)
async def delete_link(request: web.Request, claims: Claims) -> None:
    await links.cancel(request.app[KEYS], claims, request.match_info["link_id"])


@api.put(
    LINKS + "/{link_id}/approval",
    summary="Approve a link: the sealed account key for the new device (once)",
    body=models.LinkApproval,
    status=204,
    auth=True,
    params={**_LINK},
    errors=[_E.NOT_FOUND, _E.INVALID_KEY, _E.FORBIDDEN, _E.CONFLICT],
    tags=["links"],
)
async def put_link_approval(
    request: web.Request, claims: Claims, body: models.LinkApproval
) -> None:
    await links.approve(request.app[KEYS], claims, request.match_info["link_id"], body)
