"""Offline recipients: Parley's slow path, through MongoDB (issue #13).

``python -m loadtest.bench_offline [--pairs 50 --per-pair 400 --body-bytes 162] [--json]``

bench_messaging measures recipients that are online: their items live in Redis
for milliseconds and never reach MongoDB. Here the recipients are offline while
their messages are sent, so every item takes the slow path (docs/delivery.md,
"The hot path"): stored in Redis, moved to MongoDB by the persister once it has
waited ``PARLEY_HOT_PERSIST_AFTER_S`` (5 s), read back page by page by ``sync``,
and deleted from MongoDB by the acks.

It starts the embedded stack and the whole Parley system as bench_messaging does
(:class:`~loadtest.bench_messaging.ParleySystem`), signs up ``2 x --pairs`` users
(a sender and its recipient per pair), then:

1. store: only the senders connect (through HAProxy); each sends ``--per-pair``
   messages to its recipient, ``--window`` in flight (sent, not yet ``stored``),
   within the rate limit ``ready`` announces, until each is ``accepted`` and
   ``stored``. Then the senders disconnect;
2. persist: polls until every item is in MongoDB's ``inbox`` collection and the
   persister's index in Redis (``<prefix>:hotidx``) and the recipients' hot
   hashes are empty;
3. sync: every recipient connects at once and pages through its inbox with
   ``sync`` (``--page`` items, after the last page's ``last``), acknowledging
   each page (``ack`` with its ``last``) before asking for the next, as the SDK
   does, until ``more`` is false; then polls until MongoDB holds none of their
   items (the acks delete them).

Every recipient must get exactly its sender's accepted messages, each once, in
the order they were sent (the sender's index and the message number travel in
the body's header, loadtest/common.py). CPU is measured per process over each
phase (utime + stime, loadtest/common.py ``CpuMeter``) and divided by the items
the phase handled. docs/BENCHMARKS.md has the figures and the commands.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import os
import struct
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from loadtest.bench_messaging import (
    GcPauses,
    InboxSize,
    Options,
    ParleySystem,
    RedisCommands,
    bench_main,
    run_bench,
)
from loadtest.common import (
    HEADER,
    HEADER_CHARS,
    Account,
    Client,
    CpuMeter,
    LoadGenerator,
    PhaseResult,
    percentile,
)
from scripts.stack import Processes
from services.common.config import Settings
from services.common.inbox import hot_index, hot_key

_DEFAULT = {name: f.default for name, f in Settings.model_fields.items()}
CPU_KEYS = ("cpu_s", "cpu_cores", "cpu_us_per_msg", "wakeups_per_msg", "server_cpu_us_per_msg",
            "machine_cores_busy", "interrupt_cores", "unattributed_cores")  # fmt: skip


@dataclass(frozen=True)
class OfflineOptions:
    pairs: int = 50
    per_pair: int = 400
    body_bytes: int = 162
    window: int = 16
    sends_per_s: float = 1000.0
    send_burst: int = 1000
    page: int = 200
    # PARLEY_HOT_PERSIST_AFTER_S for the run (None: the environment's, else 5 s).
    persist_after_s: float | None = None
    # Longest wait for any one condition (every item stored, moved, acknowledged).
    timeout_s: float = 300.0
    poll_s: float = 0.1
    data_dir: Path | None = None

    @property
    def messages(self) -> int:
        return self.pairs * self.per_pair

    def persist_delay(self) -> float:
        if self.persist_after_s is not None:
            return self.persist_after_s
        return float(os.environ.get("PARLEY_HOT_PERSIST_AFTER_S", _DEFAULT["hot_persist_after_s"]))

    def server_env(self) -> dict[str, str]:
        """What the run changes besides bench_messaging's settings: the persist delay
        if asked, and the inbox caps when one sender's messages would pass them."""
        env = {}
        if self.persist_after_s is not None:
            env["PARLEY_HOT_PERSIST_AFTER_S"] = str(self.persist_after_s)
        # Headroom: the gateway's counts can overshoot by what is in flight.
        need = self.per_pair + self.window + 100
        if need > _DEFAULT["inbox_max_pending_per_sender"]:
            env["PARLEY_INBOX_MAX_PENDING_PER_SENDER"] = str(need)
        if need > _DEFAULT["inbox_max_pending"]:
            env["PARLEY_INBOX_MAX_PENDING"] = str(need)
        return env


