"""Messaging benchmark: Parley's durable path against a raw Redis pub/sub relay and
python-socketio (the peer a user would pick instead: two processes on one Redis).

``python -m loadtest.bench_messaging [--clients N --seconds S ...] [--json]``

It starts its own embedded stack (MongoDB, Kafka, Redis, SMTP) and the whole
Parley system (auth, keys, two gateways, delivery, HAProxy) on free loopback
ports, signs up N users through the auth service, and opens N WebSockets
through HAProxy. Then, for Parley, the relay baseline and python-socketio in
turn (each on its own Redis; the two others store nothing):

1. saturation: every sender sends as fast as the protocol lets it (a window
   of messages in flight, within the announced rate limit); delivered msgs/s
   = messages pushed to their recipients per second of the measured window;
2. paced: half the saturation rate in total, open loop; end-to-end latency
   (send -> recipient receives ``message``), p50/p99;
3. in both: every ``accepted`` message must arrive exactly once (lost and
   duplicates, by client message id);
4. in both: CPU time of every server process over the measured window
   (utime + stime from /proc/<pid>/stat), per delivered message.

docs/BENCHMARKS.md has the figures and the command that produced them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis.asyncio as aioredis
from pymongo import AsyncMongoClient

from loadtest.common import (
    Account,
    CpuMeter,
    LoadGenerator,
    PhaseResult,
    SioClient,
    call,
    tune_gc,
    wait_ready,
)
from loadtest.relay_baseline import start_relays
from loadtest.socketio_peer import start_peers
from scripts.stack import SERVERS, SERVICES, Processes, StackConfig
from tests.keys.keygen import AccountKeys, DeviceKeys, entry

PARLEY_PROCS = ("mongo", "kafka", "redis", "haproxy", "auth", "keys", "gateway1", "gateway2",
                "delivery")  # fmt: skip
RELAY_PROCS = ("relay1", "relay2", "redis")


@dataclass(frozen=True)
class Options:
    clients: int = 100
    seconds: float = 10.0
    warmup: float = 2.0
    window: int = 16
    rate: float | None = None
    body_bytes: int = 162
    ack_interval: float = 0.25
    sends_per_s: float = 1000.0
    send_burst: int = 1000
    systems: tuple[str, ...] = ("parley", "relay", "socketio")
    # Devices per Parley account: each message is one send with a copy per device
    # of the recipient and of the sender's other devices (docs/devices.md).
    devices: int = 1
    saturation: bool = True
    data_dir: Path | None = None


# Parley -----------------------------------------------------------------------
class ParleySystem:
    """The embedded servers and every Parley service, as real processes on free ports."""

    def __init__(self, data_dir: Path, opts: Options) -> None:
        self.prefix = f"bench{secrets.token_hex(3)}"
        self.cfg = StackConfig.free_ports(data_dir).with_env(
            PARLEY_DB_PREFIX=f"{self.prefix}_",
            PARLEY_REDIS_PREFIX=self.prefix,
            PARLEY_TOPIC_PREFIX=f"{self.prefix}.",
            PARLEY_KAFKA_SESSION_TIMEOUT_MS="3000",
            # The benchmark's one change to the defaults: its users send faster than people.
            PARLEY_WS_SENDS_PER_S=str(opts.sends_per_s),
            PARLEY_WS_SEND_BURST=str(opts.send_burst),
            # All sign-ups come from one address.
            PARLEY_LIMIT_SIGNUP_IP=f"{max(10, 2 * opts.clients)}/3600",
            PARLEY_LIMIT_LOGIN_IP=f"{max(30, 2 * opts.clients * opts.devices)}/300",
        )
        self.devices = opts.devices
        self.procs = Processes(self.cfg)
        self.lb = self.cfg.url("lb")

    def start(self) -> None:
        try:
            for name in (*SERVERS, *SERVICES, "haproxy"):
                self.procs.start(name)
        except BaseException:
            self.procs.stop_all()
            raise

    def stop(self) -> None:
        self.procs.stop_all()

    def pids(self) -> dict[str, int]:
        return {name: self.procs.procs[name].pid for name in PARLEY_PROCS}

    @property
    def ws_url(self) -> str:
        return self.lb.replace("http://", "ws://") + "/ws"

    async def wait_ready(self, session: aiohttp.ClientSession, timeout: float = 90.0) -> None:
        urls = [self.cfg.url(s) + f"/{s}/readyz" for s in ("auth", "keys", "delivery")]
        urls += [self.cfg.url(g) + "/gateway/readyz" for g in ("gateway1", "gateway2")]
        await wait_ready(session, urls, timeout)

    async def sign_up(self, session: aiohttp.ClientSession, n: int) -> list[Account]:
        """``n`` accounts of :attr:`devices` devices each (:func:`sign_up`)."""
        return await sign_up(session, self.lb, self.prefix, n, self.devices)


async def sign_up(
    session: aiohttp.ClientSession, lb: str, prefix: str, n: int, devices: int = 1, *,
    prekeys: bool = False, one_time: int = 0,
) -> list[Account]:  # fmt: skip
    """``n`` accounts of ``devices`` devices each, registered as the SDK does: an
    identity per device and an account key whose signed list names them all. With
    ``prekeys`` each device also publishes a signed prekey and a last-resort ML-KEM
    prekey, so that others can claim its bundle and start a session with it, and
    ``one_time`` one-time prekeys of each kind (X25519, ML-KEM)."""
    sem = asyncio.Semaphore(8)

    async def one(i: int) -> Account:
        name = f"{prefix}u{i}"
        password = secrets.token_urlsafe(18)
        async with sem:
            data = await call(session, "POST", f"{lb}/auth/v1/signup", body={
                "username": name, "email": f"{name}@example.com", "password": password,
                "device_id": 1,
            })  # fmt: skip
            user_id = data["user"]["user_id"]
            tokens = [(1, str(data["access_token"]))]
            for d in range(2, devices + 1):
                login = {"username": name, "password": password, "device_id": d}
                answer = await call(session, "POST", f"{lb}/auth/v1/login", body=login)
                tokens.append((d, str(answer["access_token"])))
            entries = []
            for d, token in tokens:
                dev = DeviceKeys()
                keys = f"{lb}/keys/v1/devices/{d}"
                await call(session, "PUT", f"{keys}/identity", token, dev.identity())
                if prekeys:
                    await call(session, "PUT", f"{keys}/signed-prekey", token, dev.signed_prekey())
                    await call(session, "PUT", f"{keys}/kem-last-resort", token, dev.last_resort())
                if prekeys and one_time:
                    batch = {"prekeys": dev.one_time(one_time)}
                    await call(session, "POST", f"{keys}/one-time-prekeys", token, batch)
                    batch = {"prekeys": dev.kem(one_time)}
                    await call(session, "POST", f"{keys}/kem-prekeys", token, batch)
                entries.append(entry(d, dev))
            account = AccountKeys().registration(user_id, entries)
            await call(session, "PUT", f"{lb}/keys/v1/account", tokens[0][1], account)
        return Account(user_id, tokens[0][1], 1, tuple(tokens[1:]))

    return list(await asyncio.gather(*(one(i) for i in range(n))))


class DeliveryBatches:
    """Delivery's batch histograms over a window (from its /metrics): how well it batches."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url
        self._start: dict[str, float] = {}

    async def _read(self) -> dict[str, float]:
        async with self.session.get(self.url) as resp:
            text = await resp.text()
        out = {}
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name.startswith("parley_delivery_batch_") and name.endswith(("_sum", "_count")):
                out[name] = float(value)
            elif name.startswith("parley_delivery_e2e_latency_seconds_bucket"):
                out[name] = float(value)
        return out

    async def start(self) -> None:
        self._start = await self._read()

    async def stop(self) -> dict[str, Any]:
        end = await self._read()
        d = {k: end.get(k, 0.0) - self._start.get(k, 0.0) for k in end}
        batches = d.get("parley_delivery_batch_size_count", 0.0)
        if not batches:
            return {"delivery_batches": 0}
        # Accepted (the gateway's clock) -> pushed by delivery: the share of the
        # latency spent before the push, as cumulative shares per bucket.
        buckets = {k.split('le="')[1].split('"')[0]: v for k, v in d.items() if "e2e" in k}
        total = buckets.get("+Inf", 0.0)
        return {
            "delivery_batches": int(batches),
            "delivery_mean_batch_records": round(d["parley_delivery_batch_size_sum"] / batches, 1),
            "delivery_mean_batch_ms": round(
                1000 * d.get("parley_delivery_batch_seconds_sum", 0.0) / batches, 1
            ),
            "accepted_to_pushed_within_ms": {
                str(round(float(le) * 1000)): round(v / total, 3)
                for le, v in buckets.items() if le != "+Inf" and total and float(le) <= 0.1
            },
        }  # fmt: skip


