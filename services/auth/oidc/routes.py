"""HTTP routes of the OpenID Connect provider, registered on the auth service's ``Api``.

Protocol endpoints (``/auth/oauth2/...``) answer RFC 6749 / RFC 6750 errors
(``{"error", "error_description"}``); the pages (sign-in, second factor,
consent, sign-out, password reset) answer HTML; the clients API (under
``/auth/v1/admin/clients``) the common error model, and it is audited.
Discovery is served at ``/.well-known/openid-configuration`` (the load
balancer sends ``/.well-known/`` here) and under ``/auth``.
"""

from __future__ import annotations

import base64
import binascii
import functools
from collections.abc import Awaitable, Callable
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode

from aiohttp import web
from authlib.oauth2 import OAuth2Error
from pydantic import BaseModel, Field, ValidationError

from services.auth import accounts, twofactor
from services.auth.api import api
from services.auth.models import (
    ClientCreate,
    ClientPatch,
    OAuthClient,
    OAuthClientList,
    OidcDiscovery,
    PasswordResetConfirm,
    PasswordResetRequest,
    SecondFactorRequest,
    TokenSet,
    UserInfo,
)
from services.auth.oidc import clients, pages
from services.auth.oidc.provider import STEP_CONSENT, STEP_RESUME, Provider
from services.auth.state import AUTH_SERVICE, OIDC_PROVIDER, AuthService, Caller
from services.auth.tokens import digest
from services.common.auth import Claims
from services.common.errors import ApiError
from services.common.errors import ErrorCode as E
from services.common.http import json_response

HTML = "text/html"
# The token endpoint's rule (AuthSettings.limit_token_ip).
TOKEN_LIMIT = "token_ip"
PROTOCOL = ["oidc"]
PAGES = ["oidc pages"]
_ADMIN: dict[str, Any] = {"auth": True, "role": "admin", "tags": ["admin"]}
# What a page may answer instead of its page: an HTML error page, or the form again
# with the refusal (the error code of the common model, in the page).
PAGE_ERRORS = (400, 401, 403, 404, 409, 422, 429)
TOKEN_ERRORS = {
    400: [
        "invalid_request", "invalid_grant", "unauthorized_client", "unsupported_grant_type",
        "invalid_scope", "invalid_client",
    ],
    401: ["invalid_client"],
    429: ["invalid_request"],
}  # fmt: skip


def provider(request: web.Request) -> Provider:
    return request.app[OIDC_PROVIDER]


def svc(request: web.Request) -> AuthService:
    return request.app[AUTH_SERVICE]


def caller(request: web.Request) -> Caller:
    return Caller.of(request, svc(request).config.trust_forwarded_for)


class UnreadableForm(Exception):
    """A form body that is not UTF-8, or says it is in another charset."""


async def form_pairs(request: web.Request) -> list[tuple[str, str]]:
    """The pairs of an ``application/x-www-form-urlencoded`` body (none for another type).

    UTF-8, strictly, whatever ``charset`` the type names (RFC 6749 appendix B: the
    form is UTF-8; clients label plain ASCII ``ISO-8859-1``, Apache HttpClient 4 by
    default): bytes that are not UTF-8, or a percent-escape that does not decode to
    UTF-8, raise :class:`UnreadableForm`, answered 400 before anything is done
    (:func:`reads_form`). Before, ``request.post()`` decoded by the label and raised
    on an unknown one or on bytes it did not fit: a 500 on every endpoint with a form.
    """
    if request.content_type != "application/x-www-form-urlencoded":
        return []
    body = await request.read()
    try:
        return parse_qsl(body.rstrip().decode("utf-8"), keep_blank_values=True, errors="strict")
    except UnicodeDecodeError as exc:
        raise UnreadableForm("not UTF-8") from exc


_Handler = Callable[[web.Request], Awaitable[web.Response]]


