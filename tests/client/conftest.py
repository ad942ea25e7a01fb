"""Clients of the SDK against the real system (every service behind HAProxy)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from parley import Client
from parley.store import KdfParams

from tests.support.stack import System

# Tests only: a cheap scrypt (the default costs ~0.1 s and 32 MiB per open).
CHEAP_KDF = KdfParams(n=2**10, r=8, p=1)

MakeClient = Callable[..., Awaitable[Client]]


def new_username(prefix: str = "c") -> str:
    return f"{prefix}{secrets.token_hex(5)}"


PASSWORD = "correct horse battery staple"


@pytest.fixture
async def make_client(system: System, tmp_path: Path) -> AsyncIterator[MakeClient]:
    """``await make_client()`` signs up a new user and returns its open client."""
    clients: list[Client] = []

    async def make(
        username: str | None = None,
        *,
        signup: bool = True,
        data_dir: Path | None = None,
        **kwargs: object,
    ) -> Client:
        username = username or new_username()
        client = Client(
            system.lb,
            data_dir=data_dir or tmp_path / username / secrets.token_hex(3),
            passphrase="test passphrase",
            kdf=CHEAP_KDF,
            backoff_start=0.1,
            backoff_max=1.0,
            **kwargs,  # type: ignore[arg-type]
        )
        await client.open()
        clients.append(client)
        if signup:
            await client.signup(username, PASSWORD, f"{username}@example.test")
        return client

    yield make
    for client in clients:
        await client.close()
