"""Room fan-out benchmark: a private room of N members against python-socketio room emits.

``python -m loadtest.bench_fanout [--members 1000 --seconds 10] [--json]``

It starts the whole Parley system on its embedded servers (as
loadtest/bench_messaging.py does), signs N users up, puts them all in one
private room (invitations accepted through HAProxy) and opens one WebSocket
per member through HAProxy (leastconn spreads them over both gateways). Fifty
members send `room_send` frames in turn (`PrivateSenders`: one socket's sends
are checked and produced one after another, as one user's are); every member
receives each one as a
`room_message` (one Kafka record per message, stored once by delivery in the
room's log and published once, with the member list, on the channel every
gateway pod reads); nothing is acknowledged (a device keeps its place in the
room's log itself: docs/rooms.md, "The room log"). The peer: two
python-socketio 5.x processes sharing the same Redis through
``AsyncRedisManager`` (loadtest/socketio_peer.py), N clients in one room,
the sender's ``send`` event emitted to the room; nothing stored.

``--systems parley-public`` runs the same phases on a public room: the owner
posts over HTTP (``POST /rooms/v1/rooms/{id}/messages``, as 50 members in
turn: one user may post 600 a minute), the rooms service stores the post in
the room's timeline and publishes one ``room_post`` frame with the member
list for every gateway pod; members acknowledge nothing (the timeline is the
record).

For each system:

1. saturation: the sender keeps ``window`` messages in flight (sent, not yet
   at every member); member-messages/s = messages received by members per
   second of the measured window;
2. paced: half the saturation rate, open loop; latency is send -> the last
   member received it, p50/p99;
3. in both: every message must reach every member exactly once (lost and
   duplicate member-messages are counted), and the CPU time of every server
   process over the window, per member-message.

``--systems socketio-lb`` runs the peer with HAProxy in front of its two
processes (HTTP mode, ``leastconn``), as a deployment of two needs and as
Parley's sockets always are; HAProxy's CPU counts as the peer's.

docs/BENCHMARKS.md ("Room fan-out") has the figures and the command.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis.asyncio as aioredis
from parley_contract import frames as f

from loadtest.bench_messaging import Options as MessagingOptions
from loadtest.bench_messaging import ParleySystem
from loadtest.common import Account, CpuMeter, call, percentile, tune_gc
from loadtest.socketio_peer import start_peers
from loadtest.ws import READERS, TextSocket, open_socket
from scripts.stack import Processes, StackConfig

PARLEY_PROCS = ("mongo", "kafka", "redis", "haproxy", "auth", "keys", "rooms", "gateway1",
                "gateway2", "delivery")  # fmt: skip


@dataclass(frozen=True)
class Options:
    members: int = 1000
    seconds: float = 10.0
    window: int = 8
    body_bytes: int = 160
    ack_interval: float = 0.25
    systems: tuple[str, ...] = ("parley", "socketio")
    drain_s: float = 60.0
    reader: str = "picows"  # the members' WebSocket client (loadtest/ws.py)


# Bookkeeping shared by both systems ----------------------------------------------------
@dataclass
class Phase:
    name: str
    expected: int  # receivers per message
    sent_at: dict[int, float] = field(default_factory=dict)
    remaining: dict[int, int] = field(default_factory=dict)
    last_at: dict[int, float] = field(default_factory=dict)
    received: int = 0
    in_window: int = 0
    duplicates: int = 0
    errors: int = 0
    window: tuple[float, float] = (0.0, 0.0)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def sent(self, n: int) -> None:
        self.sent_at[n] = time.perf_counter()
        self.remaining[n] = self.expected

    def refused(self, n: int, why: BaseException) -> None:
        """Never accepted (the send failed): not owed to anyone, counted apart."""
        self.errors += 1
        self.remaining.pop(n, None)
        self.sent_at.pop(n, None)
        print(f"send {n} not accepted: {why!r}", file=sys.stderr)
        self.done.set()

    def got(self, n: int, seen: set[int]) -> None:
        now = time.perf_counter()
        if n in seen:
            self.duplicates += 1
            return
        seen.add(n)
        left = self.remaining.get(n)
        if left is None:
            return  # a message of an earlier phase
        self.received += 1
        if self.window[0] <= now <= self.window[1]:
            self.in_window += 1
        self.remaining[n] = left - 1
        if left == 1:
            self.last_at[n] = now
            self.done.set()

    @property
    def incomplete(self) -> int:
        return sum(1 for left in self.remaining.values() if left > 0)


class Receiver:
    """One member: knows which message numbers it has seen in the current phase."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.phase: Phase | None = None

    def on(self, n: int) -> None:
        if self.phase is not None:
            self.phase.got(n, self.seen)


