"""Binary wire encoding of Parley ciphertexts (version 1).

Every message starts with ``version (1) | type (1) | commitment (32)``, so the
franking commitment is always bytes [2:34] (see :mod:`parley.crypto.franking`).
Integers are unsigned big-endian.  Layouts (offsets in bytes):

Pairwise message, type 0x01 (74 bytes + ciphertext)::

    0   version = 0x01
    1   type    = 0x01
    2   commitment                      32
    34  ratchet public key              32    ratchet header (40 bytes):
    66  PN (previous chain length)      u32   dh || PN || N
    70  N  (message number)             u32
    74  AES-256-GCM ciphertext || tag (payload = franking key (32) || plaintext)

Pairwise initial (PQXDH) message, type 0x02 (1335 bytes + ciphertext)::

    0    version = 0x01
    1    type    = 0x02
    2    commitment                     32
    34   initiator signing key          32    prekey section (1261 bytes),
    66   initiator DH identity key      32    bytes [34:1295]
    98   initiator dh_sig               64
    162  ephemeral key EK_A             32
    194  signed prekey id               u32
    198  one-time prekey present        u8 (0 or 1)
    199  one-time prekey id             u32 (0 when absent)
    203  KEM prekey id                  u32
    207  ML-KEM-768 ciphertext          1088
    1295 ratchet header                 40
    1335 AES-256-GCM ciphertext || tag

Group message, type 0x03 (42 bytes + ciphertext + 64)::

    0   version, 1 type, 2 commitment (32)
    34  sender chain id                 u32
    38  iteration                       u32
    42  AES-256-GCM ciphertext || tag
    -64 Ed25519 signature over every preceding byte

Sender key distribution message, type 0x04 (carried inside a pairwise message)::

    0   version, 1 type
    2   sender chain id                 u32
    6   iteration                       u32
    10  chain key                       32
    42  signing public key              32
    74  group id length                 u16
    76  group id (UTF-8)

For types 0x01 and 0x02 the AEAD associated data is ``session AD (128 bytes)
|| every byte before the ciphertext``; for 0x03 it is ``group AD || bytes
[0:42]``.  Thus the header, the commitment and (for 0x02) the whole prekey
section are authenticated.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

from parley.crypto.bundle import PublicIdentity
from parley.crypto.errors import MalformedMessage, UnsupportedVersion
from parley.crypto.franking import COMMITMENT_LEN
from parley.crypto.primitives import GCM_TAG_LEN, MLKEM768_CT_LEN

__all__ = [
    "GROUP_PREFIX_LEN",
    "HEADER_LEN",
    "INITIAL_PREFIX_LEN",
    "MESSAGE_PREFIX_LEN",
    "PREKEY_SECTION_LEN",
    "SIGNATURE_LEN",
    "TYPE_GROUP",
    "TYPE_INITIAL",
    "TYPE_MESSAGE",
    "TYPE_SENDER_KEY_DISTRIBUTION",
    "VERSION",
    "GroupMessage",
    "PairwiseMessage",
    "PrekeySection",
    "SenderKeyDistribution",
    "check_prefix",
    "parse_group",
    "parse_pairwise",
]

VERSION = 1
TYPE_MESSAGE = 0x01
TYPE_INITIAL = 0x02
TYPE_GROUP = 0x03
TYPE_SENDER_KEY_DISTRIBUTION = 0x04

_START = 2 + COMMITMENT_LEN  # 34
HEADER_LEN = 40
PREKEY_SECTION_LEN = 32 + 32 + 64 + 32 + 4 + 1 + 4 + 4 + MLKEM768_CT_LEN  # 1261
MESSAGE_PREFIX_LEN = _START + HEADER_LEN  # 74
INITIAL_PREFIX_LEN = _START + PREKEY_SECTION_LEN + HEADER_LEN  # 1335
GROUP_PREFIX_LEN = _START + 8  # 42
SIGNATURE_LEN = 64
SKDM_FIXED_LEN = 76

_II = struct.Struct(">II")
_SECTION_IDS = struct.Struct(">IBII")


def check_prefix(data: bytes, expected_type: int | None = None) -> int:
    """Check version (and type, if given); return the type byte."""
    if not isinstance(data, bytes):
        raise TypeError(f"message must be bytes, not {type(data).__name__}")
    if len(data) < 2:
        raise MalformedMessage("message too short")
    if data[0] != VERSION:
        raise UnsupportedVersion(f"unsupported message version {data[0]}")
    if expected_type is not None and data[1] != expected_type:
        raise MalformedMessage(f"expected message type {expected_type}, got {data[1]}")
    return data[1]


@dataclass(frozen=True, slots=True)
class PrekeySection:
    """The PQXDH fields of an initial message."""

    identity: PublicIdentity
    ephemeral_key: bytes
    signed_prekey_id: int
    one_time_prekey_id: int | None
    kem_prekey_id: int
    kem_ciphertext: bytes

    def encode(self) -> bytes:
        has_otp = self.one_time_prekey_id is not None
        out = (
            self.identity.signing_key
            + self.identity.dh_key
            + self.identity.dh_sig
            + self.ephemeral_key
            + _SECTION_IDS.pack(
                self.signed_prekey_id,
                1 if has_otp else 0,
                self.one_time_prekey_id or 0,
                self.kem_prekey_id,
            )
            + self.kem_ciphertext
        )
        if len(out) != PREKEY_SECTION_LEN:
            raise MalformedMessage("prekey section has wrong field lengths")
        return out

    @classmethod
    def decode(cls, raw: bytes) -> PrekeySection:
        if len(raw) != PREKEY_SECTION_LEN:
            raise MalformedMessage("prekey section has the wrong length")
        spk_id, flag, otp_id, kem_id = _SECTION_IDS.unpack_from(raw, 160)
        if flag not in (0, 1) or (flag == 0 and otp_id != 0):
            raise MalformedMessage("bad one-time prekey flag")
        return cls(
            identity=PublicIdentity(raw[0:32], raw[32:64], raw[64:128]),
            ephemeral_key=raw[128:160],
            signed_prekey_id=spk_id,
            one_time_prekey_id=otp_id if flag else None,
            kem_prekey_id=kem_id,
            kem_ciphertext=raw[173:],
        )


class PairwiseMessage(NamedTuple):
    """A parsed type 0x01 or 0x02 message (slices of the original bytes)."""

    type: int
    commitment: bytes
    prekey_raw: bytes | None
    ratchet_key: bytes
    previous_chain_length: int
    message_number: int
    associated: bytes  # every byte before the ciphertext (goes into the AEAD AD)
    ciphertext: bytes


def parse_pairwise(data: bytes) -> PairwiseMessage:
    if (
        type(data) is bytes
        and len(data) >= MESSAGE_PREFIX_LEN + GCM_TAG_LEN
        and data[0] == VERSION
        and data[1] == TYPE_MESSAGE
    ):  # fast path for the common case
        pn, n = _II.unpack_from(data, 66)
        return PairwiseMessage(
            TYPE_MESSAGE,
            data[2:_START],
            None,
            data[_START:66],
            pn,
            n,
            data[:MESSAGE_PREFIX_LEN],
            data[MESSAGE_PREFIX_LEN:],
        )
    kind = check_prefix(data)
    if kind == TYPE_MESSAGE:
        header_at, prekey_raw = _START, None
    elif kind == TYPE_INITIAL:
        header_at = _START + PREKEY_SECTION_LEN
        prekey_raw = data[_START:header_at]
    else:
        raise MalformedMessage(f"not a pairwise message (type {kind})")
    body_at = header_at + HEADER_LEN
    if len(data) < body_at + GCM_TAG_LEN:
        raise MalformedMessage("message too short")
    pn, n = _II.unpack_from(data, header_at + 32)
    return PairwiseMessage(
        type=kind,
        commitment=data[2:_START],
        prekey_raw=prekey_raw,
        ratchet_key=data[header_at : header_at + 32],
        previous_chain_length=pn,
        message_number=n,
        associated=data[:body_at],
        ciphertext=data[body_at:],
    )


def encode_header(ratchet_key: bytes, pn: int, n: int) -> bytes:
    return ratchet_key + _II.pack(pn, n)


@dataclass(frozen=True, slots=True)
class GroupMessage:
    commitment: bytes
    chain_id: int
    iteration: int
    associated: bytes
    """Bytes [0:42], authenticated by the AEAD."""
    ciphertext: bytes
    signed: bytes
    """Every byte the signature covers."""
    signature: bytes


def parse_group(data: bytes) -> GroupMessage:
    check_prefix(data, TYPE_GROUP)
    if len(data) < GROUP_PREFIX_LEN + GCM_TAG_LEN + SIGNATURE_LEN:
        raise MalformedMessage("group message too short")
    chain_id, iteration = _II.unpack_from(data, _START)
    return GroupMessage(
        commitment=data[2:_START],
        chain_id=chain_id,
        iteration=iteration,
        associated=data[:GROUP_PREFIX_LEN],
        ciphertext=data[GROUP_PREFIX_LEN:-SIGNATURE_LEN],
        signed=data[:-SIGNATURE_LEN],
        signature=data[-SIGNATURE_LEN:],
    )


def group_prefix(commitment: bytes, chain_id: int, iteration: int) -> bytes:
    return bytes((VERSION, TYPE_GROUP)) + commitment + _II.pack(chain_id, iteration)


@dataclass(frozen=True, slots=True)
class SenderKeyDistribution:
    group_id: str
    chain_id: int
    iteration: int
    chain_key: bytes
    signing_key: bytes

    def encode(self) -> bytes:
        gid = self.group_id.encode("utf-8")
        if len(gid) > 0xFFFF:
            raise MalformedMessage("group id too long")
        return (
            bytes((VERSION, TYPE_SENDER_KEY_DISTRIBUTION))
            + _II.pack(self.chain_id, self.iteration)
            + self.chain_key
            + self.signing_key
            + len(gid).to_bytes(2, "big")
            + gid
        )

    @classmethod
    def decode(cls, data: bytes) -> SenderKeyDistribution:
        check_prefix(data, TYPE_SENDER_KEY_DISTRIBUTION)
        if len(data) < SKDM_FIXED_LEN:
            raise MalformedMessage("sender key distribution message too short")
        chain_id, iteration = _II.unpack_from(data, 2)
        gid_len = int.from_bytes(data[74:76], "big")
        if len(data) != SKDM_FIXED_LEN + gid_len:
            raise MalformedMessage("sender key distribution message has the wrong length")
        try:
            group_id = data[76:].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedMessage("group id is not UTF-8") from exc
        return cls(group_id, chain_id, iteration, data[10:42], data[42:74])
