"""The Terraform's structure, parsed with python-hcl2 and held against the code.

What these tests pin down, each against the source of truth rather than a
copy: the components and their Python modules (services/), the gateway's
connections gauge (services/gateway/hub.py), delivery's consumer group and
topic (services/delivery/worker.py, services/common/clients.py), the ALB's
routes (deploy/haproxy/haproxy.cfg), the ports (docker-compose.yml), what
each component talks to (its own code), which settings are secrets
(services/common/config.py), and that no secret is a variable default or an
output.
"""

from __future__ import annotations

import re
import urllib.parse
from functools import cache
from pathlib import Path
from typing import Any

import hcl2
import pytest
import yaml

from services.common.clients import Topics
from services.common.config import Settings
from services.common.errors import ErrorCode, http_status
from services.common.ratelimit import too_many

ROOT = Path(__file__).resolve().parents[2]
TF = ROOT / "deploy" / "terraform"
STACK = TF / "stack"
MODULES = TF / "modules"
SERVICES = ROOT / "services"

OPTS = hcl2.SerializationOptions(with_comments=False, strip_string_quotes=True)


# --- loading -------------------------------------------------------------------


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if k != "__is_block__"}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


@cache
def load(directory: Path) -> dict[str, Any]:
    """Every block of a Terraform directory, merged: resource[type][name], variable[name], ..."""
    merged: dict[str, Any] = {
        "resource": {},
        "data": {},
        "variable": {},
        "output": {},
        "locals": {},
        "module": {},
    }
    for path in sorted(directory.glob("*.tf")):
        doc = _clean(hcl2.loads(path.read_text(encoding="utf-8"), serialization_options=OPTS))
        for kind in ("resource", "data"):
            for block in doc.get(kind, []):
                for rtype, named in block.items():
                    merged[kind].setdefault(rtype, {}).update(named)
        for kind in ("variable", "output", "module"):
            for block in doc.get(kind, []):
                merged[kind].update(block)
        for block in doc.get("locals", []):
            merged["locals"].update(block)
    return merged


def roots() -> list[Path]:
    return [p.parent for p in TF.rglob("*.tf") if ".terraform" not in p.parts]


def resolve(expr: Any, local: dict[str, Any]) -> Any:
    """Substitute `${local.x}` in a string with the local's literal value."""
    if not isinstance(expr, str):
        return expr
    whole = re.fullmatch(r"\$\{local\.(\w+)\}", expr)
    if whole:
        return local[whole.group(1)]
    return re.sub(r"\$\{local\.(\w+)\}", lambda m: str(local[m.group(1)]), expr)


def stack() -> dict[str, Any]:
    return load(STACK)


def service_module() -> dict[str, Any]:
    return load(MODULES / "ecs_service")


def components() -> dict[str, dict[str, Any]]:
    local = stack()["locals"]
    out = {}
    for name, c in local["components"].items():
        out[name] = {k: resolve(v, local) for k, v in c.items()}
        for key in ("published_metrics",):
            out[name][key] = [resolve(v, local) for v in c[key]]
    return out


def enabled() -> dict[str, dict[str, Any]]:
    return {k: v for k, v in components().items() if v["enabled"] is True}


# --- facts read from the code ---------------------------------------------------------


def gateway_connections_metric() -> str:
    src = (SERVICES / "gateway" / "hub.py").read_text(encoding="utf-8")
    m = re.search(r"self\.connections\s*=\s*Gauge\(\s*\"([a-z_:]+)\"", src)
    assert m, "the gateway's connections gauge moved: update this test"
    return m.group(1)


def haproxy_routes() -> tuple[dict[str, set[str]], str]:
    """backend -> ALB path patterns, from the `public` frontend's ACLs; and the default."""
    cfg = (ROOT / "deploy" / "haproxy" / "haproxy.cfg").read_text(encoding="utf-8")
    frontend = cfg.split("frontend public", 1)[1].split("\nbackend ", 1)[0]
    acls: dict[str, set[str]] = {}
    for name, kind, values in re.findall(
        r"^\s*acl\s+(\S+)\s+(path|path_beg)\s+(.+)$", frontend, re.M
    ):
        patterns = set()
        for v in values.split():
            if kind == "path":
                patterns.add(v)
            else:
                assert v.endswith("/"), f"path_beg {v}: expected a prefix ending in /"
                patterns.add(v + "*")
        acls.setdefault(name, set()).update(patterns)  # lines of one name are OR-ed
    routes: dict[str, set[str]] = {}
    for backend, cond in re.findall(r"^\s*use_backend\s+(\S+)\s+if\s+(.+)$", frontend, re.M):
        for acl in re.split(r"\s+or\s+|\s*\|\|\s*", cond.strip()):
            routes.setdefault(backend, set()).update(acls[acl.strip()])
    default = re.search(r"^\s*default_backend\s+(\S+)", frontend, re.M)
    assert default and routes
    return routes, default.group(1)


def package_source(name: str) -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted((SERVICES / name).glob("*.py")))


