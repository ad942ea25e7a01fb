"""The operations tests share one Prometheus on the test system and one flow of traffic.

``prometheus`` starts the Debian Prometheus binary (scripts/stack.py builds its
command and configuration, as for ``make run``) scraping every process of the
``system`` fixture once a second, with deploy/prometheus/alerts.yml loaded.
``ops_flow`` then drives what an operator wants to see and what must never
reach a log: sign-ups, the admin console's page, a wrong password, 2FA codes
by e-mail, a refresh, a second device linked, messages between users (in real
time to every device, and to an offline user), a socket with a bad token. It
returns every secret it used.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from parley import Client
from parley.client import Message
from parley.store import KdfParams

from scripts.stack import prometheus_config
from tests.auth.helpers import code_in
from tests.support.stack import System, wait_until
from tests.support.wsclient import WsClient

INTERVAL = "1s"


class Prometheus:
    """Prometheus's HTTP API (the same one Grafana queries)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.started = time.time()

    def api(self, path: str, **params: Any) -> Any:
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as resp:
                return json.load(resp)
        except urllib.error.HTTPError as exc:  # 400 bad_data, 422 execution: the body says why
            return json.load(exc)

    def query(self, expr: str) -> Any:
        return self.api("query", query=expr)

    def query_range(self, expr: str, start: float, end: float, step: float) -> Any:
        return self.api("query_range", query=expr, start=start, end=end, step=step)

    def series_count(self, expr: str) -> int:
        answer = self.query(expr)
        return len(answer["data"]["result"]) if answer.get("status") == "success" else 0


@pytest.fixture(scope="session")
def prometheus(system: System) -> Iterator[Prometheus]:
    """Prometheus on the running test system (started once, stopped at the end)."""
    import os

    os.environ["PARLEY_PROMETHEUS_INTERVAL"] = INTERVAL
    try:
        system.procs.start("prometheus")
    finally:
        del os.environ["PARLEY_PROMETHEUS_INTERVAL"]
    prom = Prometheus(system.cfg.url("prometheus"))

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    wait_until(ready, timeout=30, interval=0.2)
    # Every target scraped at least once, and up.
    targets = len(re.findall(r"- targets:", prometheus_config(system.cfg)))
    wait_until(lambda: prom.series_count("up == 1") >= targets, timeout=30, interval=0.2)
    yield prom
    system.procs.kill("prometheus", 15)


@dataclass
class Flow:
    """What the flow did, and every secret it used (none may reach a log)."""

    started: float
    user_ids: list[str] = field(default_factory=list)
    passwords: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    codes: list[str] = field(default_factory=list)
    plaintexts: list[str] = field(default_factory=list)


