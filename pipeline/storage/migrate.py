"""Runs the Alembic migrations from code (no alembic.ini): ``await upgrade(settings)`` or the command line."""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import logging
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.db import make_engine
from pipeline.settings import Settings, get_settings

__all__ = ["MIGRATIONS_DIR", "alembic_config", "head", "upgrade", "current", "main"]

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# Any fixed number will do: every process migrating the same PostgreSQL database queues on it.
ADVISORY_LOCK_ID = 0x6C6C_5F6D_6967

log = logging.getLogger(__name__)


def alembic_config(settings: Settings) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # An attribute, not an ini option: ConfigParser would take a '%' in a password for interpolation.
    config.attributes["database_url"] = settings.database_url
    return config


def head(settings: Settings) -> str | None:
    """The newest revision the code ships."""
    return ScriptDirectory.from_config(alembic_config(settings)).get_current_head()


async def upgrade(settings: Settings, revision: str = "head") -> None:
    """Bring the database to ``revision``: a no-op when it is there, safe from several processes at once."""
    config = alembic_config(settings)
    engine = make_engine(settings)
    try:
        async with _sqlite_file_lock(engine), engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                # A transaction-level lock: released by the commit (or a failed migration's rollback), so a
                # second sidecar waits here, then finds the version table at head and does nothing.
                await connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": ADVISORY_LOCK_ID})
            await connection.run_sync(_upgrade, config, revision)
    finally:
        await engine.dispose()


def _upgrade(connection: Connection, config: Config, revision: str) -> None:
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


async def current(settings: Settings) -> str | None:
    """The revision the database is at; None before the first upgrade."""
    engine = make_engine(settings)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())
    finally:
        await engine.dispose()


@asynccontextmanager
async def _sqlite_file_lock(engine: AsyncEngine) -> AsyncIterator[None]:
    """SQLite has no advisory locks: processes sharing one database file queue on a lock file beside it."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or database in (None, "", ":memory:"):
        yield
        return
    with open(Path(f"{database}.migrate-lock"), "a") as lock_file:
        # flock blocks, so wait in a thread rather than stall the event loop.
        await asyncio.to_thread(fcntl.flock, lock_file.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.storage.migrate", description="Migrate the SQL store (LLAMA_DATABASE_URL)."
    )
    parser.add_argument(
        "action", choices=["upgrade", "current"], help="upgrade to head, or show the revision"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    if args.action == "upgrade":
        asyncio.run(upgrade(settings))
    revision = asyncio.run(current(settings))
    latest = head(settings)
    print(f"{revision or 'none'}{' (head)' if revision == latest else f' (head is {latest})'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