def reads_form(answer: Literal["oauth", "page"]) -> Callable[[_Handler], _Handler]:
    """A handler whose form cannot be read (:class:`UnreadableForm`) answers 400
    ``invalid_request``: RFC 6749's JSON on a protocol endpoint (``oauth``), the
    error page on a page. The form is read first, so nothing was done yet."""

    def decorate(fn: _Handler) -> _Handler:
        @functools.wraps(fn)
        async def handler(request: web.Request) -> web.Response:
            try:
                return await fn(request)
            except UnreadableForm:
                message = "Send the form in UTF-8 (application/x-www-form-urlencoded)."
                if answer == "oauth":
                    return oauth_error(400, "invalid_request", message)
                return pages.error_page(
                    request, provider(request).cookies, 400, "invalid_request", message
                )

        return handler

    return decorate


def basic_credentials_unreadable(request: web.Request) -> bool:
    """Whether the request has ``Authorization: Basic`` credentials that are not
    ``base64(client_id ":" client_secret)`` in UTF-8 (RFC 7617 section 2).

    Checked before Authlib reads them: its parser raised UnicodeDecodeError on bytes
    that are not UTF-8 (a 500, and the token limit's place given back) and skipped
    bad base64 (the client then authenticated by another method, or none)."""
    scheme, _, value = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return True
    return ":" not in decoded


def unreadable_client() -> web.Response:
    """RFC 6749 section 5.2: a client that tried the Authorization header and failed
    gets 401 ``invalid_client`` with a challenge of that scheme."""
    return oauth_error(
        401,
        "invalid_client",
        "The Basic credentials are not base64 of 'client_id:client_secret' in UTF-8.",
        {"WWW-Authenticate": 'Basic realm="parley", error="invalid_client"'},
    )


def oauth_error(
    status: int, error: str, description: str, headers: dict[str, str] | None = None
) -> web.Response:
    resp = json_response({"error": error, "error_description": description}, status=status)
    resp.headers.update(headers or {})
    resp.headers["Cache-Control"] = "no-store"
    return resp


def oauth_answer(status: int, body: Any, headers: list[tuple[str, str]]) -> web.Response:
    resp = json_response(body if body is not None else {}, status=status)
    for name, value in headers:
        if name.lower() != "content-type":
            resp.headers[name] = value
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _page_error(exc: ApiError) -> dict[str, str]:
    return {"code": exc.code.value, "message": exc.message}


def _form_expired(request: web.Request) -> web.Response:
    return pages.error_page(
        request,
        provider(request).cookies,
        403,
        E.FORBIDDEN.value,
        "This form has expired or did not come from this site; reload the page and try again.",
    )


# -- discovery and the protocol endpoints ---------------------------------------------


async def discovery(request: web.Request) -> web.Response:
    resp = json_response(provider(request).discovery())
    resp.headers["Cache-Control"] = "public, max-age=300"
    resp.headers["Access-Control-Allow-Origin"] = "*"
    return resp


@api.get(
    "/.well-known/openid-configuration",
    summary="OpenID Provider metadata (also at /.well-known/openid-configuration)",
    response=OidcDiscovery,
    tags=PROTOCOL,
)
async def discovery_route(request: web.Request) -> web.StreamResponse:
    return await discovery(request)


async def _authorize(request: web.Request) -> web.Response:
    params = list(request.query.items()) if request.method == "GET" else await form_pairs(request)
    return await provider(request).authorize(request, params, caller(request))


_AUTHORIZE = {
    "summary": "Authorization endpoint (code flow, PKCE S256 required): signs in, asks consent, "
    "redirects with a code or an RFC 6749 error",
    "produces": HTML,
    "page_errors": PAGE_ERRORS,
    "status": 302,
    "tags": PROTOCOL,
    "query": {
        "response_type": "code",
        "client_id": "the client",
        "redirect_uri": "exactly as registered",
        "scope": "openid profile email roles parley.api (those the client may ask for)",
        "state": "opaque, returned",
        "nonce": "returned in the ID token",
        "code_challenge": "BASE64URL(SHA256(code_verifier))",
        "code_challenge_method": "S256",
        "prompt": "none, login or consent",
        "max_age": "seconds since the last sign-in",
    },
}


@api.get("/oauth2/authorize", **_AUTHORIZE)
async def authorize_get(request: web.Request) -> web.Response:
    return await _authorize(request)


@api.post("/oauth2/authorize", **_AUTHORIZE)
@reads_form("page")
async def authorize_post(request: web.Request) -> web.Response:
    return await _authorize(request)


