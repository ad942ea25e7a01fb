"""Sign users up through the load balancer, as a client does."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import aiohttp


@dataclass
class User:
    username: str
    user_id: str
    token: str
    password: str


async def signup(lb: str, prefix: str = "u") -> User:
    username = f"{prefix}{secrets.token_hex(5)}"
    password = "correct horse " + secrets.token_hex(8)
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{lb}/auth/v1/signup",
            json={"username": username, "email": f"{username}@example.test", "password": password},
        ) as resp,
    ):
        body = await resp.json()
        assert resp.status in (200, 201), body
    return User(username, body["user"]["user_id"], body["access_token"], password)
