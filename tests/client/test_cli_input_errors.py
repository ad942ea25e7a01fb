"""What a user types wrong ends in one sentence and exit 1, never a traceback, and the
CLI says what it did (an audit of the CLI, 2026-12):

- `devices approve BADCODE` (a code of the wrong length, or padded) raised the crypto
  library's ``MalformedLinkCode`` through ``_run``, which caught ``ParleyError`` only;
- `devices rename ID ""` or a name with a tab raised ``MalformedDeviceList`` the same
  way, and a name over 64 characters was cut to 64 while the CLI printed it whole;
- `--server` at a port that does not speak HTTP (SSH, SMTP) let aiohttp's
  ``ClientResponseError`` ("Bad status line") out as a traceback;
- a message with bytes of argv that are not UTF-8 (surrogates) crashed in
  ``check_text`` with ``UnicodeEncodeError``;
- `accept-identity USER` for a contact with no key seen said "Accepted ... (safety
  number None)" and exit 0;
- `devices link` printed `parley devices approve CODE`: one code in 64 starts with
  ``-`` (base64url), which click takes for an option, and on 80 columns the command
  was cut over two lines.

The CLI run in this process (typer's runner) against the real system, the accounts
made with the SDK in the CLI's data home.
"""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from parley import Client, cli
from parley.errors import ParleyError
from parley.keys import PendingDevice
from typer.testing import CliRunner

from tests.client.conftest import MakeClient, new_username
from tests.support.cli_runs import cli_env, cli_user
from tests.support.stack import System


async def invoke(env: dict[str, str], *args: str) -> Result:
    return await asyncio.to_thread(CliRunner().invoke, cli.app, list(args), env=env)


def refused(result: Result, words: str) -> str:
    """Exit 1 with an ``Error:`` sentence holding ``words``; no exception escaped."""
    out = " ".join(result.output.split())
    assert result.exit_code == 1, out
    assert isinstance(result.exception, SystemExit), (out, result.exception)
    assert "Traceback" not in result.output, out
    assert f"Error: {words}" in out or words in out, out
    return out


@pytest.fixture
async def alice(
    make_client: MakeClient, system: System, tmp_path: Path
) -> AsyncIterator[tuple[Client, dict[str, str]]]:
    home = tmp_path / "home"
    client = await cli_user(make_client, system.lb, home, new_username("a"))
    yield client, cli_env(system.lb, home, columns=80)


async def test_a_malformed_link_code_is_one_sentence(
    alice: tuple[Client, dict[str, str]],
) -> None:
    client, env = alice
    await client.close()  # the CLI opens the same store
    for code in ("BADCODE", "A" * 53, "A" * 53 + "="):
        out = refused(await invoke(env, "devices", "approve", code, "--yes"), "link code")
        assert "parley devices link" in out, out


async def test_a_device_name_the_list_cannot_hold_is_refused_and_nothing_changes(
    alice: tuple[Client, dict[str, str]], make_client: MakeClient
) -> None:
    client, env = alice
    device = client.device_id
    [before] = [d["name"] for d in await client.devices() if d["device_id"] == device]
    await client.close()
    refused(await invoke(env, "devices", "rename", str(device), ""), "1 to 64 characters")
    refused(
        await invoke(env, "devices", "rename", str(device), "work\tlaptop"), "control character"
    )
    out = refused(
        await invoke(env, "devices", "rename", str(device), "a" * 65), "1 to 64 characters"
    )
    assert "65" in out, out
    result = await invoke(env, "devices")
    assert result.exit_code == 0 and before in result.output, result.output
    assert "a" * 64 not in result.output
    # 64 is fine, and is what the list then says.
    result = await invoke(env, "devices", "rename", str(device), "b" * 64)
    assert result.exit_code == 0, result.output
    again = await make_client(client.username, signup=False, data_dir=client.data_dir)
    assert [d["name"] for d in await again.devices() if d["device_id"] == device] == ["b" * 64]