@api.get(
    "/oauth2/authorize/resume",
    summary="Where the sign-in page returns to: the pending authorization request goes on",
    produces=HTML,
    page_errors=PAGE_ERRORS,
    status=302,
    tags=PAGES,
    query={"request": "the pending request's id"},
)
async def authorize_resume(request: web.Request) -> web.Response:
    p = provider(request)
    rid = request.query.get("request", "")
    pending = await p.pending(rid)
    if pending is None:
        return pages.error_page(
            request, p.cookies, 400, "invalid_request", "This sign-in request has expired."
        )
    await p.drop_pending(rid)
    # Only the sign-in page's own return (``resume``) meets prompt=login and max_age,
    # and only for the user who signed in.
    fresh_for = pending.get("user_id") if pending.get("step") == STEP_RESUME else None
    return await p.authorize(
        request, pending["params"], caller(request), fresh_for=str(fresh_for or "") or None
    )


class ConsentForm(BaseModel):
    csrf: str
    request: str = Field(description="the pending request's id")
    decision: str = Field(description="allow or deny")


@api.post(
    "/oauth2/consent",
    summary="The consent page's answer: allow (a code) or deny (access_denied)",
    form=ConsentForm,
    produces=HTML,
    page_errors=PAGE_ERRORS,
    status=302,
    tags=PAGES,
)
@reads_form("page")
async def consent(request: web.Request) -> web.Response:
    p = provider(request)
    form = dict(await form_pairs(request))
    if not pages.csrf_ok(request, form, p.cookies):
        return _form_expired(request)
    rid = form.get("request", "")
    pending = await p.pending(rid)
    if pending is None:
        return pages.error_page(
            request, p.cookies, 400, "invalid_request", "This request has expired; start again."
        )
    login = await p.signed_in(request)
    oreq = p.oauth_request(request, pending["params"], caller(request))
    if login is None:
        return await p.authorize(request, pending["params"], caller(request))
    if pending.get("step") != STEP_CONSENT or pending.get("user_id") != login.user["_id"]:
        # A request waiting for a sign-in (prompt=login, max_age) or for another
        # user's consent: a code now would skip the sign-in it waits for.
        return pages.error_page(
            request,
            p.cookies,
            400,
            "invalid_request",
            "This request is not waiting for your consent; go back to the application.",
        )
    decision = form.get("decision")
    if decision not in ("allow", "deny"):
        return pages.error_page(request, p.cookies, 400, "invalid_request", "Allow or deny.")
    if decision == "allow":
        client = await clients.load(svc(request), str(oreq.payload.client_id or ""))
        if client is not None:
            scopes = (oreq.payload.scope or "").split()
            await svc(request).store.save_consent(
                login.user["_id"], client.client_id, scopes, svc(request).now()
            )
        return await p.issue_code(request, oreq, login, rid)
    return await p.issue_code(request, oreq, None, rid)


class TokenForm(BaseModel):
    grant_type: str = Field(description="authorization_code or refresh_token")
    code: str | None = None
    redirect_uri: str | None = None
    code_verifier: str | None = Field(default=None, description="PKCE, required with a code")
    refresh_token: str | None = None
    scope: str | None = None
    client_id: str | None = Field(default=None, description="public clients, client_secret_post")
    client_secret: str | None = Field(default=None, description="client_secret_post")


