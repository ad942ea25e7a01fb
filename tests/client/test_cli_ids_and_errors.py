"""What the CLI prints for a user to type again is whole, and the server's words are
not replaced by a wrong one.

- `parley sessions` and `parley rooms list` / `rooms directory` on an 80-column
  terminal: the ids (which `sessions --revoke` and the room commands take) were cut
  with an ellipsis by the table; they are now kept whole.
- ``user_not_found`` read "No such user." whatever the server said; the rooms service
  says with it "That user is not a member of this room." or "... not banned ...".

Real `parley` processes (stdout not a terminal: rich takes the width from COLUMNS)
against the real system; the accounts are made with the SDK in the CLI's data home.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from tests.client.conftest import MakeClient, new_username
from tests.support.cli_runs import cli_env, cli_process, cli_user
from tests.support.stack import System

ROOT = Path(__file__).resolve().parents[2]


def _cli(system: System, home: Path) -> dict[str, str]:
    return {
        **os.environ,
        **cli_env(system.lb, home, columns=80),
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "client"), str(ROOT / "contract")]),
    }


async def parley(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    done = await asyncio.to_thread(cli_process, env, *args)
    return done.returncode, done.stdout, " ".join(done.stderr.split())


async def test_ids_are_whole_on_80_columns_and_the_rooms_service_is_quoted(
    make_client: MakeClient, system: System, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    name = new_username("w")
    alice = await cli_user(make_client, system.lb, home, name)
    bob = await make_client()
    assert bob.username
    room = await alice.rooms.create(f"quite-a-long-room-name-{name}", public=True)
    [session] = [s["session_id"] for s in await alice.auth_sessions() if s.get("current")]
    await alice.close()  # the CLI opens the same store
    env = _cli(system, home)

    ref = f"#{room['name']}"
    code, out, err = await parley(env, "rooms", "remove", ref, bob.username)
    assert code == 1 and "That user is not a member of this room." in err, (out, err)
    code, out, err = await parley(env, "rooms", "ban", ref, bob.username, "--lift")
    assert code == 1 and "That user is not banned from this room." in err, (out, err)
    # The auth service's look-up still names who was not found.
    code, out, err = await parley(env, "rooms", "remove", ref, f"nobody{name}")
    assert code == 1 and f"No user named 'nobody{name}'." in err, (out, err)

    code, out, err = await parley(env, "rooms", "list")
    assert code == 0, err
    assert max(len(line) for line in out.splitlines()) <= 80
    assert room["room_id"] in out, out
    code, out, err = await parley(env, "rooms", "directory", "quite-a-long")
    assert code == 0, err
    assert room["room_id"] in out, out
    code, out, err = await parley(env, "sessions")
    assert code == 0, err
    assert max(len(line) for line in out.splitlines()) <= 80
    assert session in out, out
    # The id printed is the one --revoke takes.
    code, out, err = await parley(env, "sessions", "--revoke", session)
    assert code == 0 and f"Session {session} ended." in out, err