def code_uses(name: str) -> set[str]:
    src = package_source(name)
    uses = set()
    if "use_mongo(" in src:
        uses.add("mongo")
    if "use_redis(" in src:
        uses.add("redis")
    if "use_kafka_producer(" in src or "kafka_consumer(" in src or "consume_forever(" in src:
        uses.add("kafka")
    if "smtp_host" in src:
        uses.add("smtp")
    if "key_encryption_secret" in src:
        uses.add("key_encryption_secret")
    if "franking_key" in src:
        uses.add("franking_key")
    return uses


def code_calls(name: str) -> set[str]:
    src = package_source(name)
    calls = set()
    if "use_token_verifier(" in src or "auth_url" in src:
        calls.add("auth")
    if "keys_url" in src or "DeviceLists(" in src:  # services/common/devices.py
        calls.add("keys")
    if "delivery_url" in src:
        calls.add("delivery")
    if "rooms_url" in src:
        calls.add("rooms")
    calls.discard(name)  # auth verifies its own tokens in-process
    return calls


# --- components and the image ---------------------------------------------------------

FIELDS = {
    "enabled", "module", "port", "paths", "priority", "uses", "calls", "scaling", "cpu",
    "memory", "min", "max", "stop_timeout", "unique_id_env", "unique_id_prefix",
    "published_metrics", "consumer_group", "topic",
}  # fmt: skip


def test_the_component_map_names_every_component_of_the_mission() -> None:
    comps = components()
    assert set(comps) >= {"auth", "keys", "rooms", "gateway", "delivery", "notifier"}
    for name, c in comps.items():
        assert set(c) == FIELDS, f"{name}: {set(c) ^ FIELDS}"
        assert c["module"] == f"services.{name}"
        assert c["scaling"] in {"http", "connections", "kafka_lag"}
        assert 1 <= c["min"] <= c["max"]
    ports = [c["port"] for c in comps.values()]
    assert len(ports) == len(set(ports)), "two components share a port"


def module_exists(module: str) -> bool:
    """`python -m <module>` works: a package with a __main__ under the repo root."""
    return (ROOT.joinpath(*module.split(".")) / "__main__.py").is_file()


def test_task_commands_run_modules_that_exist_in_the_image() -> None:
    # The Dockerfile copies services/ and installs the package; every enabled
    # component's `python -m services.<name>` must be there.
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert "COPY services ./services" in dockerfile
    for name, c in components().items():
        if c["enabled"]:
            assert module_exists(c["module"]), f"{c['module']} has no __main__"
        else:
            # Disabled only while its code has not landed: enable it when it does.
            assert not module_exists(c["module"]), (
                f"{c['module']} exists now: set enabled = true for {name} in "
                "deploy/terraform/stack/components.tf (and give haproxy.cfg its route)"
            )
    cmd = service_module()["locals"]["command"]
    assert '["python", "-m", var.module]' in cmd
    assert "runpy.run_module('${var.module}', run_name='__main__'" in cmd


def test_every_component_gets_task_definition_service_log_group_and_own_roles() -> None:
    svc = stack()["module"]["service"]
    assert svc["source"] == "../modules/ecs_service"
    assert svc["for_each"] == "${local.enabled}"
    assert svc["module"] == "${each.value.module}"
    assert stack()["locals"]["enabled"].startswith("${{for name, c in local.components")

    res = service_module()["resource"]
    assert set(res["aws_ecs_task_definition"]) == {"this"}
    assert set(res["aws_ecs_service"]) == {"this"}
    assert "app" in res["aws_cloudwatch_log_group"]
    assert "${var.name}" in res["aws_cloudwatch_log_group"]["app"]["name"]
    roles = res["aws_iam_role"]
    assert set(roles) == {"execution", "task"}
    for role in roles.values():
        assert "${local.full_name}" in role["name"]  # one role per component
    td = res["aws_ecs_task_definition"]["this"]
    assert td["execution_role_arn"] == "${aws_iam_role.execution.arn}"
    assert td["task_role_arn"] == "${aws_iam_role.task.arn}"
    assert td["requires_compatibilities"] == ["FARGATE"]
    app = service_module()["locals"]["app_container"]
    assert app["readonlyRootFilesystem"] is True
    assert app["user"] == "10001:10001"  # the Dockerfile's unprivileged user
    assert "USER 10001:10001" in (ROOT / "Dockerfile").read_text(encoding="utf-8")


