"""promtool (Debian's, beside the Prometheus binary) checks the rules, runs their unit
tests and checks both Prometheus configurations: docker-compose's and the one
`make run` writes for the embedded stack. Every alert has a runbook section."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from scripts.stack import StackConfig, prometheus_config

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def promtool(*args: str, cwd: Path = PROM) -> str:
    done = subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((PROM / "alerts.yml").read_text(encoding="utf-8"))
    return [r for g in doc["groups"] for r in g["rules"]]


def test_promtool_check_rules() -> None:
    out = promtool("check", "rules", "alerts.yml")
    assert f"SUCCESS: {len(rules())} rules found" in out


@pytest.mark.parametrize("tests", ["alerts_test.yml", "alerts_test_15s.yml"])
def test_promtool_test_rules(tests: str) -> None:
    assert "SUCCESS" in promtool("test", "rules", tests)


def test_promtool_checks_the_compose_config() -> None:
    promtool("check", "config", "prometheus.yml")


def test_promtool_checks_the_embedded_config(tmp_path: Path) -> None:
    conf = tmp_path / "prometheus.yml"
    conf.write_text(prometheus_config(StackConfig(data_dir=tmp_path)))
    promtool("check", "config", str(conf), cwd=tmp_path)
    doc = yaml.safe_load(conf.read_text())
    compose = yaml.safe_load((PROM / "prometheus.yml").read_text())
    # The same jobs (names and paths) as under compose, less the exporters of compose only.
    ours = {j["job_name"]: j.get("metrics_path", "/metrics") for j in doc["scrape_configs"]}
    theirs = {j["job_name"]: j.get("metrics_path", "/metrics") for j in compose["scrape_configs"]}
    assert {k: v for k, v in theirs.items() if k not in ("kafka", "mongodb", "redis")} == ours
    assert doc["rule_files"] == [str(PROM / "alerts.yml")]


def test_every_alert_fires_in_one_case_and_stays_quiet_in_another() -> None:
    doc = yaml.safe_load((PROM / "alerts_test.yml").read_text(encoding="utf-8"))
    fires, quiet = set(), set()
    for case in doc["tests"]:
        for t in case["alert_rule_test"]:
            (fires if t.get("exp_alerts") else quiet).add(t["alertname"])
    names = {r["alert"] for r in rules()}
    assert names - fires == set(), "alerts never seen firing"
    assert names - quiet == set(), "alerts never seen quiet"


@pytest.mark.parametrize("alert", [r["alert"] for r in rules()])
def test_every_alert_has_a_runbook(alert: str) -> None:
    doc = (ROOT / "docs/operations.md").read_text(encoding="utf-8")
    section = re.search(rf"^### {alert}\n(.*?)(?=^#|\Z)", doc, re.M | re.S)
    assert section, f"docs/operations.md has no '### {alert}' section"
    assert "What to do" in section.group(1), alert
