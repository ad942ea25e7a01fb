"""Sign users up through the load balancer, as a client does.

Each user is a one-device account (device 1), registered the way the SDK does
it: an identity for the device, then an account key whose signed device list
names it (docs/devices.md). Without the list, the gateway refuses any copy
addressed to the user (``devices_changed``), as it would for a real client.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp

from tests.keys.keygen import AccountKeys, DeviceKeys, entry

DEVICE = 1


def uid() -> str:
    """A fresh user id (12 hex digits) for tests that make tokens of their own."""
    return uuid.uuid4().hex[:12]


@dataclass
class User:
    username: str
    user_id: str
    token: str
    password: str
    device_id: int = DEVICE


async def signup(lb: str, prefix: str = "u") -> User:
    username = f"{prefix}{secrets.token_hex(5)}"
    password = "correct horse " + secrets.token_hex(8)
    async with aiohttp.ClientSession() as http:
        body = await _call(
            http, "POST", f"{lb}/auth/v1/signup", None,
            {"username": username, "email": f"{username}@example.test", "password": password,
             "device_id": DEVICE},
            (200, 201),
        )  # fmt: skip
        user = User(username, body["user"]["user_id"], body["access_token"], password)
        await register_device(http, lb, user)
    return user


async def register_device(http: aiohttp.ClientSession, lb: str, user: User) -> None:
    """Publish device 1's identity and the account's signed list naming it."""
    dev = DeviceKeys()
    base = f"{lb}/keys/v1"
    await _call(http, "PUT", f"{base}/devices/{user.device_id}/identity", user.token,
                dev.identity(), (200,))  # fmt: skip
    account = AccountKeys().registration(user.user_id, [entry(user.device_id, dev)])
    await _call(http, "PUT", f"{base}/account", user.token, account, (200,))


async def _call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    token: str | None,
    body: Any,
    expect: tuple[int, ...],
) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.request(method, url, json=body, headers=headers) as resp:
        answer = await resp.json() if resp.content_type == "application/json" else None
        assert resp.status in expect, (method, url, resp.status, answer)
        return answer
