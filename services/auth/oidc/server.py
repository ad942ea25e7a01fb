"""Authlib's authorization server, adapted to aiohttp and to the auth service's store.

The protocol rules are Authlib's (``authlib.oauth2.rfc6749`` grants, ``rfc7636``
PKCE, ``rfc7009`` revocation, ``authlib.oidc.core`` ID tokens,
``authlib.oidc.rpinitiated`` end-session). What is ours:

- the adapter: :class:`OAuthRequest` (an aiohttp request's parameters as
  Authlib's ``OAuth2Request``) and ``handle_response`` returning
  ``(status, body, headers)`` for the routes to render;
- Authlib's server is synchronous: :meth:`ParleyServer.call` runs it in a
  worker thread, and its hooks reach the async store through the event loop
  (:meth:`ParleyServer.run`);
- storage: codes, sessions and refresh tokens in the auth service's
  collections (``store.py``), with the same rotation and reuse detection as
  the service's own refresh tokens (``sessions.rotate``);
- stricter rules than Authlib's defaults, each tested in
  tests/auth/test_oidc_rules.py: PKCE with S256 for every client
  (:class:`PkceS256`), a reused code revokes what it issued, ID tokens signed
  by the key ring (EdDSA, the JWKS's keys), ``id_token_hint`` verified with
  EdDSA only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections import defaultdict
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import jwt
from authlib.oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import (
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    OAuth2Payload,
    OAuth2Request,
    scope_to_list,
)
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant, RefreshTokenGrant
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge, create_s256_code_challenge
from authlib.oidc.core import OpenIDCode
from authlib.oidc.core.models import AuthorizationCodeMixin
from authlib.oidc.core.util import create_half_hash
from authlib.oidc.rpinitiated import EndSessionEndpoint

from services.auth import sessions
from services.auth.oidc import clients
from services.auth.oidc.clients import Client
from services.auth.signing import ALG
from services.auth.state import AuthService, Caller
from services.auth.tokens import digest, new_id
from services.common.errors import ApiError, ErrorCode

T = TypeVar("T")
SCOPES = clients.SCOPES
# What a ``parley.api`` token of a client that is not built in may carry (api_roles).
USER_ROLES = frozenset({"user"})
# How long a worker thread waits for one store call on the event loop.
BRIDGE_TIMEOUT_S = 30.0
NONCE = "oidc-nonce"


class OAuthPayload(OAuth2Payload):  # type: ignore[misc]
    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        self._data: dict[str, str] = {}
        self._lists: defaultdict[str, list[str]] = defaultdict(list)
        for key, value in pairs:
            self._data.setdefault(key, value)
            self._lists[key].append(value)

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> defaultdict[str, list[str]]:
        return self._lists


class OAuthRequest(OAuth2Request):  # type: ignore[misc]
    """One HTTP request's OAuth parameters: the query of a GET, the form of a POST."""

    def __init__(
        self,
        method: str,
        uri: str,
        headers: Mapping[str, str],
        params: Iterable[tuple[str, str]],
        caller: Caller,
    ) -> None:
        super().__init__(method, uri, headers=headers)
        self._params = OAuthPayload(params)
        self.payload = self._params
        self.caller = caller
        # What the sign-in session knows (auth_time, amr), for the code and the ID token.
        self.auth_time: int | None = None
        self.amr: list[str] = []
        self.sid: str | None = None

    @property
    def args(self) -> dict[str, str]:
        return self._params.data

    @property
    def form(self) -> dict[str, str]:
        return self._params.data

    def repeated(self) -> list[str]:
        """Parameters sent more than once (RFC 6749 section 3.1 and 3.2 forbid it)."""
        return sorted(k for k, v in self.payload.datalist.items() if len(v) > 1)


@dataclass
class AuthorizationCode(AuthorizationCodeMixin):  # type: ignore[misc]
    doc: dict[str, Any]

    @property
    def code_challenge(self) -> str | None:
        return self.doc.get("code_challenge")

    @property
    def code_challenge_method(self) -> str | None:
        return self.doc.get("code_challenge_method")

    def get_redirect_uri(self) -> str:
        return str(self.doc["redirect_uri"])

    def get_scope(self) -> str:
        return str(self.doc["scope"])

    def get_nonce(self) -> str | None:
        return self.doc.get("nonce")

    def get_auth_time(self) -> int | None:
        return self.doc.get("auth_time")

    def get_acr(self) -> str | None:
        return None

    def get_amr(self) -> list[str]:
        return list(self.doc.get("amr") or [])


