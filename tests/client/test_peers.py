"""PeerState's identity policy, in memory (no server): trust on first use, a changed
account key held as a pending change until accepted or verified (docs/client.md,
"Identity changes")."""

from __future__ import annotations

import pytest
from parley.crypto import AccountKey, Device, DeviceEntry, DeviceList
from parley.crypto.encoding import b64encode
from parley.peers import PeerState, UnknownDevice

ME = AccountKey.generate()


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
