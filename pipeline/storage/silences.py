"""Silence repository: every function takes the owner and filters by it (another owner's silence is None)."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Literal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from pipeline.storage.alert_pages import Cursor, newest_first, utc
from pipeline.storage.models import Silence

__all__ = [
    "SilenceState",
    "state_of",
    "create_silence",
    "get_silence",
    "list_silences",
    "expire_silence",
]

SilenceState = Literal["pending", "active", "expired"]


def state_of(row: Silence, now: datetime) -> SilenceState:
    if utc(row.ends_at) <= now:
        return "expired"
    return "pending" if utc(row.starts_at) > now else "active"


async def create_silence(
    engine: AsyncEngine,
    *,
    owner: str,
    matchers: list[dict[str, str]],
    starts_at: datetime,
    ends_at: datetime,
    comment: str,
) -> Silence:
    row = Silence(
        id=f"sil_{secrets.token_hex(8)}",
        owner=owner,
        matchers=matchers,
        starts_at=starts_at,
        ends_at=ends_at,
        comment=comment,
        created_at=datetime.now(UTC),
    )
    async with AsyncSession(engine, expire_on_commit=False) as session, session.begin():
        session.add(row)
    return row


async def get_silence(engine: AsyncEngine, *, owner: str, silence_id: str) -> Silence | None:
    async with AsyncSession(engine) as session:
        row = await session.get(Silence, silence_id)
    return row if row is not None and row.owner == owner else None


async def list_silences(
    engine: AsyncEngine,
    *,
    owner: str,
    after: Cursor | None,
    limit: int,
    state: SilenceState | None = None,
    now: datetime | None = None,
) -> list[Silence]:
    """The owner's silences, newest first, optionally only those in ``state`` at ``now``."""
    now = now or datetime.now(UTC)
    query = select(Silence).where(Silence.owner == owner)
    if state == "expired":
        query = query.where(Silence.ends_at <= now)
    elif state == "active":
        query = query.where(Silence.starts_at <= now, Silence.ends_at > now)
    elif state == "pending":
        query = query.where(Silence.starts_at > now, Silence.ends_at > now)
    query = newest_first(query, Silence.created_at, Silence.id, after, limit)
    async with AsyncSession(engine) as session:
        return list((await session.execute(query)).scalars())


async def expire_silence(engine: AsyncEngine, *, owner: str, silence_id: str) -> Silence | None:
    """End the silence now (a pending one never starts); an expired one is left as it is."""
    now = datetime.now(UTC)
    async with AsyncSession(engine, expire_on_commit=False) as session, session.begin():
        query = select(Silence).where(Silence.id == silence_id, Silence.owner == owner).with_for_update()
        row = (await session.execute(query)).scalar_one_or_none()
        if row is not None and utc(row.ends_at) > now:
            row.ends_at = now
            row.starts_at = min(utc(row.starts_at), now)
    return row
