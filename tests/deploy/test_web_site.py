"""The web client and admin console on AWS: the site the deploy job publishes to S3.

On AWS the apps are on CloudFront's domain and the APIs on the ALB's. The deploy
job builds both apps and assembles the site with scripts/web_site.py, whose
config files name the API's origin; Terraform lets that domain call the APIs
(PARLEY_CORS_ORIGINS, answered by services/common/app.py ``cors_middleware``,
tests/common/test_app.py) and CloudFront's CSP lets the pages connect to it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import hcl2
import pytest

from scripts.web_site import ADMIN_CLIENT_ID, assemble
from services.web.app import APPS
from tests.deploy.test_workflows import ROOT, steps, workflow

API = "https://api.staging.parley.example"


def built(tmp_path: Path) -> Path:
    """A web/ tree as `npm run build` leaves it (both apps' dist)."""
    web = tmp_path / "web"
    for app, asset in (("chat", "index-abc.js"), ("admin", "index-def.js")):
        (web / app / "dist" / "assets").mkdir(parents=True)
        (web / app / "dist" / "index.html").write_text(f"<title>{app}</title>")
        (web / app / "dist" / "assets" / asset).write_text("//")
    return web


def test_the_site_holds_both_apps_and_where_the_api_is(tmp_path: Path) -> None:
    out = tmp_path / "site"
    assemble(API + "/", out, built(tmp_path))
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == [
        "admin/assets/index-def.js", "admin/config.json", "admin/index.html",
        "assets/index-abc.js", "config.json", "index.html",
    ]  # fmt: skip
    assert (out / "index.html").read_text() == "<title>chat</title>"
    assert json.loads((out / "config.json").read_text()) == {"api_url": API}
    assert json.loads((out / "admin" / "config.json").read_text()) == {
        "authority": API, "client_id": "parley-admin", "api_url": API,
    }  # fmt: skip
    # The console's client is the one auth registers and the web service names.
    assert ADMIN_CLIENT_ID == APPS["admin"]


@pytest.mark.parametrize("url", ["api.example.com", "https://api.example.com/v1", "ftp://x"])
def test_an_api_url_that_is_no_origin_is_refused(tmp_path: Path, url: str) -> None:
    with pytest.raises(ValueError, match="origin"):
        assemble(url, tmp_path / "site", built(tmp_path))
    assert not (tmp_path / "site").exists()


def test_unbuilt_apps_are_refused_with_how_to_build_them(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "web_site.py"), "--api-url", API,
         str(tmp_path / "site")],
        capture_output=True, text=True, cwd=tmp_path, check=False,
        env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    if (ROOT / "web" / "chat" / "dist" / "index.html").is_file() and (
        ROOT / "web" / "admin" / "dist" / "index.html"
    ).is_file():
        assert run.returncode == 0, run.stderr  # built here: the real apps assembled
        assert json.loads((tmp_path / "site" / "config.json").read_text()) == {"api_url": API}
    else:
        assert run.returncode == 2 and "npm run build" in run.stderr


def test_the_deploy_job_builds_the_apps_then_publishes_the_site() -> None:
    job = steps(workflow("deploy.yml")["jobs"]["deploy"])
    names = [s.get("name", s.get("uses", "")) for s in job]
    build = next(i for i, s in enumerate(job) if "npm run build" in s.get("run", ""))
    publish = next(i for i, s in enumerate(job) if "scripts/web_site.py" in s.get("run", ""))
    assert job[build]["working-directory"] == "web" and "npm ci" in job[build]["run"]
    assert any(n.startswith("actions/setup-node") for n in names[:build])
    # Built before Terraform changes anything: a failed build leaves the deployment.
    apply = next(i for i, s in enumerate(job) if "terraform apply" in s.get("run", ""))
    assert build < apply < publish
    step = job[publish]
    assert step["env"]["API_URL"] == "${{ steps.outputs.outputs.api_url }}"
    assert '--api-url "${API_URL}" site' in step["run"]
    assert "s3://${BUCKET}/" in step["run"] and "create-invalidation" in step["run"]
    # The smoke test reads the published config files and sends a preflight from the
    # web domain to the API.
    smoke = steps(workflow("deploy.yml")["jobs"]["smoke"])
    web = next(s for s in smoke if "WEB_URL" in s.get("env", {}))
    assert web["env"]["WEB_URL"] == "${{ needs.deploy.outputs.web_url }}"
    assert '"/config.json"' in web["run"] and '"/admin/config.json"' in web["run"]
    assert "s.options(" in web["run"] and "Access-Control-Allow-Origin" in web["run"]


def test_terraform_lets_the_web_domain_call_the_apis() -> None:
    opts = hcl2.SerializationOptions(with_comments=False, strip_string_quotes=True)
    text = (ROOT / "deploy" / "terraform" / "stack" / "services.tf").read_text(encoding="utf-8")
    env = hcl2.loads(text, serialization_options=opts)["locals"][0]["common_environment"]
    assert env["PARLEY_CORS_ORIGINS"] == env["PARLEY_WEB_URL"] == "${module.static_site.url}"
    site = (ROOT / "deploy" / "terraform" / "modules" / "static_site" / "main.tf").read_text()
    csp = next(line for line in site.splitlines() if "content_security_policy =" in line)
    assert "connect-src 'self' https://${var.api_domain_name} wss://${var.api_domain_name}" in csp
    assert "worker-src 'none'" in csp and "frame-ancestors 'none'" in csp
