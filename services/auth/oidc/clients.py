"""OpenID Connect clients: registration by admins, and the view Authlib checks requests against.

A client is *confidential* (it holds a secret: ``client_secret_basic`` or
``client_secret_post`` at the token endpoint) or *public* (a browser or native
app: ``none``, and PKCE is its only proof). Redirect URIs are compared as exact
strings: no prefix, no extra query, no normalisation. Secrets are 256 random
bits, shown once, stored as SHA-256 (like refresh tokens).

The admin console is a built-in public client (``parley-admin``), written at
every start from the configuration so that its redirect URIs follow the
deployment's public address.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from authlib.oauth2.rfc6749 import ClientMixin, scope_to_list

from services.auth.admin import audit
from services.auth.models import ClientCreate, ClientPatch, OAuthClient, OAuthClientList
from services.auth.state import AuthService, Caller
from services.auth.store import DuplicateError
from services.auth.tokens import digest, new_token, same
from services.common.auth import Claims
from services.common.errors import ApiError, ErrorCode

ADMIN_CONSOLE_ID = "parley-admin"
SCOPES = ("openid", "profile", "email", "roles", "parley.api")
CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_URI = 2000
# RFC 8252 section 7.1: a native app's private-use scheme is a reversed domain name.
PRIVATE_SCHEME_RE = re.compile(r"^[a-z][a-z0-9+.-]*\.[a-z0-9+.-]+$")


def _bad(field: str, problem: str) -> ApiError:
    return ApiError(
        ErrorCode.VALIDATION_FAILED,
        "The request is not valid.",
        details=[{"field": field, "problem": problem}],
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_redirect_uri(uri: str, field: str = "redirect_uris") -> str:
    """A redirect URI an admin may register (RFC 6749 3.1.2, RFC 8252, RFC 9700 4.1).

    Absolute, no fragment; ``https``, or ``http`` only on a loopback host, or a
    native app's private-use scheme. Stored and compared as given.
    """
    if len(uri) > MAX_URI or uri != uri.strip() or any(ord(c) < 0x21 for c in uri):
        raise _bad(field, "not a URI")
    try:
        parts = urlsplit(uri)
    except ValueError:
        raise _bad(field, "not a URI") from None
    if parts.fragment or "#" in uri:
        raise _bad(field, "a redirect URI has no fragment")
    if parts.scheme == "https" and parts.hostname:
        return uri
    if parts.scheme == "http" and parts.hostname and _is_loopback(parts.hostname):
        return uri
    if PRIVATE_SCHEME_RE.fullmatch(parts.scheme) and not parts.netloc:
        return uri
    raise _bad(field, "https, http on a loopback address, or a private-use scheme (app.example:)")


def _uris(values: Sequence[str], field: str) -> list[str]:
    out = [check_redirect_uri(u, field) for u in values]
    if len(set(out)) != len(out):
        raise _bad(field, "listed twice")
    return out


@dataclass(frozen=True)
class Client(ClientMixin):  # type: ignore[misc]
    """A registered client as Authlib sees it (``authlib.oauth2.rfc6749.ClientMixin``)."""

    doc: Mapping[str, Any]

    @property
    def client_id(self) -> str:
        return str(self.doc["_id"])

    @property
    def public(self) -> bool:
        return bool(self.doc["type"] == "public")

    @property
    def built_in(self) -> bool:
        """Written from the configuration (the admin console), never by an admin."""
        return bool(self.doc.get("built_in"))

    @property
    def skip_consent(self) -> bool:
        return bool(self.doc.get("skip_consent"))

    @property
    def scopes(self) -> list[str]:
        return list(self.doc["scopes"])

    @property
    def client_metadata(self) -> dict[str, Any]:
        # Read by Authlib's end-session endpoint.
        return {"post_logout_redirect_uris": list(self.doc.get("post_logout_redirect_uris", []))}

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        # Always asked for: OpenID Connect requires ``redirect_uri`` in the request.
        return None

    def get_allowed_scope(self, scope: str | None) -> str | None:
        """The requested scope if the client may have all of it; None (invalid_scope) if not."""
        wanted = scope_to_list(scope) if scope else []
        if not wanted or any(s not in self.doc["scopes"] for s in wanted):
            return None
        return " ".join(dict.fromkeys(wanted))

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.doc["redirect_uris"]

    def check_client_secret(self, client_secret: str) -> bool:
        stored = self.doc.get("secret_hash")
        return bool(stored) and same(str(stored), digest(client_secret))

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return bool(method == self.doc["token_endpoint_auth_method"])

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.doc["grant_types"]


def view(doc: Mapping[str, Any], secret: str | None = None) -> OAuthClient:
    return OAuthClient(
        client_id=doc["_id"],
        name=doc["name"],
        type=doc["type"],
        redirect_uris=doc["redirect_uris"],
        post_logout_redirect_uris=doc.get("post_logout_redirect_uris", []),
        scopes=doc["scopes"],
        token_endpoint_auth_method=doc["token_endpoint_auth_method"],
        grant_types=doc["grant_types"],
        skip_consent=bool(doc.get("skip_consent")),
        disabled=bool(doc.get("disabled")),
        built_in=bool(doc.get("built_in")),
        created_at=doc["created_at"],
        updated_at=doc["updated_at"],
        client_secret=secret,
    )


async def load(svc: AuthService, client_id: str) -> Client | None:
    """An enabled client, or None."""
    if not CLIENT_ID_RE.fullmatch(client_id):
        return None
    doc = await svc.store.client(client_id)
    if doc is None or doc.get("disabled"):
        return None
    return Client(doc)


async def _target(svc: AuthService, client_id: str) -> dict[str, Any]:
    doc = await svc.store.client(client_id) if CLIENT_ID_RE.fullmatch(client_id) else None
    if doc is None:
        raise ApiError(ErrorCode.NOT_FOUND, "No such client.")
    return doc


def _auth_method(body: ClientCreate) -> str:
    method = body.token_endpoint_auth_method
    if body.type == "public":
        if method not in (None, "none"):
            raise _bad("token_endpoint_auth_method", "a public client has no secret: none")
        return "none"
    if method == "none":
        raise _bad("token_endpoint_auth_method", "a confidential client authenticates")
    return method or "client_secret_basic"


async def create(
    svc: AuthService, claims: Claims, caller: Caller, body: ClientCreate
) -> OAuthClient:
    method = _auth_method(body)
    now = svc.now()
    secret = new_token() if body.type == "confidential" else None
    doc: dict[str, Any] = {
        "_id": "c" + new_token()[:22].replace("-", "x").replace("_", "y"),
        "name": body.name.strip(),
        "type": body.type,
        "redirect_uris": _uris(body.redirect_uris, "redirect_uris"),
        "post_logout_redirect_uris": _uris(
            body.post_logout_redirect_uris, "post_logout_redirect_uris"
        ),
        "scopes": list(dict.fromkeys(body.scopes)),
        "token_endpoint_auth_method": method,
        "grant_types": list(dict.fromkeys(["authorization_code", *body.grant_types])),
        "skip_consent": body.skip_consent,
        "disabled": False,
        "built_in": False,
        "secret_hash": digest(secret) if secret else None,
        "created_at": now,
        "updated_at": now,
        "created_by": claims.sub,
    }
    if not doc["name"]:
        raise _bad("name", "empty")
    try:
        await svc.store.insert_client(doc)
    except DuplicateError:  # 130 random bits: only a retry could
        raise ApiError(ErrorCode.CONFLICT, "Try again.") from None
    await audit(svc, claims, "client.create", caller, None, client_id=doc["_id"], name=doc["name"])
    return view(doc, secret)


async def list_all(svc: AuthService, claims: Claims, caller: Caller) -> OAuthClientList:
    docs = await svc.store.list_clients()
    await audit(svc, claims, "client.list", caller)
    return OAuthClientList(clients=[view(d) for d in docs])


async def get(svc: AuthService, claims: Claims, caller: Caller, client_id: str) -> OAuthClient:
    doc = await _target(svc, client_id)
    await audit(svc, claims, "client.view", caller, None, client_id=client_id)
    return view(doc)


async def update(
    svc: AuthService, claims: Claims, caller: Caller, client_id: str, body: ClientPatch
) -> OAuthClient:
    doc = await _target(svc, client_id)
    changes: dict[str, Any] = {}
    if body.name is not None:
        if not body.name.strip():
            raise _bad("name", "empty")
        changes["name"] = body.name.strip()
    if body.redirect_uris is not None:
        changes["redirect_uris"] = _uris(body.redirect_uris, "redirect_uris")
    if body.post_logout_redirect_uris is not None:
        changes["post_logout_redirect_uris"] = _uris(
            body.post_logout_redirect_uris, "post_logout_redirect_uris"
        )
    if body.scopes is not None:
        changes["scopes"] = list(dict.fromkeys(body.scopes))
    if body.grant_types is not None:
        changes["grant_types"] = list(dict.fromkeys(["authorization_code", *body.grant_types]))
    if body.skip_consent is not None:
        changes["skip_consent"] = body.skip_consent
    if body.disabled is not None:
        changes["disabled"] = body.disabled
    if doc.get("built_in") and changes:
        raise ApiError(ErrorCode.CONFLICT, "A built-in client follows the configuration.")
    changes = {k: v for k, v in changes.items() if doc.get(k) != v}
    if not changes:
        if body.disabled and doc.get("disabled"):
            # Disabled again: a retry of a disable whose session ending failed half-way.
            await _end_sessions(svc, client_id, "client_disabled")
        return view(doc)
    before = {k: doc.get(k) for k in changes}
    changes["updated_at"] = svc.now()
    updated = await svc.store.update_client(client_id, changes)
    if updated is None:
        raise ApiError(ErrorCode.NOT_FOUND, "No such client.")
    after = {k: updated.get(k) for k in before}
    await audit(
        svc, claims, "client.update", caller, None, client_id=client_id, before=before, after=after
    )
    if changes.get("disabled"):
        await _end_sessions(svc, client_id, "client_disabled")
    return view(updated)


async def rotate_secret(
    svc: AuthService, claims: Claims, caller: Caller, client_id: str
) -> OAuthClient:
    doc = await _target(svc, client_id)
    if doc["type"] != "confidential":
        raise ApiError(ErrorCode.CONFLICT, "A public client has no secret.")
    secret = new_token()
    updated = await svc.store.update_client(
        client_id, {"secret_hash": digest(secret), "updated_at": svc.now()}
    )
    if updated is None:
        raise ApiError(ErrorCode.NOT_FOUND, "No such client.")
    await audit(svc, claims, "client.rotate_secret", caller, None, client_id=client_id)
    return view(updated, secret)


async def delete(svc: AuthService, claims: Claims, caller: Caller, client_id: str) -> None:
    doc = await _target(svc, client_id)
    if doc.get("built_in"):
        raise ApiError(ErrorCode.CONFLICT, "A built-in client cannot be deleted.")
    # Disabled (no new session), its sessions ended, then deleted: a failure half-way
    # leaves the client there for the retry, not sessions of a client gone.
    if not doc.get("disabled"):
        await svc.store.update_client(client_id, {"disabled": True, "updated_at": svc.now()})
    ended = await _end_sessions(svc, client_id, "client_deleted")
    if not await svc.store.delete_client(client_id):
        raise ApiError(ErrorCode.NOT_FOUND, "No such client.")
    await audit(
        svc, claims, "client.delete", caller, None, client_id=client_id, sessions_revoked=ended
    )


async def _end_sessions(svc: AuthService, client_id: str, reason: str) -> int:
    """End the client's sessions and tell every service (those ended within an access
    token's lifetime too: a retry after a failed publish); how many were live. A
    session each was four round trips: a client with 50,000 timed out half-way."""
    now = svc.now()
    since = now - timedelta(seconds=svc.revocation_ttl_s)
    ended, pairs = await svc.store.revoke_client_sessions(client_id, now, reason, since)
    await svc.store.publish_many_revoked(pairs, svc.revocation_ttl_s)
    return ended


async def ensure_admin_console(svc: AuthService, issuer: str) -> None:
    """Write the admin console's built-in client (start-up work, every process, idempotent).

    Its redirect URIs are the console behind the issuer (``<issuer>/admin/``, where
    HAProxy serves it) and, when ``PARLEY_ADMIN_CONSOLE_URL`` names another address
    (on AWS, the web domain), that one too: both serve the same console, and an
    operator who moves it keeps the old address working."""
    consoles = list(dict.fromkeys(filter(None, [f"{issuer}/admin/", svc.config.admin_console_url])))
    now = svc.now()
    existing = await svc.store.client(ADMIN_CONSOLE_ID)
    await svc.store.put_client(
        {
            "_id": ADMIN_CONSOLE_ID,
            "name": "Parley admin console",
            "type": "public",
            "redirect_uris": [f"{console}callback" for console in consoles],
            "post_logout_redirect_uris": consoles,
            "scopes": list(SCOPES),
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
            "skip_consent": True,
            "disabled": False,
            "built_in": True,
            "secret_hash": None,
            "created_at": existing["created_at"] if existing else now,
            "updated_at": now,
        }
    )