def body_for(n: int, size: int) -> str:
    raw = f"{n:012d}".encode() + b"x" * max(size * 3 // 4 - 12, 0)
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def number_of(body: str) -> int:
    return int(base64.urlsafe_b64decode(body[:16]))


# Parley ----------------------------------------------------------------------------------
class ParleyMember(Receiver):
    def __init__(self, account: Account) -> None:
        super().__init__()
        self.account = account
        self.sock: TextSocket | None = None
        self.gateway = ""
        self.max_seq = 0
        self.acked = 0
        self.accepted: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.ops: dict[str, int] = {}  # frames received, by op
        self.ready: asyncio.Future[dict[str, Any]] | None = None
        self.digest: str | None = None  # device_digest of the room's other member devices

    async def connect(self, session: aiohttp.ClientSession, url: str, reader: str) -> None:
        self.ready = asyncio.get_running_loop().create_future()
        self.sock = await open_socket(reader, session, url, self._on_text)
        await self.sock.send(orjson.dumps({"op": "auth", "token": self.account.token}).decode())
        ready = await asyncio.wait_for(self.ready, 30)
        assert ready["op"] == "ready", ready
        self.gateway = ready["gateway"]

    def _on_text(self, data: str) -> None:
        frame = orjson.loads(data)
        if self.ready is not None and not self.ready.done():
            self.ready.set_result(frame)
            return
        op = frame.get("op")
        self.ops[op] = self.ops.get(op, 0) + 1
        if op == "room_message":  # a private room's: its log is the record, no ack
            self.on(number_of(frame["body"]))
        elif op == "message":
            self.max_seq = max(self.max_seq, frame["seq"])
            self.on(number_of(frame["body"]))
        elif op == "room_post":  # a public room's: its timeline is the record, no ack
            self.on(number_of(frame["text"]))
        elif op in ("accepted", "error"):
            fut = self.accepted.pop(frame.get("id", ""), None)
            if fut is not None and not fut.done():
                fut.set_result(frame)

    async def ack(self) -> None:
        if self.sock is not None and self.max_seq > self.acked:
            self.acked = self.max_seq
            await self.sock.send(f'{{"op":"ack","seq":{self.acked}}}')

    async def send(self, room: str, n: int, size: int) -> None:
        assert self.sock is not None
        cid = f"f{n}"
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.accepted[cid] = fut
        frame = {"op": "room_send", "id": cid, "room": room, "body": body_for(n, size)}
        if self.digest is not None:
            frame["device_digest"] = self.digest
        await self.sock.send(orjson.dumps(frame).decode())
        answer = await asyncio.wait_for(fut, 60)
        if answer["op"] != "accepted":
            raise RuntimeError(f"room_send refused: {answer}")

    async def close(self) -> None:
        if self.sock is not None:
            await self.sock.close()


class PublicPoster:
    """Posts to a public room over HTTP through HAProxy (``POST .../messages``), in
    turn as several members: one user may post 600 a minute (docs/rooms.md)."""

    def __init__(self, session: aiohttp.ClientSession, lb: str, tokens: list[str]) -> None:
        self.session, self.lb, self.tokens = session, lb, tokens
        self.turn = 0

    async def send(self, room: str, n: int, size: int) -> None:
        self.turn += 1
        token = self.tokens[self.turn % len(self.tokens)]
        body = {"client_id": f"f{n}", "text": body_for(n, size)}
        await call(self.session, "POST", f"{self.lb}/rooms/v1/rooms/{room}/messages", token, body)

    async def ack(self) -> None:
        return None

    async def close(self) -> None:
        return None


class PrivateSenders:
    """Sends ``room_send`` over several members' sockets in turn (they receive the
    room's messages too, their own included: a private room's message is pushed to
    every socket of every member). One socket's sends are checked and produced one
    after another by its gateway (the room read from the rooms service, then the
    record to Kafka), so one sender is bounded by that round trip, as one user is;
    a busy room has many senders, as the public room's poster posts as 50."""

    def __init__(
        self, owner: ParleyMember, senders: list[ParleyMember], devices: list[tuple[str, int]]
    ) -> None:
        self.owner, self.senders = owner, senders
        self.turn = 0
        # Each sender names the member devices it "gave its key to", as a client does
        # (docs/protocol.md, "Private rooms"): the gateway checks it on every send.
        for s in senders:
            me = (s.account.user_id, s.account.device_id)
            s.digest = f.device_digest(d for d in devices if d != me)

    async def send(self, room: str, n: int, size: int) -> None:
        self.turn += 1
        await self.senders[self.turn % len(self.senders)].send(room, n, size)

    async def ack(self) -> None:
        return None

    async def close(self) -> None:
        await self.owner.close()


class SioMember(Receiver):
    """A socket.io client speaking Engine.IO 4 over a WebSocket (what the JS client sends)."""

    def __init__(self) -> None:
        super().__init__()
        self.sock: TextSocket | None = None
        self.acks: dict[int, asyncio.Future[None]] = {}
        self.next_ack = 0
        self.pong: asyncio.Task[None] | None = None
        self.opened: asyncio.Future[None] | None = None
        self.joined: asyncio.Future[None] | None = None

    async def connect(self, session: aiohttp.ClientSession, url: str, reader: str) -> None:
        loop = asyncio.get_running_loop()
        self.opened, self.joined = loop.create_future(), loop.create_future()
        # The Engine.IO open may come with the handshake, before ``sock`` is set.
        self.sock = await open_socket(reader, session, url, self._on_text)
        await asyncio.wait_for(self.opened, 30)
        await self.sock.send("40")  # connect to the namespace
        await asyncio.wait_for(self.joined, 30)

    def _on_text(self, data: str) -> None:
        if data.startswith("42"):
            event, payload = orjson.loads(data[2:])
            if event == "message":
                self.on(int(payload["n"]))
        elif data.startswith("43"):
            fut = self.acks.pop(int(data[2 : data.index("[")]), None)
            if fut is not None and not fut.done():
                fut.set_result(None)
        elif data == "2" and self.sock is not None:  # an Engine.IO ping (every 25 s)
            self.pong = asyncio.get_running_loop().create_task(self.sock.send("3"))
        elif data.startswith("40"):
            assert self.joined is not None
            self.joined.set_result(None)
        elif data.startswith("0"):  # the Engine.IO open
            assert self.opened is not None
            self.opened.set_result(None)

    async def send(self, _room: str, n: int, size: int) -> None:
        assert self.sock is not None
        self.next_ack += 1
        ack_id = self.next_ack
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.acks[ack_id] = fut
        payload = orjson.dumps(["send", {"n": n, "body": body_for(n, size)}]).decode()
        await self.sock.send(f"42{ack_id}{payload}")
        await asyncio.wait_for(fut, 60)

    async def ack(self) -> None:
        return None

    async def close(self) -> None:
        if self.sock is not None:
            await self.sock.close()


# The run -----------------------------------------------------------------------------------
Member = ParleyMember | SioMember


async def run_phases(
    opts: Options, members: list[Any], room: str, pids: dict[str, int], log: Any
) -> dict[str, Any]:
    sender, receivers = members[0], members[1:]
    pids = {**pids, "loadgen": os.getpid()}
    counter = iter(range(1, 10**9))
    stop_acks = asyncio.Event()

    async def ack_loop() -> None:
        while not stop_acks.is_set():
            await asyncio.gather(*(m.ack() for m in receivers))
            await asyncio.sleep(opts.ack_interval)

    acker = asyncio.create_task(ack_loop())

    def begin(name: str) -> Phase:
        phase = Phase(name, len(receivers))
        for m in receivers:
            m.seen = set()
            m.phase = phase
        return phase

    async def drain(phase: Phase) -> None:
        deadline = time.monotonic() + opts.drain_s
        while phase.incomplete and time.monotonic() < deadline:
            phase.done.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(phase.done.wait(), 1.0)

    def result(phase: Phase, meter: CpuMeter, seconds: float) -> dict[str, Any]:
        lat = sorted(phase.last_at[n] - phase.sent_at[n] for n in phase.last_at)
        lost = sum(max(left, 0) for left in phase.remaining.values())
        per_msg = phase.in_window or 1
        server = sum(used for name, used in meter.used.items() if name != "loadgen")
        return {
            "messages": len(phase.sent_at),
            "member_messages_per_s": round(phase.in_window / seconds, 1),
            "room_messages_per_s": round(phase.in_window / seconds / len(receivers), 2),
            "p50_ms": _ms(percentile(lat, 50)),
            "p99_ms": _ms(percentile(lat, 99)),
            "lost": lost,
            "duplicates": phase.duplicates,
            "not_accepted": phase.errors,
            "cpu_us_per_member_message": {
                name: round(used * 1e6 / per_msg, 1)
                for name, used in meter.used.items()
                if name != "loadgen"
            },
            "cpu_us_total": round(server * 1e6 / per_msg, 1),
            # The members' side (this process: 1,000 sockets read, every frame parsed):
            # it shares the machine's cores with the servers, so it bounds the figure too.
            "loadgen_cpu_us_per_member_message": round(
                meter.used.get("loadgen", 0.0) * 1e6 / per_msg, 1
            ),
        }

    # Warm-up: a few messages all the way.
    warm = begin("warmup")
    for _ in range(5):
        n = next(counter)
        warm.sent(n)
        await sender.send(room, n, opts.body_bytes)
    log("  warm-up: sent")
    await drain(warm)
    log(f"  warm-up: {warm.received} member-messages, {warm.incomplete} incomplete")

    async def send(phase: Phase, n: int) -> None:
        try:
            await sender.send(room, n, opts.body_bytes)
        except Exception as exc:
            phase.refused(n, exc)

    # Saturation: `window` messages in flight (sent, not yet at every member). The
    # sends overlap, as a busy room's do: the sender does not wait for one to be
    # accepted before the next (waiting would measure one send's round trip, not
    # the fan-out).
    sat = begin("saturation")
    meter = CpuMeter(pids)
    t0 = time.perf_counter() + 1.0
    sat.window = (t0, t0 + opts.seconds)
    started = False
    sends: list[asyncio.Task[None]] = []
    while time.perf_counter() < sat.window[1]:
        if not started and time.perf_counter() >= t0:
            meter.start()
            started = True
        if sat.incomplete >= opts.window:
            sat.done.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sat.done.wait(), 0.5)
            continue
        n = next(counter)
        sat.sent(n)
        sends.append(asyncio.create_task(send(sat, n)))
    meter.stop()
    await asyncio.gather(*sends)
    await drain(sat)
    out = {"saturation": result(sat, meter, opts.seconds)}
    log(f"  saturation: {out['saturation']}")
    sends = []

    # Paced at half the saturation rate (room messages per second).
    rate = max(out["saturation"]["room_messages_per_s"] / 2, 0.5)
    paced = begin("paced")
    meter = CpuMeter(pids)
    t0 = time.perf_counter()
    paced.window = (t0, t0 + opts.seconds + opts.drain_s)
    meter.start()
    i = 0
    while (now := time.perf_counter()) < t0 + opts.seconds:
        due = t0 + i / rate
        if now < due:
            await asyncio.sleep(due - now)
        n = next(counter)
        paced.sent(n)
        sends.append(asyncio.create_task(send(paced, n)))
        i += 1
    await asyncio.gather(*sends)
    await drain(paced)
    meter.stop()
    out["paced"] = result(paced, meter, opts.seconds)
    out["paced"]["rate_room_messages_per_s"] = round(rate, 2)
    log(f"  paced: {out['paced']}")
    stop_acks.set()
    await acker
    return out


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 1)


