"""The soak run: sign-ups, pacing, forced resends, kills, the drain, the report."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from parley_contract import envelopes as e

from loadtest.common import HEADER, b64url
from loadtest.soak.client import DEVICE, Account, Client
from loadtest.soak.options import Options, kill_times, parse_args
from loadtest.soak.report import CpuLedger, Ledger, summarize, table
from loadtest.soak.stack import RunStack
from scripts.run import CHECKS
from scripts.stack import ROOT
from tests.keys.keygen import AccountKeys, DeviceKeys, entry

READY_STREAK_S = 5.0
PASSWORD = "soak correct horse battery"


class Soak:
    def __init__(self, opts: Options, stack: RunStack, log: Callable[[str], None]) -> None:
        self.opts = opts
        self.stack = stack
        self.log = log
        self.rng = random.Random(opts.seed)
        self.ledger = Ledger()
        self.duration = opts.minutes * 60
        self.window_s = opts.window_minutes * 60
        self.windows = max(1, math.ceil(self.duration / self.window_s - 1e-9))
        self.cpu = CpuLedger(self.windows)
        self.padding = b64url(bytes(range(256)) * 4)[: (opts.body_bytes - HEADER.size) * 4 // 3]
        self.session: aiohttp.ClientSession | None = None
        self.clients: list[Client] = []
        self.start_ns = 0
        self.counters: Counter[str] = Counter()
        self.kills: list[dict[str, Any]] = []
        self.tasks: set[asyncio.Task[Any]] = set()
        self.pid_lock = asyncio.Lock()
        self.reconnects = self.disconnects = self.forced_reconnects = 0
        self.resent_accepted = self.resent_unaccepted = 0
        self.stored = self.delivered_receipts = self.acks = 0
        self.refreshes = self.relogins = 0
        self.loadavg: list[list[float]] = []
        self.idle: dict[str, float] | None = None

    def count(self, what: str, detail: str = "") -> None:
        self.counters[f"{what}:{detail}" if detail else what] += 1

    def spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def elapsed(self) -> float:
        return (time.monotonic_ns() - self.start_ns) / 1e9

    def window_now(self) -> int:
        return int(self.elapsed() // self.window_s)

    # Accounts -------------------------------------------------------------------
    async def http(
        self, method: str, path: str, body: Any, token: str | None = None, timeout: float = 60
    ) -> Any:
        assert self.session is not None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.session.request(
            method, self.stack.lb + path, json=body, headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:  # fmt: skip
            raw = await resp.read()
            try:
                data = orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError:  # e.g. HAProxy's own 503 page
                data = raw[:200].decode(errors="replace")
            if resp.status >= 300:
                raise HttpError(resp.status, data)
            return data

    async def sign_up(self, i: int) -> Account:
        username = f"soak{i}x{secrets.token_hex(3)}"
        tokens = await self.http("POST", "/auth/v1/signup", {
            "username": username, "email": f"{username}@example.test",
            "password": PASSWORD, "device_id": DEVICE,
        })  # fmt: skip
        user_id, token = tokens["user"]["user_id"], tokens["access_token"]
        dev = DeviceKeys()
        await self.http("PUT", f"/keys/v1/devices/{DEVICE}/identity", dev.identity(), token)
        account = AccountKeys().registration(user_id, [entry(DEVICE, dev)])
        await self.http("PUT", "/keys/v1/account", account, token)
        return Account(username, user_id, token, tokens["refresh_token"], tokens["expires_in"])

    async def refresh(self, client: Client, force: bool = False) -> None:
        """A new access token from the refresh token (a new login if that was refused).

        One at a time per user: a refresh token is single-use, and using one
        twice counts as reuse (the session is revoked)."""
        async with client.refresh_lock:
            await self._refresh(client, force)

    async def _refresh(self, client: Client, force: bool) -> None:
        acc = client.account
        age = time.monotonic() - acc.got_at
        if age < acc.expires_in * 0.5 and (not force or age < 5.0):
            if force:
                await client.reauth()  # refreshed a moment ago (by the other path)
            return
        try:
            tokens = await self.http(
                "POST", "/auth/v1/token/refresh", {"refresh_token": acc.refresh_token}, timeout=15
            )
            self.refreshes += 1
        except HttpError as err:
            if err.status not in (400, 401, 403):
                self.count("refresh_failed", str(err.status))
                return  # the auth service or HAProxy is down: next time
            # Refused (e.g. the answer to an earlier rotation was lost with a
            # killed process, so this token counts as reused): log in again.
            self.count("refresh_refused", err.code)
            try:
                tokens = await self.http("POST", "/auth/v1/login", {
                    "username": acc.username, "password": PASSWORD, "device_id": DEVICE,
                })  # fmt: skip
            except (HttpError, aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                self.count("relogin_failed", type(exc).__name__)
                return
            self.relogins += 1
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            self.count("refresh_failed", type(exc).__name__)
            return
        acc.token, acc.refresh_token = tokens["access_token"], tokens["refresh_token"]
        acc.expires_in, acc.got_at = int(tokens["expires_in"]), time.monotonic()
        await client.reauth()

    # Background loops -------------------------------------------------------------
    async def pace(self, until_ns: int) -> None:
        """Open loop: ``rate`` messages per second in total, round-robin over clients."""
        rate, clients = self.opts.rate, self.clients
        i = 0
        while (now := time.monotonic_ns()) < until_ns:
            due = int((now - self.start_ns) / 1e9 * rate) - i
            for _ in range(due):
                c = clients[i % len(clients)]
                i += 1
                n = c.compose()
                self.spawn(c.send_new(n))
            await asyncio.sleep(0.005)

    async def every(self, seconds: float, fn: Callable[[], Any]) -> None:
        """Call ``fn`` every ``seconds``; a failure is counted, and the loop goes on."""
        while True:
            await asyncio.sleep(seconds)
            try:
                await fn()
            except Exception as exc:
                self.count("loop_failed", f"{getattr(fn, '__name__', fn)}:{exc!r}"[:120])

    async def retry_all(self) -> None:
        for c in self.clients:
            await c.retry_overdue(self.opts.retry_after)

    async def ack_all(self) -> None:
        for c in self.clients:
            await c.ack()

    async def refresh_all(self) -> None:
        # Side by side: one slow answer (a process being killed) delays no one else.
        results = await asyncio.gather(
            *(self.refresh(c) for c in self.clients), return_exceptions=True
        )
        for res in results:
            if isinstance(res, Exception):
                self.count("refresh_crashed", repr(res)[:100])

    async def sample(self, into: CpuLedger | None = None, window: int | None = None) -> None:
        async with self.pid_lock:
            try:
                pids = await asyncio.to_thread(self.stack.pids)
            except (OSError, xmlrpc.client.Error) as exc:
                self.count("pids_failed", type(exc).__name__)
                return
            pids["loadgen"] = os.getpid()
            if into is not None and window is not None:
                into.sample(window, pids)
                return
            self.cpu.sample(self.window_now() if self.start_ns else -1, pids)
            if self.start_ns:
                self.loadavg.append([round(self.elapsed(), 1), *os.getloadavg()])

    async def force_resends(self) -> None:
        i = 0
        while True:
            await asyncio.sleep(self.opts.resend_every)
            await self.clients[i % len(self.clients)].force_reconnect()
            i += 1

    async def kill_schedule(self) -> None:
        for at, name in kill_times(self.opts.kills, self.duration):
            wait = at - self.elapsed()
            if wait > 0:
                await asyncio.sleep(wait)
            await self.kill(name)

    async def kill(self, name: str) -> None:
        await self.sample()  # charge the process for what it used until now
        pids = await asyncio.to_thread(self.stack.pids)
        old = pids.get(name, 0)
        record: dict[str, Any] = {"process": name, "at_s": round(self.elapsed(), 1), "pid": old}
        self.kills.append(record)
        if not old:
            record["error"] = "not running"
            self.log(f"[{self.elapsed():7.1f}s] kill {name}: not running!")
            return
        os.kill(old, signal.SIGKILL)
        t0 = time.monotonic()
        self.log(f"[{self.elapsed():7.1f}s] kill -9 {name} (pid {old})")
        new = 0
        while time.monotonic() - t0 < 180:
            await asyncio.sleep(0.25)
            with contextlib.suppress(OSError, xmlrpc.client.Error):
                new = (await asyncio.to_thread(self.stack.pids)).get(name, 0)
            if new and new != old:
                break
        record["new_pid"] = new
        record["restarted_s"] = round(time.monotonic() - t0, 1) if new and new != old else None
        # Ready = every /readyz answers 200 through HAProxy for READY_STREAK_S in a
        # row (HAProxy may notice that a process was gone only after it is back).
        streak: float | None = None
        while (now := time.monotonic()) - t0 < 300:
            if not await self.all_ready():
                streak = None
            elif streak is None:
                streak = now
            elif now - streak >= READY_STREAK_S:
                break
            await asyncio.sleep(0.5)
        record["ready_s"] = round(streak - t0, 1) if streak is not None else None
        self.log(
            f"[{self.elapsed():7.1f}s]   {name} back: pid {new} after {record['restarted_s']} s,"
            f" every /readyz through HAProxy after {record['ready_s']} s"
        )

    async def all_ready(self) -> bool:
        assert self.session is not None
        for path in CHECKS:
            try:
                async with self.session.get(
                    self.stack.cfg.url("ops") + path, timeout=aiohttp.ClientTimeout(total=3)
                ) as resp:
                    if resp.status != 200:
                        return False
            except (aiohttp.ClientError, TimeoutError, OSError):
                return False
        return True

    async def progress(self) -> None:
        led = self.ledger
        pending = sum(len(c.unaccepted) for c in self.clients)
        self.log(
            f"[{self.elapsed():7.1f}s] composed {len(led.composed)} accepted {len(led.accepted)}"
            f" delivered {len(led.delivered)} unaccepted {pending}"
            f" missing {len(led.accepted) - len(set(led.accepted) & set(led.delivered))}"
            f" dup {len(led.duplicates)} restored {sum(map(len, led.restored.values()))}"
            f" reconnects {self.reconnects}"
            f" resent {self.resent_accepted}+{self.resent_unaccepted}"
            f" load {os.getloadavg()[0]:.2f}"
        )
        now = time.monotonic()
        for c in self.clients:
            first = (
                min(self.ledger.composed[c.idx << 32 | n] for n in c.unaccepted)
                if c.unaccepted
                else None
            )
            if first is not None and now - first / 1e9 > 30:
                acc = c.account
                self.log(
                    f"  stuck client {c.idx}: {len(c.unaccepted)} unaccepted, oldest"
                    f" {now - first / 1e9:.0f} s; ready {c.ready.is_set()} ws {c.ws is not None}"
                    f" token age {now - acc.got_at:.0f} s, socket token current"
                    f" {c.socket_token == acc.token}; errors {dict(c.errors)}"
                )

    # The whole run ----------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        opts = self.opts
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=True)
        )
        try:
            return await self._run(opts)
        finally:
            for task in list(self.tasks):
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            await self.session.close()

    async def _run(self, opts: Options) -> dict[str, Any]:
        self.log(f"signing up {opts.clients} users through {self.stack.lb}")
        sem = asyncio.Semaphore(4)

        async def one(i: int) -> Account:
            async with sem:
                return await self.sign_up(i)

        accounts = await asyncio.gather(*(one(i) for i in range(opts.clients)))
        self.clients = [Client(self, i, acc) for i, acc in enumerate(accounts)]
        for a, b in zip(self.clients[::2], self.clients[1::2], strict=True):
            a.peer, b.peer = b, a
        for c in self.clients:
            c.task = asyncio.create_task(c.run())
        await asyncio.wait_for(asyncio.gather(*(c.ready.wait() for c in self.clients)), 120)
        if opts.idle_seconds > 0:
            # The stack's cost with every socket open and nothing sent.
            self.log(f"measuring the idle stack for {opts.idle_seconds:g} s")
            idle = CpuLedger(1)
            await self.sample(idle, -1)
            await asyncio.sleep(opts.idle_seconds)
            await self.sample(idle, 0)
            self.idle = {n: round(s / opts.idle_seconds, 4) for n, s in idle.by_window[0].items()}
        await self.sample()  # the baseline of every process's CPU
        self.start_ns = time.monotonic_ns()
        until = self.start_ns + int(self.duration * 1e9)
        self.log(f"sending {opts.rate}/s for {opts.minutes} min; kills: {', '.join(opts.kills)}")
        loops = [
            self.every(opts.sample_every, self.sample),
            self.every(1.0, self.retry_all),
            self.every(opts.ack_interval, self.ack_all),
            self.every(5.0, self.refresh_all),
            self.every(30.0, self.progress),
            self.kill_schedule(),
            *([self.force_resends()] if opts.resend_every > 0 and opts.resend_count > 0 else []),
        ]
        background = [asyncio.create_task(c) for c in loops]
        try:
            await self.pace(until)
            await self.sample()  # the last sample of the last window
            kill_task = background[5]
            if not kill_task.done():
                self.log("waiting for the last kill's recovery")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(kill_task), opts.drain_seconds)
            if len(background) > 6:
                background[6].cancel()  # no more forced reconnects
            await self.drain()
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
        report = summarize(
            self.ledger, self.cpu, start_ns=self.start_ns, window_s=self.window_s,
            windows=self.windows, kills=self.kills, idle=self.idle,
        )  # fmt: skip
        if report["totals"]["lost"] or report["totals"]["duplicates"]:
            report["forensics"] = await self.forensics(report)
        for c in self.clients:
            c.stopping = True
            await c.ack()
            await c._drop()
        for c in self.clients:
            if c.task is not None:
                c.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await c.task
        report["totals"].update(
            reconnects=self.reconnects, disconnects=self.disconnects,
            forced_reconnects=self.forced_reconnects, resent_accepted=self.resent_accepted,
            resent_unaccepted=self.resent_unaccepted, stored_receipts=self.stored,
            delivered_receipts=self.delivered_receipts, acks=self.acks,
            token_refreshes=self.refreshes, relogins=self.relogins,
        )  # fmt: skip
        report["events"] = dict(sorted(self.counters.items()))
        report["kills"] = self.kills
        report["loadavg"] = self.loadavg
        return report

    async def drain(self) -> None:
        """Everything composed is accepted, everything accepted arrives, a last sync."""
        opts, led = self.opts, self.ledger
        deadline = time.monotonic() + opts.drain_seconds
        self.log("draining: sending until everything is accepted")
        while any(c.unaccepted for c in self.clients) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.5)
        self.log("draining: waiting for every accepted message")
        while time.monotonic() < deadline:
            if all(k in led.delivered for k in led.accepted):
                break
            await asyncio.sleep(0.5)
        await self.progress()
        self.log("final sync of every inbox")
        for c in self.clients:
            c.final = True
            for _ in range(3):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(c.ready.wait(), 60)
                try:
                    await c.sync()
                    break
                except (OSError, TimeoutError, RuntimeError, aiohttp.ClientError):
                    await asyncio.sleep(1)
            c.final = False

    async def forensics(self, report: dict[str, Any]) -> dict[str, Any]:
        """For each lost or duplicated message: what delivery's store says about it."""
        from pymongo import AsyncMongoClient

        out: dict[str, Any] = {}
        mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            self.stack.cfg.url("mongo"), serverSelectionTimeoutMS=10_000
        )
        try:
            from services.delivery.store import dedup_key

            db = mongo["parley_delivery"]
            names = [n for n in await db.list_collection_names() if n.startswith("dedup_")]
            for kind in ("lost_keys", "duplicate_keys"):
                items = []
                for item in report[kind][:50]:
                    sender = self.clients[item["sender"]]
                    assert sender.peer is not None
                    inbox = e.inbox_id(sender.peer.account.user_id, DEVICE)
                    did = dedup_key(inbox, sender.account.user_id, str(item["n"]))
                    found = []
                    for name in names:
                        found += [d async for d in db[name].find({"_id": did})]
                    counter = await db["counters"].find_one({"_id": inbox})
                    items.append({
                        **item, "dedup": found, "counter": counter,
                        "composed_s": self._at(self.ledger.composed.get(_key(item))),
                        "accepted_s": self._at(self.ledger.accepted.get(_key(item))),
                        "recipient_acked": sender.peer.acked,
                        "recipient_max_seq": sender.peer.max_seq,
                    })  # fmt: skip
                out[kind] = items
        except Exception as exc:  # forensics must not hide the result
            out["error"] = repr(exc)
        finally:
            await mongo.close()
        return orjson.loads(orjson.dumps(out, default=str))  # type: ignore[no-any-return]

    def _at(self, ns: int | None) -> float | None:
        return None if ns is None else round((ns - self.start_ns) / 1e9, 3)


