"""PQXDH: our vectors, prekey consumption, ephemeral erasure, with/without one-time prekey."""

from __future__ import annotations

from typing import Any

import pytest
from parley.crypto import (
    Device,
    MalformedMessage,
    PrekeyReused,
    ReplayedMessage,
    Session,
    UnknownPrekey,
    is_initial_message,
)
from parley.crypto.encoding import b64encode
from parley.crypto.errors import DecryptionFailed, InvalidSignature, MalformedBundle
from parley.crypto.pqxdh import Binding, associated_data, derive_secret
from parley.crypto.primitives import MLKEM768KeyPair, X25519KeyPair
from parley.crypto.wire import INITIAL_PREFIX_LEN, PrekeySection, parse_pairwise

from tests.crypto.drbg import deterministic_random
from tests.crypto.helpers import IDS, claimed_bundle, load_vector


def _vector_devices(vec: dict[str, Any]) -> tuple[Device, Device]:
    alice = Device.generate(deterministic_random(bytes.fromhex(vec["alice"]["drbg_seed"])))
    bob = Device.generate(deterministic_random(bytes.fromhex(vec["bob"]["drbg_seed"])))
    bob.generate_one_time_prekeys(1)
    bob.generate_kem_prekeys(1)
    return alice, bob


@pytest.mark.parametrize("case_index", [0, 1])
def test_pqxdh_vector(case_index: int) -> None:
    vec = load_vector("pqxdh.json")
    case = vec["cases"][case_index]
    alice, bob = _vector_devices(vec)
    assert alice.public_identity() == vec["alice"]["public_identity"]
    assert bob.public_identity() == vec["bob"]["public_identity"]
    assert bob.signed_prekey() == case["bundle"]["signed_prekey"]

    # KEM: the recorded ciphertext decapsulates to the recorded secret.
    kem = MLKEM768KeyPair.from_seed(bytes.fromhex(case["kem_decapsulation_seed"]))
    ct, ss = bytes.fromhex(case["kem_ciphertext"]), bytes.fromhex(case["kem_shared_secret"])
    assert kem.decapsulate(ct) == ss

    # Key schedule from the listed private values.
    dh = [bytes.fromhex(case[f"dh{i}"]) if case[f"dh{i}"] else None for i in (1, 2, 3, 4)]
    eph = X25519KeyPair.from_private_bytes(bytes.fromhex(case["ephemeral_private"]))
    spk = X25519KeyPair.from_private_bytes(bytes.fromhex(vec["bob"]["signed_prekey"]["private"]))
    ika = X25519KeyPair.from_private_bytes(bytes.fromhex(vec["alice"]["identity_dh_private"]))
    assert eph.public.hex() == case["ephemeral_public"]
    assert ika.dh(spk.public) == dh[0]
    assert eph.dh(bob.identity.dh_key) == dh[1]
    assert eph.dh(spk.public) == dh[2]
    if dh[3] is not None:
        opk = X25519KeyPair.from_private_bytes(
            bytes.fromhex(vec["bob"]["one_time_prekey"]["private"])
        )
        assert eph.dh(opk.public) == dh[3]
    assert dh[0] and dh[1] and dh[2]
    assert derive_secret(dh[0], dh[1], dh[2], dh[3], ss).hex() == case["sk"]
    ids = Binding(**case["binding"])
    assert associated_data(alice.identity, bob.identity, ids).hex() == case["ad"]

    # Whole messages, byte for byte.
    a, initial = Session.initiate(
        alice,
        case["bundle"],
        bytes.fromhex(case["plaintext"]),
        rng=deterministic_random(bytes.fromhex(case["initiator_drbg_seed"])),
        kem_encapsulate=lambda _ek: (ss, ct),
        binding=ids,
    )
    assert initial.hex() == case["initial_message"]
    b, plaintext = Session.respond(
        bob,
        initial,
        rng=deterministic_random(bytes.fromhex(case["responder_drbg_seed"])),
        binding=ids,
    )
    assert plaintext.hex() == case["plaintext"]
    reply = b.encrypt(bytes.fromhex(case["reply_plaintext"]))
    assert reply.hex() == case["reply_message"]
    assert a.decrypt(reply).hex() == case["reply_plaintext"]


