"""PeerState's identity policy, in memory (no server): trust on first use, a changed
account key held as a pending change until accepted or verified (docs/client.md,
"Identity changes"); sessions only with the identity the list names for their
device; a reused prekey's second initiator told from a replay."""

from __future__ import annotations

import pytest
from parley.crypto import (
    AccountKey,
    Binding,
    CryptoError,
    Device,
    DeviceEntry,
    DeviceList,
    PrekeyReused,
    ReplayedMessage,
    Session,
    SignedDeviceList,
)
from parley.crypto.encoding import b64encode
from parley.peers import ANSWERED_KEPT, PeerState, UnknownDevice

from tests.crypto.helpers import claimed_bundle

ME = AccountKey.generate()
MY = ("me", 1)  # our user and device ids in the handshakes
TO_7 = Binding(*MY, "alice", 7)  # bob's handshakes with alice's device 7


def _listing(user_id: str, account: AccountKey) -> tuple[str, object]:
    device = Device.generate()
    signed = account.sign(DeviceList(user_id, 1, [DeviceEntry.of(1, "phone", device.identity)]))
    return b64encode(account.public), signed


def _trust(state: PeerState, account: AccountKey) -> object:
    key, signed = _listing(state.user_id, account)
    return state.trust(key, signed, ME.public, "me")  # type: ignore[arg-type]


def test_first_key_is_trusted_without_a_pending_change() -> None:
    bob = PeerState("bob")
    assert _trust(bob, AccountKey.generate()) is None
    assert bob.pending_change is None and not bob.verified


def test_a_changed_key_is_pending_until_accepted() -> None:
    bob, first = PeerState("bob"), AccountKey.generate()
    _trust(bob, first)
    old = bob.safety_number(ME.public, "me")
    changed = _trust(bob, AccountKey.generate())
    assert changed is not None
    assert bob.pending_change == {
        "old_key": b64encode(first.public),
        "old_safety_number": old,
        "was_verified": False,
    }
    # survives the store
    assert PeerState.from_json(bob.to_json()).pending_change == bob.pending_change
    bob.accept()
    assert bob.pending_change is None and not bob.verified


def test_a_verified_contacts_change_is_flagged_and_verifying_the_new_key_clears_it() -> None:
    bob, first = PeerState("bob"), AccountKey.generate()
    _trust(bob, first)
    bob.mark_verified(b64encode(first.public))
    assert bob.verified
    second = AccountKey.generate()
    _trust(bob, second)
    assert not bob.verified
    assert bob.pending_change is not None and bob.pending_change["was_verified"] is True
    with pytest.raises(UnknownDevice):  # the number compared was the old key's
        bob.mark_verified(b64encode(first.public))
    bob.mark_verified(b64encode(second.public))
    assert bob.verified and bob.pending_change is None
    assert PeerState.from_json(bob.to_json()).verified


def test_two_changes_keep_the_last_accepted_number_and_a_return_clears_it() -> None:
    bob, first = PeerState("bob"), AccountKey.generate()
    _trust(bob, first)
    old = bob.safety_number(ME.public, "me")
    _trust(bob, AccountKey.generate())
    _trust(bob, AccountKey.generate())
    assert bob.pending_change is not None and bob.pending_change["old_safety_number"] == old
    _trust(bob, first)  # back to the key the user had accepted
    assert bob.pending_change is None


def test_a_state_from_before_the_policy_loads_without_one() -> None:
    bob = PeerState("bob")
    _trust(bob, AccountKey.generate())
    raw = bob.to_json()
    del raw["verified_key"], raw["pending_change"]
    loaded = PeerState.from_json(raw)
    assert loaded.pending_change is None and not loaded.verified


