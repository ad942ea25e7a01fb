"""A device's private key material: identity, signed, one-time and KEM prekeys.

Id spaces (each a u32 counter starting at 1, so "issued and consumed" can be
told from "never issued"): signed prekeys, one-time X25519 prekeys, and KEM
prekeys (one-time and last-resort share one KEM counter, so a KEM prekey id is
unambiguous).

Retention: the current and the previous signed prekey and last-resort KEM
prekey are kept (an initial message built on the previous one may still be in
flight after a rotation); one-time prekeys until they are used, or until the
device forgets the oldest past a bound (:meth:`Device.retire_one_time_prekeys`:
claimed by someone who never wrote, they would be kept for ever).  Initial
messages that consume no one-time material (no one-time X25519 prekey and a
last-resort KEM prekey) could be replayed, so their ephemeral keys are
remembered, under the signed prekey they were made with, for as long as that
signed prekey is kept: a repeat is rejected (``ReplayedMessage``) while the
signed prekey exists, and once it is retired any message made with it is
refused anyway (``UnknownPrekey``).  The window is thus the signed prekey's
lifetime, not a count of messages (docs/crypto.md, "PQXDH").
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from parley.crypto.bundle import (
    KemPrekey,
    OneTimePrekey,
    PublicIdentity,
    SignedPrekey,
    sign_identity_dh,
    sign_kem_prekey,
    sign_signed_prekey,
)
from parley.crypto.encoding import U32_MAX, b64decode, b64encode, load_state, u32
from parley.crypto.errors import (
    CounterExhausted,
    MalformedBundle,
    MalformedState,
    PrekeyReused,
    ReplayedMessage,
    UnknownPrekey,
)
from parley.crypto.primitives import (
    Ed25519KeyPair,
    MLKEM768KeyPair,
    RandomSource,
    X25519KeyPair,
    system_random,
)

__all__ = ["DEFAULT_BATCH", "Device", "KemPrekeyPrivate"]

DEFAULT_BATCH = 100
_STATE_VERSION = 1


@dataclass(slots=True)
class KemPrekeyPrivate:
    """A KEM prekey held by its 64-byte seed; the key pair is built on first use."""

    id: int
    seed: bytes
    last_resort: bool
    sig: bytes
    _pair: MLKEM768KeyPair | None = None

    def pair(self) -> MLKEM768KeyPair:
        if self._pair is None:
            self._pair = MLKEM768KeyPair.from_seed(self.seed)
        return self._pair

    def public(self) -> KemPrekey:
        return KemPrekey(self.id, self.pair().public, self.sig, self.last_resort)


@dataclass(slots=True)
class _SignedPrekeyPrivate:
    id: int
    pair: X25519KeyPair
    sig: bytes

    def public(self) -> SignedPrekey:
        return SignedPrekey(self.id, self.pair.public, self.sig)


def _next_id(counter: int) -> int:
    if counter > U32_MAX:
        raise CounterExhausted("prekey id space exhausted")
    return counter


class Device:
    """Private state of one device.  Persist it with :meth:`to_bytes` (it holds secrets)."""

    def __init__(
        self,
        *,
        signing: Ed25519KeyPair,
        dh: X25519KeyPair,
        rng: RandomSource = system_random,
    ) -> None:
        self._signing = signing
        self._dh = dh
        self.identity = PublicIdentity(
            signing.public, dh.public, sign_identity_dh(signing, dh.public)
        )
        self.rng = rng
        self._signed_prekeys: dict[int, _SignedPrekeyPrivate] = {}
        self._current_signed_prekey = 0
        self._next_signed_prekey_id = 1
        self._one_time: dict[int, X25519KeyPair] = {}
        self._next_one_time_id = 1
        self._kem: dict[int, KemPrekeyPrivate] = {}
        self._last_resort: list[int] = []  # previous..current
        self._next_kem_id = 1
        # signed prekey id -> ephemeral keys of the handshakes without one-time
        # material made with it; dropped with the signed prekey.
        self._seen_base_keys: dict[int, set[bytes]] = {}

    # ------------------------------------------------------------------ creation

    @classmethod
    def generate(cls, rng: RandomSource = system_random) -> Device:
        """A new identity with one signed prekey and one last-resort KEM prekey."""
        device = cls(signing=Ed25519KeyPair.generate(rng), dh=X25519KeyPair.generate(rng), rng=rng)
        device.rotate_signed_prekey()
        device.rotate_last_resort_kem_prekey()
        return device

    # ------------------------------------------------------------------ public parts

    def public_identity(self) -> dict[str, str]:
        """The identity JSON: ``{"signing_key", "dh_key", "dh_sig"}``."""
        return self.identity.to_json()

    @property
    def dh_keypair(self) -> X25519KeyPair:
        return self._dh

    def signed_prekey(self) -> dict[str, Any]:
        """The current signed prekey JSON: ``{"id", "key", "sig"}``."""
        return self._signed_prekeys[self._current_signed_prekey].public().to_json()

    def last_resort_kem_prekey(self) -> dict[str, Any]:
        """The current last-resort KEM prekey JSON (upload form): ``{"id", "key", "sig"}``."""
        return self._kem[self._last_resort[-1]].public().to_json(with_flag=False)

    def rotate_signed_prekey(self) -> dict[str, Any]:
        """Make a new signed prekey current (keep one previous); return its JSON."""
        prekey_id = _next_id(self._next_signed_prekey_id)
        pair = X25519KeyPair.generate(self.rng)
        sig = sign_signed_prekey(self._signing, prekey_id, pair.public)
        self._signed_prekeys[prekey_id] = _SignedPrekeyPrivate(prekey_id, pair, sig)
        previous = self._current_signed_prekey
        self._current_signed_prekey = prekey_id
        self._next_signed_prekey_id = prekey_id + 1
        self._signed_prekeys = {
            i: k for i, k in self._signed_prekeys.items() if i in (previous, prekey_id)
        }
        self._seen_base_keys = {
            i: keys for i, keys in self._seen_base_keys.items() if i in self._signed_prekeys
        }
        return self.signed_prekey()

    def rotate_last_resort_kem_prekey(self) -> dict[str, Any]:
        """Make a new last-resort KEM prekey current (keep one previous); return its JSON."""
        entry = self._new_kem_prekey(last_resort=True)
        self._last_resort.append(entry.id)
        for dropped in self._last_resort[:-2]:
            self._kem.pop(dropped, None)
        self._last_resort = self._last_resort[-2:]
        return self.last_resort_kem_prekey()

    def generate_one_time_prekeys(self, n: int = DEFAULT_BATCH) -> list[dict[str, Any]]:
        """Make ``n`` one-time X25519 prekeys; return their JSON (``{"id", "key"}``)."""
        out = []
        for _ in range(n):
            prekey_id = _next_id(self._next_one_time_id)
            pair = X25519KeyPair.generate(self.rng)
            self._one_time[prekey_id] = pair
            self._next_one_time_id = prekey_id + 1
            out.append(OneTimePrekey(prekey_id, pair.public).to_json())
        return out

    def generate_kem_prekeys(self, n: int = DEFAULT_BATCH) -> list[dict[str, Any]]:
        """Make ``n`` signed one-time ML-KEM-768 prekeys; return their JSON."""
        return [
            self._new_kem_prekey(last_resort=False).public().to_json(with_flag=False)
            for _ in range(n)
        ]

    def _new_kem_prekey(self, *, last_resort: bool) -> KemPrekeyPrivate:
        prekey_id = _next_id(self._next_kem_id)
        pair = MLKEM768KeyPair.generate(self.rng)
        sig = sign_kem_prekey(self._signing, prekey_id, pair.public, last_resort)
        entry = KemPrekeyPrivate(prekey_id, pair.seed(), last_resort, sig, pair)
        self._kem[prekey_id] = entry
        self._next_kem_id = prekey_id + 1
        return entry

    def keys_digest(self) -> bytes:
        """What the key directory should hold for this device, as its ``keys-check`` digest.

        ``SHA-256("parley-v1/keys-check" || signing_key || dh_key || u32_be(signed
        prekey id) || signed prekey || u32_be(last-resort id) || last-resort key)``,
        over the current signed and last-resort prekeys (see docs/keys.md).
        """
        spk = self._signed_prekeys[self._current_signed_prekey]
        last_resort = self._kem[self._last_resort[-1]]
        return hashlib.sha256(
            b"parley-v1/keys-check"
            + self.identity.signing_key
            + self.identity.dh_key
            + u32(spk.id)
            + spk.pair.public
            + u32(last_resort.id)
            + last_resort.pair().public
        ).digest()

    def retire_one_time_prekeys(self, keep: int, keep_kem: int | None = None) -> tuple[int, int]:
        """Forget the oldest (lowest id) one-time X25519 prekeys past the ``keep`` newest,
        and the oldest one-time ML-KEM prekeys past the ``keep_kem`` newest (``keep`` if
        None; last-resort ones are never forgotten). A one-time prekey the directory
        handed out is kept until an initial message uses it, and one claimed by
        someone who never writes would be kept for ever: every top-up after such
        claims added a batch. An initial message naming a forgotten prekey cannot be
        read (``PrekeyReused``, as for one used already). Returns how many of each
        kind were forgotten."""
        keep_kem = keep if keep_kem is None else keep_kem
        old_one_time = sorted(self._one_time)[: max(0, len(self._one_time) - max(0, keep))]
        for prekey_id in old_one_time:
            del self._one_time[prekey_id]
        kem = sorted(i for i, k in self._kem.items() if not k.last_resort)
        old_kem = kem[: max(0, len(kem) - max(0, keep_kem))]
        for prekey_id in old_kem:
            del self._kem[prekey_id]
        return len(old_one_time), len(old_kem)

    @property
    def one_time_prekey_count(self) -> int:
        return len(self._one_time)

    @property
    def kem_prekey_count(self) -> int:
        """One-time KEM prekeys left (last-resort ones not counted)."""
        return sum(1 for k in self._kem.values() if not k.last_resort)

    # ------------------------------------------------------------------ used by Session.respond

    def _lookup_signed_prekey(self, prekey_id: int) -> X25519KeyPair:
        entry = self._signed_prekeys.get(prekey_id)
        if entry is None:
            raise UnknownPrekey(f"signed prekey {prekey_id} is unknown or was rotated out")
        return entry.pair

    def _lookup_one_time_prekey(self, prekey_id: int) -> X25519KeyPair:
        pair = self._one_time.get(prekey_id)
        if pair is None:
            if 0 < prekey_id < self._next_one_time_id:
                raise PrekeyReused(f"one-time prekey {prekey_id} was already used or retired")
            raise UnknownPrekey(f"one-time prekey {prekey_id} was never issued")
        return pair

    def _lookup_kem_prekey(self, prekey_id: int) -> KemPrekeyPrivate:
        entry = self._kem.get(prekey_id)
        if entry is None:
            if 0 < prekey_id < self._next_kem_id:
                raise PrekeyReused(
                    f"KEM prekey {prekey_id} was already used, retired or rotated out"
                )
            raise UnknownPrekey(f"KEM prekey {prekey_id} was never issued")
        return entry

    def _check_base_key(self, signed_prekey_id: int, ephemeral_key: bytes) -> None:
        if ephemeral_key in self._seen_base_keys.get(signed_prekey_id, ()):
            raise ReplayedMessage("initial message already processed")

    @property
    def remembered_base_key_count(self) -> int:
        """Ephemeral keys remembered against replays (handshakes without one-time
        material, for the signed prekeys still kept).  Each counted once: a state
        from before #20 files its keys under every signed prekey kept."""
        return len({key for keys in self._seen_base_keys.values() for key in keys})

    def _consume(
        self,
        one_time_prekey_id: int | None,
        kem: KemPrekeyPrivate,
        signed_prekey_id: int,
        ephemeral_key: bytes,
    ) -> None:
        """Commit the use of prekeys after a successful handshake."""
        if one_time_prekey_id is not None:
            del self._one_time[one_time_prekey_id]
        if not kem.last_resort:
            del self._kem[kem.id]
        if one_time_prekey_id is None and kem.last_resort:
            self._seen_base_keys.setdefault(signed_prekey_id, set()).add(ephemeral_key)

    def _identity_signing(self) -> Ed25519KeyPair:
        return self._signing

    # ------------------------------------------------------------------ persistence

    def to_json(self) -> dict[str, Any]:
        return {
            "v": _STATE_VERSION,
            "signing": b64encode(self._signing.seed()),
            "dh": b64encode(self._dh.private_bytes()),
            "signed_prekeys": [
                [e.id, b64encode(e.pair.private_bytes()), b64encode(e.sig)]
                for e in self._signed_prekeys.values()
            ],
            "current_signed_prekey": self._current_signed_prekey,
            "next_signed_prekey_id": self._next_signed_prekey_id,
            "one_time": [[i, b64encode(p.private_bytes())] for i, p in self._one_time.items()],
            "next_one_time_id": self._next_one_time_id,
            "kem": [
                [e.id, b64encode(e.seed), e.last_resort, b64encode(e.sig)]
                for e in self._kem.values()
            ],
            "last_resort": list(self._last_resort),
            "next_kem_id": self._next_kem_id,
            "seen_base_keys": {
                str(i): sorted(b64encode(k) for k in keys)
                for i, keys in sorted(self._seen_base_keys.items())
            },
        }

    def to_bytes(self) -> bytes:
        """Serialize all private state (UTF-8 JSON).  Store it encrypted."""
        return json.dumps(self.to_json(), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, obj: Any, rng: RandomSource = system_random) -> Device:
        try:
            if obj["v"] != _STATE_VERSION:
                raise MalformedState("unsupported device state version")
            device = cls(
                signing=Ed25519KeyPair.from_seed(b64decode(obj["signing"], length=32)),
                dh=X25519KeyPair.from_private_bytes(b64decode(obj["dh"], length=32)),
                rng=rng,
            )
            for prekey_id, raw, sig in obj["signed_prekeys"]:
                pair = X25519KeyPair.from_private_bytes(b64decode(raw, length=32))
                device._signed_prekeys[int(prekey_id)] = _SignedPrekeyPrivate(
                    int(prekey_id), pair, b64decode(sig, length=64)
                )
            device._current_signed_prekey = int(obj["current_signed_prekey"])
            device._next_signed_prekey_id = int(obj["next_signed_prekey_id"])
            for prekey_id, raw in obj["one_time"]:
                device._one_time[int(prekey_id)] = X25519KeyPair.from_private_bytes(
                    b64decode(raw, length=32)
                )
            device._next_one_time_id = int(obj["next_one_time_id"])
            for prekey_id, seed, last_resort, sig in obj["kem"]:
                device._kem[int(prekey_id)] = KemPrekeyPrivate(
                    int(prekey_id), b64decode(seed, length=64), bool(last_resort), b64decode(sig)
                )
            device._last_resort = [int(i) for i in obj["last_resort"]]
            device._next_kem_id = int(obj["next_kem_id"])
            seen = obj["seen_base_keys"]
            if isinstance(seen, list):
                # Before #20: one list, not by signed prekey, so which prekey each
                # handshake was made with is unknown.  File every key under each
                # signed prekey still kept (the previous one's handshakes included):
                # a replay is refused whichever it names, and the keys go with the
                # last of those prekeys to be retired.
                seen = {str(i): seen for i in device._signed_prekeys}
            device._seen_base_keys = {
                int(i): {b64decode(k, length=32) for k in keys}
                for i, keys in seen.items()
                if int(i) in device._signed_prekeys
            }
            if device._current_signed_prekey not in device._signed_prekeys or not all(
                i in device._kem for i in device._last_resort
            ):
                raise MalformedState("device state is inconsistent")
            return device
        except (KeyError, TypeError, ValueError, AttributeError, MalformedBundle) as exc:
            raise MalformedState("device state does not parse") from exc

    @classmethod
    def from_bytes(cls, data: bytes, rng: RandomSource = system_random) -> Device:
        return cls.from_json(load_state(data), rng)

    def __repr__(self) -> str:
        return f"Device(signing_key={self.identity.signing_key.hex()})"