@dataclass
class Grant:
    """A session opened for a client (a refresh token presented, or an access token)."""

    user_id: str
    sid: str
    client_id: str | None
    scope: str
    user: dict[str, Any] | None = None
    amr: list[str] = field(default_factory=list)
    token: str | None = None
    """The refresh token presented, and when this request used it (given back if the
    request fails on its side: else the client's retry is taken for a reuse)."""
    used_at: Any = None
    session: dict[str, Any] | None = None
    """The session as the refresh left it: its next refresh token is derived from it."""

    def check_client(self, client: Client) -> bool:
        return self.client_id == client.client_id

    def get_scope(self) -> str:
        return self.scope


class PkceS256(CodeChallenge):  # type: ignore[misc]
    """PKCE (RFC 7636) with S256, for every client: stricter than Authlib's defaults,
    which let confidential clients skip it and accept ``plain``."""

    DEFAULT_CODE_CHALLENGE_METHOD = "S256"
    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]

    def __init__(self) -> None:
        super().__init__(required=True)

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: send 'code_challenge' (S256).")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("'code_challenge_method' must be S256.")
        super().validate_code_challenge(grant, redirect_uri)

    def validate_code_verifier(self, grant: Any, result: Any) -> None:
        if not grant.request.form.get("code_verifier"):
            raise InvalidRequestError("Missing 'code_verifier'.")
        super().validate_code_verifier(grant, result)


class OpenIDCodeExt(OpenIDCode):  # type: ignore[misc]
    """ID tokens for the code grant: Authlib's claims, signed by the key ring."""

    def __init__(self, server: ParleyServer) -> None:
        super().__init__(require_nonce=False)
        self.server = server

    def exists_nonce(self, nonce: str, request: OAuthRequest) -> bool:
        key = digest(str(request.payload.client_id), nonce)
        return self.server.run(self.server.svc.store.eph_exists(NONCE, key))

    def generate_user_info(self, user: dict[str, Any], scope: str) -> dict[str, Any]:
        return user_claims(user, scope)

    def get_client_algorithm(self, client: Client) -> str:
        return ALG

    def get_client_claims(self, client: Client) -> dict[str, Any]:
        ttl = self.server.svc.config.oidc_id_token_ttl_s
        return {"iss": self.server.issuer, "aud": client.client_id, "exp": int(time.time()) + ttl}

    def encode_id_token(self, token: dict[str, Any], request: OAuthRequest) -> str:
        claims = self.get_compatible_claims(request)
        claims.update(self.get_authorization_code_claims(request.authorization_code))
        at_hash = create_half_hash(token["access_token"], ALG)
        claims["at_hash"] = at_hash.decode()
        claims.update(self.generate_user_info(request.user, token["scope"]))
        if request.sid:
            claims["sid"] = request.sid
        return self.server.run(self.server.svc.keyring.sign(claims))


def user_claims(user: Mapping[str, Any], scope: str) -> dict[str, Any]:
    """The claims a scope releases (OpenID Connect Core 5.4; ``roles`` is ours)."""
    scopes = scope_to_list(scope) or []
    out: dict[str, Any] = {"sub": user["_id"]}
    if "profile" in scopes:
        out.update(
            preferred_username=user["username"],
            name=user["username"],
            updated_at=int(user["updated_at"].timestamp()),
        )
    if "email" in scopes:
        # Parley does not verify addresses (yet): say so.
        out.update(email=user["email"], email_verified=False)
    if "roles" in scopes:
        out["roles"] = list(user["roles"])
    return out


def api_roles(client: Client, user: Mapping[str, Any]) -> list[str]:
    """The roles a ``parley.api`` access token of ``client`` carries: the user's for a
    built-in client (the admin console, written from the configuration: no admin can
    register or edit one), ``user`` alone for any other. Before, an admin who signed in
    to any client granted ``parley.api`` (a bot dashboard, a third-party app) handed it
    full admin rights, and its consent page said nothing of it. The ``roles`` scope
    only shows the roles (ID token, userinfo); it grants none."""
    if client.built_in:
        return list(user["roles"])
    return [r for r in user["roles"] if r in USER_ROLES]


def _oauth_error(exc: ApiError) -> InvalidGrantError:
    return InvalidGrantError(exc.message)