async def bench_parley(
    opts: Options, data_dir: Path, log: Any, kind: str = "private"
) -> dict[str, Any]:
    """A private room (``room_send`` over the sender's socket, stored once in the
    room's log and pushed to every member) or a public one
    (``POST .../messages`` to the rooms service, one ``room_post`` frame to every
    member's sockets, nothing per member stored)."""
    mopts = replace(MessagingOptions(), clients=opts.members)
    system = ParleySystem(data_dir / "parley", mopts)
    # All sockets come from one address (the one change to the defaults besides
    # bench_messaging's send rate and sign-up limits).
    system.cfg = system.cfg.with_env(PARLEY_WS_MAX_SOCKETS_PER_ADDRESS=str(4 * opts.members))
    system.procs = Processes(system.cfg)
    system.start()
    try:
        # No connection limit: every member's WebSocket holds one.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            await system.wait_ready(session)
            log(f"parley: signing up {opts.members} users")
            accounts = await system.sign_up(session, opts.members)
            owner = accounts[0]
            room = await call(session, "POST", f"{system.lb}/rooms/v1/rooms", owner.token,
                               {"name": "fan-out", "kind": kind})  # fmt: skip
            rid = room["room_id"]
            gate = asyncio.Semaphore(16)

            async def join(acc: Account) -> None:
                async with gate:
                    if kind == "public":
                        url = f"{system.lb}/rooms/v1/rooms/{rid}/join"
                        await call(session, "POST", url, acc.token)
                        return
                    await call(session, "POST", f"{system.lb}/rooms/v1/rooms/{rid}/invitations",
                                owner.token, {"user": acc.user_id})  # fmt: skip
                    await call(
                        session,
                        "POST",
                        f"{system.lb}/rooms/v1/rooms/{rid}/invitation/accept",
                        acc.token,
                    )

            t = time.perf_counter()
            await asyncio.gather(*(join(a) for a in accounts[1:]))
            log(f"parley: {opts.members - 1} joined in {time.perf_counter() - t:.1f} s")
            members: list[Any] = [ParleyMember(a) for a in accounts]
            if kind == "public":  # the owner posts as 50 members in turn; no socket
                members[0] = PublicPoster(session, system.lb, [a.token for a in accounts[:50]])
                await _connect_all(members[1:], session, [system.ws_url], opts.reader)
            else:
                await _connect_all(members, session, [system.ws_url], opts.reader)
            spread: dict[str, int] = {}
            for m in members:
                if isinstance(m, ParleyMember):
                    spread[m.gateway] = spread.get(m.gateway, 0) + 1
            log(f"parley ({kind}): sockets per gateway {spread}")
            if kind != "public":  # 50 members send in turn (the owner's socket: a member's)
                devices = [
                    (a.user_id, d)
                    for a in accounts
                    for d in (a.device_id, *(o[0] for o in a.others))
                ]
                members[0] = PrivateSenders(members[0], members[1:51], devices)
            pids = {n: system.procs.procs[n].pid for n in PARLEY_PROCS}
            redis = aioredis.Redis(port=system.cfg.redis_port)
            before = await redis.info("commandstats")
            try:
                out = await run_phases(opts, members, rid, pids, log)
            finally:
                await asyncio.gather(*(m.close() for m in members))
            out["redis_commands"] = _commands_since(before, await redis.info("commandstats"))
            await redis.aclose()
            out["gateways"] = spread
            return out
    finally:
        system.stop()