class GcPauses:
    """The servers' garbage-collector pauses over a window (``parley_gc_pause_seconds``
    from each one's /metrics): how many, how long in all, and the longest bucket."""

    def __init__(self, session: aiohttp.ClientSession, urls: dict[str, str]) -> None:
        self.session = session
        self.urls = urls
        self._start: dict[str, dict[str, float]] = {}

    async def _read(self, url: str) -> dict[str, float]:
        async with self.session.get(url) as resp:
            text = await resp.text()
        out = {}
        for line in text.splitlines():
            if line.startswith("parley_gc_pause_seconds_"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    async def start(self) -> None:
        self._start = {n: await self._read(u) for n, u in self.urls.items()}

    async def stop(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, url in self.urls.items():
            end, start = await self._read(url), self._start.get(name, {})
            d = {k: v - start.get(k, 0.0) for k, v in end.items()}
            count = sum(v for k, v in d.items() if k.startswith("parley_gc_pause_seconds_count"))
            total = sum(v for k, v in d.items() if k.startswith("parley_gc_pause_seconds_sum"))
            over = {b: sum(v for k, v in d.items() if "_bucket" in k and f'le="{b}"' in k)
                    for b in ("0.01", "0.025", "0.05")}  # fmt: skip
            out[name] = {
                "pauses": int(count), "ms": round(total * 1000, 1),
                "over_10ms": int(count - over["0.01"]), "over_50ms": int(count - over["0.05"]),
            }  # fmt: skip
        return {"gc": out}


class RedisCommands:
    """Redis commands over a window (``INFO commandstats``): how many the servers send."""

    def __init__(self, url: str) -> None:
        self.redis = aioredis.Redis.from_url(url)
        self._start: dict[str, int] = {}

    async def _read(self) -> dict[str, int]:
        stats = await self.redis.info("commandstats")
        return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}

    async def start(self) -> None:
        self._start = await self._read()

    async def stop(self) -> dict[str, Any]:
        end = await self._read()
        d = {k: v - self._start.get(k, 0) for k, v in end.items() if v > self._start.get(k, 0)}
        return {"redis_commands": dict(sorted(d.items(), key=lambda kv: -kv[1]))}

    async def close(self) -> None:
        await self.redis.aclose()


class InboxSize:
    """How many documents delivery's inbox holds (acked ones stay as tombstones)."""

    def __init__(self, mongo_url: str, db: str) -> None:
        self.client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            mongo_url, retryWrites=False
        )
        self.inbox = self.client[db]["inbox"]

    async def start(self) -> None:
        return None

    async def stop(self) -> dict[str, Any]:
        return {"inbox_documents": await self.inbox.count_documents({})}

    async def close(self) -> None:
        await self.client.close()


