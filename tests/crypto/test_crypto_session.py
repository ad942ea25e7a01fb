"""The public session API: devices, persistence, message kinds."""

from __future__ import annotations

import hashlib
from typing import Any

import parley.crypto as crypto
import parley.crypto.errors as crypto_errors
import pytest
from parley.crypto import (
    CounterExhausted,
    CryptoError,
    DecryptedMessage,
    Device,
    GroupSession,
    MalformedMessage,
    MalformedState,
    Session,
    UnsupportedVersion,
    initial_message_digest,
    is_initial_message,
)
from parley.crypto.encoding import U32_MAX, b64decode

from tests.crypto.helpers import IDS, claimed_bundle, session_pair


def test_all_errors_derive_from_crypto_error() -> None:
    exported = set()
    for name in crypto.__all__:
        obj = getattr(crypto, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, CryptoError), name
            assert not issubclass(obj, ValueError), name  # nothing else to catch by accident
            assert (obj.__module__, obj.__name__) == ("parley.crypto.errors", name)  # no alias
            exported.add(obj)
    defined = {
        obj
        for obj in vars(crypto_errors).values()
        if isinstance(obj, type) and issubclass(obj, Exception)
    }
    assert defined == exported  # every error is public


def test_device_round_trip_keeps_every_secret_working() -> None:
    bob = Device.generate()
    bundle = claimed_bundle(bob)
    extra = claimed_bundle(bob, one_time=False, kem_one_time=False)
    restored = Device.from_bytes(bob.to_bytes())
    assert restored.to_bytes() == bob.to_bytes()
    assert restored.public_identity() == bob.public_identity()
    for b in (bundle, extra):
        _, first = Session.initiate(Device.generate(), b, b"to restored", binding=IDS)
        assert Session.respond(restored, first, binding=IDS)[1] == b"to restored"
    assert restored.one_time_prekey_count == bob.one_time_prekey_count - 1


def test_device_state_does_not_parse_from_garbage() -> None:
    blob = Device.generate().to_bytes()
    for bad in (b"", b"\xff", b"null", b"{}", blob.replace(b'"v":1', b'"v":9'), blob[:100]):
        with pytest.raises(MalformedState):
            Device.from_bytes(bad)


def test_device_repr_has_no_secrets() -> None:
    device = Device.generate()
    assert device._identity_signing().seed().hex() not in repr(device)


def test_last_resort_rotation_keeps_previous_one() -> None:
    alice, bob = Device.generate(), Device.generate()
    _, first = Session.initiate(
        alice, claimed_bundle(bob, one_time=False, kem_one_time=False), binding=IDS
    )
    bob.rotate_last_resort_kem_prekey()
    Session.respond(bob, first, binding=IDS)  # previous last-resort key still usable
    bob.rotate_last_resort_kem_prekey()
    _, second = Session.initiate(
        alice, claimed_bundle(bob, one_time=False, kem_one_time=False), binding=IDS
    )
    bob.rotate_last_resort_kem_prekey()
    bob.rotate_last_resort_kem_prekey()
    with pytest.raises(crypto.PrekeyReused):  # rotated out twice: gone
        Session.respond(bob, second, binding=IDS)


def test_message_kinds_and_decrypt_message() -> None:
    a, b = session_pair(established=False)
    m = a.encrypt(b"still initial")
    assert is_initial_message(m)
    received = b.decrypt_message(m)
    assert isinstance(received, DecryptedMessage)
    assert received.plaintext == b"still initial" and len(received.franking_key) == 32
    assert a.decrypt(b.encrypt(b"reply")) == b"reply"
    m2 = a.encrypt(b"now plain")
    assert not is_initial_message(m2) and m2[:2] == b"\x01\x01"
    with pytest.raises(UnsupportedVersion):
        b.decrypt(b"\x02" + m2[1:])
    with pytest.raises(TypeError):
        a.encrypt("text")  # type: ignore[arg-type]


def test_empty_and_large_plaintexts() -> None:
    a, b = session_pair()
    for plaintext in (b"", b"\x00" * 65536):
        assert b.decrypt(a.encrypt(plaintext)) == plaintext


