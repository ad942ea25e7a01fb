"""The embedded MongoDB server's ceiling for delivery's work, measured alone.

Runs the delivery store's own operations (``DeliveryStore``: reserve sequence
numbers, store the envelopes in the hot inbox, group-committed acks) against a fresh
nx-27017 on a free port, with no gateway, Kafka or HTTP in the way, in the
same shape as the messaging benchmark (100 users in 50 pairs, batches of the
size delivery sees at saturation). The figure is the most msgs/s that any
Parley delivery worker could store and acknowledge on this server; compare it
with `bench_messaging`'s delivered msgs/s.

    .venv/bin/python -m loadtest.bench_store [--batches 30 --batch 460 --users 100]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from loadtest.common import cpu_seconds
from scripts.stack import Processes, StackConfig
from services.common.clients import mongo_client, redis_client, service_db
from services.common.config import load_settings
from services.delivery.store import DeliveryStore


async def run(batches: int, batch: int, users: int, ack_every: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = StackConfig.free_ports(Path(tmp))
        procs = Processes(cfg)
        procs.start("mongo")
        procs.start("redis")
        try:
            settings = load_settings(
                mongo_url=cfg.url("mongo"), redis_url=cfg.url("redis"), db_prefix="bench_"
            )
            mongo, redis = mongo_client(settings), redis_client(settings)
            store = DeliveryStore(settings, service_db(mongo, settings, "delivery"), redis)
            await store.ensure_indexes()
            names = [f"user{i:04d}" for i in range(users)]
            mongo_pid = procs.procs["mongo"].pid
            cpu0, t0 = cpu_seconds(mongo_pid), time.perf_counter()
            stored = 0
            top: dict[str, int] = {}
            for b in range(batches):
                docs = []
                for i in range(batch):
                    to = names[(b * batch + i) % users]
                    docs.append({
                        "server_id": uuid.uuid4().hex, "user": to, "inbox": to, "device": 1,
                        "kind": "message",
                        "from": names[(b * batch + i + 1) % users],
                        "client_id": uuid.uuid4().hex, "conversation": "dm", "body": "x" * 216,
                        "commitment": None, "sent_at": 0, "stored_at": 0.0,
                    })  # fmt: skip
                out = await store.store_hot(docs)
                for d in out:
                    top[d["user"]] = max(top.get(d["user"], 0), d["seq"])
                stored += len(docs)
                if (b + 1) % ack_every == 0:
                    # One group-committed flush acknowledging everything so far.
                    await store.acknowledge_many(dict(top))
            elapsed = time.perf_counter() - t0
            cpu = cpu_seconds(mongo_pid) - cpu0
            await mongo.close()
            await redis.aclose()
            return {
                "msgs": stored,
                "seconds": round(elapsed, 2),
                "msgs_per_s": round(stored / elapsed, 1),
                "mongo_cpu_us_per_msg": round(cpu / stored * 1e6, 1),
                "mongo_cores": round(cpu / elapsed, 2),
            }
        finally:
            procs.stop_all()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batches", type=int, default=30)
    p.add_argument("--batch", type=int, default=460, help="records per batch")
    p.add_argument("--users", type=int, default=100)
    p.add_argument("--ack-every", type=int, default=1, help="ack flush every N batches")
    args = p.parse_args()
    result = asyncio.run(run(args.batches, args.batch, args.users, args.ack_every))
    for key, value in result.items():
        print(f"{key:24} {value}")


if __name__ == "__main__":
    main()
