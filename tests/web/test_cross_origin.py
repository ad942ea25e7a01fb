"""The web apps on another origin than the APIs, as on AWS (CloudFront and the ALB).

The built chat is served from a static server of its own (here on
``system.web_origin``, which the stack allows: PARLEY_CORS_ORIGINS), with the site
deploy.yml publishes (scripts/web_site.py: ``/config.json`` naming the API's origin,
HAProxy here) and CloudFront's Content-Security-Policy (connections to the API's
origin only). A browser user there signs up, creates a private room, invites the
Python SDK user R and types (tests/web/chat_rooms_typing.mjs): every call and the
WebSocket cross to HAProxy, through preflights; the static server sees only the
site's files. An admin signs in to the console there (the provider's pages on the
API's origin, the redirect back to the web origin: the stack's
PARLEY_ADMIN_CONSOLE_URL, as Terraform sets it) and blocks a user; a non-admin is
refused (tests/web/admin_console.mjs).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2 as httpx
from aiohttp import web
from yarl import URL

from scripts.web_site import assemble
from tests.auth.helpers import bearer
from tests.auth.test_oidc_through_lb import admin_token, make_admin
from tests.support.stack import System
from tests.support.users import signup
from tests.web.test_admin_console import run_script
from tests.web.test_chat_rooms import BROWSER, WEB, browser_scenario

API = ("/auth/", "/keys/", "/gateway/", "/delivery/", "/rooms/", "/ws", "/.well-known/", "/oauth2/")


async def serve_site(site: Path, origin: str, api: str) -> tuple[web.AppRunner, list[str]]:
    """The site as S3 + CloudFront serve it: its files, an app's page for its routes
    (the CloudFront function of modules/static_site: a last segment with no dot), the
    policy of modules/static_site; the paths asked."""
    asked: list[str] = []
    ws = api.replace("http://", "ws://")
    policy = (f"default-src 'self'; connect-src 'self' {api} {ws}; img-src 'self' data:; "
              "object-src 'none'; base-uri 'self'; frame-ancestors 'none'; "
              f"form-action 'self' {api}; worker-src 'none'")  # fmt: skip

    async def handle(request: web.Request) -> web.StreamResponse:
        asked.append(request.path)
        uri = request.path
        if "." not in uri.rsplit("/", 1)[-1]:  # an app's route: its page
            admin = uri == "/admin" or uri.startswith("/admin/")
            uri = "/admin/index.html" if admin else "/index.html"
        target = (site / uri.lstrip("/")).resolve()
        if not target.is_relative_to(site) or not target.is_file():
            raise web.HTTPNotFound()
        resp = web.FileResponse(target)
        resp.headers["Content-Security-Policy"] = policy
        return resp

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    url = URL(origin)
    await web.TCPSite(runner, url.host, url.port).start()
    return runner, asked


@contextlib.asynccontextmanager
async def site_served(system: System, tmp_path: Path) -> AsyncIterator[list[str]]:
    """The site deploy.yml publishes (APIs at the stack's HAProxy), served on the
    stack's web origin for the block; yields the paths asked."""
    site = tmp_path / "site"
    assemble(system.lb, site, WEB)
    runner, asked = await serve_site(site.resolve(), system.web_origin, system.lb)
    try:
        yield asked
    finally:
        await runner.cleanup()


@BROWSER
async def test_the_web_client_on_its_own_origin_calls_the_api_across(
    system: System, tmp_path: Path
) -> None:
    async with site_served(system, tmp_path) as asked:
        await browser_scenario(
            system, tmp_path, "chat_rooms_typing.mjs", "webx", timeout=120, lb=system.web_origin
        )
    assert "/config.json" in asked
    assert not [p for p in asked if p.startswith(API)], asked  # every call went across


@BROWSER
async def test_the_admin_console_on_the_web_origin_signs_in_and_calls_the_api_across(
    system: System, tmp_path: Path
) -> None:
    admin = await signup(system.lb, "xadm")
    make_admin(system, admin.username)
    target, plain = await signup(system.lb, "xtgt"), await signup(system.lb, "xusr")
    shots = tmp_path / "shots"
    shots.mkdir()
    env = {
        "LB": system.web_origin, "WEB_DIR": str(WEB), "SHOTS": str(shots),
        "ADMIN_USER": admin.username, "ADMIN_PASSWORD": admin.password,
        "TARGET": target.username,
        "PLAIN_USER": plain.username, "PLAIN_PASSWORD": plain.password,
    }  # fmt: skip
    async with site_served(system, tmp_path) as asked:
        await run_script("admin_console.mjs", env, "admin console: ok")
    # The console came from the web origin, and the provider sent the browser back there.
    assert {"/admin/", "/admin/config.json", "/admin/callback"} <= set(asked), asked
    assert not [p for p in asked if p.startswith(API)], asked
    token = await admin_token(system, admin)
    async with httpx.AsyncClient(base_url=system.lb) as http:
        user = await http.get(f"/auth/v1/admin/users/{target.user_id}", headers=bearer(token))
        assert user.json()["blocked"] is True