class OfflineSystem(ParleySystem):
    """:class:`ParleySystem` with the run's extra settings (:meth:`OfflineOptions.server_env`)."""

    def __init__(self, data_dir: Path, opts: OfflineOptions) -> None:
        super().__init__(data_dir, Options(
            clients=2 * opts.pairs, body_bytes=opts.body_bytes, sends_per_s=opts.sends_per_s,
            send_burst=opts.send_burst,
        ))  # fmt: skip
        self.cfg = self.cfg.with_env(**opts.server_env())
        self.procs = Processes(self.cfg)


# Clients ------------------------------------------------------------------------------
class OfflineClient(Client):
    """A sender (even index) or a recipient (odd index) of one pair.

    A sender's window is freed by ``stored`` (its recipient is offline: nothing is
    pushed); a recipient records what it receives, in order, and pages with ``sync``."""

    def __init__(self, gen: LoadGenerator, idx: int, account: Account, url: str) -> None:
        super().__init__(gen, idx, account, url)
        self.stored_ids: set[int] = set()
        self.sent_ns: dict[int, int] = {}
        self.stored_ms: list[float] = []
        # Recipient: (sender index, message number) of each message, as they came.
        self.received: list[tuple[int, int]] = []
        self.seqs: list[int] = []
        self.foreign = 0
        self.pages: list[tuple[float, int]] = []  # (ms from sync to synced, messages)
        self.sync_errors = 0

    @property
    def inbox(self) -> str:
        return f"{self.account.user_id}.{self.account.device_id}"

    # Sender ---------------------------------------------------------------------------
    async def send_all(self, count: int, window: int) -> None:
        """Send ``count`` messages, at most ``window`` of them not yet stored or refused,
        within the rate limit the server announced."""
        while self.n < count:
            if self.outstanding >= window:
                self.room.clear()
                await self.room.wait()
                continue
            if self.bucket is not None and (wait := self.bucket.delay()):
                await asyncio.sleep(wait)
                continue
            self.sent_ns[self.n + 1] = time.monotonic_ns()
            await self.send_message()

    def _on_stored(self, frame: dict[str, Any]) -> None:
        ident = frame.get("id")
        if not (isinstance(ident, str) and ident.isdigit()):
            return
        n = int(ident)
        if n in self.stored_ids:  # receipts are at least once
            return
        self.stored_ids.add(n)
        self.gen.result.stored += 1
        if (sent := self.sent_ns.get(n)) is not None:
            self.stored_ms.append((time.monotonic_ns() - sent) / 1e6)
        self.outstanding -= 1
        self.room.set()
        self.gen.changed.set()

    def _on_accepted(self, frame: dict[str, Any]) -> None:
        super()._on_accepted(frame)
        self.gen.changed.set()

    def _on_error(self, frame: dict[str, Any]) -> None:
        super()._on_error(frame)
        ident = frame.get("id")
        if isinstance(ident, str) and ident.startswith("s") and self.syncing is not None:
            self.sync_errors += 1
            if not self.syncing.done():
                self.syncing.set_result({"error": frame})
        self.gen.changed.set()

    # Recipient ------------------------------------------------------------------------
    def _on_message(self, frame: dict[str, Any]) -> None:
        seq = frame.get("seq")
        if isinstance(seq, int):
            self._saw_seq(seq)
            self.seqs.append(seq)
        body = frame.get("body") or ""
        try:
            phase, _, sender, n, _sent = HEADER.unpack(
                base64.urlsafe_b64decode(body[:HEADER_CHARS])
            )
        except (ValueError, struct.error):
            self.foreign += 1
            return
        if phase != self.gen.phase_id:
            self.foreign += 1
            return
        self.received.append((sender, n))

    async def sync_inbox(self, limit: int, timeout: float) -> None:
        """Page through the inbox from the start; acknowledge each page before the next."""
        after = page = 0
        loop = asyncio.get_running_loop()
        while True:
            self.syncing = loop.create_future()
            got = len(self.received) + self.foreign
            t0 = time.monotonic()
            await self.send_frame({"op": "sync", "id": f"s{page}", "after": after, "limit": limit})
            done = await asyncio.wait_for(self.syncing, timeout)
            page += 1
            if "error" in done:  # e.g. service_unavailable: ask again, as the SDK does
                await asyncio.sleep(0.2)
                continue
            self.pages.append(
                ((time.monotonic() - t0) * 1000, len(self.received) + self.foreign - got)
            )
            last = int(done["last"])
            if last > after:
                await self.ack(last)
                after = last
            if not done["more"]:
                return


