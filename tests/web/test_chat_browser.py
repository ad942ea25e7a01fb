"""The chat client end to end: a browser user and Python SDK users, through HAProxy.

tests/web/chat_browser.mjs drives Debian's Chromium (playwright-core) through the
web client served at ``/``; whenever the story needs the Python side, it prints a
``PY {json}`` line and waits for this test's ``OK {json}`` (or ``ERR text``) on its
stdin. The story (docs: web/chat/README.md, "Tests"):

1. the browser user signs up in the page; Python user P writes first (P starts
   PQXDH), the browser answers; the browser adds Python user Q by username and
   writes first (the browser starts PQXDH), Q answers;
2. the browser logs out, P writes, the browser logs in again (the passphrase
   opens its IndexedDB vault) and the message is synced, then acknowledged
   (P gets ``delivered``); the browser's own message shows ``delivered``;
3. both sides show the same safety number and mark each other verified;
4. P reinstalls (a new account identity key): the browser warns, sending is
   blocked until the user compares the new number (it matches P's) and confirms;
   then a message reaches P's new install;
5. Q links a second device: the browser's next message is refused with
   ``devices_changed``, encrypted again for both devices, and both get it;
6. a second tab of the account is refused; a password reset by e-mail (which
   turns two-factor off, docs/auth.md) and a log-in with the new password; TOTP
   turned on, a log-in that asks for its code, another with a recovery code
   (the history is still there), eight days later by the page's clock: the
   week-old signed prekey is rotated and published;
7. IndexedDB, read raw, holds no plaintext: no message text, no private key, no
   token (the script opens the vault with the passphrase to know what to look
   for); and the server's stores hold no plaintext either (the scan of
   tests/e2e/test_no_plaintext.py over MongoDB, Kafka and Redis).

Screenshots land in the test's temporary directory; with
``PARLEY_UPDATE_SCREENSHOTS=1`` they replace web/images/chat-*.png (web/README.md).
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import os
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

import aiohttp
import pyotp
import pytest
from parley import Client
from parley.client import Message, Receipt
from parley.events import MessageRemoved
from parley.store import KdfParams

from scripts.stack import ROOT
from tests.e2e.test_moderation_messages import admin_token
from tests.e2e.test_no_plaintext import kafka_blobs, mongo_blobs, redis_blobs
from tests.support.aio import eventually
from tests.support.secrets import forms
from tests.support.stack import System

WEB = ROOT / "web"
DOC_SHOTS = WEB / "images"
PASSWORD = "correct horse battery staple"
SHOTS = (
    "chat-signup",
    "chat-login",
    "chat-conversation",
    "chat-safety",
    "chat-key-changed",
    "chat-phone",
)


def reset_mails(maildir: Path, address: str) -> list[str]:
    """The plain-text bodies of the mails to ``address`` in the stack's mail sink."""
    safe = re.sub(r"[^A-Za-z0-9@._-]", "_", address)
    out = []
    for path in sorted(maildir.glob(f"*-{safe}.eml")):
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        part = msg.get_body(preferencelist=("plain",))
        if part is not None and "reset token" in part.get_content():
            out.append(str(part.get_content()))
    return out