@api.post(
    "/oauth2/token",
    summary="Token endpoint: a code (with its PKCE verifier) or a refresh token for tokens",
    form=TokenForm,
    response=TokenSet,
    tags=PROTOCOL,
    oauth_errors=TOKEN_ERRORS,
)
@reads_form("oauth")
async def token(request: web.Request) -> web.Response:
    p = provider(request)
    if request.content_type != "application/x-www-form-urlencoded":
        return oauth_error(400, "invalid_request", "Send application/x-www-form-urlencoded.")
    who = caller(request)
    oreq = p.oauth_request(request, await form_pairs(request), who)
    if oreq.repeated():
        return oauth_error(400, "invalid_request", f"Repeated: {', '.join(oreq.repeated())}.")
    limiter = svc(request).limiter
    # Per client address (limit_token_ip): a place is taken before the attempt (before
    # the client secret is tested; refused at once when the window is full). Only a
    # failure keeps it: a failed client authentication (invalid_client, unreadable
    # Basic credentials included) or a failed code exchange (invalid_grant). Any other
    # request, a successful code exchange included, gives its place back (refreshes
    # have their own limit, refresh_ip).
    code_grant = oreq.payload.grant_type == "authorization_code"
    keep = False
    try:
        await limiter.reserve(TOKEN_LIMIT, who.ip_key)
    except ApiError as exc:
        return oauth_error(429, "invalid_request", "Too many token requests.", exc.headers)
    if basic_credentials_unreadable(request):
        # A failed client authentication: it keeps its place.
        return unreadable_client()
    try:
        status, body, headers = await p.server.call(lambda: p.server.create_token_response(oreq))
        error = body.get("error") if isinstance(body, dict) else None
        keep = error == "invalid_client" or (code_grant and error == "invalid_grant")
    except ApiError as exc:
        if exc.code != E.RATE_LIMITED:
            raise
        return oauth_error(429, "invalid_request", exc.message, exc.headers)
    finally:
        if not keep:
            await limiter.release(TOKEN_LIMIT, who.ip_key)
    return oauth_answer(status, body, headers)


class RevokeForm(BaseModel):
    token: str
    token_type_hint: str | None = Field(default=None, description="access_token, refresh_token")
    client_id: str | None = None
    client_secret: str | None = None


@api.post(
    "/oauth2/revoke",
    summary="Token revocation (RFC 7009): ends the session (grant) the token belongs to",
    form=RevokeForm,
    tags=PROTOCOL,
    oauth_errors={
        400: ["invalid_request", "invalid_client", "invalid_grant", "unsupported_token_type"],
        401: ["invalid_client"],
    },
)
@reads_form("oauth")
async def revoke(request: web.Request) -> web.Response:
    p = provider(request)
    if request.content_type != "application/x-www-form-urlencoded":
        return oauth_error(400, "invalid_request", "Send application/x-www-form-urlencoded.")
    oreq = p.oauth_request(request, await form_pairs(request), caller(request))
    if oreq.repeated():
        return oauth_error(400, "invalid_request", f"Repeated: {', '.join(oreq.repeated())}.")
    if basic_credentials_unreadable(request):
        return unreadable_client()
    result = await p.server.call(lambda: p.server.create_endpoint_response("revocation", oreq))
    status, body, headers = result
    return oauth_answer(status, body, headers)


async def _userinfo(request: web.Request) -> web.Response:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return oauth_error(
            401,
            "invalid_request",
            "Send the access token: Authorization: Bearer <token>.",
            {"WWW-Authenticate": 'Bearer realm="parley"'},
        )
    claims = await provider(request).userinfo(value.strip())
    if claims is None:
        return oauth_error(
            401,
            "invalid_token",
            "The access token is not valid (expired, revoked, or not ours).",
            {"WWW-Authenticate": 'Bearer realm="parley", error="invalid_token"'},
        )
    resp = json_response(claims)
    resp.headers["Cache-Control"] = "no-store"
    return resp


_USERINFO: dict[str, Any] = {
    "summary": "UserInfo (OpenID Connect Core 5.3): the claims the token's scope releases",
    "response": UserInfo,
    "tags": PROTOCOL,
    "oauth_errors": {401: ["invalid_request", "invalid_token"]},
}


@api.get("/oauth2/userinfo", **_USERINFO)
async def userinfo_get(request: web.Request) -> web.Response:
    return await _userinfo(request)


@api.post("/oauth2/userinfo", **_USERINFO)
async def userinfo_post(request: web.Request) -> web.Response:
    return await _userinfo(request)


END_SESSION_PARAMS = ("id_token_hint", "client_id", "post_logout_redirect_uri", "state")


