"""Rate limits, WebSocket connection slots and usage, shared by two sidecars through the real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from prometheus_client import REGISTRY

from pipeline.settings import Settings
from pipeline.storage.api_keys import generate_key
from tests.integration.sidecar import FakeClock, StartAuthSidecar, admin_settings, auth_sidecars, owner
from web import usage
from web.keys import REDIS
from web.principal import Principal
from web.ratelimit import SLOT_TTL_S, acquire_connection, refresh_connections, release_connection

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


async def test_usage_counts_requests_and_messages_per_key(
    start: StartAuthSidecar, settings: Settings
) -> None:
    a, b = await start(), await start()
    _, created, _ = await a.call("POST", "/v1/keys", json={"owner": owner(settings, "frank")})
    key = created["key"]
    for sidecar in (a, a, a, b, b):
        assert (await sidecar.call("GET", "/v1/echo", key=key))[0] == 200
    _, who, _ = await b.call("GET", "/v1/echo", key=key)
    await usage.count_messages(
        b.app, Principal(**{k: who[k] for k in ("key_id", "owner", "tier", "subject")}), 7
    )
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