async def _http(
    http: aiohttp.ClientSession, method: str, url: str, body: Any = None, token: str | None = None
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.request(method, url, json=body, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


def _mails(maildir: Path, address: str) -> list[str]:
    safe = re.sub(r"[^A-Za-z0-9@._-]", "_", address)
    return [f.read_text(errors="replace") for f in sorted(maildir.glob(f"*-{safe}.eml"))]


async def _mail_to(maildir: Path, address: str, after: int) -> list[str]:
    """Every mail to ``address``, once more than ``after`` arrived."""
    deadline = time.monotonic() + 15
    while len(mails := _mails(maildir, address)) <= after:
        assert time.monotonic() < deadline, f"no mail to {address}"
        await asyncio.sleep(0.05)
    return mails


async def _second_factor_by_email(system: System, flow: Flow) -> None:
    """Sign-up, e-mail 2FA on, a login with a wrong code then the right one, a refresh."""
    lb, maildir = system.lb, system.stack.maildir
    username = f"ops{secrets.token_hex(4)}"
    email = f"{username}@example.test"
    password = "secret pw " + secrets.token_hex(8)
    flow.passwords.append(password)
    async with aiohttp.ClientSession() as http:
        status, body = await _http(
            http, "POST", f"{lb}/auth/v1/signup",
            {"username": username, "email": email, "password": password},
        )  # fmt: skip
        assert status == 201, body
        flow.user_ids.append(body["user"]["user_id"])
        token = body["access_token"]
        flow.tokens += [token, body["refresh_token"]]
        status, _ = await _http(
            http, "POST", f"{lb}/auth/v1/2fa/email/setup", {"password": password}, token
        )
        assert status == 202
        setup_code = code_in((await _mail_to(maildir, email, 0))[-1].split("\n\n", 1)[-1])
        flow.codes.append(setup_code)
        status, body = await _http(
            http, "POST", f"{lb}/auth/v1/2fa/email/confirm", {"code": setup_code}, token
        )
        assert status == 200, body
        flow.codes += body["recovery_codes"]
        # Login: the code goes out by e-mail; a wrong one first, then the right one.
        status, challenge = await _http(
            http, "POST", f"{lb}/auth/v1/login", {"username": username, "password": password}
        )
        assert status == 200 and challenge["email_code_sent"], challenge
        code = code_in((await _mail_to(maildir, email, 1))[-1].split("\n\n", 1)[-1])
        flow.codes.append(code)
        wrong = "000000" if code != "000000" else "111111"
        step = {"challenge_id": challenge["challenge_id"], "method": "email"}
        status, body = await _http(http, "POST", f"{lb}/auth/v1/login/2fa", {**step, "code": wrong})
        assert status == 401 and body["error"]["code"] == "invalid_code", body
        status, body = await _http(http, "POST", f"{lb}/auth/v1/login/2fa", {**step, "code": code})
        assert status == 200, body
        flow.tokens += [body["access_token"], body["refresh_token"]]
        status, fresh = await _http(
            http, "POST", f"{lb}/auth/v1/token/refresh", {"refresh_token": body["refresh_token"]}
        )
        assert status == 200, fresh
        flow.tokens += [fresh["access_token"], fresh["refresh_token"]]
        flow.tokens.append(challenge["challenge_id"])


@pytest.fixture(scope="session")
async def ops_flow(
    system: System, prometheus: Prometheus, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Flow]:
    flow = Flow(started=time.time())
    tmp = tmp_path_factory.mktemp("ops")
    clients: list[Client] = []
    for name in ("alice", "bob", "carol"):
        c = Client(system.lb, data_dir=tmp / name, passphrase="p", kdf=KdfParams(n=2**10),
                   backoff_start=0.1)  # fmt: skip
        await c.open()
        clients.append(c)
        username = f"ops{name}{secrets.token_hex(3)}"
        password = "correct horse " + secrets.token_hex(8)
        flow.passwords.append(password)
        # Client.signup, keeping the tokens: the account with this install as its device.
        device_id = await c.keys.device_id()
        result = await c.account.signup(username, password, f"{username}@example.test", device_id)
        await c.keys.setup()
        flow.user_ids.append(result["user"]["user_id"])
        flow.tokens += [result["access_token"], result["refresh_token"]]
    alice, bob, carol = clients

    def secret() -> str:
        text = f"ops-plain-{secrets.token_hex(10)} meet at {secrets.token_hex(4)}"
        flow.plaintexts.append(text)
        return text

    try:
        assert alice.username and bob.username and carol.username
        async with aiohttp.ClientSession() as http:
            # An operator opens the admin console (the web app server's routes).
            for path in ("/admin/", "/admin/config.json"):
                async with http.get(f"{system.lb}{path}") as resp:
                    assert resp.status == 200, path
            # A wrong password: a login failure.
            status, body = await _http(
                http, "POST", f"{system.lb}/auth/v1/login",
                {"username": alice.username, "password": "wrong " + flow.passwords[0]},
            )  # fmt: skip
            assert status == 401 and body["error"]["code"] == "invalid_credentials", body
            flow.passwords.append("wrong " + flow.passwords[0])
        await _second_factor_by_email(system, flow)
        # Bob links a second device: every message to or from bob has two device copies.
        bob2 = Client(system.lb, data_dir=tmp / "bob2", passphrase="p", kdf=KdfParams(n=2**10),
                      backoff_start=0.1)  # fmt: skip
        await bob2.open()
        clients.append(bob2)
        link_code = await bob2.link_device(bob.username, flow.passwords[1], name="bob's laptop")
        linked = asyncio.create_task(bob2.wait_linked(60))
        await bob.approve_device(link_code)
        await linked
        for c in (alice, bob, bob2):
            await c.connect()
        for _ in range(4):  # real time, both ways: accepted, stored, pushed, delivered
            await alice.send(bob.username, secret())
            assert isinstance(await bob.next_event(Message), Message)
            assert isinstance(await bob2.next_event(Message), Message)
            await bob.send(alice.username, secret())
            assert isinstance(await alice.next_event(Message), Message)
        for _ in range(3):  # carol is offline: these wait in her inbox
            await alice.send(carol.username, secret(), wait="stored")
        for _ in range(20):  # and a burst more
            await bob.send(carol.username, secret())
        # A public room: created, joined, a message mentioning alice, her notification.
        async with aiohttp.ClientSession() as http:
            lb, alice_token, bob_token = system.lb, flow.tokens[0], flow.tokens[2]
            status, room = await _http(
                http, "POST", f"{lb}/rooms/v1/rooms", {"name": "ops room", "kind": "public"},
                alice_token,
            )  # fmt: skip
            assert status == 201, room
            rooms = f"{lb}/rooms/v1/rooms/{room['room_id']}"
            status, body = await _http(http, "POST", f"{rooms}/join", None, bob_token)
            assert status == 200, body
            status, body = await _http(
                http, "POST", f"{rooms}/messages",
                {"client_id": "ops-1", "text": f"hello @{alice.username}"}, bob_token,
            )  # fmt: skip
            assert status == 201 and body["mentions"] == [flow.user_ids[0]], body
            status, body = await _http(http, "GET", f"{lb}/rooms/v1/notifications", None,
                                       alice_token)  # fmt: skip
            assert status == 200 and body["unread"] == 1, body
        # A socket with a bad token: an error frame and a close code.
        ws = await WsClient.connect(system.ws_url)
        await ws.send({"op": "auth", "id": "a1", "token": "not-a-token"})
        assert (await ws.expect("error"))["code"] == "invalid_token"
        await ws.wait_closed()
        await ws.close()
        # The tokens each install holds now (a client refreshes on its own).
        for c in clients:
            account = c.account.require()
            flow.tokens += [account["access_token"], account["refresh_token"]]
    finally:
        for c in clients:
            await c.close()
    yield flow