def _commands_since(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Redis's own time by command over the phases (``INFO commandstats``): calls and
    µs, the costliest first (what the server spends its ``redis`` CPU on)."""
    rows = []
    for name, stat in after.items():
        was = before.get(name, {})
        calls = int(stat["calls"]) - int(was.get("calls", 0))
        usec = int(stat["usec"]) - int(was.get("usec", 0))
        if calls:
            rows.append((usec, calls, name.removeprefix("cmdstat_")))
    rows.sort(reverse=True)
    return {name: {"calls": calls, "usec": usec} for usec, calls, name in rows[:12]}


async def bench_socketio(
    opts: Options, data_dir: Path, log: Any, behind_lb: bool = False
) -> dict[str, Any]:
    """python-socketio's two processes, their clients connected to them directly, or
    through HAProxy (``behind_lb``: as a deployment of two needs, and as Parley's
    sockets are; its CPU is then counted with theirs)."""
    cfg = StackConfig.free_ports(data_dir / "sio")
    procs = Processes(cfg)
    procs.start("redis")
    ports = StackConfig.free_ports(data_dir / "sio-ports")
    peers = start_peers(data_dir / "sio", cfg.url("redis"),
                        [ports.gateway1_port, ports.gateway2_port], "fanout")  # fmt: skip
    if behind_lb:
        peers.front_with_haproxy(data_dir / "sio")
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            members = [SioMember() for _ in range(opts.members)]
            await _connect_all(members, session, peers.urls, opts.reader)
            log(f"socketio: {len(members)} connected")
            pids = {**peers.pids(), "redis": procs.procs["redis"].pid}
            try:
                return await run_phases(opts, members, "r", pids, log)
            finally:
                await asyncio.gather(*(m.close() for m in members))
    finally:
        peers.stop()
        procs.stop_all()


async def _connect_all(
    members: list[Any], session: aiohttp.ClientSession, urls: list[str], reader: str
) -> None:
    gate = asyncio.Semaphore(50)

    async def one(i: int, m: Any) -> None:
        async with gate:
            await m.connect(session, urls[i % len(urls)], reader)

    await asyncio.gather(*(one(i, m) for i, m in enumerate(members)))


async def bench(opts: Options, data_dir: Path, log: Any) -> dict[str, Any]:
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "members": opts.members,
        "seconds": opts.seconds,
        "window": opts.window,
        "reader": opts.reader,
    }
    if "socketio" in opts.systems:
        log("socketio: two processes, AsyncRedisManager")
        results["socketio"] = await bench_socketio(opts, data_dir, log)
    if "socketio-lb" in opts.systems:
        log("socketio-lb: two processes, AsyncRedisManager, behind HAProxy")
        results["socketio-lb"] = await bench_socketio(opts, data_dir / "lb", log, behind_lb=True)
    if "parley" in opts.systems:
        results["parley"] = await bench_parley(opts, data_dir, log)
    if "parley-public" in opts.systems:
        results["parley-public"] = await bench_parley(opts, data_dir / "public", log, "public")
    return results


def table(results: dict[str, Any]) -> str:
    lines = [
        f"Run {results['when']}: a room of {results['members']} members, "
        f"{results['seconds']} s per phase, window {results['window']}, "
        f"members read with {results.get('reader', 'aiohttp')}.",
        "",
        "| system | phase | member-msgs/s | room msgs/s | p50 ms | p99 ms | lost | dup "
        "| server CPU µs per member-msg | load generator µs |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for system in ("parley", "parley-public", "socketio", "socketio-lb"):
        if system not in results:
            continue
        for phase in ("saturation", "paced"):
            r = results[system][phase]
            cpu = ", ".join(f"{k} {v}" for k, v in r["cpu_us_per_member_message"].items() if v)
            refused = f" ({r['not_accepted']} not accepted)" if r.get("not_accepted") else ""
            lines.append(
                f"| {system} | {phase} | {r['member_messages_per_s']} | "
                f"{r['room_messages_per_s']} | {r['p50_ms']} | {r['p99_ms']} | {r['lost']}"
                f"{refused} | "
                f"{r['duplicates']} | {r['cpu_us_total']} ({cpu}) | "
                f"{r.get('loadgen_cpu_us_per_member_message', '')} |"
            )
    for system in ("parley", "parley-public"):
        if "redis_commands" not in results.get(system, {}):
            continue
        got = 5 + sum(results[system][p]["messages"] for p in ("saturation", "paced"))  # +warm-up
        member_msgs = max(got * (results["members"] - 1), 1)
        lines += ["", f"{system}'s Redis, every phase (`INFO commandstats`), per member-message:",
                  "", "| command | calls | µs |", "|---|---|---|"]  # fmt: skip
        for name, st in results[system]["redis_commands"].items():
            lines.append(f"| {name} | {st['calls'] / member_msgs:.3f} | "
                         f"{st['usec'] / member_msgs:.2f} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    tune_gc()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=Options.members)
    parser.add_argument("--seconds", type=float, default=Options.seconds)
    parser.add_argument("--window", type=int, default=Options.window)
    parser.add_argument("--systems", default=",".join(Options.systems))
    parser.add_argument("--reader", choices=READERS, default=Options.reader,
                        help="the members' WebSocket client (loadtest/ws.py)")  # fmt: skip
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    opts = Options(members=args.members, seconds=args.seconds, window=args.window,
                   systems=tuple(args.systems.split(",")), reader=args.reader)  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="parley-fanout-"))

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        from loadtest.bench_messaging import _loop_factory

        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            results = runner.run(bench(opts, tmp, log))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())
    else:
        print(table(results))


if __name__ == "__main__":
    main()
