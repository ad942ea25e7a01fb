"""A stand-in token issuer for tests of services other than auth.

It signs real EdDSA JWTs and serves its JWKS over real HTTP, so the shared
verifier is exercised exactly as against the auth service.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from typing import Any

import jwt
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.common.config import Settings


class TokenIssuer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.key = Ed25519PrivateKey.generate()
        self.kid = secrets.token_hex(8)
        self.server: TestServer | None = None
        # Users this issuer minted tokens for: its users endpoint knows them,
        # as the auth service's `GET /auth/v1/users/{id}` knows registered users,
        # and its devices endpoint lists their devices as the key directory's
        # `GET /keys/v1/users/{id}/devices` does (device 1 unless a test says).
        self.users: set[str] = set()
        self.devices: dict[str, list[int]] = {}
        # Usernames (lower case) -> user id: the users endpoint answers to them,
        # and to any case of an id, as the auth service's look-up does.
        self.usernames: dict[str, str] = {}
        # Look-ups of users asked of the users endpoint, and those it answers only once
        # their event is set (a slow auth service, for one user).
        self.lookups: list[str] = []
        self.held: dict[str, asyncio.Event] = {}
        # Users whose device list was asked of the devices endpoints.
        self.device_lookups: list[str] = []
        # The ids of each bulk look-up (POST /auth/v1/lookup), one list a request.
        self.lookup_requests: list[list[str]] = []
        # ... and of each bulk device-list read (POST /keys/v1/users/device-lists).
        self.device_list_requests: list[list[str]] = []
        # Keys published beside the signing one (a rotation's previous key).
        self.extra_keys: list[tuple[Ed25519PrivateKey, str]] = []

    def jwks(self) -> dict[str, Any]:
        keys = []
        for key, kid in [(self.key, self.kid), *self.extra_keys]:
            jwk = jwt.algorithms.OKPAlgorithm.to_jwk(key.public_key(), as_dict=True)
            jwk.update({"kid": kid, "alg": "EdDSA", "use": "sig"})
            keys.append(jwk)
        return {"keys": keys}

    async def start(self) -> str:
        """Serve the JWKS; returns the URL to pass as ``auth_url``."""

        async def handler(_: web.Request) -> web.Response:
            return web.json_response(self.jwks())

        async def user(request: web.Request) -> web.Response:
            key = request.match_info["user_id"]
            self.lookups.append(key)
            if key in self.held:
                await self.held[key].wait()
            user_id = next(
                (u for u in (key, key.strip().lower()) if u in self.users),
                self.usernames.get(key.strip().lower()),
            )
            if user_id is None:
                body = {"error": {"code": "user_not_found", "message": "No such user."}}
                return web.json_response(body, status=404)
            names = [n for n, u in self.usernames.items() if u == user_id]
            return web.json_response({"user_id": user_id, "username": (names or [user_id])[0]})

        async def devices(request: web.Request) -> web.Response:
            user_id = request.match_info["user_id"]
            self.device_lookups.append(user_id)
            if user_id not in self.users:
                body = {"error": {"code": "identity_not_found", "message": "No keys."}}
                return web.json_response(body, status=404)
            ids = self.devices.get(user_id, [1])
            return web.json_response(
                {"user_id": user_id, "devices": [{"device_id": d, "name": f"d{d}"} for d in ids]}
            )

        async def lookup(request: web.Request) -> web.Response:
            # POST /auth/v1/lookup: many ids in one request (the gateway batches).
            ids = (await request.json())["user_ids"]
            self.lookup_requests.append(ids)
            self.lookups.extend(ids)
            for key in ids:
                if key in self.held:
                    await self.held[key].wait()
            found = [u for u in ids if u in self.users]
            return web.json_response(
                {
                    "users": [{"user_id": u, "username": u} for u in found],
                    "missing": [u for u in ids if u not in found],
                }
            )

        async def device_lists(request: web.Request) -> web.Response:
            # POST /keys/v1/users/device-lists, reduced to what the gateway reads.
            ids = (await request.json())["user_ids"]
            self.device_lookups.extend(ids)
            self.device_list_requests.append(ids)
            lists = [
                {
                    "user_id": u,
                    "device_list": {
                        "devices": [{"device_id": d} for d in self.devices.get(u, [1])]
                    },
                }
                for u in ids
                if u in self.users
            ]
            return web.json_response(
                {"lists": lists, "missing": [u for u in ids if u not in self.users]}
            )

        app = web.Application()
        app.router.add_post("/auth/v1/lookup", lookup)
        app.router.add_post("/keys/v1/users/device-lists", device_lists)
        app.router.add_get("/.well-known/jwks.json", handler)
        app.router.add_get("/auth/v1/users/{user_id}", user)
        app.router.add_get("/keys/v1/users/{user_id}/devices", devices)
        self.server = TestServer(app)
        await self.server.start_server()
        return str(self.server.make_url("")).rstrip("/")

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()

    def token(
        self,
        user_id: str | None = None,
        *,
        roles: tuple[str, ...] = ("user",),
        sid: str | None = None,
        ttl: int = 900,
        did: int | None = None,
        **overrides: Any,
    ) -> str:
        """A signed access token; ``did`` binds it to a device, as the auth service
        does for messaging sessions (without it, the token has no ``did`` claim)."""
        now = int(time.time())
        user_id = user_id or uuid.uuid4().hex
        self.users.add(user_id)
        claims: dict[str, Any] = {
            "iss": self.settings.jwt_issuer,
            "aud": self.settings.jwt_audience,
            "sub": user_id,
            "sid": sid or uuid.uuid4().hex,
            "jti": uuid.uuid4().hex,
            "roles": list(roles),
            "iat": now,
            "exp": now + ttl,
        }
        if did is not None:
            claims["did"] = did
        claims.update(overrides)
        return jwt.encode(claims, self.key, algorithm="EdDSA", headers={"kid": self.kid})