# Phases -------------------------------------------------------------------------------
@dataclass
class Bench:
    opts: OfflineOptions
    parley: OfflineSystem
    gen: LoadGenerator
    pids: dict[str, int]
    redis: RedisCommands
    inbox: InboxSize
    gc: GcPauses
    log: Any
    senders: list[OfflineClient] = field(default_factory=list)
    recipients: list[OfflineClient] = field(default_factory=list)
    stored_at: float = 0.0  # when the store phase ended (time.time())

    def __post_init__(self) -> None:
        clients = [c for c in self.gen.clients if isinstance(c, OfflineClient)]
        self.senders, self.recipients = clients[::2], clients[1::2]

    @property
    def index(self) -> str:
        return hot_index(self.parley.prefix)

    async def _probes_start(self) -> CpuMeter:
        await self.redis.start()
        await self.gc.start()
        meter = CpuMeter(self.pids)
        meter.start()
        return meter

    async def _probes_stop(self, meter: CpuMeter, seconds: float, items: int) -> dict[str, Any]:
        meter.stop()
        cpu = PhaseResult(
            "cpu", seconds=seconds, window_received=items, cpu_s=meter.used,
            wakeups=meter.wakeups, machine_cpu_s=meter.machine, interrupt_cpu_s=meter.interrupts,
        ).summary()  # fmt: skip
        out = {k: cpu[k] for k in CPU_KEYS}
        out.update(await self.redis.stop())
        out.update(await self.gc.stop())
        return out

    async def _wait(self, done: Any, what: str) -> None:
        """Wait (woken by the clients' frames) until ``done()``; fail at the timeout."""
        deadline = time.monotonic() + self.opts.timeout_s
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{what}: not done after {self.opts.timeout_s}s")
            self.gen.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.gen.changed.wait(), min(left, 1.0))

    async def store(self) -> dict[str, Any]:
        opts, gen = self.opts, self.gen
        res = gen.result = PhaseResult("store")
        gen.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=True)
        )
        sem = asyncio.Semaphore(50)

        async def connect(c: OfflineClient) -> None:
            async with sem:
                await c.connect(gen.session)  # type: ignore[arg-type]

        await asyncio.gather(*(connect(c) for c in self.senders))
        where = Counter(c.gateway or "?" for c in self.senders)
        self.log(f"  {len(self.senders)} senders connected: {dict(where)}")
        meter = await self._probes_start()
        t0 = time.monotonic()
        tasks = [asyncio.create_task(c.send_all(opts.per_pair, opts.window)) for c in self.senders]

        def settled() -> bool:
            refused = sum(res.errors.values())
            return (
                all(t.done() for t in tasks)
                and res.accepted + refused >= res.sent
                and res.stored >= res.accepted
            )

        try:
            await self._wait(settled, "store phase")
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        seconds = time.monotonic() - t0
        self.stored_at = time.time()
        out = {
            "seconds": round(seconds, 2),
            "sent": res.sent,
            "accepted": res.accepted,
            "stored": res.stored,
            "stored_per_s": round(res.stored / seconds, 1) if seconds else None,
            "errors": dict(res.errors),
            "send_to_stored_ms": _latency([ms for c in self.senders for ms in c.stored_ms]),
            **await self._probes_stop(meter, seconds, res.stored),
        }
        # The senders are done: they go, before the recipients come.
        await asyncio.gather(*(c.close() for c in self.senders), return_exceptions=True)
        return out

    async def _redis_left(self) -> tuple[int, int]:
        """Items waiting in Redis: entries in the persister's index, and in the
        recipients' hot hashes."""
        redis = self.redis.redis
        async with redis.pipeline(transaction=False) as pipe:
            pipe.zcard(self.index)
            for c in self.recipients:
                pipe.hlen(hot_key(self.parley.prefix, c.inbox))
            counts = await pipe.execute()
        return int(counts[0]), sum(int(n) for n in counts[1:])

    async def _mongo_count(self) -> int:
        inboxes = [c.inbox for c in self.recipients]
        return int(await self.inbox.inbox.count_documents({"inbox": {"$in": inboxes}}))

    async def persist(self, expected: int, arrivals_per_s: float) -> dict[str, Any]:
        """Wait until every item is in MongoDB and none in Redis; time the move."""
        opts, redis = self.opts, self.redis.redis
        delay = opts.persist_delay()
        t_end = self.stored_at
        # The index's entries are scored by the time delivery stored each item: an
        # item is due for the move ``delay`` seconds after its score.
        entries: list[Any] = await redis.zrange(self.index, 0, -1, withscores=True)
        left = len(entries)
        scores = [float(score) for _, score in entries]
        meter = await self._probes_start()
        t0 = time.monotonic()
        polls = max_due = 0
        mongo = -1
        deadline = t0 + opts.timeout_s
        while True:
            async with redis.pipeline(transaction=False) as pipe:
                pipe.zcard(self.index)
                pipe.zcount(self.index, "-inf", time.time() - delay)
                waiting, due = await pipe.execute()
            polls += 1
            max_due = max(max_due, int(due))
            if not waiting:
                mongo = await self._mongo_count()
                if mongo >= expected:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"persist phase: {waiting} items in the index, {mongo} in MongoDB "
                    f"(of {expected}) after {opts.timeout_s}s"
                )
            await asyncio.sleep(opts.poll_s)
        t_done_wall = time.time()
        seconds = time.monotonic() - t0
        probes = await self._probes_stop(meter, seconds, left)
        # Our own polls are not the servers' commands.
        cmds = probes.get("redis_commands", {})
        for name in ("zcard", "zcount"):
            if name in cmds:
                cmds[name] -= polls
                if cmds[name] <= 0:
                    del cmds[name]
        hot_index_left, hot_items_left = await self._redis_left()
        out: dict[str, Any] = {
            "persist_after_s": delay,
            "moved_during_store": expected - left,
            "moved_after_store": left,
            "seconds_after_store": round(seconds, 2),
            "items_per_s": round(left / seconds, 1) if left and seconds else None,
        }
        if scores:
            first_due = max(t_end, min(scores) + delay)
            out["first_due_to_done_s"] = round(t_done_wall - first_due, 2)
            out["last_due_to_done_s"] = round(t_done_wall - (max(scores) + delay), 2)
            span = t_done_wall - first_due
            out["items_per_s_from_first_due"] = round(left / span, 1) if span > 0 else None
            # The persister was behind if it was still moving more than two passes
            # after the last item came due and its backlog due outgrew what arrives
            # in two passes: the rate above is then its own. Otherwise it moved the
            # items as they came due, and the rate is theirs (a floor of its own).
            two = 2 * _DEFAULT["hot_persist_interval_s"]
            tail = t_done_wall - (max(scores) + delay)
            behind = tail > two and max_due > arrivals_per_s * two
            out["move_rate_limited_by"] = "persister" if behind else "items coming due"
        out["max_due_backlog"] = max_due
        out["inbox_documents"] = mongo
        out["hot_index_left"] = hot_index_left
        out["hot_items_left"] = hot_items_left
        out.update(probes)
        return out

    async def sync(self, expected: int) -> dict[str, Any]:
        opts, gen = self.opts, self.gen
        gen.result = PhaseResult("sync")
        assert gen.session is not None
        meter = await self._probes_start()
        t0 = time.monotonic()
        await asyncio.gather(*(c.connect(gen.session) for c in self.recipients))
        connected = time.monotonic() - t0
        self.log(f"  {len(self.recipients)} recipients connected in {connected:.2f}s")
        await asyncio.gather(*(c.sync_inbox(opts.page, opts.timeout_s) for c in self.recipients))
        seconds = time.monotonic() - t0
        synced = sum(len(c.received) for c in self.recipients)
        # The last page's ack: wait until MongoDB holds none of these items.
        deadline = time.monotonic() + opts.timeout_s
        while True:
            left = await self._mongo_count()
            if not left or time.monotonic() >= deadline:
                break
            await asyncio.sleep(opts.poll_s)
        acked_s = time.monotonic() - t0 - seconds
        cpu_seconds = time.monotonic() - t0
        pages = sorted(ms for c in self.recipients for ms, _ in c.pages)
        sizes = [n for c in self.recipients for _, n in c.pages]
        out = {
            "recipients": len(self.recipients),
            "connect_s": round(connected, 3),
            "seconds": round(seconds, 2),
            "synced": synced,
            "synced_per_s": round(synced / seconds, 1) if seconds else None,
            "pages": len(pages),
            "mean_page_items": round(sum(sizes) / len(sizes), 1) if sizes else None,
            "page_ms": _latency(pages),
            "acks": gen.result.acks,
            "sync_errors": sum(c.sync_errors for c in self.recipients),
            "errors": dict(gen.result.errors),
            "last_ack_to_inbox_empty_s": round(acked_s, 2),
            "inbox_documents_after_acks": left,
            "cpu_window_s": round(cpu_seconds, 2),
            **await self._probes_stop(meter, cpu_seconds, synced),
        }
        hot_index_left, hot_items_left = await self._redis_left()
        out["hot_items_left"] = hot_items_left + hot_index_left
        return out

    def check(self) -> dict[str, Any]:
        """Every recipient holds its sender's accepted messages, once each, in order."""
        lost = dups = disorder = unaccepted = foreign = seq_disorder = 0
        for s, r in zip(self.senders, self.recipients, strict=True):
            mine = [n for sender, n in r.received if sender == s.idx]
            foreign += len(r.received) - len(mine) + r.foreign
            want = s.accepted
            got = set(mine)
            lost += len(want - got)
            dups += len(mine) - len(got)
            unaccepted += len(got - want)
            disorder += sum(1 for a, b in itertools.pairwise(mine) if b <= a)
            seq_disorder += sum(1 for a, b in itertools.pairwise(r.seqs) if b <= a)
        return {
            "expected": sum(len(s.accepted) for s in self.senders),
            "lost": lost,
            "duplicates": dups,
            "out_of_order": disorder,
            "seq_out_of_order": seq_disorder,
            "unaccepted_received": unaccepted,
            "foreign": foreign,
            "stray_frames": self.gen.stray,
            "disconnects": self.gen.disconnects,
        }


