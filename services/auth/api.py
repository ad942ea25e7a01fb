"""The auth service's ``Api``: every route registers on it (``routes.py``, ``oidc/routes.py``)."""

from __future__ import annotations

from services.common.openapi import Api

api = Api(
    "Parley auth",
    "0.1.0",
    "Accounts, sessions, tokens, two-factor authentication, the admin users and clients API, "
    "and the OpenID Connect provider (its protocol endpoints answer RFC 6749 errors, its "
    "pages HTML). Access tokens are EdDSA JWTs verified against /.well-known/jwks.json.",
)
