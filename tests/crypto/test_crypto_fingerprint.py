"""Safety numbers and message franking."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from parley.crypto import (
    BadCommitment,
    CryptoError,
    Device,
    FrankingMismatch,
    InvalidKeyLength,
    InvalidSafetyNumber,
    MalformedMessage,
    Session,
    UnsupportedVersion,
    commitment_from_message,
    format_safety_number,
    franking,
    safety_number,
    verify_report,
)
from parley.crypto.fingerprint import FINGERPRINT_ITERATIONS, fingerprint_digits

from tests.crypto.drbg import deterministic_random
from tests.crypto.helpers import IDS, claimed_bundle, load_vector, session_pair


def test_safety_number_vector() -> None:
    vec = load_vector("misc.json")["safety_number"]
    alice_key = bytes.fromhex(vec["alice_signing_key"])
    bob_key = bytes.fromhex(vec["bob_signing_key"])
    assert fingerprint_digits(alice_key, vec["alice_user_id"]) == vec["alice_digits"]
    assert fingerprint_digits(bob_key, vec["bob_user_id"]) == vec["bob_digits"]
    assert safety_number(alice_key, "alice", bob_key, "bob") == vec["safety_number"]


def test_fingerprint_follows_signal_construction() -> None:
    key, user = bytes(range(32)), "user-1"
    digest = b"\x00\x00" + key + user.encode()
    for _ in range(FINGERPRINT_ITERATIONS):
        digest = hashlib.sha512(digest + key).digest()
    expected = "".join(
        f"{int.from_bytes(digest[i : i + 5], 'big') % 100000:05d}" for i in range(0, 30, 5)
    )
    assert fingerprint_digits(key, user) == expected


def test_safety_number_is_symmetric_and_formatted() -> None:
    a, b = session_pair()
    number_a = a.safety_number("alice", "bob")
    number_b = b.safety_number("bob", "alice")
    assert number_a == number_b
    assert len(number_a) == 60 and number_a.isdigit()
    formatted = format_safety_number(number_a)
    assert len(formatted.split(" ")) == 12 and all(len(g) == 5 for g in formatted.split(" "))
    for bad in ("123", "1" * 59 + "x", "1" * 61, ""):
        with pytest.raises(InvalidSafetyNumber):
            format_safety_number(bad)
    assert issubclass(InvalidSafetyNumber, CryptoError)
    with pytest.raises(TypeError):
        format_safety_number(int("1" * 60))  # type: ignore[arg-type]


def test_safety_number_changes_when_any_input_changes() -> None:
    d1, d2, d3 = (Device.generate(deterministic_random(bytes([i]))) for i in range(3))
    k1, k2, k3 = d1.identity.signing_key, d2.identity.signing_key, d3.identity.signing_key
    base = safety_number(k1, "alice", k2, "bob")
    assert safety_number(k2, "bob", k1, "alice") == base
    assert safety_number(k1, "alice", k3, "bob") != base  # bob's key replaced
    assert safety_number(k3, "alice", k2, "bob") != base  # alice's key replaced
    assert safety_number(k1, "alice", k2, "bobby") != base  # other user id


# ----------------------------------------------------------------- franking


def test_franking_vector() -> None:
    vec = load_vector("misc.json")["franking"]
    assert bytes.fromhex(vec["context"]) == franking.CONTEXT
    fk, pt = bytes.fromhex(vec["franking_key"]), bytes.fromhex(vec["plaintext"])
    assert franking.commit(pt, fk).hex() == vec["commitment"]
    verify_report(pt, fk, bytes.fromhex(vec["commitment"]))


def test_franking_commit_is_hmac_sha256_over_context_and_plaintext() -> None:
    fk, plaintext = bytes(range(32)), b"report me"
    expected = hmac.digest(fk, b"parley-v1/franking\x00" + plaintext, hashlib.sha256)
    assert franking.commit(plaintext, fk) == expected
    with pytest.raises(InvalidKeyLength):
        franking.commit(plaintext, bytes(31))
    with pytest.raises(TypeError):
        franking.commit("text", fk)  # type: ignore[arg-type]


@settings(max_examples=30, deadline=None)
@given(plaintext=st.binary(max_size=500))
def test_report_round_trip_through_a_session(plaintext: bytes) -> None:
    a, b = _pair()
    message = a.encrypt(plaintext)
    received = b.decrypt_message(message)
    assert received.plaintext == plaintext
    # the server only stored the ciphertext; the commitment is at a fixed offset
    stored_commitment = commitment_from_message(message)
    assert received.commitment == stored_commitment
    verify_report(received.plaintext, received.franking_key, stored_commitment)
    with pytest.raises(FrankingMismatch):
        verify_report(received.plaintext + b"!", received.franking_key, stored_commitment)
    with pytest.raises(FrankingMismatch):
        verify_report(received.plaintext, bytes(32), stored_commitment)


_PAIR: list[tuple[Session, Session]] = []


def _pair() -> tuple[Session, Session]:
    if not _PAIR:
        _PAIR.append(session_pair())
    return _PAIR[0]


def test_report_of_first_message_via_respond_message() -> None:
    alice, bob = Device.generate(), Device.generate()
    _, first = Session.initiate(alice, claimed_bundle(bob), b"first, reported", binding=IDS)
    _, received = Session.respond_message(bob, first, binding=IDS)
    verify_report(received.plaintext, received.franking_key, commitment_from_message(first))


def test_sender_cannot_send_an_unreportable_message() -> None:
    """A malicious sender puts a commitment that doesn't match: the recipient refuses it."""
    a, b = session_pair()
    ratchet = a._ratchet
    fake_commitment = bytes(32)
    prefix = b"\x01\x01" + fake_commitment
    header, ciphertext = ratchet.encrypt(bytes(32) + b"abuse", prefix)
    before = b.to_bytes()
    with pytest.raises(BadCommitment):
        b.decrypt(prefix + header + ciphertext)
    assert b.to_bytes() == before


def test_verify_report_input_checks() -> None:
    with pytest.raises(FrankingMismatch):
        verify_report(b"x", bytes(31), bytes(32))
    with pytest.raises(FrankingMismatch):
        verify_report(b"x", bytes(32), bytes(31))
    with pytest.raises(TypeError):
        verify_report("x", bytes(32), bytes(32))  # type: ignore[arg-type]
    assert issubclass(FrankingMismatch, CryptoError)
    assert not issubclass(FrankingMismatch, ValueError)


def test_commitment_from_message_errors() -> None:
    with pytest.raises(MalformedMessage) as too_short:
        commitment_from_message(b"\x01\x01short")
    assert type(too_short.value) is MalformedMessage
    with pytest.raises(MalformedMessage):
        commitment_from_message(b"")
    with pytest.raises(UnsupportedVersion):  # a MalformedMessage
        commitment_from_message(b"\x09" * 40)
    with pytest.raises(TypeError):
        commitment_from_message("\x01" * 40)  # type: ignore[arg-type]
    message = b"\x01\x03" + bytes(range(32))
    assert commitment_from_message(message) == bytes(range(32))
