"""The web client on another origin than the APIs, as on AWS (CloudFront and the ALB).

The built chat is served from a static server of its own (here on
``system.web_origin``, which the stack allows: PARLEY_CORS_ORIGINS), with the site
deploy.yml publishes (scripts/web_site.py: ``/config.json`` naming the API's origin,
HAProxy here) and CloudFront's Content-Security-Policy (connections to the API's
origin only). A browser user there signs up, creates a private room, invites the
Python SDK user R and types (tests/web/chat_rooms_typing.mjs): every call and the
WebSocket cross to HAProxy, through preflights; the static server sees only the
site's files.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web
from yarl import URL

from scripts.web_site import assemble
from tests.support.stack import System
from tests.web.test_chat_rooms import BROWSER, WEB, browser_scenario


async def serve_site(site: Path, origin: str, api: str) -> tuple[web.AppRunner, list[str]]:
    """The site as S3 + CloudFront serve it: its files, the app's page for other paths
    (the CloudFront function), the policy of modules/static_site; the paths asked."""
    asked: list[str] = []
    ws = api.replace("http://", "ws://")
    policy = (f"default-src 'self'; connect-src 'self' {api} {ws}; img-src 'self' data:; "
              "object-src 'none'; base-uri 'self'; frame-ancestors 'none'; "
              f"form-action 'self' {api}; worker-src 'none'")  # fmt: skip

    async def handle(request: web.Request) -> web.StreamResponse:
        asked.append(request.path)
        target = (site / request.path.lstrip("/")).resolve()
        if not target.is_relative_to(site) or not target.is_file():
            if "." in request.path.rsplit("/", 1)[-1]:
                raise web.HTTPNotFound()
            target = site / "index.html"
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


@BROWSER
async def test_the_web_client_on_its_own_origin_calls_the_api_across(
    system: System, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    assemble(system.lb, site, WEB)
    runner, asked = await serve_site(site.resolve(), system.web_origin, system.lb)
    try:
        await browser_scenario(
            system, tmp_path, "chat_rooms_typing.mjs", "webx", timeout=120, lb=system.web_origin
        )
    finally:
        await runner.cleanup()
    assert "/config.json" in asked
    api = ("/auth/", "/keys/", "/gateway/", "/delivery/", "/rooms/", "/ws", "/.well-known/")
    assert not [p for p in asked if p.startswith(api)], asked  # every call went across
