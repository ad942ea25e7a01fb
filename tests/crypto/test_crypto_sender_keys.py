"""Sender keys: vector, ordering, replay, tampering, signatures, rotation, restore."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from parley.crypto import (
    CryptoError,
    DecryptionFailed,
    GroupSession,
    InvalidSignature,
    MalformedMessage,
    ReplayedMessage,
    RetiredSenderKey,
    SessionMismatch,
    TooManySkippedMessages,
    UnknownSenderKey,
    commitment_from_message,
    verify_report,
)
from parley.crypto.sender_keys import MAX_RETIRED_CHAINS, MAX_SKIP
from parley.crypto.session import CHAINS_KEPT_PER_SENDER
from parley.crypto.wire import SenderKeyDistribution

from tests.crypto.drbg import deterministic_random
from tests.crypto.helpers import load_vector, session_pair


def _group(members: int = 2) -> list[GroupSession]:
    groups = [GroupSession.create("room-1") for _ in range(members)]
    for i, sender in enumerate(groups):
        for j, receiver in enumerate(groups):
            if i != j:
                receiver.process_distribution(f"m{i}", sender.distribution_message())
    return groups


def test_sender_key_vector() -> None:
    vec = load_vector("sender_keys.json")
    alice = GroupSession.create(
        vec["group_id"], rng=deterministic_random(bytes.fromhex(vec["drbg_seed"]))
    )
    assert alice.distribution_message().hex() == vec["distribution_message"]
    dist = SenderKeyDistribution.decode(bytes.fromhex(vec["distribution_message"]))
    assert dist.signing_key.hex() == vec["signing_public"]
    for i, plaintext in enumerate(vec["plaintexts"]):
        assert alice.encrypt(bytes.fromhex(plaintext)).hex() == vec["messages"][i]
    bob = GroupSession.create(vec["group_id"])
    bob.process_distribution("alice", bytes.fromhex(vec["distribution_message"]))
    for index, expected in zip(vec["receive_order"], vec["received"], strict=True):
        assert bob.decrypt("alice", bytes.fromhex(vec["messages"][index])).hex() == expected
    assert alice.rotate().hex() == vec["rotated_distribution_message"]
    assert alice.encrypt(b"after rotation").hex() == vec["message_after_rotation"]
    bob.process_distribution("alice", bytes.fromhex(vec["rotated_distribution_message"]))
    assert bob.decrypt("alice", bytes.fromhex(vec["message_after_rotation"])) == b"after rotation"


def test_distribution_over_pairwise_sessions() -> None:
    a_pair, b_pair = session_pair()
    alice_group, bob_group = GroupSession.create("g"), GroupSession.create("g")
    carried = a_pair.encrypt(alice_group.distribution_message())
    bob_group.process_distribution("alice", b_pair.decrypt(carried))
    message = alice_group.encrypt(b"to everyone")
    assert bob_group.decrypt("alice", message) == b"to everyone"


@settings(max_examples=40, deadline=None)
@given(data=st.data(), count=st.integers(1, 20))
def test_any_order_decrypts_and_replays_are_rejected(data: st.DataObject, count: int) -> None:
    alice, bob = _group()
    messages = [alice.encrypt(bytes([i])) for i in range(count)]
    order = data.draw(st.permutations(range(count)))
    for i in order:
        assert bob.decrypt("m0", messages[i]) == bytes([i])
    for i in order:
        with pytest.raises(ReplayedMessage):
            bob.decrypt("m0", messages[i])


@settings(max_examples=60, deadline=None)
@given(position=st.integers(min_value=0), xor=st.integers(1, 255))
def test_tampered_group_message_rejected_and_state_unchanged(position: int, xor: int) -> None:
    alice, bob = _group()
    message = alice.encrypt(b"group payload")
    offset = position % len(message)
    tampered = bytearray(message)
    tampered[offset] ^= xor
    before = bob.to_bytes()
    with pytest.raises(CryptoError) as info:
        bob.decrypt("m0", bytes(tampered))
    if offset == 0 or offset == 1:
        assert isinstance(info.value, MalformedMessage)
    elif offset >= len(message) - 64:
        assert type(info.value) is InvalidSignature
    elif 34 <= offset < 38:
        assert type(info.value) in (UnknownSenderKey, InvalidSignature)
    else:  # every signed byte: the signature fails first
        assert type(info.value) is InvalidSignature
    assert bob.to_bytes() == before
    assert bob.decrypt("m0", message) == b"group payload"


def test_message_signed_by_member_but_not_matching_key_fails_aead() -> None:
    """A member who knows the chain key cannot forge another member's messages."""
    alice, bob, carol = _group(3)
    # Carol re-signs Alice's message with her own key: Bob checks Alice's key.
    message = alice.encrypt(b"from alice")
    forged = message[:-64] + carol._own.signing.sign(message[:-64])
    with pytest.raises(InvalidSignature):
        bob.decrypt("m0", forged)
    # Claimed under Carol's name, Alice's chain id is unknown for Carol.
    with pytest.raises(UnknownSenderKey):
        bob.decrypt("m2", message)


def test_bounded_skip() -> None:
    alice, bob = _group()
    for _ in range(MAX_SKIP + 1):
        alice.encrypt(b"lost")
    with pytest.raises(TooManySkippedMessages):
        bob.decrypt("m0", alice.encrypt(b"too far"))


def test_a_gap_past_the_stored_keys_is_read() -> None:
    """More of one sender's room messages expired unread than keys are stored (2,050 of
    2,100): until 2026-12-08 every later message of that chain was refused."""
    alice, bob = _group()
    wires = [alice.encrypt(f"m{i}".encode()) for i in range(2100)]
    assert bob.decrypt("m0", wires[2050]) == b"m2050"
    assert bob.decrypt("m0", wires[2099]) == b"m2099"
    assert bob.decrypt("m0", wires[2051]) == b"m2051"
    with pytest.raises(ReplayedMessage):  # derived on the way, not stored
        bob.decrypt("m0", wires[0])


