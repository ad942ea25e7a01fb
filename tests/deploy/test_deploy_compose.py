"""docker-compose.yml: valid under the Compose Specification's JSON schema, and
wired the way Parley needs (healthchecks, two gateways, HAProxy's variables,
pinned real images, no credentials). No Docker engine is needed: these tests
read the files only."""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic_settings import BaseSettings

from services.common.clients import Topics
from services.common.config import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
SCHEMA = Path(__file__).with_name("compose-spec.json")
HAPROXY_CFG = ROOT / "deploy/haproxy/haproxy.cfg"

# Compose service name -> the `services.<module>` it runs.
PARLEY = {
    "auth": "auth",
    "web": "web",
    "keys": "keys",
    "delivery": "delivery",
    "rooms": "rooms",
    "notifier": "notifier",
    "gateway1": "gateway",
    "gateway2": "gateway",
}
# Compose service -> the image repository it must use (tags are checked apart).
IMAGES = {
    "mongo": "mongo",
    "redis": "redis",
    "kafka": "apache/kafka",
    "kafka-init": "apache/kafka",
    "haproxy": "haproxy",
    "mailpit": "axllent/mailpit",
    "prometheus": "prom/prometheus",
    "grafana": "grafana/grafana",
    "kafka-exporter": "danielqsj/kafka-exporter",
    "mongodb-exporter": "percona/mongodb_exporter",
    "redis-exporter": "oliver006/redis_exporter",
}
# Exporter images have no shell or HTTP client to run a healthcheck with:
# Prometheus's `up` watches them instead (alert ParleyExporterDown).
NO_HEALTHCHECK = {"kafka-init", "kafka-exporter", "mongodb-exporter", "redis-exporter"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|CREDENTIAL|PRIVATE|(^|_)KEY$|API_?KEY", re.I)
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message}, ${NAME?message}
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = load_yaml(COMPOSE)
    assert isinstance(doc, dict)
    return doc


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    svcs = compose["services"]
    assert isinstance(svcs, dict)
    return svcs


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    with SCHEMA.open(encoding="utf-8") as f:
        schema = json.load(f)
    # The file's $schema URI is a misspelt 2019-09 one (see compose-spec.README.md).
    jsonschema.Draft201909Validator.check_schema(schema)
    return jsonschema.Draft201909Validator(schema)


def env_of(service: dict[str, Any]) -> dict[str, Any]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    assert isinstance(env, dict)
    return env