def _latency(values: list[float]) -> dict[str, Any]:
    v = sorted(values)

    def r(x: float | None) -> float | None:
        return None if x is None else round(x, 2)

    return {"samples": len(v), "p50": r(percentile(v, 50)), "p99": r(percentile(v, 99)),
            "max": r(v[-1] if v else None)}  # fmt: skip


async def bench(opts: OfflineOptions, data_dir: Path, log: Any) -> dict[str, Any]:
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()},
        "server_env": opts.server_env(),
    }
    parley = OfflineSystem(data_dir / "parley", opts)
    log(f"starting the embedded stack and Parley in {data_dir}")
    await asyncio.to_thread(parley.start)
    try:
        async with aiohttp.ClientSession() as session:
            await parley.wait_ready(session)
            t0 = time.monotonic()
            accounts = await parley.sign_up(session, 2 * opts.pairs)
            log(f"signed up {len(accounts)} users in {time.monotonic() - t0:.1f}s")
            gc_urls = {n: f"{parley.cfg.url(n)}/{n.rstrip('12')}/metrics"
                       for n in ("delivery", "gateway1", "gateway2")}  # fmt: skip
            gen = LoadGenerator(accounts, [parley.ws_url], body_bytes=opts.body_bytes,
                                durable=True, client_class=OfflineClient)  # fmt: skip
            b = Bench(
                opts, parley, gen, {**parley.pids(), "loadgen": os.getpid()},
                RedisCommands(parley.cfg.url("redis")),
                InboxSize(parley.cfg.url("mongo"), f"{parley.prefix}_delivery"),
                GcPauses(session, gc_urls), log,
            )  # fmt: skip
            try:
                log(f"store: {opts.pairs} senders x {opts.per_pair} messages, "
                    f"window {opts.window} (recipients offline)")  # fmt: skip
                store = results["store"] = await b.store()
                log(f"  {store['stored']} stored in {store['seconds']}s "
                    f"({store['stored_per_s']} msgs/s), errors {store['errors'] or 0}")  # fmt: skip
                log(f"persist: until MongoDB holds all {store['accepted']} "
                    f"(persist delay {opts.persist_delay()}s)")  # fmt: skip
                rate = store["stored_per_s"] or 0.0
                persist = results["persist"] = await b.persist(store["accepted"], rate)
                log(f"  {persist['moved_after_store']} moved in "
                    f"{persist['seconds_after_store']}s after the store phase "
                    f"({persist['moved_during_store']} during it)")  # fmt: skip
                log(f"sync: {opts.pairs} recipients connect and page ({opts.page} a page)")
                sync = results["sync"] = await b.sync(store["accepted"])
                log(f"  {sync['synced']} synced in {sync['seconds']}s "
                    f"({sync['synced_per_s']} msgs/s), page p50 {sync['page_ms']['p50']} ms "
                    f"p99 {sync['page_ms']['p99']} ms")  # fmt: skip
                checks = results["checks"] = b.check()
                log(f"  lost {checks['lost']}, duplicates {checks['duplicates']}, "
                    f"out of order {checks['out_of_order']}")  # fmt: skip
            finally:
                await gen.close()
                await b.redis.close()
                await b.inbox.close()
        results["ok"] = ok(results)
        return results
    finally:
        await asyncio.to_thread(parley.stop)


