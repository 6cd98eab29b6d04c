"""The query cache's process-local layer and single-flight (no Redis: the getter gives none)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from web.errors import ApiError
from web.query_cache import QueryCache


def cache() -> QueryCache:
    return QueryCache(lambda: None, "test")


async def test_concurrent_identical_misses_share_one_computation() -> None:
    queries = cache()
    release = asyncio.Event()

    async def compute() -> dict[str, Any]:
        await release.wait()
        return {"n": 1}

    waiting = [asyncio.create_task(queries.get_or_compute("k", compute, 60)) for _ in range(20)]
    await asyncio.sleep(0)
    release.set()
    answers = await asyncio.gather(*waiting)
    assert queries.computed == 1
    assert all(value == {"n": 1} for value, _ in answers)
    assert sorted(cached for _, cached in answers) == [False] + [True] * 19
    # Afterwards the process answers from its own layer.
    assert await queries.get_or_compute("k", compute, 60) == ({"n": 1}, True) and queries.computed == 1
    assert (await queries.get_or_compute("other", compute, 60))[1] is False and queries.computed == 2


async def test_a_failed_computation_fails_every_waiter_and_is_not_kept() -> None:
    queries = cache()
    calls = 0

    async def compute() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        raise ApiError(400, "query_too_large", "too large")

    results = await asyncio.gather(
        *(queries.get_or_compute("k", compute, 60) for _ in range(5)), return_exceptions=True
    )
    assert calls == 1 and all(isinstance(r, ApiError) for r in results)
    with pytest.raises(ApiError):
        await queries.get_or_compute("k", compute, 60)
    assert calls == 2


async def test_a_caller_going_away_does_not_cancel_the_others_computation() -> None:
    queries = cache()
    release = asyncio.Event()

    async def compute() -> dict[str, Any]:
        await release.wait()
        return {"n": 2}

    first = asyncio.create_task(queries.get_or_compute("k", compute, 60))
    second = asyncio.create_task(queries.get_or_compute("k", compute, 60))
    await asyncio.sleep(0)
    first.cancel()
    release.set()
    assert await second == ({"n": 2}, True)
    assert first.cancelled() and queries.computed == 1