def depends_on(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    deps = service.get("depends_on", {})
    assert isinstance(deps, dict), "depends_on must use the long form with conditions"
    return deps


def healthcheck_text(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    return test if isinstance(test, str) else " ".join(test)


# --- the Compose Specification ------------------------------------------------


def test_compose_file_is_valid_under_the_compose_spec_schema(
    compose: dict[str, Any], validator: jsonschema.protocols.Validator
) -> None:
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors
    )


@pytest.mark.parametrize(
    "breakage",
    [
        {"healthcheck": {"test": ["CMD", "true"], "bogus": 1}},
        {"depends_on": {"mongo": {"condition": "service_ready"}}},
        {"ports": "8080:8080"},
        {"restart_policy": "always"},
    ],
)
def test_the_schema_rejects_a_broken_service(
    compose: dict[str, Any],
    validator: jsonschema.protocols.Validator,
    breakage: dict[str, Any],
) -> None:
    """The validation above is not vacuous: the same schema catches mistakes."""
    broken = {**compose, "services": {**compose["services"]}}
    broken["services"]["auth"] = {**compose["services"]["auth"], **breakage}
    assert list(validator.iter_errors(broken))


def test_compose_spec_has_no_version_key(compose: dict[str, Any]) -> None:
    assert "version" not in compose


def test_every_interpolation_has_a_default_and_no_secret_is_required() -> None:
    """`docker compose up` works with no variable set, and warns about none."""
    text = COMPOSE.read_text(encoding="utf-8")
    unescaped = re.sub(r"\$\$", "", text)
    refs = INTERPOLATION.findall(unescaped)
    assert refs
    for name, op, default in refs:
        assert op in (":-", "-"), f"${{{name}}} has no default"
        assert default, f"${{{name}}} has an empty default"
        assert not SECRET_NAME.search(name), f"${{{name}}} gives a secret a default"
    bare = re.findall(r"\$(?!\{)[A-Za-z_]", unescaped)
    assert not bare, "use ${NAME:-default}, or $$ for a literal dollar"


# --- images -----------------------------------------------------------------


def test_third_party_images_are_the_real_ones_with_pinned_tags(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, repo in IMAGES.items():
        assert name in services, f"missing service {name}"
        image = services[name]["image"]
        got_repo, _, tag = image.rpartition(":")
        assert got_repo == repo, f"{name}: {image}"
        assert tag and tag != "latest", f"{name}: pin a tag, not {image!r}"
        assert "build" not in services[name]
    assert services["mongo"]["image"] == "mongo:7"
    assert services["redis"]["image"] == "redis:7"


def test_no_unexpected_services(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == set(IMAGES) | set(PARLEY)


def test_parley_services_share_one_image_built_from_the_dockerfile(
    services: dict[str, dict[str, Any]],
) -> None:
    images = set()
    for name in PARLEY:
        svc = services[name]
        assert svc["build"] == {"context": ".", "dockerfile": "Dockerfile"}, name
        images.add(svc["image"])
    assert len(images) == 1
    assert (ROOT / "Dockerfile").is_file()


def test_parley_services_run_their_module(services: dict[str, dict[str, Any]]) -> None:
    for name, module in PARLEY.items():
        assert services[name]["command"] == ["python", "-m", f"services.{module}"], name
        assert (ROOT / "services" / module / "__main__.py").is_file()


# --- healthchecks and start order ---------------------------------------------


def test_every_parley_service_has_a_healthz_healthcheck_on_its_own_port(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, module in PARLEY.items():
        svc = services[name]
        port = env_of(svc)["PARLEY_PORT"]
        test = svc["healthcheck"]["test"]
        assert isinstance(test, list) and test[:3] == ["CMD", "python", "-c"], name
        # slim images have no curl: the check is Python's own urllib.
        assert "urllib.request.urlopen" in test[3], name
        assert f"http://127.0.0.1:{port}/{module}/healthz" in test[3], name
        compile(test[3], f"<{name} healthcheck>", "exec")
        assert not svc["healthcheck"].get("disable", False)


def test_every_long_running_service_has_a_healthcheck(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, svc in services.items():
        if name in NO_HEALTHCHECK:
            continue
        assert "healthcheck" in svc, name
        assert healthcheck_text(svc).strip(), name


def test_depends_on_targets_exist_with_conditions_that_can_be_met(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, svc in services.items():
        for dep, spec in depends_on(svc).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            cond = spec["condition"]
            if cond == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep}'s health"
            elif cond == "service_completed_successfully":
                assert services[dep].get("restart", "no") == "no", dep
            else:
                raise AssertionError(f"{name} -> {dep}: use a health condition, not {cond}")


def test_parley_services_wait_for_their_servers(services: dict[str, dict[str, Any]]) -> None:
    for name in PARLEY:
        deps = depends_on(services[name])
        assert deps["redis"]["condition"] == "service_healthy", name
        if name != "auth":
            assert deps["kafka-init"]["condition"] == "service_completed_successfully", name
            assert deps["auth"]["condition"] == "service_healthy", name
    for name in ("auth", "keys", "delivery", "rooms"):
        assert depends_on(services[name])["mongo"]["condition"] == "service_healthy"


def test_start_order_has_no_cycle(services: dict[str, dict[str, Any]]) -> None:
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, " -> ".join((*path, name))
        if name in done:
            return
        for dep in depends_on(services[name]):
            visit(dep, (*path, name))
        done.add(name)

    for name in services:
        visit(name, ())


# --- configuration --------------------------------------------------------------


def settings_variables(module: str) -> set[str]:
    """PARLEY_* variables that services.<module> reads: the shared Settings and
    any settings class of its own in services/<module>/config.py."""
    classes: list[type[BaseSettings]] = [Settings]
    if importlib.util.find_spec(f"services.{module}.config") is not None:
        own = importlib.import_module(f"services.{module}.config")
        classes += [
            obj
            for obj in vars(own).values()
            if isinstance(obj, type) and issubclass(obj, BaseSettings) and obj is not BaseSettings
        ]
    names = set()
    for cls in classes:
        prefix = str(cls.model_config.get("env_prefix", "")).upper()
        names |= {f"{prefix}{field.upper()}" for field in cls.model_fields}
    return names


def test_parley_env_names_are_real_settings(services: dict[str, dict[str, Any]]) -> None:
    for name, module in PARLEY.items():
        env = env_of(services[name])
        unknown = {k for k in env if k.startswith("PARLEY_")} - settings_variables(module)
        assert not unknown, f"{name}: not a setting: {sorted(unknown)}"
        assert env["PARLEY_HOST"] == "0.0.0.0", name
        assert env["PARLEY_KAFKA_BOOTSTRAP"] == "kafka:9092"
        assert env["PARLEY_MONGO_URL"] == "mongodb://mongo:27017"
        assert env["PARLEY_REDIS_URL"].startswith("redis://redis:6379")
        assert env["PARLEY_SMTP_HOST"] == "mailpit"
        assert str(env["PARLEY_SMTP_PORT"]) == "1025"
        # Set by the host for machines other than this one (docs/deployment.md): the
        # admin console's sign-in and e-mails' links are made from it.
        public = env["PARLEY_PUBLIC_URL"]
        assert public == "${PARLEY_PUBLIC_URL:-http://localhost:${PARLEY_LB_PORT:-8080}}", name


def test_service_urls_point_at_the_services(services: dict[str, dict[str, Any]]) -> None:
    env = env_of(services["gateway1"])
    for target, var in (("auth", "AUTH"), ("keys", "KEYS"), ("delivery", "DELIVERY")):
        port = env_of(services[target])["PARLEY_PORT"]
        assert env[f"PARLEY_{var}_URL"] == f"http://{target}:{port}"


def test_two_gateways_with_distinct_valid_ids(services: dict[str, dict[str, Any]]) -> None:
    ids = [env_of(services[g])["PARLEY_GATEWAY_ID"] for g in ("gateway1", "gateway2")]
    assert len(set(ids)) == 2
    for gid in ids:
        Settings(gateway_id=gid)  # raises on an id the service would refuse


def test_kafka_is_kraft_and_topics_are_created_with_four_partitions(
    services: dict[str, dict[str, Any]],
) -> None:
    env = env_of(services["kafka"])
    assert "broker" in env["KAFKA_PROCESS_ROLES"] and "controller" in env["KAFKA_PROCESS_ROLES"]
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    script = " ".join(services["kafka-init"]["command"])
    for topic in Topics(Settings()).all():
        assert re.search(
            rf"--create --if-not-exists\s+--topic {re.escape(topic)} --partitions 4\b", script
        ), topic
    assert depends_on(services["kafka-init"])["kafka"]["condition"] == "service_healthy"


# --- the load balancer ------------------------------------------------------------


def test_haproxy_uses_the_repository_config(services: dict[str, dict[str, Any]]) -> None:
    volumes = services["haproxy"]["volumes"]
    assert "./deploy/haproxy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in volumes


def test_haproxy_hides_the_services_server_header() -> None:
    """aiohttp answers `Server: Python/3.11 aiohttp/...`; every frontend drops it."""
    cfg = HAPROXY_CFG.read_text(encoding="utf-8")
    frontends = re.findall(r"^frontend (\S+)\n(.*?)(?=^\S|\Z)", cfg, re.M | re.S)
    assert {name for name, _ in frontends} == {"stats", "public"}
    for name, body in frontends:
        assert re.search(r"^\s+http-response del-header Server$", body, re.M), name


def test_haproxy_env_covers_every_variable_in_its_config(
    services: dict[str, dict[str, Any]],
) -> None:
    used = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", HAPROXY_CFG.read_text()))
    assert used >= {"LB_BIND", "AUTH_ADDR", "GATEWAY1_ADDR", "GATEWAY2_ADDR"}
    env = env_of(services["haproxy"])
    assert used <= set(env), f"unset in compose: {sorted(used - set(env))}"
    for var in used:
        assert env[var], var


def test_haproxy_backends_reach_the_services_on_their_ports(
    services: dict[str, dict[str, Any]],
) -> None:
    env = env_of(services["haproxy"])
    backends = {
        "AUTH_ADDR": "auth",
        "KEYS_ADDR": "keys",
        "GATEWAY1_ADDR": "gateway1",
        "GATEWAY2_ADDR": "gateway2",
        "DELIVERY_ADDR": "delivery",
        "ROOMS_ADDR": "rooms",
    }
    for var, target in backends.items():
        host, _, port = env[var].rpartition(":")
        assert host == target, var
        assert port == env_of(services[target])["PARLEY_PORT"], var
        assert depends_on(services["haproxy"])[target]["condition"] == "service_healthy"


def test_the_load_balancer_is_on_8080_by_default(services: dict[str, dict[str, Any]]) -> None:
    lb_bind_port = env_of(services["haproxy"])["LB_BIND"].rpartition(":")[2]
    ports = services["haproxy"]["ports"]
    assert f"${{PARLEY_BIND_ADDRESS:-127.0.0.1}}:${{PARLEY_LB_PORT:-8080}}:{lb_bind_port}" in ports


def test_host_ports_are_configurable_and_backends_are_not_published(
    services: dict[str, dict[str, Any]],
) -> None:
    published = re.compile(
        r"^\$\{PARLEY_(?:ADMIN_)?BIND_ADDRESS:-127\.0\.0\.1\}:\$\{PARLEY_[A-Z_]+_PORT:-\d+\}:\d+$"
    )
    for name, svc in services.items():
        for entry in svc.get("ports", []):
            assert isinstance(entry, str) and published.match(entry), f"{name}: {entry}"
    for name in ("mongo", "redis", "kafka", *PARLEY):
        assert "ports" not in services[name], f"{name} must stay on the internal network"


def test_only_the_load_balancer_follows_the_public_bind_address(
    services: dict[str, dict[str, Any]],
) -> None:
    """Exposing the load balancer (PARLEY_BIND_ADDRESS=0.0.0.0) must not expose the
    operators' ports too: Mailpit shows login and reset codes, and HAProxy's stats
    port, Prometheus and Grafana describe the system. They have their own
    PARLEY_ADMIN_BIND_ADDRESS."""
    lb_port = env_of(services["haproxy"])["LB_BIND"].rpartition(":")[2]
    by_address: dict[str, set[str]] = {}
    for name, svc in services.items():
        for entry in svc.get("ports", []):
            address = entry.split("}", 1)[0].removeprefix("${").split(":-")[0]
            by_address.setdefault(address, set()).add(f"{name}:{entry.rpartition(':')[2]}")
    assert by_address["PARLEY_BIND_ADDRESS"] == {f"haproxy:{lb_port}"}
    assert by_address["PARLEY_ADMIN_BIND_ADDRESS"] >= {
        "haproxy:8404", "mailpit:8025", "prometheus:9090", "grafana:3000"
    }  # fmt: skip


# --- observability ------------------------------------------------------------------


def test_prometheus_and_grafana_mount_the_repository_files(
    services: dict[str, dict[str, Any]],
) -> None:
    prom = services["prometheus"]["volumes"]
    assert "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prom
    assert "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in prom
    assert any(
        v == "./deploy/compose/grafana/provisioning:/etc/grafana/provisioning:ro"
        for v in services["grafana"]["volumes"]
    )


def test_bind_mount_sources_exist(services: dict[str, dict[str, Any]]) -> None:
    # deploy/grafana/ holds dashboards built as code; it may not exist yet.
    optional = {"./deploy/grafana"}
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./") and source not in optional:
                assert (ROOT / source).exists(), f"{name}: {source}"


def test_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes", {}))
    for svc in compose["services"].values():
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0]
            if not source.startswith(("./", "/")):
                assert source in declared, source


# --- secrets ---------------------------------------------------------------------------


def test_no_plaintext_secrets(services: dict[str, dict[str, Any]]) -> None:
    """A secret-looking variable is only ever passed through from the host."""
    for name, svc in services.items():
        for key, value in env_of(svc).items():
            if SECRET_NAME.search(key):
                assert value is None, f"{name}: {key} must not have a value in the file"
    text = COMPOSE.read_text(encoding="utf-8")
    assert not re.search(r"(?i)password\s*[:=]\s*['\"]?\w", text)
    assert not re.search(r"-----BEGIN [A-Z ]*PRIVATE KEY-----", text)
    assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", text), "credentials in a URL"


def test_grafana_has_no_default_admin_and_anonymous_users_only_view(
    services: dict[str, dict[str, Any]],
) -> None:
    env = env_of(services["grafana"])
    assert env.get("GF_AUTH_ANONYMOUS_ORG_ROLE", "Viewer") == "Viewer"
    assert "GF_SECURITY_ADMIN_PASSWORD" not in env or env["GF_SECURITY_ADMIN_PASSWORD"] is None
    assert "GF_SECURITY_ADMIN_USER" not in env
    # Without a password from the operator, no admin account exists at all.
    assert env["GF_SECURITY_DISABLE_INITIAL_ADMIN_CREATION"] == "true"


def test_delivery_gets_every_franking_setting_from_the_host(
    services: dict[str, dict[str, Any]],
) -> None:
    """docs/deployment.md tells compose users to set ``PARLEY_FRANKING_KEY_ID`` and
    ``PARLEY_FRANKING_RETIRED_KEYS`` for a rotation: only ``PARLEY_FRANKING_KEY`` was
    passed through, so the new key was read under the default id and every tag made
    with a former key failed. Each franking setting is passed through, never given."""
    franking = {
        f"PARLEY_{name.upper()}" for name in Settings.model_fields if name.startswith("franking_")
    }
    assert franking == {
        "PARLEY_FRANKING_KEY", "PARLEY_FRANKING_KEY_ID", "PARLEY_FRANKING_RETIRED_KEYS",
    }  # fmt: skip
    env = env_of(services["delivery"])
    assert {name: env.get(name, "absent") for name in franking} == dict.fromkeys(franking)