@pytest.mark.parametrize(
    ("one_time", "kem_one_time"), [(True, True), (False, True), (True, False), (False, False)]
)
def test_handshake_with_and_without_one_time_material(one_time: bool, kem_one_time: bool) -> None:
    alice, bob = Device.generate(), Device.generate()
    bundle = claimed_bundle(bob, one_time=one_time, kem_one_time=kem_one_time)
    otp_before, kem_before = bob.one_time_prekey_count, bob.kem_prekey_count
    a, first = Session.initiate(alice, bundle, b"first", binding=IDS)
    assert is_initial_message(first)
    section = PrekeySection.decode(parse_pairwise(first).prekey_raw or b"")
    assert section.one_time_prekey_id == (bundle["one_time_prekey"] or {}).get("id")
    assert section.kem_prekey_id == bundle["kem_prekey"]["id"]
    b, plaintext = Session.respond(bob, first, binding=IDS)
    assert plaintext == b"first"
    assert bob.one_time_prekey_count == otp_before - (1 if one_time else 0)
    assert bob.kem_prekey_count == kem_before - (1 if kem_one_time else 0)
    # The last-resort KEM prekey is never consumed.
    assert bob.last_resort_kem_prekey()["id"] == bundle["kem_prekey"]["id"] or kem_one_time
    assert a.decrypt(b.encrypt(b"reply")) == b"reply"
    assert b.decrypt(a.encrypt(b"after")) == b"after"


def test_last_resort_kem_prekey_serves_many_initiators() -> None:
    bob = Device.generate()
    for _ in range(3):
        _, first = Session.initiate(
            Device.generate(), claimed_bundle(bob, kem_one_time=False), binding=IDS
        )
        Session.respond(bob, first, binding=IDS)
    assert bob.kem_prekey_count == 0  # never had one-time KEM prekeys; last resort kept


def test_initiator_erases_ephemeral_private_key() -> None:
    rng_seed = b"erasure"
    alice, bob = Device.generate(), Device.generate()
    ephemeral_private = deterministic_random(rng_seed)(32)  # first draw of initiate
    a, first = Session.initiate(
        alice, claimed_bundle(bob), b"x", rng=deterministic_random(rng_seed), binding=IDS
    )
    ephemeral_public = X25519KeyPair.from_private_bytes(ephemeral_private).public
    assert (
        PrekeySection.decode(parse_pairwise(first).prekey_raw or b"").ephemeral_key
        == ephemeral_public
    )
    for blob in (a.to_bytes(), alice.to_bytes()):
        assert ephemeral_private not in blob
        assert ephemeral_private.hex().encode() not in blob
        assert b64encode(ephemeral_private).encode() not in blob
    state = a._ratchet
    assert state.dhs.private_bytes() != ephemeral_private
    assert all(getattr(a, s, None) != ephemeral_private for s in type(a).__slots__)


def test_reused_one_time_prekey_is_refused_and_device_unchanged() -> None:
    alice, bob = Device.generate(), Device.generate()
    _, first = Session.initiate(alice, claimed_bundle(bob), b"one", binding=IDS)
    Session.respond(bob, first, binding=IDS)
    before = bob.to_bytes()
    with pytest.raises(PrekeyReused):
        Session.respond(bob, first, binding=IDS)
    assert bob.to_bytes() == before


def test_replayed_initial_message_without_one_time_material_is_refused() -> None:
    alice, bob = Device.generate(), Device.generate()
    _, first = Session.initiate(
        alice, claimed_bundle(bob, one_time=False, kem_one_time=False), binding=IDS
    )
    Session.respond(bob, first, binding=IDS)
    with pytest.raises(ReplayedMessage):
        Session.respond(bob, first, binding=IDS)
    # and it survives a save/restore of the device
    with pytest.raises(ReplayedMessage):
        Session.respond(Device.from_bytes(bob.to_bytes()), first, binding=IDS)


