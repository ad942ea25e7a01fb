"""Untrusted text on the terminal (parley/cli_support.py ``plain_text``/``safe_text``;
docs/client.md, "Untrusted text on the terminal"): a message body, a name or a
server's words can carry no control sequence to the user's terminal, and no bidi
override that makes a line read other than it is; the rest of Unicode shows as sent,
and rich markup in it shows literally. How the CLI's printers use it is in
tests/client/test_cli_untrusted_output.py; through the real system in
tests/e2e/test_cli_escapes.py."""

from __future__ import annotations

import io
import itertools
import logging
import sys
import unicodedata

import pytest
from parley import cli_support
from parley.cli_support import PLACEHOLDER, plain_text, safe_text
from rich.console import Console

R = PLACEHOLDER  # U+FFFD

CASES = [
    # (what a peer sent, what reaches the terminal)
    ("\x1b[2J\x1b[H", f"{R}[2J{R}[H"),  # CSI: clear the screen, cursor home
    ("\x1b[1;32malice\x1b[0m: hi", f"{R}[1;32malice{R}[0m: hi"),  # SGR: a forged name
    ("\x1b]0;pwned-title\x07", f"{R}]0;pwned-title{R}"),  # OSC (window title), BEL
    ("\x1b]52;c;ZXZpbA==\x1b\\", f"{R}]52;c;ZXZpbA=={R}\\"),  # OSC 52 (clipboard), ST
    ("\x1bP+q\x1b\\", f"{R}P+q{R}\\"),  # DCS
    ("\x9b31m red", f"{R}31m red"),  # C1 CSI (U+009B)
    ("\x9d0;t\x9c", f"{R}0;t{R}"),  # C1 OSC ... ST
    ("a\x85b", f"a{R}b"),  # NEL
    ("del\x7f", f"del{R}"),
    ("nul\x00end", f"nul{R}end"),
    ("over\rwrite", f"over{R}write"),  # CR: the line typed over
    ("back\x08\x08", f"back{R}{R}"),
    ("bell\x07", f"bell{R}"),
    ("\x0b\x0c", f"{R}{R}"),
    # bidi embeddings, overrides, isolates
    ("\u202eevil\u202c", f"{R}evil{R}"),
    ("\u202a\u202b\u202c\u202d\u202e", R * 5),
    ("\u2066\u2067\u2068\u2069", R * 4),
    ("abc\u202etxt.exe", f"abc{R}txt.exe"),
    # kept as sent
    ("line one\nline two", "line one\nline two"),
    ("a\tb", "a\tb"),
    ("e\u0301 n\u0303 \u0915\u094d\u0937", "e\u0301 n\u0303 \u0915\u094d\u0937"),  # combining
    ("👍🏽 👩\u200d👩\u200d👧 🇫🇷", "👍🏽 👩\u200d👩\u200d👧 🇫🇷"),  # modifiers, ZWJ, flags
    ("مرحبا שלום 你好", "مرحبا שלום 你好"),  # right-to-left scripts, CJK
    ("\u200e\u200f\u061c", "\u200e\u200f\u061c"),  # bidi marks (no override): kept
    ("\u00a0\u00ad\u00e9", "\u00a0\u00ad\u00e9"),  # just past C1
    ("", ""),
]


@pytest.mark.parametrize(("sent", "shown"), CASES)
def test_plain_text_replaces_controls_and_bidi_overrides_only(sent: str, shown: str) -> None:
    assert plain_text(sent) == shown


def test_every_control_character_but_newline_and_tab_is_replaced() -> None:
    """Across all of Unicode: the Cc characters (C0, DEL, C1) but "\\n" and "\\t", and
    U+202A-U+202E, U+2066-U+2069, become U+FFFD; nothing else changes."""
    bidi = {*range(0x202A, 0x202F), *range(0x2066, 0x206A)}
    for code in range(0x110000):
        if 0xD800 <= code <= 0xDFFF:
            continue
        char = chr(code)
        replaced = char not in "\n\t" and (unicodedata.category(char) == "Cc" or code in bidi)
        assert plain_text(char) == (R if replaced else char), hex(code)