def test_a_switch_to_another_key_and_back_cannot_bring_an_older_list_back() -> None:
    """A directory served another key (a warning, a pending change), then the trusted
    key again with an older list of it, still naming a removed (stolen) device: the
    list version restarted at 0 on every key change, so the old list was taken, the
    pending change cleared, and sends went to the removed device again."""
    bob, first, other = PeerState("bob"), AccountKey.generate(), AccountKey.generate()
    phone, stolen = Device.generate(), Device.generate()

    def signed(account: AccountKey, version: int, devices: list[Device]) -> object:
        entries = [DeviceEntry.of(i + 1, "d", d.identity) for i, d in enumerate(devices)]
        return account.sign(DeviceList("bob", version, entries))

    def trust(account: AccountKey, version: int, devices: list[Device]) -> object:
        return bob.trust(b64encode(account.public), signed(account, version, devices),  # type: ignore[arg-type]
                         ME.public, "me")  # fmt: skip

    trust(first, 4, [phone, stolen])
    trust(first, 5, [phone])  # the stolen phone removed
    trust(other, 1, [phone])  # the directory's own key
    with pytest.raises(UnknownDevice, match="older device list"):
        trust(first, 4, [phone, stolen])
    assert bob.account_key == b64encode(other.public) and bob.pending_change is not None
    trust(first, 5, [phone])  # the real list: accepted, the change cleared
    assert bob.pending_change is None and len(bob.devices) == 1
    # Kept in the store.
    again = PeerState.from_json(bob.to_json())
    with pytest.raises(UnknownDevice, match="older device list"):
        again.trust(b64encode(first.public), signed(first, 4, [phone, stolen]),  # type: ignore[arg-type]
                    ME.public, "me")  # fmt: skip


# -- a device id given new keys (audit A) -------------------------------------------


def _signed(
    account: AccountKey, user_id: str, version: int, devices: dict[int, Device]
) -> SignedDeviceList:
    entries = [DeviceEntry.of(i, "d", d.identity) for i, d in sorted(devices.items())]
    return account.sign(DeviceList(user_id, version, entries))


class _Rekeyed:
    """Bob's view of alice, whose device 7 is ``old`` in list v1 and ``new`` in v2;
    bob has a session with the old device 7 (started from its bundle, answered)."""

    def __init__(self) -> None:
        self.account, self.bob = AccountKey.generate(), Device.generate()
        self.old, self.new = Device.generate(), Device.generate()
        self.alice = PeerState("alice")
        self.trust(1, self.old)
        session, first = Session.initiate(
            self.bob, claimed_bundle(self.old, user_id="alice", device_id=7), b"hi", binding=TO_7
        )
        self.alice.start(7, session)
        self.old_side, _ = Session.respond(self.old, first, binding=TO_7)
        self.stale = self.alice.sessions[7][0]
        assert (
            self.alice.decrypt(
                self.bob, 7, self.old_side.encrypt(b"hello"), me=MY
            ).message.plaintext
            == b"hello"
        )

    def trust(self, version: int, device7: Device) -> None:
        key = b64encode(self.account.public)
        self.alice.trust(
            key, _signed(self.account, "alice", version, {7: device7}), ME.public, "me"
        )


def test_a_list_that_gives_a_device_id_new_keys_ends_its_sessions() -> None:
    """peer_rekeyed_device.py: sessions were kept by device id, so after a list naming
    device 7 with new keys bob kept encrypting to, and reading from, the old keys."""
    r = _Rekeyed()
    r.trust(2, r.old)  # the same keys again: the session stays
    assert r.alice.has_session(7)
    r.trust(3, r.new)
    assert not r.alice.has_session(7) and r.alice.missing_sessions() == [7]
    assert not PeerState.from_json(r.alice.to_json()).has_session(7)
    with pytest.raises(CryptoError):  # the old device's message is not read
        r.alice.decrypt(r.bob, 7, r.old_side.encrypt(b"from the removed phone"), me=MY)
    # A session with the device the list names now works.
    session, first = Session.initiate(
        r.bob,
        claimed_bundle(r.new, user_id="alice", device_id=7),
        b"to the new phone",
        binding=TO_7,
    )
    r.alice.start(7, session)
    assert Session.respond(r.new, first, binding=TO_7)[1] == b"to the new phone"


