"""Alert retention on the real PostgreSQL: old history, finished notifications and their delivery log go,
in batches; what is still to be delivered, recent, or another deployment's stays; a worker runs it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.alerting.retention import purge_expired
from pipeline.settings import Settings
from pipeline.storage.models import AlertEvent, DeliveryAttempt, Notification
from tests.integration.alerting import (
    eventually,
    insert_rule,
    new_owner,
    rows,
)
from tests.integration.conftest import unique_settings
from tests.integration.support import WorkerProcess

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=40)
RECENT = NOW - timedelta(days=1)
CUTOFF = NOW - timedelta(days=30)


@pytest.fixture
def settings() -> Settings:
    # The worker test runs the timer every second with a 1 h retention.
    return unique_settings().model_copy(
        update={"alerts_retention_interval_s": 1.0, "alerts_retention_hours": 1}
    )


async def _event(
    engine: AsyncEngine, owner: str, rule_id: str, recorded_at: datetime, as_of: datetime
) -> str:
    source = f"test:{uuid.uuid4().hex}"
    async with engine.begin() as connection:
        await connection.execute(
            insert(AlertEvent).values(
                owner=owner, rule_id=rule_id, fingerprint=uuid.uuid4().hex[:24], state="firing", as_of=as_of,
                source=source, transition={}, recorded_at=recorded_at,
            )
        )  # fmt: skip
    return source


async def _notification(
    engine: AsyncEngine,
    app_id: str,
    owner: str,
    status: str,
    created_at: datetime,
    delivered_at: datetime | None = None,
    attempts: tuple[datetime, ...] = (),
) -> str:
    nid = f"msg_{uuid.uuid4().hex}"
    async with engine.begin() as connection:
        await connection.execute(
            insert(Notification).values(
                id=nid, app_id=app_id, owner=owner, rule_id="rule_x", group_key="grp_x",
                target_type="webhook", target="ep_x", payload={}, status=status, attempts=len(attempts),
                next_attempt_at=created_at if status == "pending" else None, created_at=created_at,
                delivered_at=delivered_at, replay=False,
            )
        )  # fmt: skip
        for n, started_at in enumerate(attempts, 1):
            await connection.execute(
                insert(DeliveryAttempt).values(
                    notification_id=nid, owner=owner, attempt=n, started_at=started_at, target="https://x",
                    request_headers={}, status_code=500, latency_ms=1.0,
                )
            )  # fmt: skip
    return nid


async def _left(engine: AsyncEngine, owner: str) -> dict[str, Any]:
    events = await rows(engine, select(AlertEvent.source).where(AlertEvent.owner == owner))
    notes = await rows(engine, select(Notification.id).where(Notification.owner == owner))
    logged = await rows(engine, select(DeliveryAttempt.notification_id).where(DeliveryAttempt.owner == owner))
    return {
        "events": {e["source"] for e in events},
        "notifications": {n["id"] for n in notes},
        "attempts": sorted(a["notification_id"] for a in logged),
    }


async def test_retention_deletes_only_old_finished_rows_of_this_deployment(
    engine: AsyncEngine, settings: Settings
) -> None:
    app_id, other_app = settings.app_id, f"{settings.app_id}-other"
    owner = new_owner()
    ours = await insert_rule(engine, owner, app_id=app_id)
    theirs = await insert_rule(engine, owner, app_id=other_app)

    old_events = [await _event(engine, owner, ours, OLD, OLD) for _ in range(5)]
    old_system = await _event(engine, owner, "system:endpoint_disabled", OLD, OLD)
    kept_events = {
        await _event(engine, owner, ours, RECENT, RECENT),
        # A replay of old data: event time years ago, stored yesterday.
        await _event(engine, owner, ours, RECENT, datetime(2022, 5, 9, tzinfo=UTC)),
        await _event(engine, owner, theirs, OLD, OLD),  # another deployment's rule: its own retention
    }

    gone = [
        await _notification(engine, app_id, owner, "delivered", OLD, OLD, (OLD, OLD + timedelta(seconds=5))),
        await _notification(engine, app_id, owner, "abandoned", OLD, None, (OLD,) * 3),
        await _notification(engine, app_id, owner, "muted", OLD),
    ]
    pending = await _notification(engine, app_id, owner, "pending", OLD, None, (OLD,))
    kept_notifications = {
        pending,  # still to be delivered (retrying, or leased by a sender)
        await _notification(engine, app_id, owner, "held", OLD),  # waits for its endpoint to be enabled
        # Replayed yesterday: kept, with its whole delivery log, until that too is old.
        await _notification(engine, app_id, owner, "delivered", OLD, RECENT, (OLD, RECENT)),
        await _notification(engine, app_id, owner, "delivered", RECENT, RECENT, (RECENT,)),
        await _notification(engine, other_app, owner, "delivered", OLD, OLD, (OLD,)),
    }
    before = await _left(engine, owner)

    # Batches of 2: several transactions per table; other tests' old rows may go too, so at least ours.
    purged = await purge_expired(engine, app_id, CUTOFF, batch=2)
    assert purged.events >= 6 and purged.notifications >= 3 and purged.attempts >= 5, purged

    after = await _left(engine, owner)
    assert after["events"] == kept_events
    assert before["events"] - after["events"] == {*old_events, old_system}
    assert after["notifications"] == kept_notifications
    assert set(before["notifications"]) - after["notifications"] == set(gone)
    assert not set(after["attempts"]) & set(gone)
    assert len(after["attempts"]) == len(before["attempts"]) - 5
    assert after["attempts"].count(pending) == 1  # a live notification keeps its log

    # Nothing left to do: a second pass deletes none of ours.
    await purge_expired(engine, app_id, CUTOFF, batch=2)
    assert await _left(engine, owner) == after


async def test_a_worker_runs_the_retention_periodically(
    engine: AsyncEngine, settings: Settings, ready_worker: WorkerProcess
) -> None:
    owner = new_owner()
    rule = await insert_rule(engine, owner, app_id=settings.app_id)
    two_hours_ago = datetime.now(UTC) - timedelta(hours=2)
    old = await _event(engine, owner, rule, two_hours_ago, two_hours_ago)
    new = await _event(engine, owner, rule, datetime.now(UTC), datetime.now(UTC))
    finished = await _notification(engine, settings.app_id, owner, "delivered", two_hours_ago, two_hours_ago)
    # (Not a pending one: the worker's delivery loop would take it.)
    recent = await _notification(engine, settings.app_id, owner, "delivered", datetime.now(UTC))

    async def swept() -> dict[str, Any] | None:
        left = await _left(engine, owner)
        return left if old not in left["events"] and finished not in left["notifications"] else None

    left = await eventually(swept, timeout=60, what="the worker's retention timer deleted the old rows")
    assert left["events"] == {new} and left["notifications"] == {recent}
