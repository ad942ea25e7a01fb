"""kill -9 the key directory, or Redis (its id counters lost), in the middle of private
rooms' bulk claims through HAProxy: no one-time prekey is ever handed out twice, and
the claims after the restart still hand out one-time prekeys (docs/keys.md, "Claims:
ids counted out")."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import aiohttp
import pytest

from loadtest.bench_messaging import Account, sign_up
from services.keys.config import MAX_CLAIM_USERS
from tests.support.aio import eventually
from tests.support.stack import System, http_status

# Sign-ups of 200 members with prekeys, the claims and the restart took over pytest's
# default 120 s on a loaded CI machine.
pytestmark = pytest.mark.timeout(300)

MEMBERS = 200
ONE_TIME = 10  # of each kind, per member device
CLAIMERS = 3  # claiming at once when the victim dies


async def claim_all(
    http: aiohttp.ClientSession, lb: str, claimer: Account, members: list[str]
) -> list[dict[str, Any] | None]:
    """A room's first-message claims: a bundle of every member, in requests of 100 sent
    at once; a request that failed (its server was killed) is None."""

    async def one(users: list[str]) -> dict[str, Any] | None:
        headers = {"Authorization": f"Bearer {claimer.token}"}
        body = {"users": {u: {} for u in users}}
        try:
            async with http.post(f"{lb}/keys/v1/users/bundles", json=body, headers=headers) as r:
                return await r.json() if r.status == 200 else None
        except aiohttp.ClientError:
            return None

    parts = [members[i : i + MAX_CLAIM_USERS] for i in range(0, len(members), MAX_CLAIM_USERS)]
    return list(await asyncio.gather(*map(one, parts)))


def handed_out(answers: list[dict[str, Any] | None]) -> list[tuple[str, str, int]]:
    """(member, kind, id) of every one-time prekey in these answers."""
    out = []
    for answer in answers:
        for claimed in (answer or {}).get("claimed", []):
            for b in claimed["bundles"]:
                if b["one_time_prekey"] is not None:
                    out.append((b["user_id"], "one_time", b["one_time_prekey"]["id"]))
                if not b["kem_prekey"]["last_resort"]:
                    out.append((b["user_id"], "kem", b["kem_prekey"]["id"]))
    return out


def counting_sends(expected: int, all_sent: asyncio.Event) -> aiohttp.ClientSession:
    """A session that sets ``all_sent`` once ``expected`` requests have sent their body."""
    sent: set[int] = set()

    async def on_sent(_: Any, context: Any, __: Any) -> None:
        sent.add(id(context))
        if len(sent) >= expected:
            all_sent.set()

    trace = aiohttp.TraceConfig()
    trace.on_request_chunk_sent.append(on_sent)
    return aiohttp.ClientSession(trace_configs=[trace])


def kill(system: System, victim: str) -> None:
    if victim == "keys":
        system.procs.kill("keys")
        system.restart("keys")
    else:
        procs = system.stack.procs
        assert procs is not None
        procs.kill(victim)
        procs.start(victim)


@pytest.mark.parametrize("victim", ["keys", pytest.param("redis", marks=pytest.mark.kills_servers)])
async def test_kill_9_mid_bulk_claims_hands_no_prekey_out_twice(
    system: System, victim: str
) -> None:
    tag = secrets.token_hex(3)
    async with aiohttp.ClientSession() as http:
        members = [
            a.user_id
            for a in await sign_up(
                http, system.lb, f"k{tag}", MEMBERS, prekeys=True, one_time=ONE_TIME
            )
        ]
        claimers = await sign_up(http, system.lb, f"c{tag}", CLAIMERS + 2)
        first = await claim_all(http, system.lb, claimers[0], members)
        assert None not in first
        answers = list(first)
        # Three claimers at once (six requests); the victim is killed as soon as the
        # last of them is sent, the key directory working on them.
        all_sent = asyncio.Event()
        parts = -(-MEMBERS // MAX_CLAIM_USERS)
        async with counting_sends(CLAIMERS * parts, all_sent) as sending:
            claims = [
                asyncio.create_task(claim_all(sending, system.lb, c, members))
                for c in claimers[1 : CLAIMERS + 1]
            ]
            await all_sent.wait()
            await asyncio.to_thread(kill, system, victim)
            results = await asyncio.gather(*claims)
        # The key directory answers again (HAProxy says 503 until then).
        ready = system.cfg.url("ops") + "/keys/readyz"
        await eventually(
            lambda: asyncio.to_thread(http_status, ready), lambda s: s == 200, timeout=120
        )
        interrupted = sum(r is None for result in results for r in result)
        # Killing the key directory must cut claims short, else it proved nothing; a
        # Redis restart may not (its loss is the counters, for the claims after it).
        assert interrupted or victim == "redis"
        for claimer, result in zip(claimers[1:], results, strict=False):
            answers += [r for r in result if r is not None]
            if None in result:  # its client asks again once the service is back
                answers += await claim_all(http, system.lb, claimer, members)
        last = await claim_all(http, system.lb, claimers[-1], members)
    taken = handed_out(answers + last)
    assert len(taken) == len(set(taken))  # never twice
    # Every member still gave the last claimer one-time prekeys of both kinds (at most
    # 1 + 3 + 3 interrupted of each of its 10 were taken or left below the counter).
    assert None not in last
    for kind in ("one_time", "kem"):
        assert sorted(u for u, k, _ in handed_out(last) if k == kind) == sorted(members)
    print(f"{victim}: {interrupted} requests interrupted, {len(taken)} prekeys handed out")
