"""Roles, bans and a room's state in the web client, end to end: two browser users and
a Python SDK user, through HAProxy (docs/rooms.md "Roles", "A ban"; web/chat/README.md,
"Tests").

tests/web/chat_rooms_roles.mjs drives Debian's Chromium (playwright-core) with two
browser contexts, A and B; R is the Python user, answering the script's ``PY`` lines
(tests/web/test_chat_rooms.py's dialogue):

1. A creates a private room and invites B and R; R accepts (SDK), B in the page; A and
   B write once each (everyone holds everyone's sender key);
2. B, a plain member, sees every member's role and no button to manage members or the
   room, and no "Banned users"; A, the owner, has "Make moderator", "Make owner",
   "Remove" and "Ban" on B and R and nothing on itself, sees nobody banned, and makes B
   a moderator;
3. B refreshes the list: B is a moderator, is offered "Close room", and "Remove" and
   "Ban" on R (a plain member), nothing on A (the owner), and sees "Banned users";
4. B opens the removal of R, and A makes B a plain member meanwhile: B's page is told at
   once (``room_changed`` ``role``), shows B a member and offers nothing any more (nor
   the bans);
5. A removes R after a confirmation: R leaves A's list, and R's SDK can no longer send
   (``RoomNotFound``). A writes: A's page sends a new sender key to B (a rotation) and
   nothing to R before the ``room_send``; B reads it. B, told of nothing, writes: B
   finds R gone at its send and rotates too (a new key to A, nothing to R);
6. A closes the room (after a confirmation): both pages show it closed at once (B's by
   the ``room_changed`` frame), B's composer and Send are disabled and say why; A
   reopens it, B's composer comes back, B writes and A reads;
7. a public room: A's "Ban a user" form refuses an unknown username (the look-up's
   ``user_not_found``) and A's own (``cannot_target_self``), each shown by the form as
   an alert with its code, no confirmation asked, the field kept and nothing listed or
   read again; A bans B, who never joined, by username: asked first ("Confirm banning
   B", "not a member", the focus on its button), then B is listed under "Banned users"
   and the field is emptied and focused; B's join from the directory is refused
   (``banned``); A lifts the ban;
8. B joins from the directory and posts; A removes B's post as the
   owner (after a confirmation): both pages show it "removed by a moderator" (B's live),
   and the timeline R reads holds it empty, ``removed_by_moderator``;
9. A bans B from the public room (after a confirmation): B leaves A's member list and
   is listed by name under "Banned users", B's page says B is no member; B's join from
   the directory is refused, the page showing the server's ``banned`` message. A lifts
   the ban: the list is empty, and B joins from the directory again (B's open view of
   the room reads it again: a member);
10. A hands the public room over to B (after a confirmation): A is a moderator, B the
    owner, and A is offered nothing on B.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from parley.rooms import RoomNotFound

from tests.support.stack import System
from tests.web.test_chat_rooms import BROWSER, WEB, PythonSide, python_user, run_script


class RolesSide(PythonSide):
    """R, plus: a send that the server must refuse (R was removed)."""

    async def act(self, req: dict[str, Any]) -> dict[str, Any]:
        if req["do"] == "send_refused":
            try:
                await self.r.rooms.send(req["room"], req["text"])
            except RoomNotFound as exc:
                return {"refused": str(exc)}
            raise AssertionError("a removed member sent to the room")
        return await super().act(req)


@BROWSER
async def test_browser_manages_roles_and_closes_rooms(system: System, tmp_path: Path) -> None:
    assert (WEB / "chat" / "dist" / "index.html").exists(), "make install builds web/chat"
    tag = secrets.token_hex(4)
    r = await python_user(system, tmp_path, tag)
    env = {
        "LB": system.lb,
        "A_USER": f"wroa{tag}",
        "B_USER": f"wrob{tag}",
        "R_USER": str(r.username),
        "TAG": tag,
        "SHOTS": os.environ.get("PARLEY_ROLES_SHOTS", ""),  # a directory: screenshots there
    }
    try:
        output, _ = await run_script("chat_rooms_roles.mjs", env, RolesSide(r, system), timeout=90)
    finally:
        await r.close()
    assert "chat rooms roles: ok" in output, output[-3000:]
    print("\n".join(line for line in output.splitlines() if line.startswith("step ")))
