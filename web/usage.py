"""Per-key usage (requests and WebSocket messages per UTC day) counted in Redis, and GET /v1/usage."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError

from web.errors import ApiError
from web.keys import PRINCIPAL, REDIS, SETTINGS
from web.periodic import every
from web.principal import Principal

__all__ = ["count_request", "count_messages", "flush", "usage_key", "setup", "DAYS_REPORTED"]

DAYS_REPORTED = 30
# Kept a little longer than reported, so a month's figures are whole until they leave the report.
RETENTION_S = 40 * 86400
FLUSH_EVERY_S = 1.0
FIELDS = ("requests", "messages")

log = logging.getLogger(__name__)


class _Pending:
    """Counts not yet written: (key id, day) -> field -> n. Adding costs no Redis round trip."""

    def __init__(self) -> None:
        self.counts: defaultdict[tuple[str, str], defaultdict[str, int]] = defaultdict(
            lambda: defaultdict(int)
        )

    def take(self) -> defaultdict[tuple[str, str], defaultdict[str, int]]:
        taken, self.counts = self.counts, defaultdict(lambda: defaultdict(int))
        return taken

    def put_back(self, taken: dict[tuple[str, str], defaultdict[str, int]]) -> None:
        for slot, fields in taken.items():
            for name, n in fields.items():
                self.counts[slot][name] += n


PENDING: web.AppKey[_Pending] = web.AppKey("usage_pending")


def usage_key(app_id: str, key_id: str, day: str) -> str:
    return f"{app_id}:usage:{key_id}:{day}"


def _today() -> str:
    return datetime.now(UTC).date().isoformat()


async def count_request(app: web.Application, principal: Principal) -> None:
    """Count one request of a key (anonymous callers have no usage record)."""
    if principal.key_id is not None:
        app[PENDING].counts[(principal.key_id, _today())]["requests"] += 1


def count_messages(app: web.Application, principal: Principal, n: int) -> None:
    """Count ``n`` messages sent to a key's WebSocket connections; cheap enough to call per send."""
    if principal.key_id is not None and n > 0:
        app[PENDING].counts[(principal.key_id, _today())]["messages"] += n


async def flush(app: web.Application) -> None:
    """Write pending counts to Redis; on failure they stay pending for the next flush."""
    taken = app[PENDING].take()
    if not taken:
        return
    app_id = app[SETTINGS].app_id
    pipe = app[REDIS].pipeline(transaction=False)
    for (key_id, day), fields in taken.items():
        key = usage_key(app_id, key_id, day)
        for name, n in fields.items():
            pipe.hincrby(key, name, n)
        pipe.expire(key, RETENTION_S)
    try:
        await pipe.execute()
    except (RedisError, OSError) as exc:
        app[PENDING].put_back(taken)
        log.warning("writing usage counts to Redis failed, keeping them for the next try: %r", exc)


async def handle_usage(request: web.Request) -> web.Response:
    principal = request[PRINCIPAL]
    if principal.key_id is None:
        raise ApiError(
            401,
            "key_required",
            "GET /v1/usage reports an API key's usage: pass one as 'Authorization: Bearer <key>'.",
        )
    app = request.app
    # Counts of this sidecar reach Redis now, so the caller sees its own requests (this one included).
    await flush(app)
    today = datetime.now(UTC).date()
    days = [(today - timedelta(days=back)).isoformat() for back in range(DAYS_REPORTED - 1, -1, -1)]
    pipe = app[REDIS].pipeline(transaction=False)
    for day in days:
        pipe.hgetall(usage_key(app[SETTINGS].app_id, principal.key_id, day))
    try:
        rows = await pipe.execute()
    except (RedisError, OSError) as exc:
        raise ApiError(
            503, "usage_unavailable", "Usage figures are unavailable right now; try again shortly."
        ) from exc
    counts = [{name: _count(row, name) for name in FIELDS} for row in rows]
    return web.json_response(
        {
            "key_id": principal.key_id,
            "owner": principal.owner,
            "tier": principal.tier,
            "limits": dataclasses.asdict(principal.limits),
            "days": [{"date": day, **day_counts} for day, day_counts in zip(days, counts, strict=True)],
            "totals": {name: sum(day_counts[name] for day_counts in counts) for name in FIELDS},
        }
    )


def _count(row: dict[Any, Any], name: str) -> int:
    # Field names come back as bytes, or as str from a client made with decode_responses=True.
    return int(row.get(name.encode(), row.get(name, 0)))


def setup(app: web.Application) -> None:
    app[PENDING] = _Pending()
    app.cleanup_ctx.append(_flusher)
    app.router.add_get("/v1/usage", handle_usage)


async def _flusher(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(
        every(FLUSH_EVERY_S, lambda: flush(app), "flushing usage counts"), name="usage-flusher"
    )
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await flush(app)
