"""HTTP helpers: JSON in and out with orjson, bodies validated by pydantic."""

from __future__ import annotations

import ipaddress
from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from services.common.errors import ApiError, ErrorCode
from services.common.state import MAX_BODY

M = TypeVar("M", bound=BaseModel)


ACKS_PER_CALL = 24
ACK_TOKEN_MAX = 2048
"""``POST /delivery/v1/inbox/acks``: at most ``ACKS_PER_CALL`` acks, tokens of at most
``ACK_TOKEN_MAX`` bytes (delivery refuses more; a gateway sends no more). A call that
size fits inside the body limit (64 KiB), and so does one ack too many (refused
``validation_failed``, not ``payload_too_large``). Access tokens are about 600 bytes;
a gateway acks a longer one alone (``POST /v1/inbox/ack``)."""


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    if isinstance(data, BaseModel):
        body = data.model_dump_json().encode()
    else:
        body = orjson.dumps(data)
    return web.Response(body=body, status=status, content_type="application/json", headers=headers)


def validation_details(exc: ValidationError) -> list[dict[str, str]]:
    """Field errors without echoing the input (it may be a password)."""
    return [
        {"field": ".".join(str(p) for p in err["loc"]) or "(body)", "problem": err["msg"]}
        for err in exc.errors(include_input=False, include_url=False)
    ]


def int_schema(lo: int, hi: int, description: str | None = None) -> dict[str, Any]:
    """The OpenAPI schema of an integer parameter that :func:`query_int` reads."""
    schema: dict[str, Any] = {"type": "integer", "minimum": lo, "maximum": hi}
    if description:
        schema["description"] = description
    return schema


def parse_int(raw: str, name: str, lo: int, hi: int) -> int:
    """A path or query integer: ASCII digits only, in ``lo..hi``, or 422 ``validation_failed``."""
    if raw.isascii() and raw.isdigit() and len(raw) <= len(str(hi)):
        value = int(raw)
        if lo <= value <= hi:
            return value
    raise ApiError(
        ErrorCode.VALIDATION_FAILED,
        f"{name} must be an integer in {lo}..{hi}.",
        details=[{"field": name, "problem": f"not an integer in {lo}..{hi}"}],
    )


def query_int(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    return default if raw is None else parse_int(raw, name, lo, hi)


def address_key(ip: str) -> str:
    """The client address as per-address limits count it: IPv4 as is, IPv6 by its /64
    (one subscriber's prefix: by the full address, one host had 2^64 buckets)."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


def client_ip(request: web.Request, trust_forwarded_for: bool) -> str:
    """The client address: the last X-Forwarded-For hop (added by our load
    balancer, the only one we trust), else the peer address."""
    if trust_forwarded_for:
        values = request.headers.getall("X-Forwarded-For", [])
        hops = [h.strip() for v in values for h in v.split(",") if h.strip()]
        if hops:
            return hops[-1][:64]
    # The transport's peer, not ``request.remote``: that caches the peer on the
    # request, which a WebSocket keeps for its whole life (~200 bytes a socket).
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    if isinstance(peer, list | tuple):
        return str(peer[0])
    return str(peer) if peer else "unknown"


async def read_json(request: web.Request) -> Any:
    if request.content_length is not None and request.content_length > request.app[MAX_BODY]:
        raise ApiError(ErrorCode.PAYLOAD_TOO_LARGE)
    ctype = request.content_type
    if ctype not in ("application/json", "application/octet-stream", ""):
        raise ApiError(ErrorCode.UNSUPPORTED_MEDIA_TYPE, "Send JSON (application/json).")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(ErrorCode.PAYLOAD_TOO_LARGE) from None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ApiError(ErrorCode.INVALID_JSON) from None


async def parse_body(request: web.Request, model: type[M]) -> M:
    data = await read_json(request)
    if not isinstance(data, dict):
        raise ApiError(ErrorCode.VALIDATION_FAILED, "The body must be a JSON object.")
    return parse_model(model, data)


def parse_model(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(
            ErrorCode.VALIDATION_FAILED,
            "The request is not valid.",
            details=validation_details(exc),
        ) from None
