"""The dashboards are code: the committed JSON is what deploy/grafana/dashboards.py makes,
each is well formed for Grafana's file provisioning, and docs/operations.md describes it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from deploy.grafana import dashboards

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy/grafana"


def load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((GRAFANA / name).read_text(encoding="utf-8"))
    return doc


def test_committed_dashboards_are_what_the_code_makes() -> None:
    committed = {p.name for p in GRAFANA.glob("*.json")}
    assert committed == set(dashboards.DASHBOARDS), "a stray or missing dashboard JSON"
    stale = [n for n in dashboards.DASHBOARDS if dashboards.render(n) != (GRAFANA / n).read_text()]
    assert not stale, f"stale: {stale}; run `python -m deploy.grafana.dashboards`"


def test_the_check_command_agrees() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "deploy.grafana.dashboards", "--check"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_each_dashboard_is_well_formed() -> None:
    uids = set()
    for name in dashboards.DASHBOARDS:
        board = load(name)
        assert board["uid"].startswith("parley-") and board["uid"] not in uids
        uids.add(board["uid"])
        assert board["title"].startswith("Parley ") and "parley" in board["tags"]
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)) and all(i > 0 for i in ids), name
        for p in board["panels"]:
            if p["type"] == "row":
                continue
            assert p["type"] in ("timeseries", "stat"), p["title"]
            assert p["datasource"] == {"type": "prometheus", "uid": "prometheus"}, p["title"]
            assert p["description"].strip() and p["targets"], p["title"]
            assert p["gridPos"]["w"] <= 24 and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
            refs = [t["refId"] for t in p["targets"]]
            assert len(refs) == len(set(refs)) and all(refs), p["title"]
            assert all(t["expr"].strip() for t in p["targets"]), p["title"]


def test_the_overview_answers_the_operators_questions() -> None:
    exprs = " ".join(
        t["expr"] for p in load("overview.json")["panels"] for t in p.get("targets", [])
    )
    for metric in (
        "parley_http_requests_total",
        "parley_http_request_duration_seconds_bucket",
        "parley_gateway_connections",
        "parley_kafka_consumer_lag",
        "parley_delivery_e2e_latency_seconds_bucket",
        "parley_delivery_stored_total",
        "parley_delivery_acked_total",
        "parley_gateway_acked_total",
    ):
        assert metric in exprs, metric


def test_compose_provisions_this_folder_with_the_datasource_the_panels_use() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    provider = yaml.safe_load(
        (ROOT / "deploy/compose/grafana/provisioning/dashboards/parley.yml").read_text()
    )["providers"][0]
    mounts = [v.split(":") for v in compose["services"]["grafana"]["volumes"]]
    assert ["./deploy/grafana", provider["options"]["path"], "ro"] in mounts
    ds = yaml.safe_load(
        (ROOT / "deploy/compose/grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"][0]
    assert ds["uid"] == "prometheus"


def test_docs_describe_every_dashboard() -> None:
    doc = (ROOT / "docs/operations.md").read_text(encoding="utf-8")
    for name in dashboards.DASHBOARDS:
        assert load(name)["title"] in doc, name
        assert f"deploy/grafana/{name}" in doc, name
    assert "operations/overview.png" in doc
    assert (ROOT / "docs/operations/overview.png").stat().st_size > 10_000


def test_latency_panels_and_http_alerts_leave_out_the_probes_and_both_socket_routes() -> None:
    # Prometheus anchors a label regex (the whole label must match): "/ws" alone did
    # not leave out the gateway's /gateway/ws, nor ".../(healthz|readyz|metrics)" the
    # ALB's /<svc>/startedz, every 10 s from every zone.
    selector = dashboards.NOT_TIMED
    assert selector.startswith('route!~"') and selector.endswith('"')
    pattern = re.compile(selector[len('route!~"') : -1])
    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text(encoding="utf-8"))
    http = {
        r["alert"]: r["expr"]
        for g in rules["groups"]
        for r in g["rules"]
        if r.get("alert") in ("ParleyHigh5xxRate", "ParleyHighP99Latency")
    }
    assert len(http) == 2
    for name, expr in http.items():
        filters = re.findall(r'route!~"[^"]*"', expr)
        assert filters and set(filters) == {selector}, name
    left_out = ["/ws", "/gateway/ws", "/gateway/startedz", "/auth/startedz", "/keys/healthz",
                "/rooms/readyz", "/delivery/metrics"]  # fmt: skip
    kept = ["/keys/v1/users/{user_id}/bundles", "/gateway/openapi.json", "/auth/v1/login",
            "/gateway/wsx", "unmatched"]  # fmt: skip
    assert [r for r in left_out if not pattern.fullmatch(r)] == []
    assert [r for r in kept if pattern.fullmatch(r)] == []
