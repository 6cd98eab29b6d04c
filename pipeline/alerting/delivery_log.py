"""After each attempt, in one transaction: the delivery log row, the notification's next step (delivered,
retry at, abandoned, held) and the webhook endpoint's health, disabling it with a notice to its owner
after a long run of failures."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from pipeline.alerting.attempt import AttemptResult, Outgoing
from pipeline.alerting.messages import AlertTransition, fingerprint
from pipeline.alerting.sql import insert_on_conflict, table_of
from pipeline.settings import Settings
from pipeline.storage.models import AlertEvent, DeliveryAttempt, Notification, WebhookEndpoint

__all__ = ["Outcome", "record_result", "disabled_notice"]

Outcome = Literal["delivered", "retry", "abandoned", "held", "disabled"]
SYSTEM_RULE = "system:endpoint_disabled"


@dataclass(frozen=True)
class _Endpoint:
    id: str
    url: str
    failing_since: datetime


async def record_result(
    engine: AsyncEngine,
    settings: Settings,
    outgoing: Outgoing,
    result: AttemptResult,
    started_at: datetime,
    retry_in: float,
) -> Outcome:
    """Log the attempt and decide what comes next; ``retry_in`` is the backoff the caller drew."""
    now = datetime.now(UTC)
    async with engine.begin() as connection:
        row = update(Notification).where(Notification.id == outgoing.id)
        if result.held:
            # Not an attempt: the claim's count is given back, and the endpoint's enable releases it.
            await connection.execute(
                row.values(status="held", attempts=Notification.attempts - 1, next_attempt_at=None)
            )
            return "held"
        await connection.execute(
            insert_on_conflict(connection, table_of(DeliveryAttempt)).values(
                notification_id=outgoing.id,
                owner=outgoing.owner,
                attempt=outgoing.attempt,
                started_at=started_at,
                target=result.target[:2000],
                request_headers=result.request_headers,
                status_code=result.status_code,
                latency_ms=result.latency_ms,
                error=result.error,
                response_excerpt=result.response_excerpt,
                replay=outgoing.replay,
            )
        )
        if result.ok:
            await connection.execute(
                row.values(status="delivered", delivered_at=now, next_attempt_at=None, last_error=None)
            )
            if outgoing.target_type == "webhook":
                await _endpoint_succeeded(connection, outgoing, now)
            return "delivered"
        if outgoing.target_type == "webhook" and not result.permanent:
            endpoint = await _endpoint_failed(connection, outgoing, now)
            limit = timedelta(seconds=settings.webhook_disable_after_s)
            if endpoint is not None and (result.gone or now - endpoint.failing_since >= limit):
                reason = result.error if result.gone else _failing_reason(endpoint, result)
                await _disable(connection, outgoing, endpoint, reason or "failing", now)
                return "disabled"
        if result.permanent or outgoing.attempt >= settings.webhook_max_attempts:
            await connection.execute(
                row.values(status="abandoned", next_attempt_at=None, last_error=result.error)
            )
            return "abandoned"
        await connection.execute(
            row.values(next_attempt_at=now + timedelta(seconds=retry_in), last_error=result.error)
        )
        return "retry"


def _failing_reason(endpoint: _Endpoint, result: AttemptResult) -> str:
    since = endpoint.failing_since.astimezone(UTC).isoformat(timespec="seconds")
    return f"no successful delivery since {since}; last error: {result.error}"[:500]


async def _endpoint_succeeded(connection: AsyncConnection, outgoing: Outgoing, now: datetime) -> None:
    await connection.execute(
        update(WebhookEndpoint)
        .where(WebhookEndpoint.id == outgoing.target, WebhookEndpoint.owner == outgoing.owner)
        .values(failing_since=None, last_success_at=now)
    )


async def _endpoint_failed(
    connection: AsyncConnection, outgoing: Outgoing, now: datetime
) -> _Endpoint | None:
    """Start (or continue) the endpoint's run of failures; None when it is gone or already disabled."""
    query = (
        update(WebhookEndpoint)
        .where(
            WebhookEndpoint.id == outgoing.target,
            WebhookEndpoint.owner == outgoing.owner,
            WebhookEndpoint.disabled_at.is_(None),
        )
        .values(failing_since=func.coalesce(WebhookEndpoint.failing_since, now))
        .returning(WebhookEndpoint.id, WebhookEndpoint.url, WebhookEndpoint.failing_since)
    )
    row = (await connection.execute(query)).first()
    if row is None:
        return None
    since = row.failing_since if row.failing_since.tzinfo else row.failing_since.replace(tzinfo=UTC)
    return _Endpoint(row.id, row.url, since)


