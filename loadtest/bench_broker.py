"""Embedded Kafka brokers compared: ours (``embedded.kafka``) against Tansu's memory engine.

``python -m loadtest.bench_broker [--records 60000] [--seconds 20] [--rates 300,2000]
[--minutes 0] [--long-rate 300] [--brokers ours,tansu] [--json]``

Each broker is started on a free loopback port (ours with a fresh data
directory and its defaults; Tansu as ``scripts/stack.py`` used to start it:
``tansu broker --storage-engine memory://tansu/``) and given the same
workload:

- an aiokafka producer as the services configure it (``acks=all``,
  ``linger_ms=1``, idempotence off), records of ``--value-bytes`` (400) keyed
  over ``--keys`` (10,000) keys, into a topic of ``--partitions`` (8);
- one consumer group of one consumer reading it as delivery does
  (``getmany``, a commit after every batch, ``fetch_max_wait_ms`` 20 as
  ``PARLEY_KAFKA_FETCH_MAX_WAIT_MS``).

Both brokers run side by side, each with its own producer and consumer. The
short phases load one broker at a time (ours, then Tansu, phase by phase, so
that both see the same machine); the long run loads both at once, over the
same minutes:

1. paced: ``--rates`` msgs/s for ``--seconds`` each: produce latency (send →
   acknowledgement, client side) p50/p99/max and produce → consume p50/p99;
2. throughput: ``--records`` produced as fast as the producer goes (up to
   10,000 unacknowledged), from the first send to the last record consumed
   (``--records 0`` skips it);
3. long (``--minutes`` > 0): ``--long-rate`` msgs/s on each broker for that
   many minutes, with CPU µs per message, resident memory and (ours) disk
   per minute: whether a broker's cost stays flat as its log grows.

CPU is the broker process's user+system time from /proc over each phase,
divided by the records produced in it. docs/BENCHMARKS.md ("Embedded Kafka
broker") has the figures and the commands.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from loadtest.common import cpu_seconds, percentile
from scripts.stack import ROOT, _free_ports, tansu_binary, wait_port

TOPIC = "bench"
GROUP = "bench-group"


@dataclass(frozen=True)
class Options:
    records: int = 60_000
    seconds: float = 20.0
    rates: tuple[int, ...] = (300, 2000)
    minutes: float = 0.0
    long_rate: int = 300
    partitions: int = 8
    keys: int = 10_000
    value_bytes: int = 400
    brokers: tuple[str, ...] = ("ours", "tansu")
    fetch_max_wait_ms: int = 20


# Brokers ----------------------------------------------------------------------------
class BrokerProcess:
    def __init__(self, kind: str, data_dir: Path) -> None:
        self.kind = kind
        self.port = _free_ports(1)[0]
        self.data_dir = data_dir / kind
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        if self.kind == "ours":
            argv = [
                sys.executable,
                "-m",
                "embedded.kafka",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--data-dir",
                str(self.data_dir),
            ]
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
        else:
            url = f"tcp://127.0.0.1:{self.port}"
            argv = [
                tansu_binary(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ]
            env = {**os.environ, "RUST_LOG": "warn"}
        self.data_dir.mkdir(parents=True, exist_ok=True)
        out = open(self.data_dir.parent / f"{self.kind}.out", "ab")
        self.proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=out, stderr=out)
        out.close()
        wait_port("127.0.0.1", self.port, timeout=30)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def rss_mb(self) -> float:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
        return 0.0

    def disk_mb(self) -> float | None:
        if self.kind != "ours":
            return None
        total = sum(p.stat().st_size for p in self.data_dir.rglob("*") if p.is_file())
        return round(total / 1e6, 1)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


# Workload ---------------------------------------------------------------------------
@dataclass
class Phase:
    name: str
    target_rate: float | None = None
    seconds: float = 0.0
    produced: int = 0
    consumed: int = 0
    broker_cpu_s: float = 0.0
    loadgen_cpu_s: float = 0.0
    produce_ms: list[float] = field(default_factory=list, repr=False)
    end_to_end_ms: list[float] = field(default_factory=list, repr=False)
    errors: int = 0

    def summary(self) -> dict[str, Any]:
        lat, e2e = sorted(self.produce_ms), sorted(self.end_to_end_ms)

        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 2)

        per_msg = self.produced or None
        return {
            "target_rate": self.target_rate,
            "seconds": round(self.seconds, 2),
            "produced": self.produced,
            "consumed": self.consumed,
            "msgs_per_s": round(self.produced / self.seconds, 1) if self.seconds else None,
            "produce_ms": {
                "p50": r(percentile(lat, 50)),
                "p99": r(percentile(lat, 99)),
                "max": r(lat[-1] if lat else None),
            },
            "end_to_end_ms": {"p50": r(percentile(e2e, 50)), "p99": r(percentile(e2e, 99))},
            "broker_cores": round(self.broker_cpu_s / self.seconds, 3) if self.seconds else None,
            "broker_cpu_us_per_msg": (
                round(self.broker_cpu_s * 1e6 / per_msg, 1) if per_msg else None
            ),
            "loadgen_cpu_us_per_msg": (
                round(self.loadgen_cpu_s * 1e6 / per_msg, 1) if per_msg else None
            ),
            "errors": self.errors,
        }


def consumer_main(bootstrap: str, fetch_max_wait_ms: int, conn: Connection, consumed: Any) -> None:
    """The consumer group member, in a process of its own so that its work does not
    delay the producer's (and so its latencies): it reads as delivery does (getmany,
    a commit after every batch) and keeps each record's produce → consume time."""
    import uvloop

    async def main() -> None:
        consumer = AIOKafkaConsumer(
            TOPIC,
            bootstrap_servers=bootstrap,
            group_id=GROUP,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=6000,
            fetch_max_wait_ms=fetch_max_wait_ms,
            max_poll_records=2000,
        )
        await consumer.start()
        e2e: list[float] = []
        try:
            while True:
                if conn.poll():
                    if conn.recv() == "stop":
                        return
                    conn.send(e2e)
                    e2e = []
                batch = await consumer.getmany(timeout_ms=100)
                now = time.monotonic_ns()
                n = 0
                for records in batch.values():
                    n += len(records)
                    for r in records:
                        e2e.append((now - int(r.value[:16], 16)) / 1e6)
                if n:
                    with consumed.get_lock():
                        consumed.value += n
                    await consumer.commit()
        finally:
            await consumer.stop()

    uvloop.run(main())


