"""Request and response bodies of the key directory (they also document the API).

Binary values are base64url strings without padding; their strict decoding,
lengths and signatures are checked by :mod:`services.keys.verify`, which
answers ``invalid_key`` / ``invalid_signature`` rather than a generic
validation error. Pydantic only checks the JSON shape here.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from services.common.auth import MAX_USER_ID
from services.common.openapi import EACH_ONCE
from services.keys.config import MAX_BATCH, MAX_CLAIM_USERS, MAX_LIST_USERS

U32_MAX = 2**32 - 1
DEVICE_ID_MAX = 2**31 - 1
VERSION_MAX = 2**31 - 1
NAME_MAX = 64

# 8 bytes in canonical unpadded base64url: 11 characters, the last one with its two
# low bits clear (services/keys/verify.py, ``link_id``).
LINK_ID_PATTERN = "^[A-Za-z0-9_-]{10}[AEIMQUYcgkosw048]$"
# 32 bytes the same way: 43 characters (services/keys/verify.py, ``link_e_pub``).
E_PUB_PATTERN = "^[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]$"
# What services/keys/verify.py ``check_text`` allows in a name: no control character.
NAME_PATTERN = "^[^\\x00-\\x1f\\x7f-\\x9f]+$"

# A user id of the contract (parley_contract.frames.UserId).
USER_ID_PATTERN = "^[A-Za-z0-9_-]+$"
UserId = Annotated[str, Field(min_length=1, max_length=MAX_USER_ID, pattern=USER_ID_PATTERN)]
# Device ids a claim may name (one user's).
MAX_WANTED = 100

PrekeyId = Annotated[int, Field(strict=True, ge=0, le=U32_MAX)]
# Bounds on the encoded text only (1184 bytes of ML-KEM key are 1579 characters);
# exact lengths are checked after decoding.
B64 = Annotated[str, Field(max_length=2048, description="base64url, no padding")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _Exact(BaseModel):
    """Signed JSON: every member is covered by the signature, so no other is allowed."""

    model_config = ConfigDict(extra="forbid", frozen=True)


DeviceId = Annotated[int, Field(strict=True, ge=1, le=DEVICE_ID_MAX)]
DeviceName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=NAME_MAX,
        pattern=NAME_PATTERN,
        description="1 to 64 characters (code points), no control characters",
    ),
]


class Identity(_Model):
    """A device identity: Ed25519 signing key and X25519 DH key signed by it."""

    signing_key: B64 = Field(description="Ed25519 public key (32 bytes)")
    dh_key: B64 = Field(description="X25519 public key (32 bytes)")
    dh_sig: B64 = Field(description='Ed25519 signature over b"parley-v1/identity-dh" || dh_key')


class SignedPrekey(_Model):
    id: PrekeyId
    key: B64 = Field(description="X25519 public key (32 bytes)")
    sig: B64 = Field(
        description='Ed25519 signature over b"parley-v1/signed-prekey" || u32_be(id) || key'
    )


class OneTimePrekey(_Model):
    id: PrekeyId
    key: B64 = Field(description="X25519 public key (32 bytes), unsigned")


class KemPrekey(_Model):
    id: PrekeyId
    key: B64 = Field(description="ML-KEM-768 encapsulation key (1184 bytes)")
    sig: B64 = Field(
        description='Ed25519 signature over b"parley-v1/kem-prekey/one-time" (or '
        '"/last-resort") || u32_be(id) || key'
    )


class OneTimePrekeyBatch(_Model):
    prekeys: list[OneTimePrekey] = Field(
        min_length=1, description=f"At most {MAX_BATCH} per request."
    )


class KemPrekeyBatch(_Model):
    prekeys: list[KemPrekey] = Field(min_length=1, description=f"At most {MAX_BATCH} per request.")


class KeysCheck(_Model):
    digest: B64 = Field(
        description="SHA-256 (32 bytes) of what the device believes the server holds; "
        "see docs/keys.md"
    )


class DeviceListEntry(_Exact):
    device_id: DeviceId
    name: DeviceName
    signing_key: B64 = Field(description="the device's Ed25519 identity signing key (32 bytes)")
    dh_key: B64 = Field(description="the device's X25519 identity DH key (32 bytes)")


class DeviceList(_Exact):
    """An account's devices, signed by its account key over
    ``b"parley-v1/device-list" || canonical JSON`` (docs/crypto.md)."""

    user_id: Annotated[str, Field(min_length=1, max_length=MAX_USER_ID, pattern=NAME_PATTERN)]
    version: Annotated[int, Field(strict=True, ge=1, le=VERSION_MAX)]
    devices: list[DeviceListEntry] = Field(
        description="In ascending device_id order, each id once."
    )


class SignedDeviceList(_Model):
    device_list: DeviceList
    signature: B64 = Field(description="Ed25519 by the account key (64 bytes)")


class AccountRegistration(SignedDeviceList):
    """First registration of the account key, or a reset (another key)."""

    account_key: B64 = Field(description="the account identity key, Ed25519 (32 bytes)")


class LinkCreate(_Model):
    link_id: str = Field(
        pattern=LINK_ID_PATTERN,
        description="8 random bytes, base64url (the start of the link code)",
    )
    device_id: DeviceId
    name: DeviceName
    e_pub: str | None = Field(
        default=None,
        pattern=E_PUB_PATTERN,
        description="Optional: E_pub, the X25519 key of the link code (32 bytes, base64url), "
        "stored with the link so that the approver can tell a mistyped code. Only a typo "
        "check: the approver seals to the code's key and refuses when they differ.",
    )


class LinkApproval(_Model):
    sealed: str = Field(
        max_length=16384,
        description="F_pub || nonce || AES-256-GCM ciphertext (docs/crypto.md, linking)",
    )


# Responses.


class AccountRegistered(_Model):
    version: int
    created: bool = Field(description="The account key was registered for the first time.")
    changed: bool = Field(description="A different account key replaced the old one (a reset).")


class DeviceListUpdated(_Model):
    version: int
    removed: list[int] = Field(description="Devices dropped from the list, now removed.")


class DeviceSummary(_Model):
    device_id: int
    name: str


class _Listed(_Model):
    user_id: str
    account_key: str = Field(description="the account identity key (base64url, 32 bytes)")
    device_list: DeviceList
    signature: str


class UserDevices(_Listed):
    devices: list[DeviceSummary] = Field(description="The list's ids and names (a copy).")


class LinkState(_Model):
    link_id: str
    device_id: int
    name: str
    identity: Identity = Field(description="the new (pending) device's identity")
    approval: LinkApproval | None
    e_pub: str | None = Field(
        default=None,
        description="The E_pub the new device posted with the link (null if it posted "
        "none): compare it with the code's; seal to the code's, never to this one.",
    )


class IdentityRegistered(_Model):
    device_id: int
    created: bool = Field(description="A new device was registered.")
    changed: bool = Field(description="A different identity replaced the old one (key change).")


class Stored(_Model):
    device_id: int
    stored: int = Field(description="Prekeys stored by this request.")
    one_time: int = Field(description="One-time X25519 prekeys now held for the device.")
    kem_one_time: int = Field(description="One-time ML-KEM prekeys now held for the device.")


class Counts(_Model):
    device_id: int
    one_time: int
    kem_one_time: int
    signed_prekey_id: int | None
    kem_last_resort_id: int | None
    threshold: int = Field(description="Below this many, the device should upload more.")


class KeysCheckResult(_Model):
    match: bool = Field(description="False: the device should upload its keys again.")


class ClaimedKemPrekey(KemPrekey):
    last_resort: bool


class Bundle(_Model):
    user_id: str
    device_id: int
    identity: Identity
    signed_prekey: SignedPrekey
    one_time_prekey: OneTimePrekey | None
    kem_prekey: ClaimedKemPrekey


class Bundles(_Listed):
    """The bundles of listed devices, with the signed list to check them against."""

    bundles: list[Bundle]


class DeviceIdentity(_Model):
    device_id: int
    identity: Identity


class UserIdentities(_Listed):
    devices: list[DeviceIdentity]


class DeviceListsQuery(_Model):
    user_ids: Annotated[list[UserId], EACH_ONCE] = Field(
        min_length=1,
        max_length=MAX_LIST_USERS,
        json_schema_extra={"uniqueItems": True},
        description=f"1 to {MAX_LIST_USERS} user ids, each once",
    )


class ListedDevices(_Listed):
    """A user's account key and signed device list."""


