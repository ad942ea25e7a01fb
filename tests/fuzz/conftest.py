"""The people the fuzzers act as: signed up through the load balancer, as clients are."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
import pytest

from tests.e2e.test_block import create_admin
from tests.support.stack import System
from tests.support.users import User, signup

ADMIN_PASSWORD = "fuzz admin pass phrase 9x"


@dataclass
class Admin:
    username: str
    token: str


async def login(lb: str, username: str, password: str, device_id: int | None = None) -> str:
    body: dict[str, object] = {"username": username, "password": password}
    if device_id is not None:
        body["device_id"] = device_id
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{lb}/auth/v1/login", json=body) as resp:
            assert resp.status == 200, await resp.text()
            return str((await resp.json())["access_token"])


@pytest.fixture(scope="session")
async def admin(system: System) -> Admin:
    user = await signup(system.lb, "a")  # a name nobody else takes
    name = f"adm{user.username[1:]}"
    create_admin(system, name, ADMIN_PASSWORD)
    return Admin(name, await login(system.lb, name, ADMIN_PASSWORD))


@pytest.fixture
async def user(system: System) -> User:
    return await signup(system.lb, "z")