class PythonSide:
    """The SDK users the browser talks to, and the actions the script asks for."""

    def __init__(self, system: System, tmp: Path) -> None:
        self.system, self.tmp = system, tmp
        self.clients: dict[str, Client] = {}
        self.texts: list[str] = []  # every plaintext of the conversation, for the scans
        self.totp = pyotp.TOTP(pyotp.random_base32())
        self.recovery: list[str] = []

    async def make(self, who: str, username: str | None = None, *, signup: bool = True) -> Client:
        client = Client(
            self.system.lb,
            data_dir=self.tmp / f"{who}-{secrets.token_hex(3)}",
            passphrase="test passphrase",
            kdf=KdfParams(n=2**10, r=8, p=1),
            backoff_start=0.1,
            backoff_max=1.0,
        )
        await client.open()
        if signup:
            name = username or f"py{who}{secrets.token_hex(4)}"
            await client.signup(name, PASSWORD, f"{name}@example.test")
            await client.connect()
        self.clients[who] = client
        return client

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()

    async def act(self, req: dict[str, Any]) -> dict[str, Any]:
        client = self.clients[req.get("who", "p")]
        do = req["do"]
        if do == "send":
            if req.get("track", True):  # a reported text is, by design, kept for the admins
                self.texts.append(req["text"])
            cid = await client.send(req["to"], req["text"], wait="stored")
            return {"client_id": cid}
        if do == "send_many":  # a backlog, each accepted before the next (not scanned)
            for i in range(req["n"]):
                await client.send(req["to"], f"{req['prefix']} {i}", wait="accepted")
            return {}
        if do == "unsend":
            return await client.unsend(req["client_id"])
        if do == "expect_removed":  # a tombstone this device verified, for that message
            while True:
                removed = await client.next_event(MessageRemoved, timeout=30)
                assert isinstance(removed, MessageRemoved)
                if removed.server_id == req["server_id"]:
                    return {"by": removed.by, "peer": removed.peer_id}
        if do == "admin_reports":  # the open reports of messages this Python user sent
            headers = {"Authorization": f"Bearer {await admin_token(self.system)}"}
            async with aiohttp.ClientSession(headers=headers) as http:
                url = f"{self.system.lb}/delivery/v1/admin/reports?state=open&limit=100"
                async with http.get(url) as resp:
                    assert resp.status == 200, await resp.text()
                    queue = (await resp.json())["reports"]
            return {"texts": [r["text"] for r in queue if r["sender"] == client.user_id]}
        if do == "expect":
            self.texts.append(req["text"])
            while True:
                event = await client.next_event(Message, timeout=30)
                assert isinstance(event, Message)
                if event.text == req["text"]:
                    return {"from": event.username}
        if do == "expect_texts":  # the next n messages, in the order they arrived
            texts: list[str] = []
            while len(texts) < req["n"]:
                event = await client.next_event(Message, timeout=30)
                assert isinstance(event, Message)
                texts.append(event.text)
            self.texts.extend(texts)
            return {"texts": texts}
        if do == "receipt":
            while True:
                receipt = await client.next_event(Receipt, timeout=30)
                assert isinstance(receipt, Receipt)
                if receipt.client_id == req["client_id"] and receipt.status == req["status"]:
                    return {}
        if do == "safety":
            _, number = await client.safety_number(req["with"])
            return {"number": number}
        if do == "verify":
            await client.verify(req["with"], req["number"])
            return {"status": client.identity_status((await client.resolve(req["with"]))[0])}
        if do == "link_second_device":
            # Q links a second install: the browser's list of Q's devices is stale now.
            first = self.clients["q"]
            assert first.username is not None
            second = await self.make("q2", signup=False)
            code = await second.link_device(first.username, PASSWORD)
            await first.approve_device(code)
            await second.wait_linked(timeout=30)
            await second.connect()
            return {}
        if do == "enable_totp":
            async with aiohttp.ClientSession(base_url=self.system.lb) as http:
                login = {"username": req["username"], "password": req["password"]}
                async with http.post("/auth/v1/login", json=login) as resp:
                    token = (await resp.json())["access_token"]
                auth = {"Authorization": f"Bearer {token}"}
                body = {"password": req["password"]}
                async with http.post("/auth/v1/2fa/totp/setup", json=body, headers=auth) as resp:
                    self.totp = pyotp.TOTP((await resp.json())["secret"])
                body = {"code": self.totp.now()}
                async with http.post("/auth/v1/2fa/totp/confirm", json=body, headers=auth) as resp:
                    self.recovery = list((await resp.json())["recovery_codes"])
            return {}
        if do == "totp_code":
            # The confirmation used this time step's code; the next step's is accepted.
            return {"code": self.totp.at(time.time() + 30)}
        if do == "recovery_code":
            return {"code": self.recovery.pop()}
        if do == "reset_token":
            mails = await eventually(
                lambda: asyncio.to_thread(reset_mails, self.system.stack.maildir, req["email"]),
                lambda found: len(found) > 0,
                timeout=10,
            )
            token = re.search(r"reset token: (\S+)", mails[-1])
            assert token, mails[-1]
            return {"token": token.group(1)}
        if do == "browser_signed_prekey":
            user_id, _ = await client.resolve(req["user"])
            await client.access_token()
            claimed = await client.api.claim_bundles(user_id)
            return {"signed_prekey_id": claimed["bundles"][0]["signed_prekey"]["id"]}
        if do == "reinstall":
            # P wipes the install and logs in again: a new account identity key.
            username = client.username
            assert username is not None
            await client.close()
            again = await self.make("p", signup=False)
            await again.login(username, PASSWORD, new_identity=True)
            await again.connect()
            return {}
        raise AssertionError(f"unknown action {req!r}")