def test_a_replayed_initial_message_is_refused_after_thousands_of_others() -> None:
    """The memory of handshakes without one-time material is not a count: 2,500 other
    first contacts later (more than the old 2,000-entry window), the replay of the
    first one is still refused, also after a save/restore of the device."""
    bob = Device.generate()
    bundle = claimed_bundle(bob, one_time=False, kem_one_time=False)
    alice = Device.generate()
    _, first = Session.initiate(alice, bundle, b"once", binding=IDS)
    Session.respond(bob, first, binding=IDS)
    initiator = Device.generate()  # many initiations from one device: each has its own EK_A
    for _ in range(2500):
        _, other = Session.initiate(initiator, bundle, b"x", binding=IDS)
        Session.respond(bob, other, binding=IDS)
    assert bob.remembered_base_key_count == 2501
    with pytest.raises(ReplayedMessage):
        Session.respond(bob, first, binding=IDS)
    restored = Device.from_bytes(bob.to_bytes())
    with pytest.raises(ReplayedMessage):
        Session.respond(restored, first, binding=IDS)


def test_replay_memory_lasts_as_long_as_the_signed_prekey() -> None:
    """Remembered ephemeral keys go with their signed prekey: after one rotation the
    replay is still refused as a replay; after the second the signed prekey is gone
    and the message is refused as naming an unknown prekey (and memory is freed)."""
    alice, bob = Device.generate(), Device.generate()
    _, first = Session.initiate(
        alice, claimed_bundle(bob, one_time=False, kem_one_time=False), binding=IDS
    )
    Session.respond(bob, first, binding=IDS)
    bob.rotate_signed_prekey()
    with pytest.raises(ReplayedMessage):
        Session.respond(bob, first, binding=IDS)
    with pytest.raises(ReplayedMessage):
        Session.respond(Device.from_bytes(bob.to_bytes()), first, binding=IDS)
    bob.rotate_signed_prekey()
    assert bob.remembered_base_key_count == 0
    with pytest.raises(UnknownPrekey):
        Session.respond(bob, first, binding=IDS)


def test_a_device_state_from_before_the_change_keeps_its_remembered_keys() -> None:
    import json

    alice, bob = Device.generate(), Device.generate()
    _, first = Session.initiate(
        alice, claimed_bundle(bob, one_time=False, kem_one_time=False), binding=IDS
    )
    Session.respond(bob, first, binding=IDS)
    state = json.loads(bob.to_bytes())
    state["seen_base_keys"] = [k for keys in state["seen_base_keys"].values() for k in keys]
    old = Device.from_bytes(json.dumps(state).encode())
    with pytest.raises(ReplayedMessage):
        Session.respond(old, first, binding=IDS)


def test_a_legacy_state_keeps_refusing_replays_made_with_the_previous_signed_prekey() -> None:
    """A state from before #20 (one flat list) holds the keys of handshakes made with
    the previous signed prekey too; upgraded, they must still refuse the replay of
    such a handshake (they were once all filed under the current prekey only)."""
    import json

    alice, bob = Device.generate(), Device.generate()
    _, first = Session.initiate(
        alice, claimed_bundle(bob, one_time=False, kem_one_time=False), b"once", binding=IDS
    )
    Session.respond(bob, first, binding=IDS)
    bob.rotate_signed_prekey()  # the handshake's signed prekey is now the previous one
    _, second = Session.initiate(
        alice, claimed_bundle(bob, one_time=False, kem_one_time=False), binding=IDS
    )
    Session.respond(bob, second, binding=IDS)
    state = json.loads(bob.to_bytes())
    assert sorted(state["seen_base_keys"]) == ["1", "2"]
    state["seen_base_keys"] = [k for keys in state["seen_base_keys"].values() for k in keys]
    old = Device.from_bytes(json.dumps(state).encode())
    assert old.remembered_base_key_count == 2
    for replay in (first, second):
        with pytest.raises(ReplayedMessage):
            Session.respond(old, replay, binding=IDS)
        with pytest.raises(ReplayedMessage):  # and after a save/restore in the new format
            Session.respond(Device.from_bytes(old.to_bytes()), replay, binding=IDS)
    # The keys go with the previous prekey: one rotation later it is unknown.
    old.rotate_signed_prekey()
    with pytest.raises(UnknownPrekey):
        Session.respond(old, first, binding=IDS)
    with pytest.raises(ReplayedMessage):
        Session.respond(old, second, binding=IDS)


