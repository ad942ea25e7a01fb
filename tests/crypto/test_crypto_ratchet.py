"""Double Ratchet: our vector, and properties (ordering, tampering, replay, bounds, restore)."""

from __future__ import annotations

from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from parley.crypto import (
    CryptoError,
    DecryptionFailed,
    Device,
    MalformedMessage,
    ReplayedMessage,
    Session,
    SessionMismatch,
    TooManySkippedMessages,
    UnsupportedVersion,
)
from parley.crypto import ratchet as ratchet_module
from parley.crypto.primitives import X25519KeyPair
from parley.crypto.ratchet import MAX_SKIP, MAX_SKIPPED_KEYS, RatchetState
from parley.crypto.wire import MESSAGE_PREFIX_LEN

from tests.crypto.drbg import deterministic_random
from tests.crypto.helpers import IDS, claimed_bundle, load_vector, session_pair

PROPERTY = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _state(session: Session) -> bytes:
    return session.to_bytes()


# ----------------------------------------------------------------- vector


def test_ratchet_vector() -> None:
    vec = load_vector("ratchet.json")
    sk, ad = bytes.fromhex(vec["sk"]), bytes.fromhex(vec["ad"])
    bob_key = X25519KeyPair.from_private_bytes(bytes.fromhex(vec["bob_ratchet_private"]))
    assert bob_key.public.hex() == vec["bob_ratchet_public"]
    a_id, b_id = Device.generate().identity, Device.generate().identity
    sessions = {
        "alice": Session(
            ratchet=RatchetState.initiator(
                sk, ad, bob_key.public, deterministic_random(bytes.fromhex(vec["alice_drbg_seed"]))
            ),
            local_identity=a_id,
            peer_identity=b_id,
            pending_section=None,
            initial_digest=None,
        ),
        "bob": Session(
            ratchet=RatchetState.responder(
                sk, ad, bob_key, deterministic_random(bytes.fromhex(vec["bob_drbg_seed"]))
            ),
            local_identity=b_id,
            peer_identity=a_id,
            pending_section=None,
            initial_digest=None,
        ),
    }
    messages: dict[int, bytes] = {}
    for step in vec["steps"]:
        session = sessions[step["by"]]
        if step["op"] == "encrypt":
            message = session.encrypt(bytes.fromhex(step["plaintext"]))
            assert message.hex() == step["message"], step
            messages[step["index"]] = message
        elif "error" in step:
            with pytest.raises(CryptoError) as info:
                session.decrypt(messages[step["index"]])
            assert type(info.value).__name__ == step["error"]
        else:
            assert session.decrypt(messages[step["index"]]).hex() == step["plaintext"]


# ----------------------------------------------------------------- ordering


@PROPERTY
@given(
    data=st.data(),
    rounds=st.lists(
        st.tuples(st.integers(0, 6), st.integers(0, 6), st.floats(0, 1)), min_size=1, max_size=3
    ),
)
def test_any_delivery_order_within_bounds_decrypts(
    data: st.DataObject, rounds: list[tuple[int, int, float]]
) -> None:
    a, b = session_pair()
    sessions = {"alice": a, "bob": b}
    pending: dict[str, list[tuple[bytes, bytes]]] = {"alice": [], "bob": []}  # keyed by recipient
    counter = 0
    for alice_sends, bob_sends, deliver_fraction in rounds:
        for sender, recipient, count in (
            ("alice", "bob", alice_sends),
            ("bob", "alice", bob_sends),
        ):
            for _ in range(count):
                plaintext = f"{sender} {counter}".encode()
                counter += 1
                pending[recipient].append((sessions[sender].encrypt(plaintext), plaintext))
        for recipient in ("alice", "bob"):
            queue = pending[recipient]
            order = data.draw(st.permutations(range(len(queue))))
            take = int(len(queue) * deliver_fraction)
            chosen = [queue[i] for i in order[:take]]
            pending[recipient] = [queue[i] for i in order[take:]]
            for message, plaintext in chosen:
                assert sessions[recipient].decrypt(message) == plaintext
    for recipient in ("alice", "bob"):
        queue = pending[recipient]
        for i in data.draw(st.permutations(range(len(queue)))):
            message, plaintext = queue[i]
            assert sessions[recipient].decrypt(message) == plaintext


# ----------------------------------------------------------------- tampering


