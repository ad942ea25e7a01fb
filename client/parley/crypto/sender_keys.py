"""Sender keys for groups (as in Signal's sender keys).

Each member has, per group, a *sender chain*: a random 32-bit chain id, a
chain key, an iteration counter and an Ed25519 signing key.  The member sends
a :class:`~parley.crypto.wire.SenderKeyDistribution` (chain id, iteration,
chain key, public signing key, group id) to every other member over the
pairwise sessions; after that every group message is encrypted once:

* ``(mk, next_ck) = (HMAC-SHA256(ck, 0x01), HMAC-SHA256(ck, 0x02))``
* ``key || nonce = HKDF-SHA256(salt = 32 zero bytes, ikm = mk,
  info = "parley-v1/sender-key/message-keys", L = 44)``
* AES-256-GCM with AD = ``"parley-v1/group" || u16(len(group id)) || group id
  || message bytes [0:42]`` and an Ed25519 signature over the whole message.

Receivers verify the signature first, then derive the key for the message's
iteration: at most :data:`MAX_SKIP` (25,000, libsignal's bound; 2000 before
2026-12-08, when a sender's chain with more of its messages expired unread stayed
unreadable until it rotated) iterations ahead, keeping at most
:data:`MAX_SKIPPED_KEYS` (2000) skipped keys per chain (oldest evicted);
``GroupSession`` keeps ``CHAINS_KEPT_PER_SENDER`` (64) chains per sender (older
ones dropped; several exist around rotations: 5 until 2026-12-08).  Decryption is
transactional.  The ids of
dropped chains are remembered (the last :data:`MAX_RETIRED_CHAINS` per sender),
and a distribution message for one of them is refused (``RetiredSenderKey``):
taking it again would rewind the chain and let its old messages be replayed.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from parley.crypto.encoding import U32_MAX, b64decode, b64encode
from parley.crypto.errors import (
    CounterExhausted,
    MalformedBundle,
    MalformedState,
    ReplayedMessage,
    TooManySkippedMessages,
)
from parley.crypto.primitives import (
    Ed25519KeyPair,
    MessageKeyDeriver,
    RandomSource,
    aead_decrypt,
    aead_encrypt,
    chain_key_step,
    ed25519_verify,
)
from parley.crypto.wire import GroupMessage, SenderKeyDistribution, group_prefix

__all__ = [
    "MAX_RETIRED_CHAINS",
    "MAX_SKIP",
    "MAX_SKIPPED_KEYS",
    "MESSAGE_INFO",
    "ReceiverChain",
    "SenderChain",
    "group_associated_data",
]

MESSAGE_INFO = b"parley-v1/sender-key/message-keys"
MAX_SKIP = 25_000  # libsignal's MAX_FORWARD_JUMPS
MAX_SKIPPED_KEYS = 2000
MAX_RETIRED_CHAINS = 1000
_MESSAGE_KEYS = MessageKeyDeriver(MESSAGE_INFO)
_U32 = struct.Struct(">I")


def group_associated_data(group_id: str) -> bytes:
    gid = group_id.encode("utf-8")
    return b"parley-v1/group" + len(gid).to_bytes(2, "big") + gid


class SenderChain:
    """Our own sending chain in one group."""

    __slots__ = ("chain_id", "chain_key", "iteration", "signing")

    def __init__(
        self, chain_id: int, chain_key: bytes, iteration: int, signing: Ed25519KeyPair
    ) -> None:
        self.chain_id = chain_id
        self.chain_key = chain_key
        self.iteration = iteration
        self.signing = signing

    @classmethod
    def generate(cls, rng: RandomSource, avoid: set[int] | None = None) -> SenderChain:
        while True:
            chain_id = _U32.unpack(rng(4))[0]
            if not avoid or chain_id not in avoid:
                break
        return cls(chain_id, rng(32), 0, Ed25519KeyPair.generate(rng))

    def distribution(self, group_id: str) -> SenderKeyDistribution:
        return SenderKeyDistribution(
            group_id, self.chain_id, self.iteration, self.chain_key, self.signing.public
        )

    def encrypt(self, payload: bytes, commitment: bytes, group_ad: bytes) -> bytes:
        if self.iteration > U32_MAX:
            raise CounterExhausted("sender chain exhausted; rotate the sender key")
        mk, self.chain_key = chain_key_step(self.chain_key)
        prefix = group_prefix(commitment, self.chain_id, self.iteration)
        self.iteration += 1
        key, nonce = _MESSAGE_KEYS.derive(mk)
        body = prefix + aead_encrypt(key, nonce, payload, group_ad + prefix)
        return body + self.signing.sign(body)

    def to_json(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "chain_key": b64encode(self.chain_key),
            "iteration": self.iteration,
            "signing": b64encode(self.signing.seed()),
        }

    @classmethod
    def from_json(cls, obj: Any) -> SenderChain:
        try:
            return cls(
                int(obj["chain_id"]),
                b64decode(obj["chain_key"], length=32),
                int(obj["iteration"]),
                Ed25519KeyPair.from_seed(b64decode(obj["signing"], length=32)),
            )
        except (KeyError, TypeError, ValueError, MalformedBundle) as exc:
            raise MalformedState("sender chain does not parse") from exc


class ReceiverChain:
    """Another member's chain as we track it."""

    __slots__ = ("chain_id", "chain_key", "iteration", "signing_key", "skipped")

    def __init__(
        self,
        chain_id: int,
        chain_key: bytes,
        iteration: int,
        signing_key: bytes,
        skipped: dict[int, bytes] | None = None,
    ) -> None:
        self.chain_id = chain_id
        self.chain_key = chain_key
        self.iteration = iteration  # next iteration we have not derived yet
        self.signing_key = signing_key
        self.skipped: dict[int, bytes] = skipped or {}

    @classmethod
    def from_distribution(cls, dist: SenderKeyDistribution) -> ReceiverChain:
        return cls(dist.chain_id, dist.chain_key, dist.iteration, dist.signing_key)

    def decrypt(
        self,
        message: GroupMessage,
        group_ad: bytes,
        check: Callable[[bytes], None] | None = None,
    ) -> bytes:
        """Verify the signature, then decrypt; commits only on success (``check`` included)."""
        ed25519_verify(self.signing_key, message.signature, message.signed)
        ad = group_ad + message.associated
        n = message.iteration
        mk = self.skipped.get(n)
        if mk is not None:
            payload = self._open(mk, message.ciphertext, ad)
            if check is not None:
                check(payload)
            del self.skipped[n]
            return payload
        if n < self.iteration:
            raise ReplayedMessage("group message iteration already received (or its key expired)")
        if n - self.iteration > MAX_SKIP:
            raise TooManySkippedMessages(
                f"group message skips {n - self.iteration} keys (max {MAX_SKIP})"
            )
        ck = self.chain_key
        new_keys: list[tuple[int, bytes]] = []
        keep_from = n - MAX_SKIPPED_KEYS  # no more are ever stored
        for i in range(self.iteration, n):
            skipped_key, ck = chain_key_step(ck)
            if i >= keep_from:
                new_keys.append((i, skipped_key))
        mk, ck = chain_key_step(ck)
        payload = self._open(mk, message.ciphertext, ad)
        if check is not None:
            check(payload)
        for i, skipped_key in new_keys:
            self.skipped[i] = skipped_key
        excess = len(self.skipped) - MAX_SKIPPED_KEYS
        if excess > 0:
            for i in list(self.skipped)[:excess]:
                del self.skipped[i]
        self.chain_key = ck
        self.iteration = n + 1
        return payload

    @staticmethod
    def _open(mk: bytes, ciphertext: bytes, ad: bytes) -> bytes:
        return aead_decrypt(*_MESSAGE_KEYS.derive(mk), ciphertext, ad)

    def copy(self) -> ReceiverChain:
        return ReceiverChain(
            self.chain_id, self.chain_key, self.iteration, self.signing_key, dict(self.skipped)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "chain_key": b64encode(self.chain_key),
            "iteration": self.iteration,
            "signing_key": b64encode(self.signing_key),
            "skipped": [[i, b64encode(k)] for i, k in self.skipped.items()],
        }

    @classmethod
    def from_json(cls, obj: Any) -> ReceiverChain:
        try:
            return cls(
                int(obj["chain_id"]),
                b64decode(obj["chain_key"], length=32),
                int(obj["iteration"]),
                b64decode(obj["signing_key"], length=32),
                {int(i): b64decode(k, length=32) for i, k in obj["skipped"]},
            )
        except (KeyError, TypeError, ValueError, MalformedBundle) as exc:
            raise MalformedState("receiver chain does not parse") from exc