def test_roles_are_least_privilege() -> None:
    data = service_module()["data"]["aws_iam_policy_document"]
    for doc_name, doc in data.items():
        for st in doc.get("statement", []):
            actions = st.get("actions", [])
            assert all("*" not in a for a in actions), (doc_name, actions)
            if st.get("resources") == ["*"]:
                assert actions == ["ecr:GetAuthorizationToken"], (doc_name, st)
    execution = {st["sid"]: st for st in data["execution"]["statement"]}
    assert execution["PullTheImage"]["resources"] == ["${var.ecr_repository_arn}"]
    assert execution["WriteOwnLogs"]["resources"] == ["${aws_cloudwatch_log_group.app.arn}:*"]
    dynamic = {d["statement"]["content"][0]["sid"]: d["statement"]["content"][0]
               for d in data["execution"]["dynamic"]}  # fmt: skip
    assert dynamic["ReadOwnSecrets"]["actions"] == ["secretsmanager:GetSecretValue"]
    assert dynamic["ReadOwnSecrets"]["resources"] == "${var.secret_arns}"
    assert dynamic["DecryptOwnSecrets"]["actions"] == ["kms:Decrypt"]
    assert dynamic["DecryptOwnSecrets"]["condition"][0]["variable"] == "kms:ViaService"
    # The task role gets nothing but the metrics sidecar's log group.
    policies = service_module()["resource"]["aws_iam_role_policy"]
    assert policies["task_metrics"]["role"] == "${aws_iam_role.task.id}"
    assert policies["task_metrics"]["count"] == "${local.publishes_metrics ? 1 : 0}"
    assert [k for k, p in policies.items() if "aws_iam_role.task" in p["role"]] == ["task_metrics"]
    # A component reads only the secrets its `uses` call for.
    secrets_arg = stack()["module"]["service"]["secret_env_arns"]
    assert "contains(local.needs[each.key], s.needs)" in secrets_arg


def test_components_open_only_what_their_code_uses() -> None:
    for name, c in enabled().items():
        assert set(c["uses"]) == code_uses(name), name
        assert set(c["calls"]) == code_calls(name), name
    rules = stack()["resource"]
    assert rules["aws_security_group"]["component"]["for_each"] == "${local.enabled}"
    assert "from_alb" in rules["aws_vpc_security_group_ingress_rule"]
    assert "store" in rules["aws_vpc_security_group_ingress_rule"]
    egress = rules["aws_vpc_security_group_egress_rule"]
    assert egress["https"]["from_port"] == egress["https"]["to_port"] == 443
    for rule in egress.values():
        assert rule.get("ip_protocol") != "-1", "no all-protocol egress"


def test_ports_match_docker_compose() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    for name, c in enabled().items():
        service = compose["services"].get(name) or compose["services"][f"{name}1"]
        assert int(service["environment"]["PARLEY_PORT"]) == c["port"], name
        assert service["command"] == ["python", "-m", c["module"]]


# --- health, routing, draining -----------------------------------------------------------


def test_health_checks_use_the_services_own_endpoints() -> None:
    app_src = (SERVICES / "common" / "app.py").read_text(encoding="utf-8")
    assert 'f"{prefix}/healthz"' in app_src and 'f"{prefix}/readyz"' in app_src
    app = service_module()["locals"]["app_container"]
    assert "${local.health_url}" in app["healthCheck"]["command"][-1]
    assert service_module()["locals"]["health_url"].endswith("/${var.name}/healthz")
    routes = stack()["module"]["alb"]["routes"]
    # Started once, not readiness (a shared dependency's outage must not make ECS replace
    # every task) nor bare liveness (a release whose start-up never ends must not ship):
    # docs/deployment.md.
    assert "/${name}/startedz" in routes and "/${name}/readyz" not in routes
    assert 'f"{prefix}/startedz"' in app_src
    tg = load(MODULES / "alb")["resource"]["aws_lb_target_group"]["this"]
    assert tg["health_check"][0]["path"] == "${each.value.health_path}"
    assert tg["stickiness"][0]["enabled"] is False


def test_alb_routes_are_haproxys() -> None:
    routes, default = haproxy_routes()
    # The browser apps (HAProxy's `web` backend locally) are S3 + CloudFront in
    # production, not an ALB target (docs/admin.md): the chat client at / with its
    # hashed files under /assets/ (#16), the admin console under /admin/. The
    # default stays auth, as the ALB's default component.
    web = routes.pop("web")
    assert web == {"/", "/index.html", "/config.json", "/assets/*", "/admin", "/admin/*", "/web/*"}
    alb: dict[str, set[str]] = {n: set(c["paths"]) for n, c in enabled().items() if c["paths"]}
    assert alb == routes
    assert stack()["locals"]["default_component"] == default
    mod = load(MODULES / "alb")["resource"]
    https = mod["aws_lb_listener"]["https"]
    assert https["protocol"] == "HTTPS"
    assert https["default_action"][0]["target_group_arn"] == (
        "${aws_lb_target_group.this[var.default_route].arn}"
    )
    rule = mod["aws_lb_listener_rule"]["this"]
    assert rule["condition"][0]["path_pattern"][0]["values"] == "${each.value.paths}"
    assert rule["action"][0]["type"] == "forward"
    assert mod["aws_lb_listener"]["http"]["default_action"][0]["type"] == "redirect"
    # Rules are evaluated by priority: unique per enabled component.
    prios = [c["priority"] for c in enabled().values() if c["paths"]]
    assert len(prios) == len(set(prios))
    # /metrics and /readyz are refused before any forwarding rule (#20), as
    # HAProxy's public frontend does.
    internal = mod["aws_lb_listener_rule"]["internal_only"]
    assert internal["priority"] < min(prios)
    assert internal["action"][0]["type"] == "fixed-response"
    assert internal["action"][0]["fixed_response"][0]["status_code"] == "404"
    assert set(internal["condition"][0]["path_pattern"][0]["values"]) >= {
        "/*/metrics", "/*/readyz"
    }  # fmt: skip