def _expected(receiver: Session, original: bytes, tampered: bytes, offset: int) -> type[Exception]:
    """The documented order of checks (docs/crypto.md, "Decryption"), applied to the header."""
    if offset == 0:
        return UnsupportedVersion
    if offset == 1:
        return MalformedMessage  # too short to be an initial message; other types unknown
    state = receiver._ratchet
    dh = tampered[34:66]
    n = int.from_bytes(tampered[70:74], "big")
    if (dh, n) in state.skipped:
        return DecryptionFailed  # a stored key, but not this message's
    if dh == state.dhr:  # current receiving chain
        if n < state.nr:
            return ReplayedMessage
        if n - state.nr > MAX_SKIP:
            return TooManySkippedMessages
        return DecryptionFailed
    if dh in state.old_chains:
        return ReplayedMessage
    # first message of a new chain: N bounds the skip on it; a PN beyond the bound gives
    # the previous chain up (no keys derived), so the AEAD (PN is in its AD) refuses it
    if n > MAX_SKIP:
        return TooManySkippedMessages
    return DecryptionFailed  # commitment, ratchet key, small PN/N change, ciphertext, tag


@PROPERTY
@given(
    position=st.integers(min_value=0),
    xor=st.integers(1, 255),
    skip_first=st.booleans(),
    length=st.integers(0, 64),
)
def test_every_tampered_byte_is_rejected_with_the_right_exception(
    position: int, xor: int, skip_first: bool, length: int
) -> None:
    a, b = session_pair()
    first = a.encrypt(b"0" * length)
    message = a.encrypt(b"1" * length)
    if not skip_first:
        assert b.decrypt(first) == b"0" * length
    offset = position % len(message)
    tampered = bytearray(message)
    tampered[offset] ^= xor
    before = _state(b)
    expected = _expected(b, message, bytes(tampered), offset)
    with pytest.raises(CryptoError) as info:
        b.decrypt(bytes(tampered))
    assert type(info.value) is expected, (offset, info.value)
    assert _state(b) == before  # transactional
    assert b.decrypt(message) == b"1" * length


def test_every_byte_of_a_message_exhaustively() -> None:
    """Each byte of one message (header and body), flipped: rejected, state unchanged."""
    a, b = session_pair()
    message = a.encrypt(b"exhaustive tamper test payload")
    before = _state(b)
    for offset in range(len(message)):
        tampered = bytearray(message)
        tampered[offset] ^= 0x80
        with pytest.raises(CryptoError) as info:
            b.decrypt(bytes(tampered))
        assert type(info.value) is _expected(b, message, bytes(tampered), offset), offset
    assert _state(b) == before
    assert b.decrypt(message) == b"exhaustive tamper test payload"


def test_truncated_and_extended_messages_are_rejected() -> None:
    a, b = session_pair()
    message = a.encrypt(b"abc")
    before = _state(b)
    for cut in range(len(message)):
        with pytest.raises((MalformedMessage, DecryptionFailed)):
            b.decrypt(message[:cut])
    with pytest.raises(DecryptionFailed):
        b.decrypt(message + b"\x00")
    with pytest.raises(TypeError):
        b.decrypt(bytearray(message))  # type: ignore[arg-type]
    assert _state(b) == before


def test_tampered_first_message_of_a_new_chain() -> None:
    a, b = session_pair()
    b.decrypt(a.encrypt(b"x"))
    message = b.encrypt(b"new chain for alice")  # Bob's new ratchet key reaches Alice
    before = _state(a)
    # A huge PN gives the previous chain up (no keys derived for it): the AEAD, whose
    # associated data holds the header, refuses the change.
    tampered = bytearray(message)
    tampered[66] ^= 0x40
    with pytest.raises(DecryptionFailed):
        a.decrypt(bytes(tampered))
    tampered = bytearray(message)
    tampered[70] ^= 0x40  # a huge N is refused before any work
    with pytest.raises(TooManySkippedMessages):
        a.decrypt(bytes(tampered))
    tampered = bytearray(message)
    tampered[69] ^= 0x01  # small PN change: the AEAD catches it
    with pytest.raises(DecryptionFailed):
        a.decrypt(bytes(tampered))
    assert _state(a) == before
    assert a.decrypt(message) == b"new chain for alice"


# ----------------------------------------------------------------- replay


