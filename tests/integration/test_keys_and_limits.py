"""Keys, tiers, rate limits, connection slots and usage on the real Redis and PostgreSQL, two sidecars."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from prometheus_client import REGISTRY
from pydantic import SecretStr
from redis.asyncio import Redis
from sqlalchemy import delete, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from pipeline.db import make_engine
from pipeline.settings import Settings
from pipeline.storage import migrate
from pipeline.storage.api_keys import KEY_PATTERN, generate_key, get_key
from pipeline.storage.models import ApiKey, Base
from web import auth, usage
from web.keys import ENGINE, INSTANCE_ID, PRINCIPAL, REDIS, SETTINGS
from web.principal import Principal
from web.ratelimit import SLOT_TTL_S, acquire_connection, refresh_connections, release_connection

pytestmark = pytest.mark.integration


class FakeClock:
    """Shared by both sidecars of a test: limits then depend on requests made, not on how long they took."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Sidecar:
    app: web.Application
    server: TestServer
    session: ClientSession

    async def call(
        self, method: str, path: str, *, key: str | None = None, admin: bool = False, **kwargs: Any
    ) -> tuple[int, Any, dict[str, str]]:
        headers = dict(kwargs.pop("headers", {}))
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        if admin:
            headers["Authorization"] = f"Bearer {self.app[SETTINGS].admin_token.get_secret_value()}"  # type: ignore[union-attr]
        async with self.session.request(
            method, self.server.make_url(path), headers=headers, **kwargs
        ) as response:
            body = await response.json() if response.content_type == "application/json" else None
            return response.status, body, dict(response.headers)


async def echo(request: web.Request) -> web.Response:
    principal: Principal = request[PRINCIPAL]
    return web.json_response({**principal.__dict__, "admin": auth.is_admin(request)})


