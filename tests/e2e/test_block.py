"""An admin blocks a user through the auth API: the user's open socket closes at
once (on whichever pod), the token stops working, and unblocking lets them back."""

from __future__ import annotations

import os
import subprocess
import sys

import aiohttp

from scripts.stack import PYTHONPATH, ROOT
from tests.support.stack import System
from tests.support.users import signup
from tests.support.wsclient import WsClient


def create_admin(system: System, username: str, password: str) -> None:
    """The first admin comes from the CLI, run against the system's own database."""
    env = {**os.environ, **system.auth_env(), "PYTHONPATH": PYTHONPATH}
    proc = subprocess.run(
        [sys.executable, "-m", "services.auth.cli", "create-admin", "--username", username,
         "--email", f"{username}@example.test", "--password-stdin"],
        input=password, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr


async def test_block_closes_the_socket_and_refuses_the_token(system: System) -> None:
    victim = await signup(system.lb, "v")
    password = "admin pass phrase 9x"
    create_admin(system, f"adm{victim.username[1:]}", password)
    client = await WsClient.connect(system.ws_url, victim.token)
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{system.lb}/auth/v1/login",
            json={"username": f"adm{victim.username[1:]}", "password": password},
        ) as resp:
            assert resp.status == 200, await resp.text()
            admin_token = (await resp.json())["access_token"]
        auth = {"Authorization": f"Bearer {admin_token}"}
        # A plain user may not block anyone.
        async with http.post(
            f"{system.lb}/auth/v1/admin/users/{victim.user_id}/block",
            headers={"Authorization": f"Bearer {victim.token}"},
            json={"reason": 12},  # malformed too: the role is checked first
        ) as resp:
            assert resp.status == 403
            assert (await resp.json())["error"]["code"] == "forbidden"
        async with http.post(
            f"{system.lb}/auth/v1/admin/users/{victim.user_id}/block",
            headers=auth,
            json={"reason": "spam"},
        ) as resp:
            assert resp.status in (200, 204), await resp.text()
        try:
            assert (await client.expect("error"))["code"] == "account_blocked"
            assert await client.wait_closed() == 4003
        finally:
            await client.close()
        async with http.get(
            f"{system.lb}/delivery/v1/inbox", headers={"Authorization": f"Bearer {victim.token}"}
        ) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"]["code"] == "account_blocked"
        async with http.post(
            f"{system.lb}/auth/v1/admin/users/{victim.user_id}/unblock",
            headers=auth,
            json={},
        ) as resp:
            assert resp.status in (200, 204), await resp.text()
        async with http.post(
            f"{system.lb}/auth/v1/login",
            json={"username": victim.username, "password": victim.password, "device_id": 1},
        ) as resp:
            assert resp.status == 200
            fresh = (await resp.json())["access_token"]
    again = await WsClient.connect(system.ws_url, fresh)
    await again.close()