@PROPERTY
@given(data=st.data(), count=st.integers(1, 12))
def test_replays_are_rejected(data: st.DataObject, count: int) -> None:
    a, b = session_pair()
    messages = [a.encrypt(bytes([i])) for i in range(count)]
    order = data.draw(st.permutations(range(count)))
    delivered = order[: data.draw(st.integers(1, count))]
    for i in delivered:
        assert b.decrypt(messages[i]) == bytes([i])
    # a new chain in between must not make old messages decryptable again
    if data.draw(st.booleans()):
        a.decrypt(b.encrypt(b"turn"))
        b.decrypt(a.encrypt(b"turn back"))
    before = _state(b)
    for i in delivered:
        with pytest.raises(ReplayedMessage):
            b.decrypt(messages[i])
    assert _state(b) == before


def test_initial_message_replayed_into_established_session() -> None:
    alice, bob = Device.generate(), Device.generate()
    a, first = Session.initiate(alice, claimed_bundle(bob), b"first", binding=IDS)
    b, _ = Session.respond(bob, first, binding=IDS)
    with pytest.raises(ReplayedMessage):
        b.decrypt(first)
    # an initial message of another session is not ours
    _, other = Session.initiate(Device.generate(), claimed_bundle(bob), b"other", binding=IDS)
    with pytest.raises(SessionMismatch):
        b.decrypt(other)
    # the initiator never accepts initial messages
    with pytest.raises(SessionMismatch):
        a.decrypt(other)


# ----------------------------------------------------------------- bounds


def test_forward_jump_beyond_max_skip_is_refused() -> None:
    a, b = session_pair()
    for _ in range(MAX_SKIP + 1):
        a.encrypt(b"lost")
    far = a.encrypt(b"too far")
    before = _state(b)
    with pytest.raises(TooManySkippedMessages):
        b.decrypt(far)
    assert _state(b) == before


def test_jump_of_exactly_max_skip_is_accepted() -> None:
    a, b = session_pair()
    messages = [a.encrypt(bytes([i % 256])) for i in range(MAX_SKIP + 1)]
    assert b.decrypt(messages[-1]) == bytes([MAX_SKIP % 256])
    # Of the skip only the last MAX_SKIPPED_KEYS keys are kept.
    assert len(b._ratchet.skipped) == MAX_SKIPPED_KEYS
    assert b.decrypt(messages[-2]) == bytes([(MAX_SKIP - 1) % 256])
    assert b.decrypt(messages[-1 - MAX_SKIPPED_KEYS]) == bytes([(MAX_SKIP - 2000) % 256])
    with pytest.raises(ReplayedMessage):  # derived on the way, never stored
        b.decrypt(messages[0])


def test_a_device_that_missed_more_than_its_stored_keys_reads_on() -> None:
    """A device offline past its inbox's expiry while a contact kept writing on one chain
    (it never answered): the oldest 2,050 of 2,100 messages expired unread. Until
    2026-12-08 a gap over 2,000 was refused, and once the device answered, the
    contact's new chain (PN 2,100) was refused too: the session never read again."""
    a, b = session_pair()
    b.decrypt(a.encrypt(b"before"))
    wires = [a.encrypt(f"m{i}".encode()) for i in range(2100)]
    assert b.decrypt(wires[2050]) == b"m2050"
    assert b.decrypt(wires[2099]) == b"m2099"
    assert b.decrypt(wires[2051]) == b"m2051"  # its key was stored on the way
    a.decrypt(b.encrypt(b"I am back"))
    assert b.decrypt(a.encrypt(b"after")) == b"after"


def test_a_new_chain_whose_previous_one_ran_past_the_bound_gives_that_one_up() -> None:
    """The other side wrote more than MAX_SKIP on its previous chain, all lost; its new
    chain (after our answer) is read, and the old chain's messages are given up."""
    a, b = session_pair()
    b.decrypt(a.encrypt(b"start"))
    a.decrypt(b.encrypt(b"reply"))
    assert b.decrypt(a.encrypt(b"a new chain")) == b"a new chain"  # b's next send ratchets
    lost = [a.encrypt(b"lost") for _ in range(MAX_SKIP + 2)]
    # b never read those; b writes, a reads it and ratchets: a new chain with PN past MAX_SKIP
    a.decrypt(b.encrypt(b"are you there?"))
    assert b.decrypt(a.encrypt(b"yes")) == b"yes"
    with pytest.raises(ReplayedMessage):  # the old chain is over
        b.decrypt(lost[-1])
    assert b.decrypt(a.encrypt(b"and on")) == b"and on"


