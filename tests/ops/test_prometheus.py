"""Every dashboard panel and every alert, against a real Prometheus scraping the test system.

Prometheus (the Debian binary) scrapes every process of the ``system`` fixture
and HAProxy's exporter once a second, with the alert rules loaded; the flow
of tests/ops/conftest.py drives traffic. Then every query of every panel of
every committed dashboard (deploy/grafana/*.json, what Grafana provisions)
and every alert expression goes through Prometheus's HTTP API: none may fail,
and every panel query must return series, unless it is listed below with the
reason it may be empty here.

The overview dashboard's queries are also drawn (matplotlib) over the flow:
``PARLEY_WRITE_DOC_PLOTS=1`` writes the picture to docs/operations/overview.png.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any

import yaml

from tests.ops.conftest import Flow, Prometheus
from tests.support.stack import System, wait_until

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "deploy/grafana").glob("*.json"))
ALERTS = ROOT / "deploy/prometheus/alerts.yml"
DOC_PLOTS = ROOT / "docs/operations"
# What Grafana's $__rate_interval becomes here (the scrape interval is 1 s).
WINDOW = "10s"
# Panels whose metrics do not exist in the embedded stack, and why.
MAY_BE_EMPTY = {
    "kafka_": "kafka-exporter runs only under docker-compose (the embedded broker, "
    "embedded/kafka, has no exporter; parley_kafka_* is delivery's own view and is checked)",
    "mongodb_": "mongodb_exporter runs only under docker-compose (the embedded server is nx-27017)",
    "redis_": "redis_exporter runs only under docker-compose",
}
JOBS = {"auth", "keys", "gateway", "delivery", "web", "rooms", "notifier", "haproxy", "prometheus"}


def panels() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text(encoding="utf-8"))
        out += [(board["title"], p) for p in board["panels"] if p["type"] != "row"]
    return out


def queries() -> list[tuple[str, str, str]]:
    """(where, expr as Grafana sends it, expr with the window substituted)."""
    out = []
    for title, p in panels():
        for t in p["targets"]:
            where = f"{title} / {p['title']} / {t['refId']}"
            out.append((where, t["expr"], t["expr"].replace("$__rate_interval", WINDOW)))
    return out


def why_empty(expr: str) -> str | None:
    for prefix, reason in MAY_BE_EMPTY.items():
        if re.search(rf"\b{prefix}\w+", expr):
            return reason
    return None


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [r for g in doc["groups"] for r in g["rules"]]


def test_the_dashboards_have_queries() -> None:
    assert {p.name for p in DASHBOARDS} >= {"overview.json", "infrastructure.json"}
    assert len(queries()) > 50


def test_rooms_have_their_panels() -> None:
    """Rooms exist (services/rooms): their metrics are on a dashboard, and the ops flow
    drives a room so that every one of those panels returns series."""
    exprs = " ".join(e for _, e, _ in queries())
    for metric in (
        "parley_rooms_membership_changes_total",
        "parley_rooms_messages_total",
        "parley_rooms_notifications_total",
        "parley_rooms_outbox_sent_total",
    ):
        assert metric in exprs, metric


def test_every_target_is_scraped(prometheus: Prometheus) -> None:
    answer = prometheus.api("targets")
    targets = answer["data"]["activeTargets"]
    assert {t["labels"]["job"] for t in targets} == JOBS
    down = [(t["scrapeUrl"], t["lastError"]) for t in targets if t["health"] != "up"]
    assert not down
    # Both gateway pods, each with its own connections gauge.
    assert prometheus.series_count("parley_gateway_connection_capacity") == 2


def test_every_panel_query_runs_and_returns_series(prometheus: Prometheus, ops_flow: Flow) -> None:
    all_queries = queries()
    errors = {}
    pending = {}
    for where, _, expr in all_queries:
        answer = prometheus.query(expr)
        if answer["status"] != "success":
            errors[where] = f"{answer.get('errorType')}: {answer.get('error')} in {expr}"
        elif why_empty(expr) is None:
            pending[where] = expr
    assert not errors, errors

    def all_answered() -> bool:
        for where, expr in list(pending.items()):
            if prometheus.series_count(expr):
                del pending[where]
        return not pending

    try:
        # Series appear as the scrapes after the flow come in (every second).
        wait_until(all_answered, timeout=45, interval=0.5)
    except TimeoutError:
        pass
    assert not pending, "panel queries without series:\n" + "\n".join(
        f"  {w}: {e}" for w, e in pending.items()
    )


def test_the_exempt_panels_are_only_the_exporters() -> None:
    exempt = [(w, why_empty(e)) for w, _, e in queries() if why_empty(e)]
    assert exempt
    assert all(w.startswith("Parley infrastructure /") for w, _ in exempt), exempt


def test_every_alert_expression_runs(prometheus: Prometheus, ops_flow: Flow) -> None:
    failed = {}
    for rule in alert_rules():
        answer = prometheus.query(rule["expr"])
        if answer["status"] != "success":
            failed[rule["alert"]] = answer.get("error")
    assert not failed, failed


def test_every_rule_is_evaluated_without_error(prometheus: Prometheus, ops_flow: Flow) -> None:
    names = {r["alert"] for r in alert_rules()}

    def evaluated() -> list[dict[str, Any]] | None:
        groups = prometheus.api("rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        done = [r for r in rules if not r["lastEvaluation"].startswith("0001")]
        return rules if len(done) == len(rules) == len(names) else None

    wait_until(lambda: evaluated() is not None, timeout=20, interval=0.5)
    rules = evaluated()
    assert rules is not None
    assert {r["name"] for r in rules} == names
    assert all(r["health"] == "ok" for r in rules), [
        (r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"
    ]
    # A healthy test system pages nobody.
    firing = [r["name"] for r in rules if r["state"] == "firing"]
    assert not firing


def test_the_flow_is_measured(prometheus: Prometheus, ops_flow: Flow) -> None:
    """The numbers the flow must have moved (a positive control for the panels above)."""

    def value(expr: str) -> float:
        result = prometheus.query(expr)["data"]["result"]
        return float(result[0]["value"][1]) if result else 0.0

    checks = {
        'sum(parley_auth_login_failures_total{factor="password"})': 1,
        'sum(parley_auth_login_failures_total{factor="code"})': 1,
        'sum(parley_auth_emails_total{result="sent"})': 2,
        'sum(parley_gateway_frames_out_total{op="accepted"})': 11,
        'sum(parley_delivery_stored_total{kind="message"})': 11,
        "(sum(parley_delivery_acked_total) or vector(0))"
        " + (sum(parley_gateway_acked_total) or vector(0))": 8,
        "sum(parley_delivery_e2e_latency_seconds_count)": 11,
        "sum(parley_keys_bundles_claimed_total)": 2,
        'sum(parley_gateway_errors_total{code="invalid_token"})': 1,
        "sum(parley_delivery_inbox_depth_count)": 1,
        "count(parley_kafka_consumer_lag)": 2,
        "sum(process_resident_memory_bytes)": 1,
        'sum(parley_rooms_membership_changes_total{change="member_joined"})': 1,
        'sum(parley_rooms_messages_total{result="stored"})': 1,
        "sum(parley_rooms_notifications_total)": 1,
    }

    def moved() -> bool:
        return all(value(q) >= n for q, n in checks.items())

    try:
        wait_until(moved, timeout=20, interval=0.5)
    except TimeoutError:
        pass
    assert {q: value(q) for q in checks if value(q) < checks[q]} == {}


def _legend(fmt: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt) or str(labels)


def test_draw_the_overview(
    prometheus: Prometheus, ops_flow: Flow, system: System, tmp_path: Path
) -> None:
    """The overview dashboard's queries over the flow, one plot per panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    board = json.loads((ROOT / "deploy/grafana/overview.json").read_text(encoding="utf-8"))
    shown = [p for p in board["panels"] if p["type"] != "row"]
    end = time.time()
    start = prometheus.started
    cols = 3
    rows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(15, 3.4 * rows), squeeze=False)
    drawn = 0
    for ax, p in zip(axes.flat, shown, strict=False):
        unit = p["fieldConfig"]["defaults"].get("unit", "")
        for t in p["targets"]:
            expr = t["expr"].replace("$__rate_interval", WINDOW)
            answer = prometheus.query_range(expr, start, end, 1)
            assert answer["status"] == "success", (p["title"], answer)
            for series in answer["data"]["result"]:
                xs = [float(x) - start for x, _ in series["values"]]
                ys = [float(y) for _, y in series["values"]]
                if unit == "percentunit":
                    ys = [y * 100 for y in ys]
                ax.plot(xs, ys, label=_legend(t.get("legendFormat", ""), series["metric"]))
                drawn += 1
        ax.set_title(p["title"], fontsize=10)
        ax.set_xlabel("seconds since Prometheus started", fontsize=8)
        ax.set_ylabel({"percentunit": "%", "short": ""}.get(unit, unit), fontsize=8)
        ax.tick_params(labelsize=7)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left")
    for ax in list(axes.flat)[len(shown) :]:
        ax.axis("off")
    fig.suptitle("Parley overview: the dashboard's queries over the test flow (Prometheus)")
    fig.tight_layout()
    out = tmp_path / "overview.png"
    fig.savefig(out, dpi=80)
    plt.close(fig)
    assert drawn >= len(shown)
    assert out.stat().st_size > 10_000
    if os.environ.get("PARLEY_WRITE_DOC_PLOTS") == "1":
        DOC_PLOTS.mkdir(parents=True, exist_ok=True)
        (DOC_PLOTS / "overview.png").write_bytes(out.read_bytes())
