"""A ``Retry-After`` the client cannot read as seconds (review, 2026-12-07): parsed as a
float alone, an HTTP date or a word raised a ``ValueError`` nothing expected, and the
connection's loop died without a ``failed`` state and never reconnected."""

from __future__ import annotations

import asyncio
import time
from email.utils import formatdate
from typing import Any

import pytest
from aiohttp import web
from parley.api import Api, retry_after_s
from parley.connection import Connection
from parley.errors import ParleyError


@pytest.mark.parametrize(
    ("value", "low", "high"),
    [
        (None, 0, 0), ("", 0, 0), ("7", 7, 7), ("2.5", 2.5, 2.5), ("-3", 0, 0),
        ("soon", 0, 0), ("nan", 0, 0), ("inf", 0, 0), ("1e400", 0, 0),
        ("two minutes from now", 100, 121),  # an HTTP date, made in the test
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0, 0),  # in the past
    ],
)  # fmt: skip
def test_retry_after_reads_seconds_and_dates(value: str | None, low: float, high: float) -> None:
    # (The date is made here: an id made at collection differs between xdist workers.)
    if value == "two minutes from now":
        value = formatdate(time.time() + 120, usegmt=True)
    assert low <= retry_after_s(value) <= high


async def test_a_refresh_answered_with_an_unreadable_retry_after_is_tried_again() -> None:
    calls = 0
    again = asyncio.Event()

    async def refresh(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        if calls >= 3:
            again.set()
        return web.json_response(
            {"error": {"code": "service_unavailable", "message": "later"}},
            status=503, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT" if calls % 2 else "soon"},
        )  # fmt: skip

    app = web.Application()
    app.router.add_post("/auth/v1/token/refresh", refresh)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    api = Api(f"http://127.0.0.1:{port}")

    async def token(refresh: bool) -> str:
        return str((await api.refresh("rt"))["access_token"])

    async def on_frame(frame: Any) -> None:
        return None

    with pytest.raises(ParleyError):
        await api.refresh("rt")  # the client's error (503: unavailable), not a ValueError
    conn = Connection(
        f"ws://127.0.0.1:{port}/ws", token, on_frame, backoff_start=0.01, backoff_max=0.05
    )
    try:
        conn_task = asyncio.create_task(conn.start(timeout=30))
        await asyncio.wait_for(again.wait(), 30)  # the loop lives on and tries again
        assert conn.failed is None
        conn_task.cancel()
    finally:
        await conn.close()
        await api.close()
        await runner.cleanup()
