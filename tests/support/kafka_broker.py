"""The embedded Kafka broker as a real process for tests: start, kill -9, restart on its data."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from scripts.stack import _free_ports

ROOT = Path(__file__).resolve().parents[2]


class KafkaBroker:
    """``python -m embedded.kafka`` on a free loopback port with its own data directory."""

    def __init__(self, data_dir: Path, *args: str) -> None:
        self.data_dir = data_dir
        self.args = list(args)
        self.port = _free_ports(1)[0]
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_once = False

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.out"

    def start(self) -> KafkaBroker:
        """Start the broker and wait until *it* listens.

        A listener on the port is not proof: the port was free when it was picked,
        but another worker's server can take it before our bind. That server then
        answers for us (until its test stops it) while ours exits with "address
        already in use". So wait for our broker's own "listening" line; on a first
        start that lost its port, try another one.
        """
        for _ in range(5):
            if self._start_once():
                return self
            self.port = _free_ports(1)[0]  # taken by someone else: only before our first start
        raise RuntimeError(f"broker did not start:\n{self.output()[-3000:]}")

    def _start_once(self) -> bool:
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
            *self.args,
        ]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        seen = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=out)
        ready = f"listening on 127.0.0.1:{self.port},".encode()
        deadline = time.monotonic() + 30
        while True:
            with open(self.log_path, "rb") as f:
                f.seek(seen)
                said = f.read()
            if ready in said:
                self.started_once = True
                return True
            exited = self.proc.poll() is not None
            if exited or time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                self.proc = None
                if exited and b"address already in use" in said and not self.started_once:
                    return False
                raise RuntimeError(f"broker did not start:\n{self.output()[-3000:]}")
            time.sleep(0.02)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(timeout=15)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.kill(signal.SIGTERM)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def segments(self, topic: str, partition: int) -> list[Path]:
        return sorted((self.data_dir / "topics" / topic / str(partition)).glob("*.log"))


@asynccontextmanager
async def admin_client(bootstrap: str) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


async def create_topic(
    bootstrap: str, name: str, partitions: int = 1, configs: dict[str, str] | None = None
) -> None:
    async with admin_client(bootstrap) as admin:
        resp = await admin.create_topics(
            [NewTopic(name, partitions, 1, topic_configs=configs or {})]
        )
        assert [e[1] for e in resp.topic_errors] == [0], resp


@asynccontextmanager
async def producer(bootstrap: str, **kw: Any) -> AsyncIterator[AIOKafkaProducer]:
    opts: dict[str, Any] = {"acks": "all", "enable_idempotence": False, "linger_ms": 1}
    opts.update(kw)
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, **opts)
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


@asynccontextmanager
async def consumer(bootstrap: str, *topics: str, **kw: Any) -> AsyncIterator[AIOKafkaConsumer]:
    opts: dict[str, Any] = {"auto_offset_reset": "earliest", "enable_auto_commit": False}
    opts.update(kw)
    c = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, **opts)
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


async def read_all(
    bootstrap: str, topic: str, partitions: Iterable[int], expected: int, timeout: float = 60.0
) -> list[Any]:
    """Every record of the partitions from their beginning (by partition, then offset),
    once ``expected`` arrived; and nothing more."""
    out: list[Any] = []
    async with consumer(bootstrap) as c:
        tps = [TopicPartition(topic, p) for p in partitions]
        c.assign(tps)
        await c.seek_to_beginning(*tps)

        async def drain() -> None:
            while len(out) < expected:
                batch = await c.getmany(timeout_ms=1000)
                for records in batch.values():
                    out.extend(records)

        await asyncio.wait_for(drain(), timeout)
        # Nothing beyond what is expected: the log ends where the test says it does.
        ends = await c.end_offsets(tps)
        for tp in tps:
            assert await c.position(tp) == ends[tp], (tp, await c.position(tp), ends[tp])
    return sorted(out, key=lambda r: (r.partition, r.offset))


def keyed_partition(key: bytes, partitions: Sequence[int]) -> int:
    """aiokafka's default partitioner: murmur2 of the key, positive, modulo the count."""
    from aiokafka.partitioner import murmur2

    return (murmur2(key) & 0x7FFFFFFF) % len(partitions)