class DeviceLists(_Model):
    lists: list[ListedDevices] = Field(description="The users' lists, in the order asked.")
    missing: list[str] = Field(
        description="Users asked for that have no account key (``identity_not_found``)."
    )


class ClaimWanted(_Model):
    device_ids: list[DeviceId] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_WANTED,
        description="Only these listed devices (none: every listed device)",
    )


class ClaimsQuery(_Model):
    users: dict[UserId, ClaimWanted] = Field(
        min_length=1,
        max_length=MAX_CLAIM_USERS,
        description=f"1 to {MAX_CLAIM_USERS} users (by user id), each with the devices wanted",
        # Pydantic writes the key's pattern as patternProperties, which admits other
        # names: say it of every name.
        json_schema_extra={
            "propertyNames": {"minLength": 1, "maxLength": MAX_USER_ID, "pattern": USER_ID_PATTERN},
            "additionalProperties": False,
        },
    )


class ClaimFailure(_Model):
    user_id: str
    code: str = Field(
        description="What the one-user claim would have answered: ``identity_not_found``, "
        "``device_not_found``, ``prekeys_exhausted`` or ``rate_limited``"
    )
    message: str


class ClaimedBundles(_Model):
    claimed: list[Bundles] = Field(description="Each user's bundles, in the order asked.")
    failed: list[ClaimFailure] = Field(
        description="The users none could be claimed for, and why (nothing taken for them)."
    )
