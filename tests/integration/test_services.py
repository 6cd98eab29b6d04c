"""The services `make test` starts are real and reachable with the project's settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import redis.asyncio as redis

from pipeline.db import make_engine, ping
from pipeline.settings import Settings

pytestmark = pytest.mark.integration


async def test_postgresql_from_the_environment() -> None:
    url = os.environ.get("LLAMA_DATABASE_URL", "")
    assert url.startswith("postgresql"), "make test points LLAMA_DATABASE_URL at the PostgreSQL it starts"
    engine = make_engine(Settings())
    try:
        assert "PostgreSQL" in await ping(engine)
    finally:
        await engine.dispose()


async def test_sqlite_is_the_default_sql_store(tmp_path: Path) -> None:
    engine = make_engine(Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/var/test.db"))
    try:
        assert (await ping(engine)).startswith("3.")
        assert (tmp_path / "var" / "test.db").exists()
    finally:
        await engine.dispose()


async def test_redis_from_the_environment() -> None:
    client = redis.from_url(Settings().redis_url)
    try:
        assert await client.ping()
    finally:
        await client.aclose()
