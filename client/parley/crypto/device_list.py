"""The account identity key and the signed device list (docs/devices.md).

An account has one **account identity key** (Ed25519), held by every device of
the account, and a **device list** signed by it: the account's statement of
which devices belong to it, each with its identity (signing key and DH key).
Contacts trust the account key on first use (the safety number is made of it)
and accept a device only if the list names it with exactly the identity its
bundle shows.

Signed bytes (docs/crypto.md, "Device lists and linking")::

    b"parley-v1/device-list" || canonical JSON of
    {"devices": [{"device_id", "dh_key", "name", "signing_key"}, ...], "user_id", "version"}

Canonical JSON: UTF-8, keys sorted, separators ``,`` and ``:`` (no
whitespace), binary values base64url without padding, devices in ascending
``device_id`` order, no repeated id. Names and user ids contain no control
characters (so only ``"`` and ``\\`` are ever escaped) and no lone surrogates.
The JSON form on the wire **is** the canonical form: :meth:`DeviceList.from_json`
refuses devices out of order, repeated ids and unknown members, so what was
signed is exactly what was parsed. The key directory recomputes the same bytes
without importing this package (``services/keys/verify.py``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from parley.crypto.bundle import PrekeyBundle, PublicIdentity, verify_remembered
from parley.crypto.encoding import b64decode, b64encode
from parley.crypto.errors import (
    CounterExhausted,
    DeviceMismatch,
    MalformedBundle,
    MalformedDeviceList,
    UnlistedDevice,
)
from parley.crypto.primitives import (
    ED25519_KEY_LEN,
    ED25519_SIG_LEN,
    X25519_KEY_LEN,
    Ed25519KeyPair,
    RandomSource,
    require_bytes,
    system_random,
)

__all__ = [
    "DEVICE_ID_MAX",
    "LABEL_DEVICE_LIST",
    "NAME_MAX",
    "USER_ID_MAX",
    "VERSION_MAX",
    "AccountKey",
    "DeviceEntry",
    "DeviceList",
    "SignedDeviceList",
    "canonical_json",
]

LABEL_DEVICE_LIST = b"parley-v1/device-list"
DEVICE_ID_MAX = 2**31 - 1
VERSION_MAX = 2**31 - 1
NAME_MAX = 64
"""A device name has 1 to 64 characters (Unicode code points)."""
USER_ID_MAX = 64

_ENTRY_KEYS = frozenset({"device_id", "name", "signing_key", "dh_key"})
_LIST_KEYS = frozenset({"user_id", "version", "devices"})


def canonical_json(value: Any) -> bytes:
    """UTF-8 JSON with sorted keys and no whitespace (the form that is signed)."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _text(value: Any, field: str, max_len: int) -> str:
    """A name or user id: 1..max_len code points, no control character, no surrogate."""
    if not isinstance(value, str) or not 0 < len(value) <= max_len:
        raise MalformedDeviceList(f"{field}: expected a string of 1 to {max_len} characters")
    for ch in value:
        o = ord(ch)
        if o < 0x20 or 0x7F <= o <= 0x9F or 0xD800 <= o <= 0xDFFF:
            raise MalformedDeviceList(f"{field}: control characters are not allowed")
    return value