def _key(item: Mapping[str, int]) -> int:
    return item["sender"] << 32 | item["n"]


class HttpError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        err = body.get("error", body) if isinstance(body, dict) else body
        self.code = str(err.get("code") if isinstance(err, dict) else err)[:40]
        super().__init__(f"HTTP {status}: {body!r}"[:300])


def _loop_factory() -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - non-Linux platforms
        return None
    return uvloop.new_event_loop


def run(opts: Options, log: Callable[[str], None]) -> dict[str, Any]:
    tmp = None
    data_dir = opts.data_dir
    if data_dir is None:
        tmp = tempfile.mkdtemp(prefix="parley-soak-")
        data_dir = Path(tmp)
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    extra = {
        # The load generator signs every user up (and may log in again) from one address.
        "PARLEY_LIMIT_SIGNUP_IP": "100000/3600",
        "PARLEY_LIMIT_LOGIN_IP": "100000/300",
        "PARLEY_LIMIT_REFRESH_IP": "100000/60",
    }
    if opts.cheap_kdf:
        extra.update(PARLEY_ARGON2_TIME_COST="1", PARLEY_ARGON2_MEMORY_KIB="1024",
                     PARLEY_ARGON2_PARALLELISM="1")  # fmt: skip
    if opts.token_ttl is not None:
        extra["PARLEY_ACCESS_TOKEN_TTL_S"] = str(opts.token_ttl)
    stack = RunStack(data_dir, extra)
    keep = tmp is None
    started = datetime.now(UTC)
    log(f"starting make run's stack (scripts.run) in {data_dir}")
    stack.start()
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            report = runner.run(Soak(opts, stack, log).run())
    except BaseException:
        keep = True
        raise
    finally:
        log("stopping the stack")
        stack.stop()
        if not keep:
            shutil.rmtree(data_dir, ignore_errors=True)
        else:
            log(f"data and logs kept in {data_dir}")
    bad = report["totals"]["lost"] or report["totals"]["duplicates"]
    if bad and tmp is not None:
        log("something was lost or duplicated: keep the data dir for a look")
    report = {
        "command": "python -m loadtest.soak " + shlex.join(sys.argv[1:]),
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": _git_commit(),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
        **report,
    }
    return report


def _git_commit() -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                             capture_output=True, text=True, timeout=10, check=True)  # fmt: skip
        return out.stdout.strip()
    return None


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)

    def log(msg: str) -> None:
        print(f"{datetime.now(UTC):%H:%M:%S} {msg}", file=sys.stderr, flush=True)

    try:
        report = run(opts, log)
    except Exception as exc:
        log(f"soak failed: {exc!r}")
        raise SystemExit(2) from exc
    if opts.results is not None:
        opts.results.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    print(table(report))
    t = report["totals"]
    # A message still not accepted after the drain is a stall (a client that could
    # not send or sync for minutes), as much a failure as a loss.
    return 1 if t["lost"] or t["duplicates"] or t["never_accepted"] else 0


if __name__ == "__main__":
    sys.exit(main())
