"""Every route of the auth service is in its OpenAPI document, with its error codes."""

from __future__ import annotations

from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from services.auth.routes import api
from services.auth.state import Caller
from tests.auth.helpers import AuthApi


async def test_every_route_is_documented(auth: AuthApi) -> None:
    _, doc = await auth.call("GET", "/auth/openapi.json", status=200)
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    registered = {(op.method, "/auth" + op.path) for op, _ in api.operations}
    assert documented == registered
    expected = {
        ("POST", "/auth/v1/signup"), ("POST", "/auth/v1/login"), ("POST", "/auth/v1/login/2fa"),
        ("POST", "/auth/v1/token/refresh"), ("POST", "/auth/v1/logout"),
        ("POST", "/auth/v1/password"), ("GET", "/auth/v1/sessions"), ("GET", "/auth/v1/me"),
        ("GET", "/auth/v1/users/{user}"), ("POST", "/auth/v1/2fa/totp/setup"),
        ("POST", "/auth/v1/2fa/email/setup"), ("GET", "/auth/v1/admin/users"),
        ("POST", "/auth/v1/admin/users/{user_id}/block"), ("GET", "/auth/v1/admin/audit"),
    }  # fmt: skip
    assert expected <= documented
    login = doc["paths"]["/auth/v1/login"]["post"]
    assert "rate_limited" in login["responses"]["429"]["description"]
    assert "account_locked" in login["responses"]["429"]["description"]
    assert "invalid_credentials" in login["responses"]["401"]["description"]
    assert login["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/LoginRequest"
    )
    assert doc["paths"]["/auth/v1/me"]["get"]["security"] == [{"bearer": []}]
    page = await (await auth.client.get("/auth/docs")).text()
    assert "/auth/v1/admin/users/{user_id}/block" in page


def test_client_ip_is_the_last_forwarded_hop() -> None:
    headers = CIMultiDict([("X-Forwarded-For", "1.1.1.1, 2.2.2.2"), ("X-Forwarded-For", "3.3.3.3")])
    request = make_mocked_request("GET", "/", headers=headers)
    assert Caller.of(request, True).ip == "3.3.3.3"
    assert Caller.of(request, False).ip != "3.3.3.3"