async def _logout(request: web.Request) -> web.Response:
    p = provider(request)
    if request.method == "GET":
        raw = list(request.query.items())
    else:
        raw = await form_pairs(request)
    form = dict(raw)
    params = [(k, v) for k, v in raw if k in END_SESSION_PARAMS]
    confirmed = False
    if request.method == "POST":
        if not pages.csrf_ok(request, form, p.cookies):
            return _form_expired(request)
        confirmed = form.get("confirm") == "yes"
    oreq = p.oauth_request(request, params, caller(request))
    try:
        checked = await p.server.call(
            lambda: p.server.validate_endpoint_request("end_session", oreq)
        )
    except OAuth2Error as err:
        return pages.error_page(
            request, p.cookies, 400, err.error, err.description or "Bad sign-out request."
        )
    login = await p.signed_in(request)
    claims = checked.id_token_claims
    # RP-Initiated Logout 1.0 section 6: only the signed-in user's own ID token ends
    # the sign-in without asking. Without one (no hint, another user's, nobody signed
    # in) the user confirms first (a CSRF-checked POST): a link must not sign a
    # browser out, nor end a session, with an ID token found somewhere.
    own = login is not None and claims is not None and claims.get("sub") == login.user["_id"]
    if not own and not confirmed:
        return pages.render(
            request,
            p.cookies,
            "logout.html",
            title="Sign out",
            username=login.user["username"] if login else None,
            params=params,
            # form-action governs the redirect after the POST (Chromium): the
            # client's post-logout redirect URI may be on another origin.
            form_targets=[pages.origin_of(checked.redirect_uri)] if checked.redirect_uri else [],
        )
    result = await p.server.call(lambda: p.server.create_endpoint_response("end_session", checked))
    if claims is not None:
        await p.server.end_hinted_session(claims)
    await p.sign_out(login.token if login else None)
    location = dict(result[2]).get("Location") if result else None
    if location:
        resp = pages.redirect(location)
    else:
        resp = pages.render(
            request, p.cookies, "message.html", title="Signed out", message="You are signed out."
        )
    p.cookies.clear(resp, p.cookies.login)
    return resp


_LOGOUT: dict[str, Any] = {
    "summary": "End session (RP-Initiated Logout 1.0): ends the sign-in session and the "
    "id_token_hint's session; asks first unless the hint is the signed-in user's",
    "produces": HTML,
    "page_errors": PAGE_ERRORS,
    "tags": PROTOCOL,
    "query": {k: "RP-Initiated Logout 1.0 section 2" for k in END_SESSION_PARAMS},
}


@api.get("/oauth2/logout", **_LOGOUT)
async def logout_get(request: web.Request) -> web.Response:
    return await _logout(request)


@api.post("/oauth2/logout", **_LOGOUT)
@reads_form("page")
async def logout_post(request: web.Request) -> web.Response:
    return await _logout(request)


# -- the sign-in pages -------------------------------------------------------------------


async def _client_name(request: web.Request, params: list[tuple[str, str]]) -> str | None:
    client = await clients.load(svc(request), dict(params).get("client_id", ""))
    return str(client.doc["name"]) if client else None


def _targets(pending: dict[str, Any] | None) -> list[str]:
    uri = dict(pending["params"]).get("redirect_uri") if pending else None
    return [pages.origin_of(uri)] if uri else []


async def _login_page(
    request: web.Request,
    rid: str,
    pending: dict[str, Any] | None,
    *,
    status: int = 200,
    error: dict[str, str] | None = None,
    username: str = "",
) -> web.Response:
    return pages.render(
        request,
        provider(request).cookies,
        "login.html",
        title="Sign in",
        status=status,
        error=error,
        client=await _client_name(request, pending["params"]) if pending else None,
        request_id=rid,
        username=username,
        form_targets=_targets(pending),
    )


async def _finish_login(
    request: web.Request,
    user: dict[str, Any],
    amr: list[str],
    rid: str,
    pending: dict[str, Any] | None,
) -> web.Response:
    p = provider(request)
    token = await p.sign_in(user, amr)
    if pending is not None:
        await p.drop_pending(rid)
        rid = await p.save_pending(pending["params"], STEP_RESUME, user["_id"])
        resp = pages.redirect(
            "/auth/oauth2/authorize/resume?" + urlencode({"request": rid}), _targets(pending)
        )
    else:
        resp = pages.redirect("/auth/login")
    p.set_login_cookie(resp, token)
    return resp