def test_rotation_when_a_member_leaves() -> None:
    alice, bob, carol = _group(3)
    old_message = alice.encrypt(b"before")
    old_chain = alice.chain_id
    new_dist = alice.remove_member("m2")  # carol leaves: alice forgets her and rotates
    assert "m2" not in alice.members()
    bob.process_distribution("m0", new_dist)
    secret = alice.encrypt(b"after carol left")
    assert bob.decrypt("m0", secret) == b"after carol left"
    with pytest.raises(UnknownSenderKey):  # carol never got the new key
        carol.decrypt("m0", secret)
    # messages sent under the old key still decrypt for the members who kept it
    assert bob.decrypt("m0", old_message) == b"before"
    assert carol.decrypt("m0", old_message) == b"before"
    assert SenderKeyDistribution.decode(new_dist).chain_id == alice.chain_id != old_chain


def test_distribution_for_another_group_is_refused() -> None:
    g1, g2 = GroupSession.create("one"), GroupSession.create("two")
    with pytest.raises(SessionMismatch):
        g2.process_distribution("x", g1.distribution_message())
    with pytest.raises(MalformedMessage):
        g2.process_distribution("x", g1.distribution_message()[:-1])
    # idempotent
    g1b = GroupSession.create("one")
    g1b.process_distribution("x", g1.distribution_message())
    g1b.process_distribution("x", g1.distribution_message())
    assert g1b.decrypt("x", g1.encrypt(b"once")) == b"once"


def test_group_message_bound_to_group_id() -> None:
    alice = GroupSession.create("room-a")
    other = GroupSession.create("room-b")
    # Same sender key registered under another group id (e.g. by a confused client).
    dist = SenderKeyDistribution.decode(alice.distribution_message())
    other.process_distribution(
        "alice",
        SenderKeyDistribution(
            "room-b", dist.chain_id, dist.iteration, dist.chain_key, dist.signing_key
        ).encode(),
    )
    with pytest.raises(DecryptionFailed):
        other.decrypt("alice", alice.encrypt(b"for room-a only"))


def test_group_state_restores_exactly() -> None:
    alice, bob = _group()
    messages = [alice.encrypt(bytes([i])) for i in range(5)]
    bob.decrypt("m0", messages[3])
    restored = GroupSession.from_bytes(bob.to_bytes())
    assert restored.to_bytes() == bob.to_bytes()
    for i in (0, 4, 2, 1):
        assert restored.decrypt("m0", messages[i]) == bob.decrypt("m0", messages[i])
    sender = GroupSession.from_bytes(alice.to_bytes())
    assert sender.chain_id == alice.chain_id
    assert bob.decrypt("m0", sender.encrypt(b"from restored sender")) == b"from restored sender"
    with pytest.raises(ReplayedMessage):  # same iteration as the original's next message
        bob.decrypt("m0", alice.encrypt(b"same iteration"))


def test_group_decrypt_message_gives_franking_data() -> None:
    alice, bob = _group()
    message = alice.encrypt(b"abuse")
    received = bob.decrypt_message("m0", message)
    assert received.commitment == commitment_from_message(message)
    verify_report(received.plaintext, received.franking_key, received.commitment)


def test_an_evicted_chain_cannot_be_rewound_by_its_old_distribution() -> None:
    """After CHAINS_KEPT_PER_SENDER rotations the first chain is evicted; processing its
    old distribution message again would start it over and accept replays: refused. Its
    messages say so (RetiredSenderKey, not UnknownSenderKey: no key will ever come)."""
    alice, bob = _group()
    first_dist = alice.distribution_message()
    old = alice.encrypt(b"old message")
    assert bob.decrypt("m0", old) == b"old message"
    for _ in range(CHAINS_KEPT_PER_SENDER):
        bob.process_distribution("m0", alice.rotate())
    with pytest.raises(RetiredSenderKey):  # evicted
        bob.decrypt("m0", old)
    before = bob.to_bytes()
    with pytest.raises(RetiredSenderKey, match="retired"):
        bob.process_distribution("m0", first_dist)
    assert isinstance(RetiredSenderKey("x"), ReplayedMessage)
    assert bob.to_bytes() == before  # nothing taken
    with pytest.raises(RetiredSenderKey):
        bob.decrypt("m0", old)
    # and it survives a save/restore
    restored = GroupSession.from_bytes(bob.to_bytes())
    with pytest.raises(RetiredSenderKey):
        restored.process_distribution("m0", first_dist)
    # the current chain still works
    assert restored.decrypt("m0", alice.encrypt(b"new")) == b"new"


def test_a_removed_members_chains_are_retired_and_the_memory_is_bounded() -> None:
    alice, bob = _group()
    dist = alice.distribution_message()
    bob.remove_member("m0")
    with pytest.raises(RetiredSenderKey):
        bob.process_distribution("m0", dist)
    # A member rotating many times: only the last MAX_RETIRED_CHAINS ids are kept.
    carol = GroupSession.create("room-1")
    dists = [carol.distribution_message()]
    for _ in range(MAX_RETIRED_CHAINS + CHAINS_KEPT_PER_SENDER):
        dists.append(carol.rotate())
    for d in dists:
        bob.process_distribution("carol", d)
    retired = bob._retired["carol"]
    assert len(retired) == MAX_RETIRED_CHAINS
    with pytest.raises(RetiredSenderKey):
        bob.process_distribution("carol", dists[-CHAINS_KEPT_PER_SENDER - 1])
