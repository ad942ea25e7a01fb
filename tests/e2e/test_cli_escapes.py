"""Terminal escapes in end-to-end-encrypted messages, through the real system and the
real `parley` (processes under a pty, through HAProxy; docs/client.md, "Untrusted text
on the terminal").

Review finding: the server cannot filter what it cannot read, and the CLI escaped
rich markup only: a room member's or a contact's message reached the terminal with
its ESC and C1 bytes, so it could clear the screen, move the cursor, forge a line
from someone else, set the window title or write the clipboard. Here alice sends such
messages (a room's and a 1:1) and bob's `parley inbox`, `parley chat` and `parley
history` print them with the controls made visible as U+FFFD, the lines as they were."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from tests.e2e.test_cli import User, signup
from tests.support.stack import System

EVIL = (
    "hi \x1b]0;pwned-title\x07\x1b[2J\x1b[H\x1b[1;32malice\x1b[0m: fake line \x9b31m"
    " \x1b]52;c;ZXZpbA==\x1b\\ \u202eevil\u202c\nsecond line [bold]x[/bold]"
)
R = "\ufffd"
SHOWN_FIRST = (
    f"hi {R}]0;pwned-title{R}{R}[2J{R}[H{R}[1;32malice{R}[0m: fake line {R}31m"
    f" {R}]52;c;ZXZpbA=={R}\\ {R}evil{R}"
)
SHOWN_SECOND = "second line [bold]x[/bold]"
# What the message would do to a terminal: none of it may reach one.
INJECTED = ["\x1b]0;pwned-title", "\x1b[2J", "\x1b[1;32malice", "\x9b", "\x1b]52;", "\u202e"]


@pytest.fixture
def users(system: System, tmp_path: Path) -> Iterator[tuple[User, User]]:
    tag = secrets.token_hex(3)
    alice = User(system, tmp_path / "alice", f"ealice{tag}")
    bob = User(system, tmp_path / "bob", f"ebob{tag}")
    signup(alice)
    signup(bob)
    yield alice, bob
    alice.close()
    bob.close()


def _clean(out: bytes, alice: User) -> str:
    """``out`` (a whole command's output, NO_COLOR: no escape of its own) has no ESC,
    no C1 and no bidi override; the message shows with U+FFFD for each, its two lines
    kept, the first after alice's name."""
    text = out.decode("utf-8")
    assert not [c for c in text if c == "\x1b" or 0x80 <= ord(c) <= 0x9F], repr(text)
    for injected in INJECTED:
        assert injected not in text
    assert f"{alice.name}: {SHOWN_FIRST}\r\n{SHOWN_SECOND}" in text, repr(text)
    return text


def _in_chat(chat: pexpect.spawn, alice: User) -> None:
    """A live chat (prompt_toolkit draws with escapes of its own): the message shows as
    it does in history, and none of the message's own sequences came through."""
    chat.expect_exact(f"{alice.name}: {SHOWN_FIRST}".encode())
    seen = chat.before or b""
    chat.expect_exact(SHOWN_SECOND.encode())
    seen += (chat.after or b"") + (chat.before or b"")
    text = seen.decode("utf-8", errors="replace")
    for injected in INJECTED:
        assert injected not in text, repr(text)


def test_escapes_in_room_and_direct_messages_never_reach_the_terminal(
    users: tuple[User, User],
) -> None:
    alice, bob = users
    room = f"esc{secrets.token_hex(3)}"
    alice.run("rooms", "create", room)
    alice.run("rooms", "invite", f"#{room}", bob.name)
    bob.run("rooms", "accept", f"#{room}")

    # A 1:1 message stored while bob is offline: `parley inbox` fetches and shows it.
    alice.run("send", bob.name, EVIL)
    inbox = bob.run("inbox").decode("utf-8", errors="replace")
    for injected in INJECTED:
        assert injected not in inbox
    assert SHOWN_FIRST in inbox

    # Live, in bob's chats as the messages arrive; then `history` prints them from his
    # store (a private room's as this device stored them).
    chat = bob.spawn("chat", f"#{room}")
    chat.expect("Local passphrase: ")
    chat.sendline(bob.passphrase)
    chat.expect_exact(f"In #{room}")
    chat.expect(re.escape(f"{bob.name} #{room}>"))
    alice.run("send", f"#{room}", EVIL)
    _in_chat(chat, alice)
    chat.sendline("/quit")
    chat.expect(pexpect.EOF)
    _clean(bob.run("history", f"#{room}"), alice)

    chat = bob.spawn("chat", alice.name)
    chat.expect("Local passphrase: ")
    chat.sendline(bob.passphrase)
    chat.expect_exact(f"Chatting with {alice.name}")
    chat.expect(re.escape(f"{bob.name}>"))
    alice.run("send", bob.name, EVIL)
    _in_chat(chat, alice)
    chat.sendline("/quit")
    chat.expect(pexpect.EOF)
    text = _clean(bob.run("history", alice.name), alice)
    assert text.count(SHOWN_FIRST) == 2  # the one from the inbox, and the live one