async def _pending_of(
    request: web.Request, rid: str
) -> tuple[dict[str, Any] | None, web.Response | None]:
    if not rid:
        return None, None
    pending = await provider(request).pending(rid)
    if pending is None:
        page = pages.error_page(
            request,
            provider(request).cookies,
            400,
            "invalid_request",
            "This sign-in request has expired; go back to the application and start again.",
        )
        return None, page
    return pending, None


@api.get(
    "/login",
    summary="The sign-in page (password, then the second factor if the account has one)",
    produces=HTML,
    page_errors=PAGE_ERRORS,
    tags=PAGES,
    query={"request": "a pending authorization request's id"},
)
async def login_page(request: web.Request) -> web.Response:
    rid = request.query.get("request", "")
    pending, failed = await _pending_of(request, rid)
    if failed is not None:
        return failed
    login = await provider(request).signed_in(request)
    if login is not None and pending is None:
        return pages.render(
            request,
            provider(request).cookies,
            "message.html",
            title="Signed in",
            message=f"You are signed in as {login.user['username']}.",
            signed_in_as=login.user["username"],
        )
    return await _login_page(request, rid, pending)


class LoginForm(BaseModel):
    csrf: str
    request: str = ""
    username: str
    password: str


@api.post(
    "/login",
    summary="Sign in with username and password",
    form=LoginForm,
    produces=HTML,
    page_errors=PAGE_ERRORS,
    tags=PAGES,
)
@reads_form("page")
async def login_submit(request: web.Request) -> web.Response:
    p = provider(request)
    form = dict(await form_pairs(request))
    if not pages.csrf_ok(request, form, p.cookies):
        return _form_expired(request)
    rid = form.get("request", "")
    pending, failed = await _pending_of(request, rid)
    if failed is not None:
        return failed
    username = form.get("username", "")[:64]
    try:
        user = await accounts.check_login(
            svc(request), username, form.get("password", "")[:1024], caller(request)
        )
        if twofactor.methods(user):
            challenge = await twofactor.begin_login(svc(request), user, caller(request), None, None)
            return _twofactor_page(
                request, rid, pending, challenge.challenge_id, user["username"],
                list(challenge.methods), email_sent=challenge.email_code_sent,
            )  # fmt: skip
    except ApiError as exc:
        return await _login_page(
            request, rid, pending, status=exc.status, error=_page_error(exc), username=username
        )
    return await _finish_login(request, user, ["pwd"], rid, pending)


def _twofactor_page(
    request: web.Request,
    rid: str,
    pending: dict[str, Any] | None,
    challenge: str,
    username: str,
    methods: list[str],
    *,
    status: int = 200,
    error: dict[str, str] | None = None,
    email_sent: bool = False,
    method: str | None = None,
) -> web.Response:
    return pages.render(
        request,
        provider(request).cookies,
        "twofactor.html",
        title="Second factor",
        status=status,
        error=error,
        request_id=rid,
        challenge=challenge,
        username=username,
        methods=methods,
        method=method or methods[0],
        email_sent=email_sent,
        form_targets=_targets(pending),
    )


class SecondFactorForm(BaseModel):
    csrf: str
    request: str = ""
    challenge: str
    method: str = Field(description="totp, email or recovery")
    code: str = ""
    action: str = Field(default="verify", description="verify, or send_email")


