"""Rooms through the `parley` CLI, driven as a user drives it (real processes under a
pty, through HAProxy): a public room created, joined, posted to and paged through;
a private room chatted in by two interactive `parley chat '#room'` sessions with
the room commands; and the errors a user meets, in words."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from tests.e2e.test_cli import User, signup
from tests.support.stack import System


@pytest.fixture
def users(system: System, tmp_path: Path) -> Iterator[tuple[User, User]]:
    tag = secrets.token_hex(3)
    alice = User(system, tmp_path / "alice", f"ralice{tag}")
    bob = User(system, tmp_path / "bob", f"rbob{tag}")
    signup(alice)
    signup(bob)
    yield alice, bob
    alice.close()
    bob.close()


def fails(user: User, *args: str, expect: str) -> None:
    """A command that must fail (exit 1) with ``expect`` in its words."""
    child = user.spawn(*args)
    child.expect("Local passphrase: ")
    child.sendline(user.passphrase)
    child.expect(expect)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 1


def open_room_chat(user: User, room: str) -> pexpect.spawn:
    chat = user.spawn("chat", f"#{room}")
    chat.expect("Local passphrase: ")
    chat.sendline(user.passphrase)
    chat.expect(f"In #{room}")
    chat.expect(f"{user.name} #{room}>")
    return chat


def test_cli_public_room_create_join_post_and_page_history(users: tuple[User, User]) -> None:
    alice, bob = users
    room = f"town{secrets.token_hex(3)}"
    out = alice.run("rooms", "create", room, "--public", "--topic", "all welcome")
    assert f"Created public room #{room}".encode() in out
    assert room.encode() in bob.run("rooms", "directory", room)
    assert f"You joined #{room}".encode() in bob.run("rooms", "join", f"#{room}")
    members = bob.run("rooms", "members", f"#{room}")
    assert alice.name.encode() in members and bob.name.encode() in members
    texts = [f"post {i} {secrets.token_hex(2)}" for i in range(5)]
    for text in texts:
        assert f"Message sent to #{room}".encode() in alice.run("send", f"#{room}", text)
    bob.run("send", f"#{room}", f"@{alice.name} have a look")
    # Paging from the newest back to the first, two at a time, by the hint it prints.
    seen: list[str] = []
    args = ["history", f"#{room}", "-n", "2"]
    pages = 0
    while True:
        out = bob.run(*args).decode()
        pages += 1
        page = re.findall(r"post \d [0-9a-f]{4}", out)
        seen = page + seen
        hint = re.search(r"--before (\d+)", out)
        if hint is None:
            break
        args = ["history", f"#{room}", "-n", "2", "--before", hint.group(1)]
    assert seen == texts
    assert pages == 3
    # Bob's mention of alice is one of her notifications.
    out = alice.run("rooms", "notifications", "--read").decode()
    assert f"{bob.name} mentioned you in #{room}" in out and "have a look" in out
    # ... with the command that shows it: the page that ends with that message.
    jump = re.search(r"parley history '#[^']+' --before (\d+)", out)
    assert jump is not None
    out = alice.run("history", f"#{room}", "-n", "1", "--before", jump.group(1)).decode()
    assert "have a look" in out
    assert "0 unread" in alice.run("rooms", "notifications").decode()


def test_cli_private_room_chat_commands_and_errors(users: tuple[User, User]) -> None:
    alice, bob = users
    room = f"crew{secrets.token_hex(3)}"
    assert b"private (end-to-end encrypted)" in alice.run("rooms", "create", room)
    fails(alice, "rooms", "invite", f"#{room}", alice.name, expect="You cannot do that to yourself")
    alice.run("rooms", "invite", f"#{room}", bob.name)
    assert b"invited" in bob.run("rooms", "list")
    bob.run("rooms", "accept", f"#{room}")

    a = open_room_chat(alice, room)
    b = open_room_chat(bob, room)
    a.sendline("/help")
    for command in ("/help", "/members", "/invite <user>", "/leave", "/quit"):
        a.expect_exact(command)
    a.sendline("/shout hello")
    a.expect("Unknown command /shout")
    # Typing shows at the right of the other's prompt while alice types, before she sends.
    a.send("hello crew")
    b.expect(f"{alice.name} is typing")
    a.sendline(", encrypted")
    b.expect(f"{alice.name}: hello crew, encrypted")
    b.sendline(f"@{alice.name} got it")
    a.expect(f"{bob.name}: @{alice.name} got it")
    a.sendline("/members")
    a.expect(rf"{bob.name}\W.*online")  # bob is in the chat: connected
    b.sendline("/leave")
    b.expect(f"You left #{room}")
    b.expect(pexpect.EOF)
    a.sendline("/quit")
    a.expect(pexpect.EOF)
    # Nothing of the unknown command was sent; the history is the two messages.
    out = alice.run("history", f"#{room}").decode()
    assert "hello crew, encrypted" in out and "got it" in out and "/shout" not in out
    assert bob.name.encode() not in alice.run("rooms", "members", f"#{room}")
    fails(bob, "send", f"#{room}", "am I still in?", expect=f"No room #{room} among your rooms")
    fails(bob, "chat", f"#{room}", expect=f"No room #{room}")


def test_cli_public_room_edit_and_delete_show_markers_live_and_in_history(
    users: tuple[User, User],
) -> None:
    alice, bob = users
    room = f"square{secrets.token_hex(3)}"
    alice.run("rooms", "create", room, "--public")
    bob.run("rooms", "join", f"#{room}")
    a = open_room_chat(alice, room)
    b = open_room_chat(bob, room)
    a.sendline("first draft")
    a.expect(r"#(\d+) posted\.")
    first = int(a.match.group(1))
    b.expect(f"{alice.name}: first draft")
    a.sendline(f"/edit #{first} final words")
    a.expect(f"Edited #{first}")
    b.expect(rf"#{first} is now: final words \(edited\)")
    a.sendline("a slip")
    a.expect(r"#(\d+) posted\.")
    slip = int(a.match.group(1))
    b.expect(f"{alice.name}: a slip")
    a.sendline(f"/delete {slip}")
    a.expect(f"Deleted #{slip}")
    b.expect(rf"#{slip} is now: \[deleted by author\]")
    # Someone else's message: refused with the server's words, nothing changed.
    b.sendline(f"/edit #{first} not yours")
    b.expect("Error:")
    b.sendline("/edit")
    b.expect("needs a message number")
    # The owner removes bob's message and undoes it: bob sees it gone, then back.
    b.sendline("spam? no, a link")
    b.expect(r"#(\d+) posted\.")
    link = int(b.match.group(1))
    a.sendline(f"/delete #{link}")
    a.expect(f"Deleted #{link}")
    b.expect(rf"#{link} is now: \[removed by moderator\]")
    a.sendline(f"/restore #{link}")
    a.expect(f"Restored #{link}")
    b.expect(rf"#{link} is now: spam\? no, a link")
    a.sendline(f"/restore #{slip}")  # an author's own deletion is final
    a.expect("Error:")
    a.sendline("/quit")
    a.expect(pexpect.EOF)
    b.sendline("/quit")
    b.expect(pexpect.EOF)
    out = bob.run("history", f"#{room}").decode()
    assert "final words (edited)" in out and "[deleted by author]" in out
    assert "spam? no, a link" in out
    assert "first draft" not in out and "a slip" not in out and "not yours" not in out


def test_cli_room_settings_rename_topic_close_and_who_may(users: tuple[User, User]) -> None:
    alice, bob = users
    room = f"plaza{secrets.token_hex(3)}"
    renamed = f"forum{secrets.token_hex(3)}"
    alice.run("rooms", "create", room, "--public")
    bob.run("rooms", "join", f"#{room}")
    chat = open_room_chat(bob, room)  # bob watches: each change is told live
    out = alice.run("rooms", "set", f"#{room}", "--name", renamed, "--topic", "rules: be kind")
    assert f"renamed #{room} to #{renamed}".encode() in out and b"topic set" in out
    chat.expect(f"The room is #{renamed} now. Topic: rules: be kind")
    listed = bob.run("rooms", "directory", renamed).decode()
    assert renamed in listed and "be kind" in listed and room not in listed
    fails(bob, "rooms", "set", f"#{renamed}", "--close", expect="owner and moderators")
    fails(alice, "rooms", "set", f"#{renamed}", expect="Nothing to change")
    assert b"closed" in alice.run("rooms", "set", f"#{renamed}", "--close")
    chat.expect("The room is closed now.")
    chat.sendline("/quit")
    chat.expect(pexpect.EOF)
    fails(bob, "send", f"#{renamed}", "anyone?", expect="closed")
    assert b"open" in alice.run("rooms", "set", f"#{renamed}", "--open")
    assert f"Message sent to #{renamed}".encode() in bob.run("send", f"#{renamed}", "back")


def test_cli_room_roles_and_removal_are_told_live(
    system: System, users: tuple[User, User], tmp_path: Path
) -> None:
    """The owner makes bob a moderator, hands him the room, and bob (now the owner)
    removes carol: carol's and bob's `parley chat` say each change as it happens, in
    words, and a hand-over by someone who is no longer the owner is refused. Carol
    joins again (a removal is not a ban); bob bans her, she cannot join, he lists the
    ban and lifts it, and she joins."""
    alice, bob = users
    carol = User(system, tmp_path / "carol", f"rcarol{secrets.token_hex(3)}")
    signup(carol)
    try:
        room = f"guild{secrets.token_hex(3)}"
        alice.run("rooms", "create", room, "--public")
        bob.run("rooms", "join", f"#{room}")
        carol.run("rooms", "join", f"#{room}")
        b, c = open_room_chat(bob, room), open_room_chat(carol, room)
        out = alice.run("rooms", "moderator", f"#{room}", bob.name)
        assert f"{bob.name} is a moderator of #{room} now".encode() in out
        b.expect("You are a moderator now.")
        c.expect(f"{bob.name} is a moderator now.")
        out = alice.run("rooms", "owner", f"#{room}", bob.name)
        assert f"{bob.name} owns #{room} now".encode() in out
        b.expect("You are the room's owner now")
        c.expect(f"{bob.name} is the room's owner now")
        fails(alice, "rooms", "owner", f"#{room}", carol.name, expect="owner")
        bob.run("rooms", "remove", f"#{room}", carol.name)
        c.expect("You were removed from this room.")
        b.expect(f"{carol.name} was removed from this room.")
        for chat in (b, c):
            chat.sendline("/quit")
            chat.expect(pexpect.EOF)
        members = bob.run("rooms", "members", f"#{room}").decode()
        assert carol.name not in members and alice.name in members
        # A removal is not a ban: carol joins again. A ban sticks until it is lifted.
        carol.run("rooms", "join", f"#{room}")
        out = bob.run("rooms", "ban", f"#{room}", carol.name)
        assert f"Banned {carol.name} from #{room}".encode() in out
        fails(carol, "rooms", "join", f"#{room}", expect="banned")
        assert b"Nobody is banned" not in bob.run("rooms", "bans", f"#{room}")
        listed = bob.run("rooms", "bans", f"#{room}").decode()
        assert carol.name in listed and bob.name in listed
        fails(carol, "rooms", "bans", f"#{room}", expect="among your rooms")
        out = bob.run("rooms", "ban", f"#{room}", carol.name, "--lift")
        assert f"{carol.name} may join #{room} again".encode() in out
        assert b"Nobody is banned" in bob.run("rooms", "bans", f"#{room}")
        carol.run("rooms", "join", f"#{room}")
        assert carol.name in bob.run("rooms", "members", f"#{room}").decode()
    finally:
        carol.close()
