"""Fixtures of the alert tests: the SQL store of the test's settings, migrated."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.db import make_engine
from pipeline.settings import Settings
from pipeline.storage.migrate import upgrade


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    """An engine on the settings' database (PostgreSQL in the suite), migrated to head."""
    await upgrade(settings)
    engine = make_engine(settings)
    yield engine
    await engine.dispose()