@pytest.mark.skipif(
    not Path("/usr/bin/chromium").exists() or shutil.which("node") is None,
    reason="needs Debian's chromium and node (scripts/install.sh installs them)",
)
async def test_browser_and_python_users_chat_end_to_end(system: System, tmp_path: Path) -> None:
    assert (WEB / "chat" / "dist" / "index.html").exists(), "make install builds web/chat"
    update = os.environ.get("PARLEY_UPDATE_SCREENSHOTS") == "1"
    shots = DOC_SHOTS if update else tmp_path / "shots"
    shots.mkdir(parents=True, exist_ok=True)
    py = PythonSide(system, tmp_path)
    p, q = await py.make("p"), await py.make("q")
    tag = secrets.token_hex(4)
    env = {
        **os.environ,
        "LB": system.lb,
        "WEB_DIR": str(WEB),
        "SHOTS": str(shots),
        "BROWSER_USER": f"web{tag}",
        "P_USER": str(p.username),
        "Q_USER": str(q.username),
        "TAG": tag,
    }
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(ROOT / "tests" / "web" / "chat_browser.mjs"),
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdin is not None and proc.stdout is not None
    log: list[str] = []
    browser_texts: list[str] = []
    try:

        async def converse() -> None:
            assert proc.stdin is not None and proc.stdout is not None
            while line := (await proc.stdout.readline()).decode():
                log.append(line.rstrip())
                if line.startswith("PY "):
                    try:
                        answer = "OK " + json.dumps(await py.act(json.loads(line[3:])))
                    except Exception as exc:  # told to the script, which fails with it
                        answer = f"ERR {type(exc).__name__}: {exc}"
                    proc.stdin.write(answer.encode() + b"\n")
                    await proc.stdin.drain()
                elif line.startswith("TEXTS "):
                    browser_texts.extend(json.loads(line[6:]))

        await asyncio.wait_for(converse(), timeout=240)
        code = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await py.close()
    output = "\n".join(log)
    assert code == 0, output[-6000:]
    assert "chat browser: ok" in output, output[-3000:]
    for name in SHOTS:
        assert (shots / f"{name}.png").stat().st_size > 5000, name

    # No plaintext at rest on the server after the browser's conversation.
    plaintexts = sorted(set(py.texts + browser_texts))
    assert len(plaintexts) == 11  # 4 from Python (one unsent), 7 from the browser (one unsent)
    blobs = list(mongo_blobs(system)) + await kafka_blobs(system) + list(redis_blobs(system))
    for where, blob in blobs:
        for text in plaintexts:
            for form in forms(text):
                assert form not in blob, f"{text!r} readable in {where} (as {form!r})"
    # Positive control: the scan reaches the browser user's data.
    browser_id = next(
        (line.split()[-1] for line in log if line.startswith("browser user id ")), None
    )
    assert browser_id
    assert any(browser_id.encode() in b for w, b in blobs if w.startswith("mongo"))