def ok(results: dict[str, Any]) -> bool:
    """Nothing lost, duplicated or out of order; every item went through MongoDB
    and is gone from it once acknowledged."""
    c, p, s = results["checks"], results["persist"], results["sync"]
    expected = results["store"]["accepted"]
    return bool(
        c["lost"] == c["duplicates"] == c["out_of_order"] == c["unaccepted_received"] == 0
        and p["inbox_documents"] == expected
        and s["synced"] == expected
        and s["inbox_documents_after_acks"] == 0
    )


# Output -------------------------------------------------------------------------------
def table(results: dict[str, Any]) -> str:
    o, st, p, sy, c = (results[k] for k in ("options", "store", "persist", "sync", "checks"))
    rows: list[tuple[str, str]] = []

    def row(label: str, value: Any) -> None:
        rows.append((label, "-" if value is None else str(value)))

    def cpu(phase: dict[str, Any], per: str) -> None:
        row(f"  CPU µs per {per} (cores)", "")
        for proc, us in phase["cpu_us_per_msg"].items():
            row(f"    {proc}", f"{us} ({phase['cpu_cores'][proc]:.2f})")
        row("    all servers (not loadgen)", phase["server_cpu_us_per_msg"])
        row("  machine busy cores", phase["machine_cores_busy"])
        calls = phase.get("redis_commands") or {}
        n = {"stored msg": st["stored"], "moved item": p["moved_after_store"],
             "synced msg": sy["synced"]}[per]  # fmt: skip
        if calls and n:
            top = " ".join(f"{k}:{v / n:.2f}" for k, v in list(calls.items())[:6])
            row(f"  Redis commands per {per}", f"{sum(calls.values()) / n:.2f} ({top})")

    row("messages (pairs x per pair)", f"{o['pairs'] * o['per_pair']} "
        f"({o['pairs']} x {o['per_pair']}, {o['body_bytes']} B)")  # fmt: skip
    row("store (recipients offline):", "")
    row("  seconds", st["seconds"])
    row("  stored msgs/s", st["stored_per_s"])
    row("  sent / accepted / stored", f"{st['sent']} / {st['accepted']} / {st['stored']}")
    row("  send → stored p50 / p99 ms", _pair(st["send_to_stored_ms"]))
    row("  errors", ",".join(f"{k}:{v}" for k, v in st["errors"].items()) or "0")
    cpu(st, "stored msg")
    row(f"persist (delay {p['persist_after_s']} s):", "")
    row("  moved during / after the store phase",
        f"{p['moved_during_store']} / {p['moved_after_store']}")  # fmt: skip
    row("  seconds after the store phase (delay incl.)", p["seconds_after_store"])
    row("  items/s after the store phase (delay incl.)", p["items_per_s"])
    row("  first item due → all moved s", p.get("first_due_to_done_s"))
    row("  items/s from the first due (delay excl.)", p.get("items_per_s_from_first_due"))
    row("  last item due → all moved s", p.get("last_due_to_done_s"))
    row("  move rate limited by", p.get("move_rate_limited_by"))
    row("  largest backlog due, not yet moved", p["max_due_backlog"])
    row("  inbox documents / left in Redis",
        f"{p['inbox_documents']} / {p['hot_index_left'] + p['hot_items_left']}")  # fmt: skip
    cpu(p, "moved item")
    row("sync (all recipients at once):", "")
    row("  connect s", sy["connect_s"])
    row("  seconds (connect → last page)", sy["seconds"])
    row("  synced msgs/s", sy["synced_per_s"])
    row("  pages / mean items", f"{sy['pages']} / {sy['mean_page_items']}")
    row("  page p50 / p99 / max ms", f"{_pair(sy['page_ms'])} / {sy['page_ms']['max']}")
    row("  acks / errors", f"{sy['acks']} / "
        + (",".join(f"{k}:{v}" for k, v in sy["errors"].items()) or "0"))  # fmt: skip
    row("  last ack → MongoDB empty s", sy["last_ack_to_inbox_empty_s"])
    row("  inbox documents after the acks", sy["inbox_documents_after_acks"])
    cpu(sy, "synced msg")
    row("lost / duplicates / out of order", f"{c['lost']} / {c['duplicates']} / "
        f"{c['out_of_order']}")  # fmt: skip
    row("ok", results["ok"])
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label.ljust(width)}  {v}".rstrip() for label, v in rows)