def test_a_session_with_another_identity_than_the_list_names_is_never_used() -> None:
    """The second check, when a session got past :meth:`PeerState.trust` (a store
    written before it checked): no encrypting to it, no reading from it."""
    r = _Rekeyed()
    r.trust(2, r.new)
    r.alice.sessions[7] = [r.stale]
    with pytest.raises(UnknownDevice):
        r.alice.encrypt(7, b"secret for the current phone 7")
    with pytest.raises(UnknownDevice):
        r.alice.decrypt(r.bob, 7, r.old_side.encrypt(b"from the removed phone"), me=MY)
    assert r.alice.sessions[7] == [r.stale]  # nothing changed


def test_a_store_from_before_the_check_drops_a_rekeyed_device_s_sessions_on_load() -> None:
    r = _Rekeyed()
    r.trust(2, r.new)
    r.alice.sessions[7] = [r.stale]
    raw = r.alice.to_json()
    del raw["sessions_checked"], raw["answered"]  # as written before
    assert not PeerState.from_json(raw).has_session(7)
    # A session with the listed identity survives the same load.
    r2 = _Rekeyed()
    raw = r2.alice.to_json()
    del raw["sessions_checked"], raw["answered"]
    assert PeerState.from_json(raw).sessions[7] == r2.alice.sessions[7]


# -- a one-time prekey handed out twice (audit B) ------------------------------------


class _TwoInitiators:
    """The directory hands out bob's same claimed bundle to alice and to carol."""

    def __init__(self) -> None:
        self.bob = Device.generate()
        bundle = claimed_bundle(self.bob)
        self.alice_dev, self.carol_dev = Device.generate(), Device.generate()
        self.alice_session, self.from_alice = Session.initiate(
            self.alice_dev, bundle, b"alice 1", binding=Binding("alice", 1, *MY)
        )
        self.carol_session, self.from_carol = Session.initiate(
            self.carol_dev, bundle, b"carol 1", binding=Binding("carol", 1, *MY)
        )
        self.alice, self.carol = PeerState("alice"), PeerState("carol")
        for state, device in ((self.alice, self.alice_dev), (self.carol, self.carol_dev)):
            account = AccountKey.generate()
            signed = _signed(account, state.user_id, 1, {1: device})
            state.trust(b64encode(account.public), signed, ME.public, "me")


def test_a_second_initiator_of_a_reused_prekey_is_refused_not_dropped_as_a_replay() -> None:
    """prekey_reused_silently_dropped.py: carol's messages were raised as
    ReplayedMessage, which the messenger drops without a trace, every one of them."""
    t = _TwoInitiators()
    assert t.alice.decrypt(t.bob, 1, t.from_alice, me=MY).message.plaintext == b"alice 1"
    for wire in (t.from_carol, t.carol_session.encrypt(b"carol 2")):
        with pytest.raises(PrekeyReused) as caught:
            t.carol.decrypt(t.bob, 1, wire, me=MY)
        assert not isinstance(caught.value, ReplayedMessage)
    assert not t.carol.has_session(1) and t.carol.answered == []


def test_a_repeat_of_an_answered_handshake_is_still_a_replay() -> None:
    t = _TwoInitiators()
    later = t.alice_session.encrypt(b"alice 2")  # same PQXDH fields: not answered yet
    assert t.alice.decrypt(t.bob, 1, t.from_alice, me=MY).message.plaintext == b"alice 1"
    with pytest.raises(ReplayedMessage):  # the session itself refuses the copy
        t.alice.decrypt(t.bob, 1, t.from_alice, me=MY)
    t.alice.sessions = {}  # its session dropped since (evicted, say)
    again = PeerState.from_json(t.alice.to_json())  # remembered in the store
    for wire in (t.from_alice, later):
        with pytest.raises(ReplayedMessage):
            again.decrypt(t.bob, 1, wire, me=MY)


def test_the_answered_handshakes_kept_are_bounded() -> None:
    alice = PeerState("alice")
    account, me, dev = AccountKey.generate(), Device.generate(), Device.generate()
    alice.trust(b64encode(account.public), _signed(account, "alice", 1, {1: dev}), ME.public, "me")
    for i in range(ANSWERED_KEPT + 3):
        _, first = Session.initiate(
            dev, claimed_bundle(me), b"%d" % i, binding=Binding("alice", 1, *MY)
        )
        alice.decrypt(me, 1, first, me=MY)
    assert len(alice.answered) == ANSWERED_KEPT == len(set(alice.answered))


