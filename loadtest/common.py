"""The load generator shared by the messaging benchmarks, and how they measure.

One process drives every WebSocket (uvloop, aiohttp, orjson): clients come in
pairs and each sends to its partner, so every client is both a sender and a
recipient. The body of each message is what a real client would send
(base64url, ``body_bytes`` of "ciphertext"); its first 18 bytes carry the
phase, the sender's index, the message number and the send time, so that the
recipient can time it and count it without any side channel.

Two ways to send:

- saturation: each sender keeps up to ``window`` messages in flight (sent, not
  yet pushed to its recipient) and sends whenever it has room, within the rate
  limit the server announced in ``ready``;
- paced: one scheduler sends ``rate`` messages per second in total, spread
  round-robin over the senders, whatever the answers (an open loop).

Exactly-once is checked by message id: every id the server ``accepted`` must
reach the recipient once; recipients acknowledge cumulatively (``ack`` with
the highest sequence number below which they have everything).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import math
import os
import struct
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiohttp
import orjson

from scripts.stack import Processes, StackConfig
from services.common.app import GC_THRESHOLDS

# phase, spare byte, sender index, message number, send time (monotonic ns): 18 bytes,
# so that its base64url (24 characters) needs no padding.
HEADER = struct.Struct("<BBIIq")
HEADER_CHARS = 24
CLK_TCK = os.sysconf("SC_CLK_TCK")


def tune_gc() -> None:
    """The collector as every Parley service runs it (services/common/app.py: the
    start-up heap frozen, a young collection every 10,000 containers): the load
    generator, the relay and the python-socketio peer get it too, so that no
    system's latency carries collector pauses the others are spared."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


async def wait_ready(session: aiohttp.ClientSession, urls: Iterable[str], timeout: float) -> None:
    """Poll each URL until it answers 200; fail at the deadline."""
    deadline = time.monotonic() + timeout
    for url in urls:
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url) as resp:
                    if resp.status == 200:
                        break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} not ready after {timeout}s")
            await asyncio.sleep(0.1)


