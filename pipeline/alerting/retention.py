"""Deletes alert history, finished notifications and their delivery log past the retention, in batches."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from prometheus_client import Counter
from sqlalchemy import delete, exists, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.db import make_engine
from pipeline.settings import Settings
from pipeline.storage.migrate import upgrade
from pipeline.storage.models import AlertEvent, AlertRule, DeliveryAttempt, Notification

__all__ = ["FINISHED", "BATCH", "Purged", "cutoff_of", "purge_expired", "run_retention"]

log = logging.getLogger(__name__)

PURGED = Counter(
    "llamastream_alert_rows_purged_total", "alert rows deleted by the retention job, by table", ["table"]
)
# Statuses a notification never leaves by itself. pending (due, or leased by a sender) and held (waiting
# for its endpoint to be enabled) are still to be delivered: never deleted, however old.
FINISHED = ("delivered", "abandoned", "muted")
# Rows per transaction: each batch locks only its own rows, briefly, so delivery and the API never wait long.
BATCH = 1000


@dataclass(frozen=True)
class Purged:
    events: int = 0
    notifications: int = 0
    attempts: int = 0


def cutoff_of(settings: Settings, now: datetime) -> datetime:
    return now - timedelta(hours=settings.alerts_retention_hours)


async def purge_expired(engine: AsyncEngine, app_id: str, cutoff: datetime, *, batch: int = BATCH) -> Purged:
    """Delete, ``batch`` rows per transaction until none is left: alert events stored before ``cutoff``
    (except those of another deployment's rules), and this deployment's finished notifications created and
    last delivered or attempted before it, together with their delivery attempts."""
    events = notifications = attempts = 0
    while (done := await _purge_events(engine, app_id, cutoff, batch)) > 0:
        events += done
        if done < batch:
            break
        await asyncio.sleep(0)  # let the worker's other tasks run between batches
    while True:
        done, logged = await _purge_notifications(engine, app_id, cutoff, batch)
        notifications += done
        attempts += logged
        if done < batch:
            break
        await asyncio.sleep(0)
    return Purged(events, notifications, attempts)


async def _purge_events(engine: AsyncEngine, app_id: str, cutoff: datetime, batch: int) -> int:
    # alert_events has no app id: an event is another deployment's when its rule is. System events
    # (system:endpoint_disabled) and events of rules no longer stored belong to none, so any deployment may.
    theirs = exists().where(AlertRule.id == AlertEvent.rule_id, AlertRule.app_id != app_id)
    query = (
        select(AlertEvent.id)
        .where(AlertEvent.recorded_at < cutoff, ~theirs)
        .order_by(AlertEvent.recorded_at)
        .limit(batch)
        .with_for_update(skip_locked=True)
    )
    async with engine.begin() as connection:
        ids = list((await connection.execute(query)).scalars())
        if ids:
            await connection.execute(delete(AlertEvent).where(AlertEvent.id.in_(ids)))
    PURGED.labels("alert_events").inc(len(ids))
    return len(ids)


async def _purge_notifications(
    engine: AsyncEngine, app_id: str, cutoff: datetime, batch: int
) -> tuple[int, int]:
    # A notification replayed recently keeps its whole delivery log until that, too, is past the cutoff.
    recent_attempt = exists().where(
        DeliveryAttempt.notification_id == Notification.id, DeliveryAttempt.started_at >= cutoff
    )
    query = (
        select(Notification.id)
        .where(
            Notification.app_id == app_id,
            Notification.status.in_(FINISHED),
            Notification.created_at < cutoff,
            or_(Notification.delivered_at.is_(None), Notification.delivered_at < cutoff),
            ~recent_attempt,
        )
        .order_by(Notification.created_at)
        .limit(batch)
        # Rows a sender or a replay holds are skipped; the lock keeps a replay from making one pending
        # between this select and the delete.
        .with_for_update(skip_locked=True)
    )
    async with engine.begin() as connection:
        ids = list((await connection.execute(query)).scalars())
        logged = 0
        if ids:
            result = await connection.execute(
                delete(DeliveryAttempt).where(DeliveryAttempt.notification_id.in_(ids))
            )
            logged = result.rowcount
            await connection.execute(delete(Notification).where(Notification.id.in_(ids)))
    PURGED.labels("notifications").inc(len(ids))
    PURGED.labels("delivery_attempts").inc(logged)
    return len(ids), logged


async def run_retention(settings: Settings, now: datetime | None = None) -> Purged:
    """One pass of the retention job with its own short-lived engine (migrations first: a worker may run
    it before anything else touched the database)."""
    await upgrade(settings)
    engine = make_engine(settings)
    try:
        cutoff = cutoff_of(settings, now or datetime.now(UTC))
        purged = await purge_expired(engine, settings.app_id, cutoff)
    finally:
        await engine.dispose()
    if purged != Purged():
        log.info(
            "alert retention: deleted %d events, %d notifications, %d delivery attempts stored before %s",
            purged.events, purged.notifications, purged.attempts, cutoff.isoformat(),
        )  # fmt: skip
    return purged
