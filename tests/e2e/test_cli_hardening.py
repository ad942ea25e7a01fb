"""The CLI as a new user meets it (#20): the identity-change policy against a directory
that serves someone else's key, what cannot be sent (empty, too large), the outbox,
chat commands, and sign-up errors that say which field and why.

Real processes under a pty (pexpect) through HAProxy, as tests/e2e/test_cli.py; the
"attacker" registers a new identity for bob through the real API (a wiped install
logging in with ``--new-identity``), which is what a malicious directory serving its
own key and a ``key_changed`` looks like to alice's client.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import shutil
import subprocess

import pexpect
from parley import Client

from tests.e2e.test_cli import PASSWORD, User, login, open_chat, signup
from tests.e2e.test_cli import users as users  # the fixture
from tests.support.cli_runs import cli_process
from tests.support.stack import System

NUMBER = rb"((?:\d{5} ){11}\d{5})"


def run_fails(user: User, *args: str, expect: str) -> bytes:
    """A command that must fail (exit 1) with ``expect`` in its output."""
    child = user.spawn(*args)
    child.expect("Local passphrase: ")
    child.sendline(user.passphrase)
    child.expect(expect)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 1
    return b" ".join(bytes(child.before or b"").split())  # lines wrapped at 200 columns


def no_tty(user: User, *args: str) -> subprocess.CompletedProcess[str]:
    """A command run as a script runs it: no terminal, the passphrase from the environment."""
    return cli_process({**user.env, "PARLEY_PASSPHRASE": user.passphrase}, *args)


def attacker_takes_over(bob: User) -> None:
    """Bob's identity in the directory is replaced (a new account key, a key_changed)."""
    shutil.rmtree(bob.home)
    bob.passphrase = f"new {secrets.token_hex(4)} passphrase"
    login(bob, new_store=True, new_identity=True)


def test_cli_a_changed_identity_stops_sending_until_confirmed_or_verified(
    users: tuple[User, User],
) -> None:
    alice, bob = users
    signup(alice)
    signup(bob)
    alice.run("send", bob.name, "hello")
    out = alice.run("safety-number", bob.name)
    first = re.search(NUMBER, out)
    assert first is not None

    attacker_takes_over(bob)
    # The inbox warns, and says that sending is paused.
    out = alice.run("inbox")
    assert f"{bob.name}'s safety number changed".encode() in out
    assert b"Sending to" in out and b"is paused" in out

    # In a terminal the first send asks; "no" sends nothing (exit 1).
    child = alice.spawn("send", bob.name, "to the new key?")
    child.expect("Local passphrase: ")
    child.sendline(alice.passphrase)
    child.expect("Old safety number: " + first.group(1).decode())
    child.expect(NUMBER)
    child.expect(r"new key anyway\? \[y/N\]: ")
    child.sendline("n")
    child.expect("Nothing was sent")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 1
    # A script (no terminal) gets a clear error and exit 1, nothing queued...
    done = no_tty(alice, "send", bob.name, "scripted")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "safety number changed" in done.stderr and "--accept-new-identity" in done.stderr
    assert "The outbox is empty" in no_tty(alice, "outbox").stdout
    # ... and sends with the flag.
    done = no_tty(alice, "send", "--accept-new-identity", bob.name, "scripted, accepted")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "scripted, accepted" in bob.run("inbox").decode()
    assert "to the new key?" not in bob.run("inbox", "--all").decode()

    # Alice verifies bob; the next change blocks even with the flag, in a terminal too.
    child = alice.spawn("verify", bob.name)
    child.expect("Local passphrase: ")
    child.sendline(alice.passphrase)
    child.expect(NUMBER)
    child.expect(r"Do the numbers match\? \[y/N\]: ")
    child.sendline("y")
    child.expect(f"{bob.name} is verified")
    child.expect(pexpect.EOF)
    attacker_takes_over(bob)
    run_fails(
        alice, "send", "--accept-new-identity", bob.name, "still to mallory?",
        expect="You had verified",
    )  # fmt: skip
    run_fails(alice, "send", bob.name, "again?", expect="You had verified")
    # Verifying the new number (or accepting it) resumes sending.
    out = alice.run("verify", "--yes", bob.name)
    assert f"{bob.name} is verified".encode() in out
    alice.run("send", bob.name, "after verifying again")
    out = bob.run("inbox", "--all")
    assert b"after verifying again" in out and b"still to mallory?" not in out