def test_gateway_drains_before_it_is_killed() -> None:
    app_src = (SERVICES / "common" / "app.py").read_text(encoding="utf-8")
    m = re.search(r"shutdown_timeout=(\d+)", app_src)
    assert m
    gw = enabled()["gateway"]
    assert int(m.group(1)) < gw["stop_timeout"] <= 120  # Fargate's ceiling
    var = load(STACK)["variable"]["gateway_deregistration_delay"]
    assert 0 < var["default"] <= 300
    assert gw["unique_id_env"] == "PARLEY_GATEWAY_ID"  # one Redis channel per task
    assert "gateway_id" in Settings.model_fields
    lb = load(MODULES / "alb")["resource"]["aws_lb"]["this"]
    assert lb["idle_timeout"] == "${var.idle_timeout}"
    idle = load(MODULES / "alb")["variable"]["idle_timeout"]["default"]
    assert idle > Settings().ws_heartbeat_s * 2


# --- autoscaling ------------------------------------------------------------------------


def test_gateway_scales_on_the_connections_metric_it_really_publishes() -> None:
    metric = gateway_connections_metric()
    assert stack()["locals"]["gateway_connections_metric"] == metric
    gw = enabled()["gateway"]
    assert gw["scaling"] == "connections"
    assert gw["published_metrics"] == [metric]  # the sidecar publishes it
    call = stack()["module"]["service"]
    assert call["published_metrics"] == "${each.value.published_metrics}"
    assert call["scaling"]["connections_metric"] == "${local.gateway_connections_metric}"
    pol = service_module()["resource"]["aws_appautoscaling_policy"]["connections"]
    assert pol["policy_type"] == "TargetTrackingScaling"
    assert pol["count"] == '${var.scaling.kind == "connections" ? 1 : 0}'
    spec = pol["target_tracking_scaling_policy_configuration"][0][
        "customized_metric_specification"
    ][0]
    assert spec["metric_name"] == "${var.scaling.connections_metric}"
    assert spec["namespace"] == "${var.metrics_namespace}"
    assert spec["statistic"] == "Average"
    dims = {d["name"]: d["value"] for d in spec["dimensions"]}
    assert dims == {"ClusterName": "${var.cluster_name}", "ServiceName": "${local.full_name}"}
    # The agent labels and selects exactly those.
    agent = service_module()["locals"]["agent_config"]
    decl = agent["logs"]["metrics_collected"]["prometheus"]["emf_processor"]
    selector = decl["metric_declaration"][0]
    assert selector["dimensions"] == [["ClusterName", "ServiceName"]]
    assert "var.published_metrics" in selector["metric_selectors"]
    prom = service_module()["locals"]["prometheus_config"]["scrape_configs"][0]
    assert prom["metrics_path"] == "/${var.name}/metrics"
    assert prom["static_configs"][0]["labels"] == {
        "ClusterName": "${var.cluster_name}",
        "ServiceName": "${local.full_name}",
    }


def test_delivery_scales_on_its_consumer_group_lag() -> None:
    worker = (SERVICES / "delivery" / "worker.py").read_text(encoding="utf-8")
    m = re.search(r'self\.group = f"\{settings\.topic_prefix\}(\w+)"', worker)
    assert m, "delivery's consumer group moved: update this test"
    prefix = Settings().topic_prefix
    assert stack()["locals"]["topic_prefix"] == prefix
    delivery = enabled()["delivery"]
    assert delivery["scaling"] == "kafka_lag"
    assert delivery["consumer_group"] == prefix + m.group(1)
    assert delivery["topic"] == Topics(Settings()).messages
    pol = service_module()["resource"]["aws_appautoscaling_policy"]["kafka_lag"]
    metrics = pol["target_tracking_scaling_policy_configuration"][0][
        "customized_metric_specification"
    ][0]["metrics"]
    lag = next(x for x in metrics if x["id"] == "lag")["metric_stat"][0]["metric"][0]
    assert (lag["namespace"], lag["metric_name"]) == ("AWS/Kafka", "SumOffsetLag")
    dims = {d["name"]: d["value"] for d in lag["dimensions"]}
    assert dims["Consumer Group"] == "${var.scaling.consumer_group}"
    assert dims["Topic"] == "${var.scaling.topic}"
    assert any(x.get("return_data") is True and "lag /" in x.get("expression", "") for x in metrics)


def test_http_components_scale_on_cpu_and_requests() -> None:
    res = service_module()["resource"]["aws_appautoscaling_policy"]
    cpu = res["cpu"]["target_tracking_scaling_policy_configuration"][0]
    assert cpu["predefined_metric_specification"][0]["predefined_metric_type"] == (
        "ECSServiceAverageCPUUtilization"
    )
    req = res["requests"]
    assert req["count"].startswith('${var.scaling.kind == "http"')
    spec = req["target_tracking_scaling_policy_configuration"][0]["predefined_metric_specification"]
    assert spec[0]["predefined_metric_type"] == "ALBRequestCountPerTarget"


