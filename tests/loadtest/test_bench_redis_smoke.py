"""The Redis client benchmarks run end to end (tiny sizes, the session's Redis)."""

from __future__ import annotations

from urllib.parse import urlparse

from loadtest import bench_hop, bench_redis_client
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