@api.post(
    "/login/2fa",
    summary="Answer the sign-in's second factor (or have a code e-mailed)",
    form=SecondFactorForm,
    produces=HTML,
    page_errors=PAGE_ERRORS,
    tags=PAGES,
)
@reads_form("page")
async def login_2fa(request: web.Request) -> web.Response:
    p = provider(request)
    s = svc(request)
    form = dict(await form_pairs(request))
    if not pages.csrf_ok(request, form, p.cookies):
        return _form_expired(request)
    rid = form.get("request", "")
    pending, failed = await _pending_of(request, rid)
    if failed is not None:
        return failed
    challenge_id = form.get("challenge", "")[:100]
    record = await s.store.eph_get(twofactor.CHALLENGE, digest(challenge_id))
    if record is None:
        return await _login_page(
            request, rid, pending, status=401,
            error={"code": E.CHALLENGE_EXPIRED.value,
                   "message": "This sign-in attempt has expired; sign in again."},
        )  # fmt: skip
    user = await s.store.user_by_id(record["user_id"])
    methods = record["methods"].split(",")
    username = user["username"] if user else ""
    method = form.get("method", "")

    def again(exc: ApiError, sent: bool = False) -> web.Response:
        return _twofactor_page(
            request, rid, pending, challenge_id, username, methods,
            status=exc.status if not sent else 200, error=None if sent else _page_error(exc),
            email_sent=sent, method=method if method in methods else None,
        )  # fmt: skip

    if form.get("action") == "send_email":
        try:
            await twofactor.send_login_code(s, challenge_id, caller(request))
        except ApiError as exc:
            return again(exc)
        return again(ApiError(E.BAD_REQUEST), sent=True)
    try:
        body = SecondFactorRequest.model_validate(
            {"challenge_id": challenge_id, "method": method, "code": form.get("code", "")[:32]}
        )
    except ValidationError:
        return again(ApiError(E.VALIDATION_FAILED, "Choose a method and enter the code."))
    try:
        user2, _, _ = await twofactor.check_challenge(s, body, caller(request))
    except ApiError as exc:
        if exc.code == E.CHALLENGE_EXPIRED:
            return await _login_page(
                request, rid, pending, status=exc.status, error=_page_error(exc)
            )
        return again(exc)
    return await _finish_login(request, dict(user2), twofactor.SECOND_FACTOR_AMR, rid, pending)


# -- password reset pages -------------------------------------------------------------------


@api.get(
    "/reset-password",
    summary="Password reset: ask for the e-mail",
    produces=HTML,
    page_errors=PAGE_ERRORS,
    tags=PAGES,
)
async def reset_page(request: web.Request) -> web.Response:
    return pages.render(request, provider(request).cookies, "reset_request.html", title="Reset")


class ResetForm(BaseModel):
    csrf: str
    email: str


@api.post(
    "/reset-password",
    summary="Password reset: e-mail a link (always the same answer)",
    form=ResetForm,
    produces=HTML,
    page_errors=PAGE_ERRORS,
    tags=PAGES,
)
@reads_form("page")
async def reset_submit(request: web.Request) -> web.Response:
    p = provider(request)
    form = dict(await form_pairs(request))
    if not pages.csrf_ok(request, form, p.cookies):
        return _form_expired(request)
    try:
        body = PasswordResetRequest(email=form.get("email", "")[:254])
        accepted = await accounts.request_reset(svc(request), body, caller(request))
    except (ValidationError, ApiError) as exc:
        err = exc if isinstance(exc, ApiError) else ApiError(E.VALIDATION_FAILED)
        if err.code == E.VALIDATION_FAILED:
            err = ApiError(E.VALIDATION_FAILED, "That is not an e-mail address.")
        return pages.render(
            request, p.cookies, "reset_request.html", title="Reset",
            status=err.status, error=_page_error(err),
        )  # fmt: skip
    return pages.render(
        request, p.cookies, "message.html", title="Check your mail", message=accepted.message
    )


def _reset_confirm_page(
    request: web.Request, token: str, status: int = 200, error: dict[str, str] | None = None
) -> web.Response:
    return pages.render(
        request,
        provider(request).cookies,
        "reset_confirm.html",
        title="Choose a new password",
        status=status,
        error=error,
        token=token,
    )


@api.get(
    "/reset-password/confirm",
    summary="Password reset: the e-mailed link lands here (choose a new password)",
    produces=HTML,
    page_errors=PAGE_ERRORS,
    tags=PAGES,
    query={"token": "the reset token from the e-mail"},
)
async def reset_confirm_page(request: web.Request) -> web.Response:
    token = request.query.get("token", "")
    if not 1 <= len(token) <= 200:
        return pages.error_page(
            request,
            provider(request).cookies,
            400,
            E.INVALID_TOKEN.value,
            "This reset link is not complete; open the link from the e-mail again.",
        )
    return _reset_confirm_page(request, token)


class ResetConfirmForm(BaseModel):
    csrf: str
    token: str
    password: str
    password2: str


