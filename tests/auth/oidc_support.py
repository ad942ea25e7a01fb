"""Driving the OpenID provider as a relying party and a browser would, with independent code.

The relying party is Authlib's httpx client (``AsyncOAuth2Client``); ID tokens are
checked with joserfc against discovery and the JWKS; the HTML pages are
driven with plain form posts and a cookie jar (httpx).
"""

from __future__ import annotations

import base64
import html
import json
import re
import secrets
import warnings
from dataclasses import dataclass, field
from typing import Any

import httpx2 as httpx
from authlib.common.security import generate_token
from authlib.integrations.httpx_client import AsyncOAuth2Client
from joserfc import jwt
from joserfc.errors import SecurityWarning
from joserfc.jwk import KeySet
from joserfc.jwt import JWTClaimsRegistry

HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)">')
ERROR_CODE = re.compile(r'class="error" role="alert" data-code="([^"]+)"')


def hidden_fields(page: str) -> dict[str, str]:
    return {k: html.unescape(v) for k, v in HIDDEN.findall(page)}


def page_error(page: str) -> str | None:
    m = ERROR_CODE.search(page)
    return m.group(1) if m else None


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class Browser:
    """A user agent: a cookie jar, no JavaScript, redirects followed by hand."""

    base: str
    http: httpx.AsyncClient = field(init=False)

    def __post_init__(self) -> None:
        self.http = httpx.AsyncClient(base_url=self.base, follow_redirects=False, timeout=30)

    async def close(self) -> None:
        await self.http.aclose()

    async def get(self, url: str) -> httpx.Response:
        return await self.http.get(url)

    async def post(self, url: str, data: dict[str, str]) -> httpx.Response:
        return await self.http.post(url, data=data)

    async def follow(self, resp: httpx.Response, until: str) -> httpx.Response:
        """Follow redirects inside the provider; stop at a page or a redirect to ``until``."""
        for _ in range(10):
            if resp.status_code not in (302, 303) or resp.headers["location"].startswith(until):
                return resp
            resp = await self.http.get(resp.headers["location"])
        raise AssertionError("too many redirects")

    async def sign_in(
        self, page: httpx.Response, username: str, password: str, until: str
    ) -> httpx.Response:
        assert page.status_code == 200 and 'action="/auth/login"' in page.text, page.text[:500]
        data = {**hidden_fields(page.text), "username": username, "password": password}
        return await self.follow(await self.post("/auth/login", data), until)

    async def consent(self, page: httpx.Response, decision: str, until: str) -> httpx.Response:
        assert 'action="/auth/oauth2/consent"' in page.text, page.text[:500]
        data = {**hidden_fields(page.text), "decision": decision}
        return await self.follow(await self.post("/auth/oauth2/consent", data), until)


@dataclass
class RelyingParty:
    """A client application, registered at the provider."""

    base: str
    client_id: str
    redirect_uri: str
    scope: str
    secret: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def client(self) -> AsyncOAuth2Client:
        return AsyncOAuth2Client(
            client_id=self.client_id,
            client_secret=self.secret,
            scope=self.scope,
            redirect_uri=self.redirect_uri,
            code_challenge_method="S256",
            token_endpoint_auth_method="client_secret_basic" if self.secret else "none",
            timeout=30,
        )

    async def discover(self) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=30) as http:
            resp = await http.get(f"{self.base}/.well-known/openid-configuration")
            assert resp.status_code == 200, resp.text
            self.meta = resp.json()
        return self.meta

    def start(self, **extra: str) -> tuple[AsyncOAuth2Client, str, str, str]:
        """(client, authorization URL, code verifier, nonce)."""
        client = self.client()
        verifier = generate_token(48)
        nonce = secrets.token_urlsafe(16)
        url, _ = client.create_authorization_url(
            self.meta["authorization_endpoint"], code_verifier=verifier, nonce=nonce, **extra
        )
        return client, url, verifier, nonce

    async def jwks(self) -> KeySet:
        async with httpx.AsyncClient(timeout=30) as http:
            resp = await http.get(self.meta["jwks_uri"])
        return KeySet.import_key_set(resp.json())

    async def validate_id_token(self, id_token: str, nonce: str | None) -> dict[str, Any]:
        """OpenID Connect Core 3.1.3.7, with EdDSA the only algorithm accepted."""
        keys = await self.jwks()
        with warnings.catch_warnings():
            # RFC 9864 deprecates the polymorphic "EdDSA" for "Ed25519"; docs/auth.md.
            warnings.filterwarnings("ignore", "EdDSA is deprecated", SecurityWarning)
            token = jwt.decode(id_token, keys, algorithms=["EdDSA"])
        assert token.header["alg"] == "EdDSA"
        claims: dict[str, Any] = {
            "iss": {"essential": True, "value": self.meta["issuer"]},
            "aud": {"essential": True, "value": self.client_id},
            "sub": {"essential": True},
            "exp": {"essential": True},
            "iat": {"essential": True},
        }
        if nonce is not None:
            claims["nonce"] = {"essential": True, "value": nonce}
        JWTClaimsRegistry(**claims).validate(token.claims)
        return dict(token.claims)


def forge(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    head = b64u(json.dumps(header).encode())
    body = b64u(json.dumps(claims).encode())
    return f"{head}.{body}.{b64u(signature)}"
