"""A malicious key directory / relay: what the client detects and refuses."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from parley.crypto import (
    Device,
    IdentityChanged,
    InvalidSignature,
    PrekeyBundle,
    PrekeyReused,
    PublicIdentity,
    Session,
    check_identity,
    safety_number,
)
from parley.crypto.bundle import sign_kem_prekey, sign_signed_prekey
from parley.crypto.encoding import b64decode, b64encode
from parley.crypto.primitives import Ed25519KeyPair, MLKEM768KeyPair, X25519KeyPair

from tests.crypto.helpers import IDS, claimed_bundle


def _substitute_identity(bundle: dict[str, Any], attacker: Device) -> dict[str, Any]:
    """The server swaps in the attacker's identity and prekeys, all validly signed."""
    forged = claimed_bundle(attacker)
    forged["user_id"], forged["device_id"] = bundle["user_id"], bundle["device_id"]
    return forged


def test_substituted_identity_changes_safety_number_and_is_detected() -> None:
    alice, bob, mallory = Device.generate(), Device.generate(), Device.generate()
    genuine = claimed_bundle(bob)
    known = PrekeyBundle.from_json(genuine).identity  # what Alice saw last time (TOFU)
    forged = _substitute_identity(genuine, mallory)

    # The forged bundle is internally consistent, so only identity tracking catches it...
    session, _ = Session.initiate(alice, forged, b"hi", binding=IDS)
    assert session.safety_number("alice", "bob") != safety_number(
        alice.identity.signing_key, "alice", bob.identity.signing_key, "bob"
    )
    # ... and the API does: with the known identity, initiate refuses before any DH.
    with pytest.raises(IdentityChanged):
        Session.initiate(alice, forged, b"hi", expected_identity=known, binding=IDS)
    with pytest.raises(IdentityChanged) as info:
        check_identity(
            known,
            session.peer_identity,
            local_identity=alice.identity,
            local_user_id="alice",
            remote_user_id="bob",
        )
    assert info.value.old_safety_number is not None
    assert info.value.new_safety_number is not None
    assert info.value.old_safety_number != info.value.new_safety_number
    # the genuine bundle passes the same check
    Session.initiate(alice, claimed_bundle(bob), b"ok", expected_identity=known, binding=IDS)
    check_identity(None, session.peer_identity)  # first contact: accepted


def test_responder_detects_identity_change_of_initiator() -> None:
    alice, bob, mallory = Device.generate(), Device.generate(), Device.generate()
    _, first = Session.initiate(mallory, claimed_bundle(bob), b"I am alice", binding=IDS)
    session, _ = Session.respond(bob, first, binding=IDS)
    with pytest.raises(IdentityChanged):
        check_identity(alice.identity, session.peer_identity)


def test_identity_with_dh_key_not_signed_by_signing_key_is_refused() -> None:
    """Server pairs Bob's signing key (so the safety number looks right) with its own DH key."""
    bob, mallory = Device.generate(), Device.generate()
    bundle = claimed_bundle(bob)
    bundle["identity"]["dh_key"] = mallory.public_identity()["dh_key"]
    with pytest.raises(InvalidSignature):
        PrekeyBundle.from_json(bundle)
    bundle["identity"]["dh_sig"] = mallory.public_identity()["dh_sig"]
    with pytest.raises(InvalidSignature):
        Session.initiate(Device.generate(), bundle, binding=IDS)


def test_signed_prekey_with_bad_signature_is_refused() -> None:
    alice, bob = Device.generate(), Device.generate()
    bundle = claimed_bundle(bob)
    attacker_spk = X25519KeyPair.generate()
    # 1. server's own key, bob's signature
    bad = copy.deepcopy(bundle)
    bad["signed_prekey"]["key"] = b64encode(attacker_spk.public)
    # 2. server's own key signed by a key that is not bob's identity
    worse = copy.deepcopy(bundle)
    other = Ed25519KeyPair.generate()
    worse["signed_prekey"]["key"] = b64encode(attacker_spk.public)
    worse["signed_prekey"]["sig"] = b64encode(
        sign_signed_prekey(other, bundle["signed_prekey"]["id"], attacker_spk.public)
    )
    # 3. corrupted signature bytes
    flipped = copy.deepcopy(bundle)
    sig = b64decode(bundle["signed_prekey"]["sig"])
    flipped["signed_prekey"]["sig"] = b64encode(bytes([sig[0] ^ 1]) + sig[1:])
    for forged in (bad, worse, flipped):
        with pytest.raises(InvalidSignature):
            Session.initiate(alice, forged, b"never sent", binding=IDS)


def test_kem_prekey_with_bad_signature_is_refused() -> None:
    alice, bob = Device.generate(), Device.generate()
    bundle = claimed_bundle(bob)
    attacker_kem = MLKEM768KeyPair.generate()
    kem_id = bundle["kem_prekey"]["id"]
    swapped = copy.deepcopy(bundle)
    swapped["kem_prekey"]["key"] = b64encode(attacker_kem.public)
    resigned = copy.deepcopy(swapped)
    resigned["kem_prekey"]["sig"] = b64encode(
        sign_kem_prekey(Ed25519KeyPair.generate(), kem_id, attacker_kem.public, False)
    )
    # a one-time KEM prekey passed off as a last-resort one (or the reverse)
    relabelled = copy.deepcopy(bundle)
    relabelled["kem_prekey"]["last_resort"] = True
    for forged in (swapped, resigned, relabelled):
        with pytest.raises(InvalidSignature):
            Session.initiate(alice, forged, binding=IDS)


def test_kem_prekey_signature_from_other_slot_is_refused() -> None:
    """Signature binds the id: a server can't move a signed key to another id."""
    alice, bob = Device.generate(), Device.generate()
    bundle = claimed_bundle(bob)
    bundle["kem_prekey"]["id"] += 1
    with pytest.raises(InvalidSignature):
        Session.initiate(alice, bundle, binding=IDS)


def test_server_handing_out_the_same_one_time_prekey_twice() -> None:
    alice, carol, bob = Device.generate(), Device.generate(), Device.generate()
    bundle = claimed_bundle(bob)
    _, first = Session.initiate(alice, bundle, b"alice", binding=IDS)
    _, second = Session.initiate(
        carol, bundle, b"carol", binding=IDS
    )  # same one-time prekeys again
    Session.respond(bob, first, binding=IDS)
    before = bob.to_bytes()
    with pytest.raises(PrekeyReused):
        Session.respond(bob, second, binding=IDS)
    assert bob.to_bytes() == before


def test_initiator_identity_forged_in_initial_message() -> None:
    alice, bob, mallory = Device.generate(), Device.generate(), Device.generate()
    _, first = Session.initiate(mallory, claimed_bundle(bob), b"from mallory", binding=IDS)
    # Relay replaces mallory's signing key by alice's (keeps mallory's DH key and sig).
    forged = first[:34] + alice.identity.signing_key + first[66:]
    with pytest.raises(InvalidSignature):
        Session.respond(bob, forged, binding=IDS)
    # Relay swaps in alice's whole identity block: the handshake secret no longer matches.
    block = alice.identity.signing_key + alice.identity.dh_key + alice.identity.dh_sig
    forged = first[:34] + block + first[162:]
    with pytest.raises(Exception) as info:
        Session.respond(bob, forged, binding=IDS)
    assert type(info.value).__name__ == "DecryptionFailed"


def test_public_identity_equality_is_by_keys() -> None:
    d = Device.generate()
    same = PublicIdentity.from_json(d.public_identity())
    check_identity(same, d.identity)
