"""What a name, topic or message may hold (services/rooms/text.py)."""

from __future__ import annotations

import pytest

from services.common.errors import ApiError
from services.rooms.text import clean, excerpt, name_key


def test_text_is_stored_in_nfc() -> None:
    assert clean("Cafe\u0301", "name", required=True, limit=100) == "Caf\u00e9"


@pytest.mark.parametrize(
    ("text", "multiline", "problem"),
    [
        ("", False, "blank"),
        (" \u3000 ", False, "blank"),
        ("a\nb", False, "control characters"),
        ("a\tb", False, "control characters"),
        ("a\x00b", True, "control characters"),
        ("a\x7fb", True, "control characters"),
        ("a\x9bb", True, "control characters"),
        ("\n\t\n", True, "blank"),
    ],
)
def test_refused_text(text: str, multiline: bool, problem: str) -> None:
    with pytest.raises(ApiError) as err:
        clean(text, "f", required=True, limit=100, multiline=multiline)
    assert err.value.code == "invalid_text"
    assert err.value.details == {"field": "f", "problem": problem}


def test_messages_keep_newlines_and_tabs() -> None:
    assert clean("a\n\tb", "text", required=True, limit=4000, multiline=True) == "a\n\tb"
    assert clean("", "topic", required=False, limit=500) == ""


def test_the_limit_holds_once_normalised() -> None:
    """Audit finding (2026-12-07): U+0958 is two characters in NFC, and the length was
    checked (by the schema) before normalising: 4,000 of them were stored as 8,000."""
    assert len(clean("\u0958" * 50, "text", required=True, limit=100)) == 100
    with pytest.raises(ApiError) as err:
        clean("\u0958" * 51, "text", required=True, limit=100)
    assert err.value.code == "invalid_text"
    assert err.value.details == {"field": "text", "problem": "too long"}
    assert clean("e\u0301" * 100, "name", required=True, limit=100) == "\u00e9" * 100


def test_directory_keys_fold_case_width_and_spaces() -> None:
    assert name_key("  Book   CLUB ") == "book club"
    assert name_key("\uff22\uff4f\uff4f\uff4b") == "book"
    assert name_key("Stra\u00dfe") == name_key("STRASSE")
    # Bounded: 30 U+FDFA fold to 540 characters (the cursor must fit `after`).
    assert len(name_key("beta " + "\ufdfa" * 30)) == 150


def test_excerpts_are_one_line_and_bounded() -> None:
    assert excerpt("a\n\nb") == "a b"
    long = excerpt("x" * 500)
    assert len(long) == 140 and long.endswith("…")
