"""A request aiohttp cannot parse is logged as one INFO line naming the error, never its bytes.

aiohttp.server logged such a request at ERROR with a traceback quoting the bad header:
an ``Authorization`` bearer token or a cookie went to the log, and every probe of the
internet filled the ``"level":"error"`` filter. The services' logging (setup_logging)
keeps one line with the error's type; a handler's crash still logs at ERROR.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web

from services.common.app import base_app
from services.common.config import load_settings
from services.common.logging import setup_logging

SECRET = "eyJhbGciOiJFZERTQSJ9.s3cret-bearer-token"


@pytest.fixture
def service_log() -> Iterator[io.StringIO]:
    """The services' logging set-up (JSON lines), written to a buffer; put back after."""
    root = logging.getLogger()
    names = ("aiokafka", "aiohttp.access", "pymongo", "aiohttp.server")
    saved = (root.handlers[:], root.level, {n: logging.getLogger(n).level for n in names})
    server_filters = logging.getLogger("aiohttp.server").filters[:]
    setup_logging("keys", "INFO", "json")
    buf = io.StringIO()
    handler = root.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buf)
    try:
        yield buf
    finally:
        root.handlers[:], level, levels = saved
        root.setLevel(level)
        for name, lvl in levels.items():
            logging.getLogger(name).setLevel(lvl)
        logging.getLogger("aiohttp.server").filters[:] = server_filters


def crashing_app() -> web.Application:
    app = base_app("keys", load_settings(), prefix="/keys")

    async def boom(_: web.Request) -> web.Response:
        raise RuntimeError("a real server error")

    app.router.add_get("/keys/v1/boom", boom)
    return app


async def send_raw(host: str, port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(raw)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()


def lines(buf: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("header", "error"),
    [
        # A control character in a header value.
        (f"Authorization: Bearer {SECRET}\x01".encode(), "BadHttpMessage"),
        # A header line longer than aiohttp's 8190 bytes.
        (f"Cookie: session={SECRET}".encode() + b"a" * 9000, "LineTooLong"),
        # A header line without a colon.
        (f"Bearer {SECRET}".encode(), "BadHttpMessage"),
    ],
    ids=["control-char", "line-too-long", "no-colon"],
)
async def test_a_malformed_request_logs_one_info_line_without_its_headers(
    make_client: Any, service_log: io.StringIO, header: bytes, error: str
) -> None:
    client = await make_client(crashing_app())
    raw = b"GET /keys/healthz HTTP/1.1\r\nHost: keys\r\n" + header + b"\r\n\r\n"
    answer = await send_raw(client.host, client.port, raw)
    assert answer.startswith(b"HTTP/1.0 400") or answer.startswith(b"HTTP/1.1 400")
    await asyncio.sleep(0.05)  # the line is written as the 400 goes out; let it land
    logged = service_log.getvalue()
    assert SECRET not in logged and "s3cret" not in logged
    records = lines(service_log)
    assert [r for r in records if r["level"] in ("error", "critical")] == []
    server = [r for r in records if r["logger"] == "aiohttp.server"]
    assert len(server) == 1, server
    assert server[0]["level"] == "info"
    assert server[0]["msg"] == f"bad HTTP request: {error}"
    assert server[0]["status"] == 400
    assert "exc" not in server[0]


async def test_a_malformed_request_is_not_logged_above_info(
    make_client: Any, service_log: io.StringIO
) -> None:
    logging.getLogger().setLevel(logging.WARNING)  # PARLEY_LOG_LEVEL=WARNING
    client = await make_client(crashing_app())
    raw = f"GET /keys/healthz HTTP/1.1\r\nHost: keys\r\nX-Token: {SECRET}\x01\r\n\r\n".encode()
    assert (await send_raw(client.host, client.port, raw)).split(b" ")[1] == b"400"
    await asyncio.sleep(0.05)
    assert service_log.getvalue() == ""


async def test_a_real_server_error_is_still_logged_at_error(
    make_client: Any, service_log: io.StringIO
) -> None:
    client = await make_client(crashing_app())
    resp = await client.get("/keys/v1/boom")
    assert resp.status == 500
    errors = [r for r in lines(service_log) if r["level"] == "error"]
    assert errors and any("a real server error" in r.get("exc", "") for r in errors), errors
    # And aiohttp.server's own lines about anything but a malformed request pass unchanged.
    try:
        raise RuntimeError("handler crashed outside the middlewares")
    except RuntimeError:
        logging.getLogger("aiohttp.server").exception("Unhandled exception")
    last = lines(service_log)[-1]
    assert (last["logger"], last["level"], last["msg"]) == (
        "aiohttp.server",
        "error",
        "Unhandled exception",
    )
    assert "handler crashed outside the middlewares" in last["exc"]
