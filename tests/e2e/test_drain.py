"""SIGTERM on a gateway pod: its clients get `reconnect`, the socket closes with 1001,
and a reconnect through the load balancer lands on the other pod."""

from __future__ import annotations

import asyncio
import csv
import signal
import urllib.request

import redis.asyncio as aioredis

from services.common.routing import presence_key
from tests.support.aio import eventually
from tests.support.stack import System, http_status
from tests.support.users import signup
from tests.support.wsclient import WsClient


async def test_sigterm_drains_the_pod_and_clients_move(system: System) -> None:
    user = await signup(system.lb)
    client = await WsClient.connect(system.ws_url, user.token)
    pod = client.ready["gateway"]
    try:
        system.procs.kill(pod, signal.SIGTERM)
        frame = await client.expect("reconnect")
        assert frame["reason"] == "server_shutting_down"
        assert await client.wait_closed() == 1001
        again = await WsClient.connect(system.ws_url, user.token)
        assert again.ready["gateway"] != pod
        # The drained pod removed its presence entry: only the new pod hosts the user.
        redis = aioredis.Redis.from_url(system.cfg.url("redis"))
        key = presence_key(system.prefix, user.user_id)
        try:
            entries = await eventually(lambda: redis.hgetall(key), lambda e: len(e) == 1)
        finally:
            await redis.aclose()
        assert [v.decode().split("|")[0] for v in entries.values()] == [again.ready["gateway"]]
        await again.close()
    finally:
        await client.close()
        system.restart(pod)
        await eventually(
            lambda: _status(system.cfg.url(pod) + "/gateway/readyz"), lambda s: s == 200
        )
        # The load balancer must see the pod again too (its health check runs every
        # second): until then every new socket lands on the other pod, and the next
        # test that needs one socket per pod would get two on one.
        await eventually(lambda: _lb_status(system, pod), lambda s: s == "UP")


async def _status(url: str) -> int:
    return http_status(url)


async def _lb_status(system: System, pod: str) -> str:
    """The pod's status in HAProxy's stats (servers gw1/gw2 of backend gateway)."""
    url = f"http://{system.cfg.host}:{system.cfg.stats_port}/stats;csv"

    def read() -> str:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return str(resp.read().decode())

    server = "gw" + pod.removeprefix("gateway")
    for row in csv.reader((await asyncio.to_thread(read)).splitlines()):
        if row[:2] == ["gateway", server]:
            return row[17]
    return ""