def test_a_state_from_before_answered_was_kept_answers_its_sessions_handshakes() -> None:
    """Review finding: a state written before ``answered`` was kept loaded with none, so
    once the session of a handshake answered before the upgrade was evicted, a later
    initial-type message of it (sent before our answer reached alice) became a "could
    not decrypt" line (PrekeyReused) where it used to be dropped as a replay."""
    t = _TwoInitiators()
    later = t.alice_session.encrypt(b"alice 2")  # still carries the PQXDH fields
    assert t.alice.decrypt(t.bob, 1, t.from_alice, me=MY).message.plaintext == b"alice 1"
    digest = t.alice.answered[0]
    raw = t.alice.to_json()
    del raw["sessions_checked"], raw["answered"]  # as written before
    again = PeerState.from_json(raw)
    assert again.answered == [digest]
    again.sessions = {}  # its session evicted since (MAX_SESSIONS)
    with pytest.raises(ReplayedMessage):
        again.decrypt(t.bob, 1, later, me=MY)
    # Written back with the flag: a state loaded again is not migrated again.
    assert PeerState.from_json(again.to_json()).answered == [digest]


def test_the_handshakes_taken_from_a_state_from_before_are_oldest_first_and_bounded() -> None:
    alice = PeerState("alice")
    account, me = AccountKey.generate(), Device.generate()
    devices = {d: Device.generate() for d in range(1, 10)}  # 9 devices x 4 sessions > 32
    alice.trust(b64encode(account.public), _signed(account, "alice", 1, devices), ME.public, "me")
    answered: dict[int, list[str]] = {}
    for d, dev in devices.items():
        mine, _ = Session.initiate(
            me,
            claimed_bundle(dev, user_id="alice", device_id=d),
            b"x",
            binding=Binding(*MY, "alice", d),
        )
        alice.start(d, mine)  # one we started: no handshake of alice's
        for i in range(3):
            _, first = Session.initiate(
                dev, claimed_bundle(me), b"%d" % i, binding=Binding("alice", d, *MY)
            )
            alice.decrypt(me, d, first, me=MY)
        answered[d] = alice.answered[-3:]
    raw = alice.to_json()
    del raw["sessions_checked"], raw["answered"]
    loaded = PeerState.from_json(raw)
    every = [a for d in devices for a in answered[d]]  # each device's oldest first
    assert len(every) == 27 and loaded.answered == every
    # Over ANSWERED_KEPT: the last ones kept.
    raw["answered"] = [b64encode(bytes([i]) * 32) for i in range(10)]
    assert PeerState.from_json(raw).answered == (raw["answered"] + every)[-ANSWERED_KEPT:]


# -- whose device is whose: the ids bound in the handshake ---------------------------


def test_a_device_listed_by_another_account_cannot_pass_its_messages_off_as_that_account_s() -> (
    None
):
    """Unknown key-share (docs/crypto.md): mallory's signed list names alice's device
    keys (public, self-signed) as her device 3, and a lying server relabels what
    alice's device sent us as mallory's. Before the ids were bound, mallory's state
    read it, and it was shown as mallory's; now it does not decrypt, and the same
    message, as alice's, still does."""
    me, alice_dev = Device.generate(), Device.generate()
    alice, mallory = PeerState("alice"), PeerState("mallory")
    for state, did in ((alice, 1), (mallory, 3)):
        account = AccountKey.generate()
        signed = _signed(account, state.user_id, 1, {did: alice_dev})
        state.trust(b64encode(account.public), signed, ME.public, "me")
    _, first = Session.initiate(
        alice_dev, claimed_bundle(me), b"meet at noon", binding=Binding("alice", 1, *MY)
    )
    before = me.to_bytes()
    with pytest.raises(CryptoError):
        mallory.decrypt(me, 3, first, me=MY)
    assert not mallory.has_session(3) and me.to_bytes() == before
    # Nor is a message we were not the device it was written for ("me", device 2).
    with pytest.raises(CryptoError):
        alice.decrypt(me, 1, first, me=("me", 2))
    assert alice.decrypt(me, 1, first, me=MY).message.plaintext == b"meet at noon"
