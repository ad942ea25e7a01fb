"""The provider's HTML pages: rendered on the server, no JavaScript, strict CSP, CSRF.

Every page is a Jinja2 template (autoescaped) under ``templates/`` with one
stylesheet, ``static/provider.css``. The headers forbid scripts, inline
styles, framing and referrers. Forms are protected twice against cross-site
requests: a double-submit token (``csrf`` field == the ``parley_csrf``
cookie, HttpOnly, SameSite=Strict, ``__Host-`` on https) and, when the
browser sends one, an ``Origin`` that must be the issuer's.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jinja2
from aiohttp import web

from services.auth.tokens import same

HERE = Path(__file__).parent
ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)
CSS = (HERE / "static" / "provider.css").read_bytes()

SCOPE_TEXT = {
    "openid": "Know who you are (your Parley user id)",
    "profile": "See your username",
    "email": "See your e-mail address",
    "roles": "See your roles (user, admin)",
    "parley.api": "Use Parley as you: read and change your account, send messages",
}


class Cookies:
    """Names and flags of the provider's cookies (``__Host-`` and Secure on https)."""

    def __init__(self, issuer: str) -> None:
        self.secure = issuer.startswith("https://")
        prefix = "__Host-" if self.secure else ""
        self.login = f"{prefix}parley_login"
        self.csrf = f"{prefix}parley_csrf"
        self.path = "/" if self.secure else "/auth/"
        parts = urlsplit(issuer)
        self.origin = f"{parts.scheme}://{parts.netloc}"

    def set(
        self, resp: web.StreamResponse, name: str, value: str, max_age: int, samesite: str
    ) -> None:
        resp.set_cookie(
            name,
            value,
            max_age=max_age,
            path=self.path,
            secure=self.secure,
            httponly=True,
            samesite=samesite,
        )

    def clear(self, resp: web.StreamResponse, name: str) -> None:
        resp.del_cookie(name, path=self.path, secure=self.secure, httponly=True)


def origin_of(uri: str) -> str:
    """The CSP source of a redirect URI: its origin, or ``scheme:`` for a private-use one."""
    parts = urlsplit(uri)
    if parts.netloc:
        return f"{parts.scheme}://{parts.netloc}"
    return f"{parts.scheme}:"


def security_headers(resp: web.StreamResponse, form_targets: Iterable[str] = ()) -> None:
    # form-action also governs the redirects after a form is posted (Chromium):
    # a client's redirect URI must be allowed where a form leads to it.
    targets = " ".join(["'self'", *sorted(set(form_targets))])
    resp.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'self'; img-src 'self'; "
        f"form-action {targets}; frame-ancestors 'none'; base-uri 'none'"
    )
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Referrer-Policy"] = "same-origin"
    resp.headers["Cache-Control"] = "no-store"


def csrf_token(request: web.Request, cookies: Cookies) -> tuple[str, bool]:
    """(the token, whether it is new and must be set)."""
    current = request.cookies.get(cookies.csrf, "")
    if 20 <= len(current) <= 100:
        return current, False
    return secrets.token_urlsafe(32), True


def csrf_ok(request: web.Request, form: Mapping[str, str], cookies: Cookies) -> bool:
    origin = request.headers.get("Origin")
    if origin is not None and origin != cookies.origin:
        return False
    cookie = request.cookies.get(cookies.csrf, "")
    sent = form.get("csrf", "")
    return bool(cookie) and len(cookie) >= 20 and same(cookie, sent)


def render(
    request: web.Request,
    cookies: Cookies,
    template: str,
    *,
    title: str,
    status: int = 200,
    error: Mapping[str, str] | None = None,
    form_targets: Iterable[str] = (),
    **context: Any,
) -> web.Response:
    token, new = csrf_token(request, cookies)
    html = ENV.get_template(template).render(title=title, error=error, csrf=token, **context)
    resp = web.Response(text=html, status=status, content_type="text/html", charset="utf-8")
    security_headers(resp, form_targets)
    if new:
        cookies.set(resp, cookies.csrf, token, max_age=86400, samesite="Strict")
    return resp


def error_page(
    request: web.Request, cookies: Cookies, status: int, code: str, message: str
) -> web.Response:
    return render(
        request,
        cookies,
        "error.html",
        title="Something is wrong",
        status=status,
        error={"code": code, "message": message},
    )


def redirect(location: str, form_targets: Iterable[str] = ()) -> web.Response:
    resp = web.Response(status=302, headers={"Location": location})
    security_headers(resp, form_targets)
    return resp


def stylesheet() -> web.Response:
    resp = web.Response(body=CSS, content_type="text/css", charset="utf-8")
    resp.headers["Cache-Control"] = "public, max-age=3600"
    resp.headers["X-Content-Type-Options"] = "nosniff"
    return resp
