"""A one-shot `parley send` whose answer does not come in time says the message stays
queued (exit 3) instead of failing (exit 1, which invited sending it again: the
recipient then got it twice), and the next command that connects sends it, once.

The CLI runs in this process (typer's runner, in a thread: it runs its own event
loop) against the real system; the send frames it writes are dropped while the
"link" is down, which is what a lost answer looks like to it."""

from __future__ import annotations

from pathlib import Path

import pytest
from parley import connection, paths
from parley.client import Message
from parley_contract import frames as f

from tests.client.conftest import MakeClient
from tests.support.cli_runs import cli_env, run_cli
from tests.support.stack import System


async def test_a_send_that_times_out_stays_queued_and_goes_once(
    make_client: MakeClient, system: System, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    alice_name = f"q{tmp_path.name[-6:].lower().replace('_', '')}a"
    alice = await make_client(alice_name, data_dir=paths.account_dir(home, system.lb, alice_name))
    paths.set_current_user(home, system.lb, alice_name)
    bob = await make_client()
    assert bob.username and alice.user_id
    await alice.close()  # the CLI opens the same store
    await bob.connect()

    send = connection.Connection.send
    link = {"down": True}

    async def lossy(self: connection.Connection, frame: f.ClientFrames) -> None:
        if isinstance(frame, f.Send) and link["down"]:
            return  # written into a dead link: no answer comes
        await send(self, frame)

    monkeypatch.setattr(connection.Connection, "send", lossy)
    env = cli_env(system.lb, home)

    code, out = await run_cli(env, "send", bob.username, "only once", "--timeout", "1")
    assert code == 3, out
    assert "stays in the outbox" in out and "never twice" in out, out
    code, out = await run_cli(env, "outbox")
    assert code == 0 and "only once" in out, out

    link["down"] = False
    code, out = await run_cli(env, "inbox")  # connects: resends the outbox
    assert code == 0, out
    got = await bob.next_event(Message)
    assert isinstance(got, Message) and got.text == "only once"
    code, out = await run_cli(env, "outbox")
    assert code == 0 and "The outbox is empty" in out, out
    await bob.sync()
    assert [e["text"] for e in bob.history(alice.user_id)] == ["only once"]
