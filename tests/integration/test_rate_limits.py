"""Rate limits, WebSocket connection slots and usage, shared by two sidecars through the real Redis."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator

import pytest
from prometheus_client import REGISTRY

from pipeline.db import make_engine
from pipeline.settings import Settings
from pipeline.storage.api_keys import generate_key
from tests.integration.sidecar import (
    FakeClock,
    StartAuthSidecar,
    admin_settings,
    auth_sidecars,
    authenticated_app,
    owner,
)
from web import usage
from web.app import redis_client
from web.keys import INSTANCE_ID, REDIS, SETTINGS
from web.principal import Principal
from web.ratelimit import (
    LIMITS,
    SLOT_TTL_S,
    acquire_connection,
    check_rate,
    refresh_connections,
    release_connection,
    release_pending,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def settings() -> AsyncIterator[Settings]:
    async with admin_settings() as settings:
        yield settings


@pytest.fixture
async def start(settings: Settings) -> AsyncIterator[StartAuthSidecar]:
    async with auth_sidecars(settings) as start:
        yield start


async def test_the_rate_limit_holds_across_sidecars(start: StartAuthSidecar, settings: Settings) -> None:
    clock = FakeClock()
    a, b = await start(clock=clock), await start(clock=clock)
    _, created, _ = await a.call("POST", "/v1/keys", json={"owner": owner(settings, "erin")})
    key = created["key"]
    for i in range(60):  # the free tier: 60 requests per minute, all of them at once after a quiet minute
        status, _, headers = await (a, b)[i % 2].call("GET", "/v1/echo", key=key)
        assert status == 200 and headers["RateLimit-Limit"] == "60"
        assert headers["RateLimit-Remaining"] == str(59 - i)
    for sidecar in (a, b):
        status, body, headers = await sidecar.call("GET", "/v1/echo", key=key)
        assert (
            status == 429 and body["error"]["code"] == "rate_limited" and body["error"]["retry_after_s"] == 1
        )
        assert headers["Retry-After"] == "1" and headers["RateLimit-Remaining"] == "0"
        assert headers["RateLimit-Reset"] == "60"
    assert (await a.call("GET", "/healthz", key=key))[0] == 200  # probes are not limited
    # Anonymous callers are charged per address, separately from the key (the POST above was one).
    status, _, headers = await a.call("GET", "/v1/echo")
    assert status == 200 and headers["RateLimit-Remaining"] == "58"

    clock.now += 1.0  # one request's worth refills
    status, _, headers = await b.call("GET", "/v1/echo", key=key)
    assert status == 200 and headers["RateLimit-Remaining"] == "0"
    assert (await a.call("GET", "/v1/echo", key=key))[0] == 429


async def test_a_refused_subject_is_refused_locally_until_its_retry_time(start: StartAuthSidecar) -> None:
    clock = FakeClock()
    a = await start(clock=clock)
    for _ in range(60):  # the anonymous (free) limit: 60 a minute
        assert (await a.call("GET", "/v1/echo"))[0] == 200
    assert (await a.call("GET", "/v1/echo"))[0] == 429
    limits = a.app[LIMITS]
    calls: list[object] = []
    gcra = limits.gcra

    async def counted(**kwargs: object) -> object:
        calls.append(kwargs)
        assert gcra is not None
        return await gcra(**kwargs)  # type: ignore[arg-type]

    limits.gcra = counted  # type: ignore[assignment]
    for _ in range(5):
        status, body, headers = await a.call("GET", "/v1/echo")
        assert status == 429 and headers["Retry-After"] == "1" and headers["RateLimit-Remaining"] == "0"
    assert calls == []  # refused without asking Redis
    clock.now += 1.0  # the retry time: Redis decides again
    assert (await a.call("GET", "/v1/echo"))[0] == 200 and len(calls) == 1


async def test_guessing_keys_is_rate_limited_by_address(start: StartAuthSidecar) -> None:
    a = await start(clock=FakeClock())
    for _ in range(60):
        assert (await a.call("GET", "/v1/echo", key=generate_key()[1]))[0] == 401
    status, body, _ = await a.call("GET", "/v1/echo", key=generate_key()[1])
    assert status == 429 and "127.0.0.1" in body["error"]["message"]


async def test_connection_slots_hold_across_sidecars_and_expire_with_a_crashed_one(
    start: StartAuthSidecar,
) -> None:
    clock = FakeClock()
    a, b = await start(clock=clock), await start(clock=clock)
    user = Principal(key_id="lls_0000000000aa", owner="o", tier="free", subject="lls_0000000000aa")  # 2 slots
    assert await acquire_connection(a.app, user, "c1")
    assert await acquire_connection(a.app, user, "c1")  # the same connection again: still one slot
    assert await acquire_connection(b.app, user, "c2")
    assert not await acquire_connection(a.app, user, "c3")
    await release_connection(b.app, user, "c2")
    assert await acquire_connection(a.app, user, "c3")
    assert not await acquire_connection(b.app, user, "c4")

    clock.now += SLOT_TTL_S / 2
    await refresh_connections(a.app)  # A is alive: its slots are renewed
    clock.now += SLOT_TTL_S * 0.9
    assert not await acquire_connection(b.app, user, "c4")
    clock.now += SLOT_TTL_S * 0.2  # A stopped renewing (as if it crashed): its slots expire
    assert await acquire_connection(b.app, user, "c4")
    assert await acquire_connection(b.app, user, "c5")


def _let_through(check: str) -> float:
    return REGISTRY.get_sample_value("llamastream_limits_unavailable_total", {"check": check}) or 0.0


async def test_a_burst_larger_than_the_redis_pool_waits_for_connections(settings: Settings) -> None:
    # redis-py's default pool raised MaxConnectionsError past its size, and the limits then failed open.
    redis, engine = redis_client(settings.redis_url, max_connections=4), make_engine(settings)
    app = authenticated_app(settings, redis=redis, engine=engine, clock=FakeClock())
    try:
        app.freeze()
        await app.startup()
        user = Principal(key_id="lls_0000000000bb", owner="o", tier="enterprise", subject="lls_0000000000bb")
        before = _let_through("rate"), _let_through("connections")
        decisions = await asyncio.gather(*(check_rate(app, user) for _ in range(300)))
        slots = await asyncio.gather(*(acquire_connection(app, user, f"c{i}") for i in range(100)))
        await asyncio.gather(*(release_connection(app, user, f"c{i}") for i in range(100)))
        assert all(d is not None and d.allowed for d in decisions)
        assert all(slots) and not app[LIMITS].unreleased
        assert (_let_through("rate"), _let_through("connections")) == before
        assert sorted(d.remaining for d in decisions if d is not None) == list(range(10_000 - 300, 10_000))
        assert await redis.zcard(f"{settings.app_id}:conn:{user.subject}") == 0
    finally:
        await app.cleanup()
        await engine.dispose()
        await redis.aclose()


async def test_a_failed_slot_release_is_made_good(start: StartAuthSidecar) -> None:
    a = await start(clock=FakeClock())
    user = Principal(key_id="lls_0000000000cc", owner="o", tier="free", subject="lls_0000000000cc")  # 2 slots
    assert await acquire_connection(a.app, user, "c1")
    assert await acquire_connection(a.app, user, "c2")
    limits = a.app[LIMITS]
    working, limits.redis = limits.redis, redis_client("redis://127.0.0.1:1/0")  # nothing listens there
    try:
        await release_connection(a.app, user, "c1")  # Redis cannot be told: the slot is kept to release later
        assert not await release_pending(a.app)
    finally:
        await limits.redis.aclose()
        limits.redis = working
    assert limits.unreleased == {
        f"{a.app[SETTINGS].app_id}:conn:{user.subject}": {f"{a.app[INSTANCE_ID]}:c1"}
    }
    limits.down_until = -math.inf  # Redis is back (the fail-open pause would let c3 in unchecked)
    assert not await acquire_connection(a.app, user, "c3")  # c1's slot is still taken in Redis
    await refresh_connections(a.app)  # the refresher renews the live slot (c2) only
    assert await release_pending(a.app)
    assert not limits.unreleased
    assert await acquire_connection(a.app, user, "c3")


async def test_usage_counts_requests_and_messages_per_key(
    start: StartAuthSidecar, settings: Settings
) -> None:
    a, b = await start(), await start()
    _, created, _ = await a.call("POST", "/v1/keys", json={"owner": owner(settings, "frank")})
    key = created["key"]
    for sidecar in (a, a, a, b, b):
        assert (await sidecar.call("GET", "/v1/echo", key=key))[0] == 200
    _, who, _ = await b.call("GET", "/v1/echo", key=key)
    usage.count_messages(b.app, Principal(**{k: who[k] for k in ("key_id", "owner", "tier", "subject")}), 7)
    await usage.flush(b.app)

    status, report, _ = await a.call("GET", "/v1/usage", key=key)
    assert status == 200 and report["key_id"] == created["id"] and report["tier"] == "free"
    assert report["limits"]["requests_per_minute"] == 60 and report["limits"]["ws_connections"] == 2
    assert len(report["days"]) == 30 and report["days"] == sorted(report["days"], key=lambda d: d["date"])
    assert report["totals"] == {"requests": 7, "messages": 7}  # 6 echoes and this request
    ttl = await a.app[REDIS].ttl(usage.usage_key(settings.app_id, created["id"], report["days"][-1]["date"]))
    assert 0 < ttl <= 40 * 86400

    status, body, _ = await a.call("GET", "/v1/usage")
    assert status == 401 and body["error"]["code"] == "key_required"


async def test_without_redis_requests_and_connections_fail_open(start: StartAuthSidecar) -> None:
    def let_through() -> float:
        return REGISTRY.get_sample_value("llamastream_limits_unavailable_total", {"check": "rate"}) or 0.0

    before = let_through()
    a = await start(redis_url="redis://127.0.0.1:1/0")  # nothing listens there
    status, _, headers = await a.call("GET", "/v1/echo")
    assert status == 200 and "RateLimit-Limit" not in headers
    assert let_through() > before
    assert await acquire_connection(a.app, Principal.anonymous("10.0.0.1"), "c1")
