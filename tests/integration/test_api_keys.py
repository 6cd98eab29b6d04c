"""API keys on the real PostgreSQL and Redis, two sidecars: creation, ownership, revocation, bad keys, and
the migrations that build their table."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from pipeline.db import make_engine
from pipeline.settings import Settings
from pipeline.storage import migrate
from pipeline.storage.api_keys import KEY_PATTERN, generate_key, get_key
from pipeline.storage.models import ApiKey, Base
from tests.integration.sidecar import StartAuthSidecar, admin_settings, auth_sidecars, owner
from web.keys import ENGINE, SETTINGS

pytestmark = pytest.mark.integration


@pytest.fixture
async def settings() -> AsyncIterator[Settings]:
    async with admin_settings() as settings:
        yield settings


@pytest.fixture
async def start(settings: Settings) -> AsyncIterator[StartAuthSidecar]:
    async with auth_sidecars(settings) as start:
        yield start


async def test_keys_are_stored_hashed_and_the_secret_is_shown_once(
    start: StartAuthSidecar, settings: Settings
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


async def test_owners_see_and_revoke_only_their_own_keys(start: StartAuthSidecar, settings: Settings) -> None:
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


async def test_a_revocation_reaches_every_sidecar_at_once(
    start: StartAuthSidecar, settings: Settings
) -> None:
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


async def test_bad_keys_are_refused_with_the_reason_and_never_echoed(start: StartAuthSidecar) -> None:
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
    start: StartAuthSidecar, body: dict[str, Any], field: str
) -> None:
    a = await start()
    status, answer, _ = await a.call("POST", "/v1/keys", admin=True, json=body)
    assert (
        status == 400 and answer["error"]["code"] == "invalid_request" and answer["error"]["field"] == field
    )
    assert repr(field) in answer["error"]["message"]
    status, answer, _ = await a.call("POST", "/v1/keys", admin=True, data=b"{not json")
    assert status == 400 and answer["error"]["code"] == "invalid_request"


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
    # The newest revision, whichever it is: the test outlives each new migration.
    head = migrate.head(fresh)
    try:
        assert await migrate.current(fresh) is None and head is not None
        await asyncio.gather(migrate.upgrade(fresh), migrate.upgrade(fresh))  # two sidecars starting together
        assert await migrate.current(fresh) == head
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
        assert process.returncode == 0 and out.decode().strip() == f"{head} (head)"
    finally:
        await engine.dispose()
        async with server.connect() as connection:
            await connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        await server.dispose()


async def test_migrations_run_on_sqlite_too(settings: Settings, tmp_path: Path) -> None:
    local = settings.model_copy(update={"database_url": f"sqlite+aiosqlite:///{tmp_path / 'llama.db'}"})
    await asyncio.gather(migrate.upgrade(local), migrate.upgrade(local))
    await migrate.upgrade(local)
    assert await migrate.current(local) == migrate.head(local)
    engine = make_engine(local)
    try:
        assert await _compare(engine) == []
    finally:
        await engine.dispose()
