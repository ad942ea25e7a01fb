"""Mention notifications in the web client, end to end through HAProxy
(web/chat/README.md, "Tests"; docs/rooms.md, "Mentions").

tests/web/chat_notifications.mjs drives Debian's Chromium with browser user A; the
Python SDK user R (tests/web/test_chat_rooms.py's, with its ``PY``/``OK`` dialogue)
joins A's public room and mentions A there while A has another room open: A's page
shows the unread badge and the entry live (the ``notification`` frame, no reload);
clicking the entry opens the room with that post highlighted, and the server's unread
count for A is then 0; two more mentions make the badge say 2 and "Mark all read"
clears it, the server agreeing again. Last, the mention e-mail setting in the sidebar
is on by default and turning it off is what ``GET /auth/v1/me/preferences`` says.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
from parley import Client

from tests.support.stack import System
from tests.web.test_chat_rooms import BROWSER, PythonSide, browser_scenario


class MentionSide(PythonSide):
    """R, plus what the server says to A (logged in over HTTP with A's password)."""

    def __init__(self, *args: Any, a_user: str, a_password: str) -> None:
        super().__init__(*args)
        self.a_user, self.a_password = a_user, a_password

    async def as_a(self, method: str, path: str) -> dict[str, Any]:
        lb = self.system.lb
        async with aiohttp.ClientSession() as http:
            login = {"username": self.a_user, "password": self.a_password}
            async with http.post(f"{lb}/auth/v1/login", json=login) as resp:
                assert resp.status == 200, await resp.text()
                token = (await resp.json())["access_token"]
            headers = {"Authorization": f"Bearer {token}"}
            async with http.request(method, f"{lb}{path}", headers=headers) as resp:
                assert resp.status == 200, await resp.text()
                return dict(await resp.json())

    async def act(self, req: dict[str, Any]) -> dict[str, Any]:
        if req["do"] == "mention":  # R posts in the public room; the post's number
            await self.r.rooms.send(req["room"], req["text"])
            page = await self.r.rooms.history(req["room"], limit=20)
            [post] = [m for m in page["messages"] if m["text"] == req["text"]]
            return {"seq": post["seq"]}
        if req["do"] == "unread":
            page = await self.as_a("GET", "/rooms/v1/notifications?limit=1")
            return {"unread": page["unread"]}
        if req["do"] == "preferences":
            return await self.as_a("GET", "/auth/v1/me/preferences")
        return await super().act(req)


@BROWSER
async def test_browser_mention_notifications(system: System, tmp_path: Path) -> None:
    def side(r: Client, a_user: str, tag: str) -> PythonSide:
        return MentionSide(r, system, a_user=a_user, a_password=f"browser password {tag}!")

    await browser_scenario(system, tmp_path, "chat_notifications.mjs", "webn", 90, side)