def allowed_scope(granted: str, client: Client) -> str:
    """What of a scope granted earlier the client may still have: an admin may have
    taken scopes from it since (``clients.update``). Tokens from a code or a refresh
    carry only these."""
    return " ".join(s for s in scope_to_list(granted) or [] if s in client.scopes)


class CodeGrant(AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]
    server: ParleyServer

    def save_authorization_code(self, code: str, request: OAuthRequest) -> None:
        self.server.run(self.server.save_code(code, request))

    def query_authorization_code(self, code: str, client: Client) -> AuthorizationCode | None:
        return self.server.run(self.server.use_code(code, client, self.request.form))

    def delete_authorization_code(self, authorization_code: AuthorizationCode) -> None:
        """Nothing to do: ``use_code`` consumed it atomically."""

    def authenticate_user(self, authorization_code: AuthorizationCode) -> dict[str, Any] | None:
        doc = authorization_code.doc
        user = self.server.run(self.server.svc.store.user_by_id(doc["user_id"]))
        if user is None:
            return None
        if user["blocked"]:
            raise InvalidGrantError("This account is blocked.")
        # The sign-in that gave the code, against the account now: a code issued
        # before a password change or reset, or before the account's sessions were
        # ended, opens nothing (a code stored before these were kept: the initial
        # security stamp, the password not compared).
        if ("pw" in doc and doc["pw"] != sessions.password_stamp(user)) or int(
            doc.get("ss") or 0
        ) != sessions.security_stamp(user):
            raise InvalidGrantError(
                "The account's sessions were ended since this code was issued: sign in again."
            )
        return user

    def generate_token(
        self,
        user: Any = None,
        scope: Any = None,
        grant_type: Any = None,
        expires_in: Any = None,
        include_refresh_token: bool = True,
    ) -> dict[str, Any]:
        request: OAuthRequest = self.request
        code: AuthorizationCode = request.authorization_code
        try:
            return self.server.run(
                self.server.open_grant(request, user, str(scope), code, include_refresh_token)
            )
        except ApiError as exc:
            # The session refused once stored (the account changed meanwhile:
            # sessions.open_session): an OAuth error, not the service's error model.
            if exc.code == ErrorCode.RATE_LIMITED:
                raise
            raise _oauth_error(exc) from None

    def save_token(self, token: dict[str, Any]) -> None:
        self.server.run(self.server.link_code(self.request))


class RefreshGrant(RefreshTokenGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]
    INCLUDE_NEW_REFRESH_TOKEN = True
    server: ParleyServer

    def authenticate_refresh_token(self, refresh_token: str) -> Grant | None:
        request: OAuthRequest = self.request
        client: Client = request.client
        try:
            user, session = self.server.run(
                sessions.rotate(self.server.svc, refresh_token, request.caller, client.client_id)
            )
        except ApiError as exc:
            if exc.code == ErrorCode.RATE_LIMITED:
                raise
            raise _oauth_error(exc) from None
        # What was granted, less what the client may no longer have (an admin took
        # a scope from it since): the new tokens lack it.
        granted = allowed_scope(str(session.get("scope") or ""), client)
        if not granted:
            # Nothing the client may still have: the session is of no use.
            self.server.run(
                sessions.revoke(self.server.svc, user["_id"], session["_id"], "scope_removed")
            )
            raise InvalidGrantError("The client may no longer have any of the scope granted.")
        asked = request.payload.scope
        if asked and not set(scope_to_list(granted) or []).issuperset(scope_to_list(asked)):
            # Authlib refuses it after this hook (invalid_scope), with the token used
            # up: the client would be signed out for asking too much.
            self.server.run(sessions.give_back(self.server.svc, refresh_token, session))
            raise InvalidScopeError()
        return Grant(
            user_id=user["_id"],
            sid=session["_id"],
            client_id=client.client_id,
            scope=granted,
            user=user,
            amr=list(session.get("amr") or []),
            token=refresh_token,
            used_at=session.get("token_used_at"),
            session=session,
        )

    def authenticate_user(self, refresh_token: Grant) -> dict[str, Any] | None:
        return refresh_token.user

    def generate_token(
        self,
        user: Any = None,
        scope: Any = None,
        grant_type: Any = None,
        expires_in: Any = None,
        include_refresh_token: bool = True,
    ) -> dict[str, Any]:
        grant: Grant = self.request.refresh_token
        try:
            return self.server.run(
                self.server.tokens_for(
                    self.request.client, user, str(scope), grant.sid, grant.amr, grant.session
                )
            )
        except ApiError:
            raise
        except Exception:
            # Failed on our side after the token was used up: the retry must not be a reuse.
            if grant.token is not None:
                self.server.run(
                    sessions.give_back(
                        self.server.svc,
                        grant.token,
                        {"_id": grant.sid, "token_used_at": grant.used_at},
                    )
                )
            raise

    def save_token(self, token: dict[str, Any]) -> None:
        """Saved by ``tokens_for``."""

    def revoke_old_credential(self, refresh_token: Grant) -> None:
        """Nothing to do: ``sessions.rotate`` used it up atomically."""


