"""@mentions in public rooms' messages, parsed by the server (docs/rooms.md, "Mentions").

A mention is ``@`` followed by a username (``[a-z][a-z0-9_.-]{1,30}[a-z0-9]``,
any case) or a user id (32 hex digits), as the auth service spells them:

- it starts the text or follows a character that cannot be part of a word,
  an address or a path (so ``bob@example.com``, ``x/@bob`` and ``@@bob`` are
  not mentions);
- it ends where a username cannot continue; trailing ``.``, ``-`` and ``_``
  are punctuation (``@bob.`` and ``@bob-`` mention ``bob``), and a name
  followed by a letter or digit of any script, or by ``@``, is not one
  (``@bobé``, ``@bob@host``);
- invisible format characters (zero-width spaces and joiners, direction
  marks: Unicode category Cf) are dropped first, so ``@ali<ZWSP>ce``
  mentions ``alice``, the name the reader sees, not ``ali``;
- text is NFKC-normalised first, so full-width ``\uff20\uff42\uff4f\uff42`` mentions ``bob``;
- nothing inside code is a mention: inline code spans (`` `@bob` ``, any
  run of backticks) and fenced blocks (``` ``` ``` or ``~~~``);
- case does not matter, and each user counts once, in order of appearance.

:func:`parse` returns the names as written (lower case); the caller resolves
them to user ids and keeps the members of the room.
"""

from __future__ import annotations

import re
import unicodedata

USERNAME_RE = re.compile(r"[a-z][a-z0-9_.-]{1,30}[a-z0-9]")
USER_ID_RE = re.compile(r"[0-9a-f]{32}")

# A candidate: @ then the characters a username or id may hold.
_CANDIDATE = re.compile(r"@([A-Za-z0-9_.-]+)")
# Before the @: nothing, or a character that cannot continue a word, an e-mail
# address or a path.
_BAD_BEFORE = re.compile(r"[\w@/.+\-]")
# Fenced code blocks (``` or ~~~ at a line start, to the closing fence or the end),
# then inline code spans (a run of N backticks to the next run of exactly N).
_FENCE = re.compile(r"(?ms)^[ \t]{0,3}(`{3,}|~{3,}).*?(?:^[ \t]{0,3}\1[`~]*[ \t]*$|\Z)")
_SPAN = re.compile(r"(?<!`)(`+)(?!`).+?(?<!`)\1(?!`)", re.S)


def _strip_code(text: str) -> str:
    text = _FENCE.sub(" ", text)
    return _SPAN.sub(" ", text)


def parse(text: str, limit: int = 100) -> list[str]:
    """The distinct mentions of ``text``: lower-case usernames or user ids, in order."""
    visible = "".join(c for c in text if unicodedata.category(c) != "Cf")
    plain = _strip_code(unicodedata.normalize("NFKC", visible))
    found: list[str] = []
    for m in _CANDIDATE.finditer(plain):
        start, end = m.span()
        if start > 0 and _BAD_BEFORE.match(plain[start - 1]):
            continue
        token = m.group(1)
        # Trailing punctuation belongs to the sentence, not the name.
        trimmed = token.rstrip("._-")
        end -= len(token) - len(trimmed)
        after = plain[end : end + 1]
        if len(trimmed) == len(token) and after and (after.isalnum() or after in "@_"):
            continue  # the name runs on in another script, or is an address
        name = trimmed.lower()
        if not (USERNAME_RE.fullmatch(name) or USER_ID_RE.fullmatch(name)):
            continue
        if name not in found:
            found.append(name)
            if len(found) >= limit:
                break
    return found
