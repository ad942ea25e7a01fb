"""Every operation that needs a token, from the OpenAPI documents, refused to those
who may not call it, with a status the operation documents.

Callers: no token; an expired token (the real key id, an expiry in the past,
signed by another key: the auth service's private key never leaves it, so this
is refused as ``invalid_token`` before its expiry is read); a blocked user's
token; a plain user's token on an ``x-required-role: admin`` operation;
another user's token on an operation that changes a named user's resource
(a ``{user_id}`` path of a method other than GET) or addresses another
device than the session's (``{device_id}`` under ``/keys/v1/devices``).
A new route is in the matrix the day it is in its document.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import aiohttp
import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.fuzz.conftest import Admin
from tests.support.stack import System
from tests.support.users import User, signup

SERVICES = ["auth", "keys", "delivery", "gateway", "rooms"]
METHODS = {"get", "post", "put", "patch", "delete"}


def expired_like(token: str) -> str:
    head = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    claims.update(iat=int(time.time()) - 3600, exp=int(time.time()) - 1800)
    key = Ed25519PrivateKey.generate()
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": head["kid"]})


def fill(path: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        path = path.replace("{" + name + "}", value)
    return path


async def test_every_protected_operation_refuses_who_may_not_call_it(
    system: System, user: User, admin: Admin
) -> None:
    other = await signup(system.lb, "o")
    blocked = await signup(system.lb, "b")
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{system.lb}/auth/v1/admin/users/{blocked.user_id}/block",
            headers={"Authorization": f"Bearer {admin.token}"},
            json={"reason": "fuzz"},
        ) as resp:
            assert resp.status == 200, await resp.text()
        docs: dict[str, Any] = {}
        for service in SERVICES:
            async with http.get(f"{system.lb}/{service}/openapi.json") as resp:
                docs[service] = await resp.json()

        cases = 0
        refusals: list[str] = []
        for doc in docs.values():
            for path, item in doc["paths"].items():
                for method, op in item.items():
                    if method not in METHODS or not op.get("security"):
                        continue
                    documented = {int(s) for s in op["responses"] if s.isdigit()}
                    callers: list[tuple[str, str | None, dict[str, str]]] = [
                        ("no token", None, {}),
                        ("expired token", expired_like(user.token), {}),
                        ("blocked user", blocked.token, {}),
                    ]
                    if op.get("x-required-role") == "admin":
                        callers.append(("plain user on an admin route", user.token, {}))
                    if "{user_id}" in path and method != "get":
                        callers.append(("another user", other.token, {}))
                    if path.startswith("/keys/v1/devices/{device_id}"):
                        callers.append(("another device", user.token, {"device_id": "2"}))
                    for who, token, values in callers:
                        url = system.lb + fill(
                            path,
                            {"user_id": user.user_id, "device_id": "1", **values,
                             "link_id": "AAAAAAAAAAA", "client_id": "x", "sid": "x", "user": "x",
                             "room_id": "0" * 24},
                        )  # fmt: skip
                        headers = {"Authorization": f"Bearer {token}"} if token else {}
                        body = {} if method in {"post", "put", "patch"} else None
                        async with http.request(
                            method.upper(), url, headers=headers, json=body
                        ) as resp:
                            cases += 1
                            status = resp.status
                            code = (await resp.json())["error"]["code"]
                        label = f"{method.upper()} {path} as {who}: {status} {code}"
                        if status not in documented or status not in (401, 403, 404):
                            refusals.append(label)
    print(f"authorization matrix: {cases} cases over {len(docs)} documents")
    assert cases > 100
    assert not refusals, "\n".join(refusals)
