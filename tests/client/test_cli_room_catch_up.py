"""`parley chat '#public-room'` shows what was posted while its socket was down
(an audit of the CLI, 2026-12). A public room's ``room_post`` is live only
(docs/protocol.md: "after a reconnect read the timeline"); the chat printed
"Connected." after a reconnect and never read the timeline, so every post made in
the gap was never shown.

The chat itself (``cli_rooms.room_chat``, its prompt fed from a pipe) against the real
system: its socket is dropped and held down while another member posts, then let up.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from parley import Client, cli, cli_rooms, cli_support
from parley.cli_support import Options
from prompt_toolkit.application import create_app_session
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput
from rich.console import Console

from tests.client.conftest import MakeClient, new_username
from tests.support.cli_runs import cli_user
from tests.support.stack import System


async def _until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.05)


async def test_posts_made_while_the_chat_was_disconnected_show_once_in_order(
    make_client: MakeClient, system: System, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    alice = await cli_user(make_client, system.lb, home, new_username("a"))
    bob = await make_client()
    room = await alice.rooms.create(new_username("gap"), public=True)
    rid = str(room["room_id"])
    await bob.rooms.join(rid)
    await bob.rooms.send(rid, "before the outage")
    await alice.close()  # the chat opens the same store

    out = io.StringIO()
    screen = Console(file=out, color_system=None, highlight=False, emoji=False, width=500)
    for module in (cli_support, cli, cli_rooms):
        monkeypatch.setattr(module, "console", screen)
    monkeypatch.setenv("PARLEY_PASSPHRASE", "test passphrase")
    monkeypatch.setattr(cli_rooms, "CATCH_UP_PAGE", 4)  # the missed posts take 3 pages
    made: list[Client] = []
    real_client = cli_rooms._client

    def capture(*args: Any, **kwargs: Any) -> Client:
        made.append(real_client(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(cli_rooms, "_client", capture)

    with create_pipe_input() as keys, create_app_session(input=keys, output=DummyOutput()):
        chat = asyncio.create_task(
            cli_rooms.room_chat(Options(system.lb, home, None), rid, tell_typing=False)
        )
        await _until(lambda: "Type a message" in out.getvalue())
        client = made[0]
        conn = client.messenger.conn
        assert conn is not None and "before the outage" in out.getvalue()

        # The socket goes down and stays down (its token refresh waits) while bob posts.
        up = asyncio.Event()
        real_token = conn._token

        async def token(force: bool) -> str:
            await up.wait()
            return await real_token(force)

        conn._token = token
        await conn.drop("the test")
        await _until(lambda: not client.connected)
        for i in range(10):
            await bob.rooms.send(rid, f"missed {i:02}")

        # A post that races the catch-up: pushed live while the timeline is being read,
        # and in the page read too.
        real_history = client.rooms.history
        raced: list[bool] = []

        async def history(*args: Any, **kwargs: Any) -> dict[str, Any]:
            if not raced:
                raced.append(True)
                await bob.rooms.send(rid, "racing the catch-up")
                await asyncio.sleep(1.0)  # its room_post reaches the chat meanwhile
            return await real_history(*args, **kwargs)

        monkeypatch.setattr(client.rooms, "history", history)
        up.set()
        await _until(lambda: "racing the catch-up" in out.getvalue())
        await bob.rooms.send(rid, "after the outage")
        await _until(lambda: "after the outage" in out.getvalue())
        keys.send_text("/quit\r")
        await asyncio.wait_for(chat, 30)

    shown = out.getvalue()
    wanted = [
        "before the outage",
        *[f"missed {i:02}" for i in range(10)],
        "racing the catch-up",
        "after the outage",
    ]
    for text in wanted:
        assert shown.count(text) == 1, (text, shown)
    places = [shown.index(text) for text in wanted]
    assert places == sorted(places), shown
