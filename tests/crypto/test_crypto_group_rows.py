"""GroupSession stored in rows (parley/crypto/session.py; docs/crypto.md "Sender keys
(groups)"): our chain in one row, each member's chains and retired ids in one of its
own, a session loaded with the members a call needs, and the rows it changed.

And how long a member's older chains are kept (``CHAINS_KEPT_PER_SENDER``): a member
offline while a sender rotated several times (members left) still reads what was sent
under every chain it had; a chain truly dropped says so (``RetiredSenderKey``), unlike
one not received yet (``UnknownSenderKey``: its key may still come)."""

from __future__ import annotations

import json

import pytest
from parley.crypto import GroupSession, MalformedState, RetiredSenderKey, UnknownSenderKey
from parley.crypto.session import CHAINS_KEPT_PER_SENDER


def _rows(session: GroupSession) -> tuple[bytes, dict[str, bytes]]:
    rows = {m: session.member_row(m) for m in session.row_members()}
    return session.own_row(), {m: r for m, r in rows.items() if r is not None}


def _state(session: GroupSession) -> object:
    return json.loads(session.to_bytes())


def test_offline_through_six_rotations_every_chain_still_opens() -> None:
    """The audit's case (2026-12): 6 rotations while offline, the keys before the
    messages. With 5 chains kept the first was dropped and its message never opened."""
    alice, bob = GroupSession.create("room"), GroupSession.create("room")
    bob.process_distribution("alice", alice.distribution_message())
    waiting = [alice.encrypt(b"m0")]
    dists = []
    for i in range(1, 7):
        dists.append(alice.rotate())
        waiting.append(alice.encrypt(f"m{i}".encode()))
    for d in dists:
        bob.process_distribution("alice", d)
    assert [bob.decrypt("alice", w) for w in waiting] == [f"m{i}".encode() for i in range(7)]


def test_past_the_kept_chains_the_oldest_is_retired_and_its_messages_say_so() -> None:
    alice, bob = GroupSession.create("room"), GroupSession.create("room")
    bob.process_distribution("alice", alice.distribution_message())
    first = alice.encrypt(b"first chain")
    dists = [alice.rotate() for _ in range(CHAINS_KEPT_PER_SENDER - 1)]
    for d in dists:
        bob.process_distribution("alice", d)
    assert bob.decrypt("alice", first) == b"first chain"  # the 64th chain: kept
    second = alice.encrypt(b"newest")
    again = GroupSession.create("room")
    again.process_distribution("alice", alice.distribution_message())
    bob.process_distribution("alice", alice.rotate())  # the 65th: the first goes
    with pytest.raises(RetiredSenderKey):
        bob.decrypt("alice", first)
    assert bob.decrypt("alice", second) == b"newest"
    # A chain never received is another matter: its key may still come.
    stranger = GroupSession.create("room")
    with pytest.raises(UnknownSenderKey):
        bob.decrypt("alice", stranger.encrypt(b"?"))


def test_rows_hold_the_whole_state_and_a_partial_load_changes_only_its_members() -> None:
    me = GroupSession.create("room")
    members = {f"u{i}:1": GroupSession.create("room") for i in range(5)}
    for name, s in members.items():
        me.process_distribution(name, s.distribution_message())
        me.process_distribution(name, s.rotate())
    me.remove_member("u4:1")  # only its retired ids are kept
    me.encrypt(b"advances our chain")
    whole = _state(me)
    own, rows = _rows(me)
    assert set(rows) == set(members)
    assert GroupSession.is_whole(me.to_bytes()) and not GroupSession.is_whole(own)

    # Every row loaded: the same state as the whole one.
    assert _state(GroupSession.from_rows(own, rows, every=True)) == whole

    # One member loaded: it decrypts, and only its row changed.
    part = GroupSession.from_rows(own, {"u1:1": rows["u1:1"]})
    assert part.members() == ["u1:1"]
    message = members["u1:1"].encrypt(b"hi")
    assert part.decrypt("u1:1", message) == b"hi"
    assert (part.own_changed, part.changed_members()) == (False, ["u1:1"])
    assert part.had_row("u1:1")
    with pytest.raises(LookupError):  # not loaded: never taken for "no key"
        part.decrypt("u2:1", members["u2:1"].encrypt(b"x"))
    with pytest.raises(LookupError):
        part.process_distribution("u2:1", members["u2:1"].distribution_message())
    with pytest.raises(ValueError):  # not whole
        part.to_bytes()
    rows["u1:1"] = part.member_row("u1:1") or b""
    part.mark_saved()
    assert part.changed_members() == []
    # The replay is refused after the row is read back.
    again = GroupSession.from_rows(own, {"u1:1": rows["u1:1"]})
    with pytest.raises(Exception, match="already"):
        again.decrypt("u1:1", message)

    # A member new to the group: loaded with no row, then it has one.
    new = GroupSession.from_rows(own, {"n:1": None})
    assert not new.had_row("n:1") and new.member_row("n:1") is None
    new.process_distribution("n:1", GroupSession.create("room").distribution_message())
    assert new.changed_members() == ["n:1"] and new.member_row("n:1") is not None

    # Our chain: sending changes the own row only.
    mine = GroupSession.from_rows(own, {})
    mine.encrypt(b"x")
    assert (mine.own_changed, mine.changed_members()) == (True, [])
    assert GroupSession.create("room").own_changed  # a new one must be written


def test_rows_that_are_not_rows_are_refused() -> None:
    me = GroupSession.create("room")
    other = GroupSession.create("room")
    me.process_distribution("a:1", other.distribution_message())
    own, rows = _rows(me)
    with pytest.raises(MalformedState):
        GroupSession.from_rows(me.to_bytes(), {})  # a whole state is not an own row
    with pytest.raises(MalformedState):
        GroupSession.from_rows(own, {"b:1": rows["a:1"]})  # a:1's row under b:1
    with pytest.raises(MalformedState):
        GroupSession.is_whole(b"[]")


def test_a_members_skipped_keys_are_bounded_over_all_its_chains() -> None:
    """Review finding: each chain kept up to 2,000 skipped keys, and 64 chains are kept,
    so a member that jumped far on each chain left ~7 MB in the row every one of its
    messages reads and writes. Now at most SKIPPED_KEYS_PER_SENDER over all its chains,
    the oldest chains' dropped first; the newest chain's keys stay."""
    from parley.crypto import ReplayedMessage
    from parley.crypto.session import SKIPPED_KEYS_PER_SENDER

    alice, bob = GroupSession.create("room-1"), GroupSession.create("room-1")
    first_chain: list[bytes] = []
    for r in range(4):
        bob.process_distribution("a", alice.distribution_message() if r == 0 else alice.rotate())
        wires = [alice.encrypt(f"{r}.{i}".encode()) for i in range(1500)]
        assert bob.decrypt("a", wires[-1]) == f"{r}.1499".encode()
        if r == 0:
            first_chain = wires
    _own, rows = _rows(bob)
    row = json.loads(rows["a"])
    assert sum(len(c["skipped"]) for c in row["chains"]) == SKIPPED_KEYS_PER_SENDER
    assert len(row["chains"][0]["skipped"]) == 1499  # the newest chain's keys, all kept
    assert bob.decrypt("a", wires[0]) == b"3.0"
    with pytest.raises(ReplayedMessage):  # the oldest chain's: dropped
        bob.decrypt("a", first_chain[0])
