"""Fixtures for the auth service: the real app on a real port, on the embedded stack."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.auth.app import create_app
from services.auth.config import AuthSettings
from services.common.config import Settings
from services.common.state import STARTUP
from tests.auth.helpers import AuthApi
from tests.support.stack import Stack

# Generous limits by default; the tests of limits set their own.
ROOMY = {
    "limit_signup_ip": "1000/3600",
    "limit_login_ip": "1000/300",
    "limit_code_ip": "1000/300",
    "limit_reset_ip": "1000/3600",
    "limit_refresh_ip": "1000/60",
    "limit_token_ip": "1000/60",
    "limit_authorize_ip": "1000/900",
}


@pytest.fixture
def auth_config() -> AuthSettings:
    return AuthSettings.for_tests(**ROOMY)


@pytest.fixture
async def auth(
    stack: Stack, settings: Settings, auth_config: AuthSettings, make_client: Any
) -> AsyncIterator[AuthApi]:
    client = await make_client(await create_app(settings, auth_config))
    api = AuthApi(client, stack.maildir)
    await api.app[STARTUP].done.wait()
    yield api
    await api.service.drain()
