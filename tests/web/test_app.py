"""services/web on its own (aiohttp's test client): the chat client at /, its files
under /assets/, the headers, and nothing outside dist/ (#16)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.common.config import load_settings
from services.web.app import create_app


@pytest.fixture
async def web_client(make_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    dist = tmp_path / "chat" / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text('<!doctype html><script type="module" src="/assets/app-1.js">')
    (dist / "assets" / "app-1.js").write_text("console.log('app')")
    (tmp_path / "secret.txt").write_text("not to be served")
    monkeypatch.setenv("WEB_ROOT", str(tmp_path))
    return await make_client(await create_app(load_settings()))


async def test_the_chat_page_and_its_assets_with_a_strict_policy(web_client: Any) -> None:
    for path in ("/", "/index.html"):
        resp = await web_client.get(path)
        assert resp.status == 200 and "/assets/app-1.js" in await resp.text()
        assert resp.headers["Cache-Control"] == "no-cache"
        csp = resp.headers["Content-Security-Policy"]
        assert csp.startswith("default-src 'self'; script-src 'self'; style-src 'self'")
        assert "connect-src 'self';" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe" not in csp and "http" not in csp
        assert resp.headers["X-Frame-Options"] == "DENY"
    asset = await web_client.get("/assets/app-1.js")
    assert asset.status == 200 and "immutable" in asset.headers["Cache-Control"]
    assert asset.headers["Content-Security-Policy"] == resp.headers["Content-Security-Policy"]


async def test_the_chat_config_names_no_api_origin_here(web_client: Any) -> None:
    """Behind HAProxy the APIs are on the page's origin: `{}` (on AWS the deploy job's
    file names the API's origin: scripts/web_site.py)."""
    resp = await web_client.get("/config.json")
    assert resp.status == 200 and await resp.json() == {}
    assert resp.headers["Cache-Control"] == "no-cache"


@pytest.mark.parametrize(
    "path",
    [
        "/assets/missing.js", "/assets/../../secret.txt", "/assets/%2e%2e/%2e%2e/secret.txt",
        # Audit finding: a NUL byte or a name too long for the file system was a 500 and
        # a traceback in the log, for anyone to send.
        "/assets/a.js%00", "/assets/" + "a" * 5000, "/admin/%00", "/admin/assets/" + "a" * 5000,
    ],
)  # fmt: skip
async def test_nothing_else_is_served(web_client: Any, path: str) -> None:
    resp = await web_client.get(path)
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"
    assert "not to be served" not in await resp.text()


async def test_an_unbuilt_app_says_so(make_client: Any, tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("WEB_ROOT", str(tmp_path))
    client = await make_client(await create_app(load_settings()))
    resp = await client.get("/")
    # Audit finding: answered `bad_request`, and the text saying why was lost.
    assert resp.status == 503
    error = (await resp.json())["error"]
    assert error["code"] == "service_unavailable" and "not built" in error["message"]
