"""The Double Ratchet (Signal's specification, revision 4) with AES-256-GCM.

* ``KDF_RK(rk, dh_out) = HKDF-SHA256(salt = rk, ikm = dh_out,
  info = "parley-v1/ratchet/root", L = 64)`` -> new root key || chain key.
* ``KDF_CK(ck) = (HMAC-SHA256(ck, 0x01), HMAC-SHA256(ck, 0x02))`` -> message
  key, next chain key.
* ``ENCRYPT(mk, payload, ad)``: ``key || nonce = HKDF-SHA256(salt = 32 zero
  bytes, ikm = mk, info = "parley-v1/ratchet/message-keys", L = 44)``, then
  AES-256-GCM(key, nonce, payload, ad).  Each message key is used once, so the
  derived nonce never repeats under a key.
* Header: ratchet public key (32) || PN (u32) || N (u32), 40 bytes; the AEAD's
  associated data is ``AD || every message byte before the ciphertext`` (which
  includes the header).

Bounds on skipped message keys (same numbers as libsignal):

* :data:`MAX_SKIP` = 25,000 (libsignal's ``MAX_FORWARD_JUMPS``): one message may
  move a chain at most 25,000 keys ahead (N on the current chain, N on a new
  one), so a forged header costs a receiver at most ~50,000 ``KDF_CK`` steps
  and one X25519 per session tried. The previous chain's keys up to PN are
  derived when PN is within the same bound and otherwise given up (the chain
  is over: its missing messages can no longer be read, the new one can);
  before 2026-12-08 such a PN, or a gap over 2,000 on one chain (a device that
  never answers, whose oldest messages expired unread), was refused for good:
  every later message of the session failed;
* :data:`MAX_SKIPPED_KEYS` = 2000 keys stored in total, oldest evicted first
  (of a longer skip only the last 2000 are kept);
* :data:`MAX_OLD_CHAINS` = 5: keys of a receiving chain are dropped once five
  newer receiving chains exist (i.e. at the fifth DH ratchet step after it), so
  skipped keys of at most five receiving chains (the current one included) are
  kept.  No wall clock is involved, so the state machine stays deterministic.

The ratchet public keys of the last :data:`MAX_REMEMBERED_CHAINS` (100)
receiving chains are remembered (32 bytes each), so a message whose key was
used or dropped raises :class:`ReplayedMessage`; one from an even older chain
is treated as a new ratchet step and fails with :class:`DecryptionFailed`.
Decryption is transactional: nothing in the state changes unless the AEAD (and
the optional payload check) succeeds.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from parley.crypto.encoding import U32_MAX, b64decode, b64encode
from parley.crypto.errors import (
    CounterExhausted,
    CryptoError,
    DecryptionFailed,
    InvalidKey,
    MalformedBundle,
    MalformedMessage,
    MalformedState,
    ReplayedMessage,
    TooManySkippedMessages,
)
from parley.crypto.primitives import (
    GCM_TAG_LEN,
    MessageKeyDeriver,
    RandomSource,
    X25519KeyPair,
    aead_decrypt,
    aead_encrypt,
    chain_key_step,
    hkdf_sha256,
    system_random,
)
from parley.crypto.wire import HEADER_LEN

__all__ = [
    "MAX_OLD_CHAINS",
    "MAX_REMEMBERED_CHAINS",
    "MAX_SKIP",
    "MAX_SKIPPED_KEYS",
    "MESSAGE_INFO",
    "ROOT_INFO",
    "RatchetState",
    "kdf_rk",
]

ROOT_INFO = b"parley-v1/ratchet/root"
MESSAGE_INFO = b"parley-v1/ratchet/message-keys"
MAX_SKIP = 25_000
MAX_SKIPPED_KEYS = 2000
MAX_OLD_CHAINS = 5
MAX_REMEMBERED_CHAINS = 100

_MESSAGE_KEYS = MessageKeyDeriver(MESSAGE_INFO)
_HEADER = struct.Struct(">32sII")  # ratchet public key, PN, N: HEADER_LEN bytes
_step = _MESSAGE_KEYS.step

PayloadCheck = Callable[[bytes], None]
"""Called with the decrypted payload before the state is committed; may raise."""


def kdf_rk(root_key: bytes, dh_out: bytes) -> tuple[bytes, bytes]:
    out = hkdf_sha256(dh_out, salt=root_key, info=ROOT_INFO, length=64)
    return out[:32], out[32:]


def _skip(
    chain_key: bytes, start: int, until: int, ratchet_key: bytes
) -> tuple[list[tuple[tuple[bytes, int], bytes]], bytes]:
    """The chain key at ``until`` and the message keys of ``start`` .. ``until - 1``
    (only the last :data:`MAX_SKIPPED_KEYS`: no more are ever stored)."""
    keys: list[tuple[tuple[bytes, int], bytes]] = []
    keep_from = until - MAX_SKIPPED_KEYS
    for n in range(start, until):
        mk, chain_key = chain_key_step(chain_key)
        if n >= keep_from:
            keys.append(((ratchet_key, n), mk))
    return keys, chain_key


class RatchetState:
    """One side of a Double Ratchet session.

    ``skipped`` maps (ratchet public key, N) to (message key, chain index), in
    insertion order (oldest first).  ``old_chains`` maps the public keys of
    the last :data:`MAX_REMEMBERED_CHAINS` receiving chains to their chain index.
    """

    __slots__ = (
        "ad",
        "chain_index",
        "ckr",
        "cks",
        "dhr",
        "dhs",
        "nr",
        "ns",
        "old_chains",
        "pn",
        "rk",
        "rng",
        "skipped",
    )

    def __init__(
        self,
        *,
        ad: bytes,
        rk: bytes,
        dhs: X25519KeyPair,
        dhr: bytes | None,
        cks: bytes | None,
        ckr: bytes | None,
        ns: int = 0,
        nr: int = 0,
        pn: int = 0,
        chain_index: int = 0,
        skipped: dict[tuple[bytes, int], tuple[bytes, int]] | None = None,
        old_chains: dict[bytes, int] | None = None,
        rng: RandomSource = system_random,
    ) -> None:
        self.ad = ad
        self.rk = rk
        self.dhs = dhs
        self.dhr = dhr
        self.cks = cks
        self.ckr = ckr
        self.ns = ns
        self.nr = nr
        self.pn = pn
        self.chain_index = chain_index
        self.skipped: dict[tuple[bytes, int], tuple[bytes, int]] = skipped or {}
        self.old_chains: dict[bytes, int] = old_chains or {}
        self.rng = rng

    # ------------------------------------------------------------------ setup

    @classmethod
    def initiator(
        cls, secret: bytes, ad: bytes, remote_ratchet_key: bytes, rng: RandomSource
    ) -> RatchetState:
        """RatchetInitAlice: the first remote ratchet key is the responder's signed prekey."""
        dhs = X25519KeyPair.generate(rng)
        rk, cks = kdf_rk(secret, dhs.dh(remote_ratchet_key))
        return cls(ad=ad, rk=rk, dhs=dhs, dhr=remote_ratchet_key, cks=cks, ckr=None, rng=rng)

    @classmethod
    def responder(
        cls, secret: bytes, ad: bytes, own_ratchet_key: X25519KeyPair, rng: RandomSource
    ) -> RatchetState:
        """RatchetInitBob: our first ratchet key pair is the signed prekey."""
        return cls(ad=ad, rk=secret, dhs=own_ratchet_key, dhr=None, cks=None, ckr=None, rng=rng)

    # ------------------------------------------------------------------ encrypt

    def encrypt(self, payload: bytes, prefix: bytes) -> tuple[bytes, bytes]:
        """Return ``(header, ciphertext)``; the AD is ``self.ad || prefix || header``."""
        message = self.seal(payload, prefix)
        at = len(prefix)
        return message[at : at + HEADER_LEN], message[at + HEADER_LEN :]

    def seal(self, payload: bytes, prefix: bytes) -> bytes:
        """Return the whole message ``prefix || header || ciphertext`` (AD: ``self.ad ||
        prefix || header``)."""
        cks = self.cks
        if cks is None:
            raise CryptoError("this session cannot send before it has received a message")
        ns = self.ns
        if ns > U32_MAX:
            raise CounterExhausted("sending chain exhausted")
        key, nonce, self.cks = _step(cks)
        self.ns = ns + 1
        associated = prefix + _HEADER.pack(self.dhs.public, self.pn, ns)
        return associated + aead_encrypt(key, nonce, payload, self.ad + associated)

    # ------------------------------------------------------------------ decrypt

    def open(self, message: bytes, header_at: int, check: PayloadCheck | None = None) -> bytes:
        """Decrypt a message made by :meth:`seal`, its header starting at ``header_at``
        (every byte before the ciphertext is associated data).

        Raises MalformedMessage if it is too short; otherwise as :meth:`decrypt`.
        """
        body_at = header_at + HEADER_LEN
        if len(message) < body_at + GCM_TAG_LEN:
            raise MalformedMessage("message too short")
        ratchet_key, pn, n = _HEADER.unpack_from(message, header_at)
        ckr = self.ckr
        skipped = self.skipped
        if (
            n == self.nr
            and ratchet_key == self.dhr
            and ckr is not None
            and (not skipped or (ratchet_key, n) not in skipped)
        ):
            # In order on the current receiving chain, the common case: the checks of
            # :meth:`decrypt` in the same order, without its bookkeeping.
            key, nonce, ck = _step(ckr)
            payload = aead_decrypt(key, nonce, message[body_at:], self.ad + message[:body_at])
            if check is not None:
                check(payload)
            self.ckr = ck
            self.nr = n + 1
            return payload
        return self.decrypt(ratchet_key, pn, n, message[:body_at], message[body_at:], check)

    def decrypt(
        self,
        ratchet_key: bytes,
        pn: int,
        n: int,
        associated: bytes,
        ciphertext: bytes,
        check: PayloadCheck | None = None,
    ) -> bytes:
        """Decrypt one message; ``associated`` is every message byte before the ciphertext."""
        ad = self.ad + associated
        nr = self.nr

        slot = (ratchet_key, n)
        stored = self.skipped.get(slot)
        if stored is not None:
            payload = aead_decrypt(*_MESSAGE_KEYS.derive(stored[0]), ciphertext, ad)
            if check is not None:
                check(payload)
            del self.skipped[slot]
            return payload

        if ratchet_key == self.dhr:
            if self.ckr is None:
                raise DecryptionFailed("message reuses the responder's prekey as ratchet key")
            if n < nr:
                raise ReplayedMessage("message number already received (or its key expired)")
            if n - nr > MAX_SKIP:
                raise TooManySkippedMessages(f"message skips {n - nr} keys (max {MAX_SKIP})")
            new_keys, ck = _skip(self.ckr, nr, n, ratchet_key)
            key, nonce, ck = _step(ck)
            payload = aead_decrypt(key, nonce, ciphertext, ad)
            if check is not None:
                check(payload)
            self._store(new_keys, self.chain_index)
            self.ckr = ck
            self.nr = n + 1
            return payload

        if ratchet_key in self.old_chains:
            raise ReplayedMessage("message from an old chain already received (or its key expired)")

        # A new ratchet public key: DH ratchet step, computed on the side.
        if n > MAX_SKIP:
            raise TooManySkippedMessages(f"message skips {n} keys (max {MAX_SKIP})")
        old_keys: list[tuple[tuple[bytes, int], bytes]] = []
        if self.ckr is not None and self.dhr is not None and pn - self.nr <= MAX_SKIP:
            # Further than that, the previous chain is given up (its missing messages
            # are lost; refusing the new chain would lose every later one too).
            old_keys, _ = _skip(self.ckr, self.nr, pn, self.dhr)
        try:
            dh_out = self.dhs.dh(ratchet_key)
        except InvalidKey as exc:
            raise DecryptionFailed("ratchet key is a low-order point") from exc
        rk, ckr = kdf_rk(self.rk, dh_out)
        new_keys, ckr = _skip(ckr, 0, n, ratchet_key)
        key, nonce, ckr = _step(ckr)
        payload = aead_decrypt(key, nonce, ciphertext, ad)
        if check is not None:
            check(payload)

        # Success: commit.
        new_dhs = X25519KeyPair.generate(self.rng)
        rk, cks = kdf_rk(rk, new_dhs.dh(ratchet_key))
        if self.dhr is not None and self.ckr is not None:
            self.old_chains[self.dhr] = self.chain_index
        self._store(old_keys, self.chain_index)
        self.chain_index += 1
        self._store(new_keys, self.chain_index)
        self.pn = self.ns
        self.ns = 0
        self.nr = n + 1
        self.dhr = ratchet_key
        self.ckr = ckr
        self.cks = cks
        self.rk = rk
        self.dhs = new_dhs
        self._expire()
        return payload

    def _store(self, keys: list[tuple[tuple[bytes, int], bytes]], chain_index: int) -> None:
        skipped = self.skipped
        for slot, mk in keys:
            skipped[slot] = (mk, chain_index)
        excess = len(skipped) - MAX_SKIPPED_KEYS
        if excess > 0:
            for slot in list(skipped)[:excess]:  # oldest first
                del skipped[slot]

    def _expire(self) -> None:
        remembered = self.chain_index - MAX_REMEMBERED_CHAINS
        if len(self.old_chains) > MAX_REMEMBERED_CHAINS:
            self.old_chains = {k: i for k, i in self.old_chains.items() if i >= remembered}
        # The keys of the last MAX_OLD_CHAINS receiving chains (the current one
        # included) are kept: a chain's go at the MAX_OLD_CHAINS-th DH step after it.
        oldest = self.chain_index - MAX_OLD_CHAINS + 1
        if any(v[1] < oldest for v in self.skipped.values()):
            self.skipped = {s: v for s, v in self.skipped.items() if v[1] >= oldest}

    # ------------------------------------------------------------------ state

    def to_json(self) -> dict[str, Any]:
        def opt(value: bytes | None) -> str | None:
            return None if value is None else b64encode(value)

        return {
            "ad": b64encode(self.ad),
            "rk": b64encode(self.rk),
            "dhs": b64encode(self.dhs.private_bytes()),
            "dhr": opt(self.dhr),
            "cks": opt(self.cks),
            "ckr": opt(self.ckr),
            "ns": self.ns,
            "nr": self.nr,
            "pn": self.pn,
            "chain_index": self.chain_index,
            "skipped": [
                [b64encode(dh), n, b64encode(mk), idx]
                for (dh, n), (mk, idx) in self.skipped.items()
            ],
            "old_chains": [[b64encode(dh), idx] for dh, idx in self.old_chains.items()],
        }

    @classmethod
    def from_json(cls, obj: Any, rng: RandomSource = system_random) -> RatchetState:
        try:

            def key(value: Any, length: int = 32) -> bytes:
                return b64decode(value, field="ratchet", length=length)

            def opt(value: Any) -> bytes | None:
                return None if value is None else key(value)

            def count(value: Any) -> int:
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise MalformedState("ratchet: bad counter")
                return value

            return cls(
                ad=b64decode(obj["ad"], field="ad"),
                rk=key(obj["rk"]),
                dhs=X25519KeyPair.from_private_bytes(key(obj["dhs"])),
                dhr=opt(obj["dhr"]),
                cks=opt(obj["cks"]),
                ckr=opt(obj["ckr"]),
                ns=count(obj["ns"]),
                nr=count(obj["nr"]),
                pn=count(obj["pn"]),
                chain_index=count(obj["chain_index"]),
                skipped={
                    (key(dh), count(n)): (key(mk), count(idx)) for dh, n, mk, idx in obj["skipped"]
                },
                old_chains={key(dh): count(idx) for dh, idx in obj["old_chains"]},
                rng=rng,
            )
        except (KeyError, TypeError, ValueError, MalformedBundle) as exc:
            raise MalformedState("ratchet state does not parse") from exc
