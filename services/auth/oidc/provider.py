"""The provider's logic around Authlib: sign-in sessions, pending requests, authorize, userinfo.

**Sign-in session** (the provider's own, not a Parley session): after the
password (and second factor) on the sign-in page, an opaque 256-bit token in
the HttpOnly cookie ``parley_login`` (``__Host-parley_login``, Secure, on
https; SameSite=Lax so that a client's redirect to ``/authorize`` carries it).
Redis keeps ``{user_id, auth_time, amr}`` under its SHA-256 for
``PARLEY_OIDC_LOGIN_SESSION_TTL_S`` (30 minutes, absolute). Within that time
another authorization needs no password. It ends at end-session, at its
expiry, and as soon as the account is blocked, its password changes or its
sessions are ended together (its security stamp goes up: "end my other
sessions", an admin's revoke, a role change), checked at every use.

**Pending request**: while the user signs in or consents, the authorization
request's parameters wait in Redis under a random id (``request`` in the
pages' forms) for ``PARLEY_OIDC_REQUEST_TTL_S``, with the step it waits for
(``login``: a sign-in; ``consent``: this user's answer; ``resume``: a sign-in
just made by this user) and the user. The consent form issues a code only for
a ``consent`` request of the user signed in now: a request stopped for a
sign-in (``prompt=login``, ``max_age``) cannot skip it.

What is kept is bounded: only the parameters the provider reads
(``AUTHORIZE_PARAMS``, each once and within its length; the others are dropped,
as OpenID Connect Core 3.1.2.1 says to ignore them), and at most
``PARLEY_LIMIT_AUTHORIZE_IP`` new pending requests per client address in its
window. Before, the whole request was kept, anonymously and unlimited: a loop
of 64 KB requests filled the shared Redis.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import InvalidRequestError, scope_to_list
from authlib.oidc.core.errors import ConsentRequiredError, LoginRequiredError

from services.auth import sessions
from services.auth.oidc import clients, pages
from services.auth.oidc.clients import Client
from services.auth.oidc.server import OAuthRequest, ParleyServer, user_claims
from services.auth.signing import ALG
from services.auth.state import AuthService, Caller
from services.auth.tokens import digest, new_token
from services.common.auth import Claims, check_not_revoked
from services.common.errors import ApiError

LOGIN = "oidc-login"
PENDING = "oidc-request"
# What a pending request waits for (``Provider.save_pending``).
STEP_LOGIN = "login"
STEP_CONSENT = "consent"
STEP_RESUME = "resume"
MAX_AGE = re.compile(r"[0-9]{1,10}")
# The authorization request's parameters the provider reads, and the longest value of
# each: state and nonce are the client's opaque values (most OpenID clients send a few
# dozen characters; ASP.NET Core's packs its encrypted properties, return URL included,
# into state: 4 KB for it, 1 KB for a nonce), a code challenge is at most 128 characters (RFC 7636
# 4.1; S256 gives 43), an ID token of ours stays well under 8 KB, a client id and a
# redirect URI are at most what registration takes. Another parameter is ignored
# (dropped); one of these over its length, or sent twice (RFC 6749 3.1), is
# ``invalid_request``.
AUTHORIZE_PARAMS: dict[str, int] = {
    "response_type": 64,
    "client_id": 64,
    "redirect_uri": clients.MAX_URI,
    "response_mode": 32,
    "scope": 1024,
    "state": 4096,
    "nonce": 1024,
    "code_challenge": 128,
    "code_challenge_method": 16,
    "prompt": 64,
    "max_age": 10,
    "id_token_hint": 8192,
}
_UNCHECKED = object()  # an id_token_hint not verified yet
# New pending requests per client address (AuthSettings.limit_authorize_ip).
AUTHORIZE_LIMIT = "authorize_ip"


def authorization_params(
    params: Iterable[tuple[str, str]],
) -> tuple[list[tuple[str, str]], list[str]]:
    """(the parameters the provider reads, in order; the names among them that are
    too long or repeated)."""
    kept = [(k, v) for k, v in params if k in AUTHORIZE_PARAMS]
    names = [k for k, _ in kept]
    unfit = {k for k, v in kept if len(v) > AUTHORIZE_PARAMS[k] or names.count(k) > 1}
    return kept, sorted(unfit)


@dataclass(frozen=True)
class SignIn:
    """A live sign-in session: who, since when, how."""

    token: str
    user: dict[str, Any]
    auth_time: int
    amr: list[str]


class Provider:
    def __init__(self, svc: AuthService, issuer: str) -> None:
        self.svc = svc
        self.issuer = issuer.rstrip("/")
        self.server = ParleyServer(svc, self.issuer)
        self.cookies = pages.Cookies(self.issuer)

    # -- metadata ---------------------------------------------------------------

    def endpoint(self, path: str) -> str:
        return f"{self.issuer}{path}"

    def discovery(self) -> dict[str, Any]:
        """OpenID Provider Metadata (OpenID Connect Discovery 1.0; RFC 8414)."""
        auth_methods = ["client_secret_basic", "client_secret_post", "none"]
        return {
            "issuer": self.issuer,
            "authorization_endpoint": self.endpoint("/auth/oauth2/authorize"),
            "token_endpoint": self.endpoint("/auth/oauth2/token"),
            "userinfo_endpoint": self.endpoint("/auth/oauth2/userinfo"),
            "jwks_uri": self.endpoint("/.well-known/jwks.json"),
            "end_session_endpoint": self.endpoint("/auth/oauth2/logout"),
            "revocation_endpoint": self.endpoint("/auth/oauth2/revoke"),
            "scopes_supported": list(self.server.scopes_supported),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [ALG],
            "userinfo_signing_alg_values_supported": ["none"],
            "token_endpoint_auth_methods_supported": auth_methods,
            "revocation_endpoint_auth_methods_supported": auth_methods,
            "code_challenge_methods_supported": ["S256"],
            "prompt_values_supported": ["none", "login", "consent"],
            "claims_supported": [
                "sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "amr", "at_hash",
                "sid", "preferred_username", "name", "updated_at", "email", "email_verified",
                "roles",
            ],
            "claims_parameter_supported": False,
            "request_parameter_supported": False,
            "request_uri_parameter_supported": False,
        }  # fmt: skip

    # -- requests -----------------------------------------------------------------

    def oauth_request(
        self, request: web.Request, params: Iterable[tuple[str, str]], caller: Caller
    ) -> OAuthRequest:
        return OAuthRequest(
            request.method, self.issuer + request.path_qs, request.headers, params, caller
        )

    async def save_pending(
        self, params: list[tuple[str, str]], step: str, user_id: str | None = None
    ) -> str:
        """Keep a request while it waits for ``step`` (``STEP_*``) of ``user_id``."""
        rid = new_token()
        value = {"params": params, "step": step, "user_id": user_id}
        await self.svc.store.eph_json_put(
            PENDING, digest(rid), value, self.svc.config.oidc_request_ttl_s
        )
        return rid

    async def pending(self, rid: str) -> dict[str, Any] | None:
        if not 20 <= len(rid) <= 100:
            return None
        value = await self.svc.store.eph_json_get(PENDING, digest(rid))
        if not isinstance(value, dict):
            return None
        value["params"] = [(str(k), str(v)) for k, v in value["params"]]
        return value

    async def drop_pending(self, rid: str | None) -> None:
        if rid:
            await self.svc.store.eph_delete(PENDING, digest(rid))

    # -- the sign-in session ------------------------------------------------------------

    async def sign_in(self, user: Mapping[str, Any], amr: list[str]) -> str:
        token = new_token()
        value = {
            "user_id": user["_id"], "auth_time": int(self.svc.now().timestamp()), "amr": amr,
            "pw": sessions.password_stamp(user), "ss": sessions.security_stamp(user),
        }  # fmt: skip
        ttl = self.svc.config.oidc_login_session_ttl_s
        await self.svc.store.eph_json_put(LOGIN, digest(token), value, ttl)
        return token

    async def signed_in(self, request: web.Request) -> SignIn | None:
        token = request.cookies.get(self.cookies.login, "")
        if not 20 <= len(token) <= 100:
            return None
        value = await self.svc.store.eph_json_get(LOGIN, digest(token))
        if not isinstance(value, dict):
            return None
        user = await self.svc.store.user_by_id(str(value["user_id"]))
        auth_time = int(value["auth_time"])
        if (
            user is None
            or user["blocked"]
            # The password the sign-in was checked against has changed since (whole
            # seconds of ``auth_time`` let a sign-in raced with a reset through).
            or value.get("pw") != sessions.password_stamp(user)
            # The account's sessions were ended since ("end my other sessions", an
            # admin's revoke, a role change: sessions.security_stamp; a cookie from
            # before the stamp existed has none: 0).
            or value.get("ss", 0) != sessions.security_stamp(user)
        ):
            await self.sign_out(token)
            return None
        return SignIn(token, user, auth_time, list(value.get("amr") or []))

    async def sign_out(self, token: str | None) -> None:
        if token:
            await self.svc.store.eph_delete(LOGIN, digest(token))

    def set_login_cookie(self, resp: web.StreamResponse, token: str) -> None:
        ttl = self.svc.config.oidc_login_session_ttl_s
        self.cookies.set(resp, self.cookies.login, token, max_age=ttl, samesite="Lax")

    # -- the authorization endpoint ----------------------------------------------------

    def error_response(
        self, request: web.Request, oreq: OAuthRequest, err: OAuth2Error
    ) -> web.Response:
        """A redirect to the client when its redirect URI is known good; else a page."""
        status, body, headers = self.server.handle_error_response(oreq, err)
        location = dict(headers).get("Location")
        if status == 302 and location:
            return pages.redirect(location)
        code = body.get("error", "invalid_request") if isinstance(body, dict) else "server_error"
        message = (body.get("error_description") if isinstance(body, dict) else None) or code
        return pages.error_page(request, self.cookies, 400, code, message)

    async def authorize(
        self,
        request: web.Request,
        params: list[tuple[str, str]],
        caller: Caller,
        *,
        fresh_for: str | None = None,
    ) -> web.Response:
        """Validate an authorization request, then sign in, consent, or answer with a code.

        ``fresh_for``: the user who has just signed in for this request (the sign-in
        page's return): ``prompt=login`` and ``max_age`` are met if it is still them;
        an ``id_token_hint`` still not met is an error redirect, not another sign-in.
        """
        params, unfit = authorization_params(params)
        if unfit:
            return await self._unfit(request, params, unfit, caller)
        login = await self.signed_in(request)
        user = login.user if login else None
        oreq = self.oauth_request(request, params, caller)
        data = oreq.payload.data
        try:
            grant = await self.server.call(
                lambda: self.server.get_consent_grant(oreq, end_user=user)
            )
        except OAuth2Error as err:
            return self.error_response(request, oreq, err)
        except ValueError:
            # Authlib cannot even describe the refusal (control characters in a
            # parameter it would quote): a request nobody can answer by redirect.
            return pages.error_page(
                request, self.cookies, 400, "invalid_request", "Not a valid authorization request."
            )
        state = data.get("state")
        max_age = data.get("max_age")
        if max_age is not None and not MAX_AGE.fullmatch(max_age):
            # ASCII digits only: str.isdigit() takes "²", which int() refuses.
            bad = InvalidRequestError("'max_age' is a number of seconds.")
            bad.redirect_uri, bad.state = grant.redirect_uri, state
            return self.error_response(request, oreq, bad)
        fresh = login is not None and fresh_for is not None and login.user["_id"] == fresh_for
        prompts = (data.get("prompt") or "").split()
        needs_login = login is None or ("login" in prompts and not fresh)
        if login is not None and max_age is not None and not fresh:
            needs_login = needs_login or time.time() - login.auth_time > int(max_age)
        hint_sub: str | object | None = _UNCHECKED  # None: a hint that is not ours
        if login is not None and not needs_login and "id_token_hint" in data:
            # OpenID Connect Core 3.1.2.1: the hint names the user the client expects;
            # another user signed in here (or a hint we cannot verify) is a sign-in.
            hint_sub = await self._hint_sub(data["id_token_hint"])
            needs_login = hint_sub != login.user["_id"]
            if needs_login and fresh_for is not None:
                # The user has just signed in for this request and still does not
                # match: another sign-in would only loop. The client hears why.
                unmet: OAuth2Error
                if hint_sub is None:
                    unmet = InvalidRequestError(
                        "The 'id_token_hint' is not an ID token of this provider."
                    )
                else:
                    unmet = LoginRequiredError("The signed-in user is not the hinted one.")
                unmet.redirect_uri, unmet.state = grant.redirect_uri, state
                return self.error_response(request, oreq, unmet)
        client: Client = grant.request.client
        targets = [pages.origin_of(grant.redirect_uri)]
        if needs_login:
            if "none" in prompts:
                return self.error_response(
                    request, oreq, LoginRequiredError(redirect_uri=grant.redirect_uri,
                                                      state=state)
                )  # fmt: skip
            if hint_sub is _UNCHECKED and "id_token_hint" in data:
                hint_sub = await self._hint_sub(data["id_token_hint"])
            if hint_sub is None:
                # A hint that is no ID token of ours fails once the user has signed in:
                # refused now, not kept waiting in Redis (8 KB of it, anonymously).
                bad = InvalidRequestError(
                    "The 'id_token_hint' is not an ID token of this provider."
                )
                bad.redirect_uri, bad.state = grant.redirect_uri, state
                return self.error_response(request, oreq, bad)
            try:
                rid = await self.hold(params, STEP_LOGIN, caller)
            except ApiError as exc:
                return self.limited(request, exc)
            return pages.redirect("/auth/login?" + urlencode({"request": rid}), targets)
        assert login is not None
        scopes = scope_to_list(grant.request.scope) or []
        if not await self._consented(login.user, client, scopes) or "consent" in prompts:
            if "none" in prompts:
                return self.error_response(
                    request, oreq, ConsentRequiredError(redirect_uri=grant.redirect_uri,
                                                        state=state)
                )  # fmt: skip
            try:
                rid = await self.hold(params, STEP_CONSENT, caller, login.user["_id"])
            except ApiError as exc:
                return self.limited(request, exc)
            return self.consent_page(request, rid, client, scopes, login, grant.redirect_uri)
        return await self.issue_code(request, oreq, login)

    async def _unfit(
        self,
        request: web.Request,
        params: list[tuple[str, str]],
        unfit: list[str],
        caller: Caller,
    ) -> web.Response:
        """``invalid_request`` for parameters too long or repeated (``unfit``): to the
        client's redirect URI when it is one registered for the client (RFC 6749
        4.1.2.1), else on the error page. The unfit ones are not repeated back (a
        ``state`` of 60 KB is not returned)."""
        fit = [(k, v) for k, v in params if k not in unfit]
        data = dict(fit)
        oreq = self.oauth_request(request, fit, caller)
        bad = InvalidRequestError(f"Too long or repeated: {', '.join(unfit)}.")
        client = await clients.load(self.svc, data.get("client_id", ""))
        redirect_uri = data.get("redirect_uri")
        if client is None or redirect_uri is None or not client.check_redirect_uri(redirect_uri):
            return pages.error_page(
                request, self.cookies, 400, bad.error, "Not a valid authorization request."
            )
        bad.redirect_uri, bad.state = redirect_uri, data.get("state")
        return self.error_response(request, oreq, bad)

    async def hold(
        self,
        params: list[tuple[str, str]],
        step: str,
        caller: Caller,
        user_id: str | None = None,
    ) -> str:
        """``save_pending`` for a new request, counted per client address first
        (``AUTHORIZE_LIMIT``): past the limit, ApiError 429 and nothing kept."""
        await self.svc.limiter.hit(AUTHORIZE_LIMIT, caller.ip_key)
        return await self.save_pending(params, step, user_id)

    def limited(self, request: web.Request, exc: ApiError) -> web.Response:
        """The limiter's refusal as a page: its status, code and ``Retry-After``."""
        resp = pages.error_page(request, self.cookies, exc.status, exc.code.value, exc.message)
        resp.headers.update(exc.headers)
        return resp

    async def _hint_sub(self, hint: str) -> str | None:
        """The ``sub`` of an ID token this provider signed; None if it is not one."""
        claims = await self.server.verify_own_jwt(hint, audience=None)
        if claims is None or claims.get("iss") != self.issuer:
            return None
        sub = claims.get("sub")
        return sub if isinstance(sub, str) else None

    async def _consented(self, user: Mapping[str, Any], client: Client, scopes: list[str]) -> bool:
        if client.skip_consent:
            return True
        doc = await self.svc.store.consent(user["_id"], client.client_id)
        return doc is not None and set(scopes) <= set(doc.get("scopes") or [])

    def consent_page(
        self,
        request: web.Request,
        rid: str,
        client: Client,
        scopes: list[str],
        login: SignIn,
        redirect_uri: str,
    ) -> web.Response:
        return pages.render(
            request,
            self.cookies,
            "consent.html",
            title="Allow access?",
            client=client.doc["name"],
            username=login.user["username"],
            scopes=[pages.SCOPE_TEXT.get(s, s) for s in scopes],
            request_id=rid,
            redirect_host=pages.origin_of(redirect_uri),
            form_targets=[pages.origin_of(redirect_uri)],
        )

    async def issue_code(
        self,
        request: web.Request,
        oreq: OAuthRequest,
        login: SignIn | None,
        rid: str | None = None,
    ) -> web.Response:
        """Answer the client: a code for ``login``'s user, or ``access_denied`` without one."""
        user = login.user if login else None
        if login is not None:
            oreq.auth_time, oreq.amr = login.auth_time, login.amr

        def create() -> tuple[int, Any, list[tuple[str, str]]]:
            grant = self.server.get_consent_grant(oreq, end_user=user)
            result: tuple[int, Any, list[tuple[str, str]]] = (
                self.server.create_authorization_response(oreq, grant_user=user, grant=grant)
            )
            return result

        try:
            status, body, headers = await self.server.call(create)
        except OAuth2Error as err:
            return self.error_response(request, oreq, err)
        await self.drop_pending(rid)
        location = dict(headers).get("Location")
        if status == 302 and location:
            return pages.redirect(location)
        code = body.get("error", "server_error") if isinstance(body, dict) else "server_error"
        return pages.error_page(request, self.cookies, 400, code, code)

    # -- userinfo ------------------------------------------------------------------------

    async def userinfo(self, token: str) -> dict[str, Any] | None:
        """The claims an access token's scope releases; None if the token is not good."""
        claims = await self.server.verify_own_jwt(token, audience=self.server.userinfo_audience)
        if claims is None or claims.get("iss") != self.svc.settings.jwt_issuer:
            return None
        sub, sid = claims.get("sub"), claims.get("sid")
        if not isinstance(sub, str) or not isinstance(sid, str):
            return None
        try:
            await check_not_revoked(
                self.svc.store.redis,
                self.svc.settings.redis_prefix,
                Claims(sub=sub, sid=sid, roles=(), jti="", exp=0),
            )
        except ApiError:
            return None
        user = await self.svc.store.user_by_id(sub)
        if user is None or user["blocked"]:
            return None
        return user_claims(user, str(claims.get("scope", "")))