def test_skipped_key_store_evicts_oldest_at_the_cap() -> None:
    a, b = session_pair()
    first_batch = [a.encrypt(b"a") for _ in range(1500)]
    b.decrypt(first_batch[-1])
    second_batch = [a.encrypt(b"b") for _ in range(1500)]
    b.decrypt(second_batch[-1])
    assert len(b._ratchet.skipped) == MAX_SKIPPED_KEYS
    with pytest.raises(ReplayedMessage):  # evicted: the oldest skipped key
        b.decrypt(first_batch[0])
    assert b.decrypt(first_batch[-2]) == b"a"  # still there


@PROPERTY
@given(
    script=st.lists(
        st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 30), st.integers(0, 3)),
        min_size=1,
        max_size=12,
    ),
    cap=st.integers(1, 20),
    chains=st.integers(1, 3),
)
def test_skipped_key_memory_stays_within_the_bound(
    script: list[tuple[str, int, int]], cap: int, chains: int
) -> None:
    """With small bounds patched in, the stores never exceed them, whatever happens."""
    with (
        mock.patch.object(ratchet_module, "MAX_SKIPPED_KEYS", cap),
        mock.patch.object(ratchet_module, "MAX_OLD_CHAINS", chains),
    ):
        a, b = session_pair()
        sessions = {"a": a, "b": b}
        outbox: dict[str, list[bytes]] = {"a": [], "b": []}
        for sender, count, deliver_index in script:
            receiver = "b" if sender == "a" else "a"
            outbox[sender].extend(sessions[sender].encrypt(b"m") for _ in range(count))
            queue = outbox[sender]
            if queue:
                message = queue.pop(min(deliver_index, len(queue) - 1) * -1)
                try:
                    sessions[receiver].decrypt(message)
                except (ReplayedMessage, TooManySkippedMessages):
                    pass
            for s in sessions.values():
                assert len(s._ratchet.skipped) <= cap
                assert len(s._ratchet.old_chains) <= ratchet_module.MAX_REMEMBERED_CHAINS
                # keys of the last ``chains`` receiving chains only, the current one included
                oldest = s._ratchet.chain_index - chains + 1
                assert all(idx >= oldest for _, idx in s._ratchet.skipped.values())


def test_old_chain_keys_expire_after_max_old_chains_steps() -> None:
    """docs/crypto.md: a receiving chain's skipped keys are deleted after
    MAX_OLD_CHAINS (5) further DH ratchet steps: still there after 4, gone after
    exactly 5 (they were kept one step longer: the test ran 6 and could not tell)."""
    a, b = session_pair()
    late = a.encrypt(b"late")
    a.encrypt(b"skipped over")  # never delivered
    b.decrypt(a.encrypt(b"on time"))  # 'late' is now a stored skipped key
    for step in range(1, ratchet_module.MAX_OLD_CHAINS + 1):
        a.decrypt(b.encrypt(b"ping"))
        b.decrypt(a.encrypt(b"pong"))  # one more DH ratchet step for b's receiving side
        if step == ratchet_module.MAX_OLD_CHAINS - 1:
            assert Session.from_bytes(b.to_bytes()).decrypt(late) == b"late"  # on a copy
    assert len(b._ratchet.skipped) == 0  # 'skipped over' went with it
    with pytest.raises(ReplayedMessage):
        b.decrypt(late)


# ----------------------------------------------------------------- restore


