"""Pure logic of the rooms part (parley/rooms.py, the control payloads in
parley/messenger.py); the rooms against the real system are in
tests/e2e/test_rooms_client.py and tests/e2e/test_cli_rooms.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from parley import Client, ParleyError
from parley.crypto import GroupSession, UnknownSenderKey
from parley.messenger import CONTROL_PREFIX, encode_control, parse_control
from parley.rooms import member_key, room_conversation


def test_a_control_payload_round_trips_and_a_chat_line_is_never_one() -> None:
    payload = {"t": "skd", "room": "a" * 24, "d": "AAAA"}
    assert parse_control(encode_control(payload)) == payload
    for text in ("hello", '{"t": "skd"}', "parley-control", "\u0000"):
        assert parse_control(text.encode()) is None
    assert parse_control(CONTROL_PREFIX + b"not json") == {"t": "invalid"}
    assert parse_control(CONTROL_PREFIX + b"[1, 2]") == {"t": "invalid"}


def test_the_sdk_refuses_text_that_could_pass_for_a_control_payload(tmp_path: Path) -> None:
    client = Client("http://127.0.0.1:9", data_dir=tmp_path, passphrase="test passphrase")
    with pytest.raises(ParleyError, match="NUL"):
        client.check_text(CONTROL_PREFIX.decode() + '{"t": "skd"}')
    client.check_text("a line with a \u0000 inside is text")


def test_names() -> None:
    assert room_conversation("0" * 24) == "room:" + "0" * 24
    assert member_key("u" * 32, 7) == "u" * 32 + ":7"


def test_a_rotated_chain_is_unreadable_with_the_old_key_and_readable_with_the_new() -> None:
    """What the client's rotation rests on, in memory: a member who had the old chain
    cannot read the new one; those given the new distribution can."""
    room = "f" * 24
    alice, kept, removed = (GroupSession.create(room) for _ in range(3))
    first = alice.distribution_message()
    for member in (kept, removed):
        member.process_distribution(member_key("alice", 1), first)
    before = alice.encrypt(b"before")
    assert removed.decrypt(member_key("alice", 1), before) == b"before"
    kept.decrypt(member_key("alice", 1), before)
    second = alice.rotate()
    kept.process_distribution(member_key("alice", 1), second)
    after = alice.encrypt(b"after")
    assert kept.decrypt(member_key("alice", 1), after) == b"after"
    with pytest.raises(UnknownSenderKey):
        removed.decrypt(member_key("alice", 1), after)
