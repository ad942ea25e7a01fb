"""What JSON Schema cannot say about names, topics and messages: ``invalid_text``.

Text is stored as sent after Unicode NFC normalisation (so that the same
name typed on two keyboards is the same name). Refused: blank text where
text is required, control characters (C0, DEL, C1; in messages newline
and tab are allowed), which would let one user rewrite another's terminal,
and text longer than its limit once normalised (``too long``): NFC can
lengthen a text (U+0958 is two characters in NFC), and the schema's
``maxLength`` saw it before.
"""

from __future__ import annotations

import unicodedata

from services.common.errors import ApiError, ErrorCode

_ALLOWED_IN_MESSAGES = frozenset("\n\t")


def _has_control(text: str, allowed: frozenset[str]) -> bool:
    return any((ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F) and c not in allowed for c in text)


def clean(text: str, field: str, *, required: bool, limit: int, multiline: bool = False) -> str:
    """``text`` in NFC, at most ``limit`` characters, or 422 ``invalid_text`` naming
    ``field``."""
    text = unicodedata.normalize("NFC", text)
    if len(text) > limit:
        raise ApiError(
            ErrorCode.INVALID_TEXT,
            f"{field} is longer than {limit} characters once normalised (Unicode NFC).",
            details={"field": field, "problem": "too long"},
        )
    if _has_control(text, _ALLOWED_IN_MESSAGES if multiline else frozenset()):
        raise ApiError(
            ErrorCode.INVALID_TEXT,
            f"{field} contains control characters.",
            details={"field": field, "problem": "control characters"},
        )
    if required and not text.strip():
        raise ApiError(
            ErrorCode.INVALID_TEXT,
            f"{field} is blank.",
            details={"field": field, "problem": "blank"},
        )
    return text


NAME_KEY_MAX = 150
"""The longest directory key, in characters. A name is checked at 100 characters before
it is folded, and NFKC expands some (U+FDFA is 18): a key of 1,800 made the cursor
``"<key>|<room id>"`` longer than ``after`` may be (400), and no client could page past
that room (one named to sort first blocked the directory's first page for everyone)."""


def name_key(name: str) -> str:
    """The directory's sort and search key: case-folded, spaces collapsed, at most
    :data:`NAME_KEY_MAX` characters."""
    key = " ".join(unicodedata.normalize("NFKC", name).casefold().split())
    return key[:NAME_KEY_MAX].rstrip()


def excerpt(text: str, limit: int = 140) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
