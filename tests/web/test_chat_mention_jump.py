"""A mention opened from the list shows its message (web/chat/README.md, "Tests";
docs/rooms.md, "Mentions"), end to end through HAProxy: browser user A and the Python
SDK user R (tests/web/test_chat_rooms.py's, with its ``PY``/``OK`` dialogue).

tests/web/chat_mention_jump_public.mjs: R mentions A twice in A's public room, deletes
the second post, then posts 300 more while A has another room open, so both posts are
well before the 50 the room's first page holds. Clicking each entry opens the room with
the post read in from earlier pages, scrolled into view and highlighted (the deleted
one as the marked empty line it now is).

tests/web/chat_mention_jump_private.mjs: R mentions A in a private room while A is
connected, then writes 25 more lines; from another room, clicking the entry opens the
private room with that message (matched by the ``server_id`` the notification names)
scrolled into view and highlighted.

The pure rules (how earlier pages are read, the limits, what the status line says)
are web/chat/test/mentionJump.test.ts, with web/chat's other unit tests (`npm run
test:node`, run by tests/web/test_chat_suite.py).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from scripts.stack import ROOT
from tests.support.stack import System
from tests.web.test_chat_rooms import BROWSER, PythonSide, browser_scenario

CHAT = ROOT / "web" / "chat"


class JumpSide(PythonSide):
    """R, plus many posts at once."""

    async def act(self, req: dict[str, Any]) -> dict[str, Any]:
        r, do = self.r, req["do"]
        if do == "post_many":  # the texts in order (their seqs), then `fillers` more posts
            room = req["room"]
            for text in req["texts"]:
                await r.rooms.send(room, text)
            page = await r.rooms.history(room, limit=50)
            seqs = {m["text"]: m["seq"] for m in page["messages"]}
            fillers = [f"filler {n} {req['tag']}" for n in range(req["fillers"])]
            for start in range(0, len(fillers), 20):
                await asyncio.gather(*(r.rooms.send(room, t) for t in fillers[start : start + 20]))
            return {"seqs": [seqs[t] for t in req["texts"]]}
        if do == "send_many":  # private room lines, one after the other
            for text in req["texts"]:
                await r.rooms.send(req["room"], text)
            return {}
        return await super().act(req)


@BROWSER
async def test_browser_mention_jumps_back_in_a_public_room(system: System, tmp_path: Path) -> None:
    await browser_scenario(
        system, tmp_path, "chat_mention_jump_public.mjs", "webj", 150,
        lambda r, _a, _t: JumpSide(r, system),
    )  # fmt: skip


@BROWSER
async def test_browser_mention_shows_a_private_message(system: System, tmp_path: Path) -> None:
    await browser_scenario(
        system, tmp_path, "chat_mention_jump_private.mjs", "webk", 120,
        lambda r, _a, _t: JumpSide(r, system),
    )  # fmt: skip
