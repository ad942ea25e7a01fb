"""The server's half of message franking, and the key that signs tombstones.

docs/crypto.md, "Message franking" and "Tombstones". One secret per key id
(``PARLEY_FRANKING_KEY``, ``PARLEY_FRANKING_KEY_ID``; retired pairs in
``PARLEY_FRANKING_RETIRED_KEYS``) gives two keys, by HKDF-SHA256 with one
label each: the HMAC key of the reporting tags, and the Ed25519 key that
signs tombstones (its public half is published, so clients verify).

A **reporting tag** binds what the server accepted about one copy of a
message to the sender's commitment::

    tag = HMAC-SHA256(tag key, "parley-v1/franking-tag\\0" || lp(kid) || lp(commitment)
                      || lp(server_id) || lp(sender) || lp(sender_device)
                      || lp(recipient) || lp(sent_at) || lp(conversation))

``lp(x)`` is a 4-byte big-endian length and the UTF-8 bytes of ``x`` (numbers
in decimal, the commitment as the base64url text the sender sent, a missing
conversation as ""). It travels as ``"<kid>.<base64url tag>"``.

Servers never import the client's crypto package (CONVENTIONS.md): opening a
commitment is the one HMAC of client/parley/crypto/franking.py, written again
here in a few lines (its vectors are checked against both in the tests).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from parley_contract.frames import tombstone_signed_bytes

from services.common.config import ConfigError, Settings, retired_franking_keys

log = logging.getLogger(__name__)

TAG_CONTEXT = b"parley-v1/franking-tag\x00"
COMMITMENT_CONTEXT = b"parley-v1/franking\x00"
"""The sender's commitment is HMAC-SHA256(fk, this || plaintext) (parley.crypto.franking)."""
FRANKING_KEY_LEN = 32
COMMITMENT_LEN = 32


class TagInvalid(Exception):
    """The tag does not verify for these fields (forged, altered, another recipient's)."""


class CommitmentMismatch(Exception):
    """The plaintext and franking key do not open the commitment."""


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    """Decode base64url without padding; ``ValueError`` for anything else."""
    if not text.isascii() or any(c in text for c in "=+/ \n"):
        raise ValueError("base64url without padding expected")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error as exc:
        raise ValueError("base64url without padding expected") from exc


def _lp(value: str) -> bytes:
    raw = value.encode()
    return len(raw).to_bytes(4, "big") + raw


def _derive(secret: bytes, label: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=b"parley-v1/moderation", info=label).derive(secret)


@dataclass(frozen=True)
class TaggedFields:
    """What a tag binds: one copy of a message as the server accepted it."""

    commitment: str
    server_id: str
    sender: str
    sender_device: int
    recipient: str
    sent_at: int
    conversation: str | None

    def encode(self, kid: str) -> bytes:
        head, tail = self.around_recipient(kid)
        return head + _lp(self.recipient) + tail

    def around_recipient(self, kid: str) -> tuple[bytes, bytes]:
        """What :meth:`encode` puts before the recipient and after it."""
        before = (kid, self.commitment, self.server_id, self.sender, str(int(self.sender_device)))
        after = (str(int(self.sent_at)), self.conversation or "")
        return TAG_CONTEXT + b"".join(map(_lp, before)), b"".join(map(_lp, after))


def require_franking_key(settings: Settings) -> None:
    """Refuse (ConfigError) to run without ``PARLEY_FRANKING_KEY`` outside development:
    each process would draw a key of its own, so with several delivery processes (or
    after a restart) reports would not verify and two tombstone keys would share one
    key id. ``PARLEY_ENV=development`` allows it (with a warning at start)."""
    key = settings.franking_key
    if settings.env != "development" and not (key and key.get_secret_value()):
        raise ConfigError(
            "PARLEY_FRANKING_KEY is required: it keys the franking tags and tombstone "
            "signatures of every delivery process (set PARLEY_ENV=development to draw a "
            "random one per process on a development machine)"
        )


