"""deploy/prometheus/*.yml and the Grafana provisioning: structure checked in
pure Python. promtool itself (`check rules`, `test rules`, `check config`) runs
in tests/ops/test_promtool.py, and every rule is evaluated by a real Prometheus
against the test stack in tests/ops/test_prometheus.py."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROM_DIR = ROOT / "deploy/prometheus"
GRAFANA_DIR = ROOT / "deploy/compose/grafana/provisioning"

PARLEY = {"auth": "auth", "keys": "keys", "delivery": "delivery"}
PARLEY |= {"gateway1": "gateway", "gateway2": "gateway"}
DURATION = re.compile(r"^(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?$")
SEVERITIES = {"critical", "warning", "info"}
RULE_KEYS = {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "offset", "bool", "le", "inf", "nan",
}  # fmt: skip
PROMQL_FUNCTIONS = {
    "abs", "absent", "absent_over_time", "avg", "avg_over_time", "ceil", "changes",
    "clamp_max", "clamp_min", "count", "count_over_time", "delta", "deriv", "floor",
    "histogram_quantile", "increase", "irate", "label_replace", "max", "max_over_time",
    "min", "min_over_time", "predict_linear", "quantile", "rate", "resets", "round",
    "scalar", "sort", "sum", "sum_over_time", "time", "topk", "bottomk", "vector",
}  # fmt: skip


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def seconds(duration: str) -> float:
    assert duration and DURATION.match(duration), f"not a Prometheus duration: {duration!r}"
    unit = {"y": 365 * 86400, "w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 1e-3}
    return sum(int(n) * unit[u] for n, u in re.findall(r"(\d+)(ms|[ywdhms])", duration))


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    doc = load_yaml(PROM_DIR / "prometheus.yml")
    assert isinstance(doc, dict)
    return doc


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    doc = load_yaml(PROM_DIR / "alerts.yml")
    assert set(doc) == {"groups"}
    out = []
    for group in doc["groups"]:
        assert set(group) <= {"name", "interval", "limit", "rules"}
        out.extend(group["rules"])
    return out


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = load_yaml(ROOT / "docker-compose.yml")
    assert isinstance(doc, dict)
    return doc


def jobs(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {job["job_name"]: job for job in config["scrape_configs"]}


def targets(job: dict[str, Any]) -> list[str]:
    return [t for sc in job.get("static_configs", []) for t in sc["targets"]]


def strip_strings(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)


def balanced(text: str) -> bool:
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for ch in text:
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs:
            if not stack or stack.pop() != pairs[ch]:
                return False
    return not stack


def metric_names(expr: str) -> set[str]:
    """Identifiers in a PromQL expression that are metric names (roughly, but
    enough for our rules): not functions, keywords, labels or durations."""
    text = strip_strings(expr)
    text = re.sub(r"\{[^}]*\}", "{}", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "[]", text)  # range selectors
    text = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", text)  # grouping labels
    names = set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", text))
    return {n for n in names if n not in PROMQL_FUNCTIONS and n.lower() not in PROMQL_WORDS}


# --- prometheus.yml ---------------------------------------------------------------


def test_global_intervals(config: dict[str, Any]) -> None:
    g = config["global"]
    assert seconds(g["scrape_timeout"]) <= seconds(g["scrape_interval"])
    seconds(g["evaluation_interval"])


def test_job_names_are_unique(config: dict[str, Any]) -> None:
    names = [job["job_name"] for job in config["scrape_configs"]]
    assert len(names) == len(set(names))


def test_every_parley_service_is_scraped_on_its_metrics_path(
    config: dict[str, Any], compose: dict[str, Any]
) -> None:
    by_target = {t: job for job in jobs(config).values() for t in targets(job)}
    for service, module in PARLEY.items():
        port = compose["services"][service]["environment"]["PARLEY_PORT"]
        job = by_target.get(f"{service}:{port}")
        assert job is not None, f"{service}:{port} is not scraped"
        assert job["metrics_path"] == f"/{module}/metrics", service
        assert job["job_name"] == module


def test_haproxy_exporter_is_scraped(config: dict[str, Any], compose: dict[str, Any]) -> None:
    cfg = (ROOT / "deploy/haproxy/haproxy.cfg").read_text(encoding="utf-8")
    assert re.search(r"use-service prometheus-exporter if \{ path /metrics \}", cfg)
    stats_port = compose["services"]["haproxy"]["environment"]["STATS_BIND"].rpartition(":")[2]
    job = jobs(config)["haproxy"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert targets(job) == [f"haproxy:{stats_port}"]


def test_targets_are_compose_services(config: dict[str, Any], compose: dict[str, Any]) -> None:
    for job in jobs(config).values():
        for target in targets(job):
            host = target.rpartition(":")[0]
            assert host == "localhost" or host in compose["services"], target


def test_no_target_label_clashes_with_a_metric_label(config: dict[str, Any]) -> None:
    """Our metrics carry `service`, `method`, `route`, `status`: a target label of
    the same name would rename them to exported_*."""
    for job in jobs(config).values():
        for sc in job.get("static_configs", []):
            assert not set(sc.get("labels", {})) & {"service", "method", "route", "status"}


def test_rule_files_exist(config: dict[str, Any], compose: dict[str, Any]) -> None:
    assert config["rule_files"] == ["alerts.yml"]
    mounted = compose["services"]["prometheus"]["volumes"]
    for name in config["rule_files"]:
        assert (PROM_DIR / name).is_file()
        assert f"./deploy/prometheus/{name}:/etc/prometheus/{name}:ro" in mounted


# --- alerts.yml ---------------------------------------------------------------------


def test_alert_rules_are_well_formed(rules: list[dict[str, Any]]) -> None:
    assert rules
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        name = rule["alert"]
        assert set(rule) <= RULE_KEYS, name
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", name), name
        assert isinstance(rule["expr"], str) and rule["expr"].strip(), name
        seconds(rule.get("for", "0s"))
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert rule["annotations"]["summary"].strip(), name
        assert rule["annotations"]["description"].strip(), name


def test_expressions_and_templates_are_balanced(rules: list[dict[str, Any]]) -> None:
    for rule in rules:
        assert balanced(strip_strings(rule["expr"])), rule["alert"]
        for text in rule["annotations"].values():
            assert text.count("{{") == text.count("}}"), rule["alert"]
            for inner in re.findall(r"\{\{(.*?)\}\}", text):
                assert re.fullmatch(r"\s*\$(labels\.\w+|value)(\s*\|\s*\w+)?\s*", inner), inner


def test_the_required_alerts_exist(rules: list[dict[str, Any]]) -> None:
    by_name = {rule["alert"]: rule["expr"] for rule in rules}
    down = by_name["ParleyServiceDown"]
    assert "up{" in down and "== 0" in down
    assert "parley_http_requests_total" in by_name["ParleyHigh5xxRate"]
    assert 'status=~"5.."' in by_name["ParleyHigh5xxRate"]
    p99 = by_name["ParleyHighP99Latency"]
    assert "histogram_quantile(0.99" in p99 and "parley_http_request_duration_seconds_bucket" in p99
    assert "/ws" in p99, "a WebSocket request lasts its whole connection: keep /ws out"


def test_alerts_name_only_metrics_that_exist(rules: list[dict[str, Any]]) -> None:
    source = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "services").rglob("*.py"))
    for rule in rules:
        for name in metric_names(rule["expr"]):
            if name == "up" or name.startswith(("haproxy_", "process_")):
                continue
            base = re.sub(r"_(bucket|sum|count|total|created)$", "", name)
            assert name.startswith("parley_"), f"{rule['alert']}: unknown metric {name}"
            assert f'"{base}' in source, f"{rule['alert']}: no service exports {name}"


def test_job_matchers_name_real_jobs(rules: list[dict[str, Any]], config: dict[str, Any]) -> None:
    known = set(jobs(config))
    for rule in rules:
        for op, value in re.findall(r'\bjob\s*(=~|=)\s*"([^"]*)"', rule["expr"]):
            names = value.split("|") if op == "=~" else [value]
            assert set(names) <= known, f"{rule['alert']}: {value}"


def test_the_availability_alerts_cover_every_service(
    rules: list[dict[str, Any]], config: dict[str, Any]
) -> None:
    """Every Parley service Prometheus scrapes pages when it is down or gone, and every
    HAProxy backend when it has no server up (rooms and the notifier were left out)."""
    by_name = {r["alert"]: r["expr"] for r in rules}

    def matched(alert: str, label: str) -> set[str]:
        (names,) = re.findall(rf'\b{label}=~"([^"]*)"', by_name[alert])
        return set(names.split("|"))

    services = {
        name
        for name, job in jobs(config).items()
        if str(job.get("metrics_path", "")).startswith(f"/{name}/")
    }
    assert {"auth", "keys", "gateway", "delivery", "rooms", "notifier", "web"} <= services
    assert matched("ParleyServiceDown", "job") == services | {"haproxy"}
    assert matched("ParleyServiceAbsent", "job") == services
    cfg = (ROOT / "deploy/haproxy/haproxy.cfg").read_text(encoding="utf-8")
    backends = set(re.findall(r"^backend (\S+)", cfg, re.M))
    assert matched("ParleyLoadBalancerBackendDown", "proxy") == backends


def test_promtool_unit_tests_cover_real_alerts(rules: list[dict[str, Any]]) -> None:
    doc = load_yaml(PROM_DIR / "alerts_test.yml")
    assert doc["rule_files"] == ["alerts.yml"]
    names = {rule["alert"] for rule in rules}
    tested = {t["alertname"] for case in doc["tests"] for t in case["alert_rule_test"]}
    assert tested and tested <= names
    assert {"ParleyServiceDown", "ParleyHigh5xxRate", "ParleyHighP99Latency"} <= tested


# --- Grafana provisioning -----------------------------------------------------------


def test_grafana_datasource_points_at_prometheus(compose: dict[str, Any]) -> None:
    doc = load_yaml(GRAFANA_DIR / "datasources/prometheus.yml")
    assert doc["apiVersion"] == 1
    (ds,) = doc["datasources"]
    assert ds["type"] == "prometheus" and ds["uid"] == "prometheus" and ds["isDefault"]
    assert ds["url"] == "http://prometheus:9090"
    assert "prometheus" in compose["services"]
    assert "secureJsonData" not in ds and "basicAuthPassword" not in ds


def test_grafana_dashboard_provider_reads_the_mounted_folder(compose: dict[str, Any]) -> None:
    doc = load_yaml(GRAFANA_DIR / "dashboards/parley.yml")
    assert doc["apiVersion"] == 1
    (provider,) = doc["providers"]
    assert provider["type"] == "file"
    path = provider["options"]["path"]
    mounts = [v.split(":") for v in compose["services"]["grafana"]["volumes"]]
    assert any(target == path for _source, target, *_ in mounts)
