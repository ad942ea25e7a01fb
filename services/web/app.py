"""``create_app``: serve the built browser apps (``web/<app>/dist``) with security headers.

``/`` is the chat client (``web/chat/dist``): ``/`` and ``/index.html`` are its
page, ``/assets/`` its content-hashed files. It routes itself in the URL's
fragment (``#signup``), so no other path is needed. Its policy allows no other
origin at all (``connect-src 'self'`` covers the same-origin WebSocket).
``/admin/`` is the admin console (``web/admin/dist``); any path under it that
is not a file gets ``index.html`` (the single-page app routes itself).
``/admin/config.json`` tells the console where the provider is (the issuer,
``PARLEY_PUBLIC_URL``) and its client id. Built assets (``/admin/assets/``)
are content-hashed: cached for a year; everything else is revalidated.
In production S3 + CloudFront serve the same files.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from services.common.app import base_app
from services.common.config import Settings
from services.common.http import json_response

ROOT = Path(__file__).resolve().parent.parent.parent / "web"
APPS = {"admin": "parley-admin"}


def csp(settings: Settings) -> str:
    issuer = urlsplit(settings.public_url)
    authority = f"{issuer.scheme}://{issuer.netloc}"
    return (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"connect-src 'self' {authority}; form-action 'self' {authority}; "
        "frame-ancestors 'none'; base-uri 'self'; object-src 'none'"
    )


def chat_csp() -> str:
    return (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'self'; "
        "object-src 'none'; worker-src 'none'"
    )


def harden(resp: web.StreamResponse, policy: str) -> web.StreamResponse:
    resp.headers["Content-Security-Policy"] = policy
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers["Referrer-Policy"] = "no-referrer"
    resp.headers["Cross-Origin-Opener-Policy"] = "same-origin"
    return resp


def _within(root: Path, tail: str) -> Path | None:
    """``root / tail`` if it stays inside ``root``; None for a path that leaves it or
    that no file can have (a NUL byte: 500 before)."""
    try:
        target = (root / tail).resolve()
    except (ValueError, OSError):
        return None
    return target if target.is_relative_to(root.resolve()) else None


def _is_file(target: Path) -> bool:
    try:
        return target.is_file()
    except (ValueError, OSError):  # a name too long (ENAMETOOLONG): 500 before
        return False


def app_routes(app: web.Application, name: str, client_id: str, settings: Settings) -> None:
    dist = Path(os.environ.get("WEB_ROOT", str(ROOT))) / name / "dist"
    policy = csp(settings)
    prefix = f"/{name}/"

    async def config(_: web.Request) -> web.StreamResponse:
        body = {"authority": settings.public_url.rstrip("/"), "client_id": client_id}
        resp = json_response(body)
        resp.headers["Cache-Control"] = "no-cache"
        return harden(resp, policy)

    async def serve(request: web.Request) -> web.StreamResponse:
        tail = request.match_info.get("tail", "")
        target = _within(dist, tail)
        if target is None:
            raise web.HTTPNotFound()
        if not _is_file(target):
            if tail.startswith("assets/"):
                raise web.HTTPNotFound()
            target = dist / "index.html"  # the app routes itself
            if not target.is_file():
                raise web.HTTPServiceUnavailable(text=f"web/{name} is not built (make run builds it)")
        resp = web.FileResponse(target)
        immutable = tail.startswith("assets/") and target.name != "index.html"
        resp.headers["Cache-Control"] = (
            "public, max-age=31536000, immutable" if immutable else "no-cache"
        )
        return harden(resp, policy)

    async def bare(_: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(prefix)

    app.router.add_get(f"/{name}", bare)
    app.router.add_get(f"{prefix}config.json", config)
    app.router.add_get(prefix + "{tail:.*}", serve)


def chat_routes(app: web.Application) -> None:
    dist = Path(os.environ.get("WEB_ROOT", str(ROOT))) / "chat" / "dist"
    policy = chat_csp()

    async def page(_: web.Request) -> web.StreamResponse:
        target = dist / "index.html"
        if not target.is_file():
            raise web.HTTPServiceUnavailable(text="web/chat is not built (make install builds it)")
        resp = web.FileResponse(target)
        resp.headers["Cache-Control"] = "no-cache"
        return harden(resp, policy)

    async def asset(request: web.Request) -> web.StreamResponse:
        target = _within(dist / "assets", request.match_info["tail"])
        if target is None or not _is_file(target):
            raise web.HTTPNotFound()
        resp = web.FileResponse(target)
        resp.headers["Cache-Control"] = "public, max-age=31536000, immutable"
        return harden(resp, policy)

    async def config(_: web.Request) -> web.StreamResponse:
        # No `api_url`: the APIs are on this origin (HAProxy serves both). On AWS the
        # deploy job writes one naming the API's (scripts/web_site.py).
        resp = json_response({})
        resp.headers["Cache-Control"] = "no-cache"
        return harden(resp, policy)

    app.router.add_get("/", page)
    app.router.add_get("/index.html", page)
    app.router.add_get("/config.json", config)
    app.router.add_get("/assets/{tail:.+}", asset)


async def create_app(settings: Settings) -> web.Application:
    app = base_app("web", settings, prefix="/web")
    for name, client_id in APPS.items():
        app_routes(app, name, client_id, settings)
    chat_routes(app)
    return app