async def _disable(
    connection: AsyncConnection, outgoing: Outgoing, endpoint: _Endpoint, reason: str, now: datetime
) -> None:
    """Disable the endpoint, hold everything pending for it (this notification too), and tell the owner:
    an alert history row and an ``alert`` notice on their WebSocket connections."""
    await connection.execute(
        update(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint.id, WebhookEndpoint.owner == outgoing.owner)
        .values(disabled_at=now, disabled_reason=reason[:500])
    )
    await connection.execute(
        update(Notification)
        .where(
            Notification.owner == outgoing.owner,
            Notification.target_type == "webhook",
            Notification.target == endpoint.id,
            Notification.status == "pending",
        )
        .values(status="held", next_attempt_at=None)
    )
    await connection.execute(
        update(Notification)
        .where(Notification.id == outgoing.id)
        .values(status="held", next_attempt_at=None, last_error=reason)
    )
    notice = disabled_notice(outgoing.owner, endpoint.id, endpoint.url, reason, now)
    await connection.execute(
        insert_on_conflict(connection, table_of(AlertEvent))
        .values(
            owner=outgoing.owner,
            rule_id=SYSTEM_RULE,
            fingerprint=notice["fingerprint"],
            state="firing",
            as_of=now,
            source=notice["source"],
            transition=dict(notice),
        )
        .on_conflict_do_nothing(index_elements=["fingerprint", "source"])
    )
    nid = "msg_" + hashlib.sha256(f"{notice['source']}\x00websocket".encode()).hexdigest()[:32]
    app_id = await connection.scalar(select(Notification.app_id).where(Notification.id == outgoing.id))
    payload: dict[str, Any] = {
        "id": nid,
        "owner": outgoing.owner,
        "rule_id": SYSTEM_RULE,
        "rule_name": notice["rule_name"],
        "group_key": "",
        "group_labels": {},
        "seq": 0,
        "status": "firing",
        "muted": False,
        "alerts": [notice],
        "truncated": 0,
    }
    await connection.execute(
        insert_on_conflict(connection, table_of(Notification))
        .values(
            id=nid,
            app_id=app_id,
            owner=outgoing.owner,
            rule_id=SYSTEM_RULE,
            group_key="",
            target_type="websocket",
            target=outgoing.owner,
            payload=payload,
            status="pending",
            attempts=0,
            next_attempt_at=now,
            created_at=now,
            replay=False,
        )
        .on_conflict_do_nothing(index_elements=["id"])
    )


def disabled_notice(owner: str, endpoint_id: str, url: str, reason: str, now: datetime) -> AlertTransition:
    """The endpoint's disabling as an alert of a built-in rule, so it reaches the owner like any alert."""
    at = now.astimezone(UTC).isoformat()
    return AlertTransition(
        fingerprint=fingerprint(SYSTEM_RULE, endpoint_id),
        rule_id=SYSTEM_RULE,
        rule_version=1,
        rule_name="Webhook endpoint disabled",
        owner=owner,
        channel="system",
        series_key=endpoint_id,
        state="firing",
        previous_state="normal",
        severity="warning",
        labels={"alertname": "WebhookEndpointDisabled", "endpoint": endpoint_id, "severity": "warning"},
        annotations={
            "summary": f"webhook endpoint {endpoint_id} ({url[:200]}) was disabled: {reason}"[:2000],
            "action": "fix the receiver, then enable the endpoint; held notifications are sent then",
        },
        value=None,
        threshold=None,
        condition="no successful delivery within the disable period, or HTTP 410",
        evidence=[],
        starts_at=at,
        ends_at=None,
        as_of=at,
        emitted_at=at,
        source=f"endpoint:{endpoint_id}:disabled:{at}",
    )
