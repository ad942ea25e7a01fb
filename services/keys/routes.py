"""HTTP routes of the key directory (thin: parse, call the handler, answer).

Every route needs a token: the route decorator (services.common.openapi)
checks it before the body and hands the handler ``claims=``.

``/keys/v1/devices/{device_id}/...`` always means a device of the caller
(the user id comes from the access token); ``/keys/v1/users/{user_id}/...``
reads (and claims) another user's keys. docs/keys.md describes every route.
"""

from __future__ import annotations

from aiohttp import web

from services.common.auth import MAX_USER_ID, Claims
from services.common.errors import ApiError, ErrorCode
from services.common.http import json_response
from services.common.openapi import Api
from services.keys import bundles, devices, models
from services.keys.state import KEYS

api = Api(
    "Parley keys",
    "0.1.0",
    "The key directory: device identity keys, signed prekeys, one-time X25519 and "
    "ML-KEM-768 prekeys, and single-use prekey bundles. Binary values are base64url "
    "without padding. See docs/keys.md.",
)

DEVICE = "/v1/devices/{device_id}"
USER = "/v1/users/{user_id}"

_E = ErrorCode
_KEY_ERRORS = [_E.INVALID_KEY, _E.INVALID_SIGNATURE, _E.DEVICE_NOT_FOUND, _E.CONFLICT]
_BATCH_ERRORS = [*_KEY_ERRORS, _E.BATCH_TOO_LARGE, _E.DUPLICATE_PREKEY, _E.TOO_MANY_PREKEYS]


def _device_id(text: str, name: str = "device_id") -> int:
    if text.isascii() and text.isdigit() and len(text) <= 10:
        value = int(text)
        if 1 <= value <= models.DEVICE_ID_MAX:
            return value
    raise ApiError(
        _E.VALIDATION_FAILED,
        f"{name} must be an integer in 1..{models.DEVICE_ID_MAX}.",
        details=[{"field": name, "problem": "not a device id"}],
    )


def device_id_of(request: web.Request) -> int:
    return _device_id(request.match_info["device_id"])


def user_id_of(request: web.Request) -> str:
    user_id = request.match_info["user_id"]
    if not 0 < len(user_id) <= MAX_USER_ID or not user_id.isprintable():
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
    errors=[_E.INVALID_KEY, _E.INVALID_SIGNATURE, _E.TOO_MANY_DEVICES, _E.CONFLICT],
    tags=["devices"],
)
async def put_identity(
    request: web.Request, claims: Claims, body: models.Identity
) -> models.IdentityRegistered:
    device_id = device_id_of(request)
    return await devices.register_identity(request.app[KEYS], claims.user_id, device_id, body)


@api.put(
    DEVICE + "/signed-prekey",
    summary="Set this device's signed prekey (signed by its identity)",
    body=models.SignedPrekey,
    status=204,
    auth=True,
    errors=_KEY_ERRORS,
    tags=["devices"],
)
async def put_signed_prekey(
    request: web.Request, claims: Claims, body: models.SignedPrekey
) -> None:
    device_id = device_id_of(request)
    await devices.set_signed_prekey(request.app[KEYS], claims.user_id, device_id, body)


@api.post(
    DEVICE + "/one-time-prekeys",
    summary="Upload one-time X25519 prekeys (at most 100; all stored or none)",
    body=models.OneTimePrekeyBatch,
    response=models.Stored,
    status=201,
    auth=True,
    errors=_BATCH_ERRORS,
    tags=["devices"],
)
async def post_one_time(
    request: web.Request, claims: Claims, body: models.OneTimePrekeyBatch
) -> models.Stored:
    device_id = device_id_of(request)
    return await devices.upload_one_time(request.app[KEYS], claims.user_id, device_id, body.prekeys)


