"""Group commit (services/common/batching.py): what waits during a flush goes in the next."""

from __future__ import annotations

import asyncio

import pytest

from services.common.batching import GroupCommit


async def test_calls_during_a_flush_go_together_and_each_gets_its_own_answer() -> None:
    flushes: list[dict[str, list[int]]] = []
    gate = asyncio.Event()

    async def flush(batch: dict[str, list[int]]) -> dict[str, list[int | BaseException]]:
        flushes.append(batch)
        await gate.wait()
        return {k: [ValueError(v) if v < 0 else v * 10 for v in vs] for k, vs in batch.items()}

    commit: GroupCommit[str, int, int] = GroupCommit(flush)
    first = asyncio.create_task(commit.submit("a", 1))
    await asyncio.sleep(0)  # the first flush starts with it alone
    rest = [asyncio.create_task(commit.submit(k, v)) for k, v in (("a", 2), ("b", -3), ("a", 4))]
    await asyncio.sleep(0)
    gate.set()
    assert await first == 10
    results = await asyncio.gather(*rest, return_exceptions=True)
    assert results[0] == 20 and results[2] == 40
    assert isinstance(results[1], ValueError)
    assert flushes == [{"a": [1]}, {"a": [2, 4], "b": [-3]}]


async def test_a_flush_that_raises_fails_each_of_its_callers_and_the_next_flush_runs() -> None:
    calls = 0

    async def flush(batch: dict[str, list[int]]) -> dict[str, list[int | BaseException]]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("redis away")
        return {k: list(vs) for k, vs in batch.items()}

    commit: GroupCommit[str, int, int] = GroupCommit(flush)
    with pytest.raises(ConnectionError):
        await commit.submit("a", 1)
    assert await commit.submit("a", 2) == 2
