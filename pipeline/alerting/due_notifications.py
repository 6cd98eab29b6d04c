"""The transactional outbox, sending side: claiming due notifications (leased, so no other worker sends
them meanwhile and a dead sender's are sent again), and releasing those held for a disabled endpoint."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from pipeline.alerting.attempt import Endpoint, Outgoing
from pipeline.alerting.sql import utc
from pipeline.storage.models import Notification, WebhookEndpoint

__all__ = ["Claim", "claim_due", "release_held"]


@dataclass(frozen=True)
class Claim:
    outgoing: list[Outgoing]
    next_attempt_at: datetime | None  # the earliest attempt still pending after these (to sleep until)


async def claim_due(engine: AsyncEngine, app_id: str, now: datetime, lease: timedelta, limit: int) -> Claim:
    """Take up to ``limit`` due notifications: each is leased (its next attempt pushed past the send's
    deadline) and its attempt counted, so no other worker sends it meanwhile, and one whose sender died
    is sent again once the lease runs out. Webhook endpoints come along, read in the same transaction."""
    async with engine.begin() as connection:
        due = (
            select(Notification.id)
            .where(
                Notification.app_id == app_id,
                Notification.status == "pending",
                Notification.next_attempt_at <= now,
            )
            .order_by(Notification.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        claimed = (
            update(Notification)
            .where(Notification.id.in_(due.scalar_subquery()))
            .values(attempts=Notification.attempts + 1, next_attempt_at=now + lease)
            .returning(
                Notification.id,
                Notification.owner,
                Notification.target_type,
                Notification.target,
                Notification.payload,
                Notification.created_at,
                Notification.attempts,
                Notification.replay,
            )
        )
        rows = (await connection.execute(claimed)).all()
        endpoints = await _endpoints(
            connection, [(r.owner, r.target) for r in rows if r.target_type == "webhook"]
        )
        following = await connection.scalar(
            select(func.min(Notification.next_attempt_at)).where(
                Notification.app_id == app_id, Notification.status == "pending"
            )
        )
    outgoing = [
        Outgoing(
            id=row.id,
            owner=row.owner,
            target_type=row.target_type,
            target=row.target,
            payload=row.payload,
            created_at=utc(row.created_at) or now,
            attempt=row.attempts,
            replay=row.replay,
            endpoint=endpoints.get((row.owner, row.target)) if row.target_type == "webhook" else None,
        )
        for row in sorted(rows, key=lambda r: r.id)
    ]
    return Claim(outgoing, utc(following))


async def _endpoints(
    connection: AsyncConnection, wanted: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], Endpoint]:
    """The webhook endpoints of these (owner, endpoint id) pairs that exist; owner-checked."""
    if not wanted:
        return {}
    query = select(
        WebhookEndpoint.id,
        WebhookEndpoint.owner,
        WebhookEndpoint.url,
        WebhookEndpoint.secrets,
        WebhookEndpoint.disabled_at,
    ).where(WebhookEndpoint.id.in_(sorted({target for _, target in wanted})))
    found = {}
    for row in await connection.execute(query):
        found[(row.owner, row.id)] = Endpoint(row.url, list(row.secrets or []), row.disabled_at is not None)
    return {pair: found[pair] for pair in wanted if pair in found}


async def release_held(engine: AsyncEngine, app_id: str, now: datetime) -> int:
    """Held notifications whose endpoint is enabled again become due (the API's enable needs no hook)."""
    async with engine.begin() as connection:
        result = await connection.execute(
            update(Notification)
            .where(
                Notification.app_id == app_id,
                Notification.status == "held",
                Notification.target_type == "webhook",
                Notification.target == WebhookEndpoint.id,
                Notification.owner == WebhookEndpoint.owner,
                WebhookEndpoint.disabled_at.is_(None),
            )
            .values(status="pending", next_attempt_at=now)
        )
    return int(getattr(result, "rowcount", 0) or 0)
