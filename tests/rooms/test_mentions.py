"""The mention parser (services/rooms/mentions.py): a table of tricky cases."""

from __future__ import annotations

import pytest

from services.rooms.mentions import parse

UID = "0123456789abcdef0123456789abcdef"

CASES: list[tuple[str, list[str]]] = [
    # Plain, start, end, several, order, duplicates and case.
    ("@alice hi", ["alice"]),
    ("hi @alice", ["alice"]),
    ("@bob and @alice and @BOB", ["bob", "alice"]),
    ("@Alice", ["alice"]),
    ("@ALICE.SMITH", ["alice.smith"]),
    # Punctuation around the name.
    ("hey @alice, look", ["alice"]),
    ("hey @alice.", ["alice"]),
    ("hey @alice...", ["alice"]),
    ("hey @alice!?", ["alice"]),
    ("(@alice)", ["alice"]),
    ("[@alice]", ["alice"]),
    ('"@alice"', ["alice"]),
    ("@alice's idea", ["alice"]),
    ("@alice\u2019s idea", ["alice"]),
    ("@alice: yes", ["alice"]),
    ("@alice-", ["alice"]),
    ("@alice_", ["alice"]),
    ("cc:@alice", ["alice"]),
    ("@alice.smith.", ["alice.smith"]),
    ("@al-ice_x.y", ["al-ice_x.y"]),
    # Not mentions: addresses, paths, doubled @, glued to a word.
    ("mail alice@example.com", []),
    ("https://host/@alice", []),
    ("@@alice", []),
    ("x@alice", []),
    ("email me at bob@alice", []),
    ("@alice@example.com", []),
    ("a.@alice", []),
    ("1+@alice", []),
    # Not usernames: too short, leading digit, nothing, spaces.
    ("@al", []),
    ("@a", []),
    ("@", []),
    ("@ alice", []),
    ("@9lives", []),
    ("@" + "a" * 33, []),
    ("@" + "a" * 32, ["a" * 32]),
    # Unicode: another script continuing the name, full-width forms, look-alikes.
    ("@alicé", []),
    ("@aliceж", []),
    ("@alice\u0661", []),
    ("\uff20alice", ["alice"]),
    ("@\uff41\uff4c\uff49\uff43\uff45", ["alice"]),
    ("@\u0430lice", []),  # Cyrillic a: not the same name, not a mention
    ("@alice\u200b", ["alice"]),
    ("@ali\u200bce", ["alice"]),  # invisible characters go: the name the reader sees
    ("@\u202ealice", ["alice"]),  # a direction override
    ("über @alice", ["alice"]),
    ("日本語@alice", []),  # a letter before the @ (of any script): part of a word
    ("日本語 @alice", ["alice"]),
    # User ids, any case.
    (f"@{UID}", [UID]),
    (f"@{UID.upper()} thanks", [UID]),
    # Code: inline spans and fenced blocks hide mentions.
    ("`@alice`", []),
    ("run `ssh @alice` then @bob", ["bob"]),
    ("``code with ` and @alice``", []),
    ("```\n@alice\n```\n@bob", ["bob"]),
    ("~~~\n@alice\n~~~", []),
    ("```python\nx = '@alice'\n", []),  # an unclosed fence runs to the end
    ("an unclosed `tick @alice", ["alice"]),
    # Lines and tabs.
    ("line one\n@alice\tand\n@bob", ["alice", "bob"]),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_mentions(text: str, expected: list[str]) -> None:
    assert parse(text) == expected


def test_a_limit_on_distinct_mentions() -> None:
    text = " ".join(f"@user{i:03d}" for i in range(50))
    assert parse(text, limit=20) == [f"user{i:03d}" for i in range(20)]
