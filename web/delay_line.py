"""Holds updates back for a fixed time (the free tier's delay), then applies them in arrival order."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable

from web.state import Update

__all__ = ["DelayLine"]


class DelayLine:
    """An update becomes visible ``delay_s`` after its Kafka timestamp (when the worker published it).

    Arrival order is kept, so each partition's order is too; an update whose timestamp is older than the
    one ahead of it waits for that one (timestamps across partitions are close, so this costs little).
    """

    def __init__(self, delay_s: float, apply: Callable[[Update], None]) -> None:
        self.delay_s = delay_s
        self._apply = apply
        self._pending: deque[Update] = deque()
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._pending)

    def push(self, update: Update) -> None:
        if self.delay_s <= 0:
            self._apply(update)
            return
        self._pending.append(update)
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
            while self._pending and self._pending[0].timestamp_ms + delay_ms <= now_ms:
                self._apply(self._pending.popleft())
            if self._pending:
                wait_s = (self._pending[0].timestamp_ms + delay_ms - now_ms) / 1000
                # Bounded so a clock step does not park the line for long.
                await asyncio.sleep(min(max(wait_s, 0.01), 1.0))