class ModerationKeys:
    """The tag keys and tombstone signing keys, by key id (the current one signs and tags)."""

    def __init__(self, settings: Settings) -> None:
        # The retired keys verify and are published, and never sign: former keys, and
        # during a rotation's first step the next one (docs/deployment.md, "Rotating the
        # franking key"). Settings refused at start any entry that is malformed or
        # names the current id (it used to replace that id's former key silently).
        retired = settings.franking_retired_keys
        try:
            parsed = retired_franking_keys(retired.get_secret_value() if retired else "")
        except ValueError as exc:  # settings made without validation (model_copy)
            raise ConfigError(f"PARLEY_FRANKING_RETIRED_KEYS: {exc}") from None
        secrets_by_id = {kid: secret.encode() for kid, secret in parsed.items()}
        if settings.franking_key_id in secrets_by_id:
            raise ConfigError(
                "PARLEY_FRANKING_RETIRED_KEYS names the current key id (PARLEY_FRANKING_KEY_ID)"
            )
        if settings.franking_key is None:
            log.warning(
                "PARLEY_FRANKING_KEY is not set: franking tags use a random key for this "
                "process only (reports of messages stored before a restart will not verify)"
            )
            current = secrets.token_bytes(32)
        else:
            current = settings.franking_key.get_secret_value().encode()
        self.kid = settings.franking_key_id
        secrets_by_id[self.kid] = current
        self._tag_keys = {k: _derive(s, b"franking-tag") for k, s in secrets_by_id.items()}
        self._signers = {
            k: Ed25519PrivateKey.from_private_bytes(_derive(s, b"tombstone-signing"))
            for k, s in secrets_by_id.items()
        }

    # Tags ---------------------------------------------------------------------
    def tag(self, fields: TaggedFields) -> str:
        """The reporting tag of one copy, under the current key."""
        mac = hmac.new(self._tag_keys[self.kid], fields.encode(self.kid), hashlib.sha256)
        return f"{self.kid}.{b64url(mac.digest())}"

    def tagger(self, fields: TaggedFields) -> Callable[[str], str]:
        """:meth:`tag` for many recipients of one message (a room's members; the
        ``recipient`` of ``fields`` is not used): the MAC of what the copies share is
        computed once, then finished per recipient."""
        head, tail = fields.around_recipient(self.kid)
        shared = hmac.new(self._tag_keys[self.kid], head, hashlib.sha256)
        prefix = f"{self.kid}."

        def tag(recipient: str) -> str:
            mac = shared.copy()
            mac.update(_lp(recipient) + tail)
            return prefix + b64url(mac.digest())

        return tag

    def check_tag(self, tag: str, fields: TaggedFields) -> str:
        """Return the key id if ``tag`` is this server's tag of ``fields``; else
        :class:`TagInvalid` (an unknown key id included)."""
        kid, _, mac_text = tag.partition(".")
        key = self._tag_keys.get(kid)
        if key is None:
            raise TagInvalid("unknown key id")
        try:
            mac = unb64url(mac_text)
        except ValueError as exc:
            raise TagInvalid("malformed tag") from exc
        expected = hmac.new(key, fields.encode(kid), hashlib.sha256).digest()
        if not hmac.compare_digest(expected, mac):
            raise TagInvalid("tag does not verify")
        return kid

    # Tombstones ---------------------------------------------------------------
    def sign_tombstone(
        self, *, server_id: str, sender: str, conversation: str | None, by: str, at: int
    ) -> tuple[str, str]:
        """(key id, base64url Ed25519 signature) of a tombstone."""
        data = tombstone_signed_bytes(
            kid=self.kid, server_id=server_id, sender=sender, conversation=conversation,
            by=by, at=at,
        )  # fmt: skip
        return self.kid, b64url(self._signers[self.kid].sign(data))

    def public_keys(self) -> list[dict[str, object]]:
        """Every key id's tombstone verification key (raw Ed25519, base64url)."""
        out = []
        for kid, signer in sorted(self._signers.items()):
            raw = signer.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
            out.append({"kid": kid, "alg": "Ed25519", "public_key": b64url(raw),
                        "current": kid == self.kid})  # fmt: skip
        return out


def open_commitment(plaintext: bytes, franking_key: bytes, commitment: bytes) -> None:
    """Check that (plaintext, franking key) open the commitment, or raise
    :class:`CommitmentMismatch` (client/parley/crypto/franking.py's ``verify_report``)."""
    if len(franking_key) != FRANKING_KEY_LEN or len(commitment) != COMMITMENT_LEN:
        raise CommitmentMismatch("wrong length")
    expected = hmac.new(franking_key, COMMITMENT_CONTEXT + plaintext, hashlib.sha256).digest()
    if not hmac.compare_digest(expected, commitment):
        raise CommitmentMismatch("the plaintext and franking key do not open the commitment")
