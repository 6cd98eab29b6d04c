"""Background jobs of the sidecar that run every few seconds for its whole life."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

__all__ = ["every"]

log = logging.getLogger(__name__)


async def every(interval_s: float, job: Callable[[], Awaitable[object]], what: str) -> None:
    """Runs ``job`` every ``interval_s`` until cancelled. A failure is logged and the next run comes on
    time: a job that stopped at its first error (Redis restarting, say) would stop renewing or flushing
    for good."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await job()
        except Exception:
            log.exception("%s failed", what)
