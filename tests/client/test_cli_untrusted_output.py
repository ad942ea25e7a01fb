"""What the CLI prints of text it did not write (a peer's message, a member's name, a
server's words) reaches the terminal with no control sequence and no bidi override
(docs/client.md, "Untrusted text on the terminal"). Review finding: `chat` and
`history` escaped rich markup only, so a room member or a contact could clear the
screen, forge lines, set the window title or write the clipboard (OSC 52).

These drive the printers themselves (the helper is in test_cli_safe_text.py; through
the real system, `parley history` and `parley chat`: tests/e2e/test_cli_escapes.py)."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest
from parley import cli, cli_rooms, cli_support
from parley.events import (
    ConnectionEvent,
    DecryptFailed,
    ErrorEvent,
    Event,
    KeyChanged,
    Message,
    RoomChanged,
    SentElsewhere,
)
from rich.console import Console

EVIL = (
    "hi \x1b]0;pwned-title\x07\x1b[2J\x1b[H\x1b[1;32malice\x1b[0m: fake line \x9b31m"
    " \x1b]52;c;ZXZpbA==\x1b\\ \u202eevil\u202c \x7f\x00\r\nsecond line [bold]x[/bold]"
)
R = "\ufffd"
SHOWN = (
    f"hi {R}]0;pwned-title{R}{R}[2J{R}[H{R}[1;32malice{R}[0m: fake line {R}31m"
    f" {R}]52;c;ZXZpbA=={R}\\ {R}evil{R} {R}{R}{R}\nsecond line [bold]x[/bold]"
)


@pytest.fixture
def screen(monkeypatch: pytest.MonkeyPatch) -> Callable[[], str]:
    """The CLI's console, printing to a string (plain: no style of its own)."""
    out = io.StringIO()
    plain = Console(file=out, color_system=None, highlight=False, width=500)
    for module in (cli_support, cli, cli_rooms):
        monkeypatch.setattr(module, "console", plain)
    return out.getvalue


def _no_control(printed: str) -> None:
    bad = [
        f"U+{ord(c):04X}"
        for c in printed
        if (ord(c) < 0x20 and c not in "\n") or 0x7F <= ord(c) <= 0x9F
        or 0x202A <= ord(c) <= 0x202E or 0x2066 <= ord(c) <= 0x2069
    ]  # fmt: skip
    assert bad == [], printed


def test_a_room_message_in_history_and_chat(screen: Callable[[], str]) -> None:
    """`parley history '#room'` and `parley chat '#room'` print with _print_room_entry."""
    cli_rooms._print_room_entry(
        {"kind": "message", "dir": "in", "text": EVIL, "username": "mallory", "seq": 7,
         "at": 1_700_000_000_000},
        "bob",
    )  # fmt: skip
    printed = screen()
    _no_control(printed)
    assert f"mallory: {SHOWN}\n" in printed
    assert printed.count("\n") == 2  # the message's own line break, kept


def test_a_room_member_with_a_name_that_drives_the_terminal(screen: Callable[[], str]) -> None:
    for entry in (
        {"kind": "message", "dir": "in", "text": "hi", "username": "m\x1b[2Jx"},
        {"kind": "removed", "dir": "in", "username": "m\x1b[2Jx", "removed_by": "sender"},
        {"kind": "error", "dir": "in", "text": "[could not decrypt]", "username": "m\x9bx"},
    ):
        cli_rooms._print_room_entry(entry, "bob")
    _no_control(screen())


def test_a_one_to_one_message_in_history_and_inbox(screen: Callable[[], str]) -> None:
    """`parley history USER`, `parley inbox` and `parley chat USER` (its history)."""
    for entry in (
        {"kind": "message", "dir": "in", "text": EVIL},
        {"kind": "message", "dir": "out", "text": EVIL, "status": "sent"},
        {"kind": "message", "dir": "system", "text": EVIL},
        {"kind": "error", "dir": "in", "text": EVIL},
    ):
        cli._print_entry(entry, "mallory\u202e", "bob")
    printed = screen()
    _no_control(printed)
    assert f"mallory{R}: {SHOWN}\n" in printed


EVENTS: list[Event] = [
    Message("p" * 32, "mallory", EVIL, 1, "s1", 1),
    SentElsewhere("p" * 32, EVIL, 1, "s2", 2),
    KeyChanged("p" * 32, "mal\x1b]0;x\x07lory", "1" * 60, None),
    DecryptFailed("p" * 32, "mal\x9blory", "Bad\x1b[2J"),
    ErrorEvent("some_code", EVIL),
    ConnectionEvent("reconnecting", "in 1 s\x1b[2J"),
    ConnectionEvent("failed", EVIL),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_live_events(screen: Callable[[], str], event: Event) -> None:
    """What every connected command shows as it happens (`parley chat USER` among them)."""
    cli_support._print_event(event, "bob")
    printed = screen()
    assert printed
    _no_control(printed)


def test_a_room_change_names_and_topics(screen: Callable[[], str]) -> None:
    for event in (
        RoomChanged("r" * 24, "settings", "private", "open", "u", "new\x1b[2J", EVIL),
        RoomChanged("r" * 24, "member_left", "private", "open", "u", username="m\x9bx"),
        RoomChanged("r" * 24, "state", "private", "clo\x1bsed"),
    ):
        cli_rooms.console.print(cli_rooms._room_change(event, "me"))
    _no_control(screen())


def test_who_is_typing() -> None:
    from parley.events import Typing

    line = cli_rooms.TypingLine()
    line.on(Typing("r" * 24, "u" * 32, "m\x1b[2J\u202ex", 1, True))
    _no_control(line.text())