@api.post(
    DEVICE + "/kem-prekeys",
    summary="Upload signed one-time ML-KEM-768 prekeys (at most 100; all stored or none)",
    body=models.KemPrekeyBatch,
    response=models.Stored,
    status=201,
    auth=True,
    errors=_BATCH_ERRORS,
    tags=["devices"],
)
async def post_kem(
    request: web.Request, claims: Claims, body: models.KemPrekeyBatch
) -> models.Stored:
    device_id = device_id_of(request)
    return await devices.upload_kem(request.app[KEYS], claims.user_id, device_id, body.prekeys)


@api.put(
    DEVICE + "/kem-last-resort",
    summary="Set this device's last-resort ML-KEM-768 prekey (signed by its identity)",
    body=models.KemPrekey,
    status=204,
    auth=True,
    errors=_KEY_ERRORS,
    tags=["devices"],
)
async def put_last_resort(request: web.Request, claims: Claims, body: models.KemPrekey) -> None:
    device_id = device_id_of(request)
    await devices.set_last_resort(request.app[KEYS], claims.user_id, device_id, body)


@api.get(
    DEVICE + "/counts",
    summary="How many one-time prekeys of each kind this device still has",
    response=models.Counts,
    auth=True,
    errors=[_E.DEVICE_NOT_FOUND],
    tags=["devices"],
)
async def get_counts(request: web.Request, claims: Claims) -> models.Counts:
    return await devices.counts(request.app[KEYS], claims.user_id, device_id_of(request))


@api.post(
    DEVICE + "/check",
    summary="Compare a digest of what the device believes the server holds",
    body=models.KeysCheck,
    response=models.KeysCheckResult,
    auth=True,
    errors=[_E.INVALID_KEY, _E.DEVICE_NOT_FOUND],
    tags=["devices"],
)
async def post_check(
    request: web.Request, claims: Claims, body: models.KeysCheck
) -> models.KeysCheckResult:
    device_id = device_id_of(request)
    return await devices.check(request.app[KEYS], claims.user_id, device_id, body)


@api.delete(
    DEVICE,
    summary="Remove this device and all its keys",
    status=204,
    auth=True,
    errors=[_E.DEVICE_NOT_FOUND],
    tags=["devices"],
)
async def delete_device(request: web.Request, claims: Claims) -> None:
    await devices.delete(request.app[KEYS], claims.user_id, device_id_of(request))


@api.delete(
    USER + "/devices/{device_id}",
    summary="Remove a device of a user (the user themself or an admin)",
    status=204,
    auth=True,
    errors=[_E.FORBIDDEN, _E.DEVICE_NOT_FOUND],
    tags=["users"],
)
async def delete_user_device(request: web.Request, claims: Claims) -> None:
    user_id = user_id_of(request)
    if user_id != claims.user_id and not claims.is_admin:
        raise ApiError(_E.FORBIDDEN, "Only the user or an admin may remove a user's device.")
    await devices.delete(request.app[KEYS], user_id, device_id_of(request))


@api.get(
    USER + "/bundles",
    summary="Claim a prekey bundle for each device of a user (rate-limited per pair)",
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
)
async def get_bundles(request: web.Request, claims: Claims) -> web.Response:
    target = user_id_of(request)
    wanted: set[int] | None = None
    if "device_id" in request.query:
        raw = request.query["device_id"].split(",")
        if len(raw) > 100:
            raise ApiError(_E.VALIDATION_FAILED, "Too many device ids.")
        wanted = {_device_id(part.strip()) for part in raw}
    result = await bundles.claim(request.app[KEYS], claims.user_id, target, wanted)
    # A claim consumes prekeys: nothing on the way may cache or replay it.
    return json_response(result, headers={"Cache-Control": "no-store"})


@api.get(
    USER + "/identity",
    summary="Read a user's device identities without claiming anything",
    response=models.UserIdentities,
    auth=True,
    errors=[_E.IDENTITY_NOT_FOUND],
    tags=["users"],
)
async def get_identity(request: web.Request, claims: Claims) -> models.UserIdentities:
    return await bundles.identities(request.app[KEYS], user_id_of(request))