def test_kafka_init_creates_the_topics_the_services_use() -> None:
    src = (STACK / "kafka_init.py").read_text(encoding="utf-8")
    compile(src, "kafka_init.py", "exec")
    m = re.search(r"TOPICS = \(([^)]*)\)", src)
    assert m
    names = {
        Settings().topic_prefix + t.strip().strip("\"'") for t in m.group(1).split(",") if t.strip()
    }
    assert names == set(Topics(Settings()).all())


# --- secrets --------------------------------------------------------------------------------

SECRET_WORDS = re.compile(r"password|passwd|secret|token|credential|private_key|api_key", re.I)
NOT_A_VALUE = re.compile(r"_(arn|arns|id|ids|days|recovery_days)$")


def all_tf_blocks() -> list[tuple[Path, dict[str, Any]]]:
    return [(d, load(d)) for d in sorted(set(roots()))]


def test_no_secret_is_a_variable_or_a_variable_default() -> None:
    checked = 0
    for directory, doc in all_tf_blocks():
        for name, var in doc["variable"].items():
            checked += 1
            where = f"{directory.relative_to(ROOT)}: variable {name!r}"
            if SECRET_WORDS.search(name) and not NOT_A_VALUE.search(name):
                # A secret-like input: never a default, always sensitive.
                assert "default" not in var, f"{where} is secret-like and has a default"
                assert var.get("sensitive") is True, f"{where} is secret-like, not sensitive"
            default = var.get("default")
            if isinstance(default, str):
                assert not re.search(r"AKIA[0-9A-Z]{16}|-----BEGIN", default), name
    assert checked > 50


def test_no_output_carries_a_secret() -> None:
    leaky = re.compile(r"random_password|secret_string|auth_token|master_password|\.result\b")
    checked = 0
    for directory, doc in all_tf_blocks():
        for name, out in doc["output"].items():
            checked += 1
            value = str(out["value"])
            if leaky.search(value) or re.search(r"password|token", name):
                assert out.get("sensitive") is True, f"{directory}: output {name} leaks a secret"
    assert checked > 20


def test_secret_settings_reach_tasks_only_as_secrets() -> None:
    local = stack()["locals"]
    plain = set(local["common_environment"])
    catalog = set(local["secret_catalog"])
    secret_fields = {
        f"PARLEY_{name.upper()}"
        for name, field in Settings.model_fields.items()
        if "SecretStr" in str(field.annotation)
    }
    assert secret_fields == {
        "PARLEY_KEY_ENCRYPTION_SECRET",
        "PARLEY_SMTP_PASSWORD",
        "PARLEY_FRANKING_KEY",
        "PARLEY_FRANKING_RETIRED_KEYS",
        "PARLEY_KAFKA_SASL_PASSWORD",
    }
    # Connection strings carry credentials too, and so does the SASL user name
    # (kept beside its password).
    must_be_secret = secret_fields | {"PARLEY_MONGO_URL", "PARLEY_REDIS_URL"}
    assert must_be_secret <= catalog
    assert not plain & (must_be_secret | catalog)
    # Every PARLEY_* variable a task gets is a real setting (the Kafka security
    # ones too: the services read them, tests/embedded/test_kafka_sasl.py).
    known = {f"PARLEY_{n.upper()}" for n in Settings.model_fields}
    assert plain <= known
    assert catalog <= known
    assert {"PARLEY_KAFKA_SECURITY_PROTOCOL", "PARLEY_KAFKA_SASL_MECHANISM"} <= plain


# --- state, network ------------------------------------------------------------------------


@pytest.mark.parametrize("env", ["staging", "prod"])
def test_environments_keep_state_in_s3_with_locking(env: str) -> None:
    text = (TF / "envs" / env / "backend.tf").read_text(encoding="utf-8")
    doc = _clean(hcl2.loads(text, serialization_options=OPTS))
    (s3,) = [b["s3"] for b in doc["terraform"][0]["backend"]]
    assert s3["key"] == f"{env}/terraform.tfstate"
    assert s3["encrypt"] is True
    assert s3.get("use_lockfile") is True or "dynamodb_table" in s3
    main = load(TF / "envs" / env)["module"]["stack"]
    assert main["source"] == "../../stack"
    assert main["environment"] == env


def test_network_keeps_everything_but_the_alb_private() -> None:
    net = load(MODULES / "network")
    assert "length(var.availability_zones) >= 2" in str(net["variable"]["availability_zones"])
    assert net["resource"]["aws_subnet"]["public"]["map_public_ip_on_launch"] is False
    svc = service_module()["resource"]["aws_ecs_service"]["this"]
    netcfg = svc["network_configuration"][0]
    assert netcfg["assign_public_ip"] is False
    assert stack()["module"]["service"]["subnet_ids"] == "${module.network.private_subnet_ids}"
    assert stack()["module"]["alb"]["public_subnet_ids"] == "${module.network.public_subnet_ids}"
    for store in ("kafka", "redis", "documentdb"):
        assert stack()["module"][store]["subnet_ids"] == "${module.network.private_subnet_ids}"
    assert svc["deployment_circuit_breaker"][0] == {"enable": True, "rollback": True}