async def ok(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@pytest.fixture
async def settings() -> AsyncIterator[Settings]:
    tag = uuid.uuid4().hex[:10]
    settings = Settings(app_id=f"llamastream-test-{tag}", admin_token=SecretStr(f"admin-{uuid.uuid4().hex}"))
    assert make_url(settings.database_url).get_backend_name() == "postgresql", (
        f"integration tests need PostgreSQL, got {settings.database_url!r}: set LLAMA_DATABASE_URL"
    )
    await migrate.upgrade(settings)
    yield settings
    redis = Redis.from_url(settings.redis_url)
    keys = [key async for key in redis.scan_iter(match=f"{settings.app_id}:*")]
    if keys:
        await redis.delete(*keys)
    await redis.aclose()
    engine = make_engine(settings)
    async with engine.begin() as connection:
        await connection.execute(delete(ApiKey).where(ApiKey.owner.startswith(settings.app_id)))
    await engine.dispose()


StartSidecar = Callable[..., Awaitable[Sidecar]]


@pytest.fixture
async def start(settings: Settings) -> AsyncIterator[StartSidecar]:
    """Start sidecars sharing Redis and PostgreSQL (but not memory), as two processes would."""
    started: list[Sidecar] = []

    async def start_one(
        *,
        clock: FakeClock | None = None,
        key_cache_ttl_s: float = auth.KEY_CACHE_TTL_S,
        redis_url: str | None = None,
        hooks: tuple[auth.RevocationHook, ...] = (),
    ) -> Sidecar:
        app = web.Application(middlewares=[auth.middleware])
        app[SETTINGS] = settings
        app[INSTANCE_ID] = f"test-{uuid.uuid4().hex[:8]}"

        async def resources(app: web.Application) -> AsyncIterator[None]:
            app[REDIS] = Redis.from_url(redis_url or settings.redis_url)
            app[ENGINE] = make_engine(settings)
            yield
            await app[ENGINE].dispose()
            await app[REDIS].aclose()

        app.cleanup_ctx.append(resources)
        auth.setup(app, clock=clock, key_cache_ttl_s=key_cache_ttl_s)
        for hook in hooks:
            auth.on_key_revoked(app, hook)
        app.router.add_get("/v1/echo", echo)
        app.router.add_get("/healthz", ok)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        sidecar = Sidecar(app, server, ClientSession())
        started.append(sidecar)
        return sidecar

    yield start_one
    for sidecar in reversed(started):
        await sidecar.session.close()
        await sidecar.server.close()


def owner(settings: Settings, name: str) -> str:
    return f"{settings.app_id}-{name}"


async def test_keys_are_stored_hashed_and_the_secret_is_shown_once(
    start: StartSidecar, settings: Settings
) -> None:
    a = await start()
    status, created, _ = await a.call(
        "POST", "/v1/keys", admin=True, json={"owner": owner(settings, "alice"), "tier": "pro", "label": "ci"}
    )
    assert status == 201, created
    key = created["key"]
    assert KEY_PATTERN.match(key) and created["id"] == key[:16] and created["tier"] == "pro"
    row = await get_key(a.app[ENGINE], created["id"])
    assert row is not None and row.secret_hash == hashlib.sha256(key.encode()).hexdigest()
    secret = key[17:]
    assert not any(secret in str(getattr(row, column.key)) for column in inspect(ApiKey).columns)

    status, who, _ = await a.call("GET", "/v1/echo", key=key)
    assert (
        status == 200
        and who["key_id"] == created["id"]
        and who["tier"] == "pro"
        and who["subject"] == key[:16]
    )
    status, listing, _ = await a.call("GET", "/v1/keys", key=key)
    assert status == 200 and [k["id"] for k in listing["keys"]] == [created["id"]]
    assert set(listing["keys"][0]) == {"id", "owner", "tier", "label", "created_at", "revoked_at"}


async def test_owners_see_and_revoke_only_their_own_keys(start: StartSidecar, settings: Settings) -> None:
    a = await start()
    alice, bob = owner(settings, "alice"), owner(settings, "bob")
    _, alice_pro, _ = await a.call("POST", "/v1/keys", admin=True, json={"owner": alice, "tier": "pro"})
    status, alice_free, _ = await a.call("POST", "/v1/keys", key=alice_pro["key"], json={"label": "laptop"})
    assert status == 201 and alice_free["owner"] == alice and alice_free["tier"] == "free"
    status, bob_key, _ = await a.call("POST", "/v1/keys", json={"owner": bob})
    assert status == 201 and bob_key["tier"] == "free"

    # Self-service cannot claim an existing owner, nor a paid tier.
    status, body, _ = await a.call("POST", "/v1/keys", json={"owner": alice})
    assert status == 409 and body["error"]["code"] == "owner_taken"
    status, body, _ = await a.call(
        "POST", "/v1/keys", json={"owner": owner(settings, "carol"), "tier": "pro"}
    )
    assert status == 403 and body["error"]["code"] == "admin_required"
    status, body, _ = await a.call("POST", "/v1/keys", key=bob_key["key"], json={"owner": alice})
    assert status == 403 and body["error"]["code"] == "forbidden"

    status, listing, _ = await a.call("GET", "/v1/keys", key=bob_key["key"])
    assert status == 200 and [k["id"] for k in listing["keys"]] == [bob_key["id"]]
    status, body, _ = await a.call("GET", f"/v1/keys?owner={alice}", key=bob_key["key"])
    assert status == 403 and body["error"]["code"] == "forbidden"
    status, body, _ = await a.call("DELETE", f"/v1/keys/{alice_pro['id']}", key=bob_key["key"])
    assert status == 404 and body["error"]["code"] == "key_not_found"
    assert (await a.call("GET", "/v1/echo", key=alice_pro["key"]))[0] == 200
    for method, path in (("GET", "/v1/keys"), ("DELETE", f"/v1/keys/{bob_key['id']}")):
        status, body, _ = await a.call(method, path)
        assert status == 401 and body["error"]["code"] == "key_required"

    status, _, _ = await a.call("DELETE", f"/v1/keys/{alice_free['id']}", key=alice_pro["key"])
    assert status == 204
    status, body, _ = await a.call("GET", "/v1/echo", key=alice_free["key"])
    assert status == 401 and body["error"]["reason"] == "unknown_or_revoked"
    _, listing, _ = await a.call("GET", "/v1/keys", key=alice_pro["key"])
    revoked = {k["id"]: k["revoked_at"] for k in listing["keys"]}
    assert revoked[alice_pro["id"]] is None and revoked[alice_free["id"]] is not None

    _, everything, _ = await a.call("GET", f"/v1/keys?owner={alice}", admin=True)
    assert {k["id"] for k in everything["keys"]} == {alice_pro["id"], alice_free["id"]}
    assert (await a.call("DELETE", f"/v1/keys/{bob_key['id']}", admin=True))[0] == 204
    assert (await a.call("DELETE", f"/v1/keys/{bob_key['id']}", admin=True))[0] == 204  # idempotent


async def test_a_revocation_reaches_every_sidecar_at_once(start: StartSidecar, settings: Settings) -> None:
    revoked_on_b: list[str] = []
    heard = asyncio.Event()

    async def hook(key_id: str) -> None:
        revoked_on_b.append(key_id)
        heard.set()

    a = await start()
    # B caches lookups for an hour: only the announcement over Redis can make it forget the key.
    b = await start(key_cache_ttl_s=3600, hooks=(hook,))
    _, created, _ = await a.call("POST", "/v1/keys", admin=True, json={"owner": owner(settings, "dave")})
    assert (await b.call("GET", "/v1/echo", key=created["key"]))[0] == 200
    assert (await a.call("DELETE", f"/v1/keys/{created['id']}", admin=True))[0] == 204
    await heard.wait()
    assert revoked_on_b == [created["id"]]
    status, body, _ = await b.call("GET", "/v1/echo", key=created["key"])
    assert status == 401 and body["error"]["code"] == "invalid_key"


async def test_bad_keys_are_refused_with_the_reason_and_never_echoed(start: StartSidecar) -> None:
    a = await start()
    status, who, _ = await a.call("GET", "/v1/echo")
    assert (
        status == 200 and who["key_id"] is None and who["tier"] == "free" and who["subject"] == "ip:127.0.0.1"
    )

    status, body, headers = await a.call("GET", "/v1/echo", key="not-a-key-but-some-password")
    assert status == 401 and body["error"]["code"] == "invalid_key" and body["error"]["reason"] == "malformed"
    assert "some-password" not in body["error"]["message"] and headers["WWW-Authenticate"] == "Bearer"
    status, body, _ = await a.call("GET", "/v1/echo", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert status == 401 and body["error"]["reason"] == "malformed"

    key_id, unknown = generate_key()
    for options in ({"key": unknown}, {"headers": {"X-API-Key": unknown}}, {"params": {"api_key": unknown}}):
        status, body, _ = await a.call("GET", "/v1/echo", **options)
        assert status == 401 and body["error"]["reason"] == "unknown_or_revoked"
        assert key_id in body["error"]["message"] and unknown[17:] not in body["error"]["message"]

    status, body, _ = await a.call("GET", "/v1/echo", headers={"X-API-Key": "lls_short"})
    assert status == 401 and "X-API-Key" in body["error"]["message"]
    # The admin token is accepted as a bearer credential only.
    token = a.app[SETTINGS].admin_token.get_secret_value()  # type: ignore[union-attr]
    status, body, _ = await a.call("GET", "/v1/echo", headers={"X-API-Key": token})
    assert status == 401 and token not in body["error"]["message"]
    status, who, _ = await a.call("GET", "/v1/echo", admin=True)
    assert status == 200 and who["admin"] is True


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"owner": ""}, "owner"),
        ({"owner": "o" * 201}, "owner"),
        ({"owner": "o", "tier": "gold"}, "tier"),
        ({"owner": "o", "label": "l" * 201}, "label"),
        ({"owner": "o", "colour": "red"}, "colour"),
        ({}, "owner"),
    ],
)
async def test_invalid_bodies_are_refused_naming_the_field(
    start: StartSidecar, body: dict[str, Any], field: str
) -> None:
    a = await start()
    status, answer, _ = await a.call("POST", "/v1/keys", admin=True, json=body)
    assert (
        status == 400 and answer["error"]["code"] == "invalid_request" and answer["error"]["field"] == field
    )
    assert repr(field) in answer["error"]["message"]
    status, answer, _ = await a.call("POST", "/v1/keys", admin=True, data=b"{not json")
    assert status == 400 and answer["error"]["code"] == "invalid_request"


