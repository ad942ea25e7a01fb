"""Bad input gets a 4xx with a stable error code, and nothing is written."""

from __future__ import annotations

from typing import Any

import pytest

from tests.auth.helpers import PASSWORD, AuthApi, unique_name

JSON = {"Content-Type": "application/json"}


def signup_body(**over: Any) -> dict[str, Any]:
    name = unique_name()
    body = {"username": name, "email": f"{name}@example.test", "password": PASSWORD}
    body.update(over)
    return body


RAW_CASES = [
    (b"{not json", JSON, 400, "invalid_json"),
    (b'{"username": "\\ud800abc", "email": "a@b.test", "password": "x"}', JSON, 400, "invalid_json"),
    (b"[1, 2, 3]", JSON, 422, "validation_failed"),
    (b'"a string"', JSON, 422, "validation_failed"),
    (b"", JSON, 400, "invalid_json"),
    (b'{"username": "' + b"a" * 70000 + b'"}', JSON, 413, "payload_too_large"),
    (b"username=alice", {"Content-Type": "application/x-www-form-urlencoded"}, 415,
     "unsupported_media_type"),
]  # fmt: skip


@pytest.mark.parametrize(("raw", "headers", "status", "code"), RAW_CASES)
async def test_malformed_bodies(
    auth: AuthApi, raw: bytes, headers: dict[str, str], status: int, code: str
) -> None:
    await auth.signup()
    before = await auth.snapshot()
    resp = await auth.client.post("/auth/v1/signup", data=raw, headers=headers)
    assert resp.status == status
    assert (await resp.json())["error"]["code"] == code
    assert await auth.snapshot() == before


BODY_CASES = [
    ({"username": 123}, "validation_failed"),
    ({"password": True}, "validation_failed"),
    ({"email": None}, "validation_failed"),
    ({"email": ["a@b.test"]}, "validation_failed"),
    ({"roles": ["admin"]}, "validation_failed"),
    ({"username": ""}, "validation_failed"),
    ({"password": "x" * 2000}, "validation_failed"),
    ({"email": "not-an-email"}, "validation_failed"),
    ({"email": "a@b"}, "validation_failed"),
    ({"email": "ali ce@example.test"}, "validation_failed"),
    ({"email": "ålice@example.test"}, "validation_failed"),
    # An RFC 2047 encoded word: mail libraries decode it in a To header (another mailbox).
    ({"email": "=?utf-8?q?victim?=@example.test"}, "validation_failed"),
    ({"username": "ｆｕｌｌｗｉｄｔｈ"}, "invalid_username"),  # fullwidth  # noqa: RUF001
    ({"username": "zero\u200bwidth"}, "invalid_username"),
    ({"username": "\u0430lice"}, "invalid_username"),  # Cyrillic a
    ({"username": "bidi\u202eevil"}, "invalid_username"),
    ({"username": "nul\x00byte"}, "invalid_username"),
    ({"username": "emoji\U0001f600"}, "invalid_username"),
    ({"username": "combi\u0301ning"}, "invalid_username"),
    ({"username": "al\u0131ce"}, "invalid_username"),  # dotless i
    ({"username": "with space"}, "invalid_username"),
    ({"username": "1digitfirst"}, "invalid_username"),
    ({"username": "ab"}, "invalid_username"),
    ({"username": "a" * 33}, "invalid_username"),
    ({"username": "trailing."}, "invalid_username"),
    ({"username": "dou..ble"}, "invalid_username"),
    ({"username": "admin"}, "invalid_username"),
    ({"username": "Metrics"}, "invalid_username"),  # the load balancers' operator paths
    ({"username": "readyz"}, "invalid_username"),
    ({"username": "deadbeef" * 4}, "invalid_username"),  # looks like a user id
    ({"password": "short1!"}, "weak_password"),
    ({"password": "QWERTYUIOP"}, "weak_password"),  # blocklisted, any case
    ({"password": "Password123"}, "weak_password"),
    ({"password": "aaaaaaaaaaaaaaa"}, "weak_password"),
    ({"password": "ｑｗｅｒｔｙｕｉｏｐ"}, "weak_password"),  # NFKC of a blocklisted one  # noqa: RUF001
]


@pytest.mark.parametrize(("over", "code"), BODY_CASES)
async def test_invalid_fields(auth: AuthApi, over: dict[str, Any], code: str) -> None:
    await auth.signup()
    before = await auth.snapshot()
    status, body = await auth.call("POST", "/auth/v1/signup", signup_body(**over))
    assert 400 <= status < 500
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    assert await auth.snapshot() == before


async def test_password_containing_the_username_is_weak(auth: AuthApi) -> None:
    name = unique_name()
    status, body = await auth.call(
        "POST", "/auth/v1/signup", signup_body(username=name, password=f"my {name} password")
    )
    assert (status, body["error"]["code"]) == (422, "weak_password")
    assert await auth.db["users"].find_one({"username": name}) is None


async def test_validation_errors_name_the_field_not_the_value(auth: AuthApi) -> None:
    status, body = await auth.call("POST", "/auth/v1/signup", signup_body(password=["s3cr3t"]))
    assert status == 422
    assert body["error"]["details"][0]["field"] == "password"
    assert "s3cr3t" not in str(body)


async def test_other_endpoints_reject_bad_input_and_write_nothing(auth: AuthApi) -> None:
    user = await auth.signup()
    token = user["access_token"]
    before = await auth.snapshot()
    cases: list[tuple[str, str, Any, str]] = [
        ("POST", "/auth/v1/login", {"username": user["user"]["username"], "password": 5},
         "validation_failed"),
        ("POST", "/auth/v1/login", {"username": "x", "password": "y", "extra": 1},
         "validation_failed"),
        ("POST", "/auth/v1/token/refresh", {"refresh_token": 5}, "validation_failed"),
        ("POST", "/auth/v1/login/2fa", {"challenge_id": "c", "method": "sms", "code": "1"},
         "validation_failed"),
        ("POST", "/auth/v1/password", {"current_password": PASSWORD}, "validation_failed"),
        ("POST", "/auth/v1/2fa/totp/confirm", {"code": 123456}, "validation_failed"),
        ("POST", "/auth/v1/password/reset", {"email": "nope"}, "validation_failed"),
        ("POST", "/auth/v1/password/reset/confirm", {"token": "t", "new_password": 1},
         "validation_failed"),
    ]  # fmt: skip
    for method, path, body, code in cases:
        status, answer = await auth.call(method, path, body, token=token)
        assert (status, answer["error"]["code"]) == (422, code), (path, answer)
    # A wrong-typed login does not count as a failed password either.
    assert not await auth.redis.keys(f"{auth.service.settings.redis_prefix}:auth:rl:login_f*")
    assert await auth.snapshot() == before
    # And the account still works.
    await auth.login(user["user"]["username"], status=200)


async def test_username_case_is_folded(auth: AuthApi) -> None:
    name = unique_name()
    _, body = await auth.call(
        "POST", "/auth/v1/signup", signup_body(username=name.upper()), status=201
    )
    assert body["user"]["username"] == name
    await auth.login(name.upper(), status=200)
