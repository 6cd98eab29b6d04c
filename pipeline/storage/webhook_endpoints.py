"""Webhook endpoint repository: every function takes the owner and filters by it (another owner's endpoint
is None). Signing secrets follow Standard Webhooks: "whsec_" + base64 of 32 random bytes, newest first,
at most two active (the new one, and the previous one until its ``expires_at``)."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from pipeline.storage.alert_pages import Cursor, newest_first
from pipeline.storage.models import WebhookEndpoint

__all__ = [
    "SECRET_PREFIX",
    "new_secret",
    "active_secrets",
    "create_endpoint",
    "get_endpoint",
    "list_endpoints",
    "existing_endpoint_ids",
    "delete_endpoint",
    "rotate_secret",
    "enable_endpoint",
]

SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _secret_entry(secret: str, now: datetime) -> dict[str, Any]:
    return {"secret": secret, "created_at": now.isoformat(), "expires_at": None}


def active_secrets(row: WebhookEndpoint, now: datetime) -> list[dict[str, Any]]:
    """The secrets that still sign, newest first."""
    return [
        entry
        for entry in row.secrets
        if entry.get("expires_at") is None or datetime.fromisoformat(entry["expires_at"]) > now
    ]


async def create_endpoint(
    engine: AsyncEngine, *, owner: str, url: str, description: str
) -> tuple[WebhookEndpoint, str]:
    """A new endpoint and its signing secret (the caller shows the secret this once, and at rotations)."""
    now = datetime.now(UTC)
    secret = new_secret()
    row = WebhookEndpoint(
        id=f"ep_{secrets.token_hex(8)}",
        owner=owner,
        url=url,
        description=description,
        secrets=[_secret_entry(secret, now)],
        created_at=now,
    )
    async with AsyncSession(engine, expire_on_commit=False) as session, session.begin():
        session.add(row)
    return row, secret


async def get_endpoint(engine: AsyncEngine, *, owner: str, endpoint_id: str) -> WebhookEndpoint | None:
    async with AsyncSession(engine) as session:
        row = await session.get(WebhookEndpoint, endpoint_id)
    return row if row is not None and row.owner == owner else None


async def list_endpoints(
    engine: AsyncEngine, *, owner: str, after: Cursor | None, limit: int
) -> list[WebhookEndpoint]:
    query = select(WebhookEndpoint).where(WebhookEndpoint.owner == owner)
    query = newest_first(query, WebhookEndpoint.created_at, WebhookEndpoint.id, after, limit)
    async with AsyncSession(engine) as session:
        return list((await session.execute(query)).scalars())


async def existing_endpoint_ids(engine: AsyncEngine, *, owner: str, endpoint_ids: Iterable[str]) -> set[str]:
    """Which of ``endpoint_ids`` are the owner's endpoints."""
    wanted = sorted(set(endpoint_ids))
    if not wanted:
        return set()
    query = select(WebhookEndpoint.id).where(WebhookEndpoint.owner == owner, WebhookEndpoint.id.in_(wanted))
    async with AsyncSession(engine) as session:
        return set((await session.execute(query)).scalars())


async def delete_endpoint(engine: AsyncEngine, *, owner: str, endpoint_id: str) -> bool:
    async with AsyncSession(engine) as session, session.begin():
        query = delete(WebhookEndpoint).where(
            WebhookEndpoint.id == endpoint_id, WebhookEndpoint.owner == owner
        )
        result = await session.execute(query)
    return bool(getattr(result, "rowcount", 0))


async def _locked(session: AsyncSession, owner: str, endpoint_id: str) -> WebhookEndpoint | None:
    query = (
        select(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.owner == owner)
        .with_for_update()
    )
    return (await session.execute(query)).scalar_one_or_none()


async def rotate_secret(
    engine: AsyncEngine, *, owner: str, endpoint_id: str, overlap: timedelta
) -> tuple[WebhookEndpoint, str] | None:
    """A new primary secret; the previous primary keeps signing for ``overlap`` (zero: not at all). Any
    older secret still in its overlap is dropped, so at most two are ever active."""
    now = datetime.now(UTC)
    secret = new_secret()
    async with AsyncSession(engine, expire_on_commit=False) as session, session.begin():
        row = await _locked(session, owner, endpoint_id)
        if row is None:
            return None
        kept = [_secret_entry(secret, now)]
        previous = next(iter(active_secrets(row, now)), None)
        if previous is not None and overlap > timedelta(0):
            kept.append({**previous, "expires_at": (now + overlap).isoformat()})
        row.secrets = kept
    return row, secret


async def enable_endpoint(engine: AsyncEngine, *, owner: str, endpoint_id: str) -> WebhookEndpoint | None:
    """Re-enable an endpoint the delivery loop disabled; its failure run starts afresh."""
    async with AsyncSession(engine, expire_on_commit=False) as session, session.begin():
        row = await _locked(session, owner, endpoint_id)
        if row is not None:
            row.disabled_at = None
            row.disabled_reason = None
            row.failing_since = None
    return row
