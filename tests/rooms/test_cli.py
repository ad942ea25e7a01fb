"""The admin CLI (services/rooms/cli.py) drives the admin API as an admin would: every
command is checked and audited by the service; errors print the stable code."""

from __future__ import annotations

import asyncio
import os
import sys

from scripts.stack import PYTHONPATH
from tests.rooms.conftest import RoomsApi
from tests.rooms.test_moderation import admin, audit_of


async def cli(api: RoomsApi, token: str, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "PYTHONPATH": PYTHONPATH, "PARLEY_ADMIN_TOKEN": token,
           "PARLEY_URL": str(api.client.make_url("")).rstrip("/")}  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.rooms.cli", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_an_admin_hides_and_closes_from_the_command_line(api: RoomsApi) -> None:
    owner = api.user()
    boss = admin(api)
    room = await api.room(owner, name="cli square")
    _, msg = await api.post(owner, room, "spam spam")
    token = api.tokens[boss]
    code, out, err = await cli(api, token, "hide", room, str(msg["seq"]), "--reason", "spam")
    assert code == 0, err
    assert '"marker": "removed_by_moderator"' in out and token not in out + err
    code, out, err = await cli(api, token, "restore", room, str(msg["seq"]))
    assert code == 0 and '"text": "spam spam"' in out, err
    assert (await cli(api, token, "restore", room, str(msg["seq"])))[0] == 1  # nothing to undo
    assert (await cli(api, token, "close", room))[0] == 0
    code, _, err = await cli(api, token, "close", room)
    assert code == 1 and "error: conflict" in err
    code, _, err = await cli(api, api.headers(owner)["Authorization"][7:], "reopen", room)
    assert code == 1 and "error: forbidden" in err
    code, _, err = await cli(api, token, "delete", room)
    assert code == 2 and "--yes" in err
    assert [e["action"] for e in await audit_of(api, target_id=room)] == ["room.close"]
    assert len(await audit_of(api, action="message.remove")) == 1
