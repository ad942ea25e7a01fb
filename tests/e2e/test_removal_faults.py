"""Removing messages ("remove for everyone") while the delivery process is killed -9:
every removal the server confirmed (200) reaches the recipient's inbox exactly once
after the restart, and a sender who retries what was not confirmed gets it done too
(docs/delivery.md, "Reports and tombstones": a removal is idempotent)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from tests.support.aio import eventually
from tests.support.chat import b64, inbox_items
from tests.support.stack import System
from tests.support.users import User, signup
from tests.support.wsclient import WsClient, send_frame

RETRYABLE = {502, 503, 504}


async def _send_all(system: System, alice: User, to: str, n: int) -> dict[str, dict[str, Any]]:
    """Send ``n`` messages; their `accepted` frames by client id, once all are stored."""
    client = await WsClient.connect(system.ws_url, alice.token)
    try:
        for i in range(n):
            await client.send(send_frame(f"rm-{i}", to, b64(f"rm-{i}")))
        accepted = {}
        for _ in range(n):
            frame = await client.expect("accepted", timeout=30)
            accepted[frame["id"]] = frame
        for i in range(n):
            await client.expect("stored", id=f"rm-{i}", timeout=30)
        return accepted
    finally:
        await client.close()


async def _waiting(http: aiohttp.ClientSession, system: System, bob: User) -> list[dict[str, Any]]:
    """Everything in bob's inbox (read over HTTP: nothing is acknowledged); nothing while
    delivery is coming back."""
    return await inbox_items(http, system.lb, bob.token) or []


async def test_kill_9_delivery_mid_removal_every_confirmed_removal_reaches_the_inbox_once(
    system: System,
) -> None:
    alice, bob = await signup(system.lb), await signup(system.lb)
    n, removing = 60, 40
    accepted = await _send_all(system, alice, bob.user_id, n)
    targets = [accepted[f"rm-{i}"] for i in range(removing)]
    confirmed: set[str] = set()
    refused: list[tuple[str, int]] = []
    first = asyncio.Event()

    async def remove(http: aiohttp.ClientSession, frame: dict[str, Any]) -> None:
        url = f"{system.lb}/delivery/v1/messages/{frame['server_id']}"
        params = {"client_id": frame["id"], "conversation": frame["conversation"]}
        headers = {"Authorization": f"Bearer {alice.token}"}
        while True:  # as a client does: what was not confirmed is asked again
            try:
                async with http.delete(url, params=params, headers=headers) as resp:
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError):
                status = 0
            if status == 200:
                confirmed.add(frame["server_id"])
                first.set()
                return
            if status and status not in RETRYABLE:
                refused.append((frame["id"], status))
                return
            await asyncio.sleep(0.1)

    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        # A first wave; once one of it is confirmed, delivery is killed and the rest
        # starts (on a fast machine all forty at once were confirmed before a kill).
        wave = 10
        removals = [asyncio.create_task(remove(http, frame)) for frame in targets[:wave]]
        await asyncio.wait_for(first.wait(), 60)
        confirmed_before_kill = set(confirmed)
        system.procs.kill("delivery")
        removals += [asyncio.create_task(remove(http, frame)) for frame in targets[wave:]]
        try:
            await asyncio.sleep(1.0)  # removals in flight fail and are retried meanwhile
        finally:
            system.restart("delivery")
        await asyncio.wait_for(asyncio.gather(*removals), 120)
        assert refused == []
        assert len(confirmed) == removing
        assert len(confirmed_before_kill) < removing  # the kill did land mid-removal

        removed = {frame["server_id"] for frame in targets}

        def settled(items: list[dict[str, Any]]) -> bool:
            return {i["server_id"] for i in items if i["op"] == "tombstone"} == removed

        items = await eventually(lambda: _waiting(http, system, bob), settled, timeout=90)

    tombstones = [i["server_id"] for i in items if i["op"] == "tombstone"]
    messages = [i for i in items if i["op"] == "message"]
    assert sorted(tombstones) == sorted(removed)  # each exactly once
    assert sorted(m["server_id"] for m in messages) == sorted(
        accepted[f"rm-{i}"]["server_id"] for i in range(removing, n)
    )  # the others wait, once each; no removed copy is left
