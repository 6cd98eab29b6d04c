"""Request rate limits and WebSocket connection slots kept in Redis, so they hold across every sidecar."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from aiohttp import web
from prometheus_client import Counter
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from web.keys import INSTANCE_ID, REDIS, SETTINGS
from web.periodic import every
from web.principal import Principal

__all__ = [
    "Clock",
    "Decision",
    "EXEMPT_PATHS",
    "EXEMPT_PREFIXES",
    "is_exempt",
    "check_rate",
    "acquire_connection",
    "release_connection",
    "refresh_connections",
    "release_pending",
    "DECISION",
    "setup",
]

# Seconds since the epoch. None (the default) means Redis's own clock, so sidecars with skewed clocks agree;
# tests pass a fake clock to make limits deterministic.
Clock = Callable[[], float]
T = TypeVar("T")

# Not rate limited (nor authenticated: they are public): probes, metrics, the API description, the dashboard.
EXEMPT_PATHS = frozenset({"/", "/favicon.ico", "/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"})
EXEMPT_PREFIXES = ("/dashboard", "/static/", "/docs/")

# A Redis that does not answer within this lets the request through rather than stall every request.
REDIS_TIMEOUT_S = 1.0
# A connection slot lives this long unless its sidecar renews it, so a crashed sidecar's slots free up.
SLOT_TTL_S = 60.0
SLOT_REFRESH_S = 20.0
# A release that failed (Redis unreachable, timed out) is retried this often until it succeeds, so a Redis
# hiccup does not hold the closed connection's slot until it expires (reconnects would get 4029 meanwhile).
RELEASE_RETRY_S = 1.0
RETRY_REDIS_AFTER_S = 5.0
WARN_EVERY_S = 30.0
# Refused subjects remembered locally (see _Limits.refused), at most.
REFUSED_KEPT = 10_000

# The decision of the request's rate limit check, turned into RateLimit-* headers on its response.
DECISION: web.RequestKey[Decision] = web.RequestKey("rate_decision")

UNAVAILABLE = Counter(
    "llamastream_limits_unavailable_total",
    "Rate-limit and connection-slot checks let through (fail open) because Redis could not be reached",
    ["check"],
)
log = logging.getLogger(__name__)

# GCRA, a token bucket in one timestamp: the bucket holds `burst` requests and refills one per interval.
# KEYS[1]: the subject's theoretical arrival time (ms). ARGV: interval_ms, burst, now_ms ('' = Redis TIME).
# Returns {allowed, remaining, retry_after_ms, reset_ms}.
_GCRA = """
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - interval * burst
if allow_at > now then
  return {0, 0, allow_at - now, tat - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', new_tat - now)
return {1, math.floor((now - allow_at) / interval), 0, new_tat - now}
"""

# KEYS[1]: the subject's slots, member -> expiry (ms). ARGV: member, ttl_ms, limit, now_ms ('' = Redis TIME).
_ACQUIRE = """
local now = tonumber(ARGV[4])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local ttl = tonumber(ARGV[2])
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
"""

# KEYS[1]: the subject's slots. ARGV: ttl_ms, now_ms ('' = Redis TIME), members... (this sidecar's live ones).
_REFRESH = """
local now = tonumber(ARGV[2])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local ttl = tonumber(ARGV[1])
for i = 3, #ARGV do redis.call('ZADD', KEYS[1], now + ttl, ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
"""


@dataclass(frozen=True)
class Decision:
    """One rate limit check; ``headers()`` are sent on the response either way."""

    allowed: bool
    limit: int
    remaining: int
    reset_s: int  # until the bucket is full again
    retry_after_s: int  # 0 when allowed

    def headers(self) -> dict[str, str]:
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_s),
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after_s)
        return headers


@dataclass
class _Limits:
    prefix: str
    clock: Clock | None
    redis: Redis | None = None
    gcra: AsyncScript | None = None
    acquire: AsyncScript | None = None
    refresh: AsyncScript | None = None
    # This sidecar's live slots: Redis key -> members, renewed by the refresher until released.
    slots: dict[str, set[str]] = field(default_factory=dict)
    # Slots of closed connections whose release has not reached Redis yet: Redis key -> members.
    unreleased: dict[str, set[str]] = field(default_factory=dict)
    last_warning: float = -math.inf
    down_until: float = -math.inf
    # Subjects refused lately: (Redis key, limit) -> (retry at, full at), in seconds of ``now()``. A refusal
    # holds until its retry time whatever other sidecars do (they only push a subject's bucket later), so
    # a client hammering past its limit is refused here without a round trip to Redis.
    refused: dict[tuple[str, int], tuple[float, float]] = field(default_factory=dict)

    def now_arg(self) -> str:
        return "" if self.clock is None else str(int(self.clock() * 1000))

    def now(self) -> float:
        return time.monotonic() if self.clock is None else self.clock()

    async def guarded(self, check: str, call: Callable[[], Awaitable[T]]) -> T | None:
        """The call's result, or None when Redis failed (counted, and logged at most every WARN_EVERY_S)."""
        if time.monotonic() < self.down_until:
            UNAVAILABLE.labels(check).inc()
            return None
        try:
            async with asyncio.timeout(REDIS_TIMEOUT_S):
                return await call()
        except (RedisError, OSError, TimeoutError) as exc:
            UNAVAILABLE.labels(check).inc()
            # Skip Redis for a while, so requests are not each delayed by retries and the timeout.
            self.down_until = time.monotonic() + RETRY_REDIS_AFTER_S
            if time.monotonic() - self.last_warning >= WARN_EVERY_S:
                self.last_warning = time.monotonic()
                log.warning("Redis unavailable for %s checks, letting requests through: %r", check, exc)
            return None


LIMITS: web.AppKey[_Limits] = web.AppKey("limits")


def is_exempt(path: str) -> bool:
    return path in EXEMPT_PATHS or path.startswith(EXEMPT_PREFIXES)


async def check_rate(app: web.Application, principal: Principal) -> Decision | None:
    """Charge one request to the principal's subject; None when Redis is unavailable (the request goes on)."""
    limits = app[LIMITS]
    per_minute = principal.limits.requests_per_minute
    gcra = limits.gcra
    assert gcra is not None, "web.ratelimit is used before the application started"
    key = f"{limits.prefix}:rl:{principal.subject}"
    refused = limits.refused.get((key, per_minute))
    if refused is not None:
        now = limits.now()
        if now < refused[0]:
            return Decision(
                False, per_minute, 0, math.ceil(refused[1] - now), max(1, math.ceil(refused[0] - now))
            )
        del limits.refused[(key, per_minute)]
    # The bucket holds a full minute's worth: a client idle for a minute may spend it at once.
    interval_ms = max(1, round(60_000 / per_minute))
    sent = limits.now()  # before Redis's own now: a refusal is never held longer here than there
    result = await limits.guarded(
        "rate",
        lambda: gcra(keys=[key], args=[interval_ms, per_minute, limits.now_arg()]),
    )
    if result is None:
        return None
    allowed, remaining, retry_ms, reset_ms = (int(x) for x in result)
    if not allowed:
        if len(limits.refused) >= REFUSED_KEPT:
            limits.refused.clear()  # a flood of distinct subjects: forget, Redis still decides
        limits.refused[(key, per_minute)] = (sent + retry_ms / 1000, sent + reset_ms / 1000)
    return Decision(
        allowed=bool(allowed),
        limit=per_minute,
        remaining=remaining,
        reset_s=math.ceil(reset_ms / 1000),
        retry_after_s=max(1, math.ceil(retry_ms / 1000)) if not allowed else 0,
    )


def _slot(app: web.Application, principal: Principal, connection_id: str) -> tuple[str, str]:
    return f"{app[LIMITS].prefix}:conn:{principal.subject}", f"{app[INSTANCE_ID]}:{connection_id}"


async def acquire_connection(app: web.Application, principal: Principal, connection_id: str) -> bool:
    """Take one of the subject's WebSocket slots (tier ws_connections across all sidecars); False when full.

    Fails open: with Redis down the connection is allowed, and the refresher registers it once Redis is back.
    """
    limits = app[LIMITS]
    acquire = limits.acquire
    assert acquire is not None, "web.ratelimit is used before the application started"
    key, member = _slot(app, principal, connection_id)
    ttl_ms = int(SLOT_TTL_S * 1000)
    limit = principal.limits.ws_connections
    result = await limits.guarded(
        "connections", lambda: acquire(keys=[key], args=[member, ttl_ms, limit, limits.now_arg()])
    )
    if result is not None and not int(result):
        return False
    limits.slots.setdefault(key, set()).add(member)
    return True


async def release_connection(app: web.Application, principal: Principal, connection_id: str) -> None:
    """Free a closed connection's slot; if Redis cannot be told now, the release is retried in the background
    every RELEASE_RETRY_S (and the refresher no longer renews the slot meanwhile)."""
    limits = app[LIMITS]
    key, member = _slot(app, principal, connection_id)
    members = limits.slots.get(key)
    if members is not None:
        members.discard(member)
        if not members:
            del limits.slots[key]
    redis = limits.redis
    if redis is None:
        return
    if await limits.guarded("connections", lambda: redis.zrem(key, member)) is None:
        limits.unreleased.setdefault(key, set()).add(member)


async def release_pending(app: web.Application) -> bool:
    """Retry the releases that failed; True when none is left. Ignores the fail-open pause: a retry that
    fails again only waits for the next one."""
    limits = app[LIMITS]
    if limits.redis is None or not limits.unreleased:
        return not limits.unreleased
    taken, limits.unreleased = limits.unreleased, {}
    pipe = limits.redis.pipeline(transaction=False)
    for key, members in taken.items():
        pipe.zrem(key, *members)
    try:
        async with asyncio.timeout(REDIS_TIMEOUT_S):
            await pipe.execute()
    except (RedisError, OSError, TimeoutError) as exc:
        for key, members in taken.items():
            limits.unreleased.setdefault(key, set()).update(members)
        log.debug("releasing %d connection slots failed again: %r", sum(map(len, taken.values())), exc)
        return False
    return not limits.unreleased


async def refresh_connections(app: web.Application) -> None:
    """Renew this sidecar's live slots (the refresher does this every SLOT_REFRESH_S)."""
    limits = app[LIMITS]
    if limits.redis is None or limits.refresh is None or not limits.slots:
        return
    ttl_ms = int(SLOT_TTL_S * 1000)
    now = limits.now_arg()
    pipe = limits.redis.pipeline(transaction=False)
    for key, members in list(limits.slots.items()):
        await limits.refresh(keys=[key], args=[ttl_ms, now, *members], client=pipe)
    await limits.guarded("connections", pipe.execute)


def setup(app: web.Application, *, clock: Clock | None = None) -> None:
    app[LIMITS] = _Limits(prefix=app[SETTINGS].app_id, clock=clock)
    app.cleanup_ctx.append(_limits_ctx)
    app.on_response_prepare.append(_add_headers)


async def _limits_ctx(app: web.Application) -> AsyncIterator[None]:
    limits = app[LIMITS]
    redis = limits.redis = app[REDIS]
    limits.gcra = redis.register_script(_GCRA)
    limits.acquire = redis.register_script(_ACQUIRE)
    limits.refresh = redis.register_script(_REFRESH)
    refresher = asyncio.create_task(
        every(SLOT_REFRESH_S, lambda: refresh_connections(app), "renewing WebSocket connection slots"),
        name="connection-slot-refresher",
    )
    releaser = asyncio.create_task(
        every(RELEASE_RETRY_S, lambda: release_pending(app), "releasing WebSocket connection slots"),
        name="connection-slot-releaser",
    )
    yield
    for task in (refresher, releaser):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await release_pending(app)
    # Free this sidecar's slots now rather than when they expire.
    if limits.slots:
        pipe = redis.pipeline(transaction=False)
        for key, members in limits.slots.items():
            pipe.zrem(key, *members)
        await limits.guarded("connections", pipe.execute)
        limits.slots.clear()


async def _add_headers(request: web.Request, response: web.StreamResponse) -> None:
    decision = request.get(DECISION)
    if decision is not None:
        response.headers.update(decision.headers())