async def test_the_rate_limit_holds_across_sidecars(start: StartSidecar, settings: Settings) -> None:
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


async def test_guessing_keys_is_rate_limited_by_address(start: StartSidecar) -> None:
    a = await start(clock=FakeClock())
    for _ in range(60):
        assert (await a.call("GET", "/v1/echo", key=generate_key()[1]))[0] == 401
    status, body, _ = await a.call("GET", "/v1/echo", key=generate_key()[1])
    assert status == 429 and "127.0.0.1" in body["error"]["message"]


async def test_connection_slots_hold_across_sidecars_and_expire_with_a_crashed_one(
    start: StartSidecar,
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


async def test_usage_counts_requests_and_messages_per_key(start: StartSidecar, settings: Settings) -> None:
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


async def test_without_redis_requests_and_connections_fail_open(start: StartSidecar) -> None:
    def let_through() -> float:
        return REGISTRY.get_sample_value("llamastream_limits_unavailable_total", {"check": "rate"}) or 0.0

    before = let_through()
    a = await start(redis_url="redis://127.0.0.1:1/0")  # nothing listens there
    status, _, headers = await a.call("GET", "/v1/echo")
    assert status == 200 and "RateLimit-Limit" not in headers
    assert let_through() > before
    assert await acquire_connection(a.app, Principal.anonymous("10.0.0.1"), "c1")


async def _compare(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as connection:
        return await connection.run_sync(
            lambda c: compare_metadata(MigrationContext.configure(c), Base.metadata)
        )


async def test_migrations_build_the_models_schema_once_even_when_run_together(settings: Settings) -> None:
    name = f"llamastream_t{uuid.uuid4().hex[:10]}"
    server = create_async_engine(settings.database_url, isolation_level="AUTOCOMMIT")
    async with server.connect() as connection:
        await connection.execute(text(f'CREATE DATABASE "{name}"'))
    fresh = settings.model_copy(
        update={"database_url": make_url(settings.database_url).set(database=name).render_as_string(False)}
    )
    engine = make_engine(fresh)
    try:
        assert await migrate.current(fresh) is None
        await asyncio.gather(migrate.upgrade(fresh), migrate.upgrade(fresh))  # two sidecars starting together
        assert await migrate.current(fresh) == migrate.head(fresh) == "0001"
        assert await _compare(engine) == []
        async with engine.begin() as connection:
            await connection.execute(
                text("INSERT INTO api_keys VALUES ('k', 'h', 'o', 'free', '', now(), NULL)")
            )
        await migrate.upgrade(fresh)  # a no-op: the row is still there
        async with engine.connect() as connection:
            assert (await connection.execute(text("SELECT count(*) FROM api_keys"))).scalar_one() == 1
        command = [sys.executable, "-m", "pipeline.storage.migrate", "current"]
        process = await asyncio.create_subprocess_exec(
            *command,
            env={**os.environ, "LLAMA_DATABASE_URL": fresh.database_url},
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await process.communicate()
        assert process.returncode == 0 and out.decode().strip() == "0001 (head)"
    finally:
        await engine.dispose()
        async with server.connect() as connection:
            await connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        await server.dispose()


async def test_migrations_run_on_sqlite_too(settings: Settings, tmp_path: Path) -> None:
    local = settings.model_copy(update={"database_url": f"sqlite+aiosqlite:///{tmp_path / 'llama.db'}"})
    await asyncio.gather(migrate.upgrade(local), migrate.upgrade(local))
    await migrate.upgrade(local)
    assert await migrate.current(local) == "0001"
    engine = make_engine(local)
    try:
        assert await _compare(engine) == []
    finally:
        await engine.dispose()