def test_unknown_prekey_ids_are_refused() -> None:
    alice, bob = Device.generate(), Device.generate()
    bundle = claimed_bundle(bob)
    other = Device.generate()
    _, first = Session.initiate(alice, claimed_bundle(other), binding=IDS)
    with pytest.raises((UnknownPrekey, PrekeyReused, DecryptionFailed)):
        Session.respond(bob, first, binding=IDS)
    # A signed prekey rotated out twice is gone.
    _, first = Session.initiate(alice, bundle, binding=IDS)
    bob.rotate_signed_prekey()
    bob.rotate_signed_prekey()
    with pytest.raises(UnknownPrekey):
        Session.respond(bob, first, binding=IDS)


def test_previous_signed_prekey_still_works_after_one_rotation() -> None:
    alice, bob = Device.generate(), Device.generate()
    _, first = Session.initiate(alice, claimed_bundle(bob), b"in flight", binding=IDS)
    bob.rotate_signed_prekey()
    assert Session.respond(bob, first, binding=IDS)[1] == b"in flight"


def test_tampered_initial_message_is_refused_without_consuming_prekeys() -> None:
    alice, bob = Device.generate(), Device.generate()
    _, first = Session.initiate(alice, claimed_bundle(bob), b"payload", binding=IDS)
    before = bob.to_bytes()
    # ephemeral key, KEM ciphertext, header, body: each breaks the AEAD
    for offset in (170, 207 + 500, INITIAL_PREFIX_LEN - 1, len(first) - 1):
        bad = bytearray(first)
        bad[offset] ^= 0x01
        with pytest.raises(DecryptionFailed):
            Session.respond(bob, bytes(bad), binding=IDS)
    # the initiator's identity signature
    bad = bytearray(first)
    bad[100] ^= 0x01
    with pytest.raises(InvalidSignature):
        Session.respond(bob, bytes(bad), binding=IDS)
    assert bob.to_bytes() == before
    assert Session.respond(bob, first, binding=IDS)[1] == b"payload"


def test_respond_rejects_non_initial_messages() -> None:
    alice, bob = Device.generate(), Device.generate()
    _, first = Session.initiate(alice, claimed_bundle(bob), binding=IDS)
    b, _ = Session.respond(bob, first, binding=IDS)
    with pytest.raises(MalformedMessage):
        Session.respond(Device.generate(), b.encrypt(b"x"), binding=IDS)


def test_initiator_repeats_prekey_fields_until_first_reply() -> None:
    alice, bob = Device.generate(), Device.generate()
    a, m0 = Session.initiate(alice, claimed_bundle(bob), b"m0", binding=IDS)
    m1 = a.encrypt(b"m1")
    assert is_initial_message(m1)
    # Delivered out of order: the second initial message establishes the session.
    b, first_plain = Session.respond(bob, m1, binding=IDS)
    assert first_plain == b"m1"
    assert b.decrypt(m0) == b"m0"
    assert a.decrypt(b.encrypt(b"reply")) == b"reply"
    assert not is_initial_message(a.encrypt(b"m2"))


# The account and device ids in the handshake (unknown key-share) ----------------


