"""The Redis benchmarks run end to end (tiny sizes; the session's Redis, or their own)."""

from __future__ import annotations

from urllib.parse import urlparse

from loadtest import bench_hop, bench_redis_client, bench_redis_wait
from services.common.config import Settings


async def test_the_client_benchmark_measures_every_client_on_every_shape(
    settings: Settings,
) -> None:
    port = urlparse(settings.redis_url).port
    assert port is not None
    rows = await bench_redis_client.run(port, n=20, reps=2, with_coredis=False)
    assert set(rows) == {"redis-py", "FastRedis", "bare protocol + hiredis (floor)"}
    for row in rows.values():
        assert set(row) == {"pipeline of 20", "pipeline of 3", "one command"}
        assert all(us > 0 for us in row.values())


async def test_the_hop_benchmark_measures_its_redis_rows(settings: Settings) -> None:
    port = urlparse(settings.redis_url).port
    assert port is not None
    rows = await bench_hop._redis_rows(port, n=20, gap=0.001)
    assert len(rows) == 6 and all(us > 0 for us in rows.values())


async def test_the_replica_wait_benchmark_measures_every_way() -> None:
    """Its own primary and replica; every write of the WAIT rows was confirmed (a row
    that went on unconfirmed would pause the waits and measure nothing)."""
    rows = await bench_redis_wait.measure(20)
    assert set(rows) == {
        (way, size)
        for way in ("no wait (FastRedis)", "redis-py, no wait", "WAIT 1")
        for size in (1, 100)
    }
    assert all(r["per_s"] > 0 and r["cpu_us"] > 0 for r in rows.values())
    assert rows["WAIT 1", 100]["unconfirmed"] == 0