def _pair(lat: dict[str, Any]) -> str:
    return f"{lat['p50']} / {lat['p99']}"


# CLI ----------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> tuple[OfflineOptions, bool, bool]:
    d = OfflineOptions()
    p = argparse.ArgumentParser(description="Parley offline-recipient benchmark (MongoDB path)")
    p.add_argument("--pairs", type=int, default=d.pairs, help="senders (each with a recipient)")
    p.add_argument("--per-pair", type=int, default=d.per_pair, help="messages per sender")
    p.add_argument("--body-bytes", type=int, default=d.body_bytes, help="ciphertext bytes")
    p.add_argument("--window", type=int, default=d.window,
                   help="messages in flight per sender (sent, not yet stored)")  # fmt: skip
    p.add_argument("--sends-per-s", type=float, default=d.sends_per_s,
                   help="gateway per-connection rate limit for the run")  # fmt: skip
    p.add_argument("--send-burst", type=int, default=d.send_burst)
    p.add_argument("--page", type=int, default=d.page, help="sync limit (server caps at 200)")
    p.add_argument("--persist-after-s", type=float,
                   help="PARLEY_HOT_PERSIST_AFTER_S for the run (default: 5)")  # fmt: skip
    p.add_argument("--timeout", type=float, default=d.timeout_s,
                   help="longest wait for each phase's condition, seconds")  # fmt: skip
    p.add_argument("--data-dir", type=Path, help="keep logs and data here (default: a temp dir)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    a = p.parse_args(argv)
    if a.pairs < 1 or a.per_pair < 1:
        p.error("--pairs and --per-pair must be at least 1")
    opts = OfflineOptions(
        pairs=a.pairs, per_pair=a.per_pair, body_bytes=a.body_bytes, window=a.window,
        sends_per_s=a.sends_per_s, send_burst=a.send_burst, page=a.page,
        persist_after_s=a.persist_after_s, timeout_s=a.timeout, data_dir=a.data_dir,
    )  # fmt: skip
    return opts, a.json, a.quiet


def run(opts: OfflineOptions, log: Any = None) -> dict[str, Any]:
    """Run the benchmark (in a fresh event loop) and return its results."""
    return run_bench(bench, opts, opts.data_dir, "parley-bench-offline-", log)


def main(argv: list[str] | None = None) -> None:
    bench_main(parse_args, run, table, argv, failed=lambda results: not results["ok"])


if __name__ == "__main__":
    main()