def _integer(value: Any, field: str, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise MalformedDeviceList(f"{field}: expected an integer in 1..{maximum}")
    return value


def _key(value: Any, field: str, length: int) -> bytes:
    if not isinstance(value, bytes) or len(value) != length:
        raise MalformedDeviceList(f"{field}: expected {length} bytes")
    return value


def _decode(value: Any, field: str, length: int) -> bytes:
    try:
        return b64decode(value, field=field, length=length)
    except MalformedBundle as exc:
        raise MalformedDeviceList(str(exc)) from exc


def _object(value: Any, field: str, keys: frozenset[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise MalformedDeviceList(f"{field}: expected a JSON object")
    missing = sorted(keys - set(value))
    if missing:
        raise MalformedDeviceList(f"{field}.{missing[0]}: missing")
    unknown = sorted(str(k) for k in set(value) - keys)
    if unknown:
        raise MalformedDeviceList(f"{field}.{unknown[0]}: unknown member (not signed)")
    return value


# --------------------------------------------------------------------------- account key


class AccountKey:
    """The account identity key: an Ed25519 key pair shared by the account's devices.

    It signs device lists and nothing else. Keep :meth:`seed` in the device's
    encrypted store; it is what a new device receives when it is linked.
    """

    __slots__ = ("_pair", "public")

    def __init__(self, pair: Ed25519KeyPair) -> None:
        self._pair = pair
        self.public: bytes = pair.public

    @classmethod
    def generate(cls, rng: RandomSource = system_random) -> AccountKey:
        """A new account key (draws the 32-byte seed from ``rng``)."""
        return cls(Ed25519KeyPair.generate(rng))

    @classmethod
    def from_seed(cls, seed: bytes) -> AccountKey:
        """The key from its 32-byte private seed (``InvalidKeyLength`` otherwise)."""
        return cls(Ed25519KeyPair.from_seed(seed))

    def seed(self) -> bytes:
        """The 32-byte private seed: secret."""
        return self._pair.seed()

    def sign(self, device_list: DeviceList) -> SignedDeviceList:
        """Sign ``device_list`` (same as ``device_list.sign(self)``)."""
        if not isinstance(device_list, DeviceList):
            raise TypeError("an account key signs device lists only")
        return SignedDeviceList(device_list, self._pair.sign(device_list.signed_bytes()))

    def __repr__(self) -> str:  # never print the seed
        return f"AccountKey(public={self.public.hex()})"


# --------------------------------------------------------------------------- entries


@dataclass(frozen=True, slots=True)
class DeviceEntry:
    """One device of the list: its id, a name for people, and its identity keys."""

    device_id: int
    name: str
    signing_key: bytes
    dh_key: bytes

    def __post_init__(self) -> None:
        _integer(self.device_id, "device_id", DEVICE_ID_MAX)
        _text(self.name, "name", NAME_MAX)
        _key(self.signing_key, "signing_key", ED25519_KEY_LEN)
        _key(self.dh_key, "dh_key", X25519_KEY_LEN)

    @classmethod
    def of(cls, device_id: int, name: str, identity: PublicIdentity) -> DeviceEntry:
        """The entry of a device with this identity (e.g. ``device.identity``)."""
        return cls(device_id, name, identity.signing_key, identity.dh_key)

    def check(self, identity: PublicIdentity) -> None:
        """Raise :class:`DeviceMismatch` unless ``identity`` has exactly this entry's keys."""
        if identity.signing_key != self.signing_key or identity.dh_key != self.dh_key:
            raise DeviceMismatch(
                f"device {self.device_id}: its identity differs from the signed device list"
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "name": self.name,
            "signing_key": b64encode(self.signing_key),
            "dh_key": b64encode(self.dh_key),
        }

    @classmethod
    def from_json(cls, value: Any, *, field: str = "device") -> DeviceEntry:
        obj = _object(value, field, _ENTRY_KEYS)
        return cls(
            device_id=_integer(obj["device_id"], f"{field}.device_id", DEVICE_ID_MAX),
            name=_text(obj["name"], f"{field}.name", NAME_MAX),
            signing_key=_decode(obj["signing_key"], f"{field}.signing_key", ED25519_KEY_LEN),
            dh_key=_decode(obj["dh_key"], f"{field}.dh_key", X25519_KEY_LEN),
        )


# --------------------------------------------------------------------------- the list


@dataclass(frozen=True, slots=True, init=False)
class DeviceList:
    """The devices of ``user_id``'s account, at ``version`` (1, 2, ...).

    ``DeviceList(user_id, version, devices)`` accepts the devices in any order
    and keeps them sorted by id; a repeated id is :class:`MalformedDeviceList`.
    """

    user_id: str
    version: int
    devices: tuple[DeviceEntry, ...]

    def __init__(self, user_id: str, version: int, devices: Iterable[DeviceEntry] = ()) -> None:
        entries = tuple(devices)
        if not all(isinstance(d, DeviceEntry) for d in entries):
            raise TypeError("devices must be DeviceEntry objects")
        ordered = tuple(sorted(entries, key=lambda d: d.device_id))
        for before, after in pairwise(ordered):
            if before.device_id == after.device_id:
                raise MalformedDeviceList(f"device {after.device_id} is listed twice")
        object.__setattr__(self, "user_id", _text(user_id, "user_id", USER_ID_MAX))
        object.__setattr__(self, "version", _integer(version, "version", VERSION_MAX))
        object.__setattr__(self, "devices", ordered)

    # ------------------------------------------------------------------ lookups

    @property
    def device_ids(self) -> list[int]:
        return [d.device_id for d in self.devices]

    def get(self, device_id: int) -> DeviceEntry | None:
        """The entry of ``device_id``, or ``None`` if the list does not name it."""
        for entry in self.devices:
            if entry.device_id == device_id:
                return entry
        return None

    def entry(self, device_id: int) -> DeviceEntry:
        """The entry of ``device_id``; :class:`UnlistedDevice` if the list does not name it."""
        entry = self.get(device_id)
        if entry is None:
            raise UnlistedDevice(f"device {device_id} is not in {self.user_id}'s device list")
        return entry

    def check_identity(self, device_id: int, identity: PublicIdentity) -> DeviceEntry:
        """The entry of ``device_id`` if it names exactly ``identity``.

        Raises :class:`UnlistedDevice` (not listed) or :class:`DeviceMismatch`
        (listed with other keys).
        """
        entry = self.entry(device_id)
        entry.check(identity)
        return entry

    def check_bundle(self, bundle: PrekeyBundle) -> DeviceEntry:
        """Check a claimed (already verified) bundle against the list: same user, a
        listed device, the listed identity. Raises UnlistedDevice or DeviceMismatch."""
        if bundle.user_id != self.user_id:
            raise DeviceMismatch(
                f"a bundle of {bundle.user_id!r} checked against {self.user_id!r}'s device list"
            )
        return self.check_identity(bundle.device_id, bundle.identity)

    # ------------------------------------------------------------------ new versions

    def _next_version(self) -> int:
        if self.version >= VERSION_MAX:
            raise CounterExhausted("device list version space exhausted")
        return self.version + 1

    def with_device(self, entry: DeviceEntry) -> DeviceList:
        """The next version, with ``entry`` added (or replacing the entry of its id)."""
        others = [d for d in self.devices if d.device_id != entry.device_id]
        return DeviceList(self.user_id, self._next_version(), [*others, entry])

    def without_device(self, device_id: int) -> DeviceList:
        """The next version, without ``device_id`` (:class:`UnlistedDevice` if absent)."""
        self.entry(device_id)
        others = [d for d in self.devices if d.device_id != device_id]
        return DeviceList(self.user_id, self._next_version(), others)

    # ------------------------------------------------------------------ bytes and JSON

    def to_json(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "version": self.version,
            "devices": [d.to_json() for d in self.devices],
        }

    def canonical_json(self) -> bytes:
        return canonical_json(self.to_json())

    def signed_bytes(self) -> bytes:
        """``b"parley-v1/device-list" || canonical JSON``: what the account key signs."""
        return LABEL_DEVICE_LIST + self.canonical_json()

    def sign(self, account_key: AccountKey) -> SignedDeviceList:
        return account_key.sign(self)

    @classmethod
    def from_json(cls, value: Any, *, field: str = "device_list") -> DeviceList:
        """Parse strictly: every member present and well typed, no unknown member,
        devices in ascending id order without repeats; else MalformedDeviceList."""
        obj = _object(value, field, _LIST_KEYS)
        raw = obj["devices"]
        if not isinstance(raw, list):
            raise MalformedDeviceList(f"{field}.devices: expected a JSON array")
        entries = [
            DeviceEntry.from_json(item, field=f"{field}.devices[{i}]") for i, item in enumerate(raw)
        ]
        for i, (before, after) in enumerate(pairwise(entries), start=1):
            if after.device_id <= before.device_id:
                raise MalformedDeviceList(
                    f"{field}.devices[{i}]: devices must be in ascending device_id order, each once"
                )
        return cls(
            _text(obj["user_id"], f"{field}.user_id", USER_ID_MAX),
            _integer(obj["version"], f"{field}.version", VERSION_MAX),
            entries,
        )


@dataclass(frozen=True, slots=True)
class SignedDeviceList:
    """A device list and the account key's signature over its signed bytes."""

    device_list: DeviceList
    signature: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.device_list, DeviceList):
            raise TypeError("device_list must be a DeviceList")
        require_bytes("signature", self.signature, ED25519_SIG_LEN)

    def verify(self, account_public: bytes, *, user_id: str | None = None) -> DeviceList:
        """The list, if the account key ``account_public`` signed it.

        Raises :class:`~parley.crypto.errors.InvalidSignature` otherwise, and
        :class:`DeviceMismatch` if ``user_id`` is given and the list is another
        user's (a directory serving one account's list for another).
        """
        # Remembered: a contact's list is checked when it is read and again with each
        # claim of its bundles (a private room's first message: both, per member).
        verify_remembered(account_public, self.signature, self.device_list.signed_bytes())
        if user_id is not None and self.device_list.user_id != user_id:
            raise DeviceMismatch(
                f"the device list is {self.device_list.user_id!r}'s, not {user_id!r}'s"
            )
        return self.device_list

    def to_json(self) -> dict[str, Any]:
        """``{"device_list": {...}, "signature": b64}`` (the directory's request bodies)."""
        return {"device_list": self.device_list.to_json(), "signature": b64encode(self.signature)}

    @classmethod
    def from_json(cls, value: Any) -> SignedDeviceList:
        """Parse ``{"device_list", "signature", ...}`` (other members, such as the
        directory's ``account_key`` or ``devices``, are ignored). Not verified: call
        :meth:`verify` with the account key you trust."""
        if not isinstance(value, Mapping):
            raise MalformedDeviceList("expected a JSON object")
        for name in ("device_list", "signature"):
            if name not in value:
                raise MalformedDeviceList(f"{name}: missing")
        return cls(
            DeviceList.from_json(value["device_list"]),
            _decode(value["signature"], "signature", ED25519_SIG_LEN),
        )
