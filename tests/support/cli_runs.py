"""The CLI run in this process (typer's runner, in a thread) against a data home, and a
client's stored access token made to have run out (the next request refreshes it)."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from parley import Client, cli, paths
from typer.testing import CliRunner


def cli_env(server: str, home: Path, columns: int = 200) -> dict[str, str]:
    return {
        "PARLEY_SERVER": server,
        "PARLEY_DATA_HOME": str(home),
        "PARLEY_PASSPHRASE": "test passphrase",
        "NO_COLOR": "1",
        "COLUMNS": str(columns),
    }


async def run_cli(env: dict[str, str], *args: str) -> tuple[int, str]:
    """``parley <args>``: its exit code and its output on one line."""

    def invoke() -> tuple[int, str]:
        result = CliRunner().invoke(cli.app, list(args), env=env)
        return result.exit_code, " ".join(result.output.split())

    return await asyncio.to_thread(invoke)


def cli_process(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m parley <args>`` as a script runs it: a process of its own, no
    terminal (stdin closed), its output and errors apart."""
    return subprocess.run(
        [sys.executable, "-m", "parley", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def expire_access_token(client: Client) -> None:
    """The stored access token ran out (a laptop asleep longer than its life): the next
    request, or connection, refreshes it first."""
    async with client.store.transaction() as tx:
        account = tx.get("account")
        head, payload, sig = account["access_token"].split(".")
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        claims["exp"] = int(time.time()) - 10
        body = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
        account["access_token"] = f"{head}.{body}.{sig}"
        tx.put("account", account)


async def cli_user(make_client: Any, server: str, home: Path, name: str) -> Client:
    """A client whose store is where the CLI run with ``home`` finds it, as its current
    user."""
    client: Client = await make_client(name, data_dir=paths.account_dir(home, server, name))
    paths.set_current_user(home, server, name)
    return client
