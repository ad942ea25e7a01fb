"""Schemathesis hooks for tests/fuzz/test_openapi.py (loaded through ``SCHEMATHESIS_HOOKS``).

Authentication: every case carries a real token (``PARLEY_FUZZ_AUTH``, JSON set
by the test): the admin's on ``x-required-role: admin`` routes, a signed-up
user's elsewhere. A route that ends the session it is called with (logout)
gets another session of that user: the first case ends it, the next ones
are answered 401 ``token_revoked``, and the rest of the run keeps its token.

One check of our own, stricter than schemathesis's ``positive_data_acceptance``
(which would also count a refused signature as a refusal of valid data): a
request the document admits must never be answered ``validation_failed`` or
``invalid_json``, the codes of "this is not what the document says".
"""

from __future__ import annotations

import json
import os
from typing import Any

import schemathesis

_AUTH: dict[str, Any] = json.loads(os.environ.get("PARLEY_FUZZ_AUTH", "{}"))
# Routes that end the session they are called with.
_ENDS_SESSION = {("POST", "/auth/v1/logout")}
SHAPE_CODES = {"validation_failed", "invalid_json"}


@schemathesis.auth(refresh_interval=None)
class ParleyAuth:
    def get(self, case: Any, ctx: Any) -> str:
        return ""

    def set(self, case: Any, data: str, ctx: Any) -> None:
        op = case.operation
        if (op.method.upper(), op.path) in _ENDS_SESSION:
            token = _AUTH["sacrificial"]
        elif op.definition.raw.get("x-required-role") == "admin":
            token = _AUTH["admin"]
        else:
            token = _AUTH["user"]
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {token}"}


def _has_integral_float(value: Any) -> bool:
    """JSON Schema cannot tell ``1.0`` from ``1`` (both are integers there); our request
    models are strict and refuse ``1.0`` where they want an integer, on purpose."""
    if isinstance(value, float):
        return value.is_integer()
    if isinstance(value, dict):
        return any(_has_integral_float(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_integral_float(v) for v in value)
    return False


@schemathesis.check
def documented_shape_accepted(ctx: Any, response: Any, case: Any) -> bool | None:
    """A request that matches the document is not refused for its shape."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code != 422:
        return None
    try:
        code = response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None
    if code in SHAPE_CODES and not _has_integral_float(case.body):
        raise AssertionError(
            f"The document admits this request but the server answered 422 {code}: "
            f"{response.text[:300]}"
        )
    return None
