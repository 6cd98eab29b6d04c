"""Holds updates back for a fixed time (the free tier's delay), then applies them in arrival order.

At 1,000 updates/s a 5-minute line holds 300,000 of them. Held as decoded rows (a dict each) they were
half a gigabyte, and the garbage collector walked them all on every full collection (pauses of up to
1.4 s in bench/results/sidecar.json). The line therefore holds what the caller gives it as raw parts,
a tuple of bytes and ints that the collector stops tracking, and the caller decodes when it applies.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["DelayLine"]

T = TypeVar("T")


class DelayLine(Generic[T]):
    """An item becomes visible ``delay_s`` after its Kafka timestamp (when the worker published it).

    Arrival order is kept, so each partition's order is too; an update whose timestamp is older than the
    one ahead of it waits for that one (timestamps across partitions are close, so this costs little).
    """

    def __init__(self, delay_s: float, apply: Callable[[T], None]) -> None:
        self.delay_s = delay_s
        self._apply = apply
        self._pending: deque[tuple[int, T]] = deque()
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._pending)

    def push(self, timestamp_ms: int, item: T) -> None:
        if self.delay_s <= 0:
            self._apply(item)
            return
        self._pending.append((timestamp_ms, item))
        self._arrived.set()

    def start(self) -> None:
        if self.delay_s > 0:
            self._task = asyncio.create_task(self._run(), name="delay-line")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            if not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
            now_ms = time.time() * 1000
            delay_ms = self.delay_s * 1000
            while self._pending and self._pending[0][0] + delay_ms <= now_ms:
                self._apply(self._pending.popleft()[1])
            if self._pending:
                wait_s = (self._pending[0][0] + delay_ms - now_ms) / 1000
                # Bounded so a clock step does not park the line for long.
                await asyncio.sleep(min(max(wait_s, 0.01), 1.0))