async def test_text_that_is_not_utf8_is_refused_before_anything_is_sent(
    alice: tuple[Client, dict[str, str]], make_client: MakeClient
) -> None:
    client, env = alice
    bob = await make_client()
    assert bob.username
    room = await client.rooms.create(new_username("r"), public=True)
    await client.close()
    # `parley send bob $'caf\xe9'`: Python hands the byte over as a lone surrogate.
    refused(await invoke(env, "send", bob.username, "caf\udce9"), "UTF-8")
    refused(await invoke(env, "send", f"#{room['name']}", "caf\udce9"), "UTF-8")
    result = await invoke(env, "outbox")
    assert result.exit_code == 0 and "caf" not in result.output, result.output


async def test_accepting_the_identity_of_a_contact_with_no_key_seen_is_an_error(
    alice: tuple[Client, dict[str, str]], make_client: MakeClient
) -> None:
    client, env = alice
    bob = await make_client()
    assert bob.username
    await client.close()
    out = refused(await invoke(env, "accept-identity", bob.username), "nothing to accept")
    assert "None" not in out, out


@pytest.fixture
async def not_http() -> AsyncIterator[str]:
    """A TCP port that greets with a banner, as SSH does."""

    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n")
        await writer.drain()
        await reader.read(4096)
        writer.close()

    server = await asyncio.start_server(greet, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}"


async def test_a_server_that_does_not_speak_http_cannot_be_reached(
    not_http: str, tmp_path: Path
) -> None:
    env = {**cli_env(not_http, tmp_path / "home"), "PARLEY_PASSWORD": "a password!"}
    out = refused(await invoke(env, "login", "alice"), "Cannot reach the Parley server at")
    assert not_http in out, out
    async with Client(not_http, data_dir=tmp_path / "sdk", passphrase="test passphrase") as sdk:
        with pytest.raises(ParleyError, match="Cannot reach the Parley server"):
            await sdk.api.login("alice", "a password!", None)


# -- the link command that is printed ------------------------------------------------------


def test_the_printed_approve_command_works_for_a_code_that_starts_with_a_dash(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The line `devices link` prints, copied whole onto a shell, reaches `devices
    approve` with the code as its argument, whatever the code's first character."""
    code = "-h-UszgorQPbaeLAzqD9S8W-ww6erce9A9MLVNaWlsNimy3g1ROYBQ"

    async def link_device(self: Client, *args: Any, **kwargs: Any) -> str:
        return code

    async def wait_linked(self: Client, timeout: float) -> None:
        return None

    async def fresh_account(opts: Any, username: str, status: str, action: Any, **kw: Any) -> None:
        await action(Client(opts.server, data_dir=tmp_path / "new", passphrase="x" * 10))

    monkeypatch.setattr(Client, "link_device", link_device)
    monkeypatch.setattr(Client, "wait_linked", wait_linked)
    monkeypatch.setattr(Client, "fingerprint", lambda self: "ABCD-EF01")
    monkeypatch.setattr(cli, "_fresh_account", fresh_account)
    env = {**cli_env("http://127.0.0.1:9", tmp_path / "home", columns=80), "PARLEY_PASSWORD": "p"}
    result = CliRunner().invoke(cli.app, ["devices", "link", "alice"], env=env)
    assert result.exit_code == 0, result.output
    # And what the approving device must show for it (an audit: nothing was printed to
    # compare, so keys put on the pending device by a password holder went unnoticed).
    assert "this device's fingerprint: ABCD-EF01" in result.output, result.output
    [line] = [ln for ln in result.output.splitlines() if "parley devices approve" in ln]
    assert line.rstrip().endswith(code), result.output  # on one line
    assert len(line.rstrip()) <= 80, line

    got: list[str] = []

    async def approve_device(self: Client, given: str, confirm: Any) -> PendingDevice:
        got.append(given)
        raise ParleyError("stop here")

    monkeypatch.setattr(Client, "approve_device", approve_device)
    monkeypatch.setattr(
        cli,
        "_client",
        lambda opts: Client(opts.server, data_dir=tmp_path / "o", passphrase="x" * 10),
    )
    args = shlex.split(line)
    assert args[:3] == ["parley", "devices", "approve"], args
    result = CliRunner().invoke(cli.app, args[1:], env=env)
    assert got == [code], result.output
