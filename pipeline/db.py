"""The SQL store's engine: PostgreSQL when a database URL is set, SQLite under var/ otherwise."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from pipeline.settings import Settings

__all__ = ["make_engine", "ping"]


def make_engine(settings: Settings) -> AsyncEngine:
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    return create_async_engine(url, pool_pre_ping=True)


async def ping(engine: AsyncEngine) -> str:
    """The server's version string; raises if the database cannot be reached."""
    async with engine.connect() as connection:
        query = "SELECT sqlite_version()" if engine.dialect.name == "sqlite" else "SELECT version()"
        return str((await connection.execute(text(query))).scalar_one())