@pytest.mark.parametrize(
    "told",
    [
        Binding("mallory", 1, "bob", 1),  # relabelled as another account's device
        Binding("alice", 2, "bob", 1),  # ... as another of the sender's devices
        Binding("alice", 1, "carol", 1),  # written to another account's device
        Binding("alice", 1, "bob", 2),  # ... to another device of the recipient's
    ],
)
def test_a_handshake_told_other_ids_than_the_initiator_bound_is_refused(told: Binding) -> None:
    """What a server that lies about whose device is whose achieves: the first message
    does not decrypt, and nothing of the responder's is consumed (the same message,
    with the ids it was written for, is still read)."""
    alice, bob = Device.generate(), Device.generate()
    _, first = Session.initiate(alice, claimed_bundle(bob), b"for bob's phone", binding=IDS)
    before = bob.to_bytes()
    with pytest.raises(DecryptionFailed):
        Session.respond(bob, first, binding=told)
    assert bob.to_bytes() == before
    assert Session.respond(bob, first, binding=IDS)[1] == b"for bob's phone"


def test_the_ids_are_in_every_message_s_associated_data() -> None:
    """The binding is not only in the first message: the session's AD carries it, so a
    reply from a session the responder made with other ids is not read either."""
    alice, bob = Device.generate(), Device.generate()
    a, first = Session.initiate(alice, claimed_bundle(bob), b"hi", binding=IDS)
    b, _ = Session.respond(bob, first, binding=IDS)
    expected = associated_data(alice.identity, bob.identity, IDS)
    assert a._ratchet.ad == b._ratchet.ad == expected
    assert expected.endswith(b"\x00\x05alice\x00\x00\x00\x01\x00\x03bob\x00\x00\x00\x01")


def test_the_encoding_keeps_the_ids_apart() -> None:
    """Length-prefixed: moving bytes between a user id and what follows changes it."""
    assert Binding("ab", 1, "c", 1).encode() != Binding("a", 1, "bc", 1).encode()
    assert Binding("a", 256, "b", 1).encode() != Binding("a", 1, "b", 256).encode()
    assert len(Binding("é", 0, "x", 2**32 - 1).encode()) == 2 + 2 + 4 + 2 + 1 + 4


@pytest.mark.parametrize(
    "bad",
    [
        Binding("", 1, "bob", 1),
        Binding("alice", 1, "", 1),
        Binding("a" * 65536, 1, "bob", 1),
        Binding("\ud800", 1, "bob", 1),  # a lone surrogate has no UTF-8
        Binding("alice", -1, "bob", 1),
        Binding("alice", 1, "bob", 2**32),
        Binding("alice", True, "bob", 1),  # type: ignore[arg-type]
        Binding("alice", 1.5, "bob", 1),  # type: ignore[arg-type]
        Binding(None, 1, "bob", 1),  # type: ignore[arg-type]
    ],
)
def test_ids_that_cannot_be_encoded_are_refused_before_any_key_is_used(bad: Binding) -> None:
    alice, bob = Device.generate(), Device.generate()
    bundle = claimed_bundle(bob)
    alice_before = alice.to_bytes()
    with pytest.raises(MalformedBundle):
        Session.initiate(alice, bundle, b"x", binding=bad)
    assert alice.to_bytes() == alice_before
    _, first = Session.initiate(alice, bundle, b"x", binding=IDS)
    bob_before = bob.to_bytes()
    with pytest.raises(MalformedBundle):
        Session.respond(bob, first, binding=bad)
    assert bob.to_bytes() == bob_before


def test_a_session_made_before_the_ids_were_bound_still_works() -> None:
    """A stored session keeps the 128-byte AD it was made with (it is saved with it)."""
    alice, bob = Device.generate(), Device.generate()
    a, first = Session.initiate(alice, claimed_bundle(bob), b"hi", binding=IDS)
    b, _ = Session.respond(bob, first, binding=IDS)
    a.decrypt(b.encrypt(b"ack"))
    old_ad = alice.identity.encode() + bob.identity.encode()
    a._ratchet.ad = b._ratchet.ad = old_ad  # as a state saved before would hold
    a2, b2 = Session.from_bytes(a.to_bytes()), Session.from_bytes(b.to_bytes())
    assert a2._ratchet.ad == old_ad
    assert b2.decrypt(a2.encrypt(b"still here")) == b"still here"
    assert a2.decrypt(b2.encrypt(b"and back")) == b"and back"
