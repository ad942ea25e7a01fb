"""The whole system as `make run` starts it: every service behind HAProxy."""

from __future__ import annotations

import json
import urllib.request

import pytest

from tests.support.stack import System, http_status

SERVICES = ["auth", "keys", "gateway", "delivery"]


@pytest.mark.parametrize("service", SERVICES)
def test_every_service_is_ready_through_the_load_balancer(system: System, service: str) -> None:
    with urllib.request.urlopen(f"{system.lb}/{service}/readyz", timeout=5) as resp:
        body = json.load(resp)
        assert resp.status == 200
    assert body["service"] == service
    assert body["status"] == "ok"
    assert body["checks"] and all(v == "ok" for v in body["checks"].values())


@pytest.mark.parametrize("service", SERVICES)
def test_every_service_serves_metrics_and_openapi(system: System, service: str) -> None:
    assert http_status(f"{system.lb}/{service}/metrics") == 200
    with urllib.request.urlopen(f"{system.lb}/{service}/openapi.json", timeout=5) as resp:
        doc = json.load(resp)
    assert doc["openapi"].startswith("3.")
    assert http_status(f"{system.lb}/{service}/docs") == 200


def test_load_balancer_adds_a_request_id_and_keeps_a_callers(system: System) -> None:
    req = urllib.request.Request(f"{system.lb}/auth/healthz", headers={"X-Request-ID": "e2e-77"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.headers["X-Request-ID"] == "e2e-77"
    with urllib.request.urlopen(f"{system.lb}/keys/healthz", timeout=5) as resp:
        assert resp.headers["X-Request-ID"]


def test_unknown_path_gets_the_error_model(system: System) -> None:
    try:
        urllib.request.urlopen(f"{system.lb}/auth/no-such-thing", timeout=5)
    except urllib.error.HTTPError as exc:
        assert exc.code == 404
        assert json.load(exc)["error"]["code"] == "not_found"
    else:
        raise AssertionError("expected 404")