class Revocation(RevocationEndpoint):  # type: ignore[misc]
    CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]
    server: ParleyServer

    def query_token(self, token_string: str, token_type_hint: str | None) -> Grant | None:
        return self.server.run(self.server.find_grant(token_string, token_type_hint))

    def revoke_token(self, token: Grant, request: OAuthRequest) -> None:
        self.server.run(
            sessions.revoke(self.server.svc, token.user_id, token.sid, "revoked_by_client")
        )


class EndSession(EndSessionEndpoint):  # type: ignore[misc]
    """RP-initiated logout: the hint checked here; what ends is the route's choice
    (``routes._logout``: the sign-in cookie, and the hint's session through
    :meth:`ParleyServer.end_hinted_session`, only for the signed-in user's own hint
    or after the user confirmed)."""

    server: ParleyServer

    def _validate_id_token_hint(self, id_token_hint: str) -> dict[str, Any]:
        # Ours, not joserfc's: EdDSA only, the key ring's keys. An expired ID token is
        # accepted (RP-Initiated Logout 1.0 section 2), but not one that expired more
        # than a refresh token's lifetime ago: no session it names can still be live
        # unless refreshed all along, and an old token found somewhere ends nothing.
        claims = self.server.run(self.server.verify_own_jwt(id_token_hint, audience=None))
        if claims is None or claims.get("iss") != self.server.issuer:
            raise InvalidRequestError("The 'id_token_hint' is not an ID token of this provider.")
        exp = claims.get("exp")
        oldest = time.time() - self.server.svc.settings.refresh_token_ttl_s
        if not isinstance(exp, int | float) or exp < oldest:
            raise InvalidRequestError("The 'id_token_hint' is too old; sign out at the provider.")
        return claims

    def end_session(self, end_session_request: Any) -> None:
        """Nothing here: the route ends what the user may end."""