@api.post(
    "/reset-password/confirm",
    summary="Password reset: set the new password (every session ends)",
    form=ResetConfirmForm,
    produces=HTML,
    page_errors=PAGE_ERRORS,
    tags=PAGES,
)
@reads_form("page")
async def reset_confirm_submit(request: web.Request) -> web.Response:
    p = provider(request)
    form = dict(await form_pairs(request))
    if not pages.csrf_ok(request, form, p.cookies):
        return _form_expired(request)
    token = form.get("token", "")[:200]
    password = form.get("password", "")[:1024]
    if password != form.get("password2", ""):
        err = ApiError(E.VALIDATION_FAILED, "The two passwords differ.")
        return _reset_confirm_page(request, token, err.status, _page_error(err))
    try:
        body = PasswordResetConfirm(token=token or "-", new_password=password or "-")
        await accounts.confirm_reset(svc(request), body, caller(request))
    except ApiError as exc:
        return _reset_confirm_page(request, token, exc.status, _page_error(exc))
    except ValidationError:
        err = ApiError(E.VALIDATION_FAILED, "Enter the new password twice.")
        return _reset_confirm_page(request, token, err.status, _page_error(err))
    return pages.render(
        request,
        p.cookies,
        "message.html",
        title="Password changed",
        message="Your password is changed and every session is signed out.",
        link={"href": "/auth/login", "text": "Sign in"},
    )


@api.get(
    "/static/provider.css",
    summary="The pages' stylesheet",
    produces="text/css",
    tags=PAGES,
)
async def stylesheet(request: web.Request) -> web.Response:
    return pages.stylesheet()


# -- the clients API (admins) ------------------------------------------------------------------

_CLIENT_ERRORS = [E.FORBIDDEN, E.NOT_FOUND]


@api.get(
    "/v1/admin/clients",
    summary="List the OpenID Connect clients",
    response=OAuthClientList,
    errors=[E.FORBIDDEN],
    **_ADMIN,
)
async def clients_list(request: web.Request, claims: Claims) -> OAuthClientList:
    return await clients.list_all(svc(request), claims, caller(request))


@api.post(
    "/v1/admin/clients",
    summary="Register a client (a confidential one's secret is in the answer, once)",
    body=ClientCreate,
    response=OAuthClient,
    status=201,
    errors=[E.FORBIDDEN, E.CONFLICT],
    **_ADMIN,
)
async def clients_create(request: web.Request, claims: Claims, body: ClientCreate) -> OAuthClient:
    return await clients.create(svc(request), claims, caller(request), body)


@api.get(
    "/v1/admin/clients/{client_id}",
    summary="View a client",
    response=OAuthClient,
    errors=_CLIENT_ERRORS,
    **_ADMIN,
)
async def clients_view(request: web.Request, claims: Claims) -> OAuthClient:
    cid = request.match_info["client_id"]
    return await clients.get(svc(request), claims, caller(request), cid)


@api.patch(
    "/v1/admin/clients/{client_id}",
    summary="Edit a client (disabling it ends its sessions)",
    body=ClientPatch,
    response=OAuthClient,
    errors=[*_CLIENT_ERRORS, E.CONFLICT],
    **_ADMIN,
)
async def clients_edit(request: web.Request, claims: Claims, body: ClientPatch) -> OAuthClient:
    cid = request.match_info["client_id"]
    return await clients.update(svc(request), claims, caller(request), cid, body)


@api.post(
    "/v1/admin/clients/{client_id}/secret",
    summary="A new secret for a confidential client (the old one stops working)",
    response=OAuthClient,
    errors=[*_CLIENT_ERRORS, E.CONFLICT],
    **_ADMIN,
)
async def clients_secret(request: web.Request, claims: Claims) -> OAuthClient:
    cid = request.match_info["client_id"]
    return await clients.rotate_secret(svc(request), claims, caller(request), cid)


@api.delete(
    "/v1/admin/clients/{client_id}",
    summary="Delete a client (its sessions end)",
    status=204,
    errors=[*_CLIENT_ERRORS, E.CONFLICT],
    **_ADMIN,
)
async def clients_delete(request: web.Request, claims: Claims) -> None:
    cid = request.match_info["client_id"]
    await clients.delete(svc(request), claims, caller(request), cid)
