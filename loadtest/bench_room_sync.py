"""What a device's reconnect costs the servers when its user is in many private rooms.

After connecting (and on ``resync``) a device reads every private room it is
in from its cursor (docs/protocol.md, "Private rooms"). Most rooms have
nothing new. Two ways, on one stack, through HAProxy, as many devices at once
as ``--devices`` (a pod's users reconnecting after a deploy):

- *per room* (the baseline, what the SDK did before): one
  ``GET /delivery/v1/rooms/{room}/log`` per room, one after another per
  device; each asks the rooms service and reads MongoDB three times;
- *batched*: ``POST /delivery/v1/rooms/logs``, 100 rooms a call: one
  rooms-service call and two reads by id for the quiet rooms.

``--news`` rooms get one new message before each round, so each round reads
some rooms with something in them. Reported per device sync: wall time
(p50/p99), server CPU (every process of the stack) and HTTP calls.

    .venv/bin/python -m loadtest.bench_room_sync [--rooms 100] [--devices 20] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from loadtest.bench_fanout import PARLEY_PROCS, body_for
from loadtest.bench_messaging import Options as MessagingOptions
from loadtest.bench_messaging import ParleySystem
from loadtest.common import Account, CpuMeter, call, percentile

BATCH = 100
PER_OWNER = 25  # a user may create 30 rooms an hour (docs/rooms.md, "Limits")


@dataclass(frozen=True)
class Options:
    rooms: int = 100
    devices: int = 20
    rounds: int = 5
    news: int = 5


async def _send_news(ws: aiohttp.ClientWebSocketResponse, rooms: list[str], tag: str) -> None:
    """One ``room_send`` to each room, each ``accepted`` before the next; returns once
    every one is in its room's log (``accepted`` says it is in Kafka; the sender's own
    socket gets the ``room_message`` once delivery stored it)."""
    stored: set[str] = set()  # server ids of this round's messages seen pushed
    wanted: set[str] = set()
    for i, room in enumerate(rooms):
        cid = f"{tag}-{i}"
        frame = {"op": "room_send", "id": cid, "room": room, "body": body_for(i, 64)}
        await ws.send_str(orjson.dumps(frame).decode())
        while True:
            answer = orjson.loads((await ws.receive(timeout=30)).data)
            if answer.get("op") == "room_message":
                stored.add(answer["server_id"])
            elif answer.get("id") == cid:
                if answer["op"] != "accepted":
                    raise RuntimeError(f"room_send refused: {answer}")
                wanted.add(answer["server_id"])
                break
    while not stored >= wanted:
        answer = orjson.loads((await ws.receive(timeout=30)).data)
        if answer.get("op") == "room_message":
            stored.add(answer["server_id"])


async def _per_room(
    session: aiohttp.ClientSession, lb: str, token: str, cursors: dict[str, int]
) -> int:
    calls = 0
    for room in list(cursors):
        page = await call(
            session, "GET",
            f"{lb}/delivery/v1/rooms/{room}/log?after={cursors[room]}&since=0&limit=200", token,
        )  # fmt: skip
        calls += 1
        cursors[room] = int(page["next"])
    return calls


async def _batched(
    session: aiohttp.ClientSession, lb: str, token: str, cursors: dict[str, int]
) -> int:
    calls = 0
    rooms = list(cursors)
    for i in range(0, len(rooms), BATCH):
        chunk = rooms[i : i + BATCH]
        body = {"rooms": [{"room": r, "after": cursors[r]} for r in chunk], "limit": 200}
        answer = await call(session, "POST", f"{lb}/delivery/v1/rooms/logs", token, body)
        calls += 1
        for page in answer["pages"]:
            cursors[page["room"]] = int(page["next"])
    return calls


async def run(opts: Options, data_dir: Path, log: Any) -> dict[str, Any]:
    owners_n = -(-opts.rooms // PER_OWNER)
    system = ParleySystem(data_dir / "parley", replace(MessagingOptions(), clients=owners_n + 1))
    system.start()
    out: dict[str, Any] = {"rooms": opts.rooms, "devices": opts.devices, "news": opts.news}
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            await system.wait_ready(session)
            reader, *owners = await system.sign_up(session, owners_n + 1)
            owner = owners[0]  # the rooms with news are among its own
            rooms = await _make_rooms(session, system.lb, owners, reader, opts.rooms)
            log(f"{opts.rooms} private rooms, {opts.devices} devices of one member syncing at once")
            pids = {n: system.procs.procs[n].pid for n in PARLEY_PROCS}
            ws = await session.ws_connect(system.ws_url)
            await ws.send_str(orjson.dumps({"op": "auth", "token": owner.token}).decode())
            assert orjson.loads((await ws.receive(timeout=30)).data)["op"] == "ready"
            for name, how in (("per_room", _per_room), ("batched", _batched)):
                out[name] = await _phase(opts, session, system.lb, ws, reader, rooms, how, pids)
                log(f"{name}: {json.dumps(out[name])}")
            await ws.close()
    finally:
        system.stop()
    return out


async def _make_rooms(
    session: aiohttp.ClientSession, lb: str, owners: list[Account], reader: Account, n: int
) -> list[str]:
    gate = asyncio.Semaphore(16)

    async def one(i: int) -> str:
        owner = owners[i // PER_OWNER]
        async with gate:
            room = await call(session, "POST", f"{lb}/rooms/v1/rooms", owner.token,
                               {"name": f"sync {i}", "kind": "private"})  # fmt: skip
            rid = str(room["room_id"])
            await call(session, "POST", f"{lb}/rooms/v1/rooms/{rid}/invitations", owner.token,
                        {"user": reader.user_id})  # fmt: skip
            await call(session, "POST", f"{lb}/rooms/v1/rooms/{rid}/invitation/accept",
                        reader.token)  # fmt: skip
            return rid

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def _phase(
    opts: Options, session: aiohttp.ClientSession, lb: str,
    ws: aiohttp.ClientWebSocketResponse, reader: Account, rooms: list[str], how: Any,
    pids: dict[str, int],
) -> dict[str, Any]:  # fmt: skip
    # Every device starts at the end of every log (as one that synced before).
    cursors = [dict.fromkeys(rooms, 0) for _ in range(opts.devices)]
    await asyncio.gather(*(_batched(session, lb, reader.token, c) for c in cursors))
    expected = dict(cursors[0])
    walls: list[float] = []
    calls = 0
    meter = CpuMeter(pids)
    cpu: dict[str, float] = {}
    for r in range(opts.rounds):
        await _send_news(ws, rooms[: opts.news], f"{how.__name__}{r}")

        async def one(c: dict[str, int]) -> int:
            start = time.perf_counter()
            n = int(await how(session, lb, reader.token, c))
            walls.append((time.perf_counter() - start) * 1000)
            return n

        meter.start()
        calls += sum(await asyncio.gather(*(one(c) for c in cursors)))
        for name, sec in meter.stop().items():
            cpu[name] = cpu.get(name, 0.0) + sec
        # Every device read exactly the new message of each room with news.
        for room in rooms[: opts.news]:
            expected[room] += 1
        if any(c != expected for c in cursors):
            raise RuntimeError(f"{how.__name__}: a device's cursors are not the logs' ends")
    syncs = opts.devices * opts.rounds
    walls.sort()
    return {
        "wall_ms_p50": round(percentile(walls, 50) or 0, 1),
        "wall_ms_p99": round(percentile(walls, 99) or 0, 1),
        "calls_per_sync": round(calls / syncs, 1),
        "server_cpu_ms_per_sync": round(sum(cpu.values()) * 1000 / syncs, 2),
        "cpu_ms_per_sync": {n: round(s * 1000 / syncs, 2) for n, s in sorted(cpu.items()) if s},
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    d = Options()
    p.add_argument("--rooms", type=int, default=d.rooms)
    p.add_argument("--devices", type=int, default=d.devices, help="devices syncing at once")
    p.add_argument("--rounds", type=int, default=d.rounds)
    p.add_argument("--news", type=int, default=d.news, help="rooms with a new message a round")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    news = min(a.news, a.rooms, PER_OWNER)
    opts = Options(rooms=a.rooms, devices=a.devices, rounds=a.rounds, news=news)
    with tempfile.TemporaryDirectory(prefix="parley-room-sync-") as tmp:
        result = asyncio.run(run(opts, Path(tmp), lambda m: print(m, file=sys.stderr, flush=True)))
    if a.json:
        print(json.dumps(result, indent=2))
        return
    print(f"\n{opts.rooms} rooms, {opts.devices} devices at once, {opts.rounds} rounds, "
          f"{opts.news} rooms with news a round")  # fmt: skip
    keys = ("wall_ms_p50", "wall_ms_p99", "calls_per_sync", "server_cpu_ms_per_sync")
    print(f"{'':28}" + "".join(f"{k:>24}" for k in keys))
    for name in ("per_room", "batched"):
        print(f"{name:28}" + "".join(f"{result[name][k]:>24}" for k in keys))
    for name in ("per_room", "batched"):
        print(f"{name} CPU ms per sync by process: {result[name]['cpu_ms_per_sync']}")


if __name__ == "__main__":
    main()