# Runs -------------------------------------------------------------------------------
async def run_phases(
    gen: LoadGenerator, pids: dict[str, int], opts: Options, log: Any
) -> dict[str, PhaseResult]:
    meter = CpuMeter(pids)
    await gen.connect()
    log(f"  connected {len(gen.clients)} clients: {dict(gen.gateways())}")
    try:
        warm = await gen.warm_up()
        # A system that stores nothing drops what it cannot route yet (python-socketio's
        # Redis manager subscribes in the background after start): warm it up again,
        # a few times, before calling that a loss. Parley must get it right at once.
        for _ in range(5 if not gen.durable else 0):
            if not warm.lost:
                break
            await asyncio.sleep(1.0)
            warm = await gen.warm_up()
        if warm.lost:
            raise RuntimeError(f"warm-up lost {warm.lost} messages: {warm.summary()}")
        phases: dict[str, PhaseResult] = {}
        if opts.saturation:
            log(f"  saturation: {opts.seconds}s (after {opts.warmup}s), window {opts.window}")
            sat = phases["saturation"] = await gen.saturation(
                opts.seconds, opts.warmup, opts.window, meter
            )
            log(f"    {sat.rate:.0f} msgs/s, lost {sat.lost}, duplicates {sat.duplicates}")
        rate = opts.rate or max(1.0, phases["saturation"].rate / 2)
        log(f"  paced: {rate:.0f} msgs/s for {opts.seconds}s")
        paced = phases["paced"] = await gen.paced(rate, opts.seconds, opts.warmup, meter)
        lat = paced.summary()["latency_ms"]
        log(f"    p50 {lat['p50']} ms, p99 {lat['p99']} ms, lost {paced.lost}, "
            f"duplicates {paced.duplicates}")  # fmt: skip
    finally:
        await gen.close()
    return phases


