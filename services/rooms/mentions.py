"""@mentions in public rooms' messages, parsed by the server (docs/rooms.md, "Mentions").

A mention is ``@`` followed by a username (``[a-z][a-z0-9_.-]{1,30}[a-z0-9]``,
any case) or a user id (32 hex digits), as the auth service spells them:

- it starts the text or follows a character that cannot be part of a word,
  an e-mail address or a path: not a letter, digit or combining mark of any
  script, nor ``.``, ``+``, ``-``, ``_``, ``/``, ``\\``, ``=``, ``?``, ``&``,
  ``#`` or ``@``; the rest of RFC 5322's ``atext`` (``!$%'*^`{|}~``) only
  in an address: after a local part with a letter or digit in it and before a
  dotted name (so
  ``bob@example.com``, ``joe!@bob.dev``, ``x/@bob``, ``C:\\Users\\@bob`` and
  ``@@bob`` are not mentions, ``'@bob'`` and ``*@bob*`` are);
- it ends where a username cannot continue; trailing ``.``, ``-`` and ``_``
  are punctuation (``@bob.`` and ``@bob-`` mention ``bob``), and a name
  followed by a letter, digit or combining mark of any script, or by ``@``,
  is not one (``@bobé``, ``@bob`` with a combining accent, ``@bob_é``,
  ``@bob@host``);
- invisible format characters (zero-width spaces and joiners, direction
  marks: Unicode category Cf) are dropped first, so ``@ali<ZWSP>ce``
  mentions ``alice``, the name the reader sees, not ``ali``;
- nothing inside code is a mention: inline code spans (`` `@bob` ``, any
  run of backticks) and fenced blocks (``` ``` ``` or ``~~~``), found in the
  text as written (a full-width ``\uff40`` is not a backtick);
- then the text is NFKC-normalised, so full-width ``\uff20\uff42\uff4f\uff42``
  mentions ``bob`` (the character before the ``@`` is judged as written
  against the ASCII list above, and normalised for letters, digits and ``@``);
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
# Before the @, as written: never a mention after a character of a word, an e-mail
# address's usual local part (".", "+", "-", "_"), a URL or path ("/", "\\", "=", "?",
# "&", "#") or "@"; after the rest of RFC 5322's atext (``!$%'*^`{|}~``) not when the
# name goes on with a "." (``joe!@bob.dev``: an address), but ``'@bob'`` and ``*@bob*``
# (quotes, emphasis) are.
_BAD_BEFORE = frozenset(".+-_/\\=?&#@")
_LOCAL_PART = frozenset("!$%'*^`{|}~")
# Fenced code blocks (``` or ~~~ at a line start, to the closing fence or the end),
# then inline code spans (a run of N backticks to the next run of exactly N).
_FENCE = re.compile(r"(?ms)^[ \t]{0,3}(`{3,}|~{3,}).*?(?:^[ \t]{0,3}\1[`~]*[ \t]*$|\Z)")
_SPAN = re.compile(r"(?<!`)(`+)(?!`).+?(?<!`)\1(?!`)", re.S)


def _strip_code(text: str) -> str:
    text = _FENCE.sub(" ", text)
    return _SPAN.sub(" ", text)


def _word(c: str) -> bool:
    """A letter, digit or combining mark of any script (or ``_``): part of a word."""
    return c.isalnum() or c == "_" or unicodedata.category(c).startswith("M")


def _address(plain: str, at: int, token: str) -> bool:
    """Whether the ``@`` at ``at`` (after one of ``!$%'*^`{|}~``) is an e-mail
    address's: a local part with a letter or digit in it runs up to it (``joe!@``; not
    ``*@`` or ``'@`` after a space, emphasis and quotes), and the name goes on with a
    ``.`` (a domain; ``*@john.doe*`` is a dotted username, emphasised)."""
    if "." not in token.rstrip("._-"):
        return False
    # Back to the run's start, stopping at its first letter or digit (a walk over the
    # whole run for each candidate was quadratic: hundreds of "*@b.c" in one word).
    begin = at
    while begin > 0 and not plain[begin - 1].isspace():
        begin -= 1
        if plain[begin].isalnum():
            return True
    return False


def _normalise(text: str) -> tuple[str, list[str]]:
    """``text`` in NFKC, a character at a time, with the character as written that each
    one of the result comes from (full-width forms are judged as the reader sees them)."""
    if text.isascii():  # NFKC leaves ASCII as it is
        return text, list(text)
    out: list[str] = []
    origin: list[str] = []
    for c in text:
        n = c if c.isascii() else unicodedata.normalize("NFKC", c)
        out.append(n)
        origin += [c] * len(n)
    return "".join(out), origin


def parse(text: str, limit: int = 100) -> list[str]:
    """The distinct mentions of ``text``: lower-case usernames or user ids, in order."""
    visible = "".join(c for c in text if unicodedata.category(c) != "Cf")
    # Code first, as written: normalised, a full-width ``\uff40`` would become a
    # backtick and open a code span the reader does not see.
    plain, origin = _normalise(_strip_code(visible))
    found: list[str] = []
    for m in _CANDIDATE.finditer(plain):
        start, end = m.span()
        if start > 0:
            before = plain[start - 1]
            if origin[start - 1] in _BAD_BEFORE or before == "@" or _word(before):
                continue
            if origin[start - 1] in _LOCAL_PART and _address(plain, start, m.group(1)):
                continue  # an address: local part, @, dotted domain
        after = plain[end : end + 1]
        if after and (after == "@" or _word(after)):
            continue  # the name runs on (in another script, or with a mark), or an address
        token = m.group(1)
        # Trailing punctuation belongs to the sentence, not the name.
        name = token.rstrip("._-").lower()
        if not (USERNAME_RE.fullmatch(name) or USER_ID_RE.fullmatch(name)):
            continue
        if name not in found:
            found.append(name)
            if len(found) >= limit:
                break
    return found