@PROPERTY
@given(
    data=st.data(),
    before=st.lists(st.sampled_from(["a>b", "b>a", "a", "b"]), max_size=10),
    after=st.lists(st.sampled_from(["a>b", "b>a", "a", "b"]), min_size=1, max_size=10),
)
def test_restored_session_continues_exactly(
    data: st.DataObject, before: list[str], after: list[str]
) -> None:
    alice, bob = Device.generate(), Device.generate()
    a, first = Session.initiate(
        alice, claimed_bundle(bob), b"0", rng=deterministic_random(b"a"), binding=IDS
    )
    b, _ = Session.respond(bob, first, rng=deterministic_random(b"b"), binding=IDS)
    queues: dict[str, list[bytes]] = {"a": [], "b": []}

    def run(sessions: dict[str, Session], script: list[str], log: list[object]) -> None:
        for op in script:
            if op in ("a", "b"):  # send
                message = sessions[op].encrypt(op.encode() * 3)
                queues[op].append(message)
                log.append(message)
            else:
                sender, receiver = op[0], op[2]
                if queues[sender]:
                    message = queues[sender].pop(0)
                    try:
                        log.append(sessions[receiver].decrypt(message))
                    except CryptoError as exc:
                        log.append(type(exc))

    run({"a": a, "b": b}, before, [])
    saved = {"a": a.to_bytes(), "b": b.to_bytes()}
    saved_queues = {k: list(v) for k, v in queues.items()}
    for name, session in (("a", a), ("b", b)):
        session._ratchet.rng = deterministic_random(b"continue-" + name.encode())
    restored = {
        name: Session.from_bytes(blob, rng=deterministic_random(b"continue-" + name.encode()))
        for name, blob in saved.items()
    }
    assert {k: s.to_bytes() for k, s in restored.items()} == saved

    log_original: list[object] = []
    run({"a": a, "b": b}, after, log_original)
    queues.update({k: list(v) for k, v in saved_queues.items()})
    log_restored: list[object] = []
    run(restored, after, log_restored)
    assert log_restored == log_original
    assert restored["a"].to_bytes() == a.to_bytes()
    assert restored["b"].to_bytes() == b.to_bytes()
    assert data is not None


def test_restore_rejects_garbage() -> None:
    from parley.crypto import MalformedState

    a, _ = session_pair()
    blob = a.to_bytes()
    for bad in (b"", b"{}", blob[:-5], blob.replace(b'"v":1', b'"v":2'), b"[1,2]"):
        with pytest.raises(MalformedState):
            Session.from_bytes(bad)


def test_message_layout_constants() -> None:
    a, _ = session_pair()
    message = a.encrypt(b"x" * 200)
    assert len(message) == MESSAGE_PREFIX_LEN + 32 + 200 + 16
    assert message[:2] == b"\x01\x01"


def test_in_order_fast_path_matches_the_general_path() -> None:
    """``RatchetState.open`` short-cuts in-order messages; the result and the state after it
    must be exactly those of ``decrypt`` (the documented order of checks)."""
    a, b = session_pair()
    b.decrypt(a.encrypt(b"new chain"))  # a DH step: random, so before the twin is made
    twin = Session.from_bytes(b.to_bytes())
    for i in range(5):
        message = a.encrypt(bytes([i]) * 40)
        at = MESSAGE_PREFIX_LEN - 40
        header = message[at:MESSAGE_PREFIX_LEN]
        general = twin._ratchet.decrypt(
            header[:32],
            int.from_bytes(header[32:36], "big"),
            int.from_bytes(header[36:40], "big"),
            message[:MESSAGE_PREFIX_LEN],
            message[MESSAGE_PREFIX_LEN:],
        )
        assert b._ratchet.open(message, at) == general
        assert b._ratchet.to_json() == twin._ratchet.to_json()


def test_a_stored_key_for_the_next_number_is_tried_first() -> None:
    """Even in a state where a skipped key exists for (current chain, next N) (not reachable
    by the protocol, but a restored state may hold anything), it is used first, as documented."""
    a, b = session_pair()
    b.decrypt(a.encrypt(b"one"))
    message = a.encrypt(b"two")
    state = b._ratchet
    assert state.dhr is not None
    state.skipped[(state.dhr, state.nr)] = (bytes(32), state.chain_index)
    before = _state(b)
    with pytest.raises(DecryptionFailed):
        b.decrypt(message)
    assert _state(b) == before
    del state.skipped[(state.dhr, state.nr)]
    assert b.decrypt(message) == b"two"


def test_seal_and_encrypt_agree() -> None:
    a, _ = session_pair()
    twin = Session.from_bytes(a.to_bytes())
    prefix = b"\x01\x01" + bytes(32)
    payload = bytes(32) + b"payload"
    header, ciphertext = a._ratchet.encrypt(payload, prefix)
    assert prefix + header + ciphertext == twin._ratchet.seal(payload, prefix)
    assert len(header) == 40