def test_cli_refuses_empty_and_too_large_messages_and_manages_the_outbox(
    users: tuple[User, User], system: System
) -> None:
    alice, bob = users
    signup(alice)
    signup(bob)
    for blank in ("", "   "):
        child = alice.spawn("send", bob.name, blank)
        child.expect("the message is empty")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 1
    # Over the frame limit: refused at once, saying the limit; nothing queued.
    out = run_fails(alice, "send", bob.name, "x" * 70_000, expect="Message too long")
    assert b"65,536 bytes" in out and b"Nothing was sent" in out
    # Just under the early check (the text alone fits), over it once encrypted: the
    # ratchet steps are undone, and the next message goes out normally.
    out = run_fails(alice, "send", bob.name, "y" * 48_800, expect="Message too long")
    assert b"65,536 bytes" in out
    assert b"The outbox is empty" in alice.run("outbox")
    alice.run("send", bob.name, "a small one")
    assert b"a small one" in bob.run("inbox")

    # A message queued while offline, and one queued by an older client over the limit.
    store_dir = next(alice.home.glob(f"*/{alice.name}"))

    async def queue_offline() -> None:
        async with Client(system.lb, data_dir=store_dir, passphrase=alice.passphrase) as c:
            await c.send(bob.name, "waiting in the outbox", wait=None)
            async with c.store.transaction() as tx:
                tx.put("max_frame_bytes", 10**7)  # as if there were no limit
            await c.send(bob.name, "z" * 60_000, wait=None)
            async with c.store.transaction() as tx:
                tx.put("max_frame_bytes", 65_536)  # what the server said at its last ready

    asyncio.run(queue_offline())
    out = alice.run("outbox").decode()
    assert "waiting in the outbox" in out and "(too large)" in out
    ids = re.findall(r"\b([0-9a-f]{12})\b", out)
    assert len(ids) == 2, out
    out = alice.run("outbox", "drop", ids[0][:8]).decode()
    assert "will not be sent" in out
    run_fails(alice, "outbox", "drop", "ffffffffffff", expect="No message")
    # The oversized one is removed (said once) at the next connect, not resent for ever.
    out = alice.run("inbox")
    assert b"over the server's limit" in out
    assert b"The outbox is empty" in alice.run("outbox")
    assert b"over the server's limit" not in alice.run("inbox")
    assert b"waiting in the outbox" not in bob.run("inbox", "--all")


def test_cli_chat_commands_are_not_sent(users: tuple[User, User]) -> None:
    alice, bob = users
    signup(alice)
    signup(bob)
    chat = open_chat(alice, bob)
    chat.sendline("/help")
    chat.expect("/safety")
    chat.expect(f"{alice.name}>")
    chat.sendline("/nope")
    chat.expect("Unknown command /nope")
    chat.sendline("   ")
    chat.expect("Empty messages are not sent")
    chat.sendline("//slash at the start")
    chat.expect(f"{alice.name}>")
    chat.sendline("/quit")
    chat.expect(pexpect.EOF)
    out = bob.run("inbox")
    assert b": /slash at the start" in out
    assert b"/help" not in out and b"/nope" not in out


def test_cli_signup_says_which_field_and_why(users: tuple[User, User]) -> None:
    alice, _ = users
    child = alice.spawn("signup")
    child.expect("Username")
    child.sendline(alice.name)
    child.expect("E-mail")
    child.sendline("not-an-address")
    child.expect("Password: ")
    child.sendline("short")
    child.expect(r"The account password must have at least 10 characters \(this one has 5\)")
    child.expect("Password: ")
    child.sendline(PASSWORD)
    child.expect("Repeat for confirmation: ")
    child.sendline(PASSWORD)
    child.expect("Local passphrase: ")
    child.sendline("abc")
    child.expect(r"The local passphrase must have at least 8 characters \(this one has 3\)")
    child.expect("Local passphrase: ")
    child.sendline(alice.passphrase)
    child.expect("Repeat for confirmation: ")
    child.sendline(alice.passphrase)
    child.expect("e-mail address: not an e-mail address")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 1
    assert not list(alice.home.glob("*/*/store.db"))

    signup(alice)
    child = alice.spawn("signup", "--username", alice.name)
    child.expect("already exists on this machine")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 1
    # A script's password is checked before anything is created.
    env = {**alice.env, "PARLEY_PASSWORD": "2short", "PARLEY_PASSPHRASE": alice.passphrase}
    done = cli_process(env, "signup", "--username", "x" + alice.name, "--email", "x@example.test")
    assert done.returncode == 1 and "at least 10 characters" in done.stderr
