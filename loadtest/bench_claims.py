"""A private room's key claims: one claimer takes a bundle of every member at once.

``python -m loadtest.bench_claims [--members 1000 --rounds 3]``

A device's first message to a private room of N members claims a bundle of every
other member's devices in bulk requests (``POST /keys/v1/users/bundles``, 100 users
each, all sent at once: client/parley/messenger.py, web/chat/src/app/direct.ts).
This starts the key directory on its own embedded MongoDB, Kafka and Redis
(:class:`loadtest.bench_keys.KeysProcess`), registers ``--members`` users with one
device each (``--rounds`` + 12 one-time prekeys of each kind, so that every claim
stays above the low-stock mark of 10, as a device's stock of 100 does), then, once
per round, a new claimer claims all of them: the time from the first request sent
to the last answered, and each server process's CPU per user claimed. Every
one-time prekey handed out is checked to be unique, and every claim to carry one.

Baseline in the same run: the bare ``find_one_and_delete`` pair a claim of one
device is built on (both kinds), as many as the rounds took, from this process at
the key directory's concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from pymongo import AsyncMongoClient

from loadtest.bench_keys import KeysProcess, Options, set_up_targets
from loadtest.common import CpuMeter, wait_ready
from services.common.config import load_settings
from services.keys.config import MAX_CLAIM_USERS
from services.keys.store import generation_key
from tests.support.tokens import TokenIssuer


async def bench(members: int, rounds: int, data_dir: Path) -> dict[str, Any]:
    prefix = f"cbench{secrets.token_hex(3)}"
    settings = load_settings(db_prefix=f"{prefix}_", redis_prefix=prefix)
    issuer = TokenIssuer(settings)
    system = KeysProcess(data_dir, await issuer.start(), prefix)
    await asyncio.to_thread(system.start)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        system.cfg.url("mongo"), retryWrites=False
    )
    out: dict[str, Any] = {"members": members, "rounds": []}
    try:
        await wait_ready(session, [system.url + "/keys/readyz"], 60)
        t = time.perf_counter()
        opts = Options(targets=members, prekeys=rounds + 12)
        targets = await set_up_targets(session, system.url, issuer, opts)
        print(f"{members} members set up in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        meter = CpuMeter({**system.pids(), "loadgen": os.getpid()})
        handed_out: set[tuple[str, int]] = set()
        for r in range(rounds):
            token = issuer.token(f"claimer{r}")
            chunks = [targets[i : i + MAX_CLAIM_USERS] for i in range(0, members, MAX_CLAIM_USERS)]

            async def claim(chunk: list[str], token: str = token) -> list[dict[str, Any]]:
                body = {"users": {u: {} for u in chunk}}
                headers = {"Authorization": f"Bearer {token}"}
                url = system.url + "/keys/v1/users/bundles"
                async with session.post(url, json=body, headers=headers) as resp:
                    if resp.status != 200:
                        raise RuntimeError(f"claim: {resp.status} {await resp.text()}")
                    answer = orjson.loads(await resp.read())
                if answer["failed"]:
                    raise RuntimeError(f"claim failures: {answer['failed'][:3]}")
                return [b for user in answer["claimed"] for b in user["bundles"]]

            meter.start()
            t = time.perf_counter()
            bundles = [b for part in await asyncio.gather(*map(claim, chunks)) for b in part]
            seconds = time.perf_counter() - t
            cpu = meter.stop()
            for b in bundles:
                otp = b["one_time_prekey"]
                if otp is None or b["kem_prekey"]["last_resort"]:
                    raise RuntimeError("a claim without one-time prekeys")
                key = (b["user_id"], otp["id"])
                if key in handed_out:
                    raise RuntimeError(f"one-time prekey handed out twice: {key}")
                handed_out.add(key)
            row = {
                "seconds": round(seconds, 3),
                "users": len(bundles),
                "cpu_ms_per_user": {k: round(v * 1000 / members, 3) for k, v in cpu.items()},
            }
            out["rounds"].append(row)
            print(f"round {r}: {row}", file=sys.stderr)

        # The floor: the two find_one_and_delete of each claimed device, nothing else,
        # 16 at a time (the key directory's CLAIMS_AT_ONCE), on the same documents.
        db = mongo[f"{prefix}_keys"]
        gate = asyncio.Semaphore(16)

        async def take(target: str) -> None:
            key = generation_key(target, 1, 1)
            async with gate:
                for coll in (db["kem_prekeys"], db["one_time_prekeys"]):
                    doc = await coll.find_one_and_delete(
                        {"_id": {"$gte": key, "$lt": key + ":"}},
                        projection={"_id": 0, "id": 1, "key": 1, "sig": 1},
                        sort=[("_id", 1)],
                    )
                    if doc is None:
                        raise RuntimeError("the floor ran out of prekeys")

        meter.start()
        t = time.perf_counter()
        await asyncio.gather(*map(take, targets))
        seconds = time.perf_counter() - t
        cpu = meter.stop()
        out["floor"] = {
            "seconds": round(seconds, 3),
            "cpu_ms_per_user": {k: round(v * 1000 / members, 3) for k, v in cpu.items()},
        }
        print(f"floor: {out['floor']}", file=sys.stderr)
    finally:
        await session.close()
        await mongo.close()
        await issuer.close()
        await asyncio.to_thread(system.procs.stop_all)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="A private room's bulk key claims")
    p.add_argument("--members", type=int, default=1000, help="users claimed each round")
    p.add_argument("--rounds", type=int, default=3, help="claimers, one after another")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="parley-bench-claims-") as tmp:
        result = asyncio.run(bench(args.members, args.rounds, Path(tmp)))
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
