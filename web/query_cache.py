"""Redis cache of /v1/query results, keyed by the query and a once-a-second epoch of the replica."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from web.state import ChannelState

__all__ = [
    "CACHE_EPOCH_S",
    "CACHE_MAX_BYTES",
    "CACHE_TIMEOUT_S",
    "LOCAL_ENTRIES",
    "LOCAL_TTL_S",
    "Epoch",
    "EpochTracker",
    "QueryCache",
    "query_digest",
]

log = logging.getLogger(__name__)

# How often a channel's state is sampled: a cached result is at most this much older than the replica.
CACHE_EPOCH_S = 1.0
# Larger results are recomputed every time rather than copied through Redis.
CACHE_MAX_BYTES = 1024 * 1024
# A Redis that hangs (rather than refusing) must not hold queries up longer than computing would.
CACHE_TIMEOUT_S = 0.5
# Results are also kept in the process for a few seconds (at most this many), so a hot aggregation costs
# no Redis round trip nor JSON parsing per request; live keys name their epoch, so they never go stale.
LOCAL_TTL_S = 5.0
LOCAL_ENTRIES = 512


@dataclass(frozen=True)
class Epoch:
    """A sampled replica position: the same on every sidecar that has read the same messages."""

    number: int  # messages read over all partitions: grows with every sampled update
    token: str  # the exact position, partition by partition


@dataclass
class _Sample:
    at: float
    version: int
    epoch: Epoch


@dataclass
class EpochTracker:
    """Per-app sampler of each view's position, at most once every ``interval_s`` per view.

    Keying a cache on ``ChannelState.version`` would miss on every request under load (it changes on
    every update); the epoch changes at most once per interval, and only when the view changed.
    """

    interval_s: float = CACHE_EPOCH_S
    clock: Callable[[], float] = time.monotonic
    _samples: dict[tuple[str, bool], _Sample] = field(default_factory=dict)

    def epoch(self, channel: str, delayed: bool, state: ChannelState) -> Epoch:
        now = self.clock()
        sample = self._samples.get((channel, delayed))
        # Unchanged since the sample, or sampled less than an interval ago: the same epoch.
        if sample is not None and (sample.version == state.version or now - sample.at < self.interval_s):
            return sample.epoch
        # The position, not the version: another sidecar at the same offsets holds the same rows.
        position = sorted(state.position.items())
        token = ".".join(f"{p}-{o}" for p, o in position) or "empty"
        sample = _Sample(now, state.version, Epoch(sum(o for _, o in position), token))
        self._samples[(channel, delayed)] = sample
        return sample.epoch


def query_digest(canonical: dict[str, Any]) -> str:
    """Hash of the query's canonical JSON (sorted keys), so equal queries share an entry."""
    return hashlib.sha256(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


Compute = Callable[[], Awaitable[dict[str, Any]]]


class QueryCache:
    """Get/put JSON results under ``{app_id}:qc:...``; Redis trouble means computing without the cache.

    ``get_or_compute`` is the way in: a process-local layer first, then Redis, then one computation per
    key at a time in this process (concurrent identical misses await the same one: single-flight).
    """

    def __init__(self, redis: Callable[[], Redis | None], app_id: str) -> None:
        # A getter: the app's client is created at startup, after routes (and this cache) are set up.
        self._redis = redis
        self.prefix = f"{app_id}:qc:"
        self._failing = False
        self._local: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()
        self._flights: dict[str, asyncio.Task[tuple[dict[str, Any], bool]]] = {}
        self.computed = 0  # computations run (misses), for tests and the bench

    async def get_or_compute(self, key: str, compute: Compute, ttl_s: float) -> tuple[dict[str, Any], bool]:
        """(result, whether it came from a cache or another request's computation)."""
        entry = self._local.get(key)
        if entry is not None:
            if entry[0] > time.monotonic():
                return entry[1], True
            del self._local[key]
        task = self._flights.get(key)
        leader = task is None
        if task is None:
            task = self._flights[key] = asyncio.create_task(self._fill(key, compute, ttl_s))
            task.add_done_callback(lambda done: self._landed(key, done))
        # Shielded: one caller going away must not cancel the computation the others wait for.
        value, cached = await asyncio.shield(task)
        return value, cached or not leader

    async def _fill(self, key: str, compute: Compute, ttl_s: float) -> tuple[dict[str, Any], bool]:
        hit = await self.get(key)
        if hit is not None:
            self._remember(key, hit, ttl_s)
            return hit, True
        self.computed += 1
        value = await compute()
        # Locally first: requests arriving while Redis is written are answered from here.
        self._remember(key, value, ttl_s)
        await self.put(key, value, ttl_s)
        return value, False

    def _landed(self, key: str, task: asyncio.Task[tuple[dict[str, Any], bool]]) -> None:
        if self._flights.get(key) is task:
            del self._flights[key]
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have gone, and the error is theirs, not a leak

    def _remember(self, key: str, value: dict[str, Any], ttl_s: float) -> None:
        self._local[key] = (time.monotonic() + min(ttl_s, LOCAL_TTL_S), value)
        self._local.move_to_end(key)
        while len(self._local) > LOCAL_ENTRIES:
            self._local.popitem(last=False)

    @property
    def redis(self) -> Redis | None:
        return self._redis()

    def key(self, *parts: object) -> str:
        return self.prefix + ":".join(str(p) for p in parts)

    async def get(self, key: str) -> dict[str, Any] | None:
        redis = self.redis
        if redis is None:
            return None
        try:
            async with asyncio.timeout(CACHE_TIMEOUT_S):
                raw = await redis.get(key)
        except (RedisError, OSError, TimeoutError) as exc:
            self._down(exc)
            return None
        self._up()
        if raw is None:
            return None
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None  # someone else's garbage under our prefix: recompute and overwrite it
        return value if isinstance(value, dict) else None

    async def put(self, key: str, value: dict[str, Any], ttl_s: float) -> None:
        redis = self.redis
        if redis is None:
            return
        raw = orjson.dumps(value)
        if len(raw) > CACHE_MAX_BYTES:
            return
        try:
            async with asyncio.timeout(CACHE_TIMEOUT_S):
                await redis.set(key, raw, px=max(1, int(ttl_s * 1000)))
        except (RedisError, OSError, TimeoutError) as exc:
            self._down(exc)
        else:
            self._up()

    def _down(self, exc: Exception) -> None:
        # One warning per outage, not one per request.
        if not self._failing:
            log.warning("query cache: Redis unavailable, computing without cache: %s", exc)
        self._failing = True

    def _up(self) -> None:
        if self._failing:
            log.info("query cache: Redis reachable again")
        self._failing = False
