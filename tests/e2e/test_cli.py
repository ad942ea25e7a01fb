"""The `parley` CLI driven as a user drives it: real processes under a pty (pexpect),
through HAProxy, against every service.

alice and bob sign up; alice writes to bob while he is offline; bob logs in
and reads it; they chat in real time (two interactive `parley chat` sessions
at once); bob re-installs (wipes his local state, logs in again: a new
identity key) and alice, still in her chat, is warned with the new safety
number, which is the one bob's client shows, and confirms before her first
message to the new key.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from tests.support.stack import System

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 60
PASSWORD = "correct horse " + "battery"
SAFETY = re.compile(rb"New safety number: ((?:\d{5} ){11}\d{5})")


class User:
    def __init__(self, system: System, home: Path, name: str) -> None:
        self.name = name
        self.home = home
        self.env = {
            **os.environ,
            "PARLEY_SERVER": system.lb,
            "PARLEY_DATA_HOME": str(home),
            "NO_COLOR": "1",
            "TERM": "xterm",
            "COLUMNS": "200",
            "PROMPT_TOOLKIT_NO_CPR": "1",
            "PYTHONPATH": os.pathsep.join(
                [str(ROOT), str(ROOT / "client"), str(ROOT / "contract")]
            ),
        }
        self.env.pop("PARLEY_PASSPHRASE", None)
        self.passphrase = f"local {secrets.token_hex(4)} passphrase"
        self.children: list[pexpect.spawn] = []

    def spawn(self, *args: str) -> pexpect.spawn:
        child = pexpect.spawn(
            sys.executable,
            ["-m", "parley", *args],
            env=self.env,
            timeout=TIMEOUT,
            dimensions=(50, 200),
        )
        child.logfile_read = _Log(self.name)
        self.children.append(child)
        return child

    def run(self, *args: str, passphrase: bool = True) -> bytes:
        """A one-shot command: answer the passphrase prompt, return its output."""
        child = self.spawn(*args)
        if passphrase:
            child.expect("Local passphrase: ")
            child.sendline(self.passphrase)
        child.expect(pexpect.EOF)
        child.close()
        out = child.before or b""
        assert child.exitstatus == 0, out.decode(errors="replace")
        return out

    def close(self) -> None:
        for child in self.children:
            if child.isalive():
                child.terminate(force=True)


class _Log:
    """Keeps what a child printed in the test's captured output (shown on failure)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def write(self, data: bytes) -> None:
        sys.stdout.write(data.decode(errors="replace").replace("\n", f"\n[{self.name}] "))

    def flush(self) -> None:
        sys.stdout.flush()


@pytest.fixture
def users(system: System, tmp_path: Path) -> Iterator[tuple[User, User]]:
    tag = secrets.token_hex(3)
    alice = User(system, tmp_path / "alice", f"alice{tag}")
    bob = User(system, tmp_path / "bob", f"bob{tag}")
    yield alice, bob
    alice.close()
    bob.close()


def signup(user: User) -> None:
    child = user.spawn("signup")
    child.expect("Username")
    child.sendline(user.name)
    child.expect("E-mail")
    child.sendline(f"{user.name}@example.test")
    child.expect("Password: ")
    child.sendline(PASSWORD)
    child.expect("Repeat for confirmation: ")
    child.sendline(PASSWORD)
    child.expect("Local passphrase: ")
    child.sendline(user.passphrase)
    child.expect("Repeat for confirmation: ")
    child.sendline(user.passphrase)
    child.expect(f"Signed up as {user.name}")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def login(user: User, *, new_store: bool, new_identity: bool = False) -> None:
    child = user.spawn("login", user.name, *(["--new-identity"] if new_identity else []))
    child.expect("Password: ")
    child.sendline(PASSWORD)
    child.expect("Local passphrase: ")
    child.sendline(user.passphrase)
    if new_store:
        child.expect("Repeat for confirmation: ")
        child.sendline(user.passphrase)
    child.expect(f"Logged in as {user.name}")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def open_chat(user: User, peer: User) -> pexpect.spawn:
    chat = user.spawn("chat", peer.name)
    chat.expect("Local passphrase: ")
    chat.sendline(user.passphrase)
    chat.expect(f"Chatting with {peer.name}")
    chat.expect(f"{user.name}>")
    return chat


def say(chat: pexpect.spawn, text: str) -> None:
    chat.sendline(text)