def test_group_state_garbage() -> None:
    with pytest.raises(MalformedState):
        GroupSession.from_bytes(b"{}")
    with pytest.raises(ValueError):
        GroupSession.create("")


def test_documented_upload_flow() -> None:
    bob = Device.generate()
    upload: dict[str, Any] = {
        "identity": bob.public_identity(),
        "signed_prekey": bob.signed_prekey(),
        "one_time_prekeys": bob.generate_one_time_prekeys(100),
        "kem_prekeys": bob.generate_kem_prekeys(100),
        "last_resort_kem_prekey": bob.last_resort_kem_prekey(),
    }
    bundle = {
        "user_id": "bob",
        "device_id": 7,
        "identity": upload["identity"],
        "signed_prekey": upload["signed_prekey"],
        "one_time_prekey": upload["one_time_prekeys"][0],
        "kem_prekey": dict(upload["kem_prekeys"][0], last_resort=False),
    }
    alice_session, first = Session.initiate(Device.generate(), bundle, b"hi", binding=IDS)
    bob_session, plaintext = Session.respond(bob, first, binding=IDS)
    assert plaintext == b"hi"
    assert alice_session.decrypt(bob_session.encrypt(b"hello")) == b"hello"


def test_keys_digest_matches_the_key_directory_formula() -> None:
    device = Device.generate()
    spk, lr, ident = device.signed_prekey(), device.last_resort_kem_prekey(), device.identity
    expected = hashlib.sha256(
        b"parley-v1/keys-check"
        + ident.signing_key
        + ident.dh_key
        + spk["id"].to_bytes(4, "big")
        + b64decode(spk["key"])
        + lr["id"].to_bytes(4, "big")
        + b64decode(lr["key"])
    ).digest()
    assert device.keys_digest() == expected
    device.rotate_signed_prekey()
    assert device.keys_digest() != expected


def test_exhausted_counters_raise_counter_exhausted() -> None:
    """2^32 messages, iterations or prekey ids: a narrow error, and nothing is sent."""
    a, _ = session_pair()
    a._ratchet.ns = U32_MAX + 1
    before = a.to_bytes()
    with pytest.raises(CounterExhausted):
        a.encrypt(b"one too many")
    assert a.to_bytes() == before

    group = GroupSession.create("g")
    group._own.iteration = U32_MAX + 1
    with pytest.raises(CounterExhausted):
        group.encrypt(b"rotate first")
    group.rotate()
    group.encrypt(b"fine after rotation")

    device = Device.generate()
    device._next_one_time_id = U32_MAX + 1
    with pytest.raises(CounterExhausted):
        device.generate_one_time_prekeys(1)


def test_initial_message_digest_names_a_handshake() -> None:
    """Every initial message of one handshake has the digest of the session it
    started (``Session.initial_digest``); another handshake's differs; a message that
    is not an initial message raises."""
    alice, bob = Device.generate(), Device.generate()
    a, first = Session.initiate(alice, claimed_bundle(bob), b"one", binding=IDS)
    second = a.encrypt(b"two")  # not answered yet: the same PQXDH fields
    b, _ = Session.respond(bob, first, binding=IDS)
    assert a.initial_digest is None
    assert initial_message_digest(first) == initial_message_digest(second) == b.initial_digest
    _, other = Session.initiate(alice, claimed_bundle(bob), b"one", binding=IDS)
    assert initial_message_digest(other) != initial_message_digest(first)
    with pytest.raises(MalformedMessage):
        initial_message_digest(b.encrypt(b"reply"))
    with pytest.raises(MalformedMessage):
        initial_message_digest(b"")


def test_peer_identity_of_a_stored_session() -> None:
    a, b = session_pair()
    assert Session.peer_identity_of(a.to_bytes()) == a.peer_identity == b.local_identity
    assert Session.peer_identity_of(b.to_bytes()) == b.peer_identity
    with pytest.raises(MalformedState):
        Session.peer_identity_of(b"{}")
    with pytest.raises(MalformedState):
        Session.peer_identity_of(b"not json")