@contextlib.contextmanager
def embedded_redis() -> Iterator[int]:
    """A fresh embedded redis-server of its own (for the benchmarks of one piece);
    yields its port and stops it after."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = StackConfig.free_ports(Path(tmp))
        procs = Processes(cfg)
        procs.start("redis")
        try:
            yield cfg.redis_port
        finally:
            procs.stop_all()


# CPU accounting ---------------------------------------------------------------
T = TypeVar("T")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far, from /proc."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    # Fields after the command name start at field 3 (state): utime is 14, stime 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def wakeups(pid: int) -> int:
    """Times a process (all its threads) went to sleep and was woken: its voluntary
    context switches, from /proc. At a low rate each costs ~100 µs of CPU on this
    VM (loadtest/bench_hop.py), so it is what a message's hops cost."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/status", "rb") as f:
            for line in f:
                if line.startswith(b"voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
    return total


def machine_seconds() -> tuple[float, float]:
    """CPU time the whole machine spent busy (all cores, every process and the kernel),
    and the part of it spent in interrupts (mostly loopback networking here)."""
    with open("/proc/stat", "rb") as f:
        ticks = [int(x) for x in f.readline().split()[1:9]]
    idle, iowait, irq, softirq = ticks[3], ticks[4], ticks[5], ticks[6]
    return (sum(ticks) - idle - iowait) / CLK_TCK, (irq + softirq) / CLK_TCK


class CpuMeter:
    """CPU seconds each named process (and the machine) used between ``start()`` and ``stop()``."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self._start: dict[str, float] = {}
        self._machine = (0.0, 0.0)
        self.used: dict[str, float] = {}
        self.machine = 0.0
        self.interrupts = 0.0
        self._woke: dict[str, int] = {}
        self.wakeups: dict[str, int] = {}

    def _sample(self, read: Callable[[int], T]) -> dict[str, T]:
        """``read`` of every process still running."""
        out = {}
        for name, pid in self.pids.items():
            with contextlib.suppress(OSError):
                out[name] = read(pid)
        return out

    def start(self) -> None:
        self._start = self._sample(cpu_seconds)
        self._woke = self._sample(wakeups)
        self._machine = machine_seconds()
        self.used = {}

    def stop(self) -> dict[str, float]:
        end = self._sample(cpu_seconds)
        woke = self._sample(wakeups)
        busy, irq = machine_seconds()
        self.machine, self.interrupts = busy - self._machine[0], irq - self._machine[1]
        self.used = {n: end[n] - self._start[n] for n in end if n in self._start}
        self.wakeups = {n: woke[n] - self._woke[n] for n in woke if n in self._woke}
        return self.used


# Results ----------------------------------------------------------------------
@dataclass
class PhaseResult:
    name: str
    seconds: float = 0.0
    target_rate: float | None = None
    sent: int = 0
    accepted: int = 0
    received: int = 0
    window_received: int = 0
    lost: int = 0
    duplicates: int = 0
    recovered_by_sync: int = 0
    unaccepted_received: int = 0
    stored: int = 0
    # Stored receipts to wait for: one per device copy of each accepted message.
    stored_expected: int = 0
    delivered_receipts: int = 0
    # Copies for the users' other devices (protocol v2 fan-out; 0 with one device).
    copies_received: int = 0
    copies_lost: int = 0
    copies_duplicates: int = 0
    skipped: int = 0
    acks: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    cpu_s: dict[str, float] = field(default_factory=dict)
    wakeups: dict[str, int] = field(default_factory=dict)
    machine_cpu_s: float = 0.0
    interrupt_cpu_s: float = 0.0
    probes: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.window_received / self.seconds if self.seconds else 0.0

    def _cores(self, seconds: float) -> float | None:
        return round(seconds / self.seconds, 2) if self.seconds else None

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        per_msg = {
            name: round(sec * 1e6 / self.window_received, 1) if self.window_received else None
            for name, sec in self.cpu_s.items()
        }
        servers = [n for n in self.cpu_s if n != "loadgen"]
        return {
            "seconds": round(self.seconds, 2),
            "target_rate": self.target_rate,
            "delivered_per_s": round(self.rate, 1),
            "sent": self.sent,
            "accepted": self.accepted,
            "received": self.received,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "recovered_by_sync": self.recovered_by_sync,
            "unaccepted_received": self.unaccepted_received,
            "stored": self.stored,
            "delivered_receipts": self.delivered_receipts,
            "copies_received": self.copies_received,
            "copies_lost": self.copies_lost,
            "copies_duplicates": self.copies_duplicates,
            "skipped": self.skipped,
            "acks": self.acks,
            "errors": dict(self.errors),
            "latency_ms": {
                "samples": len(lat),
                "p50": _r(percentile(lat, 50)),
                "p90": _r(percentile(lat, 90)),
                "p99": _r(percentile(lat, 99)),
                "max": _r(lat[-1] if lat else None),
            },
            "cpu_s": {n: round(s, 3) for n, s in self.cpu_s.items()},
            "cpu_cores": {
                n: round(s / self.seconds, 3) if self.seconds else None
                for n, s in self.cpu_s.items()
            },
            "cpu_us_per_msg": per_msg,
            "wakeups_per_msg": {
                n: round(w / self.window_received, 2) if self.window_received else None
                for n, w in self.wakeups.items()
            },
            "server_cpu_us_per_msg": (
                round(sum(self.cpu_s[n] for n in servers) * 1e6 / self.window_received, 1)
                if self.window_received
                else None
            ),
            # Busy cores on the whole machine; what went to interrupts (loopback
            # networking); and what neither they nor the measured processes used
            # (other processes on the machine).
            "machine_cores_busy": self._cores(self.machine_cpu_s),
            "interrupt_cores": self._cores(self.interrupt_cpu_s),
            "unattributed_cores": self._cores(
                self.machine_cpu_s - self.interrupt_cpu_s - sum(self.cpu_s.values())
            ),
            **self.probes,
        }


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


# Clients ----------------------------------------------------------------------
class TokenBucket:
    """The client's copy of the server's per-connection send limit."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = time.monotonic()

    def delay(self) -> float:
        """Take a token and return 0, or return how long to wait for one."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


async def call(
    session: aiohttp.ClientSession, method: str, url: str, token: str | None = None,
    body: Any = None,
) -> Any:  # fmt: skip
    """One JSON request of a benchmark's set-up (sign-ups, keys, rooms): its JSON
    answer (None when it has none); any other status than 200, 201 or 204 raises."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.request(method, url, json=body, headers=headers) as resp:
        is_json = resp.content_type == "application/json"
        data = await resp.json(loads=orjson.loads) if is_json else None
        if resp.status not in (200, 201, 204):
            raise RuntimeError(f"{method} {url} failed ({resp.status}): {data}")
        return data


@dataclass
class Account:
    """A user's first device (``device_id``, ``token``) and its ``others``
    (device id, token): the other devices receive every copy and only listen."""

    user_id: str
    token: str
    device_id: int = 1
    others: tuple[tuple[int, str], ...] = ()


class Client:
    """One user's WebSocket: sends to ``peer``, receives from its own peer."""

    def __init__(
        self, gen: LoadGenerator, idx: int, account: Account, url: str, *,
        token: str | None = None, owner: Client | None = None,
    ) -> None:  # fmt: skip
        self.gen = gen
        self.idx = idx
        self.account = account
        self.url = url
        self.token = token or account.token
        # A listening device of ``owner``'s account (None: the account's first device).
        self.owner = owner
        self.copies: str | None = None  # the `copies` of this device's send frames
        self.peer: Client | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.bucket: TokenBucket | None = None
        self.reader: asyncio.Task[None] | None = None
        self.n = 0  # message number, increasing across phases
        self.outstanding = 0  # sent, neither pushed to the recipient nor refused
        self.room = asyncio.Event()
        self.accepted: set[int] = set()  # message numbers accepted in this phase
        self.got: set[int] = set()  # (sender << 32 | number) received in this phase
        self.seq_mark = 0  # every seq up to here has arrived
        self.seq_above: set[int] = set()
        self.seq_max = 0
        self.acked = 0
        self.syncing: asyncio.Future[dict[str, Any]] | None = None
        self.recovering = False
        self.closed = False
        self.gateway: str | None = None

    async def connect(self, session: aiohttp.ClientSession) -> None:
        ws = await session.ws_connect(self.url, autoping=True, max_msg_size=0, compress=0)
        await ws.send_str(orjson.dumps({"op": "auth", "token": self.token}).decode())
        msg = await ws.receive(timeout=30)
        frame = orjson.loads(msg.data) if msg.type == aiohttp.WSMsgType.TEXT else {}
        if frame.get("op") != "ready":
            raise RuntimeError(f"client {self.idx}: expected ready, got {msg!r}")
        self.gateway = frame.get("gateway")
        limits = frame.get("limits") or {}
        if "sends_per_s" in limits:
            # With headroom: the server counts a send when it reads it, and a jitter that
            # brings two sends closer there than here would be refused at the limit (a few
            # `rate_limited` in a tiny run, where each client sends as fast as allowed).
            rate, burst = float(limits["sends_per_s"]), float(limits["send_burst"])
            self.bucket = TokenBucket(0.95 * rate, 0.9 * burst)
        self.ws = ws
        self.reader = asyncio.create_task(self._read())

    async def close(self) -> None:
        self.closed = True
        if self.ws is not None:
            await self.ws.close()
        if self.reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.reader

    # Sending -------------------------------------------------------------------
    async def send_message(self) -> None:
        assert self.ws is not None and self.peer is not None
        gen = self.gen
        n, body = self._next()
        to = self.peer.account.user_id
        if gen.protocol == 1:
            await self.ws.send_str(f'{{"op":"send","id":"{n}","to":"{to}","body":"{body}"}}')
            return
        if self.copies is None:
            # The same ciphertext stands in for each device's (the server cannot tell).
            own, peer = self.account, self.peer.account
            targets = [(to, peer.device_id), *((to, d) for d, _ in peer.others)]
            targets += [(own.user_id, d) for d, _ in own.others]
            self.copies = ",".join(
                f'{{"user":"{u}","device":{d},"body":"{{body}}"}}' for u, d in targets
            )
        copies = self.copies.replace("{body}", body)
        await self.ws.send_str(f'{{"op":"send","id":"{n}","to":"{to}","copies":[{copies}]}}')

    def _next(self) -> tuple[int, str]:
        """The next message's number and body (its header: phase, sender, number, time)."""
        gen = self.gen
        n = self.n = self.n + 1
        header = HEADER.pack(gen.phase_id, 0, self.idx, n, time.monotonic_ns())
        self.outstanding += 1
        gen.result.sent += 1
        return n, b64url(header) + gen.padding

    async def saturate(self, window: int) -> None:
        gen = self.gen
        while not gen.stop_sending:
            if self.outstanding >= window:
                self.room.clear()
                await self.room.wait()
                continue
            if self.bucket is not None:
                wait = self.bucket.delay()
                if wait:
                    await asyncio.sleep(wait)
                    continue
            await self.send_message()

    async def send_frame(self, frame: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send_str(orjson.dumps(frame).decode())

    # Receiving -----------------------------------------------------------------
    async def _read(self) -> None:
        assert self.ws is not None
        handlers = {
            "message": self._on_message,
            "key_changed": self._on_notice,
            "accepted": self._on_accepted,
            "stored": self._on_stored,
            "delivered": self._on_delivered,
            "error": self._on_error,
            "synced": self._on_synced,
        }
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            frame = orjson.loads(msg.data)
            handler = handlers.get(frame.get("op"))
            if handler is not None:
                handler(frame)
        if not self.closed:
            self.gen.disconnects += 1

    def _on_message(self, frame: dict[str, Any]) -> None:
        now = time.monotonic_ns()
        gen = self.gen
        seq = frame.get("seq")
        if isinstance(seq, int):
            self._saw_seq(seq)
        body = frame.get("body") or ""
        try:
            phase, _, sender, n, sent_ns = HEADER.unpack(
                base64.urlsafe_b64decode(body[:HEADER_CHARS])
            )
        except (ValueError, struct.error):
            gen.foreign += 1
            return
        if phase != gen.phase_id:
            gen.stray += 1
            return
        key = sender << 32 | n
        res = gen.result
        if self.owner is not None:  # a listening device: count the copy, nothing more
            if key in self.got:
                res.copies_duplicates += 0 if self.recovering else 1
                return
            self.got.add(key)
            res.copies_received += 1
            return
        if key in self.got:
            if not self.recovering:
                res.duplicates += 1
            return
        self.got.add(key)
        res.received += 1
        if self.recovering:
            res.recovered_by_sync += 1
        src = gen.clients[sender]
        src.outstanding -= 1
        src.room.set()
        if gen.draining:
            gen.changed.set()
        if gen.measuring:
            res.window_received += 1
            res.latencies_ms.append((now - sent_ns) / 1e6)

    def _on_notice(self, frame: dict[str, Any]) -> None:
        # Not one of ours, but it takes a place in the inbox's sequence.
        seq = frame.get("seq")
        if isinstance(seq, int):
            self._saw_seq(seq)

    def _saw_seq(self, seq: int) -> None:
        if seq > self.seq_max:
            self.seq_max = seq
        if seq == self.seq_mark + 1:
            self.seq_mark = seq
            above = self.seq_above
            while self.seq_mark + 1 in above:
                above.remove(self.seq_mark + 1)
                self.seq_mark += 1
        elif seq > self.seq_mark:
            self.seq_above.add(seq)

    def _on_accepted(self, frame: dict[str, Any]) -> None:
        self.gen.result.accepted += 1
        self.gen.result.stored_expected += self.copies_per_message
        self.accepted.add(int(frame["id"]))
        if self.gen.draining:
            self.gen.changed.set()

    @property
    def copies_per_message(self) -> int:
        """Device copies a message of this client's is stored as: every device of the
        recipient's account and the sender's own other devices (one receipt each)."""
        assert self.peer is not None
        return 1 + len(self.peer.account.others) + len(self.account.others)

    def _on_stored(self, _: dict[str, Any]) -> None:
        self.gen.result.stored += 1
        if self.gen.draining:
            self.gen.changed.set()

    def _on_delivered(self, _: dict[str, Any]) -> None:
        self.gen.result.delivered_receipts += 1

    def _on_error(self, frame: dict[str, Any]) -> None:
        errors = self.gen.result.errors
        code = str(frame.get("code"))
        errors[code] = errors.get(code, 0) + 1
        ident = frame.get("id")
        if isinstance(ident, str) and ident.isdigit():
            self.outstanding -= 1
            self.room.set()
        if self.gen.draining:
            self.gen.changed.set()

    def _on_synced(self, frame: dict[str, Any]) -> None:
        if self.syncing is not None and not self.syncing.done():
            self.syncing.set_result(frame)

    # Acknowledging and syncing ------------------------------------------------------
    async def ack(self, upto: int | None = None) -> None:
        seq = self.seq_mark if upto is None else upto
        if seq > self.acked:
            self.acked = seq
            self.gen.result.acks += 1
            await self.send_frame({"op": "ack", "seq": seq})

    async def sync_all(self) -> None:
        """Page through everything still waiting (after the last acknowledged seq)."""
        after = self.acked
        for page in range(1000):
            self.syncing = asyncio.get_running_loop().create_future()
            await self.send_frame({"op": "sync", "id": f"s{page}", "after": after, "limit": 200})
            done = await asyncio.wait_for(self.syncing, 30)
            after = int(done["last"])
            if not done["more"]:
                return


async def engineio_events(ws: aiohttp.ClientWebSocketResponse) -> AsyncIterator[tuple[str, Any]]:
    """A socket.io connection's events as ``(name, payload)``, and its acknowledgements
    as ``("ack", id)``; Engine.IO pings are answered on the way."""
    async for msg in ws:
        if msg.type != aiohttp.WSMsgType.TEXT:
            continue
        data: str = msg.data
        if data == "2":
            await ws.send_str("3")
        elif data.startswith("42"):
            event, payload = orjson.loads(data[2:])
            yield str(event), payload
        elif data.startswith("43"):
            yield "ack", data[2 : data.index("[")]


class SioClient(Client):
    """The same user on python-socketio (loadtest/socketio_peer.py): Engine.IO 4 over a
    WebSocket, as the JavaScript client speaks it. ``send`` is an event with an
    acknowledgement (the ``accepted``); the recipient gets a ``message`` event with
    the same body. Nothing is stored, so nothing is acknowledged or synced."""

    async def connect(self, session: aiohttp.ClientSession) -> None:
        ws = await session.ws_connect(self.url, max_msg_size=0, compress=0)
        opened = (await ws.receive(timeout=30)).data
        if not str(opened).startswith("0"):
            raise RuntimeError(f"client {self.idx}: expected an Engine.IO open, got {opened!r}")
        await ws.send_str("40" + orjson.dumps({"user": self.account.user_id}).decode())
        joined = (await ws.receive(timeout=30)).data
        if not str(joined).startswith("40"):
            raise RuntimeError(f"client {self.idx}: expected a socket.io connect, got {joined!r}")
        self.gateway = self.url.split("/")[2]
        self.ws = ws
        self.reader = asyncio.create_task(self._read())

    async def send_message(self) -> None:
        assert self.ws is not None and self.peer is not None
        n, body = self._next()
        to = self.peer.account.user_id
        await self.ws.send_str(f'42{n}["send",{{"to":"{to}","body":"{body}"}}]')

    async def _read(self) -> None:
        assert self.ws is not None
        async for event, payload in engineio_events(self.ws):
            if event == "message":
                self._on_message(payload)
            elif event == "ack":
                self._on_accepted({"id": payload})
        if not self.closed:
            self.gen.disconnects += 1

    async def ack(self, upto: int | None = None) -> None:
        return None


class Probe(Protocol):
    """Something else to read at the start and the end of each measured window."""

    async def start(self) -> None: ...

    async def stop(self) -> dict[str, Any]: ...


class LoadGenerator:
    """Drives paired clients through phases and keeps the score."""

    def __init__(
        self,
        accounts: list[Account],
        urls: list[str],
        *,
        body_bytes: int = 162,
        durable: bool = True,
        ack_interval: float = 0.25,
        probes: Iterable[Probe] = (),
        protocol: int = 2,
        client_class: type[Client] = Client,
    ) -> None:
        if len(accounts) < 2 or len(accounts) % 2:
            raise ValueError("clients come in pairs: give an even number of at least 2")
        if body_bytes < HEADER.size or body_bytes % 3:
            raise ValueError(f"body_bytes must be a multiple of 3, at least {HEADER.size}")
        self.clients = [
            client_class(self, i, acc, urls[i % len(urls)]) for i, acc in enumerate(accounts)
        ]
        for a, b in zip(self.clients[::2], self.clients[1::2], strict=True):
            a.peer, b.peer = b, a
        self.protocol = protocol
        # Every other device of every account: it receives copies and acknowledges.
        self.listeners = [
            Client(self, c.idx, c.account, urls[(c.idx + k + 1) % len(urls)], token=tok, owner=c)
            for c in self.clients
            for k, (_, tok) in enumerate(c.account.others)
        ]
        self.padding = b64url(bytes(range(256)) * 4)[: (body_bytes - HEADER.size) * 4 // 3]
        self.durable = durable
        self.ack_interval = ack_interval
        self.session: aiohttp.ClientSession | None = None
        self.phase_id = 0
        self.result = PhaseResult("idle")
        self.measuring = False
        self.stop_sending = False
        self.stray = 0
        self.foreign = 0
        self.disconnects = 0
        self._acker: asyncio.Task[None] | None = None
        self.probes: list[Probe] = list(probes)
        self.draining = False
        self.changed = asyncio.Event()

    async def connect(self, concurrency: int = 50) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=True)
        )
        sem = asyncio.Semaphore(concurrency)

        async def one(c: Client) -> None:
            async with sem:
                await c.connect(self.session)  # type: ignore[arg-type]

        await asyncio.gather(*(one(c) for c in self.devices))
        if self.durable:
            self._acker = asyncio.create_task(self._ack_loop())

    async def close(self) -> None:
        if self._acker is not None:
            self._acker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._acker
        await asyncio.gather(*(c.close() for c in self.devices), return_exceptions=True)
        if self.session is not None:
            await self.session.close()

    async def _ack_loop(self) -> None:
        while True:
            await asyncio.sleep(self.ack_interval)
            for c in self.devices:
                if c.seq_mark > c.acked and not c.closed:
                    await c.ack()

    @property
    def devices(self) -> list[Client]:
        return [*self.clients, *self.listeners]

    def gateways(self) -> Counter[str]:
        return Counter(c.gateway or "?" for c in self.clients)

    # Phases --------------------------------------------------------------------
    def _begin(self, name: str) -> PhaseResult:
        self.phase_id = (self.phase_id + 1) % 256
        self.result = PhaseResult(name)
        self.stop_sending = False
        self.measuring = False
        for c in self.devices:
            c.accepted = set()
            c.got = set()
            c.outstanding = 0
        return self.result

    async def warm_up(self, timeout: float = 60.0) -> PhaseResult:
        """One message each way per pair: routes, caches and consumer groups are warm."""
        res = self._begin("warmup")
        for c in self.clients:
            await c.send_message()
        await self._drain(timeout)
        return res

    async def saturation(
        self, seconds: float, warmup: float, window: int, meter: CpuMeter
    ) -> PhaseResult:
        res = self._begin("saturation")
        tasks = [asyncio.create_task(c.saturate(window)) for c in self.clients]
        try:
            await asyncio.sleep(warmup)
            await self._measure(seconds, meter)
        finally:
            self.stop_sending = True
            for c in self.clients:
                c.room.set()
            await asyncio.gather(*tasks, return_exceptions=True)
        await self._drain()
        return res

    async def paced(
        self, rate: float, seconds: float, warmup: float, meter: CpuMeter, cap: int = 1000
    ) -> PhaseResult:
        res = self._begin("paced")
        res.target_rate = round(rate, 1)
        task = asyncio.create_task(self._pace(rate, cap))
        try:
            await asyncio.sleep(warmup)
            await self._measure(seconds, meter)
        finally:
            self.stop_sending = True
            await task
        await self._drain()
        return res

    async def _pace(self, rate: float, cap: int) -> None:
        clients = self.clients
        res = self.result
        start = time.monotonic()
        i = due_done = 0
        while not self.stop_sending:
            due = int((time.monotonic() - start) * rate) - due_done
            for _ in range(due):
                c = clients[i % len(clients)]
                i += 1
                due_done += 1
                if c.outstanding >= cap:
                    res.skipped += 1
                    continue
                await c.send_message()
            await asyncio.sleep(0.002)

    async def _measure(self, seconds: float, meter: CpuMeter) -> None:
        for probe in self.probes:
            await probe.start()
        meter.start()
        t0 = time.monotonic()
        self.measuring = True
        await asyncio.sleep(seconds)
        self.measuring = False
        self.result.seconds = time.monotonic() - t0
        self.result.cpu_s = meter.stop()
        self.result.wakeups = meter.wakeups
        self.result.machine_cpu_s = meter.machine
        self.result.interrupt_cpu_s = meter.interrupts
        for probe in self.probes:
            self.result.probes.update(await probe.stop())

    async def _drain(self, timeout: float = 60.0) -> None:
        """Wait for every sent message to arrive (or be refused); then count losses."""
        res = self.result
        deadline = time.monotonic() + timeout

        def settled() -> bool:
            refused = sum(res.errors.values())
            return (
                all(c.outstanding <= 0 for c in self.clients)
                and res.accepted + refused >= res.sent
                and (not self.durable or res.stored >= res.stored_expected)
            )

        self.draining = True
        try:
            while not settled() and (left := deadline - time.monotonic()) > 0:
                self.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), left)
        finally:
            self.draining = False
        missing = self._missing()
        if missing and self.durable:
            # Not pushed in real time: is it waiting in the inbox? (then it is late, not lost)
            for c in {self.clients[k >> 32].peer for k in missing}:
                assert c is not None
                c.recovering = True
                try:
                    await c.sync_all()
                finally:
                    c.recovering = False
            missing = self._missing()
        res.lost = len(missing)
        if self.listeners:
            late = [d for d in self.listeners if self._copies_missing(d)]
            for d in late if self.durable else []:
                d.recovering = True
                try:
                    await d.sync_all()
                finally:
                    d.recovering = False
            res.copies_lost = sum(len(self._copies_missing(d)) for d in self.listeners)
        got = set().union(*(c.got for c in self.clients))
        accepted = {c.idx << 32 | n for c in self.clients for n in c.accepted}
        res.unaccepted_received = len(got - accepted)
        if self.durable:
            # Everything is accounted for: acknowledge it all, so the inboxes start empty.
            for c in self.devices:
                await c.ack(c.seq_max)

    def _missing(self) -> set[int]:
        got: set[int] = set().union(*(c.got for c in self.clients))
        return {c.idx << 32 | n for c in self.clients for n in c.accepted} - got

    @staticmethod
    def _copies_missing(device: Client) -> set[int]:
        """What a listening device should hold: every accepted message of its
        account's peer, and of its own account's first device."""
        owner = device.owner
        assert owner is not None and owner.peer is not None
        want = {src.idx << 32 | n for src in (owner, owner.peer) for n in src.accepted}
        return want - device.got
