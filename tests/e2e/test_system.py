"""The whole system as `make run` starts it: every service behind HAProxy."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from email.message import Message

import pytest

from tests.support.stack import System, http_status

SERVICES = ["auth", "keys", "gateway", "delivery", "rooms"]


@pytest.mark.parametrize("service", SERVICES)
def test_every_service_is_ready_through_the_load_balancer(system: System, service: str) -> None:
    # Through HAProxy's internal operators' port: /readyz is not public.
    with urllib.request.urlopen(f"{system.cfg.url('ops')}/{service}/readyz", timeout=5) as resp:
        body = json.load(resp)
        assert resp.status == 200
    assert body["service"] == service
    assert body["status"] == "ok"
    assert body["checks"] and all(v == "ok" for v in body["checks"].values())


@pytest.mark.parametrize("service", SERVICES)
def test_every_service_serves_metrics_and_openapi(system: System, service: str) -> None:
    assert http_status(f"{system.cfg.url('ops')}/{service}/metrics") == 200
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


INTERNAL = [
    "/auth/metrics", "/keys/readyz", "/gateway/metrics", "/delivery/readyz", "/web/metrics",
    "/auth/metrics/", "//auth/metrics", "/auth//readyz", "/AUTH/METRICS", "/auth/%6detrics",
    "/delivery/%72eadyz", "/rooms/metrics", "/rooms/readyz",
]  # fmt: skip


def _get(url: str) -> tuple[int, Message, bytes]:
    """Status, headers (case-insensitive: HAProxy's own are lower-case) and body."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


@pytest.mark.parametrize("path", INTERNAL)
def test_operators_paths_are_not_public(system: System, path: str) -> None:
    """Before: /<service>/metrics and /readyz answered 200 on the public port (#20)."""
    status, headers, body = _get(system.lb + path)
    assert status == 404, path
    assert json.loads(body)["error"]["code"] == "not_found"
    assert headers["Strict-Transport-Security"].startswith("max-age=")


def test_the_stats_page_and_exporter_are_only_on_the_internal_port(system: System) -> None:
    assert http_status(f"{system.lb}/stats") == 404
    assert http_status(f"{system.cfg.url('ops')}/stats") == 200
    assert http_status(f"{system.cfg.url('ops')}/metrics") == 200
    # The internal port serves operators' paths only, not the API.
    assert http_status(f"{system.cfg.url('ops')}/auth/v1/me") == 404


@pytest.mark.parametrize(
    "path",
    [
        "/auth/healthz",
        "/keys/docs",
        "/auth/v1/me",
        "/no/such/thing",
        "/admin/",
        "/",
        "/assets/no.js",
    ],
)
def test_every_public_answer_carries_the_security_headers(system: System, path: str) -> None:
    """Before: none of them were set (#20). The docs page allows only its own style."""
    status, headers, _ = _get(system.lb + path)
    assert status < 500
    assert headers["Strict-Transport-Security"] == "max-age=63072000; includeSubDomains"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["X-Frame-Options"] == "DENY"
    csp = headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp
    if path == "/":  # the web client (#16): its own origin only, nothing inline
        assert csp.startswith("default-src 'self'; script-src 'self'; style-src 'self'")
        assert "connect-src 'self';" in csp and "unsafe" not in csp and "http" not in csp
    elif path != "/admin/":
        assert csp.startswith("default-src 'none'")
    if path == "/keys/docs":
        assert "style-src 'sha256-" in csp and "script-src" not in csp
