"""Presence in the web client's member list, end to end through HAProxy
(docs/rooms.md, "Presence"; web/chat/src/app/roomsView.tsx ``Members``).

tests/web/chat_presence.mjs drives Debian's Chromium with browser user A; the Python
SDK user R (tests/web/test_chat_rooms.py's, with its ``PY``/``OK`` dialogue, its
socket connected) joins A's public room, and user S, signed up over HTTP and never
connected, joins it too; A makes S a moderator. A opens "Members": A (owner) and R
(member) show online, S (moderator) offline, each by name. R hides its presence
(``PATCH /auth/v1/me/preferences``): after "Refresh members" R shows offline (and no
name is asked of the server again). R shows it again and A changes the topic over
HTTP: the ``room_changed`` frame refreshes the open list by itself, R online. A turns
"Show when I'm online" off in the sidebar: the server's preferences say false, and
after a refresh A shows offline. Last, in a private room R accepted, the list (closed
again for that room) shows R online and A, hidden, offline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
from parley import Client

from tests.support.stack import System
from tests.support.users import signup
from tests.web.test_chat_rooms import BROWSER, PythonSide, browser_scenario


class PresenceSide(PythonSide):
    """R, plus A over HTTP (logged in with A's password) and S, who never connects."""

    def __init__(self, *args: Any, a_user: str, a_password: str) -> None:
        super().__init__(*args)
        self.a_user, self.a_password = a_user, a_password
        self.a_token: str | None = None

    async def as_a(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        lb = self.system.lb
        async with aiohttp.ClientSession() as http:
            if self.a_token is None:
                login = {"username": self.a_user, "password": self.a_password}
                async with http.post(f"{lb}/auth/v1/login", json=login) as resp:
                    assert resp.status == 200, await resp.text()
                    self.a_token = (await resp.json())["access_token"]
            headers = {"Authorization": f"Bearer {self.a_token}"}
            async with http.request(method, f"{lb}{path}", json=body, headers=headers) as resp:
                assert resp.status == 200, await resp.text()
                return dict(await resp.json())

    async def act(self, req: dict[str, Any]) -> dict[str, Any]:
        room = f"/rooms/v1/rooms/{req.get('room')}"
        if req["do"] == "offline_member":  # S joins the public room, never connects; A
            s = await signup(self.system.lb, "pss")  # makes S a moderator
            async with aiohttp.ClientSession() as http:
                headers = {"Authorization": f"Bearer {s.token}"}
                async with http.post(f"{self.system.lb}{room}/join", headers=headers) as resp:
                    assert resp.status == 200, await resp.text()
            await self.as_a("PUT", f"{room}/moderators/{s.user_id}")
            return {"username": s.username}
        if req["do"] == "show_presence":  # R's own preference; the server's answer
            await self.r.account.access_token()
            body = {"show_presence": req["on"]}
            prefs = await self.r.api.request("PATCH", "/auth/v1/me/preferences", json=body)
            assert prefs["show_presence"] is req["on"], prefs
            return dict(prefs)
        if req["do"] == "online":  # who is online in the room, as R's SDK reads it
            return {m["username"]: m["online"] for m in await self.r.rooms.members(req["room"])}
        if req["do"] == "topic":  # A (the owner) changes the topic: room_changed
            return await self.as_a("PATCH", room, {"topic": req["topic"]})
        if req["do"] == "preferences":
            return await self.as_a("GET", "/auth/v1/me/preferences")
        return await super().act(req)


@BROWSER
async def test_browser_member_list_shows_who_is_online(system: System, tmp_path: Path) -> None:
    def side(r: Client, a_user: str, tag: str) -> PythonSide:
        return PresenceSide(r, system, a_user=a_user, a_password=f"browser password {tag}!")

    await browser_scenario(system, tmp_path, "chat_presence.mjs", "webp", 120, side)
