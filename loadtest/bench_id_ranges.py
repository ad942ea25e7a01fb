"""A page of an ``_id`` range on the embedded MongoDB server: ``find`` against
``clients.in_id_order`` (an aggregation), the way the public room directory,
moderators' ban lists, admins' room and report lists and the key directory's
device listing read them.

Fills one collection of a fresh nx-27017 (on a free port) with directory-shaped
documents, then times a page of 50 after the middle of it, each way, several times
(median), at each size:

    .venv/bin/python -m loadtest.bench_id_ranges [--sizes 2000 20000 100000 --rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from loadtest.common import cpu_seconds
from scripts.stack import Processes, StackConfig
from services.common.clients import in_id_order, mongo_client
from services.common.config import load_settings

PAGE = 50


def _doc(i: int) -> dict[str, Any]:
    return {"_id": f"room name {i:07d}|{i:024x}", "room_id": f"{i:024x}",
            "name_key": f"room name {i:07d}", "name": f"Room {i}"}  # fmt: skip


async def run(sizes: list[int], rounds: int) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = StackConfig.free_ports(Path(tmp))
        procs = Processes(cfg)
        procs.start("mongo")
        try:
            mongo = mongo_client(load_settings(mongo_url=cfg.url("mongo")))
            coll = mongo.bench.directory
            pid = procs.procs["mongo"].pid
            filled = 0
            for size in sizes:
                for i in range(filled, size, 5_000):
                    await coll.insert_many([_doc(j) for j in range(i, min(size, i + 5_000))])
                filled = size
                after = _doc(size // 2)["name_key"]
                query = {"_id": {"$gt": after}}

                async def by_find(query: dict[str, Any]) -> list[dict[str, Any]]:
                    return await coll.find(query).sort("_id", 1).limit(PAGE).to_list()

                async def by_aggregation(query: dict[str, Any]) -> list[dict[str, Any]]:
                    return await in_id_order(coll, query, PAGE)

                row: dict[str, Any] = {"documents": size}
                for name, read in (("find", by_find), ("in_id_order", by_aggregation)):
                    times, cpus = [], []
                    for _ in range(rounds):
                        cpu0, t0 = cpu_seconds(pid), time.perf_counter()
                        page = await read(query)
                        times.append(time.perf_counter() - t0)
                        cpus.append(cpu_seconds(pid) - cpu0)
                        assert [d["_id"] for d in page] == [
                            _doc(j)["_id"] for j in range(size // 2, size // 2 + PAGE)
                        ]
                    row[f"{name}_ms"] = round(statistics.median(times) * 1000, 1)
                    row[f"{name}_server_cpu_ms"] = round(statistics.median(cpus) * 1000, 1)
                rows.append(row)
            await mongo.close()
        finally:
            procs.stop_all()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2_000, 20_000, 100_000])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    for row in asyncio.run(run(args.sizes, args.rounds)):
        print(row)


if __name__ == "__main__":
    main()