def test_the_wafs_rate_limit_answers_as_the_services_do() -> None:
    """The per-address rule's block is the services' 429 ``rate_limited`` (their error
    body, ``details.retry_after`` included), with Retry-After and, for the web apps on
    CloudFront's domain, the CORS headers naming it (Retry-After exposed): a browser
    there reads the answer instead of a network error. Preflights are counted by a
    rule of their own: a blocked preflight is a network error whatever it answers."""
    acl = load(MODULES / "alb")["resource"]["aws_wafv2_web_acl"]["this"]
    [body] = [b for b in acl["custom_response_body"] if b["key"] == "rate-limited"]
    window = 300
    expected = too_many(window).body()["error"]
    assert body["content_type"] == "APPLICATION_JSON"
    assert body["content"].startswith("${jsonencode({error = {")
    assert f'code = "{expected["code"]}"' in body["content"]
    assert f"details = {{retry_after = {expected['details']['retry_after']}}}" in body["content"]
    rules = {r["name"]: r for r in acl["rule"]}
    rate = rules["rate-per-ip"]["statement"][0]["rate_based_statement"][0]
    assert (rate["aggregate_key_type"], rate["evaluation_window_sec"]) == ("IP", window)
    [answer] = rules["rate-per-ip"]["action"][0]["block"][0]["custom_response"]
    assert answer["response_code"] == http_status(ErrorCode.RATE_LIMITED) == 429
    assert answer["custom_response_body_key"] == body["key"]
    assert answer["response_header"] == [{"name": "Retry-After", "value": str(window)}]
    [cors] = [d["response_header"] for d in answer["dynamic"]]
    assert cors["content"] == [
        {"name": "${response_header.key}", "value": "${response_header.value}"}
    ]
    assert '"Access-Control-Allow-Origin" = var.cors_origin' in cors["for_each"]
    assert '"Access-Control-Expose-Headers" = "Retry-After"' in cors["for_each"]
    # OPTIONS: out of this rule, into one of its own at the same limit.
    options = {"search_string": "OPTIONS", "positional_constraint": "EXACTLY",
               "field_to_match": [{"method": [{}]}],
               "text_transformation": [{"priority": 0, "type": "NONE"}]}  # fmt: skip
    [scope] = rate["scope_down_statement"]
    assert scope["not_statement"][0]["statement"][0]["byte_match_statement"] == [options]
    pre = rules["preflights-per-ip"]["statement"][0]["rate_based_statement"][0]
    assert pre["limit"] == rate["limit"] and pre["evaluation_window_sec"] == window
    assert pre["scope_down_statement"][0]["byte_match_statement"] == [options]
    # The stack names the origin the services allow (PARLEY_CORS_ORIGINS), lower-cased.
    assert stack()["module"]["alb"]["cors_origin"] == "${lower(module.static_site.url)}"


def waf_rules() -> dict[str, dict[str, Any]]:
    acl = load(MODULES / "alb")["resource"]["aws_wafv2_web_acl"]["this"]
    return {r["name"]: r for r in acl["rule"]}