async def bench(opts: Options, data_dir: Path, log: Any) -> dict[str, Any]:
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()},
        "systems": {},
    }
    self_pid = {"loadgen": os.getpid()}
    if "parley" in opts.systems:
        results["systems"]["parley"] = await bench_parley(opts, data_dir, log, self_pid)
    if "relay" in opts.systems:
        relay_redis = Processes(StackConfig.free_ports(data_dir / "relay"))
        await asyncio.to_thread(relay_redis.start, "redis")
        cluster = await asyncio.to_thread(
            start_relays, data_dir / "relay", relay_redis.cfg.url("redis")
        )
        try:
            log("relay baseline (direct, two processes):")
            relay_accounts = [Account(f"r{i}", f"r{i}") for i in range(opts.clients)]
            gen = LoadGenerator(relay_accounts, cluster.urls, body_bytes=opts.body_bytes,
                                durable=False, protocol=1)  # fmt: skip
            pids = {**cluster.pids(), "redis": relay_redis.procs["redis"].pid, **self_pid}
            phases = await run_phases(gen, pids, opts, log)
            results["systems"]["relay"] = _system(gen, phases)
        finally:
            await asyncio.to_thread(cluster.stop)
            await asyncio.to_thread(relay_redis.stop_all)
    if "socketio" in opts.systems:
        results["systems"]["socketio"] = await bench_socketio(opts, data_dir, log, self_pid)
    results["targets"] = targets(results["systems"])
    return results


async def bench_socketio(
    opts: Options, data_dir: Path, log: Any, self_pid: dict[str, int]
) -> dict[str, Any]:
    """python-socketio 5.x, two processes on one Redis (``AsyncRedisManager``), each user
    in its own room: the peer a user would pick instead (loadtest/socketio_peer.py)."""
    sio_redis = Processes(StackConfig.free_ports(data_dir / "sio"))
    await asyncio.to_thread(sio_redis.start, "redis")
    ports = StackConfig.free_ports(data_dir / "sio-ports")
    cluster = await asyncio.to_thread(
        start_peers, data_dir / "sio", sio_redis.cfg.url("redis"),
        [ports.gateway1_port, ports.gateway2_port], "messaging",
    )  # fmt: skip
    try:
        log("python-socketio (two processes, AsyncRedisManager):")
        accounts = [Account(f"s{i}", f"s{i}") for i in range(opts.clients)]
        gen = LoadGenerator(accounts, cluster.urls, body_bytes=opts.body_bytes,
                            durable=False, client_class=SioClient)  # fmt: skip
        pids = {**cluster.pids(), "redis": sio_redis.procs["redis"].pid, **self_pid}
        return _system(gen, await run_phases(gen, pids, opts, log))
    finally:
        await asyncio.to_thread(cluster.stop)
        await asyncio.to_thread(sio_redis.stop_all)


