"""What the alerts API reads of the notifier's tables (outbox, delivery log, alert history), plus manual
replay, and of the history rollups (back-tests). Every function on an owner's rows takes the owner and filters
by it: another owner's row is None or absent. History rollups are public data and have no owner."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from pipeline.storage.alert_pages import Cursor, newest_first, utc
from pipeline.storage.models import AlertEvent, DeliveryAttempt, HistoryPoint, Notification

__all__ = [
    "MAX_ATTEMPTS_SHOWN",
    "list_notifications",
    "get_notification",
    "attempts_of",
    "request_replay",
    "list_events",
    "newest_series_rows",
    "count_history_rows",
]

# The newest attempts a notification's detail shows (retries are capped far below this).
MAX_ATTEMPTS_SHOWN = 200


async def list_notifications(
    engine: AsyncEngine,
    *,
    owner: str,
    after: Cursor | None,
    limit: int,
    status: str | None = None,
    rule_id: str | None = None,
) -> list[Notification]:
    query = select(Notification).where(Notification.owner == owner)
    if status is not None:
        query = query.where(Notification.status == status)
    if rule_id is not None:
        query = query.where(Notification.rule_id == rule_id)
    query = newest_first(query, Notification.created_at, Notification.id, after, limit)
    async with AsyncSession(engine) as session:
        return list((await session.execute(query)).scalars())


async def get_notification(engine: AsyncEngine, *, owner: str, notification_id: str) -> Notification | None:
    async with AsyncSession(engine) as session:
        row = await session.get(Notification, notification_id)
    return row if row is not None and row.owner == owner else None


async def attempts_of(engine: AsyncEngine, *, owner: str, notification_id: str) -> list[DeliveryAttempt]:
    """The notification's delivery log, oldest attempt first (the newest MAX_ATTEMPTS_SHOWN)."""
    query = (
        select(DeliveryAttempt)
        .where(DeliveryAttempt.owner == owner, DeliveryAttempt.notification_id == notification_id)
        .order_by(DeliveryAttempt.id.desc())
        .limit(MAX_ATTEMPTS_SHOWN)
    )
    async with AsyncSession(engine) as session:
        return list(reversed(list((await session.execute(query)).scalars())))


async def request_replay(engine: AsyncEngine, *, owner: str, notification_id: str) -> Notification | None:
    """Queue the notification for delivery now, whatever its status; the delivery loop logs the attempts it
    makes for it as replays. The webhook-id stays the same, so a receiver can tell it already has it."""
    async with AsyncSession(engine, expire_on_commit=False) as session, session.begin():
        query = (
            select(Notification)
            .where(Notification.id == notification_id, Notification.owner == owner)
            .with_for_update()
        )
        row = (await session.execute(query)).scalar_one_or_none()
        if row is not None:
            row.status = "pending"
            row.next_attempt_at = datetime.now(UTC)
            row.replay = True
            # A full run of retries, even for a notification that had used up its attempts; the log keeps
            # the earlier attempts, and the replayed ones are flagged.
            row.attempts = 0
    return row


async def list_events(
    engine: AsyncEngine,
    *,
    owner: str,
    after: Cursor | None,
    limit: int,
    rule_id: str | None = None,
    state: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[AlertEvent]:
    """The owner's alert history, newest first by event time; ``since <= as_of < until``."""
    query = select(AlertEvent).where(AlertEvent.owner == owner)
    if rule_id is not None:
        query = query.where(AlertEvent.rule_id == rule_id)
    if state is not None:
        query = query.where(AlertEvent.state == state)
    if since is not None:
        query = query.where(AlertEvent.as_of >= since)
    if until is not None:
        query = query.where(AlertEvent.as_of < until)
    query = newest_first(query, AlertEvent.as_of, AlertEvent.id, after, limit)
    async with AsyncSession(engine) as session:
        return list((await session.execute(query)).scalars())


def _history_range(channel: str, resolution: str, start: datetime, end: datetime) -> list[Any]:
    return [
        HistoryPoint.channel == channel,
        HistoryPoint.resolution == resolution,
        HistoryPoint.bucket_start >= utc(start),
        HistoryPoint.bucket_start < utc(end),
    ]


async def newest_series_rows(
    engine: AsyncEngine, channel: str, resolution: str, start: datetime, end: datetime, *, limit: int
) -> list[tuple[str, dict[str, Any]]]:
    """(series key, its newest stored row) of every series with a bucket in [start, end), at most ``limit``:
    what a back-test matches a rule's scope against."""
    newest = (
        select(HistoryPoint.series_key, func.max(HistoryPoint.bucket_start).label("bucket"))
        .where(*_history_range(channel, resolution, start, end))
        .group_by(HistoryPoint.series_key)
        .subquery()
    )
    query = (
        select(HistoryPoint.series_key, HistoryPoint.fields)
        .join(
            newest,
            and_(
                HistoryPoint.series_key == newest.c.series_key, HistoryPoint.bucket_start == newest.c.bucket
            ),
        )
        .where(HistoryPoint.channel == channel, HistoryPoint.resolution == resolution)
        .order_by(HistoryPoint.series_key)
        .limit(limit)
    )
    async with engine.connect() as connection:
        return [(key, dict(fields)) for key, fields in await connection.execute(query)]


async def count_history_rows(
    engine: AsyncEngine,
    channel: str,
    resolution: str,
    start: datetime,
    end: datetime,
    series_keys: Sequence[str],
) -> int:
    if not series_keys:
        return 0
    query = (
        select(func.count())
        .select_from(HistoryPoint)
        .where(
            *_history_range(channel, resolution, start, end), HistoryPoint.series_key.in_(list(series_keys))
        )
    )
    async with engine.connect() as connection:
        return int((await connection.execute(query)).scalar_one())
