"""Primitive wrappers against published vectors (RFC 7748, RFC 8032, RFC 5869, FIPS 203)."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st
from parley.crypto.bundle import PublicIdentity
from parley.crypto.errors import (
    DecryptionFailed,
    InvalidKey,
    InvalidKeyLength,
    InvalidSignature,
)
from parley.crypto.primitives import (
    Ed25519KeyPair,
    MessageKeyDeriver,
    MLKEM768KeyPair,
    X25519KeyPair,
    aead_decrypt,
    aead_encrypt,
    chain_key_step,
    ed25519_verify,
    hkdf_sha256,
    hmac_sha256,
    hmac_sha256_key32,
    mlkem768_encapsulate,
)

from tests.crypto.helpers import load_vector

# ----------------------------------------------------------------- X25519 (RFC 7748)


def _x25519(scalar: bytes, u: bytes) -> bytes:
    return X25519KeyPair.from_private_bytes(scalar).dh(u)


def test_x25519_rfc7748_section_5_2() -> None:
    vec = load_vector("x25519_rfc7748.json")
    for case in vec["scalar_mult"]:
        out = _x25519(bytes.fromhex(case["scalar"]), bytes.fromhex(case["u"]))
        assert out.hex() == case["output"]


def test_x25519_rfc7748_section_5_2_iterated() -> None:
    vec = load_vector("x25519_rfc7748.json")["iterated"]
    k = u = bytes.fromhex(vec["start"])
    done = 0
    for result in vec["results"]:
        # Raw cryptography objects here: 1000 rounds through the wrapper is the same code.
        while done < result["iterations"]:
            k, u = (
                X25519PrivateKey.from_private_bytes(k).exchange(
                    X25519PublicKey.from_public_bytes(u)
                ),
                k,
            )
            done += 1
        assert k.hex() == result["k"]


def test_x25519_rfc7748_section_6_1() -> None:
    vec = load_vector("x25519_rfc7748.json")["diffie_hellman"]
    alice = X25519KeyPair.from_private_bytes(bytes.fromhex(vec["alice_private"]))
    bob = X25519KeyPair.from_private_bytes(bytes.fromhex(vec["bob_private"]))
    assert alice.public.hex() == vec["alice_public"]
    assert bob.public.hex() == vec["bob_public"]
    assert alice.dh(bob.public).hex() == vec["shared"]
    assert bob.dh(alice.public).hex() == vec["shared"]
    assert alice.private_bytes().hex() == vec["alice_private"]


def test_x25519_rejects_low_order_point_and_bad_lengths() -> None:
    pair = X25519KeyPair.generate()
    with pytest.raises(InvalidKey):
        pair.dh(bytes(32))  # u = 0: all-zero shared secret
    with pytest.raises(InvalidKeyLength):
        pair.dh(bytes(31))
    with pytest.raises(InvalidKeyLength):
        X25519KeyPair.from_private_bytes(bytes(33))
    with pytest.raises(TypeError):
        pair.dh(bytearray(32))  # type: ignore[arg-type]
    assert pair.private_bytes().hex() not in repr(pair)


# ----------------------------------------------------------------- Ed25519 (RFC 8032)


def test_ed25519_rfc8032_section_7_1() -> None:
    vec = load_vector("ed25519_rfc8032.json")
    assert [t["name"] for t in vec["tests"]] == ["TEST 1", "TEST 2", "TEST 3"]
    for case in vec["tests"]:
        pair = Ed25519KeyPair.from_seed(bytes.fromhex(case["secret_key"]))
        message = bytes.fromhex(case["message"])
        assert pair.public.hex() == case["public_key"]
        assert pair.sign(message).hex() == case["signature"]
        ed25519_verify(pair.public, bytes.fromhex(case["signature"]), message)


def test_ed25519_verify_raises_on_any_change() -> None:
    vec = load_vector("ed25519_rfc8032.json")["tests"][2]
    pub = bytes.fromhex(vec["public_key"])
    sig = bytes.fromhex(vec["signature"])
    msg = bytes.fromhex(vec["message"])
    with pytest.raises(InvalidSignature):
        ed25519_verify(pub, sig, msg + b"\x00")
    with pytest.raises(InvalidSignature):
        ed25519_verify(pub, bytes([sig[0] ^ 1]) + sig[1:], msg)
    with pytest.raises(InvalidSignature):
        ed25519_verify(bytes(32), sig, msg)
    with pytest.raises(InvalidKeyLength):
        ed25519_verify(pub, sig[:63], msg)


# The eight points of small order (orders 1, 2, 4, 8) by canonical y, and the two
# non-canonical y (p and p + 1), each with the sign bit clear and set: 14 encodings.
_P = 2**255 - 19
_SMALL_ORDER_Y = [
    0,
    1,
    _P - 1,
    0x05FC536D880238B13933C6D305ACDFD5F098EFF289F4C345B027B2C28F95E826,
    0x7A03AC9277FDC74EC6CC392CFA53202A0F67100D760B3CBA4FD84D3D706A17C7,
    _P,
    _P + 1,
]
SMALL_ORDER_ED25519_KEYS = [
    (y | sign << 255).to_bytes(32, "little") for y in _SMALL_ORDER_Y for sign in (0, 1)
]
# R = the identity point, S = 0: with a small-order public key whose [h]A is the
# identity, OpenSSL's (cofactorless) check accepts it for every message.
IDENTITY_SIGNATURE = (1).to_bytes(32, "little") + bytes(32)


def test_small_order_ed25519_public_keys_are_refused() -> None:
    assert len(set(SMALL_ORDER_ED25519_KEYS)) == 14
    for key in SMALL_ORDER_ED25519_KEYS:
        for message in (b"", b"any message", b"parley-v1/identity-dh" + bytes(32)):
            with pytest.raises(InvalidSignature):
                ed25519_verify(key, IDENTITY_SIGNATURE, message)
    # So an identity (or a device list, a sender key) cannot claim such a key: with
    # it, one signature would "sign" every DH key.
    for dh_key in (bytes(range(32)), X25519KeyPair.generate().public):
        with pytest.raises(InvalidSignature):
            PublicIdentity(SMALL_ORDER_ED25519_KEYS[2], dh_key, IDENTITY_SIGNATURE).verify()
    # Ordinary keys are unaffected.
    pair = Ed25519KeyPair.generate()
    ed25519_verify(pair.public, pair.sign(b"m"), b"m")


# ----------------------------------------------------------------- HKDF (RFC 5869) and HMAC


def test_hkdf_sha256_rfc5869_appendix_a() -> None:
    vec = load_vector("hkdf_sha256_rfc5869.json")
    assert len(vec["tests"]) == 3
    for case in vec["tests"]:
        okm = hkdf_sha256(
            bytes.fromhex(case["ikm"]),
            salt=bytes.fromhex(case["salt"]),
            info=bytes.fromhex(case["info"]),
            length=case["L"],
        )
        assert okm.hex() == case["okm"]
        # PRK = HMAC(salt or zeros, IKM): check our HMAC against the published PRK too.
        salt = bytes.fromhex(case["salt"]) or bytes(32)
        assert hmac_sha256(salt, bytes.fromhex(case["ikm"])).hex() == case["prk"]


def test_hkdf_length_and_type_checks() -> None:
    with pytest.raises(ValueError):
        hkdf_sha256(b"x", salt=b"", info=b"", length=0)
    with pytest.raises(ValueError):
        hkdf_sha256(b"x", salt=b"", info=b"", length=255 * 32 + 1)
    with pytest.raises(TypeError):
        hkdf_sha256("x", salt=b"", info=b"", length=32)  # type: ignore[arg-type]


# ----------------------------------------------------------------- AES-256-GCM


def test_aead_round_trip_and_every_failure_is_decryption_failed() -> None:
    key, nonce = bytes(range(32)), bytes(12)
    ct = aead_encrypt(key, nonce, b"plaintext", b"ad")
    assert aead_decrypt(key, nonce, ct, b"ad") == b"plaintext"
    failures: list[Callable[[], bytes]] = [
        lambda: aead_decrypt(key, nonce, ct, b"AD"),
        lambda: aead_decrypt(key, nonce, bytes([ct[0] ^ 1]) + ct[1:], b"ad"),
        lambda: aead_decrypt(key, bytes([1]) + nonce[1:], ct, b"ad"),
        lambda: aead_decrypt(key, nonce, ct[:15], b"ad"),
    ]
    for bad in failures:
        with pytest.raises(DecryptionFailed):
            bad()
    with pytest.raises(InvalidKeyLength):
        aead_encrypt(bytes(16), nonce, b"", b"")
    with pytest.raises(InvalidKeyLength):
        aead_decrypt(key, bytes(8), ct, b"ad")


# ----------------------------------------------------------------- ML-KEM-768 (FIPS 203)


def test_mlkem768_fips203_known_answer() -> None:
    vec = load_vector("mlkem768_fips203.json")
    for case in vec["tests"]:
        pair = MLKEM768KeyPair.from_seed(bytes.fromhex(case["d"] + case["z"]))
        assert pair.public.hex() == case["ek"]
        assert pair.seed().hex() == case["d"] + case["z"]
        c = bytes.fromhex(case["c"])
        assert pair.decapsulate(c).hex() == case["K"]
        # Implicit rejection: a modified ciphertext gives another secret, no exception.
        assert pair.decapsulate(bytes([c[0] ^ 1]) + c[1:]).hex() != case["K"]


def test_mlkem768_encapsulation_round_trip() -> None:
    vec = load_vector("mlkem768_fips203.json")["tests"][0]
    pair = MLKEM768KeyPair.from_seed(bytes.fromhex(vec["d"] + vec["z"]))
    shared, ciphertext = mlkem768_encapsulate(pair.public)
    assert len(pair.public) == 1184 and len(ciphertext) == 1088 and len(shared) == 32
    assert pair.decapsulate(ciphertext) == shared
    with pytest.raises(InvalidKeyLength):
        mlkem768_encapsulate(pair.public[:-1])
    with pytest.raises(InvalidKeyLength):
        pair.decapsulate(ciphertext[:-1])
    with pytest.raises(InvalidKeyLength):
        MLKEM768KeyPair.from_seed(bytes(32))


def test_mlkem768_rejects_encapsulation_key_failing_modulus_check() -> None:
    # FIPS 203 7.2: every 12-bit coefficient must be < q = 3329; 0xFFF is not.
    with pytest.raises(InvalidKey):
        mlkem768_encapsulate(b"\xff" * 1184)


# ----------------------------------------------------------------- HMAC/HKDF fast path
# hmac_sha256_key32, chain_key_step and MessageKeyDeriver spell HMAC and HKDF out over
# hashlib for speed (docs/BENCHMARKS.md, "HMAC/HKDF fast path").  They must give exactly
# what cryptography's own HMAC and HKDF give: on the RFC 5869 vectors, on edge cases
# (hypothesis) and on many seeded random inputs.

_SHA256 = hashes.SHA256()


def _reference_hmac(key: bytes, data: bytes) -> bytes:
    mac = crypto_hmac.HMAC(key, _SHA256)
    mac.update(data)
    return mac.finalize()


def _reference_hkdf(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    return HKDF(_SHA256, length, salt, info).derive(ikm)


def _check_fast_path(key: bytes, data: bytes, info: bytes) -> None:
    assert hmac_sha256_key32(key, data) == _reference_hmac(key, data)
    mk, next_ck = chain_key_step(key)
    assert mk == _reference_hmac(key, b"\x01")
    assert next_ck == _reference_hmac(key, b"\x02")
    deriver = MessageKeyDeriver(info)
    aes_key, nonce = deriver.derive(key)
    assert aes_key + nonce == _reference_hkdf(key, bytes(32), info, 44)
    okm = _reference_hkdf(mk, bytes(32), info, 44)  # KDF_CK, then the message-key HKDF
    assert deriver.step(key) == (okm[:32], okm[32:], next_ck)


def test_fast_path_reproduces_rfc5869_appendix_a() -> None:
    """Every published OKM rebuilt with the fast HMAC (expand: T(i) = HMAC(PRK, T(i-1) ||
    info || i)); A.3's zero salt also through the fast extract."""
    vec = load_vector("hkdf_sha256_rfc5869.json")
    for case in vec["tests"]:
        ikm, salt, info = (bytes.fromhex(case[k]) for k in ("ikm", "salt", "info"))
        prk = bytes.fromhex(case["prk"])
        assert _reference_hmac(salt or bytes(32), ikm) == prk  # the reference agrees
        okm, block, i = b"", b"", 1
        while len(okm) < case["L"]:
            block = hmac_sha256_key32(prk, block + info + bytes([i]))
            okm, i = okm + block, i + 1
        assert okm[: case["L"]].hex() == case["okm"]
        if not salt:  # A.3: no salt = 32 zero bytes, the message-key HKDF's salt
            assert hmac_sha256_key32(bytes(32), ikm) == prk
    assert [bool(bytes.fromhex(c["salt"])) for c in vec["tests"]] == [True, True, False]


@settings(max_examples=300, deadline=None)
@given(
    key=st.binary(min_size=32, max_size=32),
    data=st.binary(max_size=300),
    info=st.binary(max_size=100),
)
def test_fast_path_equals_cryptography_on_edge_cases(key: bytes, data: bytes, info: bytes) -> None:
    _check_fast_path(key, data, info)


def test_fast_path_equals_cryptography_on_many_random_inputs() -> None:
    rng = random.Random(5869)
    for _ in range(2000):
        key = rng.randbytes(32)
        data = rng.randbytes(
            rng.choice((0, 1, 31, 32, 33, 55, 56, 63, 64, 65, rng.randrange(2048)))
        )
        info = rng.randbytes(rng.randrange(120))
        _check_fast_path(key, data, info)


def test_fast_path_input_checks() -> None:
    with pytest.raises(InvalidKeyLength):
        chain_key_step(bytes(31))
    with pytest.raises(InvalidKeyLength):
        hmac_sha256_key32(bytes(16), b"")
    with pytest.raises(InvalidKeyLength):
        MessageKeyDeriver(b"info").derive(bytes(33))
    with pytest.raises(InvalidKeyLength):
        MessageKeyDeriver(b"info").step(bytes(31))