async def bench_parley(
    opts: Options, data_dir: Path, log: Any, self_pid: dict[str, int]
) -> dict[str, Any]:
    parley = ParleySystem(data_dir / "parley", opts)
    log(f"starting the embedded stack and Parley in {data_dir}")
    await asyncio.to_thread(parley.start)
    try:
        async with aiohttp.ClientSession() as session:
            await parley.wait_ready(session)
            t0 = time.monotonic()
            accounts = await parley.sign_up(session, opts.clients)
        log(f"signed up {len(accounts)} users in {time.monotonic() - t0:.1f}s")
        log("parley (through HAProxy):")
        async with aiohttp.ClientSession() as session:
            batches = DeliveryBatches(session, parley.cfg.url("delivery") + "/delivery/metrics")
            inbox = InboxSize(parley.cfg.url("mongo"), f"{parley.prefix}_delivery")
            commands = RedisCommands(parley.cfg.url("redis"))
            gc_urls = {n: f"{parley.cfg.url(n)}/{n.rstrip('12')}/metrics"
                       for n in ("delivery", "gateway1", "gateway2")}  # fmt: skip
            gen = LoadGenerator(
                accounts, [parley.ws_url], body_bytes=opts.body_bytes, durable=True,
                ack_interval=opts.ack_interval,
                probes=[batches, inbox, commands, GcPauses(session, gc_urls)],
            )  # fmt: skip
            try:
                phases = await run_phases(gen, {**parley.pids(), **self_pid}, opts, log)
            finally:
                await inbox.close()
                await commands.close()
        return _system(gen, phases)
    finally:
        await asyncio.to_thread(parley.stop)


def _system(gen: LoadGenerator, phases: dict[str, PhaseResult]) -> dict[str, Any]:
    out: dict[str, Any] = {name: res.summary() for name, res in phases.items()}
    out["gateways"] = dict(gen.gateways())
    out["stray_frames"] = gen.stray
    out["disconnects"] = gen.disconnects
    return out


PHASES = ("saturation", "paced")


