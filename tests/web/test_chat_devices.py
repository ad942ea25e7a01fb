"""Several devices per account with the browser as one of them, end to end through
HAProxy (web/chat/README.md, "Tests"; docs/devices.md).

tests/web/chat_devices.mjs drives Debian's Chromium (playwright-core); the Python SDK
users P and Q answer its ``PY {json}`` lines (tests/web/test_chat_rooms.py's dialogue):

1. Q writes to P while P has one device (P's Python install);
2. the page links itself as P's second device ("Link this browser to an existing
   account"): it shows a link code with its name and fingerprint; P approves the code
   with the SDK (``approve_device``), which shows the same name and fingerprint, and
   the page goes on signed in; the message Q wrote before is not in it (history starts
   at the link);
3. Q writes to P: P's Python device and the browser both read it; the browser answers
   Q: Q reads it and P's Python device gets its own copy (``SentElsewhere``, from the
   browser's device); P's Python device writes to Q and the browser shows it as P's;
4. notes to self both ways: the browser's reaches P's Python device, P's Python
   device's shows in the browser's "Note to self";
5. the other way round: a new Python install P2 asks to be linked, the browser's
   Devices view shows its name and fingerprint (as P2 shows them), approves it, and P2
   is linked (three devices); the browser then removes P2 from its list, and P's list
   says two devices.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

from parley import Client
from parley.events import Message, SentElsewhere
from parley.keys import PendingDevice, fingerprint

from tests.support.stack import System
from tests.web.test_chat_rooms import BROWSER, PASSWORD, WEB, PythonSide, run_script, sdk_client


class DevicesSide(PythonSide):
    """P (the account the browser joins), Q (its contact), P2 (a later Python device)."""

    def __init__(self, p: Client, q: Client, system: System, tmp: Path) -> None:
        super().__init__(p, system, tmp)
        self.p, self.q = p, q
        self.p2: Client | None = None
        self.p2_linked: asyncio.Task[None] | None = None

    def user(self, who: str) -> Client:
        return {"p": self.p, "q": self.q}[who]

    async def act(self, req: dict[str, Any]) -> dict[str, Any]:
        do = req["do"]
        if do == "approve":  # P approves the browser's code; what P was shown
            shown: list[PendingDevice] = []

            async def confirm(pending: PendingDevice) -> bool:
                shown.append(pending)
                return True

            await self.p.approve_device(req["code"], confirm)
            [pending] = shown
            return {"name": pending.name, "fingerprint": pending.fingerprint,
                    "device_id": pending.device_id}  # fmt: skip
        if do == "send":  # `from` sends `text` to `to` (a username)
            await self.user(req["from"]).send(req["to"], req["text"])
            return {}
        if do == "expect":  # `who` reads `text` from `sender`
            client = self.user(req["who"])
            while True:
                event = await client.next_event(Message, timeout=30)
                assert isinstance(event, Message)
                if event.text == req["text"]:
                    return {"from": event.username}
        if do == "expect_elsewhere":  # P's own copy of what another of its devices sent
            while True:
                event = await self.p.next_event(SentElsewhere, timeout=30)
                assert isinstance(event, SentElsewhere)
                if event.text == req["text"]:
                    peer, _ = await self.p.resolve(req["peer"])
                    assert event.peer_id == peer, (event.peer_id, peer)
                    return {"device": event.device}
        if do == "link_p2":  # a new Python install asks to be linked to P: its code
            assert self.tmp is not None and self.p.username is not None
            p2 = self.p2 = await sdk_client(self.tmp / "p2", self.system.lb)
            code = await p2.link_device(self.p.username, PASSWORD, name=req["name"])
            self.p2_linked = asyncio.create_task(p2.wait_linked(60))
            device = p2.keys.device()
            assert device is not None
            return {"code": code, "fingerprint": fingerprint(device.identity.signing_key),
                    "device_id": p2.device_id}  # fmt: skip
        if do == "p2_linked":  # P2 opened the approval; the devices it lists
            assert self.p2 is not None and self.p2_linked is not None
            await self.p2_linked
            return {"devices": sorted(d["device_id"] for d in await self.p2.devices())}
        if do == "devices":  # P's devices (the verified list)
            return {"devices": sorted(d["device_id"] for d in await self.p.devices())}
        raise AssertionError(f"unknown action {req!r}")


@BROWSER
async def test_browser_as_a_second_device(system: System, tmp_path: Path) -> None:
    assert (WEB / "chat" / "dist" / "index.html").exists(), "make install builds web/chat"
    tag = secrets.token_hex(4)
    shots = tmp_path / "shots"
    shots.mkdir()
    p = await sdk_client(tmp_path / "p", system.lb)
    q = await sdk_client(tmp_path / "q", system.lb)
    side = DevicesSide(p, q, system, tmp_path)
    try:
        await p.signup(f"pyp{tag}", PASSWORD, f"pyp{tag}@example.test")
        await q.signup(f"pyq{tag}", PASSWORD, f"pyq{tag}@example.test")
        await asyncio.gather(p.connect(), q.connect())
        env = {
            "LB": system.lb,
            "SHOTS": str(shots),
            "P_USER": f"pyp{tag}",
            "Q_USER": f"pyq{tag}",
            "P_PASSWORD": PASSWORD,
            "TAG": tag,
        }
        output, _ = await run_script("chat_devices.mjs", env, side, timeout=120)
    finally:
        if side.p2_linked is not None and not side.p2_linked.done():
            side.p2_linked.cancel()
        for client in (side.p2, q, p):
            if client is not None:
                await client.close()
    assert "chat devices: ok" in output, output[-3000:]
    print("\n".join(ln for ln in output.splitlines() if ln.startswith("step ")))  # with -s
    for name in ("chat-link", "chat-devices"):
        assert (shots / f"{name}.png").stat().st_size > 5000, name
