"""The admin console end to end in Chromium (tests/web/admin_console.mjs), through HAProxy.

An admin signs in through the provider's pages, blocks a user and sees it in
the audit log; a non-admin is refused by the console, and the admin API
answers 403 to their token. Screenshots land in the test's temporary directory;
with ``PARLEY_UPDATE_SCREENSHOTS=1`` they replace docs/admin/*.png (docs/admin.md).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import httpx2 as httpx
import pytest

from scripts.stack import ROOT
from tests.auth.helpers import bearer
from tests.auth.test_oidc_through_lb import admin_token, make_admin
from tests.support.stack import System
from tests.support.users import signup

WEB = ROOT / "web"
DOC_SHOTS = ROOT / "docs" / "admin"


@pytest.mark.skipif(
    not Path("/usr/bin/chromium").exists() or shutil.which("node") is None,
    reason="needs Debian's chromium and node (scripts/install.sh installs them)",
)
async def test_admin_blocks_a_user_in_the_console_and_a_non_admin_is_refused(
    system: System, tmp_path: Path
) -> None:
    update = os.environ.get("PARLEY_UPDATE_SCREENSHOTS") == "1"
    shots = DOC_SHOTS if update else tmp_path / "shots"
    assert (WEB / "admin" / "dist" / "index.html").exists(), "make install builds web/admin"
    admin = await signup(system.lb, "adm")
    make_admin(system, admin.username)
    target = await signup(system.lb, "tgt")
    plain = await signup(system.lb, "usr")
    shots.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "LB": system.lb,
        "WEB_DIR": str(WEB),
        "SHOTS": str(shots),
        "ADMIN_USER": admin.username,
        "ADMIN_PASSWORD": admin.password,
        "TARGET": target.username,
        "PLAIN_USER": plain.username,
        "PLAIN_PASSWORD": plain.password,
    }
    run = await asyncio.to_thread(
        subprocess.run,
        ["node", str(ROOT / "tests" / "web" / "admin_console.mjs")],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "admin console: ok" in run.stdout

    token = await admin_token(system, admin)
    async with httpx.AsyncClient(base_url=system.lb) as http:
        user = (
            await http.get(f"/auth/v1/admin/users/{target.user_id}", headers=bearer(token))
        ).json()
        assert user["blocked"] and user["blocked_reason"] == "spam (browser test)"
        audit = await http.get(
            "/auth/v1/admin/audit", params={"target_id": target.user_id}, headers=bearer(token)
        )
        block = [e for e in audit.json()["entries"] if e["action"] == "user.block"]
        assert block and block[0]["actor"] == admin.username
        # The API refuses a non-admin whatever the console shows.
        refused = await http.get("/auth/v1/admin/users", headers=bearer(plain.token))
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    for name in ("sign-in", "users", "user", "audit", "refused"):
        assert (shots / f"{name}.png").stat().st_size > 5000
