"""Helpers for the auth tests: a client that speaks the auth API, mail and DB snapshots."""

from __future__ import annotations

import email
import email.policy
import re
import secrets
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from services.auth.state import AUTH_SERVICE, AuthService
from services.common.state import DB, REDIS
from tests.support.aio import eventually

Client = TestClient[web.Request, web.Application]
PASSWORD = "correct horse battery staple"


def unique_name(prefix: str = "u") -> str:
    return f"{prefix}{secrets.token_hex(5)}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class AuthApi:
    """The auth API as a client sees it, over real HTTP."""

    def __init__(self, client: Client, maildir: Path) -> None:
        self.client = client
        self.maildir = maildir

    @property
    def app(self) -> web.Application:
        app = self.client.server.app
        assert app is not None
        return app

    @property
    def service(self) -> AuthService:
        return self.app[AUTH_SERVICE]

    @property
    def db(self) -> Any:
        return self.app[DB]

    @property
    def audit(self) -> Any:
        """The shared audit log's collection (services.common.audit)."""
        return self.service.audit.coll

    @property
    def redis(self) -> Any:
        return self.app[REDIS]

    async def call(
        self,
        method: str,
        path: str,
        json: Any = None,
        token: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        hdrs = dict(headers or {})
        if token:
            hdrs.update(bearer(token))
        resp = await self.client.request(method, path, json=json, headers=hdrs)
        body = await resp.json() if resp.content_type == "application/json" else None
        if status is not None:
            assert resp.status == status, (resp.status, body)
        return resp.status, body

    async def signup(
        self, username: str | None = None, password: str = PASSWORD, email_addr: str | None = None
    ) -> dict[str, Any]:
        username = username or unique_name()
        email_addr = email_addr or f"{username}@example.test"
        _, body = await self.call(
            "POST",
            "/auth/v1/signup",
            {"username": username, "email": email_addr, "password": password},
            status=201,
        )
        body["email"] = email_addr
        body["password"] = password
        return body

    async def login(self, username: str, password: str = PASSWORD, status: int = 200) -> Any:
        _, body = await self.call(
            "POST", "/auth/v1/login", {"username": username, "password": password}, status=status
        )
        return body

    async def login_device(self, username: str, device_id: int, status: int = 200) -> Any:
        """A login bound to ``device_id`` (as a device of the account logs in)."""
        _, body = await self.call(
            "POST", "/auth/v1/login",
            {"username": username, "password": PASSWORD, "device_id": device_id}, status=status,
        )  # fmt: skip
        return body

    async def refresh(self, refresh_token: str, status: int = 200) -> Any:
        _, body = await self.call(
            "POST", "/auth/v1/token/refresh", {"refresh_token": refresh_token}, status=status
        )
        return body

    async def mail_to(self, address: str, after: int = 0) -> list[str]:
        """The text of every mail to ``address``, waiting until more than ``after`` arrived."""
        safe = re.sub(r"[^A-Za-z0-9@._-]", "_", address)

        async def probe() -> list[Path]:
            return sorted(self.maildir.glob(f"*-{safe}.eml"))

        files = await eventually(probe, lambda fs: len(fs) > after, timeout=10)
        texts = []
        for path in files:
            msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            part = msg.get_body(preferencelist=("plain",))
            assert part is not None
            texts.append(f"Subject: {msg['Subject']}\n\n{part.get_content()}")
        return texts

    async def snapshot(self) -> dict[str, list[Any]]:
        """Every document of every collection of the auth database."""
        out: dict[str, list[Any]] = {}
        for name in sorted(await self.db.list_collection_names()):
            docs = [d async for d in self.db[name].find({})]
            out[name] = sorted(docs, key=lambda d: str(d["_id"]))
        return out


class RecordingHasher:
    """The service's ``PasswordHasher`` (``svc.passwords.hasher``), recording the hashes
    it verifies passwords against: which argon2 checks a request ran, without timing."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.verified: list[str] = []

    def verify(self, hash: str, password: str) -> bool:
        self.verified.append(hash)
        return bool(self.inner.verify(hash, password))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def code_in(text: str) -> str:
    m = re.search(r"\b(\d{6})\b", text)
    assert m, text
    return m.group(1)
