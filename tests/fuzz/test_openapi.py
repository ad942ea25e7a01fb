"""Schemathesis over every service's OpenAPI document, through the load balancer.

One run of the schemathesis command per service (examples, coverage and
fuzzing phases; deterministic), with the hooks of ``schemathesis_hooks.py``:
a real user's token, an admin's on admin routes. Every check schemathesis has
runs, except ``positive_data_acceptance``, replaced by our stricter reading
(a request the document admits is never refused for its shape). The run
fails on the first kind of mismatch it finds; its report is in the failure.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.stack import ROOT
from tests.fuzz.conftest import Admin, login
from tests.support.stack import System
from tests.support.users import User

SERVICES = ["auth", "keys", "delivery", "gateway", "rooms"]
EXAMPLES = int(os.environ.get("PARLEY_FUZZ_EXAMPLES", "10"))
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


@pytest.mark.timeout(600)
@pytest.mark.parametrize("service", SERVICES)
def test_service_does_what_its_document_says(
    system: System, user: User, admin: Admin, service: str, tmp_path: Path
) -> None:
    auth = {
        "lb": system.lb,
        "user": user.token,
        "admin": admin.token,
        "sacrificial": asyncio.run(login(system.lb, user.username, user.password, 1)),
    }
    env = {
        **os.environ,
        "PARLEY_FUZZ_AUTH": json.dumps(auth),
        "SCHEMATHESIS_HOOKS": "tests.fuzz.schemathesis_hooks",
        "PYTHONPATH": str(ROOT),
    }
    cmd = [
        str(SCHEMATHESIS), "run", f"{system.lb}/{service}/openapi.json", "--url", system.lb,
        "--phases", "examples,coverage,fuzzing",
        "--checks", "all", "--exclude-checks", "positive_data_acceptance",
        "--max-examples", str(EXAMPLES), "--generation-deterministic",
        "--workers", "1", "--request-timeout", "10",
        "--no-color", "--suppress-health-check", "all",
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=540, check=False
    )
    out = proc.stdout + proc.stderr
    cases = re.search(r"(\d+) generated", out)
    operations = re.search(r"Tested: (\d+)", out)
    print(
        f"schemathesis {service}: {operations.group(1) if operations else '?'} operations, "
        f"{cases.group(1) if cases else '?'} cases, exit {proc.returncode}"
    )
    assert proc.returncode == 0, out[-20000:]
    assert operations and int(operations.group(1)) > 0, out[-5000:]
