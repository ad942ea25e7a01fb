"""No secret reaches a log; every service's lines are JSON with request and user ids.

After the flow of tests/ops/conftest.py (sign-ups, a wrong password, 2FA codes
by e-mail, a refresh, messages in real time and to an offline user), read the
log of every process of the test stack (each writes to ``<data dir>/<name>.out``;
nx-27017 also to ``mongo.log``) and look for every secret the flow used: the
passwords, access and refresh tokens, the challenge id, the e-mailed codes and
recovery codes, the message plaintexts and their base64 forms. None may appear.
A positive control proves the scan reads the lines the flow caused.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.ops.conftest import Flow
from tests.support.secrets import forms
from tests.support.stack import System

SERVICES = ("auth", "keys", "gateway1", "gateway2", "delivery", "web", "rooms", "notifier")


def log_files(system: System) -> list[Path]:
    """Every log of every process: the system's services, HAProxy, Prometheus and the servers."""
    roots = {system.cfg.data_dir, system.stack.cfg.data_dir}
    files = {p for root in roots for pattern in ("*.out", "*.log") for p in root.glob(pattern)}
    return sorted(files)


def test_no_secret_in_any_log(system: System, ops_flow: Flow) -> None:
    files = log_files(system)
    names = {p.name for p in files}
    assert {f"{s}.out" for s in SERVICES} <= names, names
    needles: list[tuple[str, bytes]] = []
    for pw in ops_flow.passwords:
        needles.append(("password", pw.encode()))
    for token in ops_flow.tokens:
        needles.append(("token", token.encode()))
        # A JWT's signature alone would be as bad as the whole token.
        needles += [("token part", part.encode()) for part in token.split(".")[1:] if part]
    for text in ops_flow.plaintexts:
        needles += [("plaintext", v) for v in forms(text)]
    recovery = [c for c in ops_flow.codes if not c.isdigit()]
    needles += [("recovery code", c.encode()) for c in recovery]
    needles += [("recovery code", c.replace("-", "").encode()) for c in recovery]
    digits = [c for c in ops_flow.codes if c.isdigit()]
    assert ops_flow.passwords and ops_flow.tokens and ops_flow.plaintexts and digits
    for path in files:
        blob = path.read_bytes()
        for kind, needle in needles:
            assert needle not in blob, f"a {kind} is in {path.name}"
        for code in digits:  # six digits: only a number standing alone counts
            hit = re.search(rb"(?<![0-9A-Za-z])" + code.encode() + rb"(?![0-9A-Za-z])", blob)
            assert hit is None, (
                f"a 2FA code is in {path.name}: {blob[hit.start() - 80 : hit.end() + 80]!r}"
            )


def test_service_logs_are_json_lines_with_request_and_user_ids(
    system: System, ops_flow: Flow
) -> None:
    seen_users: set[str] = set()
    access_lines = 0
    for name in SERVICES:
        lines = (system.cfg.data_dir / f"{name}.out").read_text(errors="replace").splitlines()
        parsed = []
        for line in lines:
            if not line.startswith("{"):
                continue  # a crash's traceback, or a library printing on its own
            entry = json.loads(line)
            assert {"ts", "level", "service", "msg"} <= set(entry), entry
            parsed.append(entry)
        assert parsed, f"{name} logged nothing"
        for entry in parsed:
            if entry["msg"] == "request":
                access_lines += 1
                assert entry["request_id"] and entry["route"] and entry["status"], entry
                assert "?" not in entry["route"], entry
            if entry.get("user_id"):
                seen_users.add(entry["user_id"])
    assert access_lines > 0
    # Positive control: the lines the flow caused carry its users' ids.
    assert set(ops_flow.user_ids) & seen_users, (ops_flow.user_ids, sorted(seen_users)[:5])


def test_every_service_process_froze_its_start_up_heap(system: System) -> None:
    """Each service moved what it made while starting out of the collector's way
    (services/common/app.py, ``_freeze_heap``): full collections stay short."""
    for name in SERVICES:
        lines = (system.cfg.data_dir / f"{name}.out").read_text(errors="replace").splitlines()
        frozen = [json.loads(x) for x in lines if '"msg":"heap frozen"' in x]
        assert frozen and frozen[0]["frozen_objects"] > 10_000, name