class Workload:
    """One producer (here) and one consumer group member (its own process) on one broker."""

    def __init__(self, broker: BrokerProcess, opts: Options) -> None:
        self.broker = broker
        self.opts = opts
        rng = random.Random(42)
        self.keys = [b"user-%06d" % rng.randrange(10**6) for _ in range(opts.keys)]
        self.padding = bytes(rng.randrange(256) for _ in range(opts.value_bytes - 16))
        self.producer: AIOKafkaProducer | None = None
        ctx = multiprocessing.get_context("spawn")
        self.consumed = ctx.Value("q", 0)
        self.conn, child = ctx.Pipe()
        self.child = ctx.Process(
            target=consumer_main,
            args=(broker.bootstrap, opts.fetch_max_wait_ms, child, self.consumed),
            daemon=True,
        )
        self.phase = Phase("idle")
        self.seq = 0

    @property
    def consumed_total(self) -> int:
        return int(self.consumed.value)

    async def start(self) -> None:
        bs = self.broker.bootstrap
        admin = AIOKafkaAdminClient(bootstrap_servers=bs)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(TOPIC, self.opts.partitions, 1)])
        finally:
            await admin.close()
        self.producer = AIOKafkaProducer(
            bootstrap_servers=bs, acks="all", linger_ms=1, enable_idempotence=False
        )
        await self.producer.start()
        self.child.start()
        # Warm: one record through, so the group is joined before anything is measured.
        await self.producer.send_and_wait(TOPIC, self._value(), key=self.keys[0])
        await self.wait_consumed(1, 60)
        self._latencies()

    async def stop(self) -> None:
        if self.child.is_alive():
            self.conn.send("stop")
            await asyncio.to_thread(self.child.join, 30)
            if self.child.is_alive():
                self.child.kill()
        if self.producer is not None:
            await self.producer.stop()

    def _value(self) -> bytes:
        self.seq += 1
        return b"%016x" % time.monotonic_ns() + self.padding

    def _latencies(self) -> list[float]:
        self.conn.send("report")
        return list(self.conn.recv())

    async def wait_consumed(self, total: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.consumed_total < total:
            if time.monotonic() > deadline:
                raise TimeoutError(f"consumed {self.consumed_total} of {total}")
            await asyncio.sleep(0.01)

    async def _produce_one(self) -> asyncio.Future[Any]:
        assert self.producer is not None
        phase = self.phase
        sent = time.monotonic()
        fut = await self.producer.send(TOPIC, self._value(), key=random.choice(self.keys))
        phase.produced += 1

        def done(f: asyncio.Future[Any]) -> None:
            if f.exception() is not None:
                phase.errors += 1
            else:
                phase.produce_ms.append((time.monotonic() - sent) * 1000)

        fut.add_done_callback(done)
        return fut  # type: ignore[no-any-return]

    def _cpu(self) -> tuple[float, float, float, int]:
        gen = cpu_seconds(os.getpid()) + cpu_seconds(self.child.pid or 0)
        return time.monotonic(), self.broker.cpu(), gen, self.consumed_total

    def _begin(self, phase: Phase) -> tuple[float, float, float, int]:
        self.phase = phase
        self._latencies()  # drop what came before
        return self._cpu()

    async def _end(self, start: tuple[float, float, float, int]) -> None:
        # Measure the window while it is open, then wait for the consumer to catch up.
        t1, broker1, gen1, _ = self._cpu()
        t0, broker0, gen0, consumed0 = start
        phase = self.phase
        phase.seconds = t1 - t0
        phase.broker_cpu_s = broker1 - broker0
        phase.loadgen_cpu_s = gen1 - gen0
        await self.wait_consumed(self.seq, 300)
        phase.consumed = self.consumed_total - consumed0
        phase.end_to_end_ms = self._latencies()

    async def throughput(self, records: int) -> Phase:
        phase = Phase("throughput")
        start = self._begin(phase)
        window: list[asyncio.Future[Any]] = []
        for _ in range(records):
            window.append(await self._produce_one())
            if len(window) >= 10_000:
                await asyncio.gather(*window)
                window.clear()
        await asyncio.gather(*window)
        await self.wait_consumed(self.seq, 300)  # produce → consume: all of it is read
        await self._end(start)
        return phase

    async def paced(
        self,
        rate: float,
        seconds: float,
        name: str = "paced",
        per_minute: Callable[[Phase, int], None] | None = None,
    ) -> Phase:
        phase = Phase(name, target_rate=rate)
        begin = self._begin(phase)
        t0 = begin[0]
        done = 0
        minute = 1
        futures: list[asyncio.Future[Any]] = []
        while (elapsed := time.monotonic() - t0) < seconds:
            due = int(elapsed * rate) - done
            for _ in range(due):
                futures.append(await self._produce_one())
                done += 1
            if per_minute is not None and elapsed >= minute * 60:
                per_minute(phase, minute)
                minute += 1
            if len(futures) > 50_000:
                futures = [f for f in futures if not f.done()]
            await asyncio.sleep(0.002)
        if per_minute is not None and minute * 60 <= seconds + 1:
            per_minute(phase, minute)  # the last minute
        await asyncio.gather(*futures, return_exceptions=True)
        await self._end(begin)
        return phase

    async def long_run(self, rate: float, minutes: float) -> dict[str, Any]:
        rows: list[dict[str, Any]] = []
        last = {"t": time.monotonic(), "cpu": self.broker.cpu(), "produced": 0}

        def sample(phase: Phase, minute: int) -> None:
            now, cpu = time.monotonic(), self.broker.cpu()
            n = phase.produced - int(last["produced"])
            used = cpu - last["cpu"]
            rows.append(
                {
                    "minute": minute,
                    "msgs": n,
                    "broker_cores": round(used / (now - last["t"]), 3),
                    "broker_cpu_us_per_msg": round(used * 1e6 / n, 1) if n else None,
                    "rss_mb": self.broker.rss_mb(),
                    "disk_mb": self.broker.disk_mb(),
                }
            )
            last.update(t=now, cpu=cpu, produced=phase.produced)

        phase = await self.paced(rate, minutes * 60, "long", per_minute=sample)
        return {"summary": phase.summary(), "per_minute": rows}


async def run(opts: Options, data_dir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Both brokers run side by side; the short phases load one broker at a time (ours,
    then Tansu, phase by phase, so that both see the same machine); the long run
    loads both at once, over the same minutes."""
    results: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_at_start": round(os.getloadavg()[0], 2),
        },
        "options": asdict(opts),
        "brokers": {kind: {} for kind in opts.brokers},
    }
    brokers = {kind: BrokerProcess(kind, data_dir) for kind in opts.brokers}
    works: dict[str, Workload] = {}
    try:
        for kind, broker in brokers.items():
            broker.start()
            works[kind] = Workload(broker, opts)
            await works[kind].start()
        out = results["brokers"]
        for rate in opts.rates:
            for kind, work in works.items():
                log(f"{kind}: paced {rate} msgs/s for {opts.seconds}s")
                out[kind][f"paced_{rate}"] = (await work.paced(rate, opts.seconds)).summary()
        if opts.records > 0:
            for kind, work in works.items():
                log(f"{kind}: throughput, {opts.records} records")
                out[kind]["throughput"] = (await work.throughput(opts.records)).summary()
        if opts.minutes > 0:
            log(f"both: long run, {opts.long_rate} msgs/s each for {opts.minutes} min")
            longs = await asyncio.gather(
                *(work.long_run(opts.long_rate, opts.minutes) for work in works.values())
            )
            for kind, long in zip(works, longs, strict=True):
                out[kind]["long"] = long
        for kind, broker in brokers.items():
            out[kind]["rss_mb_at_end"] = broker.rss_mb()
            out[kind]["disk_mb_at_end"] = broker.disk_mb()
    finally:
        for work in works.values():
            await work.stop()
        for broker in brokers.values():
            broker.stop()
    return results


def table(r: dict[str, Any]) -> str:
    lines = [
        "| broker | phase | msgs/s | produce p50 / p99 ms | e2e p50 / p99 ms "
        "| broker cores | broker µs/msg |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, phases in r["brokers"].items():
        for name, s in phases.items():
            if not isinstance(s, dict) or "produce_ms" not in s:
                continue
            lines.append(
                f"| {kind} | {name} | {s['msgs_per_s']} | {s['produce_ms']['p50']} / "
                f"{s['produce_ms']['p99']} | {s['end_to_end_ms']['p50']} / "
                f"{s['end_to_end_ms']['p99']} | {s['broker_cores']} | "
                f"{s['broker_cpu_us_per_msg']} |"
            )
    for kind, phases in r["brokers"].items():
        long = phases.get("long")
        if long:
            lines += [
                "",
                f"{kind}, long run (per minute):",
                "",
                "| minute | msgs | broker cores | µs/msg | RSS MB | disk MB |",
                "|---|---|---|---|---|---|",
            ]
            lines += [
                f"| {m['minute']} | {m['msgs']} | {m['broker_cores']} | "
                f"{m['broker_cpu_us_per_msg']} | {m['rss_mb']} | {m['disk_mb']} |"
                for m in long["per_minute"]
            ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> tuple[Options, bool, bool, Path | None]:
    d = Options()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--records", type=int, default=d.records)
    p.add_argument("--seconds", type=float, default=d.seconds)
    p.add_argument("--rates", default=",".join(map(str, d.rates)))
    p.add_argument("--minutes", type=float, default=d.minutes)
    p.add_argument("--long-rate", type=int, default=d.long_rate)
    p.add_argument("--partitions", type=int, default=d.partitions)
    p.add_argument("--keys", type=int, default=d.keys)
    p.add_argument("--value-bytes", type=int, default=d.value_bytes)
    p.add_argument("--brokers", default=",".join(d.brokers))
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    opts = Options(
        records=a.records,
        seconds=a.seconds,
        rates=tuple(int(x) for x in a.rates.split(",") if x),
        minutes=a.minutes,
        long_rate=a.long_rate,
        partitions=a.partitions,
        keys=a.keys,
        value_bytes=max(a.value_bytes, 32),
        brokers=tuple(b for b in a.brokers.split(",") if b),
    )
    unknown = set(opts.brokers) - {"ours", "tansu"}
    if unknown:
        p.error(f"unknown broker(s): {', '.join(sorted(unknown))}")
    return opts, a.json, a.quiet, a.data_dir


def main(argv: list[str] | None = None) -> None:
    opts, as_json, quiet, data_dir = parse_args(argv)

    def log(msg: str) -> None:
        if not quiet:
            print(msg, file=sys.stderr, flush=True)

    tmp = None
    if data_dir is None:
        tmp = tempfile.mkdtemp(prefix="bench-broker-")
        data_dir = Path(tmp)
    try:
        import uvloop

        results = uvloop.run(run(opts, data_dir, log))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    if as_json:
        print(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())
    else:
        print(table(results))


if __name__ == "__main__":
    main()