@pytest.mark.parametrize(("sent", "shown"), CASES)
def test_safe_text_printed_by_rich_shows_the_same_with_no_escape_byte(
    sent: str, shown: str
) -> None:
    out = io.StringIO()
    Console(file=out, color_system=None, highlight=False, width=200).print(
        f"[bold cyan]bob[/]: [italic]{safe_text(sent)}[/] [dim](end)[/]"
    )  # (rich's escape doubles a trailing backslash for the tag that follows it)
    printed = out.getvalue()
    assert printed == f"bob: {shown} (end)\n".expandtabs(8)  # rich expands tabs
    assert not any(0x80 <= ord(c) <= 0x9F or c == "\x1b" for c in printed)


@pytest.mark.parametrize(
    "markup",
    ["[bold]not bold[/bold]", "[red]x[/]", "[link=https://evil.example]click[/link]", "\\[x]"],
)
def test_markup_in_untrusted_text_shows_literally(markup: str) -> None:
    out = io.StringIO()
    Console(file=out, color_system="truecolor", force_terminal=True, highlight=False).print(
        f"{safe_text(markup)}"
    )
    assert out.getvalue() == markup + "\n"  # no style, no link: the text as typed


def test_the_sdks_warnings_reach_stderr_through_plain_text(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A warning of the SDK can quote a server's words (a close reason, a refusal):
    printed by the CLI, it is made plain like the rest."""
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    logger = logging.getLogger("parley.connection")
    before = list(logging.getLogger("parley").handlers)
    # Another test of this process (a CLI command run in it) may have installed it.
    logging.getLogger("parley").handlers[:] = [
        h for h in before if not isinstance(h, cli_support._SafeLog)
    ]
    try:
        cli_support.safe_logging()
        cli_support.safe_logging()  # once only
        assert (
            sum(isinstance(h, cli_support._SafeLog) for h in logging.getLogger("parley").handlers)
            == 1
        )
        logger.warning("dropping the connection: %s", "bye\x1b]0;owned\x07\x9b2J")
        logger.info("not shown")
    finally:
        logging.getLogger("parley").handlers[:] = before
    assert err.getvalue() == f"dropping the connection: bye{R}]0;owned{R}{R}2J\n"


# -- shown exactly: backslashes, brackets, emoji codes (an audit of the CLI, 2026-12) -------
# rich's markup escape doubled a trailing backslash (for the tag it supposes follows) and
# dropped the one before a "[" that is not a tag: a room named `ops\` was listed as
# `#ops\\`, which then named no room; and the consoles turned ":warning:" into an emoji.

TEMPLATES = ["{}", "[bold]{}[/]", "{} end", "[dim]({})[/]", "#{}: [italic]{}[/italic]"]


def _shown(template: str, text: str) -> str:
    out = io.StringIO()
    Console(file=out, color_system=None, highlight=False, width=500).print(
        template.format(*[safe_text(text)] * template.count("{}")), end=""
    )
    return out.getvalue()


def _as_sent(template: str, text: str) -> str:
    """The template's tags taken away, ``text`` in each place: what must be printed."""
    for tag in ("[bold]", "[/]", "[dim]", "[italic]", "[/italic]"):
        template = template.replace(tag, "")
    return template.format(*[text] * template.count("{}"))


@pytest.mark.parametrize("template", TEMPLATES)
def test_every_short_text_of_backslashes_and_brackets_shows_as_sent(template: str) -> None:
    """Every text of up to 5 characters of ``\\ [ ] / a #`` and space, in markup before,
    after and between tags: printed, it is the text as sent."""
    alphabet = "\\[]/a #"
    for n in range(6):
        for chars in itertools.product(alphabet, repeat=n):
            text = "".join(chars)
            assert _shown(template, text) == _as_sent(template, text), (template, text)


@pytest.mark.parametrize(
    "text",
    ["ops\\", "the share is \\\\srv\\public\\", "a\\[1]", "a\\[", "\\\\", "x\\\\[b]y\\",
     "[bold]x[/bold]\\", "\\[link=https://e.example]y[/link]"],
)  # fmt: skip
def test_backslashes_show_as_sent(text: str) -> None:
    for template in TEMPLATES:
        assert _shown(template, text) == _as_sent(template, text), (template, text)


def test_emoji_codes_show_as_typed_on_the_clis_consoles() -> None:
    text = "deploy at 10 :warning: key :one::two: done :100: :+1:"
    for console in (cli_support.console, cli_support.err):
        with console.capture() as shown:
            console.print(f"[bold]bob[/]: {safe_text(text)}")
        assert shown.get() == f"bob: {text}\n"
