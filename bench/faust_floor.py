"""The faust floor: a throwaway faust app whose agents only count events (no tables, no sends, no parsing).

It reads the same raw topics as the pipeline, configured like pipeline/app.py (memory store, root
logger quieted), so its rate is the most a faust agent iterating ``stream.events()`` can do on this
machine, whatever the agent body. It also counts the asyncio tasks created while it runs (a task
factory on the worker's loop), which shows where that ceiling comes from.

    BENCH_APP_ID=... BENCH_TOPIC_PREFIX=bench1. BENCH_EXPECT=1000000 BENCH_RESULT=floor.json \\
        python -m faust -A bench.faust_floor worker -l info --without-web

It writes ``{"count", "first", "last", "tasks", ...}`` to BENCH_RESULT every second and when done.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import Any

import faust

BOOTSTRAP = os.environ.get("BENCH_BOOTSTRAP", "127.0.0.1:9092")
PREFIX = os.environ.get("BENCH_TOPIC_PREFIX", "")
EXPECT = int(os.environ.get("BENCH_EXPECT", "0"))
RESULT = os.environ.get("BENCH_RESULT", "faust_floor.json")


class FloorApp(faust.App):
    async def on_first_start(self) -> None:
        await super().on_first_start()
        # As pipeline/app.py: mode leaves the root logger at DEBUG, which costs every debug call.
        root = logging.getLogger()
        levels = [handler.level for handler in root.handlers if handler.level]
        root.setLevel(min(levels) if levels else logging.INFO)
        _count_tasks(asyncio.get_running_loop())


app = FloorApp(
    os.environ.get("BENCH_APP_ID", "bench-faust-floor"),
    broker=f"kafka://{BOOTSTRAP}",
    store="memory://",
    autodiscover=False,
    topic_partitions=int(os.environ.get("BENCH_PARTITIONS", "4")),
    topic_disable_leader=True,
    broker_commit_interval=2.0,
    consumer_auto_offset_reset="earliest",
    web_enabled=False,
)

state: dict[str, Any] = {"count": 0, "first": None, "last": None, "tasks": 0, "tasks_at_first": None}


def _count_tasks(loop: asyncio.AbstractEventLoop) -> None:
    previous = loop.get_task_factory()

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Future[Any]:
        state["tasks"] += 1
        if previous is not None:
            return previous(loop, coro, **kwargs)  # type: ignore[call-arg]
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(factory)  # type: ignore[arg-type]


def _write() -> None:
    snapshot = dict(state, expect=EXPECT, done=bool(EXPECT) and state["count"] >= EXPECT, written=time.time())
    tmp = f"{RESULT}.tmp"
    with open(tmp, "w") as handle:
        json.dump(snapshot, handle)
    os.replace(tmp, RESULT)


def _seen() -> None:
    now = time.time()
    if state["first"] is None:
        state["first"] = now
        state["tasks_at_first"] = state["tasks"]
    state["last"] = now
    state["count"] += 1
    if state["count"] == EXPECT:
        state["tasks_at_last"] = state["tasks"]
        _write()


def _raw(logical: str) -> faust.TopicT:
    return app.topic(f"{PREFIX}{logical}", key_serializer="raw", value_serializer="raw")


@app.agent(_raw("raw.prices"))
async def count_prices(stream: faust.StreamT[bytes]) -> None:
    async for _event in stream.events():
        _seen()


@app.agent(_raw("raw.tvl"))
async def count_tvl(stream: faust.StreamT[bytes]) -> None:
    async for _event in stream.events():
        _seen()


@app.timer(1.0)
async def report() -> None:
    _write()