def test_cli_offline_message_real_time_chat_and_key_change(users: tuple[User, User]) -> None:
    alice, bob = users
    signup(alice)
    signup(bob)
    bob.run("logout")

    # Alice writes while bob is offline (logged out, no client running).
    offline = f"offline note {secrets.token_hex(4)}"
    out = alice.run("send", bob.name, offline)
    assert f"for {bob.name}".encode() in out

    # Bob logs in and reads it.
    login(bob, new_store=False)
    out = bob.run("inbox")
    assert offline.encode() in out and f"{alice.name} (1 unread)".encode() in out

    # Real time: both in `parley chat`; lines typed by one appear at the other.
    chat_a = open_chat(alice, bob)
    chat_b = open_chat(bob, alice)
    for i in range(2):
        ping = f"ping {i} {secrets.token_hex(3)}"
        say(chat_a, ping)
        chat_b.expect(f"{alice.name}: {ping}")
        pong = f"pong {i} {secrets.token_hex(3)}"
        say(chat_b, pong)
        chat_a.expect(f"{bob.name}: {pong}")

    # Safety numbers agree before the change.
    say(chat_b, "/safety")
    chat_b.expect(rb"Safety number with \S+: ((?:\d{5} ){11}\d{5})")
    before = chat_b.match.group(1)
    say(chat_b, "/quit")
    chat_b.expect(pexpect.EOF)

    # Bob re-installs: his local state is gone, and with it the account key that
    # could link a device (docs/devices.md); he starts a new identity on purpose.
    shutil.rmtree(bob.home)
    bob.passphrase = f"new {secrets.token_hex(4)} passphrase"
    login(bob, new_store=True, new_identity=True)

    # Alice, still chatting, is warned at once with the new safety number.
    chat_a.expect(f"{bob.name}'s safety number changed")
    chat_a.expect(SAFETY)
    warned = chat_a.match.group(1)
    assert warned != before
    out = bob.run("safety-number", alice.name)
    assert warned in out, "bob's client shows the number alice was warned with"

    # Alice goes on (a new session with bob's new identity) once she confirms the
    # first send to the new key (#20); bob reads it.
    after = f"after the change {secrets.token_hex(4)}"
    say(chat_a, after)
    chat_a.expect(r"Send to \S+'s new key anyway\? \[y/N\]")
    chat_a.sendline("y")
    chat_a.expect(f"{alice.name}>")
    out = bob.run("inbox")
    assert after.encode() in out
    say(chat_a, "/quit")
    chat_a.expect(pexpect.EOF)

    # Alice's stored conversation has it all, the warning included.
    out = alice.run("history", bob.name)
    assert offline.encode() in out and after.encode() in out
    assert f"{bob.name}'s safety number changed".encode() in out


def test_cli_says_clearly_what_went_wrong(users: tuple[User, User], system: System) -> None:
    alice, _ = users
    signup(alice)
    # The account's own views.
    out = alice.run("whoami")
    assert alice.name.encode() in out
    out = alice.run("devices")
    assert b"yes" in out  # device 1 is this one
    out = alice.run("sessions")
    assert b"127.0.0.1" in out
    # Unknown recipient.
    child = alice.spawn("send", "nobody-" + secrets.token_hex(3), "hi")
    child.expect("Local passphrase: ")
    child.sendline(alice.passphrase)
    child.expect("No user named")
    child.expect(pexpect.EOF)
    # Wrong password (on a fresh data directory: nothing is left behind).
    other = User(system, alice.home.parent / "other", alice.name)
    child = other.spawn("login", alice.name)
    child.expect("Password: ")
    child.sendline("not the password at all")
    child.expect("Local passphrase: ")
    child.sendline(other.passphrase)
    child.expect("Repeat for confirmation: ")
    child.sendline(other.passphrase)
    child.expect("Wrong username or password")
    child.expect(pexpect.EOF)
    assert not list((other.home).glob("*/*/store.db"))
    # Wrong local passphrase.
    child = alice.spawn("inbox")
    child.expect("Local passphrase: ")
    child.sendline("not my passphrase")
    child.expect("wrong passphrase for the local store")
    child.expect(pexpect.EOF)
    # Server down.
    child = alice.spawn("--server", "http://127.0.0.1:9", "login", alice.name)
    child.expect("Password: ")
    child.sendline(PASSWORD)
    child.expect("Local passphrase: ")
    child.sendline(alice.passphrase)
    child.expect("Repeat for confirmation: ")
    child.sendline(alice.passphrase)
    child.expect("Cannot reach the Parley server")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 1


def test_cli_login_asks_for_the_second_factor(users: tuple[User, User], system: System) -> None:
    import json
    import time
    import urllib.request

    import pyotp

    alice, _ = users
    signup(alice)

    def call(path: str, body: dict[str, str], token: str | None = None) -> dict[str, object]:
        req = urllib.request.Request(
            system.lb + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"}
            | ({"Authorization": f"Bearer {token}"} if token else {}),
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            result: dict[str, object] = json.load(resp)
            return result

    token = str(
        call("/auth/v1/login", {"username": alice.name, "password": PASSWORD})["access_token"]
    )
    totp = pyotp.TOTP(str(call("/auth/v1/2fa/totp/setup", {"password": PASSWORD}, token)["secret"]))
    call("/auth/v1/2fa/totp/confirm", {"code": totp.now()}, token)

    child = alice.spawn("login", alice.name)
    child.expect("Password: ")
    child.sendline(PASSWORD)
    child.expect("Local passphrase: ")
    child.sendline(alice.passphrase)
    child.expect(r"Second factor \(totp/recovery\)")
    child.sendline("totp")
    child.expect("Code from your authenticator app")
    child.sendline("000000" if totp.now() != "000000" else "111111")
    child.expect("Wrong code")
    child.expect("Second factor")
    child.sendline("")  # the default: totp
    child.expect("Code from your authenticator app")
    child.sendline(totp.at(time.time() + 30))  # this step's code was used to confirm
    child.expect(f"Logged in as {alice.name}")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