def overrides(rule: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The rule_action_override blocks of a managed-rule-group rule, by the local they iterate."""
    group = rule["statement"][0]["managed_rule_group_statement"][0]
    assert "rule_action_override" not in group, "overrides come from the locals, not one by one"
    out = {}
    for d in group["dynamic"]:
        o = d["rule_action_override"]
        assert o["content"][0]["name"] == "${rule_action_override.value}"
        out[o["for_each"]] = o["content"][0]["action_to_use"][0]
    return out


def test_the_waf_counts_the_common_rules_on_message_bodies() -> None:
    """Public-room messages are text people type: `<script>`, `../`, a URL with an IP
    address. AWSManagedRulesCommonRuleSet's *_BODY rules blocked them; they count now,
    and its rules on the URI, query string, headers and cookies still block."""
    local = load(MODULES / "alb")["locals"]
    body = local["common_body_rules"]
    assert set(body) == {
        "SizeRestrictions_BODY", "CrossSiteScripting_BODY", "GenericLFI_BODY",
        "GenericRFI_BODY", "EC2MetaDataSSRF_BODY",
    }  # fmt: skip
    common = overrides(waf_rules()["aws-common"])
    assert common["${local.common_body_rules}"] == {"count": [{}]}
    blocking = local["managed_blocking_rules"]["aws-common"]
    assert blocking and not any(r.endswith("_BODY") for r in blocking)
    assert {"CrossSiteScripting_QUERYARGUMENTS", "GenericLFI_URIPATH"} <= set(blocking)
    assert waf_rules()["aws-common"]["override_action"] == [{"none": [{}]}]


def test_the_managed_rules_blocks_carry_the_error_shape_and_the_cors_header() -> None:
    """A managed rule's own 403 has no CORS header: the web apps (another origin) saw a
    network error. Each blocking managed rule is overridden to a block whose custom
    response is the services' 403 `forbidden` with the header the rate limit sends."""
    acl = load(MODULES / "alb")["resource"]["aws_wafv2_web_acl"]["this"]
    bodies = {b["key"]: b for b in acl["custom_response_body"]}
    assert f'code = "{ErrorCode.FORBIDDEN.value}"' in bodies["forbidden"]["content"]
    assert http_status(ErrorCode.FORBIDDEN) == 403
    local = load(MODULES / "alb")["locals"]
    assert local["waf_cors_headers"] == (
        '${var.cors_origin == "" ? {} : {"Access-Control-Allow-Origin" = var.cors_origin}}'
    )
    groups = {
        "aws-common": "AWSManagedRulesCommonRuleSet",
        "aws-known-bad-inputs": "AWSManagedRulesKnownBadInputsRuleSet",
        "aws-ip-reputation": "AWSManagedRulesAmazonIpReputationList",
    }
    assert set(local["managed_blocking_rules"]) == set(groups)
    for name, group in groups.items():
        rule = waf_rules()[name]
        assert rule["statement"][0]["managed_rule_group_statement"][0]["name"] == group
        action = overrides(rule)[f'${{local.managed_blocking_rules["{name}"]}}']
        [answer] = action["block"][0]["custom_response"]
        assert answer["response_code"] == 403
        assert answer["custom_response_body_key"] == "forbidden"
        [cors] = [d["response_header"] for d in answer["dynamic"]]
        assert cors["for_each"] == "${local.waf_cors_headers}"
        assert cors["content"] == [
            {"name": "${response_header.key}", "value": "${response_header.value}"}
        ]
    assert "Log4JRCE_BODY" in local["managed_blocking_rules"]["aws-known-bad-inputs"]


def test_the_waf_refuses_percent_encoded_operators_paths() -> None:
    """The ALB's internal_only rule matches the path as sent, so `/auth/%6detrics`
    passed it and aiohttp routed it to /auth/metrics. A WAF rule refuses any path
    that ends in /metrics or /readyz once URL-decoded and lower-cased, before the
    managed rules, with the ALB's 404."""
    rules = waf_rules()
    rule = rules["internal-paths"]
    assert rule["priority"] < min(r["priority"] for n, r in rules.items() if n != "internal-paths")
    [answer] = rule["action"][0]["block"][0]["custom_response"]
    assert answer["response_code"] == 404
    acl = load(MODULES / "alb")["resource"]["aws_wafv2_web_acl"]["this"]
    bodies = {b["key"]: b["content"] for b in acl["custom_response_body"]}
    assert 'code = "not_found"' in bodies[answer["custom_response_body_key"]]
    [match] = rule["statement"][0]["regex_match_statement"]
    assert match["field_to_match"] == [{"uri_path": [{}]}]
    transforms = sorted(match["text_transformation"], key=lambda t: t["priority"])
    assert [t["type"] for t in transforms] == ["URL_DECODE", "LOWERCASE"]
    waf = re.compile(match["regex_string"])

    def refused(path: str) -> bool:
        return bool(waf.search(urllib.parse.unquote(path).lower()))

    for path in ("/auth/metrics", "/auth/%6detrics", "/keys/%72eadyz", "/gateway/METRICS/",
                 "/rooms/readyz//", "/delivery/%6D%65%74%72%69%63%73", "/auth%2fmetrics"):  # fmt: skip
        assert refused(path), path
    for path in ("/auth/healthz", "/auth/v1/login", "/rooms/v1/rooms/r1/messages",
                 "/auth/metricsx", "/keys/readyz.json", "/ws",
                 "/auth/v1/users/metrics", "/keys/v1/users/u1/readyz"):  # fmt: skip
        assert not refused(path), path


def test_documentdb_final_snapshots_do_not_collide() -> None:
    """A fixed final snapshot name made a second `terraform destroy` fail: the name is
    stamped with the creation time and kept (ignore_changes) until that destroy."""
    cluster = load(MODULES / "documentdb")["resource"]["aws_docdb_cluster"]["this"]
    assert cluster["skip_final_snapshot"] is False
    assert "timestamp()" in cluster["final_snapshot_identifier"]
    assert cluster["final_snapshot_identifier"].startswith("${var.name}-final-")
    assert "final_snapshot_identifier" in cluster["lifecycle"][0]["ignore_changes"]


def test_staging_sizes_every_component() -> None:
    """Staging says "one task of each component": every enabled component is sized
    there (rooms defaulted to two tasks), one task each but the two gateways."""
    text = (TF / "envs" / "staging" / "terraform.tfvars").read_text(encoding="utf-8")
    sizes = _clean(hcl2.loads(text, serialization_options=OPTS))["sizes"]
    assert set(sizes) == set(enabled())
    for name, size in sizes.items():
        assert size["min"] == (2 if name == "gateway" else 1), name


# --- metrics on AWS -------------------------------------------------------------------


def test_managed_prometheus_evaluates_the_alert_rules_of_compose() -> None:
    mon = load(MODULES / "monitoring")
    call = stack()["module"]["monitoring"]
    assert call["source"] == "../modules/monitoring"
    assert call["count"] == "${var.managed_prometheus ? 1 : 0}"
    assert load(STACK)["variable"]["managed_prometheus"]["default"] is True
    # The rule file the workspace gets is deploy/prometheus/alerts.yml, the very one.
    m = re.fullmatch(r'\$\{file\("\$\{path\.module\}/([^"]+)"\)\}', call["rules"])
    assert m and (STACK / m.group(1)).resolve() == ROOT / "deploy/prometheus/alerts.yml"
    ns = mon["resource"]["aws_prometheus_rule_group_namespace"]["alerts"]
    assert ns["data"] == "${var.rules}"
    assert ns["workspace_id"] == "${aws_prometheus_workspace.this.id}"
    assert mon["resource"]["aws_prometheus_workspace"]["this"]["kms_key_arn"] == (
        "${var.kms_key_arn}"
    )


def test_the_collector_scrapes_every_component_as_a_job_of_its_own() -> None:
    """One Prometheus job per enabled component, named and pathed as in
    deploy/prometheus/prometheus.yml (alerts.yml matches on those job names), from
    the tasks ECS runs; written to the workspace with SigV4."""
    call = stack()["module"]["monitoring"]
    assert call["targets"] == (
        "${{for name, c in local.enabled : name => "
        "{service_name = module.service[name].service_name, port = c.port}}}"
    )
    compose = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    paths = {j["job_name"]: j.get("metrics_path") for j in compose["scrape_configs"]}
    for name in enabled():
        assert paths[name] == f"/{name}/metrics", name  # what "/${name}/metrics" gives
    mon = load(MODULES / "monitoring")
    cfg = mon["locals"]["collector_config"]
    observer = cfg["extensions"]["ecs_observer"]
    assert observer["cluster_name"] == "${var.cluster_name}"
    assert observer["job_label_name"] == "prometheus_job"
    assert 'name_pattern = "^${t.service_name}$"' in observer["services"]
    assert 'metrics_path = "/${name}/metrics"' in observer["services"]
    assert "job_name = name" in observer["services"]
    scrape = cfg["receivers"]["prometheus"]["config"]["scrape_configs"]
    assert scrape.startswith("${[for name, t in var.targets : {job_name = name,")
    assert 'regex = name, action = "keep"' in scrape
    assert observer["result_file"] == "${local.targets_file}"
    assert "files = [local.targets_file]" in scrape
    writer = cfg["exporters"]["prometheusremotewrite"]
    assert writer["endpoint"] == (
        "${aws_prometheus_workspace.this.prometheus_endpoint}api/v1/remote_write"
    )
    assert writer["auth"] == {"authenticator": "sigv4auth"}
    assert cfg["service"]["pipelines"]["metrics"]["exporters"] == ["prometheusremotewrite"]
    assert set(cfg["service"]["extensions"]) >= {"sigv4auth", "ecs_observer"}
    # Read-only root file system: the targets file is on a task volume.
    task = mon["resource"]["aws_ecs_task_definition"]["collector"]
    assert task["volume"] == [{"name": "targets"}]
    svc = mon["resource"]["aws_ecs_service"]["collector"]
    assert svc["desired_count"] == 1
    assert svc["network_configuration"][0]["assign_public_ip"] is False
    assert call["subnet_ids"] == "${module.network.private_subnet_ids}"


def test_the_collector_reaches_every_component_on_its_port_only() -> None:
    rules = stack()["resource"]
    assert stack()["locals"]["scraped"] == "${var.managed_prometheus ? local.enabled : {}}"
    ingress = rules["aws_vpc_security_group_ingress_rule"]["metrics"]
    egress = rules["aws_vpc_security_group_egress_rule"]["metrics"]
    for rule in (ingress, egress):
        assert rule["for_each"] == "${local.scraped}"
        assert rule["from_port"] == rule["to_port"] == "${each.value.port}"
        assert rule["ip_protocol"] == "tcp"
    assert ingress["security_group_id"] == "${aws_security_group.component[each.key].id}"
    assert ingress["referenced_security_group_id"] == "${module.monitoring[0].security_group_id}"
    assert egress["security_group_id"] == "${module.monitoring[0].security_group_id}"
    assert egress["referenced_security_group_id"] == (
        "${aws_security_group.component[each.key].id}"
    )


def test_the_collectors_roles_are_least_privilege() -> None:
    mon = load(MODULES / "monitoring")
    task = {st["sid"]: st for st in mon["data"]["aws_iam_policy_document"]["task"]["statement"]}
    assert task["WriteTheWorkspace"]["actions"] == ["aps:RemoteWrite"]
    assert task["WriteTheWorkspace"]["resources"] == ["${aws_prometheus_workspace.this.arn}"]
    for st in task.values():
        assert all("*" not in a for a in st["actions"]), st
        if st["resources"] == ["*"]:
            assert st["actions"] == ["ecs:DescribeTaskDefinition"] or (
                st["condition"][0]["variable"] == "ecs:cluster"
            ), st
    assert all(a.startswith(("ecs:Describe", "ecs:List", "aps:")) for st in task.values()
               for a in st["actions"])  # fmt: skip
    execution = mon["data"]["aws_iam_policy_document"]["execution"]["statement"]
    assert [st["actions"] for st in execution] == [["logs:CreateLogStream", "logs:PutLogEvents"]]