def targets(systems: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, checked against the results."""
    p, r = systems.get("parley"), systems.get("relay")
    out: dict[str, Any] = {}
    if p is not None:
        out["p99_under_50ms"] = (p["paced"]["latency_ms"]["p99"] or 1e9) < 50
        out["zero_loss_zero_duplicates"] = all(
            p[ph]["lost"] == 0 and p[ph]["duplicates"] == 0 for ph in PHASES if ph in p
        )
    if p is not None and r is not None and "saturation" in p and "saturation" in r:
        ratio = p["saturation"]["delivered_per_s"] / max(r["saturation"]["delivered_per_s"], 1e-9)
        out["throughput_ratio"] = round(ratio, 3)
        out["at_least_half_of_relay"] = ratio >= 0.5
    sio = systems.get("socketio")
    if p is not None and sio is not None and "saturation" in p and "saturation" in sio:
        ratio = p["saturation"]["delivered_per_s"] / max(sio["saturation"]["delivered_per_s"], 1)
        out["ratio_to_socketio"] = round(ratio, 3)
        out["at_least_1_5x_socketio"] = ratio >= 1.5
    if p is not None and sio is not None and "paced" in p and "paced" in sio:
        cpu = p["paced"]["server_cpu_us_per_msg"] or 1e9
        out["paced_cpu_within_1_5x_socketio"] = cpu <= 1.5 * (
            sio["paced"]["server_cpu_us_per_msg"] or 0
        )
    return out


# Output -------------------------------------------------------------------------------
def table(results: dict[str, Any]) -> str:
    systems = results["systems"]
    names = list(systems)
    rows: list[tuple[str, ...]] = [("", *names)]

    def row(label: str, get: Any) -> None:
        cells = []
        for n in names:
            try:
                v = get(systems[n])
            except (KeyError, TypeError, ZeroDivisionError):
                v = None
            cells.append("-" if v is None else str(v))
        rows.append((label, *cells))

    for ph in PHASES:
        if not any(ph in systems[n] for n in names):
            continue
        rows.append((f"{ph}:", *[""] * len(names)))
        if ph == "paced":
            row("  target msgs/s", lambda s: s["paced"]["target_rate"])
        row("  delivered msgs/s", lambda s, ph=ph: s[ph]["delivered_per_s"])
        row("  latency p50 / p99 ms", lambda s, ph=ph: _pair(s[ph]["latency_ms"]))
        row("  latency max ms", lambda s, ph=ph: s[ph]["latency_ms"]["max"])
        row("  lost / duplicates", lambda s, ph=ph: f"{s[ph]['lost']} / {s[ph]['duplicates']}")
        row("  errors", lambda s, ph=ph: _errors(s[ph]))
        row("  acks sent", lambda s, ph=ph: s[ph]["acks"])
        row("  delivery batch: records / ms", lambda s, ph=ph: _batch(s[ph]))
        row("  inbox documents at the end", lambda s, ph=ph: s[ph]["inbox_documents"])
        row("  Redis commands per msg (top 6)", lambda s, ph=ph: _commands(s[ph]))
        row("  GC pauses: n / ms / over 10 ms", lambda s, ph=ph: _gc(s[ph]))
        row("  machine busy cores", lambda s, ph=ph: s[ph]["machine_cores_busy"])
        row("    interrupts (loopback networking)", lambda s, ph=ph: s[ph]["interrupt_cores"])
        row("    other processes on the machine", lambda s, ph=ph: s[ph]["unattributed_cores"])
        rows.append(("  CPU µs per delivered msg (cores)", *[""] * len(names)))
        procs = list(
            dict.fromkeys(p for n in names for p in systems[n].get(ph, {}).get("cpu_s", {}))
        )
        for proc in procs:
            row(f"    {proc}", lambda s, ph=ph, p=proc: _cpu(s[ph], p))
        row("    all servers (not loadgen)", lambda s, ph=ph: s[ph]["server_cpu_us_per_msg"])
        row("  wake-ups per delivered msg", lambda s, ph=ph: _wakes(s[ph]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(r, widths, strict=True))) for r in rows]  # fmt: skip
    t = results.get("targets", {})
    if t:
        lines.append("")
        lines.append("targets: " + ", ".join(f"{k}={v}" for k, v in t.items()))
    return "\n".join(lines)


def _batch(ph: dict[str, Any]) -> str | None:
    if "delivery_mean_batch_records" not in ph:
        return None
    return f"{ph['delivery_mean_batch_records']} / {ph['delivery_mean_batch_ms']}"


def _commands(ph: dict[str, Any]) -> str | None:
    calls = ph.get("redis_commands")
    n = ph.get("delivered_per_s", 0) * ph.get("seconds", 0)
    if not calls or not n:
        return None
    total = sum(calls.values()) / n
    top = " ".join(f"{k}:{v / n:.1f}" for k, v in list(calls.items())[:6])
    return f"{total:.1f} ({top})"


def _wakes(ph: dict[str, Any]) -> str | None:
    """Servers' voluntary context switches per message: the total, then the top five."""
    w = {n: v for n, v in (ph.get("wakeups_per_msg") or {}).items() if v and n != "loadgen"}
    if not w:
        return None
    top = sorted(w.items(), key=lambda kv: -kv[1])[:5]
    return f"{sum(w.values()):.1f} (" + " ".join(f"{n}:{v}" for n, v in top) + ")"


def _gc(ph: dict[str, Any]) -> str | None:
    gc = ph.get("gc")
    if not gc:
        return None
    return ", ".join(f"{n} {g['pauses']}/{g['ms']}/{g['over_10ms']}" for n, g in gc.items())


def _pair(lat: dict[str, Any]) -> str:
    return f"{lat['p50']} / {lat['p99']}"


def _errors(ph: dict[str, Any]) -> str:
    return ",".join(f"{k}:{v}" for k, v in ph["errors"].items()) or "0"


def _cpu(ph: dict[str, Any], proc: str) -> str | None:
    us = ph["cpu_us_per_msg"].get(proc)
    if us is None:
        return None
    return f"{us} ({ph['cpu_cores'][proc]:.2f})"


# CLI ----------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> tuple[Options, bool, bool]:
    d = Options()
    p = argparse.ArgumentParser(description="Parley messaging benchmark (see docs/BENCHMARKS.md)")
    p.add_argument("--clients", type=int, default=d.clients, help="WebSockets (pairs: even)")
    p.add_argument("--seconds", type=float, default=d.seconds, help="measured time per phase")
    p.add_argument("--warmup", type=float, default=d.warmup, help="unmeasured lead-in per phase")
    p.add_argument("--window", type=int, default=d.window, help="messages in flight per sender")
    p.add_argument("--rate", type=float, help="paced rate (default: half of saturation)")
    p.add_argument("--body-bytes", type=int, default=d.body_bytes, help="ciphertext bytes")
    p.add_argument("--ack-interval", type=float, default=d.ack_interval,
                   help="seconds between a recipient's cumulative acks")  # fmt: skip
    p.add_argument("--sends-per-s", type=float, default=d.sends_per_s,
                   help="gateway per-connection rate limit for the run")  # fmt: skip
    p.add_argument("--send-burst", type=int, default=d.send_burst)
    p.add_argument("--devices", type=int, default=d.devices,
                   help="devices per Parley account (each message: a copy per device)")  # fmt: skip
    p.add_argument("--only", choices=("parley", "relay", "socketio"), help="run one system only")
    p.add_argument("--paced-only", action="store_true",
                   help="skip the saturation phase (needs --rate)")  # fmt: skip
    p.add_argument("--data-dir", type=Path, help="keep logs and data here (default: a temp dir)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    a = p.parse_args(argv)
    if a.clients < 2 or a.clients % 2:
        p.error("--clients must be even and at least 2")
    if a.paced_only and a.rate is None:
        p.error("--paced-only needs --rate")
    opts = Options(
        clients=a.clients, seconds=a.seconds, warmup=a.warmup, window=a.window, rate=a.rate,
        body_bytes=a.body_bytes, ack_interval=a.ack_interval, sends_per_s=a.sends_per_s,
        send_burst=a.send_burst, systems=(a.only,) if a.only else d.systems,
        saturation=not a.paced_only, data_dir=a.data_dir, devices=a.devices,
    )  # fmt: skip
    return opts, a.json, a.quiet


def _loop_factory() -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - non-Linux platforms
        return None
    return uvloop.new_event_loop


def run_bench(
    bench: Callable[[Any, Path, Any], Awaitable[dict[str, Any]]],
    opts: Any, data_dir: Path | None, prefix: str, log: Any = None,
) -> dict[str, Any]:  # fmt: skip
    """Run ``bench(opts, data_dir, log)`` in a fresh event loop (uvloop where there is
    one), in ``data_dir`` or a temporary directory removed after."""
    log = log or (lambda _msg: None)
    tmp = None
    if data_dir is None:
        tmp = tempfile.mkdtemp(prefix=prefix)
        data_dir = Path(tmp)
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(bench(opts, data_dir, log))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def bench_main(
    parse: Callable[[list[str] | None], tuple[Any, bool, bool]],
    run: Callable[[Any, Any], dict[str, Any]],
    table: Callable[[dict[str, Any]], str],
    argv: list[str] | None = None,
    failed: Callable[[dict[str, Any]], bool] = lambda _results: False,
) -> None:
    """A benchmark's command line: its options, progress on stderr unless quiet, the
    results as a table or JSON, and status 1 when ``failed`` says so."""
    tune_gc()
    opts, as_json, quiet = parse(argv)

    def log(msg: str) -> None:
        if not quiet:
            print(msg, file=sys.stderr, flush=True)

    results = run(opts, log)
    if as_json:
        print(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())
    else:
        print(table(results))
    if failed(results):
        sys.exit(1)


def run(opts: Options, log: Any = None) -> dict[str, Any]:
    """Run the benchmark (in a fresh event loop) and return its results."""
    return run_bench(bench, opts, opts.data_dir, "parley-bench-", log)


def main(argv: list[str] | None = None) -> None:
    bench_main(parse_args, run, table, argv)


if __name__ == "__main__":
    main()