class ParleyServer(AuthorizationServer):  # type: ignore[misc]
    def __init__(self, svc: AuthService, issuer: str) -> None:
        super().__init__(scopes_supported=list(SCOPES))
        self.svc = svc
        self.issuer = issuer
        self.userinfo_audience = f"{issuer}/auth/oauth2/userinfo"
        self.loop: asyncio.AbstractEventLoop | None = None
        self.register_grant(CodeGrant, [PkceS256(), OpenIDCodeExt(self)])
        self.register_grant(RefreshGrant)
        self.register_endpoint(Revocation)
        self.register_endpoint(EndSession)

    # -- the bridge between Authlib's thread and the event loop -----------------

    async def call(self, fn: Callable[[], T]) -> T:
        """Run synchronous Authlib code in a worker thread (it calls back through ``run``)."""
        self.loop = asyncio.get_running_loop()
        return await asyncio.to_thread(fn)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        assert self.loop is not None, "Authlib code runs through ParleyServer.call"
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout=BRIDGE_TIMEOUT_S)

    # -- Authlib's framework hooks -------------------------------------------------

    def query_client(self, client_id: Any) -> Client | None:
        if not isinstance(client_id, str):
            return None
        return self.run(clients.load(self.svc, client_id))

    def save_token(self, token: dict[str, Any], request: OAuthRequest) -> None:
        """Tokens are stored as they are made (``open_grant``, ``tokens_for``)."""

    def create_oauth2_request(self, request: OAuthRequest) -> OAuthRequest:
        return request

    def create_json_request(self, request: Any) -> Any:
        raise NotImplementedError

    def handle_response(
        self, status: int, body: Any, headers: list[tuple[str, str]]
    ) -> tuple[int, Any, list[tuple[str, str]]]:
        return status, body, list(headers)

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        pass

    # -- storage (run on the event loop) -----------------------------------------

    async def save_code(self, code: str, request: OAuthRequest) -> None:
        svc = self.svc
        now = svc.now()
        ttl = svc.config.oidc_code_ttl_s
        data = request.payload.data
        client_id = request.client.client_id
        await svc.store.insert_code(
            {
                "_id": digest(code),
                "client_id": client_id,
                "user_id": request.user["_id"],
                "redirect_uri": request.payload.redirect_uri,
                "scope": request.scope,
                "nonce": data.get("nonce"),
                "auth_time": request.auth_time,
                "amr": request.amr,
                # Which password and security stamp the sign-in had: the code opens
                # nothing once either changed (CodeGrant.authenticate_user).
                "pw": sessions.password_stamp(request.user),
                "ss": sessions.security_stamp(request.user),
                "code_challenge": data.get("code_challenge"),
                "code_challenge_method": data.get("code_challenge_method"),
                "created_at": now,
                "expires_at": now + timedelta(seconds=ttl),
                "used_at": None,
                "sid": None,
            }
        )
        if data.get("nonce"):
            # A nonce goes into one ID token only (OpenID Connect Core 15.5.2).
            await svc.store.eph_once(NONCE, digest(client_id, data["nonce"]), ttl + 60)

    async def use_code(
        self, code: str, client: Client, form: Mapping[str, Any]
    ) -> AuthorizationCode | None:
        """The code, used up now; None (invalid_grant) if unknown, another client's,
        expired or used before. A second use revokes what the first one opened
        (RFC 6749 section 4.1.2).

        Its redirect URI and PKCE verifier (the token request's ``form``) are checked
        before it is used up (Authlib checks them after this): someone who intercepted
        a public client's code, what PKCE is for, could otherwise spend it without a
        verifier, so that the real exchange failed, or, sent after it, revoked the
        user's new session as a reuse."""
        svc = self.svc
        code_hash = digest(code)
        doc = await svc.store.code(code_hash)
        if doc is None or doc["client_id"] != client.client_id:
            return None
        if doc.get("redirect_uri") and form.get("redirect_uri") != doc["redirect_uri"]:
            raise InvalidGrantError("Invalid 'redirect_uri' in request.")
        if challenge := doc.get("code_challenge"):
            verifier = str(form.get("code_verifier") or "")
            if not verifier:
                raise InvalidRequestError("Missing 'code_verifier'.")
            if create_s256_code_challenge(verifier) != challenge:
                raise InvalidGrantError("Invalid 'code_verifier'.")
        now = svc.now()
        used = await svc.store.consume_code(code_hash, now)
        if used is None:
            marked = await svc.store.mark_code_reused(code_hash)
            if marked is not None and marked.get("sid"):
                await sessions.revoke(svc, marked["user_id"], marked["sid"], "code_reused")
            raise InvalidGrantError("This code was already used; what it gave is revoked.")
        if used["expires_at"] <= now:
            raise InvalidGrantError("This code has expired.")
        return AuthorizationCode(used)

    async def open_grant(
        self,
        request: OAuthRequest,
        user: dict[str, Any],
        scope: str,
        code: AuthorizationCode,
        include_refresh_token: bool,
    ) -> dict[str, Any]:
        client: Client = request.client
        # A scope taken from the client since the code was issued is not given.
        scope = allowed_scope(scope, client)
        if not scope:
            raise InvalidGrantError("The client may no longer have any of the scope granted.")
        amr = code.get_amr()
        session = await sessions.open_session(
            self.svc,
            user,
            amr,
            request.caller,
            device=client.doc["name"][:100],
            client_id=client.client_id,
            scope=scope,
        )
        sid = str(session["_id"])
        request.sid = sid
        refresh = session if include_refresh_token else None
        return await self.tokens_for(client, user, scope, sid, amr, refresh)

    async def link_code(self, request: OAuthRequest) -> None:
        """Record the session a code opened; if the code was replayed meanwhile, end it."""
        code: AuthorizationCode = request.authorization_code
        after = await self.svc.store.set_code_session(code.doc["_id"], str(request.sid))
        if after is not None and after.get("reused"):
            await sessions.revoke(self.svc, code.doc["user_id"], str(request.sid), "code_reused")
            raise InvalidGrantError("This code was already used; what it gave is revoked.")

    async def tokens_for(
        self,
        client: Client,
        user: Mapping[str, Any],
        scope: str,
        sid: str,
        amr: list[str],
        refresh: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        """The tokens of a session; with a refresh token when ``refresh`` (the session
        as opened or as the refresh left it: sessions.new_refresh_token)."""
        svc = self.svc
        now = svc.now()
        ttl = svc.settings.access_token_ttl_s
        iat = int(now.timestamp())
        scopes = scope_to_list(scope) or []
        audience = [self.userinfo_audience]
        claims: dict[str, Any] = {
            "iss": svc.settings.jwt_issuer,
            "sub": user["_id"],
            "client_id": client.client_id,
            "scope": scope,
            "sid": sid,
            "amr": amr,
            "jti": new_id(),
            "iat": iat,
            "exp": iat + ttl,
        }
        if "parley.api" in scopes:
            # Also a Parley access token: every service accepts it (docs/auth.md).
            audience.append(svc.settings.jwt_audience)
            claims["roles"] = api_roles(client, user)
        claims["aud"] = audience
        token: dict[str, Any] = {
            "token_type": "Bearer",
            "access_token": await svc.keyring.sign(claims, typ="at+jwt"),
            "expires_in": ttl,
            "scope": scope,
        }
        if refresh is not None:
            token["refresh_token"] = await sessions.new_refresh_token(svc, refresh)
        return token

    async def end_hinted_session(self, claims: Mapping[str, Any]) -> None:
        """End the session an ``id_token_hint`` names (its ``sid``), if it is live."""
        sid, sub = claims.get("sid"), claims.get("sub")
        if isinstance(sid, str) and isinstance(sub, str):
            await sessions.revoke(self.svc, sub, sid, "logout")

    async def find_grant(self, token: str, hint: str | None) -> Grant | None:
        """What a token to revoke belongs to. RFC 7009 2.1: the hint is only a hint;
        a token not found as the type hinted is looked up as the other type (a
        refresh token sent with ``token_type_hint=access_token`` is still revoked)."""
        if hint == "access_token":
            return await self._access_grant(token) or await self._refresh_grant(token)
        return await self._refresh_grant(token) or await self._access_grant(token)

    async def _refresh_grant(self, token: str) -> Grant | None:
        # Any refresh token of a session (used or not: whoever holds one held it).
        found = await sessions.token_session(self.svc, token)
        if found is None:
            return None
        user_id, sid, session = found
        if session is None:
            # Its session was ended and then reclaimed (docs/auth.md, "Sessions"): nothing
            # left to revoke, and RFC 7009 answers such a token 200 (a grant without its
            # client was 400 invalid_grant).
            return None
        return Grant(user_id=user_id, sid=sid, client_id=session.get("client_id"), scope="")

    async def _access_grant(self, token: str) -> Grant | None:
        claims = await self.verify_own_jwt(token, audience=self.userinfo_audience)
        if claims is None or not isinstance(claims.get("client_id"), str):
            return None
        return Grant(
            user_id=str(claims["sub"]),
            sid=str(claims["sid"]),
            client_id=claims["client_id"],
            scope=str(claims.get("scope", "")),
        )

    async def verify_own_jwt(self, token: str, audience: str | None) -> dict[str, Any] | None:
        """Claims of a JWT this service signed (EdDSA, a key of the JWKS), else None.

        ``audience=None``: an ID token hint (any audience, expiry not required),
        verified with any key still stored, published or not: a hint is taken long
        after its key left the JWKS (a refresh token's lifetime past its ``exp``:
        ``EndSession``), and a key rotates every 30 days. Before, only the published
        keys were tried, and after a rotation every earlier ID token was refused.
        """
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return None
        if header.get("alg") != ALG or not isinstance(header.get("kid"), str):
            return None
        keyring = self.svc.keyring
        jwks = await (keyring.stored_jwks() if audience is None else keyring.jwks())
        keys = {k["kid"]: k for k in jwks["keys"]}
        jwk = keys.get(header["kid"])
        if jwk is None:
            return None
        options: dict[str, Any] = {"require": ["iss", "sub", "aud"]}
        if audience is None:
            options.update(verify_aud=False, verify_exp=False)
        try:
            key = jwt.PyJWK(jwk).key
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[ALG],
                audience=audience,
                options=options,  # type: ignore[arg-type]
                leeway=5,
            )
        except jwt.PyJWTError:
            return None
        return claims
