"""The account's settings in the browser, end to end through HAProxy (web/chat/README.md,
"Tests"; docs/auth.md, docs/devices.md).

tests/web/chat_settings.mjs drives Debian's Chromium (playwright-core); the Python side
answers its ``PY {json}`` lines (tests/web/test_chat_rooms.py's dialogue) as P, the
account's first device (SDK), and as plain HTTP log-ins:

1. the page links itself to P's account (P approves the code);
2. Two-step verification: an authenticator app set up from the page (a wrong password
   and a wrong first code refused with their codes, nothing changed), the QR code, key
   and otpauth:// link shown, a first code computed in the script from the key the page
   shows; the ten recovery codes shown once, "Done" only once they are said to be saved;
   the server says TOTP is on; codes by e-mail turned on with the mailed code (no new
   recovery codes: the first ones stay) and off again;
3. log out and in again: the log-in asks for the authenticator's code;
4. Sessions: a plain HTTP log-in (answered with one of the recovery codes the page
   showed) is listed, with this browser's session first; the page signs it out and its
   refresh token is refused (``token_revoked``);
5. Devices: the page renames itself and P's device; P's SDK reads both new names from
   the signed list;
6. "Sign out everywhere else": P's SDK session ends (its next call is refused);
7. "Remove this browser": the page is signed out with what happened to its history;
   the account's list (read with another recovery code's log-in) no longer names it; the
   browser's store has no account key or device keys left; a log-in there says it was
   removed and offers to link it again.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import secrets
from pathlib import Path
from typing import Any

import aiohttp
from parley import Client
from parley.errors import ParleyError
from parley.keys import PendingDevice

from tests.support.stack import System
from tests.web.test_chat_rooms import BROWSER, PASSWORD, WEB, PythonSide, run_script, sdk_client

AGENT = "parley-settings-test/1.0"


def setup_codes(maildir: Path, address: str) -> list[str]:
    """The e-mail sign-in set-up codes mailed to ``address`` (the stack's mail sink)."""
    safe = re.sub(r"[^A-Za-z0-9@._-]", "_", address)
    out = []
    for path in sorted(maildir.glob(f"*-{safe}.eml")):
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        part = msg.get_body(preferencelist=("plain",))
        found = re.search(
            r"sign-in codes by e-mail, enter (\d{6})", str(part and part.get_content())
        )
        if found:
            out.append(found.group(1))
    return out


class SettingsSide(PythonSide):
    """P (the account the browser joins, its first device) and plain HTTP log-ins."""

    def __init__(self, p: Client, system: System) -> None:
        super().__init__(p, system)
        self.p = p
        self.refresh: dict[str, str] = {}  # session id -> its refresh token
        self.sessions_after_removal: list[dict[str, Any]] = []

    async def login(self, http: aiohttp.ClientSession, recovery: str) -> dict[str, Any]:
        """A log-in with the password and a recovery code: the tokens."""
        body = {"username": self.p.username, "password": PASSWORD}
        async with http.post("/auth/v1/login", json=body) as resp:
            challenge = await resp.json()
        assert challenge.get("second_factor_required"), challenge
        assert "totp" in challenge["methods"] and "recovery" in challenge["methods"], challenge
        answer = {"challenge_id": challenge["challenge_id"], "method": "recovery", "code": recovery}
        async with http.post("/auth/v1/login/2fa", json=answer) as resp:
            tokens = await resp.json()
            assert resp.status == 200, tokens
        return dict(tokens)

    async def act(self, req: dict[str, Any]) -> dict[str, Any]:
        do, p = req["do"], self.p
        if do == "approve":  # P approves the browser's link code; what P was shown
            shown: list[PendingDevice] = []

            async def confirm(pending: PendingDevice) -> bool:
                shown.append(pending)
                return True

            await p.approve_device(req["code"], confirm)
            return {"device_id": shown[0].device_id, "p_device": p.device_id}
        if do == "two_factor":  # what the server says of the account's second factors
            return dict((await p.me())["two_factor"])
        if do == "setup_code":  # the code the e-mail set-up mailed
            address = f"{p.username}@example.test"
            for _ in range(100):
                codes = await asyncio.to_thread(setup_codes, self.system.stack.maildir, address)
                if codes:
                    return {"code": codes[-1]}
                await asyncio.sleep(0.1)
            raise AssertionError(f"no set-up code mailed to {address}")
        async with aiohttp.ClientSession(
            base_url=self.system.lb, headers={"User-Agent": AGENT}
        ) as http:
            if do == "http_login":  # a plain HTTP log-in with a recovery code: its session
                tokens = await self.login(http, req["recovery"])
                self.refresh[tokens["session_id"]] = tokens["refresh_token"]
                return {"session_id": tokens["session_id"]}
            if do == "refresh":  # that session's refresh token: "ok" or the error's code
                body = {"refresh_token": self.refresh[req["session_id"]]}
                async with http.post("/auth/v1/token/refresh", json=body) as resp:
                    answer = await resp.json()
                if resp.status == 200:
                    self.refresh[req["session_id"]] = answer["refresh_token"]
                    return {"code": "ok"}
                return {"code": answer["error"]["code"]}
            if do == "listed":  # the account's devices, read with a new log-in's token
                tokens = await self.login(http, req["recovery"])
                auth = {"Authorization": f"Bearer {tokens['access_token']}"}
                async with http.get(f"/keys/v1/users/{p.user_id}/devices", headers=auth) as resp:
                    listed = await resp.json()
                async with http.get("/auth/v1/sessions", headers=auth) as resp:
                    self.sessions_after_removal = (await resp.json())["sessions"]
                return {"devices": [d["device_id"] for d in listed["device_list"]["devices"]]}
        if do == "p_devices":  # P's SDK reads the list again (verified with the account key)
            return {"devices": {str(d["device_id"]): d["name"] for d in await p.devices()}}
        if do == "p_signed_out":  # P's SDK session was ended elsewhere: its next call fails
            try:
                await p.devices()
            except ParleyError as exc:
                return {"error": str(exc)}
            return {"error": None}
        raise AssertionError(f"unknown action {req!r}")


@BROWSER
async def test_browser_account_settings(system: System, tmp_path: Path) -> None:
    assert (WEB / "chat" / "dist" / "index.html").exists(), "make install builds web/chat"
    tag = secrets.token_hex(4)
    shots = tmp_path / "shots"
    shots.mkdir()
    p = await sdk_client(tmp_path / "p", system.lb)
    side = SettingsSide(p, system)
    try:
        await p.signup(f"pys{tag}", PASSWORD, f"pys{tag}@example.test")
        env = {
            "LB": system.lb,
            "SHOTS": str(shots),
            "P_USER": f"pys{tag}",
            "P_PASSWORD": PASSWORD,
            "AGENT": AGENT,
            "TAG": tag,
        }
        output, _ = await run_script("chat_settings.mjs", env, side, timeout=110)
    finally:
        await p.close()
    assert "chat settings: ok" in output, output[-3000:]
    print("\n".join(ln for ln in output.splitlines() if ln.startswith("step ")))  # with -s
    # What the auth service lists once the browser removed itself (docs/auth.md): printed
    # with -s; its session is not ended by the removal (its tokens are refused everywhere).
    print(
        "sessions after the removal:",
        [(s["device"], s["current"]) for s in side.sessions_after_removal],
    )
    for name in ("settings-totp", "settings-codes", "settings-sessions", "settings-devices"):
        assert (shots / f"{name}.png").stat().st_size > 5000, name
