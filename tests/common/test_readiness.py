"""/readyz really pings its dependencies: kill one, see 503 naming it, restart, see 200.

These tests own a private set of servers so that killing one disturbs no other test.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scripts.stack import Processes, StackConfig
from services.delivery.app import create_app
from services.gateway.app import create_app as gateway_app
from tests.support.aio import eventually
from tests.support.stack import Stack


@pytest.fixture(scope="module")
def private_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    cfg = StackConfig.free_ports(Path(tmp_path_factory.mktemp("private")))
    procs = Processes(cfg)
    for name in ("mongo", "kafka", "redis"):
        procs.start(name)
    yield Stack(cfg, procs)
    procs.stop_all()


async def readyz(client: Any) -> tuple[int, dict[str, Any]]:
    resp = await client.get("/delivery/readyz")
    return resp.status, await resp.json()


@pytest.mark.kills_servers
@pytest.mark.parametrize(
    ("server", "check"), [("redis", "redis"), ("kafka", "kafka"), ("mongo", "mongodb")]
)
async def test_readyz_follows_a_dependency_down_and_back(
    private_stack: Stack, make_client: Any, server: str, check: str
) -> None:
    settings = private_stack.settings(readiness_timeout_s=1.5, dependency_timeout_ms=1000)
    client = await make_client(await create_app(settings))
    await eventually(lambda: readyz(client), lambda r: r[0] == 200)

    assert private_stack.procs is not None
    private_stack.procs.kill(server)
    _, body = await eventually(lambda: readyz(client), lambda r: r[0] == 503)
    assert body["failed"] == [check]
    assert body["error"]["code"] == "service_unavailable"
    assert check in body["error"]["message"]
    assert all(v == "ok" for k, v in body["checks"].items() if k != check)

    private_stack.procs.start(server)
    _, body = await eventually(lambda: readyz(client), lambda r: r[0] == 200, timeout=30)
    assert body["checks"][check] == "ok"


@pytest.mark.kills_servers
async def test_a_gateway_is_not_ready_until_it_is_back_on_its_redis_channel(
    private_stack: Stack, make_client: Any
) -> None:
    """A gateway pod off its Redis channel pushes nothing routed to it: while Redis is
    down its readiness names the channel beside Redis, and it is ready again only
    once it has subscribed again."""
    settings = private_stack.settings(readiness_timeout_s=1.5, dependency_timeout_ms=1000)
    client = await make_client(await gateway_app(settings))

    async def ready() -> tuple[int, dict[str, Any]]:
        resp = await client.get("/gateway/readyz")
        return resp.status, await resp.json()

    async def subscribed() -> float:
        # What the alert reads (ParleyGatewayChannelLost): no load balancer checks
        # readiness, so a pod off its channel stays in rotation.
        text = await (await client.get("/gateway/metrics")).text()
        line = next(
            x for x in text.splitlines() if x.startswith("parley_gateway_channel_subscribed{")
        )
        return float(line.rsplit(" ", 1)[1])

    _, body = await eventually(ready, lambda r: r[0] == 200)
    assert body["checks"]["channel"] == "ok"
    assert await subscribed() == 1.0
    assert private_stack.procs is not None
    private_stack.procs.kill("redis")
    _, body = await eventually(ready, lambda r: "channel" in r[1].get("failed", []))
    assert body["failed"] == ["channel", "redis"]
    assert await subscribed() == 0.0
    private_stack.procs.start("redis")
    _, body = await eventually(ready, lambda r: r[0] == 200, timeout=30)
    assert body["checks"]["channel"] == "ok"
    assert await subscribed() == 1.0
