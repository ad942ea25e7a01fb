"""The hub's background loops outlive whatever goes wrong in them: a pod whose channel
loop ended would stay up and ready, and push nothing routed to it again."""

from __future__ import annotations

from typing import Any

from services.common.routing import gateway_channel
from services.common.state import KAFKA
from services.gateway.app import create_app
from services.gateway.state import HUB
from tests.support.aio import eventually


async def _value(v: Any) -> Any:
    return v


async def test_an_unexpected_error_on_the_channel_is_survived(
    issuer: Any, make_client: Any
) -> None:
    gw = await make_client(await create_app(issuer.settings))
    await gw.server.app[KAFKA].wait_ready(30)
    hub = gw.server.app[HUB]
    await eventually(lambda: _value(hub.subscribed.is_set()), lambda ok: ok, timeout=10)
    routed: list[bytes] = []
    calls = 0

    def route(data: bytes) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("pubsub connection not set")  # what redis-py may raise
        routed.append(data)

    hub._route = route
    channel = gateway_channel(issuer.settings.redis_prefix, issuer.settings.gateway_id)
    redis = hub.store.redis
    await redis.publish(channel, b"first")
    await eventually(lambda: _value(calls), lambda n: n >= 1, timeout=10)
    # Subscribed again (after its backoff), and what is routed next arrives.
    await eventually(lambda: _value(hub.subscribed.is_set()), lambda ok: ok, timeout=10)
    await eventually(
        lambda: redis.publish(channel, b"second"), lambda _: "second" in str(routed), timeout=10
    )
    assert routed[0] == b"second"
