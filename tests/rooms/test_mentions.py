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
    # Audit findings (2026-12-07). Before the @: every RFC 5322 atext character (an
    # address's local part), a backslash (a Windows path), a combining mark (the word
    # before it, written decomposed); full-width forms normalised.
    ("joe!@bob.dev", []),
    ("mail sales#@alice.dev", []),
    ("x=@alice", []),
    ("https://host/?u=@alice", []),
    ("a&@alice a?@alice a#@alice a+@alice", []),
    # The rest of atext only before an address (a dotted name): quotes and emphasis
    # around a mention are still one.
    ("{@alice}", ["alice"]),
    ("'@alice'", ["alice"]),
    ("*@bob* and _@alice_", ["bob"]),
    ("a~@alice a$@alice a%@alice a*@alice a^@alice a|@alice", ["alice"]),
    ("joe*@bob.dev x~@alice.smith", []),
    # A dotted username in quotes or emphasis is still one (no local part before).
    ("*@john.doe* and **@j.smith** '@a.b.c'", ["john.doe", "j.smith", "a.b.c"]),
    ("see C:\\Users\\@alice\\file", []),
    ("cafe\u0301@alice", []),
    ("x\u0301@alice", []),  # no precomposed x-acute: the mark stays a mark
    ("\uff20\uff20alice", []),
    ("\uff41@alice", []),
    # After the name: a combining mark runs the name on, as a letter does; so does a
    # letter after what would be trailing punctuation.
    ("@alice\u0301", []),  # NFKC composes e-acute: a letter
    ("@bob\u0301", []),  # no precomposed b-acute: the mark stays a mark
    ("@bob\u0301 hi @alice", ["alice"]),
    ("@alice_\u00e9", []),
    ("@alice.\u00e9", []),
    ("@alice.\nnext line", ["alice"]),
    # Code spans are found as written: full-width backticks are not code (NFKC after).
    ("\uff40@alice\uff40", ["alice"]),
    ("\uff40\uff40@alice\uff40\uff40 and `@bob`", ["alice"]),
    ("```\n\uff40@alice\n```", []),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_mentions(text: str, expected: list[str]) -> None:
    assert parse(text) == expected


def test_a_limit_on_distinct_mentions() -> None:
    text = " ".join(f"@user{i:03d}" for i in range(50))
    assert parse(text, limit=20) == [f"user{i:03d}" for i in range(20)]
